//! API keys: storage of the hash only, lookup, listing, revocation, batched last-use times.

use std::collections::HashSet;

use futures_util::future::join_all;
use maas_domain::RepoError;
use maas_domain::identity::{
    ApiKey, KeyHash, NewApiKey, PlaintextKey, RateLimitRpm, Role, UserPatch,
};
use maas_domain::ports::IdentityRepository;
use maas_persistence::test_util::{CountingRecorder, new_key, username};
use maas_persistence::{DatabaseSettings, PgIdentityRepository, connect};
use maas_telemetry::names::DB_UNAVAILABLE_TOTAL;
use uuid::Uuid;

use crate::{at, repository, stored_key, user};

/// Installs a trigger that counts the `UPDATE` statements run on `api_keys` in `touch_log`.
async fn count_update_statements(db: &maas_persistence::test_util::TestDatabase) {
    db.execute(
        "CREATE TABLE touch_log (at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE FUNCTION log_touch() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO touch_log DEFAULT VALUES; RETURN NULL; END $$;
         CREATE TRIGGER api_keys_updates AFTER UPDATE ON api_keys
           FOR EACH STATEMENT EXECUTE FUNCTION log_touch();",
    )
    .await;
}

async fn last_used(
    repo: &PgIdentityRepository,
    key: &ApiKey,
) -> Option<chrono::DateTime<chrono::Utc>> {
    repo.get_key(key.id).await.expect("found").last_used_at
}

#[tokio::test]
async fn a_stored_key_is_its_sha256_and_no_column_holds_the_plaintext() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (plaintext, key) = stored_key(&repo, alice.id, "ci key").await;

    assert_eq!(key.user_id, alice.id);
    assert_eq!(key.name.as_str(), "ci key");
    assert_eq!(key.prefix, plaintext.display_prefix());
    assert_eq!(key.prefix.len(), PlaintextKey::DISPLAY_LEN);
    assert_eq!(
        (
            key.expires_at,
            key.revoked_at,
            key.last_used_at,
            key.rate_limit_rpm
        ),
        (None, None, None, None)
    );

    // The hash computed by Postgres itself, independently of the code under test.
    let key_literal = plaintext.expose();
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM api_keys WHERE key_hash = sha256(convert_to('{key_literal}', 'UTF8'))"
        ))
        .await,
        1
    );
    // Every column of every row, as text: neither the key nor its secret part (what follows the
    // display prefix) is anywhere.
    let secret = &key_literal[PlaintextKey::DISPLAY_LEN..];
    for needle in [key_literal, secret] {
        let found = db
            .scalar(&format!(
                "SELECT count(*) FROM (
                   SELECT row_to_json(k)::text AS t FROM api_keys k
                   UNION ALL SELECT row_to_json(u)::text FROM users u
                   UNION ALL SELECT row_to_json(m)::text FROM models m
                 ) AS rows WHERE strpos(t, '{needle}') > 0"
            ))
            .await;
        assert_eq!(found, 0, "the plaintext key is stored somewhere");
    }
}

#[tokio::test]
async fn a_key_is_found_by_its_hash_with_its_user() {
    let (_db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (plaintext, key) = stored_key(&repo, alice.id, "laptop").await;
    stored_key(&repo, alice.id, "other").await;

    let found = repo
        .find_key(&plaintext.hash())
        .await
        .expect("looked up")
        .expect("known key");
    assert_eq!(found.key, key);
    assert_eq!(found.user, alice);
}

#[tokio::test]
async fn an_unknown_hash_finds_nothing() {
    let (_db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    stored_key(&repo, alice.id, "laptop").await;
    let unknown = PlaintextKey::generate().expect("csprng");
    assert_eq!(
        repo.find_key(&unknown.hash()).await.expect("looked up"),
        None
    );
}

#[tokio::test]
async fn find_key_returns_revoked_and_expired_keys_of_disabled_users_as_they_are() {
    let (_db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (plaintext, mut new) = new_key(alice.id, "old");
    new.expires_at = Some(at(1_000));
    let key = repo.create_key(new, None).await.expect("created");
    repo.revoke_key(key.id).await.expect("revoked");
    repo.update_user(
        &username("alice"),
        UserPatch {
            disabled: Some(true),
            ..UserPatch::default()
        },
    )
    .await
    .expect("disabled");

    let found = repo
        .find_key(&plaintext.hash())
        .await
        .expect("looked up")
        .expect("still stored");
    assert_eq!(found.key.expires_at, Some(at(1_000)));
    assert!(found.key.revoked_at.is_some());
    assert!(found.user.disabled);
}

#[tokio::test]
async fn expiry_and_an_own_limit_round_trip() {
    let (_db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (_, mut new) = new_key(alice.id, "limited");
    new.expires_at = Some(at(4_102_444_800));
    new.rate_limit_rpm = Some(RateLimitRpm::new(RateLimitRpm::MAX.into()).expect("valid"));

    let key = repo.create_key(new, None).await.expect("created");
    assert_eq!(key.expires_at, Some(at(4_102_444_800)));
    assert_eq!(
        key.rate_limit_rpm.map(RateLimitRpm::get),
        Some(RateLimitRpm::MAX)
    );
    assert_eq!(repo.get_key(key.id).await.expect("found"), key);
}

#[tokio::test]
async fn a_key_of_a_missing_user_is_not_found_naming_the_user() {
    let (db, repo) = repository().await;
    let ghost = Uuid::new_v4();
    let (_, new) = new_key(ghost, "orphan");
    let err = repo.create_key(new, None).await.expect_err("no such user");
    assert_eq!(err, RepoError::NotFound(format!("user {ghost} not found")));
    assert_eq!(db.scalar("SELECT count(*) FROM api_keys").await, 0);
}

#[tokio::test]
async fn storing_the_same_hash_twice_is_a_conflict_that_does_not_show_the_hash() {
    let (_db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let bob = user(&repo, "bob", Role::Member).await;
    let (plaintext, new) = new_key(alice.id, "first");
    repo.create_key(new.clone(), None).await.expect("created");

    let err = repo
        .create_key(
            NewApiKey {
                user_id: bob.id,
                ..new
            },
            None,
        )
        .await
        .expect_err("duplicate hash");
    let RepoError::Conflict(message) = &err else {
        panic!("expected a conflict, got {err:?}");
    };
    assert!(!message.contains(&plaintext.hash().to_hex()), "{message}");
    assert!(!message.contains(plaintext.expose()), "{message}");
}

#[tokio::test]
async fn a_missing_key_is_not_found_naming_it() {
    let (_db, repo) = repository().await;
    let id = Uuid::new_v4();
    let expected = RepoError::NotFound(format!("API key {id} not found"));
    assert_eq!(repo.get_key(id).await.expect_err("missing"), expected);
    assert_eq!(repo.revoke_key(id).await.expect_err("missing"), expected);
}

#[tokio::test]
async fn a_users_keys_are_listed_newest_first_revoked_ones_included() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let bob = user(&repo, "bob", Role::Member).await;
    let mut created = Vec::new();
    for name in ["first", "second", "third"] {
        created.push(stored_key(&repo, alice.id, name).await.1);
    }
    stored_key(&repo, bob.id, "bobs").await;
    // Creation times a day apart, so the order does not hang on the clock's resolution.
    db.execute(
        "UPDATE api_keys SET created_at = timestamptz '2030-01-01' + (CASE name
           WHEN 'first' THEN 1 WHEN 'second' THEN 2 WHEN 'third' THEN 3 ELSE 0 END) * interval '1 day'",
    )
    .await;
    repo.revoke_key(created[1].id).await.expect("revoked");

    let listed = repo.list_keys(alice.id).await.expect("listed");
    let names: Vec<&str> = listed.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["third", "second", "first"]);
    assert!(listed[1].revoked_at.is_some());
    assert!(listed.iter().all(|k| k.user_id == alice.id));

    let carol = user(&repo, "carol", Role::Member).await;
    assert!(repo.list_keys(carol.id).await.expect("listed").is_empty());
}

#[tokio::test]
async fn revoking_returns_the_key_with_its_hash_and_keeps_the_first_revocation_time() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (plaintext, key) = stored_key(&repo, alice.id, "laptop").await;
    let (_, untouched) = stored_key(&repo, alice.id, "other").await;

    let (revoked, hash) = repo.revoke_key(key.id).await.expect("revoked");
    assert_eq!(hash, plaintext.hash());
    let first = revoked.revoked_at.expect("revocation time");
    assert!(first >= key.created_at);
    assert_eq!(
        revoked,
        ApiKey {
            revoked_at: Some(first),
            ..key.clone()
        }
    );

    // Moved into the past, so a second revocation overwriting it could not go unnoticed.
    db.execute(&format!(
        "UPDATE api_keys SET revoked_at = timestamptz '2020-01-01 00:00:00+00' WHERE id = '{}'",
        key.id
    ))
    .await;
    let (again, _) = repo.revoke_key(key.id).await.expect("revoked again");
    assert_eq!(again.revoked_at, Some(at(1_577_836_800)));
    assert_eq!(
        repo.get_key(untouched.id).await.expect("found").revoked_at,
        None
    );
}

#[tokio::test]
async fn the_key_hashes_of_a_user_are_all_theirs_and_only_theirs() {
    let (_db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let bob = user(&repo, "bob", Role::Member).await;
    let mut expected = HashSet::new();
    for name in ["a", "b", "c"] {
        expected.insert(stored_key(&repo, alice.id, name).await.0.hash());
    }
    let (revoked, key) = stored_key(&repo, alice.id, "revoked").await;
    repo.revoke_key(key.id).await.expect("revoked");
    expected.insert(revoked.hash());
    stored_key(&repo, bob.id, "bobs").await;

    let hashes: HashSet<KeyHash> = repo
        .key_hashes_of_user(alice.id)
        .await
        .expect("listed")
        .into_iter()
        .collect();
    assert_eq!(hashes, expected);
    assert!(
        repo.key_hashes_of_user(Uuid::new_v4())
            .await
            .expect("listed")
            .is_empty()
    );
}

#[tokio::test]
async fn touching_keys_updates_a_whole_batch_in_one_statement() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let mut keys = Vec::new();
    for i in 0..50 {
        keys.push(stored_key(&repo, alice.id, &format!("key {i}")).await.1);
    }
    let (_, untouched) = stored_key(&repo, alice.id, "untouched").await;
    count_update_statements(&db).await;

    let batch: Vec<_> = keys
        .iter()
        .zip(0..)
        .map(|(key, i)| (key.id, at(1_000 + i)))
        .collect();
    repo.touch_keys(&batch).await.expect("touched");

    assert_eq!(
        db.scalar("SELECT count(*) FROM touch_log").await,
        1,
        "one statement"
    );
    for (key, i) in keys.iter().zip(0..) {
        assert_eq!(
            last_used(&repo, key).await,
            Some(at(1_000 + i)),
            "{}",
            key.name.as_str()
        );
    }
    assert_eq!(last_used(&repo, &untouched).await, None);
}

#[tokio::test]
async fn touching_never_moves_last_used_backwards() {
    let (_db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (_, a) = stored_key(&repo, alice.id, "a").await;
    let (_, b) = stored_key(&repo, alice.id, "b").await;

    repo.touch_keys(&[(a.id, at(2_000)), (b.id, at(2_000))])
        .await
        .expect("touched");
    repo.touch_keys(&[(a.id, at(1_000)), (b.id, at(3_000))])
        .await
        .expect("touched");
    assert_eq!(
        last_used(&repo, &a).await,
        Some(at(2_000)),
        "an older time is ignored"
    );
    assert_eq!(last_used(&repo, &b).await, Some(at(3_000)));

    // Within one batch, the latest time of a key wins wherever it appears.
    repo.touch_keys(&[
        (a.id, at(5_000)),
        (a.id, at(4_000)),
        (b.id, at(3_500)),
        (b.id, at(6_000)),
    ])
    .await
    .expect("touched");
    assert_eq!(last_used(&repo, &a).await, Some(at(5_000)));
    assert_eq!(last_used(&repo, &b).await, Some(at(6_000)));
}

#[tokio::test]
async fn touching_nothing_runs_no_statement_and_unknown_keys_are_ignored() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (_, key) = stored_key(&repo, alice.id, "a").await;
    count_update_statements(&db).await;

    repo.touch_keys(&[]).await.expect("nothing to do");
    assert_eq!(db.scalar("SELECT count(*) FROM touch_log").await, 0);

    repo.touch_keys(&[(Uuid::new_v4(), at(1_000)), (key.id, at(2_000))])
        .await
        .expect("touched");
    assert_eq!(last_used(&repo, &key).await, Some(at(2_000)));
}

#[tokio::test]
async fn replicas_touching_the_same_keys_in_opposite_orders_at_once_all_succeed() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(stored_key(&repo, alice.id, &format!("key {i}")).await.1.id);
    }
    let settings = DatabaseSettings {
        connect_timeout_seconds: 60,
        ..db.settings()
    };

    let flushes = (0..8_i64).map(|replica| {
        let ids = ids.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let repo = PgIdentityRepository::new(connect(&settings).await.expect("pool"));
            for round in 0..10 {
                let mut batch: Vec<_> = ids
                    .iter()
                    .map(|id| (*id, at(replica * 100 + round)))
                    .collect();
                if replica % 2 == 1 {
                    batch.reverse();
                }
                repo.touch_keys(&batch).await?;
            }
            Ok::<_, RepoError>(())
        })
    });
    for outcome in join_all(flushes).await {
        outcome
            .expect("task ran")
            .expect("no flush fails, deadlocks included");
    }
    for id in ids {
        let key = repo.get_key(id).await.expect("found");
        assert_eq!(
            key.last_used_at,
            Some(at(7 * 100 + 9)),
            "the latest time of all"
        );
    }
}

#[tokio::test]
async fn a_key_row_that_breaks_a_domain_rule_is_an_internal_error_not_a_panic() {
    let (db, repo) = repository().await;
    let alice = user(&repo, "alice", Role::Member).await;
    let (_, short) = stored_key(&repo, alice.id, "short hash").await;
    let (_, limited) = stored_key(&repo, alice.id, "huge limit").await;
    db.execute(&format!(
        "ALTER TABLE api_keys DROP CONSTRAINT api_keys_key_hash_is_sha256;
         UPDATE api_keys SET key_hash = substring(key_hash FROM 2) WHERE id = '{}';
         UPDATE api_keys SET rate_limit_rpm = 2000000 WHERE id = '{}';",
        short.id, limited.id
    ))
    .await;

    let err = repo
        .key_hashes_of_user(alice.id)
        .await
        .expect_err("31-byte hash");
    assert!(
        matches!(&err, RepoError::Internal(m) if m.contains("api_keys.key_hash")),
        "{err:?}"
    );
    let err = repo.revoke_key(short.id).await.expect_err("31-byte hash");
    assert!(matches!(err, RepoError::Internal(_)), "{err:?}");
    let err = repo
        .get_key(limited.id)
        .await
        .expect_err("limit over the maximum");
    assert!(
        matches!(&err, RepoError::Internal(m) if m.contains("api_keys.rate_limit_rpm")),
        "{err:?}"
    );
}

#[tokio::test]
async fn without_a_database_every_call_is_unavailable_and_counted() {
    let nowhere = DatabaseSettings {
        host: "127.0.0.1".into(),
        port: 1,
        connect_timeout_seconds: 1,
        ..DatabaseSettings::default()
    };
    let repo = PgIdentityRepository::new(connect(&nowhere).await.expect("pool"));
    let recorder = CountingRecorder::default();
    let _recording = metrics::set_default_local_recorder(&recorder);
    let key = PlaintextKey::generate().expect("csprng");

    let err = repo.find_key(&key.hash()).await.expect_err("no database");
    assert!(matches!(err, RepoError::Unavailable(_)), "{err:?}");
    let err = repo
        .touch_keys(&[(Uuid::new_v4(), at(1))])
        .await
        .expect_err("no database");
    assert!(matches!(err, RepoError::Unavailable(_)), "{err:?}");
    let (_, new) = new_key(Uuid::new_v4(), "k");
    let err = repo
        .bootstrap_admin(&username("admin"), new)
        .await
        .expect_err("no database");
    assert!(matches!(err, RepoError::Unavailable(_)), "{err:?}");

    for op in ["find_key", "touch_keys", "bootstrap_admin"] {
        assert_eq!(
            recorder.counter(DB_UNAVAILABLE_TOTAL, &[("op", op)]),
            1,
            "{op}"
        );
    }
}
