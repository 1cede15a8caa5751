//! The listener and the per-request handler: accept loop, HTTP/1.1 + h2c on one
//! port (hyper-util `auto`), graceful drain, and the request path
//! token → cache/introspect → policy → forward.

use crate::admin::Readiness;
use crate::breaker::{Breaker, BreakerState};
use crate::cache::{CacheStatus, LoadError, TokenCache};
use crate::clock::{Clock, SystemClock};
use crate::config::{Mode, ProbeMode, Settings};
use crate::error::ProxyError;
use crate::forward::{self, ForwardError, Forwarder, Hop, Peer};
use crate::introspect::{IntrospectError, Introspector};
use crate::limits::{self, ConnectionLimit, ConnectionSlot, LimitedBody};
use crate::metrics::Metrics;
use crate::policy;
use crate::policy::Access;
use crate::reload::ReloadHandle;
use crate::token;
use arc_swap::ArcSwap;
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
    /// Swapped whole by a config reload; a request uses one snapshot throughout.
    settings: Arc<ArcSwap<Settings>>,
    cache: TokenCache,
    introspector: Introspector,
    forwarder: Forwarder,
    /// Fails AS calls fast after repeated failures; shared with the
    /// readiness check.
    breaker: Arc<Breaker>,
    /// Open client connections (`limits.max_connections`).
    connections: ConnectionLimit,
    /// Wall clock for `exp`/`nbf` checks and cache TTLs; injectable for tests.
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    /// Taken by [`run`], which serves the admin endpoints on it.
    admin_listener: Option<TcpListener>,
    reload_lock: Arc<std::sync::Mutex<()>>,
    /// Upgraded (WebSocket) connections: shutdown must close them itself.
    tunnels: crate::upgrade::Tunnels,
    /// Set once a start-up probe of the introspection endpoint has succeeded
    /// (`introspection.probe`; see [`probe_introspection`]).
    probe_ok: Arc<std::sync::atomic::AtomicBool>,
}

impl App {
    pub fn new(settings: Settings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    pub fn with_clock(settings: Settings, clock: Arc<dyn Clock>) -> Self {
        let metrics = Arc::new(Metrics::new());
        let breaker = Arc::new(Breaker::new(
            settings.breaker_failures,
            settings.breaker_open_for,
        ));
        // The readiness contract: not ready while the breaker is open.
        // An open breaker whose period is over reports half-open, so the pod
        // becomes ready again in time for the probe that can close it.
        let readiness = Arc::new(Readiness::default());
        let b = breaker.clone();
        readiness.add_check("introspection circuit breaker open", move || {
            b.state() != BreakerState::Open
        });
        let probe_ok = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if settings.introspection.probe == ProbeMode::Require {
            let ok = probe_ok.clone();
            readiness.add_check(
                "introspection endpoint not confirmed yet (introspection.probe = \"require\"; see the log)",
                move || ok.load(std::sync::atomic::Ordering::SeqCst),
            );
        }
        Self {
            cache: crate::fleet::attach(
                TokenCache::new(&settings.cache, clock.clone())
                    .with_stale_if_error(settings.stale_if_error)
                    .with_counters(metrics.cache_counters()),
                &settings,
                clock.clone(),
            ),
            breaker,
            connections: ConnectionLimit::new(settings.limits.max_connections),
            introspector: Introspector::new(&settings.introspection),
            forwarder: Forwarder::new(
                settings.upstream.clone(),
                settings.upstream_connect_timeout,
                settings.upstream_timeout,
                &settings.upstream_tls,
            ),
            clock,
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            metrics,
            readiness,
            admin_listener: None,
            reload_lock: Default::default(),
            tunnels: crate::upgrade::Tunnels::default(),
            probe_ok,
        }
    }

    /// Serves `/healthz`, `/readyz`, `/metrics` and `POST /purge` on `listener`
    /// while [`run`] runs (see [`crate::admin`]).
    pub fn with_admin_listener(mut self, listener: TcpListener) -> Self {
        self.admin_listener = Some(listener);
        self
    }

    /// The settings in effect now (a reload may replace them at any time).
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    /// The token cache (L1, and the fleet layer behind it); purge goes through it.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    pub fn introspector(&self) -> &Introspector {
        &self.introspector
    }

    /// A handle that swaps this app's configuration (SIGHUP in `main`).
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            settings: self.settings.clone(),
            ttls: self.cache.ttls(),
            metrics: self.metrics.clone(),
            log: None,
            lock: self.reload_lock.clone(),
        }
    }

    /// A handle that reloads the TLS certificate (for main's SIGHUP handler);
    /// `None` without `[tls]`. Take it before handing the app to [`run`].
    pub fn tls_reloader(&self) -> Option<crate::tls::TlsReloader> {
        self.settings
            .load()
            .tls
            .as_ref()
            .map(|t| t.reloader.clone())
    }

    /// The AS circuit breaker (its `state()` is for metrics).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The open-connection limit (its `in_use()` is for metrics).
    pub fn connections(&self) -> &ConnectionLimit {
        &self.connections
    }
}

/// Serves `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for up to `shutdown_timeout`, and returns.
/// `main` and the integration tests both call this.
pub async fn run(mut app: App, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let admin_listener = app.admin_listener.take();
    let app = Arc::new(app);
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    let admin =
        admin_listener.map(|l| tokio::spawn(crate::admin::serve(app.clone(), l, admin_stopped)));
    let refresher = app
        .settings()
        .discovery
        .clone()
        .map(|d| tokio::spawn(refresh_discovery(app.clone(), d)));
    let probe = (app.settings().introspection.probe != ProbeMode::Off)
        .then(|| tokio::spawn(probe_introspection(app.clone())));
    // The fleet's purge subscriber (its own Redis connection), if configured.
    let subscriber = app
        .cache
        .fleet()
        .map(|f| tokio::spawn(f.clone().run_subscriber()));
    let tls_watch = app
        .tls_reloader()
        .map(|r| tokio::spawn(r.watch(crate::tls::WATCH_INTERVAL)));
    crate::forward_auth::warn_if_auto(&app.settings());
    // TLS is a listener setting: fixed for the life of `run` (reload says so).
    let tls = app.settings().tls.clone();
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    // Connection-level limits are read once: hyper's builder and the
    // connection semaphore cannot change under running connections
    // (restart-only, see `crate::reload`).
    let conn_limits = app.settings().limits.clone();
    limits::configure(&mut builder, &conn_limits);
    let builder = Arc::new(builder);
    // Dropped when the loop ends: connections still waiting for their first
    // bytes give up at once instead of holding up the drain.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    let mut full_warned: Option<tokio::time::Instant> = None;
    // Owned here so that connections still open at the drain deadline are
    // aborted when `run` returns, not left running in the background.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        if app.connections.is_full()
            && full_warned.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10))
        {
            // At most one line per 10 s: under sustained overload this would
            // otherwise log once per closing connection.
            warn!(
                max_connections = ?conn_limits.max_connections,
                "connection limit reached; new connections wait in the listen backlog"
            );
            full_warned = Some(tokio::time::Instant::now());
        }
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = app.connections.acquire() => permit,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
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
        let idle = conn_limits.idle_timeout;
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        let app = app.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        connections.spawn(async move {
            // Shared with the request handler: an upgrade moves the permit
            // into its tunnel, which outlives this task.
            let slot = ConnectionSlot::new(permit);
            if !limits::first_bytes(&stream, idle, &mut stop).await {
                debug!(%peer, "closing a connection that sent nothing");
                return;
            }
            match acceptor {
                None => {
                    let io = TokioIo::new(stream);
                    serve(&builder, watcher, app, io, peer, "http", slot.clone()).await;
                }
                // The handshake runs in the connection's task, never in the accept loop.
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        crate::tls::HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let io = TokioIo::new(stream);
                            serve(&builder, watcher, app, io, peer, "https", slot.clone()).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(stop_tx);
    // Load balancers that probe /readyz stop sending before we stop answering.
    app.readiness.begin_shutdown();
    drop(listener);
    for task in [refresher, probe, subscriber, tls_watch]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    let deadline = app.settings().shutdown_timeout;
    info!(
        connections = graceful.count(),
        tunnels = app.tunnels.count(),
        ?deadline,
        "shutting down: draining connections"
    );
    // Upgraded connections have left hyper's connection (and so `graceful`):
    // wait for them too, and close them at the deadline.
    let drained = async {
        graceful.shutdown().await;
        app.tunnels.wait().await;
    };
    if tokio::time::timeout(deadline, drained).await.is_err() {
        warn!("shutdown deadline reached; closing remaining connections");
    }
    connections.abort_all();
    app.tunnels.close_all();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), app.tunnels.wait()).await;
    let _ = stop_admin.send(true);
    if let Some(task) = admin {
        let _ = task.await;
    }
}

/// One connection: HTTP/1.1 (with Upgrade) or HTTP/2, over TCP or TLS,
/// watched by the graceful drain.
fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    app: Arc<App>,
    io: I,
    peer: SocketAddr,
    proto: &'static str,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send + 'static
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let client = Arc::new(Peer::new(peer, proto));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let client = client.clone();
        let slot = slot.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&app, req, &client, &slot).await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    let conn = watcher.watch(conn);
    async move {
        if let Err(e) = conn.await {
            debug!(%peer, error = %e, "connection closed with error");
        }
    }
}

/// First wait between two failed start-up probes; doubled each time up to
/// [`PROBE_BACKOFF_MAX`].
const PROBE_BACKOFF_START: std::time::Duration = std::time::Duration::from_secs(1);
const PROBE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// `introspection.probe` (warn / require): asks the AS about a throwaway token
/// until one well-formed answer proves the URL and the credentials, so that a
/// wrong secret shows up at start-up (one WARN line naming the keys) instead
/// of at the first request. Retries with backoff; stops after the first
/// success (from then on the breaker watches the AS). Goes around the breaker
/// and the metrics: it is no client's request, and a failure here must not
/// open the circuit for the clients.
async fn probe_introspection(app: Arc<App>) {
    let mut backoff = PROBE_BACKOFF_START;
    let mut failures = 0u32;
    loop {
        match app.introspector.probe().await {
            Ok(()) => {
                app.probe_ok
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                info!(
                    endpoint = %app.introspector.url().unwrap_or_default(),
                    failed_before = failures,
                    "introspection probe succeeded: endpoint and client credentials work"
                );
                return;
            }
            Err(e) => {
                failures += 1;
                warn!(
                    kind = e.kind(),
                    retry_in = ?backoff,
                    "introspection probe failed: {}",
                    crate::introspect::probe_advice(&e, app.introspector.url().as_deref())
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(PROBE_BACKOFF_MAX);
    }
}

/// Re-runs discovery every `refresh_interval`, and early when the introspector
/// reports repeated 404s. A failure keeps the last good endpoint.
async fn refresh_discovery(app: Arc<App>, d: crate::config::DiscoverySettings) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(d.refresh_interval) => {},
            () = app.introspector.rediscover.notified() => {
                info!("introspection endpoint answers 404 repeatedly; re-running discovery");
            },
        }
        let settings = app.settings();
        let introspection = &settings.introspection;
        match crate::discovery::discover(&d.issuer, introspection.timeout, &introspection.tls).await
        {
            Ok(url) => {
                if app.introspector.url().as_deref() != Some(url.as_str()) {
                    info!(endpoint = %url.as_str(), "introspection endpoint changed");
                    app.introspector.set_url(url);
                }
            }
            Err(e) => warn!(error = %e, "discovery refresh failed; keeping the last good endpoint"),
        }
    }
}

/// What the access log line reports besides method, path, status and latency.
#[derive(Default)]
struct AccessInfo {
    route: Option<String>,
    cache: Option<CacheStatus>,
    subject: Option<String>,
    fingerprint: Option<String>,
    /// Forward-auth mode: the original request's method and path (no query),
    /// logged instead of the sub-request's (which is always e.g. `GET /_tokengate`).
    original: Option<(Method, String)>,
}

/// Outer handler: runs the request path, turns any error into a response,
/// and writes exactly one access log line. `slot` is the connection's
/// `limits.max_connections` permit, for an upgrade to take over.
pub async fn handle(
    app: &App,
    req: Request<Incoming>,
    peer: &Peer,
    slot: &ConnectionSlot,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    // The path only: a query string may carry credentials.
    let path = req.uri().path().to_owned();
    let mut info = AccessInfo::default();
    // gRPC clients need their failures as gRPC statuses; decided before the
    // request is consumed.
    let grpc = is_grpc(req.headers());
    // The one settings snapshot this request uses, whatever a reload does meanwhile.
    let settings = app.settings.load_full();
    let result = match settings.mode {
        Mode::Proxy => authorize_and_forward(app, &settings, req, peer, slot, &mut info).await,
        Mode::ForwardAuth => forward_auth_check(app, &settings, req, &mut info).await,
    };
    let response = match result {
        Ok(resp) => resp,
        Err(err) => {
            log_error(&err, &info);
            if let ProxyError::Upstream(e) = &err {
                app.metrics.upstream_error(e);
            }
            if grpc {
                grpc_rejection_response(&err)
            } else {
                rejection_response(&err, settings.retry_after_secs)
            }
        }
    };
    let elapsed = started.elapsed();
    let (method, path) = info.original.take().unwrap_or((method, path));
    info!(
        target: "tokengate::access",
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        route = info.route.as_deref().unwrap_or("-"),
        // Whole microseconds, so the field prints as e.g. 4.234, not 4.233988999999999.
        latency_ms = elapsed.as_micros() as f64 / 1000.0,
        cache = info.cache.map(CacheStatus::as_str).unwrap_or("-"),
        subject = info.subject.as_deref().unwrap_or("-"),
        token = info.fingerprint.as_deref().unwrap_or("-"),
    );
    app.metrics
        .observe_request(info.route, response.status(), elapsed);
    response
}

fn log_error(err: &ProxyError, info: &AccessInfo) {
    let token = info.fingerprint.as_deref().unwrap_or("-");
    match err {
        // The breaker logs when it opens; one WARN per fast-failed request
        // would flood the log exactly when the AS is down.
        ProxyError::Introspection(e @ IntrospectError::CircuitOpen) => {
            debug!(kind = e.kind(), token, "circuit open; answering 503")
        }
        ProxyError::Introspection(e) => {
            warn!(kind = e.kind(), error = %e, token, "introspection failed; answering 503")
        }
        // A client's broken body is the client's fault: not an upstream alarm.
        ProxyError::Upstream(ForwardError::BadBody(_)) => {
            debug!(reason = %err, token, "request rejected")
        }
        ProxyError::Upstream(e) => warn!(error = %e, "upstream failure"),
        ProxyError::NoCredentials
        | ProxyError::Token(_)
        | ProxyError::Denied(_)
        | ProxyError::ConnectMethod
        | ProxyError::ForwardAuth(_)
        | ProxyError::BodyTooLarge
        | ProxyError::Route(_)
        | ProxyError::MethodOverride(_) => debug!(reason = %err, token, "request rejected"),
    }
}

/// Inner handler: the request path, with `?` for every way out.
async fn authorize_and_forward(
    app: &App,
    settings: &Settings,
    mut req: Request<Incoming>,
    peer: &Peer,
    slot: &ConnectionSlot,
    info: &mut AccessInfo,
) -> Result<Response<Body>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectMethod);
    }
    // Before anything costly: no introspection for a request we will refuse.
    if limits::declared_too_large(req.headers(), settings.limits.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge);
    }
    // Normalised and checked (one Host, agreeing with the target's authority):
    // the route is chosen by this value, and the upstream is told this value
    // in X-Forwarded-Host.
    let host = forward::routing_host(&req)?;
    let method = forward::routing_method(
        req.method(),
        req.headers(),
        settings.forwarding.method_override,
    )?;
    let route = settings.routes.select(
        &method,
        host.as_ref().and_then(|h| h.to_str().ok()),
        req.uri().path(),
    )?;
    info.route = Some(route.name.clone());

    let (principal, exp) =
        authorize(app, settings, route, req.headers(), req.uri().query(), info).await?;
    // Only an allowed protocol is offered to the upstream (never h2c: its
    // tunnel would carry requests no token check sees); any other Upgrade is
    // stripped below with the hop-by-hop fields and the request goes on as a
    // plain one. An HTTP/2 upstream cannot take an HTTP/1.1 Upgrade at all.
    let upgrade = if app.forwarder.is_http2() {
        None
    } else {
        crate::upgrade::requested(&req, &settings.upgrade_protocols)
    };
    if upgrade.is_none() && req.headers().contains_key(header::UPGRADE) {
        // Not the value: it is the client's to fill with anything.
        debug!("upgrade not allowed: forwarding a plain request");
    }
    // Taken before the request is handed on; resolves once we answer 101.
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let te_trailers = forward::te_trailers(req.headers());

    // Credentials in the query or a cookie are for us, not the upstream.
    strip_token_sources(&mut req, &settings.token_sources)?;
    let version = req.version();
    let hop = Hop {
        peer,
        identity: &settings.identity,
        trusted: settings.forwarding.trusts(peer.addr),
        method_override: settings.forwarding.method_override,
    };
    forward::rewrite_request_headers(req.headers_mut(), version, host, principal.as_ref(), &hop);
    if let Some(u) = upgrade {
        crate::upgrade::restore_headers(req.headers_mut(), u);
    }
    // gRPC over h2 needs `te: trailers`, the one TE value HTTP/2 allows (RFC 9113 §8.2.2).
    if te_trailers && app.forwarder.is_http2() {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let (req, tripped) = {
        let (parts, body) = req.into_parts();
        let (body, tripped) = LimitedBody::new(body, settings.limits.max_body_bytes);
        (Request::from_parts(parts, body), tripped)
    };
    let mut resp = match app.forwarder.send(req).await {
        Ok(resp) => resp,
        // The upstream call failed because we cut the body off.
        Err(_) if tripped.is_set() => return Err(ProxyError::BodyTooLarge),
        Err(e) => return Err(e.into()),
    };
    // `Forwarder::send` refuses a 101 unless it confirms an upgrade we
    // offered, so a 101 here always has a client upgrade to join.
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = client_upgrade else {
            return Err(ForwardError::UnexpectedUpgrade(String::new()).into());
        };
        let upstream = hyper::upgrade::on(&mut resp);
        let limits = crate::upgrade::TunnelLimits {
            max_life: crate::upgrade::until_exp(exp, app.clock.now()),
            idle: settings.limits.tunnel_idle_timeout,
        };
        app.tunnels.spawn(client, upstream, limits, slot.take());
    }
    Ok(resp.map(BodyExt::boxed))
}

/// Route → token → cache/introspect → policy: may this request pass? Shared by
/// proxy and forward-auth mode. `Ok((None, None))` for a public route; else the
/// principal and the token's `exp`.
async fn authorize(
    app: &App,
    settings: &Settings,
    route: &policy::Route,
    headers: &http::HeaderMap,
    query: Option<&str>,
    info: &mut AccessInfo,
) -> Result<(Option<policy::Principal>, Option<i64>), ProxyError> {
    let principal = match &route.access {
        Access::Public => None,
        Access::Token(requirements) => {
            let found = token::extract(
                headers,
                query,
                &settings.token_sources,
                settings.max_token_bytes,
            )?;
            let (token, _source) = found.ok_or(ProxyError::NoCredentials)?;
            let key = token.hash();
            info.fingerprint = Some(token::fingerprint(&key));

            let (answer, status) = app
                .cache
                .get_or_load(key, || {
                    // The breaker goes outside the timing: a call it refuses
                    // is not an introspection call (no duration to observe),
                    // but it is counted as outcome "circuit_open".
                    async {
                        let result = app
                            .breaker
                            .call_confirmed(
                                app.metrics.time_introspection(
                                    app.introspector.introspect(token.secret()),
                                ),
                                || app.introspector.canary(),
                            )
                            .await;
                        match result {
                            Err(IntrospectError::CircuitOpen) => {
                                app.metrics.introspection_refused();
                                result
                            }
                            // The AS will not introspect this token (e.g. a
                            // JWT-shaped token it did not issue): for the cache
                            // and the policy it is an inactive token, so it is
                            // answered 401 and negative-cached by its hash
                            // like one. Counted as `token_rejected` above;
                            // debug only, because any client can cause it.
                            Err(IntrospectError::TokenRejected(code)) => {
                                debug!(code, token = %token::fingerprint(&key), "authorization server refused to introspect the token; treating it as inactive");
                                Ok(crate::introspect::Introspection::inactive())
                            }
                            other => other,
                        }
                    }
                })
                .await;
            info.cache = Some(status);
            if status == CacheStatus::Stale {
                app.metrics.stale_answer();
            }
            let introspection = match answer {
                Ok(i) => i,
                Err(LoadError::Inactive) => return Err(policy::Deny::Inactive.into()),
                Err(LoadError::Failed(e)) => return Err(e.into()),
            };
            // Evaluated on every request, cache hit or not.
            let principal = policy::evaluate(
                &introspection,
                requirements,
                app.clock.unix_secs(),
                &settings.identity.claims,
            )
            .inspect_err(|deny| {
                debug!(route = %route.name, requirement = %deny, token = %token::fingerprint(&key), "policy denied")
            })?;
            info.subject = principal.subject.clone();
            Some((principal, introspection.exp))
        }
    };
    Ok(match principal {
        Some((p, exp)) => (Some(p), exp),
        None => (None, None),
    })
}

/// `mode = "forward_auth"`: decide about the original request the front proxy
/// describes, and answer 200 with identity headers (or a rejection).
async fn forward_auth_check(
    app: &App,
    settings: &Settings,
    req: Request<Incoming>,
    info: &mut AccessInfo,
) -> Result<Response<Body>, ProxyError> {
    // The sub-request's own Host may stand for the original's (Envoy): the
    // same one-Host rule as in proxy mode.
    forward::routing_host(&req)?;
    let orig = crate::forward_auth::original(
        &req,
        settings.forward_auth_convention,
        &settings.forward_auth_prefix,
    )?;
    // The path only, as in proxy mode: the original query may carry a token.
    info.original = Some((orig.method.clone(), orig.target.path().to_owned()));
    let route = settings.routes.select(
        &orig.method,
        orig.host.as_ref().and_then(|h| h.to_str().ok()),
        orig.target.path(),
    )?;
    info.route = Some(route.name.clone());
    let (principal, _exp) = authorize(
        app,
        settings,
        route,
        req.headers(),
        orig.target.query(),
        info,
    )
    .await?;
    Ok(crate::forward_auth::allowed(
        principal.as_ref(),
        &settings.identity,
    ))
}

/// Removes the configured query parameter and cookie, on every request.
fn strip_token_sources<B>(
    req: &mut Request<B>,
    sources: &token::TokenSources,
) -> Result<(), ProxyError> {
    if let Some(name) = &sources.cookie {
        token::strip_cookie(req.headers_mut(), name);
    }
    if let (Some(name), Some(query)) = (&sources.query_param, req.uri().query()) {
        // Rebuild the target only when the parameter is there: every other
        // request keeps its exact bytes (and skips the allocation).
        if !url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == name.as_str()) {
            return Ok(());
        }
        let path = req.uri().path();
        let pq = match token::strip_query_param(query, name) {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(pq.parse().map_err(|_| ForwardError::BadTarget)?);
        *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| ForwardError::BadTarget)?;
    }
    Ok(())
}

/// `content-type: application/grpc` (and `+proto`, `+json`, ...).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A rejection for a gRPC client: HTTP 200 "Trailers-Only" with `grpc-status`
/// and `grpc-message` (gRPC over HTTP/2 spec), so the client sees e.g.
/// UNAUTHENTICATED instead of a transport error. The challenge is kept.
pub fn grpc_rejection_response(err: &ProxyError) -> Response<Body> {
    let r = err.rejection();
    let mut resp = Response::new(
        http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(r.grpc_status()));
    h.insert("grpc-message", forward::header_safe(&r.grpc_message()));
    if let Some(www) = r.www_authenticate(REALM) {
        h.insert(header::WWW_AUTHENTICATE, forward::header_safe(&www));
    }
    resp
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
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(www) = r.www_authenticate(REALM) {
        h.insert(header::WWW_AUTHENTICATE, forward::header_safe(&www));
    }
    if r.retry {
        h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    resp
}
