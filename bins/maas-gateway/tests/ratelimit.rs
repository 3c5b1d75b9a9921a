//! Per-key rate limits shared by every replica, and their headers.

mod common;

use std::time::Instant;

use common::{Options, assert_problem, client_with_key, spawn_with};
use maas_api::RateLimitSettings;
use maas_cache::test_util::{BlackHole, UNREACHABLE_REDIS_URL};
use serde_json::{Value, json};

fn header(res: &reqwest::Response, name: &str) -> Option<u64> {
    res.headers().get(name)?.to_str().ok()?.parse().ok()
}

fn limits(rpm: u32, burst: u32, fail_open: bool) -> RateLimitSettings {
    RateLimitSettings {
        default_rpm: rpm,
        burst,
        fail_open,
        ..RateLimitSettings::default()
    }
}

#[tokio::test]
async fn responses_carry_ratelimit_headers_that_count_down() {
    let app = spawn_with(Options {
        rate_limit: limits(60, 10, true),
        ..Options::default()
    })
    .await;
    let (_, key) = app.user_with_key("counted", "member").await;
    let client = client_with_key(&key);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let res = client
            .get(app.url("/api/v1/users/me"))
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "ratelimit-limit"), Some(60));
        assert!(header(&res, "ratelimit-reset").is_some_and(|r| r >= 1));
        remaining.push(header(&res, "ratelimit-remaining").expect("remaining"));
    }
    assert_eq!(remaining, [9, 8, 7]);
    // Open routes are not limited and carry no such headers.
    let res = app.anon.get(app.url("/health")).send().await.expect("GET");
    assert!(res.headers().get("ratelimit-limit").is_none());
    app.stop().await;
}

#[tokio::test]
async fn past_the_burst_requests_get_429_with_retry_after() {
    let app = spawn_with(Options {
        rate_limit: limits(1, 5, true),
        ..Options::default()
    })
    .await;
    // Four of the admin key's five requests.
    let (_, key) = app.user_with_key("limited", "member").await;
    let (_, other) = app.user_with_key("other", "member").await;
    let client = client_with_key(&key);
    for _ in 0..5 {
        let res = client
            .get(app.url("/api/v1/models"))
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), 200);
    }
    let res = client
        .get(app.url("/api/v1/models"))
        .send()
        .await
        .expect("GET");
    assert!(header(&res, "retry-after").is_some_and(|s| s >= 1));
    assert_eq!(header(&res, "ratelimit-remaining"), Some(0));
    assert_eq!(header(&res, "ratelimit-limit"), Some(1));
    assert_problem(res, 429, None).await;
    // Another key has its own allowance.
    let res = client_with_key(&other)
        .get(app.url("/api/v1/models"))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 200);
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("maas_rate_limit_decisions_total{decision=\"limited\"}"));
    assert!(metrics.contains("maas_rate_limit_decisions_total{decision=\"allowed\"}"));
    app.stop().await;
}

#[tokio::test]
async fn a_key_with_its_own_limit_overrides_the_default() {
    let app = spawn_with(Options {
        rate_limit: limits(1_000, 2, true),
        ..Options::default()
    })
    .await;
    let res = app
        .post_json(
            "/api/v1/keys",
            &json!({"name": "slow", "rate_limit_rpm": 1}),
        )
        .await;
    let created: Value = res.json().await.expect("json");
    assert_eq!(created["rate_limit_rpm"], 1);
    let client = client_with_key(created["key"].as_str().expect("key"));
    let res = client
        .get(app.url("/api/v1/users/me"))
        .send()
        .await
        .expect("GET");
    assert_eq!(header(&res, "ratelimit-limit"), Some(1));
    client
        .get(app.url("/api/v1/users/me"))
        .send()
        .await
        .expect("GET");
    let res = client
        .get(app.url("/api/v1/users/me"))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 429);
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_sharing_redis_admit_no_more_than_limit_plus_burst_together() {
    let (rpm, burst) = (1_u32, 5_u32);
    let a = spawn_with(Options {
        rate_limit: limits(rpm, burst, true),
        ..Options::default()
    })
    .await;
    let b = spawn_with(Options {
        rate_limit: limits(rpm, burst, true),
        ..a.replica_options()
    })
    .await;
    let (_, key) = a.user_with_key("shared", "member").await;
    let client = client_with_key(&key);
    let started = Instant::now();
    let requests = (0..40).map(|i| {
        let url = if i % 2 == 0 {
            a.url("/api/v1/users/me")
        } else {
            b.url("/api/v1/users/me")
        };
        let client = client.clone();
        async move { client.get(url).send().await.expect("GET").status().as_u16() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let elapsed_minutes = started.elapsed().as_secs_f64() / 60.0;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + limited, 40, "{statuses:?}");
    // A bound, not a timing assertion: the window is however long the requests took.
    let bound = burst as usize + (f64::from(rpm) * elapsed_minutes).floor() as usize;
    assert!(
        admitted <= bound,
        "admitted {admitted} > limit + burst ({bound})"
    );
    // Strict: no replica may sit on part of the burst while the other refuses. (Leases take only
    // from the upper half of a burst and a key's first grant on a replica is never a lease, so
    // with a burst of 5 every one of these requests is decided by Redis.)
    assert!(
        admitted >= burst as usize,
        "the burst is admitted: {admitted}"
    );
    b.server.stop(true).await;
    a.stop().await;
}

#[tokio::test]
async fn with_redis_down_fail_open_admits_and_counts() {
    let app = spawn_with(Options {
        redis_url: Some(UNREACHABLE_REDIS_URL.to_owned()),
        rate_limit: limits(1, 1, true),
        ..Options::default()
    })
    .await;
    for _ in 0..3 {
        let res = app.get("/api/v1/models").await;
        assert_eq!(
            res.status(),
            200,
            "admitted although over the limit: nothing can count"
        );
        assert_eq!(header(&res, "ratelimit-limit"), Some(1));
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("maas_rate_limit_decisions_total{decision=\"error\"}"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn with_redis_hung_fail_closed_answers_503_without_hanging() {
    let hole = BlackHole::start().await.expect("black hole");
    let app = spawn_with(Options {
        redis_url: Some(hole.url()),
        rate_limit: limits(1_000, 10, false),
        ..Options::default()
    })
    .await;
    let res = app.get("/api/v1/models").await;
    assert!(res.headers().contains_key("retry-after"));
    assert_problem(res, 503, None).await;
    // Open routes still answer.
    assert_eq!(
        app.anon
            .get(app.url("/health"))
            .send()
            .await
            .expect("GET")
            .status(),
        200
    );
    app.stop().await;
}
