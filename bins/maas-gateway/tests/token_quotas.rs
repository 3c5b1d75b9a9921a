//! Token quotas through the whole gateway: a key with a small `tpm` is refused with OpenAI's 429
//! and headers once its window is full, each answer's real usage is settled (the stub model
//! server reports 7 + 3 tokens), a monthly quota survives Redis losing its counter (seeded again
//! from Postgres), two gateways on one Redis hold a key to its tpm together, and the
//! usage report shows the month's use. The windows are a minute long and
//! the test waits only for the background settlement, so nothing depends on speed.

mod common;

use std::time::{Duration, Instant};

use common::stub::{Stub, start_stub};
use common::{Options, TestApp, client_with_key, spawn_app, spawn_with};
use serde_json::{Value, json};

/// What the stub reports for every chat completion.
const USED: u64 = 7 + 3;

async fn servable(app: &TestApp, stub: &Stub, name: &str) {
    app.create_model(name).await;
    let res = app
        .post_json(
            &format!("/api/v1/models/{name}/versions"),
            &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base}),
        )
        .await;
    assert_eq!(res.status(), 201);
}

/// A member with a key carrying `quotas` (set by the admin): the key's id and the key.
async fn metered_key(app: &TestApp, name: &str, quotas: Value) -> (String, String) {
    let (user_id, _) = app.user_with_key(name, "member").await;
    let mut body = json!({"name": "metered", "user_id": user_id});
    if let (Some(body), Some(quotas)) = (body.as_object_mut(), quotas.as_object()) {
        body.extend(quotas.clone());
    }
    let res = app.post_json("/api/v1/keys", &body).await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.expect("json");
    assert_eq!(
        created["tpm"],
        quotas.get("tpm").cloned().unwrap_or(Value::Null)
    );
    (
        created["id"].as_str().expect("id").to_owned(),
        created["key"].as_str().expect("key").to_owned(),
    )
}

/// A chat completion that reserves 5 + a quarter of its body's bytes (the body is padded to
/// 80 bytes: 25 tokens).
fn call_body(model: &str) -> Value {
    let body = json!({"model": model, "max_tokens": 5, "messages": [], "pad": ""});
    let padding = 80 - body.to_string().len();
    json!({"model": model, "max_tokens": 5, "messages": [], "pad": "x".repeat(padding)})
}

async fn redis_values(app: &TestApp, pattern: &str) -> Vec<u64> {
    let mut conn = maas_cache::checkout(&app.redis.pool)
        .await
        .expect("a connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}{pattern}", app.redis.prefix))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let mut values = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        let found: Vec<u64> = if kind == "hash" {
            redis::cmd("HVALS").arg(&key).query_async(&mut conn).await
        } else {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<u64>>(&mut conn)
                .await
                .map(|v| v.into_iter().collect())
        }
        .expect("values");
        values.extend(found);
    }
    values
}

/// Polls (bounded) until the Redis keys matching `pattern` hold `expected` in all: the settlement
/// runs in the background.
async fn settled_to(app: &TestApp, pattern: &str, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sum: u64 = redis_values(app, pattern).await.iter().sum();
        if sum == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pattern}: holds {sum}, not {expected}, after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// This month's quota row of `key_id` in the usage report, polled (bounded) until its
/// `tokens_used` is `used`: usage is written in the background.
async fn quota_row(client: &reqwest::Client, app: &TestApp, key_id: &str, used: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report: Value = client
            .get(app.url("/api/v1/usage"))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("json");
        let row = report["quota"]["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["key_id"] == key_id).cloned())
            .unwrap_or(Value::Null);
        if row["tokens_used"] == used {
            return row;
        }
        assert!(Instant::now() < deadline, "{report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name)?.to_str().ok()
}

#[tokio::test]
async fn a_key_past_its_tpm_is_refused_after_its_settled_usage_fills_the_window() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "metered").await;
    let (key_id, key) = metered_key(&app, "alice", json!({"tpm": 25})).await;
    let client = client_with_key(&key);
    let window = format!("tw:{key_id}");
    let call = || {
        client
            .post(app.url("/v1/chat/completions"))
            .json(&call_body("metered"))
            .send()
    };

    // Each call reserves 25 and is settled to the 10 it used: admitted while the window holds
    // 0, 10 and 20, which are below 25.
    for n in 1..=3 {
        let res = call().await.expect("POST");
        assert_eq!(res.status(), 200, "call {n}");
        assert_eq!(header(&res, "x-ratelimit-limit-tokens"), Some("25"));
        let remaining = 25_u64.saturating_sub((n - 1) * USED + 25);
        assert_eq!(
            header(&res, "x-ratelimit-remaining-tokens"),
            Some(remaining.to_string().as_str())
        );
        assert!(header(&res, "x-ratelimit-reset-tokens").is_some_and(|r| r.ends_with('s')));
        assert!(header(&res, "ratelimit-remaining").is_some());
        assert!(header(&res, "x-ratelimit-remaining-requests").is_some());
        res.bytes().await.expect("the answer");
        settled_to(&app, &window, n * USED).await;
    }

    let refused = call().await.expect("POST");
    assert_eq!(refused.status(), 429);
    assert!(
        header(&refused, "retry-after")
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (1..=61).contains(&s)))
    );
    assert_eq!(header(&refused, "x-ratelimit-limit-tokens"), Some("25"));
    assert_eq!(header(&refused, "x-ratelimit-remaining-tokens"), Some("0"));
    assert!(header(&refused, "x-ratelimit-reset-tokens").is_some());
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["type"], "tokens", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(
        stub.seen().len(),
        3,
        "the refused call never reached the model server"
    );
    settled_to(&app, &window, 3 * USED).await;

    let row = quota_row(&client, &app, &key_id, 3 * USED).await;
    assert_eq!(row["tpm"], 25);
    assert_eq!(row["monthly_tokens"], Value::Null);
    app.stop().await;
    stub.stop().await;
}

#[tokio::test]
async fn a_monthly_quota_is_not_renewed_when_redis_loses_its_counter() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "metered").await;
    let (key_id, key) = metered_key(&app, "bob", json!({"monthly_tokens": 25})).await;
    let client = client_with_key(&key);
    let counter = format!("tm:{key_id}:*");
    let call = || {
        client
            .post(app.url("/v1/chat/completions"))
            .json(&call_body("metered"))
            .send()
    };

    for n in 1..=3 {
        let res = call().await.expect("POST");
        assert_eq!(res.status(), 200, "call {n}");
        assert_eq!(header(&res, "x-ratelimit-limit-tokens"), None, "no tpm");
        res.bytes().await.expect("the answer");
        settled_to(&app, &counter, n * USED).await;
    }
    let refused = call().await.expect("POST");
    assert_eq!(refused.status(), 429);
    assert!(header(&refused, "retry-after").is_some_and(|s| s.parse::<u64>().is_ok()));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");

    // Recorded in Postgres with what each call was charged; then Redis loses the counter.
    let row = quota_row(&client, &app, &key_id, 3 * USED).await;
    assert_eq!(
        (
            row["monthly_tokens"].clone(),
            row["monthly_tokens_left"].clone()
        ),
        (json!(25), json!(0))
    );
    let mut conn = maas_cache::checkout(&app.redis.pool)
        .await
        .expect("a connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}{counter}", app.redis.prefix))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: i64 = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .expect("DEL");

    let refused = call().await.expect("POST");
    assert_eq!(refused.status(), 429, "not a fresh month");
    assert_eq!(
        redis_values(&app, &counter).await,
        vec![3 * USED],
        "seeded from Postgres"
    );
    assert_eq!(stub.seen().len(), 3);
    app.stop().await;
    stub.stop().await;
}

#[tokio::test]
async fn a_users_tpm_set_by_an_admin_meters_all_its_keys_from_the_next_call() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "metered").await;
    let (user_id, key) = app.user_with_key("carol", "member").await;
    let client = client_with_key(&key);
    let call = || {
        client
            .post(app.url("/v1/chat/completions"))
            .json(&call_body("metered"))
            .send()
    };
    let before = call().await.expect("POST");
    assert_eq!(
        header(&before, "x-ratelimit-limit-tokens"),
        None,
        "no limit yet"
    );
    before.bytes().await.expect("the answer");

    let res = app
        .patch_json(
            "/api/v1/users/carol",
            &json!({"tpm": 30, "monthly_tokens": 5000}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let user: Value = res.json().await.expect("json");
    assert_eq!(
        (user["tpm"].clone(), user["monthly_tokens"].clone()),
        (json!(30), json!(5000))
    );

    let after = call().await.expect("POST");
    assert_eq!(after.status(), 200);
    assert_eq!(header(&after, "x-ratelimit-limit-tokens"), Some("30"));
    after.bytes().await.expect("the answer");
    settled_to(&app, &format!("twu:{user_id}"), USED).await;
    let report: Value = client
        .get(app.url("/api/v1/usage"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(report["quota"]["user"]["tpm"], 30, "{report}");
    assert_eq!(report["quota"]["user"]["monthly_tokens"], 5000, "{report}");
    app.stop().await;
    stub.stop().await;
}

#[tokio::test]
async fn a_call_sent_and_never_answered_keeps_its_reservation_even_when_its_client_left() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "metered").await;
    stub.never_answer();
    let (key_id, key) = metered_key(&app, "alice", json!({"tpm": 1000})).await;
    let client = client_with_key(&key);
    let (url, body) = (app.url("/v1/chat/completions"), call_body("metered"));
    let call = tokio::spawn(async move { client.post(url).json(&body).send().await });

    // The model server has the call; then the client goes away before any answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stub.seen().is_empty() {
        assert!(Instant::now() < deadline, "the call never reached the stub");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call.abort();
    assert!(call.await.is_err(), "aborted");

    // The gateway waits for the model server until upstream.timeout, then records the call as
    // 504 on its version, charged what it reserved (25): the server may have worked on it all
    // along, so a timeout is no way to a free call.
    let row = format!(
        "SELECT count(*) FROM usage_events WHERE key_id = '{key_id}' AND status = 504 \
         AND version = 1 AND quota_tokens = 25"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.db.scalar(&row).await == 0 {
        assert!(Instant::now() < deadline, "no such usage row after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settled_to(&app, &format!("tw:{key_id}"), 25).await;
}

/// `body` padded (in its `pad` field) to `len` bytes.
fn padded(mut body: Value, len: usize) -> Value {
    body["pad"] = json!("");
    let padding = len - body.to_string().len();
    body["pad"] = json!("x".repeat(padding));
    body
}

/// Lets `stub`'s held streams go on until every one of `held` has been read to its end (bounded):
/// a stream's hold may begin just after a release, so it is released again until all are done.
async fn release_and_read(stub: &Stub, held: Vec<reqwest::Response>) {
    let reads = tokio::spawn(futures_util::future::join_all(
        held.into_iter().map(reqwest::Response::text),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reads.is_finished() {
        assert!(Instant::now() < deadline, "the held streams did not end");
        stub.release();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for body in reads.await.expect("the reads") {
        assert!(body.expect("a held stream").contains("[DONE]"));
    }
}

#[tokio::test]
async fn two_gateways_on_one_redis_admit_no_more_tokens_together_than_the_key_s_tpm() {
    let a = spawn_app().await;
    let b = spawn_with(Options {
        ..a.replica_options()
    })
    .await;
    let stub = start_stub().await;
    servable(&a, &stub, "metered").await;
    let (key_id, key) = metered_key(&a, "carol", json!({"tpm": 140})).await;
    let client = client_with_key(&key);
    let window = format!("tw:{key_id}");
    // A stream the stub holds open before its usage: admitted calls stay reserved (5 + 120 / 4 =
    // 35 tokens each) until the test lets them end, so nothing depends on when settlements land.
    let held = padded(
        json!({"model": "metered", "max_tokens": 5, "messages": [], "stream": true,
               "stub_newlines": 1, "stub_hold": true}),
        120,
    );
    let started = Instant::now();
    // Calls alternate between the gateways, `calls` of them, and say who admitted each.
    let alternate = async |calls: usize| {
        let mut admitted = Vec::new();
        let mut outcomes = Vec::new();
        for i in 0..calls {
            let gateway = if i % 2 == 0 { &a } else { &b };
            let res = client
                .post(gateway.url("/v1/chat/completions"))
                .json(&held)
                .send()
                .await
                .expect("POST");
            outcomes.push(res.status().as_u16());
            if res.status() == 200 {
                admitted.push(res);
            } else {
                let body: Value = res.json().await.expect("json");
                assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
            }
        }
        (admitted, outcomes)
    };

    // 140 tokens a minute, 35 a call, admitted while the key's window is below 140 (so never
    // more than the tpm plus one call's reservation): at 0, 35, 70 and 105, two calls through
    // each gateway, and at 140 no fifth through either. (Reservations leave the window after a
    // minute: on a machine so slow that the test has taken most of one, nothing exact is left
    // to check.)
    let in_time = || started.elapsed() < Duration::from_secs(45);
    let (admitted, outcomes) = alternate(10).await;
    assert_eq!(stub.seen().len(), admitted.len());
    if in_time() {
        assert_eq!(
            outcomes,
            [200, 200, 200, 200, 429, 429, 429, 429, 429, 429],
            "the first four fill the key's minute on both gateways"
        );
    }
    release_and_read(&stub, admitted).await;
    if in_time() {
        // Each was settled to what it used (10): 40 spent; admitted at 40, 75 and 110, and a
        // fourth at 145 is over.
        settled_to(&a, &window, 4 * USED).await;
        let (admitted, outcomes) = alternate(5).await;
        if in_time() {
            assert_eq!(
                outcomes,
                [200, 200, 200, 429, 429],
                "settled on both gateways"
            );
        }
        release_and_read(&stub, admitted).await;
    }
    b.server.stop(true).await;
    a.stop().await;
    stub.stop().await;
}
