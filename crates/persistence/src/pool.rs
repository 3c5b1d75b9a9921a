//! The connection pool, and waiting for the database at start-up.

use std::str::FromStr;
use std::time::{Duration, Instant};

use diesel::ConnectionError;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::error::PersistenceError;
use crate::settings::DatabaseSettings;

/// The pool every query of the gateway goes through.
pub type PgPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

/// A connection lent by a [`PgPool`].
pub(crate) type PooledConnection<'a> =
    bb8::PooledConnection<'a, AsyncDieselConnectionManager<AsyncPgConnection>>;

/// First delay between start-up connection attempts; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Longest delay between start-up connection attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Idle connections beyond need are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Connections are replaced after this long, so server-side memory does not grow without bound.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Builds the pool without opening a connection, so it neither fails nor blocks when Postgres is
/// down: a query then waits at most `connect_timeout_seconds` for a connection and fails as
/// unavailable. Fails only on settings that can never work (unparsable URL, zero sizes).
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, PersistenceError> {
    let url = checked_url(settings)?;
    Ok(build(url, settings))
}

/// Tries to connect and run `SELECT 1` until it works or `startup_timeout_seconds` have passed,
/// waiting 100 ms, then twice as long each time (at most 5 s) between attempts. Before each wait
/// it calls `on_retry(attempt, next_delay, error)` so the caller can log it.
pub async fn wait_for_database(
    settings: &DatabaseSettings,
    mut on_retry: impl FnMut(u32, Duration, &str),
) -> Result<(), PersistenceError> {
    let url = checked_url(settings)?;
    let started = Instant::now();
    let deadline = started + settings.startup_timeout();
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let bound = settings.connect_timeout().min(remaining);
        let error = match ping(&url, bound).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(PersistenceError::Unreachable {
                waited: started.elapsed(),
                attempts: attempt,
                last_error: error,
            });
        }
        let next = delay.min(remaining);
        on_retry(attempt, next, &error);
        tokio::time::sleep(next).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// Opens one connection, bounded by `timeout`, outside any pool.
pub(crate) async fn establish(url: &str, timeout: Duration) -> Result<AsyncPgConnection, String> {
    match tokio::time::timeout(timeout, AsyncPgConnection::establish(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

async fn ping(url: &str, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut conn = establish(url, timeout).await?;
    let remaining = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(remaining, diesel::sql_query("SELECT 1").execute(&mut conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer to SELECT 1 within {timeout:?}")),
    }
}

/// The connection URL, once it is known to parse and the pool sizes to be usable.
fn checked_url(settings: &DatabaseSettings) -> Result<String, PersistenceError> {
    if settings.pool_max_size == 0 {
        return Err(PersistenceError::InvalidSettings(
            "database.pool_max_size must be at least 1".to_owned(),
        ));
    }
    if settings.connect_timeout_seconds == 0 {
        return Err(PersistenceError::InvalidSettings(
            "database.connect_timeout_seconds must be at least 1".to_owned(),
        ));
    }
    let url = settings.connection_url();
    // The parser's message may quote the string; only the redacted form is shown.
    tokio_postgres::Config::from_str(&url).map_err(|e| {
        let shown = settings.redacted().connection_url();
        PersistenceError::InvalidSettings(format!(
            "database.url: cannot parse '{shown}': {}",
            e.to_string().replace(&url, &shown)
        ))
    })?;
    Ok(url)
}

/// The pool over a checked URL. Must run inside a Tokio runtime.
pub(crate) fn build(url: String, settings: &DatabaseSettings) -> PgPool {
    let timeout = settings.connect_timeout();
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    // A connection attempt that hangs (a server that accepts but never answers) would otherwise
    // hold a pool slot forever.
    config.custom_setup = Box::new(move |url| {
        Box::pin(async move {
            establish(url, timeout)
                .await
                .map_err(ConnectionError::BadConnection)
        })
    });
    let manager = AsyncDieselConnectionManager::new_with_config(url, config);
    bb8::Pool::builder()
        .max_size(settings.pool_max_size)
        .connection_timeout(timeout)
        .idle_timeout(Some(IDLE_TIMEOUT))
        .max_lifetime(Some(MAX_LIFETIME))
        .build_unchecked(manager)
}
