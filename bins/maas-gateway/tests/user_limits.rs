//! One member, many keys: a user's rate limit shared by all its keys (decided with the key's in
//! one Redis call, exact across replicas), and a bound on how many active keys a user holds.
//! The attack: three keys admitted 60 of 90 burst requests where one key admitted 20.

mod common;

use std::time::Instant;

use common::{Options, TestApp, assert_problem, client_with_key, spawn_with};
use maas_api::RateLimitSettings;
use serde_json::{Value, json};

fn header(res: &reqwest::Response, name: &str) -> Option<u64> {
    res.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// Keys a minute, a burst of `burst`, and every user held to `user_rpm` together.
fn limits(rpm: u32, burst: u32, user_rpm: Option<u32>, lease_ms: u64) -> RateLimitSettings {
    RateLimitSettings {
        default_rpm: rpm,
        burst,
        user_rpm,
        lease_ms,
        ..RateLimitSettings::default()
    }
}

/// Creates member `name` and `n` keys for it (as the admin); returns its id and the keys.
async fn member_with_keys(app: &TestApp, name: &str, n: usize) -> (String, Vec<String>) {
    let (id, first) = app.user_with_key(name, "member").await;
    let mut keys = vec![first];
    for i in 1..n {
        let res = app
            .post_json(
                "/api/v1/keys",
                &json!({"name": format!("k{i}"), "user_id": id}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let created: Value = res.json().await.expect("json");
        keys.push(created["key"].as_str().expect("key").to_owned());
    }
    (id, keys)
}

/// `rounds` requests round-robin over `keys` and `apps`, sent concurrently; their statuses.
async fn burst_over(apps: &[&TestApp], keys: &[String], rounds: usize) -> Vec<u16> {
    let clients: Vec<reqwest::Client> = keys.iter().map(|k| client_with_key(k)).collect();
    let requests = (0..rounds).map(|i| {
        let client = clients[i % clients.len()].clone();
        let url = apps[i % apps.len()].url("/api/v1/users/me");
        async move { client.get(url).send().await.expect("GET").status().as_u16() }
    });
    futures_util::future::join_all(requests).await
}

#[tokio::test]
async fn three_keys_of_one_member_together_get_the_members_burst_not_three() {
    let app = spawn_with(Options {
        rate_limit: limits(1, 20, Some(1), 0),
        ..Options::default()
    })
    .await;
    let (_, keys) = member_with_keys(&app, "alice", 3).await;
    let started = Instant::now();

    let statuses = burst_over(&[&app], &keys, 90).await;

    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted + statuses.iter().filter(|s| **s == 429).count(),
        90
    );
    // A bound, not a timing assertion: one more request a minute may have become available.
    let extra = (started.elapsed().as_secs_f64() / 60.0).floor() as usize;
    assert!(
        (20..=20 + extra).contains(&admitted),
        "admitted {admitted}, not 20"
    );
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_with_leases_hold_a_members_keys_to_its_limit_together() {
    let settings = limits(1, 20, Some(1), 250);
    let a = spawn_with(Options {
        rate_limit: settings,
        ..Options::default()
    })
    .await;
    let b = spawn_with(Options {
        rate_limit: settings,
        ..a.replica_options()
    })
    .await;
    let (_, keys) = member_with_keys(&a, "alice", 3).await;
    let started = Instant::now();

    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.extend(burst_over(&[&a, &b], &keys, 30).await);
    }

    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let extra = (started.elapsed().as_secs_f64() / 60.0).floor() as usize;
    assert!(admitted <= 20 + extra, "admitted {admitted} > 20");
    // Leases take only from the upper half of the member's allowance.
    assert!(admitted >= 10, "admitted {admitted}");
    b.server.stop(true).await;
    a.stop().await;
}

#[tokio::test]
async fn an_admin_sets_a_members_own_limit_which_its_next_request_meets() {
    let app = spawn_with(Options {
        // A burst the admin's own requests cannot use up.
        rate_limit: limits(1_000, 50, None, 250),
        ..Options::default()
    })
    .await;
    let (_, keys) = member_with_keys(&app, "alice", 2).await;
    let alice = client_with_key(&keys[0]);
    // A key of hers that is fresh when her limit is set: its allowance refills faster than
    // hers, so hers is the tighter one from the first request on.
    let fresh = client_with_key(&keys[1]);
    let me = |client: &reqwest::Client| client.get(app.url("/api/v1/users/me")).send();
    let res = me(&alice).await.expect("GET");
    assert_eq!(header(&res, "ratelimit-limit"), Some(1_000), "the key's");

    // Members may not set limits, not even their own.
    let res = alice
        .patch(app.url("/api/v1/users/alice"))
        .json(&json!({"rate_limit_rpm": 100_000}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(res.status(), 403);
    let res = app
        .patch_json("/api/v1/users/alice", &json!({"rate_limit_rpm": 1}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.expect("json")["rate_limit_rpm"],
        1
    );

    // The headers speak of the tighter limit: the member's, from the very next request.
    let mut remaining = Vec::new();
    for _ in 0..50 {
        let res = me(&fresh).await.expect("GET");
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "ratelimit-limit"), Some(1));
        remaining.push(header(&res, "ratelimit-remaining").expect("remaining"));
    }
    assert_eq!(remaining, (0..50).rev().collect::<Vec<u64>>());
    // Her other key too: the limit is hers, not a key's.
    let res = me(&alice).await.expect("GET");
    assert_eq!(header(&res, "ratelimit-limit"), Some(1));
    assert!(header(&res, "retry-after").is_some_and(|s| s >= 1));
    assert_problem(res, 429, None).await;

    // Back to the default (none): only the key's limit again.
    let res = app
        .patch_json("/api/v1/users/alice", &json!({"rate_limit_rpm": null}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.expect("json")["rate_limit_rpm"],
        Value::Null
    );
    let res = me(&alice).await.expect("GET");
    assert_eq!(header(&res, "ratelimit-limit"), Some(1_000));
    let res = app
        .patch_json("/api/v1/users/alice", &json!({"rate_limit_rpm": 0}))
        .await;
    assert_problem(res, 422, Some("rate_limit_rpm")).await;
    app.stop().await;
}

#[tokio::test]
async fn a_member_cannot_hold_more_active_keys_than_allowed_even_creating_them_at_once() {
    let app = spawn_with(Options {
        max_keys_per_user: 3,
        ..Options::default()
    })
    .await;
    let (alice_id, keys) = member_with_keys(&app, "alice", 1).await;
    let alice = client_with_key(&keys[0]);

    let attempts = (0..10).map(|i| {
        let alice = alice.clone();
        let url = app.url("/api/v1/keys");
        async move {
            alice
                .post(url)
                .json(&json!({"name": format!("k{i}")}))
                .send()
                .await
                .expect("POST")
        }
    });
    let responses = futures_util::future::join_all(attempts).await;
    let created: Vec<&reqwest::Response> = responses.iter().filter(|r| r.status() == 201).collect();
    assert_eq!(created.len(), 2, "one key held already, three at most");
    let mut refused = 0;
    for res in responses {
        if res.status() == 409 {
            refused += 1;
            let problem = assert_problem(res, 409, None).await;
            assert!(
                problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("auth.max_keys_per_user")),
                "{problem}"
            );
        }
    }
    assert_eq!(refused, 8);
    // Admins creating keys for the member meet the same bound.
    let res = app
        .post_json(
            "/api/v1/keys",
            &json!({"name": "admin's", "user_id": alice_id}),
        )
        .await;
    assert_eq!(res.status(), 409);
    // A revoked key makes room.
    let listed: Value = alice
        .get(app.url("/api/v1/keys"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    let newest = listed["items"][0]["id"].as_str().expect("id").to_owned();
    let res = alice
        .delete(app.url(&format!("/api/v1/keys/{newest}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(res.status(), 204);
    let res = alice
        .post(app.url("/api/v1/keys"))
        .json(&json!({"name": "again"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    app.stop().await;
}
