//! Upstream credentials: never part of the cached version, fetched for a call once per version
//! and change, and refused when the store has no key to encrypt them with.

use maas_domain::DomainError;
use maas_domain::identity::Role;
use maas_domain::inference::Target;
use maas_domain::model::{NewVersion, VersionPatch};
use maas_domain::serving::EndpointsPatch;
use maas_domain::test_util::{
    InMemory, keyed_version, model_name, new_model, servable_version, upstream_secret, version,
};

fn keyed(secret: &str) -> NewVersion {
    keyed_version("s3://b/1", "http://m:8000/v1", secret)
}

fn first_key(secret: Option<&str>) -> VersionPatch {
    VersionPatch {
        endpoints: Some(EndpointsPatch::FirstKey(secret.map(upstream_secret))),
        ..VersionPatch::default()
    }
}

#[tokio::test]
async fn a_calls_credential_is_fetched_once_per_version_change_and_follows_changes() {
    let world = InMemory::new();
    let owner = world.actor("owner", Role::Member).await;
    let name = model_name("keyed");
    world
        .registry
        .create_model(&owner, new_model("keyed"))
        .await
        .expect("created");
    let created = world
        .registry
        .create_version(&owner, &name, keyed("sk-one"))
        .await
        .expect("created");
    assert!(created.has_upstream_api_key());
    let target = Target::parse("keyed").expect("a target");
    for _ in 0..3 {
        let routed = world
            .registry
            .resolve_target(&owner, &target)
            .await
            .expect("routed");
        let secrets = world
            .registry
            .upstream_secrets(&routed)
            .await
            .expect("read");
        assert_eq!(&secrets[..], [Some(upstream_secret("sk-one"))]);
    }
    let fetches = || world.registry_store.controls().calls("upstream_secrets");
    assert_eq!(fetches(), 1, "once, then from this process's memory");

    world
        .registry
        .update_version(&owner, &name, version(1), first_key(Some("sk-two")))
        .await
        .expect("changed");
    let routed = world
        .registry
        .resolve_target(&owner, &target)
        .await
        .expect("routed");
    let secrets = world
        .registry
        .upstream_secrets(&routed)
        .await
        .expect("read");
    assert_eq!(
        &secrets[..],
        [Some(upstream_secret("sk-two"))],
        "the change, at once"
    );
    assert_eq!(fetches(), 2);
}

#[tokio::test]
async fn without_secret_storage_a_credential_is_refused_naming_the_setting() {
    let world = InMemory::new();
    let registry = world.registry.clone().with_secret_storage(false);
    let owner = world.actor("owner", Role::Member).await;
    let name = model_name("keyed");
    registry
        .create_model(&owner, new_model("keyed"))
        .await
        .expect("created");
    let err = registry
        .create_version(&owner, &name, keyed("sk-one"))
        .await
        .expect_err("no key to store it with");
    assert!(
        matches!(&err, DomainError::Validation(v) if v.field == "upstream_api_key" && v.message.contains("secrets.encryption_key")),
        "{err:?}"
    );
    registry
        .create_version(
            &owner,
            &name,
            servable_version("s3://b/1", "http://m:8000/v1"),
        )
        .await
        .expect("without a credential, fine");
    assert!(
        registry
            .update_version(&owner, &name, version(1), first_key(Some("sk")))
            .await
            .is_err()
    );
    registry
        .update_version(&owner, &name, version(1), first_key(None))
        .await
        .expect("clearing needs no key");
    assert_eq!(world.registry_store.controls().calls("create_version"), 1);
}
