//! How a version is served: the model server's own name for the model, and what replicas of an
//! older build read from the shared cache.

use maas_domain::identity::Role;
use maas_domain::inference::Target;
use maas_domain::model::{ModelVersion, NewVersion, VersionPatch};
use maas_domain::serving::ServedModel;
use maas_domain::test_util::{InMemory, model_name, new_model, servable_version, version};

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

#[test]
fn a_version_cached_by_a_build_without_served_names_reads_as_served_under_its_own_name() {
    let cached = serde_json::json!({
        "id": "6f0c1c5e-9a3c-4b89-a2b5-1d1a34c5d8e1",
        "model": "llama",
        "version": 1,
        "source_uri": "s3://b/1",
        "endpoint_url": "http://vllm:8000/v1",
        "framework": null,
        "description": null,
        "metadata": {},
        "created_at": "2026-12-01T00:00:00Z",
        "updated_at": "2026-12-01T00:00:00Z",
    });
    let version: ModelVersion = serde_json::from_value(cached).expect("an older entry reads");
    assert_eq!(version.served_model, None);
    assert_eq!(version.served_name(), "llama");
}
