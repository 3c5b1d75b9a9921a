//! What every in-memory repository shares: a clock for stored timestamps, and the [`Controls`]
//! a test steers it with (call counts, an outage switch, holding a call mid-flight).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use chrono::{DateTime, TimeDelta, Utc};

use crate::error::RepoError;

/// Stored timestamps: the system's time in whole microseconds (what a `timestamptz` holds),
/// never the same twice and never going back, so that a change is always later than what it
/// changed, as with Postgres's `now()` in successive transactions.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    last: Mutex<Option<DateTime<Utc>>>,
}

impl Clock {
    /// The time of the operation that asks.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        let system = Utc::now();
        let system = DateTime::from_timestamp_micros(system.timestamp_micros()).unwrap_or(system);
        let Ok(mut last) = self.last.lock() else {
            return system;
        };
        let now = match *last {
            Some(previous) if previous >= system => previous + TimeDelta::microseconds(1),
            _ => system,
        };
        *last = Some(now);
        now
    }
}

/// How a test steers an in-memory repository: how often each operation was called, an outage
/// switch, and holding one call of an operation after it did its work and before it answers
/// (to interleave another call there, as a concurrent request would).
///
/// Operations are named as the port's methods (`get_model`, `find_key`, `touch_keys`, …).
#[derive(Debug, Default)]
pub struct Controls {
    calls: Mutex<HashMap<&'static str, u64>>,
    unavailable: AtomicBool,
    holds: Mutex<HashMap<&'static str, Arc<HoldState>>>,
}

impl Controls {
    /// How many times `op` was called, failed calls included.
    pub fn calls(&self, op: &str) -> u64 {
        self.calls
            .lock()
            .map_or(0, |calls| calls.get(op).copied().unwrap_or(0))
    }

    /// Calls of every operation together.
    pub fn total_calls(&self) -> u64 {
        self.calls.lock().map_or(0, |calls| calls.values().sum())
    }

    /// While `true`, every operation fails with [`RepoError::Unavailable`] and changes nothing,
    /// as when the database is down.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Holds the next call of `op`: it does its work (reads or writes the store), then waits
    /// until the returned [`Hold`] is released or dropped before answering. Meanwhile other
    /// calls go on, so a test can put a write between a read and what its caller does next.
    pub fn hold_next(&self, op: &'static str) -> Hold {
        let state = Arc::new(HoldState::default());
        if let Ok(mut holds) = self.holds.lock() {
            holds.insert(op, Arc::clone(&state));
        }
        Hold { state }
    }

    /// Counts a call of `op`; the outage's error while [`set_unavailable`](Self::set_unavailable).
    pub(crate) fn enter(&self, op: &'static str) -> Result<(), RepoError> {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(op).or_insert(0) += 1;
        }
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(RepoError::Unavailable(format!(
                "{op}: the in-memory store is switched off"
            )));
        }
        Ok(())
    }

    /// Waits here if a test holds this call of `op`.
    pub(crate) async fn leave(&self, op: &'static str) {
        let held = self
            .holds
            .lock()
            .ok()
            .and_then(|mut holds| holds.remove(op));
        if let Some(state) = held {
            state.park().await;
        }
    }
}

/// A call held by [`Controls::hold_next`]. Releasing it, or dropping it, lets the call answer.
#[derive(Debug)]
pub struct Hold {
    state: Arc<HoldState>,
}

impl Hold {
    /// Whether the held call has done its work and is waiting.
    pub fn is_waiting(&self) -> bool {
        self.state.lock(|s| s.waiting && !s.released)
    }

    /// Waits until the held call has done its work and waits, letting other tasks run (the call
    /// must be running in one, e.g. spawned). Panics if it does not get there within 10,000
    /// turns of the executor: the call was never made.
    pub async fn reached(&self) {
        for _ in 0..10_000 {
            if self.is_waiting() {
                return;
            }
            yield_once().await;
        }
        panic!("the held call never arrived");
    }

    /// Lets the held call answer (now, or as soon as it arrives).
    pub fn release(&self) {
        let waker = self.state.lock(|s| {
            s.released = true;
            s.waker.take()
        });
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

#[derive(Debug, Default)]
struct HoldState(Mutex<Parking>);

#[derive(Debug, Default)]
struct Parking {
    waiting: bool,
    released: bool,
    /// The held call's task, to wake when it is released.
    waker: Option<Waker>,
}

impl HoldState {
    fn lock<T>(&self, f: impl FnOnce(&mut Parking) -> T) -> T {
        // A poisoned lock only means a test panicked while holding it; the state is still sane.
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    async fn park(&self) {
        poll_fn(|cx| {
            self.lock(|s| {
                if s.released {
                    return Poll::Ready(());
                }
                s.waiting = true;
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            })
        })
        .await;
    }
}

/// Gives every other ready task of the executor a turn.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}
