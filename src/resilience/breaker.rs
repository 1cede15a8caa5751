//! Circuit breaker in front of the authorization server.
//!
//! When the AS is down, every uncached token would otherwise wait a whole
//! `introspection.timeout` before its 503, and every one of those waits holds a
//! connection and a request open. After `breaker_failures` consecutive AS
//! failures the breaker *opens*: calls fail at once with
//! [`IntrospectError::CircuitOpen`] (still a 503, and a cached answer may still
//! be served stale). After `breaker_open_for` it lets exactly one *probe* call
//! through (half-open); the probe's success closes the breaker, its failure
//! opens it again for another `breaker_open_for`.
//!
//! Time is `tokio::time::Instant`, so tests can move it with
//! `tokio::time::pause()` / `advance()`.

use crate::introspection::client::IntrospectError;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// What the breaker is doing, for logs and (later) metrics.
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

#[derive(Debug)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// How a call ended, as far as the AS's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The AS gave an answer (active or not: `active:false` is a healthy AS).
    Success,
    /// The AS failed: timeout, unreachable, 5xx, 401/403 to us, garbage.
    Failure,
    /// Says nothing about the AS (no endpoint known yet, the call was
    /// cancelled, or a 4xx about the token, which the client chose).
    Neutral,
}

impl Outcome {
    fn kind_of<T>(result: &Result<T, IntrospectError>) -> &'static str {
        result.as_ref().err().map_or("ok", IntrospectError::kind)
    }

    /// Only failures that no client can provoke with the token it sends count:
    /// anyone can send any token, and a failure it provokes must not open the
    /// breaker (503 for every valid token, `/readyz` unready).
    pub fn of<T>(result: &Result<T, IntrospectError>) -> Self {
        match result {
            Ok(_) => Self::Success,
            Err(
                IntrospectError::Timeout(_)
                | IntrospectError::Connect(_)
                | IntrospectError::ClientUnauthorized
                | IntrospectError::Status(_)
                | IntrospectError::InvalidResponse(_),
            ) => Self::Failure,
            // No call was made, so nothing was learned about the AS.
            Err(IntrospectError::NoEndpoint | IntrospectError::CircuitOpen) => Self::Neutral,
            // A 4xx about the token, or one that may depend on it (its size,
            // its content): a client can send such tokens on purpose, so they
            // must not count as failures. Nor as successes: an AS may refuse a
            // JWT-shaped token before it looks anything up (oidc-provider
            // does), so a fast 400 does not show that it can introspect, and
            // a client must not be able to keep a failing AS's breaker from
            // opening, or close it, with such tokens.
            Err(IntrospectError::TokenRejected(_) | IntrospectError::Refused(_)) => Self::Neutral,
        }
    }
}

pub struct Breaker {
    state: Mutex<State>,
    /// 0 disables the breaker.
    failures_to_open: u32,
    open_for: Duration,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("failures_to_open", &self.failures_to_open)
            .field("open_for", &self.open_for)
            .finish()
    }
}

/// Permission for one call. Dropping it without [`Ticket::finish`] (the
/// request was cancelled) counts as [`Outcome::Neutral`], so a cancelled probe
/// cannot leave the breaker half-open with nobody probing.
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Ticket<'_> {
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.breaker.record(self.probe, outcome);
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
    /// `failures_to_open = 0` turns the breaker off: every call goes through.
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
            failures_to_open,
            open_for,
        }
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

    /// Asks to make one call. `Err(CircuitOpen)` means: do not call the AS.
    pub fn admit(&self) -> Result<Ticket<'_>, IntrospectError> {
        let ticket = |probe| Ticket {
            breaker: self,
            probe,
            done: false,
        };
        if self.failures_to_open == 0 {
            return Ok(ticket(false));
        }
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(ticket(false)),
            State::Open { until } if Instant::now() < until => Err(IntrospectError::CircuitOpen),
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                info!("authorization server circuit half-open: sending one probe");
                Ok(ticket(true))
            }
            State::HalfOpen { probing: true } => Err(IntrospectError::CircuitOpen),
        }
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        if self.failures_to_open == 0 {
            return;
        }
        let mut state = self.lock();
        let open = |state: &mut State| {
            *state = State::Open {
                until: Instant::now() + self.open_for,
            };
        };
        match (&mut *state, outcome) {
            (
                State::Closed {
                    consecutive_failures,
                },
                Outcome::Failure,
            ) => {
                *consecutive_failures += 1;
                if *consecutive_failures >= self.failures_to_open {
                    warn!(
                        failures = *consecutive_failures,
                        open_for = ?self.open_for,
                        "authorization server circuit opened: failing fast"
                    );
                    open(&mut state);
                }
            }
            (
                State::Closed {
                    consecutive_failures,
                },
                Outcome::Success,
            ) => {
                *consecutive_failures = 0;
            }
            (State::HalfOpen { .. }, Outcome::Success) if probe => {
                info!("authorization server circuit closed: probe succeeded");
                *state = State::Closed {
                    consecutive_failures: 0,
                };
            }
            (State::HalfOpen { .. }, Outcome::Failure) if probe => {
                warn!(open_for = ?self.open_for, "authorization server circuit re-opened: probe failed");
                open(&mut state);
            }
            (State::HalfOpen { probing }, Outcome::Neutral) if probe => {
                // Let the next caller probe instead.
                *probing = false;
            }
            // Calls admitted before the breaker opened that finish now: the
            // breaker already knows the AS is failing, and a late success does
            // not prove the AS is back (only the probe decides that).
            _ => {}
        }
    }

    /// Runs `call` if the breaker admits it and records its outcome.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, IntrospectError>>,
    ) -> Result<T, IntrospectError> {
        let ticket = self.admit()?;
        let result = call.await;
        ticket.finish(Outcome::of(&result));
        result
    }

    /// [`Breaker::call`], but a failure that the token may have caused (a
    /// timeout, a 5xx, an unreadable answer: an AS can choke on one token)
    /// does not open the breaker, nor re-open it as the half-open probe,
    /// without a second opinion: `canary` asks the AS about a token nobody
    /// has. If the AS answers that, it is healthy and the failure was this
    /// token's: it counts as a success. Otherwise a client could open the
    /// breaker (or keep it open) with tokens that make the AS fail, and every
    /// valid token would get 503. The canary runs only when this failure
    /// would open the breaker, so at most once per `breaker_failures`
    /// failures.
    pub async fn call_confirmed<T, C, CF>(
        &self,
        call: impl Future<Output = Result<T, IntrospectError>>,
        canary: C,
    ) -> Result<T, IntrospectError>
    where
        C: FnOnce() -> CF,
        CF: Future<Output = bool>,
    {
        let ticket = self.admit()?;
        let result = call.await;
        let mut outcome = Outcome::of(&result);
        let maybe_the_tokens = matches!(
            &result,
            Err(IntrospectError::Timeout(_)
                | IntrospectError::InvalidResponse(_)
                | IntrospectError::Status(500..=599))
        );
        if outcome == Outcome::Failure
            && maybe_the_tokens
            && (ticket.probe || self.would_open())
            && canary().await
        {
            warn!(
                kind = Outcome::kind_of(&result),
                "introspection failed, but the authorization server answers another token: \
                 not counting it against the AS (a token that makes the AS fail?)"
            );
            outcome = Outcome::Success;
        }
        ticket.finish(outcome);
        result
    }

    /// Would one more failure open a closed breaker?
    fn would_open(&self) -> bool {
        self.failures_to_open > 0
            && matches!(*self.lock(), State::Closed { consecutive_failures }
                if consecutive_failures.saturating_add(1) >= self.failures_to_open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(10);

    fn fail() -> Result<(), IntrospectError> {
        Err(IntrospectError::Status(500))
    }

    async fn run(b: &Breaker, r: Result<(), IntrospectError>) -> Result<(), IntrospectError> {
        b.call(async { r }).await
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_consecutive_failures_only() {
        let b = Breaker::new(3, OPEN_FOR);
        run(&b, fail()).await.unwrap_err();
        run(&b, fail()).await.unwrap_err();
        run(&b, Ok(())).await.unwrap();
        // The success reset the count: two more failures do not open it.
        run(&b, fail()).await.unwrap_err();
        run(&b, fail()).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Closed);
        run(&b, fail()).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Open);
        let mut called = false;
        let r = b
            .call(async {
                called = true;
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(IntrospectError::CircuitOpen)));
        assert!(!called, "an open breaker must not call the AS");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probe_success_closes() {
        let b = Breaker::new(1, OPEN_FOR);
        run(&b, fail()).await.unwrap_err();
        tokio::time::advance(OPEN_FOR - Duration::from_millis(1)).await;
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.admit().expect("the probe is admitted");
        assert!(
            matches!(b.admit(), Err(IntrospectError::CircuitOpen)),
            "only one probe at a time"
        );
        probe.finish(Outcome::Success);
        assert_eq!(b.state(), BreakerState::Closed);
        run(&b, Ok(())).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_probe_failure_reopens_for_another_period() {
        let b = Breaker::new(2, OPEN_FOR);
        run(&b, fail()).await.unwrap_err();
        run(&b, fail()).await.unwrap_err();
        tokio::time::advance(OPEN_FOR).await;
        run(&b, fail()).await.unwrap_err();
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "one failed probe re-opens, no count"
        );
        tokio::time::advance(OPEN_FOR / 2).await;
        assert!(b.admit().is_err());
        tokio::time::advance(OPEN_FOR / 2).await;
        run(&b, Ok(())).await.unwrap();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_or_neutral_probe_lets_the_next_caller_probe() {
        let b = Breaker::new(1, OPEN_FOR);
        run(&b, fail()).await.unwrap_err();
        tokio::time::advance(OPEN_FOR).await;
        drop(b.admit().expect("probe"));
        let probe = b.admit().expect("a dropped probe frees the slot");
        probe.finish(Outcome::Neutral);
        b.admit()
            .expect("a neutral probe frees the slot")
            .finish(Outcome::Success);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn inactive_answers_and_missing_endpoint_do_not_count() {
        let b = Breaker::new(1, OPEN_FOR);
        run(&b, Err(IntrospectError::NoEndpoint)).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Closed);
        // An `active:false` introspection is an `Ok` from the introspector.
        assert_eq!(
            Outcome::of(&Ok::<_, IntrospectError>(
                crate::introspection::client::Introspection::inactive()
            )),
            Outcome::Success
        );
        for e in [
            IntrospectError::TokenRejected("unsupported_token_type"),
            IntrospectError::Refused(400),
            IntrospectError::Refused(413),
            IntrospectError::NoEndpoint,
            IntrospectError::CircuitOpen,
        ] {
            assert_eq!(Outcome::of::<()>(&Err(e)), Outcome::Neutral);
        }
        for e in [
            IntrospectError::Timeout(Duration::from_secs(1)),
            IntrospectError::Connect("refused".into()),
            IntrospectError::ClientUnauthorized,
            IntrospectError::Status(503),
            IntrospectError::Status(403),
            IntrospectError::Status(429),
            IntrospectError::InvalidResponse("html".into()),
        ] {
            assert_eq!(Outcome::of::<()>(&Err(e)), Outcome::Failure);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_the_canary_contradicts_does_not_open_or_reopen() {
        let b = Breaker::new(2, OPEN_FOR);
        let canary_calls = std::sync::atomic::AtomicU32::new(0);
        let confirmed = |r: Result<(), IntrospectError>, healthy: bool| {
            let calls = &canary_calls;
            let b = &b;
            async move {
                b.call_confirmed(async { r }, || async move {
                    calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    healthy
                })
                .await
            }
        };
        // Below the threshold: no canary.
        confirmed(fail(), true).await.unwrap_err();
        assert_eq!(canary_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        // This one would open it; the AS answers the canary: not opened, count reset.
        confirmed(fail(), true).await.unwrap_err();
        assert_eq!(canary_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(b.state(), BreakerState::Closed);
        confirmed(fail(), true).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Closed, "the count was reset");
        // The canary fails too: the AS is down, open.
        confirmed(fail(), false).await.unwrap_err();
        assert_eq!(b.state(), BreakerState::Open);
        // A failed probe that the canary contradicts closes it.
        tokio::time::advance(OPEN_FOR).await;
        confirmed(Err(IntrospectError::Timeout(Duration::from_secs(1))), true)
            .await
            .unwrap_err();
        assert_eq!(b.state(), BreakerState::Closed);
        // Failures no token can cause open it without a canary.
        let before = canary_calls.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..2 {
            confirmed(Err(IntrospectError::Connect("refused".into())), true)
                .await
                .unwrap_err();
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            canary_calls.load(std::sync::atomic::Ordering::SeqCst),
            before
        );
    }

    #[tokio::test(start_paused = true)]
    async fn late_success_of_a_pre_open_call_does_not_close() {
        let b = Breaker::new(1, OPEN_FOR);
        let slow = b.admit().unwrap();
        run(&b, fail()).await.unwrap_err();
        slow.finish(Outcome::Success);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_failures_disables_the_breaker() {
        let b = Breaker::new(0, OPEN_FOR);
        for _ in 0..10 {
            run(&b, fail()).await.unwrap_err();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        run(&b, Ok(())).await.unwrap();
    }
}
