//! Several model servers per version: written and shown (never their credentials), balanced by
//! weight, and failed over when one of them goes away.

use std::collections::HashMap;

use maas_api::UpstreamSettings;
use maas_api::proxy::IpNetwork;
use serde_json::{Value, json};

use crate::common::stub::{Stub, start_stub};
use crate::common::{Options, TestApp, assert_problem, spawn_app, spawn_with};
use crate::{add_version, header};

/// Model `name`, version 1 served by `stubs` in order, endpoint `i` with weight `weights[i]` and
/// credential `sk-endpoint-{i}`.
async fn fleet_model(app: &TestApp, name: &str, stubs: &[&Stub], weights: &[u32]) {
    app.create_model(name).await;
    let endpoints: Vec<Value> = stubs
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(i, (stub, weight))| {
            json!({"url": stub.base, "weight": weight, "upstream_api_key": format!("sk-endpoint-{i}")})
        })
        .collect();
    add_version(
        app,
        name,
        &json!({"source_uri": "s3://m/1", "endpoints": endpoints}),
    )
    .await;
}

/// A chat completion of `model` marked `call`: its status and `x-maas-endpoint`.
async fn call(app: &TestApp, model: &str, call: usize) -> (u16, Option<usize>) {
    let res = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [], "call": call}),
        )
        .await;
    let endpoint = header(&res, "x-maas-endpoint").and_then(|v| v.parse().ok());
    (res.status().as_u16(), endpoint)
}

/// `maas_upstream_endpoint_state` of endpoint `index` of version 1 of `model`.
async fn endpoint_state(app: &TestApp, model: &str, index: usize) -> Option<String> {
    let text = app.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with("maas_upstream_endpoint_state{"))
        .find(|l| {
            l.contains(&format!("model=\"{model}\""))
                && l.contains("version=\"1\"")
                && l.contains(&format!("endpoint=\"{index}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

/// The `call` marks of the calls `stub` received.
fn calls_seen(stub: &Stub) -> Vec<u64> {
    stub.seen()
        .iter()
        .filter_map(|s| serde_json::from_slice::<Value>(&s.body).ok())
        .filter_map(|b| b["call"].as_u64())
        .collect()
}

#[tokio::test]
async fn endpoints_are_shown_without_their_credentials_and_checked_naming_the_one_at_fault() {
    let app = spawn_with(Options {
        loopback_upstreams: false,
        ..Options::default()
    })
    .await;
    app.create_model("shown").await;
    let created = add_version(
        &app,
        "shown",
        &json!({"source_uri": "s3://m/1", "endpoints": [
            {"url": "http://vllm-0:8000/v1", "weight": 3, "upstream_api_key": "sk-secret-0"},
            {"url": "http://vllm-1:8000/v1"},
        ]}),
    )
    .await;
    let expected = json!([
        {"url": "http://vllm-0:8000/v1", "weight": 3, "has_upstream_api_key": true},
        {"url": "http://vllm-1:8000/v1", "weight": 1, "has_upstream_api_key": false},
    ]);
    assert_eq!(created["endpoints"], expected);
    assert_eq!(
        created["endpoint_url"], "http://vllm-0:8000/v1",
        "the first"
    );
    assert_eq!(created["has_upstream_api_key"], true);
    let read = app
        .get("/api/v1/models/shown/versions/1")
        .await
        .text()
        .await
        .expect("body");
    assert!(!read.contains("sk-secret"), "{read}");
    assert_eq!(
        serde_json::from_str::<Value>(&read).expect("json")["endpoints"],
        expected
    );

    let thirty_three: Vec<Value> = (0..33)
        .map(|i| json!({"url": format!("http://m{i}:8000/v1")}))
        .collect();
    for (endpoints, field) in [
        (json!(thirty_three), "endpoints"),
        (
            json!([{"url": "http://a/v1"}, {"url": "http://b/v1", "weight": 0}]),
            "endpoints[1].weight",
        ),
        (
            json!([{"url": "http://a/v1", "weight": 1001}]),
            "endpoints[0].weight",
        ),
        (
            json!([{"url": "http://a/v1"}, {"url": "ftp://b/v1"}]),
            "endpoints[1].url",
        ),
        (
            json!([{"url": "http://a/v1"}, {"url": "http://a/v1"}]),
            "endpoints[1].url",
        ),
        (
            json!([{"url": "http://a/v1"}, {"url": "http://127.0.0.1:8000/v1"}]),
            "endpoints[1].url",
        ),
        (
            json!([{"url": "http://a/v1", "upstream_api_key": "has space"}]),
            "endpoints[0].upstream_api_key",
        ),
    ] {
        let res = app
            .post_json(
                "/api/v1/models/shown/versions",
                &json!({"source_uri": "s3://m/2", "endpoints": endpoints}),
            )
            .await;
        assert_problem(res, 422, Some(field)).await;
    }
    let both = json!({"source_uri": "s3://m/2", "endpoint_url": "http://a/v1", "endpoints": []});
    let res = app.post_json("/api/v1/models/shown/versions", &both).await;
    assert_problem(res, 422, Some("endpoints")).await;
    let res = app
        .patch_json(
            "/api/v1/models/shown/versions/1",
            &json!({"endpoint_url": "http://[::1]:8000/v1"}),
        )
        .await;
    assert_problem(res, 422, Some("endpoint_url")).await;

    // A new list keeps the credential of a URL it keeps.
    let changed: Value = app
        .patch_json(
            "/api/v1/models/shown/versions/1",
            &json!({"endpoints": [{"url": "http://vllm-2:8000/v1"}, {"url": "http://vllm-0:8000/v1", "weight": 2}]}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        changed["endpoints"],
        json!([
            {"url": "http://vllm-2:8000/v1", "weight": 1, "has_upstream_api_key": false},
            {"url": "http://vllm-0:8000/v1", "weight": 2, "has_upstream_api_key": true},
        ])
    );
    app.stop().await;
}

#[tokio::test]
async fn calls_are_spread_over_the_endpoints_each_with_its_own_credential_and_named_by_index() {
    let logs = maas_cache::test_util::CapturedLogs::new();
    let app = spawn_with(Options {
        logs: Some(logs.clone()),
        ..Options::default()
    })
    .await;
    let stubs = [start_stub().await, start_stub().await];
    fleet_model(&app, "spread", &[&stubs[0], &stubs[1]], &[1, 1]).await;
    let mut by_header = [0, 0];
    for i in 0..60 {
        let (status, endpoint) = call(&app, "spread", i).await;
        assert_eq!(status, 200);
        let endpoint = endpoint.expect("x-maas-endpoint");
        by_header[endpoint] += 1;
        assert!(
            calls_seen(&stubs[endpoint]).contains(&(i as u64)),
            "call {i} went to the endpoint its header names"
        );
    }
    // Both get calls (each misses all 60 with probability 2^-60).
    assert!(by_header.iter().all(|n| *n > 0), "{by_header:?}");
    for (i, stub) in stubs.iter().enumerate() {
        assert!(
            stub.seen()
                .iter()
                .all(|s| s.header("authorization") == Some(&format!("Bearer sk-endpoint-{i}"))),
            "endpoint {i} gets its own credential"
        );
    }
    let access: Vec<_> = logs
        .records()
        .into_iter()
        .filter(|r| r.message == "request" && r.field("route") == Some("/v1/chat/completions"))
        .collect();
    assert_eq!(access.len(), 60);
    assert!(
        access
            .iter()
            .all(|r| matches!(r.field("endpoint"), Some("0" | "1"))),
        "the access line names the endpoint by its index"
    );
    assert_eq!(
        endpoint_state(&app, "spread", 1).await.as_deref(),
        Some("1")
    );
    for stub in stubs {
        stub.stop().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_killed_endpoint_costs_no_call_an_error_once_detected_and_no_call_reaches_two_models() {
    let app = spawn_app().await;
    let stubs = [start_stub().await, start_stub().await, start_stub().await];
    fleet_model(
        &app,
        "failover",
        &[&stubs[0], &stubs[1], &stubs[2]],
        &[1, 1, 1],
    )
    .await;
    // A steady stream of calls, one after the other; endpoint 1 is killed after the 30th, and
    // the run goes on until the gateway has taken it out, then for 60 calls more.
    let mut outcomes = Vec::new();
    let mut detected_at = None;
    for i in 0..1000 {
        if i == 30 {
            stubs[1].kill().await;
        }
        let (status, _) = call(&app, "failover", i).await;
        outcomes.push((i, status));
        if i >= 30
            && detected_at.is_none()
            && endpoint_state(&app, "failover", 1).await.as_deref() == Some("0")
        {
            detected_at = Some(i);
        }
        if detected_at.is_some_and(|at| i >= at + 60) {
            break;
        }
    }
    let detected_at = detected_at.expect("the dead endpoint was taken out");
    let after: Vec<_> = outcomes.iter().filter(|(i, _)| *i > detected_at).collect();
    assert_eq!(after.len(), 60);
    assert!(
        after.iter().all(|(_, status)| *status == 200),
        "no call started after the detection failed: {after:?}"
    );
    // Before it, a call could fail only on a connection to the dead server that was already
    // open (each such connection fails at most one call, then is dropped): one that could not
    // connect went to another endpoint. (Without that, the three failures that take it out
    // would all be the clients'.) How many the pools kept is theirs to decide; how many the
    // server accepted bounds it.
    let failed_before = outcomes.iter().filter(|(_, s)| *s != 200).count() as u64;
    let connections = stubs[1].connections();
    assert!(
        failed_before <= connections,
        "{failed_before} failed, {connections} connections: {outcomes:?}"
    );

    // No call reached two model servers, and every answered one reached exactly one.
    let mut reached: HashMap<u64, usize> = HashMap::new();
    for stub in &stubs {
        for id in calls_seen(stub) {
            *reached.entry(id).or_default() += 1;
        }
    }
    for (i, status) in &outcomes {
        let times = reached.get(&(*i as u64)).copied().unwrap_or(0);
        assert!(times <= 1, "call {i} reached {times} model servers");
        if *status == 200 {
            assert_eq!(times, 1, "call {i}");
        }
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("maas_upstream_ejections_total{model=\"failover\"}")),
        "{metrics}"
    );
    for stub in stubs {
        stub.stop().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_503_before_any_body_is_retried_elsewhere_and_a_502_is_not() {
    let app = spawn_with(Options {
        upstream: UpstreamSettings {
            timeout_seconds: 5,
            // Out for longer than any test runs: what is counted happened before.
            eject_seconds: 300,
            ..UpstreamSettings::default()
        },
        ..Options::default()
    })
    .await;
    let [busy, fine, broken, other] = [
        start_stub().await,
        start_stub().await,
        start_stub().await,
        start_stub().await,
    ];
    busy.answer_with(503);
    broken.answer_with(502);
    fleet_model(&app, "busy", &[&busy, &fine], &[1, 1]).await;
    fleet_model(&app, "broken", &[&broken, &other], &[1, 1]).await;

    for i in 0..40 {
        let (status, endpoint) = call(&app, "busy", i).await;
        assert_eq!((status, endpoint), (200, Some(1)), "call {i}");
    }
    assert_eq!(calls_seen(&fine).len(), 40, "each once");
    assert!(
        (1..=3).contains(&calls_seen(&busy).len()),
        "out after three 503s: {}",
        calls_seen(&busy).len()
    );
    assert!(
        app.metrics_text()
            .await
            .lines()
            .any(|l| l.starts_with("maas_upstream_retries_total{model=\"busy\"}")),
    );

    let mut statuses = Vec::new();
    for i in 0..40 {
        statuses.push(call(&app, "broken", i).await);
    }
    let bad: Vec<_> = statuses.iter().filter(|(s, _)| *s == 502).collect();
    assert_eq!(
        bad.len(),
        calls_seen(&broken).len(),
        "a 502 goes to the client"
    );
    assert!(bad.iter().all(|(_, e)| *e == Some(0)), "{statuses:?}");
    assert!(
        bad.len() <= 3,
        "and counts against the endpoint: {statuses:?}"
    );
    assert_eq!(endpoint_state(&app, "busy", 0).await.as_deref(), Some("0"));
    for stub in [busy, fine, broken, other] {
        stub.stop().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_in_time_is_taken_out_and_its_calls_not_retried() {
    let app = spawn_with(Options {
        upstream: UpstreamSettings {
            // The one that does not answer never does; the other answers at once, and has all
            // this time to do it however loaded the machine.
            timeout_seconds: 10,
            eject_after_failures: 1,
            eject_seconds: 300,
            ..UpstreamSettings::default()
        },
        ..Options::default()
    })
    .await;
    let [slow, fine] = [start_stub().await, start_stub().await];
    slow.never_answer();
    fleet_model(&app, "slow", &[&slow, &fine], &[1, 1]).await;
    let mut statuses = Vec::new();
    for i in 0..40 {
        statuses.push(call(&app, "slow", i).await);
    }
    let to_slow: Vec<usize> = (0..statuses.len())
        .filter(|i| statuses[*i].1 == Some(0))
        .collect();
    // Each of the 40 calls had even odds of going there while it was in rotation: one did
    // (all 40 missing it has odds of 2^-40), and, out after that one, no other.
    assert_eq!(to_slow.len(), 1, "out after its one failure: {statuses:?}");
    let timed_out = to_slow[0];
    assert_eq!(statuses[timed_out].0, 504, "{statuses:?}");
    assert_eq!(calls_seen(&slow), [timed_out as u64]);
    assert!(
        !calls_seen(&fine).contains(&(timed_out as u64)),
        "a call that may have reached a model server is not sent to another"
    );
    assert_eq!(endpoint_state(&app, "slow", 0).await.as_deref(), Some("0"));
    for stub in [slow, fine] {
        stub.stop().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn an_endpoint_at_an_address_not_allowed_is_taken_out_rather_than_retried_on_every_call() {
    // Written through a replica that allows loopback; served by one that allows only the
    // address the stub listens on, to which 127.0.0.2 is an address not allowed.
    let permissive = spawn_app().await;
    let stub = start_stub().await;
    permissive.create_model("denied").await;
    add_version(
        &permissive,
        "denied",
        &json!({"source_uri": "s3://m/1", "endpoints": [{"url": "http://127.0.0.2:9/v1"}, {"url": stub.base}]}),
    )
    .await;
    let strict = spawn_with(Options {
        loopback_upstreams: false,
        upstream: UpstreamSettings {
            allowed_networks: vec![IpNetwork::v4(127, 0, 0, 1, 32)],
            eject_seconds: 300,
            ..UpstreamSettings::default()
        },
        ..permissive.replica_options()
    })
    .await;
    for i in 0..40 {
        assert_eq!(call(&strict, "denied", i).await, (200, Some(1)), "call {i}");
    }
    assert_eq!(calls_seen(&stub).len(), 40, "each once");
    assert_eq!(
        endpoint_state(&strict, "denied", 0).await.as_deref(),
        Some("0")
    );
    // Three attempts there (the failures that take it out), each retried; none after.
    let metrics = strict.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"maas_upstream_retries_total{model="denied"} 3"#),
        "{metrics}"
    );
    strict.server.stop(true).await;
    stub.stop().await;
    permissive.stop().await;
}
