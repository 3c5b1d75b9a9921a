//! Streams are metered whatever the client asks: a streamed call that does not ask for its
//! usage is made to, and the resulting usage-only event is metered and not passed on.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::add_version;
use crate::common::TestApp;
use crate::common::spawn_app;
use crate::common::stub::{Stub, start_stub};

/// The events of a streamed `route` call sent as `body`'s bytes, as the client gets them.
async fn stream(app: &TestApp, route: &str, body: &str) -> Vec<Value> {
    let res = app
        .client
        .post(app.url(route))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 200);
    let mut text = String::new();
    let mut chunks = res.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("bytes")));
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

fn header_is_json(res: &reqwest::Response) -> bool {
    res.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn usage_only(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["choices"] == json!([]) && e["usage"].is_object())
        .count()
}

/// The usage report's row of `model`, once it has `calls` calls (written in the background).
async fn usage_of(app: &TestApp, model: &str, calls: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report: Value = app
            .get(&format!("/api/v1/usage?group_by=model&model={model}"))
            .await
            .json()
            .await
            .expect("json");
        let row = report["items"][0].clone();
        if row["requests"] == calls || Instant::now() > deadline {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn served_by(app: &TestApp, model: &str, stub: &Stub, supports: bool) {
    app.create_model(model).await;
    add_version(
        app,
        model,
        &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base, "supports_stream_usage": supports}),
    )
    .await;
}

#[tokio::test]
async fn a_stream_that_does_not_ask_for_its_usage_is_metered_and_the_client_gets_what_it_asked() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    served_by(&app, "metered", &stub, true).await;
    let sent = r#"{"model": "metered", "stream": true, "messages": [], "temperature": 1.0e0 }"#;
    let events = stream(&app, "/v1/chat/completions", sent).await;
    assert_eq!(events.len(), 2, "the two content chunks: {events:?}");
    assert_eq!(usage_only(&events), 0, "{events:?}");
    assert!(events.iter().all(|e| e["model"] == "metered"));
    let received = String::from_utf8(stub.last().body).expect("UTF-8");
    assert_eq!(
        received,
        r#"{"model": "metered", "stream": true, "messages": [], "temperature": 1.0e0 ,"stream_options":{"include_usage":true}}"#,
        "asked for, every other byte as sent"
    );
    // `include_usage: false` is not a way around the meter either; completions are asked too.
    // Nor is anything else a lenient server might read as "no", nor options that are not an
    // object.
    for refused in [
        r#"{"model":"metered","stream":true,"stream_options":{"include_usage":false},"prompt":"x"}"#,
        r#"{"model":"metered","stream":true,"stream_options":{"include_usage":0},"prompt":"x"}"#,
        r#"{"model":"metered","stream":true,"stream_options":"no","prompt":"x"}"#,
    ] {
        let events = stream(&app, "/v1/completions", refused).await;
        assert_eq!(events.len(), 2, "{refused}: {events:?}");
        assert_eq!(usage_only(&events), 0, "{refused}");
        let received: Value = serde_json::from_slice(&stub.last().body).expect("JSON");
        assert_eq!(
            received["stream_options"],
            json!({"include_usage": true}),
            "{refused}"
        );
    }

    let row = usage_of(&app, "metered", 4).await;
    assert_eq!(row["requests"], 4, "{row}");
    assert_eq!(row["prompt_tokens"], 28, "{row}");
    assert_eq!(row["completion_tokens"], 12, "{row}");
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_stream_flag_that_is_not_a_boolean_is_refused_naming_it() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    served_by(&app, "strict", &stub, true).await;
    for stream in [r#""true""#, "1", "0", r#""false""#, "{}"] {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"model":"strict","stream":{stream},"messages":[]}}"#
            ))
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), 422, "{stream}");
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["param"], "stream", "{stream}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    assert!(stub.seen().is_empty(), "none reached the model server");
    // `null` and `false` are not streams, as OpenAI reads them.
    for stream in ["null", "false"] {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"model":"strict","stream":{stream},"messages":[]}}"#
            ))
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), 200, "{stream}");
        assert!(
            header_is_json(&res),
            "{stream}: answered as a JSON completion"
        );
    }
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_asks_gets_the_usage_event_and_a_server_that_refuses_is_left_alone() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    served_by(&app, "asked", &stub, true).await;
    let sent = r#"{"model":"asked","stream":true,"stream_options":{"include_usage":true}}"#;
    let events = stream(&app, "/v1/chat/completions", sent).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(usage_only(&events), 1, "passed through");
    assert_eq!(String::from_utf8(stub.last().body).expect("UTF-8"), sent);

    served_by(&app, "refuses", &stub, false).await;
    let sent = r#"{"model":"refuses","stream":true}"#;
    let events = stream(&app, "/v1/chat/completions", sent).await;
    assert_eq!(events.len(), 2, "not asked, none sent: {events:?}");
    assert_eq!(
        String::from_utf8(stub.last().body).expect("UTF-8"),
        sent,
        "supports_stream_usage: false: as sent"
    );
    let res = app
        .patch_json(
            "/api/v1/models/refuses/versions/1",
            &json!({"supports_stream_usage": true}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let version: Value = res.json().await.expect("json");
    assert_eq!(version["supports_stream_usage"], true);
    let events = stream(&app, "/v1/chat/completions", sent).await;
    assert_eq!(
        events.len(),
        2,
        "asked by the gateway, kept from the client"
    );
    let received: Value = serde_json::from_slice(&stub.last().body).expect("JSON");
    assert_eq!(received["stream_options"]["include_usage"], true);

    // Not a stream: as sent.
    let plain = r#"{"model":"asked","messages":[]}"#;
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(plain)
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 200);
    assert_eq!(String::from_utf8(stub.last().body).expect("UTF-8"), plain);
    stub.stop().await;
    app.stop().await;
}
