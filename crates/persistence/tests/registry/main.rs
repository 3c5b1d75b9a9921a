//! [`PgRegistryRepository`] against a real PostgreSQL, one fresh database per test.

mod alias_splits;
mod aliases;
mod fleet;
mod inference;
mod models;
mod secrets;
mod versions;
mod visibility;

use maas_domain::alias::{AliasSplit, AliasTarget, Weight};
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

/// A valid alias split from `(version, weight)` pairs.
fn split(pairs: &[(i64, i64)]) -> AliasSplit {
    let targets = pairs
        .iter()
        .map(|(v, w)| AliasTarget {
            version: maas_persistence::test_util::version(*v),
            weight: Weight::parse_as("weight", *w).expect("a valid weight"),
        })
        .collect();
    AliasSplit::new(targets).expect("a valid split")
}
