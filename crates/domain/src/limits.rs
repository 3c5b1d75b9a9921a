//! [`RateLimits`]: which limits a principal's request is held to.

use crate::identity::Principal;
use crate::ports::{RateLimit, RateRequest, UserRateLimit};

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
