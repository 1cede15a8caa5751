//! `mode = "forward_auth"`: the three front-proxy conventions through real
//! sockets, and a real nginx with `auth_request` running deploy/nginx/tokengate.conf.

mod common;

use common::*;
use http::Method;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokengate::config::ConventionSetting;
use tokengate::config::{Mode, RawConfig, RawRoute};

fn admin_route() -> RawRoute {
    RawRoute {
        methods: vec!["DELETE".into()],
        require_scopes: Some(vec!["admin".into()]),
        ..RawRoute::new("/admin/")
    }
}

fn public_route() -> RawRoute {
    RawRoute::public("/public/")
}

fn forward_auth(raw: &mut RawConfig) {
    raw.mode = Mode::ForwardAuth;
    raw.forward_auth.path_prefix = "/ext_authz".into();
    raw.routes = vec![admin_route(), public_route()];
}

/// Forward-auth mode with a fixed convention (the Envoy prefix only for Envoy).
fn forward_auth_as(convention: ConventionSetting) -> impl FnOnce(&mut RawConfig) {
    move |raw| {
        forward_auth(raw);
        raw.forward_auth.convention = convention;
        if convention != ConventionSetting::Envoy {
            raw.forward_auth.path_prefix.clear();
        }
    }
}

/// Traefik's sub-request for a client's `DELETE https://api.example/admin/users`
/// (what its ForwardAuth middleware sets, overwriting any client copy).
const TRAEFIK_DELETE: [(&str, &str); 4] = [
    ("x-forwarded-method", "DELETE"),
    ("x-forwarded-uri", "/admin/users"),
    ("x-forwarded-host", "api.example"),
    ("x-forwarded-proto", "https"),
];

/// nginx's sub-request for the same request (deploy/nginx/tokengate.conf).
const NGINX_DELETE: [(&str, &str); 3] = [
    ("x-original-method", "DELETE"),
    ("x-original-uri", "/admin/users"),
    ("x-forwarded-host", "api.example"),
];

/// The client's own headers, copied into the sub-request by the front proxy,
/// describing a public request instead.
const SPOOF_NGINX: [(&str, &str); 2] = [
    ("x-original-uri", "/public/anything"),
    ("x-original-method", "GET"),
];
const SPOOF_TRAEFIK: [(&str, &str); 2] = [
    ("x-forwarded-uri", "/public/anything"),
    ("x-forwarded-method", "GET"),
];

fn plus<'a>(a: &[(&'a str, &'a str)], b: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    a.iter().chain(b).copied().collect()
}

/// A sub-request to tokengate with the given headers.
async fn ask(env: &Env, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = request(method, &env.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&env.http1, b.body(empty()).unwrap()).await
}

#[tokio::test]
async fn should_answer_200_with_identity_headers_for_each_convention() {
    let env = Env::start_with(forward_auth).await;
    env.allow("tok", 1).await;
    let auth = ("authorization", "Bearer tok");

    let nginx = ask(
        &env,
        Method::GET,
        "/_auth",
        &[
            auth,
            ("x-original-uri", "/items/1?x=2"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    let traefik = ask(
        &env,
        Method::GET,
        "/verify",
        &[
            auth,
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", "/items"),
            ("x-forwarded-host", "api.example"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let envoy = ask(&env, Method::PUT, "/ext_authz/items/1", &[auth]).await;

    for r in [&nginx, &traefik, &envoy] {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-auth-subject"), Some("alice"));
        assert_eq!(r.header("x-auth-client-id"), Some("app"));
        assert_eq!(r.header("x-auth-scope"), Some("read write"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert!(r.body.is_empty());
    }
    assert_eq!(env.upstream.hits(), 0, "forward-auth mode has no upstream");
}

#[tokio::test]
async fn should_apply_the_route_policy_to_the_original_request() {
    let env = Env::start_with(forward_auth).await;
    env.allow("tok", 1).await; // scope "read write": no "admin"
    let auth = ("authorization", "Bearer tok");

    // DELETE /admin/x needs scope admin → 403, whichever convention says so.
    type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/_auth",
            vec![
                auth,
                ("x-original-uri", "/admin/x"),
                ("x-original-method", "DELETE"),
            ],
        ),
        (
            Method::GET,
            "/verify",
            vec![
                auth,
                ("x-forwarded-uri", "/admin/x"),
                ("x-forwarded-method", "DELETE"),
            ],
        ),
        (Method::DELETE, "/ext_authz/admin/x", vec![auth]),
    ];
    for (m, path, headers) in &cases {
        let r = ask(&env, m.clone(), path, headers).await;
        assert_rejection(&r, 403, "insufficient_scope");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("scope=\"admin\""));
    }
    // The same path with GET is the default route: allowed. The sub-request's
    // own method (GET here) must not be what is judged.
    let r = ask(
        &env,
        Method::GET,
        "/_auth",
        &[
            auth,
            ("x-original-uri", "/admin/x"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);

    // A public original path: 200 without a token, and no identity headers.
    let r = ask(
        &env,
        Method::GET,
        "/_auth",
        &[("x-original-uri", "/public/logo.png")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-auth-subject").is_none());
}

#[tokio::test]
async fn should_reject_with_challenge_and_json() {
    let env = Env::start_with(forward_auth).await;
    env.answer("dead", json!({ "active": false }), 1).await;

    let r = ask(&env, Method::GET, "/_auth", &[("x-original-uri", "/items")]).await;
    assert_rejection(&r, 401, "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\"")
    );

    let r = ask(
        &env,
        Method::GET,
        "/verify",
        &[
            ("authorization", "Bearer dead"),
            ("x-forwarded-uri", "/items"),
        ],
    )
    .await;
    assert_rejection(&r, 401, "invalid_token");

    // Unusable descriptions of the original request are the proxy's mistake: 400.
    for headers in [
        vec![("x-original-uri", "https://elsewhere/x")],
        vec![("x-forwarded-uri", "/x"), ("x-forwarded-method", "G E T")],
    ] {
        let r = ask(&env, Method::GET, "/_auth", &headers).await;
        assert_rejection(&r, 400, "invalid_request");
    }
    // Envoy form outside the configured prefix.
    let r = ask(&env, Method::GET, "/elsewhere/x", &[]).await;
    assert_rejection(&r, 400, "invalid_request");
}

#[tokio::test]
async fn should_answer_503_when_the_as_is_down() {
    let dead = closed_addr().await;
    let env = Env::start_with(|raw| {
        forward_auth(raw);
        raw.introspection.url = format!("http://{dead}/introspect");
    })
    .await;
    let r = ask(
        &env,
        Method::GET,
        "/_auth",
        &[
            ("authorization", "Bearer tok"),
            ("x-original-uri", "/items"),
        ],
    )
    .await;
    assert_rejection(&r, 503, "temporarily_unavailable");
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn should_take_the_token_from_the_original_query_when_configured() {
    let env = Env::start_with(|raw| {
        forward_auth(raw);
        raw.token_sources.query_param = "access_token".into();
    })
    .await;
    env.allow("qtok", 1).await;
    let r = ask(
        &env,
        Method::GET,
        "/_auth",
        &[("x-original-uri", "/items?access_token=qtok&x=1")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-subject"), Some("alice"));
}

// ---------------------------------------------------------------------------
// A real nginx with auth_request
// ---------------------------------------------------------------------------

/// nginx running in the foreground from a temporary prefix; killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The nginx binary, or `None` after the skip line (a failure under `CI`).
fn nginx_or_skip() -> Option<PathBuf> {
    let bin = nginx_binary();
    if bin.is_none() {
        skip_for_missing(&current_test(), "nginx (apt-get install nginx)");
    }
    bin
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Nginx {
    /// Runs deploy/nginx/tokengate.conf with its three addresses replaced.
    async fn start(bin: &Path, gate: SocketAddr, app: SocketAddr) -> Self {
        let port = closed_addr().await.port();
        let dir =
            std::env::temp_dir().join(format!("tokengate-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/tokengate.conf"),
        )
        .unwrap();
        for needle in [
            "server 127.0.0.1:8080;",
            "server 127.0.0.1:3000;",
            "listen 80;",
        ] {
            assert!(
                shipped.contains(needle),
                "the shipped config lost {needle:?}"
            );
        }
        let site = shipped
            .replace("server 127.0.0.1:8080;", &format!("server {gate};"))
            .replace("server 127.0.0.1:3000;", &format!("server {app};"))
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
        std::fs::write(dir.join("tokengate.conf"), site).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/tokengate.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut nginx = Self { child, addr, dir };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return nginx;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited with {status}: {log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nginx did not listen on {addr} within 10s");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// What tokengate itself answers to the sub-request that
/// deploy/nginx/tokengate.conf sends for the client's `method uri`.
async fn tokengate_direct(env: &Env, method: &str, uri: &str, auth: Option<&str>) -> Resp {
    let mut headers = vec![
        ("x-original-method", method),
        ("x-original-uri", uri),
        ("x-forwarded-host", "127.0.0.1"),
    ];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    ask(env, Method::GET, "/_tokengate", &headers).await
}

/// The client behind nginx gets tokengate's own rejection: the status, exactly
/// one challenge and the same one, the same Retry-After, `no-store`, and a JSON
/// body with the same error and description.
fn assert_same_rejection(via_nginx: &Resp, direct: &Resp, status: u16, error: &str) {
    assert_rejection(direct, status, error);
    assert_rejection(via_nginx, status, error);
    for name in ["www-authenticate", "retry-after"] {
        let all = |r: &Resp| -> Vec<String> {
            r.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            all(via_nginx),
            all(direct),
            "{name} through nginx differs from tokengate's: {:?}",
            via_nginx.headers
        );
    }
    assert_eq!(via_nginx.json(), direct.json(), "JSON body");
}

#[tokio::test]
async fn should_guard_an_upstream_behind_a_real_nginx_auth_request() {
    let Some(bin) = nginx_or_skip() else {
        return;
    };
    // The convention the shipped site file names.
    let env = Env::start_with(forward_auth_as(ConventionSetting::Nginx)).await;
    env.allow("tok", 1).await;
    env.answer("dead", json!({ "active": false }), 1).await;
    let nginx = Nginx::start(&bin, env.gate.addr, env.upstream.addr).await;
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut b = request(Method::GET, &nginx.url(path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(empty()).unwrap()
    };

    // No token: nginx answers 401 with tokengate's challenge and JSON; nothing
    // reaches the app.
    let r = send(&env.http1, get("/items/1", &[])).await;
    let direct = tokengate_direct(&env, "GET", "/items/1", None).await;
    assert_same_rejection(&r, &direct, 401, "unauthorized");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tokengate\"")
    );
    // An inactive token: 401 with error="invalid_token".
    let r = send(
        &env.http1,
        get("/items/1", &[("authorization", "Bearer dead")]),
    )
    .await;
    let direct = tokengate_direct(&env, "GET", "/items/1", Some("Bearer dead")).await;
    assert_same_rejection(&r, &direct, 401, "invalid_token");
    // A malformed Authorization header is the client's mistake: 400 with the
    // invalid_request challenge, not nginx's 500.
    let r = send(
        &env.http1,
        get("/items/1", &[("authorization", "Bearer a b")]),
    )
    .await;
    let direct = tokengate_direct(&env, "GET", "/items/1", Some("Bearer a b")).await;
    assert_same_rejection(&r, &direct, 400, "invalid_request");
    assert_eq!(env.upstream.hits(), 0);

    // A good token: through, with the identity tokengate returned (auth_request_set),
    // and not the one the client tried to smuggle in.
    let r = send(
        &env.http1,
        get(
            "/items/1?x=2",
            &[
                ("authorization", "Bearer tok"),
                ("x-auth-subject", "mallory"),
            ],
        ),
    )
    .await;
    let echo = r.echo();
    assert_eq!(echo.target, "/items/1?x=2");
    assert_eq!(echo.header_all("x-auth-subject"), vec!["alice"]);
    assert_eq!(echo.header("x-auth-client-id"), Some("app"));
    assert_eq!(echo.header("x-auth-scope"), Some("read write"));
    assert_eq!(env.upstream.hits(), 1);

    // The original method reaches tokengate: DELETE /admin/ needs scope admin → 403.
    let req = request(Method::DELETE, &nginx.url("/admin/x"))
        .header("authorization", "Bearer tok")
        .body(empty())
        .unwrap();
    let r = send(&env.http1, req).await;
    let direct = tokengate_direct(&env, "DELETE", "/admin/x", Some("Bearer tok")).await;
    // Before the fix: nginx's HTML 403 page, without the challenge.
    assert_same_rejection(&r, &direct, 403, "insufficient_scope");
    assert!(
        r.header("www-authenticate").is_some_and(
            |c| c.contains("error=\"insufficient_scope\"") && c.contains("scope=\"admin\"")
        ),
        "{:?}",
        r.headers
    );
    assert_eq!(
        env.upstream.hits(),
        1,
        "a denied request must not reach the app"
    );
    // Another convention's description of a public request changes nothing
    // (the shipped site file does not even pass it on: it sends tokengate
    // only Authorization, and convention "nginx" would ignore it anyway).
    for token in [None, Some("Bearer tok")] {
        let mut b = request(Method::DELETE, &nginx.url("/admin/x"));
        for (k, v) in SPOOF_TRAEFIK {
            b = b.header(k, v);
        }
        if let Some(t) = token {
            b = b.header("authorization", t);
        }
        let r = send(&env.http1, b.body(empty()).unwrap()).await;
        assert_eq!(r.status, if token.is_some() { 403 } else { 401 });
    }
    assert_eq!(env.upstream.hits(), 1);

    // A public route: through without a token, and a spoofed identity is dropped.
    let r = send(
        &env.http1,
        get("/public/a", &[("x-auth-subject", "mallory")]),
    )
    .await;
    let echo = r.echo();
    assert!(!echo.has("x-auth-subject"), "{echo:?}");
}

/// The authorization server is down: tokengate's 503 and its Retry-After reach
/// the client through nginx (before the fix: nginx's HTML 500, no Retry-After);
/// tokengate itself down: nginx's 500, in JSON, and nothing reaches the app.
#[tokio::test]
async fn should_pass_tokengate_503_and_retry_after_through_a_real_nginx() {
    let Some(bin) = nginx_or_skip() else {
        return;
    };
    let dead = closed_addr().await;
    let env = Env::start_with(|raw| {
        forward_auth_as(ConventionSetting::Nginx)(raw);
        raw.introspection.url = format!("http://{dead}/introspect");
    })
    .await;
    let nginx = Nginx::start(&bin, env.gate.addr, env.upstream.addr).await;
    let req = request(Method::GET, &nginx.url("/items/1"))
        .header("authorization", "Bearer tok")
        .body(empty())
        .unwrap();
    let r = send(&env.http1, req).await;
    let direct = tokengate_direct(&env, "GET", "/items/1", Some("Bearer tok")).await;
    assert_same_rejection(&r, &direct, 503, "temporarily_unavailable");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert_eq!(env.upstream.hits(), 0);

    // tokengate unreachable: closed, never open.
    let gone = closed_addr().await;
    let nginx = Nginx::start(&bin, gone, env.upstream.addr).await;
    let req = request(Method::GET, &nginx.url("/items/1"))
        .header("authorization", "Bearer tok")
        .body(empty())
        .unwrap();
    let r = send(&env.http1, req).await;
    assert_rejection(&r, 500, "server_error");
    assert!(r.header("www-authenticate").is_none());
    assert_eq!(env.upstream.hits(), 0);
}

/// Review finding: `POST /admin/users?_method=DELETE` (Symfony, Laravel and
/// Express run DELETE) was judged as a POST (any token) in forward-auth mode,
/// and the front proxy forwards the query as it is. tokengate cannot strip it
/// there, so an override naming another method is a 400, in every convention.
#[tokio::test]
async fn should_refuse_a_method_override_it_cannot_strip() {
    for convention in [ConventionSetting::Nginx, ConventionSetting::Traefik] {
        let env = Env::start_with(forward_auth_as(convention)).await;
        env.allow("tok", 1).await;
        let (m, u) = match convention {
            ConventionSetting::Nginx => ("x-original-method", "x-original-uri"),
            _ => ("x-forwarded-method", "x-forwarded-uri"),
        };
        let auth = ("authorization", "Bearer tok");
        let host = ("x-forwarded-host", "api.example");
        for target in [
            "/admin/users?_method=DELETE",
            "/admin/users?x=1&.method=delete",
        ] {
            let r = ask(
                &env,
                Method::GET,
                "/_tokengate",
                &[(m, "POST"), (u, target), host, auth],
            )
            .await;
            assert_rejection(&r, 400, "invalid_request");
        }
        let r = ask(
            &env,
            Method::GET,
            "/_tokengate",
            &[
                (m, "POST"),
                (u, "/admin/users"),
                host,
                auth,
                ("x-http-method-override", "DELETE"),
            ],
        )
        .await;
        assert_rejection(&r, 400, "invalid_request");
        // No override, or one naming the method itself: judged as usual.
        for target in ["/admin/users?method=DELETE", "/admin/users?_method=POST"] {
            let r = ask(
                &env,
                Method::GET,
                "/_tokengate",
                &[(m, "POST"), (u, target), host, auth],
            )
            .await;
            assert_eq!(r.status, 200, "{target}: {}", r.text());
        }
    }
    let env = Env::start_with(forward_auth_as(ConventionSetting::Envoy)).await;
    let r = ask(
        &env,
        Method::POST,
        "/ext_authz/admin/users?_method=DELETE",
        &[],
    )
    .await;
    assert_rejection(&r, 400, "invalid_request");
}

/// Issue 12 items 4 and 10 in forward-auth mode (review finding): tokengate
/// cannot strip a header from a request it never forwards, so the front
/// proxy must. Behind the shipped nginx site file, `POST /admin/users` with
/// `X-HTTP-Method-Override: DELETE` was judged as a POST (the default route:
/// any token) while the app received the override and, in Rails, Symfony,
/// Laravel or ASP.NET, ran DELETE, which needs scope `admin`. Likewise
/// `X-Original-URL: /admin/users` on a public GET reached the app (IIS and
/// Symfony-style stacks serve that URL instead). The site file now clears
/// them on the proxied request, as proxy mode removes them.
#[tokio::test]
async fn should_not_pass_method_or_url_overrides_to_the_app_behind_nginx() {
    let Some(bin) = nginx_or_skip() else {
        return;
    };
    let env = Env::start_with(forward_auth_as(ConventionSetting::Nginx)).await;
    env.allow("tok", 1).await;
    let nginx = Nginx::start(&bin, env.gate.addr, env.upstream.addr).await;
    const OVERRIDES: [(&str, &str); 8] = [
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("x-original-url", "/admin/users"),
        ("x-rewrite-url", "/admin/users"),
        ("x-real-ip", "10.0.0.1"),
        // Item 10 too: the client's word about its address or the URL prefix.
        ("forwarded", "for=10.0.0.1;host=admin.example"),
        ("x-forwarded-prefix", "/admin"),
    ];
    // With a read-only token (DELETE /admin/ needs scope admin).
    let mut b = request(Method::POST, &nginx.url("/admin/users"))
        .header("authorization", "Bearer tok")
        .header("x-forwarded-for", "10.0.0.1");
    for (k, v) in OVERRIDES {
        b = b.header(k, v);
    }
    let r = send(&env.http1, b.body(empty()).unwrap()).await;
    assert_eq!(r.status, 200);
    let echo = r.echo();
    for (k, v) in OVERRIDES {
        assert!(
            !echo.header_all(k).contains(&v),
            "the client's {k} reached the app: {echo:?}"
        );
    }
    assert_eq!(echo.header_all("x-forwarded-for"), ["127.0.0.1"]);
    // Without any token, on a public route.
    let mut b = request(Method::GET, &nginx.url("/public/a"));
    for (k, v) in OVERRIDES {
        b = b.header(k, v);
    }
    let r = send(&env.http1, b.body(empty()).unwrap()).await;
    assert_eq!(r.status, 200);
    let echo = r.echo();
    for (k, v) in OVERRIDES {
        assert!(
            !echo.header_all(k).contains(&v),
            "the client's {k} reached the app: {echo:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Issue 12, item 2: a client must not choose the request that is judged
// ---------------------------------------------------------------------------

/// The attack as found: behind Traefik (which copies every client header into
/// the sub-request and overwrites only its X-Forwarded-*), `DELETE /admin/users`
/// without a token got 401, and 200 once the client added
/// `X-Original-URI: /public/anything` (nginx's header won). Before the fix
/// this answered 200 in the default configuration.
#[tokio::test]
async fn should_not_let_a_client_choose_the_route_behind_traefik() {
    // The default convention (`auto`): two conventions → 400.
    let env = Env::start_with(forward_auth).await;
    let r = ask(&env, Method::GET, "/_tokengate", &TRAEFIK_DELETE).await;
    assert_rejection(&r, 401, "unauthorized");
    for extra in [&SPOOF_NGINX[..], &SPOOF_NGINX[..1], &SPOOF_NGINX[1..]] {
        let r = ask(
            &env,
            Method::GET,
            "/_tokengate",
            &plus(&TRAEFIK_DELETE, extra),
        )
        .await;
        assert_rejection(&r, 400, "invalid_request");
        assert!(r.text().contains("forward_auth.convention"), "{}", r.text());
    }

    // `convention = "traefik"`: nginx's headers are ignored, the route is Traefik's.
    let env = Env::start_with(forward_auth_as(ConventionSetting::Traefik)).await;
    env.allow("reader", 1).await; // scope "read write": no "admin"
    let spoofed = plus(&TRAEFIK_DELETE, &SPOOF_NGINX);
    let r = ask(&env, Method::GET, "/_tokengate", &spoofed).await;
    assert_rejection(&r, 401, "unauthorized");
    let r = ask(
        &env,
        Method::GET,
        "/_tokengate",
        &plus(&spoofed, &[("authorization", "Bearer reader")]),
    )
    .await;
    assert_rejection(&r, 403, "insufficient_scope");
}

#[tokio::test]
async fn should_read_only_the_configured_conventions_headers() {
    use ConventionSetting::*;
    let auth = ("authorization", "Bearer tok");
    // (convention, sub-request method and path, the convention's own headers,
    //  the other conventions' headers a client adds)
    type Case = (
        ConventionSetting,
        Method,
        &'static str,
        Vec<(&'static str, &'static str)>,
        Vec<(&'static str, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        (
            Nginx,
            Method::GET,
            "/_tokengate",
            NGINX_DELETE.to_vec(),
            SPOOF_TRAEFIK.to_vec(),
        ),
        (
            Traefik,
            Method::GET,
            "/_tokengate",
            TRAEFIK_DELETE.to_vec(),
            SPOOF_NGINX.to_vec(),
        ),
        (
            Envoy,
            Method::DELETE,
            "/ext_authz/admin/users",
            vec![("host", "api.example")],
            plus(&SPOOF_NGINX, &SPOOF_TRAEFIK),
        ),
    ];
    for (convention, method, path, own, spoof) in cases {
        let env = Env::start_with(forward_auth_as(convention)).await;
        env.allow("tok", 1).await;
        // Judged as DELETE /admin/users, whatever else the client added.
        let r = ask(&env, method.clone(), path, &plus(&own, &spoof)).await;
        assert_rejection(&r, 401, "unauthorized");
        let r = ask(
            &env,
            method.clone(),
            path,
            &plus(&plus(&own, &spoof), &[auth]),
        )
        .await;
        assert_rejection(&r, 403, "insufficient_scope");
        // The public original request in the convention's own form passes.
        let public: Vec<(&str, &str)> = match convention {
            Nginx => plus(&SPOOF_NGINX, &[("x-forwarded-host", "api.example")]),
            Traefik => plus(&SPOOF_TRAEFIK, &[("x-forwarded-host", "api.example")]),
            _ => vec![],
        };
        let (m, p) = match convention {
            Envoy => (Method::GET, "/ext_authz/public/anything"),
            _ => (Method::GET, "/_tokengate"),
        };
        let r = ask(&env, m, p, &public).await;
        assert_eq!(r.status, 200, "{convention:?}: {}", r.text());
        // A header the convention needs and the proxy did not set: 400, never a
        // guess (a front proxy that does not set it would pass the client's on).
        if convention != Envoy {
            // (X-Forwarded-Proto, Traefik's fourth, does not take part.)
            for missing in &own[..3] {
                let rest: Vec<_> = own.iter().filter(|h| h != &missing).copied().collect();
                let r = ask(&env, Method::GET, path, &plus(&rest, &[auth])).await;
                assert_rejection(&r, 400, "invalid_request");
                assert!(r.text().contains("is missing"), "{}", r.text());
            }
        }
        assert_eq!(env.upstream.hits(), 0);
    }
}

#[tokio::test]
async fn should_refuse_two_conventions_in_auto_mode() {
    let env = Env::start_with(forward_auth).await; // auto, path_prefix "/ext_authz"
    env.allow("tok", 1).await;
    let auth = ("authorization", "Bearer tok");
    type Case<'a> = (Method, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        // nginx in front, the client adds Traefik's headers.
        (
            Method::GET,
            "/_tokengate",
            plus(&NGINX_DELETE, &[SPOOF_TRAEFIK[0], auth]),
        ),
        (
            Method::GET,
            "/_tokengate",
            plus(&NGINX_DELETE, &[SPOOF_TRAEFIK[1], auth]),
        ),
        // Envoy in front (a path under the prefix), the client adds nginx's or Traefik's.
        (
            Method::DELETE,
            "/ext_authz/admin/users",
            vec![SPOOF_NGINX[0], auth],
        ),
        (
            Method::DELETE,
            "/ext_authz/admin/users",
            vec![SPOOF_TRAEFIK[0], auth],
        ),
        // One convention, its header twice: the second copy is the client's.
        (
            Method::GET,
            "/_tokengate",
            plus(&TRAEFIK_DELETE, &[("x-forwarded-uri", "/public/x"), auth]),
        ),
    ];
    for (method, path, headers) in cases {
        let r = ask(&env, method, path, &headers).await;
        assert_rejection(&r, 400, "invalid_request");
    }
    // One convention at a time still works in auto mode.
    let r = ask(
        &env,
        Method::GET,
        "/_tokengate",
        &plus(&NGINX_DELETE, &[auth]),
    )
    .await;
    assert_rejection(&r, 403, "insufficient_scope");
    let r = ask(&env, Method::DELETE, "/ext_authz/admin/users", &[auth]).await;
    assert_rejection(&r, 403, "insufficient_scope");
}

#[tokio::test]
async fn should_log_the_original_method_and_path_without_the_query() {
    let logs = capture();
    let env = Env::start_with(forward_auth_as(ConventionSetting::Nginx)).await;
    let token = "fwd-log-Kq8Zt3Vw";
    env.allow(token, 1).await;
    let fp = fingerprint(token);
    let r = ask(
        &env,
        Method::GET,
        "/_tokengate",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-original-method", "PUT"),
            ("x-original-uri", "/items/7?secret=QUERYqx7Lm2"),
            ("x-forwarded-host", "api.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("tokengate::access") && l.contains(&format!("token=\"{fp}\"")))
        .unwrap_or_else(|| panic!("no access line for {fp}:\n{text}"));
    assert!(
        line.contains("method=PUT") && line.contains("path=/items/7 "),
        "{line}"
    );
    assert!(!line.contains("_tokengate"), "{line}");
    let json = logs
        .json_lines()
        .into_iter()
        .find(|j| j["target"] == "tokengate::access" && j["token"] == fp.as_str())
        .expect("a JSON access line");
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["path"], "/items/7");
    // The original query may carry a token (token_sources.query_param): never logged.
    assert!(!text.contains("QUERYqx7Lm2"), "the query is in the logs");
}

#[test]
#[expect(clippy::result_large_err)] // figment::Jail's error type
fn should_validate_the_convention_key() {
    figment::Jail::expect_with(|jail| {
        let base = "mode = \"forward_auth\"\n[introspection]\nurl = \"http://as.test/i\"\n\
                    client_id = \"tg\"\nclient_secret = \"s\"\n";
        // Not a convention: the error names the key.
        jail.create_file(
            "bad.toml",
            &format!("{base}[forward_auth]\nconvention = \"haproxy\"\n"),
        )?;
        let err = tokengate::config::load(Some(Path::new("bad.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("forward_auth.convention") && err.contains("haproxy"),
            "{err}"
        );

        // The default is auto; each convention loads, from the file or the environment.
        jail.create_file("none.toml", base)?;
        let s = tokengate::config::load(Some(Path::new("none.toml")))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.forward_auth_convention, ConventionSetting::Auto);
        jail.create_file(
            "t.toml",
            &format!("{base}[forward_auth]\nconvention = \"traefik\"\n"),
        )?;
        let s = tokengate::config::load(Some(Path::new("t.toml")))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.forward_auth_convention, ConventionSetting::Traefik);
        jail.set_env("TOKENGATE_FORWARD_AUTH__CONVENTION", "envoy");
        jail.set_env("TOKENGATE_FORWARD_AUTH__PATH_PREFIX", "/ext_authz");
        let s = tokengate::config::load(Some(Path::new("t.toml")))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(s.forward_auth_convention, ConventionSetting::Envoy);
        assert_eq!(s.forward_auth_prefix, "/ext_authz");

        // The Envoy prefix with another convention would do nothing: an error.
        jail.set_env("TOKENGATE_FORWARD_AUTH__CONVENTION", "nginx");
        let err = tokengate::config::load(Some(Path::new("t.toml")))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("forward_auth.path_prefix") && err.contains("nginx"),
            "{err}"
        );
        Ok(())
    });
}

/// The shipped examples tell tokengate which convention to use, and Traefik's
/// passes only the headers tokengate reads.
#[test]
fn shipped_examples_set_their_convention() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, convention) in [
        ("deploy/nginx/tokengate.conf", "nginx"),
        ("deploy/traefik/dynamic.yml", "traefik"),
        ("deploy/envoy/ext_authz.yaml", "envoy"),
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains(&format!("convention = \"{convention}\"")),
            "{file} does not set convention = {convention:?}"
        );
    }
    let traefik = std::fs::read_to_string(root.join("deploy/traefik/dynamic.yml")).unwrap();
    let listed: Vec<&str> = traefik
        .lines()
        .skip_while(|l| l.trim() != "authRequestHeaders:")
        .skip(1)
        .take_while(|l| l.trim_start().starts_with("- ") || l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    assert_eq!(listed, ["Authorization"], "{traefik}");
    // The overrides tokengate cannot strip in this mode (nginx's are checked
    // through a real nginx above): every example drops them.
    for file in ["deploy/traefik/dynamic.yml", "deploy/envoy/ext_authz.yaml"] {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap()
            .to_ascii_lowercase();
        for name in [
            "x-http-method-override",
            "x-http-method:",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
        ] {
            let name = if file.ends_with("yaml") {
                name.trim_end_matches(':')
            } else {
                name
            };
            assert!(text.contains(name), "{file} does not drop {name}");
        }
    }
}

/// `forward_auth.convention` is read per request: a SIGHUP that sets it takes
/// effect at once, without a restart warning.
#[tokio::test]
async fn should_apply_a_reloaded_convention_at_once() {
    let env = Env::start_with(forward_auth).await;
    let spoofed = plus(&TRAEFIK_DELETE, &SPOOF_NGINX);
    let r = ask(&env, Method::GET, "/_tokengate", &spoofed).await;
    assert_rejection(&r, 400, "invalid_request");

    let mut raw = base_config(&env.auth, &env.upstream.url());
    forward_auth_as(ConventionSetting::Traefik)(&mut raw);
    let report = env.gate.reload().reload(raw.validate().unwrap()).unwrap();
    assert!(report.restart_required.is_empty(), "{report:?}");
    let r = ask(&env, Method::GET, "/_tokengate", &spoofed).await;
    assert_rejection(&r, 401, "unauthorized");
}

/// An original host that is not text (obs-text bytes in `X-Forwarded-Host`)
/// is refused with 400, as in proxy mode: read as "no host" it would skip the
/// host-scoped routes and let a later, host-less route decide.
#[tokio::test]
async fn should_refuse_an_original_host_that_is_not_text() {
    let env = Env::start_with(forward_auth_as(ConventionSetting::Nginx)).await;
    let mut req = b"GET /auth HTTP/1.1\r\nHost: auth.local\r\nX-Original-Method: GET\r\nX-Original-URI: /admin/users\r\nX-Forwarded-Host: api.".to_vec();
    req.extend_from_slice(b"\xe9xample\r\nAuthorization: Bearer tok\r\nConnection: close\r\n\r\n");
    let answer = String::from_utf8_lossy(&raw_exchange(env.gate.addr, &req).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// Envoy's HTTP ext_authz removes nothing by itself: the 200 names every
/// identity header tokengate did not set (`x-envoy-auth-headers-to-remove`),
/// so a client's own `X-Auth-Subject` cannot reach the app on a public route.
#[tokio::test]
async fn should_ask_envoy_to_remove_the_identity_headers_it_did_not_set() {
    let env = Env::start_with(forward_auth_as(ConventionSetting::Envoy)).await;
    let r = ask(
        &env,
        Method::GET,
        "/ext_authz/public/x",
        &[("x-auth-subject", "admin")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let remove = r
        .header("x-envoy-auth-headers-to-remove")
        .unwrap_or_default()
        .to_owned();
    for h in [
        "x-auth-subject",
        "x-auth-client-id",
        "x-auth-scope",
        "x-auth-token-binding",
    ] {
        assert!(remove.split(',').any(|n| n == h), "{h} not in {remove:?}");
    }
    // With a token, the headers tokengate sets are overwritten, not removed.
    env.allow("tok", 1).await;
    let r = ask(
        &env,
        Method::GET,
        "/ext_authz/items",
        &[("authorization", "Bearer tok")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let remove = r
        .header("x-envoy-auth-headers-to-remove")
        .unwrap_or_default();
    assert!(
        !remove.split(',').any(|n| n == "x-auth-subject"),
        "{remove:?}"
    );
}
