//! The rate-limit port: what one decision is asked ([`RateRequest`]) and answers
//! ([`RateDecision`]).

use async_trait::async_trait;
use uuid::Uuid;

/// A requests-per-minute limit with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per minute.
    pub rpm: u32,
    /// Requests that may arrive at once; over any window of a minute, at most `rpm + burst`
    /// requests are admitted.
    pub burst: u32,
}

/// The limit of all the keys of one user together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRateLimit {
    /// The user.
    pub user_id: Uuid,
    /// Its limit.
    pub limit: RateLimit,
}

/// One request to decide: it spends one unit of its key's allowance and, when its user has a
/// limit, one of its user's; it is admitted only when both have one left, and a refused request
/// spends neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRequest {
    /// The key.
    pub key_id: Uuid,
    /// The key's limit.
    pub key: RateLimit,
    /// The user's limit, if it has one.
    pub user: Option<UserRateLimit>,
}

impl RateRequest {
    /// A request held to its key's limit only.
    pub fn key_only(key_id: Uuid, key: RateLimit) -> Self {
        Self {
            key_id,
            key,
            user: None,
        }
    }

    /// The limit of `allowance`: the key's, or the user's (the key's when there is none).
    pub fn limit_of(&self, allowance: Allowance) -> RateLimit {
        match (allowance, self.user) {
            (Allowance::User, Some(user)) => user.limit,
            _ => self.key,
        }
    }
}

/// Which allowance a decision's figures (`remaining`, `reset_seconds`, `retry_after_seconds`)
/// are of: the tighter of the two (on an admission the one with fewer requests left, on a tie
/// the one that takes longer to be full again; on a refusal the one to wait longer for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// The key's.
    Key,
    /// The user's (all its keys together).
    User,
}

/// The outcome of one rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Admitted.
    Allowed {
        /// Requests that could still be made at once (the fewer of the key's and the user's).
        remaining: u32,
        /// Seconds until that allowance is full again.
        reset_seconds: u64,
        /// Whose allowance these figures are of.
        allowance: Allowance,
    },
    /// Refused.
    Limited {
        /// Seconds until one more request would be admitted (by both allowances).
        retry_after_seconds: u64,
        /// Seconds until the allowance that refused is full again.
        reset_seconds: u64,
        /// The allowance that refused (the one to wait longer for when both did).
        allowance: Allowance,
    },
    /// The limiter could not decide (store down or slower than its timeout).
    Unavailable,
}

/// A rate limiter shared by every replica.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Counts one request against its key's limit and its user's (when it has one), atomically
    /// and in one step, and says whether it is admitted. Returns within the implementation's
    /// timeout.
    async fn decide(&self, request: &RateRequest) -> RateDecision;

    /// [`decide`](Self::decide) for a request held to its key's limit only.
    async fn check(&self, key_id: Uuid, limit: RateLimit) -> RateDecision {
        self.decide(&RateRequest::key_only(key_id, limit)).await
    }
}
