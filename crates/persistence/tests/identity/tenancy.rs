//! What keeps members apart: a key's models allowlist, a user's own rate limit, and the bound on
//! a user's active keys, which concurrent creations cannot get past.

use futures_util::future::join_all;
use maas_domain::RepoError;
use maas_domain::identity::{ModelAllowlist, NewUser, RateLimitRpm, Role, UserPatch};
use maas_domain::ports::IdentityRepository;
use maas_persistence::test_util::{new_key, username};

use crate::{at, repository, stored_key, user};

fn allowlist(names: &[&str]) -> ModelAllowlist {
    ModelAllowlist::parse(names.iter().map(|n| (*n).to_owned()).collect()).expect("valid")
}

fn rpm(n: i64) -> RateLimitRpm {
    RateLimitRpm::new(n).expect("valid")
}

#[tokio::test]
async fn a_keys_allowlist_is_stored_found_with_the_key_changed_and_cleared() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (plaintext, mut new) = new_key(alice.id, "ci");
    new.models = Some(allowlist(&["llama", "gpt-4o"]));

    let key = repo.create_key(new, None).await.expect("created");
    assert_eq!(key.models, Some(allowlist(&["gpt-4o", "llama"])));
    let found = repo
        .find_key(&plaintext.hash())
        .await
        .expect("looked up")
        .expect("stored");
    assert_eq!(found.key.models, key.models, "the lookup carries it");

    let (changed, hash) = repo
        .set_key_models(key.id, Some(allowlist(&["mistral"])))
        .await
        .expect("changed");
    assert_eq!(changed.models, Some(allowlist(&["mistral"])));
    assert_eq!(hash, plaintext.hash());
    let (cleared, _) = repo.set_key_models(key.id, None).await.expect("cleared");
    assert_eq!(cleared.models, None);
    assert_eq!(
        db.scalar("SELECT count(*) FROM api_keys WHERE models IS NULL")
            .await,
        1
    );
    let missing = uuid::Uuid::new_v4();
    assert!(matches!(
        repo.set_key_models(missing, None).await,
        Err(RepoError::NotFound(_))
    ));
}

#[tokio::test]
async fn the_database_refuses_an_empty_or_oversized_allowlist() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (_, key) = stored_key(&repo, alice.id, "k").await;
    for models in ["'{}'", "array_fill('m'::text, ARRAY[101])"] {
        // Fails the test (an uncaught exception) unless the check refuses the update.
        db.execute(&format!(
            "DO $$ BEGIN UPDATE api_keys SET models = {models} WHERE id = '{}'; \
             RAISE EXCEPTION 'the check let it through'; \
             EXCEPTION WHEN check_violation THEN NULL; END $$",
            key.id
        ))
        .await;
    }
    db.execute(&format!(
        "UPDATE api_keys SET models = array_fill('m'::text, ARRAY[100]) WHERE id = '{}'",
        key.id
    ))
    .await;
}

#[tokio::test]
async fn a_users_own_limit_is_set_at_creation_changed_kept_and_cleared() {
    let (_db, repo) = repository().await;
    let created = repo
        .create_user(NewUser {
            username: username("alice"),
            role: Role::Member,
            rate_limit_rpm: Some(rpm(30)),
            tokens: maas_domain::identity::TokenQuotas::default(),
        })
        .await
        .expect("created");
    assert_eq!(created.rate_limit_rpm, Some(rpm(30)));
    let (plaintext, _) = stored_key(&repo, created.id, "k").await;

    let set = |limit| UserPatch {
        rate_limit_rpm: limit,
        ..UserPatch::default()
    };
    let changed = repo
        .update_user(&username("alice"), set(Some(Some(rpm(90)))))
        .await
        .expect("changed");
    assert_eq!(changed.rate_limit_rpm, Some(rpm(90)));
    let disabled = repo
        .update_user(
            &username("alice"),
            UserPatch {
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .expect("disabled");
    assert_eq!(disabled.rate_limit_rpm, Some(rpm(90)), "kept");
    let found = repo
        .find_key(&plaintext.hash())
        .await
        .expect("looked up")
        .expect("stored");
    assert_eq!(
        found.user.rate_limit_rpm,
        Some(rpm(90)),
        "the lookup carries it"
    );
    let cleared = repo
        .update_user(&username("alice"), set(Some(None)))
        .await
        .expect("cleared");
    assert_eq!(cleared.rate_limit_rpm, None);
}

#[tokio::test]
async fn concurrent_creations_never_give_a_user_more_active_keys_than_allowed() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let bob = user(&repo, "bob", Role::Member).await;
    stored_key(&repo, bob.id, "bob's").await;

    let attempts = (0..12).map(|i| {
        let repo = repo.clone();
        let (_, new) = new_key(alice.id, &format!("k{i}"));
        async move { repo.create_key(new, Some(5)).await }
    });
    let outcomes = join_all(attempts).await;

    let created = outcomes.iter().filter(|o| o.is_ok()).count();
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(created, 5, "{outcomes:?}");
    assert!(
        refused.iter().all(|e| matches!(e, RepoError::Conflict(m)
            if m.contains("auth.max_keys_per_user"))),
        "{refused:?}"
    );
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM api_keys WHERE user_id = '{}'",
            alice.id
        ))
        .await,
        5
    );
    // Another user's keys are not counted.
    let (_, new) = new_key(bob.id, "bob's second");
    repo.create_key(new, Some(5)).await.expect("bob has one");
}

#[tokio::test]
async fn revoked_and_expired_keys_do_not_count_against_the_bound() {
    let (_db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (_, revoked) = stored_key(&repo, alice.id, "revoked").await;
    repo.revoke_key(revoked.id).await.expect("revoked");
    let (_, mut expired) = new_key(alice.id, "expired");
    expired.expires_at = Some(at(1_000));
    repo.create_key(expired, None).await.expect("created");
    let (_, active) = new_key(alice.id, "active");
    repo.create_key(active, Some(2)).await.expect("one active");

    let (_, second) = new_key(alice.id, "second");
    repo.create_key(second, Some(2)).await.expect("two active");
    let (_, third) = new_key(alice.id, "third");
    assert!(matches!(
        repo.create_key(third, Some(2)).await,
        Err(RepoError::Conflict(_))
    ));
    let (_, ghost_key) = new_key(uuid::Uuid::new_v4(), "orphan");
    assert!(matches!(
        repo.create_key(ghost_key, Some(2)).await,
        Err(RepoError::NotFound(_))
    ));
}
