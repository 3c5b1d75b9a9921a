//! Members share one gateway: a private model is used by its owner, admins and the users an
//! admin granted it to, and to anyone else it does not exist; names admins reserved are
//! theirs. Every case is an attack that worked before models had a visibility.

mod common;

use common::stub::{Stub, start_stub};
use common::{Options, TestApp, client_with_key, eventually, spawn_app, spawn_with};
use serde_json::{Value, json};

/// Member `owner` registers private model `name` with a version served by `stub`.
async fn private_model(app: &TestApp, owner: &reqwest::Client, name: &str, stub: &Stub) {
    let res = owner
        .post(app.url("/api/v1/models"))
        .json(&json!({"name": name}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    let model: Value = res.json().await.expect("json");
    assert_eq!(
        model["visibility"], "private",
        "private unless asked otherwise"
    );
    let res = owner
        .post(app.url(&format!("/api/v1/models/{name}/versions")))
        .json(&json!({"source_uri": "s3://m/1", "endpoint_url": stub.base, "upstream_api_key": "sk-owner-secret"}))
        .send()
        .await
        .expect("POST");
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

/// The model names `client` sees in `GET /v1/models` and `GET /api/v1/models`.
async fn listed(app: &TestApp, client: &reqwest::Client) -> (Vec<String>, Vec<String>) {
    let names = |body: Value, list: &str, field: &str| -> Vec<String> {
        body[list]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|m| m[field].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let openai: Value = client
        .get(app.url("/v1/models"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    let registry: Value = client
        .get(app.url("/api/v1/models"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    (
        names(openai, "data", "id"),
        names(registry, "items", "name"),
    )
}

#[tokio::test]
async fn a_member_cannot_spend_another_members_private_model_nor_learn_that_it_exists() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    let (_, alice) = app.user_with_key("alice", "member").await;
    let (_, mallory) = app.user_with_key("mallory", "member").await;
    let (alice, mallory) = (client_with_key(&alice), client_with_key(&mallory));
    private_model(&app, &alice, "alices-llm", &stub).await;

    // The owner and the admins use it.
    for client in [&alice, &app.client] {
        let res = chat(&app, client, "alices-llm").await;
        assert_eq!(res.status(), 200);
        res.bytes().await.expect("body");
    }
    let used = stub.seen().len();

    // To mallory it does not exist: the same answers as for a model nobody registered, and the
    // owner's upstream key is never spent.
    for model in ["alices-llm", "alices-llm@latest", "alices-llm:1"] {
        let res = chat(&app, &mallory, model).await;
        assert_eq!(res.status(), 404, "{model}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], "model_not_found", "{body}");
        let ghost = chat(&app, &mallory, "nobody-registered-this").await;
        let ghost: Value = ghost.json().await.expect("json");
        assert_eq!(
            body["error"]["message"]
                .as_str()
                .map(|m| m.replace("alices-llm", "X")),
            ghost["error"]["message"]
                .as_str()
                .map(|m| m.replace("nobody-registered-this", "X")),
        );
    }
    let raw = mallory
        .post(app.url("/v1/models/alices-llm/invoke/echo"))
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(raw.status(), 404);
    assert_eq!(
        stub.seen().len(),
        used,
        "nothing reached the owner's model server"
    );
    for path in [
        "/api/v1/models/alices-llm",
        "/api/v1/models/alices-llm/versions",
        "/api/v1/models/alices-llm/versions/1",
        "/api/v1/models/alices-llm/aliases/latest",
    ] {
        let res = mallory.get(app.url(path)).send().await.expect("GET");
        assert_eq!(res.status(), 404, "{path}");
    }
    let res = mallory
        .patch(app.url("/api/v1/models/alices-llm"))
        .json(&json!({"visibility": "public"}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(res.status(), 404, "not 403: that would tell it exists");
    assert_eq!(listed(&app, &mallory).await, (vec![], vec![]));
    let seen = vec!["alices-llm".to_owned()];
    assert_eq!(listed(&app, &alice).await, (seen.clone(), seen));
    app.stop().await;
}

#[tokio::test]
async fn an_admins_grant_opens_a_private_model_to_one_user_on_every_replica() {
    let a = spawn_app().await;
    let b = spawn_with(Options {
        ..a.replica_options()
    })
    .await;
    let stub = start_stub().await;
    let (_, alice) = a.user_with_key("alice", "member").await;
    let (_, bob) = a.user_with_key("bob", "member").await;
    let (_, carol) = a.user_with_key("carol", "member").await;
    let (alice, bob, carol) = (
        client_with_key(&alice),
        client_with_key(&bob),
        client_with_key(&carol),
    );
    private_model(&a, &alice, "shared", &stub).await;
    // Replica b has looked (and cached what it found) before the grant.
    assert_eq!(chat(&b, &bob, "shared").await.status(), 404);

    // Members may not grant, not even the owner.
    for member in [&alice, &bob] {
        let res = member
            .post(a.url("/api/v1/models/shared/grants"))
            .json(&json!({"username": "bob"}))
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), 403);
    }
    let res = a
        .post_json("/api/v1/models/shared/grants", &json!({"username": "bob"}))
        .await;
    assert_eq!(res.status(), 201);
    let grant: Value = res.json().await.expect("json");
    assert_eq!(grant["username"], "bob");
    let again = a
        .post_json("/api/v1/models/shared/grants", &json!({"username": "bob"}))
        .await;
    assert_eq!(again.status(), 200, "granted already");

    // At once on the replica that wrote it; on the other as its invalidation arrives.
    let res = chat(&a, &bob, "shared").await;
    assert_eq!(res.status(), 200);
    res.bytes().await.expect("body");
    eventually("replica b sees the grant", || async {
        (chat(&b, &bob, "shared").await.status() == 200).then_some(())
    })
    .await;
    assert_eq!(chat(&b, &carol, "shared").await.status(), 404, "bob only");
    let grants: Value = a
        .get("/api/v1/models/shared/grants")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(grants["items"].as_array().map(Vec::len), Some(1));

    assert_eq!(
        a.delete("/api/v1/models/shared/grants/bob").await.status(),
        204
    );
    assert_eq!(chat(&a, &bob, "shared").await.status(), 404);
    eventually("replica b sees the revocation", || async {
        (chat(&b, &bob, "shared").await.status() == 404).then_some(())
    })
    .await;
    assert_eq!(
        a.delete("/api/v1/models/shared/grants/bob").await.status(),
        404
    );
    assert_eq!(
        a.post_json(
            "/api/v1/models/shared/grants",
            &json!({"username": "Not A Name"})
        )
        .await
        .status(),
        422
    );
    b.server.stop(true).await;
    a.stop().await;
}

#[tokio::test]
async fn the_owner_may_make_a_model_public_for_everyone() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    let (_, alice) = app.user_with_key("alice", "member").await;
    let (_, bob) = app.user_with_key("bob", "member").await;
    let (alice, bob) = (client_with_key(&alice), client_with_key(&bob));
    private_model(&app, &alice, "opened", &stub).await;
    assert_eq!(chat(&app, &bob, "opened").await.status(), 404);
    let res = alice
        .patch(app.url("/api/v1/models/opened"))
        .json(&json!({"visibility": "public"}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(res.status(), 200);
    let res = chat(&app, &bob, "opened").await;
    assert_eq!(res.status(), 200);
    res.bytes().await.expect("body");
    // Using is not changing.
    let res = bob
        .delete(app.url("/api/v1/models/opened"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(res.status(), 403);
    let res = alice
        .patch(app.url("/api/v1/models/opened"))
        .json(&json!({"visibility": "everyone"}))
        .send()
        .await
        .expect("PATCH");
    common::assert_problem(res, 422, Some("visibility")).await;
    app.stop().await;
}

#[tokio::test]
async fn a_member_cannot_squat_a_reserved_name() {
    let app = spawn_with(Options {
        reserved_names: vec!["gpt-4o".to_owned(), "claude-*".to_owned()],
        ..Options::default()
    })
    .await;
    let (_, squatter) = app.user_with_key("squatter", "member").await;
    let squatter = client_with_key(&squatter);
    for name in ["gpt-4o", "claude-3-opus"] {
        let res = squatter
            .post(app.url("/api/v1/models"))
            .json(&json!({"name": name, "visibility": "public"}))
            .send()
            .await
            .expect("POST");
        let problem = common::assert_problem(res, 403, None).await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("reserved")
        );
    }
    let res = squatter
        .post(app.url("/api/v1/models"))
        .json(&json!({"name": "gpt-4o-lookalike"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201, "only the reserved names");
    app.create_model("gpt-4o").await;
    app.stop().await;
}
