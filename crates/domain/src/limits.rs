//! [`RateLimits`]: which request-rate limits a principal's request is held to; [`TokenPolicy`]:
//! which token limits its inference calls are.

use crate::identity::{MonthlyTokens, Principal, TokenQuotas, TokensPerMinute};
use crate::ports::{RateLimit, RateRequest, TokenLimits, UserRateLimit};

/// The rate-limit policy: every request spends one unit of its key's allowance (the key's own
/// `rate_limit_rpm`, else `default_rpm`) and, when its user has a limit (the user's own
/// `rate_limit_rpm`, else `user_rpm` when set), one of its user's, shared by all the user's keys:
/// so a member cannot multiply its rate by creating keys. Both have the same `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests per minute of a key without a limit of its own.
    pub default_rpm: u32,
    /// Requests that may arrive at once on top of the steady rate (at least 1).
    pub burst: u32,
    /// Requests per minute of all the keys of a user without a limit of its own together;
    /// `None`: such users are held to their keys' limits only.
    pub user_rpm: Option<u32>,
}

impl RateLimits {
    /// What a request of `principal` is decided against.
    pub fn request_for(&self, principal: &Principal) -> RateRequest {
        let burst = self.burst.max(1);
        let key = RateLimit {
            rpm: principal
                .rate_limit_rpm
                .map_or(self.default_rpm, |rpm| rpm.get()),
            burst,
        };
        let user = principal
            .user_rate_limit_rpm
            .map(|rpm| rpm.get())
            .or(self.user_rpm)
            .map(|rpm| UserRateLimit {
                user_id: principal.user_id,
                limit: RateLimit { rpm, burst },
            });
        RateRequest {
            key_id: principal.key_id,
            key,
            user,
        }
    }
}

/// The token policy: which token limits a principal's inference calls are held to (the key's own
/// `tpm` and `monthly_tokens`, else `default_tpm` and `default_monthly_tokens`; the user's own,
/// else `user_tpm` and `user_monthly_tokens`), and how a call's reservation is estimated (see
/// [`crate::quotas::estimate`]). Every default is off unless an operator sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Tokens per minute of a key without a `tpm` of its own; `None`: no limit.
    pub default_tpm: Option<u64>,
    /// Tokens per month of a key without a `monthly_tokens` of its own; `None`: no quota.
    pub default_monthly_tokens: Option<u64>,
    /// Tokens per minute of all the keys of a user without a `tpm` of its own.
    pub user_tpm: Option<u64>,
    /// Tokens per month of all the keys of a user without a `monthly_tokens` of its own.
    pub user_monthly_tokens: Option<u64>,
    /// The completion a call that names no `max_tokens` (nor `max_completion_tokens`) is
    /// expected to take.
    pub default_max_tokens: u64,
    /// The largest `max_tokens` believed (a larger one reserves this many).
    pub max_tokens: u64,
}

impl TokenPolicy {
    /// No token limit for anyone; calls naming no `max_tokens` reserve `default_max_tokens`,
    /// and none more than `max_tokens`.
    pub fn without_limits(default_max_tokens: u64, max_tokens: u64) -> Self {
        Self {
            default_tpm: None,
            default_monthly_tokens: None,
            user_tpm: None,
            user_monthly_tokens: None,
            default_max_tokens,
            max_tokens,
        }
    }

    /// The token limits of `principal`'s key and of its user.
    pub fn limits_for(&self, principal: &Principal) -> (TokenLimits, TokenLimits) {
        self.limits_of(principal.key_tokens, principal.user_tokens)
    }

    /// The token limits a key with `key` quotas and a user with `user` quotas are held to.
    pub fn limits_of(&self, key: TokenQuotas, user: TokenQuotas) -> (TokenLimits, TokenLimits) {
        (
            TokenLimits {
                tpm: key.tpm.map(TokensPerMinute::get).or(self.default_tpm),
                monthly: key
                    .monthly_tokens
                    .map(MonthlyTokens::get)
                    .or(self.default_monthly_tokens),
            },
            TokenLimits {
                tpm: user.tpm.map(TokensPerMinute::get).or(self.user_tpm),
                monthly: user
                    .monthly_tokens
                    .map(MonthlyTokens::get)
                    .or(self.user_monthly_tokens),
            },
        )
    }

    /// Whether `principal`'s inference calls reserve tokens: its key or its user has a token
    /// limit. A handful of comparisons, no allocation: it is asked on every call.
    pub fn applies_to(&self, principal: &Principal) -> bool {
        let (key, user) = self.limits_for(principal);
        key.any() || user.any()
    }
}
