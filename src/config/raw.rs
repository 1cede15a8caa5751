//! The configuration exactly as the file and environment spell it: the
//! `Raw*` types that figment deserialises (unknown keys are errors), and
//! their defaults.

use crate::cache::settings::RawCache;
use crate::introspection::client::{AuthMethod, IntrospectionSettings, ProbeMode};
use crate::resilience::clock::duration_str;
use crate::secret::{string_or_number, Secret};
use crate::upstream::forward::MethodOverride;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Environment variable prefix; nested keys use `__`.
pub const ENV_PREFIX: &str = "TOKENGATE_";

/// `[forward_auth] convention`: the front proxy's header convention, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConventionSetting {
    /// The convention whose headers are present; two conventions → 400.
    #[default]
    Auto,
    Nginx,
    Traefik,
    Envoy,
}

impl ConventionSetting {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Nginx => "nginx",
            Self::Traefik => "traefik",
            Self::Envoy => "envoy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Proxy,
    /// Answer the auth sub-request of another proxy (nginx `auth_request`,
    /// Traefik ForwardAuth, Envoy `ext_authz`): 200/401/403/503, no upstream.
    ForwardAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// The configuration exactly as the file and environment spell it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub listen: String,
    pub upstream: String,
    pub mode: Mode,
    #[serde(with = "duration_str")]
    pub shutdown_timeout: Duration,
    pub introspection: RawIntrospection,
    pub cache: RawCache,
    pub identity: RawIdentity,
    pub log: RawLog,
    pub limits: RawLimits,
    pub resilience: RawResilience,
    pub policy: RawPolicy,
    pub routes: Vec<RawRoute>,
    pub token_sources: RawTokenSources,
    pub discovery: RawDiscovery,
    /// Speak HTTP/2 to the upstream: h2 (ALPN) over https, h2c over http or unix (gRPC).
    pub upstream_http2: bool,
    /// HTTP/1.1 Upgrade protocols a client may switch to (case-insensitive,
    /// `name` or `name/version`); any other is removed from the request. Never
    /// `h2c` or another HTTP (see `crate::upstream::upgrade`).
    pub upgrade_protocols: Vec<String>,
    pub tls: RawTls,
    pub upstream_tls: RawUpstreamTls,
    pub forward_auth: RawForwardAuth,
    pub admin: RawAdmin,
    pub forwarding: RawForwarding,
    pub mtls: RawMtls,
    /// `[jwt]`: JWT access tokens checked locally (RFC 9068), and the issuer
    /// whose keys verify signed introspection answers (RFC 9701).
    pub jwt: crate::introspection::jwt::RawJwt,
    /// `[issuers.<name>]`: authorization servers besides the default one
    /// (`[introspection]` / `[discovery]`), picked by `[[routes]] issuer`.
    /// A table keyed by name, so that `TOKENGATE_ISSUERS__<NAME>__...`
    /// reaches each key like any other (an array could not be addressed from
    /// the environment).
    pub issuers: std::collections::BTreeMap<String, RawIssuer>,
    pub dpop: RawDpop,
    pub ext_authz: RawExtAuthz,
    /// `[tracing]`: OpenTelemetry traces over OTLP (with the `OTEL_*` variables).
    pub tracing: crate::ops::otel::RawTracing,
    /// Things `load` decided that the operator should hear about (e.g. which
    /// of two secret sources is used); logged at INFO once logging is up.
    #[serde(skip)]
    pub notices: Vec<String>,
}

/// `[forwarding]`: what the upstream is told about the client, and which of the
/// client's own headers it may still see.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForwarding {
    /// CIDRs (or single addresses) of proxies in front of tokengate whose
    /// `X-Forwarded-For`, `Forwarded`, `X-Real-IP` and `X-Forwarded-Prefix` are
    /// kept (and appended to). From any other peer they are replaced or removed.
    pub trusted_proxies: Vec<String>,
    /// `X-HTTP-Method-Override` and friends: removed, or routed on.
    pub method_override: MethodOverride,
}

/// `[mtls]`: RFC 8705 certificate-bound tokens behind a TLS-terminating proxy
/// (or in forward-auth mode). The binding check itself is always on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMtls {
    /// The header a trusted proxy puts the client certificate in: nginx's
    /// URL-encoded PEM (`$ssl_client_escaped_cert`) or Envoy's
    /// `x-forwarded-client-cert`. Empty: none.
    pub client_cert_header: String,
    /// CIDRs (or addresses) allowed to send `client_cert_header`; from any
    /// other peer it is removed and ignored.
    pub trusted_proxies: Vec<String>,
}

/// `[dpop]`: DPoP proofs (RFC 9449). Whatever `enabled` says, a token whose
/// answer is bound to a key never passes without a valid proof for that key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDpop {
    /// Accept `Authorization: DPoP <token>` with a `DPoP: <proof>` header.
    pub enabled: bool,
    /// JWS algorithms a proof may use (asymmetric only).
    pub algorithms: Vec<String>,
    /// How old a proof's `iat` may be (plus a few seconds of skew either way).
    #[serde(with = "duration_str")]
    pub max_age: Duration,
    /// RFC 9449 §8 server nonces (`use_dpop_nonce` + `DPoP-Nonce`).
    pub require_nonce: bool,
    /// Pass the `DPoP` header on to the upstream (removed by default).
    pub forward_proof: bool,
    /// Proofs remembered for the replay check (restart-only).
    pub replay_cache_entries: u64,
}

impl Default for RawDpop {
    fn default() -> Self {
        Self {
            enabled: true,
            algorithms: ["ES256", "ES384", "PS256", "RS256", "EdDSA"]
                .map(String::from)
                .to_vec(),
            max_age: Duration::from_secs(60),
            require_nonce: false,
            forward_proof: false,
            replay_cache_entries: 100_000,
        }
    }
}

/// `[admin]`: the operations listener (`/healthz`, `/readyz`, `/metrics`, `POST /purge`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Empty: no admin listener.
    pub listen: String,
    /// Bearer secret for `POST /purge`; required when `listen` is not loopback.
    pub purge_secret_file: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            purge_secret_file: String::new(),
        }
    }
}

/// `[tls]`: TLS termination for `listen` (both empty: plain HTTP).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA certificates that client certificates must chain to; set: ask
    /// every client for a certificate (RFC 8705 certificate-bound tokens).
    pub client_ca_file: String,
    /// `optional` (a client without a certificate still connects) or
    /// `required` (the handshake fails without one). Only with `client_ca_file`.
    pub client_auth: crate::http::tls::ClientAuth,
}

/// `[upstream_tls]`: trust for https upstreams and the AS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    /// PEM CA certificates added to the webpki roots (private CAs).
    pub ca_file: String,
}

/// `[forward_auth]`: only read when `mode = "forward_auth"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForwardAuth {
    /// The front proxy's header convention: `nginx`, `traefik`, `envoy`, or
    /// `auto` (the default; refuses a sub-request with two conventions'
    /// headers). See [`crate::pipeline::forward_auth`].
    pub convention: ConventionSetting,
    /// Envoy `ext_authz` `path_prefix`: removed from the request path to get the
    /// original path (convention `envoy`, or `auto` without nginx / Traefik headers).
    pub path_prefix: String,
}

/// `[policy]`: requirements for every authenticated request without a route
/// override.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    pub require_audience: Vec<String>,
    pub require_issuer: String,
    pub require_scopes: Vec<String>,
    /// At least one of these (besides all of `require_scopes`).
    pub require_any_scope: Vec<String>,
    pub allow_clients: Vec<String>,
}

/// One `[[routes]]` entry. A requirement that is set replaces the `[policy]`
/// default for this route; one that is absent inherits it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path_prefix: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    #[serde(default)]
    pub public: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_audience: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_any_scope: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_clients: Option<Vec<String>>,
    /// The `[issuers.<name>]` that introspects this route's tokens; empty:
    /// the default (`[introspection]`), also spelt `"default"`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// The issuers this route admits (the first one introspects opaque
    /// tokens; a JWT picks among them by `iss`). Empty: `issuer` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<String>,
}

impl RawRoute {
    /// A token route for `path_prefix` that inherits every `[policy]` default
    /// (what a `[[routes]]` entry with only `path_prefix` means).
    pub fn new(path_prefix: impl Into<String>) -> Self {
        Self {
            path_prefix: path_prefix.into(),
            methods: Vec::new(),
            host: String::new(),
            public: false,
            require_audience: None,
            require_issuer: None,
            require_scopes: None,
            require_any_scope: None,
            allow_clients: None,
            issuer: String::new(),
            issuers: Vec::new(),
        }
    }

    /// A public route for `path_prefix`: no token needed.
    pub fn public(path_prefix: impl Into<String>) -> Self {
        Self {
            public: true,
            ..Self::new(path_prefix)
        }
    }
}

/// `[token_sources]`: where else a token may come from (the header always works).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokenSources {
    /// Query parameter name (RFC 6750 §2.3), e.g. "access_token"; empty: off.
    pub query_param: String,
    /// Cookie name; empty: off.
    pub cookie: String,
}

/// `[discovery]`: find the introspection endpoint from the AS metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDiscovery {
    pub issuer: String,
    #[serde(with = "duration_str")]
    pub refresh_interval: Duration,
}

impl Default for RawDiscovery {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            refresh_interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIntrospection {
    pub url: String,
    #[serde(deserialize_with = "string_or_number")]
    pub client_id: String,
    pub client_secret: Secret,
    pub client_secret_file: String,
    pub auth_method: AuthMethod,
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// PEM client certificate for mTLS to the AS (RFC 8705 `tls_client_auth`).
    pub client_cert_file: String,
    pub client_key_file: String,
    /// Start-up probe of the endpoint (restart-only).
    pub probe: ProbeMode,
    /// `json` (RFC 7662) or `jwt` (RFC 9701 signed answers; restart-only).
    pub response_format: crate::introspection::client::ResponseFormat,
}

impl RawIntrospection {
    /// The validated client settings, from what validation built (the
    /// endpoint, the secret, the TLS client) and the keys taken as they are:
    /// the default issuer's and every named issuer's, the same way.
    pub(crate) fn settings(
        &self,
        url: Option<oauth2::IntrospectionUrl>,
        client_secret: Secret,
        tls: crate::http::tls::ClientTls,
    ) -> IntrospectionSettings {
        IntrospectionSettings {
            url,
            client_id: self.client_id.clone(),
            client_secret,
            auth_method: self.auth_method,
            timeout: self.timeout,
            tls,
            probe: self.probe,
            response_format: self.response_format,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdentity {
    pub subject_header: String,
    pub client_id_header: String,
    pub scope_header: String,
    pub strip_headers: Vec<String>,
    pub forward_authorization: bool,
    /// How the token was bound, for the upstream: `dpop`, `mtls` or `none`.
    /// How the token was bound to its sender (`dpop`, `mtls`, `none`); inbound
    /// copies are removed.
    pub binding_header: String,
    /// Header name → claim name (`a.b` for nested), e.g. "X-Auth-Email" = "email".
    pub claims: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: LogFormat,
    /// One line per request (`tokengate::access`); off for operators whose
    /// front proxy already logs every request. Errors are logged either way.
    pub access: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Longest accepted Bearer token, in bytes.
    pub max_token_bytes: usize,
    /// Largest request head (request line + headers), in bytes (→ 431).
    pub max_header_bytes: usize,
    /// Most client connections open at once; 0: unlimited.
    pub max_connections: usize,
    /// Largest request body, in bytes (→ 413); 0: unlimited.
    pub max_body_bytes: u64,
    /// How long a client connection may sit without sending a request head.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// An upgraded (WebSocket) tunnel with no byte either way for this long is closed.
    #[serde(with = "duration_str")]
    pub tunnel_idle_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawResilience {
    /// Time to the upstream's response headers (→ 504).
    #[serde(with = "duration_str")]
    pub upstream_timeout: Duration,
    /// TCP connect to the upstream (→ 502). A slow TLS handshake counts
    /// against `upstream_timeout` instead.
    #[serde(with = "duration_str")]
    pub upstream_connect_timeout: Duration,
    /// `Retry-After` seconds on a 503.
    pub retry_after_secs: u32,
    /// Serve a cached answer this long past its TTL while the AS fails; "0s": off.
    #[serde(with = "duration_str")]
    pub stale_if_error: Duration,
    /// Consecutive AS failures that open the circuit; 0: no breaker.
    pub breaker_failures: u32,
    #[serde(with = "duration_str")]
    pub breaker_open_for: Duration,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            upstream: "http://127.0.0.1:3000".into(),
            mode: Mode::Proxy,
            shutdown_timeout: Duration::from_secs(30),
            introspection: RawIntrospection::default(),
            cache: RawCache::default(),
            identity: RawIdentity::default(),
            log: RawLog::default(),
            limits: RawLimits::default(),
            resilience: RawResilience::default(),
            policy: RawPolicy::default(),
            routes: Vec::new(),
            token_sources: RawTokenSources::default(),
            discovery: RawDiscovery::default(),
            admin: RawAdmin::default(),
            upstream_http2: false,
            upgrade_protocols: vec!["websocket".into()],
            tls: RawTls::default(),
            upstream_tls: RawUpstreamTls::default(),
            forward_auth: RawForwardAuth::default(),
            forwarding: RawForwarding::default(),
            mtls: RawMtls::default(),
            jwt: Default::default(),
            issuers: Default::default(),
            dpop: RawDpop::default(),
            ext_authz: RawExtAuthz::default(),
            tracing: crate::ops::otel::RawTracing::default(),
            notices: Vec::new(),
        }
    }
}

impl Default for RawForwarding {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            method_override: MethodOverride::Strip,
        }
    }
}

impl Default for RawIntrospection {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: String::new(),
            auth_method: AuthMethod::ClientSecretBasic,
            timeout: Duration::from_secs(2),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            probe: ProbeMode::Require,
            response_format: Default::default(),
        }
    }
}

impl Default for RawIdentity {
    fn default() -> Self {
        Self {
            subject_header: "X-Auth-Subject".into(),
            client_id_header: "X-Auth-Client-Id".into(),
            scope_header: "X-Auth-Scope".into(),
            strip_headers: vec![
                "X-Forwarded-User".into(),
                "X-Remote-User".into(),
                "X-User".into(),
            ],
            forward_authorization: true,
            binding_header: "X-Auth-Token-Binding".into(),
            claims: Default::default(),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            access: true,
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_token_bytes: crate::token::DEFAULT_MAX_TOKEN_BYTES,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            max_body_bytes: 0,
            idle_timeout: Duration::from_secs(75),
            tunnel_idle_timeout: Duration::from_secs(3600),
        }
    }
}

impl Default for RawResilience {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(5),
            retry_after_secs: 5,
            stale_if_error: Duration::from_secs(30),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(10),
        }
    }
}

/// One `[issuers.<name>]` table, as the file and environment spell it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIssuer {
    /// The `iss` this AS puts in its tokens and introspection answers
    /// (exact string). An answer naming another issuer is refused.
    pub issuer: String,
    /// Same keys as `[introspection]`.
    pub introspection: RawIntrospection,
    /// Same keys as `[discovery]`: set `issuer` here instead of
    /// `introspection.url` to find the endpoint from the AS metadata.
    pub discovery: RawDiscovery,
    /// Same keys as `[jwt]`; `issuer` defaults to this table's `issuer`,
    /// `jwks_url` to the `jwks_uri` of this issuer's metadata.
    pub jwt: crate::introspection::jwt::RawJwt,
}

/// `[ext_authz]`: Envoy's external authorization over gRPC
/// (`envoy.service.auth.v3.Authorization/Check`), on its own listener.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawExtAuthz {
    /// Empty: no gRPC listener. Otherwise an IP and a port (h2c, or TLS with `tls`).
    pub listen: String,
    /// Serve TLS on `listen` with the `[tls]` certificate and key (which must be set).
    pub tls: bool,
}
