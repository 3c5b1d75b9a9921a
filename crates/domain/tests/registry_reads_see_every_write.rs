//! Registry reads are cache-aside, and every write drops the model's cached values before it
//! returns: a read that follows a write never sees what was there before, and a read racing a
//! write cannot put the old value back.

use maas_domain::DomainError;
use maas_domain::identity::{Principal, Role};
use maas_domain::inference::Target;
use maas_domain::model::{ModelPatch, VersionPatch};
use maas_domain::ports::{Field, Scope};
use maas_domain::serving::{EndpointList, EndpointsPatch, KeyChange};
use maas_domain::test_util::{
    InMemory, admin_reader, alias_name, description, endpoint, model_name, new_model,
    servable_version, targets, version,
};

/// A world holding model `llama` with versions 1 and 2 (both servable), and its admin.
async fn llama_with_two_versions() -> (InMemory, Principal) {
    let world = InMemory::new();
    let admin = world.actor("root", Role::Admin).await;
    world
        .registry
        .create_model(&admin, new_model("llama"))
        .await
        .expect("created");
    for n in 1..=2 {
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

fn llama_scope() -> Scope {
    Scope::Model(model_name("llama"))
}

#[tokio::test]
async fn a_second_read_is_answered_by_the_cache() {
    let (world, _admin) = llama_with_two_versions().await;
    let llama = model_name("llama");
    let loads = || world.registry_store.controls().calls("get_model");
    let before = loads();

    let first = world
        .registry
        .get_model(&admin_reader(), &llama)
        .await
        .expect("loaded");
    let second = world
        .registry
        .get_model(&admin_reader(), &llama)
        .await
        .expect("cached");

    assert_eq!(first, second);
    assert_eq!(loads() - before, 1, "the store was asked once");
}

#[tokio::test]
async fn a_model_read_after_an_update_is_the_updated_model() {
    let (world, admin) = llama_with_two_versions().await;
    let llama = model_name("llama");
    world
        .registry
        .get_model(&admin_reader(), &llama)
        .await
        .expect("cached");

    let patch = ModelPatch {
        description: Some(Some(description("second edition"))),
        ..ModelPatch::default()
    };
    world
        .registry
        .update_model(&admin, &llama, patch)
        .await
        .expect("updated");

    let read = world
        .registry
        .get_model(&admin_reader(), &llama)
        .await
        .expect("found");
    assert_eq!(read.description, Some(description("second edition")));
}

#[tokio::test]
async fn a_version_read_after_an_update_is_the_updated_version() {
    let (world, admin) = llama_with_two_versions().await;
    let llama = model_name("llama");
    world
        .registry
        .get_version(&admin_reader(), &llama, version(1))
        .await
        .expect("cached");

    let moved = EndpointList::shorthand(endpoint("http://moved:8000/v1"), KeyChange::Keep);
    let patch = VersionPatch {
        endpoints: Some(EndpointsPatch::Replace(moved)),
        ..VersionPatch::default()
    };
    world
        .registry
        .update_version(&admin, &llama, version(1), patch)
        .await
        .expect("updated");

    let read = world
        .registry
        .get_version(&admin_reader(), &llama, version(1))
        .await
        .expect("found");
    assert_eq!(read.endpoint_url(), Some(&endpoint("http://moved:8000/v1")));
}

#[tokio::test]
async fn an_alias_resolved_after_it_moved_is_its_new_version() {
    let (world, admin) = llama_with_two_versions().await;
    let (llama, canary) = (model_name("llama"), alias_name("canary"));
    world
        .registry
        .set_alias(&admin, &llama, &canary, version(1))
        .await
        .expect("set");
    let before = world
        .registry
        .resolve_alias(&admin_reader(), &llama, &canary)
        .await
        .expect("cached");
    assert_eq!(before.split(), targets(&[(1, 1)]));

    world
        .registry
        .set_alias(&admin, &llama, &canary, version(2))
        .await
        .expect("moved");

    let after = world
        .registry
        .resolve_alias(&admin_reader(), &llama, &canary)
        .await
        .expect("found");
    assert_eq!(after.split(), targets(&[(2, 1)]));
}

#[tokio::test]
async fn latest_resolved_after_a_new_version_is_the_new_version() {
    let (world, admin) = llama_with_two_versions().await;
    let (llama, latest) = (model_name("llama"), alias_name("latest"));
    let before = world
        .registry
        .resolve_alias(&admin_reader(), &llama, &latest)
        .await
        .expect("cached");
    assert_eq!(before.split(), targets(&[(2, 1)]));

    world
        .registry
        .create_version(
            &admin,
            &llama,
            servable_version("s3://b/3", "http://v3:8000/v1"),
        )
        .await
        .expect("created");

    let after = world
        .registry
        .resolve_alias(&admin_reader(), &llama, &latest)
        .await
        .expect("found");
    assert_eq!(after.split(), targets(&[(3, 1)]));
}

#[tokio::test]
async fn the_default_target_after_any_change_to_it_is_the_new_one() {
    let (world, admin) = llama_with_two_versions().await;
    let llama = model_name("llama");
    let bare = Target::parse("llama").expect("a target");
    let production = alias_name("production");
    let served = async || {
        world
            .registry
            .resolve_target(&admin_reader(), &bare)
            .await
            .expect("servable")
            .version
    };
    assert_eq!(served().await, version(2), "cached");

    world
        .registry
        .set_alias(&admin, &llama, &production, version(1))
        .await
        .expect("set");
    assert_eq!(served().await, version(1), "production was set");

    world
        .registry
        .create_version(
            &admin,
            &llama,
            servable_version("s3://b/3", "http://v3:8000/v1"),
        )
        .await
        .expect("created");
    assert_eq!(served().await, version(1), "production still wins");

    world
        .registry
        .delete_alias(&admin, &llama, &production)
        .await
        .expect("deleted");
    assert_eq!(served().await, version(3), "production was deleted");
}

#[tokio::test]
async fn after_a_delete_the_cached_model_and_version_are_gone() {
    let (world, admin) = llama_with_two_versions().await;
    let llama = model_name("llama");
    world
        .registry
        .get_version(&admin_reader(), &llama, version(2))
        .await
        .expect("cached");
    world
        .registry
        .get_model(&admin_reader(), &llama)
        .await
        .expect("cached");

    world
        .registry
        .delete_version(&admin, &llama, version(2))
        .await
        .expect("deleted");
    assert!(matches!(
        world
            .registry
            .get_version(&admin_reader(), &llama, version(2))
            .await,
        Err(DomainError::NotFound(_))
    ));
    assert_eq!(
        world
            .registry
            .get_model(&admin_reader(), &llama)
            .await
            .expect("found")
            .latest_version,
        Some(version(1))
    );

    world
        .registry
        .delete_model(&admin, &llama)
        .await
        .expect("deleted");
    assert!(matches!(
        world.registry.get_model(&admin_reader(), &llama).await,
        Err(DomainError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_read_racing_an_update_does_not_put_the_old_model_back() {
    let (world, admin) = llama_with_two_versions().await;
    let llama = model_name("llama");
    // A reader misses the cache and loads the model; the load is held after it read the store.
    let hold = world.registry_store.controls().hold_next("get_model");
    let reader = tokio::spawn({
        let registry = world.registry.clone();
        let llama = llama.clone();
        async move { registry.get_model(&admin_reader(), &llama).await }
    });
    hold.reached().await;

    // Meanwhile a writer changes the model and drops its cached values.
    let patch = ModelPatch {
        description: Some(Some(description("new"))),
        ..ModelPatch::default()
    };
    world
        .registry
        .update_model(&admin, &llama, patch)
        .await
        .expect("updated");
    // The reader now goes on to fill the cache with what it loaded before the write.
    hold.release();
    let raced = reader.await.expect("the reader ran").expect("found");
    assert_eq!(raced.description, None, "it had read the old model");

    let read = world
        .registry
        .get_model(&admin_reader(), &llama)
        .await
        .expect("found");
    assert_eq!(read.description, Some(description("new")));
    assert!(world.model_cache.stats().fills_refused >= 1);
}

#[tokio::test]
async fn a_write_that_fails_still_drops_the_cached_model_in_case_it_took_effect() {
    let (world, admin) = llama_with_two_versions().await;
    let llama = model_name("llama");
    world
        .registry
        .get_model(&admin_reader(), &llama)
        .await
        .expect("cached");
    let before = world.model_cache.invalidations_of(&llama_scope());

    world.registry_store.controls().set_unavailable(true);
    let patch = ModelPatch {
        description: Some(None),
        ..ModelPatch::default()
    };
    let failed = world.registry.update_model(&admin, &llama, patch).await;

    assert!(
        matches!(failed, Err(DomainError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(
        world.model_cache.invalidations_of(&llama_scope()),
        before + 1
    );
    assert_eq!(world.model_cache.peek(&llama_scope(), &Field::Model), None);
}

#[tokio::test]
async fn with_the_cache_bypassed_every_read_goes_to_the_store_and_nothing_is_cached() {
    let (world, _admin) = llama_with_two_versions().await;
    let llama = model_name("llama");
    let loads = || world.registry_store.controls().calls("get_model");
    let (before, fills) = (loads(), world.model_cache.stats().fills_stored);
    world.model_cache.set_bypass(true);

    for _ in 0..3 {
        world
            .registry
            .get_model(&admin_reader(), &llama)
            .await
            .expect("found");
    }

    assert_eq!(loads() - before, 3);
    assert_eq!(world.model_cache.stats().fills_stored, fills);
    assert!(!world.model_cache.holds_scope(&llama_scope()));
}
