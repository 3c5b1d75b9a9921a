//! Token limits: [`RedisRateLimiter`] as the [`TokenLimiter`] port. One script call decides an
//! inference call of a key with token limits: one request of the key's GCRA (and the user's),
//! and the call's reservation in the key's and the user's token windows and month counters;
//! admitted only if every one of them admits it, and a refusal spends nothing.
//!
//! # Token windows: an exact sliding minute
//! A token bucket (or a GCRA) with a minute of burst admits up to twice its rate in the first
//! minute after it was idle, so it cannot promise "at most `tpm` tokens a minute". A window
//! does: each subject (key `P` `tw:` `<key id>`, user `P` `twu:` `<user id>`) has a Redis hash
//! from a Unix second (Redis's clock, `TIME`) to the tokens reserved in that second (adjusted by
//! settlements). At a decision at time `now` (second `S`), the seconds `S - 60 ..= S` count:
//! older fields are deleted first (each field is deleted once). The call is admitted when every
//! window it is held to sums to **less than** its `tpm`; its reservation is then added to field
//! `S`.
//!
//! *The bound.* Take any 60 s interval `(t - 60 s, t]`, and the last call admitted in it, at
//! `t' <= t`. Every call admitted in the interval was admitted at or after `t - 60 s`, so in a
//! second `>= floor(t' - 60 s)`: it is still counted at `t'`, by whichever replica decides,
//! because every replica's decision is one atomic script on one Redis and one clock. The sum at
//! `t'` was below `tpm` before the last call's reservation was added, so the calls admitted in
//! the interval reserved (as settled by then) at most `tpm - 1 +` that call's reservation.
//! Two replicas on one Redis together therefore never admit more than the limit plus one
//! call's reservation in any minute, however they interleave. (The window reaches back 60 to
//! 61 s, whole seconds, so it is on the safe side by under a second.) A call that uses more
//! than it reserved is charged the difference when it settles, which delays later calls: the
//! bound is on what was reserved and settled when each call was admitted.
//!
//! *The cost.* A window holds at most 62 fields (one per second of the last minute and the
//! current one: every write drops expired seconds first), so a decision reads one small hash
//! per subject: O(1) per call, whatever the request rate, and a memory of at most 62 fields per
//! busy subject. A refused call's retry time is when enough of the oldest seconds have left for
//! the sum to drop below the limit (a loop over those at most 62 fields, sorted).
//!
//! # Month counters, and losing Redis
//! `P` `tm:` `<key id>` `:` `yyyymm` (users: `tmu:`), the month of Redis's clock in UTC, hold the
//! tokens counted in the month; a call is admitted while each is below its quota and adds its
//! reservation. A counter lives a day after its last reservation. A counter that is missing is
//! not taken as zero: the script decides nothing and answers [`TokenDecision::Unseeded`], the
//! caller ([`maas_domain::Quotas`]) reads the month's tokens from Postgres and seeds it with
//! `SET NX` ([`TokenLimiter::seed_month`]: another replica's seed wins), and asks again. So a
//! Redis restart or eviction never gives a subject a fresh month.
//!
//! # Settlement
//! [`TokenLimiter::settle`] adjusts by `charge - reservation` the window's field of the
//! reservation's second, if that second is still in the window (never below 0); an overrun
//! settled after its second left the window is charged to the current second; and each month
//! counter that exists. A batch is one script call (up to 64 settlements).
//!
//! # Leases
//! None: a key with a token limit (its own, its user's, or a default) is decided by Redis on
//! every inference call, since a reservation's size is known only then. Its other requests, and
//! every request of keys without token limits, go through [`RateLimiter::decide`] and its
//! leases as before; both paths spend the same GCRA.
//!
//! [`RateLimiter::decide`]: maas_domain::ports::RateLimiter::decide

use async_trait::async_trait;
use maas_domain::ports::{
    Admission, Allowance, Counters, LimiterUnavailable, Month, MonthSeed, QuotaSubject,
    RateFigures, Reservation, Settlement, TokenDecision, TokenLimiter, TokenRefusal, TokenRequest,
    WindowFigures,
};
use maas_telemetry::handles::{HandleMemo, memoised};
use maas_telemetry::names::{self, rate_limit_decision, token_limit_decision};

use super::{
    EXPIRY_MARGIN_MS, RedisRateLimiter, capacity_us, ceil_seconds, count, emission_interval_us,
};
use crate::call;

/// Most settlements in one script call.
pub(super) const SETTLE_BATCH: usize = 64;

/// How long a month counter lives after its last reservation (then it is seeded again from the
/// durable record, which by then holds every call it counted).
const MONTH_IDLE_MS: u64 = 24 * 60 * 60 * 1_000;

impl RedisRateLimiter {
    /// The Redis key of `subject`'s token window: a hash from Unix second to tokens.
    pub fn window_key(&self, subject: QuotaSubject) -> String {
        match subject {
            QuotaSubject::Key(id) => format!("{}tw:{id}", self.inner.key_prefix),
            QuotaSubject::User(id) => format!("{}twu:{id}", self.inner.key_prefix),
        }
    }

    /// The Redis key of `subject`'s counter of `month`.
    pub fn month_key(&self, subject: QuotaSubject, month: Month) -> String {
        format!("{}{}", self.month_prefix(subject), month.yyyymm())
    }

    fn month_prefix(&self, subject: QuotaSubject) -> String {
        match subject {
            QuotaSubject::Key(id) => format!("{}tm:{id}:", self.inner.key_prefix),
            QuotaSubject::User(id) => format!("{}tmu:{id}:", self.inner.key_prefix),
        }
    }

    fn unavailable(&self, failure: &call::Failure) -> LimiterUnavailable {
        self.record_failure(failure);
        LimiterUnavailable(failure.to_string())
    }

    fn skipped() -> LimiterUnavailable {
        LimiterUnavailable("skipped after a recent failure".to_owned())
    }
}

thread_local! {
    /// This thread's token decision counters (six at most).
    static TOKEN_DECISION_COUNTERS: HandleMemo<&'static str, metrics::Counter> =
        const { HandleMemo::new() };
}

/// Counts a decision in [`names::TOKEN_LIMIT_DECISIONS_TOTAL`] and, as a request-rate decision,
/// in [`names::RATE_LIMIT_DECISIONS_TOTAL`].
fn count_token_decision(decision: &TokenDecision) {
    let (token, rate) = match decision {
        TokenDecision::Admitted(_) => (token_limit_decision::ALLOWED, rate_limit_decision::ALLOWED),
        TokenDecision::Refused(TokenRefusal::Requests { .. }) => {
            (token_limit_decision::REQUESTS, rate_limit_decision::LIMITED)
        }
        TokenDecision::Refused(TokenRefusal::Tokens { .. }) => {
            (token_limit_decision::TOKENS, rate_limit_decision::LIMITED)
        }
        // Decided by the use-case before any limiter (and counted there), never answered here.
        TokenDecision::Refused(TokenRefusal::TooLarge { .. }) => (
            token_limit_decision::TOO_LARGE,
            rate_limit_decision::LIMITED,
        ),
        TokenDecision::Refused(TokenRefusal::Monthly { .. }) => {
            (token_limit_decision::MONTHLY, rate_limit_decision::LIMITED)
        }
        TokenDecision::Unseeded { .. } => {
            memoised_count(token_limit_decision::UNSEEDED);
            return;
        }
        TokenDecision::Unavailable => (token_limit_decision::ERROR, rate_limit_decision::ERROR),
    };
    memoised_count(token);
    count(rate);
}

fn memoised_count(decision: &'static str) {
    memoised(
        &TOKEN_DECISION_COUNTERS,
        |d| *d == decision,
        || decision,
        || metrics::counter!(names::TOKEN_LIMIT_DECISIONS_TOTAL, "decision" => decision),
    )
    .increment(1);
}

fn whose(code: i64) -> Allowance {
    super::allowance(code)
}

fn figures(remaining: i64, reset_us: i64, who: i64) -> RateFigures {
    RateFigures {
        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        reset_seconds: ceil_seconds(reset_us),
        allowance: whose(who),
    }
}

fn count_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The decision the reserve script's reply stands for; a reply of another shape (never sent)
/// is [`TokenDecision::Unavailable`].
pub(super) fn decision_of(reply: &[i64], request: &TokenRequest) -> TokenDecision {
    let month = |yyyymm: i64| Month::from_yyyymm(yyyymm);
    match *reply {
        [
            1,
            second,
            yyyymm,
            remaining,
            reset_us,
            who,
            tpm,
            left,
            tokens_reset_us,
            tokens_who,
        ] => {
            let Some(month) = month(yyyymm) else {
                return TokenDecision::Unavailable;
            };
            TokenDecision::Admitted(Admission {
                reservation: Reservation {
                    key_id: request.rate.key_id,
                    user_id: request.user_id,
                    tokens: request.tokens,
                    second,
                    month,
                    counters: Counters::of(request),
                },
                requests: figures(remaining, reset_us, who),
                tokens: (tpm > 0).then(|| WindowFigures {
                    limit: count_of(tpm),
                    remaining: count_of(left),
                    reset_ms: count_of(tokens_reset_us).div_ceil(1_000),
                    allowance: whose(tokens_who),
                }),
            })
        }
        [2, wait_us, reset_us, who] => TokenDecision::Refused(TokenRefusal::Requests {
            retry_after_seconds: ceil_seconds(wait_us).max(1),
            reset_seconds: ceil_seconds(reset_us).max(1),
            allowance: whose(who),
        }),
        [3, wait_us, tpm, used, who, remaining, reset_us, rate_who] => {
            TokenDecision::Refused(TokenRefusal::Tokens {
                retry_after_ms: count_of(wait_us).div_ceil(1_000).max(1),
                limit: count_of(tpm),
                used: count_of(used),
                requested: request.tokens,
                allowance: whose(who),
                requests: figures(remaining, reset_us, rate_who),
            })
        }
        [4, yyyymm, quota, used, who, remaining, reset_us, rate_who] => match month(yyyymm) {
            Some(month) => TokenDecision::Refused(TokenRefusal::Monthly {
                month,
                limit: count_of(quota),
                used: count_of(used),
                allowance: whose(who),
                requests: figures(remaining, reset_us, rate_who),
            }),
            None => TokenDecision::Unavailable,
        },
        [5, yyyymm, key, user] => match month(yyyymm) {
            Some(month) => TokenDecision::Unseeded {
                month,
                key: key == 1,
                user: user == 1,
            },
            None => TokenDecision::Unavailable,
        },
        _ => TokenDecision::Unavailable,
    }
}

#[async_trait]
impl TokenLimiter for RedisRateLimiter {
    async fn reserve(&self, request: &TokenRequest) -> TokenDecision {
        if self.is_breaker_open() {
            count_token_decision(&TokenDecision::Unavailable);
            return TokenDecision::Unavailable;
        }
        let rate = &request.rate;
        let key_interval = emission_interval_us(rate.key.rpm);
        let (user_interval, user_capacity) = rate.user.map_or((0, 0), |user| {
            let interval = emission_interval_us(user.limit.rpm);
            (interval, capacity_us(interval, user.limit.burst))
        });
        let key = QuotaSubject::Key(rate.key_id);
        let user = QuotaSubject::User(request.user_id);
        let mut invocation = self.inner.reserve_script.prepare_invoke();
        invocation
            .key(self.key(rate.key_id))
            .key(self.user_key(request.user_id))
            .key(self.window_key(key))
            .key(self.window_key(user))
            .arg(EXPIRY_MARGIN_MS)
            .arg(key_interval)
            .arg(capacity_us(key_interval, rate.key.burst))
            .arg(user_interval)
            .arg(user_capacity)
            .arg(request.tokens.max(1))
            .arg(request.key.tpm.unwrap_or(0))
            .arg(request.user.tpm.unwrap_or(0))
            .arg(request.key.monthly.unwrap_or(0))
            .arg(request.user.monthly.unwrap_or(0))
            .arg(self.month_prefix(key))
            .arg(self.month_prefix(user))
            .arg(MONTH_IDLE_MS);
        let invocation = &invocation;
        let reply = call::run(
            &self.inner.pool,
            self.inner.command_timeout,
            |mut conn| async move { invocation.invoke_async::<Vec<i64>>(&mut conn).await },
        )
        .await;
        let decision = match reply {
            Ok(reply) => {
                self.record_success();
                decision_of(&reply, request)
            }
            Err(failure) => {
                self.record_failure(&failure);
                TokenDecision::Unavailable
            }
        };
        count_token_decision(&decision);
        decision
    }

    async fn settle(&self, settlements: &[Settlement]) -> Result<(), LimiterUnavailable> {
        for batch in settlements.chunks(SETTLE_BATCH) {
            if self.is_breaker_open() {
                return Err(Self::skipped());
            }
            let mut invocation = self.inner.settle_script.prepare_invoke();
            invocation.arg(EXPIRY_MARGIN_MS);
            for settlement in batch {
                let r = &settlement.reservation;
                let (key, user) = (QuotaSubject::Key(r.key_id), QuotaSubject::User(r.user_id));
                invocation
                    .key(self.window_key(key))
                    .key(self.window_key(user))
                    .key(self.month_key(key, r.month))
                    .key(self.month_key(user, r.month))
                    .arg(r.second)
                    .arg(settlement.delta())
                    .arg(r.counters.bits());
            }
            let invocation = &invocation;
            call::run(
                &self.inner.pool,
                self.inner.command_timeout,
                |mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await },
            )
            .await
            .map_err(|failure| self.unavailable(&failure))?;
            self.record_success();
        }
        Ok(())
    }

    async fn seed_month(&self, seed: &MonthSeed) -> Result<(), LimiterUnavailable> {
        if self.is_breaker_open() {
            return Err(Self::skipped());
        }
        let counters = [
            seed.key.map(|(id, used)| (QuotaSubject::Key(id), used)),
            seed.user.map(|(id, used)| (QuotaSubject::User(id), used)),
        ];
        let mut pipe = redis::pipe();
        for (subject, used) in counters.into_iter().flatten() {
            pipe.cmd("SET")
                .arg(self.month_key(subject, seed.month))
                .arg(used)
                .arg("NX")
                .arg("PX")
                .arg(MONTH_IDLE_MS)
                .ignore();
        }
        let pipe = &pipe;
        call::run(
            &self.inner.pool,
            self.inner.command_timeout,
            |mut conn| async move { pipe.query_async::<()>(&mut conn).await },
        )
        .await
        .map_err(|failure| self.unavailable(&failure))?;
        self.record_success();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use maas_domain::ports::{RateLimit, RateRequest, TokenLimits};
    use uuid::Uuid;

    use super::*;

    fn request() -> TokenRequest {
        TokenRequest {
            rate: RateRequest::key_only(Uuid::nil(), RateLimit { rpm: 60, burst: 5 }),
            user_id: Uuid::nil(),
            key: TokenLimits {
                tpm: Some(1_000),
                monthly: None,
            },
            user: TokenLimits::default(),
            tokens: 300,
        }
    }

    #[test]
    fn an_admission_carries_its_reservation_and_the_figures_of_both_limits() {
        let reply = [
            1,
            1_800_000_000,
            202_701,
            4,
            1_000_000,
            1,
            1_000,
            700,
            60_500_001,
            1,
        ];
        let TokenDecision::Admitted(admission) = decision_of(&reply, &request()) else {
            panic!("admitted");
        };
        assert_eq!(admission.reservation.tokens, 300);
        assert_eq!(admission.reservation.second, 1_800_000_000);
        assert_eq!(admission.reservation.month.to_string(), "2027-01");
        assert!(admission.reservation.counters.has(Counters::KEY_WINDOW));
        assert!(!admission.reservation.counters.has(Counters::KEY_MONTH));
        assert_eq!(admission.requests.remaining, 4);
        let tokens = admission.tokens.expect("a tpm");
        assert_eq!(
            (tokens.limit, tokens.remaining, tokens.reset_ms),
            (1_000, 700, 60_501)
        );
    }

    #[test]
    fn refusals_and_missing_months_are_read_back() {
        assert!(matches!(
            decision_of(&[3, 1_500, 1_000, 1_200, 2, 7, 2_000_000, 1], &request()),
            TokenDecision::Refused(TokenRefusal::Tokens {
                retry_after_ms: 2,
                limit: 1_000,
                used: 1_200,
                requested: 300,
                allowance: Allowance::User,
                requests: RateFigures {
                    remaining: 7,
                    reset_seconds: 2,
                    allowance: Allowance::Key,
                },
            })
        ));
        assert!(matches!(
            decision_of(&[5, 202_701, 1, 0], &request()),
            TokenDecision::Unseeded {
                key: true,
                user: false,
                ..
            }
        ));
        assert_eq!(decision_of(&[9], &request()), TokenDecision::Unavailable);
        assert_eq!(
            decision_of(&[4, 202_713, 1, 1, 1, 0, 0, 1], &request()),
            TokenDecision::Unavailable,
            "no such month"
        );
    }
}
