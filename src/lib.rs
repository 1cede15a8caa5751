//! tokengate: a reverse proxy that lets a request through to the upstream only
//! if it carries an active OAuth 2.0 access token (RFC 6750 Bearer, checked by
//! RFC 7662 introspection).
//!
//! # Module map
//! `src/` is layered, bottom to top; a file imports only from its own layer or
//! the ones below it (no import cycles), and only what `main`, the tests, the
//! benches, the demo and the fuzzers need is public (the `pub use`s below).
//!
//! 1. Leaves
//!    - `http/`: the `Body` type; `headers` (`Connection` tokens); `limits` (header
//!      size, connection count, body size, idle timeout); `tls` (termination with a reloadable
//!      certificate and verified client certificates, outbound roots and the AS client certificate); `client` (the pooled
//!      hyper-util + rustls clients for discovery and JWKS; the connectors, TCP + rustls and unix, that `pool` connects with); `pool` (one origin's connections over `hyper::client::conn`, the upstream's and the AS's: a LIFO of
//!      idle HTTP/1.1 connections, given back when the response body is done, one shared HTTP/2 connection, one
//!      retry of a request that was never written); `trace`
//!      (`[tracing]`: the traced request's task-local context, child spans for the calls a request
//!      makes, W3C `traceparent` on outgoing requests; nothing when tracing is off).
//!    - `resilience/`: `breaker` (circuit breaker in front of the AS: closed → open → half-open
//!      probe); [`clock`] (wall clock behind a trait, so expiry is testable without sleeping).
//!    - `secret.rs`: a string that is never printed ([`config::Secret`]).
//!    - [`token`]: Bearer extraction (pure; the token is redacted in `Debug`).
//! 2. The stages' engines
//!    - [`policy`]: pure route table (first match, every reading of the path, normalised host)
//!      and decision (active, `exp`, `nbf`, token kind, issuer, audience, client, all-of and
//!      any-of scopes) → `Principal`, re-run on every request. **The scope check lives here**
//!      (`policy::evaluate`); the binding stage below is its second half.
//!    - [`introspection`]: `client` (RFC 7662 over `oauth2`, its settings, the lenient response
//!      type; RFC 9701 signed answers), `connections` (the AS's `http::pool` for the endpoint's
//!      origin), `answer` (the compact cached form the policy reads; a
//!      bounded interner), `discovery` (RFC 8414 / OIDC discovery of the endpoint and the
//!      `jwks_uri`, with background refresh), `jwt` (`[jwt]`: which token is checked locally,
//!      the RFC 9068 check, the RFC 9701 answer check, the cheap `iss` peek), `jwks` (the
//!      issuer's keys, parsed once per fetch: cached, refreshed, refetched on an unknown `kid`
//!      at most once per interval).
//!    - [`cache`]: `TokenCache` (moka keyed by SHA-256(token); fresh for ≤ min(max_ttl, `exp`),
//!      then revalidated; served stale (`stale_if_error`, never past `exp`) while the AS fails;
//!      negative cache) in `cache/mod.rs`: **the cache lookup**; `l1` (the entry and its
//!      lifetimes); `settings` (`[cache]`, `[cache.shared]`: the cache owns its settings);
//!      `flight` (single-flight, cancellation-safe); `fleet` (`[cache.shared]`:
//!      Redis/Valkey L2 behind the L1, HMAC keys, MAC'd values and expiry, timeout + breaker,
//!      fleet-wide purge over pub/sub with tombstones).
//!    - `policy/binding/`: the binding stage (`mod.rs`: is the token used by the sender its
//!      `cnf` binds it to? DPoP key or client certificate; downgrade protection, always on: a
//!      bound token never passes as a plain bearer token; the DPoP replay cache, local and
//!      fleet-wide), `dpop` (RFC 9449 proof checks, pure), `nonce` (stateless server nonces),
//!      `mtls` (RFC 8705: the client certificate from our TLS handshake, or from a trusted
//!      proxy's header, nginx PEM or Envoy XFCC).
//!    - [`upstream`]: `forward` (hop-by-hop and identity header rewrite, streaming call to the
//!      upstream over HTTP/1.1 or HTTP/2, TCP or a unix socket: **the upstream call**, through `http::pool`); `upgrade` (WebSocket tunnels: only `upgrade_protocols`, never h2c; closed at `exp`,
//!      idle timeout, shutdown).
//! 3. `ops/`: `metrics` (Prometheus), `readiness` (`/readyz`'s checks), `logfmt` (the log
//!    line's timestamp and field formatter), `otel` (`[tracing]`: OpenTelemetry set-up, the OTLP
//!    exporter, the request span in a subscriber of its own; `otel/settings`: the section and the
//!    `OTEL_*` variables).
//! 4. [`config`]: figment (defaults → TOML → `TOKENGATE_*` env) → `RawConfig` → `validate()` →
//!    `Settings`; [`reload`] (SIGHUP: `ArcSwap<Settings>` swap, cache TTLs, log format).
//! 5. `app/`: [`App`], the composition root: builds every subsystem from `Settings` and wires
//!    them (the fleet layer behind the cache, the breaker's readiness check, the reload handle);
//!    `issuers` (several authorization servers: an `Issuer` owns its introspection client,
//!    breaker, probe/discovery, metrics, JWT verifier and keys, and cache partition
//!    (`Issuer::cache_key`); the route (`[[routes]] issuer(s)`) or the default
//!    (`[introspection]`) admits it, a JWT picks among several by `iss`, never "try each AS").
//! 6. `pipeline/`, one file per stage of the diagram below: `mod.rs` (`handle`: one request,
//!    the mode switch, the access line), `access` (what the access line records), `traced` (the
//!    request span: made before, filled from the access line's facts after), `proxy`
//!    (proxy mode: request checks, then authorize, then the upstream call), `authorize` (route →
//!    token → **cache lookup** (local JWT check or the route's issuer) → policy → binding,
//!    shared by both modes), `forward_auth` (forward-auth
//!    mode: authorize the original request, answer 200 + identity; its `decide` is the one
//!    decision about a request another proxy describes), `ext_authz` (Envoy's gRPC
//!    `CheckRequest` → `forward_auth::decide` → `CheckResponse`), `front_proxy` (the front
//!    proxy's header conventions: nginx / Traefik / Envoy, `auto` refuses two), `reject` (one
//!    enum for every failure; the one exhaustive status/challenge mapping; JSON and gRPC
//!    rejections).
//! 7. `listen/` (`mod.rs`: [`run`]: accept loop, HTTP/1.1 + HTTP/2 (h2c, or TLS with ALPN),
//!    graceful drain (then the flush of the queued spans, `[tracing]`), starting each issuer's start-up probe of its introspection endpoint; `ext_authz`
//!    (`[ext_authz] listen`: the tonic gRPC server for `envoy.service.auth.v3.Authorization/Check`,
//!    h2c or TLS, drained with the proxy port) and `grpc_health` (`grpc.health.v1`, following
//!    readiness)) and `admin.rs` (`/healthz`, `/readyz`, `/metrics`, `POST /purge`).
//!
//! # One request
//! ```text
//! listen::run ── limits (connection slot, first bytes) ── accept ── [TLS: client certificate
//!   verified against tls.client_ca_file, its SHA-256 kept in the connection's Peer] ── pipeline::handle
//!                                                  (one `Settings` snapshot per request;
//!                                                  [tracing] on: inside the request span,
//!                                                  pipeline::traced, parent = traceparent)
//!  pipeline::proxy (proxy mode; forward-auth mode: pipeline::forward_auth, see below):
//!    (hyper: request head over limits.max_header_bytes → 431; CONNECT → 405)
//!    └─ http::limits::declared_too_large  Content-Length over limits.max_body_bytes → 413
//!    └─ upstream::forward::routing_host  two Hosts, or Host ≠ :authority / absolute-form
//!                                      target → 400; else the normalised host
//!    └─ upstream::forward::routing_method  override headers and `?_method`: routed on (POST only)
//!                                      with method_override = "route", else stripped below
//!  pipeline::authorize:
//!    └─ policy::RouteTable::select     first matching route (HEAD takes GET routes); public →
//!                                      skip to forward; path whose route depends on its
//!                                      reading (decoding, `;`, case, NFKC, trailing dots),
//!                                      or a lower-case standard method → 400
//!    └─ token::extract_with_scheme     header (Bearer; DPoP with dpop.enabled) / query / cookie;
//!                                      none → 401, malformed or two → 400
//!    └─ app::issuers::Issuers::pick    the route's issuer (or the default); several: a JWT's
//!                                      unverified iss picks one (at+jwt naming none, or any JWT
//!                                      naming an issuer not admitted → 401, no AS call), else the
//!                                      first: its cache key, its keys, its AS
//!    └─ cache::TokenCache::get_or_load hit / negative / miss or stale → single-flight (cache::flight) →
//!                                      (introspection::answer::Answer: the cached form the policy reads)
//!         └─ introspection::jwt::JwtVerifier::classify  (the issuer's jwt enabled) its at+jwt → local check
//!              (introspection::jwks: kid → key; signature, iss, exp, nbf, iat) instead of the AS
//!              call (hybrid, jwt.introspect: and then the AS call); refused (bad signature, wrong
//!              typ, foreign at+jwt) → inactive, no AS call; JWKS unknowable → 503; other tokens ↓
//!         └─ cache::fleet::Fleet::read_through  (with [cache.shared]) L2 GET (+ purge tombstone); miss → lock, then
//!              └─ app::issuers::Issuer::load → its Breaker::call → its Introspector, over
//!                                      introspection::connections' http::pool (answer naming
//!                                      another iss → inactive; response_format = "jwt": RFC 9701
//!                                      answer verified, else AS failure); SET PX
//!                                      AS failure → stale answer if allowed, else 503
//!    └─ policy::evaluate               not active, expired, wrong iss/aud/client → 401; scope → 403;
//!                                      AS failure → 503
//!    └─ policy::binding::Binder::check (cache hits too) cnf.jkt / token_type DPoP → DPoP scheme +
//!                                      valid proof (binding::dpop::verify, jti replay cache,
//!                                      fleet-wide SET NX) else 401; cnf x5t#S256 → matching client
//!                                      certificate (TLS, or mtls.client_cert_header from
//!                                      mtls.trusted_proxies: binding::mtls::client_certificate;
//!                                      unreadable → 400) else 401 → binding dpop|mtls|none
//!  pipeline::proxy, again:
//!    └─ upstream::upgrade::requested   Upgrade → only allowed protocols (never h2c), else stripped
//!    └─ upstream::forward::rewrite_request_headers (+ identity.binding_header) + Forwarder::send
//!                                      ([tracing] on: `upstream` span, its traceparent injected)
//!                                      → http::pool::OriginPool::send (an idle connection,
//!                                      else a new one; the unsent request once more if the
//!                                      upstream had closed it) → upstream, body streamed both ways
//!                                      (request body counted by http::limits::LimitedBody → 413;
//!                                      a 101 not naming an offered protocol → 502, dropped)
//!       └─ upstream::upgrade::Tunnels::spawn  on 101: join the two connections (holding the
//!                                      connection slot) until exp / idle / close / shutdown
//!  pipeline::handle, again:
//!    └─ pipeline::reject::ProxyError::rejection   any failure → status + WWW-Authenticate + JSON
//!                                      (gRPC request → grpc-status, reject::grpc_rejection_response)
//!    └─ ops::metrics::Metrics::observe_request  + one access log line (+ the request span's
//!                                      route, decision, cache, status: pipeline::traced::finish)
//! admin::serve (own listener): /healthz, /readyz, /metrics, POST /purge →
//!    cache::TokenCache::invalidate (→ fleet: L2 DEL + PUBLISH on tokengate:purge).
//! reload (SIGHUP in main): ReloadHandle::reload_from → validate → ArcSwap<Settings> swap.
//! forward-auth mode: pipeline::front_proxy::original (only `forward_auth.convention`'s headers;
//! auto: two conventions → 400; an override naming another method → 400: it cannot be
//! stripped) → the same route/token/cache/policy/binding → 200 + identity
//! (front_proxy::allowed) instead of forwarding; the access line logs the original method and path.
//! ext_authz (gRPC, own listener): ext_authz::serve → pipeline::ext_authz::check
//! (attributes.request.http → method, path with query, Host (forward::routing_host), headers;
//! unusable → 400 INVALID_ARGUMENT) → pipeline::forward_auth::decide (the same
//! override check, route, token, cache, policy as forward-auth mode) → OkHttpResponse (identity
//! headers to set, spoofable ones to remove) or DeniedHttpResponse (reject's status, challenge,
//! JSON body; gRPC status UNAUTHENTICATED / PERMISSION_DENIED / UNAVAILABLE / INVALID_ARGUMENT)
//! + one access line; grpc.health.v1 answers from ops::readiness.
//! ```
#![forbid(unsafe_code)]

// Layer 1, leaves: imported by everything above, import nothing of ours.
mod http;
mod resilience;
mod secret;
pub mod token;
// Layer 2, the stages' engines.
pub mod cache;
pub mod introspection;
pub mod policy;
pub mod upstream;
// Layer 3, operating the gate.
mod ops;
// Layer 4, configuration (and its reload).
pub mod config;
// Layers 5-7: the composition root, the request pipeline, the listeners.
mod admin;
mod app;
mod listen;
mod pipeline;

// What `main`, the integration tests, the benches, the demo and the fuzzers
// use, named here on purpose; everything else stays inside the crate.
pub use app::App;
pub use config::reload::{self, ReloadHandle};
pub use http::tls::TlsReloader;
/// For `bench-tools proxy-pool` (the bare proxy over tokengate's upstream
/// pool, the floor of the stack tokengate runs on), not an API.
#[doc(hidden)]
pub use http::{client::connector, pool::origin, pool::OriginPool, tls::ClientTls};
pub use listen::run;
/// For `benches/cache_hit.rs` (the metrics' cost per request), not an API.
#[doc(hidden)]
pub use ops::metrics::Metrics;
pub use ops::readiness::Readiness;
pub use resilience::clock;

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
