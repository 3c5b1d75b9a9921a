//! Appending usage events: whole batches in one statement, every field kept, no ties to keys.

use maas_domain::identity::Role;
use maas_domain::inference::UsageEvent;
use maas_domain::ports::{IdentityRepository, UsageRepository};
use maas_persistence::PgIdentityRepository;
use maas_persistence::test_util::{TestDatabase, new_key, new_user, usage_event};
use uuid::Uuid;

use crate::{repository, utc};

/// Installs a trigger that counts the `INSERT` statements run on `usage_events` in `insert_log`.
async fn count_insert_statements(db: &TestDatabase) {
    db.execute(
        "CREATE TABLE insert_log (at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE FUNCTION log_insert() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO insert_log DEFAULT VALUES; RETURN NULL; END $$;
         CREATE TRIGGER usage_events_inserts AFTER INSERT ON usage_events
           FOR EACH STATEMENT EXECUTE FUNCTION log_insert();",
    )
    .await;
}

/// `n` calls by one key, a second apart.
fn events(n: u32) -> Vec<UsageEvent> {
    let (key, user) = (Uuid::new_v4(), Uuid::new_v4());
    (0..n)
        .map(|i| {
            let at = utc(2026, 1, 1, 0, 0, 0) + chrono::Duration::seconds(i.into());
            usage_event(key, user, "llama", at)
        })
        .collect()
}

#[tokio::test]
async fn a_batch_of_a_thousand_events_is_one_insert_statement() {
    let (db, repo) = repository().await;
    count_insert_statements(&db).await;

    repo.insert_usage(&events(1_000)).await.expect("stored");

    assert_eq!(
        db.scalar("SELECT count(*) FROM insert_log").await,
        1,
        "one statement"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM usage_events").await, 1_000);
}

#[tokio::test]
async fn inserting_no_events_runs_no_statement() {
    let (db, repo) = repository().await;
    count_insert_statements(&db).await;

    repo.insert_usage(&[]).await.expect("nothing to do");

    assert_eq!(db.scalar("SELECT count(*) FROM insert_log").await, 0);
}

#[tokio::test]
async fn every_field_of_an_event_is_stored() {
    let (db, repo) = repository().await;
    let (key, user) = (Uuid::new_v4(), Uuid::new_v4());
    let full = UsageEvent {
        version: Some(3),
        route: "/v1/completions".into(),
        status: 502,
        latency_ms: 1_234,
        upstream_ms: Some(1_200),
        prompt_tokens: Some(5_000_000_000),
        completion_tokens: Some(17),
        ..usage_event(key, user, "llama", utc(2026, 3, 4, 5, 6, 7))
    };
    let bare = UsageEvent {
        version: None,
        upstream_ms: None,
        ..usage_event(key, user, "ghost", utc(2026, 3, 4, 5, 6, 8))
    };

    repo.insert_usage(&[full, bare]).await.expect("stored");

    let full_row = format!(
        "SELECT count(*) FROM usage_events WHERE key_id = '{key}' AND user_id = '{user}' \
         AND model = 'llama' AND version = 3 AND route = '/v1/completions' AND status = 502 \
         AND latency_ms = 1234 AND upstream_ms = 1200 AND prompt_tokens = 5000000000 \
         AND completion_tokens = 17 AND created_at = '2026-03-04T05:06:07Z'"
    );
    assert_eq!(db.scalar(&full_row).await, 1);
    let bare_row = "SELECT count(*) FROM usage_events WHERE model = 'ghost' AND version IS NULL \
         AND upstream_ms IS NULL AND prompt_tokens IS NULL AND completion_tokens IS NULL \
         AND created_at = '2026-03-04T05:06:08Z'";
    assert_eq!(db.scalar(bare_row).await, 1);
}

#[tokio::test]
async fn a_batch_past_the_protocols_bind_limit_is_still_one_statement() {
    let (db, repo) = repository().await;
    count_insert_statements(&db).await;
    // As a VALUES list of 11 binds per row, more than 65,535 binds.
    let n = 10_000;

    repo.insert_usage(&events(n)).await.expect("stored");

    assert_eq!(db.scalar("SELECT count(*) FROM insert_log").await, 1);
    assert_eq!(
        db.scalar("SELECT count(*) FROM usage_events").await,
        i64::from(n)
    );
}

#[tokio::test]
async fn a_batch_is_stored_all_or_nothing() {
    let (db, repo) = repository().await;
    db.execute(
        r"CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
            IF NEW.route = '/refused' THEN RAISE EXCEPTION 'refused by the test'; END IF;
            RETURN NEW;
          END $$;
          CREATE TRIGGER refuse_event BEFORE INSERT ON usage_events
            FOR EACH ROW EXECUTE FUNCTION refuse_event();",
    )
    .await;
    let mut batch = events(10_000);
    if let Some(last) = batch.last_mut() {
        // The last row: the 9,999 before it have been inserted by then.
        last.route = "/refused".into();
    }

    let err = repo
        .insert_usage(&batch)
        .await
        .expect_err("the trigger refuses the last event");

    assert!(
        matches!(err, maas_domain::RepoError::Internal(_)),
        "{err:?}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM usage_events").await, 0);
}

#[tokio::test]
async fn usage_outlives_the_key_and_the_user_that_made_the_calls() {
    let (db, repo) = repository().await;
    let identity = PgIdentityRepository::new(db.pool());
    let alice = identity
        .create_user(new_user("alice", Role::Member))
        .await
        .expect("user created");
    let key = identity
        .create_key(new_key(alice.id, "laptop").1, None)
        .await
        .expect("key created");
    repo.insert_usage(&[usage_event(
        key.id,
        alice.id,
        "llama",
        utc(2026, 1, 1, 0, 0, 0),
    )])
    .await
    .expect("stored");

    // Deleting the user deletes the key with it.
    db.execute("DELETE FROM users").await;

    assert_eq!(db.scalar("SELECT count(*) FROM api_keys").await, 0);
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM usage_events WHERE key_id = '{}'",
            key.id
        ))
        .await,
        1
    );
}
