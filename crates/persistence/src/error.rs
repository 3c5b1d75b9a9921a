//! Errors: [`PersistenceError`] for setup (connecting, migrating), and the one mapping of pool and
//! diesel errors to the domain's [`RepoError`].

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::PoolError;
use maas_domain::RepoError;
use maas_telemetry::names;
use thiserror::Error;

/// Why the database could not be set up: bad settings, unreachable at start-up, or a failed
/// migration. Query-time failures are [`RepoError`]s instead.
#[derive(Debug, Error)]
pub enum PersistenceError {
    /// A setting cannot work; the text names it.
    #[error("invalid database settings: {0}")]
    InvalidSettings(String),
    /// The database did not answer within `database.startup_timeout_seconds`.
    #[error("database not reachable after {waited:?} ({attempts} attempts): {last_error}")]
    Unreachable {
        /// How long start-up waited.
        waited: Duration,
        /// How many connection attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        last_error: String,
    },
    /// A connection could not be opened.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// Applying migrations failed; nothing of the failing migration was kept.
    #[error("database migration failed: {0}")]
    Migration(String),
}

/// A failure inside a repository call, before it becomes a [`RepoError`] in [`Failure::into_repo`].
#[derive(Debug)]
pub(crate) enum Failure {
    /// No pooled connection in time, or none could be opened.
    Pool(bb8::RunError<PoolError>),
    /// A query failed.
    Db(DieselError),
    /// Already decided (not found, conflict, corrupt row).
    Repo(RepoError),
}

impl From<bb8::RunError<PoolError>> for Failure {
    fn from(e: bb8::RunError<PoolError>) -> Self {
        Self::Pool(e)
    }
}

impl From<DieselError> for Failure {
    fn from(e: DieselError) -> Self {
        Self::Db(e)
    }
}

impl From<RepoError> for Failure {
    fn from(e: RepoError) -> Self {
        Self::Repo(e)
    }
}

impl Failure {
    /// The domain error for this failure of operation `op`; an unavailable database is counted in
    /// [`names::DB_UNAVAILABLE_TOTAL`] under `op`.
    pub(crate) fn into_repo(self, op: &'static str) -> RepoError {
        let error = match self {
            Self::Pool(bb8::RunError::TimedOut) => {
                RepoError::Unavailable("timed out waiting for a database connection".to_owned())
            }
            Self::Pool(bb8::RunError::User(e)) => {
                RepoError::Unavailable(format!("cannot connect to the database: {e}"))
            }
            Self::Db(DieselError::DatabaseError(kind, info)) => match kind {
                DatabaseErrorKind::UniqueViolation => {
                    RepoError::Conflict(info.message().to_owned())
                }
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand => {
                    RepoError::Unavailable(format!("database connection lost: {}", info.message()))
                }
                _ => RepoError::Internal(format!("{op}: {}", info.message())),
            },
            Self::Db(DieselError::BrokenTransactionManager) => {
                RepoError::Unavailable("database connection lost mid-transaction".to_owned())
            }
            Self::Db(e) => RepoError::Internal(format!("{op}: {e}")),
            Self::Repo(e) => e,
        };
        if matches!(error, RepoError::Unavailable(_)) {
            metrics::counter!(names::DB_UNAVAILABLE_TOTAL, "op" => op).increment(1);
        }
        error
    }
}

/// Runs one repository operation and maps its failure, counted under `op`.
pub(crate) async fn observe<T>(
    op: &'static str,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, RepoError> {
    work.await.map_err(|failure| failure.into_repo(op))
}

/// A stored row that breaks a domain rule: a bug or a hand edit, never the caller's fault.
pub(crate) fn corrupt(column: &str, why: impl std::fmt::Display) -> RepoError {
    RepoError::Internal(format!("corrupt value in {column}: {why}"))
}
