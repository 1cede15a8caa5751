//! Wall-clock time behind a trait, so that `exp`/`nbf` checks can be tested
//! without sleeping. moka's own expiry clock cannot be mocked (moka issue #522),
//! which is why every cache hit re-checks `exp` against *this* clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;

    /// Seconds since the epoch, floored: what `exp`/`nbf` are compared with.
    fn unix_secs(&self) -> i64 {
        match self.now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// Time left until `exp` (seconds since the epoch) at `now`; zero once it is
/// reached or for an `exp` before 1970. The one place that turns a token's
/// `exp` into a duration: the cache's lifetimes, the expired check on every
/// hit and a WebSocket tunnel's life all use it.
pub fn until_exp(exp: i64, now: SystemTime) -> Duration {
    u64::try_from(exp)
        .ok()
        .and_then(|secs| {
            (UNIX_EPOCH + Duration::from_secs(secs))
                .duration_since(now)
                .ok()
        })
        .unwrap_or(Duration::ZERO)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the clock module is where the wall clock is read"
    )]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Now, on the real monotonic clock, for measuring how long real work took
/// (request latency, introspection duration). Not for deadlines: those use
/// `tokio::time::Instant`, which tests can pause and advance.
#[expect(
    clippy::disallowed_methods,
    reason = "the clock module is where the real clock is read"
)]
pub fn stopwatch() -> std::time::Instant {
    std::time::Instant::now()
}

/// A clock that starts at the real time and only moves when told to. A test
/// hook: compiled for the unit tests and, through the `test-util` feature that
/// the crate's own dev-dependency turns on, for the integration tests; never
/// in the shipped binary.
#[cfg(any(test, feature = "test-util"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "test-util"))]
mod manual {
    use super::{Clock, SystemClock};
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::{Duration, SystemTime};

    /// See [`super::ManualClock`].
    #[derive(Debug)]
    pub struct ManualClock {
        offset_ms: AtomicI64,
        base: SystemTime,
    }

    impl Default for ManualClock {
        fn default() -> Self {
            Self {
                offset_ms: AtomicI64::new(0),
                base: SystemClock.now(),
            }
        }
    }

    impl ManualClock {
        pub fn advance(&self, by: Duration) {
            let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            self.offset_ms.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            let ms = self.offset_ms.load(Ordering::SeqCst);
            self.base + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        }
    }
}

/// Durations are strings such as "250ms", "2s", "5m" (humantime syntax).
pub mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_exp_never_negative() {
        let now = UNIX_EPOCH + Duration::from_millis(1_000_500);
        assert_eq!(until_exp(1_002, now), Duration::from_millis(1_500));
        assert_eq!(until_exp(1_000, now), Duration::ZERO);
        assert_eq!(until_exp(-5, now), Duration::ZERO);
        let exact = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            until_exp(1_000, exact),
            Duration::ZERO,
            "expired at exp itself"
        );
    }
}
