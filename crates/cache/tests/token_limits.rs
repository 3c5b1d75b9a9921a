//! Token limits in the real Redis: one script call per inference call decides its request and
//! its token reservation together, exact across limiters (replicas) sharing one Redis; refusals
//! spend nothing; settlements refund and charge; a month counter that is missing is not taken
//! as zero. Limits of one request a minute and windows of 60 s: nothing refills or rolls over
//! during a test, so the tests count, never time.

use futures_util::future::join_all;
use maas_cache::test_util::{TestRedis, UNREACHABLE_REDIS_URL};
use maas_cache::{RedisRateLimiter, RedisSettings, checkout, connect};
use maas_domain::ports::{
    Counters, Month, MonthSeed, QuotaSubject, RateLimit, RateLimiter, RateRequest, Reservation,
    Settlement, TokenDecision, TokenLimiter, TokenLimits, TokenRefusal, TokenRequest,
    UserRateLimit,
};
use uuid::Uuid;

async fn test_redis() -> TestRedis {
    TestRedis::start().await.expect("a pool on the test Redis")
}

fn limiter_on(redis: &TestRedis) -> RedisRateLimiter {
    RedisRateLimiter::from_settings(redis.pool.clone(), &redis.settings)
}

/// Generous request rates: only the token limits refuse.
fn generous(key_id: Uuid) -> RateRequest {
    RateRequest::key_only(
        key_id,
        RateLimit {
            rpm: 1_000_000,
            burst: 1_000,
        },
    )
}

/// A call of `key_id` (of `user_id`) reserving `tokens`, held to a key `tpm`.
fn call(key_id: Uuid, user_id: Uuid, tpm: u64, tokens: u64) -> TokenRequest {
    TokenRequest {
        rate: generous(key_id),
        user_id,
        key: TokenLimits {
            tpm: Some(tpm),
            monthly: None,
        },
        user: TokenLimits::default(),
        tokens,
    }
}

fn is_admitted(decision: &TokenDecision) -> bool {
    matches!(decision, TokenDecision::Admitted(_))
}

fn reservation(decision: &TokenDecision) -> Reservation {
    match decision {
        TokenDecision::Admitted(admission) => admission.reservation,
        other => panic!("expected an admission, got {other:?}"),
    }
}

/// What a Redis key holds: a window's fields summed, or a counter.
async fn window_sum(redis: &TestRedis, key: &str) -> u64 {
    let mut conn = checkout(&redis.pool).await.expect("a connection");
    let values: Vec<u64> = redis::cmd("HVALS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("HVALS");
    values.into_iter().sum()
}

async fn get(redis: &TestRedis, key: &str) -> Option<String> {
    let mut conn = checkout(&redis.pool).await.expect("a connection");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

async fn delete(redis: &TestRedis, key: &str) {
    let mut conn = checkout(&redis.pool).await.expect("a connection");
    let _: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn two_replicas_together_admit_at_most_the_limit_plus_one_reservation() {
    let redis = test_redis().await;
    let (one, two) = (limiter_on(&redis), limiter_on(&redis));
    let (key, user) = (Uuid::new_v4(), Uuid::new_v4());

    // 20 calls of 300 tokens at once, half through each replica.
    let decisions = join_all((0..20).map(|i| {
        let limiter = if i % 2 == 0 { &one } else { &two };
        async move { limiter.reserve(&call(key, user, 1_000, 300)).await }
    }))
    .await;

    let admitted = decisions.iter().filter(|d| is_admitted(d)).count();
    assert_eq!(admitted, 4, "0, 300, 600, 900 < 1,000: {decisions:?}");
    let window = one.window_key(QuotaSubject::Key(key));
    assert_eq!(window_sum(&redis, &window).await, 1_200, "= 1,000 + 200");
    assert!(
        decisions
            .iter()
            .all(|d| is_admitted(d)
                || matches!(d, TokenDecision::Refused(TokenRefusal::Tokens { .. }))),
        "{decisions:?}"
    );

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn a_refusal_spends_nothing_and_says_when_the_window_has_room() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let (key, user) = (Uuid::new_v4(), Uuid::new_v4());
    // One request a minute with a burst of 2; a window of 1,000 tokens.
    let slow = |tokens| TokenRequest {
        rate: RateRequest::key_only(key, RateLimit { rpm: 1, burst: 2 }),
        ..call(key, user, 1_000, tokens)
    };

    assert!(is_admitted(&limiter.reserve(&slow(1_000)).await));
    let tat = get(&redis, &limiter.key(key)).await;
    let refused = limiter.reserve(&slow(5)).await;

    let TokenDecision::Refused(TokenRefusal::Tokens {
        retry_after_ms,
        limit,
        used,
        requested,
        requests,
        ..
    }) = refused
    else {
        panic!("expected a tokens refusal, got {refused:?}");
    };
    assert_eq!((limit, used, requested), (1_000, 1_000, 5));
    assert_eq!(
        requests.remaining, 1,
        "of the burst of 2, one spent, none by the refusal"
    );
    assert!(
        (1..=61_000).contains(&retry_after_ms),
        "when the first second leaves: {retry_after_ms}"
    );
    assert_eq!(
        get(&redis, &limiter.key(key)).await,
        tat,
        "no request spent"
    );
    let window = limiter.window_key(QuotaSubject::Key(key));
    assert_eq!(
        window_sum(&redis, &window).await,
        1_000,
        "no tokens reserved"
    );
    // The request the refusal did not spend is still there: a plain request takes it.
    assert!(matches!(
        limiter.check(key, RateLimit { rpm: 1, burst: 2 }).await,
        maas_domain::ports::RateDecision::Allowed { .. }
    ));
    // Now the request rate refuses, and still nothing is reserved.
    let refused = limiter.reserve(&slow(5)).await;
    assert!(matches!(refused, TokenDecision::Refused(_)), "{refused:?}");
    assert_eq!(window_sum(&redis, &window).await, 1_000);

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn the_users_window_is_shared_by_its_keys_on_every_replica() {
    let redis = test_redis().await;
    let (one, two) = (limiter_on(&redis), limiter_on(&redis));
    let user = Uuid::new_v4();
    let keys: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let of = |key: Uuid| TokenRequest {
        rate: RateRequest {
            user: Some(UserRateLimit {
                user_id: user,
                limit: RateLimit {
                    rpm: 1_000_000,
                    burst: 1_000,
                },
            }),
            ..generous(key)
        },
        user_id: user,
        key: TokenLimits::default(),
        user: TokenLimits {
            tpm: Some(500),
            monthly: None,
        },
        tokens: 100,
    };

    let mut admitted = 0;
    for round in 0..4 {
        for (i, key) in keys.iter().enumerate() {
            let limiter = if (round + i) % 2 == 0 { &one } else { &two };
            if is_admitted(&limiter.reserve(&of(*key)).await) {
                admitted += 1;
            }
        }
    }

    assert_eq!(admitted, 5, "500 for all three keys, not per key");
    let refused = one.reserve(&of(keys[0])).await;
    assert!(matches!(
        refused,
        TokenDecision::Refused(TokenRefusal::Tokens {
            allowance: maas_domain::ports::Allowance::User,
            ..
        })
    ));

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn settling_refunds_and_charges_the_second_the_reservation_was_made_in() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let (key, user) = (Uuid::new_v4(), Uuid::new_v4());
    let window = limiter.window_key(QuotaSubject::Key(key));

    let big = reservation(&limiter.reserve(&call(key, user, 1_000, 1_000)).await);
    assert!(!is_admitted(
        &limiter.reserve(&call(key, user, 1_000, 1)).await
    ));
    limiter
        .settle(&[Settlement {
            reservation: big,
            tokens: 100,
        }])
        .await
        .expect("settled");

    assert_eq!(window_sum(&redis, &window).await, 100, "900 refunded");
    let small = reservation(&limiter.reserve(&call(key, user, 1_000, 50)).await);
    limiter
        .settle(&[Settlement {
            reservation: small,
            tokens: 700,
        }])
        .await
        .expect("settled");
    assert_eq!(window_sum(&redis, &window).await, 800, "650 charged");

    // A refund beyond what its second holds stops at zero.
    let other = Uuid::new_v4();
    let reserved = reservation(&limiter.reserve(&call(other, user, 1_000, 100)).await);
    limiter
        .settle(&[Settlement {
            reservation: Reservation {
                tokens: 1_000,
                ..reserved
            },
            tokens: 0,
        }])
        .await
        .expect("settled");
    let other_window = limiter.window_key(QuotaSubject::Key(other));
    assert_eq!(window_sum(&redis, &other_window).await, 0);

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn an_overrun_settled_after_its_second_left_is_charged_now() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let (key, user) = (Uuid::new_v4(), Uuid::new_v4());
    let window = limiter.window_key(QuotaSubject::Key(key));
    let admitted = reservation(&limiter.reserve(&call(key, user, 1_000, 100)).await);
    // As if made two minutes ago (a long stream): its second has left the window.
    let old = Reservation {
        second: admitted.second - 120,
        ..admitted
    };

    limiter
        .settle(&[
            Settlement {
                reservation: old,
                tokens: 20,
            },
            Settlement {
                reservation: old,
                tokens: 400,
            },
        ])
        .await
        .expect("settled");

    assert_eq!(
        window_sum(&redis, &window).await,
        100 + 300,
        "the refund found nothing to refund, the overrun was charged"
    );

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn a_missing_month_counter_is_seeded_once_and_then_counts() {
    let redis = test_redis().await;
    let (one, two) = (limiter_on(&redis), limiter_on(&redis));
    let (key, user) = (Uuid::new_v4(), Uuid::new_v4());
    let monthly = TokenRequest {
        key: TokenLimits {
            tpm: None,
            monthly: Some(1_000),
        },
        ..call(key, user, 0, 100)
    };

    let TokenDecision::Unseeded {
        month,
        key: key_missing,
        user: user_missing,
    } = one.reserve(&monthly).await
    else {
        panic!("a missing counter is not zero");
    };
    assert!(key_missing && !user_missing);
    assert_eq!(month, Month::of(chrono::Utc::now()), "Redis's month, UTC");
    let counter = one.month_key(QuotaSubject::Key(key), month);
    assert_eq!(get(&redis, &counter).await, None, "nothing decided");
    let seed = |used| MonthSeed {
        month,
        key: Some((key, used)),
        user: None,
    };
    one.seed_month(&seed(800)).await.expect("seeded");
    two.seed_month(&seed(5)).await.expect("kept the first");
    assert_eq!(get(&redis, &counter).await.as_deref(), Some("800"));

    let first = reservation(&two.reserve(&monthly).await);
    assert!(first.counters.has(Counters::KEY_MONTH));
    assert_eq!(first.month, month);
    assert!(is_admitted(&one.reserve(&monthly).await), "900 < 1,000");
    let refused = two.reserve(&monthly).await;
    assert!(
        matches!(
            refused,
            TokenDecision::Refused(TokenRefusal::Monthly {
                limit: 1_000,
                used: 1_000,
                ..
            })
        ),
        "{refused:?}"
    );
    one.settle(&[Settlement {
        reservation: first,
        tokens: 30,
    }])
    .await
    .expect("settled");
    assert_eq!(get(&redis, &counter).await.as_deref(), Some("930"));

    delete(&redis, &counter).await;
    assert!(
        matches!(one.reserve(&monthly).await, TokenDecision::Unseeded { .. }),
        "lost with Redis: seeded again, not zero"
    );

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn with_redis_unreachable_reservations_are_undecided_and_settlements_fail() {
    let settings = RedisSettings {
        url: Some(UNREACHABLE_REDIS_URL.to_owned()),
        command_timeout_ms: 200,
        ..RedisSettings::default()
    };
    let pool = connect(&settings).await.expect("a pool (connects lazily)");
    let limiter = RedisRateLimiter::from_settings(pool, &settings);
    let (key, user) = (Uuid::new_v4(), Uuid::new_v4());

    assert_eq!(
        limiter.reserve(&call(key, user, 1_000, 1)).await,
        TokenDecision::Unavailable
    );
    let reservation = Reservation {
        key_id: key,
        user_id: user,
        tokens: 1,
        second: 0,
        month: Month::of(chrono::Utc::now()),
        counters: Counters::from_bits(Counters::KEY_WINDOW),
    };
    assert!(
        limiter
            .settle(&[Settlement {
                reservation,
                tokens: 0
            }])
            .await
            .is_err()
    );
}
