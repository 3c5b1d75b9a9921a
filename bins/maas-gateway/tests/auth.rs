//! API keys, authentication and authorization over HTTP.

mod common;

use common::{Options, assert_problem, client_with_key, eventually, spawn_app, spawn_with};
use serde_json::{Value, json};

async fn assert_unauthorized(res: reqwest::Response) -> Value {
    let www = res
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert!(
        www.is_some_and(|w| w.starts_with("Bearer")),
        "WWW-Authenticate: Bearer"
    );
    assert_problem(res, 401, None).await
}

#[tokio::test]
async fn every_api_route_needs_a_key_and_operations_routes_do_not() {
    let app = spawn_app().await;
    for path in [
        "/api/v1/models",
        "/api/v1/models/x",
        "/api/v1/users/me",
        "/api/v1/keys",
        "/api/v1/nope",
    ] {
        let res = app.anon.get(app.url(path)).send().await.expect("GET");
        assert_unauthorized(res).await;
    }
    for path in [
        "/health",
        "/health/ready",
        "/metrics",
        "/api/openapi.json",
        "/docs",
    ] {
        let res = app.anon.get(app.url(path)).send().await.expect("GET");
        assert_eq!(res.status(), 200, "{path} is open");
    }
    app.stop().await;
}

#[tokio::test]
async fn missing_malformed_unknown_expired_revoked_and_disabled_keys_all_look_the_same() {
    let app = spawn_app().await;
    let (user_id, member_key) = app.user_with_key("alice", "member").await;

    // An expired key: created for the near future, then made to have expired in the database.
    let res = app
        .post_json(
            "/api/v1/keys",
            &json!({"name": "short-lived", "user_id": user_id, "expires_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let expiring: Value = res.json().await.expect("json");
    app.db
        .execute(&format!(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = '{}'",
            expiring["id"].as_str().expect("id")
        ))
        .await;
    let expired_key = expiring["key"].as_str().expect("key").to_owned();

    // A revoked key.
    let res = app
        .post_json(
            "/api/v1/keys",
            &json!({"name": "to-revoke", "user_id": user_id}),
        )
        .await;
    let revoked: Value = res.json().await.expect("json");
    let revoked_key = revoked["key"].as_str().expect("key").to_owned();
    let res = app
        .delete(&format!(
            "/api/v1/keys/{}",
            revoked["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(res.status(), 204);

    let unknown = format!("maas_{}", "x".repeat(43));
    let mut bodies = Vec::new();
    let requests: Vec<reqwest::RequestBuilder> = vec![
        app.anon.get(app.url("/api/v1/models")),
        app.anon
            .get(app.url("/api/v1/models"))
            .header("authorization", "Bearer nope"),
        app.anon
            .get(app.url("/api/v1/models"))
            .header("authorization", "Basic YTpi"),
        app.anon
            .get(app.url("/api/v1/models"))
            .header("x-api-key", "maas_short"),
        app.anon
            .get(app.url("/api/v1/models"))
            .bearer_auth(&unknown),
        app.anon
            .get(app.url("/api/v1/models"))
            .bearer_auth(&expired_key),
        app.anon
            .get(app.url("/api/v1/models"))
            .bearer_auth(&revoked_key),
    ];
    for req in requests {
        let body = assert_unauthorized(req.send().await.expect("GET")).await;
        bodies.push((body["title"].clone(), body["detail"].clone()));
    }
    // The member works until disabled; then it is refused like the rest.
    let member = client_with_key(&member_key);
    assert_eq!(
        member
            .get(app.url("/api/v1/users/me"))
            .send()
            .await
            .expect("GET")
            .status(),
        200
    );
    let res = app
        .patch_json("/api/v1/users/alice", &json!({"disabled": true}))
        .await;
    assert_eq!(res.status(), 200);
    let body = assert_unauthorized(
        member
            .get(app.url("/api/v1/users/me"))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    bodies.push((body["title"].clone(), body["detail"].clone()));
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "the response never says which case it was: {bodies:?}"
    );

    let metrics = app.metrics_text().await;
    for reason in [
        "missing",
        "malformed",
        "unknown",
        "expired",
        "revoked",
        "disabled",
    ] {
        assert!(
            metrics.contains(&format!("maas_auth_failures_total{{reason=\"{reason}\"}}")),
            "{reason} is counted"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn keys_work_with_bearer_and_x_api_key_and_the_plaintext_is_shown_once() {
    let app = spawn_app().await;
    let res = app
        .post_json("/api/v1/keys", &json!({"name": "mine"}))
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("json");
    let key = created["key"].as_str().expect("key").to_owned();
    assert!(
        key.starts_with("maas2_") && key.len() == 6 + 43 + 6,
        "{key}"
    );
    assert!(key.starts_with(created["prefix"].as_str().expect("prefix")));

    let res = app
        .anon
        .get(app.url("/api/v1/users/me"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 200);
    let res = app
        .anon
        .get(app.url("/api/v1/users/me"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("GET");
    let me: Value = res.json().await.expect("json");
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "admin");

    let listed = app.get("/api/v1/keys").await.text().await.expect("text");
    assert!(!listed.contains(&key), "listings never contain a key");
    assert!(listed.contains(created["id"].as_str().expect("id")));

    // The database holds only the SHA-256 of the key.
    let stored = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM api_keys WHERE key_hash = sha256('{key}'::bytea) AND id = '{}'",
            created["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(stored, 1);
    let leaked = app
        .db
        .scalar(&format!(
            "SELECT count(*) FROM api_keys k WHERE position('{key}' in k::text) > 0"
        ))
        .await;
    assert_eq!(leaked, 0, "no column holds the plaintext key");
    app.stop().await;
}

#[tokio::test]
async fn members_read_public_models_but_change_only_their_own() {
    let app = spawn_app().await;
    let (_, alice_key) = app.user_with_key("alice", "member").await;
    let (_, bob_key) = app.user_with_key("bob", "member").await;
    let alice = client_with_key(&alice_key);
    let bob = client_with_key(&bob_key);

    let res = alice
        .post(app.url("/api/v1/models"))
        .json(&json!({"name": "alices", "visibility": "public"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    let model: Value = res.json().await.expect("json");
    let me: Value = alice
        .get(app.url("/api/v1/users/me"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(model["owner_id"], me["id"]);
    let res = alice
        .post(app.url("/api/v1/models/alices/versions"))
        .json(&json!({"source_uri": "s3://a/1"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);

    // Bob reads, but may not change.
    assert_eq!(
        bob.get(app.url("/api/v1/models/alices"))
            .send()
            .await
            .expect("GET")
            .status(),
        200
    );
    assert_eq!(
        bob.get(app.url("/api/v1/models/alices/versions/1"))
            .send()
            .await
            .expect("GET")
            .status(),
        200
    );
    let forbidden = [
        bob.patch(app.url("/api/v1/models/alices"))
            .json(&json!({"description": "mine now"})),
        bob.delete(app.url("/api/v1/models/alices")),
        bob.post(app.url("/api/v1/models/alices/versions"))
            .json(&json!({"source_uri": "s3://b"})),
        bob.patch(app.url("/api/v1/models/alices/versions/1"))
            .json(&json!({"framework": "x"})),
        bob.delete(app.url("/api/v1/models/alices/versions/1")),
        bob.put(app.url("/api/v1/models/alices/aliases/prod"))
            .json(&json!({"version": 1})),
        bob.delete(app.url("/api/v1/models/alices/aliases/prod")),
    ];
    for req in forbidden {
        assert_problem(req.send().await.expect("request"), 403, None).await;
    }
    // Alice may; so may the admin.
    let res = alice
        .put(app.url("/api/v1/models/alices/aliases/prod"))
        .json(&json!({"version": 1}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(res.status(), 200);
    let res = app
        .patch_json("/api/v1/models/alices", &json!({"description": "by admin"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.delete("/api/v1/models/alices").await.status(), 204);
    app.stop().await;
}

#[tokio::test]
async fn user_management_is_admin_only() {
    let app = spawn_app().await;
    let (alice_id, alice_key) = app.user_with_key("alice", "member").await;
    let alice = client_with_key(&alice_key);
    let res = alice
        .post(app.url("/api/v1/users"))
        .json(&json!({"username": "eve", "role": "admin"}))
        .send()
        .await
        .expect("POST");
    assert_problem(res, 403, None).await;
    assert_problem(
        alice
            .get(app.url("/api/v1/users"))
            .send()
            .await
            .expect("GET"),
        403,
        None,
    )
    .await;
    let res = alice
        .patch(app.url("/api/v1/users/alice"))
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .expect("PATCH");
    assert_problem(res, 403, None).await;
    // Members may not mint keys for others or set their own limits.
    let res = alice
        .post(app.url("/api/v1/keys"))
        .json(&json!({"name": "k", "rate_limit_rpm": 1000}))
        .send()
        .await
        .expect("POST");
    assert_problem(res, 403, None).await;
    let res = alice
        .get(app.url(&format!("/api/v1/keys?user_id={}", uuid::Uuid::new_v4())))
        .send()
        .await
        .expect("GET");
    assert_problem(res, 403, None).await;
    // A member cannot revoke someone else's key, and cannot tell it exists.
    let admin_keys: Value = app.get("/api/v1/keys").await.json().await.expect("json");
    let admin_key_id = admin_keys["items"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let res = alice
        .delete(app.url(&format!("/api/v1/keys/{admin_key_id}")))
        .send()
        .await
        .expect("DELETE");
    assert_problem(res, 404, None).await;

    // The admin lists users and sees alice's keys.
    let users: Value = app.get("/api/v1/users").await.json().await.expect("json");
    let names: Vec<&str> = users["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, ["admin", "alice"]);
    let keys: Value = app
        .get(&format!("/api/v1/keys?user_id={alice_id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(keys["items"].as_array().map(Vec::len), Some(1));

    // Validation and conflicts.
    assert_problem(
        app.post_json(
            "/api/v1/users",
            &json!({"username": "alice", "role": "member"}),
        )
        .await,
        409,
        None,
    )
    .await;
    assert_problem(
        app.post_json(
            "/api/v1/users",
            &json!({"username": "Bad Name", "role": "member"}),
        )
        .await,
        422,
        Some("username"),
    )
    .await;
    assert_problem(
        app.post_json(
            "/api/v1/users",
            &json!({"username": "me", "role": "member"}),
        )
        .await,
        422,
        Some("username"),
    )
    .await;
    assert_problem(
        app.post_json(
            "/api/v1/users",
            &json!({"username": "carol", "role": "root"}),
        )
        .await,
        422,
        Some("role"),
    )
    .await;
    assert_problem(
        app.post_json("/api/v1/keys", &json!({"name": ""})).await,
        422,
        Some("name"),
    )
    .await;
    assert_problem(
        app.post_json(
            "/api/v1/keys",
            &json!({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await,
        422,
        Some("expires_at"),
    )
    .await;
    assert_problem(
        app.post_json("/api/v1/keys", &json!({"name": "k", "rate_limit_rpm": 0}))
            .await,
        422,
        Some("rate_limit_rpm"),
    )
    .await;
    assert_problem(
        app.post_json(
            "/api/v1/keys",
            &json!({"name": "k", "user_id": uuid::Uuid::new_v4()}),
        )
        .await,
        404,
        None,
    )
    .await;
    assert_problem(app.delete("/api/v1/keys/not-a-uuid").await, 422, Some("id")).await;
    app.stop().await;
}

#[tokio::test]
async fn a_role_change_applies_to_the_very_next_request() {
    let app = spawn_app().await;
    let (_, key) = app.user_with_key("promoted", "member").await;
    let client = client_with_key(&key);
    assert_problem(
        client
            .get(app.url("/api/v1/users"))
            .send()
            .await
            .expect("GET"),
        403,
        None,
    )
    .await;
    app.patch_json("/api/v1/users/promoted", &json!({"role": "admin"}))
        .await;
    assert_eq!(
        client
            .get(app.url("/api/v1/users"))
            .send()
            .await
            .expect("GET")
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn revocation_reaches_another_replicas_in_process_cache() {
    let a = spawn_app().await;
    let b = spawn_with(Options {
        ..a.replica_options()
    })
    .await;
    let res = a
        .post_json("/api/v1/keys", &json!({"name": "shared"}))
        .await;
    let created: Value = res.json().await.expect("json");
    let key = created["key"].as_str().expect("key").to_owned();
    let client = client_with_key(&key);
    // Both replicas have looked the key up (and cached it).
    for app in [&a, &b] {
        for _ in 0..2 {
            assert_eq!(
                client
                    .get(app.url("/api/v1/users/me"))
                    .send()
                    .await
                    .expect("GET")
                    .status(),
                200
            );
        }
    }
    let res = a
        .delete(&format!(
            "/api/v1/keys/{}",
            created["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(res.status(), 204);
    // The replica that revoked refuses at once.
    assert_unauthorized(
        client
            .get(a.url("/api/v1/users/me"))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    // The other one had the key in its in-process tier; the invalidation message drops it.
    eventually("replica B refuses the revoked key", || async {
        let res = client.get(b.url("/api/v1/users/me")).send().await.ok()?;
        (res.status() == 401).then_some(res)
    })
    .await;
    assert_unauthorized(
        client
            .get(b.url("/api/v1/users/me"))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    b.server.stop(true).await;
    a.stop().await;
}

#[tokio::test]
async fn last_used_at_is_written_in_batches_not_per_request() {
    let app = spawn_app().await;
    let (_, key) = app.user_with_key("user", "member").await;
    let client = client_with_key(&key);
    for _ in 0..3 {
        client
            .get(app.url("/api/v1/users/me"))
            .send()
            .await
            .expect("GET");
    }
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL")
            .await,
        0,
        "requests do not write to Postgres"
    );
    // What the binary's background task does every auth.usage_flush_seconds.
    let flushed = app.accounts.flush_key_usage().await.expect("flush");
    assert_eq!(flushed, 2, "the member's key and the admin's key");
    assert_eq!(
        app.db
            .scalar("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL")
            .await,
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn the_last_enabled_admin_cannot_lock_everyone_out() {
    let app = spawn_app().await;
    for body in [json!({"role": "member"}), json!({"disabled": true})] {
        let res = app.patch_json("/api/v1/users/admin", &body).await;
        assert_problem(res, 409, None).await;
    }
    assert_eq!(
        app.get("/api/v1/users/me").await.status(),
        200,
        "still an admin"
    );
    app.user_with_key("deputy", "admin").await;
    let res = app
        .patch_json("/api/v1/users/admin", &json!({"role": "member"}))
        .await;
    assert_eq!(res.status(), 200);
    app.stop().await;
}
