//! Retry budgets: a version's retries may add at most a share of its own calls over the last
//! [`WINDOW`] seconds, so that a failing fleet is not sent a multiple of its load, and so that
//! a member whose endpoints all fail spends only what its own calls earned, never the failover
//! of other members' versions. Beyond that share, a small floor shared by the replica
//! ([`FLOOR`], of which one version takes at most [`FLOOR_PER_FLEET`]) lets a quiet version
//! still fail over.
//!
//! Calls are counted on every call, so without a lock: per second, in a ring of atomics. Only
//! the decision on a retry, which is rare, takes a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Seconds a budget looks back over.
pub const WINDOW: u64 = 10;
/// Retries allowed over [`WINDOW`] beyond the versions' own shares, whatever the traffic,
/// shared by every version the replica serves.
pub const FLOOR: u64 = 10;
/// The most of [`FLOOR`] one version takes over [`WINDOW`] (as many as the failures that take
/// an endpoint out by default, so that a quiet version's dead endpoint costs no client a call).
pub const FLOOR_PER_FLEET: u64 = 3;

const SLOTS: usize = WINDOW as usize;
const COUNT_BITS: u32 = 32;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Counts per second over the last [`WINDOW`] seconds: each slot holds its second (the high
/// half) and that second's count (the low half), so that a slot is moved on to a new second
/// and counted in one compare-and-swap.
#[derive(Debug, Default)]
pub struct Window {
    slots: [AtomicU64; SLOTS],
}

impl Window {
    /// Counts one at second `now`.
    pub fn add(&self, now: u32) {
        let slot = &self.slots[now as usize % SLOTS];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            let (at, count) = (packed >> COUNT_BITS, packed & COUNT_MASK);
            let count = if at == u64::from(now) {
                (count + 1).min(COUNT_MASK)
            } else {
                1
            };
            Some((u64::from(now) << COUNT_BITS) | count)
        });
    }

    /// What was counted over the [`WINDOW`] seconds up to `now`.
    pub fn sum(&self, now: u32) -> u64 {
        let now = u64::from(now);
        self.slots
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|packed| {
                let at = packed >> COUNT_BITS;
                at <= now && at + WINDOW > now
            })
            .map(|packed| packed & COUNT_MASK)
            .sum()
    }
}

/// One version's calls and retries (kept with its fleet).
#[derive(Debug, Default)]
pub struct FleetBudget {
    calls: Window,
    /// Retries within the version's share of its calls.
    earned: Window,
    /// Retries it took from the replica's floor.
    from_floor: Window,
}

impl FleetBudget {
    /// A call of the version was made at second `now` (its retries are not calls).
    pub fn call(&self, now: u32) {
        self.calls.add(now);
    }
}

/// The replica's retry budgets: the share of each version's calls its retries may add, and the
/// floor they share.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    floor: Window,
    /// Decisions on retries one at a time, so that none is granted past a bound.
    deciding: Mutex<()>,
}

impl RetryBudget {
    /// Retries of at most `percent` of a version's calls per window, plus the floor.
    pub fn new(percent: u32) -> Self {
        Self {
            percent: u64::from(percent),
            floor: Window::default(),
            deciding: Mutex::new(()),
        }
    }

    /// Takes a retry of a call of the version whose budget is `fleet` at second `now`, if it
    /// has one: within its share of its own calls, else from the floor while the floor and the
    /// version's part of it last.
    pub fn try_retry(&self, fleet: &FleetBudget, now: u32) -> bool {
        let _one_at_a_time = self.deciding.lock().unwrap_or_else(PoisonError::into_inner);
        let share = fleet.calls.sum(now) * self.percent / 100;
        if fleet.earned.sum(now) < share {
            fleet.earned.add(now);
            return true;
        }
        if fleet.from_floor.sum(now) < FLOOR_PER_FLEET && self.floor.sum(now) < FLOOR {
            fleet.from_floor.add(now);
            self.floor.add(now);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(budget: &RetryBudget, fleet: &FleetBudget, now: u32, asked: usize) -> usize {
        (0..asked).filter(|_| budget.try_retry(fleet, now)).count()
    }

    fn calls(fleet: &FleetBudget, now: u32, n: usize) {
        for _ in 0..n {
            fleet.call(now);
        }
    }

    #[test]
    fn a_versions_retries_are_a_share_of_its_calls_of_the_last_ten_seconds() {
        let budget = RetryBudget::new(20);
        let fleet = FleetBudget::default();
        calls(&fleet, 1, 200);
        assert_eq!(
            granted(&budget, &fleet, 1, 100),
            40 + FLOOR_PER_FLEET as usize,
            "20 % of 200 calls, then its part of the floor"
        );
        calls(&fleet, 5, 100);
        assert_eq!(granted(&budget, &fleet, 5, 100), 20, "20 % of 100 more");
        assert_eq!(granted(&budget, &fleet, 10, 100), 0, "all taken");
        // Ten seconds on, second 1 is out of the window: its calls and retries count no more.
        assert_eq!(
            granted(&budget, &fleet, 11, 100),
            FLOOR_PER_FLEET as usize,
            "20 taken of 20, and the floor taken at second 1 is back"
        );
    }

    #[test]
    fn a_version_whose_endpoints_all_fail_cannot_spend_the_failover_of_others() {
        let budget = RetryBudget::new(20);
        let (failing, other) = (FleetBudget::default(), FleetBudget::default());
        calls(&failing, 0, 1000);
        calls(&other, 0, 100);
        // Every call of the failing version wants its retries: it gets its own share.
        assert_eq!(
            granted(&budget, &failing, 0, 2000),
            200 + FLOOR_PER_FLEET as usize
        );
        assert_eq!(
            granted(&budget, &other, 0, 100),
            20 + FLOOR_PER_FLEET as usize,
            "the other's share is whole"
        );
    }

    #[test]
    fn quiet_versions_share_a_floor_each_taking_a_part_of_it() {
        let budget = RetryBudget::new(20);
        let quiet: Vec<FleetBudget> = (0..5).map(|_| FleetBudget::default()).collect();
        let got: Vec<usize> = quiet.iter().map(|f| granted(&budget, f, 3, 10)).collect();
        assert_eq!(
            got,
            [3, 3, 3, 1, 0],
            "{FLOOR} in all, {FLOOR_PER_FLEET} each"
        );
        // Many versions with a few calls each, cycled through, spend only the floor, never a
        // busy version's share.
        let busy = FleetBudget::default();
        calls(&busy, 3, 50);
        assert_eq!(granted(&budget, &busy, 3, 100), 10);
    }

    #[test]
    fn a_window_counts_by_the_second_and_forgets_what_left_it() {
        let window = Window::default();
        assert_eq!(window.sum(0), 0);
        for now in 0..30 {
            window.add(now);
            window.add(now);
            assert_eq!(window.sum(now), 2 * u64::from(now + 1).min(WINDOW), "{now}");
        }
        assert_eq!(window.sum(29 + WINDOW as u32), 0);
        // A second before the slot's is not counted as that slot's.
        assert_eq!(window.sum(25), 2 * 6);
    }
}
