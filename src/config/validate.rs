//! `RawConfig::validate`: every key checked, parsed and turned into
//! [`Settings`]; route compilation and TLS file loading.

use super::error::*;
use super::raw::*;
use super::settings::*;
use crate::cache::settings::{RawSharedCache, SharedCacheSettings};
use crate::secret::Secret;
use crate::upstream::forward::{IdentitySettings, Upstream};
use http::{HeaderName, Uri};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

impl RawConfig {
    /// Checks every value and resolves files (`client_secret_file`). Every
    /// invalid key is reported, not only the first: one error comes back as
    /// itself, several as [`ConfigError::Several`]. A key whose check needs
    /// another one (e.g. `admin.listen` against `listen`) is checked once
    /// that one is valid.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let mut errors = Errors::default();
        let listen = errors.take(parse_listen("listen", &self.listen));
        let upstream = errors.take(parse_upstream(&self.upstream).map(|mut u| {
            u.http2 = self.upstream_http2;
            u
        }));
        // Read once: the same private CA serves the upstream, the AS and rediss://.
        let ca_roots = errors.take(self.ca_roots());
        let client_auth = errors.take(self.client_cert_auth());
        let tls_all = match (&ca_roots, client_auth) {
            (Some(roots), Some(client_auth)) => errors.take(self.tls_settings(roots, client_auth)),
            _ => None,
        };
        let forward_auth_prefix = errors.take(self.forward_auth_prefix());

        let i = &self.introspection;
        let discovery = errors.take(self.discovery_settings());
        // On the key as written, so that a malformed issuer does not also
        // report a missing introspection.url.
        let has_issuer = !self.discovery.issuer.is_empty();
        if has_issuer && !i.url.is_empty() {
            // Otherwise the background refresh would silently replace the URL
            // the operator wrote down.
            errors.push(ConfigError::invalid(
                "discovery.issuer",
                "set either introspection.url or discovery.issuer, not both",
            ));
        }
        let url = errors.take(self.introspection_url(has_issuer));
        errors.check(
            !i.client_id.is_empty(),
            "introspection.client_id",
            "is required",
        );
        let client_secret = errors.take(self.client_secret());
        errors.check(
            !i.timeout.is_zero(),
            "introspection.timeout",
            "must be greater than 0",
        );
        errors.check(
            self.cache.max_entries != 0,
            "cache.max_entries",
            "must be at least 1",
        );
        errors.check(
            self.limits.max_token_bytes != 0,
            "limits.max_token_bytes",
            "must be at least 1",
        );
        let l = &self.limits;
        errors.check(
            l.max_header_bytes >= crate::http::limits::MIN_HEADER_BYTES,
            "limits.max_header_bytes",
            format!("must be at least {}", crate::http::limits::MIN_HEADER_BYTES),
        );
        errors.check(
            !l.idle_timeout.is_zero(),
            "limits.idle_timeout",
            "must be greater than 0",
        );
        // No "0s = off": a tunnel on a public route would then live forever.
        errors.check(
            !l.tunnel_idle_timeout.is_zero(),
            "limits.tunnel_idle_timeout",
            "must be greater than 0 (a long value such as \"24h\" keeps quiet tunnels open)",
        );
        let upgrade_protocols = errors.take(
            crate::upstream::upgrade::UpgradeProtocols::parse(&self.upgrade_protocols)
                .map_err(|e| ConfigError::invalid("upgrade_protocols", e)),
        );
        errors.check(
            !(self.resilience.breaker_failures > 0 && self.resilience.breaker_open_for.is_zero()),
            "resilience.breaker_open_for",
            "must be greater than 0 (set breaker_failures = 0 to turn the breaker off)",
        );
        errors.check(
            !self.resilience.upstream_timeout.is_zero(),
            "resilience.upstream_timeout",
            "must be greater than 0",
        );

        let mut identity = self.identity_settings(&mut errors);
        let issuers = self.issuer_settings(&mut errors, ca_roots.as_deref());
        let dpop = self.dpop_settings(&mut errors);
        if let (Some(id), Some(d)) = (&mut identity, &dpop) {
            // The proof is for us; the upstream sees it only when asked to.
            if !d.forward_proof {
                id.strip.push(crate::policy::binding::dpop::DPOP.clone());
            }
        }
        let routes = errors.take(self.route_table());
        // rediss:// trusts the same private CA as the upstream and the AS.
        let redis_roots = match &ca_roots {
            Some(roots) if !self.cache.shared.url.0.is_empty() => roots.clone(),
            _ => Vec::new(),
        };
        let shared_cache = errors.take(validate_shared_cache(&self.cache.shared, redis_roots));
        let ts = &self.token_sources;
        errors.check(
            ts.query_param.is_empty() || is_token_char_str(&ts.query_param),
            "token_sources.query_param",
            format!("{:?} is not a valid parameter name", ts.query_param),
        );
        errors.check(
            ts.cookie.is_empty() || is_token_char_str(&ts.cookie),
            "token_sources.cookie",
            format!("{:?} is not a valid cookie name", ts.cookie),
        );
        let token_sources = crate::token::TokenSources {
            query_param: (!ts.query_param.is_empty()).then(|| ts.query_param.clone()),
            cookie: (!ts.cookie.is_empty()).then(|| ts.cookie.clone()),
        };

        let admin = match listen {
            Some(listen) => errors.take(self.admin_settings(listen)),
            None => None,
        };
        let forwarding = errors.take(self.forwarding_settings());
        let mtls = self.mtls_settings(&mut errors);
        let signed_answers = i.response_format == crate::introspection::client::ResponseFormat::Jwt;
        let jwt = match self.jwt.settings(&self.discovery.issuer, signed_answers) {
            Ok(jwt) => jwt,
            Err(problems) => {
                for (key, message) in problems {
                    errors.push(ConfigError::invalid(key, message));
                }
                None
            }
        };
        let ext_authz = self.ext_authz_settings(listen, admin.as_ref(), &mut errors);
        let tracing = match self.tracing.settings() {
            Ok(tracing) => tracing,
            Err(problems) => {
                for (key, message) in problems {
                    errors.push(ConfigError::invalid(key, message));
                }
                None
            }
        };

        errors.into_result()?;
        // No error was reported, so every part above was built.
        let Some(issuers) = issuers else {
            return Err(ConfigError::invalid(
                "issuers",
                "an issuer was left unbuilt without an error (a bug in validate)",
            ));
        };
        let (
            Some(listen),
            Some(upstream),
            Some((tls, upstream_tls, as_tls)),
            Some(forward_auth_prefix),
            Some(discovery),
            Some(url),
            Some(client_secret),
            Some(upgrade_protocols),
            Some(identity),
            Some(routes),
            Some(shared_cache),
            Some(admin),
            Some(forwarding),
            Some(mtls),
            Some(dpop),
        ) = (
            listen,
            upstream,
            tls_all,
            forward_auth_prefix,
            discovery,
            url,
            client_secret,
            upgrade_protocols,
            identity,
            routes,
            shared_cache,
            admin,
            forwarding,
            mtls,
            dpop,
        )
        else {
            return Err(ConfigError::invalid(
                "(config)",
                "a setting was left unbuilt without an error (a bug in validate)",
            ));
        };

        Ok(Settings {
            listen,
            upstream,
            shutdown_timeout: self.shutdown_timeout,
            introspection: i.settings(url, client_secret, as_tls),
            cache: self.cache.settings(),
            identity,
            log_format: self.log.format,
            log_access: self.log.access,
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
            mtls,
            jwt,
            issuers,
            dpop,
            ext_authz,
            tracing,
        })
    }

    /// `forward_auth.path_prefix`, without its trailing '/'.
    fn forward_auth_prefix(&self) -> Result<String, ConfigError> {
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
        Ok(p.to_owned())
    }

    /// `[discovery]`: `None` without an issuer.
    fn discovery_settings(&self) -> Result<Option<DiscoverySettings>, ConfigError> {
        if self.discovery.issuer.is_empty() {
            return Ok(None);
        }
        let issuer = &self.discovery.issuer;
        let ok = url::Url::parse(issuer)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
        if !ok {
            return Err(ConfigError::invalid(
                "discovery.issuer",
                format!("{issuer:?} is not an http(s) URL without a query"),
            ));
        }
        Ok(Some(DiscoverySettings {
            issuer: issuer.clone(),
            refresh_interval: self.discovery.refresh_interval.max(Duration::from_secs(1)),
        }))
    }

    /// `introspection.url`: required unless discovery will find it.
    fn introspection_url(
        &self,
        has_issuer: bool,
    ) -> Result<Option<oauth2::IntrospectionUrl>, ConfigError> {
        let i = &self.introspection;
        if i.url.is_empty() {
            if !has_issuer {
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
            return Ok(None);
        }
        let url = oauth2::IntrospectionUrl::new(i.url.clone())
            .map_err(|e| ConfigError::invalid("introspection.url", format!("{:?}: {e}", i.url)))?;
        if !matches!(url.url().scheme(), "http" | "https") {
            return Err(ConfigError::invalid(
                "introspection.url",
                "must be http:// or https://",
            ));
        }
        Ok(Some(url))
    }

    /// `introspection.client_secret` or `client_secret_file` (read now).
    fn client_secret(&self) -> Result<Secret, ConfigError> {
        let i = &self.introspection;
        match (i.client_secret.is_empty(), i.client_secret_file.is_empty()) {
            (false, false) => Err(ConfigError::invalid(
                "introspection.client_secret_file",
                "set either client_secret or client_secret_file, not both (in the environment, \
                     TOKENGATE_INTROSPECTION__CLIENT_SECRET replaces a client_secret_file from the \
                     config file)",
            )),
            (true, true) => Err(ConfigError::invalid(
                "introspection.client_secret",
                "is required (or client_secret_file)",
            )),
            (false, true) => Ok(i.client_secret.clone()),
            (true, false) => {
                read_secret_file("introspection.client_secret_file", &i.client_secret_file)
            }
        }
    }

    /// `[identity]`: every header name checked (each bad one reported).
    fn identity_settings(&self, errors: &mut Errors) -> Option<IdentitySettings> {
        let id = &self.identity;
        let header = |key: &'static str, v: &str| {
            HeaderName::try_from(v)
                .map_err(|_| ConfigError::invalid(key, format!("{v:?} is not a valid header name")))
        };
        let subject_header = errors.take(header("identity.subject_header", &id.subject_header));
        let client_id_header =
            errors.take(header("identity.client_id_header", &id.client_id_header));
        let scope_header = errors.take(header("identity.scope_header", &id.scope_header));
        let binding_header = errors.take(header("identity.binding_header", &id.binding_header));
        let mut strip = Vec::new();
        for h in &id.strip_headers {
            strip.extend(errors.take(header("identity.strip_headers", h)));
        }
        let mut claims = Vec::new();
        for (h, claim) in &id.claims {
            let Some(name) = errors.take(header("identity.claims", h)) else {
                continue;
            };
            if claim.is_empty() {
                errors.push(ConfigError::invalid(
                    "identity.claims",
                    format!("{h:?} maps to an empty claim name"),
                ));
                continue;
            }
            strip.push(name.clone());
            claims.push((name, claim.clone()));
        }
        let (subject_header, client_id_header, scope_header, binding_header) = (
            subject_header?,
            client_id_header?,
            scope_header?,
            binding_header?,
        );
        strip.extend([
            subject_header.clone(),
            client_id_header.clone(),
            scope_header.clone(),
            binding_header.clone(),
        ]);
        strip.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        strip.dedup();
        Some(IdentitySettings {
            subject_header,
            client_id_header,
            scope_header,
            binding_header,
            strip,
            forward_authorization: id.forward_authorization,
            claims,
        })
    }

    /// `[dpop]`: every algorithm checked (each bad one reported).
    fn dpop_settings(
        &self,
        errors: &mut Errors,
    ) -> Option<crate::policy::binding::dpop::DpopSettings> {
        use crate::policy::binding::dpop::{parse_algorithm, DpopSettings};
        let d = &self.dpop;
        let mut algorithms = Vec::new();
        for name in &d.algorithms {
            match parse_algorithm(name) {
                Some(alg) => algorithms.push(alg),
                None => errors.push(ConfigError::invalid(
                    "dpop.algorithms",
                    format!(
                        "{name:?} is not an asymmetric JWS algorithm tokengate checks \
                         (ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA; \
                         never \"none\" or HS*)"
                    ),
                )),
            }
        }
        errors.check(
            !(d.enabled && d.algorithms.is_empty()),
            "dpop.algorithms",
            "must name at least one algorithm when dpop.enabled is true",
        );
        // Shorter than the skew the iat check allows anyway makes no sense, and
        // the replay cache must remember a jti as long as its proof is accepted.
        errors.check(
            d.max_age >= Duration::from_secs(1) && d.max_age <= Duration::from_secs(3600),
            "dpop.max_age",
            "must be between 1s and 1h",
        );
        errors.check(
            d.replay_cache_entries > 0,
            "dpop.replay_cache_entries",
            "must be at least 1",
        );
        algorithms.dedup();
        Some(DpopSettings::new(
            d.enabled,
            algorithms,
            d.max_age,
            d.require_nonce,
            d.forward_proof,
            d.replay_cache_entries,
        ))
    }

    pub(super) fn forwarding_settings(&self) -> Result<ForwardingSettings, ConfigError> {
        let f = &self.forwarding;
        let mut errors = Errors::default();
        let trusted_proxies = f
            .trusted_proxies
            .iter()
            .filter_map(|s| errors.take(parse_cidr("forwarding.trusted_proxies", s)))
            .collect();
        errors.finish(|| ForwardingSettings {
            trusted_proxies,
            method_override: f.method_override,
        })
    }

    pub(super) fn admin_settings(&self, listen: SocketAddr) -> Result<AdminSettings, ConfigError> {
        let a = &self.admin;
        let mut errors = Errors::default();
        let admin_listen = if a.listen.trim().is_empty() {
            None
        } else {
            let addr = errors.take(parse_listen("admin.listen", &a.listen));
            if let Some(addr) = addr {
                errors.check(
                    addr.port() == 0 || addr != listen,
                    "admin.listen",
                    "must differ from listen: the admin endpoints never share the proxy's port",
                );
            }
            addr
        };
        let purge_secret = if a.purge_secret_file.is_empty() {
            None
        } else {
            errors.take(read_secret_file(
                "admin.purge_secret_file",
                &a.purge_secret_file,
            ))
        };
        let admin = AdminSettings {
            listen: admin_listen,
            purge_secret,
        };
        // Only when the file itself was read: a missing file is already reported.
        if a.purge_secret_file.is_empty() || admin.purge_secret.is_some() {
            errors.take(admin.check_purge_secret());
        }
        errors.finish(|| admin)
    }

    /// `[ext_authz]`: every problem is pushed into `errors`; the value returned
    /// is only used when there were none.
    pub(super) fn ext_authz_settings(
        &self,
        listen: Option<SocketAddr>,
        admin: Option<&AdminSettings>,
        errors: &mut Errors,
    ) -> ExtAuthzSettings {
        let e = &self.ext_authz;
        let addr = if e.listen.trim().is_empty() {
            None
        } else {
            errors.take(parse_listen("ext_authz.listen", &e.listen))
        };
        if let Some(addr) = addr.filter(|a| a.port() != 0) {
            errors.check(
                listen != Some(addr),
                "ext_authz.listen",
                "must differ from listen: gRPC ext_authz has a port of its own",
            );
            errors.check(
                admin.and_then(|a| a.listen) != Some(addr),
                "ext_authz.listen",
                "must differ from admin.listen",
            );
        }
        if e.tls {
            errors.check(
                !e.listen.trim().is_empty(),
                "ext_authz.tls",
                "needs ext_authz.listen",
            );
            errors.check(
                !self.tls.cert_file.is_empty() && !self.tls.key_file.is_empty(),
                "ext_authz.tls",
                "uses the [tls] certificate: set tls.cert_file and tls.key_file",
            );
        }
        ExtAuthzSettings {
            listen: addr,
            tls: e.tls,
        }
    }

    /// The effective settings as TOML, secrets redacted (for `--check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

/// `[cache.shared]`: the URL must parse, and the HMAC key must be there and
/// long enough, because a guessable key would let a Redis dump confirm tokens.
pub(super) fn validate_shared_cache(
    raw: &RawSharedCache,
    ca_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
) -> Result<Option<SharedCacheSettings>, ConfigError> {
    if raw.url.0.is_empty() {
        return Ok(None);
    }
    let mut errors = Errors::default();
    errors.check(
        !raw.timeout.is_zero(),
        "cache.shared.timeout",
        "must be greater than 0",
    );
    let scheme_ok = url::Url::parse(&raw.url.0).is_ok_and(|u| {
        matches!(u.scheme(), "redis" | "rediss" | "valkey" | "valkeys") && u.has_host()
    });
    // `Client::open` only parses; it does not connect.
    if !scheme_ok || redis::Client::open(raw.url.0.as_str()).is_err() {
        errors.push(ConfigError::invalid(
            "cache.shared.url",
            format!(
                "{:?} is not a redis://, rediss://, valkey:// or valkeys:// URL with a host",
                raw.url
            ),
        ));
    }
    let key_secret = errors.take(shared_cache_key(raw));
    errors.into_result()?;
    // A key that did not load was recorded above; this is only the type's due.
    let Some(key_secret) = key_secret else {
        return Err(ConfigError::invalid(
            "cache.shared.key_secret_file",
            "was not read",
        ));
    };
    Ok(Some(SharedCacheSettings {
        url: raw.url.clone(),
        key_secret,
        timeout: raw.timeout,
        single_flight: raw.single_flight,
        ca_roots,
    }))
}

/// `cache.shared.key_secret_file`, read and checked for strength.
fn shared_cache_key(raw: &RawSharedCache) -> Result<Secret, ConfigError> {
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
    Ok(key_secret)
}

/// Placeholders that our examples ship (deploy/kubernetes/*) or that people
/// type, lower-cased with everything but letters and digits removed: a key
/// that contains one was pasted, not generated. A random key contains none.
pub(super) const PLACEHOLDER_MARKERS: &[&str] = &[
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
pub(super) fn weak_key(key: &str) -> Option<&'static str> {
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

/// One `trusted_proxies` entry: a CIDR, or a bare address (a /32 or /128).
pub(super) fn parse_cidr(key: &'static str, s: &str) -> Result<ipnet::IpNet, ConfigError> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            ConfigError::invalid(
                key,
                format!("{s:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\")"),
            )
        })
}

/// RFC 9110 `token` characters: what a parameter or cookie name may contain.
pub(super) fn is_token_char_str(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A listen address is an IP and a port. A host name is refused, with the
/// spelling to use: `localhost` resolves to `::1` and `127.0.0.1` (in an order
/// that depends on the system), so binding "the first" would leave clients of
/// the other unanswered; and a listener that depends on DNS at start-up is a
/// surprise.
pub(super) fn parse_listen(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
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

pub(super) fn read_secret_file(key: &'static str, path: &str) -> Result<Secret, ConfigError> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {path}: {e}")))?;
    // Files written by `echo` or editors end in a newline that is not part of the secret.
    let s = raw.trim_end_matches(['\n', '\r']);
    if s.is_empty() {
        return Err(ConfigError::invalid(key, format!("{path} is empty")));
    }
    Ok(Secret::new(s))
}

pub(super) fn parse_upstream(s: &str) -> Result<Upstream, ConfigError> {
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
