//! [`PgRegistryRepository`] against a real PostgreSQL, one fresh database per test.

mod aliases;
mod fleet;
mod inference;
mod models;
mod secrets;
mod versions;
mod visibility;

use maas_persistence::PgRegistryRepository;
use maas_persistence::test_util::TestDatabase;

/// The tests' encryption key for upstream credentials.
fn test_keys() -> maas_persistence::secrets::SecretKeys {
    maas_persistence::secrets::SecretsSettings {
        encryption_key: Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned()),
        ..Default::default()
    }
    .keys()
    .expect("a valid key")
}

/// A repository over a database of its own; keep the database alive as long as the repository.
async fn repository() -> (TestDatabase, PgRegistryRepository) {
    let db = TestDatabase::new().await;
    let repo = PgRegistryRepository::new(db.pool()).with_secrets(test_keys());
    (db, repo)
}
