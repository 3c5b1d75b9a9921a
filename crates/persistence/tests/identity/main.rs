//! [`PgIdentityRepository`] against a real PostgreSQL, one fresh database per test.

mod bootstrap;
mod keys;
mod owners;
mod quotas;
mod tenancy;
mod users;

use chrono::{DateTime, TimeZone as _, Utc};
use maas_domain::identity::{ApiKey, PlaintextKey, Role, User};
use maas_domain::ports::IdentityRepository;
use maas_persistence::PgIdentityRepository;
use maas_persistence::test_util::{TestDatabase, new_key, new_user};
use uuid::Uuid;

/// A repository over a database of its own; keep the database alive as long as the repository.
async fn repository() -> (TestDatabase, PgIdentityRepository) {
    let db = TestDatabase::new().await;
    let repo = PgIdentityRepository::new(db.pool());
    (db, repo)
}

/// A stored user.
async fn user(repo: &PgIdentityRepository, name: &str, role: Role) -> User {
    repo.create_user(new_user(name, role))
        .await
        .expect("user created")
}

/// A stored key of `user_id`, with its plaintext.
async fn stored_key(
    repo: &PgIdentityRepository,
    user_id: Uuid,
    name: &str,
) -> (PlaintextKey, ApiKey) {
    let (plaintext, new) = new_key(user_id, name);
    let key = repo.create_key(new, None).await.expect("key created");
    (plaintext, key)
}

/// A whole second after the epoch: exact in a `timestamptz` (microseconds).
fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().expect("valid time")
}
