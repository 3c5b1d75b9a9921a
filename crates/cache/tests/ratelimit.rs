//! The GCRA rate limiter against the real Redis, each test under its own key prefix.
//!
//! Limits of one request per minute make sure nothing refills while a test runs, so the
//! assertions do not depend on timing.

use std::time::Duration;

use maas_cache::test_util::{
    BlackHole, CapturedLogs, CounterSnapshot, TestRedis, UNREACHABLE_REDIS_URL,
};
use maas_cache::{RedisPool, RedisRateLimiter, RedisSettings, checkout, connect};
use maas_domain::ports::{RateDecision, RateLimit, RateLimiter};
use maas_telemetry::names::{self, rate_limit_decision};
use metrics_util::debugging::DebuggingRecorder;
use uuid::Uuid;

/// One request a minute: no refill happens during a test.
const SLOW: u32 = 1;

async fn test_redis() -> TestRedis {
    TestRedis::start().await.expect("a pool on the test Redis")
}

fn limiter_on(redis: &TestRedis) -> RedisRateLimiter {
    RedisRateLimiter::from_settings(redis.pool.clone(), &redis.settings)
}

/// A limiter on a Redis at `url` that fails or hangs, with a short timeout.
async fn failing_limiter(url: String) -> (RedisRateLimiter, RedisPool) {
    let settings = RedisSettings {
        url: Some(url),
        command_timeout_ms: 200,
        key_prefix: "maas:test:failing:".to_owned(),
        ..RedisSettings::default()
    };
    let pool = connect(&settings)
        .await
        .expect("connect never fails on a valid URL");
    (
        RedisRateLimiter::from_settings(pool.clone(), &settings),
        pool,
    )
}

fn limit(rpm: u32, burst: u32) -> RateLimit {
    RateLimit { rpm, burst }
}

async fn checks(
    limiter: &RedisRateLimiter,
    key: Uuid,
    limit: RateLimit,
    n: usize,
) -> Vec<RateDecision> {
    let mut decisions = Vec::with_capacity(n);
    for _ in 0..n {
        decisions.push(limiter.check(key, limit).await);
    }
    decisions
}

fn remaining(decision: RateDecision) -> u32 {
    match decision {
        RateDecision::Allowed { remaining, .. } => remaining,
        other => panic!("expected an admission, got {other:?}"),
    }
}

fn is_limited(decision: &RateDecision) -> bool {
    matches!(decision, RateDecision::Limited { .. })
}

/// The stored theoretical arrival time of `key` (µs on Redis's clock), if any.
async fn stored_tat(redis: &TestRedis, limiter: &RedisRateLimiter, key: Uuid) -> Option<u64> {
    let mut conn = checkout(&redis.pool).await.expect("a connection");
    let raw: Option<String> = redis::cmd("GET")
        .arg(limiter.key(key))
        .query_async(&mut conn)
        .await
        .expect("GET of the limiter key");
    raw.map(|raw| {
        raw.parse()
            .expect("a TAT is a whole number of microseconds")
    })
}

async fn pttl(redis: &TestRedis, key: &str) -> i64 {
    let mut conn = checkout(&redis.pool).await.expect("a connection");
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn a_burst_is_admitted_at_once_and_the_next_request_is_refused() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let key = Uuid::new_v4();

    let decisions = checks(&limiter, key, limit(SLOW, 5), 7).await;

    assert!(
        decisions[..5]
            .iter()
            .all(|d| matches!(d, RateDecision::Allowed { .. })),
        "{decisions:?}"
    );
    assert!(decisions[5..].iter().all(is_limited), "{decisions:?}");

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn remaining_counts_down_from_burst_minus_one_to_zero() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);

    let decisions = checks(&limiter, Uuid::new_v4(), limit(SLOW, 4), 4).await;

    let remaining: Vec<u32> = decisions.into_iter().map(remaining).collect();
    assert_eq!(remaining, [3, 2, 1, 0]);

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn decisions_say_when_to_retry_and_when_the_allowance_is_full_again() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let key = Uuid::new_v4();
    let burst = 3;

    let decisions = checks(&limiter, key, limit(SLOW, burst), 4).await;

    // Each admission adds a minute to the time until the allowance is full again.
    let full_after = u64::from(burst) * 60;
    for decision in &decisions[..3] {
        let RateDecision::Allowed { reset_seconds, .. } = *decision else {
            panic!("expected an admission, got {decision:?}");
        };
        assert!(
            reset_seconds > 0 && reset_seconds <= full_after,
            "{decision:?}"
        );
    }
    let RateDecision::Limited {
        retry_after_seconds,
        reset_seconds,
        ..
    } = decisions[3]
    else {
        panic!("expected a refusal, got {:?}", decisions[3]);
    };
    // One more request fits once one emission interval (a minute) has passed.
    assert!(
        (1..=60).contains(&retry_after_seconds),
        "{retry_after_seconds}"
    );
    assert!(
        reset_seconds > 0 && reset_seconds <= full_after,
        "{reset_seconds}"
    );
    assert!(reset_seconds >= retry_after_seconds);

    redis.cleanup().await.expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_hammering_one_key_together_admit_exactly_the_burst() {
    let redis = test_redis().await;
    // Two gateway replicas: separate pools on the same Redis, with the same key prefix. The
    // generous timeout keeps a busy test machine from turning decisions into `Unavailable`.
    let timeout = Duration::from_secs(10);
    let first = RedisRateLimiter::new(redis.pool.clone(), redis.prefix.clone(), timeout);
    let second_pool = connect(&redis.settings).await.expect("a second pool");
    let second = RedisRateLimiter::new(second_pool, redis.prefix.clone(), timeout);
    let key = Uuid::new_v4();
    let burst = 10;

    let mut tasks = Vec::new();
    for i in 0..200 {
        let limiter = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.push(tokio::spawn(async move {
            limiter.check(key, limit(SLOW, burst)).await
        }));
    }
    let mut decisions = Vec::new();
    for task in tasks {
        decisions.push(task.await.expect("a check does not panic"));
    }

    let allowed = decisions
        .iter()
        .filter(|d| matches!(d, RateDecision::Allowed { .. }))
        .count();
    let limited = decisions.iter().filter(|d| is_limited(d)).count();
    assert_eq!(allowed, 10, "exactly the burst is admitted");
    assert_eq!(limited, 190, "every other check is refused, none undecided");

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn different_keys_have_independent_allowances() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let (spent, fresh) = (Uuid::new_v4(), Uuid::new_v4());
    let _ = checks(&limiter, spent, limit(SLOW, 2), 2).await;
    assert!(is_limited(&limiter.check(spent, limit(SLOW, 2)).await));

    let decisions = checks(&limiter, fresh, limit(SLOW, 2), 2).await;

    let remaining: Vec<u32> = decisions.into_iter().map(remaining).collect();
    assert_eq!(remaining, [1, 0]);

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn a_refused_request_does_not_consume_allowance() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let key = Uuid::new_v4();
    let _ = checks(&limiter, key, limit(SLOW, 2), 2).await;
    let tat = stored_tat(&redis, &limiter, key).await;
    assert!(tat.is_some(), "admissions store a TAT");

    let refusals = checks(&limiter, key, limit(SLOW, 2), 5).await;

    assert!(refusals.iter().all(is_limited), "{refusals:?}");
    assert_eq!(
        stored_tat(&redis, &limiter, key).await,
        tat,
        "refusals leave the stored TAT where it was"
    );
    assert!(is_limited(&limiter.check(key, limit(SLOW, 2)).await));

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn the_key_expires_when_the_allowance_would_be_full_again() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let key = Uuid::new_v4();
    let redis_key = limiter.key(key);
    assert_eq!(redis_key, format!("{}rl:{key}", redis.prefix));

    let _ = limiter.check(key, limit(SLOW, 3)).await;

    // One request at one per minute: full again in a minute, plus a margin of a second.
    let ttl = pttl(&redis, &redis_key).await;
    assert!(ttl > 0 && ttl <= 61_000, "PTTL {ttl}");
    assert_eq!(redis.cleanup().await.expect("clean up"), 1, "one key");
}

#[tokio::test]
async fn a_large_rpm_admits_the_first_burst_at_once() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);

    let decisions = checks(&limiter, Uuid::new_v4(), limit(60_000, 5), 5).await;

    assert!(
        decisions
            .iter()
            .all(|d| matches!(d, RateDecision::Allowed { .. })),
        "{decisions:?}"
    );

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn a_burst_of_zero_admits_one_request_at_a_time() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let key = Uuid::new_v4();

    let decisions = checks(&limiter, key, limit(SLOW, 0), 2).await;

    assert!(
        matches!(decisions[0], RateDecision::Allowed { remaining: 0, .. }),
        "{decisions:?}"
    );
    assert!(is_limited(&decisions[1]), "{decisions:?}");

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn with_redis_unreachable_checks_are_undecided() {
    let (limiter, _pool) = failing_limiter(UNREACHABLE_REDIS_URL.to_owned()).await;

    assert_eq!(
        limiter.check(Uuid::new_v4(), limit(60, 10)).await,
        RateDecision::Unavailable
    );
    assert!(limiter.is_breaker_open());
}

#[tokio::test]
async fn with_redis_hanging_a_check_is_undecided_and_the_next_ones_skip_redis() {
    let black_hole = BlackHole::start().await.expect("a loopback listener");
    let (limiter, pool) = failing_limiter(black_hole.url()).await;
    let limiter = limiter.with_breaker_cooldown(Duration::from_secs(3600));

    assert!(!limiter.is_breaker_open());
    assert_eq!(
        limiter.check(Uuid::new_v4(), limit(60, 10)).await,
        RateDecision::Unavailable
    );
    assert!(limiter.is_breaker_open());
    let gets = pool.state().statistics.get_started;
    assert_eq!(gets, 1, "the first check asked the pool");

    assert_eq!(
        limiter.check(Uuid::new_v4(), limit(60, 10)).await,
        RateDecision::Unavailable
    );
    assert_eq!(
        pool.state().statistics.get_started,
        gets,
        "checks skip Redis while the breaker is open"
    );
}

#[tokio::test]
async fn after_the_cooldown_checks_ask_redis_again() {
    let (limiter, pool) = failing_limiter(UNREACHABLE_REDIS_URL.to_owned()).await;
    let limiter = limiter.with_breaker_cooldown(Duration::from_millis(20));
    let _ = limiter.check(Uuid::new_v4(), limit(60, 10)).await;
    let gets = pool.state().statistics.get_started;

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!limiter.is_breaker_open());
    assert_eq!(
        limiter.check(Uuid::new_v4(), limit(60, 10)).await,
        RateDecision::Unavailable
    );

    assert_eq!(pool.state().statistics.get_started, gets + 1);
}

#[tokio::test]
async fn an_error_redis_answers_for_one_key_is_undecided_without_opening_the_breaker() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let (clobbered, fine) = (Uuid::new_v4(), Uuid::new_v4());
    let mut conn = checkout(&redis.pool).await.expect("a connection");
    let _: i64 = redis::cmd("HSET")
        .arg(limiter.key(clobbered))
        .arg("not")
        .arg("a number")
        .query_async(&mut conn)
        .await
        .expect("HSET");

    assert_eq!(
        limiter.check(clobbered, limit(SLOW, 3)).await,
        RateDecision::Unavailable,
        "GET of a hash fails with WRONGTYPE"
    );

    assert!(!limiter.is_breaker_open());
    assert_eq!(remaining(limiter.check(fine, limit(SLOW, 3)).await), 2);

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn the_start_and_the_end_of_a_failure_streak_are_logged_with_their_fields() {
    let redis = test_redis().await;
    let logs = CapturedLogs::new();
    let limiter = limiter_on(&redis).with_logger(logs.logger());
    let (clobbered, fine) = (Uuid::new_v4(), Uuid::new_v4());
    let mut conn = checkout(&redis.pool).await.expect("a connection");
    let _: i64 = redis::cmd("HSET")
        .arg(limiter.key(clobbered))
        .arg("not")
        .arg("a number")
        .query_async(&mut conn)
        .await
        .expect("HSET");

    for _ in 0..2 {
        let _ = limiter.check(clobbered, limit(SLOW, 3)).await;
    }
    let _ = limiter.check(fine, limit(SLOW, 3)).await;
    let (down, _pool) = failing_limiter(UNREACHABLE_REDIS_URL.to_owned()).await;
    let down_logs = CapturedLogs::new();
    let down = down.with_logger(down_logs.logger());
    let _ = down.check(fine, limit(SLOW, 3)).await;

    let records = logs.records();
    let levels: Vec<slog::Level> = records.iter().map(|r| r.level).collect();
    assert_eq!(
        levels,
        [slog::Level::Error, slog::Level::Info],
        "one record per streak, not per failure: {records:?}"
    );
    assert!(
        records[0]
            .field("error")
            .is_some_and(|e| e.contains("WRONGTYPE")),
        "{records:?}"
    );
    let outage = down_logs.records();
    assert_eq!(outage.len(), 1, "{outage:?}");
    assert_eq!(outage[0].level, slog::Level::Warning);
    assert_eq!(outage[0].field("cooldown_ms"), Some("500"));
    assert!(outage[0].field("error").is_some(), "{outage:?}");

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn decisions_are_counted_as_allowed_limited_and_errors() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The test runtime is single-threaded, so this thread's recorder sees every count.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let redis = test_redis().await;
    let limiter = limiter_on(&redis);
    let (down, _pool) = failing_limiter(UNREACHABLE_REDIS_URL.to_owned()).await;
    let key = Uuid::new_v4();

    let _ = checks(&limiter, key, limit(SLOW, 3), 5).await;
    // One failure, then one skipped by the breaker: both undecided, both errors.
    let _ = checks(&down, key, limit(SLOW, 3), 2).await;

    let counts = CounterSnapshot::take(&snapshotter);
    let total = names::RATE_LIMIT_DECISIONS_TOTAL;
    let decision = |value| counts.get(total, &[("decision", value)]);
    assert_eq!(decision(rate_limit_decision::ALLOWED), 3);
    assert_eq!(decision(rate_limit_decision::LIMITED), 2);
    assert_eq!(decision(rate_limit_decision::ERROR), 2);

    redis.cleanup().await.expect("clean up");
}

/// A limiter with leases whose Redis connections go through a proxy the test can shut.
async fn leasing_limiter_behind_proxy(
    redis: &TestRedis,
    lease: Duration,
) -> (RedisRateLimiter, maas_cache::test_util::TcpProxy) {
    let proxy = maas_cache::test_util::TcpProxy::start()
        .await
        .expect("proxy");
    let settings = RedisSettings {
        url: Some(proxy.url()),
        command_timeout_ms: 500,
        ..redis.settings.clone()
    };
    let pool = connect(&settings).await.expect("pool");
    let limiter = RedisRateLimiter::from_settings(pool, &settings)
        .with_leases(lease)
        .with_breaker_cooldown(Duration::ZERO);
    (limiter, proxy)
}

/// Twenty checks of `key`, all admitted.
async fn admit_twenty(limiter: &RedisRateLimiter, key: Uuid, busy: RateLimit) {
    let decisions = checks(limiter, key, busy, 20).await;
    assert!(
        decisions
            .iter()
            .all(|d| matches!(d, RateDecision::Allowed { .. })),
        "{decisions:?}"
    );
}

#[tokio::test]
async fn a_busy_key_is_admitted_from_its_lease_without_redis() {
    let redis = test_redis().await;
    let (limiter, proxy) = leasing_limiter_behind_proxy(&redis, Duration::from_secs(60)).await;
    let key = Uuid::new_v4();
    let busy = limit(SLOW, 1_000);
    // The lease grows with demand: 1, then up to 4 times the last one.
    admit_twenty(&limiter, key, busy).await;

    // Redis is gone: a key with requests in its lease is still decided, one without is not.
    proxy.shut();
    let decision = limiter.check(key, busy).await;
    assert!(
        matches!(decision, RateDecision::Allowed { .. }),
        "admitted from the lease: {decision:?}"
    );
    assert_eq!(
        limiter.check(Uuid::new_v4(), busy).await,
        RateDecision::Unavailable
    );
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn without_leases_every_check_asks_redis() {
    let redis = test_redis().await;
    let (limiter, proxy) = leasing_limiter_behind_proxy(&redis, Duration::ZERO).await;
    let key = Uuid::new_v4();
    let busy = limit(SLOW, 1_000);
    admit_twenty(&limiter, key, busy).await;
    proxy.shut();
    assert_eq!(limiter.check(key, busy).await, RateDecision::Unavailable);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn an_expired_lease_is_not_used() {
    let redis = test_redis().await;
    let (limiter, proxy) = leasing_limiter_behind_proxy(&redis, Duration::from_millis(50)).await;
    let key = Uuid::new_v4();
    let busy = limit(SLOW, 1_000);
    admit_twenty(&limiter, key, busy).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.shut();
    assert_eq!(limiter.check(key, busy).await, RateDecision::Unavailable);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn replicas_with_leases_together_admit_no_more_than_the_burst() {
    let redis = test_redis().await;
    let replicas: Vec<RedisRateLimiter> = (0..3)
        .map(|_| limiter_on(&redis).with_leases(Duration::from_secs(60)))
        .collect();
    let key = Uuid::new_v4();
    let burst = 40;
    let started = std::time::Instant::now();
    let mut admitted = 0;
    let mut refused = 0;
    for round in 0..60 {
        let replica = &replicas[round % replicas.len()];
        match replica.check(key, limit(SLOW, burst)).await {
            RateDecision::Allowed { .. } => admitted += 1,
            RateDecision::Limited { .. } => refused += 1,
            RateDecision::Unavailable => panic!("Redis is up"),
        }
    }
    // A bound, not a timing assertion: one more request a minute may have become available.
    let extra = (started.elapsed().as_secs_f64() / 60.0).floor() as usize;
    assert!(admitted <= burst as usize + extra, "admitted {admitted}");
    assert_eq!(admitted + refused, 60);
    // Leases held by the other replicas may leave some of the burst unused, never more than
    // half the burst per replica.
    assert!(admitted >= burst as usize / 2, "admitted {admitted}");
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn the_remaining_header_counts_what_the_lease_holds() {
    let redis = test_redis().await;
    let limiter = limiter_on(&redis).with_leases(Duration::from_secs(60));
    let key = Uuid::new_v4();
    let decisions = checks(&limiter, key, limit(SLOW, 100), 30).await;
    let remaining: Vec<u32> = decisions.into_iter().map(remaining).collect();
    // One replica alone: exactly as without leases, one fewer per request.
    let expected: Vec<u32> = (70..100).rev().collect();
    assert_eq!(remaining, expected);
    redis.cleanup().await.expect("cleanup");
}

/// Checks `key` on `limiter` until one is refused; returns how many were admitted.
async fn admit_until_refused(limiter: &RedisRateLimiter, key: Uuid, limit: RateLimit) -> usize {
    let mut admitted = 0;
    loop {
        match limiter.check(key, limit).await {
            RateDecision::Allowed { .. } => admitted += 1,
            RateDecision::Limited { .. } => return admitted,
            RateDecision::Unavailable => panic!("Redis is up"),
        }
        assert!(admitted <= 10_000, "never refused");
    }
}

#[tokio::test]
async fn below_half_the_burst_no_lease_is_granted_and_nothing_is_held_back() {
    let redis = test_redis().await;
    let leasing = limiter_on(&redis).with_leases(Duration::from_secs(60));
    let plain = limiter_on(&redis);
    let key = Uuid::new_v4();
    let burst = 40;
    // Another replica takes the key below half its burst (19 left)...
    for _ in 0..21 {
        assert!(matches!(
            plain.check(key, limit(SLOW, burst)).await,
            RateDecision::Allowed { .. }
        ));
    }
    // ...after which a leasing replica's busy stream is decided one request at a time.
    for i in 0..10 {
        let decision = leasing.check(key, limit(SLOW, burst)).await;
        assert!(matches!(decision, RateDecision::Allowed { .. }), "{i}");
        assert_eq!(leasing.held(key), 0, "no lease below half the burst ({i})");
    }
    // So the first replica gets every request that is left: none is sitting in a lease.
    assert_eq!(
        admit_until_refused(&plain, key, limit(SLOW, burst)).await,
        9
    );
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn what_a_lease_did_not_use_goes_back_to_redis_when_it_ends() {
    let redis = test_redis().await;
    let leasing = limiter_on(&redis).with_leases(Duration::from_millis(50));
    let plain = limiter_on(&redis);
    let key = Uuid::new_v4();
    let busy = limit(SLOW, 1_000);
    // A busy stream on the leasing replica, which then stops with requests still leased.
    admit_twenty(&leasing, key, busy).await;
    let held = u64::from(leasing.held(key));
    assert!(held > 0, "the busy key holds a lease");
    let spent = stored_tat(&redis, &leasing, key).await.expect("a TAT");
    // Once the lease's 50 ms are over its leftovers are given back: wait for that (the bound
    // is only there so that a broken give-back fails instead of hanging; nothing is timed).
    let mut given_back = spent;
    for _ in 0..500 {
        given_back = stored_tat(&redis, &leasing, key).await.expect("a TAT");
        if given_back < spent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One interval (60 s at one request a minute) per leased request that was not admitted.
    assert_eq!(
        spent - given_back,
        held * 60_000_000,
        "the lease's {held} went back"
    );
    assert_eq!(leasing.held(key), 0, "the lease ended");
    assert_eq!(admit_until_refused(&plain, key, busy).await, 1_000 - 20);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_stopping_replica_releases_its_leases_at_once() {
    let redis = test_redis().await;
    let leasing = limiter_on(&redis).with_leases(Duration::from_secs(60));
    let plain = limiter_on(&redis);
    let key = Uuid::new_v4();
    let busy = limit(SLOW, 1_000);
    admit_twenty(&leasing, key, busy).await;
    assert!(leasing.held(key) > 0, "the busy key holds a lease");
    leasing.release_leases().await;
    assert_eq!(leasing.held(key), 0);
    // Exactly the twenty admitted are spent: nothing leased is lost.
    assert_eq!(admit_until_refused(&plain, key, busy).await, 1_000 - 20);
    redis.cleanup().await.expect("cleanup");
}
