//! Leaf: what keeps a failing dependency from taking the gate down with it.
//!
//! - [`breaker`]: circuit breaker in front of the AS (closed → open → half-open probe).
//! - [`clock`]: wall clock behind a trait, so expiry is testable without sleeping.

pub mod breaker;
pub mod clock;
