//! [`InMemoryRateLimiter`]: the rate-limit port in memory, the same GCRA as the Redis adapter
//! (without leases) on a clock the test moves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::ports::{RateDecision, RateLimit, RateLimiter};

const MINUTE_US: u64 = 60_000_000;
const MICROS_PER_SECOND: u64 = 1_000_000;

/// A rate limiter in memory: exactly the GCRA of `maas_cache::RedisRateLimiter` asked for one
/// request at a time, on a clock that only [`advance`](Self::advance) moves (it starts at zero),
/// so decisions never depend on how fast a test runs.
///
/// For `rpm` requests a minute with a burst of `burst` (a zero counts as 1), each request costs
/// `T = ceil(60 s / rpm)` and a key may run `burst · T` ahead of the clock: `burst` requests are
/// admitted at once, then one more every `T`; a refused request consumes nothing.
/// [`RateDecision::Allowed`] says how many more could be made at once and in how many seconds
/// (rounded up) the allowance is full again; [`RateDecision::Limited`] says when one more would
/// be admitted (at least 1 s). [`set_unavailable`](Self::set_unavailable) makes every check
/// [`RateDecision::Unavailable`], as with Redis down.
#[derive(Debug, Default)]
pub struct InMemoryRateLimiter {
    state: Mutex<State>,
    unavailable: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    now_us: u64,
    /// Each key's theoretical arrival time.
    tat_us: HashMap<Uuid, u64>,
    checks: HashMap<Uuid, u64>,
}

fn ceil_seconds(micros: u64) -> u64 {
    micros.div_ceil(MICROS_PER_SECOND)
}

impl InMemoryRateLimiter {
    /// Every key at its full allowance, the clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
        let mut state = self.lock();
        state.now_us = state.now_us.saturating_add(by);
    }

    /// While `true`, every check is [`RateDecision::Unavailable`] and counts nothing against
    /// the key.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// How many checks `key_id` had, whatever their outcome.
    pub fn checks_of(&self, key_id: Uuid) -> u64 {
        self.lock().checks.get(&key_id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl RateLimiter for InMemoryRateLimiter {
    async fn check(&self, key_id: Uuid, limit: RateLimit) -> RateDecision {
        let mut state = self.lock();
        *state.checks.entry(key_id).or_insert(0) += 1;
        if self.unavailable.load(Ordering::SeqCst) {
            return RateDecision::Unavailable;
        }
        let interval = MINUTE_US.div_ceil(u64::from(limit.rpm.max(1)));
        let capacity = interval.saturating_mul(u64::from(limit.burst.max(1)));
        let now = state.now_us;
        let tat = state.tat_us.get(&key_id).copied().unwrap_or(now).max(now);
        let new_tat = tat.saturating_add(interval);
        if new_tat - now > capacity {
            return RateDecision::Limited {
                retry_after_seconds: ceil_seconds(new_tat - now - capacity).max(1),
                reset_seconds: ceil_seconds(tat - now).max(1),
            };
        }
        state.tat_us.insert(key_id, new_tat);
        let left = capacity - (new_tat - now);
        RateDecision::Allowed {
            remaining: u32::try_from(left / interval).unwrap_or(u32::MAX),
            reset_seconds: ceil_seconds(new_tat - now),
        }
    }
}
