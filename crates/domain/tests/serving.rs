//! How a version is served: the model server's own name for the model, its endpoints and their
//! credentials, and what replicas of an older build read from the shared cache.

use maas_domain::DomainError;
use maas_domain::identity::Role;
use maas_domain::inference::Target;
use maas_domain::model::{ModelVersion, NewVersion, VersionPatch};
use maas_domain::ports::{Cache, CacheLookup, Field, Scope};
use maas_domain::serving::{Endpoint, EndpointList, EndpointWeight, EndpointsPatch, ServedModel};
use maas_domain::test_util::{
    InMemory, endpoint, endpoint_list, fleet_version, model_name, new_endpoint, new_model,
    new_version, servable_version, upstream_secret, version,
};

fn served(name: &str) -> ServedModel {
    ServedModel::parse(name).expect("a served name")
}

#[tokio::test]
async fn a_call_goes_out_under_the_served_name_which_follows_every_change() {
    let world = InMemory::new();
    let owner = world.actor("owner", Role::Member).await;
    let name = model_name("llama");
    world
        .registry
        .create_model(&owner, new_model("llama"))
        .await
        .expect("created");
    world
        .registry
        .create_version(
            &owner,
            &name,
            NewVersion {
                served_model: Some(served("llama3.1:8b")),
                ..servable_version("s3://b/1", "http://ollama:11434/v1")
            },
        )
        .await
        .expect("created");
    let target = Target::parse("llama").expect("a target");
    let routed = || async {
        world
            .registry
            .resolve_target(&owner, &target)
            .await
            .expect("routed")
    };
    assert_eq!(routed().await.served_name(), "llama3.1:8b");

    for (change, expected) in [
        (
            Some(served("meta-llama/Llama-3.1-8B")),
            "meta-llama/Llama-3.1-8B",
        ),
        (None, "llama"),
    ] {
        let patch = VersionPatch {
            served_model: Some(change),
            ..VersionPatch::default()
        };
        world
            .registry
            .update_version(&owner, &name, version(1), patch)
            .await
            .expect("changed");
        assert_eq!(
            routed().await.served_name(),
            expected,
            "at once, cached or not"
        );
    }
}

#[tokio::test]
async fn a_version_cached_by_a_build_without_served_names_is_read_again_from_the_store() {
    let world = InMemory::new();
    let owner = world.actor("owner", Role::Member).await;
    let name = model_name("llama");
    world
        .registry
        .create_model(&owner, new_model("llama"))
        .await
        .expect("created");
    let created = world
        .registry
        .create_version(
            &owner,
            &name,
            NewVersion {
                served_model: Some(served("meta-llama/Llama-3.1-8B-Instruct")),
                ..servable_version("s3://b/1", "http://vllm:8000/v1")
            },
        )
        .await
        .expect("created");
    // What a replica of a build before served names caches for it: no `endpoints`,
    // `served_model` or `supports_stream_usage`.
    let older = serde_json::json!({
        "id": created.id,
        "model": "llama",
        "version": 1,
        "source_uri": "s3://b/1",
        "endpoint_url": "http://vllm:8000/v1",
        "framework": null,
        "description": null,
        "metadata": {},
        "created_at": created.created_at,
        "updated_at": created.updated_at,
    });
    assert!(
        serde_json::from_value::<ModelVersion>(older.clone()).is_err(),
        "it does not decode"
    );
    let scope = Scope::Model(name.clone());
    let field = Field::Version(version(1));
    let cache: &dyn Cache = world.model_cache.as_ref();
    let CacheLookup::Miss(token) = cache.lookup(&scope, &field).await else {
        panic!("nothing cached yet");
    };
    cache
        .fill(
            &scope,
            &field,
            token,
            serde_json::to_vec(&older).expect("bytes"),
        )
        .await;

    let routed = world
        .registry
        .resolve_target(&owner, &Target::parse("llama:1").expect("a target"))
        .await
        .expect("routed");
    assert_eq!(
        routed.served_name(),
        "meta-llama/Llama-3.1-8B-Instruct",
        "from the store, not the older entry's \"llama\""
    );
    let again = world
        .registry
        .resolve_target(&owner, &Target::parse("llama:1").expect("a target"))
        .await
        .expect("routed");
    assert_eq!(again.served_name(), "meta-llama/Llama-3.1-8B-Instruct");
}

#[test]
fn an_endpoint_list_is_bounded_and_names_the_endpoint_at_fault() {
    let many = (0..33)
        .map(|i| new_endpoint(&format!("http://m{i}:8000/v1"), 1, None))
        .collect();
    assert_eq!(
        EndpointList::parse(many).expect_err("33").field,
        "endpoints"
    );
    let thirty_two = (0..32)
        .map(|i| new_endpoint(&format!("http://m{i}:8000/v1"), 1000, None))
        .collect();
    assert!(EndpointList::parse(thirty_two).is_ok());
    let twice = vec![
        new_endpoint("http://a:8000/v1", 1, None),
        new_endpoint("http://b:8000/v1", 1, None),
        new_endpoint("http://a:8000/v1", 2, None),
    ];
    assert_eq!(
        EndpointList::parse(twice).expect_err("twice").field,
        "endpoints[2].url"
    );
    for bad in [0, -1, 1001, i64::MAX] {
        assert_eq!(
            EndpointWeight::parse_as("endpoints[1].weight", bad)
                .expect_err("out of range")
                .field,
            "endpoints[1].weight"
        );
    }
}

#[tokio::test]
async fn without_secret_storage_an_endpoints_credential_is_refused_naming_that_endpoint() {
    let world = InMemory::new();
    let registry = world.registry.clone().with_secret_storage(false);
    let owner = world.actor("owner", Role::Member).await;
    registry
        .create_model(&owner, new_model("m"))
        .await
        .expect("created");
    let keyed_second = fleet_version(
        "s3://b/1",
        vec![
            new_endpoint("http://a:8000/v1", 1, None),
            new_endpoint("http://b:8000/v1", 1, Some("sk-b")),
        ],
    );
    let err = registry
        .create_version(&owner, &model_name("m"), keyed_second)
        .await
        .expect_err("no key to seal it with");
    assert!(
        matches!(&err, DomainError::Validation(v) if v.field == "endpoints[1].upstream_api_key"),
        "{err:?}"
    );
}

#[tokio::test]
async fn each_endpoints_credential_is_fetched_once_per_change_and_never_when_there_is_none() {
    let world = InMemory::new();
    let owner = world.actor("owner", Role::Member).await;
    let name = model_name("m");
    world
        .registry
        .create_model(&owner, new_model("m"))
        .await
        .expect("created");
    let plain = world
        .registry
        .create_version(
            &owner,
            &name,
            fleet_version(
                "s3://b/1",
                vec![
                    new_endpoint("http://a:8000/v1", 3, None),
                    new_endpoint("http://b:8000/v1", 1, None),
                ],
            ),
        )
        .await
        .expect("created");
    let secrets = world.registry.upstream_secrets(&plain).await.expect("read");
    assert!(secrets.iter().all(Option::is_none), "{secrets:?}");
    let fetches = || world.registry_store.controls().calls("upstream_secrets");
    assert_eq!(fetches(), 0, "nothing to fetch");

    let keyed = world
        .registry
        .update_version(
            &owner,
            &name,
            version(1),
            VersionPatch {
                endpoints: Some(EndpointsPatch::Replace(endpoint_list(vec![
                    new_endpoint("http://a:8000/v1", 3, None),
                    new_endpoint("http://b:8000/v1", 1, Some("sk-b")),
                ]))),
                ..VersionPatch::default()
            },
        )
        .await
        .expect("changed");
    for _ in 0..3 {
        let secrets = world.registry.upstream_secrets(&keyed).await.expect("read");
        assert_eq!(&secrets[..], [None, Some(upstream_secret("sk-b"))]);
    }
    assert_eq!(fetches(), 1);
}

#[tokio::test]
async fn a_credential_alone_needs_an_endpoint_to_go_to() {
    let world = InMemory::new();
    let owner = world.actor("owner", Role::Member).await;
    let name = model_name("m");
    world
        .registry
        .create_model(&owner, new_model("m"))
        .await
        .expect("created");
    world
        .registry
        .create_version(&owner, &name, new_version("s3://b/1"))
        .await
        .expect("created");
    let err = world
        .registry
        .update_version(
            &owner,
            &name,
            version(1),
            VersionPatch {
                endpoints: Some(EndpointsPatch::FirstKey(Some(upstream_secret("sk")))),
                ..VersionPatch::default()
            },
        )
        .await
        .expect_err("nowhere to send it");
    assert!(
        matches!(&err, DomainError::Validation(v) if v.field == "upstream_api_key"),
        "{err:?}"
    );
}

#[test]
fn a_cached_version_shows_older_builds_its_first_endpoint_and_reads_theirs_as_one() {
    let now = chrono::Utc::now();
    let version = ModelVersion {
        id: uuid::Uuid::new_v4(),
        model: model_name("m"),
        version: version(1),
        source_uri: maas_domain::values::SourceUri::parse("s3://b".into()).expect("uri"),
        endpoints: vec![
            Endpoint {
                url: endpoint("http://a:8000/v1"),
                weight: EndpointWeight::parse_as("weight", 5).expect("weight"),
                has_upstream_api_key: true,
            },
            Endpoint {
                url: endpoint("http://b:8000/v1"),
                weight: EndpointWeight::default(),
                has_upstream_api_key: false,
            },
        ],
        served_model: None,
        supports_stream_usage: true,
        framework: None,
        description: None,
        metadata: maas_domain::values::Metadata::default(),
        created_at: now,
        updated_at: now,
    };
    let cached = serde_json::to_value(&version).expect("serialised");
    assert_eq!(cached["endpoint_url"], "http://a:8000/v1");
    assert_eq!(cached["has_upstream_api_key"], true);
    let back: ModelVersion = serde_json::from_value(cached.clone()).expect("read back");
    assert_eq!(back, version);

    for field in ["endpoints", "served_model", "supports_stream_usage"] {
        let mut older = cached.clone();
        older.as_object_mut().expect("object").remove(field);
        assert!(
            serde_json::from_value::<ModelVersion>(older).is_err(),
            "an entry without {field} (an older build's) is read again from the store"
        );
    }
}

#[tokio::test]
async fn whether_a_versions_servers_are_asked_for_stream_usage_follows_its_changes() {
    let world = InMemory::new();
    let owner = world.actor("owner", Role::Member).await;
    let name = model_name("m");
    world
        .registry
        .create_model(&owner, new_model("m"))
        .await
        .expect("created");
    let created = world
        .registry
        .create_version(
            &owner,
            &name,
            NewVersion {
                supports_stream_usage: false,
                ..servable_version("s3://b/1", "http://tgi:8080/v1")
            },
        )
        .await
        .expect("created");
    assert!(!created.supports_stream_usage);
    let target = Target::parse("m").expect("a target");
    let routed = world
        .registry
        .resolve_target(&owner, &target)
        .await
        .expect("routed");
    assert!(!routed.supports_stream_usage);
    world
        .registry
        .update_version(
            &owner,
            &name,
            version(1),
            VersionPatch {
                supports_stream_usage: Some(true),
                ..VersionPatch::default()
            },
        )
        .await
        .expect("changed");
    let routed = world
        .registry
        .resolve_target(&owner, &target)
        .await
        .expect("routed");
    assert!(routed.supports_stream_usage, "at once");
}
