//! Single-flight: concurrent calls for one key share one run of the work.
//!
//! moka's `or_try_insert_with` coalesces only while the key is *absent*; a
//! stale entry that is being revalidated is present, so the cache needs its own
//! coalescing for that case. The first caller (the leader) runs the future
//! itself, in its own request's task; the others wait on a `watch` channel. If the leader is
//! cancelled (its client went away), its slot is removed and a waiter takes
//! over, so nobody waits for work that nobody runs. Results, errors included,
//! go to the callers that were waiting and are not kept.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

pub struct SingleFlight<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
}

struct Slot<V> {
    /// Identifies this run, so a finished leader removes only its own slot.
    id: Arc<()>,
    tx: watch::Sender<Option<V>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }
}

/// Removes the leader's slot when it finishes *or* is dropped mid-way; in the
/// latter case the sender goes with it and the waiters retry.
struct LeaderGuard<'a, K: Hash + Eq + Clone, V: Clone> {
    flight: &'a SingleFlight<K, V>,
    key: K,
    id: Arc<()>,
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for LeaderGuard<'_, K, V> {
    fn drop(&mut self) {
        let mut slots = self.flight.lock();
        if slots
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(&s.id, &self.id))
        {
            slots.remove(&self.key);
        }
    }
}

enum Role<V> {
    Leader(Arc<()>, watch::Sender<Option<V>>),
    Follower(watch::Receiver<Option<V>>),
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Slot<V>>> {
        // Only whole inserts and removes happen under the lock.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` unless a run for `key` is already in flight, in which case
    /// it waits for that run's result. Returns the result and whether this
    /// caller ran the work.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let (id, tx) = loop {
            let role = {
                let mut slots = self.lock();
                match slots.get(&key) {
                    Some(slot) => Role::Follower(slot.tx.subscribe()),
                    None => {
                        let id = Arc::new(());
                        let (tx, _) = watch::channel(None);
                        slots.insert(
                            key.clone(),
                            Slot {
                                id: id.clone(),
                                tx: tx.clone(),
                            },
                        );
                        Role::Leader(id, tx)
                    }
                }
            };
            match role {
                Role::Leader(id, tx) => break (id, tx),
                Role::Follower(mut rx) => {
                    if let Ok(v) = rx.wait_for(Option::is_some).await {
                        if let Some(v) = v.clone() {
                            return (v, false);
                        }
                    }
                    // The leader was dropped before it finished: try again,
                    // possibly as the new leader.
                }
            }
        };
        let _guard = LeaderGuard {
            flight: self,
            key,
            id,
        };
        let value = work().await;
        tx.send_replace(Some(value.clone()));
        (value, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_later_ones_run_again() {
        let flight = Arc::new(SingleFlight::<u8, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (go_tx, go_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (flight, runs, mut go) = (flight.clone(), runs.clone(), go_rx.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run(1, || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = go.wait_for(|g| *g).await;
                        7
                    })
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        go_tx.send_replace(true);
        let mut leaders = 0;
        for t in tasks {
            let (v, led) = t.await.unwrap();
            assert_eq!(v, 7);
            leaders += usize::from(led);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        // Nothing is kept: the next call runs again.
        let (v, led) = flight.run(1, || async { 8 }).await;
        assert_eq!((v, led), (8, true));
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let flight = Arc::new(SingleFlight::<u8, u32>::default());
        let f = flight.clone();
        let leader = tokio::spawn(async move { f.run(1, std::future::pending::<u32>).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let f = flight.clone();
        let follower = tokio::spawn(async move { f.run(1, || async { 5 }).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let (v, led) = follower.await.unwrap();
        assert_eq!((v, led), (5, true), "the waiter ran its own work");
    }
}
