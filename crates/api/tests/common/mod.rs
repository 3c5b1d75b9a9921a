//! One place for the api tests' set-up: a real server on a free port over a database of its own
//! (cloned from the migrated template) and a Redis key prefix of its own.

#![allow(dead_code)]

pub mod stub;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use maas_api::{AppState, Dependency, RateLimitSettings, ServerSettings, UpstreamSettings};
use maas_cache::test_util::TestRedis;
use maas_domain::identity::PlaintextKey;
use maas_domain::ports::{Cache, NoCache};
use maas_domain::{Accounts, Registry, Usage};
use maas_persistence::test_util::TestDatabase;
use serde_json::{Value, json};

/// A running gateway app and what it runs on.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Sends the admin key with every request.
    pub client: reqwest::Client,
    /// Sends no key.
    pub anon: reqwest::Client,
    /// The bootstrap admin's key.
    pub admin_key: String,
    /// The app's identity use-cases (to flush key usage as the binary's task does).
    pub accounts: Accounts,
    pub db: Arc<TestDatabase>,
    pub redis: TestRedis,
    pub server: actix_web::dev::ServerHandle,
}

/// How to build a [`TestApp`]; the defaults are a healthy app with the cache on.
pub struct Options {
    pub cache: bool,
    /// The in-process tier in front of Redis (as the binary runs it), kept coherent by a
    /// pub/sub listener; its TTL is long, so tests see what invalidation messages do.
    pub local_cache: bool,
    pub max_body_bytes: usize,
    /// Share another app's database (a second replica).
    pub db: Option<Arc<TestDatabase>>,
    /// Share another app's Redis prefix (a second replica).
    pub redis: Option<TestRedis>,
    /// Point the Redis pool somewhere else (down or hung Redis).
    pub redis_url: Option<String>,
    /// Point the Postgres pool at a dead address.
    pub postgres_down: bool,
    /// Default limits (the tests' default is generous so only rate-limit tests meet it).
    pub rate_limit: RateLimitSettings,
    /// The admin key to bootstrap (a second replica passes the first one's).
    pub admin_key: Option<String>,
    /// Calls to model servers.
    pub upstream: UpstreamSettings,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cache: true,
            local_cache: true,
            max_body_bytes: 256 * 1024,
            db: None,
            redis: None,
            redis_url: None,
            postgres_down: false,
            rate_limit: RateLimitSettings {
                default_rpm: 1_000_000,
                burst: 100_000,
                fail_open: true,
                ..RateLimitSettings::default()
            },
            admin_key: None,
            upstream: UpstreamSettings {
                timeout_seconds: 5,
                ..UpstreamSettings::default()
            },
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(Options::default()).await
}

pub async fn spawn_with(options: Options) -> TestApp {
    let db = match options.db {
        Some(db) => db,
        None => Arc::new(TestDatabase::new().await),
    };
    let redis = match options.redis {
        Some(redis) => redis,
        None => TestRedis::start().await.expect("test redis"),
    };
    let mut db_settings = db.settings();
    if options.postgres_down {
        db_settings.url = Some("postgres://postgres@127.0.0.1:1/nothing".to_owned());
        db_settings.connect_timeout_seconds = 1;
    }
    let pg = maas_persistence::connect(&db_settings)
        .await
        .expect("pg pool");
    let mut redis_settings = redis.settings.clone();
    if let Some(url) = &options.redis_url {
        redis_settings.url = Some(url.clone());
        redis_settings.command_timeout_ms = 200;
    }
    let redis_pool = maas_cache::connect(&redis_settings)
        .await
        .expect("redis pool");
    let cache: Arc<dyn Cache> = if options.cache {
        Arc::new(maas_cache::RedisCache::new(
            redis_pool.clone(),
            redis_settings.key_prefix.clone(),
            Duration::from_secs(300),
            redis_settings.command_timeout(),
        ))
    } else {
        Arc::new(NoCache)
    };
    let cache: Arc<dyn Cache> = if options.cache && options.local_cache {
        let local = maas_cache::LocalStore::new(Duration::from_secs(300), 10_000);
        let listener = maas_cache::listen_for_invalidations(
            &redis_settings,
            Arc::clone(&local),
            Duration::from_secs(1),
        )
        .expect("valid redis settings");
        tokio::spawn(listener);
        if options.redis_url.is_none() {
            wait_until_live(&local).await;
        }
        Arc::new(maas_cache::NearCache::new(local, cache))
    } else {
        cache
    };
    let accounts = Accounts::new(
        Arc::new(maas_persistence::PgIdentityRepository::new(pg.clone())),
        cache.clone(),
    );
    let admin_key = options.admin_key.unwrap_or_else(|| {
        PlaintextKey::generate()
            .expect("csprng")
            .expose()
            .to_owned()
    });
    if !options.postgres_down {
        accounts
            .bootstrap_admin(&PlaintextKey::parse(&admin_key).expect("valid key"))
            .await
            .expect("bootstrap admin");
    }
    let rate_limiter = Arc::new(
        maas_cache::RedisRateLimiter::new(
            redis_pool.clone(),
            redis_settings.key_prefix.clone(),
            redis_settings.command_timeout(),
        )
        .with_leases(Duration::from_millis(options.rate_limit.lease_ms)),
    );
    let app_accounts = accounts.clone();
    let (usage_queue, usage_receiver) = maas_api::usage::UsageQueue::new(1_000);
    let usage = Usage::new(Arc::new(maas_persistence::PgUsageRepository::new(
        pg.clone(),
    )));
    tokio::spawn(maas_api::usage::write_usage(
        usage_receiver,
        usage.clone(),
        100,
        maas_telemetry::logging::discard_logger(),
    ));
    let state = AppState {
        registry: Registry::new(
            Arc::new(maas_persistence::PgRegistryRepository::new(pg.clone())),
            cache,
        ),
        accounts,
        upstream: maas_api::proxy::Upstream::new(&options.upstream).expect("upstream client"),
        upstream_settings: options.upstream,
        usage_queue,
        usage,
        rate_limiter,
        rate_limit: options.rate_limit,
        dependencies: Arc::new([
            Dependency {
                check: Arc::new(maas_persistence::PgHealth::new(pg)),
                required: true,
            },
            Dependency {
                check: Arc::new(maas_cache::RedisHealth::new(
                    redis_pool,
                    redis_settings.command_timeout(),
                )),
                required: false,
            },
        ]),
        metrics: maas_telemetry::metrics::install_recorder("test").expect("recorder"),
        logger: maas_telemetry::logging::discard_logger(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let settings = ServerSettings {
        workers: Some(2),
        max_body_bytes: options.max_body_bytes,
        shutdown_timeout_seconds: 1,
        ..ServerSettings::default()
    };
    let server = maas_api::run(listener, state, &settings).expect("server");
    let handle = server.handle();
    tokio::spawn(server);
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        client: client_with_key(&admin_key),
        anon: reqwest::Client::new(),
        admin_key,
        accounts: app_accounts,
        db,
        redis,
        server: handle,
    }
}

/// Waits until the in-process tier's invalidation subscription is up, so tests exercise it.
async fn wait_until_live(local: &maas_cache::LocalStore) {
    for _ in 0..500 {
        if local.is_live() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the cache invalidation listener did not subscribe within 5 s");
}

/// Repeats `probe` until it returns `Some`, for up to 5 s: for what another replica learns
/// through an invalidation message (well under a millisecond here, but not synchronous with the
/// writer's response). The in-process tier's TTL in these tests is 300 s, so a probe that passes
/// shows the message arrived, not that an entry expired.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..500 {
        if let Some(value) = probe().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not seen within 5 s");
}

/// A client that sends `key` as a bearer token with every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

impl TestApp {
    /// Creates a user with `role` and a key for it (as the admin); returns (user id, key).
    pub async fn user_with_key(&self, username: &str, role: &str) -> (String, String) {
        let res = self
            .post_json(
                "/api/v1/users",
                &json!({"username": username, "role": role}),
            )
            .await;
        assert_eq!(res.status(), 201, "creating user {username}");
        let user: Value = res.json().await.expect("user json");
        let id = user["id"].as_str().expect("id").to_owned();
        let res = self
            .post_json("/api/v1/keys", &json!({"name": "test", "user_id": id}))
            .await;
        assert_eq!(res.status(), 201, "creating a key for {username}");
        let key: Value = res.json().await.expect("key json");
        (id, key["key"].as_str().expect("key").to_owned())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PATCH")
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PUT")
    }

    /// Registers a model and asserts it was created.
    pub async fn create_model(&self, name: &str) -> Value {
        let res = self
            .post_json("/api/v1/models", &json!({ "name": name }))
            .await;
        assert_eq!(res.status(), 201, "creating {name}");
        res.json().await.expect("model json")
    }

    /// Adds a version and returns its number.
    pub async fn create_version(&self, model: &str) -> i64 {
        let res = self
            .post_json(
                &format!("/api/v1/models/{model}/versions"),
                &json!({ "source_uri": "s3://bucket/model.bin", "endpoint_url": "http://vllm:8000/v1" }),
            )
            .await;
        assert_eq!(res.status(), 201, "creating a version of {model}");
        let body: Value = res.json().await.expect("version json");
        body["version"].as_i64().expect("version number")
    }

    /// The `/metrics` page (no key needed).
    pub async fn metrics_text(&self) -> String {
        self.anon
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Stops the server and deletes this app's Redis keys.
    pub async fn stop(self) {
        self.server.stop(true).await;
        self.redis.cleanup().await.ok();
    }
}

/// Asserts a problem+json response with `status` naming `field` (when given), and that its
/// `request_id` matches the `x-request-id` header. Returns the body.
pub async fn assert_problem(res: reqwest::Response, status: u16, field: Option<&str>) -> Value {
    assert_eq!(res.status(), status);
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let header_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = res.json().await.expect("problem json");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"].is_string() && body["title"].is_string(),
        "{body}"
    );
    assert!(body["detail"].is_string(), "{body}");
    assert_eq!(body["request_id"].as_str(), header_id.as_deref(), "{body}");
    if let Some(field) = field {
        assert_eq!(body["field"], field, "{body}");
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(field),
            "detail names the field: {body}"
        );
    }
    body
}
