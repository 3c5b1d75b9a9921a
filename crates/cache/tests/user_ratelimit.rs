//! A user's limit beside its keys', decided in the same script call against the real Redis: the
//! attack was one member creating three keys to get three bursts (60 of 90 requests admitted
//! where one key got 20). Limits of one request per minute keep refills out of every test.

use std::time::Duration;

use futures_util::future::join_all;
use maas_cache::test_util::TestRedis;
use maas_cache::{RedisRateLimiter, checkout};
use maas_domain::ports::{
    Allowance, RateDecision, RateLimit, RateLimiter, RateRequest, UserRateLimit,
};
use uuid::Uuid;

/// One request a minute: no refill happens during a test.
const SLOW: u32 = 1;

async fn test_redis() -> TestRedis {
    TestRedis::start().await.expect("a pool on the test Redis")
}

fn limiter_on(redis: &TestRedis) -> RedisRateLimiter {
    RedisRateLimiter::from_settings(redis.pool.clone(), &redis.settings)
}

fn limit(rpm: u32, burst: u32) -> RateLimit {
    RateLimit { rpm, burst }
}

/// A request of `key_id` held to `key` and to `user_id`'s `user` limit.
fn request(key_id: Uuid, key: RateLimit, user_id: Uuid, user: RateLimit) -> RateRequest {
    RateRequest {
        key_id,
        key,
        user: Some(UserRateLimit {
            user_id,
            limit: user,
        }),
    }
}

fn admitted(decisions: &[RateDecision]) -> usize {
    decisions
        .iter()
        .filter(|d| matches!(d, RateDecision::Allowed { .. }))
        .count()
}

async fn stored(redis: &TestRedis, key: &str) -> Option<String> {
    let mut conn = checkout(&redis.pool).await.expect("a connection");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

#[tokio::test]
async fn three_keys_of_one_user_together_get_the_users_burst_not_three_bursts() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let user = Uuid::new_v4();
    let keys: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let each = limit(SLOW, 20);

    let mut decisions = Vec::new();
    for _ in 0..30 {
        for key in &keys {
            decisions.push(limiter.decide(&request(*key, each, user, each)).await);
        }
    }

    assert_eq!(admitted(&decisions), 20, "not 60: the user's burst is 20");
    // Without the user's limit, the same three keys get a burst each: the attack as it was.
    let others: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let mut alone = Vec::new();
    for _ in 0..30 {
        for key in &others {
            alone.push(limiter.check(*key, each).await);
        }
    }
    assert_eq!(admitted(&alone), 60);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_refused_request_spends_neither_the_keys_allowance_nor_the_users() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let user = Uuid::new_v4();
    let (busy, idle) = (Uuid::new_v4(), Uuid::new_v4());
    let user_limit = limit(SLOW, 3);
    for _ in 0..3 {
        let decision = limiter
            .decide(&request(busy, limit(SLOW, 100), user, user_limit))
            .await;
        assert!(matches!(decision, RateDecision::Allowed { .. }));
    }
    let user_tat = stored(&redis, &limiter.user_key(user)).await;

    // The user is out: another key of it is refused, and its own allowance is untouched.
    let refused = limiter
        .decide(&request(idle, limit(SLOW, 100), user, user_limit))
        .await;
    assert!(
        matches!(
            refused,
            RateDecision::Limited {
                allowance: Allowance::User,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(stored(&redis, &limiter.key(idle)).await, None);
    // A key that is out is refused without spending its user's allowance.
    let tight = Uuid::new_v4();
    let other_user = Uuid::new_v4();
    let roomy = limit(SLOW, 100);
    assert!(matches!(
        limiter
            .decide(&request(tight, limit(SLOW, 1), other_user, roomy))
            .await,
        RateDecision::Allowed { .. }
    ));
    let before = stored(&redis, &limiter.user_key(other_user)).await;
    let refused = limiter
        .decide(&request(tight, limit(SLOW, 1), other_user, roomy))
        .await;
    assert!(matches!(
        refused,
        RateDecision::Limited {
            allowance: Allowance::Key,
            ..
        }
    ));
    assert_eq!(stored(&redis, &limiter.user_key(other_user)).await, before);
    assert_eq!(stored(&redis, &limiter.user_key(user)).await, user_tat);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn the_figures_are_those_of_the_tighter_allowance() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let user = Uuid::new_v4();
    let key = Uuid::new_v4();

    let first = limiter
        .decide(&request(key, limit(SLOW, 10), user, limit(SLOW, 3)))
        .await;
    let roomy_user = limiter
        .decide(&request(
            Uuid::new_v4(),
            limit(SLOW, 2),
            Uuid::new_v4(),
            limit(SLOW, 50),
        ))
        .await;

    assert!(
        matches!(
            first,
            RateDecision::Allowed {
                remaining: 2,
                allowance: Allowance::User,
                ..
            }
        ),
        "{first:?}"
    );
    assert!(
        matches!(
            roomy_user,
            RateDecision::Allowed {
                remaining: 1,
                allowance: Allowance::Key,
                ..
            }
        ),
        "{roomy_user:?}"
    );
    redis.cleanup().await.expect("cleanup");
}

/// `rounds` requests, spread over `keys` and `limiters` and sent concurrently, of one user.
async fn hammer(
    limiters: &[RedisRateLimiter],
    keys: &[Uuid],
    user: Uuid,
    each: RateLimit,
    rounds: usize,
) -> Vec<RateDecision> {
    let calls = (0..rounds).map(|i| {
        let limiter = limiters[i % limiters.len()].clone();
        let key = keys[i % keys.len()];
        async move { limiter.decide(&request(key, each, user, each)).await }
    });
    join_all(calls).await
}

#[tokio::test]
async fn two_replicas_with_leases_never_admit_more_than_the_users_burst_over_its_keys() {
    let redis = test_redis().await;
    let replicas = [
        limiter_on(&redis).with_leases(Duration::from_secs(60)),
        limiter_on(&redis).with_leases(Duration::from_secs(60)),
    ];
    let user = Uuid::new_v4();
    let keys: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let burst = 200;
    let started = std::time::Instant::now();

    // Small concurrent waves, so that leases grow with demand, as on busy replicas.
    let mut decisions = Vec::new();
    let mut leased = false;
    for _ in 0..50 {
        decisions.extend(hammer(&replicas, &keys, user, limit(SLOW, burst), 12).await);
        leased |= replicas.iter().any(|r| keys.iter().any(|k| r.held(*k) > 0));
    }

    assert!(decisions.iter().all(|d| *d != RateDecision::Unavailable));
    let admitted = admitted(&decisions);
    // A bound, not a timing assertion: one more request a minute may have become available.
    let extra = (started.elapsed().as_secs_f64() / 60.0).floor() as usize;
    assert!(
        admitted <= burst as usize + extra,
        "admitted {admitted} > the user's burst"
    );
    // Leases take only from the upper half of the user's allowance too.
    assert!(admitted >= burst as usize / 2, "admitted {admitted}");
    assert!(leased, "the keys were busy enough to be granted leases");
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn what_a_lease_did_not_use_goes_back_to_the_user_too() {
    let redis = test_redis().await;
    let leasing = limiter_on(&redis).with_leases(Duration::from_secs(60));
    let plain = limiter_on(&redis);
    let user = Uuid::new_v4();
    let key = Uuid::new_v4();
    let busy = limit(SLOW, 1_000);
    for _ in 0..20 {
        let decision = leasing.decide(&request(key, busy, user, busy)).await;
        assert!(matches!(decision, RateDecision::Allowed { .. }));
    }
    assert!(leasing.held(key) > 0, "the busy key holds a lease");

    leasing.release_leases().await;

    // Exactly the twenty admitted are spent from the user: another key of it gets the rest.
    let other = Uuid::new_v4();
    let mut more = 0;
    loop {
        match plain.decide(&request(other, busy, user, busy)).await {
            RateDecision::Allowed { .. } => more += 1,
            RateDecision::Limited { .. } => break,
            RateDecision::Unavailable => panic!("Redis is up"),
        }
        assert!(more <= 1_000, "never refused");
    }
    assert_eq!(more, 1_000 - 20);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn on_a_tie_the_slower_allowance_is_the_tighter() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let decision = limiter
        .decide(&request(
            Uuid::new_v4(),
            limit(1_000, 3),
            Uuid::new_v4(),
            limit(SLOW, 3),
        ))
        .await;
    assert!(
        matches!(
            decision,
            RateDecision::Allowed {
                remaining: 2,
                allowance: Allowance::User,
                ..
            }
        ),
        "{decision:?}"
    );
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_lease_granted_before_a_user_limit_does_not_admit_past_it() {
    let redis = test_redis().await;
    let leasing = limiter_on(&redis).with_leases(Duration::from_secs(60));
    let key = Uuid::new_v4();
    let busy = limit(SLOW, 1_000);
    for _ in 0..20 {
        let decision = leasing.check(key, busy).await;
        assert!(matches!(decision, RateDecision::Allowed { .. }));
    }
    assert!(leasing.held(key) > 0, "the busy key holds a lease");

    // Its user gets a limit of one request: the lease does not speak for that.
    let user = Uuid::new_v4();
    let first = leasing
        .decide(&request(key, busy, user, limit(SLOW, 1)))
        .await;
    let second = leasing
        .decide(&request(key, busy, user, limit(SLOW, 1)))
        .await;

    assert!(matches!(first, RateDecision::Allowed { .. }), "{first:?}");
    assert!(
        matches!(
            second,
            RateDecision::Limited {
                allowance: Allowance::User,
                ..
            }
        ),
        "{second:?}"
    );
    redis.cleanup().await.expect("cleanup");
}
