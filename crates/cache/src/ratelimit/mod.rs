//! [`RedisRateLimiter`]: the Redis adapter of [`maas_domain::ports::RateLimiter`], a GCRA
//! (generic cell rate algorithm) shared by every replica.
//!
//! # Algorithm
//! For a limit of `rpm` requests per minute with a burst of `burst`, each request costs one
//! emission interval `T = 60 s / rpm` (microseconds, rounded up, so the sustained rate never
//! exceeds `rpm`) and a key may run at most `burst · T` ahead of the clock. Redis stores one
//! number per key, its theoretical arrival time `TAT` (microseconds on Redis's clock), under
//! `P` `rl:` `<key id>` for key prefix `P`. A request at time `now`:
//!
//! - computes `tat = max(TAT, now)` and `new_tat = tat + T`;
//! - is admitted if `new_tat - now <= burst · T`: `TAT` becomes `new_tat`;
//! - is refused otherwise, and changes nothing: a refused request does not consume allowance.
//!
//! So `burst` requests may arrive at once, then one more every `T`; over any window of a
//! minute at most `rpm + burst` requests are admitted, however many gateway replicas share the
//! Redis.
//!
//! # A user's limit
//! A request whose user has a limit ([`RateRequest::user`]) is decided against two GCRAs in the
//! same script call, the key's and the user's (`P` `rlu:` `<user id>`, shared by all the user's
//! keys): it is admitted only if both admit it, then both `TAT`s advance; if either refuses,
//! neither changes. Still one round trip, still exact across replicas, so however many keys a
//! user creates, together they get at most the user's `rpm + burst` a minute. The decision's
//! figures are those of the tighter allowance ([`Allowance`]): on an admission the one with
//! fewer requests left (on a tie, the one that takes longer to be full again), on a refusal the
//! one to wait longer for. Both keys are addressed by the
//! one script call, so Redis Cluster (which wants them in one slot) is not supported. A `burst` (or `rpm`) of 0 is treated as 1; `burst · T` is capped at 2^50 µs (35
//! years) so that the script's arithmetic, in Lua doubles, stays exact.
//!
//! The decision is one Lua script run with `EVALSHA` (falling back to `SCRIPT LOAD` on
//! `NOSCRIPT`): one atomic round trip, with the time read by `TIME` inside the script, so the
//! gateway replicas' clocks do not matter. The key gets a `PX` expiry of the time until the
//! allowance is full again (plus a second), after which a missing key means the same as the
//! stored one: idle keys vanish.
//!
//! # What the decision says
//! - [`RateDecision::Allowed`]: `remaining` = whole requests that could still be made at once
//!   after this one (`burst - 1`, … `0` for a burst arriving at once); `reset_seconds` = seconds
//!   (rounded up) until the allowance is full again.
//! - [`RateDecision::Limited`]: `retry_after_seconds` = seconds (rounded up, at least 1) until one
//!   more request would be admitted, and `reset_seconds` as above.
//! - [`RateDecision::Unavailable`]: Redis failed or did not answer within the command timeout
//!   (pool checkout included; a dead connection is retried once within that bound, see
//!   [`crate::pool`]). The caller decides between failing open and refusing.
//!
//! # Leases
//! Asking Redis for every request costs every request a round trip, and on a busy machine the
//! round trip's tail is most of the gateway's own latency. With
//! [`RedisRateLimiter::with_leases`]`(D)` a check that finds nothing local asks the same script
//! for up to `want` requests at once: it grants as many as fit the GCRA (at least one, or
//! refuses as before), advancing `TAT` by one interval per granted request, exactly as that
//! many single checks would. The process admits the first and keeps the rest as the key's
//! lease, admitting later requests of that key from it without Redis, for at most `D` after the
//! grant; what is left then is given back to Redis (see *What a lease does not use goes back*
//! below).
//!
//! - `want` follows the key's demand in this process: what its last lease admitted, scaled to a
//!   whole lease period, at most 4 times the last lease and at most `burst / 2` (at least 1).
//!   A quiet key, or one with a small burst, asks for one request at a time: it is decided by
//!   Redis per request, as without leases.
//! - **Leases take only from the upper half of the allowance.** The script grants the request
//!   that asked whenever the GCRA admits it, but extra requests only out of what exceeds
//!   `ceil(burst / 2)` (the *reserve*). So once a key has used half its burst, every replica's
//!   every request is decided by Redis, one at a time, exactly as without leases: near the
//!   limit no replica can be refused while another sits on the key's last requests. (A burst
//!   below 4 never leases at all.)
//! - **What a lease does not use goes back.** When a lease ends with requests left (its `D` ran
//!   out, or the process stops: [`RedisRateLimiter::release_leases`]), they are returned to
//!   Redis: `TAT` moves back by one interval per returned request (never before `now`), as if
//!   they had never been granted. Allowance a replica took and did not need is then available
//!   to the others again instead of being lost; a busy key that stops abruptly costs the other
//!   replicas at most `D` of waiting for its leftovers, never the leftovers themselves.
//! - Redis never grants more than the GCRA allows, so replicas together never get more than
//!   `rpm + burst` a minute granted. A granted request is admitted up to `D` after its grant, so
//!   over a sliding minute at most `rpm · (1 + D / 60 s) + burst` are admitted (with the default
//!   250 ms lease: 0.4 % above `rpm`). Returned requests were never admitted, so returning them
//!   does not change that bound.
//! - `remaining` of a lease-admitted request is Redis's `remaining` at the grant plus what the
//!   lease still holds; `reset_seconds` counts from the grant.
//! - **Leases respect the user's limit** (rather than being turned off for keys whose user has
//!   one, which with `rate_limit.user_rpm` set would be every key, and would put a round trip
//!   back on every request). A lease's extra requests are granted by both GCRAs, out of the upper
//!   half of both allowances (each keeps its own reserve), and spent from both at the grant; what
//!   is left is given back to both. So a user's keys, on any number of replicas, hold at most
//!   the upper half of the user's burst in leases; once the user has used half its burst, every
//!   request of every one of its keys is decided by Redis; and the user's bound is the key's
//!   bound above with the user's `rpm` and `burst`.
//! - A lease admits only requests decided under the limits it was granted under (the key's and
//!   the user's): a limit set or changed for a key or its user applies to the key's next request,
//!   and what the old lease holds goes back when it ends.
//!
//! # Breaker
//! The limiter has a breaker of its own, separate from the cache's: after a call fails because
//! Redis is unreachable or too slow (no connection, connection error, timeout), checks answer
//! [`RateDecision::Unavailable`] without touching Redis for a short cool-down
//! ([`DEFAULT_LIMITER_BREAKER_COOLDOWN`]), so that with Redis dead or black-holed only one
//! request per cool-down waits for the timeout. `Unavailable` is the true answer during the
//! cool-down too: the limiter does not know the counts. The cost is that one slow call makes
//! every check of the next cool-down `Unavailable` (admitted and counted when failing open,
//! refused when failing closed), which is why the cool-down is shorter than the cache's. An
//! error that Redis answered (say, a key of the wrong type) concerns one key and does not open
//! the breaker.
//!
//! Every decision is counted in [`names::RATE_LIMIT_DECISIONS_TOTAL`] (`allowed`, `limited`,
//! or `error` for a failure or a breaker skip).
//!
//! # Tokens
//! The same limiter is the token-limit port ([`maas_domain::ports::TokenLimiter`]): an
//! inference call of a key with a token limit is decided by one script that spends its request
//! from these GCRAs and reserves its tokens in exact sliding windows and month counters, all or
//! nothing, never from a lease; see [`tokens`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use maas_domain::ports::{Allowance, RateDecision, RateLimiter, RateRequest};
use maas_telemetry::handles::{HandleMemo, memoised};
use maas_telemetry::names::{self, rate_limit_decision};
use redis::Script;
use uuid::Uuid;

use crate::call::{self, Breaker, Failure, SharedLogger};
use crate::pool::RedisPool;
use crate::settings::RedisSettings;

mod lease;
mod scripts;
mod token_scripts;
pub mod tokens;

use lease::{Grant, Lease};
use scripts::{GCRA_SCRIPT, RETURN_SCRIPT};
use token_scripts::{RESERVE_SCRIPT, SETTLE_SCRIPT};

/// How long checks skip Redis after one failed because Redis was unreachable or too slow,
/// unless [`RedisRateLimiter::with_breaker_cooldown`] says otherwise.
pub const DEFAULT_LIMITER_BREAKER_COOLDOWN: Duration = Duration::from_millis(500);

/// Microseconds in a minute: the emission interval of a limit of one request per minute.
const MINUTE_US: u64 = 60_000_000;

/// Largest `burst · T`, so that `now + burst · T` (now ≈ 2^50.6 µs) stays below 2^53, where Lua
/// doubles are still exact integers.
const MAX_CAPACITY_US: u64 = 1 << 50;

/// How much longer than the time until the allowance is full a key lives, in milliseconds.
const EXPIRY_MARGIN_MS: u64 = 1_000;

const MICROS_PER_SECOND: u64 = 1_000_000;

/// The script's reply: granted (0 = refused), remaining, retry-after (µs), reset (µs), whose
/// figures (1 = the key's, 2 = the user's).
type ScriptReply = (i64, i64, i64, i64, i64);

/// The Redis rate limiter. Cheap to clone; clones share the pool and the breaker.
///
/// See the [module documentation](self) for the algorithm and the failure handling.
#[derive(Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    pool: RedisPool,
    key_prefix: String,
    command_timeout: Duration,
    script: Script,
    /// Gives back what a lease did not use.
    return_script: Script,
    /// Decides an inference call's request and token reservation ([`tokens`]).
    reserve_script: Script,
    /// Settles token reservations ([`tokens`]).
    settle_script: Script,
    /// Tells one lease period of a key from the next.
    next_generation: AtomicU64,
    /// Open after Redis was unreachable or too slow: checks skip Redis.
    breaker: Breaker,
    /// How long granted requests may wait in this process; zero: every check asks Redis.
    lease_us: AtomicU64,
    /// Requests granted by Redis and not yet admitted here, by key.
    leases: Mutex<HashMap<Uuid, Lease>>,
    /// Where the start and end of failure streaks are reported.
    logger: SharedLogger,
}

impl RedisRateLimiter {
    /// A limiter over `pool` whose keys start with `key_prefix` and whose every check gives up
    /// after `command_timeout` (pool checkout included).
    pub fn new(pool: RedisPool, key_prefix: impl Into<String>, command_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                key_prefix: key_prefix.into(),
                command_timeout,
                script: Script::new(GCRA_SCRIPT),
                return_script: Script::new(RETURN_SCRIPT),
                reserve_script: Script::new(RESERVE_SCRIPT),
                settle_script: Script::new(SETTLE_SCRIPT),
                next_generation: AtomicU64::new(0),
                breaker: Breaker::new(DEFAULT_LIMITER_BREAKER_COOLDOWN),
                lease_us: AtomicU64::new(0),
                leases: Mutex::new(HashMap::new()),
                logger: SharedLogger::new(),
            }),
        }
    }

    /// Lets a busy key's requests be granted by Redis several at a time and admitted here
    /// within `lease` (zero, the default, asks Redis for every request); see the
    /// [module documentation](self#leases). Clones share the setting.
    #[must_use]
    pub fn with_leases(self, lease: Duration) -> Self {
        self.inner.lease_us.store(
            u64::try_from(lease.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self
    }

    fn lease_duration(&self) -> Duration {
        Duration::from_micros(self.inner.lease_us.load(Ordering::Relaxed))
    }

    /// [`new`](Self::new) with the key prefix and command timeout of `redis`.
    pub fn from_settings(pool: RedisPool, redis: &RedisSettings) -> Self {
        Self::new(pool, redis.key_prefix.clone(), redis.command_timeout())
    }

    /// Sets how long checks answer [`RateDecision::Unavailable`] without asking Redis after one
    /// found Redis unreachable or too slow (default [`DEFAULT_LIMITER_BREAKER_COOLDOWN`]; zero
    /// turns the breaker off); clones share the setting.
    #[must_use]
    pub fn with_breaker_cooldown(self, cooldown: Duration) -> Self {
        self.inner.breaker.set_cooldown(cooldown);
        self
    }

    /// Reports failures through `logger` (by default they go to the `log` crate); clones share
    /// the setting.
    #[must_use]
    pub fn with_logger(self, logger: slog::Logger) -> Self {
        self.inner.logger.set(logger);
        self
    }

    /// Whether checks currently skip Redis because a recent one found it unreachable or slow.
    pub fn is_breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The Redis key holding the theoretical arrival time of `key_id` (microseconds on Redis's
    /// clock, as a decimal string).
    pub fn key(&self, key_id: Uuid) -> String {
        format!("{}rl:{key_id}", self.inner.key_prefix)
    }

    /// The Redis key holding the theoretical arrival time of all of `user_id`'s keys together.
    pub fn user_key(&self, user_id: Uuid) -> String {
        format!("{}rlu:{user_id}", self.inner.key_prefix)
    }

    /// Opens the breaker if Redis looks down, and logs the first failure of a streak.
    fn record_failure(&self, failure: &Failure) {
        let breaker = &self.inner.breaker;
        let outage = failure.is_outage();
        if outage {
            breaker.trip();
        }
        if breaker.note_failure() {
            let logger = self.inner.logger.get();
            if outage {
                slog::warn!(logger,
                    "Redis rate limiter failed; checks are undecided, without asking Redis for \
                     a cool-down at a time, until it answers again";
                    "error" => %failure, "cooldown_ms" => breaker.cooldown_ms());
            } else {
                slog::error!(logger, "Redis rate limiter failed; checks are undecided";
                    "error" => %failure);
            }
        }
    }

    /// Logs the end of a failure streak.
    fn record_success(&self) {
        if self.inner.breaker.note_success() {
            slog::info!(self.inner.logger.get(), "Redis rate limiter answers again");
        }
    }
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("key_prefix", &self.inner.key_prefix)
            .field("command_timeout", &self.inner.command_timeout)
            .field("breaker_cooldown_ms", &self.inner.breaker.cooldown_ms())
            .field("breaker_open", &self.is_breaker_open())
            .finish_non_exhaustive()
    }
}

/// `T = 60 s / rpm` in microseconds, rounded up (so never more than `rpm` a minute), at least 1;
/// an `rpm` of 0 counts as 1.
fn emission_interval_us(rpm: u32) -> u64 {
    MINUTE_US.div_ceil(u64::from(rpm.max(1)))
}

/// `burst · interval` (a `burst` of 0 counts as 1), capped at [`MAX_CAPACITY_US`].
fn capacity_us(interval_us: u64, burst: u32) -> u64 {
    interval_us
        .saturating_mul(u64::from(burst.max(1)))
        .min(MAX_CAPACITY_US)
}

/// The requests of a key's allowance that leases leave alone: `ceil(burst / 2)`, so that extra
/// grants come only out of the upper half (a burst of 0 counts as 1).
fn lease_reserve(burst: u32) -> u32 {
    burst.max(1).div_ceil(2)
}

/// Whole seconds in `micros`, rounded up; 0 for none.
fn ceil_seconds(micros: i64) -> u64 {
    u64::try_from(micros).map_or(0, |us| us.div_ceil(MICROS_PER_SECOND))
}

/// Whose figures a reply's last number says they are.
fn allowance(code: i64) -> Allowance {
    if code == 2 {
        Allowance::User
    } else {
        Allowance::Key
    }
}

/// The decision the script's reply stands for.
fn decision(reply: ScriptReply) -> RateDecision {
    let (granted, remaining, retry_after_us, reset_us, whose) = reply;
    if granted >= 1 {
        RateDecision::Allowed {
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_seconds: ceil_seconds(reset_us),
            allowance: allowance(whose),
        }
    } else {
        RateDecision::Limited {
            retry_after_seconds: ceil_seconds(retry_after_us).max(1),
            reset_seconds: ceil_seconds(reset_us).max(1),
            allowance: allowance(whose),
        }
    }
}

thread_local! {
    /// This thread's decision counters (three at most).
    static DECISION_COUNTERS: HandleMemo<&'static str, metrics::Counter> =
        const { HandleMemo::new() };
}

/// Counts a decision in [`names::RATE_LIMIT_DECISIONS_TOTAL`]. The handle comes from the
/// recorder in effect when the thread first counts that decision.
fn count(decision: &'static str) {
    memoised(
        &DECISION_COUNTERS,
        |d| *d == decision,
        || decision,
        || metrics::counter!(names::RATE_LIMIT_DECISIONS_TOTAL, "decision" => decision),
    )
    .increment(1);
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn decide(&self, request: &RateRequest) -> RateDecision {
        let key_id = request.key_id;
        let lease = self.lease_duration();
        let now = Instant::now();
        if !lease.is_zero()
            && let Some(decision) = self.admit_from_lease(request, now)
        {
            count(rate_limit_decision::ALLOWED);
            return decision;
        }
        if self.is_breaker_open() {
            count(rate_limit_decision::ERROR);
            return RateDecision::Unavailable;
        }
        let want = self.lease_want(request, lease, now);
        let interval = emission_interval_us(request.key.rpm);
        let user = request
            .user
            .map(|user| (user, emission_interval_us(user.limit.rpm)));
        let mut invocation = self.inner.script.prepare_invoke();
        invocation
            .key(self.key(key_id))
            .arg(interval)
            .arg(capacity_us(interval, request.key.burst))
            .arg(EXPIRY_MARGIN_MS)
            .arg(want)
            .arg(lease_reserve(request.key.burst));
        if let Some((user, user_interval)) = user {
            invocation
                .key(self.user_key(user.user_id))
                .arg(user_interval)
                .arg(capacity_us(user_interval, user.limit.burst))
                .arg(lease_reserve(user.limit.burst));
        }
        let invocation = &invocation;
        let reply = call::run(
            &self.inner.pool,
            self.inner.command_timeout,
            |mut conn| async move { invocation.invoke_async::<ScriptReply>(&mut conn).await },
        )
        .await;
        match reply {
            Ok(reply) => {
                self.record_success();
                let granted = u32::try_from(reply.0.max(0)).unwrap_or(u32::MAX);
                let mut decision = decision(reply);
                if !lease.is_zero() {
                    if granted >= 1 {
                        let grant = Grant {
                            granted,
                            reply,
                            interval_us: interval,
                            user: user.map(|(user, interval)| (user.user_id, interval)),
                        };
                        let held = self.store_lease(key_id, grant, lease, Instant::now());
                        // What this process holds can still be made at once, too.
                        if let RateDecision::Allowed { remaining, .. } = &mut decision {
                            *remaining = remaining.saturating_add(held);
                        }
                    } else if let Some(admitted) = self.admit_from_lease(request, Instant::now()) {
                        // A request of this key that asked at the same time was granted more
                        // than it needed: this one is admitted from that, not refused.
                        decision = admitted;
                    }
                }
                count(match decision {
                    RateDecision::Allowed { .. } => rate_limit_decision::ALLOWED,
                    RateDecision::Limited { .. } => rate_limit_decision::LIMITED,
                    RateDecision::Unavailable => rate_limit_decision::ERROR,
                });
                decision
            }
            Err(failure) => {
                self.record_failure(&failure);
                count(rate_limit_decision::ERROR);
                RateDecision::Unavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emission_interval_is_a_minute_over_rpm_rounded_up() {
        assert_eq!(emission_interval_us(1), 60_000_000);
        assert_eq!(emission_interval_us(60_000), 1_000);
        // 60 s / 7 = 8_571_428.57… µs: rounding up keeps the sustained rate at or below 7/min.
        assert_eq!(emission_interval_us(7), 8_571_429);
        assert_eq!(emission_interval_us(u32::MAX), 1, "never zero");
        assert_eq!(emission_interval_us(0), 60_000_000, "0 rpm counts as 1");
    }

    #[test]
    fn the_capacity_is_burst_intervals_with_a_burst_of_at_least_one() {
        assert_eq!(capacity_us(1_000, 5), 5_000);
        assert_eq!(capacity_us(1_000, 0), 1_000);
        assert_eq!(capacity_us(60_000_000, u32::MAX), MAX_CAPACITY_US);
    }

    #[test]
    fn leases_leave_the_lower_half_of_the_burst_alone() {
        assert_eq!(lease_reserve(0), 1);
        assert_eq!(lease_reserve(1), 1);
        assert_eq!(lease_reserve(5), 3);
        assert_eq!(lease_reserve(20), 10);
        assert_eq!(lease_reserve(u32::MAX), u32::MAX / 2 + 1);
    }

    #[test]
    fn seconds_are_rounded_up() {
        assert_eq!(ceil_seconds(0), 0);
        assert_eq!(ceil_seconds(-5), 0);
        assert_eq!(ceil_seconds(1), 1);
        assert_eq!(ceil_seconds(1_000_000), 1);
        assert_eq!(ceil_seconds(1_000_001), 2);
    }

    #[test]
    fn an_admitting_reply_is_allowed_with_its_remaining_count() {
        assert_eq!(
            decision((1, 4, 0, 12_000_000, 1)),
            RateDecision::Allowed {
                remaining: 4,
                reset_seconds: 12,
                allowance: Allowance::Key,
            }
        );
    }

    #[test]
    fn a_refusing_reply_waits_at_least_a_second() {
        assert_eq!(
            decision((0, 0, 300, 59_000_001, 2)),
            RateDecision::Limited {
                retry_after_seconds: 1,
                reset_seconds: 60,
                allowance: Allowance::User,
            }
        );
    }
}
