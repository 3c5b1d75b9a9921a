//! An API key's models allowlist: a key given to a CI job for one model cannot spend the
//! user's other models, nor read them, nor mint a key that could. Each case is an attack that
//! worked while keys could be used with every model their user may use.

mod common;

use common::stub::{Stub, start_stub};
use common::{
    Options, TestApp, assert_problem, client_with_key, eventually, spawn_app, spawn_with,
};
use serde_json::{Value, json};

/// A public model `name` with one version served by `stub`.
async fn served_model(app: &TestApp, name: &str, stub: &Stub) {
    app.create_model(name).await;
    let res = app
        .post_json(
            &format!("/api/v1/models/{name}/versions"),
            &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base}),
        )
        .await;
    assert_eq!(res.status(), 201);
}

async fn chat(app: &TestApp, client: &reqwest::Client, model: &str) -> reqwest::Response {
    client
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("POST")
}

/// A key of user `user_id` (created by the admin) that may be used with `models` only.
async fn restricted_key(app: &TestApp, user_id: &str, models: &[&str]) -> Value {
    let res = app
        .post_json(
            "/api/v1/keys",
            &json!({"name": "ci", "user_id": user_id, "models": models}),
        )
        .await;
    assert_eq!(res.status(), 201);
    res.json().await.expect("json")
}

fn names(body: &Value, list: &str, field: &str) -> Vec<String> {
    body[list]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|m| m[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_key_with_an_allowlist_calls_reads_and_lists_only_those_models() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    for name in ["allowed", "other"] {
        served_model(&app, name, &stub).await;
    }
    let (alice_id, _) = app.user_with_key("alice", "member").await;
    let created = restricted_key(&app, &alice_id, &["allowed"]).await;
    assert_eq!(created["models"], json!(["allowed"]));
    let ci = client_with_key(created["key"].as_str().expect("key"));

    let res = chat(&app, &ci, "allowed").await;
    assert_eq!(res.status(), 200);
    res.bytes().await.expect("body");
    let seen = stub.seen().len();
    for target in ["other", "other@latest", "other:1"] {
        let res = chat(&app, &ci, target).await;
        assert_eq!(res.status(), 403, "{target}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["type"], "permission_error", "{body}");
    }
    let raw = ci
        .post(app.url("/v1/models/other/invoke/echo"))
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(raw.status(), 403);
    assert_eq!(stub.seen().len(), seen, "nothing reached the other model");
    // Registry reads of other models: 403 problems.
    for path in [
        "/api/v1/models/other",
        "/api/v1/models/other/versions",
        "/api/v1/models/other/versions/1",
        "/api/v1/models/other/aliases/latest",
    ] {
        let res = ci.get(app.url(path)).send().await.expect("GET");
        assert_problem(res, 403, None).await;
    }
    assert_eq!(
        ci.get(app.url("/api/v1/models/allowed"))
            .send()
            .await
            .expect("GET")
            .status(),
        200
    );
    // Lists hold the allowed models only.
    let openai: Value = ci
        .get(app.url("/v1/models"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(names(&openai, "data", "id"), ["allowed"]);
    let registry: Value = ci
        .get(app.url("/api/v1/models"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(names(&registry, "items", "name"), ["allowed"]);
    // The user's listing of keys shows the allowlist.
    let keys: Value = ci
        .get(app.url("/api/v1/keys"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    let listed: Vec<&Value> = keys["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|k| k["id"] == created["id"])
        .collect();
    assert_eq!(listed[0]["models"], json!(["allowed"]));
    app.stop().await;
}

#[tokio::test]
async fn an_admins_restricted_key_is_restricted_too() {
    let app = spawn_app().await;
    app.create_model("other").await;
    let res = app
        .post_json(
            "/api/v1/keys",
            &json!({"name": "narrow", "models": ["mine"]}),
        )
        .await;
    let created: Value = res.json().await.expect("json");
    let narrow = client_with_key(created["key"].as_str().expect("key"));
    let res = narrow
        .get(app.url("/api/v1/models/other"))
        .send()
        .await
        .expect("GET");
    assert_problem(res, 403, None).await;
    for (method, path, body) in [
        ("POST", "/api/v1/models", json!({"name": "new-one"})),
        ("DELETE", "/api/v1/models/other", Value::Null),
        (
            "POST",
            "/api/v1/models/other/grants",
            json!({"username": "admin"}),
        ),
    ] {
        let req = narrow.request(method.parse().expect("method"), app.url(path));
        let req = if body.is_null() { req } else { req.json(&body) };
        let res = req.send().await.expect("request");
        assert_eq!(res.status(), 403, "{method} {path}");
    }
    assert_eq!(
        app.get("/api/v1/models/other").await.status(),
        200,
        "still there"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_restricted_key_cannot_mint_a_less_restricted_one() {
    let app = spawn_app().await;
    let (alice_id, _) = app.user_with_key("alice", "member").await;
    let created = restricted_key(&app, &alice_id, &["one", "two"]).await;
    let ci = client_with_key(created["key"].as_str().expect("key"));

    let res = ci
        .post(app.url("/api/v1/keys"))
        .json(&json!({"name": "wider", "models": ["one", "three"]}))
        .send()
        .await
        .expect("POST");
    assert_problem(res, 403, None).await;
    // Asking for nothing gets the restricted key's own list; asking for less is fine.
    let res = ci
        .post(app.url("/api/v1/keys"))
        .json(&json!({"name": "same"}))
        .send()
        .await
        .expect("POST");
    let same: Value = res.json().await.expect("json");
    assert_eq!(same["models"], json!(["one", "two"]));
    let res = ci
        .post(app.url("/api/v1/keys"))
        .json(&json!({"name": "narrower", "models": ["two"]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    // Nor widen a key afterwards.
    let id = same["id"].as_str().expect("id");
    let res = ci
        .patch(app.url(&format!("/api/v1/keys/{id}")))
        .json(&json!({"models": ["three"]}))
        .send()
        .await
        .expect("PATCH");
    assert_problem(res, 403, None).await;
    app.stop().await;
}

#[tokio::test]
async fn an_allowlist_is_one_to_a_hundred_valid_names() {
    let app = spawn_app().await;
    let many: Vec<String> = (0..101).map(|i| format!("m{i}")).collect();
    for (models, field) in [
        (json!([]), "models"),
        (json!(many), "models"),
        (json!(["ok", "Not OK"]), "models[1]"),
        (json!("llama"), "models"),
    ] {
        let res = app
            .post_json("/api/v1/keys", &json!({"name": "k", "models": models}))
            .await;
        assert_problem(res, 422, Some(field)).await;
    }
    let res = app
        .post_json("/api/v1/keys", &json!({"name": "k", "models": many[..100]}))
        .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let res = app
        .patch_json(&format!("/api/v1/keys/{id}"), &json!({}))
        .await;
    assert_problem(res, 422, Some("models")).await;
    app.stop().await;
}

#[tokio::test]
async fn a_changed_allowlist_applies_to_the_next_call_on_every_replica() {
    let a = spawn_app().await;
    let b = spawn_with(Options {
        ..a.replica_options()
    })
    .await;
    let stub = start_stub().await;
    for name in ["first", "second"] {
        served_model(&a, name, &stub).await;
    }
    let (alice_id, _) = a.user_with_key("alice", "member").await;
    let created = restricted_key(&a, &alice_id, &["first"]).await;
    let id = created["id"].as_str().expect("id");
    let ci = client_with_key(created["key"].as_str().expect("key"));
    // Replica b has the key's lookup in its memory.
    assert_eq!(chat(&b, &ci, "second").await.status(), 403);

    // An admin lifts the allowlist.
    let res = a
        .patch_json(&format!("/api/v1/keys/{id}"), &json!({"models": null}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.expect("json")["models"],
        Value::Null
    );

    let res = chat(&a, &ci, "second").await;
    assert_eq!(res.status(), 200, "at once on the replica that wrote it");
    res.bytes().await.expect("body");
    eventually("replica b sees the change", || async {
        let res = chat(&b, &ci, "second").await;
        (res.status() == 200).then_some(())
    })
    .await;

    // Its holder narrows it again; the very next call on a refuses.
    let res = ci
        .patch(a.url(&format!("/api/v1/keys/{id}")))
        .json(&json!({"models": ["first"]}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(res.status(), 200);
    assert_eq!(chat(&a, &ci, "second").await.status(), 403);
    eventually("replica b sees the narrowing", || async {
        (chat(&b, &ci, "second").await.status() == 403).then_some(())
    })
    .await;
    // Another member cannot touch the key: it does not exist for them.
    let (_, mallory) = a.user_with_key("mallory", "member").await;
    let res = client_with_key(&mallory)
        .patch(a.url(&format!("/api/v1/keys/{id}")))
        .json(&json!({"models": null}))
        .send()
        .await
        .expect("PATCH");
    assert_problem(res, 404, None).await;
    b.server.stop(true).await;
    a.stop().await;
}
