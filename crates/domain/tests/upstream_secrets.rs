//! Upstream credentials: never part of the cached version, fetched for a call once per version
//! and change, and refused when the store has no key to encrypt them with.

use maas_domain::DomainError;
use maas_domain::identity::Role;
use maas_domain::inference::Target;
use maas_domain::model::{NewVersion, VersionPatch};
use maas_domain::ports::Scope;
use maas_domain::serving::{EndpointList, EndpointsPatch};
use maas_domain::test_util::{
    InMemory, keyed_version, model_name, new_endpoint, new_model, servable_version,
    upstream_secret, version,
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

/// Version 1 of `fleet` with these endpoints: (URL, credential).
fn endpoints(list: &[(&str, Option<&str>)]) -> EndpointsPatch {
    let written = list
        .iter()
        .map(|(url, secret)| new_endpoint(url, 1, *secret))
        .collect();
    EndpointsPatch::Replace(EndpointList::parse(written).expect("endpoints"))
}

#[tokio::test]
async fn an_older_copy_of_a_version_never_sends_a_credential_to_a_url_it_was_not_stored_for() {
    let world = InMemory::new();
    let owner = world.actor("owner", Role::Member).await;
    let name = model_name("fleet");
    world
        .registry
        .create_model(&owner, new_model("fleet"))
        .await
        .expect("created");
    world
        .registry
        .create_version(
            &owner,
            &name,
            servable_version("s3://b/1", "http://old:8000/v1"),
        )
        .await
        .expect("created");
    let patch = |list| VersionPatch {
        endpoints: Some(endpoints(list)),
        ..VersionPatch::default()
    };
    world
        .registry
        .update_version(
            &owner,
            &name,
            version(1),
            patch(&[
                ("http://a:8000/v1", None),
                ("http://b:8000/v1", Some("sk-b")),
            ]),
        )
        .await
        .expect("changed");
    let target = Target::parse("fleet").expect("a target");
    let copy = world
        .registry
        .resolve_target(&owner, &target)
        .await
        .expect("routed");

    // Then the endpoints change under the copy: b's credential now sits first, and a has one.
    world
        .registry
        .update_version(
            &owner,
            &name,
            version(1),
            patch(&[
                ("http://b:8000/v1", Some("sk-b2")),
                ("http://a:8000/v1", Some("sk-a")),
            ]),
        )
        .await
        .expect("changed");
    let secrets = world
        .registry
        .upstream_secrets(&copy)
        .await
        .expect("every endpoint of the copy that has a credential has one stored for its URL");
    assert_eq!(
        secrets.iter().cloned().collect::<Vec<_>>(),
        [
            Some(upstream_secret("sk-a")),
            Some(upstream_secret("sk-b2"))
        ],
        "each URL of the copy gets the credential stored for that URL now, by URL not place \
         (by place, a would get b's)"
    );

    // And when the copy's URL has no credential stored any more, the call is refused, not sent
    // without it.
    world
        .registry
        .update_version(
            &owner,
            &name,
            version(1),
            patch(&[("http://a:8000/v1", Some("sk-a"))]),
        )
        .await
        .expect("changed");
    let invalidations = world
        .model_cache
        .invalidations_of(&Scope::Model(name.clone()));
    let mut stale = copy.clone();
    stale.updated_at -= chrono::Duration::seconds(1);
    let err = world
        .registry
        .upstream_secrets(&stale)
        .await
        .expect_err("b has no credential stored now");
    assert!(matches!(err, DomainError::Unavailable(_)), "{err:?}");
    assert_eq!(
        world
            .model_cache
            .invalidations_of(&Scope::Model(name.clone())),
        invalidations + 1,
        "the stale copy is dropped, so the retry routes by the store's version"
    );
}
