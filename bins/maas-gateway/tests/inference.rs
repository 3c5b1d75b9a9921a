//! Inference routing: OpenAI-compatible and raw calls forwarded to a real HTTP model server.

mod common;

use std::time::{Duration, Instant};

use common::stub::{Stub, start_stub};
use common::{Options, TestApp, client_with_key, spawn_app, spawn_with};
use futures_util::StreamExt as _;
use maas_api::UpstreamSettings;
use serde_json::{Value, json};

/// A model `name` whose versions 1 and 2 point at the stub (with an upstream key) and whose
/// version 3 has no endpoint.
async fn servable(app: &TestApp, stub: &Stub, name: &str) {
    app.create_model(name).await;
    for body in [
        json!({"source_uri": "s3://m/1", "endpoint_url": stub.base, "upstream_api_key": "sk-upstream-1"}),
        json!({"source_uri": "s3://m/2", "endpoint_url": format!("{}/", stub.base)}),
        json!({"source_uri": "s3://m/3"}),
    ] {
        let res = app
            .post_json(&format!("/api/v1/models/{name}/versions"), &body)
            .await;
        assert_eq!(res.status(), 201);
    }
}

async fn chat(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/v1/chat/completions", &body).await
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name)?.to_str().ok()
}

async fn assert_openai_error(res: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status(), status);
    let body: Value = res.json().await.expect("json error");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"].is_string() && body["error"]["type"].is_string(),
        "{body}"
    );
    body
}

/// An app whose model servers get one second to answer (and between two chunks).
async fn spawn_with_one_second_upstream_timeout() -> TestApp {
    spawn_with(Options {
        upstream: UpstreamSettings {
            timeout_seconds: 1,
            ..UpstreamSettings::default()
        },
        ..Options::default()
    })
    .await
}

/// Waits (bounded) for the gateway to drop the stub's stream: ordering, not speed.
async fn assert_upstream_cancelled(stub: &Stub) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stub.was_cancelled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stub.was_cancelled(), "the upstream call was dropped");
}

/// `GET /api/v1/usage?group_by=model`, polled (bounded) until `complete` holds for it: usage is
/// written in the background.
async fn usage_by_model(app: &TestApp, complete: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report: Value = app
            .get("/api/v1/usage?group_by=model")
            .await
            .json()
            .await
            .expect("json");
        if complete(&report) || Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_chat_completion_is_forwarded_as_is_and_answered_with_gateway_headers() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "chat").await;
    let body = json!({"model": "chat:1", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5});
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header(
            "x-api-key",
            "maas_should_not_travel_either_0123456789abcdef",
        )
        .header("connection", "keep-alive")
        .header("x-request-id", "trace-42")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-maas-model"), Some("chat"));
    assert_eq!(header(&res, "x-maas-version"), Some("1"));
    let overhead: f64 = header(&res, "x-maas-overhead-ms")
        .expect("overhead")
        .parse()
        .expect("number");
    assert!(overhead >= 0.0);
    assert_eq!(
        header(&res, "x-upstream"),
        Some("stub"),
        "end-to-end headers come back"
    );
    assert_eq!(header(&res, "x-request-id"), Some("trace-42"));
    assert!(
        header(&res, "transfer-encoding").is_none(),
        "a body of known length is not re-framed as chunked"
    );
    let length: usize = header(&res, "content-length")
        .expect("content-length")
        .parse()
        .expect("number");
    let bytes = res.bytes().await.expect("body");
    assert_eq!(bytes.len(), length);
    let answer: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello");
    assert_eq!(answer["usage"]["total_tokens"], 10);

    let seen = stub.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    let forwarded: Value = serde_json::from_slice(&seen.body).expect("json body");
    let mut served = body.clone();
    served["model"] = json!("chat");
    assert_eq!(
        forwarded, served,
        "the body goes upstream as sent, but for the model server's name for the model"
    );
    assert_eq!(
        answer["model"], "chat:1",
        "and the answer comes back with the client's"
    );
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-upstream-1"),
        "the version's credential"
    );
    assert!(
        seen.header("x-api-key").is_none(),
        "the client's key never travels"
    );
    assert!(
        seen.headers
            .iter()
            .all(|(_, v)| !v.contains(&app.admin_key))
    );
    assert_eq!(seen.header("x-request-id"), Some("trace-42"));
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn the_model_field_selects_alias_version_or_the_default() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "sel").await;
    let version_of = |res: &reqwest::Response| header(res, "x-maas-version").map(str::to_owned);

    // No production alias: the highest version with an endpoint (3 has none).
    let res = chat(&app, json!({"model": "sel", "messages": []})).await;
    assert_eq!(version_of(&res).as_deref(), Some("2"));
    assert!(
        stub.last().header("authorization").is_none(),
        "version 2 has no upstream key"
    );
    // With production set, a bare name goes there.
    app.put_json(
        "/api/v1/models/sel/aliases/production",
        &json!({"version": 1}),
    )
    .await;
    let res = chat(&app, json!({"model": "sel", "messages": []})).await;
    assert_eq!(version_of(&res).as_deref(), Some("1"));
    app.put_json("/api/v1/models/sel/aliases/canary", &json!({"version": 2}))
        .await;
    let res = chat(&app, json!({"model": "sel@canary", "messages": []})).await;
    assert_eq!(version_of(&res).as_deref(), Some("2"));
    let res = chat(&app, json!({"model": "sel:2", "messages": []})).await;
    assert_eq!(version_of(&res).as_deref(), Some("2"));

    // Unknown model, alias or version, or a version without endpoint: 404 in OpenAI's shape.
    for model in ["ghost", "sel@nope", "sel:9", "sel:3", "sel@latest"] {
        let res = chat(&app, json!({"model": model, "messages": []})).await;
        // Routed nowhere, so no version is named.
        assert_eq!(version_of(&res), None, "{model}");
        assert_eq!(header(&res, "x-maas-model"), None, "{model}");
        assert_openai_error(res, 404, "model_not_found").await;
    }
    // Bad requests name the field, in OpenAI's shape.
    for (body, status) in [
        (json!({"messages": []}), 422),
        (json!({"model": 5}), 422),
        (json!({"model": "Bad Name"}), 422),
    ] {
        let res = chat(&app, body).await;
        let err = assert_openai_error(res, status, "invalid_value").await;
        assert_eq!(err["error"]["param"], "model");
    }
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST");
    assert_openai_error(res, 400, "invalid_json").await;
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn completions_embeddings_and_the_model_list_speak_openai() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "emb").await;
    app.create_model("not-servable").await;
    app.create_version("not-servable").await; // has an endpoint, but nothing listens there
    app.create_model("no-endpoint").await;
    app.post_json(
        "/api/v1/models/no-endpoint/versions",
        &json!({"source_uri": "s3://x"}),
    )
    .await;

    let res = app
        .post_json("/v1/completions", &json!({"model": "emb", "prompt": "hi"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(stub.last().path, "/v1/completions");
    let res = app
        .post_json("/v1/embeddings", &json!({"model": "emb", "input": "hi"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(stub.last().path, "/v1/embeddings");
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["data"][0]["embedding"], json!([0.1, 0.2, 0.3]));

    let list: Value = app.get("/v1/models").await.json().await.expect("json");
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["emb", "not-servable"], "only models with an endpoint");
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["owned_by"], "admin");
    assert!(list["data"][0]["created"].as_i64().is_some());
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn streams_pass_through_as_server_sent_events() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "s").await;
    let res = chat(
        &app,
        json!({"model": "s:1", "stream": true, "messages": []}),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "content-type").is_some_and(|c| c.starts_with("text/event-stream")));
    assert!(
        res.headers().get("content-length").is_none(),
        "streamed, not buffered"
    );
    let text = res.text().await.expect("body");
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let content: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, "Hello");
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_call() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "drip").await;
    let res = chat(
        &app,
        json!({"model": "drip:1", "stream": true, "stub_drip": true}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    assert!(!stub.was_cancelled());
    drop(body);
    assert_upstream_cancelled(&stub).await;
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn upstream_failures_are_502_504_or_passed_through() {
    let app = spawn_with_one_second_upstream_timeout().await;
    let stub = start_stub().await;
    servable(&app, &stub, "f").await;
    // Unreachable: nothing listens on port 1.
    app.create_model("down").await;
    app.post_json(
        "/api/v1/models/down/versions",
        &json!({"source_uri": "s3://x", "endpoint_url": "http://127.0.0.1:1/v1"}),
    )
    .await;
    let res = chat(&app, json!({"model": "down"})).await;
    // The answer names the version whose model server failed, as a forwarded one does.
    assert_eq!(header(&res, "x-maas-model"), Some("down"));
    assert_eq!(header(&res, "x-maas-version"), Some("1"));
    let err = assert_openai_error(res, 502, "upstream_unreachable").await;
    assert!(
        !err.to_string().contains("127.0.0.1"),
        "internals stay in the log: {err}"
    );
    // Slower than upstream.timeout_seconds.
    let res = chat(&app, json!({"model": "f:1", "stub_delay_ms": 3000})).await;
    assert_eq!(header(&res, "x-maas-model"), Some("f"));
    assert_eq!(header(&res, "x-maas-version"), Some("1"));
    assert_openai_error(res, 504, "upstream_timeout").await;
    // The upstream's own errors pass through with status and body.
    let res = chat(&app, json!({"model": "f:1", "stub_status": 503})).await;
    assert_eq!(res.status(), 503);
    assert_eq!(header(&res, "x-maas-version"), Some("1"));
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["message"], "upstream says no");
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_model_server_that_goes_quiet_mid_body_is_cut_off_after_the_timeout() {
    let app = spawn_with_one_second_upstream_timeout().await;
    let stub = start_stub().await;
    servable(&app, &stub, "quiet").await;
    // The headers come at once, the first chunk only after 3 s: longer than the timeout.
    let res = chat(
        &app,
        json!({"model": "quiet:1", "stream": true, "stub_drip": true, "stub_drip_ms": 3000}),
    )
    .await;
    assert_eq!(res.status(), 200);
    // Bounded only so that a regression fails instead of hanging (the stub never ends).
    let body = tokio::time::timeout(Duration::from_secs(60), res.bytes()).await;
    let body = body.expect("the gateway ends the body; it does not wait for the model server");
    if let Ok(body) = &body {
        assert!(
            !String::from_utf8_lossy(body).contains("data:"),
            "the body broke off before any chunk"
        );
    }
    assert_upstream_cancelled(&stub).await;
    // Recorded as a failed call, whatever the client saw of it.
    let report = usage_by_model(&app, |r| r["items"][0]["errors"].is_i64()).await;
    assert_eq!(report["items"][0]["requests"], 1);
    assert_eq!(report["items"][0]["errors"], 1);
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("maas_upstream_duration_seconds_bucket{model=\"quiet\""));
    // Generations take minutes: the buckets go that far.
    assert!(
        metrics.contains("maas_upstream_duration_seconds_bucket{model=\"quiet\",le=\"600\"}"),
        "{metrics}"
    );
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn raw_calls_forward_any_body_to_any_path_of_the_selected_version() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "raw").await;
    let res = app
        .client
        .post(app.url("/v1/models/raw/invoke/echo/deep/path?version=1&foo=bar"))
        .header("content-type", "text/plain")
        .body("plain text body")
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-maas-version"), Some("1"));
    let echoed: Value = res.json().await.expect("json");
    assert_eq!(echoed["path"], "/v1/echo/deep/path");
    assert_eq!(echoed["query"], "foo=bar", "gateway parameters stay behind");
    assert_eq!(echoed["content_type"], "text/plain");
    assert_eq!(echoed["body"], "plain text body");
    assert_eq!(
        stub.last().header("authorization"),
        Some("Bearer sk-upstream-1")
    );
    // A path that arrives percent-encoded leaves percent-encoded, whatever it holds.
    let res = app
        .client
        .post(app.url("/v1/models/raw/invoke/echo/a%20b/%C3%A9?version=1"))
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 200);
    let echoed: Value = res.json().await.expect("json");
    assert_eq!(echoed["path"], "/v1/echo/a%20b/%C3%A9");

    app.put_json("/api/v1/models/raw/aliases/prod", &json!({"version": 2}))
        .await;
    let res = app
        .client
        .post(app.url("/v1/models/raw/invoke/echo?alias=prod"))
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(header(&res, "x-maas-version"), Some("2"));
    let res = app
        .client
        .post(app.url("/v1/models/raw/invoke/echo?alias=prod&version=1"))
        .send()
        .await
        .expect("POST");
    assert_openai_error(res, 422, "invalid_value").await;
    stub.stop().await;
    app.stop().await;
}

/// Sends `target` as the request line's target byte for byte (an HTTP client would resolve dot
/// segments first) and returns the status and body of the answer.
async fn raw_request(app: &TestApp, target: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connects");
    let request = format!(
        "POST {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 1\r\nConnection: close\r\n\r\nx",
        app.admin_key
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn a_raw_call_cannot_leave_its_endpoint_and_its_query_goes_on_as_sent() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    app.create_model("raw").await;
    app.post_json(
        "/api/v1/models/raw/versions",
        &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base}),
    )
    .await;
    for target in [
        "/v1/models/raw/invoke/../../admin/echo?version=1",
        "/v1/models/raw/invoke/%2e%2e/%2E%2E/admin/echo?version=1",
        "/v1/models/raw/invoke/echo/.%2e/.%2e/.%2e/zz/echo?version=1",
        "/v1/models/raw/invoke/echo%20x/../../../../zz/echo?version=1",
        "/v1/models/raw/invoke/..%2F..%2Fsecret/echo?version=1",
        "/v1/models/raw/invoke/echo%3Finjected=1%26version=9?version=1",
        "/v1/models/raw/invoke/echo%0d%0aX-Inj:%201?version=1",
    ] {
        let (status, body) = raw_request(&app, target).await;
        assert_eq!(status, 422, "{target}: {body}");
        assert_eq!(body["error"]["param"], "path", "{target}: {body}");
    }
    assert!(stub.seen().is_empty(), "nothing reached the model server");

    // The query goes on byte for byte, without the gateway's own parameters.
    let (status, body) = raw_request(
        &app,
        "/v1/models/raw/invoke/echo/a%2Eb?flag&version=1&b=%FF&c=a+b",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/v1/echo/a%2Eb");
    assert_eq!(body["query"], "flag&b=%FF&c=a+b");
    // Answers come uncompressed (the meter reads them), and the model server learns the
    // client's address.
    let seen = stub.last();
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_model_server_named_by_host_name_is_found_by_name_resolution() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    app.create_model("named").await;
    let endpoint = stub.base.replace("127.0.0.1", "localhost");
    let res = app
        .post_json(
            "/api/v1/models/named/versions",
            &json!({"source_uri": "s3://m/1", "endpoint_url": endpoint}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = chat(&app, json!({"model": "named", "messages": []})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(stub.last().path, "/v1/chat/completions");
    assert!(
        stub.last()
            .header("host")
            .is_some_and(|h| h.starts_with("localhost:")),
        "the model server sees its own name as Host"
    );
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn v1_routes_need_a_key_and_refuse_in_openai_shape() {
    let app = spawn_app().await;
    let res = app
        .anon
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "x"}))
        .send()
        .await
        .expect("POST");
    assert!(header(&res, "www-authenticate").is_some());
    assert_openai_error(res, 401, "invalid_api_key").await;
    assert_openai_error(app.get("/v1/nothing-here").await, 404, "unknown_url").await;
    assert_openai_error(
        app.get("/v1/chat/completions").await,
        405,
        "method_not_allowed",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn every_call_leaves_a_usage_event_with_tokens_and_members_see_only_their_own() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "metered").await;
    let (_, member_key) = app.user_with_key("member", "member").await;
    let member = client_with_key(&member_key);

    for stream in [false, true] {
        let res = chat(&app, json!({"model": "metered:1", "stream": stream})).await;
        res.bytes().await.expect("body");
    }
    let res = chat(&app, json!({"model": "ghost"})).await;
    assert_eq!(res.status(), 404);
    let res = member
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "metered:1"}))
        .send()
        .await
        .expect("POST");
    res.bytes().await.expect("body");

    let report = usage_by_model(&app, |report| {
        let total: i64 = report["items"].as_array().map_or(0, |items| {
            items.iter().filter_map(|i| i["requests"].as_i64()).sum()
        });
        total >= 4
    })
    .await;
    let items = report["items"].as_array().expect("items");
    let metered = items
        .iter()
        .find(|i| i["group"] == "metered")
        .expect("metered row");
    assert_eq!(metered["requests"], 3);
    assert_eq!(metered["errors"], 0);
    assert_eq!(
        metered["prompt_tokens"], 21,
        "7 per call, the stream's final chunk included"
    );
    assert_eq!(metered["completion_tokens"], 9);
    let ghost = items
        .iter()
        .find(|i| i["group"] == "ghost")
        .expect("ghost row");
    assert_eq!(ghost["errors"], 1);

    let mine: Value = member
        .get(app.url("/api/v1/usage"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(mine["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        mine["items"][0]["requests"], 1,
        "a member sees only their own calls"
    );
    let res = member
        .get(app.url(&format!("/api/v1/usage?user_id={}", uuid::Uuid::new_v4())))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 403);
    let res = app.get("/api/v1/usage?group_by=week").await;
    assert_eq!(res.status(), 422);

    let metrics = app.metrics_text().await;
    assert!(metrics.contains("maas_upstream_requests_total{model=\"metered\",status=\"200\"}"));
    assert!(metrics.contains("maas_tokens_total{model=\"metered\",kind=\"prompt\"}"));
    assert!(metrics.contains("# TYPE maas_gateway_overhead_seconds histogram"));
    assert!(metrics.contains("maas_upstream_duration_seconds_bucket{model=\"metered\""));
    stub.stop().await;
    app.stop().await;
}

/// Bare newlines a model server floods its stream with in the test below: enough that metering
/// them in time quadratic in the lines per chunk (as the gateway once did) holds a worker for
/// minutes.
const FLOOD: usize = 32 * 1024 * 1024;

#[tokio::test]
async fn a_stream_of_bare_newlines_neither_freezes_a_worker_nor_loses_its_usage() {
    // Each wait is bounded only so that a regression fails instead of hanging: a worker that
    // meters in linear time needs a small fraction of any of them.
    let bound = Duration::from_secs(60);
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "flood").await;
    // The client asks for the usage event, so it comes through (else it is metered, dropped).
    let request = json!({"model": "flood:1", "stream": true, "stub_newlines": FLOOD,
        "stub_hold": true, "stream_options": {"include_usage": true}});
    let res = tokio::time::timeout(bound, chat(&app, request))
        .await
        .expect("the answer's headers");
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut received = Vec::with_capacity(FLOOD + 1024);
    let first = tokio::time::timeout(bound, body.next())
        .await
        .expect("a first chunk")
        .expect("more body")
        .expect("bytes");
    received.extend_from_slice(&first);

    // While the newlines stream through (and the model server holds the rest), /health
    // answers. Each call on a connection of its own: the app's two workers take new
    // connections in turn, so the calls reach both, the stream's among them.
    let health = futures_util::future::join_all((0..4).map(|_| async {
        let client = reqwest::Client::new();
        tokio::time::timeout(bound, client.get(app.url("/health")).send())
            .await
            .expect("/health answers while the stream is open")
            .expect("GET /health")
            .status()
    }));
    let newlines = tokio::time::timeout(bound, async {
        while received.len() < FLOOD {
            let chunk = body.next().await.expect("more body").expect("bytes");
            received.extend_from_slice(&chunk);
        }
    });
    let (health, newlines) = tokio::join!(health, newlines);
    newlines.expect("the newlines come through while the model server holds the rest");
    assert!(health.iter().all(|s| *s == 200), "{health:?}");
    assert!(
        received.iter().all(|b| *b == b'\n'),
        "passed through untouched"
    );

    stub.release();
    while let Some(chunk) = tokio::time::timeout(bound, body.next())
        .await
        .expect("the rest of the stream")
    {
        received.extend_from_slice(&chunk.expect("bytes"));
    }
    let rest = String::from_utf8_lossy(&received[FLOOD..]).into_owned();
    assert!(
        rest.contains("\"usage\"") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
    let report = usage_by_model(&app, |r| r["items"][0]["prompt_tokens"].is_i64()).await;
    assert_eq!(report["items"][0]["requests"], 1, "{report}");
    assert_eq!(report["items"][0]["prompt_tokens"], 7, "{report}");
    assert_eq!(report["items"][0]["completion_tokens"], 3, "{report}");
    stub.stop().await;
    app.stop().await;
}

/// The value of the series `series` (name and labels, as `/metrics` writes them), if present.
fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The port of the stub's `base`.
fn port_of(stub: &Stub) -> u16 {
    url::Url::parse(&stub.base)
        .ok()
        .and_then(|u| u.port())
        .expect("the stub's port")
}

#[tokio::test]
async fn a_member_cannot_point_a_version_at_the_gateway_s_host_or_a_metadata_service() {
    let logs = maas_cache::test_util::CapturedLogs::new();
    let app = spawn_with(Options {
        loopback_upstreams: false,
        logs: Some(logs.clone()),
        ..Options::default()
    })
    .await;
    // Listens where the attacks point: it must hear nothing.
    let stub = start_stub().await;
    let port = port_of(&stub);
    let (_, key) = app.user_with_key("mallory", "member").await;
    let member = client_with_key(&key);
    let res = member
        .post(app.url("/api/v1/models"))
        .json(&json!({"name": "probe"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    let versions = app.url("/api/v1/models/probe/versions");

    // Addresses written in the URL, in any spelling the URL parser reads: refused when written.
    for endpoint in [
        "http://127.0.0.1:6379".to_owned(),
        "http://[::1]:5432".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://2130706433:6379".to_owned(),
        "http://0:6379".to_owned(),
        "http://[fe80::1]:8000/v1".to_owned(),
        "http://[::ffff:a9fe:a9fe]/latest".to_owned(),
        format!("http://127.0.0.1:{port}/v1"),
        format!("http://0x7f.1:{port}/v1"),
        format!("http://0177.0.0.1:{port}/v1"),
        format!("http://[::ffff:127.0.0.1]:{port}/v1"),
    ] {
        let res = member
            .post(&versions)
            .json(&json!({"source_uri": "s3://m/1", "endpoint_url": endpoint}))
            .send()
            .await
            .expect("POST");
        let problem = common::assert_problem(res, 422, Some("endpoint_url")).await;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("endpoint address not allowed"),
            "{endpoint}: {problem}"
        );
    }

    // A name is not resolved when written; the gateway refuses it when it connects.
    let named = format!("http://localhost:{port}/v1");
    let res = member
        .post(&versions)
        .json(&json!({"source_uri": "s3://m/1", "endpoint_url": named}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    let res = member
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "probe", "messages": []}))
        .send()
        .await
        .expect("POST");
    assert_eq!(header(&res, "x-maas-version"), Some("1"));
    let err = assert_openai_error(res, 502, "endpoint_not_allowed").await;
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("endpoint address not allowed"), "{err}");
    assert!(
        !message.contains("127.0.0.1"),
        "addresses stay in the log: {err}"
    );
    // The operator's side: one warning naming the model, the version, the endpoint and why.
    let refusals: Vec<_> = logs
        .records()
        .into_iter()
        .filter(|r| r.message.contains("endpoint address not allowed"))
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let refusal = &refusals[0];
    assert_eq!(refusal.level, slog::Level::Warning);
    assert_eq!(refusal.field("model"), Some("probe"));
    assert_eq!(refusal.field("version"), Some("1"));
    assert_eq!(refusal.field("endpoint"), Some("0"));
    assert!(
        refusal
            .field("reason")
            .is_some_and(|r| r.contains("127.0.0.1")),
        "the log says which address: {refusal:?}"
    );

    // Nor can the version be moved onto an address afterwards.
    let res = member
        .patch(app.url("/api/v1/models/probe/versions/1"))
        .json(&json!({"endpoint_url": format!("http://127.0.0.1:{port}/v1")}))
        .send()
        .await
        .expect("PATCH");
    common::assert_problem(res, 422, Some("endpoint_url")).await;

    assert!(
        stub.seen().is_empty(),
        "nothing reached the loopback server"
    );
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric(
            &metrics,
            r#"maas_upstream_refused_total{reason="address_not_allowed"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn every_call_is_checked_where_it_connects_whoever_registered_the_endpoint() {
    // One replica allows loopback, so versions on it can be written (as before the policy, or
    // by an operator); a replica that does not refuses every call to them.
    let permissive = spawn_app().await;
    let stub = start_stub().await;
    let port = port_of(&stub);
    permissive.create_model("legacy").await;
    let endpoints = [
        stub.base.clone(),
        format!("http://2130706433:{port}/v1"),
        format!("http://0x7f.1:{port}/v1"),
        format!("http://localhost:{port}/v1"),
    ];
    for endpoint in &endpoints {
        let res = permissive
            .post_json(
                "/api/v1/models/legacy/versions",
                &json!({"source_uri": "s3://m/1", "endpoint_url": endpoint}),
            )
            .await;
        assert_eq!(res.status(), 201, "{endpoint}");
    }
    // Where loopback is allowed, the numeric spelling reaches the stub.
    let res = chat(&permissive, json!({"model": "legacy:2", "messages": []})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(stub.seen().len(), 1);

    let strict = spawn_with(Options {
        loopback_upstreams: false,
        ..permissive.replica_options()
    })
    .await;
    for (n, endpoint) in endpoints.iter().enumerate() {
        let model = format!("legacy:{}", n + 1);
        let res = chat(&strict, json!({"model": model, "messages": []})).await;
        let err = assert_openai_error(res, 502, "endpoint_not_allowed").await;
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("endpoint address not allowed")),
            "{endpoint}: {err}"
        );
    }
    assert_eq!(stub.seen().len(), 1, "the strict replica sent nothing");
    strict.server.stop(true).await;
    stub.stop().await;
    permissive.stop().await;
}

#[tokio::test]
async fn token_counts_a_model_server_forges_are_recorded_as_unknown_and_counted() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "forged").await;
    for (stream, usage) in [
        (false, r#"{"prompt_tokens":-1000000,"completion_tokens":3}"#),
        (
            false,
            r#"{"prompt_tokens":1e400,"completion_tokens":99999999999999999999999}"#,
        ),
        (
            true,
            r#"{"prompt_tokens":2.5,"completion_tokens":10000001}"#,
        ),
        (false, r#"{"prompt_tokens":5,"completion_tokens":2}"#),
    ] {
        let res = chat(
            &app,
            json!({"model": "forged:1", "stream": stream, "stub_usage": usage,
                "stream_options": {"include_usage": true}}),
        )
        .await;
        assert_eq!(res.status(), 200, "{usage}");
        let body = res.bytes().await.expect("body");
        assert!(
            String::from_utf8_lossy(&body).contains(usage),
            "the answer passes through untouched"
        );
    }
    let report = usage_by_model(&app, |r| r["items"][0]["requests"] == 4).await;
    let item = &report["items"][0];
    assert_eq!(item["requests"], 4, "{report}");
    assert_eq!(
        item["prompt_tokens"], 5,
        "only the believable count: {report}"
    );
    assert_eq!(item["completion_tokens"], 5, "3 + 2: {report}");
    let db = &app.db;
    let rows = |condition: &str| {
        let sql =
            format!("SELECT count(*) FROM usage_events WHERE model = 'forged' AND {condition}");
        async move { db.scalar(&sql).await }
    };
    assert_eq!(rows("prompt_tokens IS NULL").await, 3);
    assert_eq!(rows("completion_tokens IS NULL").await, 2);
    assert_eq!(
        rows("(prompt_tokens < 0 OR completion_tokens < 0)").await,
        0
    );

    let metrics = app.metrics_text().await;
    for (reason, n) in [
        ("negative", 1.0),
        ("not_an_integer", 2.0),
        ("too_large", 2.0),
    ] {
        let series = format!(r#"maas_usage_rejected_total{{reason="{reason}"}}"#);
        assert_eq!(metric(&metrics, &series), Some(n), "{series}: {metrics}");
    }
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn past_max_concurrent_calls_a_call_is_refused_at_once_until_one_is_over() {
    let app = spawn_with(Options {
        upstream: UpstreamSettings {
            // Long enough that the held stream never meets it.
            timeout_seconds: 300,
            max_concurrent_calls: 1,
            ..UpstreamSettings::default()
        },
        ..Options::default()
    })
    .await;
    let stub = start_stub().await;
    servable(&app, &stub, "busy").await;
    let held = chat(
        &app,
        json!({"model": "busy:1", "stream": true, "stub_newlines": 1, "stub_hold": true}),
    )
    .await;
    assert_eq!(held.status(), 200);
    let mut body = held.bytes_stream();
    let first = body.next().await.expect("a first chunk").expect("bytes");
    assert_eq!(&first[..], b"\n");

    // The one place is taken by the open stream: refused before the body is read or sent on.
    let res = chat(&app, json!({"model": "busy:1", "messages": []})).await;
    assert_eq!(header(&res, "retry-after"), Some("1"));
    assert_openai_error(res, 503, "overloaded").await;
    let res = app
        .client
        .post(app.url("/v1/models/busy/invoke/echo?version=1"))
        .body("x")
        .send()
        .await
        .expect("POST");
    assert!(header(&res, "retry-after").is_some());
    assert_openai_error(res, 503, "overloaded").await;
    assert_eq!(
        stub.seen().len(),
        1,
        "the model server saw only the held call"
    );

    stub.release();
    while let Some(chunk) = body.next().await {
        chunk.expect("bytes");
    }
    let res = chat(&app, json!({"model": "busy:1", "messages": []})).await;
    assert_eq!(
        res.status(),
        200,
        "the place is free once the stream is over"
    );
    res.bytes().await.expect("body");
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric(
            &metrics,
            r#"maas_upstream_refused_total{reason="concurrency_limit"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_model_server_status_that_is_no_http_status_is_a_502_under_one_label() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    servable(&app, &stub, "odd").await;
    for status in [777, 600, 999] {
        let res = chat(&app, json!({"model": "odd:1", "stub_status": status})).await;
        assert_eq!(header(&res, "x-maas-version"), Some("1"), "{status}");
        assert_openai_error(res, 502, "upstream_invalid_response").await;
    }
    assert_eq!(stub.seen().len(), 3, "each call reached the model server");
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric(
            &metrics,
            r#"maas_upstream_requests_total{model="odd",status="invalid"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
    for status in ["777", "600", "999"] {
        assert!(
            !metrics.contains(&format!("status=\"{status}\"")),
            "{status}: {metrics}"
        );
    }
    let report = usage_by_model(&app, |r| r["items"][0]["requests"] == 3).await;
    assert_eq!(report["items"][0]["errors"], 3, "{report}");
    stub.stop().await;
    app.stop().await;
}
