//! Fleets of model servers: the served name of a version.

use maas_domain::model::{NewVersion, VersionPatch};
use maas_domain::ports::RegistryRepository;
use maas_domain::serving::ServedModel;
use maas_persistence::test_util::{model_name, new_model, servable_version, version};

use crate::repository;

fn served(name: &str) -> ServedModel {
    ServedModel::parse(name).expect("a served name")
}

fn servable() -> NewVersion {
    servable_version("s3://b/1", "http://vllm:8000/v1")
}

#[tokio::test]
async fn a_served_name_is_stored_changed_and_cleared() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    let created = repo
        .create_version(
            &name,
            NewVersion {
                served_model: Some(served("Org/Llama 3 \"8B\" é")),
                ..servable()
            },
        )
        .await
        .expect("created");
    assert_eq!(created.served_name(), "Org/Llama 3 \"8B\" é");
    assert_eq!(
        repo.get_version(&name, version(1)).await.expect("read"),
        created
    );
    assert_eq!(
        repo.latest_servable_version(&name).await.expect("read"),
        created
    );

    let changed = repo
        .update_version(
            &name,
            version(1),
            VersionPatch {
                served_model: Some(Some(served("llama3.1:8b"))),
                ..VersionPatch::default()
            },
        )
        .await
        .expect("changed");
    assert_eq!(changed.served_name(), "llama3.1:8b");
    let cleared = repo
        .update_version(
            &name,
            version(1),
            VersionPatch {
                served_model: Some(None),
                ..VersionPatch::default()
            },
        )
        .await
        .expect("cleared");
    assert_eq!(cleared.served_model, None);
    assert_eq!(cleared.served_name(), "llama");
}
