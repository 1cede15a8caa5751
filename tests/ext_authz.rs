//! `[ext_authz]`: Envoy's gRPC `Authorization/Check` and `grpc.health.v1`, sent
//! by a real tonic client to tokengate started through `run()`, with the fake
//! AS (wiremock) behind it.

mod common;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap as EnvoyHeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokengate::clock::ManualClock;
use tokengate::config::{Mode, RawConfig, RawRoute};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use wiremock::MockServer;

/// tokengate with an ext_authz listener, in forward-auth mode (the usual
/// set-up behind Envoy: no upstream of its own), and the fake AS.
struct ExtEnv {
    auth: MockServer,
    grpc: SocketAddr,
    /// The HTTP forward-auth port of the same tokengate.
    http: SocketAddr,
    clock: Arc<ManualClock>,
    /// Set to false to make `/readyz` (and so gRPC health) fail.
    ready: Arc<AtomicBool>,
    reload: tokengate::ReloadHandle,
    raw: RawConfig,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn routes(raw: &mut RawConfig) {
    raw.mode = Mode::ForwardAuth;
    raw.forward_auth.convention = tokengate::config::ConventionSetting::Envoy;
    raw.routes = vec![
        RawRoute {
            require_scopes: Some(vec!["admin".into()]),
            ..RawRoute::new("/admin/")
        },
        RawRoute::public("/public/"),
    ];
}

impl ExtEnv {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut RawConfig)) -> Self {
        let auth = MockServer::start().await;
        let mut raw = base_config(&auth, "http://127.0.0.1:9");
        routes(&mut raw);
        configure(&mut raw);
        Self::start_raw(auth, &raw).await
    }

    async fn start_raw(auth: MockServer, raw: &RawConfig) -> Self {
        tokengate::install_crypto_provider();
        let settings = raw.validate().expect("test config must validate");
        let clock = Arc::new(ManualClock::default());
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let app = tokengate::App::with_clock(settings, clock.clone())
            .with_ext_authz_listener(grpc_listener);
        let reload = app.reload_handle();
        let ready = Arc::new(AtomicBool::new(true));
        let r = ready.clone();
        app.readiness()
            .add_check("test says not ready", move || r.load(Ordering::SeqCst));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(tokengate::run(app, listener, async move {
            let _ = rx.await;
        }));
        Self {
            auth,
            grpc,
            http,
            clock,
            ready,
            reload,
            raw: raw.clone(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    async fn client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::new(channel(self.grpc).await)
    }

    async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(channel(self.grpc).await)
    }

    async fn check(&self, req: CheckRequest) -> CheckResponse {
        self.client()
            .await
            .check(req)
            .await
            .expect("Check is answered as a CheckResponse, never a gRPC error")
            .into_inner()
    }

    /// "active, sub alice, client app, scope read write, exp in an hour".
    async fn allow(&self, token: &str, scope: &str, times: u64) {
        let body = json!({
            "active": true, "sub": "alice", "client_id": "app",
            "scope": scope, "exp": self.clock.unix_secs() + 3600, "token_type": "Bearer",
        });
        introspection_of(token)
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(body))
            .expect(times)
            .mount(&self.auth)
            .await;
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("tokengate::run did not return within 20s")
                .expect("tokengate::run panicked");
        }
    }
}

use tokengate::clock::Clock as _;

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the ext_authz port")
}

/// What Envoy sends for a client's request: method, path (with query), host,
/// scheme, and the headers (lower-case names, pseudo-headers included).
fn check_request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut map: std::collections::HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    map.insert(":authority".into(), "api.example".into());
    map.insert(":path".into(), path.into());
    map.insert(":method".into(), method.into());
    map.insert(":scheme".into(), "https".into());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "api.example".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: map,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn ok(resp: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(resp.status.as_ref().map(|s| s.code), Some(0), "{resp:?}");
    match &resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("expected an OkHttpResponse, got {other:?}"),
    }
}

/// The denied answer, checked against the gRPC code and HTTP status Envoy uses.
fn denied(resp: &CheckResponse, grpc: i32, http: i32) -> &DeniedHttpResponse {
    assert_eq!(resp.status.as_ref().map(|s| s.code), Some(grpc), "{resp:?}");
    let denied = match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d,
        other => panic!("expected a DeniedHttpResponse, got {other:?}"),
    };
    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(http));
    assert_eq!(header(&denied.headers, "cache-control"), Some("no-store"));
    assert_eq!(
        header(&denied.headers, "content-type"),
        Some("application/json")
    );
    denied
}

fn header<'a>(
    headers: &'a [envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
    name: &str,
) -> Option<&'a str> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn body(d: &DeniedHttpResponse) -> Value {
    serde_json::from_str(&d.body).expect("JSON body")
}

const OVERWRITE: i32 = 2; // HeaderAppendAction::OverwriteIfExistsOrAdd

#[tokio::test]
async fn allow_sets_identity_and_removes_spoofed_headers_then_hits_the_cache() {
    let env = ExtEnv::start().await;
    env.allow("tok-allow", "read write", 1).await;
    let req = check_request(
        "GET",
        "/api/items?page=2",
        &[
            ("authorization", "Bearer tok-allow"),
            // A client's forged identity: overwritten or removed, never passed on.
            ("x-auth-subject", "mallory"),
            ("x-remote-user", "mallory"),
        ],
    );
    let resp = env.check(req.clone()).await;
    let ok = ok(&resp);
    assert_eq!(header(&ok.headers, "x-auth-subject"), Some("alice"));
    assert_eq!(header(&ok.headers, "x-auth-client-id"), Some("app"));
    assert_eq!(header(&ok.headers, "x-auth-scope"), Some("read write"));
    for h in &ok.headers {
        assert_eq!(h.append_action, OVERWRITE, "{h:?}");
    }
    for spoofable in ["x-forwarded-user", "x-remote-user", "x-user"] {
        assert!(
            ok.headers_to_remove.iter().any(|h| h == spoofable),
            "{spoofable} not removed: {:?}",
            ok.headers_to_remove
        );
    }
    // Set (overwritten) rather than removed: removal-then-set order is Envoy's choice.
    assert!(!ok.headers_to_remove.iter().any(|h| h == "x-auth-subject"));
    assert!(ok.query_parameters_to_remove.is_empty());

    // The second Check is a cache hit: the AS was asked once (`expect(1)`).
    let again = env.check(req).await;
    assert_eq!(ok.headers, self::ok(&again).headers);
}

#[tokio::test]
async fn public_route_allows_without_a_token_and_strips_every_identity_header() {
    let env = ExtEnv::start().await;
    let resp = env
        .check(check_request(
            "GET",
            "/public/logo.png",
            &[("x-auth-subject", "mallory")],
        ))
        .await;
    let ok = ok(&resp);
    assert!(ok.headers.is_empty(), "{:?}", ok.headers);
    for h in [
        "x-auth-subject",
        "x-auth-client-id",
        "x-auth-scope",
        "x-remote-user",
    ] {
        assert!(ok.headers_to_remove.iter().any(|r| r == h), "{h}");
    }
    assert!(env.auth.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn no_token_is_401_unauthenticated_with_the_bare_challenge() {
    let env = ExtEnv::start().await;
    let resp = env.check(check_request("GET", "/api/items", &[])).await;
    let d = denied(&resp, 16, 401);
    assert_eq!(
        header(&d.headers, "www-authenticate"),
        Some(r#"Bearer realm="tokengate""#)
    );
    assert_eq!(body(d)["error"], "unauthorized");
    assert!(env.auth.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn inactive_token_is_401_invalid_token() {
    let env = ExtEnv::start().await;
    introspection_of("tok-dead")
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({"active": false})))
        .expect(1)
        .mount(&env.auth)
        .await;
    let resp = env
        .check(check_request(
            "GET",
            "/api/items",
            &[("authorization", "Bearer tok-dead")],
        ))
        .await;
    let d = denied(&resp, 16, 401);
    let www = header(&d.headers, "www-authenticate").unwrap();
    assert!(www.contains(r#"error="invalid_token""#), "{www}");
    assert_eq!(body(d)["error"], "invalid_token");
}

#[tokio::test]
async fn missing_scope_is_403_permission_denied() {
    let env = ExtEnv::start().await;
    env.allow("tok-reader", "read", 1).await;
    let resp = env
        .check(check_request(
            "DELETE",
            "/admin/users/7",
            &[("authorization", "Bearer tok-reader")],
        ))
        .await;
    let d = denied(&resp, 7, 403);
    let www = header(&d.headers, "www-authenticate").unwrap();
    assert!(
        www.contains(r#"error="insufficient_scope""#) && www.contains(r#"scope="admin""#),
        "{www}"
    );
    assert_eq!(body(d)["error"], "insufficient_scope");
}

#[tokio::test]
async fn authorization_server_down_is_503_unavailable_never_an_allow() {
    let dead = closed_addr().await;
    let env = ExtEnv::start_with(|raw| {
        raw.introspection.url = format!("http://{dead}/introspect");
        raw.introspection.timeout = Duration::from_millis(500);
    })
    .await;
    let resp = env
        .check(check_request(
            "GET",
            "/api/items",
            &[("authorization", "Bearer tok-any")],
        ))
        .await;
    let d = denied(&resp, 14, 503);
    assert!(header(&d.headers, "retry-after").is_some());
    assert!(header(&d.headers, "www-authenticate").is_none());
    assert_eq!(body(d)["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn path_games_are_400_invalid_argument_before_the_token_is_looked_at() {
    let env = ExtEnv::start().await;
    for path in [
        "/public/..%2fadmin/users",
        "/public/..;/admin/users",
        "/public/..%3B/admin/x",
        "/ADMIN/users",
        "/%2561dmin/x",
        "/public/%EF%BC%8E%EF%BC%8E/admin/x",
    ] {
        let resp = env
            .check(check_request(
                "DELETE",
                path,
                &[("authorization", "Bearer tok-never-asked")],
            ))
            .await;
        assert_eq!(resp.status.as_ref().map(|s| s.code), Some(3), "{path}");
        let d = denied(&resp, 3, 400);
        assert_eq!(body(d)["error"], "invalid_request", "{path}");
    }
    // Not a request Envoy would describe: no target, lower-case method, no HTTP at all.
    for (method, path) in [("GET", "api/items"), ("GET", ""), ("", "/api")] {
        let resp = env.check(check_request(method, path, &[])).await;
        denied(&resp, 3, 400);
    }
    let resp = env.check(CheckRequest::default()).await;
    denied(&resp, 3, 400);
    assert!(env.auth.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn ext_authz_and_http_forward_auth_decide_alike() {
    // The same original requests through both front doors of one tokengate:
    // the HTTP forward-auth sub-request (Envoy convention: the original method,
    // path and Host) and the gRPC Check. Same decision, status for status.
    let env = ExtEnv::start().await;
    env.allow("tok-rw", "read write", 1).await;
    let http = http1_client();
    let cases: [(&str, &str, Option<&str>); 7] = [
        ("GET", "/api/items", Some("Bearer tok-rw")),
        ("GET", "/api/items", None),
        ("DELETE", "/admin/x", Some("Bearer tok-rw")),
        ("GET", "/public/..%2fadmin", None),
        ("GET", "/public/a", None),
        ("GET", "/api/items?_method=DELETE", Some("Bearer tok-rw")),
        ("GET", "/api", Some("Bearer a b")),
    ];
    for (method, path, auth) in cases {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let grpc = env.check(check_request(method, path, &headers)).await;
        let grpc_status = match &grpc.http_response {
            Some(HttpResponse::OkResponse(_)) => 200,
            Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().unwrap().code,
            other => panic!("not an ok or denied response: {other:?}"),
        };
        let mut b = request(
            method.parse().unwrap(),
            &format!("http://{}{path}", env.http),
        )
        .header("host", "api.example");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        let r = send(&http, b.body(empty()).unwrap()).await;
        assert_eq!(
            i32::from(r.status.as_u16()),
            grpc_status,
            "{method} {path} {auth:?}"
        );
    }
}

#[tokio::test]
async fn raw_header_map_keeps_a_repeated_authorization_and_refuses_it() {
    // Envoy's `encode_raw_headers: true` sends one entry per field line.
    let env = ExtEnv::start().await;
    let mut req = check_request("GET", "/api/items", &[]);
    let http = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap();
    http.headers.clear();
    let entry = |k: &str, v: &str| HeaderValue {
        key: k.into(),
        raw_value: v.as_bytes().to_vec(),
        ..Default::default()
    };
    http.header_map = Some(EnvoyHeaderMap {
        headers: vec![
            entry(":authority", "api.example"),
            entry("authorization", "Bearer tok-one"),
            entry("authorization", "Bearer tok-two"),
        ],
    });
    let resp = env.check(req).await;
    let d = denied(&resp, 3, 400);
    assert_eq!(body(d)["error"], "invalid_request");
    assert!(env.auth.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_host_field_that_disagrees_with_the_host_header_is_400() {
    let env = ExtEnv::start().await;
    let req = check_request("GET", "/public/a", &[("host", "admin.internal")]);
    let resp = env.check(req).await;
    denied(&resp, 3, 400);
}

#[tokio::test]
async fn query_token_is_accepted_and_removed_and_authorization_can_be_dropped() {
    let env = ExtEnv::start_with(|raw| {
        raw.token_sources.query_param = "access_token".into();
        raw.identity.forward_authorization = false;
    })
    .await;
    env.allow("tok-q", "read", 1).await;
    let resp = env
        .check(check_request("GET", "/api/items?access_token=tok-q", &[]))
        .await;
    let ok = ok(&resp);
    assert_eq!(
        ok.query_parameters_to_remove,
        vec!["access_token".to_owned()]
    );
    assert!(ok.headers_to_remove.iter().any(|h| h == "authorization"));
}

#[tokio::test]
async fn health_follows_readiness_and_shutdown() {
    // A drain deadline far beyond the test's patience: the drain must end
    // because the calls and the Watch stream end, not because time ran out.
    let mut env = ExtEnv::start_with(|raw| raw.shutdown_timeout = Duration::from_secs(120)).await;
    let mut health = env.health().await;
    let ask = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let r = health.check(ask(service)).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(ask("some.Other")).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // A failing readiness check (as the open AS breaker would be).
    env.ready.store(false, Ordering::SeqCst);
    let r = health.check(ask("")).await.unwrap().into_inner();
    assert_eq!(r.status, ServingStatus::NotServing as i32);
    env.ready.store(true, Ordering::SeqCst);

    // Watch: the current status at once.
    let mut watch = health.watch(ask("")).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // Shutdown: run() returns (the watch ends rather than holding the
    // drain), and the port is closed.
    tokio::time::timeout(Duration::from_secs(10), env.stop())
        .await
        .expect("the drain waited for the open Watch stream");
    assert!(tokio::net::TcpStream::connect(env.grpc).await.is_err());
    // The stream said NOT_SERVING, or simply ended, when shutdown began.
    if let Ok(Some(m)) = watch.message().await {
        assert_eq!(m.status, ServingStatus::NotServing as i32);
    }
}

#[tokio::test]
async fn an_open_breaker_makes_health_not_serving() {
    let dead = closed_addr().await;
    let env = ExtEnv::start_with(|raw| {
        raw.introspection.url = format!("http://{dead}/introspect");
        raw.resilience.breaker_failures = 1;
        raw.resilience.breaker_open_for = Duration::from_secs(600);
    })
    .await;
    let mut health = env.health().await;
    let r = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    let resp = env
        .check(check_request(
            "GET",
            "/api/items",
            &[("authorization", "Bearer tok-x")],
        ))
        .await;
    denied(&resp, 14, 503);
    let r = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn reload_applies_routes_to_ext_authz_and_keeps_its_listener() {
    let env = ExtEnv::start().await;
    let before = env.check(check_request("GET", "/open/x", &[])).await;
    denied(&before, 16, 401);

    let mut raw = env.raw.clone();
    raw.routes.push(RawRoute::public("/open/"));
    raw.ext_authz.listen = "127.0.0.1:1".into();
    let report = env.reload.reload(raw.validate().unwrap()).unwrap();
    assert_eq!(report.restart_required, vec!["ext_authz"]);
    // Routes are read per Check: the new public route applies at once, on
    // the listener that is still the running one.
    let after = env.check(check_request("GET", "/open/x", &[])).await;
    ok(&after);
}

/// Connects to the ext_authz port over TLS (ALPN h2), trusting `config`'s roots.
#[derive(Clone)]
struct TlsConnect {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<http::Uri> for TlsConnect {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(this.addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[tokio::test]
async fn ext_authz_over_tls_with_the_tls_certificate() {
    let ca = TestCa::new("ext_authz CA");
    let leaf = ca.issue(&["localhost", "127.0.0.1"]);
    let dir = temp_dir("ext-authz-tls");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let env = ExtEnv::start_with(|raw| {
        raw.tls.cert_file = cert.display().to_string();
        raw.tls.key_file = key.display().to_string();
        // `listen` is given to the App directly; the key still has to be set
        // for `tls` to validate.
        raw.ext_authz.listen = "127.0.0.1:0".into();
        raw.ext_authz.tls = true;
    })
    .await;
    env.allow("tok-tls", "read", 1).await;

    let mut config = tls_client_config(&[ca.der()]);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnect {
        addr: env.grpc,
        config: Arc::new(config),
    };
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .expect("TLS connection to ext_authz");
    let resp = AuthorizationClient::new(channel.clone())
        .check(check_request(
            "GET",
            "/api/items",
            &[("authorization", "Bearer tok-tls")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(header(&ok(&resp).headers, "x-auth-subject"), Some("alice"));

    // Cleartext gRPC on the TLS port gets nowhere.
    let plain = Channel::from_shared(format!("http://{}", env.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(AuthorizationClient::new(ch)
            .check(check_request("GET", "/public/a", &[]))
            .await
            .is_err());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn each_check_writes_one_access_line_without_the_token_or_the_query() {
    let logs = capture();
    let env = ExtEnv::start_with(|raw| raw.token_sources.query_param = "access_token".into()).await;
    let token = "tok-logged-secret-value";
    env.allow(token, "read", 1).await;
    let resp = env
        .check(check_request(
            "POST",
            &format!("/api/orders?access_token={token}&x=1"),
            &[],
        ))
        .await;
    ok(&resp);
    let fp = fingerprint(token);
    let lines: Vec<Value> = logs
        .json_lines()
        .into_iter()
        .filter(|l| l["target"] == "tokengate::access" && l["token"] == fp.as_str())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/api/orders");
    assert_eq!(line["status"], 200);
    assert_eq!(line["subject"], "alice");
    assert_eq!(line["cache"], "miss");
    assert!(!logs.text().contains(token), "the token was logged");
}

/// A subject with a non-ASCII character is still set (overwriting the
/// client's copy): dropping it would leave the client's `X-Auth-Subject` in place.
#[tokio::test]
async fn a_non_ascii_subject_overwrites_the_clients_copy() {
    let env = ExtEnv::start().await;
    let body = json!({
        "active": true, "sub": "jos\u{e9}", "client_id": "app",
        "scope": "read", "exp": env.clock.unix_secs() + 3600, "token_type": "Bearer",
    });
    introspection_of("tok-u")
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(body))
        .mount(&env.auth)
        .await;
    let resp = env
        .check(check_request(
            "GET",
            "/api/items",
            &[
                ("authorization", "Bearer tok-u"),
                ("x-auth-subject", "admin"),
            ],
        ))
        .await;
    let ok = ok(&resp);
    assert_eq!(header(&ok.headers, "x-auth-subject"), Some("jos\u{e9}"));
}

/// URL and method overrides are removed on allow, as in proxy mode: the route
/// was chosen from the path Envoy reported, so the app must serve that one.
#[tokio::test]
async fn url_and_method_overrides_are_removed_on_allow() {
    let env = ExtEnv::start().await;
    let resp = env
        .check(check_request(
            "GET",
            "/public/x",
            &[
                ("x-original-url", "/admin/users"),
                ("x-rewrite-url", "/admin/users"),
            ],
        ))
        .await;
    let ok1 = ok(&resp);
    for h in ["x-original-url", "x-rewrite-url", "x-http-method-override"] {
        assert!(
            ok1.headers_to_remove.iter().any(|r| r == h),
            "{h} not removed: {:?}",
            ok1.headers_to_remove
        );
    }
}

/// A certificate-bound token (RFC 8705) on the gRPC port: the client
/// certificate is the one Envoy reports in `attributes.source.certificate`
/// (`include_peer_certificate: true`, URL-encoded PEM). The right certificate
/// passes and the upstream learns `mtls`; another one, none, or one Envoy
/// could not have sent (not PEM) are refused.
#[tokio::test]
async fn a_certificate_bound_token_needs_the_certificate_envoy_reports() {
    let ca = TestCa::new("client ca");
    let (alice, bob) = (ca.issue(&["alice"]), ca.issue(&["bob"]));
    let env = ExtEnv::start().await;
    let x5t = x5t_s256(&alice.cert_der);
    introspection_of("tok-bound")
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({
            "active": true, "sub": "alice", "client_id": "app", "scope": "read",
            "exp": env.clock.unix_secs() + 3600, "cnf": {"x5t#S256": x5t},
        })))
        .mount(&env.auth)
        .await;
    let with_cert = |cert: Option<&str>| {
        let mut req = check_request(
            "GET",
            "/api/items",
            &[("authorization", "Bearer tok-bound")],
        );
        if let (Some(cert), Some(a)) = (cert, req.attributes.as_mut()) {
            a.source = Some(
                envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer {
                    certificate: cert.to_owned(),
                    ..Default::default()
                },
            );
        }
        req
    };
    let resp = env
        .check(with_cert(Some(&escaped_pem(&alice.cert_pem))))
        .await;
    assert_eq!(
        header(&ok(&resp).headers, "x-auth-token-binding"),
        Some("mtls")
    );
    for cert in [Some(escaped_pem(&bob.cert_pem)), None] {
        let resp = env.check(with_cert(cert.as_deref())).await;
        denied(&resp, 16, 401);
    }
    let resp = env.check(with_cert(Some("not a certificate"))).await;
    denied(&resp, 3, 400);
}
