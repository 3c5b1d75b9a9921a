//! Usage reports: sums per model, key, UTC day or model version, within a time range, for one
//! model or user, with mean and percentile latencies.

use chrono::{DateTime, Utc};
use maas_domain::inference::{UsageEvent, UsageGrouping, UsageQuery, UsageRow};
use maas_domain::ports::UsageRepository;
use maas_persistence::PgUsageRepository;
use maas_persistence::test_util::{TestDatabase, model_name, usage_event};
use uuid::Uuid;

use crate::{repository, utc};

/// Who made the calls of [`calls`].
struct Callers {
    alice: Uuid,
    bob: Uuid,
    /// Alice's first key.
    a: Uuid,
    /// Alice's second key.
    b: Uuid,
    /// Bob's key.
    c: Uuid,
}

impl Callers {
    fn new() -> Self {
        Self {
            alice: Uuid::new_v4(),
            bob: Uuid::new_v4(),
            a: Uuid::new_v4(),
            b: Uuid::new_v4(),
            c: Uuid::new_v4(),
        }
    }
}

/// One call; `tokens` are the prompt and completion counts, when the upstream sent them.
fn call(
    key: Uuid,
    user: Uuid,
    model: &str,
    at: DateTime<Utc>,
    status: u16,
    latency_ms: i32,
    tokens: Option<(i64, i64)>,
) -> UsageEvent {
    UsageEvent {
        status,
        latency_ms,
        prompt_tokens: tokens.map(|t| t.0),
        completion_tokens: tokens.map(|t| t.1),
        ..usage_event(key, user, model, at)
    }
}

/// Five calls over three UTC days. Status 400 is the first error; 399 is not one.
fn calls(who: &Callers) -> Vec<UsageEvent> {
    vec![
        call(
            who.a,
            who.alice,
            "llama2",
            utc(2026, 1, 1, 10, 0, 0),
            200,
            10,
            Some((5, 7)),
        ),
        call(
            who.a,
            who.alice,
            "llama2",
            utc(2026, 1, 1, 23, 59, 59),
            400,
            30,
            None,
        ),
        UsageEvent {
            version: None,
            ..call(
                who.b,
                who.alice,
                "llama-3",
                utc(2026, 1, 2, 0, 0, 0),
                503,
                2,
                None,
            )
        },
        call(
            who.c,
            who.bob,
            "llama2",
            utc(2026, 1, 2, 12, 0, 0),
            200,
            20,
            Some((100, 50)),
        ),
        call(
            who.c,
            who.bob,
            "mistral",
            utc(2026, 1, 3, 0, 0, 0),
            399,
            40,
            Some((1, 1)),
        ),
    ]
}

/// A row's group, calls, errors, tokens and mean latency.
type Summary = (String, i64, i64, (i64, i64), f64);

fn row(group: &str, requests: i64, errors: i64, tokens: (i64, i64), avg: f64) -> Summary {
    (group.to_owned(), requests, errors, tokens, avg)
}

fn summary(rows: &[UsageRow]) -> Vec<Summary> {
    rows.iter()
        .map(|r| {
            let tokens = (r.prompt_tokens, r.completion_tokens);
            row(&r.group, r.requests, r.errors, tokens, r.avg_latency_ms)
        })
        .collect()
}

fn all(group_by: UsageGrouping) -> UsageQuery {
    UsageQuery {
        from: None,
        to: None,
        model: None,
        within: None,
        user_id: None,
        group_by,
    }
}

/// A repository over a database holding [`calls`].
async fn with_calls() -> (TestDatabase, PgUsageRepository, Callers) {
    let (db, repo) = repository().await;
    let who = Callers::new();
    repo.insert_usage(&calls(&who)).await.expect("stored");
    (db, repo, who)
}

#[tokio::test]
async fn per_model_the_report_sums_calls_errors_and_tokens_in_byte_order_of_names() {
    let (_db, repo, _who) = with_calls().await;

    let report = repo
        .aggregate_usage(&all(UsageGrouping::Model))
        .await
        .expect("aggregated");

    assert_eq!(
        summary(&report),
        [
            // Calls without token counts add nothing to the sums.
            row("llama-3", 1, 1, (0, 0), 2.0),
            row("llama2", 3, 1, (105, 57), 20.0),
            row("mistral", 1, 0, (1, 1), 40.0),
        ]
    );
}

#[tokio::test]
async fn per_day_the_report_groups_by_utc_day() {
    // A second before and at midnight UTC fall on two days.
    let (_db, repo, _who) = with_calls().await;

    let report = repo
        .aggregate_usage(&all(UsageGrouping::Day))
        .await
        .expect("aggregated");

    assert_eq!(
        summary(&report),
        [
            row("2026-01-01", 2, 1, (5, 7), 20.0),
            row("2026-01-02", 2, 1, (100, 50), 11.0),
            row("2026-01-03", 1, 0, (1, 1), 40.0),
        ]
    );
}

#[tokio::test]
async fn per_key_the_user_filter_keeps_only_that_users_keys() {
    let (_db, repo, who) = with_calls().await;

    let report = repo
        .aggregate_usage(&UsageQuery {
            user_id: Some(who.alice),
            ..all(UsageGrouping::Key)
        })
        .await
        .expect("aggregated");

    let mut expected = vec![
        row(&who.a.to_string(), 2, 1, (5, 7), 20.0),
        row(&who.b.to_string(), 1, 1, (0, 0), 2.0),
    ];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(summary(&report), expected);
}

#[tokio::test]
async fn the_time_range_includes_from_and_excludes_to() {
    let (_db, repo, _who) = with_calls().await;

    let report = repo
        .aggregate_usage(&UsageQuery {
            from: Some(utc(2026, 1, 1, 23, 59, 59)),
            to: Some(utc(2026, 1, 2, 12, 0, 0)),
            ..all(UsageGrouping::Model)
        })
        .await
        .expect("aggregated");

    assert_eq!(
        summary(&report),
        [
            row("llama-3", 1, 1, (0, 0), 2.0),
            row("llama2", 1, 1, (0, 0), 30.0),
        ]
    );
}

#[tokio::test]
async fn the_model_filter_keeps_only_that_models_calls() {
    let (_db, repo, who) = with_calls().await;

    let report = repo
        .aggregate_usage(&UsageQuery {
            model: Some(model_name("llama2")),
            within: None,
            ..all(UsageGrouping::Key)
        })
        .await
        .expect("aggregated");

    let mut expected = vec![
        row(&who.a.to_string(), 2, 1, (5, 7), 20.0),
        row(&who.c.to_string(), 1, 0, (100, 50), 20.0),
    ];
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(summary(&report), expected);
}

#[tokio::test]
async fn filters_combine_and_nothing_matching_is_an_empty_report() {
    let (_db, repo, who) = with_calls().await;

    let combined = repo
        .aggregate_usage(&UsageQuery {
            from: Some(utc(2026, 1, 2, 0, 0, 0)),
            to: Some(utc(2026, 1, 4, 0, 0, 0)),
            model: Some(model_name("llama2")),
            within: None,
            user_id: Some(who.bob),
            group_by: UsageGrouping::Day,
        })
        .await
        .expect("aggregated");
    assert_eq!(
        summary(&combined),
        [row("2026-01-02", 1, 0, (100, 50), 20.0)]
    );

    let none = repo
        .aggregate_usage(&UsageQuery {
            model: Some(model_name("mistral")),
            within: None,
            user_id: Some(who.alice),
            ..all(UsageGrouping::Model)
        })
        .await
        .expect("aggregated");
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test]
async fn per_version_the_report_compares_versions_of_a_model_with_latency_percentiles() {
    let (_db, repo) = repository().await;
    let who = Callers::new();
    let at = utc(2026, 1, 1, 0, 0, 0);
    let on = |version: Option<i32>, status: u16, latency_ms: i32| UsageEvent {
        version,
        ..call(
            who.a,
            who.alice,
            "llama",
            at,
            status,
            latency_ms,
            Some((1, 2)),
        )
    };
    let mut events = vec![
        on(None, 404, 1),
        on(Some(10), 500, 100),
        on(Some(10), 200, 300),
    ];
    events.extend([10, 20, 30, 40].map(|latency| on(Some(3), 200, latency)));
    events.push(UsageEvent {
        version: Some(1),
        ..call(who.c, who.bob, "alpaca", at, 200, 5, None)
    });
    repo.insert_usage(&events).await.expect("stored");

    let report = repo
        .aggregate_usage(&all(UsageGrouping::Version))
        .await
        .expect("aggregated");

    // By model in byte order, then version as a number (10 after 3), no version first.
    let groups: Vec<_> = report
        .iter()
        .map(|r| (r.group.as_str(), r.model.as_deref(), r.version))
        .collect();
    assert_eq!(
        groups,
        [
            ("alpaca:1", Some("alpaca"), Some(1)),
            ("llama", Some("llama"), None),
            ("llama:3", Some("llama"), Some(3)),
            ("llama:10", Some("llama"), Some(10)),
        ]
    );
    assert_eq!(
        summary(&report)[2..],
        [
            row("llama:3", 4, 0, (4, 8), 25.0),
            row("llama:10", 2, 1, (2, 4), 200.0),
        ]
    );
    let (stable, canary) = (&report[2], &report[3]);
    // percentile_cont interpolates: the median of 10, 20, 30, 40 is 25, the 95th percentile
    // 30 + 0.85 · 10.
    assert_eq!(stable.p50_latency_ms, 25.0);
    assert!((stable.p95_latency_ms - 38.5).abs() < 1e-9, "{stable:?}");
    assert_eq!(canary.p50_latency_ms, 200.0);
    assert!((canary.p95_latency_ms - 290.0).abs() < 1e-9, "{canary:?}");

    // Other groupings name no model or version of their own.
    let by_model = repo
        .aggregate_usage(&all(UsageGrouping::Model))
        .await
        .expect("aggregated");
    assert!(
        by_model
            .iter()
            .all(|r| r.model.is_none() && r.version.is_none())
    );
    // All of llama's seven calls: 1, 10, 20, 30, 40, 100, 300.
    assert_eq!(by_model[1].p50_latency_ms, 30.0);
}

#[tokio::test]
async fn within_keeps_only_the_calls_of_the_models_listed() {
    let (_db, repo, _who) = with_calls().await;
    let within = maas_domain::identity::ModelAllowlist::parse(vec![
        "llama-3".to_owned(),
        "mistral".to_owned(),
        "not-called".to_owned(),
    ])
    .expect("an allowlist");

    let report = repo
        .aggregate_usage(&UsageQuery {
            within: Some(within),
            ..all(UsageGrouping::Model)
        })
        .await
        .expect("aggregated");

    assert_eq!(
        summary(&report),
        [
            row("llama-3", 1, 1, (0, 0), 2.0),
            row("mistral", 1, 0, (1, 1), 40.0),
        ]
    );
}
