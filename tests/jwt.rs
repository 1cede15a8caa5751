//! JWT access tokens (RFC 9068) checked locally, the JWKS, the hybrid mode
//! and RFC 9701 signed introspection answers, against a real authorization
//! server: oidc-provider 9 (`tests/oidc/jwt.mjs`), which issues ES256 and
//! RS256 JWT access tokens per resource indicator, serves its JWKS and signs
//! introspection answers. "No AS call" is proven by the AS's own request
//! counts (`GET /_counts`).
mod common;
use common::*;

use http::Method;
use std::time::Duration;
use tokengate::config::{RawConfig, Secret};

const API: &str = "urn:tokengate:api";
const RS: &str = "urn:tokengate:rs";
const OTHER: &str = "urn:tokengate:other";

/// tokengate in front of `asrv` with `[jwt]` on (keys from `jwks_url`),
/// routes requiring our two JWT audiences.
fn config(asrv: &JwtAs, upstream: &Upstream) -> RawConfig {
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        upstream: upstream.url(),
        shutdown_timeout: Duration::from_secs(1),
        ..RawConfig::default()
    };
    raw.introspection.url = asrv.url("/token/introspection");
    raw.introspection.client_id = "tokengate".into();
    raw.introspection.client_secret = Secret::new(JWT_AS_SECRET);
    raw.introspection.timeout = Duration::from_secs(5);
    raw.introspection.probe = tokengate::config::ProbeMode::Off;
    raw.jwt.enabled = true;
    raw.jwt.issuer = asrv.issuer();
    raw.jwt.jwks_url = asrv.url("/jwks");
    raw
}

/// `tokengate_jwt_checks_total{kind}` from the admin listener.
async fn jwt_checks(gate: &Gate, kind: &str) -> f64 {
    let req = request(Method::GET, &gate.admin_url("/metrics"))
        .body(empty())
        .unwrap();
    let text = send(&http1_client(), req).await.text();
    Scrape::parse(&text)
        .unwrap()
        .sum("tokengate_jwt_checks_total", &[("kind", kind)])
}

async fn get(gate: &Gate, token: &str) -> Resp {
    let req = request(Method::GET, &format!("http://{}/api", gate.addr))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    send(&http1_client(), req).await
}

#[tokio::test]
async fn should_pass_es256_and_rs256_jwts_locally_without_any_as_call() {
    let test = "should_pass_es256_and_rs256_jwts_locally_without_any_as_call";
    let Some(asrv) = JwtAs::start(test, 0, 1).await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut raw = config(&asrv, &upstream);
    raw.policy.require_audience = vec![API.into(), RS.into()];
    raw.policy.require_scopes = vec!["read".into()];
    let gate = Gate::start(&raw).await;
    for resource in [API, RS] {
        let token = asrv.token(Some(resource)).await;
        let alg = part(&token, 0)["alg"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            let r = get(&gate, &token).await;
            assert_eq!(r.status, 200, "{alg}: {}", r.text());
            let echo = r.echo();
            assert_eq!(echo.header("x-auth-client-id"), Some("tokengate"));
            assert_eq!(echo.header("x-auth-subject"), Some("tokengate"));
            assert_eq!(echo.header("x-auth-scope"), Some("read"));
        }
    }
    assert_eq!(asrv.count("/token/introspection").await, 0, "no AS call");
    assert_eq!(
        asrv.count("/jwks").await,
        1,
        "one JWKS fetch serves every token"
    );
    assert_eq!(
        jwt_checks(&gate, "valid").await,
        2.0,
        "repeats are cache hits"
    );
}

#[tokio::test]
async fn should_refuse_forged_expired_and_foreign_jwts_without_any_as_call() {
    let test = "should_refuse_forged_expired_and_foreign_jwts_without_any_as_call";
    let Some(asrv) = JwtAs::start(test, 0, 1).await else {
        return;
    };
    let Some(other_as) = JwtAs::start(test, 0, 7).await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut raw = config(&asrv, &upstream);
    raw.policy.require_audience = vec![API.into()];
    let gate = Gate::start(&raw).await;
    let good = asrv.token(Some(API)).await;
    let header = part(&good, 0);
    let claims = part(&good, 1);

    let mut widened = claims.clone();
    widened["scope"] = "read write admin".into();
    let tampered = forge(&good, &header, &widened);

    let mut h = header.clone();
    h["alg"] = "none".into();
    let alg_none = format!("{}.{}.", b64(&h.to_string()), b64(&claims.to_string()));

    // The classic confusion: HS256 keyed with the issuer's *public* key.
    let jwks_req = request(Method::GET, &asrv.url("/jwks"))
        .body(empty())
        .unwrap();
    let jwks = send(&asrv.client, jwks_req).await.json();
    let public_key = jwks["keys"][0].to_string();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.typ = Some("at+jwt".into());
    hs_header.kid = header["kid"].as_str().map(String::from);
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(public_key.as_bytes()).unwrap(),
    )
    .unwrap();

    let mut h = header.clone();
    h["typ"] = "JWT".into();
    let wrong_typ = forge(&good, &h, &claims);

    let foreign = other_as.token(Some(API)).await;
    let wrong_aud = asrv.token(Some(OTHER)).await;

    for (what, token) in [
        ("tampered payload", &tampered),
        ("alg none", &alg_none),
        ("HS256 keyed with the public key", &hs256),
        ("typ JWT from our issuer", &wrong_typ),
        ("at+jwt of an issuer we do not know", &foreign),
        ("audience of another resource", &wrong_aud),
    ] {
        let r = get(&gate, token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_rejection(&r, 401, "invalid_token");
    }
    // The genuine token still passes, until it has expired (the gate's clock
    // moves past exp; a fresh token so that the cache is not involved).
    assert_eq!(get(&gate, &good).await.status, 200);
    let fresh = asrv.token(Some(API)).await;
    gate.clock.advance(Duration::from_secs(601));
    assert_rejection(&get(&gate, &fresh).await, 401, "invalid_token");

    assert_eq!(asrv.count("/token/introspection").await, 0, "no AS call");
    assert_eq!(other_as.count("/token/introspection").await, 0);
    assert_eq!(
        other_as.count("/jwks").await,
        0,
        "a foreign issuer's keys are never fetched"
    );
    assert_eq!(jwt_checks(&gate, "signature").await, 1.0, "tampered");
    assert_eq!(jwt_checks(&gate, "algorithm").await, 2.0, "alg none, HS256");
    assert_eq!(jwt_checks(&gate, "wrong_typ").await, 1.0);
    assert_eq!(jwt_checks(&gate, "unknown_issuer").await, 1.0);
    assert_eq!(jwt_checks(&gate, "expired").await, 1.0);
}

#[tokio::test]
async fn should_follow_a_key_rotation_and_keep_its_keys_while_the_jwks_is_down() {
    let test = "should_follow_a_key_rotation_and_keep_its_keys_while_the_jwks_is_down";
    let Some(asrv) = JwtAs::start(test, 0, 1).await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut raw = config(&asrv, &upstream);
    raw.jwt.jwks_refetch_min_interval = Duration::from_secs(10);
    let gate = Gate::start(&raw).await;
    let first = asrv.token(Some(API)).await;
    let unseen = asrv.token(Some(RS)).await;
    assert_eq!(get(&gate, &first).await.status, 200);

    // The AS (and its JWKS) goes away: keys in hand keep working.
    let port = asrv.port;
    asrv.stop().await;
    let r = get(&gate, &unseen).await;
    assert_eq!(
        r.status,
        200,
        "a new token signed with a known key: {}",
        r.text()
    );

    // Back with new keys (same issuer): a token with the new kid is refused
    // until the refetch interval is over, then the JWKS is fetched once.
    let asrv = JwtAs::start(test, port, 2).await.expect("restart");
    let rotated = asrv.token(Some(API)).await;
    assert_eq!(part(&rotated, 0)["kid"], "es-2");
    assert_rejection(&get(&gate, &rotated).await, 401, "invalid_token");
    assert_eq!(asrv.count("/jwks").await, 0, "rate-limited: no refetch yet");
    gate.clock.advance(Duration::from_secs(11));
    let rotated = asrv.token(Some(API)).await;
    let r = get(&gate, &rotated).await;
    assert_eq!(r.status, 200, "after rotation: {}", r.text());
    assert_eq!(asrv.count("/jwks").await, 1);

    // Garbage kids cannot make the gate hammer the JWKS endpoint.
    let mut h = part(&rotated, 0);
    let claims = part(&rotated, 1);
    for i in 0..20 {
        h["kid"] = format!("garbage-{i}").into();
        assert_rejection(
            &get(&gate, &forge(&rotated, &h, &claims)).await,
            401,
            "invalid_token",
        );
    }
    assert_eq!(
        asrv.count("/jwks").await,
        1,
        "no refetch within the interval"
    );
    assert_eq!(asrv.count("/token/introspection").await, 0);
}

#[tokio::test]
async fn should_refuse_a_revoked_jwt_within_the_cache_ttl_in_hybrid_mode() {
    // oidc-provider does not introspect its own JWTs (400 for any JWT), so
    // the script serves `/_jwt_introspect`: RFC 7662 for its JWTs, with
    // revocation (`/_revoke_jwt`).
    let test = "should_refuse_a_revoked_jwt_within_the_cache_ttl_in_hybrid_mode";
    let Some(asrv) = JwtAs::start(test, 0, 1).await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut raw = config(&asrv, &upstream);
    raw.introspection.url = asrv.url("/_jwt_introspect");
    raw.jwt.introspect = true;
    raw.cache.max_ttl = Duration::from_secs(60);
    let gate = Gate::start(&raw).await;
    let token = asrv.token(Some(API)).await;
    assert_eq!(get(&gate, &token).await.status, 200);
    assert_eq!(get(&gate, &token).await.status, 200);
    assert_eq!(asrv.count("/_jwt_introspect").await, 1, "cached as usual");

    asrv.post("/_revoke_jwt", format!("token={token}")).await;
    assert_eq!(get(&gate, &token).await.status, 200, "still cached");
    gate.clock.advance(Duration::from_secs(61));
    assert_rejection(&get(&gate, &token).await, 401, "invalid_token");
    assert_eq!(asrv.count("/_jwt_introspect").await, 2);

    // A locally invalid JWT never reaches the AS.
    let mut claims = part(&token, 1);
    claims["scope"] = "admin".into();
    let tampered = forge(&token, &part(&token, 0), &claims);
    assert_rejection(&get(&gate, &tampered).await, 401, "invalid_token");
    assert_eq!(asrv.count("/_jwt_introspect").await, 2);
}

#[tokio::test]
async fn should_still_introspect_opaque_tokens_with_keys_from_discovery() {
    let test = "should_still_introspect_opaque_tokens_with_keys_from_discovery";
    let Some(asrv) = JwtAs::start(test, 0, 1).await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut raw = config(&asrv, &upstream);
    // No jwks_url: the issuer metadata's jwks_uri.
    raw.jwt.jwks_url = String::new();
    let gate = Gate::start(&raw).await;
    let opaque = asrv.token(None).await;
    assert_eq!(opaque.split('.').count(), 1, "an opaque token");
    let r = get(&gate, &opaque).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(asrv.count("/token/introspection").await, 1);
    let jwt = asrv.token(Some(API)).await;
    assert_eq!(get(&gate, &jwt).await.status, 200);
    assert_eq!(asrv.count("/token/introspection").await, 1);
    assert!(
        asrv.count("/.well-known/openid-configuration").await
            + asrv.count("/.well-known/oauth-authorization-server").await
            >= 1
    );
}

#[tokio::test]
async fn should_accept_only_verified_signed_introspection_answers() {
    let test = "should_accept_only_verified_signed_introspection_answers";
    let Some(asrv) = JwtAs::start(test, 0, 1).await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut raw = config(&asrv, &upstream);
    raw.jwt.enabled = false;
    raw.introspection.response_format = tokengate::config::ResponseFormat::Jwt;
    let gate = Gate::start(&raw).await;

    let r = get(&gate, &asrv.token(None).await).await;
    assert_eq!(r.status, 200, "a good signed answer: {}", r.text());
    assert_eq!(r.echo().header("x-auth-client-id"), Some("tokengate"));

    for mode in ["tamper", "plain"] {
        asrv.post(&format!("/_answers?mode={mode}"), String::new())
            .await;
        let r = get(&gate, &asrv.token(None).await).await;
        assert_eq!(r.status, 503, "{mode}: never an allow: {}", r.text());
        assert_rejection(&r, 503, "temporarily_unavailable");
    }
    asrv.post("/_answers?mode=normal", String::new()).await;
    assert_eq!(get(&gate, &asrv.token(None).await).await.status, 200);
    assert_eq!(asrv.count("/token/introspection").await, 4);
}

#[tokio::test]
async fn should_answer_503_not_401_while_the_issuers_keys_cannot_be_fetched() {
    // No key was ever fetched (nothing listens on port 9): tokengate cannot
    // tell whether the token is good. The fake AS must not be asked either.
    let env = Env::start_with(|raw| {
        raw.jwt.enabled = true;
        raw.jwt.issuer = "https://as.test".into();
        raw.jwt.jwks_url = "http://127.0.0.1:9/jwks".into();
    })
    .await;
    let claims = serde_json::json!({"iss": "https://as.test", "iat": 1, "exp": 4_102_444_800i64});
    let token = format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(r#"{"alg":"ES256","typ":"at+jwt","kid":"k1"}"#),
        b64(&claims.to_string())
    );
    for _ in 0..3 {
        let r = get(&env.gate, &token).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_rejection(&r, 503, "temporarily_unavailable");
    }
    assert!(env.auth.received_requests().await.unwrap().is_empty());
    assert_eq!(jwt_checks(&env.gate, "keys_unavailable").await, 3.0);
}

/// `[jwt]` and `introspection.response_format` are restart-only: the key
/// store and the verifiers are built at start. A reload names them and keeps
/// the running values.
#[tokio::test]
async fn a_reload_keeps_the_running_jwt_settings() {
    let env = Env::start().await;
    let mut raw = base_config(&env.auth, &env.upstream.url());
    raw.jwt.enabled = true;
    raw.jwt.issuer = "https://as.test".into();
    raw.introspection.response_format = tokengate::config::ResponseFormat::Jwt;
    let report = env.gate.reload().reload(raw.validate().unwrap()).unwrap();
    assert_eq!(
        report.restart_required,
        vec!["introspection.response_format", "jwt"]
    );
    let current = env.gate.reload().current();
    assert!(current.jwt.is_none());
    assert_eq!(
        current.introspection.response_format,
        tokengate::config::ResponseFormat::Json
    );
}
