//! The composition root: builds every subsystem from one validated
//! [`Settings`] and ties them together (the cache's fleet layer, the breaker's
//! readiness check, the reload handle). [`crate::listen`] serves an [`App`];
//! [`crate::pipeline`] answers each request with it.

pub(crate) mod issuers;

use crate::app::issuers::{Issuer, Issuers};
use crate::cache::fleet::Fleet;
use crate::cache::TokenCache;
use crate::config::reload::ReloadHandle;
use crate::config::{ProbeMode, Settings};
use crate::http::limits::ConnectionLimit;
use crate::introspection::client::Introspector;
use crate::ops::metrics::Metrics;
use crate::ops::readiness::Readiness;
use crate::resilience::breaker::{Breaker, BreakerState};
use crate::resilience::clock::{Clock, SystemClock};
use crate::upstream::forward::Forwarder;
use arc_swap::ArcSwap;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::error;

/// Everything a request needs, shared by all connections.
pub struct App {
    /// Swapped whole by a config reload; a request uses one snapshot throughout.
    pub(crate) settings: Arc<ArcSwap<Settings>>,
    pub(crate) cache: TokenCache,
    /// The default issuer's client (also `issuers.default.introspector`).
    pub(crate) introspector: Arc<Introspector>,
    /// The default issuer's signing keys, when `[jwt]` or signed answers need
    /// them (refreshed in the background by [`crate::run`]).
    pub(crate) jwks: Option<Arc<crate::introspection::jwks::Jwks>>,
    /// Every authorization server: the default one (sharing the
    /// introspector, breaker and probe flag above) and `[issuers.<name>]`.
    pub(crate) issuers: Arc<Issuers>,
    /// The binding stage's state (DPoP replay cache, nonce key).
    pub(crate) binder: crate::policy::binding::Binder,
    pub(crate) forwarder: Forwarder,
    /// Fails AS calls fast after repeated failures; shared with the
    /// readiness check.
    pub(crate) breaker: Arc<Breaker>,
    /// Open client connections (`limits.max_connections`).
    pub(crate) connections: ConnectionLimit,
    /// Wall clock for `exp`/`nbf` checks and cache TTLs; injectable for tests.
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) readiness: Arc<Readiness>,
    /// Taken by [`crate::run`], which serves the admin endpoints on it.
    pub(crate) admin_listener: Option<TcpListener>,
    /// Taken by [`crate::run`], which serves gRPC ext_authz on it (`[ext_authz]`).
    pub(crate) ext_authz_listener: Option<TcpListener>,
    pub(crate) reload_lock: Arc<std::sync::Mutex<()>>,
    /// Upgraded (WebSocket) connections: shutdown must close them itself.
    pub(crate) tunnels: crate::upstream::upgrade::Tunnels,
    /// `[tracing]`: the OpenTelemetry tracer; `None` (the default) when off,
    /// and then the request path makes no span at all.
    pub(crate) otel: Option<crate::ops::otel::Otel>,
}

impl App {
    pub fn new(settings: Settings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    pub fn with_clock(settings: Settings, clock: Arc<dyn Clock>) -> Self {
        let metrics = Arc::new(Metrics::new());
        let breaker = Arc::new(
            Breaker::new(settings.breaker_failures, settings.breaker_open_for)
                .logged_as("authorization server"),
        );
        // The issue's readiness contract: not ready while the breaker is open.
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
        let (introspector, jwt, jwks) = build_introspection(&settings, &clock);
        let introspector = Arc::new(introspector);
        let default_issuer = Issuer::default_issuer(
            &settings.introspection,
            introspector.clone(),
            breaker.clone(),
            probe_ok,
            metrics.issuer(crate::config::DEFAULT_ISSUER.into()),
            jwt,
            settings
                .jwt
                .as_ref()
                .map(|j| j.issuer.clone())
                .or_else(|| settings.discovery.as_ref().map(|d| d.issuer.clone())),
        );
        // Named issuers do not gate `/readyz`: one AS down must not take the
        // routes of the others out of the load balancer with it
        // (`tokengate_issuer_ready` shows each).
        let named = settings
            .issuers
            .iter()
            .map(|s| {
                Arc::new(Issuer::named(
                    s,
                    settings.breaker_failures,
                    settings.breaker_open_for,
                    metrics.issuer(s.name.clone().into()),
                    &clock,
                ))
            })
            .collect();
        let default_counters = default_issuer.metrics.cache.clone();
        let issuers = Arc::new(Issuers {
            default: Arc::new(default_issuer),
            named,
        });
        let cache = attach_fleet(
            TokenCache::new(&settings.cache, clock.clone())
                .with_stale_if_error(settings.stale_if_error)
                .with_counters(default_counters),
            &settings,
            clock.clone(),
        );
        // The fleet (if any) makes the replay check and the nonces fleet-wide.
        let binder = crate::policy::binding::Binder::new(
            &settings.dpop,
            cache.fleet().cloned(),
            clock.clone(),
        );
        Self {
            cache,
            binder,
            breaker,
            connections: ConnectionLimit::new(settings.limits.max_connections),
            introspector,
            jwks,
            issuers,
            forwarder: Forwarder::new(
                settings.upstream.clone(),
                settings.upstream_connect_timeout,
                settings.upstream_timeout,
                &settings.upstream_tls,
            ),
            clock,
            otel: start_tracing(&settings),
            settings: Arc::new(ArcSwap::from_pointee(settings)),
            metrics,
            readiness,
            admin_listener: None,
            ext_authz_listener: None,
            reload_lock: Default::default(),
            tunnels: crate::upstream::upgrade::Tunnels::default(),
        }
    }

    /// Serves `/healthz`, `/readyz`, `/metrics` and `POST /purge` on `listener`
    /// while [`crate::run`] runs (see [`crate::admin`]).
    pub fn with_admin_listener(mut self, listener: TcpListener) -> Self {
        self.admin_listener = Some(listener);
        self
    }

    /// Serves Envoy's gRPC `Authorization/Check` and `grpc.health.v1` on
    /// `listener` while [`crate::run`] runs (see `crate::listen::ext_authz`).
    pub fn with_ext_authz_listener(mut self, listener: TcpListener) -> Self {
        self.ext_authz_listener = Some(listener);
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

    /// The issuer's key store (`[jwt]` or signed answers), e.g. to count fetches.
    pub fn jwks(&self) -> Option<&Arc<crate::introspection::jwks::Jwks>> {
        self.jwks.as_ref()
    }

    /// Every authorization server (the default one and `[issuers.<name>]`).
    pub fn issuers(&self) -> &Issuers {
        &self.issuers
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
    /// `None` without `[tls]`. Take it before handing the app to [`crate::run`].
    pub fn tls_reloader(&self) -> Option<crate::http::tls::TlsReloader> {
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

/// The introspection client, the JWT verifier and the key store they share:
/// one [`Jwks`](crate::introspection::jwks::Jwks) per issuer serves both the
/// local check (`[jwt] enabled`) and signed answers (`response_format = "jwt"`).
fn build_introspection(
    settings: &Settings,
    clock: &Arc<dyn Clock>,
) -> (
    Introspector,
    Option<Arc<crate::introspection::jwt::JwtVerifier>>,
    Option<Arc<crate::introspection::jwks::Jwks>>,
) {
    issuers::local_checks(&settings.introspection, settings.jwt.as_ref(), clock)
}

/// Puts the fleet layer behind `cache` when `[cache.shared]` is set. Here, in
/// the composition root, so that neither the cache nor the fleet has to know
/// the other's constructor.
fn attach_fleet(cache: TokenCache, settings: &Settings, clock: Arc<dyn Clock>) -> TokenCache {
    let Some(shared) = &settings.shared_cache else {
        return cache;
    };
    // No negative entries in L2 when L1 keeps none: the operator turned them off.
    let negative_entries = settings.cache.negative_max_entries > 0;
    match Fleet::new(
        shared,
        cache.l1(),
        cache.ttls(),
        negative_entries,
        settings.introspection.timeout,
        clock,
    ) {
        Ok(fleet) => cache.with_fleet(Arc::new(fleet)),
        Err(e) => {
            // `validate()` parsed the URL already, so this is not expected;
            // serving without L2 is still correct, only slower.
            error!(error = %e, "cannot set up the shared cache; running without it");
            cache
        }
    }
}

/// `[tracing]`: the tracer, if tracing is on. An exporter that cannot be
/// built (no runtime) is logged and the gate runs untraced: traces are for
/// the operator, and a gate that refused traffic for want of them would be
/// worse than one without them.
fn start_tracing(settings: &Settings) -> Option<crate::ops::otel::Otel> {
    let tracing = settings.tracing.as_ref()?;
    crate::ops::otel::Otel::start(tracing)
        .inspect_err(
            |e| error!(error = %e, "cannot start OpenTelemetry tracing; running without it"),
        )
        .ok()
}
