//! Upstream credentials at rest in Postgres: sealed under the current key, opened under it or a
//! previous one, and rotated.

use maas_domain::RepoError;
use maas_domain::model::NewVersion;
use maas_domain::ports::RegistryRepository;
use maas_domain::serving::{EndpointList, KeyChange};
use maas_domain::values::EndpointUrl;
use maas_persistence::PgRegistryRepository;
use maas_persistence::secrets::{SecretKeys, SecretsSettings};
use maas_persistence::test_util::{
    TestDatabase, model_name, new_model, new_version, upstream_secret, version,
};

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn keys(current: Option<&str>, previous: &[&str]) -> SecretKeys {
    SecretsSettings {
        encryption_key: current.map(str::to_owned),
        previous_keys: previous.iter().map(|k| (*k).to_owned()).collect(),
    }
    .keys()
    .expect("valid keys")
}

fn repo(db: &TestDatabase, keys: SecretKeys) -> PgRegistryRepository {
    PgRegistryRepository::new(db.pool()).with_secrets(keys)
}

async fn stored_column(db: &TestDatabase) -> i64 {
    db.scalar("SELECT count(*) FROM model_versions WHERE upstream_api_key LIKE '%sk-%'")
        .await
}

fn keyed(source_uri: &str, secret: &str) -> NewVersion {
    let url = EndpointUrl::parse("http://m:8000/v1".into()).expect("url");
    NewVersion {
        endpoints: EndpointList::shorthand(url, KeyChange::Set(upstream_secret(secret))),
        ..new_version(source_uri)
    }
}

async fn keyed_model(repo: &PgRegistryRepository, secret: &str) {
    repo.create_model(new_model("keyed"))
        .await
        .expect("created");
    let new = keyed("s3://b/1", secret);
    let created = repo
        .create_version(&model_name("keyed"), new)
        .await
        .expect("created");
    assert!(created.has_upstream_api_key());
}

/// The first endpoint's credential of version 1 of `model`.
async fn first_secret(
    repo: &PgRegistryRepository,
    model: &str,
) -> Result<Option<String>, RepoError> {
    repo.upstream_secrets(&model_name(model), version(1))
        .await
        .map(|s| {
            s.into_iter()
                .next()
                .and_then(|(_, s)| s)
                .map(|s| s.expose().to_owned())
        })
}

async fn secret_of(repo: &PgRegistryRepository) -> Result<Option<String>, RepoError> {
    first_secret(repo, "keyed").await
}

#[tokio::test]
async fn a_credential_is_stored_sealed_and_read_back_only_with_its_key() {
    let db = TestDatabase::new().await;
    let with_a = repo(&db, keys(Some(KEY_A), &[]));
    keyed_model(&with_a, "sk-sealed").await;
    assert_eq!(stored_column(&db).await, 0, "no plain text in the column");
    assert_eq!(
        secret_of(&with_a).await.expect("read").as_deref(),
        Some("sk-sealed")
    );
    assert!(matches!(
        secret_of(&repo(&db, keys(Some(KEY_B), &[]))).await,
        Err(RepoError::Internal(_))
    ));
    // Without a key, nothing can be stored.
    let keyless = repo(&db, SecretKeys::default());
    let new = keyed("s3://b/2", "sk-x");
    assert!(
        keyless
            .create_version(&model_name("keyed"), new)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn rotation_rewrites_old_keys_and_plain_text_under_the_current_key() {
    let db = TestDatabase::new().await;
    keyed_model(&repo(&db, keys(Some(KEY_A), &[])), "sk-under-a").await;
    // A credential from before encryption, written as it was then (into the columns, as a
    // build before endpoints writes: the first endpoint).
    db.execute("INSERT INTO models (name) VALUES ('legacy')")
        .await;
    db.execute(
        "INSERT INTO model_versions (model_id, version, source_uri, endpoint_url, upstream_api_key) \
         SELECT id, 1, 's3://b/legacy', 'http://m:8000/v1', 'sk-plain-legacy' FROM models \
         WHERE name = 'legacy'",
    )
    .await;
    let rotating = repo(&db, keys(Some(KEY_B), &[KEY_A]));
    assert_eq!(rotating.plaintext_secrets().await.expect("counted"), 1);
    assert_eq!(
        first_secret(&rotating, "legacy")
            .await
            .expect("read")
            .as_deref(),
        Some("sk-plain-legacy")
    );

    assert_eq!(rotating.rotate_secrets().await.expect("rotated"), 2);
    assert_eq!(rotating.plaintext_secrets().await.expect("counted"), 0);
    assert_eq!(stored_column(&db).await, 0);
    assert_eq!(
        rotating.rotate_secrets().await.expect("rotated"),
        0,
        "nothing left to do"
    );
    // The old key can go now.
    let only_b = repo(&db, keys(Some(KEY_B), &[]));
    assert_eq!(
        secret_of(&only_b).await.expect("read").as_deref(),
        Some("sk-under-a")
    );
    assert_eq!(
        first_secret(&only_b, "legacy")
            .await
            .expect("read")
            .as_deref(),
        Some("sk-plain-legacy")
    );
    assert!(
        repo(&db, SecretKeys::default())
            .rotate_secrets()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_credential_for_a_version_with_no_endpoint_is_invalid_naming_the_field() {
    let db = TestDatabase::new().await;
    let repo = repo(&db, keys(Some(KEY_A), &[]));
    repo.create_model(new_model("bare")).await.expect("created");
    repo.create_version(&model_name("bare"), new_version("s3://b/1"))
        .await
        .expect("created, with no endpoint");
    let patch = maas_domain::model::VersionPatch {
        endpoints: Some(maas_domain::serving::EndpointsPatch::FirstKey(Some(
            upstream_secret("sk-nowhere"),
        ))),
        ..maas_domain::model::VersionPatch::default()
    };
    let err = repo
        .update_version(&model_name("bare"), version(1), patch)
        .await
        .expect_err("nowhere to send it");
    assert!(
        matches!(&err, RepoError::Invalid(v) if v.field == "upstream_api_key"),
        "a 422 naming the field, not a conflict: {err:?}"
    );
}
