//! # maas-cache
//!
//! The Redis side of maas-gateway: typed settings ([`RedisSettings`], [`CacheSettings`]), the
//! bb8-redis pool ([`connect`], the only place that opens Redis connections; [`checkout`] for
//! callers with commands of their own), the cache-aside
//! adapter of the domain's cache port ([`RedisCache`], invalidation-safe, never failing a read),
//! the distributed rate limiter of the domain's limiter port ([`RedisRateLimiter`], GCRA in one
//! atomic Lua script, exact across replicas) and the readiness check ([`RedisHealth`]).
//!
//! A service wires it up once and hands the adapters to the domain as trait objects:
//!
//! ```no_run
//! use std::sync::Arc;
//! use maas_cache::{connect, CacheSettings, RedisCache, RedisHealth, RedisRateLimiter, RedisSettings};
//! use maas_domain::ports::{
//!     Cache, CacheLookup, Field, HealthCheck, RateDecision, RateLimit, RateLimiter, Scope,
//! };
//! use maas_domain::values::ModelName;
//!
//! # async fn run() -> Result<(), maas_cache::CacheError> {
//! let redis = RedisSettings::default();
//! let pool = connect(&redis).await?; // never waits for Redis
//! let cache: Arc<dyn Cache> =
//!     Arc::new(RedisCache::from_settings(pool.clone(), &redis, &CacheSettings::default()));
//! let limiter: Arc<dyn RateLimiter> = Arc::new(RedisRateLimiter::from_settings(pool.clone(), &redis));
//! let health: Arc<dyn HealthCheck> = Arc::new(RedisHealth::new(pool, redis.command_timeout()));
//!
//! // Per request: one atomic round trip, shared by every replica.
//! let key_id = uuid::Uuid::new_v4();
//! match limiter.check(key_id, RateLimit { rpm: 60, burst: 10 }).await {
//!     RateDecision::Allowed { .. } => {}    // serve, with RateLimit-* headers
//!     RateDecision::Limited { .. } => {}    // 429 with Retry-After
//!     RateDecision::Unavailable => {}       // fail open (admit and count) or answer 503
//! }
//!
//! let scope = Scope::Model(ModelName::parse("llama").expect("a valid name"));
//! let bytes = match cache.lookup(&scope, &Field::Model).await {
//!     CacheLookup::Hit(cached) => cached.bytes().to_vec(),
//!     CacheLookup::Miss(token) => {
//!         let bytes = b"loaded from Postgres".to_vec();
//!         cache.fill(&scope, &Field::Model, token, bytes.clone()).await;
//!         bytes
//!     }
//!     CacheLookup::Bypass => b"loaded from Postgres".to_vec(),
//! };
//! // After a write: drop the whole scope before answering.
//! cache.invalidate(&scope).await;
//! # let _ = (bytes, health);
//! # Ok(())
//! # }
//! ```
//!
//! The adapters log through slog with key-value fields: hand them the service's logger with
//! `RedisCache::with_logger`, `RedisRateLimiter::with_logger` and
//! [`listen_for_invalidations_with_logger`]. Without one, their records go to the `log` crate.
//!
//! Tests of this and other crates enable the `test-util` feature for [`test_util`]: a key prefix
//! per test, clean-up of that prefix, stand-ins for an unreachable or hung Redis, counter
//! snapshots and a logger that keeps its records.

pub mod cache;
mod call;
pub mod error;
pub mod health;
pub mod near;
pub mod pool;
pub mod ratelimit;
pub mod settings;
#[cfg(feature = "test-util")]
pub mod test_util;

pub use cache::RedisCache;
pub use error::CacheError;
pub use health::RedisHealth;
pub use near::{
    LocalStore, NearCache, listen_for_invalidations, listen_for_invalidations_with_logger,
};
pub use pool::{RedisConnection, RedisManager, RedisPool, checkout, connect};
pub use ratelimit::RedisRateLimiter;
pub use settings::{CacheSettings, RedisSettings};
