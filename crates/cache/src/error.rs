//! Errors of setting the cache up. Once running, the cache never returns errors: it counts them
//! and bypasses itself (see [`crate::RedisCache`]).

use redis::RedisError;

/// Why the Redis pool could not be set up (or a test helper failed).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// `redis.url` (or the URL built from the parts) is not a valid Redis URL.
    #[error("redis.url: invalid Redis URL {url}: {source}")]
    InvalidUrl {
        /// The URL with its password redacted.
        url: String,
        /// What the Redis client objected to.
        source: RedisError,
    },
    /// A setting has a value the pool cannot work with.
    #[error("{key}: {reason}")]
    InvalidSetting {
        /// Dotted settings key, e.g. `redis.pool_max_size`.
        key: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No pooled connection within the timeout, or connecting failed.
    #[error("no Redis connection: {0}")]
    Pool(#[from] bb8::RunError<RedisError>),
    /// Redis answered with an error, or the connection broke.
    #[error("Redis command failed: {0}")]
    Command(#[from] RedisError),
}
