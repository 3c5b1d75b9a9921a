//! Authentication: a key acts as its user, with the user's current role; missing, malformed,
//! unknown, expired, revoked and disabled-user keys are refused, each with its reason. Lookups
//! are cached, and every change that refuses a key or changes what it may do drops the cached
//! lookup before it returns, so the very next call sees it.

use maas_domain::accounts::{AuthError, KeyRequest};
use maas_domain::identity::{AuthFailure, PlaintextKey, Role, User, UserPatch};
use maas_domain::ports::{Field, IdentityRepository, Scope};
use maas_domain::test_util::{InMemory, at, key_name, new_key, principal_of};

/// Any time: authentication is told the time, and only expiry compares with it.
fn now() -> chrono::DateTime<chrono::Utc> {
    at(2_000_000_000)
}

async fn authenticate(world: &InMemory, key: &PlaintextKey) -> Result<Role, AuthError> {
    world
        .accounts
        .authenticate(Some(key.expose()), now())
        .await
        .map(|principal| principal.role)
}

/// A world with member alice holding a key, and admin root.
async fn alice_with_a_key() -> (InMemory, User, PlaintextKey, User) {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let key = world.key_of(&alice).await;
    let root = world.user("root", Role::Admin).await;
    (world, alice, key, root)
}

fn refused(reason: AuthFailure) -> Result<Role, AuthError> {
    Err(AuthError::Refused(reason))
}

#[tokio::test]
async fn a_key_acts_as_its_user_through_that_key() {
    let (world, alice, key, _root) = alice_with_a_key().await;

    let principal = world
        .accounts
        .authenticate(Some(key.expose()), now())
        .await
        .expect("accepted");

    assert_eq!(principal.user_id, alice.id);
    assert_eq!(principal.username, alice.username);
    assert_eq!(principal.role, Role::Member);
    let record = world
        .identity_store
        .find_key(&key.hash())
        .await
        .expect("looked up")
        .expect("stored");
    assert_eq!(principal.key_id, record.key.id);
}

#[tokio::test]
async fn missing_malformed_and_unknown_keys_are_refused_each_for_its_reason() {
    let world = InMemory::new();
    let unknown = PlaintextKey::generate().expect("csprng");

    let missing = world.accounts.authenticate(None, now()).await;
    let malformed = world
        .accounts
        .authenticate(Some("sk-not-ours"), now())
        .await;

    assert_eq!(missing, Err(AuthError::Refused(AuthFailure::Missing)));
    assert_eq!(malformed, Err(AuthError::Refused(AuthFailure::Malformed)));
    assert_eq!(
        authenticate(&world, &unknown).await,
        refused(AuthFailure::Unknown)
    );
    assert_eq!(
        world.identity_store.controls().calls("find_key"),
        1,
        "only a well-formed key is looked up"
    );
}

#[tokio::test]
async fn a_key_is_looked_up_in_the_store_once_and_then_answered_by_the_cache() {
    let (world, _alice, key, _root) = alice_with_a_key().await;

    for _ in 0..3 {
        assert_eq!(authenticate(&world, &key).await, Ok(Role::Member));
    }

    assert_eq!(world.identity_store.controls().calls("find_key"), 1);
}

#[tokio::test]
async fn a_revoked_key_is_refused_on_the_very_next_call() {
    let (world, alice, key, _root) = alice_with_a_key().await;
    let principal = world
        .accounts
        .authenticate(Some(key.expose()), now())
        .await
        .expect("accepted, and cached");

    world
        .accounts
        .revoke_key(&principal_of(&alice), principal.key_id)
        .await
        .expect("revoked");

    assert_eq!(
        authenticate(&world, &key).await,
        refused(AuthFailure::Revoked)
    );
}

#[tokio::test]
async fn the_keys_of_a_disabled_user_are_refused_on_the_next_call_and_accepted_again_once_enabled()
{
    let (world, alice, key, root) = alice_with_a_key().await;
    assert_eq!(authenticate(&world, &key).await, Ok(Role::Member), "cached");
    let admin = principal_of(&root);
    let disable = |disabled| UserPatch {
        role: None,
        disabled: Some(disabled),
        ..UserPatch::default()
    };

    world
        .accounts
        .update_user(&admin, &alice.username, disable(true))
        .await
        .expect("disabled");
    assert_eq!(
        authenticate(&world, &key).await,
        refused(AuthFailure::Disabled)
    );

    world
        .accounts
        .update_user(&admin, &alice.username, disable(false))
        .await
        .expect("enabled");
    assert_eq!(authenticate(&world, &key).await, Ok(Role::Member));
}

#[tokio::test]
async fn an_expired_key_is_refused_from_the_moment_it_expires_even_when_cached() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let (key, mut new) = new_key(alice.id, "short-lived");
    new.expires_at = Some(now());
    world
        .identity_store
        .create_key(new, None)
        .await
        .expect("stored");
    let before = now() - chrono::TimeDelta::microseconds(1);

    let early = world
        .accounts
        .authenticate(Some(key.expose()), before)
        .await;
    let on_time = world.accounts.authenticate(Some(key.expose()), now()).await;

    assert!(early.is_ok(), "{early:?}");
    assert_eq!(on_time, Err(AuthError::Refused(AuthFailure::Expired)));
    assert_eq!(
        world.identity_store.controls().calls("find_key"),
        1,
        "the second answer came from the cache, and was still refused"
    );
}

#[tokio::test]
async fn a_role_change_takes_effect_on_the_next_authentication() {
    let (world, alice, key, root) = alice_with_a_key().await;
    assert_eq!(authenticate(&world, &key).await, Ok(Role::Member), "cached");

    world
        .accounts
        .update_user(
            &principal_of(&root),
            &alice.username,
            UserPatch {
                role: Some(Role::Admin),
                disabled: None,
                ..UserPatch::default()
            },
        )
        .await
        .expect("promoted");

    assert_eq!(authenticate(&world, &key).await, Ok(Role::Admin));
}

#[tokio::test]
async fn changing_a_user_drops_the_cached_lookup_of_every_one_of_its_keys() {
    let (world, alice, first, root) = alice_with_a_key().await;
    let second = world.key_of(&alice).await;
    let bobs = world.key_of(&world.user("bob", Role::Member).await).await;

    world
        .accounts
        .update_user(
            &principal_of(&root),
            &alice.username,
            UserPatch {
                role: None,
                disabled: Some(true),
                ..UserPatch::default()
            },
        )
        .await
        .expect("disabled");

    for (key, times) in [(&first, 1), (&second, 1), (&bobs, 0)] {
        assert_eq!(
            world.key_cache.invalidations_of(&Scope::Key(key.hash())),
            times
        );
    }
}

#[tokio::test]
async fn refused_keys_are_not_cached_so_the_store_decides_every_time() {
    let (world, alice, key, _root) = alice_with_a_key().await;
    let principal = world
        .accounts
        .authenticate(Some(key.expose()), now())
        .await
        .expect("accepted");
    world
        .accounts
        .revoke_key(&principal_of(&alice), principal.key_id)
        .await
        .expect("revoked");
    let lookups = world.identity_store.controls().calls("find_key");

    for _ in 0..2 {
        assert_eq!(
            authenticate(&world, &key).await,
            refused(AuthFailure::Revoked)
        );
    }

    assert_eq!(
        world.identity_store.controls().calls("find_key"),
        lookups + 2
    );
    assert_eq!(
        world.key_cache.peek(&Scope::Key(key.hash()), &Field::Key),
        None
    );
}

#[tokio::test]
async fn an_unknown_key_is_cached_as_unknown_until_a_key_with_its_hash_is_created() {
    let world = InMemory::new();
    let key = PlaintextKey::generate().expect("csprng");
    for _ in 0..2 {
        assert_eq!(
            authenticate(&world, &key).await,
            refused(AuthFailure::Unknown)
        );
    }
    assert_eq!(
        world.identity_store.controls().calls("find_key"),
        1,
        "made-up keys do not each cost a query"
    );

    world
        .accounts
        .bootstrap_admin(&key)
        .await
        .expect("bootstrapped")
        .expect("no admin existed");

    assert_eq!(authenticate(&world, &key).await, Ok(Role::Admin));
}

#[tokio::test]
async fn an_authentication_racing_a_revocation_does_not_let_the_key_back_in() {
    let (world, alice, key, _root) = alice_with_a_key().await;
    let key_id = world
        .identity_store
        .list_keys(alice.id)
        .await
        .expect("listed")[0]
        .id;
    // An authentication misses the cache and finds the key still usable; it is held there.
    let hold = world.identity_store.controls().hold_next("find_key");
    let racing = tokio::spawn({
        let accounts = world.accounts.clone();
        let raw = key.expose().to_owned();
        async move { accounts.authenticate(Some(&raw), now()).await }
    });
    hold.reached().await;

    world
        .accounts
        .revoke_key(&principal_of(&alice), key_id)
        .await
        .expect("revoked");
    hold.release();
    let raced = racing.await.expect("the authentication ran");

    assert!(raced.is_ok(), "it had found the key before the revocation");
    assert_eq!(
        authenticate(&world, &key).await,
        refused(AuthFailure::Revoked)
    );
}

#[tokio::test]
async fn a_key_that_cannot_be_checked_is_neither_accepted_nor_refused() {
    let (world, _alice, key, _root) = alice_with_a_key().await;
    world.identity_store.controls().set_unavailable(true);

    let outcome = authenticate(&world, &key).await;

    assert!(
        matches!(outcome, Err(AuthError::Unavailable(_))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_key_created_through_the_accounts_authenticates_with_its_own_limit() {
    let (world, alice, _key, root) = alice_with_a_key().await;
    let limit = maas_domain::identity::RateLimitRpm::new(30).expect("valid");

    let created = world
        .accounts
        .create_key(
            &principal_of(&root),
            KeyRequest {
                user_id: Some(alice.id),
                rate_limit_rpm: Some(limit),
                ..KeyRequest::named(key_name("batch jobs"))
            },
            now(),
        )
        .await
        .expect("created");
    let principal = world
        .accounts
        .authenticate(Some(created.plaintext.expose()), now())
        .await
        .expect("accepted");

    assert_eq!(principal.user_id, alice.id);
    assert_eq!(principal.rate_limit_rpm, Some(limit));
    assert_eq!(created.key.prefix, created.plaintext.display_prefix());
}
