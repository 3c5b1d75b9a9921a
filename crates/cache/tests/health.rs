//! The Redis readiness check against the real Redis and an unreachable one.

use maas_cache::test_util::{BlackHole, TestRedis, UNREACHABLE_REDIS_URL};
use maas_cache::{RedisHealth, RedisSettings, connect};
use maas_domain::ports::{HealthCheck, HealthError};

async fn health_of(url: String) -> RedisHealth {
    let settings = RedisSettings {
        url: Some(url),
        command_timeout_ms: 200,
        pool_max_size: 3,
        ..RedisSettings::default()
    };
    let pool = connect(&settings)
        .await
        .expect("connect never fails on a valid URL");
    RedisHealth::new(pool, settings.command_timeout())
}

#[tokio::test]
async fn redis_is_healthy_when_it_answers_ping() {
    let redis = TestRedis::start().await.expect("a pool on the test Redis");
    let health = RedisHealth::new(redis.pool.clone(), redis.settings.command_timeout());

    assert_eq!(health.name(), "redis");
    assert_eq!(health.check().await, Ok(()));
    let status = health.pool_status().expect("a pooled dependency");
    assert_eq!(status.max, redis.settings.pool_max_size);
    assert!(
        status.open >= 1,
        "the check opened a connection: {status:?}"
    );

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn redis_is_unhealthy_when_unreachable() {
    let health = health_of(UNREACHABLE_REDIS_URL.to_owned()).await;

    let failure = health.check().await.expect_err("nothing listens there");
    // The pool retries a refused connection until its timeout: either way, no connection.
    assert!(
        matches!(
            failure,
            HealthError::Unreachable(_) | HealthError::Timeout(_)
        ),
        "{failure:?}"
    );
    let status = health.pool_status().expect("a pooled dependency");
    assert_eq!((status.max, status.open), (3, 0));
}

#[tokio::test]
async fn redis_is_unhealthy_when_it_never_answers() {
    let black_hole = BlackHole::start().await.expect("a loopback listener");
    let health = health_of(black_hole.url()).await;

    let timeout = HealthError::Timeout(std::time::Duration::from_millis(200));
    assert_eq!(health.check().await, Err(timeout.clone()));
    // Bounded even when called again while the first connection attempt still hangs.
    assert_eq!(health.check().await, Err(timeout));
}
