//! Cache-aside of registry reads in Redis: used, invalidated on every write, shared by replicas.

mod common;

use common::{Options, eventually, spawn_app, spawn_with};
use redis::AsyncCommands as _;
use serde_json::{Value, json};

async fn cached_fields(app: &common::TestApp, model: &str) -> Vec<String> {
    let mut conn = app.redis.pool.get().await.expect("redis");
    let key = format!("{}c:model:{model}", app.redis.prefix);
    let mut fields: Vec<String> = conn.hkeys(key).await.expect("HKEYS");
    fields.sort();
    fields
}

#[tokio::test]
async fn reads_fill_the_cache_and_writes_invalidate_it_before_responding() {
    let app = spawn_app().await;
    app.create_model("c").await;
    app.create_version("c").await;
    app.put_json("/api/v1/models/c/aliases/prod", &json!({"version": 1}))
        .await;
    assert!(cached_fields(&app, "c").await.is_empty());

    app.get("/api/v1/models/c").await;
    app.get("/api/v1/models/c/versions/1").await;
    app.get("/api/v1/models/c/aliases/prod").await;
    app.get("/api/v1/models/c/aliases/latest").await;
    assert_eq!(
        cached_fields(&app, "c").await,
        ["m", "s:latest", "s:prod", "v:1"]
    );

    let res = app
        .patch_json("/api/v1/models/c/versions/1", &json!({"framework": "vllm"}))
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        cached_fields(&app, "c").await.is_empty(),
        "the write invalidated the scope"
    );
    let body: Value = app
        .get("/api/v1/models/c/aliases/prod")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["framework"], "vllm");
    app.stop().await;
}

#[tokio::test]
async fn a_write_on_one_replica_reaches_the_other_replicas_in_process_cache() {
    let a = spawn_app().await;
    let b = spawn_with(Options {
        ..a.replica_options()
    })
    .await;
    a.create_model("shared").await;
    a.create_version("shared").await;
    a.create_version("shared").await;
    a.put_json(
        "/api/v1/models/shared/aliases/production",
        &json!({"version": 1}),
    )
    .await;
    // Replica A caches the model and the alias: in Redis on the first read, in its in-process
    // tier on the second.
    for _ in 0..2 {
        let model: Value = a
            .get("/api/v1/models/shared")
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(model["description"], Value::Null);
        let prod: Value = a
            .get("/api/v1/models/shared/aliases/production")
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(prod["version"], 1);
    }

    // Replica B writes.
    b.patch_json("/api/v1/models/shared", &json!({"description": "v2"}))
        .await;
    b.put_json(
        "/api/v1/models/shared/aliases/production",
        &json!({"version": 2}),
    )
    .await;

    // B reads its own writes at once (its in-process tier was dropped before it answered).
    let model: Value = b
        .get("/api/v1/models/shared")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(model["description"], "v2");
    // A had both in its in-process tier; B's invalidation messages drop them there.
    eventually("replica A sees the new description", || async {
        let model: Value = a.get("/api/v1/models/shared").await.json().await.ok()?;
        (model["description"] == "v2").then_some(())
    })
    .await;
    eventually("replica A sees the moved alias", || async {
        let prod: Value = a
            .get("/api/v1/models/shared/aliases/production")
            .await
            .json()
            .await
            .ok()?;
        (prod["version"] == 2).then_some(())
    })
    .await;

    b.delete("/api/v1/models/shared").await;
    eventually("replica A sees the delete", || async {
        (a.get("/api/v1/models/shared").await.status() == 404).then_some(())
    })
    .await;
    b.server.stop(true).await;
    a.stop().await;
}

#[tokio::test]
async fn with_the_cache_disabled_nothing_is_written_to_redis() {
    let app = spawn_with(Options {
        cache: false,
        ..Options::default()
    })
    .await;
    app.create_model("nc").await;
    assert_eq!(app.get("/api/v1/models/nc").await.status(), 200);
    assert!(cached_fields(&app, "nc").await.is_empty());
    app.stop().await;
}
