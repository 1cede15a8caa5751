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

use crate::clock::Clock;
use crate::config::RawCache;
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
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Negative => "negative",
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

struct ExpAware {
    max_ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl moka::Expiry<TokenHash, Arc<Introspection>> for ExpAware {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Arc<Introspection>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry_ttl(value.exp, self.clock.now(), self.max_ttl))
    }
}

pub struct TokenCache {
    positive: Cache<TokenHash, Arc<Introspection>>,
    /// `None` when `negative_ttl = "0s"`.
    negative: Option<Cache<TokenHash, ()>>,
}

impl TokenCache {
    pub fn new(cfg: &RawCache, clock: Arc<dyn Clock>) -> Self {
        let positive = Cache::builder()
            .max_capacity(cfg.max_entries)
            .expire_after(ExpAware {
                max_ttl: cfg.max_ttl,
                clock,
            })
            .build();
        let negative = (!cfg.negative_ttl.is_zero() && cfg.negative_max_entries > 0).then(|| {
            Cache::builder()
                .max_capacity(cfg.negative_max_entries)
                .time_to_live(cfg.negative_ttl)
                .build()
        });
        Self { positive, negative }
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
        if let Some(neg) = &self.negative {
            if neg.contains_key(&key) {
                return (Err(LoadError::Inactive), CacheStatus::Negative);
            }
        }
        let negative = self.negative.clone();
        let init = async move {
            let answer = load().await?;
            if answer.active {
                Ok(Arc::new(answer))
            } else {
                if let Some(neg) = negative {
                    neg.insert(key, ()).await;
                }
                Err(LoadError::Inactive)
            }
        };
        match self.positive.entry(key).or_try_insert_with(init).await {
            Ok(entry) => {
                let status = if entry.is_fresh() {
                    CacheStatus::Miss
                } else {
                    CacheStatus::Hit
                };
                (Ok(entry.into_value()), status)
            }
            Err(e) => (Err(LoadError::clone(&e)), CacheStatus::Miss),
        }
    }

    /// Runs moka's deferred maintenance (evictions, size accounting) now, so a
    /// measurement (the memory benchmark) sees the settled state.
    pub async fn run_pending_tasks(&self) {
        self.positive.run_pending_tasks().await;
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
