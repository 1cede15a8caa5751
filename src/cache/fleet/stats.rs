//! The fleet layer's counters (`/metrics` reads a [`FleetStats`] snapshot).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the fleet counters, for `/metrics` (wired by the metrics layer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// L1 misses answered from L2.
    pub l2_hits: u64,
    /// L2 lookups that found nothing usable (absent, or unreadable: see `l2_garbage`).
    pub l2_misses: u64,
    /// Values that were present but unreadable (bad MAC, unknown version, bad JSON, wrong type).
    pub l2_garbage: u64,
    /// Redis calls that failed or timed out (each fell back to introspection).
    pub l2_errors: u64,
    /// Redis calls skipped because the breaker was open.
    pub l2_skipped: u64,
    /// Entries written to L2.
    pub l2_writes: u64,
    /// Values with a valid MAC refused because they are past their MAC'd
    /// expiry or older than the token's last purge: a replay by someone who
    /// can write Redis, a purge that raced an introspection, or clock skew.
    pub l2_refused: u64,
    /// Purges published by this replica.
    pub purges_sent: u64,
    /// Purge messages received (its own included).
    pub purges_received: u64,
    /// Times the subscriber (re)subscribed and cleared L1.
    pub l1_resyncs: u64,
    /// Times this replica won the single-flight lock.
    pub lock_acquired: u64,
    /// Times this replica lost it and polled L2.
    pub lock_waits: u64,
    /// Of those, the times L2 filled in before the deadline.
    pub lock_wait_hits: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) l2_hits: AtomicU64,
    pub(super) l2_misses: AtomicU64,
    pub(super) l2_garbage: AtomicU64,
    pub(super) l2_errors: AtomicU64,
    pub(super) l2_skipped: AtomicU64,
    pub(super) l2_writes: AtomicU64,
    pub(super) l2_refused: AtomicU64,
    pub(super) purges_sent: AtomicU64,
    pub(super) purges_received: AtomicU64,
    pub(super) l1_resyncs: AtomicU64,
    pub(super) lock_acquired: AtomicU64,
    pub(super) lock_waits: AtomicU64,
    pub(super) lock_wait_hits: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
