//! The model server's own name for the model: the `model` of an OpenAI call is rewritten to it
//! on the way there, byte for byte elsewhere, and back to the client's on the way back.

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::common::stub::start_stub;
use crate::common::{assert_problem, spawn_app};
use crate::{add_version, header};

/// A chat completion as a client might write it: its own key order, spacing, number spellings
/// no JSON library writes back the same (`1.0e3`, `1.10`, `-0`, an integer no float holds) and
/// escapes; `MODEL` stands for the `model` value.
const SENT: &str = "{\n  \"messages\" : [ {\"role\":\"user\", \"content\":\"h\\u00e9llo \\ud83d\\ude00\"} ],\n  \"temperature\": 1.0e3, \"top_p\":1.10,\"n\": -0,\n  \"seed\" : 123456789012345678901234567890,\n  \"model\":   MODEL ,\"stub_note\":\"\\\"model\\\": x\"\n}  ";

#[tokio::test]
async fn only_the_model_value_changes_on_the_way_and_the_answer_names_the_clients_model() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    app.create_model("llama").await;
    let served = "Org/Llama-3.1 \"8B\" été";
    let created = add_version(
        &app,
        "llama",
        &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base, "served_model": served}),
    )
    .await;
    assert_eq!(created["served_model"], served);
    app.put_json(
        "/api/v1/models/llama/aliases/production",
        &json!({"version": 1}),
    )
    .await;

    let sent = SENT.replace("MODEL", "\"llama@production\"");
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(sent.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 200);
    let length: usize = header(&res, "content-length")
        .expect("a rewritten answer keeps a Content-Length")
        .parse()
        .expect("a number");
    let answer = res.bytes().await.expect("the answer");
    assert_eq!(answer.len(), length, "and it is right");
    let answer: Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!(answer["model"], "llama@production");
    assert_eq!(answer["choices"][0]["message"]["content"], "Hello");

    let received = String::from_utf8(stub.last().body).expect("UTF-8");
    let expected = SENT.replace("MODEL", "\"Org/Llama-3.1 \\\"8B\\\" été\"");
    assert_eq!(received, expected, "every other byte as the client sent it");

    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn every_event_of_a_stream_names_the_clients_model() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    app.create_model("chat").await;
    add_version(
        &app,
        "chat",
        &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base, "served_model": "llama3.1:8b"}),
    )
    .await;
    let res = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "chat:1", "stream": true, "stream_options": {"include_usage": true}, "messages": []}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut text = String::new();
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("bytes")));
    }
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    assert!(events.iter().all(|e| e["model"] == "chat:1"), "{text}");
    let received: Value = serde_json::from_slice(&stub.last().body).expect("JSON");
    assert_eq!(received["model"], "llama3.1:8b");
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn without_a_served_name_the_model_server_gets_the_models_name() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    app.create_model("emb").await;
    add_version(
        &app,
        "emb",
        &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base}),
    )
    .await;
    // Embeddings: the stub writes `model` after `data`, as OpenAI does.
    let res = app
        .post_json("/v1/embeddings", &json!({"model": "emb:1", "input": "x"}))
        .await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("JSON");
    assert_eq!(answer["model"], "emb:1");
    assert_eq!(answer["data"][0]["embedding"], json!([0.1, 0.2, 0.3]));
    let received: Value = serde_json::from_slice(&stub.last().body).expect("JSON");
    assert_eq!(received["model"], "emb");

    // A long answer whose `model` comes after its first 64 KiB: rewritten all the same. It is
    // sent with its new Content-Length when its value came in the first pieces read, else
    // without one; either way what the client gets is whole and of the length it was told.
    let res = app
        .post_json(
            "/v1/embeddings",
            &json!({"model": "emb:1", "input": "x", "stub_dimensions": 20_000}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let length = header(&res, "content-length").map(str::to_owned);
    let bytes = res.bytes().await.expect("the whole answer");
    if let Some(length) = length {
        assert_eq!(length, bytes.len().to_string());
    }
    let answer: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(answer["model"], "emb:1");
    assert_eq!(
        answer["data"][0]["embedding"].as_array().map(Vec::len),
        Some(20_000)
    );

    // A new served name is used from the next call on.
    let res = app
        .patch_json(
            "/api/v1/models/emb/versions/1",
            &json!({"served_model": "bge-m3"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    app.post_json("/v1/completions", &json!({"model": "emb", "prompt": "x"}))
        .await;
    let received: Value = serde_json::from_slice(&stub.last().body).expect("JSON");
    assert_eq!(received["model"], "bge-m3");
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn the_raw_route_is_byte_for_byte_both_ways() {
    let app = spawn_app().await;
    let stub = start_stub().await;
    app.create_model("raw").await;
    add_version(
        &app,
        "raw",
        &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base, "served_model": "other"}),
    )
    .await;
    let sent = SENT.replace("MODEL", "\"raw\"");
    let res = app
        .client
        .post(app.url("/v1/models/raw/invoke/chat/completions"))
        .header("content-type", "application/json")
        .body(sent.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.expect("JSON");
    assert_eq!(
        answer["model"], "raw",
        "the model server's word, as it said it"
    );
    assert_eq!(String::from_utf8(stub.last().body).expect("UTF-8"), sent);
    stub.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_served_name_is_bounded_and_printable() {
    let app = spawn_app().await;
    app.create_model("bad").await;
    for bad in [
        json!("new\nline"),
        json!(""),
        json!("x".repeat(257)),
        json!(5),
    ] {
        let res = app
            .post_json(
                "/api/v1/models/bad/versions",
                &json!({"source_uri": "s3://m/1", "served_model": bad}),
            )
            .await;
        assert_problem(res, 422, Some("served_model")).await;
    }
    app.stop().await;
}
