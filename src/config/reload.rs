//! Configuration reload (SIGHUP in `main`; [`ReloadHandle::reload`] in tests).
//!
//! The per-request settings live in one `ArcSwap<Settings>`: a request loads the
//! current `Arc` once and uses that snapshot to the end, so it never sees half
//! of an old and half of a new configuration. A reload validates first (a bad
//! file changes nothing), then swaps:
//!
//! * applied at once: `[[routes]]`, `[policy]`, `[identity]` (incl. claims),
//!   `[token_sources]`, `limits.max_token_bytes`, `limits.max_body_bytes`,
//!   `upgrade_protocols`, `[forwarding]`, `[mtls]`, `resilience.retry_after_secs`, `shutdown_timeout`,
//!   `admin.purge_secret_file` (re-read), `log.format`, `log.access`,
//!   `[forward_auth]` (`convention`, `path_prefix`: read per request),
//!   `[dpop]` (but `replay_cache_entries`);
//! * `cache.max_ttl` / `cache.negative_ttl` / `resilience.stale_if_error`: for
//!   entries cached from now on; entries already cached keep their lifetime
//!   and stale window (purge one to drop it early);
//! * `limits.tunnel_idle_timeout`: for tunnels opened from now on (an open
//!   tunnel keeps the timeout it started with);
//! * needs a restart (a warning names each key; the running value stays):
//!   `listen`, `admin.listen`, `upstream`, `[introspection]`,
//!   `[discovery]`, `cache.max_entries`, `cache.negative_max_entries`,
//!   `resilience.upstream_timeout`, `resilience.upstream_connect_timeout`,
//!   `mode`, `upstream_http2`, `[tls]` paths (the certificate files themselves
//!   are re-read on SIGHUP and when they change; `client_ca_file`, its contents
//!   included, and `client_auth` are not), `[upstream_tls]` (kept
//!   silently: the CA file is read into the clients at start-up),
//!   `resilience.breaker_failures`, `resilience.breaker_open_for` (the breaker
//!   keeps its state machine across a reload), `limits.max_header_bytes`,
//!   `limits.idle_timeout` (both set on hyper's connection builder at start),
//!   `limits.max_connections` (the connection semaphore is sized at start),
//!   `[cache.shared]` (the Redis layer is built once at start), `[jwt]` and
//!   `introspection.response_format` (the JWKS store and the verifiers are built
//!   once at start), `[issuers.<name>]`
//!   (the list and every key in it: each issuer's client, breaker, probe and
//!   metrics are built once at start, as the default issuer's are; a reload
//!   whose routes name an issuer that is not running is refused whole, since
//!   its routes would have no AS to ask),
//!   `dpop.replay_cache_entries` (the replay cache is sized at start),
//!   `[ext_authz]` (the gRPC listener is bound once), `[tracing]` and the
//!   `OTEL_*` variables (the exporter is built once at start).

use crate::cache::CacheTtls;
use crate::config::{ConfigError, LogFormat, Settings};
use crate::ops::metrics::Metrics;
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing::{error, info, warn};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

type FormatLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Lines the log writer thread may hold before a logging call waits for it.
/// Bounded so a stalled stdout cannot grow memory without limit (~300 B a line:
/// at most a few MiB); large enough to absorb bursts without any request waiting.
const LOG_BUFFER_LINES: usize = 16_384;

/// Bytes the writer thread gathers before a `write`, if its queue is not empty first.
const LOG_WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Switches the log format of the subscriber [`init_tracing`] installed.
#[derive(Clone)]
pub struct LogHandle {
    handle: reload::Handle<FormatLayer, Registry>,
    /// The same background writer for every format: a reload must not start a
    /// second writer thread or reorder lines.
    writer: NonBlocking,
}

/// What [`init_tracing`] returns: the reload handle, and the guard that flushes
/// the buffered log lines when dropped. `main` keeps it until it returns, so
/// the last lines ("tokengate stopped") are written before the process exits.
#[must_use = "dropping the guard stops the log writer thread"]
pub struct Logging {
    pub handle: LogHandle,
    pub guard: WorkerGuard,
}

fn format_layer(format: LogFormat, writer: NonBlocking) -> FormatLayer {
    // Colour only on a terminal: escape codes in a log file or `kubectl logs` are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .fmt_fields(crate::ops::logfmt::PlainFields)
            .with_timer(crate::ops::logfmt::Utc)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_timer(crate::ops::logfmt::Utc)
            .with_writer(writer)
            .boxed(),
    }
}

/// Installs the global subscriber: level from `RUST_LOG` (default `info`), text
/// or JSON, the format swappable at run time. `None` if one was already installed.
///
/// Lines go to stdout through a background thread (`tracing-appender`'s
/// non-blocking writer): formatting stays on the request's thread, the `write`
/// system call (one per line when it was done inline) does not, and the thread
/// writes whatever has queued up in one go.
/// Not lossy: when [`LOG_BUFFER_LINES`] lines are waiting, a logging call waits
/// for room, as the synchronous writer did on every line. An access log of an
/// authorising proxy is an audit trail; losing lines under overload is worse
/// than the back-pressure, which only happens when stdout cannot keep up.
pub fn init_tracing(format: LogFormat) -> Option<Logging> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("tokengate-log")
        // Buffered: the writer thread writes every line that queued up while
        // it was busy, then flushes once (tracing-appender flushes when its
        // queue is empty), so under load one `write` carries many lines.
        .finish(std::io::BufWriter::with_capacity(
            LOG_WRITE_BUFFER_BYTES,
            std::io::stdout(),
        ));
    let (layer, handle) = reload::Layer::new(format_layer(format, writer.clone()));
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .try_init()
        .ok()
        .map(|()| {
            text_sink(format, &writer);
            Logging {
                handle: LogHandle { handle, writer },
                guard,
            }
        })
}

/// The access line is written by hand in the plain text format (no colours)
/// only, and only to the writer of the subscriber [`init_tracing`] installed.
fn text_sink(format: LogFormat, writer: &NonBlocking) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    crate::ops::logfmt::set_text_sink(
        (matches!(format, LogFormat::Text) && !ansi).then(|| writer.clone()),
    );
}

impl LogHandle {
    pub fn set_format(&self, format: LogFormat) -> Result<(), String> {
        // The sink follows the layer: off before a swap away from text, on
        // after a swap to it, so no line is written in the wrong format.
        crate::ops::logfmt::set_text_sink(None);
        self.handle
            .reload(format_layer(format, self.writer.clone()))
            .map_err(|e| e.to_string())?;
        text_sink(format, &self.writer);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What a successful reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys whose new value needs a restart; the running value was kept.
    pub restart_required: Vec<&'static str>,
}

/// Swaps the configuration of a running [`crate::App`]; cheap to clone.
#[derive(Clone)]
pub struct ReloadHandle {
    pub(crate) settings: Arc<ArcSwap<Settings>>,
    pub(crate) ttls: CacheTtls,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) log: Option<LogHandle>,
    /// One reload at a time: two SIGHUPs in a row must not interleave.
    pub(crate) lock: Arc<Mutex<()>>,
}

impl ReloadHandle {
    /// Lets reloads switch the log format (`main` passes what [`init_tracing`] returned).
    pub fn with_log(mut self, log: Option<LogHandle>) -> Self {
        self.log = log;
        self
    }

    /// The settings requests see right now.
    pub fn current(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Re-reads the config file and environment, validates, and applies the
    /// result; on any error the running configuration stays. Logs the outcome.
    pub fn reload_from(&self, file: Option<&Path>) -> Result<ReloadReport, ReloadError> {
        match crate::config::load(file).and_then(|raw| raw.validate()) {
            Ok(settings) => self.reload(settings),
            Err(e) => Err(self.rejected(e.into())),
        }
    }

    fn rejected(&self, e: ReloadError) -> ReloadError {
        self.metrics.reload(false);
        error!(error = %e, "configuration reload rejected; the previous configuration stays in effect");
        e
    }

    /// Applies already validated settings. Keys that need a restart keep their
    /// running value, with a warning each. Fails, changing nothing, when the
    /// result would be unsafe with the running listeners.
    pub fn reload(&self, mut new: Settings) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.settings.load_full();
        let restart_required = keep_restart_only(&old, &mut new);
        // `validate` checked the secret against the *new* admin.listen, but the
        // running one stays until a restart: check against that.
        // (`keep_restart_only` put the running listener back into `new`.)
        if let Err(e) = new.admin.check_purge_secret() {
            return Err(self.rejected(ReloadError::Config(e)));
        }
        // `keep_restart_only` put the running issuers back into `new`.
        if let Some(name) = unknown_route_issuer(&new) {
            return Err(self.rejected(ReloadError::Config(ConfigError::RestartRequired(
                format!("routes name issuer {name:?}, which is not running: [issuers] changes need a restart"),
            ))));
        }
        for key in &restart_required {
            warn!(
                key,
                "configuration reload: this setting changed but needs a restart; the running value stays"
            );
        }
        if new.log_format != old.log_format {
            match &self.log {
                Some(log) => {
                    if let Err(e) = log.set_format(new.log_format) {
                        warn!(error = %e, "cannot switch the log format; keeping the old one");
                        new.log_format = old.log_format;
                    }
                }
                None => new.log_format = old.log_format,
            }
        }
        self.ttls.set(&new.cache);
        self.ttls.set_stale_if_error(new.stale_if_error);
        let routes = new.routes.routes.len();
        self.settings.store(Arc::new(new));
        self.metrics.reload(true);
        info!(
            routes,
            restart_required = restart_required.len(),
            "configuration reloaded"
        );
        Ok(ReloadReport { restart_required })
    }
}

fn same<T>(a: &T, b: &T, eq: impl Fn(&T, &T) -> bool) -> bool {
    eq(a, b)
}

/// Copies every restart-only value of `old` into `new` and names those that
/// differed.
fn keep_restart_only(old: &Settings, new: &mut Settings) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        // Most keys compare with `==`; the rest say how.
        ($key:literal, $($field:ident).+) => {
            keep!($key, $($field).+, |a, b| a == b)
        };
        ($key:literal, $($field:ident).+, $same:expr) => {{
            if !same(&old.$($field).+, &new.$($field).+, $same) {
                changed.push($key);
            }
            new.$($field).+ = old.$($field).+.clone();
        }};
    }
    keep!("listen", listen);
    keep!("admin.listen", admin.listen);
    // The gRPC listener is bound once, like the others.
    keep!("ext_authz", ext_authz);
    // The exporter and its batch thread are built once, at start.
    keep!("tracing", tracing);
    keep!("upstream", upstream, |a, b| a.scheme == b.scheme
        && a.authority == b.authority
        && a.base_path == b.base_path
        && a.unix_socket == b.unix_socket
        && a.http2 == b.http2);
    keep!("mode", mode);
    // The running listener holds the live acceptor and its file watcher; a new
    // one would serve nothing. Certificate *contents* reload through them
    // (file change, SIGHUP); only the paths and TLS on/off need a restart.
    // So do `client_ca_file` (path and contents) and `client_auth`: the client
    // verifier is part of the acceptor's rustls config, and a change of who may
    // present certificates is one an operator should see take effect at a
    // restart, not half-way through open connections.
    keep!("tls", tls, |a, b| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) =>
            a.reloader.cert_file == b.reloader.cert_file
                && a.reloader.key_file == b.reloader.key_file
                && a.client_auth == b.client_auth,
        _ => false,
    });
    // Built into the pooled clients at start-up (CA roots, client certificate).
    // Kept whole so that discovery refreshes (which read the settings) trust
    // exactly what the running introspection client trusts.
    new.upstream_tls = old.upstream_tls.clone();
    new.introspection.tls = old.introspection.tls.clone();
    keep!("discovery", discovery, |a, b| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.issuer == b.issuer && a.refresh_interval == b.refresh_interval,
        _ => false,
    });
    // With discovery the new URL is `None` until discovered: compare it only
    // when the operator wrote one down.
    let url_changed = new.discovery.is_none()
        && old.introspection.url.as_ref().map(|u| u.as_str())
            != new.introspection.url.as_ref().map(|u| u.as_str());
    if url_changed {
        changed.push("introspection.url");
    }
    keep!("introspection.client_id", introspection.client_id);
    keep!(
        "introspection.client_secret",
        introspection.client_secret,
        |a, b| a.expose() == b.expose()
    );
    keep!("introspection.auth_method", introspection.auth_method);
    keep!("introspection.timeout", introspection.timeout);
    // The probe runs (and its readiness gate is registered) at start-up.
    keep!("introspection.probe", introspection.probe);
    // The JWKS store, the JWT verifier and the signed-answer check are built
    // once in `App::with_clock`.
    keep!(
        "introspection.response_format",
        introspection.response_format
    );
    keep!("jwt", jwt);
    new.introspection.url = old.introspection.url.clone();
    keep!("cache.max_entries", cache.max_entries);
    keep!("cache.negative_max_entries", cache.negative_max_entries);
    keep!("resilience.upstream_timeout", upstream_timeout);
    keep!(
        "resilience.upstream_connect_timeout",
        upstream_connect_timeout
    );
    keep!("resilience.breaker_failures", breaker_failures);
    keep!("resilience.breaker_open_for", breaker_open_for);
    keep!("limits.max_header_bytes", limits.max_header_bytes);
    keep!("limits.max_connections", limits.max_connections);
    keep!("limits.idle_timeout", limits.idle_timeout);
    // Sizes the DPoP replay cache, built once in `App::with_clock`.
    keep!("dpop.replay_cache_entries", dpop.replay_cache_entries);
    // The fleet layer (Redis connections, subscriber, HMAC key) is built once
    // in `App::with_clock`.
    keep!("cache.shared", shared_cache, |a, b| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) =>
            a.url.0 == b.url.0
                && a.key_secret.expose() == b.key_secret.expose()
                && a.timeout == b.timeout
                && a.single_flight == b.single_flight,
        _ => false,
    });
    keep!("issuers", issuers, |a, b| a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| same_issuer(a, b)));
    changed
}

fn same_issuer(a: &crate::config::IssuerSettings, b: &crate::config::IssuerSettings) -> bool {
    let (i, j) = (&a.introspection, &b.introspection);
    a.name == b.name
        && a.iss == b.iss
        && i.url.as_ref().map(|u| u.as_str()) == j.url.as_ref().map(|u| u.as_str())
        && i.client_id == j.client_id
        && i.client_secret.expose() == j.client_secret.expose()
        && i.auth_method == j.auth_method
        && i.timeout == j.timeout
        && i.probe == j.probe
        && i.response_format == j.response_format
        && a.jwt == b.jwt
        && match (&a.discovery, &b.discovery) {
            (None, None) => true,
            (Some(x), Some(y)) => x.issuer == y.issuer && x.refresh_interval == y.refresh_interval,
            _ => false,
        }
}

/// A route (or the default) naming an issuer that `settings.issuers` lacks.
fn unknown_route_issuer(settings: &Settings) -> Option<String> {
    let table = &settings.routes;
    table
        .routes
        .iter()
        .chain(std::iter::once(&table.default))
        .filter_map(|r| match &r.access {
            crate::policy::Access::Token(q) => Some(q.issuer_names.iter()),
            crate::policy::Access::Public => None,
        })
        .flatten()
        .find(|name| {
            *name != crate::config::DEFAULT_ISSUER
                && !settings.issuers.iter().any(|i| &i.name == *name)
        })
        .cloned()
}
