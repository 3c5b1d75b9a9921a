//! Versions: gapless numbering (also under concurrency), listing, patching, deleting.

use futures_util::future::join_all;
use maas_domain::RepoError;
use maas_domain::model::{NewVersion, VersionPatch};
use maas_domain::ports::RegistryRepository;
use maas_domain::serving::{EndpointList, EndpointsPatch, KeyChange};
use maas_domain::values::{
    Description, EndpointUrl, Framework, Metadata, PageLimit, SourceUri, VersionNumber,
};
use maas_persistence::test_util::{model_name, new_model, new_version, version};
use maas_persistence::{DatabaseSettings, PgRegistryRepository, connect};
use serde_json::json;

use crate::repository;

fn numbers(versions: &[maas_domain::model::ModelVersion]) -> Vec<i32> {
    versions.iter().map(|v| v.version.get()).collect()
}

fn limit(n: i64) -> PageLimit {
    PageLimit::new(n).expect("valid limit")
}

fn full_version() -> NewVersion {
    NewVersion {
        source_uri: SourceUri::parse("s3://bucket/llama.bin".into()).expect("uri"),
        endpoints: EndpointList::shorthand(
            EndpointUrl::parse("http://vllm:8000/v1".into()).expect("url"),
            KeyChange::Keep,
        ),
        served_model: None,
        supports_stream_usage: true,
        framework: Some(Framework::parse("pytorch".into()).expect("framework")),
        description: Some(Description::parse("fine-tuned".into()).expect("text")),
        metadata: Metadata::parse(json!({"quant": "q4"})).expect("object"),
    }
}

#[tokio::test]
async fn versions_are_numbered_from_one_and_the_model_tracks_the_latest() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");

    let first = repo
        .create_version(&name, full_version())
        .await
        .expect("created");
    assert_eq!(first.version, version(1));
    assert_eq!(first.model, name);
    assert_eq!(first.source_uri.as_str(), "s3://bucket/llama.bin");
    assert_eq!(
        first.endpoint_url().map(EndpointUrl::as_str),
        Some("http://vllm:8000/v1")
    );
    assert_eq!(
        first.framework.as_ref().map(Framework::as_str),
        Some("pytorch")
    );
    assert_eq!(
        first.description.as_ref().map(Description::as_str),
        Some("fine-tuned")
    );
    assert_eq!(first.metadata.as_value(), &json!({"quant": "q4"}));

    let second = repo
        .create_version(&name, new_version("s3://b/2"))
        .await
        .expect("created");
    assert_eq!(second.version, version(2));
    assert_eq!(second.endpoint_url(), None);
    assert_eq!(
        repo.get_model(&name).await.expect("found").latest_version,
        Some(version(2))
    );
    assert_eq!(
        repo.get_version(&name, version(1)).await.expect("found"),
        first
    );
    assert_eq!(repo.latest_version(&name).await.expect("found"), second);
}

#[tokio::test]
async fn numbering_is_per_model() {
    let (_db, repo) = repository().await;
    for name in ["a", "b"] {
        repo.create_model(new_model(name)).await.expect("created");
    }
    repo.create_version(&model_name("a"), new_version("s3://a"))
        .await
        .expect("created");
    let b1 = repo
        .create_version(&model_name("b"), new_version("s3://b"))
        .await
        .expect("created");
    assert_eq!(b1.version, version(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_creates_all_succeed_with_numbers_one_to_a_hundred() {
    let (db, _) = repository().await;
    let settings = DatabaseSettings {
        pool_max_size: 10,
        connect_timeout_seconds: 60,
        ..db.settings()
    };
    let repo = PgRegistryRepository::new(connect(&settings).await.expect("pool"));
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");

    let creates = (0..100).map(|i| {
        let repo = repo.clone();
        let name = name.clone();
        tokio::spawn(async move {
            repo.create_version(&name, new_version(&format!("s3://b/{i}")))
                .await
        })
    });
    let mut allocated: Vec<i32> = join_all(creates)
        .await
        .into_iter()
        .map(|joined| {
            joined
                .expect("task ran")
                .expect("every create succeeds")
                .version
                .get()
        })
        .collect();
    allocated.sort_unstable();
    assert_eq!(allocated, (1..=100).collect::<Vec<_>>());
    assert_eq!(
        repo.get_model(&name).await.expect("found").latest_version,
        Some(version(100))
    );
    assert_eq!(db.scalar("SELECT count(*) FROM model_versions").await, 100);
}

#[tokio::test]
async fn creating_a_version_of_a_missing_model_is_not_found() {
    let (_db, repo) = repository().await;
    let err = repo
        .create_version(&model_name("ghost"), new_version("s3://x"))
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn versions_are_listed_newest_first_strictly_below_the_cursor() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    for i in 0..5 {
        repo.create_version(&name, new_version(&format!("s3://b/{i}")))
            .await
            .expect("created");
    }

    let first = repo
        .list_versions(&name, None, limit(2))
        .await
        .expect("listed");
    assert_eq!(numbers(&first), [5, 4, 3], "limit + 1 rows");
    let next = repo
        .list_versions(&name, Some(version(4)), limit(2))
        .await
        .expect("listed");
    assert_eq!(numbers(&next), [3, 2, 1]);
    let last = repo
        .list_versions(&name, Some(version(2)), limit(2))
        .await
        .expect("listed");
    assert_eq!(numbers(&last), [1]);
}

#[tokio::test]
async fn listing_versions_tells_an_empty_model_from_a_missing_one() {
    let (_db, repo) = repository().await;
    repo.create_model(new_model("empty"))
        .await
        .expect("created");
    let listed = repo
        .list_versions(&model_name("empty"), None, limit(10))
        .await
        .expect("listed");
    assert!(listed.is_empty());

    let err = repo
        .list_versions(&model_name("ghost"), None, limit(10))
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn a_missing_version_and_a_missing_model_are_told_apart() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");

    let err = repo
        .get_version(&name, version(3))
        .await
        .expect_err("missing");
    assert_eq!(
        err,
        RepoError::NotFound("version 3 of model 'llama' not found".into())
    );
    let err = repo
        .get_version(&model_name("ghost"), version(3))
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));

    let err = repo.latest_version(&name).await.expect_err("no versions");
    assert_eq!(
        err,
        RepoError::NotFound("model 'llama' has no versions".into())
    );
    let err = repo
        .latest_version(&model_name("ghost"))
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn a_version_patch_changes_only_what_it_names_and_bumps_updated_at() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    let created = repo
        .create_version(&name, full_version())
        .await
        .expect("created");

    let moved = repo
        .update_version(
            &name,
            created.version,
            VersionPatch {
                endpoints: Some(EndpointsPatch::Replace(EndpointList::shorthand(
                    EndpointUrl::parse("https://other:9000".into()).expect("url"),
                    KeyChange::Keep,
                ))),
                framework: Some(None),
                ..VersionPatch::default()
            },
        )
        .await
        .expect("updated");
    assert_eq!(
        moved.endpoint_url().map(EndpointUrl::as_str),
        Some("https://other:9000")
    );
    assert_eq!(moved.framework, None, "cleared");
    assert_eq!(moved.description, created.description, "kept");
    assert_eq!(moved.metadata, created.metadata, "kept");
    assert_eq!(moved.source_uri, created.source_uri, "immutable");
    assert!(moved.updated_at > created.updated_at);

    let emptied = repo
        .update_version(
            &name,
            created.version,
            VersionPatch {
                endpoints: Some(EndpointsPatch::Replace(EndpointList::none())),
                description: Some(None),
                metadata: Some(Metadata::default()),
                ..VersionPatch::default()
            },
        )
        .await
        .expect("updated");
    assert_eq!(
        (emptied.endpoint_url().cloned(), emptied.description.clone()),
        (None, None)
    );
    assert_eq!(emptied.metadata, Metadata::default());

    let touched = repo
        .update_version(&name, created.version, VersionPatch::default())
        .await
        .expect("an empty patch is fine");
    assert!(touched.updated_at > emptied.updated_at);
    assert_eq!(
        repo.get_version(&name, created.version)
            .await
            .expect("found"),
        touched
    );
}

#[tokio::test]
async fn updating_a_missing_version_is_not_found() {
    let (_db, repo) = repository().await;
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    let err = repo
        .update_version(&model_name("llama"), version(1), VersionPatch::default())
        .await
        .expect_err("missing");
    assert_eq!(
        err,
        RepoError::NotFound("version 1 of model 'llama' not found".into())
    );
    let err = repo
        .update_version(&model_name("ghost"), version(1), VersionPatch::default())
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn deleting_versions_moves_latest_down_and_numbers_are_never_reused() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    for i in 0..3 {
        repo.create_version(&name, new_version(&format!("s3://b/{i}")))
            .await
            .expect("created");
    }
    let latest = |repo: &PgRegistryRepository| {
        let repo = repo.clone();
        let name = name.clone();
        async move {
            repo.get_model(&name)
                .await
                .expect("found")
                .latest_version
                .map(VersionNumber::get)
        }
    };

    repo.delete_version(&name, version(2))
        .await
        .expect("deleted");
    assert_eq!(
        latest(&repo).await,
        Some(3),
        "a middle version leaves latest alone"
    );
    repo.delete_version(&name, version(3))
        .await
        .expect("deleted");
    assert_eq!(
        latest(&repo).await,
        Some(1),
        "latest falls to the highest left"
    );
    assert_eq!(
        repo.latest_version(&name).await.expect("found").version,
        version(1)
    );

    let next = repo
        .create_version(&name, new_version("s3://b/next"))
        .await
        .expect("created");
    assert_eq!(next.version, version(4), "2 and 3 are not handed out again");

    repo.delete_version(&name, version(1))
        .await
        .expect("deleted");
    repo.delete_version(&name, version(4))
        .await
        .expect("deleted");
    assert_eq!(latest(&repo).await, None, "no versions left");
    let after_all = repo
        .create_version(&name, new_version("s3://b/again"))
        .await
        .expect("created");
    assert_eq!(after_all.version, version(5));
}

#[tokio::test]
async fn deleting_a_missing_version_is_not_found() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    repo.create_version(&name, new_version("s3://b/1"))
        .await
        .expect("created");
    repo.delete_version(&name, version(1))
        .await
        .expect("deleted");

    let err = repo
        .delete_version(&name, version(1))
        .await
        .expect_err("already gone");
    assert_eq!(
        err,
        RepoError::NotFound("version 1 of model 'llama' not found".into())
    );
    let err = repo
        .delete_version(&model_name("ghost"), version(1))
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn a_create_that_fails_after_allocating_leaves_no_gap() {
    let (db, repo) = repository().await;
    db.execute(
        r"CREATE FUNCTION refuse_version() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
            IF NEW.source_uri = 's3://refused' THEN RAISE EXCEPTION 'refused by the test'; END IF;
            RETURN NEW;
          END $$;
          CREATE TRIGGER refuse_version BEFORE INSERT ON model_versions
            FOR EACH ROW EXECUTE FUNCTION refuse_version();",
    )
    .await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    repo.create_version(&name, new_version("s3://ok/1"))
        .await
        .expect("created");

    let err = repo
        .create_version(&name, new_version("s3://refused"))
        .await
        .expect_err("the trigger refuses it");
    assert!(matches!(err, RepoError::Internal(_)), "{err:?}");
    assert_eq!(
        repo.get_model(&name).await.expect("found").latest_version,
        Some(version(1)),
        "the allocation was rolled back with the insert"
    );

    let next = repo
        .create_version(&name, new_version("s3://ok/2"))
        .await
        .expect("created");
    assert_eq!(next.version, version(2));
}
