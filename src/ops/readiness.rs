//! `/readyz`'s answer: whether this instance should get traffic. Here, not in
//! [`crate::admin`], so that the composition root can register checks without
//! importing the admin listener (which imports the app).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// A named readiness condition: `true` means "ready as far as I am concerned".
type Check = Box<dyn Fn() -> bool + Send + Sync>;

/// Whether this instance should get traffic. Shutdown wins over everything;
/// other components (e.g. the circuit breaker) add checks with [`Readiness::add_check`].
#[derive(Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
    checks: RwLock<Vec<(&'static str, Check)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("shutting_down", &self.is_shutting_down())
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// From now on `/readyz` answers 503; there is no way back.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Adds a condition that `/readyz` evaluates on every probe; `name` is what
    /// the 503 body reports. E.g. `readiness.add_check("breaker open", move || !breaker.is_open())`.
    pub fn add_check(&self, name: &'static str, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.checks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, Box::new(check)));
    }

    /// `Err(reason)` when not ready.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.is_shutting_down() {
            return Err("shutting down");
        }
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        match checks.iter().find(|(_, ok)| !ok()) {
            Some((name, _)) => Err(name),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn readiness_checks_and_shutdown() {
        let r = Readiness::default();
        assert_eq!(r.check(), Ok(()));
        let open = Arc::new(AtomicBool::new(true));
        let o = open.clone();
        r.add_check("breaker open", move || !o.load(Ordering::SeqCst));
        assert_eq!(r.check(), Err("breaker open"));
        open.store(false, Ordering::SeqCst);
        assert_eq!(r.check(), Ok(()));
        r.begin_shutdown();
        assert_eq!(r.check(), Err("shutting down"));
    }
}
