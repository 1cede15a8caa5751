//! Wall-clock time behind a trait, so that `exp`/`nbf` checks can be tested
//! without sleeping. moka's own expiry clock cannot be mocked (moka issue #522),
//! which is why every cache hit re-checks `exp` against *this* clock.

use std::sync::atomic::{AtomicI64, Ordering};
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

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that starts at the real time and only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    offset_ms: AtomicI64,
    base: SystemTime,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            offset_ms: AtomicI64::new(0),
            base: SystemTime::now(),
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
