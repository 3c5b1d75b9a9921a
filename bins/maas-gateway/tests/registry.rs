//! The model registry over HTTP: models, versions, aliases.

mod common;

use std::collections::BTreeSet;

use common::{assert_problem, spawn_app};
use serde_json::{Value, json};

#[tokio::test]
async fn creating_a_model_returns_201_with_location_and_the_model() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/api/v1/models",
            &json!({"name": "llama-3.1", "description": "chat", "tags": ["llm", "chat"], "metadata": {"owner": "ml"}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/api/v1/models/llama-3.1")
    );
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["name"], "llama-3.1");
    assert_eq!(body["description"], "chat");
    assert_eq!(body["tags"], json!(["llm", "chat"]));
    assert_eq!(body["metadata"], json!({"owner": "ml"}));
    assert_eq!(body["latest_version"], Value::Null);
    for key in ["id", "created_at", "updated_at"] {
        assert!(body[key].is_string(), "{key} in {body}");
    }
    let fetched: Value = app
        .get("/api/v1/models/llama-3.1")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(fetched, body);
    app.stop().await;
}

#[tokio::test]
async fn creating_the_same_model_twice_is_a_conflict() {
    let app = spawn_app().await;
    app.create_model("dup").await;
    let res = app
        .post_json("/api/v1/models", &json!({"name": "dup"}))
        .await;
    let body = assert_problem(res, 409, None).await;
    assert!(body["detail"].as_str().unwrap_or_default().contains("dup"));
    app.stop().await;
}

#[tokio::test]
async fn missing_models_are_404_problems() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/models/ghost",
        "/api/v1/models/ghost/versions",
        "/api/v1/models/ghost/versions/1",
        "/api/v1/models/ghost/aliases/production",
        "/api/v1/models/ghost/aliases/latest",
    ] {
        assert_problem(app.get(path).await, 404, None).await;
    }
    assert_problem(app.delete("/api/v1/models/ghost").await, 404, None).await;
    let res = app
        .patch_json("/api/v1/models/ghost", &json!({"description": "x"}))
        .await;
    assert_problem(res, 404, None).await;
    let res = app
        .post_json(
            "/api/v1/models/ghost/versions",
            &json!({"source_uri": "s3://x"}),
        )
        .await;
    assert_problem(res, 404, None).await;
    app.stop().await;
}

#[tokio::test]
async fn patching_a_model_changes_only_the_given_fields_and_null_clears() {
    let app = spawn_app().await;
    app.post_json(
        "/api/v1/models",
        &json!({"name": "m", "description": "old", "tags": ["a"], "metadata": {"k": 1}}),
    )
    .await;
    let res = app
        .patch_json("/api/v1/models/m", &json!({"tags": ["b", "c"]}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["tags"], json!(["b", "c"]));
    assert_eq!(body["description"], "old");
    assert_eq!(body["metadata"], json!({"k": 1}));

    let res = app
        .patch_json("/api/v1/models/m", &json!({"description": null}))
        .await;
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["description"], Value::Null);
    assert_eq!(body["tags"], json!(["b", "c"]));
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_model_cascades_to_versions_and_aliases() {
    let app = spawn_app().await;
    app.create_model("gone").await;
    app.create_version("gone").await;
    app.create_version("gone").await;
    let res = app
        .put_json(
            "/api/v1/models/gone/aliases/production",
            &json!({"version": 1}),
        )
        .await;
    assert_eq!(res.status(), 200);
    // Warm the cache so that the delete must invalidate it.
    assert_eq!(
        app.get("/api/v1/models/gone/versions/2").await.status(),
        200
    );
    assert_eq!(
        app.get("/api/v1/models/gone/aliases/production")
            .await
            .status(),
        200
    );

    assert_eq!(app.delete("/api/v1/models/gone").await.status(), 204);
    assert_eq!(app.get("/api/v1/models/gone").await.status(), 404);
    assert_eq!(
        app.get("/api/v1/models/gone/versions/2").await.status(),
        404
    );
    assert_eq!(
        app.get("/api/v1/models/gone/aliases/production")
            .await
            .status(),
        404
    );
    // A model of the same name starts again from version 1.
    app.create_model("gone").await;
    assert_eq!(app.create_version("gone").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn versions_are_numbered_from_one_and_listed_newest_first() {
    let app = spawn_app().await;
    app.create_model("v").await;
    for expected in 1..=3 {
        assert_eq!(app.create_version("v").await, expected);
    }
    let res = app
        .post_json(
            "/api/v1/models/v/versions",
            &json!({"source_uri": "s3://b/4", "framework": "pytorch", "description": "d", "metadata": {"acc": 0.9}}),
        )
        .await;
    assert_eq!(
        res.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/api/v1/models/v/versions/4")
    );
    let list: Value = app
        .get("/api/v1/models/v/versions")
        .await
        .json()
        .await
        .expect("json");
    let numbers: Vec<i64> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|v| v["version"].as_i64().expect("number"))
        .collect();
    assert_eq!(numbers, [4, 3, 2, 1]);
    assert_eq!(list["next_cursor"], Value::Null);

    let model: Value = app
        .get("/api/v1/models/v")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(model["latest_version"], 4);

    let page: Value = app
        .get("/api/v1/models/v/versions?limit=3")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(3));
    let cursor = page["next_cursor"].as_str().expect("cursor");
    let rest: Value = app
        .get(&format!(
            "/api/v1/models/v/versions?limit=3&cursor={cursor}"
        ))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(rest["items"][0]["version"], 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn one_hundred_concurrent_version_creates_all_succeed_without_gaps() {
    let app = spawn_app().await;
    app.create_model("busy").await;
    let requests = (0..100).map(|i| {
        let client = app.client.clone();
        let url = app.url("/api/v1/models/busy/versions");
        async move {
            client
                .post(url)
                .json(&json!({"source_uri": format!("s3://b/{i}")}))
                .send()
                .await
                .expect("POST")
        }
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut numbers = BTreeSet::new();
    for res in responses {
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.expect("json");
        numbers.insert(body["version"].as_i64().expect("number"));
    }
    assert_eq!(numbers, (1..=100).collect::<BTreeSet<i64>>());
    app.stop().await;
}

#[tokio::test]
async fn patching_a_version_keeps_its_source_and_can_clear_the_endpoint() {
    let app = spawn_app().await;
    app.create_model("p").await;
    app.create_version("p").await;
    let res = app
        .patch_json(
            "/api/v1/models/p/versions/1",
            &json!({"endpoint_url": null, "framework": "onnx"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["endpoint_url"], Value::Null);
    assert_eq!(body["framework"], "onnx");
    assert_eq!(body["source_uri"], "s3://bucket/model.bin");
    let res = app
        .patch_json(
            "/api/v1/models/p/versions/1",
            &json!({"source_uri": "s3://other"}),
        )
        .await;
    assert_problem(res, 422, Some("source_uri")).await;
    let fetched: Value = app
        .get("/api/v1/models/p/versions/1")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(fetched["framework"], "onnx");
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_version_deletes_its_aliases_and_never_reuses_its_number() {
    let app = spawn_app().await;
    app.create_model("d").await;
    app.create_version("d").await;
    app.create_version("d").await;
    app.put_json(
        "/api/v1/models/d/aliases/production",
        &json!({"version": 2}),
    )
    .await;
    assert_eq!(
        app.get("/api/v1/models/d/aliases/latest")
            .await
            .json::<Value>()
            .await
            .expect("json")["version"],
        2
    );
    assert_eq!(
        app.delete("/api/v1/models/d/versions/2").await.status(),
        204
    );
    assert_eq!(app.get("/api/v1/models/d/versions/2").await.status(), 404);
    assert_eq!(
        app.get("/api/v1/models/d/aliases/production")
            .await
            .status(),
        404
    );
    let latest: Value = app
        .get("/api/v1/models/d/aliases/latest")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(latest["version"], 1);
    let model: Value = app
        .get("/api/v1/models/d")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(model["latest_version"], 1);
    assert_eq!(app.create_version("d").await, 3);
    app.stop().await;
}

#[tokio::test]
async fn aliases_can_be_set_moved_resolved_and_deleted() {
    let app = spawn_app().await;
    app.create_model("a").await;
    app.create_version("a").await;
    app.create_version("a").await;

    let res = app
        .put_json(
            "/api/v1/models/a/aliases/production",
            &json!({"version": 1}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["alias"], "production");
    assert_eq!(body["version"], 1);
    let resolved: Value = app
        .get("/api/v1/models/a/aliases/production")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(resolved["version"], 1);
    assert_eq!(resolved["model"], "a");

    app.put_json(
        "/api/v1/models/a/aliases/production",
        &json!({"version": 2}),
    )
    .await;
    let resolved: Value = app
        .get("/api/v1/models/a/aliases/production")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(resolved["version"], 2, "the move is visible at once");

    let res = app
        .put_json(
            "/api/v1/models/a/aliases/production",
            &json!({"version": 9}),
        )
        .await;
    assert_problem(res, 404, None).await;

    assert_eq!(
        app.delete("/api/v1/models/a/aliases/production")
            .await
            .status(),
        204
    );
    assert_eq!(
        app.get("/api/v1/models/a/aliases/production")
            .await
            .status(),
        404
    );
    assert_eq!(
        app.delete("/api/v1/models/a/aliases/production")
            .await
            .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn latest_is_reserved_and_always_the_highest_version() {
    let app = spawn_app().await;
    app.create_model("l").await;
    assert_eq!(
        app.get("/api/v1/models/l/aliases/latest").await.status(),
        404
    );
    app.create_version("l").await;
    app.create_version("l").await;
    let latest: Value = app
        .get("/api/v1/models/l/aliases/latest")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(latest["version"], 2);
    app.create_version("l").await;
    let latest: Value = app
        .get("/api/v1/models/l/aliases/latest")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        latest["version"], 3,
        "a cached latest is invalidated by a new version"
    );

    let res = app
        .put_json("/api/v1/models/l/aliases/latest", &json!({"version": 1}))
        .await;
    assert_problem(res, 422, Some("alias")).await;
    assert_problem(
        app.delete("/api/v1/models/l/aliases/latest").await,
        422,
        Some("alias"),
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_model_list_is_keyset_paginated_by_name_and_filterable() {
    let app = spawn_app().await;
    for (name, tags, description) in [
        ("alpha", json!(["llm"]), "Chat model"),
        ("bravo", json!(["vision"]), "image"),
        ("charlie", json!(["llm", "small"]), "tiny"),
        ("delta", json!([]), "CHATTY"),
        ("echo", json!(["llm"]), "50% off"),
    ] {
        let res = app
            .post_json(
                "/api/v1/models",
                &json!({"name": name, "tags": tags, "description": description}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    let names = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|m| m["name"].as_str().expect("name").to_owned())
            .collect()
    };

    let first: Value = app
        .get("/api/v1/models?limit=2")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&first), ["alpha", "bravo"]);
    let cursor = first["next_cursor"].as_str().expect("cursor").to_owned();
    // Rows inserted before the cursor position do not shift the next page.
    app.create_model("aardvark").await;
    let second: Value = app
        .get(&format!("/api/v1/models?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&second), ["charlie", "delta"]);
    let cursor = second["next_cursor"].as_str().expect("cursor").to_owned();
    let third: Value = app
        .get(&format!("/api/v1/models?limit=2&cursor={cursor}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&third), ["echo"]);
    assert_eq!(third["next_cursor"], Value::Null);

    let llm: Value = app
        .get("/api/v1/models?tag=llm")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&llm), ["alpha", "charlie", "echo"]);
    let chat: Value = app
        .get("/api/v1/models?q=chat")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&chat), ["alpha", "delta"]);
    let both: Value = app
        .get("/api/v1/models?q=CHAT&tag=llm")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&both), ["alpha"]);
    let percent: Value = app
        .get("/api/v1/models?q=50%25")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(names(&percent), ["echo"], "% is matched literally");
    app.stop().await;
}
