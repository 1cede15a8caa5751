//! `bench-tools`: the small servers and probes that `bench/run.sh` drives.
//! Built as an example (`cargo build --release --example bench-tools`) so it
//! shares tokengate's dependency build and can call the library directly.
//!
//! Subcommands:
//! * `upstream ADDR`: a minimal hyper HTTP/1.1 server answering `200 ok` to
//!   everything (the "protected API").
//! * `as ADDR LATENCY_MS [precise|tokio]`: a mock authorization server.
//!   `POST /introspect` (RFC 7662 form body; HTTP Basic client credentials
//!   required, any values: 401 `invalid_client` without them) and `GET /auth`
//!   (the bare `auth_request` target of the `nginx-auth-request-lite` row:
//!   token in `Authorization: Bearer`, empty 200) both answer "active"
//!   `LATENCY_MS` after the request reached the handler, and count.
//!   `precise` (default): the wait ends on a dedicated timer thread (see
//!   [`PreciseTimer`]); `tokio`: `tokio::time::sleep`, whose 1 ms wheel makes
//!   "5 ms" 5–6 ms (kept to show the difference). `GET /stats` prints
//!   `introspections=N distinct_tokens=N connections=N` (totals since start)
//!   and `held_n=N held_us_mean=X held_us_p99=N held_us_max=N`: how long the AS
//!   actually held the requests it answered *since the previous `/stats`*
//!   (from the handler's start to the answer handed to hyper).
//!   A token that starts with `inactive` gets `{"active":false}` (`/auth`: 401),
//!   so `run.sh` can check that every baseline really reads the answer.
//!   A token `dpop~JKT~…` gets an active answer bound to the DPoP key whose
//!   RFC 7638 thumbprint is JKT (`token_type` `DPoP`, `cnf.jkt`), so the AS
//!   needs no state to bind the tokens `dpop-proofs` makes.
//!   `GET /jwks`: the public half of the bench signing keys
//!   (`benches/keys/es256.pem` as kid `es`, `rs256.pem` as kid `rs`), the
//!   key set of issuer [`JWT_ISSUER`]; not counted as an introspection.
//! * `proxy ADDR UPSTREAM_URL`: the stack's floor: hyper's HTTP/1.1 server and
//!   hyper-util's pooled client, forwarding every request to the upstream with
//!   no auth, no header work, no log (bench/run.sh's `hyper-proxy` row).
//! * `proxy-pool ADDR UPSTREAM_URL`: the same over tokengate's own upstream
//!   pool instead of hyper-util's client: tokengate's building blocks. What
//!   tokengate costs above this is tokengate's own work.
//! * `get URL`: prints the body of a GET (plain http, one connection).
//! * `status URL [TOKEN]`: prints the HTTP status of a GET, with
//!   `Authorization: Bearer TOKEN` when given.
//! * `freeport`: prints a free 127.0.0.1 TCP port.
//! * `burst GATE_URL AS_URL N`: opens N connections, sends one request with the
//!   same brand-new token on each at once, and checks that all got 200 and the
//!   AS saw exactly one introspection (single-flight).
//! * `startup BIN CONFIG URL`: execs `BIN --config CONFIG`, polls URL until it
//!   answers 200, prints the time from exec to that answer, then the idle RSS.
//! * `authz-load GRPC_ADDR FORWARD_AUTH_URL SECONDS CONNS TOKEN`: the decision
//!   alone, at a cache hit, through both of tokengate's authorizer front doors:
//!   first gRPC ext_authz (`Authorization/Check`, CONNS concurrent calls, each
//!   task on its own HTTP/2 connection as Envoy workers would be), then HTTP
//!   forward-auth (the Envoy convention: `GET` with the original path, Host
//!   and `Authorization`, CONNS keep-alive HTTP/1.1 connections), SECONDS each,
//!   after one call that caches TOKEN. Checks first that no token is refused
//!   and TOKEN allowed on both; prints `AUTHZ grpc_rps=N grpc_p99_us=N
//!   http_rps=N http_p99_us=N failures=N`.
//! * `mem N1,N2,... [VARIANT]`: fills a real `TokenCache` through `get_or_load` with N
//!   typical introspections and prints the RSS growth per entry at each N.
//!   `minimal`: the same with `{"active":true,"exp":..}` answers (no strings):
//!   the floor of the cache's own per-entry cost. `moka-unit`: a bare moka
//!   `Cache<[u8; 32], ()>` with a per-entry expiry, as `TokenCache` builds it:
//!   moka's own floor.
//!
//! * `jwt-tokens ES256|RS256 PREFIX N FILE [N FILE]...`: N RFC 9068 JWT
//!   access tokens per FILE, one a line, each new (`jti` PREFIX-file-i),
//!   signed with the bench key of that algorithm, issuer [`JWT_ISSUER`], valid
//!   for an hour: what the `tokengate-jwt-new` row sends, one per request.
//! * `dpop-proofs HTU PREFIX N FILE [N FILE]...`: one new P-256 DPoP key, one
//!   token bound to it (`dpop~JKT~PREFIX`, see the AS), and N lines
//!   `token<TAB>proof` per FILE: each proof single-use (its own `jti`), for
//!   `GET HTU`, with `ath` of the token and `iat` now (so the gate's
//!   `dpop.max_age` must cover the run). The `tokengate-dpop` row's input.
//!   Both sign on every CPU, then concatenate the parts.
//!
//! Every server is single-threaded (current-thread runtime): `run.sh` pins it to
//! a core, and one thread per core is the cheapest way to serve from there.
#![forbid(unsafe_code)]
#![expect(
    clippy::disallowed_methods,
    reason = "a load generator and fake servers measure real time"
)]

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashSet;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The shipped binary's allocator (src/main.rs): the memory benchmark (`mem`)
/// must measure with the same allocator as the binary, or its bytes per entry
/// are glibc's, not tokengate's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // `proxy` with BENCH_WORKERS=N > 1 (bench/run.sh --workers): N tokio
    // workers, as tokengate runs with N CPUs; everything else is one thread.
    let workers = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .filter(|&w| w > 1 && args.first() == Some(&"proxy"));
    let rt = match workers {
        Some(w) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(w)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    let result = rt.block_on(async {
        match args.as_slice() {
            ["upstream", addr] => upstream(addr.parse()?).await,
            ["proxy", addr, upstream] => bare_proxy(addr.parse()?, upstream, false).await,
            ["proxy-pool", addr, upstream] => bare_proxy(addr.parse()?, upstream, true).await,
            ["as", addr, latency_ms] | ["as", addr, latency_ms, _] => {
                let sleep = match args.get(3).copied().unwrap_or("precise") {
                    "precise" => Sleep::Precise(PreciseTimer::start()?),
                    "tokio" => Sleep::Tokio,
                    other => return Err(format!("as: unknown sleep {other}").into()),
                };
                let latency = Duration::from_millis(latency_ms.parse()?);
                mock_as(addr.parse()?, latency, sleep).await
            }
            ["get", url] => {
                let (status, body) = http_get(url, None).await?;
                if status != 200 {
                    return Err(format!("GET {url}: HTTP {status}").into());
                }
                print!("{body}");
                Ok(())
            }
            ["status", url] | ["status", url, _] => {
                let (status, _) = http_get(url, args.get(2).copied()).await?;
                println!("{status}");
                Ok(())
            }
            ["freeport"] => {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                println!("{}", l.local_addr()?.port());
                Ok(())
            }
            ["burst", gate, as_url, n] => burst(gate, as_url, n.parse()?).await,
            ["authz-load", grpc, fa_url, secs, conns, token] => {
                authz_load(
                    grpc,
                    fa_url,
                    Duration::from_secs(secs.parse()?),
                    conns.parse()?,
                    token,
                )
                .await
            }
            ["jwt-tokens", alg, prefix, rest @ ..] => jwt_tokens(alg, prefix, rest),
            ["dpop-proofs", htu, prefix, rest @ ..] => dpop_proofs(htu, prefix, rest),
            ["startup", bin, config, url] => startup(bin, config, url).await,
            ["mem", counts] | ["mem", counts, _] => {
                let counts = counts
                    .split(',')
                    .map(str::parse)
                    .collect::<std::result::Result<Vec<u64>, _>>()?;
                match args.get(2).copied().unwrap_or("typical") {
                    "typical" => mem(&counts, false).await,
                    "minimal" => mem(&counts, true).await,
                    "moka-unit" => mem_moka_unit(&counts).await,
                    other => Err(format!("mem: unknown variant {other}").into()),
                }
            }
            _ => Err(
                "usage: bench-tools upstream ADDR | proxy ADDR UPSTREAM_URL | as ADDR LATENCY_MS [precise|tokio] | get URL | status URL [TOKEN] | freeport \
                 | burst GATE_URL AS_URL N | startup BIN CONFIG URL \
                 | authz-load GRPC_ADDR FORWARD_AUTH_URL SECONDS CONNS TOKEN \
                 | jwt-tokens ES256|RS256 PREFIX N FILE [N FILE]... | dpop-proofs HTU PREFIX N FILE [N FILE]... \
                 | mem N1,N2,... [typical|minimal|moka-unit]"
                    .into(),
            ),
        }
    });
    if let Err(e) = result {
        eprintln!("bench-tools: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

/// Serves `listener` with `handle`, HTTP/1.1 keep-alive, until killed.
/// `on_accept` runs once per new TCP connection.
async fn serve<H, F>(listener: TcpListener, handle: H, on_accept: impl Fn())
where
    H: Fn(Request<Incoming>) -> F + Clone + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        on_accept();
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::task::spawn_local(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `proxy`: the bare hyper + hyper-util proxy (see the module docs).
/// The client a bare proxy forwards with: hyper-util's pooled client (`proxy`)
/// or tokengate's own upstream pool (`proxy-pool`).
enum BareClient {
    Legacy(
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            Incoming,
        >,
        http::uri::Authority,
    ),
    Pool(tokengate::OriginPool<Incoming>),
}

impl BareClient {
    async fn send(
        &self,
        mut req: Request<Incoming>,
    ) -> Option<Response<BoxBody<Bytes, hyper::Error>>> {
        match self {
            // hyper-util takes an absolute URI and sets `Host` from it.
            Self::Legacy(client, authority) => {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                *req.uri_mut() = http::Uri::builder()
                    .scheme("http")
                    .authority(authority.clone())
                    .path_and_query(pq)
                    .build()
                    .ok()?;
                Some(client.request(req).await.ok()?.map(BodyExt::boxed))
            }
            // The pool sends origin-form targets with the upstream's `Host`.
            Self::Pool(pool) => Some(pool.send(req).await.ok()?.map(BodyExt::boxed)),
        }
    }
}

/// `proxy` / `proxy-pool`: hyper's HTTP/1.1 server forwarding every request
/// to the upstream with no auth, no header work, no log; 502 when the
/// upstream fails.
async fn bare_proxy(addr: SocketAddr, upstream: &str, own_pool: bool) -> Result<()> {
    let upstream: http::Uri = upstream.parse()?;
    let (Some(scheme), Some(authority)) = (upstream.scheme(), upstream.authority()) else {
        return Err("proxy: upstream URL has no scheme or authority".into());
    };
    let client = Arc::new(if own_pool {
        let tls = tokengate::ClientTls::new(&[], None)?;
        BareClient::Pool(tokengate::OriginPool::tcp(
            tokengate::connector(Duration::from_secs(5), &tls, false),
            tokengate::origin(scheme, authority),
            false,
        ))
    } else {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.set_nodelay(true);
        BareClient::Legacy(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(http),
            authority.clone(),
        )
    });
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    Ok::<_, Infallible>(client.send(req).await.unwrap_or_else(|| {
                        let mut r =
                            Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
                        *r.status_mut() = StatusCode::BAD_GATEWAY;
                        r
                    }))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn upstream(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("upstream listening on {}", listener.local_addr()?);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(serve(
            listener,
            |_req| async { Response::new(Full::new(Bytes::from_static(b"ok\n"))) },
            || {},
        ))
        .await;
    Ok(())
}

#[derive(Default)]
struct AsState {
    introspections: AtomicU64,
    connections: AtomicU64,
    /// 64-bit hashes of every token seen: "introspections per new token" is
    /// `introspections / distinct_tokens`.
    distinct: Mutex<HashSet<u64>>,
    /// Microseconds each answered request was held, since the last `/stats`.
    held_us: Mutex<Vec<u32>>,
}

/// Samples kept between two `/stats` reads (~40 s at 10 k req/s): a bound, so a
/// run that never reads `/stats` cannot grow without limit.
const HELD_SAMPLES_MAX: usize = 1 << 22;

impl AsState {
    fn record(&self, token: &[u8]) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        token.hash(&mut h);
        self.introspections.fetch_add(1, Ordering::Relaxed);
        self.distinct
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(h.finish());
    }

    fn held(&self, since: Instant) {
        let us = u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX);
        let mut held = self.held_us.lock().unwrap_or_else(|e| e.into_inner());
        if held.len() < HELD_SAMPLES_MAX {
            held.push(us);
        }
    }

    /// `held_n=N held_us_mean=X held_us_p99=N held_us_max=N` over the samples
    /// since the previous call, which it clears.
    fn take_held(&self) -> String {
        let mut held = std::mem::take(&mut *self.held_us.lock().unwrap_or_else(|e| e.into_inner()));
        if held.is_empty() {
            return "held_n=0".into();
        }
        held.sort_unstable();
        let n = held.len();
        let mean = held.iter().map(|&v| u64::from(v)).sum::<u64>() as f64 / n as f64;
        // nearest rank
        let p99 = held[(n * 99).div_ceil(100).max(1) - 1];
        format!(
            "held_n={n} held_us_mean={mean:.0} held_us_p99={p99} held_us_max={}",
            held[n - 1]
        )
    }
}

/// How the AS waits out its latency.
#[derive(Clone)]
enum Sleep {
    /// `tokio::time::sleep`: tokio's timer wheel has 1 ms slots and the
    /// runtime's `epoll_wait` a 1 ms timeout, so a deadline is rounded up to the
    /// next millisecond tick (and then some): "5 ms" is held 5–6 ms.
    Tokio,
    Precise(PreciseTimer),
}

impl Sleep {
    async fn until(&self, deadline: Instant) {
        match self {
            Sleep::Tokio => tokio::time::sleep_until(deadline.into()).await,
            Sleep::Precise(t) => t.until(deadline).await,
        }
    }
}

/// One thread that keeps the pending deadlines in a heap and waits for the
/// earliest with `recv_timeout` (a futex wait on an hrtimer: microsecond
/// precision, no spinning), then completes the oneshots that are due. The
/// request's task wakes through the runtime's own waker, so the answer leaves
/// a few microseconds after the deadline instead of on the next 1 ms tick.
#[derive(Clone)]
struct PreciseTimer {
    tx: std::sync::mpsc::Sender<(Instant, tokio::sync::oneshot::Sender<()>)>,
}

impl PreciseTimer {
    fn start() -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("as-timer".into())
            .spawn(move || Self::run(rx))?;
        Ok(Self { tx })
    }

    async fn until(&self, deadline: Instant) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send((deadline, done)).is_ok() {
            let _ = wait.await;
        }
    }

    fn run(rx: std::sync::mpsc::Receiver<(Instant, tokio::sync::oneshot::Sender<()>)>) {
        use std::collections::BinaryHeap;
        use std::sync::mpsc::RecvTimeoutError;

        /// Ordered by deadline only (earliest on top of the max-heap), then by
        /// arrival, so equal deadlines fire in order.
        struct Due(Instant, u64, tokio::sync::oneshot::Sender<()>);
        impl PartialEq for Due {
            fn eq(&self, o: &Self) -> bool {
                (self.0, self.1) == (o.0, o.1)
            }
        }
        impl Eq for Due {}
        impl PartialOrd for Due {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Due {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                (o.0, o.1).cmp(&(self.0, self.1))
            }
        }

        let mut heap = BinaryHeap::new();
        let mut seq = 0u64;
        loop {
            let now = Instant::now();
            while heap.peek().is_some_and(|d: &Due| d.0 <= now) {
                if let Some(Due(_, _, done)) = heap.pop() {
                    let _ = done.send(());
                }
            }
            let next = match heap.peek() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d.0 - now),
            };
            match next {
                Ok((deadline, done)) => {
                    seq += 1;
                    heap.push(Due(deadline, seq, done));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// A typical active answer: about the size and shape real servers send.
fn active_answer(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        r#"{{"active":true,"client_id":"bench-client","sub":"{sub}","scope":"read write","token_type":"Bearer","iss":"https://auth.example.com","aud":"bench-api","iat":{now},"exp":{}}}"#,
        now + 3600
    )
}

async fn mock_as(addr: SocketAddr, latency: Duration, sleep: Sleep) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("mock AS listening on {}", listener.local_addr()?);
    let state = Arc::new(AsState::default());
    let handle = {
        let state = state.clone();
        move |req: Request<Incoming>| {
            let state = state.clone();
            let sleep = sleep.clone();
            async move { as_handle(&state, latency, &sleep, req).await }
        }
    };
    let on_accept = {
        let state = state.clone();
        move || {
            state.connections.fetch_add(1, Ordering::Relaxed);
        }
    };
    let local = tokio::task::LocalSet::new();
    local.run_until(serve(listener, handle, on_accept)).await;
    Ok(())
}

async fn as_handle(
    state: &AsState,
    latency: Duration,
    sleep: &Sleep,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    // The latency counts from here: reading the body is part of it, as it is
    // for a real server.
    let arrived = Instant::now();
    let json = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/stats") => {
            let distinct = state
                .distinct
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            let body = format!(
                "introspections={} distinct_tokens={} connections={} {}\n",
                state.introspections.load(Ordering::Relaxed),
                distinct,
                state.connections.load(Ordering::Relaxed),
                state.take_held(),
            );
            Response::new(Full::new(Bytes::from(body)))
        }
        (Method::POST, "/introspect") => {
            // RFC 7662 §2.1: the caller authenticates; the values are not checked,
            // only that the client sent Basic credentials (tokengate and the njs
            // baseline both must).
            let basic = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes().starts_with(b"Basic "));
            if !basic {
                return json(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":"invalid_client"}"#.into(),
                );
            }
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return json(StatusCode::BAD_REQUEST, "{}".into()),
            };
            let token = url::form_urlencoded::parse(&body)
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned());
            let Some(token) = token else {
                return json(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"invalid_request"}"#.into(),
                );
            };
            state.record(token.as_bytes());
            let answer = if token.starts_with("inactive") {
                json(StatusCode::OK, r#"{"active":false}"#.into())
            } else if let Some(jkt) = dpop_bound(&token) {
                json(StatusCode::OK, dpop_answer(jkt))
            } else {
                json(StatusCode::OK, active_answer("bench-user"))
            };
            sleep.until(arrived + latency).await;
            state.held(arrived);
            answer
        }
        // The lite nginx row's `auth_request` target: 2xx lets the request through.
        (Method::GET, "/auth") => {
            let token = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            let Some(token) = token else {
                return json(StatusCode::UNAUTHORIZED, "{}".into());
            };
            state.record(token);
            let status = if token.starts_with(b"inactive") {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            sleep.until(arrived + latency).await;
            state.held(arrived);
            // No body: nginx discards an auth_request answer's body unread and
            // then cannot keep the connection alive; an empty one lets it.
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = status;
            r
        }
        (Method::GET, "/jwks") => match bench_jwks() {
            Ok(jwks) => json(StatusCode::OK, jwks.to_owned()),
            Err(e) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{{\"error\":\"{e}\"}}"),
            ),
        },
        _ => json(StatusCode::NOT_FOUND, "{}".into()),
    }
}

// ---------------------------------------------------------------------------
// JWT access tokens and DPoP proofs (pre-generated: wrk cannot sign)
// ---------------------------------------------------------------------------

/// The `iss` of the bench JWTs (`[jwt] issuer` of the gate that checks them).
const JWT_ISSUER: &str = "https://auth.example.com";
/// Bench-only signing keys, shared with `benches/hot_path.rs`: not secrets.
const ES256_PEM: &str = include_str!("../benches/keys/es256.pem");
const RS256_PEM: &str = include_str!("../benches/keys/rs256.pem");

fn pem_der(pem: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

/// The bench key for `alg` and its `kid` in [`bench_jwks`].
fn bench_key(
    alg: &str,
) -> Result<(
    jsonwebtoken::EncodingKey,
    jsonwebtoken::Algorithm,
    &'static str,
)> {
    use jsonwebtoken::{Algorithm, EncodingKey};
    Ok(match alg {
        "ES256" => (
            EncodingKey::from_ec_der(&pem_der(ES256_PEM)?),
            Algorithm::ES256,
            "es",
        ),
        "RS256" => (
            EncodingKey::from_rsa_der(&pem_der(RS256_PEM)?),
            Algorithm::RS256,
            "rs",
        ),
        other => return Err(format!("no bench key for {other}").into()),
    })
}

/// The JWKS the mock AS serves, built once from the bench keys' public halves.
fn bench_jwks() -> std::result::Result<&'static str, String> {
    static JWKS: std::sync::OnceLock<std::result::Result<String, String>> =
        std::sync::OnceLock::new();
    JWKS.get_or_init(|| {
        let mut keys = Vec::new();
        for alg in ["ES256", "RS256"] {
            let (key, a, kid) = bench_key(alg).map_err(|e| e.to_string())?;
            let mut jwk =
                jsonwebtoken::jwk::Jwk::from_encoding_key(&key, a).map_err(|e| e.to_string())?;
            jwk.common.key_id = Some(kid.into());
            keys.push(jwk);
        }
        Ok(serde_json::json!({ "keys": keys }).to_string())
    })
    .as_deref()
    .map_err(Clone::clone)
}

/// `dpop~JKT~…` → JKT: the token says which key it is bound to.
fn dpop_bound(token: &str) -> Option<&str> {
    token.strip_prefix("dpop~")?.split('~').next()
}

/// [`active_answer`], bound to the DPoP key with thumbprint `jkt` (RFC 9449 §6.2).
fn dpop_answer(jkt: &str) -> String {
    let now = unix_now();
    format!(
        r#"{{"active":true,"client_id":"bench-client","sub":"bench-user","scope":"read write","token_type":"DPoP","cnf":{{"jkt":"{jkt}"}},"iss":"{JWT_ISSUER}","aud":"bench-api","iat":{now},"exp":{}}}"#,
        now + 3600
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `N FILE [N FILE]...` → [(N, FILE)].
fn count_files<'a>(rest: &[&'a str]) -> Result<Vec<(usize, &'a str)>> {
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err("want N FILE pairs".into());
    }
    rest.chunks(2).map(|p| Ok((p[0].parse()?, p[1]))).collect()
}

/// Writes `n` lines `line(i)` to `file`, signing on every CPU: each worker
/// writes its own part, then the parts are concatenated (the order of the
/// lines does not matter to wrk.lua).
fn write_lines<F>(file: &str, n: usize, line: F) -> Result<()>
where
    F: Fn(usize) -> Result<String> + Sync,
{
    use std::io::Write as _;
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let parts: Vec<String> = (0..workers).map(|w| format!("{file}.part{w}")).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(w, part)| {
                let line = &line;
                s.spawn(move || -> Result<()> {
                    let mut out = std::io::BufWriter::new(std::fs::File::create(part)?);
                    for i in (w..n).step_by(workers) {
                        writeln!(out, "{}", line(i)?)?;
                    }
                    out.flush()?;
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a signing thread panicked")?)
    })?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    for part in &parts {
        std::io::copy(&mut std::fs::File::open(part)?, &mut out)?;
        std::fs::remove_file(part)?;
    }
    out.flush()?;
    Ok(())
}

fn jwt_tokens(alg: &str, prefix: &str, rest: &[&str]) -> Result<()> {
    let (key, alg, kid) = bench_key(alg)?;
    let mut header = jsonwebtoken::Header::new(alg);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    let iat = unix_now();
    for (f, (n, file)) in count_files(rest)?.into_iter().enumerate() {
        write_lines(file, n, |i| {
            let claims = serde_json::json!({
                "iss": JWT_ISSUER, "sub": "bench-user", "client_id": "bench-client",
                "aud": "bench-api", "scope": "read write", "iat": iat, "exp": iat + 3600,
                "jti": format!("{prefix}-{f}-{i}"),
            });
            Ok(jsonwebtoken::encode(&header, &claims, &key)?)
        })?;
    }
    Ok(())
}

fn dpop_proofs(htu: &str, prefix: &str, rest: &[&str]) -> Result<()> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    use jsonwebtoken::{Algorithm, EncodingKey};
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let key = EncodingKey::from_ec_der(&kp.serialize_der());
    let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
    let token = format!("dpop~{}~{prefix}", jwk.thumbprint(ThumbprintHash::SHA256)?);
    // The proof's jwk: the public members only, as a client sends it.
    let mut public = serde_json::to_value(&jwk)?;
    if let Some(o) = public.as_object_mut() {
        o.retain(|k, _| ["kty", "crv", "x", "y"].contains(&k.as_str()));
    }
    let header = URL_SAFE_NO_PAD
        .encode(serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public}).to_string());
    let ath = tokengate::policy::binding::dpop::token_hash(&token);
    let iat = unix_now();
    for (f, (n, file)) in count_files(rest)?.into_iter().enumerate() {
        write_lines(file, n, |i| {
            let claims = serde_json::json!({
                "jti": format!("{prefix}-{f}-{i}"), "htm": "GET", "htu": htu, "iat": iat, "ath": ath,
            });
            let msg = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
            let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::ES256)?;
            Ok(format!("{token}\t{msg}.{sig}"))
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------

/// `http://host:port/path` → (authority, path).
fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// URL: {url}"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// One GET on its own connection (`Connection: close`), raw bytes: status and body.
async fn http_get(url: &str, bearer: Option<&str>) -> Result<(u16, String)> {
    let (authority, path) = split_url(url)?;
    let mut stream = TcpStream::connect(authority).await?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no HTTP status line in the answer")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn stat(stats: &str, name: &str) -> Result<u64> {
    stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .ok_or_else(|| format!("no {name} in stats: {stats}"))?
        .parse()
        .map_err(Into::into)
}

async fn burst(gate: &str, as_url: &str, n: usize) -> Result<()> {
    let stats_url = format!("{as_url}/stats");
    let before = stat(&http_get(&stats_url, None).await?.1, "introspections")?;
    let token = format!(
        "burst-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let (authority, path) = split_url(gate)?;
    // Connect everything first, then release all requests at once, so they are
    // really concurrent at the gate.
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(TcpStream::connect(authority).await?);
    }
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let go = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let go = go.clone();
            let req = req.clone();
            tokio::spawn(async move {
                go.wait().await;
                s.write_all(req.as_bytes()).await?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await?;
                Ok::<bool, std::io::Error>(buf.starts_with(b"HTTP/1.1 200"))
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if matches!(t.await, Ok(Ok(true))) {
            ok += 1;
        }
    }
    let after = stat(&http_get(&stats_url, None).await?.1, "introspections")?;
    let calls = after - before;
    println!("burst requests={n} ok={ok} introspections={calls}");
    if ok != n || calls != 1 {
        return Err(format!(
            "single-flight broken: {ok}/{n} answered 200, {calls} introspections (want 1)"
        )
        .into());
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?)
}

async fn startup(bin: &str, config: &str, url: &str) -> Result<()> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("child exited at once")?;
    let ready = loop {
        if let Ok((200, _)) = http_get(url, None).await {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("tokengate did not answer 200 within 10 s".into());
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!("tokengate exited: {status}").into());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    };
    // Let the start-up allocations settle, then read the idle RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = rss_kib(pid)?;
    println!(
        "startup ready_ms={:.1} idle_rss_kib={rss}",
        ready.as_secs_f64() * 1000.0
    );
    child.kill().await?;
    Ok(())
}

async fn mem(counts: &[u64], minimal: bool) -> Result<()> {
    use tokengate::cache::TokenCache;
    use tokengate::clock::SystemClock;
    use tokengate::config::CacheSettings;
    use tokengate::introspection::Introspection;

    let max = counts.iter().copied().max().unwrap_or(0);
    let cfg = CacheSettings {
        max_ttl: Duration::from_secs(3600),
        max_entries: max + 1,
        ..CacheSettings::default()
    };
    let cache = TokenCache::new(&cfg, Arc::new(SystemClock));
    let template: Introspection = if minimal {
        let mut t = Introspection::inactive();
        t.active = true;
        t.exp = serde_json::from_str::<Introspection>(&active_answer("user"))?.exp;
        t
    } else {
        serde_json::from_str(&active_answer("user"))?
    };
    eprintln!(
        "size_of::<Introspection>() = {} bytes (parsed), size_of::<Answer>() = {} bytes (cached)",
        std::mem::size_of::<Introspection>(),
        std::mem::size_of::<tokengate::introspection::answer::Answer>()
    );
    let pid = std::process::id();
    let base = rss_kib(pid)?;
    let mut filled = 0u64;
    for &n in counts {
        while filled < n {
            // A token is a random-looking 32-byte opaque handle; only its
            // SHA-256 is the key, as in the proxy.
            let token = format!("mem-{filled:016x}-opaque-access-token-value");
            let key = tokengate::token::parse_bearer(&format!("Bearer {token}"), 4096)?
                .ok_or("not a bearer token")?
                .hash();
            // Each entry owns its strings, as a parsed answer does.
            let mut answer = template.clone();
            if !minimal {
                answer.sub = Some(format!("user-{filled}"));
            }
            let (answer, _) = cache.get_or_load(key, || async move { Ok(answer) }).await;
            answer.map_err(|e| format!("load failed: {e}"))?;
            filled += 1;
        }
        cache.run_pending_tasks().await;
        print_mem("mem", n, base, rss_kib(pid)?);
    }
    Ok(())
}

/// One `mem` result line: RSS growth over `base` (KiB) per entry, for `n` entries.
fn print_mem(label: &str, n: u64, base: u64, rss: u64) {
    println!(
        "{label} entries={n} rss_kib={rss} growth_kib={} bytes_per_entry={:.0}",
        rss - base,
        (rss - base) as f64 * 1024.0 / n as f64
    );
}

/// moka's own per-entry floor: a bare `Cache<[u8; 32], ()>` built like
/// `TokenCache`'s (max capacity, a per-entry expiry, so the timer wheel is used).
async fn mem_moka_unit(counts: &[u64]) -> Result<()> {
    struct Hour;
    impl moka::Expiry<[u8; 32], ()> for Hour {
        fn expire_after_create(
            &self,
            _: &[u8; 32],
            _: &(),
            _: std::time::Instant,
        ) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
    }
    let max = counts.iter().copied().max().unwrap_or(0);
    let cache: moka::future::Cache<[u8; 32], ()> = moka::future::Cache::builder()
        .max_capacity(max + 1)
        .expire_after(Hour)
        .build();
    let pid = std::process::id();
    let base = rss_kib(pid)?;
    let mut filled = 0u64;
    for &n in counts {
        while filled < n {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&filled.to_le_bytes());
            cache.insert(key, ()).await;
            filled += 1;
        }
        cache.run_pending_tasks().await;
        print_mem("mem-moka-unit", n, base, rss_kib(pid)?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// gRPC ext_authz against HTTP forward-auth
// ---------------------------------------------------------------------------

/// A `CheckRequest` as Envoy sends it for `GET /api/items` on `api.example`.
fn authz_check(token: Option<&str>) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    let mut headers = std::collections::HashMap::new();
    if let Some(t) = token {
        headers.insert("authorization".to_owned(), format!("Bearer {t}"));
    }
    headers.insert(":authority".to_owned(), "api.example".to_owned());
    envoy_types::ext_authz::v3::pb::CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/api/items".into(),
                    host: "api.example".into(),
                    scheme: "http".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

type AuthzClient =
    envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<
        tonic::transport::Channel,
    >;

async fn authz_client(addr: &str) -> Result<AuthzClient> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(AuthzClient::new(channel))
}

/// The gRPC status code of one Check's answer.
async fn grpc_check(client: &mut AuthzClient, token: Option<&str>) -> Result<i32> {
    let resp = client.check(authz_check(token)).await?.into_inner();
    Ok(resp.status.map_or(-1, |s| s.code))
}

/// One keep-alive HTTP/1.1 connection to the forward-auth port.
type FaSender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>;

async fn fa_connect(authority: &str) -> Result<FaSender> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The HTTP status of one forward-auth sub-request (Envoy convention).
async fn fa_check(sender: &mut FaSender, path: &str, token: Option<&str>) -> Result<u16> {
    sender.ready().await?;
    let mut req = Request::get(path).header("host", "api.example");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(http_body_util::Empty::new())?)
        .await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// Runs `conns` workers for `secs`; each returns (calls, failures, latencies in µs).
async fn authz_phase<F, Fut>(conns: usize, secs: Duration, worker: F) -> Result<(f64, u64, u64)>
where
    F: Fn(Instant) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, u64, Vec<u32>)>> + 'static,
{
    let start = Instant::now();
    let deadline = start + secs;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns {
        set.spawn_local(worker(deadline));
    }
    let (mut calls, mut failures, mut lat) = (0, 0, Vec::new());
    while let Some(r) = set.join_next().await {
        let (c, f, l) = r??;
        calls += c;
        failures += f;
        lat.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let p99 = lat
        .get((lat.len() * 99 / 100).min(lat.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    Ok((calls as f64 / elapsed, failures, u64::from(p99)))
}

async fn authz_load(
    grpc: &str,
    fa_url: &str,
    secs: Duration,
    conns: usize,
    token: &str,
) -> Result<()> {
    let (authority, path) = split_url(fa_url)?;
    let (authority, path) = (authority.to_owned(), path.to_owned());
    // The guard: a front door that allowed everything would be a cheap one.
    let mut client = authz_client(grpc).await?;
    let mut fa = fa_connect(&authority).await?;
    let unauthenticated = grpc_check(&mut client, None).await?;
    let allowed = grpc_check(&mut client, Some(token)).await?;
    let fa_none = fa_check(&mut fa, &path, None).await?;
    let fa_ok = fa_check(&mut fa, &path, Some(token)).await?;
    if (unauthenticated, allowed, fa_none, fa_ok) != (16, 0, 401, 200) {
        return Err(format!(
            "guard: gRPC no token {unauthenticated} (want 16), token {allowed} (want 0); HTTP no token {fa_none} (want 401), token {fa_ok} (want 200)"
        )
        .into());
    }
    let local = tokio::task::LocalSet::new();
    let (grpc_rps, grpc_fail, grpc_p99) = local
        .run_until(authz_phase(conns, secs, |deadline| {
            let grpc = grpc.to_owned();
            let token = token.to_owned();
            async move {
                let mut client = authz_client(&grpc).await?;
                let (mut calls, mut failures, mut lat) = (0u64, 0u64, Vec::new());
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let code = grpc_check(&mut client, Some(&token)).await?;
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    calls += 1;
                    failures += u64::from(code != 0);
                }
                Ok((calls, failures, lat))
            }
        }))
        .await?;
    let (http_rps, http_fail, http_p99) = local
        .run_until(authz_phase(conns, secs, |deadline| {
            let authority = authority.clone();
            let path = path.clone();
            let token = token.to_owned();
            async move {
                let mut sender = fa_connect(&authority).await?;
                let (mut calls, mut failures, mut lat) = (0u64, 0u64, Vec::new());
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let status = fa_check(&mut sender, &path, Some(&token)).await?;
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    calls += 1;
                    failures += u64::from(status != 200);
                }
                Ok((calls, failures, lat))
            }
        }))
        .await?;
    println!(
        "AUTHZ grpc_rps={grpc_rps:.0} grpc_p99_us={grpc_p99} http_rps={http_rps:.0} http_p99_us={http_p99} failures={}",
        grpc_fail + http_fail
    );
    if grpc_fail + http_fail > 0 {
        return Err("some calls were not allowed".into());
    }
    Ok(())
}
