//! The passive health of one endpoint on this replica: its calls in flight, whether it is in
//! rotation, and the failures that take it out.
//!
//! An endpoint that fails `after` calls in a row is out for `eject` (the first time), then gets
//! one trial call; a trial that fails puts it out for twice as long (at most [`MAX_EJECT`]), one
//! that succeeds (or any call that does) puts it back. What a pick reads (in rotation, due for
//! a trial, last failure, calls in flight) is in atomics; the counts behind a change of state
//! are under a lock that only outcomes take.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The longest an endpoint stays out at once.
pub const MAX_EJECT: Duration = Duration::from_secs(300);

/// When endpoints are taken out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Failures in a row that take an endpoint out; 0: never.
    pub after: u32,
    /// How long it is out the first time.
    pub first: Duration,
}

/// A change of an endpoint's state, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed.
    None,
    /// Taken out of rotation.
    Ejected,
    /// Back in rotation.
    Reinstated,
}

/// The counts behind the state.
#[derive(Debug)]
struct Counts {
    failures: u32,
    /// How long the next ejection lasts.
    next_eject: Duration,
}

/// One endpoint's state. Times are milliseconds since the balancer's epoch, plus one (0 means
/// "never" / "in rotation").
#[derive(Debug)]
pub struct EndpointHealth {
    weight: u32,
    in_flight: AtomicU32,
    /// 0: in rotation; else out until then.
    out_until: AtomicU64,
    /// A trial call is under way.
    trial: AtomicBool,
    /// When it last failed (0: never).
    last_failure: AtomicU64,
    counts: Mutex<Counts>,
}

impl EndpointHealth {
    /// A healthy endpoint of `weight`.
    pub fn new(weight: u32, ejection: Ejection) -> Self {
        Self {
            weight: weight.max(1),
            in_flight: AtomicU32::new(0),
            out_until: AtomicU64::new(0),
            trial: AtomicBool::new(false),
            last_failure: AtomicU64::new(0),
            counts: Mutex::new(Counts {
                failures: 0,
                next_eject: ejection.first,
            }),
        }
    }

    /// Its share of the calls.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Calls sent to it and not over yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A call starts.
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call is over.
    pub fn leave(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Whether it is in rotation.
    pub fn is_in(&self) -> bool {
        self.out_until.load(Ordering::Relaxed) == 0
    }

    /// When it last failed (0: never): the least recently failed endpoint has the smallest.
    pub fn last_failure(&self) -> u64 {
        self.last_failure.load(Ordering::Relaxed)
    }

    /// Takes the trial call if it is out, its time is up and no trial is under way.
    pub fn claim_trial(&self, now: u64) -> bool {
        let until = self.out_until.load(Ordering::Relaxed);
        until != 0
            && now >= until
            && self
                .trial
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// A trial call ended without telling how it went (its client went away first).
    pub fn abandon_trial(&self) {
        self.trial.store(false, Ordering::Release);
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call to it failed at `now`; `trial` when it was the trial call.
    pub fn failed(&self, now: u64, trial: bool, ejection: Ejection) -> Change {
        let mut counts = self.counts();
        counts.failures = counts.failures.saturating_add(1);
        self.last_failure.store(now, Ordering::Relaxed);
        if !self.is_in() {
            if !trial {
                // A call while every endpoint was out: it stays out as it was.
                return Change::None;
            }
            let out_for = counts.next_eject;
            counts.next_eject = (out_for * 2).min(MAX_EJECT);
            self.eject(now, out_for);
            return Change::Ejected;
        }
        if ejection.after == 0 || counts.failures < ejection.after {
            return Change::None;
        }
        let out_for = ejection.first.min(MAX_EJECT);
        counts.next_eject = (out_for * 2).min(MAX_EJECT);
        self.eject(now, out_for);
        Change::Ejected
    }

    fn eject(&self, now: u64, out_for: Duration) {
        let millis = u64::try_from(out_for.as_millis()).unwrap_or(u64::MAX);
        self.out_until
            .store(now.saturating_add(millis).max(1), Ordering::Relaxed);
        self.trial.store(false, Ordering::Release);
    }

    /// A call to it succeeded: the failures are forgotten and it is back in rotation.
    pub fn succeeded(&self, ejection: Ejection) -> Change {
        let mut counts = self.counts();
        counts.failures = 0;
        counts.next_eject = ejection.first;
        self.trial.store(false, Ordering::Release);
        if self.out_until.swap(0, Ordering::Relaxed) == 0 {
            Change::None
        } else {
            Change::Reinstated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EJECTION: Ejection = Ejection {
        after: 3,
        first: Duration::from_secs(10),
    };
    const S: u64 = 1000;

    #[test]
    fn failures_in_a_row_take_it_out_and_a_success_between_them_does_not() {
        let e = EndpointHealth::new(1, EJECTION);
        assert_eq!(e.failed(1, false, EJECTION), Change::None);
        assert_eq!(e.failed(2, false, EJECTION), Change::None);
        assert_eq!(e.succeeded(EJECTION), Change::None);
        assert_eq!(e.failed(3, false, EJECTION), Change::None);
        assert_eq!(e.failed(4, false, EJECTION), Change::None);
        assert!(e.is_in());
        assert_eq!(e.failed(5, false, EJECTION), Change::Ejected);
        assert!(!e.is_in());
        assert_eq!(e.last_failure(), 5);
    }

    #[test]
    fn once_its_time_is_up_one_trial_call_decides_and_failing_doubles_the_time_up_to_a_cap() {
        let e = EndpointHealth::new(1, EJECTION);
        for t in 1..=3 {
            e.failed(t, false, EJECTION);
        }
        assert!(!e.claim_trial(3 + 10 * S - 1), "not before its time");
        let mut now = 3 + 10 * S;
        let mut out_for = 10 * S;
        for _ in 0..8 {
            assert!(e.claim_trial(now));
            assert!(!e.claim_trial(now), "one trial at a time");
            assert_eq!(e.failed(now, true, EJECTION), Change::Ejected);
            out_for = (out_for * 2).min(300 * S);
            assert!(!e.claim_trial(now + out_for - 1));
            now += out_for;
        }
        assert_eq!(out_for, 300 * S, "capped at five minutes");
        assert!(e.claim_trial(now));
        assert_eq!(e.succeeded(EJECTION), Change::Reinstated);
        assert!(e.is_in());
        // The next ejection starts from the first length again.
        for t in 0..3 {
            e.failed(now + t, false, EJECTION);
        }
        assert!(e.claim_trial(now + 2 + 10 * S));
    }

    #[test]
    fn an_abandoned_trial_lets_another_call_try_and_no_ejection_when_turned_off() {
        let e = EndpointHealth::new(1, EJECTION);
        for t in 1..=3 {
            e.failed(t, false, EJECTION);
        }
        assert!(e.claim_trial(20 * S));
        e.abandon_trial();
        assert!(e.claim_trial(20 * S));
        let never = Ejection {
            after: 0,
            ..EJECTION
        };
        let f = EndpointHealth::new(1, never);
        for t in 1..=100 {
            assert_eq!(f.failed(t, false, never), Change::None);
        }
        assert!(f.is_in());
    }

    #[test]
    fn calls_in_flight_never_go_below_zero() {
        let e = EndpointHealth::new(0, EJECTION);
        assert_eq!(e.weight(), 1, "a weight is at least 1");
        e.enter();
        e.leave();
        e.leave();
        assert_eq!(e.in_flight(), 0);
    }
}
