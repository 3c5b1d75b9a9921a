//! The in-process tier ([`NearCache`]) against the real Redis: it answers without Redis, and the
//! invalidation messages of every replica (its own included) keep it coherent. Each test has its
//! own key prefix, hence its own invalidation channel.

use std::sync::Arc;
use std::time::Duration;

use maas_cache::test_util::{CapturedLogs, CounterSnapshot, TcpProxy, TestRedis};
use maas_cache::{
    LocalStore, NearCache, RedisCache, RedisSettings, listen_for_invalidations,
    listen_for_invalidations_with_logger,
};
use maas_domain::ports::{Cache, CacheLookup, Field, Scope};
use maas_domain::values::{ModelName, VersionNumber};
use maas_telemetry::names::{self, cache_result};
use metrics_util::debugging::DebuggingRecorder;
use redis::AsyncCommands as _;

/// Long enough that no test passes because an entry expired.
const LOCAL_TTL: Duration = Duration::from_secs(300);

/// The scope every test fills: model `near`.
fn scope() -> Scope {
    model("near")
}

fn model(name: &str) -> Scope {
    Scope::Model(ModelName::parse(name).expect("a valid name"))
}

/// The field every test fills.
fn field() -> Field {
    Field::Version(VersionNumber::new(1).expect("a valid version"))
}

/// One replica: a near cache over `redis`'s prefix with a local store of its own and its
/// invalidation listener (over `settings`, so a test can route it through a proxy).
struct Replica {
    cache: NearCache,
    local: Arc<LocalStore>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn replica(redis: &TestRedis, listener_settings: &RedisSettings) -> Replica {
    let shared = RedisCache::new(
        redis.pool.clone(),
        redis.prefix.clone(),
        Duration::from_secs(60),
        redis.settings.command_timeout(),
    );
    let local = LocalStore::new(LOCAL_TTL, 1_000);
    let listener = tokio::spawn(
        listen_for_invalidations(
            listener_settings,
            Arc::clone(&local),
            Duration::from_secs(2),
        )
        .expect("valid settings"),
    );
    Replica {
        cache: NearCache::new(Arc::clone(&local), Arc::new(shared)),
        local,
        listener,
    }
}

/// Waits up to 5 s for `condition`; panics naming `what` otherwise.
async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 5 s");
}

async fn live_replica(redis: &TestRedis) -> Replica {
    let replica = replica(redis, &redis.settings);
    let local = Arc::clone(&replica.local);
    wait_for("the listener subscribes", || local.is_live()).await;
    replica
}

/// Stores `value` under [`field`] of [`scope`] through `cache` (miss, then fill) and reads it
/// once more, which copies it from Redis into the local tier.
async fn store_and_warm(cache: &NearCache, value: &[u8]) {
    let CacheLookup::Miss(token) = cache.lookup(&scope(), &field()).await else {
        panic!("expected a first miss");
    };
    cache.fill(&scope(), &field(), token, value.to_vec()).await;
    assert!(
        matches!(cache.lookup(&scope(), &field()).await, CacheLookup::Hit(v) if v.bytes() == value)
    );
}

/// Deletes the scope's hash in Redis behind every cache's back: from then on, only the local
/// tier can still answer with a hit.
async fn delete_behind_the_back(redis: &TestRedis, shared_key: &str) {
    let mut conn = maas_cache::checkout(&redis.pool).await.expect("conn");
    let _: () = conn.del(shared_key).await.expect("DEL");
}

/// The hash of [`scope`] in Redis, spelled as every build spells it.
fn shared_key(redis: &TestRedis) -> String {
    format!("{}c:model:near", redis.prefix)
}

/// The process holds nothing: with [`scope`] deleted in Redis, [`field`] is a miss.
async fn assert_answers_from_redis_only(redis: &TestRedis, cache: &NearCache, local: &LocalStore) {
    assert!(local.is_empty());
    delete_behind_the_back(redis, &shared_key(redis)).await;
    assert!(matches!(
        cache.lookup(&scope(), &field()).await,
        CacheLookup::Miss(_)
    ));
}

#[tokio::test]
async fn a_value_read_from_redis_is_then_served_from_the_process() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let redis = TestRedis::start().await.expect("redis");
    let a = live_replica(&redis).await;

    store_and_warm(&a.cache, b"one").await;
    assert_eq!(a.local.len(), 1);
    delete_behind_the_back(&redis, &shared_key(&redis)).await;
    assert!(
        matches!(a.cache.lookup(&scope(), &field()).await, CacheLookup::Hit(v) if v.bytes() == b"one"),
        "the process still has it, without asking Redis"
    );
    let counters = CounterSnapshot::take(&snapshotter);
    let count = |result| {
        counters.get(
            names::CACHE_REQUESTS_TOTAL,
            &[("kind", "model"), ("result", result)],
        )
    };
    assert_eq!(count(cache_result::LOCAL_HIT), 1);
    assert_eq!(count(cache_result::HIT), 1);
    assert_eq!(count(cache_result::MISS), 1);
    drop(a);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn an_invalidation_on_one_replica_reaches_the_other() {
    let redis = TestRedis::start().await.expect("redis");
    let a = live_replica(&redis).await;
    let b = live_replica(&redis).await;
    store_and_warm(&a.cache, b"old").await;
    assert!(
        matches!(b.cache.lookup(&scope(), &field()).await, CacheLookup::Hit(v) if v.bytes() == b"old")
    );
    assert_eq!(b.local.len(), 1, "B keeps it in its process");
    let before = a.local.invalidations_received();

    b.cache.invalidate(&scope()).await;
    // B reads its own write at once.
    assert!(matches!(
        b.cache.lookup(&scope(), &field()).await,
        CacheLookup::Miss(_)
    ));
    // A drops it when the message arrives (its local TTL is far away).
    let local = Arc::clone(&a.local);
    wait_for("A receives the invalidation", || {
        local.invalidations_received() > before
    })
    .await;
    assert!(a.local.is_empty());
    assert!(matches!(
        a.cache.lookup(&scope(), &field()).await,
        CacheLookup::Miss(_)
    ));
    drop((a, b));
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn other_scopes_stay_when_one_is_invalidated() {
    let redis = TestRedis::start().await.expect("redis");
    let a = live_replica(&redis).await;
    store_and_warm(&a.cache, b"kept").await;
    let other = model("other");
    let CacheLookup::Miss(token) = a.cache.lookup(&other, &field()).await else {
        panic!("miss");
    };
    a.cache.fill(&other, &field(), token, b"x".to_vec()).await;
    assert!(matches!(
        a.cache.lookup(&other, &field()).await,
        CacheLookup::Hit(_)
    ));
    assert_eq!(a.local.len(), 2);

    a.cache.invalidate(&other).await;
    assert_eq!(a.local.len(), 1);
    delete_behind_the_back(&redis, &shared_key(&redis)).await;
    assert!(
        matches!(a.cache.lookup(&scope(), &field()).await, CacheLookup::Hit(v) if v.bytes() == b"kept")
    );
    drop(a);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn without_a_subscription_the_process_keeps_nothing() {
    let redis = TestRedis::start().await.expect("redis");
    // No listener: nothing would tell this process about other replicas' writes.
    let local = LocalStore::new(LOCAL_TTL, 1_000);
    let shared = RedisCache::new(
        redis.pool.clone(),
        redis.prefix.clone(),
        Duration::from_secs(60),
        redis.settings.command_timeout(),
    );
    let cache = NearCache::new(Arc::clone(&local), Arc::new(shared));
    assert!(!local.is_live());
    store_and_warm(&cache, b"one").await;
    assert_answers_from_redis_only(&redis, &cache, &local).await;
    redis.cleanup().await.expect("cleanup");
}

/// A live replica whose invalidation listener goes through a proxy the test can cut, holding
/// [`field`] of [`scope`] in its process.
async fn warm_replica_behind_proxy(redis: &TestRedis) -> (Replica, TcpProxy) {
    let proxy = TcpProxy::start().await.expect("proxy");
    let through_proxy = RedisSettings {
        url: Some(proxy.url()),
        ..redis.settings.clone()
    };
    let a = replica(redis, &through_proxy);
    let local = Arc::clone(&a.local);
    wait_for("the listener subscribes", || local.is_live()).await;
    store_and_warm(&a.cache, b"one").await;
    (a, proxy)
}

#[tokio::test]
async fn a_lost_subscription_empties_the_process_tier_until_it_is_back() {
    let redis = TestRedis::start().await.expect("redis");
    let (a, proxy) = warm_replica_behind_proxy(&redis).await;
    let local = Arc::clone(&a.local);
    assert_eq!(a.local.len(), 1);

    // The subscription breaks and cannot come back: messages could be missed, so the process
    // drops what it holds and asks Redis every time.
    proxy.shut();
    wait_for("the listener notices", || !local.is_live()).await;
    assert_answers_from_redis_only(&redis, &a.cache, &a.local).await;
    drop(a);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn a_resubscription_starts_from_an_empty_process_tier() {
    let redis = TestRedis::start().await.expect("redis");
    let (a, proxy) = warm_replica_behind_proxy(&redis).await;
    let local = Arc::clone(&a.local);
    let subscriptions = a.local.subscriptions();

    // The connection breaks but Redis is still there: the listener subscribes again, and what
    // it held before cannot be trusted (an invalidation may have been sent in between).
    proxy.cut();
    wait_for("the listener subscribes again", || {
        local.subscriptions() > subscriptions && local.is_live()
    })
    .await;
    assert_answers_from_redis_only(&redis, &a.cache, &a.local).await;
    drop(a);
    redis.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn the_listener_logs_its_subscription_and_its_loss_through_the_logger_it_was_given() {
    let redis = TestRedis::start().await.expect("redis");
    let proxy = TcpProxy::start().await.expect("proxy");
    let through_proxy = RedisSettings {
        url: Some(proxy.url()),
        ..redis.settings.clone()
    };
    let logs = CapturedLogs::new();
    let local = LocalStore::new(LOCAL_TTL, 1_000);
    let listener = tokio::spawn(
        listen_for_invalidations_with_logger(
            &through_proxy,
            Arc::clone(&local),
            Duration::from_secs(2),
            logs.logger(),
        )
        .expect("valid settings"),
    );
    wait_for("the listener subscribes", || local.is_live()).await;
    proxy.shut();
    wait_for("the loss is logged", || {
        logs.records()
            .iter()
            .any(|r| r.level == slog::Level::Warning)
    })
    .await;
    listener.abort();

    let records = logs.records();
    let channel = format!("{}invalidations", redis.prefix);
    let made = records
        .iter()
        .find(|r| r.level == slog::Level::Info)
        .expect("the subscription is logged");
    assert_eq!(made.field("channel"), Some(channel.as_str()));
    let lost = records
        .iter()
        .find(|r| r.level == slog::Level::Warning)
        .expect("its loss is logged");
    assert_eq!(lost.field("channel"), Some(channel.as_str()));
    assert!(lost.field("reason").is_some(), "{records:?}");
    redis.cleanup().await.expect("cleanup");
}
