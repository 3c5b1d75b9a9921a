//! Canaries and blue/green through aliases, over the whole stack: a split alias keeps each API
//! key on one version (the one its place in the split gives, on every replica), one `PUT`
//! moves the whole weight and a second replica routes by it from its next call, and the usage
//! report compares the versions.

mod common;

use std::time::{Duration, Instant};

use common::stub::{Stub, start_stub};
use common::{Options, TestApp, client_with_key, eventually, spawn_app, spawn_with};
use maas_domain::alias::{Weight, pick_index, place};
use maas_domain::values::{AliasName, ModelName};
use serde_json::{Value, json};
use uuid::Uuid;

/// A public model `name` whose versions 1 and 2 both point at the stub.
async fn two_versions(app: &TestApp, stub: &Stub, name: &str) {
    app.create_model(name).await;
    for n in 1..=2 {
        let body = json!({"source_uri": format!("s3://m/{n}"), "endpoint_url": stub.base});
        let res = app
            .post_json(&format!("/api/v1/models/{name}/versions"), &body)
            .await;
        assert_eq!(res.status(), 201);
    }
}

/// A key of a member, its id and the version (index + 1) a 50/50 `production` split of
/// `model` between versions 1 and 2 sends it to, by the documented rule.
struct Caller {
    client: reqwest::Client,
    id: Uuid,
    version: i64,
}

/// Keys of one member until there is one for each version of a 50/50 split of `model`'s
/// `production` (each new key has an even chance of either; 19 all on one side, one chance in
/// 260,000, would take a broken rule, not bad luck). 19: with the member's first key, the
/// `auth.max_keys_per_user` of 20 a member may hold.
async fn one_key_per_half(app: &TestApp, model: &str) -> (Caller, Caller) {
    let (user_id, _) = app.user_with_key("alice", "member").await;
    let (model, production) = (
        ModelName::parse(model).expect("a model name"),
        AliasName::parse("production").expect("an alias"),
    );
    let halves = [Weight::ONE, Weight::ONE];
    let (mut first, mut second) = (None, None);
    for _ in 0..19 {
        let res = app
            .post_json("/api/v1/keys", &json!({"name": "k", "user_id": user_id}))
            .await;
        assert_eq!(res.status(), 201);
        let key: Value = res.json().await.expect("key json");
        let id: Uuid = key["id"].as_str().expect("id").parse().expect("a uuid");
        let index = pick_index(place(id, &model, &production), &halves).expect("a half");
        let caller = Caller {
            client: client_with_key(key["key"].as_str().expect("key")),
            id,
            version: i64::try_from(index).expect("0 or 1") + 1,
        };
        match caller.version {
            1 => first = first.or(Some(caller)),
            _ => second = second.or(Some(caller)),
        }
        if let (Some(_), Some(_)) = (&first, &second) {
            break;
        }
    }
    (
        first.expect("a key on version 1"),
        second.expect("a key on version 2"),
    )
}

/// The version `caller`'s chat call of `model` (`name`, `name@alias`) was served by.
async fn served_by(app: &TestApp, caller: &Caller, model: &str, extra: Value) -> i64 {
    let mut body = json!({"model": model, "messages": []});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let res = caller
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("POST");
    res.headers()
        .get("x-maas-version")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or_else(|| panic!("no x-maas-version on a {} answer", res.status()))
}

async fn set_production(app: &TestApp, model: &str, versions: Value) {
    let res = app
        .put_json(
            &format!("/api/v1/models/{model}/aliases/production"),
            &json!({ "versions": versions }),
        )
        .await;
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

#[tokio::test]
async fn two_keys_land_on_the_two_halves_of_a_split_and_each_stays_on_its_own() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    two_versions(&app, &stub, "blue-green").await;
    set_production(
        &app,
        "blue-green",
        json!([{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]),
    )
    .await;
    let (one, two) = one_key_per_half(&app, "blue-green").await;
    assert_ne!(one.id, two.id);

    for _ in 0..10 {
        for caller in [&one, &two] {
            for model in ["blue-green", "blue-green@production"] {
                let version = served_by(&app, caller, model, json!({})).await;
                assert_eq!(version, caller.version, "key {} on {model}", caller.id);
            }
        }
    }
    // The canary's errors and latency against the stable version's, in the usage report.
    for _ in 0..5 {
        served_by(&app, &two, "blue-green", json!({"stub_status": 500})).await;
    }
    let report = usage_by_version(&app, |items| {
        items
            .iter()
            .map(|i| i["requests"].as_i64().unwrap_or(0))
            .sum::<i64>()
            == 45
    })
    .await;
    let row = |group: &str| {
        report
            .iter()
            .find(|i| i["group"] == group)
            .cloned()
            .unwrap_or_else(|| panic!("no row {group}: {report:?}"))
    };
    let (stable, canary) = (row("blue-green:1"), row("blue-green:2"));
    assert_eq!(
        (stable["requests"].as_i64(), stable["errors"].as_i64()),
        (Some(20), Some(0))
    );
    assert_eq!(
        (canary["requests"].as_i64(), canary["errors"].as_i64()),
        (Some(25), Some(5))
    );
    assert_eq!(
        (canary["model"].as_str(), canary["version"].as_i64()),
        (Some("blue-green"), Some(2))
    );
    for field in ["avg_latency_ms", "p50_latency_ms", "p95_latency_ms"] {
        assert!(canary[field].is_number(), "{field}: {canary}");
    }
    stub.stop().await;
    app.stop().await;
}

/// `GET /api/v1/usage?group_by=version` as the admin, polled (bounded) until `complete` holds
/// for its items: usage is written in the background.
async fn usage_by_version(app: &TestApp, complete: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = app.get("/api/v1/usage?group_by=version").await;
        assert_eq!(res.status(), 200);
        let report: Value = res.json().await.expect("json");
        let items = report["items"].as_array().cloned().unwrap_or_default();
        if complete(&items) || Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn moving_the_whole_weight_is_one_put_that_another_replica_routes_by_on_its_next_call() {
    let a = spawn_app().await;
    // B reads the shared Redis directly (no in-process tier), so what A's write invalidated
    // before it answered is gone for B's very next call.
    let b = spawn_with(Options {
        local_cache: false,
        ..a.replica_options()
    })
    .await;
    // C keeps the in-process tier, dropped by A's invalidation message when it arrives.
    let c = spawn_with(Options {
        ..a.replica_options()
    })
    .await;
    let stub = start_stub().await;
    two_versions(&a, &stub, "rollout").await;
    set_production(
        &a,
        "rollout",
        json!([{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]),
    )
    .await;
    let (one, two) = one_key_per_half(&a, "rollout").await;
    // Every replica agrees on each key's version, and caches the split.
    for replica in [&a, &b, &c] {
        for _ in 0..3 {
            assert_eq!(served_by(replica, &one, "rollout", json!({})).await, 1);
            assert_eq!(served_by(replica, &two, "rollout", json!({})).await, 2);
        }
    }

    set_production(&a, "rollout", json!([{"version": 2, "weight": 1}])).await;

    assert_eq!(served_by(&b, &one, "rollout", json!({})).await, 2);
    assert_eq!(
        served_by(&b, &one, "rollout@production", json!({})).await,
        2
    );
    assert_eq!(served_by(&a, &one, "rollout", json!({})).await, 2);
    eventually("replica C routes by the new split", || async {
        (served_by(&c, &one, "rollout", json!({})).await == 2).then_some(())
    })
    .await;
    for replica in [&a, &b, &c] {
        assert_eq!(served_by(replica, &two, "rollout", json!({})).await, 2);
    }

    // And back: blue/green is one PUT each way.
    set_production(&a, "rollout", json!([{"version": 1, "weight": 1}])).await;
    assert_eq!(served_by(&b, &two, "rollout", json!({})).await, 1);

    stub.stop().await;
    c.server.stop(true).await;
    b.server.stop(true).await;
    a.stop().await;
}

#[tokio::test]
async fn deleting_a_version_of_a_split_leaves_the_others_serving_until_the_last_one_goes() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    two_versions(&app, &stub, "shrink").await;
    set_production(
        &app,
        "shrink",
        json!([{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]),
    )
    .await;
    let (one, two) = one_key_per_half(&app, "shrink").await;

    let res = app.delete("/api/v1/models/shrink/versions/1").await;
    assert_eq!(res.status(), 204);

    let alias: Value = app
        .get("/api/v1/models/shrink/aliases/production")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(alias["version"], 2, "{alias}");
    assert_eq!(
        alias["versions"].as_array().map(Vec::len),
        Some(1),
        "{alias}"
    );
    for caller in [&one, &two] {
        assert_eq!(
            served_by(&app, caller, "shrink@production", json!({})).await,
            2
        );
    }

    let res = app.delete("/api/v1/models/shrink/versions/2").await;
    assert_eq!(res.status(), 204);
    let res = app.get("/api/v1/models/shrink/aliases/production").await;
    assert_eq!(res.status(), 404);
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn what_replicas_from_before_splits_cached_for_an_alias_is_never_read() {
    use redis::AsyncCommands as _;
    let app = spawn_app().await;
    let stub = start_stub().await;
    two_versions(&app, &stub, "upgrade").await;
    set_production(
        &app,
        "upgrade",
        json!([{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]),
    )
    .await;
    let (_, two) = one_key_per_half(&app, "upgrade").await;
    // A replica of the previous build, still running during a rolling upgrade, caches one
    // version for the alias and the bare name (the primary it reads from the database).
    let version_one: Value = app
        .get("/api/v1/models/upgrade/versions/1")
        .await
        .json()
        .await
        .expect("json");
    let mut conn = app.redis.pool.get().await.expect("redis");
    let scope = format!("{}c:model:upgrade", app.redis.prefix);
    for field in ["a:production", "d"] {
        let _: () = conn
            .hset(&scope, field, version_one.to_string())
            .await
            .expect("HSET");
    }
    drop(conn);

    for model in ["upgrade", "upgrade@production"] {
        assert_eq!(served_by(&app, &two, model, json!({})).await, 2, "{model}");
    }
    stub.stop().await;
    app.stop().await;
}
