//! # maas-persistence
//!
//! The PostgreSQL side of maas-gateway: the diesel schema of `migrations/`, the embedded
//! migrations and their runner, the bb8 connection pool, and the adapters of the domain's ports
//! ([`PgRegistryRepository`] for `RegistryRepository`, [`PgIdentityRepository`] for
//! `IdentityRepository`, [`PgUsageRepository`] for `UsageRepository`, [`PgHealth`] for
//! `HealthCheck`). It is the only crate that opens database connections; nothing here needs libpq
//! or OpenSSL. Of an API key it stores only the SHA-256; the upstream credentials of a version's
//! endpoints are stored encrypted ([`secrets`]) and no row type holding them implements `Debug`.
//!
//! Another service uses it in four steps: settings, wait, migrate, pool.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use maas_domain::ports::{IdentityRepository, RegistryRepository, UsageRepository};
//! use maas_persistence::{
//!     DatabaseSettings, PgIdentityRepository, PgRegistryRepository, PgUsageRepository, connect,
//!     run_migrations, wait_for_database,
//! };
//!
//! # async fn start() -> Result<(), maas_persistence::PersistenceError> {
//! let settings = DatabaseSettings { host: "postgres".into(), ..DatabaseSettings::default() };
//! wait_for_database(&settings, |attempt, delay, error| {
//!     eprintln!("database not ready (attempt {attempt}, retrying in {delay:?}): {error}");
//! })
//! .await?;
//! let applied = run_migrations(&settings.connection_url()).await?;
//! eprintln!("applied migrations: {applied:?}");
//! let pool = connect(&settings).await?;
//! let registry: Arc<dyn RegistryRepository> = Arc::new(PgRegistryRepository::new(pool.clone()));
//! let identity: Arc<dyn IdentityRepository> = Arc::new(PgIdentityRepository::new(pool.clone()));
//! let usage: Arc<dyn UsageRepository> = Arc::new(PgUsageRepository::new(pool));
//! # drop((registry, identity, usage));
//! # Ok(())
//! # }
//! ```
//!
//! Query failures come back as the domain's `RepoError`: a pool that cannot hand out a connection
//! within `connect_timeout_seconds` (database down or saturated) is `Unavailable` and is counted
//! in `maas_db_unavailable_total{op}`; a duplicate is `Conflict`; a missing model, version, alias,
//! user or key is `NotFound` with a message naming it; a stored row that breaks a domain rule is
//! `Internal`, never a panic. Tests of this and other crates get a database of
//! their own from [`test_util::TestDatabase`] (feature `test-util`).

mod aliases;
mod endpoints;
mod error;
mod grants;
mod health;
mod identity;
mod migrate;
mod pool;
mod repo;
mod rows;
mod schema;
pub mod secrets;
mod settings;
#[cfg(feature = "test-util")]
pub mod test_util;
mod usage;
mod versions;

pub use error::PersistenceError;
pub use health::PgHealth;
pub use identity::PgIdentityRepository;
pub use migrate::{MIGRATIONS, run_migrations};
pub use pool::{PgPool, connect, wait_for_database};
pub use repo::PgRegistryRepository;
pub use settings::DatabaseSettings;
pub use usage::PgUsageRepository;
