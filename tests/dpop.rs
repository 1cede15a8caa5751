//! Sender-constrained tokens, DPoP part (RFC 9449), through real sockets: a
//! real tokengate, a real upstream, the fake AS (wiremock) or the real one
//! (oidc-provider 9, whose DPoP feature binds a token to the key of the
//! proof its token request carries), proofs signed here, and a real
//! redis-server for the fleet-wide replay check.

mod common;

use common::*;
use http::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tokengate::clock::Clock;
use tokengate::config::{ConventionSetting, Mode, RawConfig};

const PATH: &str = "/api/things";

/// An AS answer for a token bound to `key` (as oidc-provider and Keycloak
/// answer: `token_type` DPoP and `cnf.jkt`).
fn bound_to(env: &Env, key: &DpopKey) -> Value {
    json!({
        "active": true, "sub": "alice", "client_id": "app", "scope": "read",
        "exp": env.now() + 3600, "token_type": "DPoP", "cnf": {"jkt": key.jkt},
    })
}

/// A proof for `GET <gate>/api/things` with `token`, issued now, fresh jti.
fn spec(env: &Env, token: &str) -> ProofSpec {
    ProofSpec::new("GET", &env.url(PATH), env.now(), Some(token))
}

/// GET with `Authorization: <scheme> <token>` and the given DPoP headers.
async fn get(env: &Env, scheme: &str, token: &str, proofs: &[&str]) -> Resp {
    let mut b = request(Method::GET, &env.url(PATH))
        .header("authorization", format!("{scheme} {token}"))
        .header("x-auth-token-binding", "spoofed");
    for p in proofs {
        b = b.header("dpop", *p);
    }
    send(&env.http1, b.body(empty()).unwrap()).await
}

fn challenge(r: &Resp) -> &str {
    r.header("www-authenticate").unwrap_or("")
}

#[tokio::test]
async fn should_refuse_a_dpop_bound_token_sent_as_bearer_whatever_dpop_enabled_says() {
    for enabled in [true, false] {
        let env = Env::start_with(|raw| raw.dpop.enabled = enabled).await;
        let key = DpopKey::generate();
        env.answer("bound-tok", bound_to(&env, &key), 1).await;
        // As Bearer, even with a valid proof for its key next to it.
        let proof = key.proof(&spec(&env, "bound-tok"));
        let r = get(&env, "Bearer", "bound-tok", &[&proof]).await;
        assert_rejection(&r, 401, "invalid_token");
        if enabled {
            assert!(
                challenge(&r).starts_with(r#"DPoP realm="tokengate", algs="ES256 ES384 PS256 RS256 EdDSA", error="invalid_token""#),
                "{}",
                challenge(&r)
            );
        } else {
            assert!(challenge(&r).starts_with("Bearer "), "{}", challenge(&r));
            // With DPoP off the DPoP scheme is not read at all: no credentials.
            let r = get(&env, "DPoP", "bound-tok", &[&proof]).await;
            assert_rejection(&r, 401, "unauthorized");
        }
        // `token_type: DPoP` alone (no cnf.jkt) binds too: to a key we cannot check.
        let mut typed = bound_to(&env, &key);
        typed.as_object_mut().unwrap().remove("cnf");
        env.answer("typed-tok", typed, 1).await;
        assert_rejection(
            &get(&env, "Bearer", "typed-tok", &[]).await,
            401,
            "invalid_token",
        );
        assert_eq!(env.upstream.hits(), 0, "nothing reaches the upstream");
        let m = env.scrape().await;
        assert_eq!(
            m.sum(
                "tokengate_binding_refusals_total",
                &[("reason", "dpop_required")]
            ),
            1.0
        );
    }
}

#[tokio::test]
async fn should_pass_a_valid_proof_and_tell_the_upstream_how_the_token_was_bound() {
    let env = Env::start().await;
    let key = DpopKey::generate();
    env.answer("bound-tok", bound_to(&env, &key), 1).await;
    env.allow("plain-tok", 1).await;

    let r = get(
        &env,
        "DPoP",
        "bound-tok",
        &[&key.proof(&spec(&env, "bound-tok"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.echo();
    assert_eq!(seen.header_all("x-auth-token-binding"), vec!["dpop"]);
    assert!(!seen.has("dpop"), "the proof is not forwarded by default");
    assert_eq!(seen.header("x-auth-subject"), Some("alice"));
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let r = get(
        &env,
        "dpop",
        "bound-tok",
        &[&key.proof(&spec(&env, "bound-tok"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // HTTP/2 (h2c): the host of htu is the :authority.
    let req = request(Method::GET, &env.url(PATH))
        .header("authorization", "DPoP bound-tok")
        .header("dpop", key.proof(&spec(&env, "bound-tok")))
        .body(empty())
        .unwrap();
    let r = send(&env.h2c, req).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // An unbound token as Bearer: binding none (the spoofed value is gone).
    let r = get(&env, "Bearer", "plain-tok", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header_all("x-auth-token-binding"), vec!["none"]);

    // ... and with the DPoP scheme: refused (RFC 9449 §7.1, no key to match).
    let r = get(
        &env,
        "DPoP",
        "plain-tok",
        &[&key.proof(&spec(&env, "plain-tok"))],
    )
    .await;
    assert_rejection(&r, 401, "invalid_token");
    assert!(challenge(&r).starts_with("DPoP "), "{}", challenge(&r));

    let m = env.scrape().await;
    assert_eq!(
        m.sum("tokengate_dpop_proofs_total", &[("outcome", "accepted")]),
        3.0
    );
    assert_eq!(
        m.sum(
            "tokengate_binding_refusals_total",
            &[("reason", "not_dpop_bound")]
        ),
        1.0
    );
}

#[tokio::test]
async fn should_forward_the_proof_only_when_configured() {
    let env = Env::start_with(|raw| raw.dpop.forward_proof = true).await;
    let key = DpopKey::generate();
    env.answer("bound-tok", bound_to(&env, &key), 1).await;
    let proof = key.proof(&spec(&env, "bound-tok"));
    let r = get(&env, "DPoP", "bound-tok", &[&proof]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("dpop"), Some(proof.as_str()));
}

#[tokio::test]
async fn should_check_the_proof_on_every_request_cache_hits_included() {
    let env = Env::start().await;
    let key = DpopKey::generate();
    let thief = DpopKey::generate();
    // One introspection: every request below after the first is a cache hit.
    env.answer("bound-tok", bound_to(&env, &key), 1).await;

    let first = key.proof(&spec(&env, "bound-tok"));
    assert_eq!(get(&env, "DPoP", "bound-tok", &[&first]).await.status, 200);

    let s = spec(&env, "bound-tok");
    let mut post = s.clone();
    post.htm = "POST".into();
    let mut other_path = s.clone();
    other_path.htu = env.url("/api/other");
    let mut other_host = s.clone();
    other_host.htu = format!("http://api.example.com{PATH}");
    let mut https = s.clone();
    https.htu = env.url(PATH).replace("http://", "https://");
    let mut other_token = s.clone();
    other_token.token = Some("another-token".into());
    let mut old = s.clone();
    old.iat = env.now() - 120;
    let mut future = s.clone();
    future.iat = env.now() + 60;
    let mut private_header = key.header();
    private_header["jwk"]["d"] = json!("c2VjcmV0");
    let cases: Vec<(&str, String)> = vec![
        ("replay", first.clone()),
        ("htm", key.proof(&post)),
        ("htu", key.proof(&other_path)),
        ("htu", key.proof(&other_host)),
        ("htu", key.proof(&https)),
        ("ath", key.proof(&other_token)),
        ("iat", key.proof(&old)),
        ("iat", key.proof(&future)),
        // A proof that is valid in every way, by another key: a stolen token.
        ("key_mismatch", thief.proof(&spec(&env, "bound-tok"))),
        ("jwk", key.sign(&private_header, &DpopKey::claims(&s))),
        (
            "typ",
            key.sign(
                &json!({"typ": "JWT", "alg": "ES256", "jwk": key.jwk}),
                &DpopKey::claims(&s),
            ),
        ),
        ("signature", {
            let mut t = key.proof(&s);
            let last = t.pop().unwrap();
            t.push(if last == 'A' { 'B' } else { 'A' });
            t
        }),
        ("malformed", "not-a-jws".into()),
    ];
    for (reason, proof) in &cases {
        let r = get(&env, "DPoP", "bound-tok", &[proof]).await;
        assert_rejection(&r, 401, "invalid_dpop_proof");
        assert!(
            challenge(&r).contains(r#"error="invalid_dpop_proof""#)
                && challenge(&r).starts_with("DPoP "),
            "{reason}: {}",
            challenge(&r)
        );
    }
    // No proof, and two proofs.
    assert_rejection(
        &get(&env, "DPoP", "bound-tok", &[]).await,
        401,
        "invalid_dpop_proof",
    );
    let (a, b) = (
        key.proof(&spec(&env, "bound-tok")),
        key.proof(&spec(&env, "bound-tok")),
    );
    assert_rejection(
        &get(&env, "DPoP", "bound-tok", &[&a, &b]).await,
        401,
        "invalid_dpop_proof",
    );
    // The refused proofs were not recorded: a fresh one still passes.
    assert_eq!(
        get(
            &env,
            "DPoP",
            "bound-tok",
            &[&key.proof(&spec(&env, "bound-tok"))]
        )
        .await
        .status,
        200
    );
    assert_eq!(env.upstream.hits(), 2);

    let m = env.scrape().await;
    for reason in [
        "replay",
        "htm",
        "ath",
        "key_mismatch",
        "jwk",
        "typ",
        "signature",
        "malformed",
    ] {
        assert_eq!(
            m.sum("tokengate_dpop_proofs_total", &[("outcome", reason)]),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(
        m.sum("tokengate_dpop_proofs_total", &[("outcome", "htu")]),
        3.0
    );
    assert_eq!(
        m.sum("tokengate_dpop_proofs_total", &[("outcome", "iat")]),
        2.0
    );
    assert_eq!(
        m.sum("tokengate_dpop_proofs_total", &[("outcome", "missing")]),
        1.0
    );
    assert_eq!(
        m.sum("tokengate_dpop_proofs_total", &[("outcome", "multiple")]),
        1.0
    );
    assert_eq!(m.sum("tokengate_dpop_replays_total", &[]), 1.0);
    assert_eq!(
        m.sum("tokengate_cache_hits_total", &[("cache", "positive")]),
        16.0
    );
}

#[tokio::test]
async fn should_take_the_forwarded_scheme_and_host_only_from_trusted_proxies() {
    let htu = format!("https://api.example.com{PATH}");
    for trusted in [true, false] {
        let env = Env::start_with(|raw| {
            if trusted {
                raw.forwarding.trusted_proxies = vec!["127.0.0.1".into()];
            }
        })
        .await;
        let key = DpopKey::generate();
        env.answer("bound-tok", bound_to(&env, &key), 1).await;
        let proof = key.proof(&ProofSpec::new("GET", &htu, env.now(), Some("bound-tok")));
        let req = request(Method::GET, &env.url(PATH))
            .header("authorization", "DPoP bound-tok")
            .header("dpop", proof)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.com")
            .body(empty())
            .unwrap();
        let r = send(&env.http1, req).await;
        if trusted {
            assert_eq!(r.status, 200, "{}", r.text());
        } else {
            // From anyone else the headers mean nothing: htu must be our own URI.
            assert_rejection(&r, 401, "invalid_dpop_proof");
            let own = key.proof(&spec(&env, "bound-tok"));
            assert_eq!(get(&env, "DPoP", "bound-tok", &[&own]).await.status, 200);
        }
    }
}

#[tokio::test]
async fn should_hand_out_a_nonce_and_accept_proofs_that_carry_it() {
    let env = Env::start_with(|raw| raw.dpop.require_nonce = true).await;
    let key = DpopKey::generate();
    env.answer("bound-tok", bound_to(&env, &key), 1).await;
    let r = get(
        &env,
        "DPoP",
        "bound-tok",
        &[&key.proof(&spec(&env, "bound-tok"))],
    )
    .await;
    assert_rejection(&r, 401, "use_dpop_nonce");
    assert!(
        challenge(&r).contains(r#"error="use_dpop_nonce""#),
        "{}",
        challenge(&r)
    );
    let nonce = r
        .header("dpop-nonce")
        .expect("DPoP-Nonce header")
        .to_owned();
    let mut s = spec(&env, "bound-tok");
    s.nonce = Some(nonce.clone());
    assert_eq!(
        get(&env, "DPoP", "bound-tok", &[&key.proof(&s)])
            .await
            .status,
        200
    );
    // A forged nonce gets a fresh one instead.
    let mut s = spec(&env, "bound-tok");
    s.nonce = Some("forged".into());
    let r = get(&env, "DPoP", "bound-tok", &[&key.proof(&s)]).await;
    assert_rejection(&r, 401, "use_dpop_nonce");
    assert!(r.header("dpop-nonce").is_some());
}

#[tokio::test]
async fn should_check_the_proof_against_the_original_request_in_forward_auth_mode() {
    let env = Env::start_with(|raw: &mut RawConfig| {
        raw.mode = Mode::ForwardAuth;
        raw.forward_auth.convention = ConventionSetting::Nginx;
        raw.forwarding.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let key = DpopKey::generate();
    env.answer("bound-tok", bound_to(&env, &key), 1).await;
    let check = |proof: String, method: &'static str| {
        let req = request(Method::GET, &env.url("/_auth"))
            .header("x-original-uri", format!("{PATH}?page=2"))
            .header("x-original-method", method)
            .header("x-forwarded-host", "app.example.com")
            .header("x-forwarded-proto", "https")
            .header("authorization", "DPoP bound-tok")
            .header("dpop", proof)
            .body(empty())
            .unwrap();
        send(&env.http1, req)
    };
    let htu = format!("https://app.example.com{PATH}");
    let proof = |htm: &str| key.proof(&ProofSpec::new(htm, &htu, env.now(), Some("bound-tok")));
    let r = check(proof("DELETE"), "DELETE").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-token-binding"), Some("dpop"));
    // htm is the original method, not the sub-request's GET.
    assert_rejection(
        &check(proof("GET"), "DELETE").await,
        401,
        "invalid_dpop_proof",
    );
    // Bearer for the bound token: refused here as well.
    let req = request(Method::GET, &env.url("/_auth"))
        .header("x-original-uri", PATH)
        .header("x-original-method", "GET")
        .header("x-forwarded-host", "app.example.com")
        .header("authorization", "Bearer bound-tok")
        .body(empty())
        .unwrap();
    assert_rejection(&send(&env.http1, req).await, 401, "invalid_token");
}

#[tokio::test]
async fn should_refuse_tokens_bound_in_ways_it_cannot_check() {
    let env = Env::start().await;
    let mut cert_bound =
        json!({"active": true, "sub": "alice", "scope": "read", "exp": env.now() + 3600});
    let thumbprint = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32])
    };
    cert_bound["cnf"] = json!({"x5t#S256": thumbprint});
    env.answer("cert-tok", cert_bound, 1).await;
    let mut odd = json!({"active": true, "sub": "alice", "scope": "read", "exp": env.now() + 3600});
    odd["cnf"] = json!({"jwk": {"kty": "EC"}});
    env.answer("odd-tok", odd, 1).await;
    for token in ["cert-tok", "odd-tok"] {
        let r = get(&env, "Bearer", token, &[]).await;
        assert_rejection(&r, 401, "invalid_token");
        assert!(challenge(&r).starts_with("Bearer "), "{}", challenge(&r));
    }
    assert_eq!(env.upstream.hits(), 0);
    let m = env.scrape().await;
    assert_eq!(
        m.sum(
            "tokengate_binding_refusals_total",
            &[("reason", "certificate_missing")]
        ),
        1.0,
        "no client certificate at all: missing, not mismatched"
    );
}

/// `[dpop]` is read per request: a reload applies at once, except
/// `replay_cache_entries`, which warns that it needs a restart.
#[tokio::test]
async fn should_apply_reloaded_dpop_settings_at_once() {
    let env = Env::start().await;
    let key = DpopKey::generate();
    env.answer("bound-tok", bound_to(&env, &key), 1).await;
    let ok = key.proof(&spec(&env, "bound-tok"));
    assert_eq!(get(&env, "DPoP", "bound-tok", &[&ok]).await.status, 200);

    let mut raw = base_config(&env.auth, &env.upstream.url());
    raw.dpop.require_nonce = true;
    raw.dpop.algorithms = vec!["EdDSA".into()];
    let report = env.gate.reload().reload(raw.validate().unwrap()).unwrap();
    assert!(report.restart_required.is_empty(), "{report:?}");
    let r = get(
        &env,
        "DPoP",
        "bound-tok",
        &[&key.proof(&spec(&env, "bound-tok"))],
    )
    .await;
    assert_rejection(&r, 401, "invalid_dpop_proof");
    assert!(
        challenge(&r).contains(r#"algs="EdDSA""#),
        "{}",
        challenge(&r)
    );

    raw.dpop.algorithms = vec!["ES256".into()];
    raw.dpop.replay_cache_entries = 10;
    let report = env.gate.reload().reload(raw.validate().unwrap()).unwrap();
    assert_eq!(report.restart_required, vec!["dpop.replay_cache_entries"]);
    let r = get(
        &env,
        "DPoP",
        "bound-tok",
        &[&key.proof(&spec(&env, "bound-tok"))],
    )
    .await;
    assert_rejection(&r, 401, "use_dpop_nonce");
}

// ---------------------------------------------------------------------------
// The real AS: oidc-provider's DPoP feature
// ---------------------------------------------------------------------------

#[tokio::test]
async fn should_enforce_the_binding_of_real_oidc_provider_dpop_tokens() {
    let test = "should_enforce_the_binding_of_real_oidc_provider_dpop_tokens";
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
    raw.introspection.client_secret = tokengate::config::Secret::new(OIDC_SECRET);
    raw.introspection.timeout = Duration::from_secs(5);
    let gate = Gate::start(&raw).await;
    let client = http1_client();
    let url = format!("http://{}{PATH}", gate.addr);
    let now = || gate.clock.unix_secs();
    let call = |auth: String, proof: Option<String>| {
        let mut b = request(Method::GET, &url).header("authorization", auth);
        if let Some(p) = proof {
            b = b.header("dpop", p);
        }
        send(&client, b.body(empty()).unwrap())
    };

    let key = DpopKey::generate();
    let issued = provider.access_token(&client, Some(&key)).await;
    assert_eq!(issued["token_type"], "DPoP", "{issued}");
    let token = issued["access_token"].as_str().unwrap().to_owned();
    let proof = |key: &DpopKey, htm: &str, htu: &str, token: &str| {
        key.proof(&ProofSpec::new(htm, htu, now(), Some(token)))
    };

    // As Bearer: refused (the AS's answer has cnf.jkt).
    assert_rejection(
        &call(format!("Bearer {token}"), None).await,
        401,
        "invalid_token",
    );
    // With a valid proof: allowed, and the upstream is told so.
    let first = proof(&key, "GET", &url, &token);
    let r = call(format!("DPoP {token}"), Some(first.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-auth-token-binding"), Some("dpop"));
    assert_eq!(r.echo().header("x-auth-client-id"), Some("tokengate"));
    // Replayed, and wrong htm / htu / ath / key: refused (all cache hits).
    let thief = DpopKey::generate();
    let bad = [
        first,
        proof(&key, "POST", &url, &token),
        proof(
            &key,
            "GET",
            &format!("http://{}/api/other", gate.addr),
            &token,
        ),
        proof(&key, "GET", &url, "some-other-token"),
        proof(&thief, "GET", &url, &token),
    ];
    for p in bad {
        assert_rejection(
            &call(format!("DPoP {token}"), Some(p)).await,
            401,
            "invalid_dpop_proof",
        );
    }
    // Still good with a fresh proof.
    let r = call(
        format!("DPoP {token}"),
        Some(proof(&key, "GET", &url, &token)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // An unbound token from the same AS: fine as Bearer, refused with the DPoP scheme.
    let plain = provider.access_token(&client, None).await;
    assert_eq!(plain["token_type"], "Bearer", "{plain}");
    let plain = plain["access_token"].as_str().unwrap().to_owned();
    let r = call(format!("Bearer {plain}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-auth-token-binding"), Some("none"));
    let r = call(
        format!("DPoP {plain}"),
        Some(proof(&key, "GET", &url, &plain)),
    )
    .await;
    assert_rejection(&r, 401, "invalid_token");
    drop(upstream);
}

// ---------------------------------------------------------------------------
// Fleet-wide replay check ([cache.shared], a real redis-server)
// ---------------------------------------------------------------------------

struct KeyFile(std::path::PathBuf);

impl KeyFile {
    fn new() -> Self {
        let p = temp_dir("dpop-fleet-key").join("key");
        std::fs::write(
            &p,
            "3f9c2a7b8d1e4f60a5b7c9d2e1f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1\n",
        )
        .unwrap();
        Self(p)
    }
}

#[tokio::test]
async fn should_refuse_a_proof_replayed_at_another_replica_and_fail_closed_without_redis() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let key_file = KeyFile::new();
    let fleet = |raw: &mut RawConfig| {
        raw.cache.shared.url = tokengate::config::RedisUrl(redis.url());
        raw.cache.shared.key_secret_file = key_file.0.display().to_string();
        raw.cache.shared.timeout = Duration::from_secs(2);
        // The proofs name the public URI; both replicas learn it from the proxy.
        raw.forwarding.trusted_proxies = vec!["127.0.0.1".into()];
    };
    let env = Env::start_with(fleet).await;
    let mut raw = base_config(&env.auth, &env.upstream.url());
    fleet(&mut raw);
    let other = Gate::start(&raw).await;

    let key = DpopKey::generate();
    // Introspected by each replica at most once (the second may read L2).
    introspection_of("bound-tok")
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(bound_to(&env, &key)))
        .expect(1..=2)
        .mount(&env.auth)
        .await;
    let htu = format!("https://api.example.com{PATH}");
    let via = |gate: &Gate, proof: String| {
        let req = request(Method::GET, &format!("http://{}{PATH}", gate.addr))
            .header("authorization", "DPoP bound-tok")
            .header("dpop", proof)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.com")
            .body(empty())
            .unwrap();
        send(&env.http1, req)
    };
    let proof = || key.proof(&ProofSpec::new("GET", &htu, env.now(), Some("bound-tok")));

    let p = proof();
    assert_eq!(via(&env.gate, p.clone()).await.status, 200);
    // The same proof at the other replica: it has never seen it, Redis has.
    assert_rejection(&via(&other, p).await, 401, "invalid_dpop_proof");
    assert_eq!(via(&other, proof()).await.status, 200);

    // Redis gone: whether a proof was used elsewhere is unknown, so no allow.
    redis.kill();
    let r = via(&env.gate, proof()).await;
    assert_rejection(&r, 503, "temporarily_unavailable");
    assert!(r.header("retry-after").is_some());
    // A Bearer request with an unbound token does not need Redis.
    env.allow("plain-tok", 1).await;
    let r = via_bearer(&env, "plain-tok").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn via_bearer(env: &Env, token: &str) -> Resp {
    let req = request(Method::GET, &env.url(PATH))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    send(&env.http1, req).await
}

/// A JWT access token bound to a DPoP key (`cnf.jkt` in the JWT) stays bound
/// in hybrid mode (`jwt.introspect`) when the AS's RFC 7662 answer does not
/// repeat `cnf`: sent as Bearer it is refused, locally checked or hybrid.
#[tokio::test]
async fn should_keep_a_jwts_binding_when_the_introspection_answer_omits_cnf() {
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJmLHPnKKvKHYDrzJ\n/6Nk4BdFOJdRgwY4PKQ4y0egfoWhRANCAATQ6eEE/4DvR8VDVLPX96m4ziTezmEC\nGjiWgM97g505by45c8xPLMr6sMw4EfDiuUjwz+HjsJLovD+SlPtU9fEI\n-----END PRIVATE KEY-----\n";
    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"k1","x":"0OnhBP-A70fFQ1Sz1_epuM4k3s5hAho4loDPe4OdOW8","y":"LjlzzE8syvqwzDgR8OK5SPDP4eOwkui8P5KU-1T18Qg"}"#;
    const ISS: &str = "https://as.example";
    for hybrid in [false, true] {
        let env = Env::start_with(|raw| {
            let base = raw.introspection.url.rsplit_once('/').unwrap().0.to_owned();
            raw.jwt.enabled = true;
            raw.jwt.issuer = ISS.into();
            raw.jwt.jwks_url = format!("{base}/jwks");
            raw.jwt.introspect = hybrid;
        })
        .await;
        wiremock::Mock::given(wiremock::matchers::path_regex("jwks$"))
            .respond_with(
                wiremock::ResponseTemplate::new(200)
                    .set_body_raw(format!(r#"{{"keys":[{EC_JWK}]}}"#), "application/json"),
            )
            .mount(&env.auth)
            .await;
        let key = DpopKey::generate();
        let now = env.now();
        let claims = json!({"iss": ISS, "sub": "alice", "client_id": "app", "scope": "read",
            "iat": now, "exp": now + 600, "jti": "j1", "cnf": {"jkt": key.jkt}});
        let mut h = Header::new(Algorithm::ES256);
        h.typ = Some("at+jwt".into());
        h.kid = Some("k1".into());
        let der: String = EC_PRIVATE
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(der)
            .unwrap();
        let token = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_der(&der)).unwrap();
        // The AS's RFC 7662 answer: active, no cnf.
        env.answer(
            &token,
            json!({"active": true, "sub": "alice", "client_id": "app", "scope": "read",
                   "exp": now + 600, "iss": ISS, "token_type": "Bearer"}),
            if hybrid { 1 } else { 0 },
        )
        .await;
        let r = via_bearer(&env, &token).await;
        assert_eq!(r.status, 401, "hybrid={hybrid}: {}", r.text());
        assert_rejection(&r, 401, "invalid_token");
        assert_eq!(env.upstream.hits(), 0, "hybrid={hybrid}");
        // With its proof it passes, and the upstream learns it was DPoP.
        let proof = key.proof(&spec(&env, &token));
        let r = get(&env, "DPoP", &token, &[&proof]).await;
        assert_eq!(r.status, 200, "hybrid={hybrid}: {}", r.text());
    }
}

/// A trusted proxy's X-Forwarded-Host that is not a plain host (with `#`, `?`
/// or `@`) cannot make a proof for another URI match: it is ignored, and the
/// proofs below (for the root, or for another host) are refused.
#[tokio::test]
async fn should_not_let_a_forwarded_host_cut_or_move_the_htu() {
    let env = Env::start_with(|raw| {
        raw.forwarding.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let key = DpopKey::generate();
    env.answer("bound-tok", bound_to(&env, &key), 1).await;
    for (xfh, htu) in [
        ("api.example.com#", "https://api.example.com/"),
        ("api.example.com?", "https://api.example.com/"),
        (
            "api.example.com@evil.example",
            "https://evil.example/api/things",
        ),
    ] {
        let proof = key.proof(&ProofSpec::new("GET", htu, env.now(), Some("bound-tok")));
        let req = request(Method::GET, &env.url(PATH))
            .header("authorization", "DPoP bound-tok")
            .header("dpop", proof)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", xfh)
            .body(empty())
            .unwrap();
        let r = send(&env.http1, req).await;
        assert_rejection(&r, 401, "invalid_dpop_proof");
    }
}

/// Without [cache.shared], a flood of an attacker's own valid proofs cannot
/// push a victim's replay record out: a full replay cache refuses new proofs
/// (503) rather than forget a live one, so the victim's proof stays spent.
#[tokio::test]
async fn should_not_forget_a_spent_proof_when_flooded() {
    let env = Env::start_with(|raw| raw.dpop.replay_cache_entries = 4).await;
    let key = DpopKey::generate();
    env.answer("bound-tok", bound_to(&env, &key), 1).await;
    let victim = key.proof(&spec(&env, "bound-tok"));
    assert_eq!(get(&env, "DPoP", "bound-tok", &[&victim]).await.status, 200);
    assert_eq!(get(&env, "DPoP", "bound-tok", &[&victim]).await.status, 401);
    let attacker = DpopKey::generate();
    env.answer("att-tok", bound_to(&env, &attacker), 1).await;
    let mut refused = 0;
    for _ in 0..50 {
        let p = attacker.proof(&spec(&env, "att-tok"));
        if get(&env, "DPoP", "att-tok", &[&p]).await.status == 503 {
            refused += 1;
        }
    }
    assert!(refused > 0, "a full replay cache must refuse new proofs");
    let r = get(&env, "DPoP", "bound-tok", &[&victim]).await;
    assert_ne!(r.status, 200, "the spent proof was replayed");
    assert_eq!(env.upstream.hits(), 1 + 50 - refused);
}
