//! Configuration: built-in defaults → TOML file (`--config` / `TOKENGATE_CONFIG`)
//! → `TOKENGATE_*` environment, merged by figment into [`RawConfig`], then
//! [`RawConfig::validate`] turns it into typed [`Settings`]. The key names are a
//! contract with operators (`shared/design/CONFIG.md`); do not rename them.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use http::{HeaderName, Uri};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod reload;

pub use crate::introspection::client::{AuthMethod, IntrospectionSettings, ProbeMode};
use crate::secret::string_or_number;
pub use crate::secret::Secret;
pub use crate::upstream::forward::{IdentitySettings, MethodOverride, Upstream};

/// Environment variable prefix; nested keys use `__`.
pub const ENV_PREFIX: &str = "TOKENGATE_";

/// Secret-bearing keys are read from the environment as raw strings, outside
/// figment's literal parsing, so that `000123` stays `000123` and not the integer 123.
const RAW_ENV_KEYS: &[(&str, &str)] = &[
    (
        "INTROSPECTION__CLIENT_SECRET",
        "introspection.client_secret",
    ),
    ("INTROSPECTION__CLIENT_ID", "introspection.client_id"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Rendered by [`describe`]: every error, each with its key and its source.
    #[error("{}", describe(.0))]
    Load(Box<figment::Error>),
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("`{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// "`cache.max_ttl` from environment variable TOKENGATE_CACHE__MAX_TTL: invalid
/// duration ..." — the key an operator must fix and where it came from.
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = match &e.metadata {
                None => "built-in defaults".to_owned(),
                Some(md) => match &md.source {
                    Some(figment::Source::File(p)) => format!("file {}", p.display()),
                    _ if md.name.contains(ENV_PREFIX) && !key.is_empty() => format!(
                        "environment variable {ENV_PREFIX}{}",
                        key.to_ascii_uppercase().replace('.', "__")
                    ),
                    _ => md.name.to_string(),
                },
            };
            let kind = match &e.kind {
                // figment's own text nests backticks (``expected `one of `a`, `b```);
                // say it plainly, with the closest known key.
                figment::error::Kind::UnknownField(found, known) => unknown_key(found, known),
                other => other.to_string(),
            };
            if key.is_empty() {
                format!("{kind} (in {source})")
            } else {
                format!("`{key}` from {source}: {kind}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// "unknown key `client_idd`; did you mean `client_id`? (known keys here: `url`, ...)".
fn unknown_key(found: &str, known: &[&str]) -> String {
    let mut msg = format!("unknown key `{found}`");
    if let Some(near) = closest(found, known) {
        msg.push_str(&format!("; did you mean `{near}`?"));
    }
    if !known.is_empty() {
        let list = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        msg.push_str(&format!(" (known keys here: {list})"));
    }
    msg
}

/// The known key nearest to `found` (edit distance, case-insensitive), if it
/// is near enough to be a typo: at most 2 edits, or a third of the length.
fn closest<'a>(found: &str, known: &[&'a str]) -> Option<&'a str> {
    let found = found.to_ascii_lowercase();
    let limit = 2.max(found.chars().count() / 3);
    known
        .iter()
        .map(|k| (edit_distance(&found, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (insert, delete, substitute), over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl ConfigError {
    fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            message: message.into(),
        }
    }
}

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

/// Durations are strings such as "250ms", "2s", "5m" (humantime syntax).
mod duration_str {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        use serde::de::Error;
        // A bare number (`max_ttl = 300`, or `TOKENGATE_CACHE__MAX_TTL=300`)
        // has no unit: say how to write it instead of "expected a string".
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Str(String),
            // Any number (integers too: serde's untagged buffer reads them as f64).
            Number(f64),
        }
        let s = match Raw::deserialize(d)? {
            Raw::Str(s) => s,
            Raw::Number(n) => {
                return Err(D::Error::custom(format!(
                    "a duration is a string with a unit, e.g. \"{n}s\", not the number {n}"
                )))
            }
        };
        humantime::parse_duration(s.trim()).map_err(|e| {
            D::Error::custom(format!(
                "invalid duration {s:?} ({e}); use e.g. \"250ms\", \"2s\", \"5m\""
            ))
        })
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
    pub allow_clients: Option<Vec<String>>,
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
            allow_clients: None,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    #[serde(with = "duration_str")]
    pub max_ttl: Duration,
    pub max_entries: u64,
    #[serde(with = "duration_str")]
    pub negative_ttl: Duration,
    pub negative_max_entries: u64,
    /// `[cache.shared]`: the fleet's L2 (see `fleet.rs`); off while `url` is empty.
    pub shared: RawSharedCache,
}

/// `[cache.shared]`: a Redis/Valkey L2 cache and purge fan-out shared by replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSharedCache {
    /// `redis://`, `rediss://` (TLS), `valkey://`, `valkeys://`; empty: off.
    pub url: RedisUrl,
    /// HMAC key for L2 keys and values, shared by every replica.
    pub key_secret_file: String,
    /// Each Redis call; past it the request goes on without Redis.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// A short `SET NX` lock so that replicas that see a new token at once
    /// introspect it about once between them.
    pub single_flight: bool,
}

impl Default for RawSharedCache {
    fn default() -> Self {
        Self {
            url: RedisUrl::default(),
            key_secret_file: String::new(),
            timeout: Duration::from_millis(200),
            single_flight: true,
        }
    }
}

/// A Redis URL; `Debug` and `Serialize` (`--check-config`) mask its password.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(pub String);

impl RedisUrl {
    fn masked(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("[redacted]"));
                u.to_string()
            }
            Ok(_) => self.0.clone(),
            // Unparsable: it may still hold a password, so show none of it.
            Err(_) if self.0.is_empty() => String::new(),
            Err(_) => "[unparsable, redacted]".into(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.masked(), f)
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// `[cache.shared]`, validated.
#[derive(Clone)]
pub struct SharedCacheSettings {
    pub url: RedisUrl,
    /// The HMAC key (≥ 16 bytes).
    pub key_secret: Secret,
    pub timeout: Duration,
    pub single_flight: bool,
    /// `[upstream_tls] ca_file`, trusted by `rediss://` in addition to the
    /// system roots (empty without a `ca_file`).
    pub ca_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl fmt::Debug for SharedCacheSettings {
    // By hand so the CA certificates show as a count, not as pages of hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCacheSettings")
            .field("url", &self.url)
            .field("key_secret", &self.key_secret)
            .field("timeout", &self.timeout)
            .field("single_flight", &self.single_flight)
            .field("ca_roots", &self.ca_roots.len())
            .finish()
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
    /// Header name → claim name (`a.b` for nested), e.g. "X-Auth-Email" = "email".
    pub claims: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: LogFormat,
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
        }
    }
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(300),
            max_entries: 100_000,
            negative_ttl: Duration::from_secs(10),
            negative_max_entries: 10_000,
            shared: RawSharedCache::default(),
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
            claims: Default::default(),
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
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

/// Validated, typed settings: what the rest of the program uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub shutdown_timeout: Duration,
    pub introspection: IntrospectionSettings,
    pub cache: RawCache,
    pub identity: IdentitySettings,
    pub log_format: LogFormat,
    pub max_token_bytes: usize,
    pub upstream_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub retry_after_secs: u32,
    pub stale_if_error: Duration,
    pub breaker_failures: u32,
    pub breaker_open_for: Duration,
    pub limits: crate::http::limits::Limits,
    /// `upgrade_protocols`: what an HTTP/1.1 Upgrade may switch to.
    pub upgrade_protocols: crate::upstream::upgrade::UpgradeProtocols,
    pub routes: crate::policy::RouteTable,
    pub token_sources: crate::token::TokenSources,
    pub discovery: Option<DiscoverySettings>,
    pub mode: Mode,
    /// `[tls]`: `Some` when `listen` terminates TLS.
    pub tls: Option<crate::http::tls::ServerTlsSettings>,
    /// Outbound TLS to the upstream (`[upstream_tls]`).
    pub upstream_tls: crate::http::tls::ClientTls,
    /// `[forward_auth] path_prefix`, normalised: empty or "/x" without a trailing '/'.
    pub forward_auth_prefix: String,
    /// `[forward_auth] convention`.
    pub forward_auth_convention: ConventionSetting,
    /// `[cache.shared]`; `None` when `url` is empty.
    pub shared_cache: Option<SharedCacheSettings>,
    pub admin: AdminSettings,
    pub forwarding: ForwardingSettings,
}

/// `[forwarding]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingSettings {
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub method_override: MethodOverride,
}

impl ForwardingSettings {
    /// Whether `peer` is a proxy whose forwarding headers we keep.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// `None`: no admin listener (`admin.listen = ""`).
    pub listen: Option<SocketAddr>,
    /// `None`: `POST /purge` needs no credentials (loopback listener only).
    pub purge_secret: Option<Secret>,
}

impl AdminSettings {
    /// Purge lets its caller force re-introspection of any token: off the
    /// loopback interface that must not be anonymous. Checked at start-up and,
    /// against the running listener, on every reload.
    pub fn check_purge_secret(&self) -> Result<(), ConfigError> {
        match self.listen {
            Some(addr) if !addr.ip().is_loopback() && self.purge_secret.is_none() => {
                Err(ConfigError::invalid(
                    "admin.purge_secret_file",
                    format!("is required when admin.listen ({addr}) is not a loopback address"),
                ))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    /// Must equal the metadata's `issuer` exactly (RFC 8414 §3.3).
    pub issuer: String,
    pub refresh_interval: Duration,
}

/// Loads the configuration: defaults, then `file` (which must exist if given),
/// then `TOKENGATE_*` environment variables.
pub fn load(file: Option<&Path>) -> Result<RawConfig, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = file {
        // `file_exact` alone would report a missing file as a generic I/O error
        // without the path; say plainly which file is missing.
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.to_owned()));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    let generic = Env::prefixed(ENV_PREFIX).split("__").filter(|k| {
        let k = k.as_str().to_ascii_uppercase();
        // TOKENGATE_CONFIG names the file; it is not a setting. Kubernetes
        // injects TOKENGATE_PORT* and TOKENGATE_SERVICE_* for a Service named
        // "tokengate" (service links); they are not settings either.
        k != "CONFIG"
            && !k.starts_with("PORT")
            && !k.starts_with("SERVICE_")
            && !RAW_ENV_KEYS.iter().any(|(raw, _)| *raw == k)
    });
    fig = fig.merge(generic);
    for (suffix, key) in RAW_ENV_KEYS {
        if let Ok(v) = std::env::var(format!("{ENV_PREFIX}{suffix}")) {
            fig = fig.merge(Serialized::default(key, v));
        }
    }
    let mut raw = fig
        .extract::<RawConfig>()
        .map_err(|e| ConfigError::Load(Box::new(e)))?;
    prefer_env_secret(&mut raw);
    Ok(raw)
}

/// The client secret given in the environment replaces the other form from the
/// file: `TOKENGATE_INTROSPECTION__CLIENT_SECRET` wins over a `client_secret_file`
/// in the TOML, and `TOKENGATE_INTROSPECTION__CLIENT_SECRET_FILE` over a
/// `client_secret`, as the environment wins over the file for every other key
/// (so a baked config with a secret file can be overridden with `-e`). Both
/// forms in the same source stay an error (`validate`).
fn prefer_env_secret(raw: &mut RawConfig) {
    let i = &mut raw.introspection;
    if i.client_secret.is_empty() || i.client_secret_file.is_empty() {
        return;
    }
    let in_env = |suffix: &str| {
        std::env::var_os(format!("{ENV_PREFIX}{suffix}")).is_some_and(|v| !v.is_empty())
    };
    match (
        in_env("INTROSPECTION__CLIENT_SECRET"),
        in_env("INTROSPECTION__CLIENT_SECRET_FILE"),
    ) {
        (true, false) => {
            i.client_secret_file.clear();
            raw.notices.push(format!(
                "introspection.client_secret: using {ENV_PREFIX}INTROSPECTION__CLIENT_SECRET; \
                 the config file's client_secret_file is ignored"
            ));
        }
        (false, true) => {
            i.client_secret = Secret::default();
            raw.notices.push(format!(
                "introspection.client_secret: using the file named by \
                 {ENV_PREFIX}INTROSPECTION__CLIENT_SECRET_FILE; the config file's client_secret is ignored"
            ));
        }
        _ => {}
    }
}

impl RawConfig {
    /// Checks every value and resolves files (`client_secret_file`).
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let listen = parse_listen("listen", &self.listen)?;
        let mut upstream = parse_upstream(&self.upstream)?;
        upstream.http2 = self.upstream_http2;
        // Read once: the same private CA serves the upstream, the AS and rediss://.
        let ca_roots = self.ca_roots()?;
        let (tls, upstream_tls, as_tls) = self.tls_settings(&ca_roots)?;
        let forward_auth_prefix = {
            let p = self.forward_auth.path_prefix.trim_end_matches('/');
            if !p.is_empty() && !p.starts_with('/') {
                return Err(ConfigError::invalid(
                    "forward_auth.path_prefix",
                    format!("{p:?} must start with '/'"),
                ));
            }
            // A prefix is Envoy's alone: with another convention it would do
            // nothing, which is a mistake in the file, not a choice.
            use ConventionSetting as C;
            let convention = self.forward_auth.convention;
            if !p.is_empty() && matches!(convention, C::Nginx | C::Traefik) {
                return Err(ConfigError::invalid(
                    "forward_auth.path_prefix",
                    format!(
                        "is only used with forward_auth.convention = \"envoy\" (or \"auto\"), not {:?}",
                        convention.as_str()
                    ),
                ));
            }
            p.to_owned()
        };

        let i = &self.introspection;
        let discovery = if self.discovery.issuer.is_empty() {
            None
        } else {
            let issuer = &self.discovery.issuer;
            let ok = url::Url::parse(issuer)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
            if !ok {
                return Err(ConfigError::invalid(
                    "discovery.issuer",
                    format!("{issuer:?} is not an http(s) URL without a query"),
                ));
            }
            Some(DiscoverySettings {
                issuer: issuer.clone(),
                refresh_interval: self.discovery.refresh_interval.max(Duration::from_secs(1)),
            })
        };
        if discovery.is_some() && !i.url.is_empty() {
            // Otherwise the background refresh would silently replace the URL
            // the operator wrote down.
            return Err(ConfigError::invalid(
                "discovery.issuer",
                "set either introspection.url or discovery.issuer, not both",
            ));
        }
        let url = if i.url.is_empty() {
            if discovery.is_none() {
                return Err(ConfigError::invalid(
                    "introspection.url",
                    // Names the variables too: the container image's baked
                    // config leaves the URL out on purpose, and a container
                    // is configured through its environment.
                    "is required: the RFC 7662 introspection endpoint of your authorization server. \
                     Set it in the config file or with TOKENGATE_INTROSPECTION__URL=https://..., \
                     or set discovery.issuer (TOKENGATE_DISCOVERY__ISSUER) to find it by OpenID discovery",
                ));
            }
            None
        } else {
            let url = oauth2::IntrospectionUrl::new(i.url.clone()).map_err(|e| {
                ConfigError::invalid("introspection.url", format!("{:?}: {e}", i.url))
            })?;
            if !matches!(url.url().scheme(), "http" | "https") {
                return Err(ConfigError::invalid(
                    "introspection.url",
                    "must be http:// or https://",
                ));
            }
            Some(url)
        };
        if i.client_id.is_empty() {
            return Err(ConfigError::invalid(
                "introspection.client_id",
                "is required",
            ));
        }
        let client_secret = match (i.client_secret.is_empty(), i.client_secret_file.is_empty()) {
            (false, false) => return Err(ConfigError::invalid(
                "introspection.client_secret_file",
                "set either client_secret or client_secret_file, not both (in the environment, \
                     TOKENGATE_INTROSPECTION__CLIENT_SECRET replaces a client_secret_file from the \
                     config file)",
            )),
            (true, true) => {
                return Err(ConfigError::invalid(
                    "introspection.client_secret",
                    "is required (or client_secret_file)",
                ))
            }
            (false, true) => i.client_secret.clone(),
            (true, false) => {
                read_secret_file("introspection.client_secret_file", &i.client_secret_file)?
            }
        };
        if i.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "introspection.timeout",
                "must be greater than 0",
            ));
        }
        if self.cache.max_entries == 0 {
            return Err(ConfigError::invalid(
                "cache.max_entries",
                "must be at least 1",
            ));
        }
        if self.limits.max_token_bytes == 0 {
            return Err(ConfigError::invalid(
                "limits.max_token_bytes",
                "must be at least 1",
            ));
        }
        let l = &self.limits;
        if l.max_header_bytes < crate::http::limits::MIN_HEADER_BYTES {
            return Err(ConfigError::invalid(
                "limits.max_header_bytes",
                format!("must be at least {}", crate::http::limits::MIN_HEADER_BYTES),
            ));
        }
        if l.idle_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "limits.idle_timeout",
                "must be greater than 0",
            ));
        }
        // No "0s = off": a tunnel on a public route would then live forever.
        if l.tunnel_idle_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "limits.tunnel_idle_timeout",
                "must be greater than 0 (a long value such as \"24h\" keeps quiet tunnels open)",
            ));
        }
        let upgrade_protocols =
            crate::upstream::upgrade::UpgradeProtocols::parse(&self.upgrade_protocols)
                .map_err(|e| ConfigError::invalid("upgrade_protocols", e))?;
        if self.resilience.breaker_failures > 0 && self.resilience.breaker_open_for.is_zero() {
            return Err(ConfigError::invalid(
                "resilience.breaker_open_for",
                "must be greater than 0 (set breaker_failures = 0 to turn the breaker off)",
            ));
        }
        if self.resilience.upstream_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "resilience.upstream_timeout",
                "must be greater than 0",
            ));
        }

        let id = &self.identity;
        let header = |key: &'static str, v: &str| {
            HeaderName::try_from(v)
                .map_err(|_| ConfigError::invalid(key, format!("{v:?} is not a valid header name")))
        };
        let subject_header = header("identity.subject_header", &id.subject_header)?;
        let client_id_header = header("identity.client_id_header", &id.client_id_header)?;
        let scope_header = header("identity.scope_header", &id.scope_header)?;
        let mut strip = vec![
            subject_header.clone(),
            client_id_header.clone(),
            scope_header.clone(),
        ];
        for h in &id.strip_headers {
            strip.push(header("identity.strip_headers", h)?);
        }
        let mut claims = Vec::new();
        for (h, claim) in &id.claims {
            let name = header("identity.claims", h)?;
            if claim.is_empty() {
                return Err(ConfigError::invalid(
                    "identity.claims",
                    format!("{h:?} maps to an empty claim name"),
                ));
            }
            strip.push(name.clone());
            claims.push((name, claim.clone()));
        }
        strip.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        strip.dedup();

        let routes = self.route_table()?;
        // rediss:// trusts the same private CA as the upstream and the AS.
        let redis_roots = if self.cache.shared.url.0.is_empty() {
            Vec::new()
        } else {
            ca_roots
        };
        let shared_cache = validate_shared_cache(&self.cache.shared, redis_roots)?;
        let ts = &self.token_sources;
        if !ts.query_param.is_empty() && !is_token_char_str(&ts.query_param) {
            return Err(ConfigError::invalid(
                "token_sources.query_param",
                format!("{:?} is not a valid parameter name", ts.query_param),
            ));
        }
        if !ts.cookie.is_empty() && !is_token_char_str(&ts.cookie) {
            return Err(ConfigError::invalid(
                "token_sources.cookie",
                format!("{:?} is not a valid cookie name", ts.cookie),
            ));
        }
        let token_sources = crate::token::TokenSources {
            query_param: (!ts.query_param.is_empty()).then(|| ts.query_param.clone()),
            cookie: (!ts.cookie.is_empty()).then(|| ts.cookie.clone()),
        };

        let admin = self.admin_settings(listen)?;
        let forwarding = self.forwarding_settings()?;

        Ok(Settings {
            listen,
            upstream,
            shutdown_timeout: self.shutdown_timeout,
            introspection: IntrospectionSettings {
                url,
                client_id: i.client_id.clone(),
                client_secret,
                auth_method: i.auth_method,
                timeout: i.timeout,
                tls: as_tls,
                probe: i.probe,
            },
            cache: self.cache.clone(),
            identity: IdentitySettings {
                subject_header,
                client_id_header,
                scope_header,
                strip,
                forward_authorization: id.forward_authorization,
                claims,
            },
            log_format: self.log.format,
            max_token_bytes: self.limits.max_token_bytes,
            upstream_timeout: self.resilience.upstream_timeout,
            upstream_connect_timeout: self.resilience.upstream_connect_timeout,
            retry_after_secs: self.resilience.retry_after_secs,
            stale_if_error: self.resilience.stale_if_error,
            breaker_failures: self.resilience.breaker_failures,
            breaker_open_for: self.resilience.breaker_open_for,
            limits: crate::http::limits::Limits {
                max_header_bytes: l.max_header_bytes,
                max_connections: (l.max_connections > 0).then_some(l.max_connections),
                max_body_bytes: (l.max_body_bytes > 0).then_some(l.max_body_bytes),
                idle_timeout: l.idle_timeout,
                tunnel_idle_timeout: l.tunnel_idle_timeout,
            },
            upgrade_protocols,
            routes,
            token_sources,
            discovery,
            mode: self.mode,
            tls,
            upstream_tls,
            forward_auth_prefix,
            forward_auth_convention: self.forward_auth.convention,
            shared_cache,
            admin,
            forwarding,
        })
    }

    fn forwarding_settings(&self) -> Result<ForwardingSettings, ConfigError> {
        let f = &self.forwarding;
        let trusted_proxies = f
            .trusted_proxies
            .iter()
            .map(|s| {
                let s = s.trim();
                // A bare address is a /32 (or /128).
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        ConfigError::invalid(
                            "forwarding.trusted_proxies",
                            format!("{s:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\")"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ForwardingSettings {
            trusted_proxies,
            method_override: f.method_override,
        })
    }

    fn admin_settings(&self, listen: SocketAddr) -> Result<AdminSettings, ConfigError> {
        let a = &self.admin;
        let admin_listen = if a.listen.trim().is_empty() {
            None
        } else {
            let addr = parse_listen("admin.listen", &a.listen)?;
            if addr.port() != 0 && addr == listen {
                return Err(ConfigError::invalid(
                    "admin.listen",
                    "must differ from listen: the admin endpoints never share the proxy's port",
                ));
            }
            Some(addr)
        };
        let purge_secret = if a.purge_secret_file.is_empty() {
            None
        } else {
            Some(read_secret_file(
                "admin.purge_secret_file",
                &a.purge_secret_file,
            )?)
        };
        let admin = AdminSettings {
            listen: admin_listen,
            purge_secret,
        };
        admin.check_purge_secret()?;
        Ok(admin)
    }

    /// `[upstream_tls] ca_file`, read (empty when unset).
    fn ca_roots(&self) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ConfigError> {
        if self.upstream_tls.ca_file.is_empty() {
            return Ok(Vec::new());
        }
        crate::http::tls::load_certs(Path::new(&self.upstream_tls.ca_file))
            .map_err(|e| ConfigError::invalid("upstream_tls.ca_file", e.to_string()))
    }

    /// `[tls]`, `[upstream_tls]` and the AS client certificate: every file is
    /// read now, so a bad certificate or key stops start-up with the key's name.
    fn tls_settings(
        &self,
        roots: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<
        (
            Option<crate::http::tls::ServerTlsSettings>,
            crate::http::tls::ClientTls,
            crate::http::tls::ClientTls,
        ),
        ConfigError,
    > {
        use crate::http::tls;
        let t = &self.tls;
        let server = match (t.cert_file.is_empty(), t.key_file.is_empty()) {
            (true, true) => None,
            (false, true) | (true, false) => {
                return Err(ConfigError::invalid(
                    if t.cert_file.is_empty() {
                        "tls.cert_file"
                    } else {
                        "tls.key_file"
                    },
                    "set both tls.cert_file and tls.key_file, or neither",
                ))
            }
            (false, false) => {
                let (cert, key) = (PathBuf::from(&t.cert_file), PathBuf::from(&t.key_file));
                let loaded = tls::ServerTlsSettings::load(&cert, &key).map_err(|e| {
                    let k = match e {
                        tls::TlsError::Certificates { .. }
                        | tls::TlsError::NoCertificate { .. } => "tls.cert_file",
                        _ => "tls.key_file",
                    };
                    ConfigError::invalid(k, e.to_string())
                })?;
                Some(loaded)
            }
        };
        let upstream = tls::ClientTls::new(roots, None)
            .map_err(|e| ConfigError::invalid("upstream_tls.ca_file", e.to_string()))?;
        let i = &self.introspection;
        let client_auth = match (i.client_cert_file.is_empty(), i.client_key_file.is_empty()) {
            (true, true) => None,
            (false, true) | (true, false) => {
                return Err(ConfigError::invalid(
                    if i.client_cert_file.is_empty() {
                        "introspection.client_cert_file"
                    } else {
                        "introspection.client_key_file"
                    },
                    "set both introspection.client_cert_file and client_key_file, or neither",
                ))
            }
            (false, false) => {
                let certs = tls::load_certs(Path::new(&i.client_cert_file)).map_err(|e| {
                    ConfigError::invalid("introspection.client_cert_file", e.to_string())
                })?;
                let key = tls::load_key(Path::new(&i.client_key_file)).map_err(|e| {
                    ConfigError::invalid("introspection.client_key_file", e.to_string())
                })?;
                Some((certs, key))
            }
        };
        let auth = tls::ClientTls::new(roots, client_auth)
            .map_err(|e| ConfigError::invalid("introspection.client_key_file", e.to_string()))?;
        Ok((server, upstream, auth))
    }

    /// Compiles `[policy]` and `[[routes]]` into the ordered route table.
    fn route_table(&self) -> Result<crate::policy::RouteTable, ConfigError> {
        use crate::policy::{normalize_path, Access, Requirements, Route, RouteTable};
        use std::sync::Arc;
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let p = &self.policy;
        let defaults = Requirements {
            audience: p.require_audience.clone(),
            issuer: non_empty(&p.require_issuer),
            scopes: p.require_scopes.clone(),
            clients: p.allow_clients.clone(),
        };
        let mut routes = Vec::with_capacity(self.routes.len());
        for (n, r) in self.routes.iter().enumerate() {
            let name = format!("routes[{n}]");
            if !r.path_prefix.starts_with('/') {
                return Err(ConfigError::invalid(
                    "routes.path_prefix",
                    format!("{name}: {:?} must start with '/'", r.path_prefix),
                ));
            }
            let mut methods = Vec::new();
            for m in &r.methods {
                let m = http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                    .map_err(|_| {
                        ConfigError::invalid(
                            "routes.methods",
                            format!("{name}: {m:?} is not a method"),
                        )
                    })?;
                methods.push(m);
            }
            let overrides = r.require_audience.is_some()
                || r.require_issuer.is_some()
                || r.require_scopes.is_some()
                || r.allow_clients.is_some();
            let access = if r.public {
                if overrides {
                    return Err(ConfigError::invalid(
                        "routes.public",
                        format!("{name} is public but also sets requirements; a public route checks no token"),
                    ));
                }
                Access::Public
            } else {
                Access::Token(Arc::new(Requirements {
                    audience: r
                        .require_audience
                        .clone()
                        .unwrap_or_else(|| defaults.audience.clone()),
                    issuer: match &r.require_issuer {
                        Some(i) => non_empty(i),
                        None => defaults.issuer.clone(),
                    },
                    scopes: r
                        .require_scopes
                        .clone()
                        .unwrap_or_else(|| defaults.scopes.clone()),
                    clients: r
                        .allow_clients
                        .clone()
                        .unwrap_or_else(|| defaults.clients.clone()),
                }))
            };
            if r.host.contains([':', '/']) {
                return Err(ConfigError::invalid(
                    "routes.host",
                    format!("{name}: {:?} must be a bare host name (no port, no scheme); ports are ignored when matching", r.host),
                ));
            }
            // Compared with the request's host as `normalize_host` spells it
            // (lower case, no trailing dot), so `admin.example.com.` here
            // means the same as in a request.
            let host = match crate::policy::normalize_host(&r.host) {
                Ok(h) => h.map(|(h, _)| h),
                Err(_) => {
                    return Err(ConfigError::invalid(
                        "routes.host",
                        format!("{name}: {:?} is not a host name (letters, digits, '-', '_' and dots; use punycode for non-ASCII names)", r.host),
                    ))
                }
            };
            routes.push(Route {
                name,
                path_prefix: normalize_path(&r.path_prefix),
                methods,
                host,
                access,
            });
        }
        Ok(RouteTable {
            routes,
            default: Route {
                name: "default".into(),
                path_prefix: "/".into(),
                methods: Vec::new(),
                host: None,
                access: Access::Token(Arc::new(defaults)),
            },
        })
    }

    /// The effective settings as TOML, secrets redacted (for `--check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// `[cache.shared]`: the URL must parse, and the HMAC key must be there and
/// long enough, because a guessable key would let a Redis dump confirm tokens.
fn validate_shared_cache(
    raw: &RawSharedCache,
    ca_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
) -> Result<Option<SharedCacheSettings>, ConfigError> {
    if raw.url.0.is_empty() {
        return Ok(None);
    }
    let scheme_ok = url::Url::parse(&raw.url.0).is_ok_and(|u| {
        matches!(u.scheme(), "redis" | "rediss" | "valkey" | "valkeys") && u.has_host()
    });
    // `Client::open` only parses; it does not connect.
    if !scheme_ok || redis::Client::open(raw.url.0.as_str()).is_err() {
        return Err(ConfigError::invalid(
            "cache.shared.url",
            format!(
                "{:?} is not a redis://, rediss://, valkey:// or valkeys:// URL with a host",
                raw.url
            ),
        ));
    }
    if raw.key_secret_file.is_empty() {
        return Err(ConfigError::invalid(
            "cache.shared.key_secret_file",
            "is required when cache.shared.url is set (e.g. `openssl rand -hex 32`), the same file on every replica",
        ));
    }
    let key_secret = read_secret_file("cache.shared.key_secret_file", &raw.key_secret_file)?;
    if key_secret.expose().len() < 16 {
        return Err(ConfigError::invalid(
            "cache.shared.key_secret_file",
            "must hold at least 16 bytes (e.g. `openssl rand -hex 32`)",
        ));
    }
    if let Some(why) = weak_key(key_secret.expose()) {
        return Err(ConfigError::invalid(
            "cache.shared.key_secret_file",
            format!(
                "{} ({why}): generate one with `openssl rand -hex 32`, the same on every replica",
                raw.key_secret_file
            ),
        ));
    }
    if raw.timeout.is_zero() {
        return Err(ConfigError::invalid(
            "cache.shared.timeout",
            "must be greater than 0",
        ));
    }
    Ok(Some(SharedCacheSettings {
        url: raw.url.clone(),
        key_secret,
        timeout: raw.timeout,
        single_flight: raw.single_flight,
        ca_roots,
    }))
}

/// Placeholders that our examples ship (deploy/kubernetes/*) or that people
/// type, lower-cased with everything but letters and digits removed: a key
/// that contains one was pasted, not generated. A random key contains none.
const PLACEHOLDER_MARKERS: &[&str] = &[
    "replaceme",
    "changeme",
    "placeholder",
    "example",
    "opensslrand",
    "password",
    "secret",
];

/// Why `key` is not a usable HMAC key for the shared cache, without echoing
/// it: a placeholder, or a key with so little variety that it was typed, not
/// generated (a guessable key lets a Redis dump confirm tokens offline).
///
/// Not "fewer than 16 distinct bytes": a real `openssl rand -hex 32` key has
/// only 16 possible digits and lacks one of them about one time in four.
/// The thresholds below refuse a random hex key of 64 characters with odds
/// below 1e-18 (a 16-character one, 1 in 90, and that one is short anyway).
fn weak_key(key: &str) -> Option<&'static str> {
    let folded: String = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if PLACEHOLDER_MARKERS.iter().any(|m| folded.contains(m)) {
        return Some("it is a placeholder, not a key");
    }
    let bytes = key.as_bytes();
    let mut seen = [false; 256];
    for &b in bytes {
        seen[usize::from(b)] = true;
    }
    if seen.iter().filter(|s| **s).count() < 8 {
        return Some("it has fewer than 8 distinct characters");
    }
    // "abcdabcd…", "0123456701234567": a short unit repeated.
    let n = bytes.len();
    if (1..=n / 2).any(|p| bytes.iter().skip(p).zip(bytes).all(|(a, b)| a == b)) {
        return Some("it is a short sequence repeated");
    }
    // "abcdefghijklmnop", "0123456789012345", "zyxw…": mostly neighbours.
    let steps = bytes
        .windows(2)
        .filter(|w| w[0].abs_diff(w[1]) == 1)
        .count();
    if steps * 4 > (n - 1) * 3 {
        return Some("it is a run of consecutive characters");
    }
    None
}

/// RFC 9110 `token` characters: what a parameter or cookie name may contain.
fn is_token_char_str(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A listen address is an IP and a port. A host name is refused, with the
/// spelling to use: `localhost` resolves to `::1` and `127.0.0.1` (in an order
/// that depends on the system), so binding "the first" would leave clients of
/// the other unanswered; and a listener that depends on DNS at start-up is a
/// surprise.
fn parse_listen(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|e| {
        let hint = match value.trim().rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => format!(
                "a listen address is an IP address and a port, not a host name: write \"127.0.0.1:{port}\" (this machine only), \"0.0.0.0:{port}\" (every IPv4 interface) or \"[::]:{port}\" (every interface)"
            ),
            _ => "write an IP address and a port, e.g. \"0.0.0.0:8080\" or \"[::1]:8080\"".to_owned(),
        };
        ConfigError::invalid(key, format!("{value:?} is not a socket address ({e}); {hint}"))
    })
}

fn read_secret_file(key: &'static str, path: &str) -> Result<Secret, ConfigError> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {path}: {e}")))?;
    // Files written by `echo` or editors end in a newline that is not part of the secret.
    let s = raw.trim_end_matches(['\n', '\r']);
    if s.is_empty() {
        return Err(ConfigError::invalid(key, format!("{path} is empty")));
    }
    Ok(Secret::new(s))
}

fn parse_upstream(s: &str) -> Result<Upstream, ConfigError> {
    let key = "upstream";
    if let Some(path) = s.strip_prefix("unix:") {
        // `unix:/run/app.sock`; `unix:///run/app.sock` is accepted too.
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return Err(ConfigError::invalid(
                key,
                format!("{s:?}: the socket path must be absolute, e.g. unix:/run/app.sock"),
            ));
        }
        return Ok(Upstream {
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("localhost"),
            base_path: String::new(),
            unix_socket: Some(PathBuf::from(path)),
            http2: false,
        });
    }
    let uri: Uri = s
        .parse()
        .map_err(|e| ConfigError::invalid(key, format!("{s:?} is not a URL ({e})")))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| {
        ConfigError::invalid(key, format!("{s:?} needs a scheme: http:// or https://"))
    })?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(ConfigError::invalid(
            key,
            format!("scheme {scheme} is not supported; use http://, https:// or unix:/path.sock"),
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| ConfigError::invalid(key, format!("{s:?} has no host")))?;
    if uri.query().is_some() {
        return Err(ConfigError::invalid(key, "must not have a query string"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream {
        scheme,
        authority,
        base_path,
        unix_socket: None,
        http2: false,
    })
}

#[cfg(test)]
#[allow(clippy::type_complexity, clippy::result_large_err)] // table tests; figment::Jail's error type
mod tests {
    use super::*;
    use figment::Jail;

    fn minimal_env(jail: &mut Jail) {
        jail.set_env("TOKENGATE_INTROSPECTION__URL", "http://as.test/introspect");
        jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_ID", "tokengate");
        jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_SECRET", "000123");
    }

    #[test]
    fn env_overrides_defaults_and_numeric_secret_stays_a_string() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            jail.set_env("TOKENGATE_CONFIG", "ignored-here.toml");
            // Kubernetes service links for a Service named "tokengate".
            jail.set_env("TOKENGATE_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("TOKENGATE_PORT_8080_TCP_ADDR", "10.0.0.1");
            jail.set_env("TOKENGATE_SERVICE_HOST", "10.0.0.1");
            let raw = load(None).map_err(|e| e.to_string())?;
            assert_eq!(raw.introspection.client_secret.expose(), "000123");
            let s = raw.validate().map_err(|e| e.to_string())?;
            assert_eq!(s.cache.max_ttl, Duration::from_secs(300));
            assert!(
                !format!("{s:?}").contains("000123"),
                "secret leaked in Debug"
            );
            assert!(
                !format!("{raw:?}").contains("000123"),
                "secret leaked in Debug"
            );
            assert!(
                !raw.to_redacted_toml().contains("000123"),
                "secret leaked in --check-config"
            );
            Ok(())
        });
    }

    #[test]
    fn file_then_env_precedence_and_durations() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            jail.create_file(
                "t.toml",
                r#"
                listen = "127.0.0.1:9999"
                [cache]
                max_ttl = "90s"
                negative_ttl = "250ms"
                "#,
            )?;
            jail.set_env("TOKENGATE_CACHE__MAX_TTL", "2m");
            let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(raw.listen, "127.0.0.1:9999");
            assert_eq!(
                raw.cache.max_ttl,
                Duration::from_secs(120),
                "env wins over file"
            );
            assert_eq!(raw.cache.negative_ttl, Duration::from_millis(250));
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key_and_the_source() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            jail.create_file("t.toml", "[cache]\nmax_tll = \"5m\"\n")?;
            let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
            assert!(err.contains("max_tll") && err.contains("t.toml"), "{err}");

            let err = load(Some(Path::new("nope.toml"))).unwrap_err().to_string();
            assert!(
                err.contains("nope.toml") && err.contains("does not exist"),
                "{err}"
            );

            jail.set_env("TOKENGATE_CACHE__MAX_TTL", "soon");
            let err = load(None).unwrap_err().to_string();
            assert!(
                err.contains("`cache.max_ttl`") && err.contains("TOKENGATE_CACHE__MAX_TTL"),
                "{err}"
            );
            Ok(())
        });
    }

    fn base() -> RawConfig {
        let mut c = RawConfig::default();
        c.introspection.url = "http://as.test/introspect".into();
        c.introspection.client_id = "tokengate".into();
        c.introspection.client_secret = Secret::new("s");
        c
    }

    #[test]
    fn validation_failures() {
        type Mutation = Box<dyn Fn(&mut RawConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "introspection.url",
                Box::new(|c| c.introspection.url.clear()),
            ),
            (
                "introspection.url",
                Box::new(|c| c.introspection.url = "ftp://as/x".into()),
            ),
            (
                "introspection.client_id",
                Box::new(|c| c.introspection.client_id.clear()),
            ),
            (
                "introspection.client_secret",
                Box::new(|c| c.introspection.client_secret = Secret::default()),
            ),
            (
                "introspection.client_secret_file",
                Box::new(|c| c.introspection.client_secret_file = "/x".into()),
            ),
            ("upstream", Box::new(|c| c.upstream = "ftp://x".into())),
            (
                "upstream",
                Box::new(|c| c.upstream = "127.0.0.1:3000".into()),
            ),
            ("listen", Box::new(|c| c.listen = "nowhere".into())),
            (
                "upstream",
                Box::new(|c| c.upstream = "unix:relative.sock".into()),
            ),
            (
                "forward_auth.path_prefix",
                Box::new(|c| c.forward_auth.path_prefix = "ext_authz".into()),
            ),
            (
                "forward_auth.path_prefix",
                Box::new(|c| {
                    c.forward_auth.convention = ConventionSetting::Traefik;
                    c.forward_auth.path_prefix = "/ext_authz".into();
                }),
            ),
            (
                "tls.key_file",
                Box::new(|c| c.tls.cert_file = "/etc/tls.crt".into()),
            ),
            (
                "upstream_tls.ca_file",
                Box::new(|c| c.upstream_tls.ca_file = "/nonexistent/ca.pem".into()),
            ),
            (
                "identity.scope_header",
                Box::new(|c| c.identity.scope_header = "bad header".into()),
            ),
            ("cache.max_entries", Box::new(|c| c.cache.max_entries = 0)),
            ("admin.listen", Box::new(|c| c.admin.listen = "9090".into())),
            (
                "admin.listen",
                Box::new(|c| {
                    c.listen = "127.0.0.1:8080".into();
                    c.admin.listen = "127.0.0.1:8080".into();
                }),
            ),
            (
                "admin.purge_secret_file",
                Box::new(|c| c.admin.listen = "0.0.0.0:9090".into()),
            ),
            (
                "admin.purge_secret_file",
                Box::new(|c| c.admin.purge_secret_file = "/nonexistent/secret".into()),
            ),
            (
                "limits.max_header_bytes",
                Box::new(|c| c.limits.max_header_bytes = 4096),
            ),
            (
                "limits.idle_timeout",
                Box::new(|c| c.limits.idle_timeout = Duration::ZERO),
            ),
            (
                "limits.tunnel_idle_timeout",
                Box::new(|c| c.limits.tunnel_idle_timeout = Duration::ZERO),
            ),
            (
                "upgrade_protocols",
                Box::new(|c| c.upgrade_protocols = vec!["websocket".into(), "h2c".into()]),
            ),
            (
                "upgrade_protocols",
                Box::new(|c| c.upgrade_protocols = vec!["web socket".into()]),
            ),
            (
                "resilience.breaker_open_for",
                Box::new(|c| c.resilience.breaker_open_for = Duration::ZERO),
            ),
            (
                "discovery.issuer",
                Box::new(|c| c.discovery.issuer = "https://as.example".into()),
            ),
            (
                "routes.host",
                Box::new(|c| {
                    c.routes = vec![RawRoute {
                        host: "api.example.com:8080".into(),
                        ..RawRoute::public("/")
                    }]
                }),
            ),
            (
                "routes.host",
                Box::new(|c| {
                    c.routes = vec![RawRoute {
                        host: "bücher.example".into(),
                        ..RawRoute::public("/")
                    }]
                }),
            ),
            (
                "routes.host",
                Box::new(|c| {
                    c.routes = vec![RawRoute {
                        host: "api..example.com".into(),
                        ..RawRoute::public("/")
                    }]
                }),
            ),
        ];
        for (key, mutate) in cases {
            let mut c = base();
            mutate(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.contains(key),
                "expected an error naming {key}, got {err}"
            );
        }
    }

    /// A route's host is spelt as requests are compared (issue 12 item 7):
    /// lower case, without the trailing dot of a fully qualified name.
    #[test]
    fn route_host_is_normalised_like_a_request_host() {
        let mut c = base();
        c.routes = vec![RawRoute {
            host: "Admin.Example.COM.".into(),
            ..RawRoute::public("/")
        }];
        let s = c.validate().unwrap();
        assert_eq!(
            s.routes.routes[0].host.as_deref(),
            Some("admin.example.com")
        );
    }

    #[test]
    fn resilience_and_limit_keys_defaults_and_zero_means_off() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            let s = load(None)
                .and_then(|r| r.validate())
                .map_err(|e| e.to_string())?;
            assert_eq!(s.stale_if_error, Duration::from_secs(30));
            assert_eq!(s.breaker_failures, 5);
            assert_eq!(s.breaker_open_for, Duration::from_secs(10));
            assert_eq!(s.limits.max_header_bytes, 65536);
            assert_eq!(s.limits.max_connections, Some(10_000));
            assert_eq!(s.limits.max_body_bytes, None);
            assert_eq!(s.limits.idle_timeout, Duration::from_secs(75));
            assert_eq!(s.limits.tunnel_idle_timeout, Duration::from_secs(3600));
            assert_eq!(
                s.upgrade_protocols,
                crate::upstream::upgrade::UpgradeProtocols::default()
            );

            jail.set_env("TOKENGATE_RESILIENCE__STALE_IF_ERROR", "0s");
            jail.set_env("TOKENGATE_RESILIENCE__BREAKER_FAILURES", "0");
            jail.set_env("TOKENGATE_LIMITS__MAX_CONNECTIONS", "0");
            jail.set_env("TOKENGATE_LIMITS__MAX_BODY_BYTES", "1048576");
            jail.set_env("TOKENGATE_LIMITS__IDLE_TIMEOUT", "5s");
            jail.set_env("TOKENGATE_LIMITS__TUNNEL_IDLE_TIMEOUT", "10m");
            jail.set_env(
                "TOKENGATE_UPGRADE_PROTOCOLS",
                "[\"WebSocket\", \"example/1\"]",
            );
            let s = load(None)
                .and_then(|r| r.validate())
                .map_err(|e| e.to_string())?;
            assert_eq!(s.stale_if_error, Duration::ZERO);
            assert_eq!(s.breaker_failures, 0);
            assert_eq!(s.limits.max_connections, None);
            assert_eq!(s.limits.max_body_bytes, Some(1_048_576));
            assert_eq!(s.limits.idle_timeout, Duration::from_secs(5));
            assert_eq!(s.limits.tunnel_idle_timeout, Duration::from_secs(600));
            assert!(s.upgrade_protocols.allows(b"websocket"));
            assert!(s.upgrade_protocols.allows(b"Example/1"));
            assert!(!s.upgrade_protocols.allows(b"example/2"));
            Ok(())
        });
    }

    #[test]
    fn shared_cache_keys_validate_and_the_url_password_never_prints() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            jail.create_file("short", "tooshort\n")?;
            jail.create_file("key", "4e9b1f07c3a85d26e0f7b4a19c3d82e5\n")?;
            jail.create_file(
                "t.toml",
                "[cache.shared]\nurl = \"rediss://tg:pw-123@redis.example:6380/2\"\nkey_secret_file = \"key\"\ntimeout = \"150ms\"\n",
            )?;
            let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            let s = raw.validate().map_err(|e| e.to_string())?;
            let shared = s.shared_cache.as_ref().expect("on");
            assert_eq!(shared.timeout, Duration::from_millis(150));
            assert!(shared.single_flight);
            for shown in [format!("{raw:?}"), format!("{s:?}"), raw.to_redacted_toml()] {
                assert!(!shown.contains("pw-123"), "password leaked: {shown}");
                assert!(!shown.contains("4e9b1f07c3a85d26"), "key leaked");
            }
            assert!(raw.to_redacted_toml().contains("redis.example:6380"));
            assert!(shared.ca_roots.is_empty(), "no upstream_tls.ca_file");

            // rediss:// gets [upstream_tls] ca_file; Debug shows a count, not the DER.
            let ca = rcgen::CertificateParams::new(vec!["redis.example".to_owned()])
                .and_then(|p| p.self_signed(&rcgen::KeyPair::generate()?))
                .map_err(|e| e.to_string())?;
            jail.create_file("ca.pem", &ca.pem())?;
            jail.set_env("TOKENGATE_UPSTREAM_TLS__CA_FILE", "ca.pem");
            let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            let s = raw.validate().map_err(|e| e.to_string())?;
            let shared = s.shared_cache.as_ref().expect("on");
            assert_eq!(shared.ca_roots.len(), 1);
            assert_eq!(shared.ca_roots[0].as_ref(), ca.der().as_ref());
            let shown = format!("{shared:?}");
            assert!(
                shown.contains("ca_roots: 1") && !shown.contains("pw-123"),
                "{shown}"
            );
            jail.set_env("TOKENGATE_UPSTREAM_TLS__CA_FILE", "");

            jail.create_file("typo.toml", "[cache.shared]\nurll = \"redis://r\"\n")?;
            let err = load(Some(Path::new("typo.toml"))).unwrap_err().to_string();
            assert!(err.contains("urll"), "{err}");

            let cases: [(&str, &str, &str); 4] = [
                ("http://redis:6379", "key", "cache.shared.url"),
                ("redis://redis:6379", "", "cache.shared.key_secret_file"),
                (
                    "redis://redis:6379",
                    "short",
                    "cache.shared.key_secret_file",
                ),
                (
                    "redis://redis:6379",
                    "missing",
                    "cache.shared.key_secret_file",
                ),
            ];
            for (url, file, key) in cases {
                let mut c = base();
                c.cache.shared.url = RedisUrl(url.into());
                c.cache.shared.key_secret_file = file.into();
                let err = c.validate().unwrap_err().to_string();
                assert!(err.contains(key), "{url} {file}: {err}");
            }
            assert!(
                base().validate().unwrap().shared_cache.is_none(),
                "off by default"
            );
            Ok(())
        });
    }

    /// The placeholder HMAC key that deploy/kubernetes/fleet.yaml shipped was
    /// accepted (it is 42 bytes long); it and every other weak key is now
    /// refused with a message that names the key and says what to do, and
    /// never shows the key itself.
    #[test]
    fn weak_shared_cache_keys_are_refused() {
        let refused = [
            "replace-me-with-openssl-rand-hex-32-output", // fleet.yaml, before
            "REPLACE_ME_REPLACE_ME",
            "change-me-change-me-change-me",
            "my-fleet-secret-2026-v1",
            "example-key-0123456789",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "0000000000000000",
            "1111222233334444",
            "abababababababababab",
            "k3Y9q!Zpk3Y9q!Zp",
            "abcdefghijklmnopqrstuvwxyz",
            "0123456789012345678901234567890123456789",
            "ZYXWVUTSRQPONMLKJIHGFEDCBA",
        ];
        for key in refused {
            assert!(weak_key(key).is_some(), "{key:?} accepted");
        }
        let accepted = [
            // `openssl rand -hex 32`, `openssl rand -base64 32`, and a 16-byte
            // hex key that happens to miss several digits.
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "q3Jd0b5Xh2v8mZ6pW1cN4tKsR9yLfAe7Gu+oHi/TlE0=",
            "deadbeefc0ffee1234567890abcdef0f",
        ];
        for key in accepted {
            assert_eq!(weak_key(key), None, "{key:?} refused");
        }

        Jail::expect_with(|jail| {
            let key = "replace-me-with-openssl-rand-hex-32-output";
            jail.create_file("fleet-key", &format!("{key}\n"))?;
            let mut c = base();
            c.cache.shared.url = RedisUrl("redis://redis:6379/0".into());
            c.cache.shared.key_secret_file =
                jail.directory().join("fleet-key").display().to_string();
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.contains("cache.shared.key_secret_file")
                    && err.contains("placeholder")
                    && err.contains("openssl rand -hex 32"),
                "{err}"
            );
            assert!(!err.contains(key), "the key is in the message: {err}");
            // A generated key passes.
            jail.create_file("fleet-key", &format!("{}\n", accepted[0]))?;
            assert!(c
                .validate()
                .map_err(|e| e.to_string())?
                .shared_cache
                .is_some());
            Ok(())
        });
    }

    #[test]
    fn secret_file_is_read_and_trimmed() {
        Jail::expect_with(|jail| {
            jail.create_file("secret", "s3cr3t\n")?;
            let mut c = base();
            c.introspection.client_secret = Secret::default();
            c.introspection.client_secret_file =
                jail.directory().join("secret").display().to_string();
            let s = c.validate().map_err(|e| e.to_string())?;
            assert_eq!(s.introspection.client_secret.expose(), "s3cr3t");
            Ok(())
        });
    }

    #[test]
    fn admin_defaults_loopback_and_secret() {
        let s = base().validate().unwrap();
        assert_eq!(s.admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(s.admin.purge_secret.is_none());
        let mut c = base();
        c.admin.listen = String::new();
        assert!(c.validate().unwrap().admin.listen.is_none(), "empty: off");
        Jail::expect_with(|jail| {
            jail.create_file("purge", "p-secret\n")?;
            let mut c = base();
            c.admin.listen = "0.0.0.0:9090".into();
            c.admin.purge_secret_file = jail.directory().join("purge").display().to_string();
            let s = c.validate().map_err(|e| e.to_string())?;
            let secret = s.admin.purge_secret.as_ref().map(Secret::expose);
            assert_eq!(secret, Some("p-secret"));
            assert!(!format!("{s:?}").contains("p-secret"), "secret in Debug");
            Ok(())
        });
    }

    #[test]
    fn upstream_base_path_and_identity_strip_list() {
        let mut c = base();
        c.upstream = "https://api.internal:8443/v1/".into();
        let s = c.validate().unwrap();
        assert_eq!(s.upstream.base_path, "/v1");
        assert_eq!(s.upstream.authority.as_str(), "api.internal:8443");
        assert!(s.identity.strip.iter().any(|h| h == "x-auth-subject"));
        assert!(s.identity.strip.iter().any(|h| h == "x-remote-user"));
    }

    /// The README's sample: `client_secret_file` in the file, the secret in
    /// `TOKENGATE_INTROSPECTION__CLIENT_SECRET`. The env var wins (used to fail
    /// with "set either ... not both"); the choice is reported.
    #[test]
    fn an_env_secret_replaces_the_files_secret_file() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            jail.create_file(
                "t.toml",
                "[introspection]\nclient_secret_file = \"/run/secrets/tokengate\"\n",
            )?;
            let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(raw.introspection.client_secret.expose(), "000123");
            assert!(raw.introspection.client_secret_file.is_empty());
            let s = raw.validate().map_err(|e| e.to_string())?;
            assert_eq!(s.introspection.client_secret.expose(), "000123");
            assert_eq!(raw.notices.len(), 1, "{:?}", raw.notices);
            assert!(
                raw.notices[0].contains("TOKENGATE_INTROSPECTION__CLIENT_SECRET")
                    && raw.notices[0].contains("client_secret_file")
                    && !raw.notices[0].contains("000123"),
                "{:?}",
                raw.notices
            );
            Ok(())
        });
    }

    /// The other way round: a secret file named in the environment replaces a
    /// `client_secret` written in the file.
    #[test]
    fn an_env_secret_file_replaces_the_files_secret() {
        Jail::expect_with(|jail| {
            jail.set_env("TOKENGATE_INTROSPECTION__URL", "http://as.test/introspect");
            jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_ID", "tokengate");
            jail.create_file("secret", "from-file\n")?;
            let secret = jail.directory().join("secret");
            jail.set_env(
                "TOKENGATE_INTROSPECTION__CLIENT_SECRET_FILE",
                secret.display(),
            );
            jail.create_file("t.toml", "[introspection]\nclient_secret = \"baked\"\n")?;
            let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            let s = raw.validate().map_err(|e| e.to_string())?;
            assert_eq!(s.introspection.client_secret.expose(), "from-file");
            assert_eq!(raw.notices.len(), 1, "{:?}", raw.notices);
            Ok(())
        });
    }

    /// Both forms from one source is still ambiguous: refused, and the
    /// message says what the environment can do instead.
    #[test]
    fn both_secret_forms_in_one_source_are_refused() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_SECRET_FILE", "/x");
            let err = load(None)
                .map_err(|e| e.to_string())?
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains("not both"), "{err}");
            jail.clear_env();
            jail.set_env("TOKENGATE_INTROSPECTION__URL", "http://as.test/introspect");
            jail.set_env("TOKENGATE_INTROSPECTION__CLIENT_ID", "tokengate");
            jail.create_file(
                "t.toml",
                "[introspection]\nclient_secret = \"a\"\nclient_secret_file = \"/x\"\n",
            )?;
            let raw = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            let err = raw.validate().unwrap_err().to_string();
            assert!(
                err.contains("not both") && err.contains("TOKENGATE_INTROSPECTION__CLIENT_SECRET"),
                "{err}"
            );
            assert!(raw.notices.is_empty());
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_reads_cleanly_and_suggests_the_near_one() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            jail.create_file("t.toml", "[introspection]\nclientid = \"x\"\n")?;
            let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
            assert!(
                err.contains("`introspection.clientid` from file")
                    && err.contains("unknown key `clientid`; did you mean `client_id`?"),
                "{err}"
            );
            assert!(err.contains("known keys here: `url`, `client_id`"), "{err}");
            assert!(!err.contains("``") && !err.contains("`one of"), "{err}");
            // Nothing near: no guess.
            jail.create_file("t.toml", "[cache]\nbanana = 1\n")?;
            let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
            assert!(
                err.contains("unknown key `banana`") && !err.contains("did you mean"),
                "{err}"
            );
            // In the environment too (top level).
            jail.set_env("TOKENGATE_LISTNE", "127.0.0.1:1");
            let err = load(None).unwrap_err().to_string();
            assert!(err.contains("did you mean `listen`?"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest("clientid", &["url", "client_id"]),
            Some("client_id")
        );
        assert_eq!(
            closest("MAX_TLL", &["max_ttl", "max_entries"]),
            Some("max_ttl")
        );
        assert_eq!(closest("zzz", &["url", "client_id"]), None);
    }

    #[test]
    fn a_number_where_a_duration_goes_says_durations_are_strings() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            jail.create_file("t.toml", "[cache]\nmax_ttl = 300\n")?;
            let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
            assert!(
                err.contains("`cache.max_ttl`") && err.contains("\"300s\""),
                "{err}"
            );
            jail.create_file("t.toml", "[cache]\nmax_ttl = 1.5\n")?;
            let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
            assert!(err.contains("\"1.5s\""), "{err}");
            jail.create_file("t.toml", "")?;
            jail.set_env("TOKENGATE_CACHE__MAX_TTL", "300");
            let err = load(Some(Path::new("t.toml"))).unwrap_err().to_string();
            assert!(
                err.contains("TOKENGATE_CACHE__MAX_TTL") && err.contains("\"300s\""),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_host_name_listen_address_says_how_to_write_it() {
        let mut c = base();
        c.listen = "localhost:8080".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("`listen`")
                && err.contains("not a host name")
                && err.contains("\"127.0.0.1:8080\"")
                && err.contains("\"0.0.0.0:8080\""),
            "{err}"
        );
        let mut c = base();
        c.admin.listen = "localhost:9090".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("`admin.listen`") && err.contains("\"127.0.0.1:9090\""),
            "{err}"
        );
        let mut c = base();
        c.listen = " [::1]:8080 ".into();
        assert_eq!(c.validate().unwrap().listen, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn probe_mode_parses_and_defaults_to_require() {
        Jail::expect_with(|jail| {
            minimal_env(jail);
            let raw = load(None).map_err(|e| e.to_string())?;
            assert_eq!(raw.introspection.probe, ProbeMode::Require);
            jail.set_env("TOKENGATE_INTROSPECTION__PROBE", "warn");
            let s = load(None)
                .map_err(|e| e.to_string())?
                .validate()
                .map_err(|e| e.to_string())?;
            assert_eq!(s.introspection.probe, ProbeMode::Warn);
            jail.set_env("TOKENGATE_INTROSPECTION__PROBE", "sometimes");
            let err = load(None).unwrap_err().to_string();
            assert!(
                err.contains("`introspection.probe`") && err.contains("require"),
                "{err}"
            );
            Ok(())
        });
    }
}
