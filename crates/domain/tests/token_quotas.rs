//! Token quotas: tokens per minute and per month, of a key and of all of a user's keys, decided
//! with the request rate in one step, settled with the real usage, and a month that survives
//! the limiter losing its counters. On the in-memory limiter's clock: no test waits.

use std::sync::Arc;
use std::time::Duration;

use maas_domain::DomainError;
use maas_domain::Quotas;
use maas_domain::accounts::{KeyRequest, KeyUpdate};
use maas_domain::identity::{
    MonthlyTokens, Principal, Role, TokenQuotas, TokenQuotasPatch, TokensPerMinute, UserPatch,
};
use maas_domain::inference::UsageEvent;
use maas_domain::limits::{RateLimits, TokenPolicy};
use maas_domain::ports::{
    Allowance, RateDecision, RateLimiter, Reservation, TokenDecision, TokenRefusal,
};
use maas_domain::quotas::{Estimate, charge};
use maas_domain::test_util::{InMemory, InMemoryRateLimiter, at, key_name, usage_event};

/// 2027-01-15 12:00:00 UTC: the clock of every test, mid-month.
const MID_JANUARY: i64 = 1_800_014_400;

fn rates(rpm: u32, burst: u32) -> RateLimits {
    RateLimits {
        default_rpm: rpm,
        burst,
        user_rpm: None,
    }
}

/// Generous request rates: only the token limits refuse.
fn generous() -> RateLimits {
    rates(1_000_000, 1_000)
}

fn policy() -> TokenPolicy {
    TokenPolicy::without_limits(100, 100_000)
}

fn tpm(n: i64) -> Option<TokensPerMinute> {
    Some(TokensPerMinute::new(n).expect("valid"))
}

fn monthly(n: i64) -> Option<MonthlyTokens> {
    Some(MonthlyTokens::new(n).expect("valid"))
}

struct World {
    ports: InMemory,
    limiter: Arc<InMemoryRateLimiter>,
}

impl World {
    fn new() -> Self {
        Self {
            ports: InMemory::new(),
            limiter: Arc::new(InMemoryRateLimiter::starting_at(MID_JANUARY)),
        }
    }

    fn quotas(&self, rates: RateLimits, policy: TokenPolicy) -> Quotas {
        self.ports.quotas(self.limiter.clone(), rates, policy)
    }

    /// A member whose key carries `key` quotas and whose user carries `user` ones.
    async fn member(&self, name: &str, key: TokenQuotas, user: TokenQuotas) -> Principal {
        let mut principal = self.ports.actor(name, Role::Member).await;
        principal.key_tokens = key;
        principal.user_tokens = user;
        principal
    }

    fn advance(&self, seconds: u64) {
        self.limiter.advance(Duration::from_secs(seconds));
    }
}

fn key_tpm(n: i64) -> TokenQuotas {
    TokenQuotas {
        tpm: tpm(n),
        monthly_tokens: None,
    }
}

fn admitted(decision: &TokenDecision) -> Reservation {
    match decision {
        TokenDecision::Admitted(admission) => admission.reservation,
        other => panic!("expected an admission, got {other:?}"),
    }
}

/// The usage event of an answered call that reserved `reservation` and used `used` tokens.
fn answered(who: &Principal, reservation: Reservation, used: Option<i64>) -> UsageEvent {
    UsageEvent {
        prompt_tokens: used,
        completion_tokens: used.map(|_| 0),
        reservation: Some(reservation),
        ..usage_event(who.key_id, who.user_id, "m", at(MID_JANUARY))
    }
}

#[tokio::test]
async fn a_key_without_token_limits_reserves_nothing_and_its_own_limit_beats_the_default() {
    let world = World::new();
    let plain = world
        .member("plain", TokenQuotas::default(), TokenQuotas::default())
        .await;
    assert!(
        !policy().applies_to(&plain),
        "no limit anywhere: no reservation"
    );

    let defaulted = TokenPolicy {
        default_tpm: Some(5_000),
        user_monthly_tokens: Some(9_000),
        ..policy()
    };
    assert!(defaulted.applies_to(&plain));
    let own = world
        .member("own", key_tpm(700), TokenQuotas::default())
        .await;
    let (key, user) = defaulted.limits_for(&own);
    assert_eq!(
        (key.tpm, key.monthly),
        (Some(700), None),
        "the key's own tpm"
    );
    assert_eq!(
        (user.tpm, user.monthly),
        (None, Some(9_000)),
        "the user default"
    );
}

#[tokio::test]
async fn a_window_admits_while_it_holds_less_than_the_limit_so_it_overdraws_by_one_reservation() {
    let world = World::new();
    let quotas = world.quotas(generous(), policy());
    let alice = world
        .member("alice", key_tpm(1_000), TokenQuotas::default())
        .await;

    let mut decisions = Vec::new();
    for _ in 0..6 {
        decisions.push(quotas.reserve(&alice, 300).await);
    }

    let ok = decisions
        .iter()
        .filter(|d| matches!(d, TokenDecision::Admitted(_)))
        .count();
    assert_eq!(
        ok, 4,
        "0, 300, 600 and 900 are below 1,000: 1,200 = limit + 200"
    );
    assert_eq!(world.limiter.key_window(alice.key_id), 1_200);
    match decisions[4] {
        TokenDecision::Refused(TokenRefusal::Tokens {
            retry_after_ms,
            limit,
            used,
            requested,
            allowance,
            requests,
        }) => {
            assert_eq!((limit, used, requested), (1_000, 1_200, 300));
            assert_eq!(allowance, Allowance::Key);
            assert_eq!(
                requests.remaining, 996,
                "4 of 1,000 requests spent, none by this"
            );
            // All four were made in one second: the window drops below 1,000 when that second
            // has left it, 61 s on the clock (the clock stands at a whole second).
            assert_eq!(retry_after_ms, 61_000);
        }
        other => panic!("expected a tokens refusal, got {other:?}"),
    }
    assert_eq!(
        world.limiter.key_window(alice.key_id),
        1_200,
        "refusals reserve nothing"
    );

    world.advance(60);
    assert!(matches!(
        quotas.reserve(&alice, 300).await,
        TokenDecision::Refused(_)
    ));
    world.advance(1);
    assert_eq!(
        world.limiter.key_window(alice.key_id),
        0,
        "a minute and a second on"
    );
    admitted(&quotas.reserve(&alice, 300).await);
}

#[tokio::test]
async fn admitted_calls_say_what_is_left_of_the_tighter_window() {
    let world = World::new();
    let quotas = world.quotas(generous(), policy());
    let alice = world
        .member(
            "alice",
            key_tpm(1_000),
            TokenQuotas {
                tpm: tpm(600),
                monthly_tokens: None,
            },
        )
        .await;

    let TokenDecision::Admitted(admission) = quotas.reserve(&alice, 250).await else {
        panic!("admitted");
    };

    let tokens = admission.tokens.expect("figures of a tpm");
    assert_eq!(tokens.limit, 600, "the user's window is the tighter");
    assert_eq!(tokens.remaining, 350);
    assert_eq!(tokens.allowance, Allowance::User);
    assert_eq!(
        tokens.reset_ms, 61_000,
        "until this call's second has left the window"
    );
}

#[tokio::test]
async fn the_request_rate_and_the_tokens_are_one_decision_and_a_refusal_spends_neither() {
    let world = World::new();
    let quotas = world.quotas(rates(1, 2), policy());
    let alice = world
        .member("alice", key_tpm(1_000), TokenQuotas::default())
        .await;

    admitted(&quotas.reserve(&alice, 1_000).await);
    let refused = quotas.reserve(&alice, 10).await;

    assert!(
        matches!(refused, TokenDecision::Refused(TokenRefusal::Tokens { .. })),
        "{refused:?}"
    );
    let request = rates(1, 2).request_for(&alice);
    assert!(
        matches!(
            world.limiter.decide(&request).await,
            RateDecision::Allowed { .. }
        ),
        "the refused call spent no request: the burst of 2 has one left"
    );
    assert!(matches!(
        world.limiter.decide(&request).await,
        RateDecision::Limited { .. }
    ));

    // Refused by the request rate, nothing is reserved: a minute on, the window is empty and
    // one request has come back, which a plain request takes.
    world.advance(61);
    assert!(matches!(
        world.limiter.decide(&request).await,
        RateDecision::Allowed { .. }
    ));
    let before = world.limiter.key_window(alice.key_id);
    let refused = quotas.reserve(&alice, 10).await;
    assert!(matches!(
        refused,
        TokenDecision::Refused(TokenRefusal::Requests { .. })
    ));
    assert_eq!(world.limiter.key_window(alice.key_id), before);
}

#[tokio::test]
async fn all_of_a_users_keys_share_the_users_window() {
    let world = World::new();
    let quotas = world.quotas(generous(), policy());
    let shared = TokenQuotas {
        tpm: tpm(1_000),
        monthly_tokens: None,
    };
    let first = world.member("alice", TokenQuotas::default(), shared).await;
    let second = Principal {
        key_id: uuid::Uuid::new_v4(),
        ..first.clone()
    };

    let mut ok = 0;
    for _ in 0..5 {
        for key in [&first, &second] {
            if matches!(quotas.reserve(key, 300).await, TokenDecision::Admitted(_)) {
                ok += 1;
            }
        }
    }

    assert_eq!(ok, 4, "not 4 per key");
    assert_eq!(world.limiter.user_window(first.user_id), 1_200);
}

#[tokio::test]
async fn settling_refunds_what_a_call_did_not_use_and_charges_what_it_used_beyond() {
    let world = World::new();
    let quotas = world.quotas(generous(), policy());
    let alice = world
        .member("alice", key_tpm(1_000), TokenQuotas::default())
        .await;

    let big = admitted(&quotas.reserve(&alice, 1_000).await);
    assert!(matches!(
        quotas.reserve(&alice, 1).await,
        TokenDecision::Refused(_)
    ));
    let settled = quotas
        .settle(&[answered(&alice, big, Some(100))])
        .await
        .expect("settled");

    assert_eq!(settled, 1);
    assert_eq!(world.limiter.key_window(alice.key_id), 100, "900 refunded");
    let small = admitted(&quotas.reserve(&alice, 50).await);
    quotas
        .settle(&[answered(&alice, small, Some(700))])
        .await
        .expect("settled");
    assert_eq!(world.limiter.key_window(alice.key_id), 800, "650 charged");

    // A reservation whose second has left the window: a refund has nothing left to refund,
    // an overrun is charged to the current second (the tokens were made meanwhile).
    world.advance(61);
    quotas
        .settle(&[answered(&alice, small, Some(10))])
        .await
        .expect("settled");
    assert_eq!(world.limiter.key_window(alice.key_id), 0);
    quotas
        .settle(&[answered(&alice, big, Some(1_300))])
        .await
        .expect("settled");
    assert_eq!(world.limiter.key_window(alice.key_id), 300);
}

#[tokio::test]
async fn a_call_is_charged_its_usage_nothing_when_it_got_no_answer_and_its_reservation_when_unknown()
 {
    let world = World::new();
    let quotas = world.quotas(generous(), policy());
    let alice = world
        .member("alice", key_tpm(1_000), TokenQuotas::default())
        .await;
    let reservation = admitted(&quotas.reserve(&alice, 400).await);
    let event = |status, upstream_ms, used| UsageEvent {
        status,
        upstream_ms,
        ..answered(&alice, reservation, used)
    };

    assert_eq!(charge(&event(200, Some(5), Some(42))), 42, "its usage");
    assert_eq!(
        charge(&event(502, None, None)),
        0,
        "no model server answered"
    );
    assert_eq!(
        charge(&event(504, None, None)),
        400,
        "sent, and no answer in time: the model server may have worked on it all along, kept"
    );
    assert_eq!(
        charge(&event(400, Some(5), None)),
        0,
        "the model server refused it"
    );
    assert_eq!(
        charge(&event(200, Some(5), None)),
        400,
        "usage unknown: kept"
    );
    assert_eq!(
        charge(&event(499, Some(5), None)),
        400,
        "the client went away: kept"
    );
    assert_eq!(
        charge(&event(500, Some(5), None)),
        400,
        "the server failed: kept"
    );
    assert_eq!(
        event(200, Some(5), Some(42)).quota_tokens(),
        Some(42),
        "what the event is stored with"
    );
    let unreserved = UsageEvent {
        reservation: None,
        ..event(200, Some(5), Some(42))
    };
    assert_eq!(unreserved.quota_tokens(), None);
    assert_eq!(
        quotas.settle(&[unreserved]).await.expect("nothing to do"),
        0
    );
}

#[tokio::test]
async fn a_month_counter_the_limiter_lost_starts_again_from_the_usage_record() {
    let world = World::new();
    let quotas = world.quotas(generous(), policy());
    let alice = world
        .member(
            "alice",
            TokenQuotas {
                tpm: None,
                monthly_tokens: monthly(1_000),
            },
            TokenQuotas::default(),
        )
        .await;
    // Earlier this month, and last month (which does not count).
    let earlier = |secs, tokens| UsageEvent {
        prompt_tokens: Some(tokens),
        ..usage_event(alice.key_id, alice.user_id, "m", at(secs))
    };
    world
        .ports
        .usage
        .record(&[
            earlier(MID_JANUARY - 86_400, 800),
            earlier(MID_JANUARY - 40 * 86_400, 5_000),
        ])
        .await
        .expect("recorded");

    let first = admitted(&quotas.reserve(&alice, 100).await);
    assert_eq!(
        world.limiter.key_month(alice.key_id),
        Some(900),
        "seeded with 800"
    );
    let second = admitted(&quotas.reserve(&alice, 100).await);
    let refused = quotas.reserve(&alice, 100).await;
    let TokenDecision::Refused(TokenRefusal::Monthly {
        limit, used, month, ..
    }) = refused
    else {
        panic!("expected a monthly refusal, got {refused:?}");
    };
    assert_eq!(
        (limit, used, month.to_string()),
        (1_000, 1_000, "2027-01".to_owned())
    );

    // The two calls are answered, settled and recorded; then the limiter loses its counters.
    let events = [
        answered(&alice, first, Some(100)),
        answered(&alice, second, Some(100)),
    ];
    quotas.settle(&events).await.expect("settled");
    world.ports.usage.record(&events).await.expect("recorded");
    world.limiter.forget_months();

    let refused = quotas.reserve(&alice, 100).await;
    assert!(
        matches!(
            refused,
            TokenDecision::Refused(TokenRefusal::Monthly { used: 1_000, .. })
        ),
        "not a fresh month: {refused:?}"
    );
}

#[tokio::test]
async fn seeding_that_cannot_read_the_record_leaves_the_call_undecided() {
    let world = World::new();
    let quotas = world.quotas(generous(), policy());
    let alice = world
        .member(
            "alice",
            TokenQuotas {
                tpm: None,
                monthly_tokens: monthly(1_000),
            },
            TokenQuotas::default(),
        )
        .await;
    world.ports.usage_store.controls().set_unavailable(true);

    assert_eq!(quotas.reserve(&alice, 10).await, TokenDecision::Unavailable);
    assert_eq!(
        world.limiter.key_month(alice.key_id),
        None,
        "nothing seeded"
    );
}

#[tokio::test]
async fn admins_set_token_quotas_of_keys_and_users_and_members_cannot() {
    let world = World::new();
    let root = world.ports.actor("root", Role::Admin).await;
    let bob = world.ports.user("bob", Role::Member).await;
    let bob_acting = maas_domain::test_util::principal_of(&bob);
    let now = at(MID_JANUARY);
    let quotas = TokenQuotas {
        tpm: tpm(500),
        monthly_tokens: monthly(10_000),
    };

    let refused = world
        .ports
        .accounts
        .create_key(
            &bob_acting,
            KeyRequest {
                tokens: quotas,
                ..KeyRequest::named(key_name("mine"))
            },
            now,
        )
        .await;
    assert!(matches!(refused, Err(DomainError::Forbidden(_))));
    let created = world
        .ports
        .accounts
        .create_key(
            &root,
            KeyRequest {
                user_id: Some(bob.id),
                tokens: quotas,
                ..KeyRequest::named(key_name("metered"))
            },
            now,
        )
        .await
        .expect("an admin sets them");
    assert_eq!(created.key.tokens, quotas);
    let principal = world
        .ports
        .accounts
        .authenticate(Some(created.plaintext.expose()), at(MID_JANUARY))
        .await
        .expect("authenticated");
    assert_eq!(principal.key_tokens, quotas);

    let lift = KeyUpdate {
        tokens: TokenQuotasPatch {
            tpm: Some(None),
            ..TokenQuotasPatch::default()
        },
        ..KeyUpdate::default()
    };
    let refused = world
        .ports
        .accounts
        .update_key(&bob_acting, created.key.id, lift.clone())
        .await;
    assert!(
        matches!(refused, Err(DomainError::Forbidden(_))),
        "{refused:?}"
    );
    world
        .ports
        .accounts
        .update_key(&root, created.key.id, lift)
        .await
        .expect("lifted");
    let after = world
        .ports
        .accounts
        .authenticate(Some(created.plaintext.expose()), at(MID_JANUARY))
        .await
        .expect("authenticated");
    assert_eq!(
        after.key_tokens.tpm, None,
        "seen at the next authentication"
    );
    assert_eq!(after.key_tokens.monthly_tokens, quotas.monthly_tokens);
    let nothing = world
        .ports
        .accounts
        .update_key(&root, created.key.id, KeyUpdate::default())
        .await;
    assert!(matches!(nothing, Err(DomainError::Validation(_))));

    let user = world
        .ports
        .accounts
        .update_user(
            &root,
            &bob.username,
            UserPatch {
                tokens: TokenQuotasPatch {
                    monthly_tokens: Some(monthly(50_000)),
                    ..TokenQuotasPatch::default()
                },
                ..UserPatch::default()
            },
        )
        .await
        .expect("an admin sets a user's");
    assert_eq!(user.tokens.monthly_tokens, monthly(50_000));
    let after = world
        .ports
        .accounts
        .authenticate(Some(created.plaintext.expose()), at(MID_JANUARY))
        .await
        .expect("authenticated");
    assert_eq!(after.user_tokens.monthly_tokens, monthly(50_000));
}

#[tokio::test]
async fn the_month_report_shows_each_keys_use_and_members_see_only_their_own() {
    let world = World::new();
    let quotas = world.quotas(
        generous(),
        TokenPolicy {
            default_tpm: Some(2_000),
            ..policy()
        },
    );
    let root = world.ports.actor("root", Role::Admin).await;
    let alice = world.ports.user("alice", Role::Member).await;
    let key = world
        .ports
        .accounts
        .create_key(
            &root,
            KeyRequest {
                user_id: Some(alice.id),
                tokens: TokenQuotas {
                    tpm: None,
                    monthly_tokens: monthly(10_000),
                },
                ..KeyRequest::named(key_name("metered"))
            },
            at(MID_JANUARY),
        )
        .await
        .expect("created");
    let call = |secs, tokens| UsageEvent {
        prompt_tokens: Some(tokens),
        completion_tokens: Some(1),
        ..usage_event(key.key.id, alice.id, "m", at(secs))
    };
    world
        .ports
        .usage
        .record(&[
            call(MID_JANUARY, 40),
            call(MID_JANUARY + 60, 9),
            call(MID_JANUARY - 40 * 86_400, 7),
        ])
        .await
        .expect("recorded");
    let alice_acting = maas_domain::test_util::principal_of(&alice);

    let report = quotas
        .month_report(&alice_acting, None, at(MID_JANUARY + 3_600))
        .await
        .expect("her own");

    assert_eq!(report.month.to_string(), "2027-01");
    assert_eq!(report.user.tokens_used, 51, "January only");
    let row = report
        .keys
        .iter()
        .find(|k| k.key_id == key.key.id)
        .expect("her key");
    assert_eq!(row.quota.tokens_used, 51);
    assert_eq!(row.quota.monthly_tokens, Some(10_000));
    assert_eq!(row.quota.tpm, Some(2_000), "the default");
    let others = quotas
        .month_report(&alice_acting, Some(root.user_id), at(MID_JANUARY))
        .await;
    assert!(matches!(others, Err(DomainError::Forbidden(_))));
    let by_admin = quotas
        .month_report(&root, Some(alice.id), at(MID_JANUARY))
        .await
        .expect("admins see anyone's");
    assert_eq!(by_admin.user_id, alice.id);
}

#[tokio::test]
async fn a_call_larger_than_a_tpm_is_refused_at_once_and_spends_nothing() {
    let world = World::new();
    let quotas = world.quotas(rates(60, 2), policy());
    let user = TokenQuotas {
        tpm: tpm(500),
        monthly_tokens: None,
    };
    let alice = world.member("alice", key_tpm(1_000), user).await;

    for (tokens, limit, allowance) in [(1_001, 1_000, Allowance::Key), (501, 500, Allowance::User)]
    {
        let decision = quotas.reserve(&alice, tokens).await;
        assert_eq!(
            decision,
            TokenDecision::Refused(TokenRefusal::TooLarge {
                limit,
                requested: tokens,
                allowance,
            }),
            "{tokens} tokens can never fit in a minute of {limit}"
        );
    }
    assert_eq!(
        world.limiter.key_window(alice.key_id),
        0,
        "nothing reserved"
    );
    // Nor a request spent: the burst of 2 still admits two calls that fit, and only two.
    for _ in 0..2 {
        admitted(&quotas.reserve(&alice, 200).await);
    }
    assert!(matches!(
        quotas.reserve(&alice, 1).await,
        TokenDecision::Refused(TokenRefusal::Requests { .. })
    ));
}

#[tokio::test]
async fn a_call_over_the_tpm_only_by_the_default_completion_reserves_the_tpm() {
    let world = World::new();
    let quotas = world.quotas(generous(), policy());
    let alice = world
        .member("alice", key_tpm(1_000), TokenQuotas::default())
        .await;
    let unbounded = Estimate {
        tokens: 1_500,
        required: 200,
    };

    let reservation = admitted(&quotas.reserve(&alice, unbounded).await);

    assert_eq!(reservation.tokens, 1_000, "capped at the tpm");
    assert_eq!(world.limiter.key_window(alice.key_id), 1_000);
    assert!(matches!(
        quotas
            .reserve(
                &alice,
                Estimate {
                    tokens: 1_500,
                    required: 1_001
                }
            )
            .await,
        TokenDecision::Refused(TokenRefusal::TooLarge {
            requested: 1_001,
            ..
        })
    ));
}

#[tokio::test]
async fn calls_that_find_the_same_month_missing_at_once_share_one_seeding() {
    let world = World::new();
    let quotas = world.quotas(generous(), policy());
    let alice = world
        .member(
            "alice",
            TokenQuotas {
                tpm: None,
                monthly_tokens: monthly(1_000_000),
            },
            TokenQuotas::default(),
        )
        .await;
    let controls = world.ports.usage_store.controls();
    let hold = controls.hold_next("tokens_used");
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (quotas, alice) = (quotas.clone(), alice.clone());
            tokio::spawn(async move { quotas.reserve(&alice, 100).await })
        })
        .collect();
    hold.reached().await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        controls.calls("tokens_used"),
        1,
        "the others wait for the seeding in flight"
    );
    hold.release();
    for call in calls {
        admitted(&call.await.expect("joined"));
    }
    assert_eq!(controls.calls("tokens_used"), 1, "one query for four calls");
    assert_eq!(world.limiter.key_month(alice.key_id), Some(400));
}
