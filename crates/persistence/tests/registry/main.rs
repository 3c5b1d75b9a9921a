//! [`PgRegistryRepository`] against a real PostgreSQL, one fresh database per test.

mod aliases;
mod inference;
mod models;
mod versions;
mod visibility;

use maas_persistence::PgRegistryRepository;
use maas_persistence::test_util::TestDatabase;

/// A repository over a database of its own; keep the database alive as long as the repository.
async fn repository() -> (TestDatabase, PgRegistryRepository) {
    let db = TestDatabase::new().await;
    let repo = PgRegistryRepository::new(db.pool());
    (db, repo)
}
