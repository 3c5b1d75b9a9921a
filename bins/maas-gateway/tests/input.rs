//! Bad input of every kind is a clear 4xx problem naming the field; never a 500.

mod common;

use std::time::Duration;

use common::{Options, assert_problem, spawn_app, spawn_with};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    for body in [
        "{",
        "{\"name\": }",
        "not json",
        "{\"name\":\"a\"} extra",
        "",
    ] {
        let res = app
            .client
            .post(app.url("/api/v1/models"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        assert_problem(res, 400, None).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = app
            .client
            .post(app.url("/api/v1/models"))
            .body(r#"{"name":"x"}"#);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        assert_problem(req.send().await.expect("POST"), 415, None).await;
    }
    // +json media types are JSON.
    let res = app
        .client
        .post(app.url("/api/v1/models"))
        .header(
            "content-type",
            "application/merge-patch+json; charset=utf-8",
        )
        .body(r#"{"name":"ok"}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_the_configured_limit_is_413() {
    let app = spawn_with(Options {
        max_body_bytes: 1024,
        ..Options::default()
    })
    .await;
    let big = json!({"name": "big", "description": "x".repeat(2000)});
    assert_problem(app.post_json("/api/v1/models", &big).await, 413, None).await;
    // Without a Content-Length (chunked), the limit still holds.
    let stream =
        futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 100])));
    let res = app
        .client
        .post(app.url("/api/v1/models"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("POST");
    assert_problem(res, 413, None).await;
    app.stop().await;
}

#[tokio::test]
async fn invalid_model_fields_are_422_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"name": "Upper"}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "-lead"}), "name"),
        (json!({"name": "x".repeat(65)}), "name"),
        (json!({"name": 5}), "name"),
        (json!({}), "name"),
        (json!({"name": "ok", "bogus": true}), "bogus"),
        (json!({"name": "ok", "tags": ["fine", ""]}), "tags[1]"),
        (
            json!({"name": "ok", "tags": (0..33).map(|i| i.to_string()).collect::<Vec<_>>()}),
            "tags",
        ),
        (json!({"name": "ok", "tags": "llm"}), "tags"),
        (
            json!({"name": "ok", "description": "d".repeat(4097)}),
            "description",
        ),
        (json!({"name": "ok", "metadata": [1, 2]}), "metadata"),
        (
            json!({"name": "ok", "metadata": {"k": "v".repeat(70_000)}}),
            "metadata",
        ),
    ];
    for (body, field) in cases {
        let res = app.post_json("/api/v1/models", &body).await;
        assert_problem(res, 422, Some(field)).await;
    }
    assert_eq!(
        app.get("/api/v1/models")
            .await
            .json::<serde_json::Value>()
            .await
            .expect("json")["items"],
        json!([]),
        "nothing invalid was stored"
    );
    app.stop().await;
}

#[tokio::test]
async fn invalid_version_and_alias_fields_are_422_naming_the_field() {
    let app = spawn_app().await;
    app.create_model("m").await;
    app.create_version("m").await;
    let cases = [
        (json!({}), "source_uri"),
        (json!({"source_uri": " "}), "source_uri"),
        (
            json!({"source_uri": "s3://x", "endpoint_url": "vllm:8000"}),
            "endpoint_url",
        ),
        (
            json!({"source_uri": "s3://x", "endpoint_url": "ftp://h/x"}),
            "endpoint_url",
        ),
        (
            json!({"source_uri": "s3://x", "endpoint_url": "/relative"}),
            "endpoint_url",
        ),
        (json!({"source_uri": "s3://x", "version": 3}), "version"),
        (json!({"source_uri": "s3://x", "metadata": "m"}), "metadata"),
    ];
    for (body, field) in cases {
        let res = app.post_json("/api/v1/models/m/versions", &body).await;
        assert_problem(res, 422, Some(field)).await;
    }
    for (body, field) in [
        (json!({"version": 0}), "version"),
        (json!({"version": -1}), "version"),
        (json!({"version": "1"}), "version"),
        (json!({"version": 99_999_999_999_i64}), "version"),
        (json!({}), "version"),
    ] {
        let res = app.put_json("/api/v1/models/m/aliases/prod", &body).await;
        assert_problem(res, 422, Some(field)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_path_and_query_parameters_are_422_naming_them() {
    let app = spawn_app().await;
    app.create_model("m").await;
    for (path, field) in [
        ("/api/v1/models/UPPER", "name"),
        ("/api/v1/models/m/versions/abc", "version"),
        ("/api/v1/models/m/versions/0", "version"),
        ("/api/v1/models/m/versions/99999999999", "version"),
        ("/api/v1/models/m/aliases/Bad%20Alias", "alias"),
        ("/api/v1/models?limit=0", "limit"),
        ("/api/v1/models?limit=201", "limit"),
        ("/api/v1/models?limit=ten", "limit"),
        ("/api/v1/models?cursor=garbage", "cursor"),
        ("/api/v1/models?limt=5", "limt"),
        ("/api/v1/models/m/versions?cursor=bTpt", "cursor"),
        ("/api/v1/models?tag=", "tag"),
    ] {
        assert_problem(app.get(path).await, 422, Some(field)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn odd_input_never_produces_a_server_error() {
    let app = spawn_app().await;
    app.create_model("m").await;
    let bodies = [
        "null",
        "[]",
        "1e999",
        "\"\\u0000\"",
        r#"{"name":"\u0000"}"#,
        r#"{"name":"ok\u0000"}"#,
        r#"{"name":"a","metadata":{"deep":[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]}}"#,
        r#"{"source_uri":"s3://x\u0000y"}"#,
        r#"{"source_uri":"s3://x","endpoint_url":"http://[::1"}"#,
        r#"{"version": 1.5}"#,
        r#"{"name":"a","name":"b"}"#,
    ];
    let paths = [
        "/api/v1/models",
        "/api/v1/models/m/versions",
        "/api/v1/models/m/aliases/x",
        "/api/v1/models/m",
    ];
    for path in paths {
        for body in bodies {
            for method in [
                reqwest::Method::POST,
                reqwest::Method::PUT,
                reqwest::Method::PATCH,
            ] {
                let res = app
                    .client
                    .request(method.clone(), app.url(path))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                let status = res.status().as_u16();
                assert!(
                    (200..500).contains(&status),
                    "{method} {path} {body} gave {status}"
                );
            }
        }
    }
    for path in [
        "/api/v1/models/%00",
        "/api/v1/models/%FF%FE",
        "/api/v1/models/m/versions/-0",
        "/api/v1/models/m/versions/%20",
        "/api/v1/models?limit=%00&q=%FF",
        "/api/v1/models?q=%25%5C_",
    ] {
        let status = app.get(path).await.status().as_u16();
        assert!((200..500).contains(&status), "GET {path} gave {status}");
    }
    app.stop().await;
}

/// Sends a request head declaring a body of `declared` bytes, then the body's first bytes one
/// at a time, `pause` apart, for as long as the server reads; returns the server's status line.
async fn trickle(app: &common::TestApp, path: &str, declared: usize, pause: Duration) -> String {
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{",
        app.admin_key
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        // Never the whole body: a slow client, not a complete one.
        for _ in 1..declared {
            tokio::time::sleep(pause).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // The bound only keeps a broken server from hanging the test; nothing is timed.
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    sender.abort();
    assert!(read.is_ok(), "no answer within 60 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408_and_frees_the_connection() {
    let app = spawn_with(Options {
        body_read_timeout_seconds: 1,
        ..Options::default()
    })
    .await;
    // Stalled after its first byte, and trickling one byte every 200 ms (never idle for long,
    // but not done within the second either): both are cut at the deadline.
    for pause in [Duration::from_secs(3600), Duration::from_millis(200)] {
        for path in ["/api/v1/models", "/v1/chat/completions"] {
            let status = trickle(&app, path, 1_000, pause).await;
            assert!(
                status.starts_with("HTTP/1.1 408"),
                "{path}, {pause:?}: {status}"
            );
        }
    }
    // What a client gets in time is served as before.
    let res = app
        .post_json("/api/v1/models", &json!({"name": "in-time"}))
        .await;
    assert_eq!(res.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn a_late_body_is_a_problem_naming_the_body() {
    let app = spawn_with(Options {
        body_read_timeout_seconds: 1,
        ..Options::default()
    })
    .await;
    // A chunked body that never comes.
    let body = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let request = app
        .client
        .post(app.url("/api/v1/models"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    // The bound only keeps a broken server from hanging the test; nothing is timed.
    let res = tokio::time::timeout(Duration::from_secs(60), request)
        .await
        .expect("an answer within 60 s")
        .expect("an answer before the body ends");
    let problem = assert_problem(res, 408, Some("body")).await;
    assert_eq!(problem["title"], "Request timeout");
    app.stop().await;
}
