//! Issue 12, item 5: an AS error answer about *the token* is not an AS failure.
//!
//! A real AS (oidc-provider 9) answers HTTP 400 `unsupported_token_type` for
//! any JWT-shaped token it did not issue. tokengate used to count that as an AS
//! failure: five such requests from anyone opened the circuit breaker, every
//! valid token then got 503 and `/readyz` turned unready. These tests send such
//! tokens (to wiremock, and to a real oidc-provider) and check that each is a
//! 401, that the breaker and readiness do not move, and that a valid token
//! still passes; and that the answers which do say the AS is unhealthy
//! (`invalid_client`, 401) still count.

mod common;

use common::*;
use http::Method;
use serde_json::json;
use std::time::Duration;
use tokengate::config::{RawConfig, Secret};
use wiremock::ResponseTemplate;

/// A JWT-shaped token (`{"alg":"HS256","typ":"JWT"}` header) that no AS issued.
fn jwt_shaped(n: usize) -> String {
    format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhdHRhY2tlci0{n}In0.c2lnbmF0dXJl{n}")
}

fn breaker(c: &mut RawConfig) {
    c.resilience.breaker_failures = 2;
    c.resilience.breaker_open_for = Duration::from_secs(10);
}

fn outcome(m: &Scrape, outcome: &str) -> f64 {
    m.sum("tokengate_introspections_total", &[("outcome", outcome)])
}

#[tokio::test]
async fn should_401_tokens_the_as_refuses_to_introspect_and_keep_the_breaker_closed() {
    let env = Env::start_with(breaker).await;
    let codes = ["unsupported_token_type", "invalid_token", "invalid_request"];
    let mut tokens = Vec::new();
    for (i, code) in codes.iter().cycle().take(12).enumerate() {
        let token = jwt_shaped(i);
        introspection_of(&token)
            .respond_with(ResponseTemplate::new(400).set_body_json(
                json!({"error": code, "error_description": "Structured JWT Tokens cannot be introspected"}),
            ))
            // Once each: the second request for a token is negative-cached.
            .expect(1)
            .mount(&env.auth)
            .await;
        tokens.push(token);
    }
    // Twelve refused tokens, six times the breaker's threshold.
    for token in &tokens {
        let r = env.get("/x", token).await;
        assert_rejection(&r, 401, "invalid_token");
        assert!(r
            .header("www-authenticate")
            .is_some_and(|w| w.contains("error=\"invalid_token\"")));
    }
    // Negative-cached by the token's hash, like an inactive answer.
    assert_rejection(&env.get("/x", &tokens[0]).await, 401, "invalid_token");
    assert_eq!(env.upstream.hits(), 0, "nothing reached the upstream");

    let m = env.scrape().await;
    assert_eq!(outcome(&m, "token_rejected"), 12.0);
    assert_eq!(outcome(&m, "status"), 0.0, "not counted as an AS failure");
    assert_eq!(m.sum("tokengate_breaker_state", &[]), 0.0, "breaker closed");
    let ready = env.admin_get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // A valid token still passes.
    env.allow("valid-after-garbage", 1).await;
    let r = env.get("/x", "valid-after-garbage").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
}

#[tokio::test]
async fn should_503_and_open_the_breaker_when_the_as_refuses_our_credentials() {
    let env = Env::start_with(breaker).await;
    // RFC 6749 §5.2: a 400 invalid_client (or a 401) is about *our* client.
    introspection_of("cred-400")
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_client"})))
        .mount(&env.auth)
        .await;
    introspection_of("cred-401")
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_token"})))
        .mount(&env.auth)
        .await;
    for token in ["cred-400", "cred-401"] {
        let r = env.get("/x", token).await;
        assert_rejection(&r, 503, "temporarily_unavailable");
    }
    let m = env.scrape().await;
    assert_eq!(outcome(&m, "unauthorized"), 2.0);
    assert_eq!(m.sum("tokengate_breaker_state", &[]), 2.0, "open");
    assert_eq!(env.admin_get("/readyz").await.status, 503);
    // Open: a valid token fails fast without a call.
    env.allow("valid-while-open", 0).await;
    assert_rejection(
        &env.get("/x", "valid-while-open").await,
        503,
        "temporarily_unavailable",
    );
}

/// A 4xx we cannot read (unknown `error` code, no JSON, 413 ...) may depend on
/// the token we sent: the request fails closed, but the breaker does not count it.
#[tokio::test]
async fn should_503_unknown_4xx_without_counting_them_against_the_as() {
    let env = Env::start_with(breaker).await;
    let answers = [
        (
            "odd-grant",
            ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})),
        ),
        (
            "odd-html",
            ResponseTemplate::new(400).set_body_raw("<html>bad</html>", "text/html"),
        ),
        ("odd-413", ResponseTemplate::new(413)),
        ("odd-422", ResponseTemplate::new(422)),
    ];
    for (token, answer) in &answers {
        introspection_of(token)
            .respond_with(answer.clone())
            .expect(2)
            .mount(&env.auth)
            .await;
    }
    for _ in 0..2 {
        for (token, _) in &answers {
            let r = env.get("/x", token).await;
            assert_rejection(&r, 503, "temporarily_unavailable");
        }
    }
    let m = env.scrape().await;
    assert_eq!(outcome(&m, "refused"), 8.0);
    assert_eq!(m.sum("tokengate_breaker_state", &[]), 0.0, "closed");
    assert_eq!(env.admin_get("/readyz").await.status, 200);
    env.allow("valid-after-odd", 1).await;
    assert_eq!(env.get("/x", "valid-after-odd").await.status, 200);
}

/// Refused tokens are neutral, not successes: a client cannot keep a failing
/// AS's breaker from opening by sending them between the failures (an AS may
/// refuse a JWT-shaped token before it looks anything up, so a fast 400 does
/// not show that it can introspect).
#[tokio::test]
async fn should_still_open_the_breaker_when_refused_tokens_come_between_failures() {
    let env = Env::start_with(breaker).await;
    for i in 0..2 {
        introspection_of(&jwt_shaped(100 + i))
            .respond_with(
                ResponseTemplate::new(400)
                    .set_body_json(json!({"error": "unsupported_token_type"})),
            )
            .mount(&env.auth)
            .await;
        introspection_of(&format!("real-{i}"))
            .respond_with(ResponseTemplate::new(500))
            .mount(&env.auth)
            .await;
    }
    for i in 0..2 {
        assert_rejection(
            &env.get("/x", &jwt_shaped(100 + i)).await,
            401,
            "invalid_token",
        );
        assert_rejection(
            &env.get("/x", &format!("real-{i}")).await,
            503,
            "temporarily_unavailable",
        );
    }
    let m = env.scrape().await;
    assert_eq!(m.sum("tokengate_breaker_state", &[]), 2.0, "open");
    assert_eq!(env.admin_get("/readyz").await.status, 503);
}

/// A token that makes the AS fail (500, or a timeout) is the client's choice:
/// before such failures open the breaker, tokengate asks the AS about a token
/// nobody has; the AS answers it, so the breaker stays closed and the
/// instance ready. Each such request still fails closed (503).
#[tokio::test]
async fn should_not_open_the_breaker_for_tokens_that_make_the_as_fail_while_it_answers_others() {
    let env = Env::start_with(|c| {
        breaker(c);
        c.introspection.timeout = Duration::from_millis(300);
    })
    .await;
    // The canary (any other token): a healthy AS's answer.
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"active": false})))
        .with_priority(10)
        .mount(&env.auth)
        .await;
    for i in 0..3 {
        introspection_of(&format!("choke-500-{i}"))
            .respond_with(ResponseTemplate::new(500))
            .mount(&env.auth)
            .await;
        introspection_of(&format!("choke-slow-{i}"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"active": true}))
                    .set_delay(Duration::from_secs(5)),
            )
            .mount(&env.auth)
            .await;
    }
    for i in 0..3 {
        for token in [format!("choke-500-{i}"), format!("choke-slow-{i}")] {
            let r = env.get("/x", &token).await;
            assert_rejection(&r, 503, "temporarily_unavailable");
        }
    }
    let m = env.scrape().await;
    assert_eq!(outcome(&m, "status"), 3.0);
    assert_eq!(outcome(&m, "timeout"), 3.0);
    assert_eq!(m.sum("tokengate_breaker_state", &[]), 0.0, "closed");
    assert_eq!(env.admin_get("/readyz").await.status, 200);
    env.allow("valid-after-choke", 1).await;
    assert_eq!(env.get("/x", "valid-after-choke").await.status, 200);
}

// ---------------------------------------------------------------------------
// A real oidc-provider
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_keep_real_tokens_working_after_jwt_shaped_garbage_at_a_real_oidc_provider() {
    let test = "should_keep_real_tokens_working_after_jwt_shaped_garbage_at_a_real_oidc_provider";
    let Some(provider) = OidcProvider::start(test).await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        upstream: upstream.url(),
        shutdown_timeout: Duration::from_secs(1),
        ..RawConfig::default()
    };
    raw.introspection.url = provider.url("/token/introspection");
    raw.introspection.client_id = "tokengate".into();
    raw.introspection.client_secret = Secret::new(OIDC_SECRET);
    raw.introspection.timeout = Duration::from_secs(5);
    raw.resilience.breaker_failures = 5;
    raw.resilience.breaker_open_for = Duration::from_secs(10);
    let gate = Gate::start(&raw).await;
    let client = http1_client();
    let get = |token: String| {
        let req = request(Method::GET, &format!("http://{}/api", gate.addr))
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap();
        send(&client, req)
    };

    let real = provider.bearer_token(&client).await;
    for i in 0..10 {
        let r = get(jwt_shaped(i)).await;
        assert_rejection(&r, 401, "invalid_token");
    }
    let r = get(real.clone()).await;
    assert_eq!(
        r.status,
        200,
        "the real token must still pass: {}",
        r.text()
    );
    assert_eq!(r.echo().header("x-auth-client-id"), Some("tokengate"));

    let admin = |path: &str| {
        let req = request(Method::GET, &gate.admin_url(path))
            .body(empty())
            .unwrap();
        send(&client, req)
    };
    let ready = admin("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let m = Scrape::parse(&admin("/metrics").await.text()).unwrap();
    assert_eq!(outcome(&m, "token_rejected"), 10.0);
    assert_eq!(outcome(&m, "active"), 1.0);
    assert_eq!(m.sum("tokengate_breaker_state", &[]), 0.0);
    drop(upstream);
}
