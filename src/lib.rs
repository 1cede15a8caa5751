//! tokengate: a reverse proxy that lets a request through to the upstream only
//! if it carries an active OAuth 2.0 access token (RFC 6750 Bearer, checked by
//! RFC 7662 introspection).
//!
//! # Module map
//! - [`config`]: figment (defaults → TOML → `TOKENGATE_*` env) → `RawConfig` → `validate()` → `Settings`.
//! - [`server`]: accept loop, HTTP/1.1 + HTTP/2 (h2c, or TLS with ALPN), graceful drain
//!   (tunnels included); the request handler, in proxy or forward-auth mode; the
//!   start-up probe of the introspection endpoint (`introspection.probe`).
//! - [`tls`]: TLS termination with a reloadable certificate; outbound roots (`ca_file`) and
//!   the AS client certificate (mTLS).
//! - [`token`]: Bearer extraction (pure; the token is redacted in `Debug`).
//! - [`cache`]: moka cache keyed by SHA-256(token); fresh for ≤ min(max_ttl, `exp`), then
//!   revalidated; served stale (`stale_if_error`, never past `exp`) while the AS fails;
//!   negative cache; single-flight through [`flight`] (L1 miss → fleet L2 → introspection).
//! - [`flight`]: single-flight (one run per key for concurrent callers, cancellation-safe).
//! - [`breaker`]: circuit breaker in front of the AS (closed → open → half-open probe).
//! - [`limits`]: header size, connection count, body size, idle timeout.
//! - [`fleet`]: `[cache.shared]`: Redis/Valkey L2 behind the L1 (HMAC keys, versioned MAC'd
//!   values with a MAC'd expiry, timeout + breaker: never needed for correctness) and
//!   fleet-wide purge over pub/sub, with purge tombstones so a replayed value is refused.
//! - [`introspect`]: RFC 7662 client (`oauth2` crate over [`client`]); lenient response type.
//! - [`answer`]: the compact cached form of an answer ([`answer::Answer`], what the policy
//!   reads); repeating members shared through a bounded interner.
//! - [`policy`]: pure route table (first match, every reading of the path, normalised host)
//!   and decision (active, `exp`, `nbf`, token kind, issuer, audience, client, scopes) →
//!   `Principal`, re-run on every request.
//! - [`discovery`]: RFC 8414 / OIDC discovery of the introspection endpoint, with background refresh.
//! - [`forward`]: hop-by-hop and identity header rewrite, streaming call to the upstream
//!   (HTTP/1.1 or HTTP/2, over TCP or a unix socket).
//! - [`upgrade`]: HTTP/1.1 Upgrade (WebSocket) tunnels: only `upgrade_protocols` (never h2c)
//!   are offered upstream, a 101 must confirm one of them; a tunnel keeps its connection
//!   slot and is closed at the token's `exp`, after `limits.tunnel_idle_timeout`, and at shutdown.
//! - [`forward_auth`]: `mode = "forward_auth"`: the original request from the configured
//!   front-proxy convention (nginx / Traefik / Envoy; `auto` refuses two), and the 200 +
//!   identity answer.
//! - [`error`]: one enum for every failure; the one exhaustive status/challenge mapping.
//! - [`client`]: the pooled hyper-util + rustls clients for the AS and the upstream; the unix connector.
//! - [`clock`]: wall clock behind a trait, so expiry is testable without sleeping.
//! - [`admin`]: the admin listener: `/healthz`, `/readyz` ([`admin::Readiness`]), `/metrics`,
//!   `POST /purge`; spawned by `server::run` when the app has an admin listener.
//! - [`metrics`]: Prometheus metrics (`prometheus-client`), bumped by `server::handle`,
//!   the cache and around each introspection call.
//! - [`reload`]: config reload (SIGHUP): `ArcSwap<Settings>` swap, cache TTLs, log format.
//! - [`logfmt`]: the log line's timestamp and field formatter: the same text as
//!   `tracing-subscriber`'s defaults, for less work per access line.
//!
//! # One request
//! ```text
//! server::run ── limits (connection slot, first bytes) ── accept ── server::handle
//!                                                  (one `Settings` snapshot per request)
//!    (hyper: request head over limits.max_header_bytes → 431; CONNECT → 405)
//!    └─ limits::declared_too_large     Content-Length over limits.max_body_bytes → 413
//!    └─ forward::routing_host          two Hosts, or Host ≠ :authority / absolute-form
//!                                      target → 400; else the normalised host
//!    └─ forward::routing_method        override headers and `?_method`: routed on (POST only)
//!                                      with method_override = "route", else stripped below
//!    └─ policy::RouteTable::select     first matching route (HEAD takes GET routes); public →
//!                                      skip to forward; path whose route depends on its
//!                                      reading (decoding, `;`, case, NFKC, trailing dots),
//!                                      or a lower-case standard method → 400
//!    └─ token::extract                 header / query / cookie; none → 401, malformed or two → 400
//!    └─ cache::TokenCache::get_or_load hit / negative / miss or stale → single-flight (flight) →
//!                                      (answer::Answer: the cached form the policy reads)
//!         └─ fleet::Fleet::read_through  (with [cache.shared]) L2 GET (+ purge tombstone); miss → lock, then
//!              └─ breaker::Breaker::call → introspect::Introspector; SET PX
//!                                      AS failure → stale answer if allowed, else 503
//!    └─ policy::evaluate               not active, expired, wrong iss/aud/client → 401; scope → 403;
//!                                      AS failure → 503
//!    └─ upgrade::requested             Upgrade → only allowed protocols (never h2c), else stripped
//!    └─ forward::rewrite_request_headers + Forwarder::send   → upstream, body streamed both ways
//!                                      (request body counted by limits::LimitedBody → 413;
//!                                      a 101 not naming an offered protocol → 502, dropped)
//!       └─ upgrade::Tunnels::spawn     on 101: join the two connections (holding the connection
//!                                      slot) until exp / idle / close / shutdown
//!    └─ error::ProxyError::rejection   any failure → status + WWW-Authenticate + JSON
//!                                      (gRPC request → grpc-status, server::grpc_rejection_response)
//!    └─ metrics::Metrics::observe_request  + one access log line
//! admin::serve (own listener): /healthz, /readyz, /metrics, POST /purge →
//!    cache::TokenCache::invalidate (→ fleet: L2 DEL + PUBLISH on tokengate:purge).
//! reload (SIGHUP in main): ReloadHandle::reload_from → validate → ArcSwap<Settings> swap.
//! forward-auth mode: forward_auth::original (only `forward_auth.convention`'s headers; auto:
//! two conventions → 400; an override naming another method → 400: it cannot be stripped) → the same route/token/cache/policy → 200 + identity
//! (forward_auth::allowed) instead of forwarding; the access line logs the original method and path.
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod answer;
pub mod breaker;
pub mod cache;
pub mod client;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod error;
pub mod fleet;
pub mod flight;
pub mod forward;
pub mod forward_auth;
pub mod introspect;
pub mod limits;
pub mod logfmt;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod server;
pub mod tls;
pub mod token;
pub mod upgrade;

pub use server::{run, App};

/// Installs the process-wide rustls crypto provider. rustls panics when it has to
/// pick one itself and more than one is compiled in; call this once at start-up
/// (a second call is harmless).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Initialises `tracing` once: level from `RUST_LOG` (default `info`), text or
/// JSON. The handle lets a config reload switch the format (`None` if a
/// subscriber was already installed).
pub fn init_tracing(format: config::LogFormat) -> Option<reload::Logging> {
    reload::init_tracing(format)
}
