//! [`Seeding`]: one seeding of a month's missing counters at a time per key and user, in this
//! process.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::ports::Month;

/// What a seeding is of: a key, its user, the month, and which of their counters were missing.
pub(super) type SeedId = (Uuid, Uuid, Month, bool, bool);

/// The seedings in flight. When a limiter loses its counters (Redis restarted), every call in
/// flight of a key finds them missing at once; each seeding sums a month of the key's usage in
/// Postgres. Calls that find the same counters missing while one seeding runs wait for it and
/// share its outcome, so a replica sends one such query per key and user, not one per call.
///
/// An entry lives only while its seeding runs (the map holds no more entries than calls in
/// flight); a caller that arrives just after it ended starts another, which `SET NX` makes
/// harmless. If the caller running a seeding goes away, a waiting one takes it over.
#[derive(Debug, Default)]
pub(super) struct Seeding {
    flights: Mutex<HashMap<SeedId, Arc<OnceCell<bool>>>>,
}

impl Seeding {
    /// Runs `seed` for `id` unless a seeding of it is in flight, whose outcome is then shared;
    /// whether it succeeded.
    pub(super) async fn once<F, Fut>(&self, id: SeedId, seed: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool>,
    {
        let flight = Arc::clone(
            self.flights
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(id)
                .or_default(),
        );
        let succeeded = *flight.get_or_init(seed).await;
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights
            .get(&id)
            .is_some_and(|current| Arc::ptr_eq(current, &flight))
        {
            flights.remove(&id);
        }
        succeeded
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.flights.lock().map_or(0, |f| f.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn callers_during_a_seeding_share_it_and_the_entry_goes_with_it() {
        let seeding = Arc::new(Seeding::default());
        let id = (
            Uuid::nil(),
            Uuid::nil(),
            Month::of(chrono::Utc::now()),
            true,
            false,
        );
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut callers = Vec::new();
        for _ in 0..5 {
            let (seeding, runs, gate) = (seeding.clone(), runs.clone(), gate.clone());
            callers.push(tokio::spawn(async move {
                seeding
                    .once(id, || async move {
                        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        gate.notified().await;
                        true
                    })
                    .await
            }));
        }
        // Let all five reach the seeding.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(seeding.in_flight(), 1);
        gate.notify_one();
        for caller in callers {
            assert!(caller.await.expect("joined"), "the one outcome, shared");
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1, "one run");
        assert_eq!(seeding.in_flight(), 0, "nothing kept");
    }
}
