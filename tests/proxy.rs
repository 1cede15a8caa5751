//! End-to-end tests of the core request path (issue 2): credentials,
//! introspection, policy, cache, header hygiene, routing, upstream failures.
//! Every test runs the real `tokengate::run` against a wiremock AS and a real
//! hyper upstream, through real sockets.
#![expect(
    clippy::disallowed_methods,
    reason = "measures real elapsed time of real sockets"
)]

mod common;

use common::*;
use http::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const REALM_ONLY: &str = r#"Bearer realm="tokengate""#;

// ---------------------------------------------------------------------------
// Credentials: nothing else runs when they are missing or malformed
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_401_with_bare_challenge_when_authorization_is_missing() {
    let env = Env::start().await;
    env.forbid_introspection().await;

    let r = env.get_with_auth("/x", &[]).await;

    assert_rejection(&r, 401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some(REALM_ONLY));
    assert_eq!(env.upstream.hits(), 0);
}

#[tokio::test]
async fn should_401_with_bare_challenge_when_scheme_is_basic() {
    let env = Env::start().await;
    env.forbid_introspection().await;

    let r = env.get_with_auth("/x", &["Basic dXNlcjpwdw=="]).await;

    assert_rejection(&r, 401, "unauthorized");
    let www = r.header("www-authenticate").unwrap();
    assert_eq!(www, REALM_ONLY);
    assert!(
        !www.contains("error"),
        "no error code without bearer credentials: {www}"
    );
    assert_eq!(env.upstream.hits(), 0);
}

#[tokio::test]
async fn should_400_invalid_request_when_bearer_credentials_are_malformed() {
    let env = Env::start().await;
    env.forbid_introspection().await;
    let cases = [
        ("empty token", "Bearer"),
        ("only spaces after the scheme", "Bearer    "),
        ("two tokens", "Bearer abc def"),
        ("bad characters (quote)", "Bearer abc\"def"),
        ("bad characters (comma)", "Bearer abc,def"),
        ("no space: tab separator", "Bearer\tabc"),
        ("two spaces", "Bearer  abc"),
    ];
    for (why, value) in cases {
        let r = env.get_with_auth("/x", &[value]).await;
        assert_rejection(&r, 400, "invalid_request");
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(
            www.starts_with(r#"Bearer realm="tokengate""#)
                && www.contains(r#"error="invalid_request""#),
            "{why}: {www}"
        );
    }
    assert_eq!(env.upstream.hits(), 0);
}

#[tokio::test]
async fn should_400_invalid_request_when_two_authorization_headers_are_sent() {
    let env = Env::start().await;
    env.forbid_introspection().await;

    let r = env.get_with_auth("/x", &["Bearer aaa", "Bearer bbb"]).await;

    assert_rejection(&r, 400, "invalid_request");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="invalid_request""#));
    assert_eq!(env.upstream.hits(), 0);
}

#[tokio::test]
async fn should_400_when_token_exceeds_max_token_bytes() {
    let env = Env::start_with(|c| c.limits.max_token_bytes = 64).await;
    let at_limit = "a".repeat(64);
    // Exactly the limit is introspected once; one byte more never is.
    env.allow(&at_limit, 1).await;

    let r = env.get("/x", &"a".repeat(65)).await;
    assert_rejection(&r, 400, "invalid_request");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="invalid_request""#));
    assert_eq!(env.upstream.hits(), 0);

    let r = env.get("/x", &at_limit).await;
    assert_eq!(r.status, 200, "a token of exactly max_token_bytes passes");
    assert_eq!(
        env.introspections().await.len(),
        1,
        "the oversized token was never introspected"
    );
}

// ---------------------------------------------------------------------------
// The introspection request itself
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_introspect_with_form_token_hint_and_client_secret_basic() {
    let env = Env::start().await;
    Mock::given(method("POST"))
        .and(path(INTROSPECT_PATH))
        .and(wiremock::matchers::basic_auth(CLIENT_ID, CLIENT_SECRET))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"active": true, "sub": "alice"})),
        )
        .expect(1)
        .mount(&env.auth)
        .await;

    let r = env.get("/x", "tok-basic.1~x").await;
    assert_eq!(r.status, 200, "{}", r.text());

    let calls = env.introspections().await;
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method.as_str(), "POST");
    assert!(call.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/x-www-form-urlencoded"));
    assert_eq!(
        call.headers["authorization"],
        "Basic dG9rZW5nYXRlOnMzY3JldA=="
    );
    let form = form_pairs(&call.body);
    assert!(
        form.contains(&("token".into(), "tok-basic.1~x".into())),
        "{form:?}"
    );
    assert!(
        form.contains(&("token_type_hint".into(), "access_token".into())),
        "{form:?}"
    );
    assert!(
        !form.iter().any(|(k, _)| k == "client_secret"),
        "basic auth must not also send the secret in the body: {form:?}"
    );
}

#[tokio::test]
async fn should_introspect_with_credentials_in_body_when_client_secret_post() {
    let env = Env::start_with(|c| {
        c.introspection.auth_method = tokengate::config::AuthMethod::ClientSecretPost;
    })
    .await;
    env.answer("tok-post", json!({"active": true}), 1).await;

    let r = env.get("/x", "tok-post").await;
    assert_eq!(r.status, 200, "{}", r.text());

    let calls = env.introspections().await;
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert!(
        call.headers.get("authorization").is_none(),
        "client_secret_post sends no Authorization"
    );
    let form = form_pairs(&call.body);
    for (k, v) in [
        ("token", "tok-post"),
        ("token_type_hint", "access_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
    ] {
        assert!(
            form.contains(&(k.into(), v.into())),
            "missing {k}={v} in {form:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Policy on the AS's answer
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_401_invalid_token_when_token_is_inactive() {
    let env = Env::start().await;
    env.answer("revoked", json!({"active": false}), 1).await;

    let r = env.get("/x", "revoked").await;

    assert_rejection(&r, 401, "invalid_token");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="invalid_token""#));
    assert_eq!(env.upstream.hits(), 0);
}

#[tokio::test]
async fn should_401_token_expired_when_exp_is_not_in_the_future() {
    let env = Env::start().await;
    let now = env.now();
    env.answer("exp-now", json!({"active": true, "exp": now}), 1)
        .await;
    env.answer("exp-past", json!({"active": true, "exp": now - 30}), 1)
        .await;

    for token in ["exp-now", "exp-past"] {
        let r = env.get("/x", token).await;
        assert_rejection(&r, 401, "invalid_token");
        assert_eq!(r.json()["error_description"], "token expired", "{token}");
        let www = r.header("www-authenticate").unwrap();
        assert!(
            www.contains(r#"error="invalid_token""#)
                && www.contains(r#"error_description="token expired""#),
            "{token}: {www}"
        );
    }
    assert_eq!(env.upstream.hits(), 0);
}

#[tokio::test]
async fn should_401_invalid_token_when_nbf_is_in_the_future() {
    let env = Env::start().await;
    let now = env.now();
    env.answer(
        "future",
        json!({"active": true, "nbf": now + 600, "exp": now + 3600}),
        1,
    )
    .await;

    let r = env.get("/x", "future").await;

    assert_rejection(&r, 401, "invalid_token");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="invalid_token""#));
    assert_eq!(env.upstream.hits(), 0);
}

// ---------------------------------------------------------------------------
// AS failures: always 503 + Retry-After, never 401, never forwarded
// ---------------------------------------------------------------------------

fn assert_as_failure(r: &Resp, upstream_hits: usize) {
    assert_ne!(
        r.status, 401,
        "an AS failure must never look like a bad token"
    );
    assert_rejection(r, 503, "temporarily_unavailable");
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(
        r.header("www-authenticate").is_none(),
        "no challenge: the token is not at fault"
    );
    assert_eq!(
        upstream_hits, 0,
        "nothing may be forwarded when the AS failed"
    );
}

#[tokio::test]
async fn should_503_when_as_is_unreachable() {
    let dead = closed_addr().await;
    let env =
        Env::start_with(|c| c.introspection.url = format!("http://{dead}{INTROSPECT_PATH}")).await;

    let r = env.get("/x", "tok").await;

    assert_as_failure(&r, env.upstream.hits());
}

#[tokio::test]
async fn should_503_when_as_is_slower_than_introspection_timeout() {
    let env = Env::start_with(|c| c.introspection.timeout = Duration::from_millis(200)).await;
    introspection_of("slow")
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"active": true}))
                .set_delay(Duration::from_secs(10)),
        )
        .mount(&env.auth)
        .await;

    let started = Instant::now();
    let r = env.get("/x", "slow").await;

    assert_as_failure(&r, env.upstream.hits());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the 200ms timeout must cut the 10s call short, took {took:?}"
    );
}

#[tokio::test]
async fn should_503_when_as_returns_500() {
    let env = Env::start().await;
    introspection_of("tok")
        .respond_with(ResponseTemplate::new(500).set_body_string("oops"))
        .expect(1)
        .mount(&env.auth)
        .await;

    let r = env.get("/x", "tok").await;

    assert_as_failure(&r, env.upstream.hits());
}

#[tokio::test]
async fn should_503_when_as_rejects_our_client_credentials() {
    let env = Env::start().await;
    introspection_of("tok")
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})))
        .expect(1)
        .mount(&env.auth)
        .await;

    let r = env.get("/x", "tok").await;

    assert_as_failure(&r, env.upstream.hits());
}

#[tokio::test]
async fn should_503_when_as_returns_html() {
    let env = Env::start().await;
    introspection_of("tok")
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw("<html><body>502 Bad Gateway</body></html>", "text/html"),
        )
        .expect(1)
        .mount(&env.auth)
        .await;

    let r = env.get("/x", "tok").await;

    assert_as_failure(&r, env.upstream.hits());
}

// ---------------------------------------------------------------------------
// Lenient parsing, end to end
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_allow_float_exp_array_scope_string_aud_and_null_token_type() {
    let env = Env::start().await;
    let exp = env.now() as f64 + 3600.5;
    env.answer(
        "lenient",
        json!({
            "active": true, "exp": exp, "iat": 1.0e9, "scope": ["read", "write", "admin"],
            "aud": "urn:lab:api", "token_type": null, "client_id": "app",
            "realm_access": {"roles": ["x"]},
        }),
        1,
    )
    .await;

    let r = env.get("/x", "lenient").await;

    let echo = r.echo();
    assert_eq!(
        echo.header("x-auth-scope"),
        Some("read write admin"),
        "scopes are space-separated"
    );
    assert_eq!(echo.header("x-auth-subject"), Some("app"));
}

// ---------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_serve_second_request_from_cache_without_introspecting() {
    let env = Env::start().await;
    env.allow("cached", 1).await;

    for _ in 0..3 {
        let r = env.get("/x", "cached").await;
        assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    }
    assert_eq!(env.introspections().await.len(), 1);
    assert_eq!(env.upstream.hits(), 3);
}

#[tokio::test]
async fn should_introspect_once_for_100_concurrent_requests_with_one_new_token() {
    let env = Env::start().await;
    introspection_of("popular")
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"active": true, "sub": "alice", "exp": env.now() + 3600}))
                .set_delay(Duration::from_millis(800)),
        )
        .expect(1)
        .mount(&env.auth)
        .await;

    let calls = (0..100).map(|i| {
        let req = request(Method::GET, &env.url(&format!("/c/{i}")))
            .header("authorization", "Bearer popular")
            .body(empty())
            .unwrap();
        send(&env.http1, req)
    });
    let responses = futures_util::future::join_all(calls).await;

    assert!(
        responses.iter().all(|r| r.status == 200),
        "every request passes"
    );
    assert_eq!(
        env.introspections().await.len(),
        1,
        "single-flight: one AS call"
    );
    assert_eq!(env.upstream.hits(), 100);
}

#[tokio::test]
async fn should_401_token_expired_when_cached_token_expires_mid_cache() {
    let env = Env::start_with(|c| c.cache.max_ttl = Duration::from_secs(300)).await;
    env.answer(
        "short",
        json!({"active": true, "sub": "alice", "exp": env.now() + 60}),
        1,
    )
    .await;

    assert_eq!(env.get("/x", "short").await.status, 200);
    env.advance(Duration::from_secs(61));
    let r = env.get("/x", "short").await;

    assert_rejection(&r, 401, "invalid_token");
    assert_eq!(r.json()["error_description"], "token expired");
    assert_eq!(
        env.introspections().await.len(),
        1,
        "decided from the cache, on our clock"
    );
    assert_eq!(env.upstream.hits(), 1);
}

#[tokio::test]
async fn should_answer_inactive_token_from_negative_cache() {
    let env = Env::start().await;
    env.answer("bad", json!({"active": false}), 1).await;

    for _ in 0..2 {
        assert_rejection(&env.get("/x", "bad").await, 401, "invalid_token");
    }
    assert_eq!(env.introspections().await.len(), 1);
}

#[tokio::test]
async fn should_introspect_inactive_token_each_time_when_negative_ttl_is_zero() {
    let env = Env::start_with(|c| c.cache.negative_ttl = Duration::ZERO).await;
    env.answer("bad", json!({"active": false}), 2).await;

    for _ in 0..2 {
        assert_rejection(&env.get("/x", "bad").await, 401, "invalid_token");
    }
    assert_eq!(env.introspections().await.len(), 2);
}

#[tokio::test]
async fn should_never_cache_an_as_error() {
    let env = Env::start().await;
    introspection_of("flaky")
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .expect(1)
        .mount(&env.auth)
        .await;
    env.allow("flaky", 1).await;

    assert_as_failure(&env.get("/x", "flaky").await, env.upstream.hits());
    let r = env.get("/x", "flaky").await;

    assert_eq!(r.echo().header("x-auth-subject"), Some("alice"));
    assert_eq!(env.introspections().await.len(), 2);
}

// ---------------------------------------------------------------------------
// Identity headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_send_identity_headers_to_upstream() {
    let env = Env::start().await;
    env.allow("tok", 1).await;

    let echo = env.get("/x", "tok").await.echo();

    assert_eq!(echo.header_all("x-auth-subject"), ["alice"]);
    assert_eq!(echo.header_all("x-auth-client-id"), ["app"]);
    assert_eq!(echo.header_all("x-auth-scope"), ["read write"]);
    assert_eq!(
        echo.header("authorization"),
        Some("Bearer tok"),
        "forwarded by default"
    );
}

#[tokio::test]
async fn should_use_client_id_as_subject_when_sub_is_absent() {
    let env = Env::start().await;
    env.answer(
        "cc",
        json!({"active": true, "client_id": "svc-a", "scope": "read"}),
        1,
    )
    .await;

    let echo = env.get("/x", "cc").await.echo();

    assert_eq!(echo.header("x-auth-subject"), Some("svc-a"));
    assert_eq!(echo.header("x-auth-client-id"), Some("svc-a"));
}

/// Over a raw socket, so the odd-case header names reach tokengate as written.
#[tokio::test]
async fn should_strip_spoofed_identity_headers_in_any_case() {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    // No sub and no client_id: tokengate adds no subject, so a spoofed one that
    // survived the strip would be the only one.
    env.answer("anon", json!({"active": true}), 1).await;

    for token in ["tok", "anon"] {
        let req = format!(
            "GET /x HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\n\
             x-AUTH-subject: mallory\r\nX-Auth-Client-ID: evil\r\nX-AUTH-SCOPE: admin\r\n\
             X-Remote-User: root\r\nx-forwarded-USER: root\r\nX-User: root\r\nConnection: close\r\n\r\n"
        );
        let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
        let echo = parse_responses(&raw, &[]).remove(0).echo();
        for gone in ["x-remote-user", "x-forwarded-user", "x-user"] {
            assert!(
                !echo.has(gone),
                "{token}: {gone} reached the upstream: {echo:?}"
            );
        }
        let all: Vec<&str> = echo.headers.iter().map(|(_, v)| v.as_str()).collect();
        for spoof in ["mallory", "evil", "admin", "root"] {
            assert!(
                !all.contains(&spoof),
                "{token}: spoofed value {spoof} reached the upstream: {echo:?}"
            );
        }
        if token == "tok" {
            assert_eq!(echo.header_all("x-auth-subject"), ["alice"]);
            assert_eq!(echo.header_all("x-auth-client-id"), ["app"]);
            assert_eq!(echo.header_all("x-auth-scope"), ["read write"]);
        } else {
            assert!(
                !echo.has("x-auth-subject") && !echo.has("x-auth-client-id"),
                "{echo:?}"
            );
            assert_eq!(echo.header_all("x-auth-scope"), [""]);
        }
    }
}

#[tokio::test]
async fn should_remove_authorization_when_forward_authorization_is_false() {
    let env = Env::start_with(|c| c.identity.forward_authorization = false).await;
    env.allow("tok", 1).await;

    let echo = env.get("/x", "tok").await.echo();

    assert!(!echo.has("authorization"), "{echo:?}");
    assert_eq!(echo.header("x-auth-subject"), Some("alice"));
}

// ---------------------------------------------------------------------------
// Hop-by-hop and forwarding headers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_not_forward_request_hop_by_hop_headers() {
    let env = Env::start().await;
    env.allow("tok", 1).await;

    let req = "GET /x HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n\
               Connection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
               Proxy-Connection: keep-alive\r\nX-End-To-End: kept\r\n\r\n";
    let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
    let echo = parse_responses(&raw, &[]).remove(0).echo();

    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-connection",
    ] {
        assert!(!echo.has(gone), "{gone} reached the upstream: {echo:?}");
    }
    assert_eq!(echo.header("x-end-to-end"), Some("kept"));
}

#[tokio::test]
async fn should_not_return_response_hop_by_hop_headers() {
    let env = Env::start().await;
    env.allow("tok", 1).await;

    let r = env.get("/hop", "tok").await;

    assert_eq!(r.status, 200);
    for gone in ["connection", "x-up-hop", "keep-alive", "proxy-connection"] {
        assert!(
            r.header(gone).is_none(),
            "{gone} reached the client: {:?}",
            r.headers
        );
    }
    assert_eq!(r.header("x-up-keep"), Some("1"));
    assert_eq!(r.text(), "hop");
}

#[tokio::test]
async fn should_add_forwarding_headers_and_restart_x_forwarded_for_at_an_untrusted_peer() {
    let env = Env::start().await;
    env.allow("tok", 1).await;

    let req = request(Method::GET, &env.url("/x"))
        .header("host", "front.example")
        .header("authorization", "Bearer tok")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let echo = send(&env.http1, req).await.echo();

    // The client is not in forwarding.trusted_proxies: its chain is its own
    // word, so the upstream sees only the peer (tests/client_headers.rs has the
    // trusted case).
    assert_eq!(echo.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(echo.header_all("x-forwarded-host"), ["front.example"]);
    assert_eq!(echo.header_all("via"), ["1.1 tokengate"]);
    assert_eq!(
        echo.header("host"),
        Some(env.upstream.addr.to_string().as_str())
    );
}

// ---------------------------------------------------------------------------
// Method, target and destination
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_forward_method_path_and_raw_query_byte_for_byte() {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    let cases = [
        ("GET", "/a%2Fb/./c?x=1&y=%20&x=2"),
        ("POST", "/a/../b//c;m=1?q=a+b&empty=&flag&%7e=%7E"),
        ("PUT", "/%E2%82%AC/x?"),
        ("DELETE", "/items/42?force=true"),
        ("PATCH", "/items/42"),
        ("OPTIONS", "/"),
        ("PURGE", "/cache/key?x=%2F"),
    ];
    for (m, target) in cases {
        let req = format!(
            "{m} {target} HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
        let echo = parse_responses(&raw, &[]).remove(0).echo();
        assert_eq!(echo.method, m);
        assert_eq!(
            echo.target, target,
            "the target must reach the upstream unchanged"
        );
    }
}

#[tokio::test]
async fn should_send_absolute_form_target_to_the_configured_upstream() {
    let env = Env::start().await;
    env.allow("tok", 1).await;

    let req = "GET http://evil.example/x?y=1 HTTP/1.1\r\nHost: evil.example\r\n\
               Authorization: Bearer tok\r\nConnection: close\r\n\r\n";
    let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
    let echo = parse_responses(&raw, &[]).remove(0).echo();

    assert_eq!(echo.target, "/x?y=1");
    assert_eq!(
        echo.header("host"),
        Some(env.upstream.addr.to_string().as_str())
    );
    assert_eq!(env.upstream.hits(), 1);
}

#[tokio::test]
async fn should_ignore_host_header_when_choosing_the_destination() {
    let env = Env::start().await;
    env.allow("tok", 1).await;

    let req =
        "GET /x HTTP/1.1\r\nHost: evil\r\nAuthorization: Bearer tok\r\nConnection: close\r\n\r\n";
    let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
    let echo = parse_responses(&raw, &[]).remove(0).echo();

    assert_eq!(
        env.upstream.hits(),
        1,
        "the configured upstream got the request"
    );
    assert_eq!(
        echo.header("host"),
        Some(env.upstream.addr.to_string().as_str())
    );
    assert_eq!(echo.header("x-forwarded-host"), Some("evil"));
}

#[tokio::test]
async fn should_405_connect_and_forward_nothing() {
    let env = Env::start().await;
    env.forbid_introspection().await;

    let req = "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\
               Authorization: Bearer tok\r\nConnection: close\r\n\r\n";
    let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
    let r = parse_responses(&raw, &[]).remove(0);

    assert_eq!(r.status, 405);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert_eq!(env.upstream.hits(), 0);
}

// ---------------------------------------------------------------------------
// HTTP/2 cleartext
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_proxy_h2c_prior_knowledge_end_to_end() {
    let env = Env::start().await;
    env.allow("tok", 1).await;

    let req = request(Method::POST, &env.url("/h2/path?q=%20x"))
        .header("authorization", "Bearer tok")
        .header("x-auth-subject", "mallory")
        .body(full("hello h2"))
        .unwrap();
    let r = send(&env.h2c, req).await;

    assert_eq!(r.version, http::Version::HTTP_2);
    let echo = r.echo();
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.target, "/h2/path?q=%20x");
    assert_eq!(
        echo.version, "HTTP/1.1",
        "the upstream is spoken to in HTTP/1.1"
    );
    assert_eq!(echo.body_len, Some(8));
    assert_eq!(echo.header_all("x-auth-subject"), ["alice"]);
    assert_eq!(echo.header("via"), Some("2 tokengate"));
    assert_eq!(
        echo.header("x-forwarded-host"),
        Some(env.gate.addr.to_string().as_str())
    );
    assert_eq!(
        echo.header("host"),
        Some(env.upstream.addr.to_string().as_str())
    );
    assert_eq!(env.upstream.hits(), 1);

    // A rejection over h2 has the same shape.
    let req = request(Method::GET, &env.url("/x")).body(empty()).unwrap();
    let r = send(&env.h2c, req).await;
    assert_rejection(&r, 401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some(REALM_ONLY));
}

// ---------------------------------------------------------------------------
// Upstream failures and bodiless answers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_502_when_upstream_refuses_the_connection() {
    let dead = closed_addr().await;
    let env = Env::start_with(|c| c.upstream = format!("http://{dead}")).await;
    env.allow("tok", 1).await;

    let r = env.get("/x", "tok").await;

    assert_rejection(&r, 502, "bad_gateway");
    assert!(r.header("www-authenticate").is_none());
}

#[tokio::test]
async fn should_504_when_upstream_is_slower_than_upstream_timeout() {
    let env = Env::start_with(|c| c.resilience.upstream_timeout = Duration::from_millis(300)).await;
    env.allow("tok", 1).await;

    let started = Instant::now();
    let r = env.get("/sleep/10000", "tok").await;

    assert_rejection(&r, 504, "gateway_timeout");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the 300ms timeout must cut the 10s wait short, took {took:?}"
    );
    assert_eq!(env.upstream.hits(), 1);
}

#[tokio::test]
async fn should_forward_head_without_a_body() {
    let env = Env::start().await;
    env.allow("tok", 1).await;

    let req =
        "HEAD /x HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\nConnection: close\r\n\r\n";
    let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;

    let r = parse_responses(&raw, &[true]).remove(0);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some("1234"),
        "HEAD keeps the upstream's length"
    );
    assert_eq!(r.header("x-head"), Some("1"));
    assert!(after_head(&raw).is_empty(), "HEAD must have no body bytes");
    assert_eq!(env.upstream.seen()[0].method, "HEAD");
}

#[tokio::test]
async fn should_forward_204_and_304_without_a_body() {
    let env = Env::start().await;
    env.allow("tok", 1).await;

    for code in [204u16, 304] {
        let req = format!(
            "GET /status/{code} HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\nConnection: close\r\n\r\n"
        );
        let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
        let r = parse_responses(&raw, &[]).remove(0);
        assert_eq!(r.status, code);
        assert_eq!(r.header("x-status-route"), Some("1"));
        assert!(
            r.header("transfer-encoding").is_none(),
            "{code}: {:?}",
            r.headers
        );
        assert!(
            after_head(&raw).is_empty(),
            "{code} must have no body bytes"
        );
    }
}

// ---------------------------------------------------------------------------
// Request smuggling basics
// ---------------------------------------------------------------------------

/// A request carrying both `Content-Length` and `Transfer-Encoding: chunked`,
/// whose Content-Length would swallow a hidden second request. Whatever framing
/// wins, the upstream must never receive a request nobody authenticated.
#[tokio::test]
async fn should_never_deliver_a_hidden_request_when_cl_and_te_disagree() {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    let hidden = "GET /hidden HTTP/1.1\r\nHost: gate\r\n\r\n";

    for te_first in [false, true] {
        let body = format!("0\r\n\r\n{hidden}");
        let (cl, te) = (
            format!("Content-Length: {}\r\n", body.len()),
            "Transfer-Encoding: chunked\r\n",
        );
        let framing = if te_first {
            format!("{te}{cl}")
        } else {
            format!("{cl}{te}")
        };
        let req = format!(
            "POST /smuggle HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n{framing}\r\n{body}\
             GET /after HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n"
        );
        let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
        let responses = parse_responses(&raw, &[]);
        // hyper frames by Transfer-Encoding (RFC 9112 §6.1): an empty body; the
        // bytes after it are not body, and never reach the upstream as a request.
        assert_eq!(responses[0].echo().body_len, Some(0));
        // hyper closes such a connection; should it ever serve what follows,
        // those requests carry no token: 401s only.
        for r in &responses[1..] {
            assert_eq!(
                r.status, 401,
                "an unauthenticated follow-up must be refused"
            );
        }
    }
    let seen = env.upstream.seen();
    assert!(
        seen.iter().all(|e| e.target == "/smuggle"),
        "hidden request reached the upstream: {seen:?}"
    );
    for e in &seen {
        assert!(
            !(e.has("content-length") && e.has("transfer-encoding")),
            "both framing headers forwarded: {e:?}"
        );
    }
}

/// Framing that parsers disagree on is refused outright (hyper answers 400
/// before tokengate's handler runs): nothing is introspected or forwarded.
#[tokio::test]
async fn should_400_ambiguous_framing_and_forward_nothing() {
    let env = Env::start().await;
    env.forbid_introspection().await;
    let cases = [
        (
            "obfuscated TE",
            "HTTP/1.1",
            "Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n",
        ),
        (
            "TE not last chunked",
            "HTTP/1.1",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        (
            "two different CLs",
            "HTTP/1.1",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ),
        (
            "CL list that disagrees",
            "HTTP/1.1",
            "Content-Length: 5, 6\r\n",
        ),
        ("negative CL", "HTTP/1.1", "Content-Length: -5\r\n"),
        (
            "space before colon",
            "HTTP/1.1",
            "Transfer-Encoding : chunked\r\n",
        ),
        (
            "TE in HTTP/1.0",
            "HTTP/1.0",
            "Transfer-Encoding: chunked\r\n",
        ),
    ];
    for (why, version, framing) in cases {
        let req = format!(
            "POST /smuggle {version}\r\nHost: gate\r\nAuthorization: Bearer tok\r\n{framing}\
             Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: gate\r\n\r\n"
        );
        let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
        let status_line = status_line(&raw);
        assert!(status_line.contains(" 400 "), "{why}: {status_line}");
    }
    assert_eq!(env.upstream.hits(), 0, "{:?}", env.upstream.seen());
}

/// Two `Content-Length` headers with the *same* value are one length (RFC 9112
/// §6.3 lets a recipient treat them so, and hyper does): the request is served,
/// the upstream sees exactly one `Content-Length` and exactly that many bytes,
/// and the bytes after the body are not a request anyone authenticated. The
/// list form `Content-Length: 5, 5` is refused by hyper (400), which is
/// stricter than the RFC requires and equally safe: nothing is forwarded.
#[tokio::test]
async fn should_treat_equal_duplicate_content_lengths_as_one_and_forward_one() {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    let follow_up = "GET /hidden HTTP/1.1\r\nHost: gate\r\nConnection: close\r\n\r\n";

    let req = format!(
        "POST /smuggle HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n\
         Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello{follow_up}"
    );
    let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
    let responses = parse_responses(&raw, &[]);
    let echo = responses[0].echo();
    assert_eq!(echo.body_len, Some(5));
    assert_eq!(echo.header_all("content-length"), ["5"]);
    assert!(!echo.has("transfer-encoding"));
    for r in &responses[1..] {
        assert_eq!(r.status, 401, "the follow-up carries no token");
    }
    assert_eq!(env.upstream.hits(), 1);

    let req = format!(
        "POST /smuggle HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n\
         Content-Length: 5, 5\r\n\r\nhello{follow_up}"
    );
    let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
    let responses = parse_responses(&raw, &[]);
    assert_eq!(responses[0].status, 400, "list-form Content-Length");
    assert_eq!(responses.len(), 1, "nothing after the 400 is served");

    let seen = env.upstream.seen();
    assert!(
        seen.len() == 1 && seen[0].target == "/smuggle",
        "only the authenticated request may reach the upstream: {seen:?}"
    );
}

/// A complete request hidden *inside* chunk data is body bytes, nothing more:
/// the upstream receives it as the body of the one authenticated request.
#[tokio::test]
async fn should_forward_a_request_inside_chunk_data_as_body_only() {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    let hidden = "GET /hidden HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n\r\n";
    for ext in ["", ";name=value"] {
        let req = format!(
            "POST /smuggle HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             {:x}{ext}\r\n{hidden}\r\n0\r\n\r\n",
            hidden.len()
        );
        let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
        let responses = parse_responses(&raw, &[]);
        assert_eq!(responses.len(), 1, "one request, one response");
        let echo = responses[0].echo();
        assert_eq!(echo.body_len, Some(hidden.len() as u64), "{ext:?}");
        assert!(!echo.has("content-length") || !echo.has("transfer-encoding"));
    }
    let seen = env.upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|e| e.target == "/smuggle"),
        "hidden request reached the upstream: {seen:?}"
    );
}

/// Header lines that parsers disagree on, or that would let one field value
/// smuggle another field past us: hyper refuses them with a 400 before
/// tokengate's handler runs, so nothing is introspected or forwarded.
#[tokio::test]
async fn should_400_header_injection_and_bad_targets_and_forward_nothing() {
    let env = Env::start().await;
    env.forbid_introspection().await;
    let auth = "Authorization: Bearer tok\r\n";
    let cases: [(&str, String); 7] = [
        (
            "obs-fold continuation line",
            format!(
                "GET /x HTTP/1.1\r\nHost: gate\r\n{auth}X-Note: a\r\n X-Auth-Subject: root\r\n"
            ),
        ),
        (
            "obs-fold with a tab",
            format!("GET /x HTTP/1.1\r\nHost: gate\r\n{auth}X-Note: a\r\n\tmore\r\n"),
        ),
        (
            "bare CR inside a value",
            format!("GET /x HTTP/1.1\r\nHost: gate\r\n{auth}X-Note: a\rX-Auth-Subject: root\r\n"),
        ),
        (
            "bare CR inside the Authorization value",
            "GET /x HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\rX-Evil: 1\r\n".to_owned(),
        ),
        (
            "NUL inside a value",
            format!("GET /x HTTP/1.1\r\nHost: gate\r\n{auth}X-Note: a\0b\r\n"),
        ),
        (
            "NUL in the request target",
            format!("GET /x\0/admin HTTP/1.1\r\nHost: gate\r\n{auth}"),
        ),
        (
            "CR in the request target",
            format!("GET /x\r/admin HTTP/1.1\r\nHost: gate\r\n{auth}"),
        ),
    ];
    for (why, head) in cases {
        let req = format!("{head}Connection: close\r\n\r\n");
        let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
        let status_line = status_line(&raw);
        assert!(status_line.contains(" 400 "), "{why}: {status_line:?}");
    }
    assert_eq!(env.upstream.hits(), 0, "{:?}", env.upstream.seen());
}

/// hyper reads a bare LF as a line end (RFC 9112 §2.2 allows it), so a LF in
/// what a client meant as one value starts a new field. That is no smuggling
/// vector here: tokengate re-serialises every field with CRLF, so the upstream
/// parses exactly the fields tokengate authenticated and rewrote, and a
/// "hidden" identity field is stripped like any other spoof.
#[tokio::test]
async fn should_read_bare_lf_as_a_line_end_and_strip_what_it_injects() {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    for req in [
        "GET /lf HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\nX-Auth-Subject: root\r\n\
         Connection: close\r\n\r\n",
        "GET /lf HTTP/1.1\nHost: gate\nX-Remote-User: root\nAuthorization: Bearer tok\n\
         Connection: close\n\n",
    ] {
        let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
        let echo = parse_responses(&raw, &[]).remove(0).echo();
        assert_eq!(echo.header_all("x-auth-subject"), ["alice"], "{req:?}");
        assert!(!echo.has("x-remote-user"), "{req:?}");
        assert_eq!(echo.header_all("authorization"), ["Bearer tok"], "{req:?}");
    }
    assert_eq!(env.upstream.hits(), 2);
}

/// Chunked framing that hyper reads leniently (whitespace after the size, bare
/// LF line ends, `identity, chunked`) is decoded by tokengate and re-framed by
/// the client towards the upstream: the upstream never parses the client's
/// framing bytes, so it cannot read them differently. It gets exactly the body.
#[tokio::test]
async fn should_reframe_leniently_chunked_bodies_for_the_upstream() {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    let cases = [
        ("Transfer-Encoding: chunked", "5 \r\nhello\r\n0\r\n\r\n"),
        (
            "Transfer-Encoding: identity, chunked",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (te, body) in cases {
        let req = format!(
            "POST /reframe HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n{te}\r\n\
             Connection: close\r\n\r\n{body}"
        );
        let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
        let responses = parse_responses(&raw, &[]);
        assert_eq!(responses.len(), 1, "{body:?}");
        let echo = responses[0].echo();
        assert_eq!(echo.body_len, Some(5), "{body:?}");
        assert!(
            !(echo.has("content-length") && echo.has("transfer-encoding")),
            "{echo:?}"
        );
        assert_ne!(echo.header("transfer-encoding"), Some(te), "{body:?}");
    }
    assert_eq!(env.upstream.hits(), cases.len());
}

/// Regression: chunked framing hyper cannot decode (bare-LF chunk lines) fails
/// the body mid-stream, after the head went to the upstream. That is the
/// client's fault and was answered 502 "upstream unavailable"; it is a 400.
#[tokio::test]
async fn should_400_not_502_when_the_client_chunked_body_is_malformed() {
    let env = Env::start().await;
    env.allow("tok", 1).await;
    let req = "POST /reframe HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer tok\r\n\
               Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\nhello\n0\n\n";
    let raw = raw_exchange(env.gate.addr, req.as_bytes()).await;
    let r = parse_responses(&raw, &[]).remove(0);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "invalid_request");
}
