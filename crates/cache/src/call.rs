//! What the cache and the rate limiter share: one bounded Redis call (checkout included, with one
//! retry on a fresh connection after a connection-level failure), a circuit breaker that lets
//! callers skip Redis for a short cool-down after a failure, and the logger they report through.

use std::fmt;
use std::future::Future;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use slog::Drain as _;

use redis::RedisError;

use crate::pool::{RedisConnection, RedisPool, checkout, is_connection_error};

/// Why one Redis call did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection within the timeout, or connecting failed.
    Pool(bb8::RunError<RedisError>),
    /// Redis answered with an error, or the connection broke (twice).
    Command(RedisError),
    /// No answer within the timeout.
    Timeout(Duration),
}

impl Failure {
    /// Whether Redis itself looks unreachable or too slow (as opposed to refusing one command),
    /// so that further calls would most likely fail the same way.
    pub(crate) fn is_outage(&self) -> bool {
        match self {
            Self::Pool(_) | Self::Timeout(_) => true,
            Self::Command(error) => is_connection_error(error),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool(e) => write!(f, "no connection: {e}"),
            Self::Command(e) => write!(f, "command failed: {e}"),
            Self::Timeout(t) => write!(f, "timed out after {} ms", t.as_millis()),
        }
    }
}

/// Runs `command` on a connection from `pool`, the checkout included in `timeout`. A command
/// that fails because its connection was dead runs once more on a fresh one: after a Redis
/// restart the first call then still succeeds. A connection that did not answer in time is
/// condemned (see [`crate::pool`]).
pub(crate) async fn run<T, F, Fut>(
    pool: &RedisPool,
    timeout: Duration,
    command: F,
) -> Result<T, Failure>
where
    F: Fn(RedisConnection) -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    let mut in_flight: Option<RedisConnection> = None;
    let call = async {
        let mut attempts_left = 2;
        loop {
            let conn = checkout(pool).await.map_err(Failure::Pool)?;
            in_flight = Some(conn.clone());
            attempts_left -= 1;
            match command(conn).await {
                Ok(value) => return Ok(value),
                Err(error) if attempts_left > 0 && is_connection_error(&error) => {}
                Err(error) => return Err(Failure::Command(error)),
            }
        }
    };
    let result = tokio::time::timeout(timeout, call).await;
    match result {
        Ok(result) => result,
        Err(_elapsed) => {
            if let Some(conn) = in_flight {
                conn.condemn();
            }
            Err(Failure::Timeout(timeout))
        }
    }
}

/// A circuit breaker: once [`trip`](Self::trip)ped it stays open for a cool-down, during which
/// callers skip Redis. It also remembers whether the caller is in a failure streak, so that only
/// the start and the end of a streak are logged.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// How long the breaker stays open after a trip, in milliseconds.
    cooldown_ms: AtomicU64,
    /// Reference point of `open_until_ms`.
    epoch: Instant,
    /// Milliseconds after `epoch` until which the breaker is open.
    open_until_ms: AtomicU64,
    /// Whether the last call failed.
    failing: AtomicBool,
}

impl Breaker {
    /// A closed breaker with the given cool-down.
    pub(crate) fn new(cooldown: Duration) -> Self {
        Self {
            cooldown_ms: AtomicU64::new(millis(cooldown)),
            epoch: Instant::now(),
            open_until_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// Changes the cool-down of later trips.
    pub(crate) fn set_cooldown(&self, cooldown: Duration) {
        self.cooldown_ms.store(millis(cooldown), Ordering::Relaxed);
    }

    /// The cool-down in milliseconds.
    pub(crate) fn cooldown_ms(&self) -> u64 {
        self.cooldown_ms.load(Ordering::Relaxed)
    }

    /// Whether callers should currently skip Redis.
    pub(crate) fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Opens the breaker for the cool-down (from now).
    pub(crate) fn trip(&self) {
        let until = self.now_ms().saturating_add(self.cooldown_ms());
        self.open_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Notes a failed call; `true` if it starts a failure streak (log it).
    pub(crate) fn note_failure(&self) -> bool {
        !self.failing.swap(true, Ordering::Relaxed)
    }

    /// Notes a successful call; `true` if it ends a failure streak (log it).
    pub(crate) fn note_success(&self) -> bool {
        // The load keeps the common case (no streak) free of writes to a shared cache line.
        self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The logger of adapters that were given none: records go on to the `log` crate (message and
/// key-values as text), where this crate's messages went before it logged through slog, so a
/// binary with a `log` bridge keeps seeing them until it hands over its own logger.
pub(crate) fn default_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

/// An adapter's logger: set after construction (`with_logger`) and shared by its clones. Read
/// only when something is logged, which is rare (the start and the end of a failure streak).
#[derive(Debug)]
pub(crate) struct SharedLogger(RwLock<slog::Logger>);

impl SharedLogger {
    /// [`default_logger`] until [`set`](Self::set).
    pub(crate) fn new() -> Self {
        Self(RwLock::new(default_logger()))
    }

    /// Replaces the logger for every clone of the adapter.
    pub(crate) fn set(&self, logger: slog::Logger) {
        if let Ok(mut current) = self.0.write() {
            *current = logger;
        }
    }

    /// The current logger.
    pub(crate) fn get(&self) -> slog::Logger {
        self.0
            .read()
            .map_or_else(|_| default_logger(), |logger| logger.clone())
    }
}
