//! Upstream credentials at rest: encrypted in Postgres, never in Redis, decrypted only in the
//! memory of the replica that sends them; without an encryption key none can be stored.

mod common;

use common::stub::start_stub;
use common::{Options, TestApp, eventually, spawn_app, spawn_with};
use serde_json::json;

const SECRET: &str = "sk-upstream-very-secret-0123456789";

/// Every value under the app's Redis prefix (strings and hash fields), concatenated.
async fn everything_in_redis(app: &TestApp) -> String {
    let mut conn = maas_cache::checkout(&app.redis.pool)
        .await
        .expect("a connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", app.redis.prefix))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(!keys.is_empty(), "the cache holds something");
    let mut all = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        let values: Vec<String> = match kind.as_str() {
            "hash" => redis::cmd("HVALS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("HVALS"),
            "string" => vec![
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("GET"),
            ],
            _ => Vec::new(),
        };
        all.push_str(&values.join("\n"));
    }
    all
}

async fn chat_status(app: &TestApp, model: &str) -> u16 {
    let res = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": model, "messages": []}),
        )
        .await;
    let status = res.status().as_u16();
    res.bytes().await.expect("body");
    status
}

#[tokio::test]
async fn a_credential_is_encrypted_in_postgres_absent_from_redis_and_still_sent_upstream() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    app.create_model("keyed").await;
    let res = app
        .post_json(
            "/api/v1/models/keyed/versions",
            &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base, "upstream_api_key": SECRET}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let version: serde_json::Value = res.json().await.expect("json");
    assert_eq!(version["has_upstream_api_key"], true);
    assert!(!version.to_string().contains(SECRET));
    // Twice: the second call is served from the caches.
    for _ in 0..2 {
        assert_eq!(chat_status(&app, "keyed").await, 200);
        assert_eq!(
            stub.last().header("authorization"),
            Some(format!("Bearer {SECRET}").as_str())
        );
    }
    let in_redis = everything_in_redis(&app).await;
    assert!(in_redis.contains("keyed"), "the version is cached");
    assert!(!in_redis.contains(SECRET), "the credential is not");
    let plain = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM model_versions WHERE upstream_api_key LIKE '%{SECRET}%'"
        ))
        .await;
    assert_eq!(plain, 0, "not in plain text in Postgres");
    let sealed = app
        .db
        .scalar("SELECT count(*) FROM model_versions WHERE upstream_api_key LIKE 'enc:v1:%'")
        .await;
    assert_eq!(sealed, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_changed_credential_is_used_from_the_next_call_on_every_replica() {
    let a = spawn_app().await;
    let b = spawn_with(Options {
        ..a.replica_options()
    })
    .await;
    let stub = start_stub().await;
    a.create_model("rotated").await;
    let body = json!({"source_uri": "s3://m/1", "endpoint_url": stub.base, "upstream_api_key": "sk-old-credential"});
    assert_eq!(
        a.post_json("/api/v1/models/rotated/versions", &body)
            .await
            .status(),
        201
    );
    assert_eq!(chat_status(&b, "rotated").await, 200);
    assert_eq!(
        stub.last().header("authorization"),
        Some("Bearer sk-old-credential")
    );
    let patch = json!({"upstream_api_key": "sk-new-credential"});
    assert_eq!(
        a.patch_json("/api/v1/models/rotated/versions/1", &patch)
            .await
            .status(),
        200
    );
    assert_eq!(chat_status(&a, "rotated").await, 200);
    assert_eq!(
        stub.last().header("authorization"),
        Some("Bearer sk-new-credential")
    );
    eventually("replica b sends the new credential", || async {
        assert_eq!(chat_status(&b, "rotated").await, 200);
        (stub.last().header("authorization") == Some("Bearer sk-new-credential")).then_some(())
    })
    .await;
    // Cleared: no credential at all.
    let clear = json!({"upstream_api_key": null});
    assert_eq!(
        a.patch_json("/api/v1/models/rotated/versions/1", &clear)
            .await
            .status(),
        200
    );
    assert_eq!(chat_status(&a, "rotated").await, 200);
    assert_eq!(stub.last().header("authorization"), None);
    b.server.stop(true).await;
    a.stop().await;
}

#[tokio::test]
async fn without_an_encryption_key_credentials_are_refused_and_everything_else_is_served() {
    let app = spawn_with(Options {
        encryption_key: None,
        ..Options::default()
    })
    .await;
    let stub = start_stub().await;
    app.create_model("unkeyed").await;
    let with_key =
        json!({"source_uri": "s3://m/1", "endpoint_url": stub.base, "upstream_api_key": SECRET});
    let res = app
        .post_json("/api/v1/models/unkeyed/versions", &with_key)
        .await;
    let problem = common::assert_problem(res, 422, Some("upstream_api_key")).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("secrets.encryption_key"),
        "{problem}"
    );
    let without = json!({"source_uri": "s3://m/1", "endpoint_url": stub.base});
    assert_eq!(
        app.post_json("/api/v1/models/unkeyed/versions", &without)
            .await
            .status(),
        201
    );
    let patch = json!({"upstream_api_key": SECRET});
    let res = app
        .patch_json("/api/v1/models/unkeyed/versions/1", &patch)
        .await;
    common::assert_problem(res, 422, Some("upstream_api_key")).await;
    assert_eq!(chat_status(&app, "unkeyed").await, 200);
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM model_versions WHERE upstream_api_key IS NOT NULL")
            .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn every_endpoints_credential_is_encrypted_absent_from_redis_and_sent_to_its_own_server() {
    let app = spawn_app().await;
    let stubs = [start_stub().await, start_stub().await];
    app.create_model("fleet").await;
    let res = app
        .post_json(
            "/api/v1/models/fleet/versions",
            &json!({"source_uri": "s3://m/1", "endpoints": [
                {"url": stubs[0].base, "upstream_api_key": "sk-fleet-zero"},
                {"url": stubs[1].base, "upstream_api_key": "sk-fleet-one"},
            ]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let version = res.text().await.expect("body");
    assert!(!version.contains("sk-fleet"), "{version}");
    // Until each has had calls (each misses all 60 with probability 2^-60).
    for _ in 0..60 {
        assert_eq!(chat_status(&app, "fleet").await, 200);
    }
    for (stub, key) in stubs.iter().zip(["sk-fleet-zero", "sk-fleet-one"]) {
        let seen = stub.seen();
        assert!(!seen.is_empty());
        let expected = format!("Bearer {key}");
        assert!(
            seen.iter()
                .all(|s| s.header("authorization") == Some(expected.as_str()))
        );
    }
    let in_redis = everything_in_redis(&app).await;
    assert!(in_redis.contains("fleet"), "the version is cached");
    assert!(!in_redis.contains("sk-fleet"), "the credentials are not");
    let plain = app
        .db
        .scalar("SELECT count(*) FROM model_versions WHERE endpoints::text LIKE '%sk-fleet%' OR upstream_api_key LIKE '%sk-fleet%'")
        .await;
    assert_eq!(plain, 0, "not in plain text in Postgres");
    for stub in stubs {
        stub.stop().await;
    }
    app.stop().await;
}
