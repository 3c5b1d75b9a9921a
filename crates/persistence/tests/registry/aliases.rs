//! Aliases: set, move, resolve, delete, and their fate when their version goes. Splits between
//! several versions are in `alias_splits`.

use maas_domain::RepoError;
use maas_domain::ports::RegistryRepository;
use maas_persistence::PgRegistryRepository;
use maas_persistence::test_util::{alias_name, model_name, new_model, new_version, version};

use crate::{repository, split};

/// A model `llama` with versions 1 to `count`.
pub(crate) async fn llama_with_versions(repo: &PgRegistryRepository, count: usize) {
    repo.create_model(new_model("llama"))
        .await
        .expect("created");
    for i in 0..count {
        repo.create_version(&model_name("llama"), new_version(&format!("s3://b/{i}")))
            .await
            .expect("created");
    }
}

#[tokio::test]
async fn an_alias_resolves_to_the_version_it_was_set_to() {
    let (_db, repo) = repository().await;
    llama_with_versions(&repo, 2).await;
    let (name, prod) = (model_name("llama"), alias_name("prod"));

    let alias = repo
        .set_alias(&name, &prod, &version(1).into())
        .await
        .expect("set");
    assert_eq!(
        (alias.model.as_str(), alias.alias.as_str(), &alias.versions),
        ("llama", "prod", &split(&[(1, 1)]))
    );
    let resolved = repo.resolve_alias(&name, &prod).await.expect("resolved");
    assert_eq!(resolved.versions.len(), 1);
    assert_eq!(
        resolved.versions[0].version,
        repo.get_version(&name, version(1)).await.expect("found")
    );
    assert_eq!(resolved.updated_at, Some(alias.updated_at));
}

#[tokio::test]
async fn setting_an_alias_again_moves_it() {
    let (db, repo) = repository().await;
    llama_with_versions(&repo, 2).await;
    let (name, prod) = (model_name("llama"), alias_name("prod"));

    let first = repo
        .set_alias(&name, &prod, &version(1).into())
        .await
        .expect("set");
    let moved = repo
        .set_alias(&name, &prod, &version(2).into())
        .await
        .expect("moved");
    assert_eq!(moved.versions, split(&[(2, 1)]));
    assert!(moved.updated_at > first.updated_at);
    assert_eq!(
        repo.resolve_alias(&name, &prod)
            .await
            .expect("resolved")
            .split(),
        split(&[(2, 1)]).targets()
    );
    assert_eq!(db.scalar("SELECT count(*) FROM model_aliases").await, 1);
}

#[tokio::test]
async fn aliases_are_per_model() {
    let (_db, repo) = repository().await;
    llama_with_versions(&repo, 2).await;
    repo.create_model(new_model("other"))
        .await
        .expect("created");
    repo.create_version(&model_name("other"), new_version("s3://o"))
        .await
        .expect("created");
    let prod = alias_name("prod");
    repo.set_alias(&model_name("llama"), &prod, &version(2).into())
        .await
        .expect("set");
    repo.set_alias(&model_name("other"), &prod, &version(1).into())
        .await
        .expect("set");

    let llama = repo
        .resolve_alias(&model_name("llama"), &prod)
        .await
        .expect("resolved");
    let llama = &llama.versions[0].version;
    assert_eq!((llama.model.as_str(), llama.version), ("llama", version(2)));
    let other = repo
        .resolve_alias(&model_name("other"), &prod)
        .await
        .expect("resolved");
    let other = &other.versions[0].version;
    assert_eq!(
        (other.model.as_str(), other.source_uri.as_str()),
        ("other", "s3://o")
    );
}

#[tokio::test]
async fn setting_an_alias_to_a_missing_version_or_model_is_not_found() {
    let (_db, repo) = repository().await;
    llama_with_versions(&repo, 1).await;
    let prod = alias_name("prod");

    let err = repo
        .set_alias(&model_name("llama"), &prod, &version(7).into())
        .await
        .expect_err("no version 7");
    assert_eq!(
        err,
        RepoError::NotFound("version 7 of model 'llama' not found".into())
    );
    let err = repo
        .set_alias(&model_name("ghost"), &prod, &version(1).into())
        .await
        .expect_err("no model");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn resolving_a_missing_alias_is_not_found_naming_it() {
    let (_db, repo) = repository().await;
    llama_with_versions(&repo, 1).await;
    let err = repo
        .resolve_alias(&model_name("llama"), &alias_name("prod"))
        .await
        .expect_err("no alias");
    assert_eq!(
        err,
        RepoError::NotFound("alias 'prod' of model 'llama' not found".into())
    );
    let err = repo
        .resolve_alias(&model_name("ghost"), &alias_name("prod"))
        .await
        .expect_err("no model");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn deleting_an_alias_removes_only_it() {
    let (_db, repo) = repository().await;
    llama_with_versions(&repo, 1).await;
    let name = model_name("llama");
    for alias in ["prod", "staging"] {
        repo.set_alias(&name, &alias_name(alias), &version(1).into())
            .await
            .expect("set");
    }

    repo.delete_alias(&name, &alias_name("prod"))
        .await
        .expect("deleted");
    assert!(matches!(
        repo.resolve_alias(&name, &alias_name("prod")).await,
        Err(RepoError::NotFound(_))
    ));
    repo.resolve_alias(&name, &alias_name("staging"))
        .await
        .expect("still there");
    repo.get_version(&name, version(1))
        .await
        .expect("the version stays");
}

#[tokio::test]
async fn deleting_a_missing_alias_is_not_found() {
    let (_db, repo) = repository().await;
    llama_with_versions(&repo, 1).await;
    let err = repo
        .delete_alias(&model_name("llama"), &alias_name("prod"))
        .await
        .expect_err("no alias");
    assert_eq!(
        err,
        RepoError::NotFound("alias 'prod' of model 'llama' not found".into())
    );
    let err = repo
        .delete_alias(&model_name("ghost"), &alias_name("prod"))
        .await
        .expect_err("no model");
    assert_eq!(err, RepoError::NotFound("model 'ghost' not found".into()));
}

#[tokio::test]
async fn deleting_a_version_deletes_the_aliases_on_it_and_no_others() {
    let (_db, repo) = repository().await;
    llama_with_versions(&repo, 2).await;
    let name = model_name("llama");
    repo.set_alias(&name, &alias_name("old"), &version(1).into())
        .await
        .expect("set");
    repo.set_alias(&name, &alias_name("new"), &version(2).into())
        .await
        .expect("set");

    repo.delete_version(&name, version(1))
        .await
        .expect("deleted");

    let err = repo
        .resolve_alias(&name, &alias_name("old"))
        .await
        .expect_err("went with its version");
    assert_eq!(
        err,
        RepoError::NotFound("alias 'old' of model 'llama' not found".into())
    );
    assert_eq!(
        repo.resolve_alias(&name, &alias_name("new"))
            .await
            .expect("kept")
            .split(),
        split(&[(2, 1)]).targets()
    );
}
