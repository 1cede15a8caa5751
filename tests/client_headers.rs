//! Headers a client writes to steer the upstream after tokengate has decided:
//! method overrides, URL overrides, forged forwarding chains, and identity
//! values that HTTP would trim. Through real sockets against `tokengate::run`.

mod common;

use common::*;
use http::Method;
use serde_json::json;
use tokengate::config::{MethodOverride, RawRoute};

/// `/admin/` takes DELETE only with the `admin` scope; POST is the default
/// (any valid token). `tok-read-write` has scope "read write".
fn delete_needs_admin(c: &mut tokengate::config::RawConfig) {
    c.routes = vec![RawRoute {
        methods: vec!["DELETE".into()],
        require_scopes: Some(vec!["admin".into()]),
        ..RawRoute::new("/admin/")
    }];
}

async fn post_with(env: &Env, path: &str, token: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b =
        request(Method::POST, &env.url(path)).header("authorization", format!("Bearer {token}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&env.http1, b.body(empty()).unwrap()).await
}

/// The attack: a POST, which the route lets any token make, carries
/// `X-HTTP-Method-Override: DELETE`; Rails, Symfony, ASP.NET and Express's
/// method-override would run the DELETE handler. By default the override
/// fields are removed, so the upstream runs the POST it was routed as.
#[tokio::test]
async fn method_override_headers_are_stripped_by_default() {
    let env = Env::start_with(delete_needs_admin).await;
    env.allow("tok-read-write", 1).await;
    let r = post_with(
        &env,
        "/admin/users/7",
        "tok-read-write",
        &[
            ("x-http-method-override", "DELETE"),
            ("X-HTTP-Method", "DELETE"),
            ("x-method-override", "DELETE"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.method, "POST");
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(!echo.has(h), "{h} reached the upstream");
    }
}

/// Review finding: `?_method=DELETE` on a POST is an override too (Symfony
/// and Laravel read `_method` from the query when the body has none;
/// Express's `methodOverride('_method')` reads only the query; PHP reads
/// `.method` and `%5Fmethod` as `_method`). It reached the upstream, so a
/// read token ran the DELETE handler that needs `admin`. By default it is now
/// removed from the target (the rest of the query is kept byte for byte).
#[tokio::test]
async fn method_override_query_parameter_is_stripped_by_default() {
    let env = Env::start_with(delete_needs_admin).await;
    env.allow("tok-read-write", 1).await;
    for (target, forwarded) in [
        ("/admin/users/7?_method=DELETE", "/admin/users/7"),
        (
            "/admin/users/7?a=%20&.method=DELETE&b",
            "/admin/users/7?a=%20&b",
        ),
        ("/admin/users/7?%5Fmethod=DELETE", "/admin/users/7"),
    ] {
        let r = post_with(&env, target, "tok-read-write", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.echo();
        assert_eq!(echo.method, "POST");
        assert_eq!(echo.target, forwarded);
    }
}

/// With `method_override = "route"`, `?_method=DELETE` is routed as DELETE.
#[tokio::test]
async fn method_override_query_parameter_is_routed_in_route_mode() {
    let env = Env::start_with(|c| {
        delete_needs_admin(c);
        c.forwarding.method_override = MethodOverride::Route;
    })
    .await;
    env.allow("tok-read-write", 1).await;
    let r = post_with(&env, "/admin/users/7?_method=delete", "tok-read-write", &[]).await;
    assert_rejection(&r, 403, "insufficient_scope");
    assert_eq!(env.upstream.hits(), 0);
}

/// `forwarding.method_override = "route"`: the override reaches the upstream,
/// so the route is the overriding method's (here: DELETE needs `admin`).
#[tokio::test]
async fn method_override_route_mode_routes_on_the_override() {
    let env = Env::start_with(|c| {
        delete_needs_admin(c);
        c.forwarding.method_override = MethodOverride::Route;
    })
    .await;
    env.allow("tok-read-write", 1).await;
    env.answer(
        "tok-admin",
        json!({"active": true, "sub": "root", "scope": "admin", "exp": env.now() + 3600}),
        1,
    )
    .await;
    let r = post_with(
        &env,
        "/admin/users/7",
        "tok-read-write",
        &[("x-http-method-override", "delete")],
    )
    .await;
    assert_rejection(&r, 403, "insufficient_scope");
    assert_eq!(
        env.upstream.hits(),
        0,
        "the overridden DELETE reached the upstream"
    );

    let r = post_with(
        &env,
        "/admin/users/7",
        "tok-admin",
        &[("x-http-method-override", "DELETE")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-http-method-override"), Some("DELETE"));

    // Fields that disagree, or an override on anything but POST: 400.
    let r = post_with(
        &env,
        "/admin/users/7",
        "tok-admin",
        &[
            ("x-http-method-override", "DELETE"),
            ("x-method-override", "GET"),
        ],
    )
    .await;
    assert_rejection(&r, 400, "invalid_request");
    let req = request(Method::GET, &env.url("/admin/users/7"))
        .header("authorization", "Bearer tok-admin")
        .header("x-http-method", "DELETE")
        .body(empty())
        .unwrap();
    assert_rejection(&send(&env.http1, req).await, 400, "invalid_request");
    assert_eq!(env.upstream.hits(), 1);
}

/// `X-Original-URL` / `X-Rewrite-URL` make IIS- and Symfony-style stacks serve
/// another path than the one tokengate routed: from a public path to /admin.
#[tokio::test]
async fn url_override_headers_never_reach_the_upstream() {
    let env = Env::start_with(|c| {
        c.routes = vec![RawRoute::public("/public/")];
        c.forwarding.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    env.forbid_introspection().await;
    let req = request(Method::GET, &env.url("/public/x"))
        .header("X-Original-URL", "/admin/users")
        .header("x-rewrite-url", "/admin/users")
        .body(empty())
        .unwrap();
    let r = send(&env.http1, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.target, "/public/x");
    // Even from a trusted proxy: tokengate did not route on them.
    assert!(!echo.has("x-original-url"));
    assert!(!echo.has("x-rewrite-url"));
}

/// A client's own `Forwarded`, `X-Real-IP`, `X-Forwarded-For` and
/// `X-Forwarded-Prefix` would be read by the upstream as a proxy's word (an IP
/// allow-list, a rate limit, a URL prefix). Without `trusted_proxies` they
/// start again at the peer.
#[tokio::test]
async fn forged_forwarding_headers_are_rewritten_from_the_peer() {
    let env = Env::start_with(|c| c.routes = vec![RawRoute::public("/")]).await;
    let forged = [
        ("x-forwarded-for", "10.0.0.1"),
        ("forwarded", "for=10.0.0.1;proto=https;host=admin.internal"),
        ("x-real-ip", "10.0.0.1"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-port", "8443"),
    ];
    let mut b = request(Method::GET, &env.url("/x"));
    for (k, v) in forged {
        b = b.header(k, v);
    }
    let echo = send(&env.http1, b.body(empty()).unwrap()).await.echo();
    assert_eq!(echo.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(
        echo.header_all("forwarded"),
        vec!["for=127.0.0.1;proto=http"]
    );
    assert_eq!(echo.header_all("x-real-ip"), vec!["127.0.0.1"]);
    assert!(!echo.has("x-forwarded-prefix"));
    assert!(!echo.has("x-forwarded-port"));
}

/// From a proxy in `forwarding.trusted_proxies`, the chains are kept and
/// tokengate's hop is appended.
#[tokio::test]
async fn trusted_proxy_chains_are_appended_to() {
    let env = Env::start_with(|c| {
        c.routes = vec![RawRoute::public("/")];
        c.forwarding.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let req = request(Method::GET, &env.url("/x"))
        .header("x-forwarded-for", "198.51.100.7")
        .header("forwarded", "for=198.51.100.7;proto=https")
        .header("x-real-ip", "198.51.100.7")
        .header("x-forwarded-prefix", "/api")
        .body(empty())
        .unwrap();
    let echo = send(&env.http1, req).await.echo();
    assert_eq!(
        echo.header("x-forwarded-for"),
        Some("198.51.100.7, 127.0.0.1")
    );
    assert_eq!(
        echo.header("forwarded"),
        Some("for=198.51.100.7;proto=https, for=127.0.0.1;proto=http")
    );
    assert_eq!(echo.header("x-real-ip"), Some("198.51.100.7"));
    assert_eq!(echo.header("x-forwarded-prefix"), Some("/api"));
}

#[test]
fn trusted_proxies_must_be_addresses_or_cidrs() {
    let mut raw = tokengate::config::RawConfig::default();
    raw.introspection.url = "http://127.0.0.1:1/introspect".into();
    raw.introspection.client_id = "gate".into();
    raw.introspection.client_secret = tokengate::config::Secret::new("s");
    raw.forwarding.trusted_proxies = vec!["10.0.0.0/8".into(), "::1".into(), "10.0.0.0/33".into()];
    let err = raw
        .validate()
        .expect_err("a bad CIDR must not validate")
        .to_string();
    assert!(err.contains("forwarding.trusted_proxies"), "{err}");
    assert!(err.contains("10.0.0.0/33"), "{err}");
}

/// An AS answer whose `sub` is ` admin\t`: frameworks trim the header value and
/// read `admin`, another subject. Refused, and the upstream sees nothing.
#[tokio::test]
async fn identity_with_edge_whitespace_is_refused() {
    let env = Env::start().await;
    env.answer(
        "tok-padded",
        json!({"active": true, "sub": " admin\t", "scope": "read", "exp": env.now() + 3600}),
        1,
    )
    .await;
    let r = env.get("/x", "tok-padded").await;
    assert_rejection(&r, 401, "invalid_token");
    assert_eq!(
        env.upstream.hits(),
        0,
        "a padded identity reached the upstream"
    );
    // Served from the cache the second time: the decision is re-made, same answer.
    let r = env.get("/x", "tok-padded").await;
    assert_rejection(&r, 401, "invalid_token");
}

/// Review probe (held up): identity values with non-ASCII characters reach
/// the upstream as their exact UTF-8 bytes (obs-text, RFC 9110 §5.5), so
/// `zoë`, `élodie` and a user literally named `?` stay three users. Were they
/// made "header-safe" by replacing what is not visible ASCII, they would all
/// collapse into one subject that an attacker could pick as a username.
#[tokio::test]
async fn non_ascii_identity_values_stay_distinct() {
    let env = Env::start().await;
    for (token, sub) in [("tok-zoe", "zoë"), ("tok-elodie", "élodie"), ("tok-q", "?")] {
        env.answer(
            token,
            json!({"active": true, "sub": sub, "scope": "read", "exp": env.now() + 3600}),
            1,
        )
        .await;
        let r = env.get("/x", token).await;
        assert_eq!(r.echo().header_all("x-auth-subject"), [sub], "{token}");
    }
}

/// Review finding: a mapped list claim is passed on space-separated, so
/// `groups: ["staff admin"]` (a group name some IdPs let users choose)
/// reached the upstream exactly as `groups: ["staff", "admin"]` would, and
/// a framework that splits the header found `admin`. A list with an element
/// that contains whitespace cannot be passed on exactly: refused like a
/// padded identity value.
#[tokio::test]
async fn a_list_claim_whose_element_holds_the_separator_is_refused() {
    let env = Env::start_with(|c| {
        c.identity
            .claims
            .insert("x-auth-groups".into(), "groups".into());
    })
    .await;
    env.answer(
        "tok-spaced",
        json!({"active": true, "sub": "mallory", "groups": ["staff admin"], "exp": env.now() + 3600}),
        1,
    )
    .await;
    let r = env.get("/x", "tok-spaced").await;
    assert_rejection(&r, 401, "invalid_token");
    assert_eq!(env.upstream.hits(), 0);
    // A plain list is still passed on, space-separated.
    env.answer(
        "tok-list",
        json!({"active": true, "sub": "alice", "groups": ["staff", "admin"], "exp": env.now() + 3600}),
        1,
    )
    .await;
    let r = env.get("/x", "tok-list").await;
    assert_eq!(r.echo().header("x-auth-groups"), Some("staff admin"));
}
