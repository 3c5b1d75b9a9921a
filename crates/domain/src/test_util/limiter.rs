//! [`InMemoryRateLimiter`]: the rate-limit port in memory, the same GCRA as the Redis adapter
//! (without leases), for a key and its user at once, on a clock the test moves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::ports::{Allowance, RateDecision, RateLimit, RateLimiter, RateRequest};

const MINUTE_US: u64 = 60_000_000;
const MICROS_PER_SECOND: u64 = 1_000_000;

/// A rate limiter in memory: exactly the GCRA of `maas_cache::RedisRateLimiter` asked for one
/// request at a time, on a clock that only [`advance`](Self::advance) moves (it starts at zero),
/// so decisions never depend on how fast a test runs.
///
/// For `rpm` requests a minute with a burst of `burst` (a zero counts as 1), each request costs
/// `T = ceil(60 s / rpm)` and a key may run `burst · T` ahead of the clock: `burst` requests are
/// admitted at once, then one more every `T`; a refused request consumes nothing.
/// A request whose user has a limit spends one unit of the user's allowance too: it is admitted
/// only when both admit it, and a refused one spends neither.
/// [`RateDecision::Allowed`] says how many more could be made at once and in how many seconds
/// (rounded up) the allowance is full again, of the allowance with fewer left (on a tie, the one
/// that takes longer to be full again, then the key's); [`RateDecision::Limited`] says when one more would be admitted by both (at least 1 s),
/// and names the allowance that needs the longer wait. [`set_unavailable`](Self::set_unavailable) makes every check
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
    /// Each user's theoretical arrival time.
    user_tat_us: HashMap<Uuid, u64>,
    checks: HashMap<Uuid, u64>,
}

/// One allowance's GCRA at `now`: how long to wait for one more (0: it fits), the new TAT if it
/// is spent, and what is left then.
struct Gcra {
    wait_us: u64,
    tat_us: u64,
    new_tat_us: u64,
    left: u64,
    interval: u64,
}

impl Gcra {
    fn at(stored: Option<u64>, limit: RateLimit, now: u64) -> Self {
        let interval = MINUTE_US.div_ceil(u64::from(limit.rpm.max(1)));
        let capacity = interval.saturating_mul(u64::from(limit.burst.max(1)));
        let tat = stored.unwrap_or(now).max(now);
        let new_tat = tat.saturating_add(interval);
        let owed = new_tat - now;
        Self {
            wait_us: owed.saturating_sub(capacity),
            tat_us: tat,
            new_tat_us: new_tat,
            left: capacity.saturating_sub(owed),
            interval,
        }
    }
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
    async fn decide(&self, request: &RateRequest) -> RateDecision {
        let mut state = self.lock();
        *state.checks.entry(request.key_id).or_insert(0) += 1;
        if self.unavailable.load(Ordering::SeqCst) {
            return RateDecision::Unavailable;
        }
        let now = state.now_us;
        let key = Gcra::at(state.tat_us.get(&request.key_id).copied(), request.key, now);
        let user = request.user.map(|user| {
            let gcra = Gcra::at(
                state.user_tat_us.get(&user.user_id).copied(),
                user.limit,
                now,
            );
            (user.user_id, gcra)
        });
        let refusing = [
            (Allowance::Key, Some(&key)),
            (Allowance::User, user.as_ref().map(|u| &u.1)),
        ]
        .into_iter()
        .filter_map(|(allowance, gcra)| gcra.map(|g| (allowance, g)))
        .filter(|(_, g)| g.wait_us > 0)
        .max_by_key(|(_, g)| g.wait_us);
        if let Some((allowance, gcra)) = refusing {
            return RateDecision::Limited {
                retry_after_seconds: ceil_seconds(gcra.wait_us).max(1),
                reset_seconds: ceil_seconds(gcra.tat_us - now).max(1),
                allowance,
            };
        }
        state.tat_us.insert(request.key_id, key.new_tat_us);
        let (allowance, tighter) = match &user {
            Some((user_id, gcra)) => {
                state.user_tat_us.insert(*user_id, gcra.new_tat_us);
                let (user_left, key_left) = (gcra.left / gcra.interval, key.left / key.interval);
                if user_left < key_left
                    || (user_left == key_left && gcra.new_tat_us > key.new_tat_us)
                {
                    (Allowance::User, gcra)
                } else {
                    (Allowance::Key, &key)
                }
            }
            None => (Allowance::Key, &key),
        };
        RateDecision::Allowed {
            remaining: u32::try_from(tighter.left / tighter.interval).unwrap_or(u32::MAX),
            reset_seconds: ceil_seconds(tighter.new_tat_us - now),
            allowance,
        }
    }
}
