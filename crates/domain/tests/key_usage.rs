//! When keys were last used is noted in memory on every accepted authentication and written in
//! one batch by a flush, never on the request path; a failed flush keeps what it had for the
//! next one.

use maas_domain::DomainError;
use maas_domain::identity::{PlaintextKey, Role};
use maas_domain::ports::IdentityRepository;
use maas_domain::test_util::{InMemory, at, principal_of};
use uuid::Uuid;

async fn use_key(world: &InMemory, key: &PlaintextKey, secs: i64) -> Uuid {
    world
        .accounts
        .authenticate(Some(key.expose()), at(secs))
        .await
        .expect("accepted")
        .key_id
}

async fn last_used(world: &InMemory, key_id: Uuid) -> Option<chrono::DateTime<chrono::Utc>> {
    world
        .identity_store
        .get_key(key_id)
        .await
        .expect("found")
        .last_used_at
}

#[tokio::test]
async fn a_flush_writes_the_latest_use_of_every_key_in_one_batch() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let (a, b) = (world.key_of(&alice).await, world.key_of(&alice).await);
    let a_id = use_key(&world, &a, 1_000).await;
    use_key(&world, &a, 3_000).await;
    use_key(&world, &a, 2_000).await;
    let b_id = use_key(&world, &b, 1_500).await;
    assert_eq!(
        world.identity_store.controls().calls("touch_keys"),
        0,
        "nothing is written while requests are served"
    );

    let written = world.accounts.flush_key_usage().await.expect("flushed");

    assert_eq!(written, 2);
    assert_eq!(world.identity_store.controls().calls("touch_keys"), 1);
    assert_eq!(last_used(&world, a_id).await, Some(at(3_000)));
    assert_eq!(last_used(&world, b_id).await, Some(at(1_500)));
}

#[tokio::test]
async fn a_flush_with_nothing_used_writes_nothing() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let key = world.key_of(&alice).await;
    use_key(&world, &key, 1_000).await;
    world.accounts.flush_key_usage().await.expect("flushed");

    assert_eq!(
        world.accounts.flush_key_usage().await,
        Ok(0),
        "taken by the first"
    );
    assert_eq!(world.identity_store.controls().calls("touch_keys"), 1);
}

#[tokio::test]
async fn a_failed_flush_keeps_its_uses_for_the_next_one() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let key = world.key_of(&alice).await;
    let key_id = use_key(&world, &key, 1_000).await;
    world.identity_store.controls().set_unavailable(true);

    let failed = world.accounts.flush_key_usage().await;
    assert!(
        matches!(failed, Err(DomainError::Unavailable(_))),
        "{failed:?}"
    );
    world.identity_store.controls().set_unavailable(false);
    use_key(&world, &key, 500).await;

    assert_eq!(world.accounts.flush_key_usage().await, Ok(1));
    assert_eq!(last_used(&world, key_id).await, Some(at(1_000)));
}

#[tokio::test]
async fn refused_authentications_are_not_noted_as_uses() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let key = world.key_of(&alice).await;
    let key_id = use_key(&world, &key, 1_000).await;
    world.accounts.flush_key_usage().await.expect("flushed");
    world
        .accounts
        .revoke_key(&principal_of(&alice), key_id)
        .await
        .expect("revoked");

    let refused = world
        .accounts
        .authenticate(Some(key.expose()), at(2_000))
        .await;

    assert!(refused.is_err());
    assert_eq!(world.accounts.flush_key_usage().await, Ok(0));
    assert_eq!(last_used(&world, key_id).await, Some(at(1_000)));
}

#[tokio::test]
async fn a_later_flush_never_moves_a_last_use_back() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let key = world.key_of(&alice).await;
    let key_id = use_key(&world, &key, 5_000).await;
    world.accounts.flush_key_usage().await.expect("flushed");

    // Another replica's clock, or a request that began earlier and finished later.
    use_key(&world, &key, 4_000).await;
    world.accounts.flush_key_usage().await.expect("flushed");

    assert_eq!(last_used(&world, key_id).await, Some(at(5_000)));
}
