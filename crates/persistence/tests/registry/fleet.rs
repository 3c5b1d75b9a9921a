//! Fleets of model servers: the served name of a version, and its endpoints with their
//! weights and credentials, as this build and builds before endpoints write them.

use maas_domain::model::{ModelVersion, NewVersion, VersionPatch};
use maas_domain::ports::RegistryRepository;
use maas_domain::serving::{
    EndpointList, EndpointWeight, EndpointsPatch, KeyChange, NewEndpoint, ServedModel,
};
use maas_domain::values::EndpointUrl;
use maas_persistence::PgRegistryRepository;
use maas_persistence::test_util::{
    model_name, new_model, new_version, servable_version, upstream_secret, version,
};

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
    assert!(cleared.supports_stream_usage, "by default");
    let refusing = repo
        .update_version(
            &name,
            version(1),
            VersionPatch {
                supports_stream_usage: Some(false),
                ..VersionPatch::default()
            },
        )
        .await
        .expect("changed");
    assert!(!refusing.supports_stream_usage);
    assert_eq!(
        repo.get_version(&name, version(1)).await.expect("read"),
        refusing
    );
}

fn url(raw: &str) -> EndpointUrl {
    EndpointUrl::parse(raw.to_owned()).expect("a URL")
}

fn endpoint(raw: &str, weight: i64, secret: Option<&str>) -> NewEndpoint {
    NewEndpoint {
        url: url(raw),
        weight: EndpointWeight::parse_as("weight", weight).expect("a weight"),
        upstream_api_key: secret.map_or(KeyChange::Keep, |s| KeyChange::Set(upstream_secret(s))),
    }
}

fn fleet(endpoints: Vec<NewEndpoint>) -> NewVersion {
    NewVersion {
        endpoints: EndpointList::parse(endpoints).expect("endpoints"),
        ..new_version("s3://b/fleet")
    }
}

/// The credentials of version `n` of `llama`, in endpoint order, as text.
async fn secrets(repo: &PgRegistryRepository, n: i64) -> Vec<Option<String>> {
    repo.upstream_secrets(&model_name("llama"), version(n))
        .await
        .expect("read")
        .into_iter()
        .map(|(_, s)| s.map(|s| s.expose().to_owned()))
        .collect()
}

fn shown(version: &ModelVersion) -> Vec<(String, u32, bool)> {
    version
        .endpoints
        .iter()
        .map(|e| {
            (
                e.url.as_str().to_owned(),
                e.weight.get(),
                e.has_upstream_api_key,
            )
        })
        .collect()
}

#[tokio::test]
async fn endpoints_are_stored_in_order_with_their_weights_and_sealed_credentials() {
    let (db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    let created = repo
        .create_version(
            &name,
            fleet(vec![
                endpoint("http://a:8000/v1", 3, Some("sk-a")),
                endpoint("http://b:8000/v1", 1, None),
                endpoint("http://c:8000/v1", 1000, Some("sk-c")),
            ]),
        )
        .await
        .expect("created");
    let expected = vec![
        ("http://a:8000/v1".to_owned(), 3, true),
        ("http://b:8000/v1".to_owned(), 1, false),
        ("http://c:8000/v1".to_owned(), 1000, true),
    ];
    assert_eq!(shown(&created), expected);
    let read = repo.get_version(&name, version(1)).await.expect("read");
    assert_eq!(read, created);
    assert_eq!(
        secrets(&repo, 1).await,
        [Some("sk-a".to_owned()), None, Some("sk-c".to_owned())]
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_versions WHERE endpoints::text LIKE '%sk-%' OR upstream_api_key LIKE '%sk-%'")
            .await,
        0,
        "sealed, never in plain text"
    );
    // The columns older builds read hold the first endpoint.
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_versions WHERE endpoint_url = 'http://a:8000/v1' AND upstream_api_key LIKE 'enc:v1:%'")
            .await,
        1
    );
    assert_eq!(
        repo.latest_servable_version(&name).await.expect("servable"),
        created
    );
}

#[tokio::test]
async fn a_new_list_keeps_the_credential_of_each_url_it_keeps_unless_told_otherwise() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    repo.create_version(
        &name,
        fleet(vec![
            endpoint("http://a:8000/v1", 1, Some("sk-a")),
            endpoint("http://b:8000/v1", 1, Some("sk-b")),
        ]),
    )
    .await
    .expect("created");
    let replace = |endpoints: Vec<NewEndpoint>| VersionPatch {
        endpoints: Some(EndpointsPatch::Replace(
            EndpointList::parse(endpoints).expect("endpoints"),
        )),
        ..VersionPatch::default()
    };

    let mut cleared_b = endpoint("http://b:8000/v1", 5, None);
    cleared_b.upstream_api_key = KeyChange::Clear;
    let changed = repo
        .update_version(
            &name,
            version(1),
            replace(vec![
                endpoint("http://new:8000/v1", 2, None),
                endpoint("http://a:8000/v1", 1, None),
                cleared_b,
            ]),
        )
        .await
        .expect("changed");
    assert_eq!(
        shown(&changed),
        [
            ("http://new:8000/v1".to_owned(), 2, false),
            ("http://a:8000/v1".to_owned(), 1, true),
            ("http://b:8000/v1".to_owned(), 5, false),
        ]
    );
    assert_eq!(
        secrets(&repo, 1).await,
        [None, Some("sk-a".to_owned()), None]
    );

    // `upstream_api_key` alone is the first endpoint's; the others keep theirs.
    let first = repo
        .update_version(
            &name,
            version(1),
            VersionPatch {
                endpoints: Some(EndpointsPatch::FirstKey(Some(upstream_secret("sk-new")))),
                ..VersionPatch::default()
            },
        )
        .await
        .expect("changed");
    assert!(first.has_upstream_api_key());
    assert_eq!(
        secrets(&repo, 1).await,
        [Some("sk-new".to_owned()), Some("sk-a".to_owned()), None]
    );
    // The shorthand keeps the first endpoint's credential, as endpoint_url always kept the
    // version's.
    repo.update_version(
        &name,
        version(1),
        VersionPatch {
            endpoints: Some(EndpointsPatch::Replace(EndpointList::shorthand(
                url("http://moved:8000/v1"),
                KeyChange::Keep,
            ))),
            ..VersionPatch::default()
        },
    )
    .await
    .expect("changed");
    assert_eq!(secrets(&repo, 1).await, [Some("sk-new".to_owned())]);
}

#[tokio::test]
async fn a_write_of_a_build_before_endpoints_changes_the_first_endpoint_only() {
    let (db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    repo.create_version(
        &name,
        fleet(vec![
            endpoint("http://a:8000/v1", 4, Some("sk-a")),
            endpoint("http://b:8000/v1", 1, Some("sk-b")),
        ]),
    )
    .await
    .expect("created");
    // What that build's PATCH of endpoint_url and its INSERT write.
    db.execute(
        "UPDATE model_versions SET endpoint_url = 'http://moved:8000/v1', updated_at = now()",
    )
    .await;
    db.execute(
        "INSERT INTO model_versions (model_id, version, source_uri, endpoint_url, upstream_api_key) \
         SELECT id, 2, 's3://old', 'http://old:8000/v1', 'sk-plain' FROM models",
    )
    .await;

    let moved = repo.get_version(&name, version(1)).await.expect("read");
    assert_eq!(
        shown(&moved),
        [
            ("http://moved:8000/v1".to_owned(), 4, true),
            ("http://b:8000/v1".to_owned(), 1, true),
        ]
    );
    assert_eq!(
        secrets(&repo, 1).await,
        [Some("sk-a".to_owned()), Some("sk-b".to_owned())]
    );
    let old = repo.get_version(&name, version(2)).await.expect("read");
    assert_eq!(shown(&old), [("http://old:8000/v1".to_owned(), 1, true)]);
    assert_eq!(secrets(&repo, 2).await, [Some("sk-plain".to_owned())]);
    assert_eq!(repo.plaintext_secrets().await.expect("counted"), 1);
    assert_eq!(
        repo.rotate_secrets().await.expect("rotated"),
        1,
        "the plain one"
    );
    // A new key: every endpoint's credential is sealed again under it.
    let rotating = PgRegistryRepository::new(db.pool()).with_secrets(
        maas_persistence::secrets::SecretsSettings {
            encryption_key: Some("ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=".to_owned()),
            previous_keys: vec!["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned()],
        }
        .keys()
        .expect("keys"),
    );
    assert_eq!(rotating.rotate_secrets().await.expect("rotated"), 3);
    assert_eq!(
        secrets(&rotating, 1).await,
        [Some("sk-a".to_owned()), Some("sk-b".to_owned())]
    );
    assert_eq!(secrets(&rotating, 2).await, [Some("sk-plain".to_owned())]);
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_versions WHERE endpoints::text LIKE '%sk-%' OR upstream_api_key LIKE '%sk-%'")
            .await,
        0
    );
}

#[tokio::test]
async fn the_migration_makes_each_endpoint_url_and_its_credential_one_endpoint() {
    let (db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    db.execute(include_str!(
        "../../../../migrations/2027-01-03-000000_fleet/down.sql"
    ))
    .await;
    db.execute(
        "INSERT INTO model_versions (model_id, version, source_uri, endpoint_url, upstream_api_key) \
         SELECT id, 1, 's3://1', 'http://a:8000/v1', 'sk-one' FROM models; \
         INSERT INTO model_versions (model_id, version, source_uri) SELECT id, 2, 's3://2' FROM models; \
         INSERT INTO model_versions (model_id, version, source_uri, upstream_api_key) \
         SELECT id, 3, 's3://3', 'sk-orphan' FROM models;",
    )
    .await;
    db.execute(include_str!(
        "../../../../migrations/2027-01-03-000000_fleet/up.sql"
    ))
    .await;

    let one = repo.get_version(&name, version(1)).await.expect("read");
    assert_eq!(shown(&one), [("http://a:8000/v1".to_owned(), 1, true)]);
    assert_eq!(secrets(&repo, 1).await, [Some("sk-one".to_owned())]);
    for n in [2, 3] {
        let none = repo.get_version(&name, version(n)).await.expect("read");
        assert!(none.endpoints.is_empty(), "{n}");
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_versions WHERE upstream_api_key IS NOT NULL")
            .await,
        1,
        "a credential without an endpoint had nowhere to go"
    );
    assert_eq!(
        repo.latest_servable_version(&name)
            .await
            .expect("servable")
            .version,
        version(1)
    );
}
