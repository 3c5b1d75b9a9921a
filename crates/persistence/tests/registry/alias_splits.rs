//! Aliases that split calls between versions: the whole split written or nothing, read back in
//! version order with its weights, versions leaving it when deleted (the alias with its last
//! one), the primary version kept for replicas of older builds, and the migration of the
//! aliases that existed before splits.

use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::MigrationHarness;
use futures_util::future::join_all;
use maas_domain::RepoError;
use maas_domain::ports::RegistryRepository;
use maas_persistence::test_util::{TestDatabase, alias_name, model_name, version};
use maas_persistence::{MIGRATIONS, PgRegistryRepository, run_migrations};

use crate::aliases::llama_with_versions;
use crate::{repository, split};

/// The primary version of alias `alias` of `llama` as stored for older builds (0 for none).
async fn primary(db: &TestDatabase, alias: &str) -> i64 {
    db.scalar(&format!(
        "SELECT COALESCE(max(v.version), 0)::int8 FROM model_aliases a \
         LEFT JOIN model_versions v ON v.id = a.version_id WHERE a.alias = '{alias}'"
    ))
    .await
}

async fn split_of(repo: &PgRegistryRepository, alias: &str) -> Result<Vec<(i32, u16)>, RepoError> {
    let resolved = repo
        .resolve_alias(&model_name("llama"), &alias_name(alias))
        .await?;
    Ok(resolved
        .versions
        .iter()
        .map(|v| (v.version.version.get(), v.weight.get()))
        .collect())
}

async fn set(repo: &PgRegistryRepository, alias: &str, pairs: &[(i64, i64)]) {
    repo.set_alias(&model_name("llama"), &alias_name(alias), &split(pairs))
        .await
        .expect("set");
}

#[tokio::test]
async fn a_split_resolves_to_its_versions_with_their_weights_in_version_order() {
    let (db, repo) = repository().await;
    llama_with_versions(&repo, 3).await;

    let alias = repo
        .set_alias(
            &model_name("llama"),
            &alias_name("prod"),
            &split(&[(3, 10), (1, 90)]),
        )
        .await
        .expect("set");

    assert_eq!(alias.versions, split(&[(1, 90), (3, 10)]));
    assert_eq!(split_of(&repo, "prod").await, Ok(vec![(1, 90), (3, 10)]));
    let resolved = repo
        .resolve_alias(&model_name("llama"), &alias_name("prod"))
        .await
        .expect("resolved");
    assert_eq!(resolved.versions[1].version.source_uri.as_str(), "s3://b/2");
    assert_eq!(resolved.updated_at, Some(alias.updated_at));
    assert_eq!(primary(&db, "prod").await, 1);
}

#[tokio::test]
async fn setting_a_split_again_replaces_it_whole() {
    let (db, repo) = repository().await;
    llama_with_versions(&repo, 3).await;
    set(&repo, "prod", &[(1, 50), (2, 50)]).await;

    set(&repo, "prod", &[(2, 10), (3, 90)]).await;

    assert_eq!(split_of(&repo, "prod").await, Ok(vec![(2, 10), (3, 90)]));
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_alias_versions").await,
        2
    );
    assert_eq!(primary(&db, "prod").await, 3);
}

#[tokio::test]
async fn a_split_naming_a_missing_version_changes_nothing() {
    let (db, repo) = repository().await;
    llama_with_versions(&repo, 2).await;
    set(&repo, "prod", &[(1, 1)]).await;

    let err = repo
        .set_alias(
            &model_name("llama"),
            &alias_name("prod"),
            &split(&[(2, 50), (9, 25), (7, 25)]),
        )
        .await
        .expect_err("no version 7 or 9");

    assert_eq!(
        err,
        RepoError::NotFound("version 7 of model 'llama' not found".into())
    );
    assert_eq!(split_of(&repo, "prod").await, Ok(vec![(1, 1)]));
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_alias_versions").await,
        1
    );
    let err = repo
        .set_alias(&model_name("llama"), &alias_name("new"), &split(&[(9, 1)]))
        .await
        .expect_err("no version 9");
    assert!(matches!(err, RepoError::NotFound(_)));
    assert_eq!(db.scalar("SELECT count(*) FROM model_aliases").await, 1);
}

#[tokio::test]
async fn a_deleted_version_leaves_its_splits_and_the_alias_goes_with_its_last_version() {
    let (db, repo) = repository().await;
    llama_with_versions(&repo, 3).await;
    set(&repo, "prod", &[(1, 80), (2, 10), (3, 10)]).await;
    set(&repo, "canary", &[(3, 1)]).await;
    let llama = model_name("llama");

    repo.delete_version(&llama, version(1))
        .await
        .expect("deleted");
    // The others keep their weights (so their shares grow in proportion); the primary moves
    // to the heaviest left, the lowest of a tie.
    assert_eq!(split_of(&repo, "prod").await, Ok(vec![(2, 10), (3, 10)]));
    assert_eq!(primary(&db, "prod").await, 2);

    repo.delete_version(&llama, version(3))
        .await
        .expect("deleted");
    assert_eq!(split_of(&repo, "prod").await, Ok(vec![(2, 10)]));
    assert_eq!(
        split_of(&repo, "canary").await,
        Err(RepoError::NotFound(
            "alias 'canary' of model 'llama' not found".into()
        ))
    );

    repo.delete_version(&llama, version(2))
        .await
        .expect("deleted");
    assert!(matches!(
        split_of(&repo, "prod").await,
        Err(RepoError::NotFound(_))
    ));
    assert_eq!(db.scalar("SELECT count(*) FROM model_aliases").await, 0);
}

#[tokio::test]
async fn deleting_a_model_takes_its_split_aliases_and_no_others() {
    let (db, repo) = repository().await;
    llama_with_versions(&repo, 3).await;
    set(&repo, "prod", &[(1, 1), (2, 1), (3, 1)]).await;
    set(&repo, "canary", &[(2, 1), (3, 5)]).await;
    repo.create_model(maas_persistence::test_util::new_model("other"))
        .await
        .expect("created");
    repo.create_version(
        &model_name("other"),
        maas_persistence::test_util::new_version("s3://o"),
    )
    .await
    .expect("created");
    repo.set_alias(&model_name("other"), &alias_name("prod"), &split(&[(1, 3)]))
        .await
        .expect("set");

    repo.delete_model(&model_name("llama"))
        .await
        .expect("deleted");

    assert_eq!(db.scalar("SELECT count(*) FROM model_aliases").await, 1);
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_alias_versions").await,
        1
    );
}

#[tokio::test]
async fn concurrent_writes_of_one_alias_leave_one_whole_split() {
    let (_db, repo) = repository().await;
    llama_with_versions(&repo, 4).await;
    let splits: Vec<Vec<(i64, i64)>> = (0..8)
        .map(|i| match i % 3 {
            0 => vec![(1, i + 1), (2, 1)],
            1 => vec![(2, i + 1), (3, 1), (4, 2)],
            _ => vec![(4, i + 1)],
        })
        .collect();

    join_all(splits.iter().map(|pairs| set(&repo, "prod", pairs))).await;

    let result = split_of(&repo, "prod").await.expect("resolved");
    let expected: Vec<Vec<(i32, u16)>> = splits
        .iter()
        .map(|pairs| {
            split(pairs)
                .targets()
                .iter()
                .map(|t| (t.version.get(), t.weight.get()))
                .collect()
        })
        .collect();
    assert!(expected.contains(&result), "a mixture: {result:?}");
}

/// Reverts the migrations down to and including the alias splits' one.
async fn revert_alias_splits(db: &TestDatabase) {
    let url = db.url().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                .expect("connects");
        loop {
            let reverted = conn
                .revert_last_migration(MIGRATIONS)
                .expect("down.sql runs");
            if reverted.to_string().starts_with("20270110") {
                break;
            }
        }
    })
    .await
    .expect("task ran");
}

#[tokio::test]
async fn aliases_from_before_splits_become_one_version_splits_and_back() {
    let (db, repo) = repository().await;
    llama_with_versions(&repo, 2).await;
    set(&repo, "prod", &[(1, 10), (2, 30)]).await;
    set(&repo, "canary", &[(2, 1)]).await;

    revert_alias_splits(&db).await;
    // Going back, each alias keeps its primary version.
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM model_aliases a JOIN model_versions v ON v.id = a.version_id \
             WHERE v.version = 2"
        )
        .await,
        2
    );
    db.execute(
        "INSERT INTO model_aliases (model_id, alias, version_id) \
         SELECT model_id, 'old', id FROM model_versions WHERE version = 1",
    )
    .await;

    run_migrations(db.url()).await.expect("migrates again");

    assert_eq!(split_of(&repo, "old").await, Ok(vec![(1, 1)]));
    assert_eq!(split_of(&repo, "prod").await, Ok(vec![(2, 1)]));
    assert_eq!(primary(&db, "old").await, 1);
}
