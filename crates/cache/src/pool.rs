//! The Redis connection pool: the only place in the gateway that opens Redis connections.
//!
//! Connections are bb8-redis's multiplexed ones, wrapped so that broken ones leave the pool
//! without costing a round trip per checkout:
//!
//! - A [`RedisConnection`] is cheap to clone and every clone shares one socket, so callers check
//!   a connection out, clone it and let the pooled one go back at once ([`checkout`]). The pool
//!   bounds the number of sockets, not the number of concurrent commands; no caller waits behind
//!   another's round trip, and no caller starves waiting for a checkout under load.
//! - bb8-redis pings on every checkout to find dead connections, which halves throughput here.
//!   Instead, a command that fails at the connection level (I/O error, dropped connection) or
//!   times out condemns its connection *and every connection opened before it* (after a Redis
//!   restart they are all dead); the pool discards condemned connections at the next checkout,
//!   without I/O, and opens fresh ones.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bb8::ManageConnection;
use bb8_redis::RedisConnectionManager;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use crate::error::CacheError;
use crate::settings::RedisSettings;

/// A bb8 pool of multiplexed Redis connections.
pub type RedisPool = bb8::Pool<RedisManager>;

/// Builds the pool without connecting: it neither fails nor waits when Redis is down, so the
/// gateway starts (and serves from Postgres) without Redis. Checking a connection out gives up
/// after the command timeout.
///
/// # Errors
/// [`CacheError::InvalidUrl`] for a URL the Redis client rejects, [`CacheError::InvalidSetting`]
/// for a zero pool size or timeout.
pub async fn connect(settings: &RedisSettings) -> Result<RedisPool, CacheError> {
    if settings.pool_max_size == 0 {
        return Err(CacheError::InvalidSetting {
            key: "redis.pool_max_size",
            reason: "must be at least 1",
        });
    }
    if settings.command_timeout_ms == 0 {
        return Err(CacheError::InvalidSetting {
            key: "redis.command_timeout_ms",
            reason: "must be at least 1",
        });
    }
    let manager =
        RedisManager::new(settings.connection_url()).map_err(|source| CacheError::InvalidUrl {
            url: settings.redacted().connection_url(),
            source,
        })?;
    Ok(bb8::Pool::builder()
        .max_size(settings.pool_max_size)
        .connection_timeout(settings.command_timeout())
        // Cheap: `is_valid` only looks at the condemned mark, it does no I/O.
        .test_on_check_out(true)
        .build_unchecked(manager))
}

/// Checks a connection out and hands back a clone of it, so the pooled one is free again at
/// once (see the [module documentation](self)).
///
/// # Errors
/// When no connection could be had within the pool's connection timeout.
pub async fn checkout(pool: &RedisPool) -> Result<RedisConnection, bb8::RunError<RedisError>> {
    let pooled = pool.get().await?;
    Ok(RedisConnection::clone(&pooled))
}

/// The bb8 connection manager: bb8-redis's manager plus condemning of broken connections.
#[derive(Clone)]
pub struct RedisManager {
    inner: RedisConnectionManager,
    registry: Arc<Registry>,
}

/// Serial numbers of the connections a manager opened.
#[derive(Debug, Default)]
struct Registry {
    /// Serial of the next connection to open.
    next_serial: AtomicU64,
    /// Connections with a smaller serial are condemned.
    valid_from: AtomicU64,
}

impl RedisManager {
    /// A manager for the Redis at `url`.
    ///
    /// # Errors
    /// When the URL is not a valid Redis URL.
    pub fn new(url: impl redis::IntoConnectionInfo) -> Result<Self, RedisError> {
        Ok(Self {
            inner: RedisConnectionManager::new(url)?,
            registry: Arc::default(),
        })
    }
}

impl fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisManager")
            .field("opened", &self.registry.next_serial.load(Ordering::Relaxed))
            .field(
                "valid_from",
                &self.registry.valid_from.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl ManageConnection for RedisManager {
    type Connection = RedisConnection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let conn = self.inner.connect().await?;
        Ok(RedisConnection {
            conn,
            serial: self.registry.next_serial.fetch_add(1, Ordering::Relaxed),
            registry: Arc::clone(&self.registry),
        })
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        if conn.is_condemned() {
            Err(RedisError::from((
                ErrorKind::Io,
                "connection condemned after a failure",
            )))
        } else {
            Ok(())
        }
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.is_condemned()
    }
}

/// A multiplexed Redis connection from the pool. Clones share the socket; use it like any
/// `redis::aio::ConnectionLike` (`redis::cmd("PING").query_async(&mut conn)`).
#[derive(Clone)]
pub struct RedisConnection {
    conn: MultiplexedConnection,
    serial: u64,
    registry: Arc<Registry>,
}

impl RedisConnection {
    /// Marks this connection, and every one opened before it, for replacement.
    pub fn condemn(&self) {
        self.registry
            .valid_from
            .fetch_max(self.serial.saturating_add(1), Ordering::Relaxed);
    }

    /// Whether this connection is marked for replacement.
    pub fn is_condemned(&self) -> bool {
        self.serial < self.registry.valid_from.load(Ordering::Relaxed)
    }

    fn note<T>(&self, result: &Result<T, RedisError>) {
        if let Err(error) = result
            && is_connection_error(error)
        {
            self.condemn();
        }
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("serial", &self.serial)
            .field("condemned", &self.is_condemned())
            .finish_non_exhaustive()
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.send_packed_command(cmd).await;
            self.note(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .conn
                .send_packed_commands(pipeline, offset, count)
                .await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// Whether `error` means the connection is unusable (as opposed to Redis refusing a command).
pub fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error()
}
