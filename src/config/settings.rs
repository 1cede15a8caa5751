//! The validated configuration that the rest of the program reads. Each
//! subsystem owns its own settings type where it can (introspection, upstream);
//! [`Settings`] composes them.

use super::error::*;
use super::raw::*;
use crate::cache::settings::{RawCache, SharedCacheSettings};
use crate::introspection::client::IntrospectionSettings;
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
    /// `[ext_authz]`.
    pub ext_authz: ExtAuthzSettings,
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

/// `[ext_authz]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtAuthzSettings {
    /// `None`: no gRPC listener (`ext_authz.listen = ""`).
    pub listen: Option<SocketAddr>,
    /// TLS with the `[tls]` material (validate checked that it is there).
    pub tls: bool,
}
