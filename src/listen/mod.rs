//! The listener: accept loop, HTTP/1.1 + h2c on one port (hyper-util `auto`),
//! or TLS with ALPN, connection limits, and the graceful drain (tunnels
//! included); the start-up probe and discovery refresh run beside it.
//!
//! [`run`] → [`Background::start`] → [`Listener::run`] (→ [`Listener::accept`]
//! → [`Listener::spawn`] → [`serve`] → `pipeline::handle`) → [`Listener::drain`].

mod ext_authz;
mod grpc_health;

use crate::app::App;
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
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, warn};

/// Serves `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish for up to `shutdown_timeout`, and returns.
/// `main` and the integration tests both call this.
pub async fn run(mut app: App, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let admin_listener = app.admin_listener.take();
    let ext_authz_listener = app.ext_authz_listener.take();
    let otel = app.otel.clone();
    let app = Arc::new(app);
    let mut background = Background::start(&app, admin_listener);
    background.start_ext_authz(&app, ext_authz_listener);
    crate::pipeline::front_proxy::warn_if_auto(&app.settings());
    let mut listener = Listener::new(app.clone(), listener);
    listener.run(shutdown).await;
    let draining = crate::resilience::clock::stopwatch();
    listener.drain(background).await;
    // After the drain, so that the last requests' spans are in the batch;
    // within what is left of `shutdown_timeout`, so that a collector that
    // hangs does not hold the exit past the deadline the operator set.
    if let Some(otel) = otel {
        let left = app
            .settings()
            .shutdown_timeout
            .saturating_sub(draining.elapsed());
        otel.shutdown(left).await;
    }
}

/// The tasks that run beside the listener for as long as it runs.
struct Background {
    /// The admin listener, stopped last so that `/readyz` answers 503 during the drain.
    admin: Option<tokio::task::JoinHandle<()>>,
    stop_admin: tokio::sync::watch::Sender<bool>,
    /// Discovery refresh, start-up probe, fleet purge subscriber, certificate
    /// watch, JWKS refresh: aborted when the listener stops accepting.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The gRPC ext_authz server (`[ext_authz]`), drained beside the proxy port.
    ext_authz: Option<tokio::task::JoinHandle<()>>,
    stop_ext_authz: tokio::sync::watch::Sender<bool>,
}

impl Background {
    /// Spawns the admin listener (if any) and the tasks the settings ask for.
    fn start(app: &Arc<App>, admin_listener: Option<TcpListener>) -> Self {
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        let admin = admin_listener
            .map(|l| tokio::spawn(crate::admin::serve(app.clone(), l, admin_stopped)));
        let refresher = app
            .settings()
            .discovery
            .clone()
            .map(|d| tokio::spawn(refresh_discovery(app.clone(), d)));
        // The fleet's purge subscriber (its own Redis connection), if configured.
        let subscriber = app
            .cache
            .fleet()
            .map(|f| tokio::spawn(f.clone().run_subscriber()));
        let tls_watch = app
            .tls_reloader()
            .map(|r| tokio::spawn(r.watch(crate::http::tls::WATCH_INTERVAL)));
        // The issuer's keys: fetched now, then every `jwt.jwks_refresh_interval`.
        let jwks = app
            .jwks
            .clone()
            .zip(app.settings().jwt.clone())
            .map(|(k, j)| tokio::spawn(k.refresh_loop(j.jwks_refresh_interval)));
        let mut tasks: Vec<_> = [refresher, subscriber, tls_watch, jwks]
            .into_iter()
            .flatten()
            .collect();
        // Every issuer's start-up probe (`introspection.probe`); a named
        // issuer's discovery and keys too (the default's are above).
        for issuer in app.issuers.all() {
            tasks.extend(issuer.spawn_background());
        }
        Self {
            admin,
            stop_admin,
            tasks,
            ext_authz: None,
            stop_ext_authz: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Background {
    /// Spawns the gRPC ext_authz server on `listener`, if there is one.
    fn start_ext_authz(&mut self, app: &Arc<App>, listener: Option<TcpListener>) {
        self.ext_authz = listener.map(|l| {
            tokio::spawn(ext_authz::serve(
                app.clone(),
                l,
                self.stop_ext_authz.subscribe(),
            ))
        });
    }
}

/// What [`Listener::accept`] got.
enum Accepted {
    Connection(TcpStream, SocketAddr),
    /// A connection task ended or `accept` failed: go around the loop again.
    Again,
    Shutdown,
}

/// The proxy port: accepts connections within `limits.max_connections` and
/// serves each in its own task, then drains them at shutdown.
struct Listener {
    app: Arc<App>,
    listener: TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// TLS is a listener setting: fixed for the life of `run` (reload says so).
    tls: Option<crate::http::tls::ServerTlsSettings>,
    /// Connection-level limits are read once: hyper's builder and the
    /// connection semaphore cannot change under running connections
    /// (restart-only, see `crate::config::reload`).
    conn_limits: crate::http::limits::Limits,
    graceful: GracefulShutdown,
    /// Dropped when the loop ends: connections still waiting for their first
    /// bytes give up at once instead of holding up the drain.
    stop_tx: Option<tokio::sync::watch::Sender<()>>,
    stop_rx: tokio::sync::watch::Receiver<()>,
    /// Owned here so that connections still open at the drain deadline are
    /// aborted when `run` returns, not left running in the background.
    connections: tokio::task::JoinSet<()>,
    full_warned: Option<tokio::time::Instant>,
}

impl Listener {
    fn new(app: Arc<App>, listener: TcpListener) -> Self {
        let tls = app.settings().tls.clone();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let conn_limits = app.settings().limits.clone();
        limits::configure(&mut builder, &conn_limits);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
        Self {
            app,
            listener,
            builder: Arc::new(builder),
            tls,
            conn_limits,
            graceful: GracefulShutdown::new(),
            stop_tx: Some(stop_tx),
            stop_rx,
            connections: tokio::task::JoinSet::new(),
            full_warned: None,
        }
    }

    /// The accept loop: a connection slot first (so a full gate leaves new
    /// connections in the listen backlog), then a connection, until `shutdown`.
    async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            self.warn_if_full();
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = self.app.connections.acquire() => permit,
            };
            match self.accept(shutdown.as_mut()).await {
                Accepted::Connection(stream, peer) => self.spawn(permit, stream, peer),
                Accepted::Again => continue,
                Accepted::Shutdown => break,
            }
        }
        self.stop_tx = None;
    }

    /// At most one line per 10 s: under sustained overload this would
    /// otherwise log once per closing connection.
    fn warn_if_full(&mut self) {
        if self.app.connections.is_full()
            && self
                .full_warned
                .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10))
        {
            warn!(
                max_connections = ?self.conn_limits.max_connections,
                "connection limit reached; new connections wait in the listen backlog"
            );
            self.full_warned = Some(tokio::time::Instant::now());
        }
    }

    /// Waits for the next connection, reaping finished connection tasks
    /// meanwhile.
    async fn accept(&mut self, shutdown: Pin<&mut impl Future<Output = ()>>) -> Accepted {
        tokio::select! {
            () = shutdown => Accepted::Shutdown,
            Some(_) = self.connections.join_next(), if !self.connections.is_empty() => Accepted::Again,
            accepted = self.listener.accept() => match accepted {
                Ok((stream, peer)) => Accepted::Connection(stream, peer),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Accepted::Again
                }
            },
        }
    }

    /// Serves one connection in its own task: first bytes within the idle
    /// timeout, the TLS handshake if any, then HTTP ([`serve`]).
    fn spawn(&mut self, permit: Option<OwnedSemaphorePermit>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let idle = self.conn_limits.idle_timeout;
        let watcher = self.graceful.watcher();
        let builder = self.builder.clone();
        let mut stop = self.stop_rx.clone();
        let app = self.app.clone();
        let acceptor = self.tls.as_ref().map(|t| t.acceptor.clone());
        self.connections.spawn(async move {
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
                    let client = Peer::new(peer, "http");
                    serve(&builder, watcher, app, io, client, slot.clone()).await;
                }
                // The handshake runs in the connection's task, never in the accept loop.
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        crate::http::tls::HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            // Verified by rustls against `tls.client_ca_file`; one
                            // per connection, so every request on it (h1 or h2) has it.
                            let cert =
                                crate::policy::binding::mtls::peer_thumbprint(stream.get_ref().1);
                            let client = Peer::new(peer, "https").with_client_cert(cert);
                            let io = TokioIo::new(stream);
                            serve(&builder, watcher, app, io, client, slot.clone()).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }

    /// Shutdown: `/readyz` turns 503, the port closes, in-flight requests and
    /// tunnels get `shutdown_timeout` to finish, then whatever is left is
    /// closed; the admin listener stops last.
    async fn drain(mut self, background: Background) {
        // Load balancers that probe /readyz stop sending before we stop answering.
        self.app.readiness.begin_shutdown();
        drop(self.listener);
        // ext_authz drains at the same time, with the same deadline.
        let _ = background.stop_ext_authz.send(true);
        for task in background.tasks {
            task.abort();
        }
        let app = self.app;
        let deadline = app.settings().shutdown_timeout;
        info!(
            connections = self.graceful.count(),
            tunnels = app.tunnels.count(),
            ?deadline,
            "shutting down: draining connections"
        );
        // Upgraded connections have left hyper's connection (and so `graceful`):
        // wait for them too, and close them at the deadline.
        let drained = async {
            self.graceful.shutdown().await;
            app.tunnels.wait().await;
        };
        if tokio::time::timeout(deadline, drained).await.is_err() {
            warn!("shutdown deadline reached; closing remaining connections");
        }
        self.connections.abort_all();
        app.tunnels.close_all();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), app.tunnels.wait()).await;
        if let Some(task) = background.ext_authz {
            let _ = task.await;
        }
        let _ = background.stop_admin.send(true);
        if let Some(task) = background.admin {
            let _ = task.await;
        }
    }
}

/// One connection: HTTP/1.1 (with Upgrade) or HTTP/2, over TCP or TLS,
/// watched by the graceful drain.
fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    app: Arc<App>,
    io: I,
    client: Peer,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send + 'static
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = client.addr;
    let client = Arc::new(client);
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
