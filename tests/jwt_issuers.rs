//! Several authorization servers that issue JWT access tokens: each issuer
//! with its own `[jwt]` (`[issuers.<name>.jwt]`), a route admitting several
//! (`[[routes]] issuers`), a JWT picking its issuer by `iss` and verified
//! with that issuer's keys only, opaque tokens going to the route's first
//! issuer, and RFC 9701 signed answers of a named issuer. Two real
//! authorization servers: oidc-provider 9 (`tests/oidc/jwt.mjs`) twice, each
//! with its own keys; "no AS call" is proven by their own request counts.
mod common;
use common::*;

use http::Method;
use std::time::Duration;
use tokengate::config::{RawConfig, RawIssuer, RawRoute, Secret};

const API: &str = "urn:tokengate:api";

/// Two JWT-issuing authorization servers (tests/oidc/jwt.mjs) and an
/// upstream; `None` when the test is skipped (no node outside CI).
async fn two_ases(test: &str) -> Option<(JwtAs, JwtAs, Upstream)> {
    let (Some(a), Some(b)) = (
        JwtAs::start(test, 0, 1).await,
        JwtAs::start(test, 0, 2).await,
    ) else {
        return None;
    };
    Some((a, b, Upstream::start().await))
}

/// tokengate with `a` as the default issuer (`[introspection]`, `[jwt]`)
/// and `b` as `[issuers.partner]` with `[issuers.partner.jwt]` (keys from
/// its metadata's `jwks_uri`); `/api/` admits both, default first.
fn config(a: &JwtAs, b: &JwtAs, upstream: &Upstream) -> RawConfig {
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        upstream: upstream.url(),
        shutdown_timeout: Duration::from_secs(1),
        ..RawConfig::default()
    };
    raw.introspection.url = a.url("/token/introspection");
    raw.introspection.client_id = "tokengate".into();
    raw.introspection.client_secret = Secret::new(JWT_AS_SECRET);
    raw.introspection.timeout = Duration::from_secs(5);
    raw.introspection.probe = tokengate::config::ProbeMode::Off;
    raw.jwt.enabled = true;
    raw.jwt.issuer = a.issuer();
    raw.jwt.jwks_url = a.url("/jwks");
    let mut partner = RawIssuer {
        issuer: b.issuer(),
        ..RawIssuer::default()
    };
    partner.introspection.url = b.url("/token/introspection");
    partner.introspection.client_id = "tokengate".into();
    partner.introspection.client_secret = Secret::new(JWT_AS_SECRET);
    partner.introspection.timeout = Duration::from_secs(5);
    partner.introspection.probe = tokengate::config::ProbeMode::Off;
    partner.jwt.enabled = true;
    raw.issuers.insert("partner".into(), partner);
    raw.routes = vec![RawRoute {
        issuers: vec!["default".into(), "partner".into()],
        ..RawRoute::new("/api/")
    }];
    raw
}

async fn get(gate: &Gate, path: &str, token: &str) -> Resp {
    let req = request(Method::GET, &format!("http://{}{path}", gate.addr))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    send(&http1_client(), req).await
}

async fn scrape(gate: &Gate) -> Scrape {
    let req = request(Method::GET, &gate.admin_url("/metrics"))
        .body(empty())
        .unwrap();
    Scrape::parse(&send(&http1_client(), req).await.text()).unwrap()
}

/// The claims of `real` (a genuine access token, for its times and
/// audience) with `iss` in place of its issuer.
fn claims(real: &str, iss: &str) -> serde_json::Value {
    let mut c = part(real, 1);
    c["iss"] = iss.into();
    c["jti"] = format!("forged-for-{iss}").into();
    c
}

#[tokio::test]
async fn two_jwt_issuers_on_one_route_each_token_checked_with_its_own_issuers_keys() {
    let test = "two_jwt_issuers_on_one_route_each_token_checked_with_its_own_issuers_keys";
    let Some((a, b, upstream)) = two_ases(test).await else {
        return;
    };
    let gate = Gate::start(&config(&a, &b, &upstream)).await;

    // Each issuer's JWT passes, checked locally by its own issuer: counted
    // under it, cached in its partition (repeats are hits there).
    for (asrv, name) in [(&a, "default"), (&b, "partner")] {
        let token = asrv.token(Some(API)).await;
        for _ in 0..3 {
            let r = get(&gate, "/api/x", &token).await;
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            assert_eq!(r.echo().header("x-auth-client-id"), Some("tokengate"));
        }
        let m = scrape(&gate).await;
        let valid = &[("kind", "valid"), ("issuer", name)];
        assert_eq!(m.sum("tokengate_jwt_checks_total", valid), 1.0, "{name}");
        let hits = &[("cache", "positive"), ("issuer", name)];
        assert_eq!(m.sum("tokengate_cache_hits_total", hits), 2.0, "{name}");
    }
    // Each issuer's keys came from its own JWKS: a's from jwks_url, b's from
    // the jwks_uri of its metadata.
    assert_eq!(a.count("/jwks").await, 1);
    assert_eq!(b.count("/jwks").await, 1);

    let real = b.token(Some(API)).await;
    // A token naming a but signed by b's key: a's keys verify it (b's are
    // never tried), whichever kid it names.
    let forged = b.sign(&claims(&real, &a.issuer()), None).await;
    assert_rejection(&get(&gate, "/api/x", &forged).await, 401, "invalid_token");
    let forged = b.sign(&claims(&real, &a.issuer()), Some("es-1")).await;
    assert_rejection(&get(&gate, "/api/x", &forged).await, 401, "invalid_token");
    // The same claims signed by a's own key would pass: it is the key.
    let genuine = a.sign(&claims(&real, &a.issuer()), None).await;
    assert_eq!(get(&gate, "/api/x", &genuine).await.status, 200);
    let m = scrape(&gate).await;
    let a_refused = |kind| {
        m.sum(
            "tokengate_jwt_checks_total",
            &[("kind", kind), ("issuer", "default")],
        )
    };
    assert_eq!(a_refused("unknown_key") + a_refused("signature"), 2.0);
    assert_eq!(
        m.sum("tokengate_jwt_checks_total", &[("issuer", "partner")]),
        1.0,
        "b's keys saw only b's token"
    );

    // An iss the route does not admit: 401, no AS asked, no key fetched.
    let jwks_before = a.count("/jwks").await + b.count("/jwks").await;
    let foreign = b
        .sign(&claims(&real, "https://elsewhere.example"), None)
        .await;
    assert_rejection(&get(&gate, "/api/x", &foreign).await, 401, "invalid_token");
    assert_eq!(a.count("/jwks").await + b.count("/jwks").await, jwks_before);
    assert_eq!(
        scrape(&gate)
            .await
            .sum("tokengate_jwt_checks_total", &[("kind", "unknown_issuer")]),
        1.0
    );

    // No JWT above reached an introspection endpoint.
    assert_eq!(a.count("/token/introspection").await, 0);
    assert_eq!(b.count("/token/introspection").await, 0);

    // Opaque tokens go to the route's first issuer (default = a) only: a's
    // own is active there; b's is unknown to a (401) and never sent to b.
    let a_opaque = a.token(None).await;
    assert_eq!(get(&gate, "/api/x", &a_opaque).await.status, 200);
    let b_opaque = b.token(None).await;
    assert_rejection(&get(&gate, "/api/x", &b_opaque).await, 401, "invalid_token");
    assert_eq!(a.count("/token/introspection").await, 2);
    assert_eq!(b.count("/token/introspection").await, 0, "never another AS");
}

/// A route that names one issuer admits only that one, as before routes
/// could admit several: another issuer's JWT is refused there without an
/// AS call, and routes naming none keep the default only.
#[tokio::test]
async fn a_route_naming_one_issuer_admits_only_that_ones_jwts() {
    let test = "a_route_naming_one_issuer_admits_only_that_ones_jwts";
    let Some((a, b, upstream)) = two_ases(test).await else {
        return;
    };
    let mut raw = config(&a, &b, &upstream);
    raw.routes = vec![
        RawRoute {
            issuer: "partner".into(),
            ..RawRoute::new("/b/")
        },
        RawRoute::new("/a/"),
    ];
    let gate = Gate::start(&raw).await;
    let (ta, tb) = (a.token(Some(API)).await, b.token(Some(API)).await);
    assert_eq!(get(&gate, "/b/x", &tb).await.status, 200);
    assert_eq!(get(&gate, "/a/x", &ta).await.status, 200);
    assert_rejection(&get(&gate, "/b/x", &ta).await, 401, "invalid_token");
    assert_rejection(&get(&gate, "/a/x", &tb).await, 401, "invalid_token");
    assert_eq!(a.count("/token/introspection").await, 0);
    assert_eq!(b.count("/token/introspection").await, 0);
}

/// RFC 9701 on a named issuer: its answers are verified with its own keys
/// (its `jwks_uri`), a tampered one is an AS failure (503), never an allow.
#[tokio::test]
async fn a_named_issuers_signed_introspection_answers_are_verified_with_its_keys() {
    let test = "a_named_issuers_signed_introspection_answers_are_verified_with_its_keys";
    let Some((a, b, upstream)) = two_ases(test).await else {
        return;
    };
    let mut raw = config(&a, &b, &upstream);
    let partner = raw.issuers.get_mut("partner").unwrap();
    partner.jwt.enabled = false;
    partner.introspection.response_format = tokengate::config::ResponseFormat::Jwt;
    raw.routes = vec![RawRoute {
        issuer: "partner".into(),
        ..RawRoute::new("/b/")
    }];
    let gate = Gate::start(&raw).await;
    let r = get(&gate, "/b/x", &b.token(None).await).await;
    assert_eq!(r.status, 200, "a good signed answer: {}", r.text());
    b.post("/_answers?mode=tamper", String::new()).await;
    let r = get(&gate, "/b/x", &b.token(None).await).await;
    assert_rejection(&r, 503, "temporarily_unavailable");
    b.post("/_answers?mode=normal", String::new()).await;
    assert_eq!(get(&gate, "/b/x", &b.token(None).await).await.status, 200);
    assert_eq!(b.count("/token/introspection").await, 3);
    assert_eq!(a.count("/token/introspection").await, 0);
    assert_eq!(b.count("/jwks").await, 1, "b's keys, from b's metadata");
    assert_eq!(a.count("/jwks").await, 1, "a's keys ([jwt]) are a's only");
}

/// A valid default issuer and a named issuer `p` (not yet inserted), for the
/// validation tests to spoil.
fn config_with_issuer_p() -> (RawConfig, RawIssuer) {
    let mut raw = RawConfig::default();
    raw.introspection.url = "http://as.example/introspect".into();
    raw.introspection.client_id = "c".into();
    raw.introspection.client_secret = Secret::new("s");
    let mut p = RawIssuer {
        issuer: "https://p.example".into(),
        ..RawIssuer::default()
    };
    p.introspection.url = "http://p.example/introspect".into();
    p.introspection.client_id = "c".into();
    p.introspection.client_secret = Secret::new("s");
    (raw, p)
}

#[test]
fn issuer_jwt_and_route_issuers_errors_are_all_reported() {
    let (mut raw, mut p) = config_with_issuer_p();
    p.jwt.enabled = true;
    p.jwt.issuer = "https://other.example".into();
    p.jwt.algorithms = vec!["HS256".into()];
    p.jwt.jwks_url = "ftp://x".into();
    raw.issuers.insert("p".into(), p);
    raw.routes = vec![
        RawRoute {
            issuer: "p".into(),
            issuers: vec!["p".into()],
            ..RawRoute::new("/both/")
        },
        RawRoute {
            issuers: vec!["default".into(), "nope".into(), "default".into()],
            ..RawRoute::new("/bad/")
        },
    ];
    let e = raw.validate().unwrap_err().to_string();
    for needle in [
        "issuers.p.jwt.issuer",
        "issuers.p.jwt.algorithms",
        "issuers.p.jwt.jwks_url",
        "routes[0]: set either issuer or issuers",
        "routes[1]: no issuer named \"nope\"",
        "routes[1]: issuer \"default\" is named twice",
    ] {
        assert!(e.contains(needle), "{needle} missing from:\n{e}");
    }
}

#[test]
fn the_route_table_and_a_valid_config_show_each_routes_issuers() {
    let (mut raw, mut p) = config_with_issuer_p();
    p.introspection.response_format = tokengate::config::ResponseFormat::Jwt;
    p.jwt.enabled = true;
    raw.issuers.insert("p".into(), p);
    raw.routes = vec![
        RawRoute {
            issuers: vec!["p".into(), "default".into()],
            ..RawRoute::new("/both/")
        },
        RawRoute {
            issuers: vec!["default".into()],
            ..RawRoute::new("/default/")
        },
    ];
    let s = raw.validate().unwrap();
    let table = s.routes.to_string();
    assert!(table.contains("as=p,default"), "{table}");
    assert_eq!(
        table.matches("as=").count(),
        1,
        "[\"default\"] is the default: {table}"
    );
    let j = s.issuers[0].jwt.as_ref().expect("[issuers.p.jwt]");
    assert_eq!(
        j.issuer, "https://p.example",
        "defaults to the issuer's iss"
    );
    let summary = j.summary();
    assert!(summary.contains("local=on"), "{summary}");
    assert!(
        summary.contains("(jwks_uri of https://p.example)"),
        "{summary}"
    );
}

/// `--check-config` prints each issuer's JWT settings under its line (and
/// the environment can configure a named issuer's `[jwt]`).
#[tokio::test]
async fn check_config_prints_each_issuers_jwt_settings() {
    let dir = temp_dir("jwt-issuers-check");
    let config = dir.join("tokengate.toml");
    std::fs::write(
        &config,
        r#"listen = "127.0.0.1:0"
[introspection]
url = "http://127.0.0.1:9/introspect"
client_id = "gate"
client_secret = "s"
[jwt]
enabled = true
issuer = "https://sso.example"
jwks_url = "http://127.0.0.1:9/jwks"

[issuers.partners]
issuer = "https://partners.example"
[issuers.partners.introspection]
url = "http://127.0.0.1:9/partners/introspect"
client_id = "gate-p"
client_secret = "p"
response_format = "jwt"

[[routes]]
path_prefix = "/api/"
issuers = ["default", "partners"]
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = run_bin(
        &[(
            "TOKENGATE_ISSUERS__PARTNERS__JWT__ALGORITHMS",
            "[\"ES256\"]",
        )],
        &["--check-config", "-c", &config.display().to_string()],
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for want in [
        "jwt: local=on hybrid=off iss=https://sso.example jwks=http://127.0.0.1:9/jwks algorithms=RS256,PS256,ES256,EdDSA leeway=30s",
        "jwt: local=off (keys for signed answers) hybrid=off iss=https://partners.example jwks=(jwks_uri of https://partners.example) algorithms=ES256",
        "as=default,partners",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A route admitting several issuers never shows one issuer's JWT to
/// another's AS, whatever its `typ`: b's token re-typed `JWT` (as Keycloak,
/// Entra ID or Okta access tokens are, and every ID token) on a route that
/// admits the default (a) and a third issuer, not b, is refused without an
/// AS call; before, it went to the route's first AS (a) for introspection.
#[tokio::test]
async fn a_jwt_of_an_issuer_the_route_does_not_admit_is_shown_to_no_as_whatever_its_typ() {
    let test = "a_jwt_of_an_issuer_the_route_does_not_admit_is_shown_to_no_as_whatever_its_typ";
    let Some((a, b, upstream)) = two_ases(test).await else {
        return;
    };
    let mut raw = config(&a, &b, &upstream);
    // A third issuer (introspected only; never called here).
    let mut third = RawIssuer {
        issuer: "https://third.example".into(),
        ..RawIssuer::default()
    };
    third.introspection.url = a.url("/third/introspection");
    third.introspection.client_id = "tokengate".into();
    third.introspection.client_secret = Secret::new(JWT_AS_SECRET);
    third.introspection.probe = tokengate::config::ProbeMode::Off;
    raw.issuers.insert("third".into(), third);
    raw.routes = vec![
        RawRoute {
            issuers: vec!["default".into(), "third".into()],
            ..RawRoute::new("/c/")
        },
        // One admitted issuer, introspected only: no local check would
        // refuse b's token before its AS saw it.
        RawRoute {
            issuer: "third".into(),
            ..RawRoute::new("/t/")
        },
    ];
    let gate = Gate::start(&raw).await;
    let real = b.token(Some(API)).await;
    for typ in [Some("JWT"), None] {
        let mut header = part(&real, 0);
        match typ {
            Some(t) => header["typ"] = t.into(),
            None => drop(header.as_object_mut().unwrap().remove("typ")),
        }
        let token = forge(&real, &header, &part(&real, 1));
        assert_rejection(&get(&gate, "/c/x", &token).await, 401, "invalid_token");
        assert_rejection(&get(&gate, "/t/x", &token).await, 401, "invalid_token");
    }
    // b's real at+jwt on the single-issuer route as well.
    assert_rejection(&get(&gate, "/t/x", &real).await, 401, "invalid_token");
    assert_eq!(
        a.count("/token/introspection").await,
        0,
        "b's token shown to a"
    );
    assert_eq!(a.count("/third/introspection").await, 0);
    assert_eq!(b.count("/token/introspection").await, 0);
    // An opaque token still goes to the route's first AS.
    let a_opaque = a.token(None).await;
    assert_eq!(get(&gate, "/c/x", &a_opaque).await.status, 200);
    assert_eq!(a.count("/token/introspection").await, 1);
}
