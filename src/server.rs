//! The listener and the per-request handler: accept loop, HTTP/1.1 + h2c on one
//! port (hyper-util `auto`), graceful drain, and the request path
//! token → cache/introspect → policy → forward.

use crate::cache::{CacheStatus, LoadError, TokenCache};
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::error::ProxyError;
use crate::forward::{self, Forwarder, Hop};
use crate::introspect::Introspector;
use crate::policy;
use crate::token;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// Response body: either ours (a small JSON buffer) or the upstream's stream.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The `realm` in every challenge.
const REALM: &str = "tokengate";

/// Everything a request needs, shared by all connections.
pub struct App {
    settings: Settings,
    cache: TokenCache,
    introspector: Introspector,
    forwarder: Forwarder,
    /// Wall clock for `exp`/`nbf` checks and cache TTLs; injectable for tests.
    clock: Arc<dyn Clock>,
}

impl App {
    pub fn new(settings: Settings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    pub fn with_clock(settings: Settings, clock: Arc<dyn Clock>) -> Self {
        Self {
            cache: TokenCache::new(&settings.cache, clock.clone()),
            introspector: Introspector::new(&settings.introspection),
            forwarder: Forwarder::new(
                settings.upstream.clone(),
                settings.upstream_connect_timeout,
                settings.upstream_timeout,
            ),
            clock,
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for up to `shutdown_timeout`, and returns.
/// `main` and the integration tests both call this.
pub async fn run(app: App, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let app = Arc::new(app);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&app, req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection closed with error");
            }
        });
    }
    drop(listener);
    let deadline = app.settings.shutdown_timeout;
    info!(connections = graceful.count(), ?deadline, "shutting down: draining connections");
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        warn!("shutdown deadline reached; closing remaining connections");
    }
}

/// What the access log line reports besides method, path, status and latency.
#[derive(Default)]
struct AccessInfo {
    cache: Option<CacheStatus>,
    subject: Option<String>,
    fingerprint: Option<String>,
}

/// Outer handler: runs the request path, turns any error into a response,
/// and writes exactly one access log line.
pub async fn handle(app: &App, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: a query string may carry credentials.
    let path = req.uri().path().to_owned();
    let mut info = AccessInfo::default();
    let response = match authorize_and_forward(app, req, peer, &mut info).await {
        Ok(resp) => resp,
        Err(err) => {
            log_error(&err, &info);
            rejection_response(&err, app.settings.retry_after_secs)
        }
    };
    info!(
        target: "tokengate::access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        cache = info.cache.map(CacheStatus::as_str).unwrap_or("-"),
        subject = info.subject.as_deref().unwrap_or("-"),
        token = info.fingerprint.as_deref().unwrap_or("-"),
    );
    response
}

fn log_error(err: &ProxyError, info: &AccessInfo) {
    let token = info.fingerprint.as_deref().unwrap_or("-");
    match err {
        ProxyError::Introspection(e) => {
            warn!(kind = e.kind(), error = %e, token, "introspection failed; answering 503")
        }
        ProxyError::Upstream(e) => warn!(error = %e, "upstream failure"),
        ProxyError::NoCredentials
        | ProxyError::Token(_)
        | ProxyError::Denied(_)
        | ProxyError::ConnectMethod => debug!(reason = %err, token, "request rejected"),
    }
}

/// Inner handler: the request path, with `?` for every way out.
async fn authorize_and_forward(
    app: &App,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    info: &mut AccessInfo,
) -> Result<Response<Body>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectMethod);
    }
    let token = token::extract_bearer(req.headers(), app.settings.max_token_bytes)?
        .ok_or(ProxyError::NoCredentials)?;
    let key = token.hash();
    info.fingerprint = Some(token::fingerprint(&key));

    let (answer, status) = app
        .cache
        .get_or_load(key, || app.introspector.introspect(token.secret()))
        .await;
    info.cache = Some(status);
    let introspection = match answer {
        Ok(i) => i,
        Err(LoadError::Inactive) => return Err(policy::Deny::Inactive.into()),
        Err(LoadError::Failed(e)) => return Err(e.into()),
    };
    let principal = policy::evaluate(&introspection, app.clock.unix_secs())?;
    info.subject = principal.subject.clone();
    // Drop the raw token before the (possibly long) upstream call.
    drop(token);

    let host = forward::inbound_host(&req);
    let version = req.version();
    let hop = Hop {
        peer,
        proto: "http",
        identity: &app.settings.identity,
    };
    forward::rewrite_request_headers(req.headers_mut(), version, host, Some(&principal), &hop);
    let resp = app.forwarder.send(req).await?;
    Ok(resp.map(BodyExt::boxed))
}

/// Builds 4xx/5xx answers: JSON body, `Cache-Control: no-store`, the RFC 6750
/// challenge where there is one, and `Retry-After` on 503.
pub fn rejection_response(err: &ProxyError, retry_after_secs: u32) -> Response<Body> {
    let r = err.rejection();
    let mut resp = Response::new(
        Full::new(Bytes::from(r.json_body()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(www) = r.www_authenticate(REALM) {
        h.insert(header::WWW_AUTHENTICATE, forward::header_safe(&www));
    }
    if r.retry {
        h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    resp
}
