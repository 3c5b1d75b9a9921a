//! The Redis cache-aside adapter against the real Redis, each test under its own key prefix.

use std::time::Duration;

use futures_util::StreamExt as _;
use maas_cache::test_util::{
    BlackHole, CapturedLogs, CounterSnapshot, TestRedis, UNREACHABLE_REDIS_URL,
};
use maas_cache::{RedisCache, RedisPool, RedisSettings, checkout, connect};
use maas_domain::identity::KeyHash;
use maas_domain::ports::{Cache, CacheLookup, Field, FillToken, Scope};
use maas_domain::values::{ModelName, VersionNumber};
use maas_telemetry::names::{self, cache_result};
use metrics_util::debugging::DebuggingRecorder;

const TTL: Duration = Duration::from_secs(60);

/// The scope of model `name`.
fn model(name: &str) -> Scope {
    Scope::Model(ModelName::parse(name).expect("a valid name"))
}

/// The field of version `n`.
fn version(n: i64) -> Field {
    Field::Version(VersionNumber::new(n).expect("a valid version"))
}

async fn test_redis() -> TestRedis {
    TestRedis::start().await.expect("a pool on the test Redis")
}

fn cache_on(redis: &TestRedis) -> RedisCache {
    RedisCache::new(
        redis.pool.clone(),
        redis.prefix.clone(),
        TTL,
        redis.settings.command_timeout(),
    )
}

/// A cache on a Redis at `url` that fails or hangs, with a short timeout.
async fn failing_cache(url: String) -> (RedisCache, RedisPool) {
    let settings = RedisSettings {
        url: Some(url),
        command_timeout_ms: 200,
        ..RedisSettings::default()
    };
    let pool = connect(&settings)
        .await
        .expect("connect never fails on a valid URL");
    let cache = RedisCache::new(
        pool.clone(),
        "maas:test:failing:",
        TTL,
        settings.command_timeout(),
    );
    (cache, pool)
}

async fn miss_token(cache: &RedisCache, scope: &Scope, field: &Field) -> FillToken {
    match cache.lookup(scope, field).await {
        CacheLookup::Miss(token) => token,
        other => panic!("expected a miss for {scope}/{field}, got {other:?}"),
    }
}

async fn get_started(pool: &RedisPool) -> u64 {
    pool.state().statistics.get_started
}

#[tokio::test]
async fn a_field_never_filled_is_a_miss_with_an_empty_token() {
    let redis = test_redis().await;
    let cache = cache_on(&redis);

    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Miss(FillToken(None))
    );

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn a_filled_value_is_a_hit_with_the_same_bytes() {
    let redis = test_redis().await;
    let cache = cache_on(&redis);
    let value = vec![0, 159, 146, 150, b'{', 255];

    let token = miss_token(&cache, &model("a"), &version(1)).await;
    cache
        .fill(&model("a"), &version(1), token, value.clone())
        .await;

    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Hit(value.into())
    );
    assert!(
        matches!(
            cache.lookup(&model("a"), &version(2)).await,
            CacheLookup::Miss(_)
        ),
        "another field of the scope stays a miss"
    );

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn invalidating_a_scope_drops_every_field_of_it_and_nothing_else() {
    let redis = test_redis().await;
    let writer = cache_on(&redis);
    // Another replica sharing the same Redis.
    let reader = cache_on(&redis);
    for (scope, field) in [
        (model("a"), version(1)),
        (model("a"), version(2)),
        (model("b"), version(1)),
    ] {
        let (scope, field) = (&scope, &field);
        let token = miss_token(&reader, scope, field).await;
        reader.fill(scope, field, token, b"cached".to_vec()).await;
    }

    writer.invalidate(&model("a")).await;

    assert!(matches!(
        reader.lookup(&model("a"), &version(1)).await,
        CacheLookup::Miss(_)
    ));
    assert!(matches!(
        reader.lookup(&model("a"), &version(2)).await,
        CacheLookup::Miss(_)
    ));
    assert_eq!(
        reader.lookup(&model("b"), &version(1)).await,
        CacheLookup::Hit(b"cached".to_vec().into())
    );

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn a_fill_with_a_token_from_before_an_invalidation_is_not_stored() {
    let redis = test_redis().await;
    let cache = cache_on(&redis);
    // First ever miss (no generation yet) and a later one (after an invalidation).
    for _round in 0..2 {
        let stale_token = miss_token(&cache, &model("a"), &version(1)).await;
        // A writer changes the row and invalidates while the reader is loading the old row.
        cache.invalidate(&model("a")).await;
        cache
            .fill(&model("a"), &version(1), stale_token, b"old row".to_vec())
            .await;

        assert!(
            matches!(
                cache.lookup(&model("a"), &version(1)).await,
                CacheLookup::Miss(_)
            ),
            "the value loaded before the invalidation must not be cached"
        );
    }

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn a_fill_with_a_token_from_after_the_invalidation_is_stored() {
    let redis = test_redis().await;
    let cache = cache_on(&redis);
    cache.invalidate(&model("a")).await;

    let token = miss_token(&cache, &model("a"), &version(1)).await;
    assert!(token.0.is_some(), "an invalidated scope has a generation");
    cache
        .fill(&model("a"), &version(1), token, b"new row".to_vec())
        .await;

    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Hit(b"new row".to_vec().into())
    );

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn cached_values_expire_within_the_ttl_and_generations_outlive_them() {
    let redis = test_redis().await;
    let cache = cache_on(&redis);
    cache.invalidate(&model("a")).await;
    let token = miss_token(&cache, &model("a"), &version(1)).await;
    cache
        .fill(&model("a"), &version(1), token, b"row".to_vec())
        .await;

    let mut conn = redis.pool.get().await.expect("a connection");
    let values_ttl: i64 = redis::cmd("TTL")
        .arg(cache.scope_key(&model("a")))
        .query_async(&mut *conn)
        .await
        .expect("TTL of the scope");
    let generation_ttl: i64 = redis::cmd("TTL")
        .arg(cache.generation_key(&model("a")))
        .query_async(&mut *conn)
        .await
        .expect("TTL of the generation");
    drop(conn);

    let ttl = i64::try_from(TTL.as_secs()).expect("small TTL");
    assert!(
        values_ttl > 0 && values_ttl <= ttl,
        "values TTL {values_ttl}"
    );
    assert!(generation_ttl > ttl, "generation TTL {generation_ttl}");

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn every_key_the_cache_writes_starts_with_its_prefix() {
    let redis = test_redis().await;
    let cache = cache_on(&redis);
    cache.invalidate(&model("a")).await;
    let token = miss_token(&cache, &model("a"), &version(1)).await;
    cache
        .fill(&model("a"), &version(1), token, b"row".to_vec())
        .await;

    assert!(cache.scope_key(&model("a")).starts_with(&redis.prefix));
    assert!(cache.generation_key(&model("a")).starts_with(&redis.prefix));
    let mut conn = redis.pool.get().await.expect("a connection");
    for key in [
        cache.scope_key(&model("a")),
        cache.generation_key(&model("a")),
    ] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut *conn)
            .await
            .expect("EXISTS");
        assert!(exists, "{key} was written");
    }
    drop(conn);

    assert_eq!(redis.cleanup().await.expect("clean up"), 2);
}

#[tokio::test]
async fn keys_fields_and_messages_are_spelled_as_earlier_builds_spelled_them() {
    // Replicas of the previous build share this Redis during a rolling upgrade.
    let redis = test_redis().await;
    let cache = cache_on(&redis);
    let client = redis::Client::open(redis.settings.connection_url()).expect("a valid URL");
    let mut messages = client.get_async_pubsub().await.expect("a subscription");
    messages
        .subscribe(format!("{}invalidations", redis.prefix))
        .await
        .expect("subscribed");
    let hash = KeyHash::from_bytes(&[0xc3; 32]).expect("32 bytes");
    let key = Scope::Key(hash);
    for (scope, field) in [(&model("a"), &version(3)), (&key, &Field::Key)] {
        let token = miss_token(&cache, scope, field).await;
        cache.fill(scope, field, token, b"stored".to_vec()).await;
    }

    let mut conn = redis.pool.get().await.expect("a connection");
    for (hash_key, field) in [
        (format!("{}c:model:a", redis.prefix), "v:3"),
        (format!("{}c:key:{}", redis.prefix, "c3".repeat(32)), "k"),
    ] {
        let stored: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&hash_key)
            .arg(field)
            .query_async(&mut *conn)
            .await
            .expect("HGET");
        assert_eq!(
            stored.as_deref(),
            Some(&b"stored"[..]),
            "{hash_key} {field}"
        );
    }
    drop(conn);
    cache.invalidate(&key).await;
    cache.invalidate(&model("a")).await;

    let mut stream = messages.on_message();
    for expected in [format!("key:{}", "c3".repeat(32)), "model:a".to_owned()] {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a message within 5 s")
            .expect("the subscription is open");
        assert_eq!(message.get_payload::<String>().expect("text"), expected);
    }
    drop(stream);

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn a_connection_killed_under_the_cache_is_replaced_without_a_bypass() {
    let redis = test_redis().await;
    let cache = cache_on(&redis);
    let token = miss_token(&cache, &model("a"), &version(1)).await;
    cache
        .fill(&model("a"), &version(1), token, b"row".to_vec())
        .await;
    // As after a Redis restart: the server drops the pool's (only) connection.
    let mut pooled = checkout(&redis.pool).await.expect("a connection");
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut pooled)
        .await
        .expect("CLIENT ID");
    let killer = connect(&redis.settings).await.expect("a second pool");
    let mut killer_conn = checkout(&killer).await.expect("a connection");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut killer_conn)
        .await
        .expect("CLIENT KILL of our own connection");
    assert_eq!(killed, 1);

    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Hit(b"row".to_vec().into())
    );
    assert!(pooled.is_condemned(), "the dead connection left the pool");
    assert!(!cache.is_bypassing());

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn with_redis_unreachable_lookups_bypass_and_writes_return() {
    let (cache, _pool) = failing_cache(UNREACHABLE_REDIS_URL.to_owned()).await;

    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Bypass
    );
    cache
        .fill(&model("a"), &version(1), FillToken(None), b"row".to_vec())
        .await;
    cache.invalidate(&model("a")).await;
    assert!(cache.is_bypassing());
}

#[tokio::test]
async fn a_failure_streak_is_logged_once_and_every_failed_invalidation_names_its_scope() {
    let logs = CapturedLogs::new();
    let (cache, _pool) = failing_cache(UNREACHABLE_REDIS_URL.to_owned()).await;
    let cache = cache
        .with_breaker_cooldown(Duration::from_secs(3600))
        .with_logger(logs.logger());

    for _ in 0..2 {
        assert_eq!(
            cache.lookup(&model("a"), &version(1)).await,
            CacheLookup::Bypass
        );
    }
    cache.invalidate(&model("a")).await;

    let records = logs.records();
    assert_eq!(records.len(), 2, "{records:?}");
    let (streak, invalidation) = (&records[0], &records[1]);
    assert_eq!(streak.level, slog::Level::Warning);
    assert_eq!(streak.field("op"), Some("lookup"));
    assert_eq!(streak.field("cooldown_ms"), Some("3600000"));
    assert!(streak.field("error").is_some(), "{streak:?}");
    assert_eq!(invalidation.level, slog::Level::Error);
    assert_eq!(invalidation.field("scope"), Some("model:a"));
    assert_eq!(invalidation.field("kind"), Some("model"));
}

#[tokio::test]
async fn with_redis_hanging_a_lookup_bypasses_and_the_next_ones_skip_redis() {
    let black_hole = BlackHole::start().await.expect("a loopback listener");
    let (cache, pool) = failing_cache(black_hole.url()).await;
    let cache = cache.with_breaker_cooldown(Duration::from_secs(3600));

    assert!(!cache.is_bypassing());
    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Bypass
    );
    assert!(cache.is_bypassing());
    let gets = get_started(&pool).await;
    assert_eq!(gets, 1, "the first lookup asked the pool");

    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Bypass
    );
    cache
        .fill(&model("a"), &version(1), FillToken(None), b"row".to_vec())
        .await;
    assert_eq!(
        get_started(&pool).await,
        gets,
        "lookups and fills skip Redis while the breaker is open"
    );
}

#[tokio::test]
async fn invalidations_are_attempted_and_retried_even_while_the_breaker_is_open() {
    let (cache, pool) = failing_cache(UNREACHABLE_REDIS_URL.to_owned()).await;
    let cache = cache.with_breaker_cooldown(Duration::from_secs(3600));
    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Bypass
    );
    let gets = get_started(&pool).await;

    cache.invalidate(&model("a")).await;

    assert_eq!(
        get_started(&pool).await,
        gets + 2,
        "tried, then retried once"
    );
}

#[tokio::test]
async fn after_the_cooldown_lookups_try_redis_again() {
    let (cache, pool) = failing_cache(UNREACHABLE_REDIS_URL.to_owned()).await;
    let cache = cache.with_breaker_cooldown(Duration::from_millis(20));
    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Bypass
    );
    let gets = get_started(&pool).await;

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!cache.is_bypassing());
    assert_eq!(
        cache.lookup(&model("a"), &version(1)).await,
        CacheLookup::Bypass
    );

    assert_eq!(get_started(&pool).await, gets + 1);
}

#[tokio::test]
async fn lookups_are_counted_as_hits_misses_and_errors() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The test runtime is single-threaded, so this thread's recorder sees every count.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let redis = test_redis().await;
    let cache = cache_on(&redis);
    let (down, _pool) = failing_cache(UNREACHABLE_REDIS_URL.to_owned()).await;

    let token = miss_token(&cache, &model("a"), &version(1)).await;
    cache
        .fill(&model("a"), &version(1), token, b"row".to_vec())
        .await;
    for _ in 0..3 {
        assert!(matches!(
            cache.lookup(&model("a"), &version(1)).await,
            CacheLookup::Hit(_)
        ));
    }
    // One failure, then one skipped by the breaker: both went to the source, both are errors.
    for _ in 0..2 {
        assert_eq!(
            down.lookup(&model("a"), &version(1)).await,
            CacheLookup::Bypass
        );
    }

    let counts = CounterSnapshot::take(&snapshotter);
    let total = names::CACHE_REQUESTS_TOTAL;
    assert_eq!(counts.get(total, &[("result", cache_result::HIT)]), 3);
    assert_eq!(counts.get(total, &[("result", cache_result::MISS)]), 1);
    assert_eq!(counts.get(total, &[("result", cache_result::ERROR)]), 2);

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn lookups_are_counted_by_the_kind_of_their_scope() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let redis = test_redis().await;
    let cache = cache_on(&redis);

    let key = Scope::Key(KeyHash::from_bytes(&[0x0a; 32]).expect("32 bytes"));
    let token = miss_token(&cache, &key, &Field::Key).await;
    cache.fill(&key, &Field::Key, token, b"key".to_vec()).await;
    assert!(matches!(
        cache.lookup(&key, &Field::Key).await,
        CacheLookup::Hit(_)
    ));
    let _ = miss_token(&cache, &model("a"), &version(1)).await;

    let counts = CounterSnapshot::take(&snapshotter);
    let total = names::CACHE_REQUESTS_TOTAL;
    let hit = ("result", cache_result::HIT);
    let miss = ("result", cache_result::MISS);
    assert_eq!(counts.get(total, &[("kind", "key"), hit]), 1);
    assert_eq!(counts.get(total, &[("kind", "key"), miss]), 1);
    assert_eq!(counts.get(total, &[("kind", "model"), miss]), 1);
    assert_eq!(counts.get(total, &[("kind", "model"), hit]), 0);

    redis.cleanup().await.expect("clean up");
}

#[tokio::test]
async fn failed_writes_are_counted_by_operation() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (down, _pool) = failing_cache(UNREACHABLE_REDIS_URL.to_owned()).await;

    down.fill(&model("a"), &version(1), FillToken(None), b"row".to_vec())
        .await;
    down.invalidate(&model("a")).await;
    down.invalidate(&model("b")).await;

    let counts = CounterSnapshot::take(&snapshotter);
    let errors = names::CACHE_WRITE_ERRORS_TOTAL;
    assert_eq!(counts.get(errors, &[("op", "fill")]), 1);
    assert_eq!(counts.get(errors, &[("op", "invalidate")]), 2);
}
