//! What inference routing reads from the registry: upstream credentials of versions, the latest
//! version with an endpoint, and the models that can serve calls.

use maas_domain::RepoError;
use maas_domain::identity::Role;
use maas_domain::model::{ModelFilter, NewVersion, VersionPatch};
use maas_domain::ports::{IdentityRepository, RegistryRepository};
use maas_domain::serving::{EndpointList, EndpointsPatch, KeyChange};
use maas_domain::values::EndpointUrl;
use maas_persistence::PgIdentityRepository;
use maas_persistence::test_util::{
    model_name, new_model, new_user, new_version, owned_model, servable_version, upstream_secret,
    version,
};

use crate::repository;

/// The credential of version `n` of model `llama`, as the routing path reads it.
async fn secret(
    repo: &maas_persistence::PgRegistryRepository,
    n: i64,
) -> Option<maas_domain::inference::UpstreamSecret> {
    let secrets = repo
        .upstream_secrets(&model_name("llama"), version(n))
        .await
        .expect("read");
    secrets.into_iter().next().and_then(|(_, s)| s)
}

fn with_secret(secret: &str) -> NewVersion {
    let url = EndpointUrl::parse("http://vllm:8000/v1".into()).expect("url");
    NewVersion {
        endpoints: EndpointList::shorthand(url, KeyChange::Set(upstream_secret(secret))),
        ..new_version("s3://b/llama")
    }
}

fn first_key(secret: Option<&str>) -> VersionPatch {
    VersionPatch {
        endpoints: Some(EndpointsPatch::FirstKey(secret.map(upstream_secret))),
        ..VersionPatch::default()
    }
}

#[tokio::test]
async fn the_upstream_api_key_is_stored_sealed_and_read_back_apart_from_the_version() {
    let (db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");

    let created = repo
        .create_version(&name, with_secret("sk-upstream-1"))
        .await
        .expect("created");
    assert!(created.has_upstream_api_key());
    let read = repo.get_version(&name, version(1)).await.expect("found");
    assert!(read.has_upstream_api_key());
    assert_eq!(
        secret(&repo, 1).await,
        Some(upstream_secret("sk-upstream-1")),
        "verbatim: the model server needs it so"
    );
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM model_versions WHERE upstream_api_key LIKE '%sk-upstream-1%'"
        )
        .await,
        0,
        "sealed, never in plain text"
    );

    let plain = repo
        .create_version(&name, new_version("s3://b/2"))
        .await
        .expect("created");
    assert!(!plain.has_upstream_api_key());
    assert_eq!(secret(&repo, 2).await, None);
}

#[tokio::test]
async fn a_version_patch_replaces_keeps_or_clears_the_upstream_api_key() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    repo.create_version(&name, with_secret("sk-old"))
        .await
        .expect("created");

    let replaced = repo
        .update_version(&name, version(1), first_key(Some("sk-new")))
        .await
        .expect("updated");
    assert!(replaced.has_upstream_api_key());
    assert_eq!(secret(&repo, 1).await, Some(upstream_secret("sk-new")));

    let kept = repo
        .update_version(
            &name,
            version(1),
            VersionPatch {
                endpoints: Some(EndpointsPatch::Replace(EndpointList::shorthand(
                    EndpointUrl::parse("http://tgi:8080/v1".into()).expect("url"),
                    KeyChange::Keep,
                ))),
                ..VersionPatch::default()
            },
        )
        .await
        .expect("updated");
    assert!(kept.has_upstream_api_key());
    assert_eq!(
        secret(&repo, 1).await,
        Some(upstream_secret("sk-new")),
        "a patch that does not name it keeps it"
    );

    let cleared = repo
        .update_version(&name, version(1), first_key(None))
        .await
        .expect("updated");
    assert!(!cleared.has_upstream_api_key());
    assert_eq!(secret(&repo, 1).await, None);
}

#[tokio::test]
async fn a_stored_upstream_api_key_that_breaks_the_rule_is_an_internal_error_naming_the_column() {
    let (db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    repo.create_version(&name, with_secret("sk-fine"))
        .await
        .expect("created");
    db.execute("UPDATE model_versions SET upstream_api_key = 'sk with spaces'")
        .await;

    let err = repo
        .upstream_secrets(&name, version(1))
        .await
        .expect_err("corrupt");
    let RepoError::Internal(message) = &err else {
        panic!("expected an internal error, got {err:?}");
    };
    assert!(
        message.contains("model_versions.upstream_api_key"),
        "{message}"
    );
    assert!(
        !message.contains("sk with spaces"),
        "the message never shows the secret: {message}"
    );
}

#[tokio::test]
async fn the_latest_servable_version_skips_versions_without_an_endpoint() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    repo.create_version(&name, servable_version("s3://b/1", "http://a:8000/v1"))
        .await
        .expect("created");
    repo.create_version(&name, servable_version("s3://b/2", "http://b:8000/v1"))
        .await
        .expect("created");
    repo.create_version(&name, new_version("s3://b/3"))
        .await
        .expect("created");

    let servable = repo.latest_servable_version(&name).await.expect("found");
    assert_eq!(servable.version, version(2));
    assert_eq!(
        servable.endpoint_url().map(EndpointUrl::as_str),
        Some("http://b:8000/v1")
    );
    assert_eq!(
        repo.latest_version(&name).await.expect("found").version,
        version(3),
        "the latest version has no endpoint"
    );

    repo.update_version(
        &name,
        version(3),
        VersionPatch {
            endpoints: Some(EndpointsPatch::Replace(EndpointList::shorthand(
                EndpointUrl::parse("http://c:8000/v1".into()).expect("url"),
                KeyChange::Keep,
            ))),
            ..VersionPatch::default()
        },
    )
    .await
    .expect("updated");
    assert_eq!(
        repo.latest_servable_version(&name)
            .await
            .expect("found")
            .version,
        version(3),
        "an endpoint set later makes it servable"
    );
}

#[tokio::test]
async fn a_model_without_a_servable_version_and_a_missing_model_are_told_apart() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");

    let err = repo
        .latest_servable_version(&name)
        .await
        .expect_err("no versions at all");
    let none = RepoError::NotFound("model 'llama' has no version with an endpoint".into());
    assert_eq!(err, none);

    repo.create_version(&name, new_version("s3://b/1"))
        .await
        .expect("created");
    let err = repo
        .latest_servable_version(&name)
        .await
        .expect_err("only a version without an endpoint");
    assert_eq!(err, none);

    let err = repo
        .latest_servable_version(&model_name("ghost"))
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn servable_models_are_those_with_an_endpoint_listed_by_name_with_their_owner() {
    let (db, repo) = repository().await;
    let identity = PgIdentityRepository::new(db.pool());
    let alice = identity
        .create_user(new_user("alice", Role::Member))
        .await
        .expect("user created");

    // Byte order: '-' sorts before '2', whatever the server's locale says.
    let owned = repo
        .create_model(owned_model("llama2", alice.id))
        .await
        .expect("created");
    let unowned = repo
        .create_model(new_model("llama-3"))
        .await
        .expect("created");
    repo.create_model(new_model("artifact-only"))
        .await
        .expect("created");
    repo.create_model(new_model("empty"))
        .await
        .expect("created");

    repo.create_version(
        &model_name("llama2"),
        servable_version("s3://b/1", "http://a:8000/v1"),
    )
    .await
    .expect("created");
    for i in 0..2 {
        repo.create_version(
            &model_name("llama-3"),
            servable_version(&format!("s3://c/{i}"), "http://b:8000/v1"),
        )
        .await
        .expect("created");
    }
    repo.create_version(&model_name("llama-3"), new_version("s3://c/x"))
        .await
        .expect("created");
    repo.create_version(&model_name("artifact-only"), new_version("s3://d/1"))
        .await
        .expect("created");

    let listed = repo
        .list_servable_models(&ModelFilter::default())
        .await
        .expect("listed");
    let summary: Vec<(&str, Option<&str>)> = listed
        .iter()
        .map(|m| (m.name.as_str(), m.owner.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [("llama-3", None), ("llama2", Some("alice"))],
        "once each, however many servable versions"
    );
    assert_eq!(listed[0].created_at, unowned.created_at);
    assert_eq!(listed[1].created_at, owned.created_at);
}

#[tokio::test]
async fn no_servable_models_is_an_empty_list() {
    let (_db, repo) = repository().await;
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    assert!(
        repo.list_servable_models(&ModelFilter::default())
            .await
            .expect("listed")
            .is_empty()
    );
}
