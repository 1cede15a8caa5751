//! Test harness: a real tokengate (`tokengate::run` on 127.0.0.1:0) between a fake
//! authorization server (wiremock) and a real hyper upstream, reached through real
//! sockets (hyper-util HTTP/1.1 and h2c clients, or raw TCP for exact bytes).
//!
//! Every test builds its own [`Env`], so tests run in parallel without sharing
//! ports, counters or caches.
// `allow`, not `expect`: every test binary compiles this module and uses a
// different part of it, so the lint fires in some binaries and not in others.
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokengate::clock::{Clock, ManualClock};
use tokengate::config::{RawConfig, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What our test clients send.
pub type ClientBody = BoxBody<Bytes, BoxError>;
pub type TestClient = Client<HttpConnector, ClientBody>;

pub const CLIENT_ID: &str = "tokengate";
pub const CLIENT_SECRET: &str = "s3cret";
pub const INTROSPECT_PATH: &str = "/oauth2/introspect";

/// 64 KiB of filler, `'static` so bodies can be built from it without copying.
pub static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

// ---------------------------------------------------------------------------
// The upstream: a real hyper 1 server
// ---------------------------------------------------------------------------

/// What the upstream saw of one request (and, from the echo route, its body length).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    pub method: String,
    /// Path and query exactly as received (origin-form).
    pub target: String,
    pub version: String,
    /// Every header line, in order, duplicates kept.
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body_len: Option<u64>,
}

impl Echo {
    fn of<B>(req: &Request<B>) -> Self {
        Self {
            method: req.method().to_string(),
            target: req
                .uri()
                .path_and_query()
                .map(|pq| pq.as_str().to_owned())
                .unwrap_or_default(),
            version: format!("{:?}", req.version()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body_len: None,
        }
    }

    /// First value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

#[derive(Default)]
struct UpState {
    hits: AtomicUsize,
    seen: Mutex<Vec<Echo>>,
    /// Lengths of the request bodies that arrived *complete* (echo route).
    bodies: Mutex<Vec<u64>>,
}

/// A hyper 1 HTTP/1.1 server. Routes:
/// * `HEAD *`: 200, `Content-Length: 1234`, no body;
/// * `/download/<n>`: streams `n` bytes (chunked, 64 KiB frames, nothing buffered);
/// * `/sleep/<ms>`: waits, then echoes;
/// * `/hop`: answers with hop-by-hop headers (`Connection: X-Up-Hop`, `X-Up-Hop`,
///   `Keep-Alive`, `Proxy-Connection`) next to an end-to-end `X-Up-Keep`;
/// * `/status/<code>`: an empty answer with that status (204, 304, ...);
/// * anything else: echoes the request as JSON ([`Echo`]), counting the body
///   frame by frame without keeping it.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpState>,
}

type UpBody = BoxBody<Bytes, Infallible>;

/// Serves one upstream connection (TCP or unix) with [`upstream_handle`].
fn serve_upstream_conn<S>(st: Arc<UpState>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(upstream_handle(&st, req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
}

impl Upstream {
    /// The same routes over a unix domain socket at `path` (HTTP/1.1).
    pub async fn start_unix(path: &std::path::Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let state = Arc::new(UpState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                serve_upstream_conn(st.clone(), stream);
            }
        });
        Self {
            addr: "0.0.0.0:0".parse().unwrap(),
            state,
        }
    }

    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                serve_upstream_conn(st.clone(), stream);
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that reached the upstream (counted when the head arrives).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Body lengths of the requests whose body arrived complete (echo route).
    pub fn bodies(&self) -> Vec<u64> {
        self.state.bodies.lock().unwrap().clone()
    }

    /// Heads of every request that reached the upstream, in arrival order.
    pub fn seen(&self) -> Vec<Echo> {
        self.state.seen.lock().unwrap().clone()
    }
}

fn up_full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed()
}

async fn upstream_handle(st: &UpState, req: Request<Incoming>) -> Response<UpBody> {
    let mut echo = Echo::of(&req);
    st.hits.fetch_add(1, Ordering::SeqCst);
    st.seen.lock().unwrap().push(echo.clone());
    let path = req.uri().path().to_owned();

    if req.method() == Method::HEAD {
        return Response::builder()
            .header("content-length", "1234")
            .header("x-head", "1")
            .body(Empty::new().boxed())
            .unwrap();
    }
    if let Some(n) = path.strip_prefix("/download/") {
        let total: usize = n.parse().unwrap();
        let frames = stream::unfold(total, |left| async move {
            (left > 0).then(|| {
                let n = left.min(CHUNK.len());
                (
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK[..n]))),
                    left - n,
                )
            })
        });
        return Response::new(StreamBody::new(frames).boxed());
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if path == "/hop" {
        return Response::builder()
            .header("connection", "X-Up-Hop")
            .header("x-up-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("x-up-keep", "1")
            .body(up_full("hop"))
            .unwrap();
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return Response::builder()
            .status(status)
            .header("etag", "\"v1\"")
            .header("x-status-route", "1")
            .body(Empty::new().boxed())
            .unwrap();
    }

    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                }
            }
            Err(_) => {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(up_full("broken request body"))
                    .unwrap()
            }
        }
    }
    echo.body_len = Some(n);
    st.bodies.lock().unwrap().push(n);
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", "1")
        .body(up_full(serde_json::to_vec(&echo).unwrap()))
        .unwrap()
}

// ---------------------------------------------------------------------------
// tokengate itself
// ---------------------------------------------------------------------------

/// A running tokengate. Dropping it resolves the shutdown future.
pub struct Gate {
    pub addr: SocketAddr,
    /// The admin listener (`None` for gates built with [`Gate::from_parts`]).
    pub admin: Option<SocketAddr>,
    pub clock: Arc<ManualClock>,
    pub reload: Option<tokengate::reload::ReloadHandle>,
    pub readiness: Option<Arc<tokengate::Readiness>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The fleet layer (`[cache.shared]`), to purge and read counters directly.
    pub fleet: Option<Arc<tokengate::cache::fleet::Fleet>>,
}

impl Gate {
    /// Wraps a tokengate a test started itself (e.g. after discovery).
    pub fn from_parts(
        addr: SocketAddr,
        clock: Arc<ManualClock>,
        shutdown: oneshot::Sender<()>,
    ) -> Self {
        Self {
            addr,
            admin: None,
            clock,
            reload: None,
            readiness: None,
            shutdown: Some(shutdown),
            task: None,
            fleet: None,
        }
    }

    /// Starts `tokengate::run` with an admin listener on 127.0.0.1:0
    /// (whatever `admin.listen` says).
    pub async fn start(raw: &RawConfig) -> Self {
        tokengate::install_crypto_provider();
        let settings = raw.validate().expect("test config must validate");
        Self::start_settings(settings).await
    }

    /// Starts tokengate from validated settings (e.g. after keeping a handle
    /// such as the TLS reloader).
    pub async fn start_settings(settings: tokengate::config::Settings) -> Self {
        tokengate::install_crypto_provider();
        let clock = Arc::new(ManualClock::default());
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let app =
            tokengate::App::with_clock(settings, clock.clone()).with_admin_listener(admin_listener);
        let reload = app.reload_handle();
        let readiness = app.readiness().clone();
        let fleet = app.cache().fleet().cloned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(tokengate::run(app, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin: Some(admin),
            clock,
            reload: Some(reload),
            readiness: Some(readiness),
            shutdown: Some(tx),
            task: Some(task),
            fleet,
        }
    }

    /// Resolves the shutdown future (what SIGTERM does in `main`).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until `tokengate::run` has returned (drain finished).
    pub async fn stopped(&mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("tokengate::run did not return within 20s")
                .expect("tokengate::run panicked");
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("gate has no admin listener")
        )
    }

    pub fn reload(&self) -> &tokengate::reload::ReloadHandle {
        self.reload.as_ref().expect("gate has no reload handle")
    }
}

/// The base config every test starts from: our AS and upstream, small timeouts.
pub fn base_config(auth: &MockServer, upstream: &str) -> RawConfig {
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        upstream: upstream.to_owned(),
        shutdown_timeout: Duration::from_secs(1),
        ..RawConfig::default()
    };
    raw.introspection.url = format!("{}{INTROSPECT_PATH}", auth.uri());
    raw.introspection.client_id = CLIENT_ID.into();
    raw.introspection.client_secret = Secret::new(CLIENT_SECRET);
    raw.introspection.timeout = Duration::from_secs(2);
    // Tests count AS calls exactly (`expect(n)`, `forbid_introspection`) and
    // mount only the tokens they use; the start-up probe has its own tests
    // (tests/probe.rs), which turn it on.
    raw.introspection.probe = tokengate::config::ProbeMode::Off;
    raw.resilience.upstream_timeout = Duration::from_secs(30);
    raw
}

/// One test's world: fake AS, real upstream, tokengate, and two clients.
pub struct Env {
    pub auth: MockServer,
    pub upstream: Upstream,
    pub gate: Gate,
    pub http1: TestClient,
    pub h2c: TestClient,
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts everything; `configure` may change any setting of the base config.
    pub async fn start_with(configure: impl FnOnce(&mut RawConfig)) -> Self {
        let auth = MockServer::start().await;
        let upstream = Upstream::start().await;
        let mut raw = base_config(&auth, &upstream.url());
        configure(&mut raw);
        let gate = Gate::start(&raw).await;
        Self {
            auth,
            upstream,
            gate,
            http1: http1_client(),
            h2c: h2c_client(),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.gate.addr)
    }

    /// "Now" as tokengate's clock sees it, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.gate.clock.unix_secs()
    }

    pub fn advance(&self, by: Duration) {
        self.gate.clock.advance(by);
    }

    /// HTTP/1.1 GET with `Authorization: Bearer <token>`.
    pub async fn get(&self, path: &str, token: &str) -> Resp {
        let req = request(Method::GET, &self.url(path))
            .header("authorization", format!("Bearer {token}"))
            .body(empty())
            .unwrap();
        send(&self.http1, req).await
    }

    /// HTTP/1.1 GET with the given `Authorization` values (none, one, or several).
    pub async fn get_with_auth(&self, path: &str, auth: &[&str]) -> Resp {
        let mut b = request(Method::GET, &self.url(path));
        for a in auth {
            b = b.header("authorization", *a);
        }
        send(&self.http1, b.body(empty()).unwrap()).await
    }

    /// Mounts an AS answer for `token` that must be asked for exactly `times` times.
    pub async fn answer(&self, token: &str, body: Value, times: u64) {
        introspection_of(token)
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(times)
            .mount(&self.auth)
            .await;
    }

    /// Mounts "active, sub alice, client app, scope read write, exp in an hour".
    pub async fn allow(&self, token: &str, times: u64) {
        let body = json!({
            "active": true, "sub": "alice", "client_id": "app",
            "scope": "read write", "exp": self.now() + 3600, "token_type": "Bearer",
        });
        self.answer(token, body, times).await;
    }

    /// Fails the test if the AS is called at all (verified when `auth` drops).
    pub async fn forbid_introspection(&self) {
        Mock::given(wiremock::matchers::any())
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .named("no introspection call is allowed")
            .mount(&self.auth)
            .await;
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Resp {
        let req = request(Method::GET, &self.gate.admin_url(path))
            .body(empty())
            .unwrap();
        send(&self.http1, req).await
    }

    /// `POST /purge` with `body` of `content_type`, and `Authorization: <auth>` if given.
    pub async fn purge(&self, content_type: &str, body: &str, auth: Option<&str>) -> Resp {
        let mut b = request(Method::POST, &self.gate.admin_url("/purge"))
            .header("content-type", content_type);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        send(&self.http1, b.body(full(body.to_owned())).unwrap()).await
    }

    /// Scrapes `/metrics` and parses it strictly (see [`Scrape::parse`]).
    pub async fn scrape(&self) -> Scrape {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        Scrape::parse(&r.text())
            .unwrap_or_else(|e| panic!("bad exposition format: {e}\n{}", r.text()))
    }

    /// Introspection calls that reached the fake AS so far.
    pub async fn introspections(&self) -> Vec<wiremock::Request> {
        self.auth.received_requests().await.unwrap_or_default()
    }
}

/// A mock for the introspection endpoint that matches only the given token.
pub fn introspection_of(token: &str) -> MockBuilder {
    let want = token.to_owned();
    Mock::given(method("POST"))
        .and(path(INTROSPECT_PATH))
        .and(move |r: &wiremock::Request| {
            form_value(&r.body, "token").as_deref() == Some(want.as_str())
        })
}

/// `application/x-www-form-urlencoded` body → value of `key`.
pub fn form_value(body: &[u8], key: &str) -> Option<String> {
    form_pairs(body)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A local address nothing listens on (bound, then released).
pub async fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

pub fn http1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// HTTP/2 over cleartext with prior knowledge.
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn request(method: Method, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

pub fn empty() -> ClientBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> ClientBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A body of `total` bytes produced lazily, 64 KiB at a time: never one buffer.
pub fn streamed_body(total: usize) -> ClientBody {
    let frames = stream::unfold(total, |left| async move {
        (left > 0).then(|| {
            let n = left.min(CHUNK.len());
            (
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(&CHUNK[..n]))),
                left - n,
            )
        })
    });
    StreamBody::new(frames).boxed()
}

/// A response with its body collected (small bodies only).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// The upstream's echo of the request.
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected the upstream's echo, got {}: {}",
            self.status,
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.text()))
    }
}

pub async fn send<C>(client: &Client<C, ClientBody>, req: Request<ClientBody>) -> Resp
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("tokengate did not answer within 20s")
        .expect("request to tokengate failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// Checks the shape every rejection must have: status, `Cache-Control: no-store`,
/// a JSON body with `error` and a non-empty `error_description`.
pub fn assert_rejection(r: &Resp, status: u16, error: &str) {
    assert_eq!(
        r.status.as_u16(),
        status,
        "unexpected status; body: {}",
        r.text()
    );
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "rejections must not be cached"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"], error, "body: {v}");
    assert!(
        v["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "error_description missing: {v}"
    );
}

// ---------------------------------------------------------------------------
// Raw sockets, for exact bytes
// ---------------------------------------------------------------------------

/// Writes `bytes` to `addr` and reads until the server closes (send
/// `Connection: close` on the last request). Does not half-close: hyper would
/// drop a connection whose read side hits EOF mid-request.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("server did not close the connection within 20s")
        .unwrap();
    out
}

/// The first line of a raw response (`""` if there is none).
pub fn status_line(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One response parsed from raw bytes.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Splits a byte stream into HTTP/1.1 responses. `no_body` lists, in order,
/// whether each response answers a HEAD (no body whatever the headers say).
/// Anything after a response framed "until close" belongs to its body.
pub fn parse_responses(mut buf: &[u8], heads: &[bool]) -> Vec<RawResp> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let end = find(buf, b"\r\n\r\n")
            .unwrap_or_else(|| panic!("truncated head: {:?}", String::from_utf8_lossy(buf)));
        let head = std::str::from_utf8(&buf[..end]).unwrap();
        buf = &buf[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let is_head = heads.get(out.len()).copied().unwrap_or(false);
        let body = if is_head || status == 204 || status == 304 || (100..200).contains(&status) {
            Vec::new()
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let eol = find(buf, b"\r\n").unwrap();
                let size_str = std::str::from_utf8(&buf[..eol]).unwrap();
                let size =
                    usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap();
                buf = &buf[eol + 2..];
                if size == 0 {
                    // Trailers (none expected), then the final CRLF.
                    let end = find(buf, b"\r\n").unwrap();
                    buf = &buf[end + 2..];
                    break;
                }
                body.extend_from_slice(&buf[..size]);
                buf = &buf[size + 2..];
            }
            body
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().unwrap();
            let b = buf[..len].to_vec();
            buf = &buf[len..];
            b
        } else {
            let b = buf.to_vec();
            buf = &[];
            b
        };
        out.push(RawResp {
            status,
            headers,
            body,
        });
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Returns the bytes after the first response head: for no-body responses the
/// server must have sent nothing there.
pub fn after_head(buf: &[u8]) -> &[u8] {
    let end = find(buf, b"\r\n\r\n").expect("no response head");
    &buf[end + 4..]
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Samples RSS every few milliseconds on its own thread and keeps the peak, so a
/// buffer that is allocated and freed again during a transfer is still seen.
pub struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    pub fn start() -> Self {
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                p.fetch_max(rss_bytes(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the highest RSS seen.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::SeqCst).max(rss_bytes())
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------
//
// A *global* subscriber: tokengate logs from connection tasks on every worker
// thread, which a thread-local (`set_default`) subscriber would miss. It captures
// every level of every crate except the fake AS's own (wiremock prints the
// requests it receives). Tests in one binary share it: filter by fingerprint.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::OnceLock;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

/// Everything written by the subscriber, from all threads.
#[derive(Clone, Default)]
pub struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogBuf {
    /// The JSON lines (one per event), parsed.
    pub fn json_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Installs (once) a global subscriber writing text *and* JSON lines (the two
/// `log.format`s) into one buffer.
pub fn capture() -> LogBuf {
    static BUF: OnceLock<LogBuf> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = LogBuf::default();
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::new("trace,wiremock=off"))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(buf.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(buf.clone()),
            );
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        buf
    })
    .clone()
}

pub fn fingerprint(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes())[..4])
}

/// Reads exactly one response (framed by `Content-Length`) from a connection
/// that stays open, so the same connection can be used again. `None` when the
/// server closed the connection before a whole response arrived.
pub async fn read_response(s: &mut TcpStream) -> Option<RawResp> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + len {
                return parse_responses(&buf[..end + 4 + len], &[]).pop();
            }
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------------------
// Prometheus text exposition format (0.0.4), parsed strictly
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape. [`Scrape::parse`] rejects anything a Prometheus server would:
/// bad metric or label names, bad quoting, unparsable values, samples without
/// a preceding `# TYPE`, a family declared twice, and histograms whose buckets
/// are not cumulative or whose `+Inf` bucket differs from `_count`.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub types: std::collections::HashMap<String, String>,
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| format!("value {s:?}: {e}")),
    }
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Scrape::default();
        let mut helped = std::collections::HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let kw = parts.next().unwrap_or_default();
                let name = parts
                    .next()
                    .ok_or_else(|| err("comment without a name".into()))?;
                if !is_metric_name(name) {
                    return Err(err(format!("bad metric name {name:?}")));
                }
                match kw {
                    "HELP" if !helped.insert(name.to_owned()) => {
                        return Err(err("second HELP for a family".into()));
                    }
                    "TYPE" => {
                        let t = parts.next().unwrap_or_default();
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                            return Err(err(format!("bad type {t:?}")));
                        }
                        if out.types.insert(name.to_owned(), t.to_owned()).is_some() {
                            return Err(err("second TYPE for a family".into()));
                        }
                    }
                    _ => {}
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            if !is_metric_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            let mut labels = std::collections::BTreeMap::new();
            let mut rest = &line[name_end..];
            if let Some(r) = rest.strip_prefix('{') {
                let mut chars = r.char_indices().peekable();
                loop {
                    match chars.peek() {
                        Some((i, '}')) => {
                            rest = &r[i + 1..];
                            break;
                        }
                        Some(_) => {}
                        None => return Err(err("unclosed label set".into())),
                    }
                    let start = chars.peek().map(|(i, _)| *i).unwrap_or_default();
                    let mut end = start;
                    for (i, c) in chars.by_ref() {
                        if c == '=' {
                            end = i;
                            break;
                        }
                    }
                    let key = &r[start..end];
                    if !is_label_name(key) {
                        return Err(err(format!("bad label name {key:?}")));
                    }
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err(err("label value not quoted".into()));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, '\\')) => value.push('\\'),
                                Some((_, '"')) => value.push('"'),
                                _ => return Err(err("bad escape".into())),
                            },
                            Some((_, '"')) => break,
                            Some((_, c)) => value.push(c),
                            None => return Err(err("unterminated label value".into())),
                        }
                    }
                    if labels.insert(key.to_owned(), value).is_some() {
                        return Err(err(format!("label {key} twice")));
                    }
                    if let Some((_, ',')) = chars.peek() {
                        chars.next();
                    }
                }
            }
            let mut fields = rest.trim_start().split(' ');
            let value = parse_value(fields.next().unwrap_or_default()).map_err(err)?;
            if let Some(ts) = fields.next() {
                ts.parse::<i64>()
                    .map_err(|e| err(format!("timestamp: {e}")))?;
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| {
                    name.strip_suffix(suf)
                        .filter(|f| out.types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(name);
            if !out.types.contains_key(family) {
                return Err(err(format!("sample before the TYPE of {family}")));
            }
            out.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        out.check_histograms()?;
        Ok(out)
    }

    fn check_histograms(&self) -> Result<(), String> {
        for (family, t) in &self.types {
            if t != "histogram" {
                continue;
            }
            let bucket = format!("{family}_bucket");
            let count = format!("{family}_count");
            for c in self.samples.iter().filter(|s| s.name == count) {
                let mut buckets: Vec<(f64, f64)> = self
                    .samples
                    .iter()
                    .filter(|s| s.name == bucket)
                    .filter(|s| {
                        let mut l = s.labels.clone();
                        l.remove("le");
                        l == c.labels
                    })
                    .map(|s| (parse_value(&s.labels["le"]).unwrap(), s.value))
                    .collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                    return Err(format!("{family}: buckets not cumulative: {buckets:?}"));
                }
                match buckets.last() {
                    Some((le, n)) if le.is_infinite() && *n == c.value => {}
                    _ => return Err(format!("{family}: +Inf bucket != _count {}", c.value)),
                }
            }
        }
        Ok(())
    }

    /// Samples named `name` whose labels include every pair in `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum over [`Scrape::matching`]; 0 when there is none (a counter that
    /// was never touched).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

// ---------------------------------------------------------------------------
// A gRPC-style upstream: HTTP/2 (h2c), answers with trailers
// ---------------------------------------------------------------------------

/// One gRPC message frame: compressed flag 0, 4-byte big-endian length, bytes.
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + msg.len());
    b.push(0);
    b.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

/// A hyper HTTP/2-only server (prior knowledge) that behaves like a unary gRPC
/// service: it echoes the request's message frames, then sends `grpc-status: 0`
/// and `grpc-message: ok` as trailers. It records each request head.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Echo>>>,
}

impl GrpcUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let st = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move {
                            st.lock().unwrap().push(Echo::of(&req));
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            trailers.insert("grpc-message", "ok".parse().unwrap());
                            let frames = stream::iter(vec![
                                Ok::<_, Infallible>(Frame::data(body)),
                                Ok(Frame::trailers(trailers)),
                            ]);
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(StreamBody::new(frames))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Echo> {
        self.seen.lock().unwrap().clone()
    }
}

/// A response with its body and trailers collected.
#[derive(Debug)]
pub struct RespWithTrailers {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

pub async fn send_keep_trailers<C>(
    client: &Client<C, ClientBody>,
    req: Request<ClientBody>,
) -> RespWithTrailers
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("tokengate did not answer within 20s")
        .expect("request to tokengate failed");
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    RespWithTrailers {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// A unique path for a unix socket in the temp directory.
pub fn temp_socket_path(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "tokengate-{tag}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

// ---------------------------------------------------------------------------
// A test CA (rcgen), made at test time
// ---------------------------------------------------------------------------

pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf certificate and its key, in PEM and DER.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Self { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `names` (DNS names or IP addresses), usable as server and client.
    pub fn issue(&self, names: &[&str]) -> Issued {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tokengate-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `tokengate` binary, started with `--config FILE`, a clean environment and
/// `RUST_LOG=info`; every stdout/stderr line is collected.
pub struct Binary {
    child: Option<std::process::Child>,
    lines: Arc<Mutex<Vec<String>>>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Binary {
    /// Starts it and waits for the JSON "tokengate started" line (the config
    /// must set `[log] format = "json"`), which carries the bound addresses.
    pub async fn start(config: &std::path::Path) -> Self {
        Self::start_with(config, false).await
    }

    /// Like [`Binary::start`], confined to CPU 0 with `taskset` when `one_cpu`.
    pub async fn start_with(config: &std::path::Path, one_cpu: bool) -> Self {
        use std::io::BufRead;
        let mut command = if one_cpu {
            let mut c = std::process::Command::new("taskset");
            c.args(["-c", "0", env!("CARGO_BIN_EXE_tokengate")]);
            c
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        };
        let mut child = command
            .arg("--config")
            .arg(config)
            .env_clear()
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start the tokengate binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut bin = Self {
            child: Some(child),
            lines,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        let started = bin
            .wait_for_line(0, |l| l.contains("tokengate started"))
            .await;
        let v: Value = serde_json::from_str(&started).expect("started line is JSON");
        bin.addr = v["listen"].as_str().unwrap().parse().unwrap();
        bin.admin = v["admin"].as_str().unwrap().parse().unwrap();
        bin
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (up to 20 s) for a line at index >= `from` that satisfies `pred`.
    pub async fn wait_for_line(&self, from: usize, pred: impl Fn(&str) -> bool) -> String {
        for _ in 0..1000 {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .find(|l| pred(l))
            {
                return l.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "expected log line not printed within 20s; output:\n{}",
            self.output()
        );
    }

    /// Sends a signal by name ("TERM", "HUP") with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill(1) is missing");
        assert!(status.success(), "kill -{sig} {pid} failed");
    }

    /// Waits (up to 20 s) for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        for _ in 0..1000 {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "tokengate did not exit within 20s; output:\n{}",
            self.output()
        );
    }

    /// Waits for the exit and requires status 0.
    pub async fn wait_exit_0(&mut self) {
        let status = self.wait_exit().await;
        assert_eq!(
            status.code(),
            Some(0),
            "exit status; output:\n{}",
            self.output()
        );
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // A failed test must not leave the process behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// External programs
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// A real redis-server for the fleet tests
// ---------------------------------------------------------------------------

/// A `redis-server` (Debian package `redis-server`, installed by `.ci/run`) on a
/// free loopback port, without persistence; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    /// `--requirepass`; the URL carries it.
    password: Option<String>,
    /// TLS only (`--port 0 --tls-port`): the directory with the server's
    /// certificate and key, and the CA that issued it (PEM).
    tls: Option<(std::path::PathBuf, String)>,
}

impl RedisServer {
    /// `None` when `redis-server` is not installed (after the skip line; under
    /// `CI` the test fails instead).
    pub async fn start() -> Option<Self> {
        Self::start_with(None, None).await
    }

    /// `password`: `--requirepass`. `ca`: TLS only, with a server certificate
    /// for `localhost` and `127.0.0.1` issued by `ca` (no client certificates).
    pub async fn start_with(password: Option<&str>, ca: Option<&TestCa>) -> Option<Self> {
        if !on_path("redis-server") {
            skip_for_missing(
                &current_test(),
                "redis-server (apt-get install redis-server)",
            );
            return None;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let tls = ca.map(|ca| {
            let dir = temp_dir("redis-tls");
            let leaf = ca.issue(&["localhost", "127.0.0.1"]);
            std::fs::write(dir.join("server.pem"), &leaf.cert_pem).unwrap();
            std::fs::write(dir.join("server.key"), &leaf.key_pem).unwrap();
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            (dir, ca.pem())
        });
        let mut server = Self {
            port,
            child: None,
            password: password.map(str::to_owned),
            tls,
        };
        server.spawn().await;
        Some(server)
    }

    /// `redis://127.0.0.1:N/0`, or `rediss://localhost:N/0` (the name in the
    /// certificate) for TLS; with `:password@` when there is one.
    pub fn url(&self) -> String {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        match &self.tls {
            Some(_) => format!("rediss://{auth}localhost:{}/0", self.port),
            None => format!("redis://{auth}127.0.0.1:{}/0", self.port),
        }
    }

    /// Starts (or restarts, on the same port) the server and waits until it answers.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        // The test's own TLS client (below) uses rustls' process-wide provider.
        tokengate::install_crypto_provider();
        let mut cmd = std::process::Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((dir, _)) => {
                let file = |f: &str| dir.join(f).display().to_string();
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-cert-file", &file("server.pem")])
                    .args(["--tls-key-file", &file("server.key")])
                    .args(["--tls-ca-cert-file", &file("ca.pem")])
                    .args(["--tls-auth-clients", "no"])
            }
        };
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "-::1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot run redis-server: install the Debian package `redis-server`");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = self.client().get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    /// Kills the server (SIGKILL: no goodbye to the clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client for the test's own commands (trusting the test CA for TLS).
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url()).unwrap(),
            Some((_, ca_pem)) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca_pem.clone().into_bytes()),
                },
            )
            .unwrap(),
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some((dir, _)) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A rustls client configuration trusting `roots` (and nothing else).
pub fn tls_client_config(
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth()
}

/// An https client for tokengate; `h2` offers ALPN h2 + http/1.1, else http/1.1 only.
pub fn https_client(
    config: rustls::ClientConfig,
    h2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, ClientBody> {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        b.enable_all_versions().build()
    } else {
        b.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

// ---------------------------------------------------------------------------
// External programs
// ---------------------------------------------------------------------------

/// Call when a test cannot find an external program it needs. Outside CI it
/// writes one loud line straight to the process's stderr (libtest captures
/// `eprintln!` of a passing test, so that would never be seen) and the test
/// returns; under `CI` (set by .ci/run) a missing program fails the test.
pub fn skip_for_missing(test: &str, missing: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "!!!!! SKIPPED {test}: needs {missing}; .ci/run installs it, and under CI a missing program fails the test"
    );
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must have {missing}"
    );
}

/// The running test's name (libtest names each test's thread after it).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned()
}

/// Whether an executable `name` is on the `PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// `python3` if it can import every module in `modules`, else `None`.
pub fn python_with(modules: &[&str]) -> Option<std::path::PathBuf> {
    let python = std::path::PathBuf::from("python3");
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ok = std::process::Command::new(&python)
        .args(["-c", &code])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}
