//! Routing to real model-server fleets: the model server's own name for the model, several
//! model servers per version, and streams metered whatever the client asks.

#[path = "../common/mod.rs"]
mod common;

mod endpoints;
mod served_model;
mod stream_usage;

use common::TestApp;
use serde_json::Value;

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name)?.to_str().ok()
}

/// Adds a version of `model` from `body` (a version's JSON) and asserts it was created.
async fn add_version(app: &TestApp, model: &str, body: &Value) -> Value {
    let res = app
        .post_json(&format!("/api/v1/models/{model}/versions"), body)
        .await;
    assert_eq!(res.status(), 201, "creating a version of {model}");
    res.json().await.expect("version json")
}
