//! [`InMemoryRateLimiter`] as the token-limit port: the Redis adapter's token windows and month
//! counters (`maas_cache::ratelimit::tokens`), on the limiter's test clock.
//!
//! A token window holds, per second (Unix time on the clock), the tokens reserved in it (and
//! adjusted by settlements); a second counts while it is at least `now - 60` s (so a
//! reservation leaves 60 to 61 s after it was made). A call is admitted when every window it is
//! held to holds less than its `tpm` and every month counter less than its quota; then its
//! reservation is added to each, at the current second. A month counter that does not exist
//! makes the decision [`TokenDecision::Unseeded`].

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use chrono::DateTime;
use uuid::Uuid;

use super::limiter::{InMemoryRateLimiter, RateStep, State};
use crate::ports::{
    Admission, Allowance, Counters, LimiterUnavailable, Month, MonthSeed, RateDecision,
    RateFigures, Reservation, Settlement, TokenDecision, TokenLimiter, TokenRefusal, TokenRequest,
    WindowFigures,
};

const MICROS_PER_SECOND: u64 = 1_000_000;
/// Seconds before the current one that still count in a window.
const WINDOW_SECONDS: i64 = 60;

/// Whose counter: a key's or a user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Counter {
    Key(Uuid),
    User(Uuid),
}

/// The clock as Unix time: (seconds, microseconds past the epoch).
fn clock(state: &State) -> (i64, u64) {
    let secs = i64::try_from(state.now_us / MICROS_PER_SECOND).unwrap_or(i64::MAX);
    let now_s = state.epoch_secs.saturating_add(secs);
    let now_us = u64::try_from(state.epoch_secs)
        .unwrap_or(0)
        .saturating_mul(MICROS_PER_SECOND)
        .saturating_add(state.now_us);
    (now_s, now_us)
}

fn month_at(now_s: i64) -> Month {
    Month::of(DateTime::from_timestamp(now_s, 0).unwrap_or_default())
}

/// Microseconds from `now_us` until second `s` has left the window.
fn leaves_us(s: i64, now_us: u64) -> u64 {
    let leaves = u64::try_from(s.saturating_add(WINDOW_SECONDS + 1)).unwrap_or(0);
    leaves
        .saturating_mul(MICROS_PER_SECOND)
        .saturating_sub(now_us)
}

/// A window's seconds still in it at `now_s` (older ones dropped) and their sum.
fn window(state: &mut State, counter: Counter, now_s: i64) -> u64 {
    let entries = state.windows.entry(counter).or_default();
    entries.retain(|s, _| *s >= now_s - WINDOW_SECONDS);
    entries.values().sum()
}

/// When enough of the window's oldest seconds leave it for its sum to be below `limit`.
fn window_wait(state: &State, counter: Counter, limit: u64, now_us: u64) -> u64 {
    let Some(entries) = state.windows.get(&counter) else {
        return 0;
    };
    let mut left: u64 = entries.values().sum();
    for (s, tokens) in entries {
        left = left.saturating_sub(*tokens);
        if left < limit {
            return leaves_us(*s, now_us);
        }
    }
    0
}

impl InMemoryRateLimiter {
    /// Tokens in `counter`'s window now (for tests), the clock's expired seconds left out.
    fn window_sum(&self, counter: Counter) -> u64 {
        let mut state = self.lock();
        let (now_s, _) = clock(&state);
        window(&mut state, counter, now_s)
    }

    /// Tokens in the token window of `key_id` now.
    pub fn key_window(&self, key_id: Uuid) -> u64 {
        self.window_sum(Counter::Key(key_id))
    }

    /// Tokens in the token window of all of `user_id`'s keys now.
    pub fn user_window(&self, user_id: Uuid) -> u64 {
        self.window_sum(Counter::User(user_id))
    }

    /// The month counter of `key_id` for the clock's month, if it exists.
    pub fn key_month(&self, key_id: Uuid) -> Option<u64> {
        let state = self.lock();
        let month = month_at(clock(&state).0);
        state.months.get(&(Counter::Key(key_id), month)).copied()
    }

    /// Forgets every month counter, as a Redis that lost its data would.
    pub fn forget_months(&self) {
        self.lock().months.clear();
    }
}

#[async_trait]
impl TokenLimiter for InMemoryRateLimiter {
    async fn reserve(&self, request: &TokenRequest) -> TokenDecision {
        let mut state = self.lock();
        *state.checks.entry(request.rate.key_id).or_insert(0) += 1;
        if self.unavailable.load(Ordering::SeqCst) {
            return TokenDecision::Unavailable;
        }
        let (now_s, now_us) = clock(&state);
        let month = month_at(now_s);
        let subjects = [
            (
                Allowance::Key,
                Counter::Key(request.rate.key_id),
                request.key,
            ),
            (
                Allowance::User,
                Counter::User(request.user_id),
                request.user,
            ),
        ];
        let missing = |state: &State, counter, limits: crate::ports::TokenLimits| {
            limits.monthly.is_some() && !state.months.contains_key(&(counter, month))
        };
        let (key_missing, user_missing) = (
            missing(&state, subjects[0].1, subjects[0].2),
            missing(&state, subjects[1].1, subjects[1].2),
        );
        if key_missing || user_missing {
            return TokenDecision::Unseeded {
                month,
                key: key_missing,
                user: user_missing,
            };
        }
        let step = RateStep::decide(&state, &request.rate);
        // What the request rate says when another limit refuses the call.
        let requests = match &step {
            Ok(step) => step.unspent,
            Err((
                _,
                RateDecision::Limited {
                    reset_seconds,
                    allowance,
                    ..
                },
            )) => RateFigures {
                remaining: 0,
                reset_seconds: *reset_seconds,
                allowance: *allowance,
            },
            Err(_) => return TokenDecision::Unavailable,
        };
        // Month quotas first: their wait is the longest.
        for (allowance, counter, limits) in subjects {
            let used = state.months.get(&(counter, month)).copied().unwrap_or(0);
            if let Some(limit) = limits.monthly.filter(|limit| used >= *limit) {
                return TokenDecision::Refused(TokenRefusal::Monthly {
                    month,
                    limit,
                    used,
                    allowance,
                    requests,
                });
            }
        }
        let mut refusal: Option<(u64, TokenRefusal)> = None;
        let step = match step {
            Ok(step) => Some(step),
            Err((
                wait,
                RateDecision::Limited {
                    retry_after_seconds,
                    reset_seconds,
                    allowance,
                },
            )) => {
                let refused = TokenRefusal::Requests {
                    retry_after_seconds,
                    reset_seconds,
                    allowance,
                };
                refusal = Some((wait, refused));
                None
            }
            Err(_) => return TokenDecision::Unavailable,
        };
        let mut tightest: Option<WindowFigures> = None;
        for (allowance, counter, limits) in subjects {
            let Some(limit) = limits.tpm else { continue };
            let used = window(&mut state, counter, now_s);
            if used >= limit {
                let wait = window_wait(&state, counter, limit, now_us);
                if refusal.as_ref().is_none_or(|(w, _)| wait > *w) {
                    let refused = TokenRefusal::Tokens {
                        retry_after_ms: wait.div_ceil(1_000),
                        limit,
                        used,
                        requested: request.tokens,
                        allowance,
                        requests,
                    };
                    refusal = Some((wait, refused));
                }
                continue;
            }
            let figures = WindowFigures {
                limit,
                remaining: limit.saturating_sub(used.saturating_add(request.tokens)),
                reset_ms: leaves_us(now_s, now_us).div_ceil(1_000),
                allowance,
            };
            if tightest.is_none_or(|t| figures.remaining < t.remaining) {
                tightest = Some(figures);
            }
        }
        let (Some(step), None) = (step, refusal) else {
            return refusal.map_or(TokenDecision::Unavailable, |(_, refused)| {
                TokenDecision::Refused(refused)
            });
        };
        step.commit(&mut state);
        let counters = Counters::of(request);
        for (_, counter, limits) in subjects {
            if limits.tpm.is_some() {
                *state
                    .windows
                    .entry(counter)
                    .or_default()
                    .entry(now_s)
                    .or_default() += request.tokens;
            }
            if limits.monthly.is_some() {
                *state.months.entry((counter, month)).or_default() += request.tokens;
            }
        }
        TokenDecision::Admitted(Admission {
            reservation: Reservation {
                key_id: request.rate.key_id,
                user_id: request.user_id,
                tokens: request.tokens,
                second: now_s,
                month,
                counters,
            },
            requests: step.figures,
            tokens: tightest,
        })
    }

    async fn settle(&self, settlements: &[Settlement]) -> Result<(), LimiterUnavailable> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(LimiterUnavailable(
                "the in-memory limiter is off".to_owned(),
            ));
        }
        let mut state = self.lock();
        let (now_s, _) = clock(&state);
        for settlement in settlements {
            let delta = settlement.delta();
            let r = settlement.reservation;
            let counted = [
                (
                    Counters::KEY_WINDOW,
                    Counters::KEY_MONTH,
                    Counter::Key(r.key_id),
                ),
                (
                    Counters::USER_WINDOW,
                    Counters::USER_MONTH,
                    Counter::User(r.user_id),
                ),
            ];
            for (window_bit, month_bit, counter) in counted {
                if r.counters.has(window_bit) {
                    window(&mut state, counter, now_s);
                    let entries = state.windows.entry(counter).or_default();
                    match entries.get_mut(&r.second) {
                        Some(tokens) => *tokens = adjusted(*tokens, delta),
                        None if delta > 0 => {
                            *entries.entry(now_s).or_default() += delta.unsigned_abs();
                        }
                        None => {}
                    }
                }
                if r.counters.has(month_bit)
                    && let Some(used) = state.months.get_mut(&(counter, r.month))
                {
                    *used = adjusted(*used, delta);
                }
            }
        }
        Ok(())
    }

    async fn seed_month(&self, seed: &MonthSeed) -> Result<(), LimiterUnavailable> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(LimiterUnavailable(
                "the in-memory limiter is off".to_owned(),
            ));
        }
        let mut state = self.lock();
        let seeds = [
            seed.key.map(|(id, used)| (Counter::Key(id), used)),
            seed.user.map(|(id, used)| (Counter::User(id), used)),
        ];
        for (counter, used) in seeds.into_iter().flatten() {
            state.months.entry((counter, seed.month)).or_insert(used);
        }
        Ok(())
    }
}

/// `count` moved by `delta`, never below zero.
fn adjusted(count: u64, delta: i64) -> u64 {
    if delta >= 0 {
        count.saturating_add(delta.unsigned_abs())
    } else {
        count.saturating_sub(delta.unsigned_abs())
    }
}
