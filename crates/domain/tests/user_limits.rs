//! One member, many keys: a user's rate limit that all its keys share (the key's own limit
//! still applies), set by admins and seen on the next request; and a bound on a user's active
//! keys.

use maas_domain::DomainError;
use maas_domain::accounts::KeyRequest;
use maas_domain::identity::{RateLimitRpm, Role, UserPatch};
use maas_domain::limits::RateLimits;
use maas_domain::ports::{Allowance, RateDecision, RateLimit, RateLimiter, UserRateLimit};
use maas_domain::test_util::{InMemory, InMemoryRateLimiter, at, key_name, username};

fn now() -> chrono::DateTime<chrono::Utc> {
    at(2_000_000_000)
}

fn rpm(n: i64) -> RateLimitRpm {
    RateLimitRpm::new(n).expect("valid")
}

fn policy(user_rpm: Option<u32>) -> RateLimits {
    RateLimits {
        default_rpm: 1,
        burst: 20,
        user_rpm,
    }
}

#[tokio::test]
async fn a_request_is_held_to_its_keys_limit_and_its_users_when_it_has_one() {
    let world = InMemory::new();
    let mut alice = world.actor("alice", Role::Member).await;

    let without = policy(None).request_for(&alice);
    assert_eq!(without.key, RateLimit { rpm: 1, burst: 20 });
    assert_eq!(without.user, None, "no user limit unless configured");

    let with_default = policy(Some(30)).request_for(&alice);
    assert_eq!(
        with_default.user,
        Some(UserRateLimit {
            user_id: alice.user_id,
            limit: RateLimit { rpm: 30, burst: 20 }
        })
    );
    alice.user_rate_limit_rpm = Some(rpm(5));
    alice.rate_limit_rpm = Some(rpm(7));
    let own = policy(Some(30)).request_for(&alice);
    assert_eq!(own.key.rpm, 7, "the key's own");
    assert_eq!(
        own.user.map(|u| u.limit.rpm),
        Some(5),
        "the user's own wins"
    );
    assert_eq!(
        policy(None).request_for(&alice).user.map(|u| u.limit.rpm),
        Some(5)
    );
}

#[tokio::test]
async fn three_keys_of_one_user_together_get_one_burst() {
    let world = InMemory::new();
    let alice = world.actor("alice", Role::Member).await;
    let limiter = InMemoryRateLimiter::new();
    let keys: Vec<_> = (0..3)
        .map(|_| maas_domain::identity::Principal {
            key_id: uuid::Uuid::new_v4(),
            ..alice.clone()
        })
        .collect();

    let mut admitted = 0;
    for _ in 0..30 {
        for key in &keys {
            let request = policy(Some(1)).request_for(key);
            if matches!(limiter.decide(&request).await, RateDecision::Allowed { .. }) {
                admitted += 1;
            }
        }
    }

    assert_eq!(admitted, 20, "not 60");
    let refused = limiter.decide(&policy(Some(1)).request_for(&keys[0])).await;
    assert!(matches!(
        refused,
        RateDecision::Limited {
            allowance: Allowance::User,
            ..
        }
    ));
    // Without a user limit, each of three other keys has a burst of its own: the attack as it
    // was.
    let others: Vec<_> = (0..3)
        .map(|_| maas_domain::identity::Principal {
            key_id: uuid::Uuid::new_v4(),
            ..alice.clone()
        })
        .collect();
    let mut alone = 0;
    for _ in 0..30 {
        for key in &others {
            let request = policy(None).request_for(key);
            if matches!(limiter.decide(&request).await, RateDecision::Allowed { .. }) {
                alone += 1;
            }
        }
    }
    assert_eq!(alone, 60);
}

#[tokio::test]
async fn an_admin_sets_a_users_limit_and_its_keys_carry_it_from_the_next_authentication() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let key = world.key_of(&alice).await;
    let root = world.actor("root", Role::Admin).await;
    let member = world.actor("mallory", Role::Member).await;
    let before = world
        .accounts
        .authenticate(Some(key.expose()), now())
        .await
        .expect("accepted, and cached");
    assert_eq!(before.user_rate_limit_rpm, None);
    let set = UserPatch {
        rate_limit_rpm: Some(Some(rpm(12))),
        ..UserPatch::default()
    };

    let refused = world
        .accounts
        .update_user(&member, &username("alice"), set)
        .await;
    let changed = world
        .accounts
        .update_user(&root, &username("alice"), set)
        .await
        .expect("changed");

    assert!(matches!(refused, Err(DomainError::Forbidden(_))));
    assert_eq!(changed.rate_limit_rpm, Some(rpm(12)));
    let after = world
        .accounts
        .authenticate(Some(key.expose()), now())
        .await
        .expect("accepted");
    assert_eq!(after.user_rate_limit_rpm, Some(rpm(12)));
}

#[tokio::test]
async fn a_user_holds_at_most_the_allowed_active_keys() {
    let world = InMemory::new();
    let accounts = world.accounts.clone().with_max_keys_per_user(2);
    let alice = world.actor("alice", Role::Member).await;
    let create = |name: &'static str| {
        let accounts = accounts.clone();
        let alice = alice.clone();
        async move {
            accounts
                .create_key(&alice, KeyRequest::named(key_name(name)), now())
                .await
        }
    };
    let first = create("first").await.expect("created");
    create("second").await.expect("created");

    let third = create("third").await;
    assert!(
        matches!(&third, Err(DomainError::Conflict(m)) if m.contains("auth.max_keys_per_user")),
        "{:?}",
        third.map(|c| c.key)
    );
    // Operators are not bound by it.
    accounts
        .create_key_as_operator(&username("alice"), key_name("ops"))
        .await
        .expect("created");
    // Revoking one makes room... but the operator's key counts too.
    accounts
        .revoke_key(&alice, first.key.id)
        .await
        .expect("revoked");
    assert!(matches!(
        create("fourth").await,
        Err(DomainError::Conflict(_))
    ));
}
