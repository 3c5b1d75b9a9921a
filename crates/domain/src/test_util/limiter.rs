//! [`InMemoryRateLimiter`]: the rate-limit port in memory, the same GCRA as the Redis adapter
//! (without leases), for a key and its user at once, on a clock the test moves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::ports::{Allowance, RateDecision, RateFigures, RateLimit, RateLimiter, RateRequest};

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
///
/// It is the token-limit port too ([`crate::ports::TokenLimiter`]): see `tokens.rs` beside it for
/// the token windows and month counters, on the same clock.
#[derive(Debug, Default)]
pub struct InMemoryRateLimiter {
    pub(super) state: Mutex<State>,
    pub(super) unavailable: AtomicBool,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// Microseconds since `epoch_secs`.
    pub(super) now_us: u64,
    /// Unix time (seconds) of the clock's zero: where months are counted from.
    pub(super) epoch_secs: i64,
    /// Each key's theoretical arrival time.
    pub(super) tat_us: HashMap<Uuid, u64>,
    /// Each user's theoretical arrival time.
    pub(super) user_tat_us: HashMap<Uuid, u64>,
    pub(super) checks: HashMap<Uuid, u64>,
    /// Token windows: tokens per second (Unix time) of each key and user.
    pub(super) windows: HashMap<super::tokens::Counter, std::collections::BTreeMap<i64, u64>>,
    /// Month counters.
    pub(super) months: HashMap<(super::tokens::Counter, crate::ports::Month), u64>,
}

/// One allowance's GCRA at `now`: how long to wait for one more (0: it fits), the new TAT if it
/// is spent, and what is left then.
pub(super) struct Gcra {
    pub(super) wait_us: u64,
    pub(super) tat_us: u64,
    pub(super) new_tat_us: u64,
    pub(super) left: u64,
    pub(super) interval: u64,
}

impl Gcra {
    pub(super) fn at(stored: Option<u64>, limit: RateLimit, now: u64) -> Self {
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

pub(super) fn ceil_seconds(micros: u64) -> u64 {
    micros.div_ceil(MICROS_PER_SECOND)
}

impl InMemoryRateLimiter {
    /// Every key at its full allowance, the clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key at its full allowance, the clock at Unix time `secs` (months are counted on
    /// it; [`new`](Self::new) starts at 0, January 1970).
    pub fn starting_at(secs: i64) -> Self {
        let limiter = Self::default();
        limiter.lock().epoch_secs = secs;
        limiter
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
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

/// A request-rate decision made and not yet spent: [`commit`](Self::commit) spends it.
pub(super) struct RateStep {
    key: (Uuid, u64),
    user: Option<(Uuid, u64)>,
    /// The figures of the admission.
    pub(super) figures: RateFigures,
    /// The figures as they are while it is not spent (a call refused by another limit).
    pub(super) unspent: RateFigures,
}

impl RateStep {
    /// Decides `request` at the state's clock without spending anything: the step to commit,
    /// or the refusal with its wait in microseconds.
    pub(super) fn decide(
        state: &State,
        request: &RateRequest,
    ) -> Result<Self, (u64, RateDecision)> {
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
            let limited = RateDecision::Limited {
                retry_after_seconds: ceil_seconds(gcra.wait_us).max(1),
                reset_seconds: ceil_seconds(gcra.tat_us - now).max(1),
                allowance,
            };
            return Err((gcra.wait_us, limited));
        }
        let (allowance, tighter) = match &user {
            Some((_, gcra)) => {
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
        // Unspent, one more fits, and the allowance is full again when its TAT is reached.
        let unspent = RateFigures {
            remaining: u32::try_from(tighter.left / tighter.interval + 1).unwrap_or(u32::MAX),
            reset_seconds: ceil_seconds(tighter.tat_us - now),
            allowance,
        };
        Ok(Self {
            unspent,
            key: (request.key_id, key.new_tat_us),
            user: user.as_ref().map(|(id, gcra)| (*id, gcra.new_tat_us)),
            figures: RateFigures {
                remaining: u32::try_from(tighter.left / tighter.interval).unwrap_or(u32::MAX),
                reset_seconds: ceil_seconds(tighter.new_tat_us - now),
                allowance,
            },
        })
    }

    /// Spends the decided request from the key's allowance and its user's.
    pub(super) fn commit(&self, state: &mut State) {
        state.tat_us.insert(self.key.0, self.key.1);
        if let Some((user_id, tat)) = self.user {
            state.user_tat_us.insert(user_id, tat);
        }
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
        match RateStep::decide(&state, request) {
            Err((_, limited)) => limited,
            Ok(step) => {
                step.commit(&mut state);
                let RateFigures {
                    remaining,
                    reset_seconds,
                    allowance,
                } = step.figures;
                RateDecision::Allowed {
                    remaining,
                    reset_seconds,
                    allowance,
                }
            }
        }
    }
}
