//! What calls count against token quotas: a call's charge when it reserved tokens, else its
//! reported tokens; per key or per user, within a time range (a month).

use maas_domain::inference::UsageEvent;
use maas_domain::ports::{Counters, Month, QuotaSubject, Reservation, UsageRepository};
use maas_persistence::test_util::usage_event;
use uuid::Uuid;

use crate::{repository, utc};

#[tokio::test]
async fn a_reserving_call_is_stored_with_its_charge_and_counts_it() {
    let (db, repo) = repository().await;
    let (key, other_key, user) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let january = Month::new(2027, 1).expect("valid");
    let reservation = Reservation {
        key_id: key,
        user_id: user,
        tokens: 500,
        second: 0,
        month: january,
        counters: Counters::from_bits(Counters::KEY_MONTH),
    };
    let at = utc(2027, 1, 10, 0, 0, 0);
    let events = [
        // Usage reported: charged 30 + 12.
        UsageEvent {
            prompt_tokens: Some(30),
            completion_tokens: Some(12),
            reservation: Some(reservation),
            ..usage_event(key, user, "llama", at)
        },
        // Usage unknown: charged its reservation.
        UsageEvent {
            reservation: Some(reservation),
            ..usage_event(key, user, "llama", at)
        },
        // No reservation: its reported tokens.
        UsageEvent {
            prompt_tokens: Some(7),
            ..usage_event(key, user, "llama", at)
        },
        // Another key of the user.
        UsageEvent {
            prompt_tokens: Some(1),
            completion_tokens: Some(1),
            ..usage_event(other_key, user, "llama", at)
        },
        // Last month.
        UsageEvent {
            prompt_tokens: Some(1_000),
            ..usage_event(key, user, "llama", utc(2026, 12, 31, 23, 59, 59))
        },
    ];

    repo.insert_usage(&events).await.expect("stored");

    assert_eq!(
        db.scalar("SELECT count(*) FROM usage_events WHERE quota_tokens = 42")
            .await,
        1
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM usage_events WHERE quota_tokens = 500")
            .await,
        1
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM usage_events WHERE quota_tokens IS NULL")
            .await,
        3
    );
    let (from, to) = (january.start(), january.end());
    assert_eq!(
        repo.tokens_used(QuotaSubject::Key(key), from, to)
            .await
            .expect("summed"),
        42 + 500 + 7
    );
    assert_eq!(
        repo.tokens_used(QuotaSubject::User(user), from, to)
            .await
            .expect("summed"),
        42 + 500 + 7 + 2
    );
    let mut by_key = repo
        .tokens_used_by_key(user, from, to)
        .await
        .expect("summed");
    by_key.sort();
    let mut expected = vec![(key, 549), (other_key, 2)];
    expected.sort();
    assert_eq!(by_key, expected);
    assert_eq!(
        repo.tokens_used(QuotaSubject::Key(Uuid::new_v4()), from, to)
            .await
            .expect("summed"),
        0,
        "no calls: nothing"
    );
}
