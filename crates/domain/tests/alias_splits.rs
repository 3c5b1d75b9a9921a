//! Canaries and blue/green through aliases: an alias points at 1 to 16 versions with weights,
//! each API key's calls all go to one of them (chosen from the key's id, the model and the
//! alias, the same on every replica), a new split replaces the old one whole and atomically and
//! is used from the next call on, and deleting a version takes it out of the splits it is in.

use maas_domain::DomainError;
use maas_domain::alias::{Weight, pick_index, place};
use maas_domain::identity::{Principal, Role};
use maas_domain::inference::Target;
use maas_domain::test_util::{
    InMemory, admin_reader, alias_name, model_name, new_model, servable_version, split, targets,
    version,
};
use maas_domain::values::VersionNumber;
use uuid::Uuid;

/// A world with model `llama` and versions 1, 2 and 3, all servable.
async fn llama() -> (InMemory, Principal) {
    let world = InMemory::new();
    let admin = world.actor("root", Role::Admin).await;
    world
        .registry
        .create_model(&admin, new_model("llama"))
        .await
        .expect("created");
    for n in 1..=3 {
        world
            .registry
            .create_version(
                &admin,
                &model_name("llama"),
                servable_version(&format!("s3://b/{n}"), &format!("http://v{n}:8000/v1")),
            )
            .await
            .expect("created");
    }
    (world, admin)
}

/// A caller using the key with id `n`.
fn client(n: u128) -> Principal {
    Principal {
        key_id: Uuid::from_u128(n),
        ..admin_reader()
    }
}

async fn set(world: &InMemory, admin: &Principal, alias: &str, pairs: &[(i64, i64)]) {
    world
        .registry
        .set_alias(
            admin,
            &model_name("llama"),
            &alias_name(alias),
            split(pairs),
        )
        .await
        .expect("set");
}

async fn served(world: &InMemory, caller: &Principal, target: &str) -> VersionNumber {
    let target = Target::parse(target).expect("a target");
    world
        .registry
        .resolve_target(caller, &target)
        .await
        .expect("served")
        .version
}

#[tokio::test]
async fn each_key_stays_on_one_version_and_the_keys_share_the_versions_by_weight() {
    let (world, admin) = llama().await;
    set(&world, &admin, "production", &[(1, 90), (2, 10)]).await;

    let mut on_canary = 0;
    for n in 0..1_000 {
        let first = served(&world, &client(n), "llama@production").await;
        for _ in 0..3 {
            assert_eq!(served(&world, &client(n), "llama@production").await, first);
        }
        // A bare name goes through `production`, so it lands on the same version.
        assert_eq!(served(&world, &client(n), "llama").await, first);
        on_canary += usize::from(first == version(2));
    }
    // The keys are fixed, so this count is too; it is near 10 % as any set of keys' would be.
    assert!((60..=140).contains(&on_canary), "{on_canary} of 1,000 keys");
}

#[tokio::test]
async fn the_version_is_the_one_the_keys_place_falls_in() {
    let (world, admin) = llama().await;
    set(&world, &admin, "canary", &[(3, 7), (1, 2), (2, 1)]).await;
    let (llama, canary) = (model_name("llama"), alias_name("canary"));
    // Laid out in version order: 1 (weight 2), 2 (weight 1), 3 (weight 7).
    let weights: Vec<Weight> = targets(&[(1, 2), (2, 1), (3, 7)])
        .iter()
        .map(|t| t.weight)
        .collect();
    for n in 0..200 {
        let index = pick_index(place(Uuid::from_u128(n), &llama, &canary), &weights);
        let expected = version(i64::try_from(index.expect("a range")).expect("small") + 1);
        assert_eq!(served(&world, &client(n), "llama@canary").await, expected);
    }
}

#[tokio::test]
async fn two_aliases_with_the_same_split_split_the_keys_independently() {
    let (world, admin) = llama().await;
    set(&world, &admin, "blue", &[(1, 1), (2, 1)]).await;
    set(&world, &admin, "green", &[(1, 1), (2, 1)]).await;
    let mut differing = 0;
    for n in 0..100 {
        let blue = served(&world, &client(n), "llama@blue").await;
        let green = served(&world, &client(n), "llama@green").await;
        differing += usize::from(blue != green);
    }
    assert!((20..=80).contains(&differing), "{differing} of 100 keys");
}

#[tokio::test]
async fn moving_the_whole_weight_is_one_write_seen_by_the_next_call_of_every_key() {
    let (world, admin) = llama().await;
    set(&world, &admin, "production", &[(1, 50), (2, 50)]).await;
    for n in 0..50 {
        served(&world, &client(n), "llama").await; // cached
    }
    let writes = world.registry_store.controls().calls("set_alias");

    set(&world, &admin, "production", &[(2, 1)]).await;

    assert_eq!(
        world.registry_store.controls().calls("set_alias"),
        writes + 1
    );
    for n in 0..50 {
        assert_eq!(served(&world, &client(n), "llama").await, version(2));
        assert_eq!(
            served(&world, &client(n), "llama@production").await,
            version(2)
        );
    }
}

#[tokio::test]
async fn a_split_is_read_from_the_store_once_then_from_the_cache() {
    let (world, admin) = llama().await;
    set(&world, &admin, "canary", &[(1, 1), (2, 1)]).await;
    for n in 0..20 {
        served(&world, &client(n), "llama@canary").await;
    }
    assert_eq!(world.registry_store.controls().calls("resolve_alias"), 1);
}

#[tokio::test]
async fn an_alias_answers_its_versions_with_their_weights() {
    let (world, admin) = llama().await;
    set(&world, &admin, "production", &[(2, 10), (1, 90)]).await;
    let resolved = world
        .registry
        .resolve_alias(
            &admin_reader(),
            &model_name("llama"),
            &alias_name("production"),
        )
        .await
        .expect("found");
    assert_eq!(resolved.split(), targets(&[(1, 90), (2, 10)]));
    assert!(resolved.updated_at.is_some());
    assert_eq!(resolved.versions[1].version.source_uri.as_str(), "s3://b/2");
}

#[tokio::test]
async fn a_split_naming_a_missing_version_changes_nothing() {
    let (world, admin) = llama().await;
    set(&world, &admin, "production", &[(1, 1)]).await;
    let err = world
        .registry
        .set_alias(
            &admin,
            &model_name("llama"),
            &alias_name("production"),
            split(&[(2, 50), (9, 40), (8, 10)]),
        )
        .await
        .expect_err("version 8 does not exist");
    assert_eq!(
        err,
        DomainError::NotFound("version 8 of model 'llama' not found".into())
    );
    for n in 0..20 {
        assert_eq!(served(&world, &client(n), "llama").await, version(1));
    }
}

#[tokio::test]
async fn a_deleted_version_leaves_its_splits_and_the_others_take_its_calls() {
    let (world, admin) = llama().await;
    set(&world, &admin, "production", &[(1, 80), (2, 10), (3, 10)]).await;
    set(&world, &admin, "canary", &[(3, 1)]).await;
    let llama = model_name("llama");

    world
        .registry
        .delete_version(&admin, &llama, version(3))
        .await
        .expect("deleted");

    let production = world
        .registry
        .resolve_alias(&admin_reader(), &llama, &alias_name("production"))
        .await
        .expect("still there");
    // 80:10 is 8/9 and 1/9 now: the weights stay, the shares grow in proportion.
    assert_eq!(production.split(), targets(&[(1, 80), (2, 10)]));
    for n in 0..100 {
        assert_ne!(served(&world, &client(n), "llama").await, version(3));
    }
    // The alias whose last version it was is gone with it.
    let gone = world
        .registry
        .resolve_alias(&admin_reader(), &llama, &alias_name("canary"))
        .await;
    assert_eq!(
        gone,
        Err(DomainError::NotFound(
            "alias 'canary' of model 'llama' not found".into()
        ))
    );
}

#[tokio::test]
async fn when_production_loses_its_last_version_a_bare_name_goes_to_the_highest_servable() {
    let (world, admin) = llama().await;
    set(&world, &admin, "production", &[(1, 1)]).await;
    assert_eq!(served(&world, &client(1), "llama").await, version(1));
    world
        .registry
        .delete_version(&admin, &model_name("llama"), version(1))
        .await
        .expect("deleted");
    assert_eq!(served(&world, &client(1), "llama").await, version(3));
}
