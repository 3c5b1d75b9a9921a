//! The token-limit port: one inference call's request rate and token reservation decided in one
//! step ([`TokenRequest`] → [`TokenDecision`]), reservations settled with the call's real usage
//! ([`Settlement`]), and a month's counters seeded from the durable record ([`MonthSeed`]).

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::rate::{Allowance, RateRequest};

/// A calendar month, UTC: what a monthly token quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Month {
    year: i32,
    /// 1 to 12.
    month: u32,
}

impl Month {
    /// `year`-`month` (1 to 12), if it is a month chrono can express.
    pub fn new(year: i32, month: u32) -> Option<Self> {
        NaiveDate::from_ymd_opt(year, month, 1).map(|_| Self { year, month })
    }

    /// The month of `yyyymm` (`202701`), as the limiter's scripts name months.
    pub fn from_yyyymm(yyyymm: i64) -> Option<Self> {
        let year = i32::try_from(yyyymm.div_euclid(100)).ok()?;
        let month = u32::try_from(yyyymm.rem_euclid(100)).ok()?;
        Self::new(year, month)
    }

    /// `yyyymm` (`202701`).
    pub fn yyyymm(self) -> i64 {
        i64::from(self.year) * 100 + i64::from(self.month)
    }

    /// The month `at` is in.
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    /// The month after this one.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year.saturating_add(1),
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Its first instant (midnight UTC of its first day).
    pub fn start(self) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(self.year, self.month, 1)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .map_or(DateTime::<Utc>::MAX_UTC, |t| t.and_utc())
    }

    /// The first instant after it (the next month's start).
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The token limits of one subject (a key, or all of a user's keys together); `None`: no such
/// limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenLimits {
    /// Tokens per minute: over any 60 s, what was reserved (and, once settled, charged) stays
    /// below it before each admission.
    pub tpm: Option<u64>,
    /// Tokens per calendar month (UTC).
    pub monthly: Option<u64>,
}

impl TokenLimits {
    /// Whether either limit is set.
    pub fn any(&self) -> bool {
        self.tpm.is_some() || self.monthly.is_some()
    }
}

/// Whose tokens a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaSubject {
    /// One key's calls.
    Key(Uuid),
    /// All the calls of one user's keys.
    User(Uuid),
}

/// One inference call to decide: one request of the request-rate limits ([`RateRequest`]:
/// the key's and, when it has one, its user's) and `tokens` reserved in each token limit the
/// key and its user have. Admitted only when every one of them admits it; a refused call spends
/// nothing from any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRequest {
    /// The request-rate limits.
    pub rate: RateRequest,
    /// The key's user (whose token limits `user` are).
    pub user_id: Uuid,
    /// The key's token limits.
    pub key: TokenLimits,
    /// The user's token limits (all its keys together).
    pub user: TokenLimits,
    /// The estimate to reserve (at least 1).
    pub tokens: u64,
}

/// Which counters a reservation was entered in, so that settling it adjusts those only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Counters(u8);

impl Counters {
    /// The key's token window.
    pub const KEY_WINDOW: u8 = 1;
    /// The user's token window.
    pub const USER_WINDOW: u8 = 2;
    /// The key's counter of the month.
    pub const KEY_MONTH: u8 = 4;
    /// The user's counter of the month.
    pub const USER_MONTH: u8 = 8;

    /// The counters `request`'s limits use.
    pub fn of(request: &TokenRequest) -> Self {
        let flag = |set: bool, bit: u8| if set { bit } else { 0 };
        Self(
            flag(request.key.tpm.is_some(), Self::KEY_WINDOW)
                | flag(request.user.tpm.is_some(), Self::USER_WINDOW)
                | flag(request.key.monthly.is_some(), Self::KEY_MONTH)
                | flag(request.user.monthly.is_some(), Self::USER_MONTH),
        )
    }

    /// Counters from their bits.
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & 0x0f)
    }

    /// Their bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether `counter` (one of the constants) is among them.
    pub fn has(self, counter: u8) -> bool {
        self.0 & counter != 0
    }
}

/// Tokens an admitted call holds in its limits until it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reservation {
    /// The key.
    pub key_id: Uuid,
    /// Its user.
    pub user_id: Uuid,
    /// Tokens reserved.
    pub tokens: u64,
    /// The second (Unix time, on the limiter's clock) the reservation entered the token
    /// windows: settling it adjusts that second while it is still in the window.
    pub second: i64,
    /// The month whose counters it was added to.
    pub month: Month,
    /// The counters it is in.
    pub counters: Counters,
}

/// A reservation settled: its call is charged `tokens` instead of what it reserved (the
/// difference is refunded or charged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// What was reserved.
    pub reservation: Reservation,
    /// What the call is charged.
    pub tokens: u64,
}

impl Settlement {
    /// What settling changes: the charge minus the reservation.
    pub fn delta(&self) -> i64 {
        let charged = i64::try_from(self.tokens).unwrap_or(i64::MAX);
        let reserved = i64::try_from(self.reservation.tokens).unwrap_or(i64::MAX);
        charged.saturating_sub(reserved)
    }
}

/// The request-rate figures of an admission (as in [`super::RateDecision::Allowed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFigures {
    /// Requests that could still be made at once.
    pub remaining: u32,
    /// Seconds until that allowance is full again.
    pub reset_seconds: u64,
    /// Whose allowance these figures are of.
    pub allowance: Allowance,
}

/// The figures of the tighter token window (the one with fewer tokens left), for the
/// `x-ratelimit-*-tokens` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowFigures {
    /// Its tokens per minute.
    pub limit: u64,
    /// Tokens left in the window after this call's reservation (0 when it overdrew).
    pub remaining: u64,
    /// Milliseconds until every reservation now in the window has left it.
    pub reset_ms: u64,
    /// Whose window.
    pub allowance: Allowance,
}

/// An admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// What it holds until it is settled.
    pub reservation: Reservation,
    /// The request rate after it.
    pub requests: RateFigures,
    /// The tighter token window after it, when the key or its user has a `tpm`.
    pub tokens: Option<WindowFigures>,
}

/// Why a call was refused (it spent nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// A request-rate limit (as [`super::RateDecision::Limited`]).
    Requests {
        /// Seconds until one more request would be admitted.
        retry_after_seconds: u64,
        /// Seconds until the allowance that refused is full again.
        reset_seconds: u64,
        /// Whose.
        allowance: Allowance,
    },
    /// A token window is at its `tpm`.
    Tokens {
        /// Milliseconds until enough of the window's oldest reservations left it for one more
        /// call to be admitted.
        retry_after_ms: u64,
        /// Its tokens per minute.
        limit: u64,
        /// Tokens in the window.
        used: u64,
        /// What the call asked to reserve.
        requested: u64,
        /// Whose.
        allowance: Allowance,
        /// The request rate, which the call did not spend from.
        requests: RateFigures,
    },
    /// The client asked (its prompt, and a `max_tokens` it named) for more than a `tpm`: no
    /// wait would make room for it, the client must ask for less. Decided by
    /// [`crate::quotas::Quotas::reserve`] before the limiter is asked (limiters never answer
    /// it): nothing spent, no request counted.
    TooLarge {
        /// The tokens per minute.
        limit: u64,
        /// What the call asked to reserve.
        requested: u64,
        /// Whose.
        allowance: Allowance,
    },
    /// A monthly quota is used up until the month ends.
    Monthly {
        /// The month.
        month: Month,
        /// Its quota.
        limit: u64,
        /// Tokens counted in it.
        used: u64,
        /// Whose.
        allowance: Allowance,
        /// The request rate, which the call did not spend from.
        requests: RateFigures,
    },
}

/// The outcome of one [`TokenLimiter::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDecision {
    /// Admitted: every limit had room.
    Admitted(Admission),
    /// Refused by one limit (the one to wait longest for when several refused).
    Refused(TokenRefusal),
    /// A counter of `month` the request needs is not in the limiter (never set, or lost):
    /// nothing was decided; seed it ([`TokenLimiter::seed_month`]) and ask again.
    Unseeded {
        /// The month, on the limiter's clock.
        month: Month,
        /// The key's counter is missing.
        key: bool,
        /// The user's counter is missing.
        user: bool,
    },
    /// The limiter could not decide (its store down or slower than its timeout).
    Unavailable,
}

/// What a month's missing counters start from: the tokens the durable record holds for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthSeed {
    /// The month.
    pub month: Month,
    /// The key and its tokens so far, when its counter is to be seeded.
    pub key: Option<(Uuid, u64)>,
    /// The user and its tokens so far, when its counter is to be seeded.
    pub user: Option<(Uuid, u64)>,
}

/// The token limiter's store failed or did not answer in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token limiter unavailable: {0}")]
pub struct LimiterUnavailable(pub String);

/// A limiter of request rates and tokens shared by every replica. Implemented by the same
/// adapter as [`super::RateLimiter`], over the same request-rate state.
#[async_trait]
pub trait TokenLimiter: Send + Sync {
    /// Decides one call atomically: its request against the request-rate limits and its
    /// reservation against every token limit, all admitting or nothing spent. Returns within
    /// the implementation's timeout.
    async fn reserve(&self, request: &TokenRequest) -> TokenDecision;

    /// Adjusts each reservation's counters by its settlement's [`delta`](Settlement::delta):
    /// in a token window while its second is still in it (an overrun settled after its second
    /// left is charged to the current second), in a month's counter while it exists.
    async fn settle(&self, settlements: &[Settlement]) -> Result<(), LimiterUnavailable>;

    /// Sets each counter of the seed that does not exist yet (an existing one, set by another
    /// replica meanwhile, is kept).
    async fn seed_month(&self, seed: &MonthSeed) -> Result<(), LimiterUnavailable>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_calendar_months_in_utc() {
        let jan = Month::new(2027, 1).expect("valid");
        assert_eq!(jan.to_string(), "2027-01");
        assert_eq!(jan.yyyymm(), 202_701);
        assert_eq!(Month::from_yyyymm(202_701), Some(jan));
        assert_eq!(Month::from_yyyymm(202_713), None);
        assert_eq!(Month::new(2026, 12).map(Month::next), Some(jan));
        assert_eq!(jan.start().to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(jan.end().to_rfc3339(), "2027-02-01T00:00:00+00:00");
        let last_instant = jan.end() - chrono::Duration::microseconds(1);
        assert_eq!(Month::of(last_instant), jan);
        assert_eq!(Month::of(jan.end()), jan.next());
    }

    #[test]
    fn a_settlement_refunds_or_charges_the_difference() {
        let reservation = Reservation {
            key_id: Uuid::nil(),
            user_id: Uuid::nil(),
            tokens: 100,
            second: 0,
            month: Month::new(2027, 1).expect("valid"),
            counters: Counters::from_bits(Counters::KEY_WINDOW),
        };
        let settled = |tokens| Settlement {
            reservation,
            tokens,
        };
        assert_eq!(settled(30).delta(), -70);
        assert_eq!(settled(130).delta(), 30);
        assert_eq!(settled(100).delta(), 0);
    }
}
