//! The validated configuration that the rest of the program reads. Each
//! subsystem owns its own settings type where it can (introspection, upstream);
//! [`Settings`] composes them.

use super::error::*;
use super::raw::*;
use crate::cache::settings::{CacheSettings, SharedCacheSettings};
use crate::introspection::client::IntrospectionSettings;
pub use crate::introspection::discovery::DiscoverySettings;
use crate::secret::Secret;
use crate::upstream::forward::{IdentitySettings, MethodOverride, Upstream};
use std::net::SocketAddr;
use std::time::Duration;

/// Validated, typed settings: what the rest of the program uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub shutdown_timeout: Duration,
    pub introspection: IntrospectionSettings,
    pub cache: CacheSettings,
    pub identity: IdentitySettings,
    pub log_format: LogFormat,
    /// `log.access`: write the access line (read per request, so a reload applies at once).
    pub log_access: bool,
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
    /// `[mtls]`: where a client certificate may come from besides our own TLS.
    pub mtls: crate::policy::binding::mtls::MtlsSettings,
    /// `[jwt]`: `Some` when JWTs are checked locally or introspection answers
    /// are signed (both need the issuer's keys).
    pub jwt: Option<crate::introspection::jwt::JwtSettings>,
    /// `[issuers.<name>]`, in name order (the default issuer is
    /// `introspection` + `discovery` above).
    pub issuers: Vec<IssuerSettings>,
    /// `[dpop]`.
    pub dpop: crate::policy::binding::dpop::DpopSettings,
    /// `[ext_authz]`.
    pub ext_authz: ExtAuthzSettings,
    /// `[tracing]` (with the `OTEL_*` variables); `None`: tracing off.
    pub tracing: Option<crate::ops::otel::TracingSettings>,
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
        crate::http::peer_in(&self.trusted_proxies, peer)
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

/// The name of the issuer that `[introspection]` / `[discovery]` configure:
/// routes without `issuer` (and requests that match no route) use it.
pub const DEFAULT_ISSUER: &str = "default";

/// One named issuer, validated.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The `[issuers.<name>]` key: lower-case letters, digits and `_`.
    pub name: String,
    /// The expected `iss` (exact).
    pub iss: String,
    /// Its own client, credentials, timeout and TLS (client certificate).
    pub introspection: IntrospectionSettings,
    /// `Some` when its endpoint comes from discovery.
    pub discovery: Option<DiscoverySettings>,
    /// `[issuers.<name>.jwt]`: `Some` when its JWTs are checked locally or
    /// its introspection answers are signed (both need its keys).
    pub jwt: Option<crate::introspection::jwt::JwtSettings>,
}

/// Whether `name` may name an issuer: what the environment can spell
/// (`TOKENGATE_ISSUERS__<NAME>__...`: figment lower-cases the variable and
/// splits it at `__`) and what a metric label and a log field show plainly.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.contains("__")
        && !name.starts_with('_')
        && !name.ends_with('_')
}

/// `[ext_authz]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtAuthzSettings {
    /// `None`: no gRPC listener (`ext_authz.listen = ""`).
    pub listen: Option<SocketAddr>,
    /// TLS with the `[tls]` material (validate checked that it is there).
    pub tls: bool,
}
