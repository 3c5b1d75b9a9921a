//! What a made-up key costs: nothing when it is in the gateway's own format with a checksum
//! that does not match; one lookup, then nothing, when it is well-formed and unknown (and it
//! never reaches the shared cache); and nothing at all from an address that failed too often.
//! Keys from before checked keys still work.

use std::net::IpAddr;

use chrono::TimeDelta;
use maas_domain::accounts::{AuthError, FailedAuthLimit};
use maas_domain::identity::{AuthFailure, PlaintextKey, Role};
use maas_domain::ports::{Field, IdentityRepository, Scope};
use maas_domain::test_util::{InMemory, at, new_key};

fn now() -> chrono::DateTime<chrono::Utc> {
    at(2_000_000_000)
}

fn address(raw: &str) -> IpAddr {
    raw.parse().expect("an address")
}

/// Every character of `key`'s checksummed part but one kept: a key one typo away.
fn one_typo_from(key: &PlaintextKey) -> String {
    let mut raw = key.expose().as_bytes().to_vec();
    let i = PlaintextKey::PREFIX.len() + 7;
    raw[i] = if raw[i] == b'x' { b'y' } else { b'x' };
    String::from_utf8(raw).expect("ascii")
}

#[tokio::test]
async fn a_key_whose_checksum_fails_is_refused_without_any_lookup() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let real = world.key_of(&alice).await;
    let calls_before = world.identity_store.controls().total_calls();

    let forged = world
        .accounts
        .authenticate(Some(&one_typo_from(&real)), now())
        .await;

    assert_eq!(forged, Err(AuthError::Refused(AuthFailure::BadChecksum)));
    assert_eq!(
        world.identity_store.controls().total_calls(),
        calls_before,
        "no store call"
    );
    assert_eq!(world.key_cache.stats().lookups(), 0, "no cache call");
}

#[tokio::test]
async fn an_unknown_key_is_looked_up_once_and_remembered_in_process_not_in_the_shared_cache() {
    let world = InMemory::new();
    let made_up = PlaintextKey::generate().expect("csprng");

    for _ in 0..3 {
        assert_eq!(
            world
                .accounts
                .authenticate(Some(made_up.expose()), now())
                .await,
            Err(AuthError::Refused(AuthFailure::Unknown))
        );
    }

    assert_eq!(world.identity_store.controls().calls("find_key"), 1);
    assert_eq!(world.key_cache.stats().lookups(), 1, "the first time only");
    assert_eq!(world.key_cache.stats().fills(), 0, "nothing written");
    assert_eq!(
        world
            .key_cache
            .peek(&Scope::Key(made_up.hash()), &Field::Key),
        None
    );
}

#[tokio::test]
async fn an_unknown_key_is_forgotten_after_its_ttl() {
    let world = InMemory::new();
    let made_up = PlaintextKey::generate().expect("csprng");
    let accounts = world.accounts.clone();
    let later = now() + TimeDelta::seconds(61);

    for when in [now(), now() + TimeDelta::seconds(59), later] {
        let refused = accounts.authenticate(Some(made_up.expose()), when).await;
        assert_eq!(refused, Err(AuthError::Refused(AuthFailure::Unknown)));
    }

    assert_eq!(
        world.identity_store.controls().calls("find_key"),
        2,
        "looked up again once the 60 s are over"
    );
}

#[tokio::test]
async fn a_key_stored_before_checked_keys_still_authenticates() {
    let world = InMemory::new();
    let alice = world.user("alice", Role::Member).await;
    let (_, mut stored) = new_key(alice.id, "old laptop");
    let legacy = PlaintextKey::generate_legacy().expect("csprng");
    stored.hash = legacy.hash();
    stored.prefix = legacy.display_prefix();
    world
        .identity_store
        .create_key(stored, None)
        .await
        .expect("stored");

    let principal = world
        .accounts
        .authenticate(Some(legacy.expose()), now())
        .await
        .expect("accepted");

    assert_eq!(principal.user_id, alice.id);
    assert!(!legacy.is_checked() && legacy.expose().starts_with("maas_"));
}

#[tokio::test]
async fn an_address_past_its_failures_is_refused_before_anything_is_looked_up() {
    let world = InMemory::new();
    let accounts = world
        .accounts
        .clone()
        .with_failed_auth_limit(FailedAuthLimit::per_minute(3));
    let alice = world.user("alice", Role::Member).await;
    let real = world.key_of(&alice).await;
    let attacker = address("203.0.113.9");
    for _ in 0..3 {
        let made_up = PlaintextKey::generate().expect("csprng");
        let refused = accounts
            .authenticate_from(Some(attacker), Some(made_up.expose()), now())
            .await;
        assert_eq!(refused, Err(AuthError::Refused(AuthFailure::Unknown)));
    }
    let lookups = world.identity_store.controls().calls("find_key");

    // Past the limit, even a real key from there is not looked at.
    let throttled = accounts
        .authenticate_from(Some(attacker), Some(real.expose()), now())
        .await;
    let another = PlaintextKey::generate().expect("csprng");
    let throttled_again = accounts
        .authenticate_from(Some(attacker), Some(another.expose()), now())
        .await;

    assert_eq!(
        throttled,
        Err(AuthError::Throttled {
            retry_after_seconds: 20
        })
    );
    assert!(matches!(throttled_again, Err(AuthError::Throttled { .. })));
    assert_eq!(world.identity_store.controls().calls("find_key"), lookups);
    // Others are not held back, and the attacker gets one more try per 20 s.
    let elsewhere = accounts
        .authenticate_from(Some(address("198.51.100.2")), Some(real.expose()), now())
        .await;
    assert!(elsewhere.is_ok(), "{elsewhere:?}");
    let later = now() + TimeDelta::seconds(20);
    let retried = accounts
        .authenticate_from(Some(attacker), Some(real.expose()), later)
        .await;
    assert!(retried.is_ok(), "{retried:?}");
}

#[tokio::test]
async fn requests_without_a_key_and_successes_do_not_count_as_failures() {
    let world = InMemory::new();
    let accounts = world
        .accounts
        .clone()
        .with_failed_auth_limit(FailedAuthLimit::per_minute(1));
    let alice = world.user("alice", Role::Member).await;
    let real = world.key_of(&alice).await;
    let client = address("192.0.2.4");

    for _ in 0..5 {
        let missing = accounts.authenticate_from(Some(client), None, now()).await;
        assert_eq!(missing, Err(AuthError::Refused(AuthFailure::Missing)));
        let ok = accounts
            .authenticate_from(Some(client), Some(real.expose()), now())
            .await;
        assert!(ok.is_ok(), "{ok:?}");
    }
    let malformed = accounts
        .authenticate_from(Some(client), Some("not-a-key"), now())
        .await;
    assert_eq!(malformed, Err(AuthError::Refused(AuthFailure::Malformed)));
    let next = accounts
        .authenticate_from(Some(client), Some(real.expose()), now())
        .await;
    assert!(matches!(next, Err(AuthError::Throttled { .. })), "{next:?}");
}

#[tokio::test]
async fn lookups_in_flight_at_once_from_an_address_that_failed_count_before_they_fail() {
    let world = InMemory::new();
    let accounts = world
        .accounts
        .clone()
        .with_failed_auth_limit(FailedAuthLimit::per_minute(3));
    let alice = world.user("alice", Role::Member).await;
    let real = world.key_of(&alice).await;
    let attacker = address("203.0.113.10");
    let controls = world.identity_store.controls();
    let made_up = || PlaintextKey::generate().expect("csprng");
    let first = accounts
        .authenticate_from(Some(attacker), Some(made_up().expose()), now())
        .await;
    assert_eq!(first, Err(AuthError::Refused(AuthFailure::Unknown)));

    // Two more made-up keys from that address, each held in the store's lookup.
    let mut held = Vec::new();
    for _ in 0..2 {
        let hold = controls.hold_next("find_key");
        let accounts = accounts.clone();
        let key = made_up();
        let call = tokio::spawn(async move {
            accounts
                .authenticate_from(Some(attacker), Some(key.expose()), now())
                .await
        });
        hold.reached().await;
        held.push((hold, call));
    }
    let lookups = controls.calls("find_key");

    // A fourth at the same time finds the allowance spent, before the two failed, and so does
    // the address's real key: neither is looked up.
    let refused = accounts
        .authenticate_from(Some(attacker), Some(made_up().expose()), now())
        .await;
    assert!(
        matches!(refused, Err(AuthError::Throttled { .. })),
        "{refused:?}"
    );
    let real_too = accounts
        .authenticate_from(Some(attacker), Some(real.expose()), now())
        .await;
    assert!(
        matches!(real_too, Err(AuthError::Throttled { .. })),
        "{real_too:?}"
    );
    assert_eq!(controls.calls("find_key"), lookups, "no lookup");

    for (hold, call) in held {
        hold.release();
        let failed = call.await.expect("joined");
        assert_eq!(failed, Err(AuthError::Refused(AuthFailure::Unknown)));
    }
    let after = accounts
        .authenticate_from(Some(attacker), Some(real.expose()), now())
        .await;
    assert!(
        matches!(after, Err(AuthError::Throttled { .. })),
        "three failures stand: {after:?}"
    );
}

#[tokio::test]
async fn a_good_key_looked_up_from_an_address_that_failed_gives_back_what_it_took() {
    let world = InMemory::new();
    let accounts = world
        .accounts
        .clone()
        .with_failed_auth_limit(FailedAuthLimit::per_minute(2));
    let bob = world.user("bob", Role::Member).await;
    let bobs = world.key_of(&bob).await;
    let client = address("192.0.2.77");
    let controls = world.identity_store.controls();
    let made_up = || PlaintextKey::generate().expect("csprng");
    let typo = accounts
        .authenticate_from(Some(client), Some(made_up().expose()), now())
        .await;
    assert_eq!(typo, Err(AuthError::Refused(AuthFailure::Unknown)));

    let lookups = controls.calls("find_key");
    let found = accounts
        .authenticate_from(Some(client), Some(bobs.expose()), now())
        .await;
    assert!(found.is_ok(), "{found:?}");
    assert_eq!(controls.calls("find_key"), lookups + 1, "from the store");

    assert_eq!(
        accounts
            .authenticate_from(Some(client), Some(made_up().expose()), now())
            .await,
        Err(AuthError::Refused(AuthFailure::Unknown)),
        "its second failure was still there"
    );
    assert!(matches!(
        accounts
            .authenticate_from(Some(client), Some(made_up().expose()), now())
            .await,
        Err(AuthError::Throttled { .. })
    ));
}
