//! The per-model metric series are bounded (`metrics.max_models`), and so are the versions with
//! endpoint states. A test binary of its own: the bound is the process's, as the metrics
//! recorder is.

mod common;

use common::stub::start_stub;
use common::{Options, spawn_with};
use maas_api::MetricsSettings;
use serde_json::json;

#[tokio::test]
async fn models_past_max_models_share_the_series_of_other() {
    let app = spawn_with(Options {
        metrics: MetricsSettings { max_models: 2 },
        ..Options::default()
    })
    .await;
    let stub = start_stub().await;
    for name in ["first", "second", "third", "fourth"] {
        app.create_model(name).await;
        let res = app
            .post_json(
                &format!("/api/v1/models/{name}/versions"),
                &json!({"source_uri": "s3://m/1", "endpoint_url": stub.base}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    for name in ["first", "second", "third", "fourth", "first"] {
        let res = app
            .post_json(
                "/v1/chat/completions",
                &json!({"model": name, "messages": []}),
            )
            .await;
        assert_eq!(res.status(), 200, "{name}");
        res.bytes().await.expect("body");
    }
    let metrics = app.metrics_text().await;
    let series =
        |model: &str| format!(r#"maas_upstream_requests_total{{model="{model}",status="200"}} "#);
    for (model, calls) in [("first", 2), ("second", 1), ("other", 2)] {
        assert!(
            metrics.contains(&format!("{}{calls}", series(model))),
            "{model}: {metrics}"
        );
    }
    for model in ["third", "fourth"] {
        assert!(
            !metrics.contains(&format!("model=\"{model}\"")),
            "{model} has no series of its own (nor endpoint states): {metrics}"
        );
    }
    assert!(
        metrics
            .contains(r#"maas_upstream_endpoint_state{model="first",version="1",endpoint="0"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"maas_tokens_total{model="other",kind="prompt"} 14"#),
        "{metrics}"
    );
    // Versions are bounded too: at most max_models versions have endpoint states.
    for version in [2, 3] {
        let res = app
            .post_json(
                "/api/v1/models/first/versions",
                &json!({"source_uri": format!("s3://m/{version}"), "endpoint_url": stub.base}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let res = app
            .post_json(
                "/v1/chat/completions",
                &json!({"model": format!("first:{version}"), "messages": []}),
            )
            .await;
        assert_eq!(res.status(), 200);
        res.bytes().await.expect("body");
    }
    let metrics = app.metrics_text().await;
    let states: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("maas_upstream_endpoint_state{"))
        .collect();
    assert_eq!(
        states,
        [
            r#"maas_upstream_endpoint_state{model="first",version="1",endpoint="0"} 1"#,
            r#"maas_upstream_endpoint_state{model="second",version="1",endpoint="0"} 1"#,
        ],
        "the first two versions served, of the models with series"
    );
    stub.stop().await;
    app.stop().await;
}
