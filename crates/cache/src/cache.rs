//! [`RedisCache`]: the Redis adapter of [`maas_domain::ports::Cache`], an invalidation-safe
//! cache-aside.
//!
//! # Key layout
//! With key prefix `P`, scope `S` is one hash `P` `c:` `S` (one hash field per cached value, named
//! by the [`Field`]'s display form) and its generation counter is the string key `P` `g:` `S`,
//! where `S` is the [`Scope`]'s display form (`model:<name>`, `key:<sha256>`):
//!
//! - **lookup** reads the field and the generation in one pipelined round trip. A miss hands the
//!   generation back as the [`FillToken`].
//! - **fill** runs a Lua script that writes the field (and gives the hash a TTL if it has none)
//!   only if the generation still equals the token, so a value loaded before a concurrent
//!   invalidation is never cached after it.
//! - **invalidate** atomically bumps the generation (kept `ttl + 1 h`), deletes the hash and
//!   publishes the scope on the invalidation channel `P` `invalidations`, so that in-process
//!   tiers ([`crate::NearCache`]) of every replica drop it too.
//!
//! # Failure handling
//! Every call, pool checkout included, is bounded by the command timeout; a command that failed
//! because its connection was dead (say, after a Redis restart) runs once more on a fresh
//! connection within that bound (see [`crate::pool`]). A call that still fails or times out
//! opens a breaker: for a short cool-down, lookups return [`CacheLookup::Bypass`] and fills do
//! nothing without touching Redis, so a dead or black-holed Redis costs reads at most one
//! timeout per cool-down. Invalidations are always attempted, breaker or not, and once more after
//! a failure (so one may take up to twice the timeout), since skipping one could leave stale
//! data behind.
//!
//! The start and the end of a failure streak, and every invalidation that failed twice, are
//! logged with key-value fields through the logger given to [`RedisCache::with_logger`].
//!
//! Every lookup is counted in [`names::CACHE_REQUESTS_TOTAL`], labelled `kind`
//! ([`Scope::kind`]: `model` or `key`) and `result` (`hit`, `miss`, or `error` for a failure or a
//! breaker bypass); failed fills and invalidations in [`names::CACHE_WRITE_ERRORS_TOTAL`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use maas_domain::ports::{Cache, CacheLookup, Field, FillToken, Scope};
use maas_telemetry::handles::{HandleMemo, memoised};
use maas_telemetry::names::{self, cache_result};
use redis::{RedisError, Script};

use crate::call::{self, Breaker, Failure, SharedLogger};
use crate::pool::{RedisConnection, RedisPool};
use crate::settings::{CacheSettings, RedisSettings};

/// How long reads skip Redis after a failed lookup or fill, unless
/// [`RedisCache::with_breaker_cooldown`] says otherwise.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// How much longer than the values a generation counter lives. It must outlive any fill in
/// flight, so that an expired counter cannot make an old token match again.
const GENERATION_EXTRA_TTL_SECS: u64 = 3600;

/// Writes `field = value` into the scope's hash only if the generation is still the token's.
/// KEYS: hash, generation. ARGV: token (`""` = no generation yet), field, value, TTL seconds.
const FILL_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4], 'NX')
return 1
";

/// The `op` label of [`names::CACHE_WRITE_ERRORS_TOTAL`] for fills.
const OP_FILL: &str = "fill";
/// The `op` label of [`names::CACHE_WRITE_ERRORS_TOTAL`] for invalidations.
const OP_INVALIDATE: &str = "invalidate";

/// The Redis cache-aside adapter. Cheap to clone; clones share the pool and the breaker.
///
/// See the [module documentation](self) for the key layout and the failure handling.
#[derive(Clone)]
pub struct RedisCache {
    inner: Arc<Inner>,
}

struct Inner {
    pool: RedisPool,
    key_prefix: String,
    ttl_secs: u64,
    command_timeout: Duration,
    fill_script: Script,
    /// Open after a failed call: lookups and fills skip Redis.
    breaker: Breaker,
    /// Where the start and end of failure streaks and failed invalidations are reported.
    logger: SharedLogger,
}

impl RedisCache {
    /// A cache over `pool` whose keys start with `key_prefix`, whose values live at most `ttl`
    /// (at least one second), and whose every call gives up after `command_timeout`.
    pub fn new(
        pool: RedisPool,
        key_prefix: impl Into<String>,
        ttl: Duration,
        command_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                key_prefix: key_prefix.into(),
                ttl_secs: ttl.as_secs().max(1),
                command_timeout,
                fill_script: Script::new(FILL_SCRIPT),
                breaker: Breaker::new(DEFAULT_BREAKER_COOLDOWN),
                logger: SharedLogger::new(),
            }),
        }
    }

    /// [`new`](Self::new) with the prefix and timeout of `redis` and the TTL of `cache`.
    pub fn from_settings(pool: RedisPool, redis: &RedisSettings, cache: &CacheSettings) -> Self {
        Self::new(
            pool,
            redis.key_prefix.clone(),
            cache.ttl(),
            redis.command_timeout(),
        )
    }

    /// Sets how long lookups and fills skip Redis after one of them failed (default
    /// [`DEFAULT_BREAKER_COOLDOWN`]); clones share the setting.
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

    /// Whether lookups and fills currently skip Redis because a recent one failed.
    pub fn is_bypassing(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The Redis key of the hash that holds `scope`'s values.
    pub fn scope_key(&self, scope: &Scope) -> String {
        format!("{}c:{scope}", self.inner.key_prefix)
    }

    /// The pub/sub channel on which every invalidation publishes its scope (see
    /// [`crate::near`]).
    pub fn invalidation_channel(&self) -> String {
        invalidation_channel(&self.inner.key_prefix)
    }

    /// The Redis key of `scope`'s generation counter.
    pub fn generation_key(&self, scope: &Scope) -> String {
        format!("{}g:{scope}", self.inner.key_prefix)
    }

    /// Runs `command` within the command timeout (see [`call::run`]).
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, Failure>
    where
        F: Fn(RedisConnection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        call::run(&self.inner.pool, self.inner.command_timeout, command).await
    }

    /// Opens the breaker and logs the first failure of a streak.
    fn record_failure(&self, op: &str, failure: &Failure) {
        let breaker = &self.inner.breaker;
        breaker.trip();
        if breaker.note_failure() {
            slog::warn!(self.inner.logger.get(),
                "Redis cache failed; reads bypass it for a cool-down at a time until it \
                 answers again";
                "op" => op, "error" => %failure, "cooldown_ms" => breaker.cooldown_ms());
        }
    }

    /// Logs the end of a failure streak.
    fn record_success(&self) {
        if self.inner.breaker.note_success() {
            slog::info!(self.inner.logger.get(), "Redis cache answers again");
        }
    }
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("key_prefix", &self.inner.key_prefix)
            .field("ttl_secs", &self.inner.ttl_secs)
            .field("command_timeout", &self.inner.command_timeout)
            .field("breaker_cooldown_ms", &self.inner.breaker.cooldown_ms())
            .field("bypassing", &self.is_bypassing())
            .finish_non_exhaustive()
    }
}

/// The pub/sub channel of invalidations for keys under `key_prefix`: `key_prefix` followed by
/// `invalidations`.
pub fn invalidation_channel(key_prefix: &str) -> String {
    format!("{key_prefix}invalidations")
}

thread_local! {
    /// This thread's [`names::CACHE_REQUESTS_TOTAL`] handles by kind and result.
    static LOOKUP_COUNTERS: HandleMemo<(&'static str, &'static str), metrics::Counter> =
        const { HandleMemo::new() };
}

/// Counts a lookup of `scope` in [`names::CACHE_REQUESTS_TOTAL`] (also for [`crate::near`]).
/// The handle comes from the recorder in effect when the thread first counts that label set.
pub(crate) fn count_lookup(scope: &Scope, result: &'static str) {
    let kind = scope.kind();
    memoised(
        &LOOKUP_COUNTERS,
        |(k, r)| *k == kind && *r == result,
        || (kind, result),
        || metrics::counter!(names::CACHE_REQUESTS_TOTAL, "kind" => kind, "result" => result),
    )
    .increment(1);
}

fn count_write_error(op: &'static str) {
    metrics::counter!(names::CACHE_WRITE_ERRORS_TOTAL, "op" => op).increment(1);
}

#[async_trait]
impl Cache for RedisCache {
    async fn lookup(&self, scope: &Scope, field: &Field) -> CacheLookup {
        if self.is_bypassing() {
            count_lookup(scope, cache_result::ERROR);
            return CacheLookup::Bypass;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("HGET")
            .arg(self.scope_key(scope))
            .arg(field.to_string())
            .cmd("GET")
            .arg(self.generation_key(scope));
        let pipe = &pipe;
        let found = self
            .run(|mut conn| async move {
                pipe.query_async::<(Option<Vec<u8>>, Option<String>)>(&mut conn)
                    .await
            })
            .await;
        match found {
            Ok((Some(value), _)) => {
                self.record_success();
                count_lookup(scope, cache_result::HIT);
                CacheLookup::Hit(value.into())
            }
            Ok((None, generation)) => {
                self.record_success();
                count_lookup(scope, cache_result::MISS);
                CacheLookup::Miss(FillToken(generation))
            }
            Err(failure) => {
                self.record_failure("lookup", &failure);
                count_lookup(scope, cache_result::ERROR);
                CacheLookup::Bypass
            }
        }
    }

    async fn fill(&self, scope: &Scope, field: &Field, token: FillToken, value: Vec<u8>) {
        if self.is_bypassing() {
            return;
        }
        let mut invocation = self.inner.fill_script.prepare_invoke();
        invocation
            .key(self.scope_key(scope))
            .key(self.generation_key(scope))
            .arg(token.0.as_deref().unwrap_or(""))
            .arg(field.to_string())
            .arg(value)
            .arg(self.inner.ttl_secs);
        let invocation = &invocation;
        let stored = self
            .run(|mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await })
            .await;
        match stored {
            // 0 means the scope was invalidated since the lookup: correctly not stored.
            Ok(_) => self.record_success(),
            Err(failure) => {
                self.record_failure(OP_FILL, &failure);
                count_write_error(OP_FILL);
            }
        }
    }

    async fn invalidate(&self, scope: &Scope) {
        let generation = self.generation_key(scope);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("INCR")
            .arg(&generation)
            .ignore()
            .cmd("EXPIRE")
            .arg(&generation)
            .arg(
                self.inner
                    .ttl_secs
                    .saturating_add(GENERATION_EXTRA_TTL_SECS),
            )
            .ignore()
            .cmd("DEL")
            .arg(self.scope_key(scope))
            .ignore()
            .cmd("PUBLISH")
            .arg(self.invalidation_channel())
            // Replicas read the display form back with `Scope::parse` (see crate::near).
            .arg(scope.to_string())
            .ignore();
        let mut failure = None;
        for _attempt in 0..2 {
            let pipe = &pipe;
            match self
                .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
                .await
            {
                Ok(()) => {
                    self.record_success();
                    return;
                }
                Err(error) => failure = Some(error),
            }
        }
        if let Some(failure) = failure {
            // Not rate-limited like read failures: a lost invalidation may leave stale values
            // in Redis for up to the TTL, which an operator must be able to see.
            slog::error!(self.inner.logger.get(),
                "Redis cache invalidation failed twice; the scope's values may be stale until \
                 they expire, if Redis kept them";
                "scope" => %scope, "kind" => scope.kind(), "error" => %failure,
                "ttl_seconds" => self.inner.ttl_secs);
            self.record_failure(OP_INVALIDATE, &failure);
            count_write_error(OP_INVALIDATE);
        }
    }
}
