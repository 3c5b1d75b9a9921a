//! Start-up behaviour against a real PostgreSQL: migrations, the pool, waiting for the database,
//! the health check, and the test databases themselves.

use std::time::Duration;

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use diesel_migrations::MigrationHarness;
use futures_util::future::join_all;
use maas_domain::RepoError;
use maas_domain::ports::{HealthCheck, RegistryRepository};
use maas_persistence::test_util::{CountingRecorder, TestDatabase, model_name, new_model};
use maas_persistence::{
    DatabaseSettings, MIGRATIONS, PersistenceError, PgHealth, PgRegistryRepository, connect,
    run_migrations, wait_for_database,
};
use maas_telemetry::names::DB_UNAVAILABLE_TOTAL;

/// Settings of a server that is not there: nothing listens on port 1.
fn nowhere() -> DatabaseSettings {
    DatabaseSettings {
        host: "127.0.0.1".into(),
        port: 1,
        connect_timeout_seconds: 1,
        startup_timeout_seconds: 1,
        ..DatabaseSettings::default()
    }
}

fn migration_names() -> Vec<String> {
    MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .expect("embedded migrations")
        .iter()
        .map(|m| m.name().to_string())
        .collect()
}

#[tokio::test]
async fn concurrent_migration_runs_on_an_empty_database_all_succeed_and_apply_once() {
    let db = TestDatabase::empty().await;
    let runs = join_all((0..5).map(|_| run_migrations(db.url()))).await;

    let mut applied: Vec<Vec<String>> = runs
        .into_iter()
        .map(|run| run.expect("every concurrent run succeeds"))
        .collect();
    applied.sort();
    let mut expected = vec![Vec::new(); 4];
    expected.push(migration_names());
    assert_eq!(
        applied, expected,
        "one run applies everything, the others nothing"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM __diesel_schema_migrations")
            .await,
        i64::try_from(migration_names().len()).expect("few migrations")
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_tables WHERE tablename IN ('models', 'model_versions', 'model_aliases', 'users', 'api_keys', 'usage_events')")
            .await,
        6
    );
}

#[tokio::test]
async fn every_migration_reverts_cleanly_and_applies_again() {
    let db = TestDatabase::new().await;
    let url = db.url().to_owned();
    let reverted = tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                .expect("connects");
        conn.revert_all_migrations(MIGRATIONS)
            .map(|versions| versions.len())
            .map_err(|e| e.to_string())
    })
    .await
    .expect("task ran")
    .expect("down.sql runs");
    assert_eq!(reverted, migration_names().len());
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename NOT LIKE '__diesel%'")
            .await,
        0,
        "down.sql leaves nothing behind"
    );
    assert_eq!(
        run_migrations(db.url()).await.expect("applies again"),
        migration_names()
    );
}

#[tokio::test]
async fn migrating_a_current_schema_applies_nothing() {
    let db = TestDatabase::new().await;
    let applied = run_migrations(db.url()).await.expect("migrations run");
    assert!(applied.is_empty(), "already applied: {applied:?}");
}

#[tokio::test]
async fn migrating_an_unreachable_database_is_a_connect_error() {
    let err = run_migrations(&nowhere().connection_url())
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, PersistenceError::Connect(_)), "{err}");
}

#[tokio::test]
async fn connecting_succeeds_without_a_database_and_queries_are_then_unavailable() {
    let pool = connect(&nowhere())
        .await
        .expect("building the pool opens no connection");
    let repo = PgRegistryRepository::new(pool);
    let recorder = CountingRecorder::default();
    let _recording = metrics::set_default_local_recorder(&recorder);

    let err = repo
        .get_model(&model_name("llama"))
        .await
        .expect_err("no database");
    assert!(matches!(err, RepoError::Unavailable(_)), "{err:?}");
    let err = repo
        .create_model(new_model("llama"))
        .await
        .expect_err("no database");
    assert!(matches!(err, RepoError::Unavailable(_)), "{err:?}");

    assert_eq!(
        recorder.counter(DB_UNAVAILABLE_TOTAL, &[("op", "get_model")]),
        1
    );
    assert_eq!(
        recorder.counter(DB_UNAVAILABLE_TOTAL, &[("op", "create_model")]),
        1
    );
}

#[tokio::test]
async fn settings_that_cannot_work_are_rejected_up_front_with_the_key_named() {
    let zero_pool = DatabaseSettings {
        pool_max_size: 0,
        ..DatabaseSettings::default()
    };
    let err = connect(&zero_pool).await.expect_err("zero connections");
    assert!(err.to_string().contains("database.pool_max_size"), "{err}");

    let bad_url = DatabaseSettings {
        url: Some("postgres://u:secret@h:notaport/db".into()),
        ..DatabaseSettings::default()
    };
    let err = connect(&bad_url).await.expect_err("bad port");
    let shown = err.to_string();
    assert!(shown.contains("database.url"), "{shown}");
    assert!(!shown.contains("secret"), "the password leaked: {shown}");
    let err = wait_for_database(&bad_url, |_, _, _| {})
        .await
        .expect_err("bad port");
    assert!(matches!(err, PersistenceError::InvalidSettings(_)), "{err}");
}

#[tokio::test]
async fn waiting_for_a_database_that_answers_returns_at_once() {
    let db = TestDatabase::new().await;
    let mut retries = 0;
    wait_for_database(&db.settings(), |_, _, _| retries += 1)
        .await
        .expect("the database is up");
    assert_eq!(retries, 0);
}

#[tokio::test]
async fn waiting_for_an_absent_database_retries_with_growing_delays_then_gives_up() {
    let mut retries = Vec::new();
    let err = wait_for_database(&nowhere(), |attempt, delay, error| {
        retries.push((attempt, delay, error.to_owned()));
    })
    .await
    .expect_err("nothing listens there");

    let PersistenceError::Unreachable { attempts, .. } = err else {
        panic!("expected Unreachable, got {err}");
    };
    assert!(!retries.is_empty(), "each failed attempt is reported");
    assert_eq!(usize::try_from(attempts).expect("small"), retries.len() + 1);
    let numbers: Vec<u32> = retries.iter().map(|r| r.0).collect();
    assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>());
    assert_eq!(retries[0].1, Duration::from_millis(100));
    if let Some(second) = retries.get(1) {
        assert_eq!(second.1, Duration::from_millis(200));
    }
    assert!(retries.iter().all(|r| !r.2.is_empty()), "{retries:?}");
}

#[tokio::test]
async fn the_health_check_round_trips_and_reports_the_pool() {
    let db = TestDatabase::new().await;
    let health = PgHealth::new(db.pool());
    assert_eq!(health.name(), "postgres");
    health.check().await.expect("the database is up");
    let status = health.pool_status().expect("pooled");
    assert_eq!(status.max, 16);
    assert!(status.open >= 1, "{status:?}");
    assert_eq!(status.in_use(), 0, "{status:?}");
}

#[tokio::test]
async fn a_pool_busy_to_its_last_connection_is_still_a_healthy_database() {
    let db = TestDatabase::new().await;
    let settings = DatabaseSettings {
        pool_max_size: 1,
        connect_timeout_seconds: 1,
        ..db.settings()
    };
    let pool = connect(&settings).await.expect("pool");
    let health = PgHealth::new(pool.clone());
    let _busy = pool.get().await.expect("the only connection");
    health
        .check()
        .await
        .expect("busy is not down: the check gets a connection of its own");
    let status = health.pool_status().expect("pooled");
    assert_eq!((status.max, status.in_use()), (1, 1), "{status:?}");
}

#[tokio::test]
async fn the_health_check_fails_when_the_database_is_unreachable() {
    let health = PgHealth::new(connect(&nowhere()).await.expect("pool"));
    let err = health.check().await.expect_err("nothing listens there");
    assert!(!err.to_string().is_empty());
}

#[tokio::test]
async fn test_databases_are_isolated_and_dropped_with_their_guard() {
    let first = TestDatabase::new().await;
    let second = TestDatabase::new().await;
    assert_ne!(first.name(), second.name());

    PgRegistryRepository::new(first.pool())
        .create_model(new_model("only-in-first"))
        .await
        .expect("created");
    assert_eq!(first.scalar("SELECT count(*) FROM models").await, 1);
    assert_eq!(second.scalar("SELECT count(*) FROM models").await, 0);

    let url = first.url().to_owned();
    drop(first);
    let err = AsyncPgConnection::establish(&url)
        .await
        .err()
        .expect("the database is gone");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn a_test_database_is_dropped_even_while_connections_to_it_are_open() {
    let db = TestDatabase::new().await;
    let url = db.url().to_owned();
    let held = AsyncPgConnection::establish(&url).await.expect("connects");
    drop(db);
    drop(held);
    assert!(AsyncPgConnection::establish(&url).await.is_err());
}

#[tokio::test]
async fn building_a_template_prunes_all_but_the_newest_others() {
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        datname: String,
    }
    let admin_url = std::env::var("MAAS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| maas_persistence::test_util::DEFAULT_ADMIN_URL.to_owned());
    let mut admin = AsyncPgConnection::establish(&admin_url)
        .await
        .expect("admin connection");
    // A prefix of this test's own, so no real template is touched.
    let prefix = format!("maas_prune_{}_", uuid::Uuid::new_v4().simple());
    let names: Vec<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|suffix| format!("{prefix}{suffix}"))
        .collect();
    for name in &names {
        diesel::sql_query(format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await
            .expect("created");
        diesel::sql_query(format!(r#"ALTER DATABASE "{name}" IS_TEMPLATE true"#))
            .execute(&mut admin)
            .await
            .expect("marked a template");
    }
    // `c` is the current one; of the others, the two created last stay.
    let mut dropped = maas_persistence::test_util::prune_templates(&prefix, &names[2], 2).await;
    dropped.sort();
    assert_eq!(dropped, [names[0].clone(), names[1].clone()]);
    let left: Vec<String> = diesel::sql_query(
        "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname",
    )
    .bind::<Text, _>(&prefix)
    .load::<Name>(&mut admin)
    .await
    .expect("listed")
    .into_iter()
    .map(|n| n.datname)
    .collect();
    assert_eq!(left, names[2..]);

    // Nothing more to prune: a second run drops nothing.
    assert!(
        maas_persistence::test_util::prune_templates(&prefix, &names[2], 2)
            .await
            .is_empty()
    );
    for name in &names[2..] {
        diesel::sql_query(format!(r#"ALTER DATABASE "{name}" IS_TEMPLATE false"#))
            .execute(&mut admin)
            .await
            .expect("unmarked");
        diesel::sql_query(format!(r#"DROP DATABASE "{name}""#))
            .execute(&mut admin)
            .await
            .expect("dropped");
    }
}
