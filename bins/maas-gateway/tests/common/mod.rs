//! One place for the full-stack tests' set-up: the real [`Application`] (the binary's own
//! wiring) on a free port, over a database of its own (cloned from the migrated template) and a
//! Redis key prefix of its own.

#![allow(dead_code)]

pub mod proxy;
pub mod stub;

use std::sync::Arc;
use std::time::Duration;

use maas_api::proxy::IpNetwork;
use maas_api::{MetricsSettings, RateLimitSettings, UpstreamSettings};
use maas_cache::test_util::TestRedis;
use maas_domain::Accounts;
use maas_domain::identity::PlaintextKey;
use maas_gateway::{Application, Settings, ShutdownHandle};
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
    pub server: ShutdownHandle,
    /// Between the app and Postgres when [`Options::postgres_down`] (already cut) or
    /// [`Options::postgres_behind_proxy`] is set.
    pub postgres_proxy: Option<proxy::TcpProxy>,
    /// `http://127.0.0.1:<admin port>` with [`Options::admin_port`].
    pub admin_base: Option<String>,
}

/// How to build a [`TestApp`]; the defaults are a healthy app with the cache on.
pub struct Options {
    pub cache: bool,
    /// The in-process tier in front of Redis, kept coherent by a pub/sub listener; its TTL is
    /// long, so tests see what invalidation messages do.
    pub local_cache: bool,
    pub max_body_bytes: usize,
    /// Share another app's database (a second replica).
    pub db: Option<Arc<TestDatabase>>,
    /// Share another app's Redis prefix (a second replica).
    pub redis: Option<TestRedis>,
    /// Point the Redis pool somewhere else (down or hung Redis).
    pub redis_url: Option<String>,
    /// Postgres goes away once the app has started (its connections cut, new ones refused).
    pub postgres_down: bool,
    /// Postgres behind a proxy the test can shut later ([`TestApp::postgres_proxy`]).
    pub postgres_behind_proxy: bool,
    /// `auth.max_keys_per_user`.
    pub max_keys_per_user: u32,
    /// `auth.failed_per_ip_per_minute`.
    pub failed_per_ip_per_minute: u32,
    /// `auth.trusted_proxies`.
    pub trusted_proxies: Vec<IpNetwork>,
    /// Default limits (the tests' default is generous so only rate-limit tests meet it).
    pub rate_limit: RateLimitSettings,
    /// The admin key to bootstrap (a second replica passes the first one's).
    pub admin_key: Option<String>,
    /// Calls to model servers.
    pub upstream: UpstreamSettings,
    /// Let the gateway call model servers on loopback, where the tests' stubs listen (added to
    /// `upstream.allowed_networks`, as an operator serving a model from the gateway's own host
    /// does); `false` leaves the address policy as `upstream` has it.
    pub loopback_upstreams: bool,
    /// Bounds on metric series.
    pub metrics: MetricsSettings,
    /// `/metrics` on a port of its own (`server.admin_port`, a free one).
    pub admin_port: bool,
    /// `server.body_read_timeout_seconds`.
    pub body_read_timeout_seconds: u64,
    /// `registry.reserved_names`.
    pub reserved_names: Vec<String>,
    /// `secrets.encryption_key` (a fixed test key by default; `None`: no key).
    pub encryption_key: Option<String>,
    /// Where the app's log records go (`None`: nowhere).
    pub logs: Option<maas_cache::test_util::CapturedLogs>,
}

/// The tests' `secrets.encryption_key`: 32 bytes, base64.
pub const TEST_ENCRYPTION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

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
            postgres_behind_proxy: false,
            max_keys_per_user: maas_api::AuthSettings::default().max_keys_per_user,
            failed_per_ip_per_minute: maas_api::AuthSettings::default().failed_per_ip_per_minute,
            trusted_proxies: Vec::new(),
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
            loopback_upstreams: true,
            metrics: MetricsSettings::default(),
            admin_port: false,
            body_read_timeout_seconds: 30,
            reserved_names: Vec::new(),
            encryption_key: Some(TEST_ENCRYPTION_KEY.to_owned()),
            logs: None,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(Options::default()).await
}

/// The settings a test app runs with: the defaults, on a free loopback port, over this test's
/// database and Redis prefix, with the options applied.
fn settings(options: &Options, db: &TestDatabase, redis: &TestRedis, admin_key: &str) -> Settings {
    let mut settings = Settings::default();
    settings.server.host = "127.0.0.1".to_owned();
    settings.server.port = 0;
    settings.server.workers = Some(2);
    settings.server.shutdown_timeout_seconds = 1;
    settings.server.max_body_bytes = options.max_body_bytes;
    settings.server.admin_port = options.admin_port.then_some(0);
    settings.server.body_read_timeout_seconds = options.body_read_timeout_seconds;
    settings.registry.reserved_names = options.reserved_names.clone();
    settings.secrets.encryption_key = options.encryption_key.clone();
    settings.database = db.settings();
    settings.redis = redis.settings.clone();
    if let Some(url) = &options.redis_url {
        settings.redis.url = Some(url.clone());
        settings.redis.command_timeout_ms = 200;
    }
    settings.cache.enabled = options.cache;
    // Long lifetimes: what a test sees after a write is invalidation, never expiry.
    settings.cache.ttl_seconds = 300;
    settings.auth.key_cache_ttl_seconds = 300;
    settings.cache.local_ttl_ms = if options.local_cache { 300_000 } else { 0 };
    settings.auth.bootstrap_admin_key = Some(admin_key.to_owned());
    settings.auth.max_keys_per_user = options.max_keys_per_user;
    settings.auth.failed_per_ip_per_minute = options.failed_per_ip_per_minute;
    settings.auth.trusted_proxies = options.trusted_proxies.clone();
    settings.rate_limit = options.rate_limit;
    settings.upstream = options.upstream.clone();
    if options.loopback_upstreams {
        settings.upstream.allowed_networks.extend([
            IpNetwork::v4(127, 0, 0, 0, 8),
            IpNetwork::v6(std::net::Ipv6Addr::LOCALHOST, 128),
        ]);
    }
    settings.metrics = options.metrics;
    settings.usage.queue_capacity = 1_000;
    settings.usage.batch_size = 100;
    settings
}

pub async fn spawn_with(options: Options) -> TestApp {
    let db = match &options.db {
        Some(db) => Arc::clone(db),
        None => Arc::new(TestDatabase::new().await),
    };
    let redis = match &options.redis {
        Some(redis) => redis.clone(),
        None => TestRedis::start().await.expect("test redis"),
    };
    let admin_key = options.admin_key.clone().unwrap_or_else(|| {
        PlaintextKey::generate()
            .expect("csprng")
            .expose()
            .to_owned()
    });
    let mut settings = settings(&options, &db, &redis, &admin_key);
    let postgres_proxy = if options.postgres_down || options.postgres_behind_proxy {
        // The test database's URL, pointed at a proxy in front of its server.
        let mut url = url::Url::parse(db.url()).expect("the test database URL");
        let target = format!(
            "{}:{}",
            url.host_str().expect("a host"),
            url.port().unwrap_or(5432)
        );
        let proxy = proxy::TcpProxy::to(&target)
            .await
            .expect("a proxy to Postgres");
        url.set_host(Some("127.0.0.1")).expect("a host");
        url.set_port(Some(proxy.port())).expect("a port");
        settings.database.url = Some(url.to_string());
        settings.database.connect_timeout_seconds = 1;
        Some(proxy)
    } else {
        None
    };
    let logger = options.logs.as_ref().map_or_else(
        maas_telemetry::logging::discard_logger,
        maas_cache::test_util::CapturedLogs::logger,
    );
    let app = Application::build(settings, &logger)
        .await
        .expect("the gateway starts");
    if options.cache && options.local_cache && options.redis_url.is_none() {
        wait_until_live(&app).await;
    }
    let port = app.port();
    let admin_base = app
        .admin_port()
        .map(|port| format!("http://127.0.0.1:{port}"));
    let accounts = app.accounts();
    let server = app.shutdown_handle();
    tokio::spawn(app.run_until_stopped());
    if let Some(proxy) = postgres_proxy.as_ref().filter(|_| options.postgres_down) {
        proxy.shut();
    }
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        client: client_with_key(&admin_key),
        anon: reqwest::Client::new(),
        admin_key,
        accounts,
        db,
        redis,
        server,
        postgres_proxy,
        admin_base,
    }
}

/// Waits until the in-process tier's invalidation subscription is up, so tests exercise it.
async fn wait_until_live(app: &Application) {
    for _ in 0..500 {
        if app.local_cache_live() {
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
    /// Options for another replica of this app: the same database, Redis prefix and bootstrap
    /// admin key; the rest as [`Options::default`] (override fields with `..app.replica_options()`).
    pub fn replica_options(&self) -> Options {
        Options {
            db: Some(self.db.clone()),
            redis: Some(self.redis.clone()),
            admin_key: Some(self.admin_key.clone()),
            ..Options::default()
        }
    }

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

    /// Registers a public model (every user may use it; tests of who may use what make their
    /// own) and asserts it was created.
    pub async fn create_model(&self, name: &str) -> Value {
        let res = self
            .post_json(
                "/api/v1/models",
                &json!({ "name": name, "visibility": "public" }),
            )
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
