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
