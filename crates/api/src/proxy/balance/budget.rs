//! The retry budget of a replica: retries may add at most a share of the calls made over the
//! last [`WINDOW`] (with a small floor, so that a quiet replica can still fail over), so that
//! a failing fleet is not sent a multiple of its load.

use std::sync::{Mutex, PoisonError};

/// Seconds the budget looks back over.
pub const WINDOW: u64 = 10;
/// Retries allowed over [`WINDOW`] whatever the traffic.
pub const FLOOR: u64 = 10;

/// Calls and retries of one second.
#[derive(Debug, Default, Clone, Copy)]
struct Second {
    at: u64,
    calls: u64,
    retries: u64,
}

/// Calls and retries per second over the window, in a ring.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    seconds: Mutex<[Second; WINDOW as usize]>,
}

impl RetryBudget {
    /// Retries of at most `percent` of the calls (and [`FLOOR`]) per window.
    pub fn new(percent: u32) -> Self {
        Self {
            percent: u64::from(percent),
            seconds: Mutex::new([Second::default(); WINDOW as usize]),
        }
    }

    /// The slot of second `now`, emptied if it held an older second.
    fn slot(seconds: &mut [Second; WINDOW as usize], now: u64) -> &mut Second {
        let slot = &mut seconds[(now % WINDOW) as usize];
        if slot.at != now {
            *slot = Second {
                at: now,
                ..Second::default()
            };
        }
        slot
    }

    /// A call was made at second `now` (its retries are not calls).
    pub fn call(&self, now: u64) {
        let mut seconds = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        Self::slot(&mut seconds, now).calls += 1;
    }

    /// Takes a retry at second `now` if the budget has one.
    pub fn try_retry(&self, now: u64) -> bool {
        let mut seconds = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        let (calls, retries) = seconds
            .iter()
            .filter(|s| s.at + WINDOW > now && s.at <= now)
            .fold((0, 0), |(c, r), s| (c + s.calls, r + s.retries));
        let allowed = (calls * self.percent / 100).max(FLOOR);
        if retries >= allowed {
            return false;
        }
        Self::slot(&mut seconds, now).retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_the_calls_of_the_last_ten_seconds_with_a_floor() {
        let budget = RetryBudget::new(20);
        let granted = (0..100).filter(|_| budget.try_retry(0)).count();
        assert_eq!(granted, 10, "the floor, without calls");
        for _ in 0..200 {
            budget.call(1);
        }
        let granted = (0..100).filter(|_| budget.try_retry(1)).count();
        assert_eq!(granted, 30, "20 % of 200 calls, 10 taken already");
        // Ten seconds on, second 0 is out of the window: its 10 retries count no more.
        assert_eq!((0..100).filter(|_| budget.try_retry(10)).count(), 10);
        // Then the calls of second 1 are out too: the floor again, of which 10 are taken.
        assert_eq!((0..100).filter(|_| budget.try_retry(11)).count(), 0);
        assert_eq!((0..100).filter(|_| budget.try_retry(21)).count(), 10);
    }
}
