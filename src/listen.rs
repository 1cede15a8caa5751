//! The listener: accept loop, HTTP/1.1 + h2c on one port (hyper-util `auto`),
//! or TLS with ALPN, connection limits, and the graceful drain (tunnels
//! included); the start-up probe and discovery refresh run beside it.

use crate::app::App;
use crate::config::ProbeMode;
use crate::http::limits::{self, ConnectionSlot};
use crate::pipeline::handle;
use crate::upstream::forward::Peer;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

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
        .map(|r| tokio::spawn(r.watch(crate::http::tls::WATCH_INTERVAL)));
    crate::pipeline::front_proxy::warn_if_auto(&app.settings());
    // TLS is a listener setting: fixed for the life of `run` (reload says so).
    let tls = app.settings().tls.clone();
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    // Connection-level limits are read once: hyper's builder and the
    // connection semaphore cannot change under running connections
    // (restart-only, see `crate::config::reload`).
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
                        crate::http::tls::HANDSHAKE_TIMEOUT,
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
                    crate::introspection::client::probe_advice(&e, app.introspector.url().as_deref())
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
        match crate::introspection::discovery::discover(
            &d.issuer,
            introspection.timeout,
            &introspection.tls,
        )
        .await
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
