//! Which version an inference call goes to: `name@alias` the alias's version (`latest` the
//! highest), `name:version` that version, a bare `name` its `production` alias when set, else
//! its highest version with an endpoint; and a version without an endpoint serves nothing.

use maas_domain::DomainError;
use maas_domain::identity::{Principal, Role};
use maas_domain::inference::Target;
use maas_domain::model::{ModelVersion, VersionPatch};
use maas_domain::test_util::{
    InMemory, admin_reader, alias_name, model_name, new_model, new_version, servable_version,
    targets, version,
};
use maas_domain::values::VersionNumber;

/// A world with model `llama` whose versions 1 and 2 have endpoints and 3 has none.
async fn llama() -> (InMemory, Principal) {
    let world = InMemory::new();
    let admin = world.actor("root", Role::Admin).await;
    let name = model_name("llama");
    world
        .registry
        .create_model(&admin, new_model("llama"))
        .await
        .expect("created");
    for new in [
        servable_version("s3://b/1", "http://v1:8000/v1"),
        servable_version("s3://b/2", "http://v2:8000/v1"),
        new_version("s3://b/3"),
    ] {
        world
            .registry
            .create_version(&admin, &name, new)
            .await
            .expect("created");
    }
    (world, admin)
}

async fn served(world: &InMemory, target: &str) -> Result<VersionNumber, DomainError> {
    let target = Target::parse(target).expect("a target");
    world
        .registry
        .resolve_target(&admin_reader(), &target)
        .await
        .map(|v: ModelVersion| v.version)
}

#[tokio::test]
async fn a_bare_name_is_served_by_its_production_alias_when_set() {
    let (world, admin) = llama().await;
    world
        .registry
        .set_alias(
            &admin,
            &model_name("llama"),
            &alias_name("production"),
            version(1),
        )
        .await
        .expect("set");

    assert_eq!(served(&world, "llama").await, Ok(version(1)));
}

#[tokio::test]
async fn without_production_a_bare_name_is_served_by_the_highest_version_with_an_endpoint() {
    let (world, _admin) = llama().await;

    assert_eq!(served(&world, "llama").await, Ok(version(2)));
}

#[tokio::test]
async fn a_model_with_no_version_that_has_an_endpoint_serves_nothing() {
    let (world, admin) = llama().await;
    world
        .registry
        .create_model(&admin, new_model("artifacts"))
        .await
        .expect("created");
    world
        .registry
        .create_version(&admin, &model_name("artifacts"), new_version("s3://a/1"))
        .await
        .expect("created");

    assert!(matches!(
        served(&world, "artifacts").await,
        Err(DomainError::NotFound(_))
    ));
    assert!(matches!(
        served(&world, "ghost").await,
        Err(DomainError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_version_without_an_endpoint_is_not_servable_however_it_is_named() {
    let (world, admin) = llama().await;
    let name = model_name("llama");
    world
        .registry
        .set_alias(&admin, &name, &alias_name("canary"), version(3))
        .await
        .expect("set");

    for target in ["llama:3", "llama@canary", "llama@latest"] {
        let outcome = served(&world, target).await;
        assert!(
            matches!(&outcome, Err(DomainError::NotFound(m)) if m.contains("no endpoint")),
            "{target}: {outcome:?}"
        );
    }
    // It is still a version of the registry, only not one that can serve.
    world
        .registry
        .get_version(&admin_reader(), &name, version(3))
        .await
        .expect("found");
}

#[tokio::test]
async fn a_bare_name_follows_production_even_to_a_version_that_cannot_serve() {
    let (world, admin) = llama().await;
    world
        .registry
        .set_alias(
            &admin,
            &model_name("llama"),
            &alias_name("production"),
            version(3),
        )
        .await
        .expect("set");

    let outcome = served(&world, "llama").await;

    assert!(
        matches!(&outcome, Err(DomainError::NotFound(m)) if m.contains("no endpoint")),
        "production is not skipped for a servable version: {outcome:?}"
    );
}

#[tokio::test]
async fn a_version_gets_an_endpoint_and_can_serve() {
    let (world, admin) = llama().await;
    let endpoints = maas_domain::serving::EndpointList::shorthand(
        maas_domain::test_util::endpoint("http://v3:8000/v1"),
        maas_domain::serving::KeyChange::Keep,
    );
    let patch = VersionPatch {
        endpoints: Some(maas_domain::serving::EndpointsPatch::Replace(endpoints)),
        ..VersionPatch::default()
    };
    world
        .registry
        .update_version(&admin, &model_name("llama"), version(3), patch)
        .await
        .expect("updated");

    assert_eq!(served(&world, "llama:3").await, Ok(version(3)));
    assert_eq!(served(&world, "llama").await, Ok(version(3)));
}

#[tokio::test]
async fn latest_always_resolves_to_the_highest_version() {
    let (world, admin) = llama().await;
    let (name, latest) = (model_name("llama"), alias_name("latest"));
    assert_eq!(
        world
            .registry
            .resolve_alias(&admin_reader(), &name, &latest)
            .await
            .map(|a| a.split()),
        Ok(targets(&[(3, 1)]))
    );

    world
        .registry
        .delete_version(&admin, &name, version(3))
        .await
        .expect("deleted");

    assert_eq!(served(&world, "llama@latest").await, Ok(version(2)));
}

#[tokio::test]
async fn latest_is_reserved_and_can_be_neither_set_nor_deleted() {
    let (world, admin) = llama().await;
    let (name, latest) = (model_name("llama"), alias_name("latest"));

    let set = world
        .registry
        .set_alias(&admin, &name, &latest, version(1))
        .await;
    let deleted = world.registry.delete_alias(&admin, &name, &latest).await;

    for outcome in [set.map(drop), deleted] {
        assert!(
            matches!(&outcome, Err(DomainError::Validation(v)) if v.field == "alias"),
            "{outcome:?}"
        );
    }
    let store = world.registry_store.controls();
    assert_eq!(store.calls("set_alias") + store.calls("delete_alias"), 0);
}

#[tokio::test]
async fn an_alias_whose_version_was_deleted_resolves_to_not_found() {
    let (world, admin) = llama().await;
    let (name, canary) = (model_name("llama"), alias_name("canary"));
    world
        .registry
        .set_alias(&admin, &name, &canary, version(1))
        .await
        .expect("set");
    assert_eq!(served(&world, "llama@canary").await, Ok(version(1)));

    world
        .registry
        .delete_version(&admin, &name, version(1))
        .await
        .expect("deleted");

    assert_eq!(
        served(&world, "llama@canary").await,
        Err(DomainError::NotFound(
            "alias 'canary' of model 'llama' not found".into()
        ))
    );
}

#[tokio::test]
async fn the_servable_models_are_those_with_a_version_that_has_an_endpoint() {
    let (world, admin) = llama().await;
    world
        .registry
        .create_model(&admin, new_model("artifacts"))
        .await
        .expect("created");

    let servable = world
        .registry
        .list_servable_models(&admin_reader())
        .await
        .expect("listed");

    let names: Vec<(&str, Option<&str>)> = servable
        .iter()
        .map(|m| (m.name.as_str(), m.owner.as_deref()))
        .collect();
    assert_eq!(names, [("llama", Some("root"))]);
}
