//! The cache's own settings: `[cache]` and `[cache.shared]` as the file spells
//! them (deserialised by the configuration, which re-exports them), and the
//! validated `[cache.shared]`.

use crate::resilience::clock::duration_str;
use crate::secret::Secret;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

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

/// `[cache]`, validated: what the L1 is built from and what a reload changes.
/// The shared L2 is [`SharedCacheSettings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_ttl: Duration,
    /// At least 1.
    pub max_entries: u64,
    pub negative_ttl: Duration,
    /// 0 turns the negative cache off.
    pub negative_max_entries: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        RawCache::default().settings()
    }
}

impl RawCache {
    /// The L1 settings as written; `validate` checks them first.
    pub fn settings(&self) -> CacheSettings {
        CacheSettings {
            max_ttl: self.max_ttl,
            max_entries: self.max_entries,
            negative_ttl: self.negative_ttl,
            negative_max_entries: self.negative_max_entries,
        }
    }
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
