//! Models: create, read, list (keyset pages, filters), patch, delete.

use std::collections::BTreeSet;

use maas_domain::RepoError;
use maas_domain::model::{Model, ModelFilter, ModelPatch};
use maas_domain::ports::RegistryRepository;
use maas_domain::values::{Description, Metadata, ModelName, PageLimit, Tags};
use maas_persistence::PgRegistryRepository;
use maas_persistence::test_util::{
    alias_name, described_model, model_name, new_model, new_version, version,
};
use serde_json::json;

use crate::repository;

fn limit(n: i64) -> PageLimit {
    PageLimit::new(n).expect("valid limit")
}

fn names(models: &[Model]) -> Vec<&str> {
    models.iter().map(|m| m.name.as_str()).collect()
}

async fn list(repo: &PgRegistryRepository, filter: ModelFilter) -> Vec<String> {
    repo.list_models(&filter, None, limit(200))
        .await
        .expect("listed")
        .into_iter()
        .map(|m| m.name.into_inner())
        .collect()
}

fn text(q: &str) -> ModelFilter {
    ModelFilter {
        q: Some(q.to_owned()),
        ..ModelFilter::default()
    }
}

#[tokio::test]
async fn a_created_model_is_returned_as_stored_with_no_versions() {
    let (_db, repo) = repository().await;
    let mut new = described_model("llama-3", "An LLM", &["chat", "gpu"]);
    new.metadata = Metadata::parse(json!({"params": "8b"})).expect("object");

    let created = repo.create_model(new).await.expect("created");
    assert_eq!(created.name.as_str(), "llama-3");
    assert_eq!(
        created.description.as_ref().map(Description::as_str),
        Some("An LLM")
    );
    assert_eq!(created.tags.as_slice(), ["chat", "gpu"]);
    assert_eq!(created.metadata.as_value(), &json!({"params": "8b"}));
    assert_eq!(created.latest_version, None);
    assert_eq!(created.created_at, created.updated_at);

    let fetched = repo.get_model(&created.name).await.expect("found");
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn creating_the_same_model_twice_is_a_conflict() {
    let (_db, repo) = repository().await;
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    let err = repo
        .create_model(new_model("llama"))
        .await
        .expect_err("duplicate");
    assert_eq!(
        err,
        RepoError::Conflict("model 'llama' already exists".into())
    );
}

#[tokio::test]
async fn getting_a_missing_model_is_not_found_naming_it() {
    let (_db, repo) = repository().await;
    let err = repo
        .get_model(&model_name("ghost"))
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn models_are_listed_by_name_strictly_after_the_cursor_with_one_extra_row() {
    let (_db, repo) = repository().await;
    for name in ["delta", "alpha", "charlie", "echo", "bravo"] {
        repo.create_model(new_model(name)).await.expect("created");
    }
    let none = ModelFilter::default();

    let first = repo
        .list_models(&none, None, limit(2))
        .await
        .expect("listed");
    assert_eq!(
        names(&first),
        ["alpha", "bravo", "charlie"],
        "limit + 1 rows"
    );

    let after = model_name("bravo");
    let next = repo
        .list_models(&none, Some(&after), limit(2))
        .await
        .expect("listed");
    assert_eq!(names(&next), ["charlie", "delta", "echo"]);

    let last = repo
        .list_models(&none, Some(&model_name("delta")), limit(2))
        .await
        .expect("listed");
    assert_eq!(
        names(&last),
        ["echo"],
        "fewer than limit + 1: no further page"
    );
}

#[tokio::test]
async fn names_are_ordered_bytewise_whatever_the_server_locale() {
    let (_db, repo) = repository().await;
    for name in ["a-b", "a.b", "a_b", "ab", "a0"] {
        repo.create_model(new_model(name)).await.expect("created");
    }
    let mut expected = vec!["a-b", "a.b", "a_b", "ab", "a0"];
    expected.sort_unstable();
    assert_eq!(list(&repo, ModelFilter::default()).await, expected);
}

#[tokio::test]
async fn pages_stay_consistent_while_models_are_inserted_between_them() {
    let (_db, repo) = repository().await;
    let originals: BTreeSet<String> = (0..20).map(|i| format!("m{:02}", i * 5)).collect();
    for name in &originals {
        repo.create_model(new_model(name)).await.expect("created");
    }

    let none = ModelFilter::default();
    let page_size = 3;
    let mut seen = Vec::new();
    let mut cursor: Option<ModelName> = None;
    let mut inserted = 0;
    loop {
        let mut rows = repo
            .list_models(&none, cursor.as_ref(), limit(page_size))
            .await
            .expect("listed");
        let more = rows.len() > usize::try_from(page_size).expect("small");
        rows.truncate(usize::try_from(page_size).expect("small"));
        seen.extend(rows.iter().map(|m| m.name.as_str().to_owned()));
        if !more {
            break;
        }
        cursor = rows.last().map(|m| m.name.clone());
        // Insert around the cursor: before it (already passed), and just after it.
        let at = cursor
            .as_ref()
            .expect("a full page has a last row")
            .as_str();
        for name in [format!("{at}a"), format!("a{inserted:02}")] {
            repo.create_model(new_model(&name)).await.expect("created");
            inserted += 1;
        }
    }

    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no model twice: {seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "in name order");
    for name in &originals {
        assert!(seen.contains(name), "{name} was skipped: {seen:?}");
    }
}

#[tokio::test]
async fn the_tag_filter_keeps_only_models_carrying_the_tag() {
    let (_db, repo) = repository().await;
    repo.create_model(described_model("a", "", &["chat", "gpu"]))
        .await
        .expect("created");
    repo.create_model(described_model("b", "", &["vision"]))
        .await
        .expect("created");
    repo.create_model(described_model("c", "", &["chat"]))
        .await
        .expect("created");

    let chat = ModelFilter {
        tag: Some("chat".into()),
        ..ModelFilter::default()
    };
    assert_eq!(list(&repo, chat).await, ["a", "c"]);
    let absent = ModelFilter {
        tag: Some("cha".into()),
        ..ModelFilter::default()
    };
    assert!(list(&repo, absent).await.is_empty(), "tags match whole");
}

#[tokio::test]
async fn the_text_filter_matches_name_or_description_ignoring_case() {
    let (_db, repo) = repository().await;
    repo.create_model(described_model("llama-3", "Meta's model", &[]))
        .await
        .expect("created");
    repo.create_model(described_model("mistral", "Small but LLAMA-like", &[]))
        .await
        .expect("created");
    repo.create_model(new_model("phi")).await.expect("created");

    assert_eq!(list(&repo, text("LLaMa")).await, ["llama-3", "mistral"]);
    assert_eq!(list(&repo, text("meta")).await, ["llama-3"]);
    assert_eq!(list(&repo, text("phi")).await, ["phi"]);
    assert!(list(&repo, text("gpt")).await.is_empty());
}

#[tokio::test]
async fn wildcards_in_the_text_filter_are_taken_literally() {
    let (_db, repo) = repository().await;
    repo.create_model(described_model("discounted", "50% off", &[]))
        .await
        .expect("created");
    repo.create_model(described_model("plain", "fifty percent", &[]))
        .await
        .expect("created");
    repo.create_model(described_model("under_score", r"back\slash", &[]))
        .await
        .expect("created");
    repo.create_model(new_model("no-description"))
        .await
        .expect("created");

    assert_eq!(list(&repo, text("50%")).await, ["discounted"]);
    assert_eq!(list(&repo, text("%")).await, ["discounted"]);
    assert_eq!(list(&repo, text("_")).await, ["under_score"]);
    assert_eq!(list(&repo, text(r"\")).await, ["under_score"]);
    assert_eq!(list(&repo, text(r"k\s")).await, ["under_score"]);
}

#[tokio::test]
async fn filters_and_the_cursor_combine() {
    let (_db, repo) = repository().await;
    for (name, description, tags) in [
        ("a-chat", "llm", vec!["chat"]),
        ("b-chat", "other", vec!["chat"]),
        ("c-chat", "llm", vec!["chat"]),
        ("d-vision", "llm", vec!["vision"]),
    ] {
        repo.create_model(described_model(name, description, &tags))
            .await
            .expect("created");
    }
    let filter = ModelFilter {
        tag: Some("chat".into()),
        q: Some("LLM".into()),
        ..ModelFilter::default()
    };
    assert_eq!(list(&repo, filter.clone()).await, ["a-chat", "c-chat"]);
    let after = model_name("a-chat");
    let rest = repo
        .list_models(&filter, Some(&after), limit(10))
        .await
        .expect("listed");
    assert_eq!(names(&rest), ["c-chat"]);
}

#[tokio::test]
async fn a_patch_changes_only_what_it_names_and_bumps_updated_at() {
    let (_db, repo) = repository().await;
    let mut new = described_model("llama", "first", &["a"]);
    new.metadata = Metadata::parse(json!({"k": 1})).expect("object");
    let created = repo.create_model(new).await.expect("created");

    let retagged = repo
        .update_model(
            &created.name,
            ModelPatch {
                tags: Some(Tags::parse(vec!["b".into(), "c".into()]).expect("tags")),
                ..ModelPatch::default()
            },
        )
        .await
        .expect("updated");
    assert_eq!(retagged.tags.as_slice(), ["b", "c"]);
    assert_eq!(retagged.description, created.description, "kept");
    assert_eq!(retagged.metadata, created.metadata, "kept");
    assert!(retagged.updated_at > created.updated_at);
    assert_eq!(retagged.created_at, created.created_at);

    let cleared = repo
        .update_model(
            &created.name,
            ModelPatch {
                description: Some(None),
                metadata: Some(Metadata::parse(json!({"k": 2})).expect("object")),
                ..ModelPatch::default()
            },
        )
        .await
        .expect("updated");
    assert_eq!(cleared.description, None);
    assert_eq!(cleared.metadata.as_value(), &json!({"k": 2}));
    assert_eq!(cleared.tags, retagged.tags, "kept");

    assert_eq!(repo.get_model(&created.name).await.expect("found"), cleared);
}

#[tokio::test]
async fn an_empty_patch_changes_nothing_but_updated_at() {
    let (_db, repo) = repository().await;
    let created = repo
        .create_model(described_model("llama", "text", &["a"]))
        .await
        .expect("created");
    let touched = repo
        .update_model(&created.name, ModelPatch::default())
        .await
        .expect("updated");
    assert!(touched.updated_at > created.updated_at);
    assert_eq!(
        Model {
            updated_at: created.updated_at,
            ..touched
        },
        created
    );
}

#[tokio::test]
async fn updating_a_missing_model_is_not_found() {
    let (_db, repo) = repository().await;
    let err = repo
        .update_model(&model_name("ghost"), ModelPatch::default())
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn deleting_a_model_deletes_its_versions_and_aliases() {
    let (db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    repo.create_model(new_model("other"))
        .await
        .expect("created");
    for _ in 0..2 {
        repo.create_version(&name, new_version("s3://b/m"))
            .await
            .expect("version");
    }
    repo.create_version(&model_name("other"), new_version("s3://b/o"))
        .await
        .expect("version");
    repo.set_alias(&name, &alias_name("prod"), &version(1).into())
        .await
        .expect("alias");

    repo.delete_model(&name).await.expect("deleted");

    let err = repo.get_model(&name).await.expect_err("gone");
    assert!(matches!(err, RepoError::NotFound(_)));
    assert_eq!(db.scalar("SELECT count(*) FROM models").await, 1);
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_versions").await,
        1,
        "only other's"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM model_aliases").await, 0);
}

#[tokio::test]
async fn deleting_a_missing_model_is_not_found() {
    let (_db, repo) = repository().await;
    let err = repo
        .delete_model(&model_name("ghost"))
        .await
        .expect_err("missing");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn a_name_can_be_reused_after_deletion_and_starts_again_at_version_one() {
    let (_db, repo) = repository().await;
    let name = model_name("llama");
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    repo.create_version(&name, new_version("s3://b/m"))
        .await
        .expect("version");
    repo.delete_model(&name).await.expect("deleted");

    repo.create_model(new_model("llama"))
        .await
        .expect("created again");
    let v = repo
        .create_version(&name, new_version("s3://b/m"))
        .await
        .expect("version");
    assert_eq!(v.version, version(1));
}

#[tokio::test]
async fn a_row_that_breaks_a_domain_rule_is_an_internal_error_not_a_panic() {
    let (db, repo) = repository().await;
    repo.create_model(new_model("fine")).await.expect("created");
    repo.create_model(new_model("broken"))
        .await
        .expect("created");
    db.execute("UPDATE models SET metadata = '[1, 2]' WHERE name = 'broken'")
        .await;

    let err = repo
        .get_model(&model_name("broken"))
        .await
        .expect_err("corrupt");
    assert!(
        matches!(&err, RepoError::Internal(m) if m.contains("models.metadata")),
        "{err:?}"
    );
    let err = repo
        .list_models(&ModelFilter::default(), None, limit(10))
        .await
        .expect_err("the page holds a corrupt row");
    assert!(matches!(err, RepoError::Internal(_)), "{err:?}");
    repo.get_model(&model_name("fine"))
        .await
        .expect("other rows still read");
}
