//! The L1 entry and its lifetimes, and the handle on this replica's L1 that
//! the fleet layer's purge subscriber uses. Its own file so that the fleet
//! layer ([`super::fleet`]) and the cache ([`super::TokenCache`]) both build on
//! it without importing each other.

use super::settings::CacheSettings;
use crate::introspection::answer::Answer;
use crate::token::TokenHash;
use moka::future::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Positive entry lifetime: min(max_ttl, exp − now); `max_ttl` without `exp`;
/// zero for a token that is already expired.
pub fn entry_ttl(exp: Option<i64>, now: SystemTime, max_ttl: Duration) -> Duration {
    exp.map_or(max_ttl, |exp| {
        crate::resilience::clock::until_exp(exp, now).min(max_ttl)
    })
}

/// The lifetimes that a config reload may change, shared with the caches'
/// expiry policies. Read once per insert, so a change applies to new entries.
#[derive(Clone)]
pub struct CacheTtls {
    pub(super) max_ttl_ns: Arc<AtomicU64>,
    pub(super) negative_ttl_ns: Arc<AtomicU64>,
    /// `resilience.stale_if_error`; 0 turns stale answers off.
    pub(super) stale_if_error_ns: Arc<AtomicU64>,
}

pub(super) fn as_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl CacheTtls {
    pub(super) fn new(cfg: &CacheSettings) -> Self {
        Self {
            max_ttl_ns: Arc::new(AtomicU64::new(as_ns(cfg.max_ttl))),
            negative_ttl_ns: Arc::new(AtomicU64::new(as_ns(cfg.negative_ttl))),
            stale_if_error_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Applies `max_ttl` and `negative_ttl` of `cfg` to entries inserted from now on.
    pub fn set(&self, cfg: &CacheSettings) {
        self.max_ttl_ns.store(as_ns(cfg.max_ttl), Ordering::Relaxed);
        self.negative_ttl_ns
            .store(as_ns(cfg.negative_ttl), Ordering::Relaxed);
    }

    /// Applies `resilience.stale_if_error` to entries inserted from now on
    /// (an entry's stale window is fixed when it is cached).
    pub fn set_stale_if_error(&self, window: Duration) {
        self.stale_if_error_ns
            .store(as_ns(window), Ordering::Relaxed);
    }

    pub fn max_ttl(&self) -> Duration {
        Duration::from_nanos(self.max_ttl_ns.load(Ordering::Relaxed))
    }

    pub fn negative_ttl(&self) -> Duration {
        Duration::from_nanos(self.negative_ttl_ns.load(Ordering::Relaxed))
    }

    pub fn stale_if_error(&self) -> Duration {
        Duration::from_nanos(self.stale_if_error_ns.load(Ordering::Relaxed))
    }
}

/// One cached active answer and, on the injected clock, when it stops being
/// fresh and when it stops being usable at all. Stored by value in moka (24
/// bytes; a clone is one `Arc` increment, which is all a hit costs): an
/// `Arc<Entry>` cost one more heap block, and `SystemTime`s (16 bytes each)
/// put moka's per-entry block in a bigger size class; both cost RSS per cached
/// token (BENCHMARKS.md, "Memory per cached token").
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) answer: Arc<Answer>,
    /// Nanoseconds since the Unix epoch (u64: until the year 2554).
    pub(super) fresh_until: u64,
    /// fresh_until + stale_if_error, capped at `exp`; same unit.
    pub(super) stale_until: u64,
}

/// `t` in nanoseconds since the Unix epoch; 0 before it, saturating after 2554.
pub(super) fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, as_ns)
}

impl Entry {
    pub(super) fn new(answer: Answer, now: SystemTime, max_ttl: Duration, stale: Duration) -> Self {
        let at = |ttl: Duration| unix_ns(now).saturating_add(as_ns(ttl));
        Self {
            fresh_until: at(entry_ttl(answer.exp, now, max_ttl)),
            stale_until: at(entry_ttl(answer.exp, now, max_ttl.saturating_add(stale))),
            answer: Arc::new(answer),
        }
    }

    /// An answer read from L2 is fresh no longer than its L2 entry (whose end
    /// is MAC'd into the value): a copy must not outlive what it copies.
    pub(super) fn capped(mut self, until: Option<SystemTime>, stale: Duration) -> Self {
        if let Some(until) = until {
            let until = unix_ns(until);
            self.fresh_until = self.fresh_until.min(until);
            self.stale_until = self.stale_until.min(until.saturating_add(as_ns(stale)));
        }
        self
    }

    pub(super) fn is_fresh(&self, now: SystemTime) -> bool {
        unix_ns(now) < self.fresh_until
    }

    /// Past `exp` on our clock: asking the AS again cannot make it valid, and
    /// the policy check will refuse it (401 expired) without a call.
    pub(super) fn is_expired(&self, now: SystemTime) -> bool {
        self.answer
            .exp
            .is_some_and(|exp| crate::resilience::clock::until_exp(exp, now).is_zero())
    }

    /// Usable as a stale answer while the AS fails.
    pub(super) fn is_servable_stale(&self, now: SystemTime) -> bool {
        unix_ns(now) < self.stale_until && !self.is_expired(now)
    }

    /// Time left until `stale_until` (moka drops the entry then).
    pub(super) fn lifetime(&self, now: SystemTime) -> Duration {
        Duration::from_nanos(self.stale_until.saturating_sub(unix_ns(now)))
    }
}

/// A handle on this replica's L1 caches (moka caches are shared handles), for
/// the fleet layer's purge subscriber, which must drop entries without going
/// through [`super::TokenCache::invalidate`] (that would publish the purge again).
#[derive(Clone)]
pub struct L1 {
    pub(super) positive: Cache<TokenHash, Entry>,
    pub(super) negative: Option<Cache<TokenHash, ()>>,
}

impl L1 {
    /// Drops the token's entries, stale ones included: a purged token is never
    /// served stale either.
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
