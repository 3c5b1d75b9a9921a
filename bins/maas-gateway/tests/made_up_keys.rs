//! Made-up keys cost the gateway's stores nothing: a key in the gateway's own format whose
//! checksum fails is refused with no lookup at all (shown with Postgres and Redis both gone);
//! an unknown key is looked up once and then remembered in the replica's memory, never in
//! Redis; and an address that keeps failing gets 429 before anything is looked up, whatever
//! `X-Forwarded-For` it claims, unless it comes through a trusted proxy.

mod common;

use common::{Options, assert_problem, client_with_key, spawn_with};
use maas_api::proxy::IpNetwork;
use maas_cache::test_util::UNREACHABLE_REDIS_URL;
use maas_domain::identity::PlaintextKey;
use serde_json::Value;

/// A key in the format of keys from before checked keys (`maas_` and 32 characters): the gateway
/// cannot tell a made-up one from a real one without looking it up.
fn legacy_key() -> String {
    format!("maas_{}", uuid::Uuid::new_v4().simple())
}

/// `key` with one character of its random part changed: what a typo or a guess looks like.
fn one_typo_from(key: &str) -> String {
    let mut raw = key.as_bytes().to_vec();
    let i = PlaintextKey::PREFIX.len() + 10;
    raw[i] = if raw[i] == b'Q' { b'R' } else { b'Q' };
    String::from_utf8(raw).expect("ascii")
}

async fn status_with(app: &common::TestApp, key: &str) -> u16 {
    app.anon
        .get(app.url("/api/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .expect("GET")
        .status()
        .as_u16()
}

/// The names of this app's Redis keys under `what` (`c:key:`, …).
async fn redis_keys(app: &common::TestApp, what: &str) -> Vec<String> {
    let mut conn = app.redis.pool.get().await.expect("redis");
    redis::cmd("KEYS")
        .arg(format!("{}{what}*", app.redis.prefix))
        .query_async(&mut *conn)
        .await
        .expect("KEYS")
}

#[tokio::test]
async fn a_key_one_typo_from_a_real_one_is_refused_with_postgres_and_redis_gone() {
    let app = spawn_with(Options {
        redis_url: Some(UNREACHABLE_REDIS_URL.to_owned()),
        postgres_down: true,
        ..Options::default()
    })
    .await;
    assert!(app.admin_key.starts_with(PlaintextKey::PREFIX));

    // A key that has to be looked up cannot be: the stores are gone.
    assert_eq!(status_with(&app, &legacy_key()).await, 503);
    // One in the gateway's own format that fails its checksum never gets that far.
    for _ in 0..3 {
        let res = app
            .anon
            .get(app.url("/api/v1/models"))
            .bearer_auth(one_typo_from(&app.admin_key))
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), 401);
        assert!(res.headers().contains_key("www-authenticate"));
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("maas_auth_failures_total{reason=\"checksum\"} 3"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_key_is_looked_up_once_then_refused_from_memory_and_never_written_to_redis() {
    let app = spawn_with(Options {
        postgres_behind_proxy: true,
        ..Options::default()
    })
    .await;
    // Keys from before checked keys are still looked up: the shape alone cannot tell.
    let made_up: Vec<String> = (0..20).map(|_| legacy_key()).collect();
    for key in &made_up {
        assert_eq!(status_with(&app, key).await, 401);
    }
    // Before, each of them left an entry in Redis: anyone could fill it.
    assert_eq!(redis_keys(&app, "c:key:").await, Vec::<String>::new());

    // Postgres gone: the same keys are still refused, from this replica's memory...
    app.postgres_proxy.as_ref().expect("a proxy").shut();
    for key in &made_up {
        assert_eq!(status_with(&app, key).await, 401);
    }
    // ...while a key never seen needs Postgres.
    assert_eq!(status_with(&app, &legacy_key()).await, 503);
    app.stop().await;
}

#[tokio::test]
async fn an_address_that_keeps_failing_gets_429_before_anything_is_looked_up() {
    let app = spawn_with(Options {
        failed_per_ip_per_minute: 5,
        postgres_behind_proxy: true,
        ..Options::default()
    })
    .await;
    for i in 0..5 {
        let made_up = PlaintextKey::generate().expect("csprng");
        let res = app
            .anon
            .get(app.url("/api/v1/models"))
            .bearer_auth(made_up.expose())
            // Claiming to be someone else changes nothing: the header is not believed.
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), 401, "failure {i}");
    }

    // From now on this address is not looked at, not even with a real key.
    app.postgres_proxy.as_ref().expect("a proxy").shut();
    let res = app.get("/api/v1/models").await;
    let retry_after: u64 = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    let body = assert_problem(res, 429, None).await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("failed authentications")),
        "{body}"
    );
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&serde_json::json!({"model": "any", "messages": []}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 429);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_failed_authentications");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("maas_auth_failures_total{reason=\"throttled\"} 2"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_failures() {
    let app = spawn_with(Options {
        failed_per_ip_per_minute: 2,
        trusted_proxies: vec![IpNetwork::v4(127, 0, 0, 0, 8)],
        ..Options::default()
    })
    .await;
    let made_up = PlaintextKey::generate().expect("csprng");
    let from = |client: &'static str| {
        app.anon
            .get(app.url("/api/v1/models"))
            .bearer_auth(made_up.expose())
            .header("x-forwarded-for", client)
    };
    for _ in 0..2 {
        assert_eq!(from("203.0.113.1").send().await.expect("GET").status(), 401);
    }
    assert_eq!(from("203.0.113.1").send().await.expect("GET").status(), 429);
    // Another client behind the same proxy is not held back by the first one's failures.
    assert_eq!(from("203.0.113.2").send().await.expect("GET").status(), 401);
    let res = client_with_key(&app.admin_key)
        .get(app.url("/api/v1/models"))
        .header("x-forwarded-for", "203.0.113.3")
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn keys_made_before_checked_keys_still_work_against_postgres_and_redis() {
    // A bootstrap admin key an operator wrote in the old shape.
    let old_admin = legacy_key();
    let app = spawn_with(Options {
        admin_key: Some(old_admin.clone()),
        ..Options::default()
    })
    .await;
    let me = |key: String| {
        let client = client_with_key(&key);
        let url = app.url("/api/v1/users/me");
        async move {
            let res = client.get(url).send().await.expect("GET");
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, admin) = me(old_admin.clone()).await;
    assert_eq!((status, admin["role"].as_str()), (200, Some("admin")));

    // A member's key stored as the gateway stored keys before checked ones: its hash, written
    // straight into Postgres.
    let (member_id, _) = app.user_with_key("veteran", "member").await;
    let old_key = legacy_key();
    let plaintext = PlaintextKey::read(&old_key).expect("the legacy shape is still read");
    let pool = maas_persistence::connect(&app.db.settings())
        .await
        .expect("pool");
    let identity = maas_persistence::PgIdentityRepository::new(pool);
    maas_domain::ports::IdentityRepository::create_key(
        &identity,
        maas_domain::identity::NewApiKey {
            user_id: member_id.parse().expect("uuid"),
            name: maas_domain::identity::KeyName::parse("from-2026".to_owned()).expect("name"),
            hash: plaintext.hash(),
            prefix: plaintext.display_prefix(),
            expires_at: None,
            rate_limit_rpm: None,
            models: None,
            tokens: maas_domain::identity::TokenQuotas::default(),
        },
        None,
    )
    .await
    .expect("an old key's row");
    // Looked up in Postgres the first time, then from the cache: both answer the same.
    for _ in 0..2 {
        let (status, user) = me(old_key.clone()).await;
        assert_eq!(status, 200, "{user}");
        assert_eq!(user["username"], "veteran");
    }
    let cached = format!("c:key:{}", plaintext.hash().to_hex());
    assert_eq!(
        redis_keys(&app, &cached).await.len(),
        1,
        "a known old key is cached like any other"
    );
    // One typo in an old key is not a checksum failure: it is looked up, and refused.
    let (status, _) = me(one_typo_from_legacy(&old_key)).await;
    assert_eq!(status, 401);
    app.stop().await;
}

/// `key` (an old-shape one) with one character of its secret changed.
fn one_typo_from_legacy(key: &str) -> String {
    let mut raw = key.as_bytes().to_vec();
    let i = PlaintextKey::LEGACY_PREFIX.len() + 3;
    raw[i] = if raw[i] == b'a' { b'b' } else { b'a' };
    String::from_utf8(raw).expect("ascii")
}
