//! Usage reports: members see the calls of their own keys only; admins see every call, or one
//! user's; a time range runs forwards.

use maas_domain::DomainError;
use maas_domain::identity::{Principal, Role};
use maas_domain::inference::{UsageGrouping, UsageQuery, UsageRow};
use maas_domain::test_util::{InMemory, at, model_name, principal_of, usage_event};

/// A world where alice made two calls of `llama` and bob one of `mistral`.
async fn calls() -> (InMemory, Principal, Principal, Principal) {
    let world = InMemory::new();
    let alice = principal_of(&world.user("alice", Role::Member).await);
    let bob = principal_of(&world.user("bob", Role::Member).await);
    let root = principal_of(&world.user("root", Role::Admin).await);
    world
        .usage
        .record(&[
            usage_event(alice.key_id, alice.user_id, "llama", at(1_000)),
            usage_event(alice.key_id, alice.user_id, "llama", at(2_000)),
            usage_event(bob.key_id, bob.user_id, "mistral", at(3_000)),
        ])
        .await
        .expect("recorded");
    (world, alice, bob, root)
}

fn per_model(user_id: Option<uuid::Uuid>) -> UsageQuery {
    UsageQuery {
        from: None,
        to: None,
        model: None,
        within: None,
        user_id,
        group_by: UsageGrouping::Model,
    }
}

fn groups(rows: &[UsageRow]) -> Vec<(&str, i64)> {
    rows.iter()
        .map(|r| (r.group.as_str(), r.requests))
        .collect()
}

#[tokio::test]
async fn a_member_sees_only_the_calls_of_its_own_keys() {
    let (world, alice, _bob, _root) = calls().await;

    let unasked = world
        .usage
        .report(&alice, per_model(None))
        .await
        .expect("report");
    let asked = world
        .usage
        .report(&alice, per_model(Some(alice.user_id)))
        .await
        .expect("report");

    assert_eq!(groups(&unasked), [("llama", 2)]);
    assert_eq!(asked, unasked);
}

#[tokio::test]
async fn a_member_asking_for_another_users_usage_is_forbidden() {
    let (world, alice, bob, _root) = calls().await;

    let outcome = world
        .usage
        .report(&alice, per_model(Some(bob.user_id)))
        .await;

    assert!(
        matches!(outcome, Err(DomainError::Forbidden(_))),
        "{outcome:?}"
    );
    assert_eq!(world.usage_store.controls().calls("aggregate_usage"), 0);
}

#[tokio::test]
async fn an_admin_sees_every_call_or_one_users() {
    let (world, _alice, bob, root) = calls().await;

    let everyone = world
        .usage
        .report(&root, per_model(None))
        .await
        .expect("report");
    let bobs = world
        .usage
        .report(&root, per_model(Some(bob.user_id)))
        .await
        .expect("report");

    assert_eq!(groups(&everyone), [("llama", 2), ("mistral", 1)]);
    assert_eq!(groups(&bobs), [("mistral", 1)]);
}

#[tokio::test]
async fn the_model_filter_and_the_time_range_narrow_a_report() {
    let (world, _alice, _bob, root) = calls().await;
    let query = UsageQuery {
        from: Some(at(1_500)),
        to: Some(at(3_000)),
        model: Some(model_name("llama")),
        ..per_model(None)
    };

    let report = world.usage.report(&root, query).await.expect("report");

    assert_eq!(groups(&report), [("llama", 1)]);
}

#[tokio::test]
async fn a_time_range_must_end_after_it_starts() {
    let (world, alice, _bob, _root) = calls().await;

    for (from, to) in [(2_000, 2_000), (3_000, 1_000)] {
        let query = UsageQuery {
            from: Some(at(from)),
            to: Some(at(to)),
            ..per_model(None)
        };
        let outcome = world.usage.report(&alice, query).await;
        assert!(
            matches!(&outcome, Err(DomainError::Validation(v)) if v.field == "to"),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn a_batch_of_events_is_stored_in_one_write_and_an_empty_one_in_none() {
    let (world, _alice, _bob, _root) = calls().await;

    world.usage.record(&[]).await.expect("nothing to do");

    assert_eq!(world.usage_store.controls().calls("insert_usage"), 1);
    assert_eq!(world.usage_store.events().len(), 3);
}

/// A call of `model` version `version` (none: failed before one was chosen) by `who`.
fn call(
    who: &Principal,
    model: &str,
    version: Option<i32>,
    status: u16,
    latency_ms: i32,
) -> maas_domain::inference::UsageEvent {
    maas_domain::inference::UsageEvent {
        version,
        status,
        latency_ms,
        prompt_tokens: Some(3),
        completion_tokens: Some(4),
        ..usage_event(who.key_id, who.user_id, model, at(1_000))
    }
}

#[tokio::test]
async fn grouped_by_version_a_canary_is_compared_with_the_version_beside_it() {
    let world = InMemory::new();
    let alice = principal_of(&world.user("alice", Role::Member).await);
    let bob = principal_of(&world.user("bob", Role::Member).await);
    let mut events = vec![
        call(&alice, "llama", None, 404, 1),
        call(&bob, "llama", Some(10), 200, 1_000),
    ];
    for latency_ms in [10, 20, 30, 40] {
        events.push(call(&alice, "llama", Some(3), 200, latency_ms));
    }
    events.push(call(&alice, "llama", Some(10), 500, 100));
    events.push(call(&alice, "llama", Some(10), 200, 300));
    events.push(call(&alice, "alpaca", Some(1), 200, 5));
    world.usage.record(&events).await.expect("recorded");

    let report = world
        .usage
        .report(
            &alice,
            UsageQuery {
                group_by: UsageGrouping::Version,
                ..per_model(None)
            },
        )
        .await
        .expect("report");

    // By model in byte order, then by version as a number (10 after 3), no version first;
    // bob's call is not alice's to see.
    let rows: Vec<_> = report
        .iter()
        .map(|r| {
            (
                r.group.as_str(),
                r.model.as_deref(),
                r.version,
                r.requests,
                r.errors,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("alpaca:1", Some("alpaca"), Some(1), 1, 0),
            ("llama", Some("llama"), None, 1, 1),
            ("llama:3", Some("llama"), Some(3), 4, 0),
            ("llama:10", Some("llama"), Some(10), 2, 1),
        ]
    );
    let stable = &report[2];
    assert_eq!((stable.prompt_tokens, stable.completion_tokens), (12, 16));
    assert_eq!(stable.avg_latency_ms, 25.0);
    // percentile_cont: 0.5 · 3 = 1.5 → between 20 and 30; 0.95 · 3 = 2.85 → 30 + 0.85 · 10.
    assert_eq!(stable.p50_latency_ms, 25.0);
    assert!(
        (stable.p95_latency_ms - 38.5).abs() < 1e-9,
        "{}",
        stable.p95_latency_ms
    );
    // Other groupings name no model or version of their own.
    let by_model = world
        .usage
        .report(&alice, per_model(None))
        .await
        .expect("report");
    assert!(
        by_model
            .iter()
            .all(|r| r.model.is_none() && r.version.is_none())
    );
}

#[tokio::test]
async fn a_key_restricted_to_some_models_sees_the_usage_of_those_only() {
    let (world, alice, _bob, root) = calls().await;
    world
        .usage
        .record(&[usage_event(
            alice.key_id,
            alice.user_id,
            "mistral",
            at(4_000),
        )])
        .await
        .expect("recorded");
    for actor in [&alice, &root] {
        let restricted = Principal {
            models: Some(maas_domain::test_util::allowlist(&["llama"])),
            ..actor.clone()
        };
        let named = |model: &str| UsageQuery {
            model: Some(model_name(model)),
            user_id: Some(alice.user_id),
            ..per_model(None)
        };
        for query in [named("llama"), per_model(Some(alice.user_id))] {
            let rows = world
                .usage
                .report(&restricted, query)
                .await
                .expect("a model on the key's list, or none named");
            assert_eq!(
                groups(&rows),
                [("llama", 2)],
                "alice's mistral call is not shown"
            );
        }
        let err = world
            .usage
            .report(&restricted, named("mistral"))
            .await
            .expect_err("mistral is not on the key's list");
        assert!(matches!(err, DomainError::Forbidden(_)), "{err:?}");
    }
}
