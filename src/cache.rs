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
//!   token share one introspection call ([`SingleFlight`]). Errors are never
//!   cached.
//!
//! The cache holds the introspection, never the decision: `policy::evaluate`
//! runs on every hit.

use crate::clock::Clock;
use crate::config::RawCache;
use crate::flight::SingleFlight;
use crate::introspect::{IntrospectError, Introspection};
use crate::token::TokenHash;
use moka::future::Cache;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where an answer came from, for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the positive cache (or from another request's in-flight call).
    Hit,
    /// This request ran the introspection call.
    Miss,
    /// The token is in the negative cache.
    Negative,
    /// The AS failed and a cached answer past its TTL was served (`stale_if_error`).
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Negative => "negative",
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

/// One cached active answer and, on the injected clock, when it stops being
/// fresh and when it stops being usable at all.
#[derive(Debug)]
struct Entry {
    introspection: Arc<Introspection>,
    fresh_until: SystemTime,
    /// fresh_until + stale_if_error, capped at `exp`.
    stale_until: SystemTime,
}

impl Entry {
    fn new(
        introspection: Introspection,
        now: SystemTime,
        max_ttl: Duration,
        stale: Duration,
    ) -> Self {
        let fresh_until = now + entry_ttl(introspection.exp, now, max_ttl);
        let stale_until = now + entry_ttl(introspection.exp, now, max_ttl.saturating_add(stale));
        Self {
            introspection: Arc::new(introspection),
            fresh_until,
            stale_until,
        }
    }

    fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.fresh_until
    }

    /// Past `exp` on our clock: asking the AS again cannot make it valid, and
    /// the policy check will refuse it (401 expired) without a call.
    fn is_expired(&self, now: SystemTime) -> bool {
        self.introspection.exp.is_some_and(|exp| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0)) <= now
        })
    }

    /// Usable as a stale answer while the AS fails.
    fn is_servable_stale(&self, now: SystemTime) -> bool {
        now < self.stale_until && !self.is_expired(now)
    }
}

struct ExpAware {
    clock: Arc<dyn Clock>,
}

impl ExpAware {
    fn lifetime(&self, value: &Entry) -> Duration {
        value
            .stale_until
            .duration_since(self.clock.now())
            .unwrap_or(Duration::ZERO)
    }
}

impl moka::Expiry<TokenHash, Arc<Entry>> for ExpAware {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }

    // moka's default keeps the *old* expiry on replace; a revalidated entry
    // must get its own.
    fn expire_after_update(
        &self,
        _key: &TokenHash,
        value: &Arc<Entry>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.lifetime(value))
    }
}

type Loaded = Result<Arc<Entry>, LoadError>;

pub struct TokenCache {
    positive: Cache<TokenHash, Arc<Entry>>,
    /// `None` when `negative_ttl = "0s"`.
    negative: Option<Cache<TokenHash, ()>>,
    flights: SingleFlight<TokenHash, Loaded>,
    max_ttl: Duration,
    stale_if_error: Duration,
    clock: Arc<dyn Clock>,
}

impl TokenCache {
    /// `stale_if_error` is `resilience.stale_if_error`; zero turns stale answers off.
    pub fn new(cfg: &RawCache, stale_if_error: Duration, clock: Arc<dyn Clock>) -> Self {
        let positive = Cache::builder()
            .max_capacity(cfg.max_entries)
            .expire_after(ExpAware {
                clock: clock.clone(),
            })
            .build();
        let negative = (!cfg.negative_ttl.is_zero() && cfg.negative_max_entries > 0).then(|| {
            Cache::builder()
                .max_capacity(cfg.negative_max_entries)
                .time_to_live(cfg.negative_ttl)
                .build()
        });
        Self {
            positive,
            negative,
            flights: SingleFlight::default(),
            max_ttl: cfg.max_ttl,
            stale_if_error,
            clock,
        }
    }

    /// Returns the cached introspection for `key`, or runs `load` once for all
    /// concurrent callers with the same key. An inactive answer is stored in the
    /// negative cache and returned as [`LoadError::Inactive`]. When `load` fails
    /// and a stale answer is still within `stale_if_error` (and before `exp`),
    /// that answer is returned with [`CacheStatus::Stale`].
    pub async fn get_or_load<F, Fut>(
        &self,
        key: TokenHash,
        load: F,
    ) -> (Result<Arc<Introspection>, LoadError>, CacheStatus)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Introspection, IntrospectError>>,
    {
        if let Some(neg) = &self.negative {
            if neg.contains_key(&key) {
                return (Err(LoadError::Inactive), CacheStatus::Negative);
            }
        }
        let cached = self.positive.get(&key).await;
        let now = self.clock.now();
        if let Some(entry) = &cached {
            if entry.is_fresh(now) || entry.is_expired(now) {
                return (Ok(entry.introspection.clone()), CacheStatus::Hit);
            }
        }

        let (loaded, led) = self
            .flights
            .run(key, || async {
                let answer = load().await?;
                if answer.active {
                    let entry = Arc::new(Entry::new(
                        answer,
                        self.clock.now(),
                        self.max_ttl,
                        self.stale_if_error,
                    ));
                    self.positive.insert(key, entry.clone()).await;
                    Ok(entry)
                } else {
                    // Revoked since it was cached: it must not be served stale.
                    self.positive.invalidate(&key).await;
                    if let Some(neg) = &self.negative {
                        neg.insert(key, ()).await;
                    }
                    Err(LoadError::Inactive)
                }
            })
            .await;
        let status = if led {
            CacheStatus::Miss
        } else {
            CacheStatus::Hit
        };
        match loaded {
            Ok(entry) => (Ok(entry.introspection.clone()), status),
            Err(LoadError::Failed(e)) => match cached {
                Some(stale) if stale.is_servable_stale(self.clock.now()) => {
                    tracing::warn!(
                        kind = e.kind(),
                        error = %e,
                        token = %crate::token::fingerprint(&key),
                        "introspection failed; serving the cached answer stale (stale_if_error)"
                    );
                    (Ok(stale.introspection.clone()), CacheStatus::Stale)
                }
                // A failed lookup is a miss whoever ran the call.
                _ => (Err(LoadError::Failed(e)), CacheStatus::Miss),
            },
            Err(LoadError::Inactive) => (Err(LoadError::Inactive), CacheStatus::Miss),
        }
    }

    /// Removes a token from both caches (used by purge).
    pub async fn invalidate(&self, key: &TokenHash) {
        self.positive.invalidate(key).await;
        if let Some(neg) = &self.negative {
            neg.invalidate(key).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::clock::ManualClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MAX_TTL: Duration = Duration::from_secs(60);
    const STALE: Duration = Duration::from_secs(30);

    fn cache(clock: &Arc<ManualClock>, stale: Duration) -> TokenCache {
        let cfg = RawCache {
            max_ttl: MAX_TTL,
            ..RawCache::default()
        };
        TokenCache::new(&cfg, stale, clock.clone())
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
    ) -> (Result<Arc<Introspection>, LoadError>, CacheStatus) {
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
