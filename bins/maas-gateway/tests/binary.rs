//! The real executable: start-up, HTTP, access logs, SIGTERM drain, restart, CLI subcommands.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use maas_cache::test_util::{TestRedis, UNREACHABLE_REDIS_URL};
use maas_persistence::test_util::TestDatabase;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_maas-gateway");
const EMPTY_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/empty.toml");
/// Only a guard against a hung test, never an assertion on speed.
const PATIENCE: Duration = Duration::from_secs(120);
/// The key the bootstrap admin gets.
const ADMIN_KEY: &str = "maas_binary-test-admin-key-0123456789abcdefghij";

fn admin_client() -> reqwest::Client {
    client_with(ADMIN_KEY)
}

fn client_with(key: &str) -> reqwest::Client {
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

fn command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MAAS_CONFIG", EMPTY_CONFIG)
        .envs(env.iter().copied());
    cmd
}

struct Gateway {
    child: Child,
    port: u16,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Gateway {
    fn start(db: &TestDatabase, redis: &TestRedis) -> Self {
        Self::start_with(db, &redis.settings.connection_url(), &redis.prefix)
    }

    fn start_with(db: &TestDatabase, redis_url: &str, key_prefix: &str) -> Self {
        Self::start_env(db, redis_url, key_prefix, &[])
    }

    /// Started with `extra` settings on top of the usual ones.
    fn start_env(
        db: &TestDatabase,
        redis_url: &str,
        key_prefix: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut env = vec![
            ("MAAS_DATABASE__URL", db.url()),
            ("MAAS_REDIS__URL", redis_url),
            ("MAAS_REDIS__KEY_PREFIX", key_prefix),
            ("MAAS_SERVER__HOST", "127.0.0.1"),
            ("MAAS_SERVER__PORT", "0"),
            ("MAAS_SERVER__WORKERS", "2"),
            ("MAAS_SERVER__SHUTDOWN_TIMEOUT_SECONDS", "30"),
            ("MAAS_AUTH__BOOTSTRAP_ADMIN_KEY", ADMIN_KEY),
        ];
        env.extend_from_slice(extra);
        let mut child = command(&env)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn maas-gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut gateway = Self {
            child,
            port: 0,
            lines,
            seen: Vec::new(),
        };
        let listening = gateway.wait_for_line(|l| l["msg"] == "listening");
        gateway.port = listening["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("port in the listening line");
        gateway
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits for a JSON log line matching `pred`; every line must be JSON.
    fn wait_for_line(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(found) = self
                .seen
                .iter()
                .map(|l| serde_json::from_str::<Value>(l).expect("log lines are JSON"))
                .find(|v| pred(v))
            {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => panic!("no such log line; saw {:#?}", self.seen),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the gateway exited; it printed {:#?}", self.seen)
                }
            }
        }
    }

    fn terminate(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM)
            .expect("SIGTERM");
    }

    fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let status = self.child.wait().expect("wait");
        self.seen.extend(self.lines.iter());
        (status, self.seen)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_drain_window_readiness_says_draining_while_serving_goes_on_then_it_stops() {
    let db = TestDatabase::empty().await;
    let redis = TestRedis::start().await.expect("redis");
    // Long enough that the requests below land inside the window on any machine; the test
    // waits for the exit, never for the window to pass.
    let gateway = Gateway::start_env(
        &db,
        &redis.settings.connection_url(),
        &redis.prefix,
        &[("MAAS_SERVER__DRAIN_SECONDS", "10")],
    );
    let client = reqwest::Client::new();
    let res = client
        .get(gateway.url("/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(res.status(), 200);

    gateway.terminate();
    // Readiness turns (bounded wait: the signal is handled asynchronously).
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        let res = client
            .get(gateway.url("/health/ready"))
            .send()
            .await
            .expect("still listening while draining");
        if res.status() == 503 {
            break res.json::<Value>().await.expect("json");
        }
        assert!(Instant::now() < deadline, "readiness never said draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["status"], "draining", "{body}");
    // Everything else is served as before.
    let res = client
        .get(gateway.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(res.status(), 200);
    let res = admin_client()
        .get(gateway.url("/api/v1/users/me"))
        .send()
        .await
        .expect("an API call");
    assert_eq!(res.status(), 200);

    let (status, lines) = gateway.wait();
    assert!(status.success(), "exits 0 after the window, got {status}");
    assert!(
        lines.iter().any(|l| l.contains("\"msg\":\"stopped\"")),
        "{lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_logs_drains_on_sigterm_and_keeps_data_across_restarts() {
    let db = TestDatabase::empty().await; // the binary migrates it itself
    let redis = TestRedis::start().await.expect("redis");
    let client = admin_client();

    let mut gateway = Gateway::start(&db, &redis);
    let res = client
        .post(gateway.url("/api/v1/models"))
        .json(&json!({"name": "persisted", "tags": ["t"]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    let res = client
        .get(gateway.url("/api/v1/models/persisted"))
        .header("x-request-id", "binary-test-1")
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 200);

    // The access line of that request, with its id, route pattern, status and latency.
    let access = gateway.wait_for_line(|l| l["request_id"] == "binary-test-1");
    assert_eq!(access["msg"], "request");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["route"], "/api/v1/models/{name}");
    assert_eq!(access["status"], 200);
    assert!(access["latency_ms"].is_number());
    assert_eq!(access["level"], "INFO");

    // `healthcheck` against the running server.
    let port = gateway.port.to_string();
    let status = command(&[("MAAS_SERVER__PORT", &port)])
        .arg("healthcheck")
        .status()
        .expect("healthcheck");
    assert!(status.success());

    // A request whose body is still arriving when SIGTERM comes is finished, not cut.
    let body = br#"{"name": "in-flight"}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).expect("connect");
    write!(
        stream,
        "POST /api/v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("headers");
    stream.write_all(&body[..5]).expect("first half");
    stream.flush().expect("flush");
    // Give the server a moment to take the request in before it is told to stop (ordering only).
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&body[5..]).expect("second half");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).expect("a response");
    assert_eq!(&head, b"HTTP/1.1 201");
    drop(stream);

    let (status, lines) = gateway.wait();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert!(
        lines.iter().any(|l| l.contains("\"msg\":\"stopped\"")),
        "{lines:#?}"
    );

    // Restarted, it finds both models.
    let gateway = Gateway::start(&db, &redis);
    for name in ["persisted", "in-flight"] {
        let res = client
            .get(gateway.url(&format!("/api/v1/models/{name}")))
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), 200, "{name} survived the restart");
    }
    gateway.terminate();
    let (status, _) = gateway.wait();
    assert!(status.success());
    redis.cleanup().await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn library_logs_reach_the_json_log_and_redis_down_still_serves() {
    let db = TestDatabase::empty().await;
    let mut gateway = Gateway::start_with(&db, UNREACHABLE_REDIS_URL, "maas:test:unused:");
    let client = admin_client();
    let res = client
        .post(gateway.url("/api/v1/models"))
        .json(&json!({"name": "no-redis"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 201);
    let res = client
        .get(gateway.url("/api/v1/models/no-redis"))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 200);
    // The cache crate reports through the `log` crate; the bridge turns it into a JSON line.
    let warning = gateway.wait_for_line(|l| {
        l["level"] == "WARN"
            && l["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("Redis cache"))
    });
    assert_eq!(warning["service"], "maas-gateway");
    gateway.terminate();
    let (status, _) = gateway.wait();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_waits_for_postgres_with_logged_retries_then_gives_up() {
    let mut child = command(&[
        ("MAAS_DATABASE__URL", "postgres://postgres@127.0.0.1:1/none"),
        ("MAAS_DATABASE__STARTUP_TIMEOUT_SECONDS", "1"),
        ("MAAS_REDIS__URL", UNREACHABLE_REDIS_URL),
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let status = child.wait().expect("wait");
    assert!(!status.success());
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["msg"] == "database not reachable yet; retrying"),
        "{out}"
    );
    assert!(lines.iter().any(|l| l["level"] == "ERRO"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_applies_the_schema_and_exits() {
    let db = TestDatabase::empty().await;
    let status = command(&[("MAAS_DATABASE__URL", db.url())])
        .arg("migrate")
        .stdout(Stdio::null())
        .status()
        .expect("migrate");
    assert!(status.success());
    assert_eq!(
        db.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'models'")
            .await,
        1
    );
    // Idempotent.
    let status = command(&[("MAAS_DATABASE__URL", db.url())])
        .arg("migrate")
        .stdout(Stdio::null())
        .status()
        .expect("migrate again");
    assert!(status.success());
}

fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
    command(env).args(args).output().expect("run")
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_the_key() {
    for (key, value, named) in [
        ("MAAS_SERVER__PORT", "abc", "server.port"),
        ("MAAS_LOG__FORMAT", "xml", "xml"),
        (
            "MAAS_DATABASE__POOL_MAX_SIZE",
            "-3",
            "database.pool_max_size",
        ),
    ] {
        for args in [&[][..], &["config"][..], &["migrate"][..]] {
            let out = run(&[(key, value)], args);
            assert_eq!(out.status.code(), Some(78), "{key}={value} {args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(stderr.contains(named), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

#[test]
fn config_prints_the_effective_settings_with_passwords_redacted() {
    let out = run(
        &[
            ("MAAS_DATABASE__PASSWORD", "hunter2"),
            ("MAAS_DATABASE__HOST", "postgres"),
            ("MAAS_REDIS__PASSWORD", "sekrit"),
        ],
        &["config"],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("hunter2") && !text.contains("sekrit"),
        "{text}"
    );
    let settings: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(settings["database"]["host"], "postgres");
    assert_eq!(settings["server"]["port"], 8000);

    // Passwords inside URLs, in each form the clients accept (a `/` in it, key/value with
    // spaces or quotes), are hidden as the client would read them.
    for (url, shown) in [
        (
            "postgres://u:hun/ter2@db/maas",
            "postgres://u:***@db:5432/maas",
        ),
        (
            "host=db password = hunter2 dbname=maas",
            "postgres://:***@db:5432/maas",
        ),
        (
            "host=db password='hun ter2' dbname=maas",
            "postgres://:***@db:5432/maas",
        ),
    ] {
        let out = run(&[("MAAS_DATABASE__URL", url)], &["config"]);
        assert!(out.status.success(), "{url}");
        let settings: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(settings["database"]["url"], shown, "{url}");
    }
    let out = run(
        &[("MAAS_REDIS__URL", "redis://default:sekrit@cache:6380/2")],
        &["config"],
    );
    let settings: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(settings["redis"]["url"], "redis://default:***@cache:6380/2");
}

#[test]
fn healthcheck_fails_when_nothing_answers() {
    let out = run(&[("MAAS_SERVER__PORT", "1")], &["healthcheck"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_create_users_and_keys_from_the_command_line() {
    let db = TestDatabase::empty().await;
    let redis = TestRedis::start().await.expect("redis");
    let env = [("MAAS_DATABASE__URL", db.url())];
    let out = run(
        &env,
        &["users", "create", "--username", "ops", "--role", "member"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // stdout is the key alone (logs go to stderr), so scripts can capture it.
    let first_key = stdout.trim().to_owned();
    assert!(
        first_key.starts_with("maas2_") && !first_key.contains('\n'),
        "{stdout}"
    );
    let out = run(
        &env,
        &["keys", "create", "--username", "ops", "--name", "second"],
    );
    assert!(out.status.success());
    let second_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(second_key.starts_with("maas2_") && second_key != first_key);
    assert_eq!(
        db.scalar("SELECT count(*) FROM api_keys k JOIN users u ON u.id = k.user_id WHERE u.username = 'ops'")
            .await,
        2
    );
    for (args, complaint) in [
        (&["users", "create", "--username", "ops"][..], "exists"),
        (
            &["users", "create", "--username", "Bad Name"][..],
            "username",
        ),
        (
            &["users", "create", "--username", "x", "--role", "root"][..],
            "role",
        ),
        (&["keys", "create", "--username", "ghost"][..], "ghost"),
    ] {
        let out = run(&env, args);
        assert!(!out.status.success(), "{args:?}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(all.contains(complaint), "{args:?}: {all}");
    }

    // The keys work against a running gateway.
    let gateway = Gateway::start(&db, &redis);
    for key in [&first_key, &second_key] {
        let res = client_with(key)
            .get(gateway.url("/api/v1/users/me"))
            .send()
            .await
            .expect("GET");
        assert_eq!(res.status(), 200);
        let me: Value = res.json().await.expect("json");
        assert_eq!(me["username"], "ops");
    }
    let res = reqwest::Client::new()
        .get(gateway.url("/api/v1/models"))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), 401);
    gateway.terminate();
    let (status, _) = gateway.wait();
    assert!(status.success());
    redis.cleanup().await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn inference_calls_leave_usage_events_that_survive_shutdown() {
    let db = TestDatabase::empty().await;
    let redis = TestRedis::start().await.expect("redis");
    // The endpoint below is on loopback, which the gateway refuses unless allowed.
    let gateway = Gateway::start_env(
        &db,
        &redis.settings.connection_url(),
        &redis.prefix,
        &[("MAAS_UPSTREAM__ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")],
    );
    let client = admin_client();
    for (path, body) in [
        ("/api/v1/models", json!({"name": "offline"})),
        (
            "/api/v1/models/offline/versions",
            json!({"source_uri": "s3://x", "endpoint_url": "http://127.0.0.1:1/v1"}),
        ),
    ] {
        let res = client
            .post(gateway.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        assert_eq!(res.status(), 201);
    }
    let res = client
        .post(gateway.url("/v1/chat/completions"))
        .json(&json!({"model": "offline", "messages": []}))
        .send()
        .await
        .expect("POST");
    assert_eq!(res.status(), 502, "nothing listens at the endpoint");
    gateway.terminate();
    let (status, _) = gateway.wait();
    assert!(status.success());
    assert_eq!(
        db.scalar("SELECT count(*) FROM usage_events WHERE model = 'offline' AND status = 502")
            .await,
        1
    );
    redis.cleanup().await.ok();
}

#[tokio::test]
async fn secrets_rotate_encrypts_every_stored_credential_under_the_current_key() {
    let db = TestDatabase::new().await;
    db.execute("INSERT INTO models (name) VALUES ('legacy')")
        .await;
    db.execute(
        "INSERT INTO model_versions (model_id, version, source_uri, endpoint_url, upstream_api_key) \
         SELECT id, 1, 's3://b/1', 'http://m:8000/v1', 'sk-plain-legacy' FROM models \
         WHERE name = 'legacy'",
    )
    .await;
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let without_key = run(&[("MAAS_DATABASE__URL", db.url())], &["secrets", "rotate"]);
    assert!(!without_key.status.success(), "nothing to rotate to");
    let env = [
        ("MAAS_DATABASE__URL", db.url()),
        ("MAAS_SECRETS__ENCRYPTION_KEY", key),
    ];
    let out = run(&env, &["secrets", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_versions WHERE upstream_api_key LIKE 'enc:v1:%'")
            .await,
        1
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM model_versions WHERE upstream_api_key LIKE '%sk-plain%' OR endpoints::text LIKE '%sk-plain%'")
            .await,
        0
    );
    let again = run(&env, &["secrets", "rotate"]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "0");
    let bad = run(
        &[
            ("MAAS_DATABASE__URL", db.url()),
            ("MAAS_SECRETS__ENCRYPTION_KEY", "c2hvcnQ="),
        ],
        &["config"],
    );
    assert_eq!(
        bad.status.code(),
        Some(78),
        "a bad key stops start-up naming the setting"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("secrets.encryption_key"));
}
