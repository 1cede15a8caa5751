//! Access policy end to end: routes, requirements, token sources, claims to
//! headers, and discovery, through real sockets against `tokengate::run`.

mod common;

use common::*;
use http::Method;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokengate::clock::ManualClock;
use tokengate::config::RawRoute;
use tokio::net::TcpListener;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn route(prefix: &str) -> RawRoute {
    RawRoute::new(prefix)
}

fn public(prefix: &str) -> RawRoute {
    RawRoute::public(prefix)
}

#[tokio::test]
async fn should_serve_public_path_without_token_or_introspection_and_still_strip_identity() {
    let env = Env::start_with(|c| c.routes = vec![public("/healthz")]).await;
    env.forbid_introspection().await;
    let req = request(Method::GET, &env.url("/healthz/live"))
        .header("X-Auth-Subject", "mallory")
        .header("x-remote-user", "root")
        .body(empty())
        .unwrap();
    let r = send(&env.http1, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.target, "/healthz/live");
    assert!(
        !echo.has("x-auth-subject"),
        "spoofed identity on a public path"
    );
    assert!(!echo.has("x-remote-user"));
    // Segment boundary: /healthzz is not public.
    let r = send(
        &env.http1,
        request(Method::GET, &env.url("/healthzz"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_rejection(&r, 401, "unauthorized");
}

#[tokio::test]
async fn should_403_with_scope_attribute_when_route_needs_a_scope_the_token_lacks() {
    let env = Env::start_with(|c| {
        c.routes = vec![RawRoute {
            methods: vec!["POST".into(), "DELETE".into()],
            require_scopes: Some(vec!["admin".into(), "write".into()]),
            ..route("/admin/")
        }]
    })
    .await;
    env.allow("tok-read-write", 1).await; // scope "read write": no admin
    let req = request(Method::DELETE, &env.url("/admin/users/7"))
        .header("authorization", "Bearer tok-read-write")
        .body(empty())
        .unwrap();
    let r = send(&env.http1, req).await;
    assert_rejection(&r, 403, "insufficient_scope");
    let www = r.header("www-authenticate").unwrap_or_default().to_owned();
    assert!(www.contains(r#"error="insufficient_scope""#), "{www}");
    assert!(www.contains(r#"scope="admin write""#), "{www}");
    assert_eq!(
        env.upstream.hits(),
        0,
        "a denied request reached the upstream"
    );

    // Same token, same path, GET: the route does not match the method, defaults apply.
    // This is a cache hit: the decision is made again, not cached.
    let r = env.get("/admin/users/7", "tok-read-write").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.introspections().await.len(), 1);
}

#[tokio::test]
async fn should_recheck_policy_on_every_cache_hit() {
    let env = Env::start_with(|c| {
        c.routes = vec![RawRoute {
            require_scopes: Some(vec!["admin".into()]),
            ..route("/admin")
        }]
    })
    .await;
    env.allow("tok", 1).await;
    assert_eq!(env.get("/orders", "tok").await.status, 200);
    // Cached now; a stricter route must still deny it.
    let r = env.get("/admin", "tok").await;
    assert_rejection(&r, 403, "insufficient_scope");
    assert_eq!(env.get("/orders", "tok").await.status, 200);
    assert_eq!(
        env.introspections().await.len(),
        1,
        "every decision came from one introspection"
    );
}

#[tokio::test]
async fn should_401_when_audience_issuer_client_or_token_kind_is_wrong() {
    let env = Env::start_with(|c| {
        c.policy.require_audience = vec!["urn:payments".into()];
        c.policy.require_issuer = "https://as.example".into();
        c.policy.allow_clients = vec!["app".into()];
    })
    .await;
    let good = json!({"active": true, "aud": ["x", "urn:payments"], "iss": "https://as.example", "client_id": "app"});
    let cases = [
        ("good", good.clone(), 200),
        (
            "other-aud",
            json!({"active": true, "aud": "urn:other", "iss": "https://as.example", "client_id": "app"}),
            401,
        ),
        (
            "no-aud",
            json!({"active": true, "iss": "https://as.example", "client_id": "app"}),
            401,
        ),
        (
            "other-iss",
            json!({"active": true, "aud": "urn:payments", "iss": "https://evil.example", "client_id": "app"}),
            401,
        ),
        (
            "other-client",
            json!({"active": true, "aud": "urn:payments", "iss": "https://as.example", "client_id": "intruder"}),
            401,
        ),
        (
            "refresh",
            json!({"active": true, "aud": "urn:payments", "iss": "https://as.example", "client_id": "app", "token_use": "refresh_token"}),
            401,
        ),
    ];
    for (token, body, _) in &cases {
        env.answer(token, body.clone(), 1).await;
    }
    for (token, _, status) in cases {
        let r = env.get("/pay", token).await;
        if status == 200 {
            assert_eq!(r.status, 200, "{token}: {}", r.text());
        } else {
            assert_rejection(&r, 401, "invalid_token");
            let www = r.header("www-authenticate").unwrap_or_default();
            assert!(www.contains(r#"error="invalid_token""#), "{token}: {www}");
        }
    }
    assert_eq!(
        env.upstream.hits(),
        1,
        "only the good token reached the upstream"
    );
}

#[tokio::test]
async fn should_not_let_traversal_or_encoding_dodge_a_rule() {
    let env = Env::start_with(|c| {
        c.routes = vec![
            public("/public/"),
            RawRoute {
                require_scopes: Some(vec!["admin".into()]),
                ..route("/admin/")
            },
        ]
    })
    .await;
    env.forbid_introspection().await;
    // Dot segments: matched as /admin/x, which needs a token.
    let r = send(
        &env.http1,
        request(Method::GET, &env.url("/public/../admin/x"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_rejection(&r, 401, "unauthorized");
    // Over a raw socket too, so no client normalises the path first.
    let raw = raw_exchange(
        env.gate.addr,
        b"GET /public/%2e%2e/admin/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = String::from_utf8_lossy(&raw);
    assert!(
        head.starts_with("HTTP/1.1 400") || head.starts_with("HTTP/1.1 401"),
        "{head}"
    );
    // Percent-encoded letters: ambiguous → refused.
    let r = send(
        &env.http1,
        request(Method::GET, &env.url("/%61dmin/x"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_rejection(&r, 400, "invalid_request");
    // An encoded slash that would turn /admin/.. into a public path: refused.
    let r = send(
        &env.http1,
        request(Method::GET, &env.url("/admin/..%2Fpublic/x"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_rejection(&r, 400, "invalid_request");
    assert_eq!(env.upstream.hits(), 0);

    // A public path is forwarded with its original bytes.
    let r = send(
        &env.http1,
        request(Method::GET, &env.url("/public/a%20b/./c?q=%2F"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().target, "/public/a%20b/./c?q=%2F");
}

#[tokio::test]
async fn should_accept_query_token_and_remove_it_before_forwarding() {
    let env = Env::start_with(|c| c.token_sources.query_param = "access_token".into()).await;
    env.allow("qtok", 1).await;
    let r = send(
        &env.http1,
        request(Method::GET, &env.url("/items?a=1&access_token=qtok&b=%20x"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.target, "/items?a=1&b=%20x");
    assert_eq!(echo.header("x-auth-subject"), Some("alice"));

    // A query without the parameter is forwarded byte for byte.
    let r = env.get("/items?a=1&&b=%2F&", "qtok").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().target, "/items?a=1&&b=%2F&");
    let r = env.get("/items?", "qtok").await;
    assert_eq!(r.echo().target, "/items?", "an empty query keeps its '?'");

    // Header and query at once: 400, nothing introspected.
    let req = request(Method::GET, &env.url("/items?access_token=qtok"))
        .header("authorization", "Bearer other")
        .body(empty())
        .unwrap();
    assert_rejection(&send(&env.http1, req).await, 400, "invalid_request");
    assert_eq!(env.introspections().await.len(), 1);
}

#[tokio::test]
async fn should_accept_cookie_token_and_remove_the_cookie_before_forwarding() {
    let env = Env::start_with(|c| c.token_sources.cookie = "at".into()).await;
    env.allow("ctok", 1).await;
    let req = request(Method::GET, &env.url("/items"))
        .header("cookie", "theme=dark; at=ctok; lang=en")
        .body(empty())
        .unwrap();
    let r = send(&env.http1, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.header("cookie"), Some("theme=dark; lang=en"));
    assert!(!echo.target.contains("ctok"));

    let req = request(Method::GET, &env.url("/items"))
        .header("cookie", "at=ctok")
        .header("authorization", "Bearer ctok")
        .body(empty())
        .unwrap();
    assert_rejection(&send(&env.http1, req).await, 400, "invalid_request");
}

#[tokio::test]
async fn should_map_claims_to_headers_and_strip_spoofed_copies() {
    let env = Env::start_with(|c| {
        c.identity
            .claims
            .insert("X-Auth-Email".into(), "email".into());
        c.identity
            .claims
            .insert("X-Auth-Roles".into(), "realm_access.roles".into());
    })
    .await;
    env.answer(
        "ktok",
        json!({"active": true, "sub": "u1", "email": "u1@example.com", "realm_access": {"roles": ["a", "b"]}}),
        1,
    )
    .await;
    let req = request(Method::GET, &env.url("/me"))
        .header("authorization", "Bearer ktok")
        .header("x-auth-EMAIL", "ceo@example.com")
        .body(empty())
        .unwrap();
    let r = send(&env.http1, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.header_all("x-auth-email"), vec!["u1@example.com"]);
    assert_eq!(echo.header("x-auth-roles"), Some("a b"));
}

/// Starts tokengate the way `main` does with `[discovery]`: resolve, then run.
async fn start_discovering(auth: &MockServer, upstream: &Upstream) -> Result<Gate, String> {
    tokengate::install_crypto_provider();
    let mut raw = base_config(auth, &upstream.url());
    raw.introspection.url.clear();
    raw.discovery.issuer = auth.uri();
    let mut settings = raw.validate().map_err(|e| e.to_string())?;
    settings
        .introspection
        .resolve_endpoint(settings.discovery.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let clock = Arc::new(ManualClock::default());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tokengate::run(
        tokengate::App::with_clock(settings, clock.clone()),
        listener,
        async move {
            let _ = rx.await;
        },
    ));
    Ok(Gate::from_parts(addr, clock, tx))
}

async fn bearer_get(gate: &Gate, path_q: &str, token: &str) -> Resp {
    let req = request(Method::GET, &format!("http://{}{path_q}", gate.addr))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    send(&http1_client(), req).await
}

#[tokio::test]
async fn should_discover_the_introspection_endpoint_from_rfc8414_metadata() {
    let auth = MockServer::start().await;
    let upstream = Upstream::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": auth.uri(),
            "introspection_endpoint": format!("{}/discovered/introspect", auth.uri()),
        })))
        .mount(&auth)
        .await;
    Mock::given(method("POST"))
        .and(path("/discovered/introspect"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"active": true, "sub": "d"})))
        .expect(1)
        .mount(&auth)
        .await;
    let gate = start_discovering(&auth, &upstream).await.unwrap();
    let r = bearer_get(&gate, "/x", "dtok").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-auth-subject"), Some("d"));
}

#[tokio::test]
async fn should_fall_back_to_openid_configuration() {
    let auth = MockServer::start().await;
    let upstream = Upstream::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": auth.uri(),
            "introspection_endpoint": format!("{}/oidc/introspect", auth.uri()),
        })))
        .expect(1)
        .mount(&auth)
        .await;
    Mock::given(method("POST"))
        .and(path("/oidc/introspect"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"active": true, "sub": "o"})))
        .expect(1)
        .mount(&auth)
        .await;
    let gate = start_discovering(&auth, &upstream).await.unwrap();
    assert_eq!(bearer_get(&gate, "/x", "otok").await.status, 200);
}

#[tokio::test]
async fn should_refuse_to_start_when_discovered_issuer_does_not_match() {
    let auth = MockServer::start().await;
    let upstream = Upstream::start().await;
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "issuer": "https://attacker.example",
            "introspection_endpoint": "https://attacker.example/introspect",
        })))
        .mount(&auth)
        .await;
    let err = start_discovering(&auth, &upstream)
        .await
        .err()
        .expect("start-up must fail");
    assert!(
        err.contains("attacker.example") && err.contains("must match"),
        "{err}"
    );
}

#[tokio::test]
async fn should_refuse_to_start_when_discovery_is_unreachable() {
    let auth = MockServer::start().await;
    let upstream = Upstream::start().await;
    // No metadata mounted: both well-known URLs answer 404.
    let err = start_discovering(&auth, &upstream)
        .await
        .err()
        .expect("start-up must fail");
    assert!(
        err.contains("discovery failed") && err.contains("HTTP 404"),
        "{err}"
    );
}

#[tokio::test]
async fn should_rediscover_after_repeated_introspection_404s() {
    let auth = MockServer::start().await;
    let upstream = Upstream::start().await;
    let meta = |ep: &str| {
        ResponseTemplate::new(200).set_body_json(json!({
            "issuer": auth.uri(),
            "introspection_endpoint": format!("{}{ep}", auth.uri()),
        }))
    };
    // First discovery: the old endpoint (which now 404s); later ones: the new one.
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(meta("/old"))
        .up_to_n_times(1)
        .mount(&auth)
        .await;
    Mock::given(method("GET"))
        .and(path("/.well-known/oauth-authorization-server"))
        .respond_with(meta("/new"))
        .mount(&auth)
        .await;
    Mock::given(method("POST"))
        .and(path("/old"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&auth)
        .await;
    Mock::given(method("POST"))
        .and(path("/new"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"active": true, "sub": "n"})))
        .mount(&auth)
        .await;
    let gate = start_discovering(&auth, &upstream).await.unwrap();
    for i in 0..3 {
        let r = bearer_get(&gate, "/x", &format!("t{i}")).await;
        assert_rejection(&r, 503, "temporarily_unavailable");
    }
    // The refresh runs in the background; poll briefly for the switch.
    let mut status = 0;
    for _ in 0..100 {
        status = bearer_get(&gate, "/x", "fresh").await.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "the endpoint was not rediscovered");
}

/// Oathkeeper's GHSA-qvp4-rpmr-xwrr class: a cached *decision* would survive a
/// policy change. We cache the introspection only, so a stricter policy loaded
/// at run time applies to the very next cache hit.
#[tokio::test]
async fn should_apply_a_reloaded_policy_to_a_cached_token() {
    let env = Env::start().await;
    env.allow("cached-tok", 1).await; // scope "read write"
    assert_eq!(env.get("/reports", "cached-tok").await.status, 200);

    let mut raw = base_config(&env.auth, &env.upstream.url());
    raw.policy.require_scopes = vec!["admin".into()];
    env.gate
        .reload()
        .reload(raw.validate().unwrap())
        .expect("a valid config reloads");

    let r = env.get("/reports", "cached-tok").await;
    assert_rejection(&r, 403, "insufficient_scope");
    assert_eq!(
        env.introspections().await.len(),
        1,
        "the second decision was made on the cached introspection"
    );
    assert_eq!(env.upstream.hits(), 1);
}
