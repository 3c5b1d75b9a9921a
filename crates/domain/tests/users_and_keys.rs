//! Users and keys: only admins manage users and other users' keys; members make keys for
//! themselves, without limits of their own; the gateway never loses its last enabled admin; the
//! first admin is bootstrapped once.

use maas_domain::DomainError;
use maas_domain::accounts::{AuthError, KeyRequest};
use maas_domain::identity::{AuthFailure, PlaintextKey, RateLimitRpm, Role, UserPatch};
use maas_domain::ports::IdentityRepository;
use maas_domain::test_util::{InMemory, at, key_name, new_user, principal_of, username};
use maas_domain::values::PageLimit;

fn now() -> chrono::DateTime<chrono::Utc> {
    at(2_000_000_000)
}

fn limit(n: i64) -> PageLimit {
    PageLimit::new(n).expect("valid limit")
}

fn demote() -> UserPatch {
    UserPatch {
        role: Some(Role::Member),
        disabled: None,
        ..UserPatch::default()
    }
}

fn disable() -> UserPatch {
    UserPatch {
        role: None,
        disabled: Some(true),
        ..UserPatch::default()
    }
}

#[tokio::test]
async fn only_admins_create_list_and_change_users() {
    let world = InMemory::new();
    let member = world.actor("alice", Role::Member).await;
    let admin = world.actor("root", Role::Admin).await;
    let accounts = &world.accounts;

    let outcomes = [
        accounts
            .create_user(&member, new_user("mallory", Role::Admin))
            .await
            .map(drop),
        accounts
            .list_users(&member, None, limit(10))
            .await
            .map(drop),
        accounts
            .update_user(&member, &username("root"), demote())
            .await
            .map(drop),
    ];
    for outcome in outcomes {
        assert!(
            matches!(outcome, Err(DomainError::Forbidden(_))),
            "{outcome:?}"
        );
    }
    assert!(
        world
            .identity_store
            .get_user(&username("mallory"))
            .await
            .is_err()
    );

    let bob = accounts
        .create_user(&admin, new_user("bob", Role::Member))
        .await
        .expect("created");
    accounts
        .update_user(&admin, &bob.username, disable())
        .await
        .expect("disabled");
}

#[tokio::test]
async fn the_last_enabled_admin_can_be_neither_demoted_nor_disabled() {
    let world = InMemory::new();
    let root = world.user("root", Role::Admin).await;
    let actor = principal_of(&root);

    for patch in [demote(), disable()] {
        let outcome = world
            .accounts
            .update_user(&actor, &root.username, patch)
            .await;
        assert!(
            matches!(&outcome, Err(DomainError::Conflict(m)) if m.contains("last enabled admin")),
            "{outcome:?}"
        );
    }
    assert_eq!(
        world.accounts.me(&actor).await,
        Ok(root.clone()),
        "unchanged"
    );

    world.user("deputy", Role::Admin).await;
    let stepped_down = world
        .accounts
        .update_user(&actor, &root.username, demote())
        .await
        .expect("another enabled admin is left");
    assert_eq!(stepped_down.role, Role::Member);
}

#[tokio::test]
async fn the_first_admin_is_bootstrapped_once_and_holds_the_configured_key() {
    let world = InMemory::new();
    let first = PlaintextKey::generate().expect("csprng");
    let second = PlaintextKey::generate().expect("csprng");

    let created = world
        .accounts
        .bootstrap_admin(&first)
        .await
        .expect("bootstrapped")
        .expect("no admin existed");
    let again = world
        .accounts
        .bootstrap_admin(&second)
        .await
        .expect("no error");

    assert_eq!(
        (created.username.as_str(), created.role),
        ("admin", Role::Admin)
    );
    assert_eq!(again, None, "an admin exists: nothing is created");
    let principal = world
        .accounts
        .authenticate(Some(first.expose()), now())
        .await
        .expect("the configured key");
    assert_eq!(principal.user_id, created.id);
    assert_eq!(
        world
            .accounts
            .authenticate(Some(second.expose()), now())
            .await,
        Err(AuthError::Refused(AuthFailure::Unknown))
    );
}

#[tokio::test]
async fn any_admin_counts_so_bootstrapping_next_to_one_does_nothing() {
    let world = InMemory::new();
    world.user("root", Role::Admin).await;
    let key = PlaintextKey::generate().expect("csprng");

    assert_eq!(world.accounts.bootstrap_admin(&key).await, Ok(None));
    assert!(
        world
            .identity_store
            .get_user(&username("admin"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn members_make_keys_for_themselves_only_and_without_a_limit_of_their_own() {
    let world = InMemory::new();
    let alice = world.actor("alice", Role::Member).await;
    let bob = world.user("bob", Role::Member).await;
    let rpm = RateLimitRpm::new(10).expect("valid");
    let create = |user_id, rate_limit_rpm| {
        world.accounts.create_key(
            &alice,
            KeyRequest {
                user_id,
                rate_limit_rpm,
                ..KeyRequest::named(key_name("k"))
            },
            now(),
        )
    };

    for outcome in [
        create(Some(bob.id), None).await,
        create(None, Some(rpm)).await,
    ] {
        assert!(
            matches!(outcome, Err(DomainError::Forbidden(_))),
            "{:?}",
            outcome.map(|c| c.key)
        );
    }
    let own = create(Some(alice.user_id), None).await.expect("created");
    assert_eq!(own.key.user_id, alice.user_id);
    assert_eq!(
        create(None, None).await.expect("created").key.user_id,
        alice.user_id
    );
}

#[tokio::test]
async fn admins_make_keys_for_anyone_with_a_limit_of_their_own() {
    let world = InMemory::new();
    let root = world.actor("root", Role::Admin).await;
    let bob = world.user("bob", Role::Member).await;
    let rpm = RateLimitRpm::new(10).expect("valid");

    let created = world
        .accounts
        .create_key(
            &root,
            KeyRequest {
                user_id: Some(bob.id),
                rate_limit_rpm: Some(rpm),
                ..KeyRequest::named(key_name("bobs"))
            },
            now(),
        )
        .await
        .expect("created");

    assert_eq!(
        (created.key.user_id, created.key.rate_limit_rpm),
        (bob.id, Some(rpm))
    );
}

#[tokio::test]
async fn a_key_must_expire_in_the_future_if_at_all() {
    let world = InMemory::new();
    let alice = world.actor("alice", Role::Member).await;

    let outcome = world
        .accounts
        .create_key(
            &alice,
            KeyRequest {
                expires_at: Some(now()),
                ..KeyRequest::named(key_name("k"))
            },
            now(),
        )
        .await;

    assert!(
        matches!(&outcome, Err(DomainError::Validation(v)) if v.field == "expires_at"),
        "{:?}",
        outcome.map(|c| c.key)
    );
    assert_eq!(world.identity_store.controls().calls("create_key"), 0);
}

#[tokio::test]
async fn a_member_can_neither_revoke_nor_list_another_users_keys() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let bob = principal_of(&world.user("bob", Role::Member).await);
    world.key_of(&alice).await;
    let alices_key = world
        .identity_store
        .list_keys(alice.id)
        .await
        .expect("listed")[0]
        .clone();

    let revoked = world.accounts.revoke_key(&bob, alices_key.id).await;
    let listed = world.accounts.list_keys(&bob, Some(alice.id)).await;

    // The same answer as for a key that does not exist: ids cannot be probed.
    assert_eq!(
        revoked,
        Err(DomainError::NotFound(format!(
            "API key {} not found",
            alices_key.id
        )))
    );
    assert!(
        matches!(listed, Err(DomainError::Forbidden(_))),
        "{listed:?}"
    );
    let kept = world
        .identity_store
        .get_key(alices_key.id)
        .await
        .expect("found");
    assert_eq!(kept.revoked_at, None);
}

#[tokio::test]
async fn an_admin_revokes_and_lists_anyones_keys() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let root = world.actor("root", Role::Admin).await;
    world.key_of(&alice).await;

    let keys = world
        .accounts
        .list_keys(&root, Some(alice.id))
        .await
        .expect("listed");
    let revoked = world
        .accounts
        .revoke_key(&root, keys[0].id)
        .await
        .expect("revoked");

    assert!(revoked.revoked_at.is_some());
}

#[tokio::test]
async fn users_are_listed_by_name_in_pages_and_me_is_the_actor() {
    let world = InMemory::new();
    let root = world.actor("root", Role::Admin).await;
    for name in ["carol", "alice", "bob"] {
        world.user(name, Role::Member).await;
    }

    let first = world
        .accounts
        .list_users(&root, None, limit(2))
        .await
        .expect("listed");
    let rest = world
        .accounts
        .list_users(&root, first.next_cursor.as_deref(), limit(2))
        .await
        .expect("listed");

    let names = |users: &[maas_domain::identity::User]| -> Vec<String> {
        users
            .iter()
            .map(|u| u.username.as_str().to_owned())
            .collect()
    };
    assert_eq!(names(&first.items), ["alice", "bob"]);
    assert_eq!(names(&rest.items), ["carol", "root"]);
    assert_eq!(rest.next_cursor, None);
    assert_eq!(
        world.accounts.me(&root).await.map(|u| u.username),
        Ok(username("root"))
    );
}

#[tokio::test]
async fn operators_create_users_and_keys_without_an_actor() {
    let world = InMemory::new();

    let user = world
        .accounts
        .create_user_as_operator(new_user("ops", Role::Admin))
        .await
        .expect("created");
    let created = world
        .accounts
        .create_key_as_operator(&user.username, key_name("cli"))
        .await
        .expect("created");
    let missing = world
        .accounts
        .create_key_as_operator(&username("ghost"), key_name("cli"))
        .await;

    assert_eq!(created.key.user_id, user.id);
    assert!(matches!(missing, Err(DomainError::NotFound(_))));
}
