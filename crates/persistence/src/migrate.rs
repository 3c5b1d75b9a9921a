//! Embedded migrations, applied under a Postgres advisory lock.

use std::time::Duration;

use diesel::RunQueryDsl;
use diesel::sql_types::BigInt;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::PersistenceError;
use crate::pool::establish;

/// The SQL migrations of `migrations/`, compiled into the binary.
///
/// A `const` rather than a `static`: diesel's harness takes its migration source by value, and
/// `EmbeddedMigrations` is not `Copy`, so only a constant can be handed to it directly.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Key of the advisory lock that serializes migration runs ("maasmigr" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6d61_6173_6d69_6772;

/// How long opening the connection that migrates may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies the pending migrations and returns the names of those it applied (empty when the
/// schema was current).
///
/// Safe when several replicas start at once: each takes a session-level advisory lock first, so
/// one migrates while the others wait, then find nothing left to do. Each migration runs in its
/// own transaction. Works on any Tokio runtime, current-thread included: diesel's synchronous
/// harness runs on a blocking thread through [`AsyncConnectionWrapper`].
pub async fn run_migrations(database_url: &str) -> Result<Vec<String>, PersistenceError> {
    let conn = establish(database_url, CONNECT_TIMEOUT)
        .await
        .map_err(PersistenceError::Connect)?;
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        migrate_locked(&mut conn)
    })
    .await
    .map_err(|e| PersistenceError::Migration(format!("the migration task failed: {e}")))?
}

fn migrate_locked(
    conn: &mut AsyncConnectionWrapper<AsyncPgConnection>,
) -> Result<Vec<String>, PersistenceError> {
    let failed = |e: diesel::result::Error| PersistenceError::Migration(e.to_string());
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn)
        .map_err(failed)?;
    let applied = apply_pending(conn);
    // Closing the session would release the lock too; unlocking keeps the order explicit.
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn)
        .map_err(failed);
    let applied = applied?;
    unlocked?;
    Ok(applied)
}

fn apply_pending(
    conn: &mut AsyncConnectionWrapper<AsyncPgConnection>,
) -> Result<Vec<String>, PersistenceError> {
    let failed =
        |e: Box<dyn std::error::Error + Send + Sync>| PersistenceError::Migration(e.to_string());
    let pending = conn.pending_migrations(MIGRATIONS).map_err(failed)?;
    let names = pending.iter().map(|m| m.name().to_string()).collect();
    conn.run_migrations(&pending).map_err(failed)?;
    Ok(names)
}
