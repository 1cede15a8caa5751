//! The authorization server's rules for the circuit breaker
//! ([`crate::resilience::breaker`], shared with the fleet's Redis): which
//! introspection results count as AS failures ([`Outcome::of`]), the
//! `CircuitOpen` error, and the canary's second opinion
//! ([`Breaker::call_confirmed`]).

use super::client::IntrospectError;
use crate::resilience::breaker::{Breaker, Outcome, Ticket};
use std::future::Future;
use tracing::warn;

// The AS's rules for the generic breaker ([`crate::resilience::breaker`]):
// which introspection failures count, and the canary's second opinion.
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
                | IntrospectError::InvalidResponse(_)
                // The JWKS endpoint failing is the AS failing; a client cannot
                // cause it (an unknown `kid` refetches at most once per interval).
                | IntrospectError::KeysUnavailable(_),
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

impl Breaker {
    /// Asks to make one AS call. `Err(CircuitOpen)` means: do not call the AS.
    pub fn admit(&self) -> Result<Ticket<'_>, IntrospectError> {
        self.try_admit().ok_or(IntrospectError::CircuitOpen)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::breaker::BreakerState;
    use std::time::Duration;

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
