//! The circuit breaker: one type for every dependency that can fail slowly
//! (the authorization server, the fleet's Redis).
//!
//! When a dependency is down, every call would otherwise wait a whole timeout
//! before it fails, and each wait holds a connection and a request open. After
//! `failures_to_open` consecutive failures the breaker *opens*: calls are not
//! made for `open_for`. What happens after that is the [`Recovery`]:
//! - [`Recovery::OneProbe`] (the AS): exactly one *probe* call goes through
//!   (half-open); its success closes the breaker, its failure opens it again;
//!   results of calls admitted before it opened are ignored (only the probe
//!   decides).
//! - [`Recovery::AllCalls`] (Redis, an optimisation nobody waits for): every
//!   call goes through again, and every result counts whenever it arrives: a
//!   success closes the breaker, a failure (re)opens it at once.
//!
//! What counts as a failure is the caller's business ([`Outcome`]); the AS's
//! rules are `Outcome::of` and `Breaker::call`/`call_confirmed` in
//! [`crate::introspection::client`].
//!
//! Time is `tokio::time::Instant`, so tests can move it with
//! `tokio::time::pause()` / `advance()`.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// What the breaker is doing, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; failures are being counted.
    Closed,
    /// Calls fail fast until the open period ends.
    Open,
    /// The open period has ended: one probe call is (or may be) in flight.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// What the breaker does once the open period is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// One probe call decides; the others still fail fast until it has.
    OneProbe,
    /// Every call goes through; any result, even a late one, counts.
    AllCalls,
}

/// A change of state that the caller may want to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed that a log needs to say.
    None,
    /// A closed breaker opened.
    Opened,
    /// The half-open probe (or, with [`Recovery::AllCalls`], a call after the
    /// open period) failed: open again.
    Reopened,
    /// It closed again.
    Closed,
}

#[derive(Debug)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// How a call ended, as far as the dependency's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency answered.
    Success,
    /// The dependency failed.
    Failure,
    /// Says nothing about the dependency (e.g. the call was cancelled).
    Neutral,
}

pub struct Breaker {
    state: Mutex<State>,
    /// 0 disables the breaker.
    failures_to_open: u32,
    open_for: Duration,
    recovery: Recovery,
    /// `Some(what)`: the breaker logs its transitions itself, as "{what}
    /// circuit opened" etc. `None`: the caller logs ([`Transition`]).
    label: Option<std::borrow::Cow<'static, str>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("failures_to_open", &self.failures_to_open)
            .field("open_for", &self.open_for)
            .field("recovery", &self.recovery)
            .finish()
    }
}

/// Permission for one call. Dropping it without [`Ticket::finish`] (the
/// request was cancelled) counts as [`Outcome::Neutral`], so a cancelled probe
/// cannot leave the breaker half-open with nobody probing.
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    pub(crate) probe: bool,
    done: bool,
}

impl Ticket<'_> {
    pub fn finish(mut self, outcome: Outcome) -> Transition {
        self.done = true;
        self.breaker.record(self.probe, outcome)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(self.probe, Outcome::Neutral);
        }
    }
}

impl Breaker {
    /// A [`Recovery::OneProbe`] breaker that logs nothing itself.
    /// `failures_to_open = 0` turns the breaker off: every call goes through.
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
            failures_to_open,
            open_for,
            recovery: Recovery::OneProbe,
            label: None,
        }
    }

    pub fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }

    /// Logs transitions as "{what} circuit opened: failing fast" and so on.
    pub fn logged_as(mut self, what: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.label = Some(what.into());
        self
    }

    pub fn open_for(&self) -> Duration {
        self.open_for
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few integers, always written whole: a panic elsewhere
        // cannot leave it torn, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state. An open breaker whose period is over reports
    /// `HalfOpen`: the next call will be the probe.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make one call. `None` means: do not make it.
    pub fn try_admit(&self) -> Option<Ticket<'_>> {
        let ticket = |probe| Ticket {
            breaker: self,
            probe,
            done: false,
        };
        if self.failures_to_open == 0 {
            return Some(ticket(false));
        }
        let mut state = self.lock();
        match (&*state, self.recovery) {
            (State::Closed { .. }, _) => Some(ticket(false)),
            (State::Open { until }, _) if Instant::now() < *until => None,
            (_, Recovery::AllCalls) => Some(ticket(false)),
            (State::Open { .. } | State::HalfOpen { probing: false }, Recovery::OneProbe) => {
                *state = State::HalfOpen { probing: true };
                if let Some(what) = &self.label {
                    info!("{what} circuit half-open: sending one probe");
                }
                Some(ticket(true))
            }
            (State::HalfOpen { probing: true }, Recovery::OneProbe) => None,
        }
    }

    /// Records the outcome of a call made without asking (e.g. a purge, which
    /// must be tried even while the breaker is open).
    pub fn record_unadmitted(&self, outcome: Outcome) -> Transition {
        self.record(false, outcome)
    }

    fn record(&self, probe: bool, outcome: Outcome) -> Transition {
        if self.failures_to_open == 0 {
            return Transition::None;
        }
        let mut state = self.lock();
        let open = |state: &mut State| {
            *state = State::Open {
                until: Instant::now() + self.open_for,
            };
        };
        let transition = match (&mut *state, outcome) {
            (
                State::Closed {
                    consecutive_failures,
                },
                Outcome::Failure,
            ) => {
                *consecutive_failures += 1;
                if *consecutive_failures >= self.failures_to_open {
                    if let Some(what) = &self.label {
                        warn!(
                            failures = *consecutive_failures,
                            open_for = ?self.open_for,
                            "{what} circuit opened: failing fast"
                        );
                    }
                    open(&mut state);
                    Transition::Opened
                } else {
                    Transition::None
                }
            }
            (
                State::Closed {
                    consecutive_failures,
                },
                Outcome::Success,
            ) => {
                *consecutive_failures = 0;
                Transition::None
            }
            (State::Open { .. } | State::HalfOpen { .. }, Outcome::Success)
                if probe || self.recovery == Recovery::AllCalls =>
            {
                if let Some(what) = &self.label {
                    info!("{what} circuit closed: probe succeeded");
                }
                *state = State::Closed {
                    consecutive_failures: 0,
                };
                Transition::Closed
            }
            (State::Open { .. } | State::HalfOpen { .. }, Outcome::Failure)
                if probe || self.recovery == Recovery::AllCalls =>
            {
                if let Some(what) = &self.label {
                    warn!(open_for = ?self.open_for, "{what} circuit re-opened: probe failed");
                }
                open(&mut state);
                Transition::Reopened
            }
            (State::HalfOpen { probing }, Outcome::Neutral) if probe => {
                // Let the next caller probe instead.
                *probing = false;
                Transition::None
            }
            // Calls admitted before the breaker opened that finish now: the
            // breaker already knows the dependency is failing, and a late
            // success does not prove it is back (only the probe decides that).
            _ => Transition::None,
        };
        transition
    }

    /// Would one more failure open a closed breaker?
    pub fn would_open(&self) -> bool {
        self.failures_to_open > 0
            && matches!(*self.lock(), State::Closed { consecutive_failures }
                if consecutive_failures.saturating_add(1) >= self.failures_to_open)
    }
}
