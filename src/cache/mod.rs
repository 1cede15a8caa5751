//! The introspection cache (moka `future::Cache`), keyed by SHA-256 of the token.
//!
//! * Positive entries are *fresh* for min(`max_ttl`, exp − now) (RFC 7662 §4:
//!   never past `exp`). Freshness is judged by the injected [`Clock`] (moka's own
//!   clock cannot be mocked), and moka keeps the entry a little longer — by
//!   `stale_if_error`, still never past `exp` — so that it can be served *stale*
//!   while the AS is failing.
//! * A hit past its fresh time revalidates through the same single-flight path
//!   as a miss. When that call fails (error, timeout, open circuit), the stale
//!   answer is served if it is within the stale window and before `exp`;
//!   otherwise the error stands (503). A token that turns out inactive is
//!   dropped from the positive cache and never served stale.
//! * Inactive answers go to a *separate*, separately bounded negative cache, so a
//!   flood of garbage tokens cannot evict good entries. A negative-cached token
//!   is never served stale.
//! * A miss or a revalidation is single-flight: concurrent requests for one
//!   token share one lookup ([`SingleFlight`]; moka's `or_try_insert_with`
//!   cannot coalesce a revalidation, because the stale entry is still
//!   present). Errors are never cached.
//!
//! The cache holds the introspection, never the decision: `policy::evaluate`
//! runs on every hit. It holds it in its compact form ([`Answer`]), whose
//! repeating members are shared between tokens through an [`Interner`].
//!
//! `max_ttl`, `negative_ttl` and `stale_if_error` can change at run time
//! (config reload, [`CacheTtls`]): entries already cached keep the lifetime
//! they were given, new entries get the new one. Capacities are fixed at
//! start-up (moka cannot resize a cache).
//! With `[cache.shared]`, this is the L1 in front of [`crate::cache::fleet`]'s Redis
//! L2: the single-flight lookup reads L2 before introspecting (so a
//! revalidation can be answered by another replica's fresh answer), and
//! `invalidate` purges fleet-wide.

use crate::introspection::answer::{Answer, Interner};
use crate::resilience::clock::Clock;
pub mod fleet;
pub mod flight;
mod l1;
pub mod settings;

use crate::introspection::client::{IntrospectError, Introspection};
use crate::token::TokenHash;
use fleet::Fleet;
use flight::SingleFlight;
use l1::Entry;
pub use l1::{entry_ttl, CacheTtls, L1};
use moka::future::Cache;
pub use settings::{CacheSettings, RawCache, RawSharedCache, RedisUrl, SharedCacheSettings};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Where an answer came from, for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the positive cache.
    Hit,
    /// This request ran the lookup (L2 and/or the introspection call).
    Miss,
    /// The token is in the negative cache.
    Negative,
    /// Another request's in-flight lookup answered this one too.
    Coalesced,
    /// The AS failed and a cached answer past its TTL was served (`stale_if_error`).
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Negative => "negative",
            Self::Coalesced => "coalesced",
            Self::Stale => "stale",
        }
    }
}

/// A lookup that produced no usable introspection. Shared by all coalesced
/// waiters, so it must be cheap to clone.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("token is not active")]
    Inactive,
    #[error(transparent)]
    Failed(#[from] IntrospectError),
}

/// moka keeps an entry until its `stale_until` (on the injected clock);
/// freshness within that is [`Entry::is_fresh`]'s business.
struct ExpAware {
    clock: Arc<dyn Clock>,
}

impl ExpAware {
    fn lifetime(&self, value: &Entry) -> Duration {
        value.lifetime(self.clock.now())
    }
}

impl moka::Expiry<TokenHash, Entry> for ExpAware {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Entry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }

    // moka's default keeps the *old* expiry on replace; a revalidated entry
    // must get its own.
    fn expire_after_update(
        &self,
        _key: &TokenHash,
        value: &Entry,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
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

type Loaded = Result<Entry, LoadError>;

pub struct TokenCache {
    positive: Cache<TokenHash, Entry>,
    /// `None` when `negative_max_entries = 0`. Skipped while `negative_ttl` is 0
    /// (it can become non-zero on reload).
    negative: Option<Cache<TokenHash, ()>>,
    flights: SingleFlight<TokenHash, Loaded>,
    /// Shares the repeating members of the cached answers (bounded).
    interner: Interner,
    ttls: CacheTtls,
    counters: CacheCounters,
    clock: Arc<dyn Clock>,
    /// The fleet's shared L2 and purge fan-out; `None`: this replica alone.
    fleet: Option<Arc<Fleet>>,
}

impl TokenCache {
    /// Stale answers are off until [`TokenCache::with_stale_if_error`].
    pub fn new(cfg: &CacheSettings, clock: Arc<dyn Clock>) -> Self {
        let ttls = CacheTtls::new(cfg);
        let positive = Cache::builder()
            .max_capacity(cfg.max_entries)
            .expire_after(ExpAware {
                clock: clock.clone(),
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
            flights: SingleFlight::default(),
            interner: Interner::default(),
            ttls,
            counters: CacheCounters::default(),
            clock,
            fleet: None,
        }
    }

    /// `resilience.stale_if_error`: how long past its fresh time an answer may
    /// be served while the AS fails; zero turns stale answers off.
    pub fn with_stale_if_error(self, window: Duration) -> Self {
        self.ttls.set_stale_if_error(window);
        self
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
    /// maintenance (its counts lag inserts and expiries otherwise). Positive
    /// entries include those kept only to be served stale.
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

    /// Returns the cached introspection for `key`, or runs one lookup for all
    /// concurrent callers with the same key: L2 (with `[cache.shared]`), then
    /// `load`. An inactive answer is stored in the negative cache and returned
    /// as [`LoadError::Inactive`]. When `load` fails and a stale answer is
    /// still within `stale_if_error` (and before `exp`), that answer is
    /// returned with [`CacheStatus::Stale`].
    pub async fn get_or_load<F, Fut>(
        &self,
        key: TokenHash,
        load: F,
    ) -> (Result<Arc<Answer>, LoadError>, CacheStatus)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Introspection, IntrospectError>>,
    {
        self.get_or_load_counted(key, &self.counters, load).await
    }

    /// [`TokenCache::get_or_load`], counting into `counters` (one issuer's,
    /// `tokengate_cache_*{issuer}`) instead of the cache's own. The issuer's
    /// partition is in `key` (`crate::app::issuers::Issuer::cache_key`).
    pub async fn get_or_load_counted<F, Fut>(
        &self,
        key: TokenHash,
        counters: &CacheCounters,
        load: F,
    ) -> (Result<Arc<Answer>, LoadError>, CacheStatus)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Introspection, IntrospectError>>,
    {
        // Positive first: it answers the common case, and a token is never in
        // both caches (an inactive answer invalidates the positive entry
        // before the negative one is written, a purge drops both, and an
        // answer is loaded only after the negative lookup missed), so the
        // order cannot change an answer; it saves a lookup on every hit.
        let cached = self.positive.get(&key).await;
        let now = self.clock.now();
        if let Some(entry) = &cached {
            if entry.is_fresh(now) || entry.is_expired(now) {
                counters.positive_hit.inc();
                return (Ok(entry.answer.clone()), CacheStatus::Hit);
            }
        }
        if let Some(neg) = self.negative() {
            if neg.contains_key(&key) {
                counters.negative_hit.inc();
                return (Err(LoadError::Inactive), CacheStatus::Negative);
            }
            counters.negative_miss.inc();
        }

        let (loaded, led) = self
            .flights
            .run(key, || async {
                let (answer, l2_until, raced_purge) = match &self.fleet {
                    Some(fleet) => {
                        let f = fleet.read_through(&key, load).await?;
                        (f.answer, f.l2_until, f.raced_purge)
                    }
                    None => (load().await?, None, false),
                };
                if answer.active {
                    let entry = Entry::new(
                        Answer::new(answer, &self.interner),
                        self.clock.now(),
                        self.ttls.max_ttl(),
                        self.ttls.stale_if_error(),
                    )
                    .capped(l2_until, self.ttls.stale_if_error());
                    // An answer that may predate a purge answers this
                    // request only (the purge already dropped the old entry).
                    if !raced_purge {
                        self.positive.insert(key, entry.clone()).await;
                    }
                    Ok(entry)
                } else {
                    // Revoked since it was cached: it must not be served stale.
                    self.positive.invalidate(&key).await;
                    if let Some(neg) = self.negative().filter(|_| !raced_purge) {
                        neg.insert(key, ()).await;
                    }
                    Err(LoadError::Inactive)
                }
            })
            .await;
        let status = if led {
            counters.positive_miss.inc();
            CacheStatus::Miss
        } else {
            counters.coalesced.inc();
            CacheStatus::Coalesced
        };
        match loaded {
            Ok(entry) => (Ok(entry.answer.clone()), status),
            Err(LoadError::Failed(e)) => match cached {
                Some(stale) if stale.is_servable_stale(self.clock.now()) => {
                    tracing::warn!(
                        kind = e.kind(),
                        error = %e,
                        token = %crate::token::fingerprint(&key),
                        "introspection failed; serving the cached answer stale (stale_if_error)"
                    );
                    (Ok(stale.answer.clone()), CacheStatus::Stale)
                }
                _ => (Err(LoadError::Failed(e)), status),
            },
            Err(LoadError::Inactive) => (Err(LoadError::Inactive), status),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    use crate::resilience::clock::ManualClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MAX_TTL: Duration = Duration::from_secs(60);
    const STALE: Duration = Duration::from_secs(30);

    fn cache(clock: &Arc<ManualClock>, stale: Duration) -> TokenCache {
        let cfg = CacheSettings {
            max_ttl: MAX_TTL,
            ..CacheSettings::default()
        };
        TokenCache::new(&cfg, clock.clone()).with_stale_if_error(stale)
    }

    fn active(exp: i64) -> Introspection {
        Introspection {
            active: true,
            exp: Some(exp),
            ..Introspection::inactive()
        }
    }

    fn key(n: u8) -> TokenHash {
        [n; 32]
    }

    async fn ask(
        c: &TokenCache,
        k: TokenHash,
        answer: Result<Introspection, IntrospectError>,
        calls: &AtomicUsize,
    ) -> (Result<Arc<Answer>, LoadError>, CacheStatus) {
        c.get_or_load(k, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            answer
        })
        .await
    }

    fn down() -> Result<Introspection, IntrospectError> {
        Err(IntrospectError::Status(503))
    }

    #[tokio::test]
    async fn stale_answer_within_the_window_only() {
        let clock = Arc::new(ManualClock::default());
        let c = cache(&clock, STALE);
        let calls = AtomicUsize::new(0);
        let exp = clock.unix_secs() + 3600;
        let (r, s) = ask(&c, key(1), Ok(active(exp)), &calls).await;
        assert!(r.is_ok() && s == CacheStatus::Miss);
        let (r, s) = ask(&c, key(1), down(), &calls).await;
        assert!(r.is_ok() && s == CacheStatus::Hit, "fresh: no call");
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        clock.advance(MAX_TTL + Duration::from_secs(1));
        let (r, s) = ask(&c, key(1), down(), &calls).await;
        assert!(r.is_ok(), "stale within the window");
        assert_eq!(s, CacheStatus::Stale);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a stale hit revalidates");

        clock.advance(STALE);
        let (r, s) = ask(&c, key(1), down(), &calls).await;
        assert!(matches!(r, Err(LoadError::Failed(_))), "past the window");
        assert_eq!(s, CacheStatus::Miss);

        // The AS is back: the answer is fresh again.
        let (r, s) = ask(&c, key(1), Ok(active(exp)), &calls).await;
        assert!(r.is_ok() && s == CacheStatus::Miss);
        let (_, s) = ask(&c, key(1), down(), &calls).await;
        assert_eq!(s, CacheStatus::Hit);
    }

    #[tokio::test]
    async fn never_stale_past_exp() {
        let clock = Arc::new(ManualClock::default());
        let c = cache(&clock, STALE);
        let calls = AtomicUsize::new(0);
        // exp 70 s away: fresh for 60 s, stale would reach 90 s but exp caps it at 70.
        let exp = clock.unix_secs() + 70;
        ask(&c, key(2), Ok(active(exp)), &calls).await.0.unwrap();
        clock.advance(Duration::from_secs(65));
        assert_eq!(ask(&c, key(2), down(), &calls).await.1, CacheStatus::Stale);
        clock.advance(Duration::from_secs(6));
        // Past exp: the cached answer comes back as a plain hit, without a
        // call, and the policy (not the cache) refuses it as expired.
        let before = calls.load(Ordering::SeqCst);
        let (r, s) = ask(&c, key(2), down(), &calls).await;
        assert_eq!(s, CacheStatus::Hit);
        assert_eq!(r.unwrap().exp, Some(exp));
        assert_eq!(calls.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn revoked_token_is_dropped_and_never_served_stale() {
        let clock = Arc::new(ManualClock::default());
        let c = cache(&clock, STALE);
        let calls = AtomicUsize::new(0);
        let exp = clock.unix_secs() + 3600;
        ask(&c, key(3), Ok(active(exp)), &calls).await.0.unwrap();
        clock.advance(MAX_TTL);
        let (r, _) = ask(&c, key(3), Ok(Introspection::inactive()), &calls).await;
        assert!(matches!(r, Err(LoadError::Inactive)));
        let (r, s) = ask(&c, key(3), down(), &calls).await;
        assert!(matches!(r, Err(LoadError::Inactive)));
        assert_eq!(s, CacheStatus::Negative);
    }

    #[tokio::test]
    async fn zero_window_turns_stale_answers_off() {
        let clock = Arc::new(ManualClock::default());
        let c = cache(&clock, Duration::ZERO);
        let calls = AtomicUsize::new(0);
        ask(&c, key(4), Ok(active(clock.unix_secs() + 3600)), &calls)
            .await
            .0
            .unwrap();
        clock.advance(MAX_TTL);
        let (r, _) = ask(&c, key(4), down(), &calls).await;
        assert!(matches!(r, Err(LoadError::Failed(_))));
    }

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
