//! Bootstrapping the first admin: at most one, however many replicas start at once.

use futures_util::future::join_all;
use maas_domain::RepoError;
use maas_domain::identity::Role;
use maas_domain::ports::IdentityRepository;
use maas_persistence::PgIdentityRepository;
use maas_persistence::test_util::{new_key, username};
use uuid::Uuid;

use crate::{repository, stored_key, user};

#[tokio::test]
async fn bootstrapping_an_empty_database_creates_an_admin_holding_the_key() {
    let (db, repo) = repository().await;
    // The key's user_id is ignored: the admin does not exist yet.
    let (plaintext, new) = new_key(Uuid::new_v4(), "bootstrap");

    let admin = repo
        .bootstrap_admin(&username("admin"), new)
        .await
        .expect("bootstrapped")
        .expect("no admin existed");
    assert_eq!(admin.username.as_str(), "admin");
    assert_eq!(admin.role, Role::Admin);
    assert!(!admin.disabled);

    let found = repo
        .find_key(&plaintext.hash())
        .await
        .expect("looked up")
        .expect("the key is stored");
    assert_eq!(found.user, admin);
    assert_eq!(found.key.user_id, admin.id);
    assert_eq!(found.key.name.as_str(), "bootstrap");
    assert_eq!(db.scalar("SELECT count(*) FROM api_keys").await, 1);
}

#[tokio::test]
async fn five_replicas_bootstrapping_at_once_create_exactly_one_admin_and_one_key() {
    let (db, _repo) = repository().await;
    let replicas = (0..5).map(|_| {
        // A pool each, as separate processes would have.
        let repo = PgIdentityRepository::new(db.pool());
        let (_, new) = new_key(Uuid::new_v4(), "bootstrap");
        async move { repo.bootstrap_admin(&username("admin"), new).await }
    });
    let outcomes = join_all(replicas).await;

    let created: Vec<_> = outcomes
        .into_iter()
        .filter_map(|outcome| outcome.expect("every replica succeeds"))
        .collect();
    assert_eq!(created.len(), 1, "exactly one replica creates the admin");
    assert_eq!(db.scalar("SELECT count(*) FROM users").await, 1);
    assert_eq!(
        db.scalar("SELECT count(*) FROM users WHERE role = 'admin'")
            .await,
        1
    );
    assert_eq!(db.scalar("SELECT count(*) FROM api_keys").await, 1);
}

#[tokio::test]
async fn once_an_admin_exists_bootstrapping_does_nothing() {
    let (db, repo) = repository().await;
    let (_, first) = new_key(Uuid::new_v4(), "bootstrap");
    repo.bootstrap_admin(&username("admin"), first)
        .await
        .expect("bootstrapped")
        .expect("created");

    let (_, second) = new_key(Uuid::new_v4(), "bootstrap");
    let again = repo
        .bootstrap_admin(&username("admin"), second)
        .await
        .expect("no error");
    assert_eq!(again, None);
    assert_eq!(db.scalar("SELECT count(*) FROM api_keys").await, 1);
}

#[tokio::test]
async fn any_admin_counts_even_under_another_name_or_disabled() {
    let (db, repo) = repository().await;
    user(&repo, "root", Role::Admin).await;
    db.execute("UPDATE users SET disabled = true").await;

    let (_, new) = new_key(Uuid::new_v4(), "bootstrap");
    let outcome = repo
        .bootstrap_admin(&username("admin"), new)
        .await
        .expect("no error");
    assert_eq!(outcome, None);
    assert_eq!(db.scalar("SELECT count(*) FROM users").await, 1);
    assert_eq!(db.scalar("SELECT count(*) FROM api_keys").await, 0);
}

#[tokio::test]
async fn a_member_holding_the_admin_name_is_a_conflict_naming_it() {
    let (db, repo) = repository().await;
    let member = user(&repo, "admin", Role::Member).await;

    let (_, new) = new_key(Uuid::new_v4(), "bootstrap");
    let err = repo
        .bootstrap_admin(&username("admin"), new)
        .await
        .expect_err("the name is taken by a member");
    assert!(
        matches!(&err, RepoError::Conflict(m) if m.contains("'admin'")),
        "{err:?}"
    );
    assert_eq!(
        repo.get_user(&username("admin")).await.expect("found"),
        member,
        "the member is left as it was"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM api_keys").await, 0);
}

#[tokio::test]
async fn a_bootstrap_key_already_held_by_someone_else_creates_nothing() {
    let (db, repo) = repository().await;
    let bob = user(&repo, "bob", Role::Member).await;
    let (plaintext, _) = stored_key(&repo, bob.id, "bobs").await;
    let (_, mut new) = new_key(Uuid::new_v4(), "bootstrap");
    new.hash = plaintext.hash();
    new.prefix = plaintext.display_prefix();

    let err = repo
        .bootstrap_admin(&username("admin"), new)
        .await
        .expect_err("the key is taken");
    assert!(matches!(err, RepoError::Conflict(_)), "{err:?}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM users").await,
        1,
        "the admin user was rolled back with its key"
    );
}
