//! Health, readiness, metrics, request ids, OpenAPI and routing errors.

mod common;

use common::{Options, assert_problem, spawn_app, spawn_with};
use maas_cache::test_util::{BlackHole, UNREACHABLE_REDIS_URL};
use serde_json::{Value, json};

#[tokio::test]
async fn health_is_ok_without_checking_dependencies() {
    let app = spawn_with(Options {
        postgres_down: true,
        redis_url: Some(UNREACHABLE_REDIS_URL.to_owned()),
        ..Options::default()
    })
    .await;
    let res = app.get("/health").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.expect("json"),
        json!({"status": "ok"})
    );
    app.stop().await;
}

#[tokio::test]
async fn readiness_reports_each_dependency_with_its_latency() {
    let app = spawn_app().await;
    let res = app.get("/health/ready").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    for dep in ["postgres", "redis"] {
        assert_eq!(body["checks"][dep]["status"], "up", "{body}");
        assert!(body["checks"][dep]["latency_ms"].is_number(), "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn redis_down_is_degraded_but_still_serving() {
    let app = spawn_with(Options {
        redis_url: Some(UNREACHABLE_REDIS_URL.to_owned()),
        ..Options::default()
    })
    .await;
    let res = app.get("/health/ready").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["redis"]["status"], "down");
    assert_eq!(body["checks"]["postgres"]["status"], "up");
    // Reads and writes go straight to Postgres.
    app.create_model("no-cache").await;
    assert_eq!(app.get("/api/v1/models/no-cache").await.status(), 200);
    let res = app
        .patch_json("/api/v1/models/no-cache", &json!({"description": "new"}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = app
        .get("/api/v1/models/no-cache")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["description"], "new");
    app.stop().await;
}

#[tokio::test]
async fn a_hung_redis_is_reported_down_without_hanging_readiness() {
    let hole = BlackHole::start().await.expect("black hole");
    let app = spawn_with(Options {
        redis_url: Some(hole.url()),
        ..Options::default()
    })
    .await;
    let res = app.get("/health/ready").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["redis"]["status"], "down");
    app.create_model("still-works").await;
    assert_eq!(app.get("/api/v1/models/still-works").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn postgres_down_makes_readiness_503_and_registry_calls_503_problems() {
    let app = spawn_with(Options {
        postgres_down: true,
        ..Options::default()
    })
    .await;
    let res = app.get("/health/ready").await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["postgres"]["status"], "down");
    assert_eq!(body["checks"]["redis"]["status"], "up");
    let res = app.get("/api/v1/models/anything").await;
    assert!(res.headers().contains_key("retry-after"));
    let body = assert_problem(res, 503, None).await;
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        !detail.contains("127.0.0.1"),
        "internals stay out of responses: {detail}"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_valid_caller_id_is_kept() {
    let app = spawn_app().await;
    let res = app.get("/health").await;
    let generated = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id");
    assert!(uuid::Uuid::parse_str(generated).is_ok());

    let res = app
        .client
        .get(app.url("/api/v1/models/missing"))
        .header("x-request-id", "trace-123")
        .send()
        .await
        .expect("GET");
    assert_eq!(
        res.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-123")
    );
    let body = assert_problem(res, 404, None).await;
    assert_eq!(body["request_id"], "trace-123");

    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "x".repeat(500))
        .send()
        .await
        .expect("GET");
    let replaced = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id");
    assert!(
        uuid::Uuid::parse_str(replaced).is_ok(),
        "an oversized id is replaced"
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_problems() {
    let app = spawn_app().await;
    assert_problem(app.get("/nope").await, 404, None).await;
    assert_problem(app.get("/api/v1/models/a/b/c/d").await, 404, None).await;
    assert_problem(app.delete("/health").await, 405, None).await;
    let res = app.put_json("/api/v1/models", &json!({})).await;
    assert_problem(res, 405, None).await;
    app.stop().await;
}

fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_use_route_patterns_and_cover_requests_pools_cache_and_build() {
    let app = spawn_app().await;
    app.create_model("metered").await;
    app.get("/api/v1/models/metered").await; // miss
    app.get("/api/v1/models/metered").await; // hit
    app.get("/api/v1/models/no-such-model-here").await;
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .starts_with("text/plain")
    );
    let text = res.text().await.expect("text");
    let get_model =
        r#"http_requests_total{method="GET",route="/api/v1/models/{name}",status="200"}"#;
    assert!(sample(&text, get_model).is_some_and(|n| n >= 2.0), "{text}");
    assert!(
        text.contains(
            r#"http_requests_total{method="GET",route="/api/v1/models/{name}",status="404"}"#
        ),
        "{text}"
    );
    assert!(
        !text.contains("route=\"/api/v1/models/metered\""),
        "raw paths never become labels"
    );
    assert!(
        text.contains("# TYPE http_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains(
        "http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/models/{name}\",le=\""
    ));
    assert!(text.contains("http_requests_in_flight"), "{text}");
    for state in ["idle", "in_use", "max"] {
        assert!(
            text.contains(&format!(
                "db_pool_connections{{pool=\"postgres\",state=\"{state}\"}}"
            )),
            "{text}"
        );
    }
    assert!(
        sample(
            &text,
            r#"maas_cache_requests_total{kind="model",result="hit"}"#
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        sample(
            &text,
            r#"maas_cache_requests_total{kind="model",result="miss"}"#
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(text.contains("maas_build_info{version="), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = spawn_app().await;
    let res = app.get("/api/openapi.json").await;
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.expect("json");
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.")
    );
    let expected = [
        ("/health", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
        ("/api/v1/models", "post"),
        ("/api/v1/models", "get"),
        ("/api/v1/models/{name}", "get"),
        ("/api/v1/models/{name}", "patch"),
        ("/api/v1/models/{name}", "delete"),
        ("/api/v1/models/{name}/versions", "post"),
        ("/api/v1/models/{name}/versions", "get"),
        ("/api/v1/models/{name}/versions/{version}", "get"),
        ("/api/v1/models/{name}/versions/{version}", "patch"),
        ("/api/v1/models/{name}/versions/{version}", "delete"),
        ("/api/v1/models/{name}/aliases/{alias}", "put"),
        ("/api/v1/models/{name}/aliases/{alias}", "get"),
        ("/api/v1/models/{name}/aliases/{alias}", "delete"),
        ("/api/v1/users", "post"),
        ("/api/v1/models/{name}/grants", "post"),
        ("/api/v1/models/{name}/grants", "get"),
        ("/api/v1/models/{name}/grants/{username}", "delete"),
        ("/api/v1/users", "get"),
        ("/api/v1/users/me", "get"),
        ("/api/v1/users/{username}", "patch"),
        ("/api/v1/keys", "post"),
        ("/api/v1/keys", "get"),
        ("/api/v1/keys/{id}", "patch"),
        ("/api/v1/keys/{id}", "delete"),
        ("/api/v1/usage", "get"),
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/v1/embeddings", "post"),
        ("/v1/models", "get"),
        ("/v1/models/{name}/invoke/{path}", "post"),
    ];
    let paths = doc["paths"].as_object().expect("paths");
    let documented: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |o| o.len()))
        .sum();
    assert_eq!(
        documented,
        expected.len(),
        "no undocumented or stale operations"
    );
    for (path, method) in expected {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is documented"
        );
        // And the documented operation exists on the server.
        let concrete = path
            .replace("{name}", "m")
            .replace("{version}", "1")
            .replace("{alias}", "prod")
            .replace("{username}", "someone")
            .replace("{path}", "echo")
            .replace("{id}", "00000000-0000-0000-0000-000000000000");
        let res = app
            .client
            .request(
                method.to_uppercase().parse().expect("method"),
                app.url(&concrete),
            )
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path} is routed");
        assert!(
            !body["detail"]
                .as_str()
                .unwrap_or_default()
                .starts_with("no route"),
            "{method} {path} is routed: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = spawn_app().await;
    let page = app.get("/docs").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("/docs/swagger-ui-bundle.js") && html.contains("/api/openapi.json"));
    assert!(!html.contains("://"), "no CDN: every asset is local");
    let js = app.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(js.status(), 200);
    assert!(js.bytes().await.expect("js").len() > 100_000);
    assert_eq!(app.get("/docs/swagger-ui.css").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn with_an_admin_port_metrics_are_served_there_and_not_on_the_public_port() {
    let app = spawn_with(Options {
        admin_port: true,
        ..Options::default()
    })
    .await;
    let admin = app.admin_base.clone().expect("an admin listener");
    let public = app.anon.get(app.url("/metrics")).send().await.expect("GET");
    assert_problem(public, 404, None).await;
    let metrics = app
        .anon
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .expect("text")
            .contains("maas_build_info")
    );
    // Probes answer on both; nothing else is served on the admin port.
    for base in [app.base.as_str(), admin.as_str()] {
        let ready = app.anon.get(format!("{base}/health/ready")).send().await;
        assert_eq!(ready.expect("GET").status(), 200, "{base}");
    }
    let api = app
        .client
        .get(format!("{admin}/api/v1/users/me"))
        .send()
        .await;
    assert_eq!(api.expect("GET").status(), 404);
    app.stop().await;
}
