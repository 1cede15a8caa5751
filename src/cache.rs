//! The introspection cache (moka `future::Cache`), keyed by SHA-256 of the token.
//!
//! * Positive entries live min(`max_ttl`, exp − now) (RFC 7662 §4: never past
//!   `exp`), through moka's per-entry [`moka::Expiry`].
//! * Inactive answers go to a *separate*, separately bounded negative cache, so a
//!   flood of garbage tokens cannot evict good entries.
//! * A miss is single-flight: concurrent requests for one uncached token share
//!   one introspection call (`or_try_insert_with`). Errors are never cached.
//!
//! The cache holds the introspection, never the decision: `policy::evaluate`
//! runs on every hit.
//!
//! `max_ttl` and `negative_ttl` can change at run time (config reload,
//! [`CacheTtls`]): entries already cached keep the lifetime they were given,
//! new entries get the new one. Capacities are fixed at start-up (moka cannot
//! resize a cache).
//! With `[cache.shared]`, this is the L1 in front of [`crate::fleet`]'s Redis
//! L2: a miss here reads L2 before introspecting, and `invalidate` purges
//! fleet-wide.

use crate::clock::Clock;
use crate::config::RawCache;
use crate::fleet::Fleet;
use crate::introspect::{IntrospectError, Introspection};
use crate::token::TokenHash;
use moka::future::Cache;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where an answer came from, for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the positive cache.
    Hit,
    /// This request ran the introspection call.
    Miss,
    /// The token is in the negative cache.
    Negative,
    /// Another request's in-flight introspection call answered this one too.
    Coalesced,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Negative => "negative",
            Self::Coalesced => "coalesced",
        }
    }
}

/// A lookup that produced no usable introspection. Shared by all coalesced
/// waiters through an `Arc`, so it must be cheap to clone out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("token is not active")]
    Inactive,
    #[error(transparent)]
    Failed(#[from] IntrospectError),
}

/// Positive entry lifetime: min(max_ttl, exp − now); `max_ttl` without `exp`;
/// zero for a token that is already expired.
pub fn entry_ttl(exp: Option<i64>, now: SystemTime, max_ttl: Duration) -> Duration {
    let Some(exp) = exp else { return max_ttl };
    let Ok(exp_secs) = u64::try_from(exp) else {
        return Duration::ZERO;
    };
    let expires_at = UNIX_EPOCH + Duration::from_secs(exp_secs);
    expires_at
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(max_ttl)
}

/// The two TTLs that a config reload may change, shared with the caches'
/// expiry policies. Read once per insert, so a change applies to new entries.
#[derive(Clone)]
pub struct CacheTtls {
    max_ttl_ns: Arc<AtomicU64>,
    negative_ttl_ns: Arc<AtomicU64>,
}

fn as_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl CacheTtls {
    fn new(cfg: &RawCache) -> Self {
        Self {
            max_ttl_ns: Arc::new(AtomicU64::new(as_ns(cfg.max_ttl))),
            negative_ttl_ns: Arc::new(AtomicU64::new(as_ns(cfg.negative_ttl))),
        }
    }

    /// Applies `max_ttl` and `negative_ttl` of `cfg` to entries inserted from now on.
    pub fn set(&self, cfg: &RawCache) {
        self.max_ttl_ns.store(as_ns(cfg.max_ttl), Ordering::Relaxed);
        self.negative_ttl_ns
            .store(as_ns(cfg.negative_ttl), Ordering::Relaxed);
    }

    pub fn max_ttl(&self) -> Duration {
        Duration::from_nanos(self.max_ttl_ns.load(Ordering::Relaxed))
    }

    pub fn negative_ttl(&self) -> Duration {
        Duration::from_nanos(self.negative_ttl_ns.load(Ordering::Relaxed))
    }
}

struct ExpAware {
    ttls: CacheTtls,
    clock: Arc<dyn Clock>,
}

impl moka::Expiry<TokenHash, Arc<Introspection>> for ExpAware {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Arc<Introspection>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry_ttl(value.exp, self.clock.now(), self.ttls.max_ttl()))
    }
}

struct NegativeTtl(CacheTtls);

impl moka::Expiry<TokenHash, ()> for NegativeTtl {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        _value: &(),
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.0.negative_ttl())
    }
}

/// Counters the cache bumps itself (prebuilt, so a lookup does no label work).
#[derive(Clone, Default)]
pub struct CacheCounters {
    pub positive_hit: prometheus_client::metrics::counter::Counter,
    pub positive_miss: prometheus_client::metrics::counter::Counter,
    pub negative_hit: prometheus_client::metrics::counter::Counter,
    pub negative_miss: prometheus_client::metrics::counter::Counter,
    pub coalesced: prometheus_client::metrics::counter::Counter,
}

pub struct TokenCache {
    positive: Cache<TokenHash, Arc<Introspection>>,
    /// `None` when `negative_max_entries = 0`. Skipped while `negative_ttl` is 0
    /// (it can become non-zero on reload).
    negative: Option<Cache<TokenHash, ()>>,
    ttls: CacheTtls,
    counters: CacheCounters,
    /// The fleet's shared L2 and purge fan-out; `None`: this replica alone.
    fleet: Option<Arc<Fleet>>,
}

/// A handle on this replica's L1 caches (moka caches are shared handles), for
/// the fleet layer's purge subscriber, which must drop entries without going
/// through [`TokenCache::invalidate`] (that would publish the purge again).
#[derive(Clone)]
pub struct L1 {
    positive: Cache<TokenHash, Arc<Introspection>>,
    negative: Option<Cache<TokenHash, ()>>,
}

impl L1 {
    pub async fn invalidate(&self, key: &TokenHash) {
        self.positive.invalidate(key).await;
        if let Some(neg) = &self.negative {
            neg.invalidate(key).await;
        }
    }

    /// Drops every entry (moka removes them lazily; none is served after this).
    pub fn clear(&self) {
        self.positive.invalidate_all();
        if let Some(neg) = &self.negative {
            neg.invalidate_all();
        }
    }
}

impl TokenCache {
    pub fn new(cfg: &RawCache, clock: Arc<dyn Clock>) -> Self {
        let ttls = CacheTtls::new(cfg);
        let positive = Cache::builder()
            .max_capacity(cfg.max_entries)
            .expire_after(ExpAware {
                ttls: ttls.clone(),
                clock,
            })
            .build();
        let negative = (cfg.negative_max_entries > 0).then(|| {
            Cache::builder()
                .max_capacity(cfg.negative_max_entries)
                .expire_after(NegativeTtl(ttls.clone()))
                .build()
        });
        Self {
            positive,
            negative,
            ttls,
            counters: CacheCounters::default(),
            fleet: None,
        }
    }

    /// Counts lookups into `counters` (see `metrics::Metrics::cache_counters`).
    pub fn with_counters(mut self, counters: CacheCounters) -> Self {
        self.counters = counters;
        self
    }

    /// The live TTL settings, for config reload.
    pub fn ttls(&self) -> CacheTtls {
        self.ttls.clone()
    }

    /// The negative cache, if it is in use right now.
    fn negative(&self) -> Option<&Cache<TokenHash, ()>> {
        self.negative
            .as_ref()
            .filter(|_| !self.ttls.negative_ttl().is_zero())
    }

    /// Entries in the positive and negative caches, after moka's pending
    /// maintenance (its counts lag inserts and expiries otherwise).
    pub async fn entry_counts(&self) -> (u64, u64) {
        self.positive.run_pending_tasks().await;
        let negative = match &self.negative {
            Some(neg) => {
                neg.run_pending_tasks().await;
                neg.entry_count()
            }
            None => 0,
        };
        (self.positive.entry_count(), negative)
    }

    /// This cache's L1 handle (for [`Fleet::new`]).
    pub fn l1(&self) -> L1 {
        L1 {
            positive: self.positive.clone(),
            negative: self.negative.clone(),
        }
    }

    /// Puts the fleet's shared L2 behind this cache.
    pub fn with_fleet(mut self, fleet: Arc<Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Returns the cached introspection for `key`, or runs `load` once for all
    /// concurrent callers with the same key. An inactive answer is stored in the
    /// negative cache and returned as [`LoadError::Inactive`].
    pub async fn get_or_load<F, Fut>(
        &self,
        key: TokenHash,
        load: F,
    ) -> (Result<Arc<Introspection>, LoadError>, CacheStatus)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Introspection, IntrospectError>>,
    {
        if let Some(neg) = self.negative() {
            if neg.contains_key(&key) {
                self.counters.negative_hit.inc();
                return (Err(LoadError::Inactive), CacheStatus::Negative);
            }
            self.counters.negative_miss.inc();
        }
        // Fast path, and the only way to tell a plain hit from a coalesced wait:
        // an entry that `get` cannot see but `entry` returns without running our
        // `init` was being loaded by another request.
        if let Some(hit) = self.positive.get(&key).await {
            self.counters.positive_hit.inc();
            return (Ok(hit), CacheStatus::Hit);
        }
        let negative = self.negative().cloned();
        let fleet = self.fleet.clone();
        let ran = AtomicBool::new(false);
        let ran_ref = &ran;
        let init = async move {
            ran_ref.store(true, Ordering::Relaxed);
            let answer = match fleet {
                Some(fleet) => fleet.read_through(&key, load).await?,
                None => load().await?,
            };
            if answer.active {
                Ok(Arc::new(answer))
            } else {
                if let Some(neg) = negative {
                    neg.insert(key, ()).await;
                }
                Err(LoadError::Inactive)
            }
        };
        let result = self.positive.entry(key).or_try_insert_with(init).await;
        let status = if ran.load(Ordering::Relaxed) {
            self.counters.positive_miss.inc();
            CacheStatus::Miss
        } else {
            self.counters.coalesced.inc();
            CacheStatus::Coalesced
        };
        match result {
            Ok(entry) => (Ok(entry.into_value()), status),
            Err(e) => (Err(LoadError::clone(&e)), status),
        }
    }

    /// Runs moka's deferred maintenance (evictions, size accounting) now, so a
    /// measurement (the memory benchmark) sees the settled state.
    pub async fn run_pending_tasks(&self) {
        self.positive.run_pending_tasks().await;
    }

    /// Purge: removes a token from both caches, and with `[cache.shared]` from
    /// L2 and from every replica's L1 (see [`Fleet::purge`]; if Redis is down
    /// only this replica forgets the token, and a warning says so).
    pub async fn invalidate(&self, key: &TokenHash) {
        match &self.fleet {
            Some(fleet) => {
                let _ = fleet.purge(key).await;
            }
            None => self.l1().invalidate(key).await,
        }
    }

    /// Empties this replica's L1 only (what a replica does when it may have
    /// missed purges).
    pub fn clear_local(&self) {
        self.l1().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let max = Duration::from_secs(300);
        let cases = [
            ("no exp: max_ttl", None, max),
            ("exp far away: capped at max_ttl", Some(10_000), max),
            (
                "exp sooner than max_ttl: exp wins",
                Some(1_060),
                Duration::from_secs(60),
            ),
            ("exp == now: zero", Some(1_000), Duration::ZERO),
            ("exp in the past: zero", Some(10), Duration::ZERO),
            ("negative exp: zero", Some(-5), Duration::ZERO),
        ];
        for (name, exp, want) in cases {
            assert_eq!(entry_ttl(exp, now, max), want, "{name}");
        }
        let now_frac = UNIX_EPOCH + Duration::from_millis(1_000_400);
        assert_eq!(
            entry_ttl(Some(1_001), now_frac, max),
            Duration::from_millis(600),
            "sub-second precision: never outlives exp"
        );
    }
}
