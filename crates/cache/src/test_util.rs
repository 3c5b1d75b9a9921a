//! Helpers for tests that talk to the real Redis (feature `test-util`): a key prefix per test,
//! settings pointing at the test server, clean-up of one prefix, stand-ins for a Redis that
//! is down or hangs, counter values from a local metrics recorder, and a logger that keeps its
//! records. Nothing here ever flushes the shared server.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use metrics_util::debugging::{DebugValue, Snapshotter};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::CacheError;
use crate::pool::RedisPool;
use crate::settings::RedisSettings;

/// Every prefix from [`unique_prefix`] starts with this; [`delete_prefix`] refuses others.
pub const TEST_PREFIX_ROOT: &str = "maas:test:";

/// A Redis URL where nothing listens (connections are refused at once).
pub const UNREACHABLE_REDIS_URL: &str = "redis://127.0.0.1:1";

/// The test server: `MAAS_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn test_redis_url() -> String {
    std::env::var("MAAS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test uses: `maas:test:<uuid>:`.
pub fn unique_prefix() -> String {
    format!("{TEST_PREFIX_ROOT}{}:", uuid::Uuid::new_v4())
}

/// Settings for the test server with `prefix` as key prefix. The command timeout is a generous
/// 2 s so that a busy test machine does not turn hits into bypasses.
pub fn test_settings(prefix: &str) -> RedisSettings {
    RedisSettings {
        url: Some(test_redis_url()),
        key_prefix: prefix.to_owned(),
        command_timeout_ms: 2_000,
        ..RedisSettings::default()
    }
}

/// A pool on the test server with a prefix of its own; [`cleanup`](Self::cleanup) at the end.
#[derive(Debug, Clone)]
pub struct TestRedis {
    /// [`test_settings`] with this test's prefix.
    pub settings: RedisSettings,
    /// A pool on the test server.
    pub pool: RedisPool,
    /// This test's key prefix, from [`unique_prefix`].
    pub prefix: String,
}

impl TestRedis {
    /// A fresh prefix and a pool on the test server.
    ///
    /// # Errors
    /// When the test server URL is invalid.
    pub async fn start() -> Result<Self, CacheError> {
        let prefix = unique_prefix();
        let settings = test_settings(&prefix);
        let pool = crate::pool::connect(&settings).await?;
        Ok(Self {
            settings,
            pool,
            prefix,
        })
    }

    /// Deletes this test's keys; returns how many.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub async fn cleanup(self) -> Result<u64, CacheError> {
        delete_prefix(&self.pool, &self.prefix).await
    }
}

/// Deletes every key that starts with `prefix` (SCAN + DEL), and only those; returns how many.
///
/// # Errors
/// [`CacheError::InvalidSetting`] for a prefix that does not start with [`TEST_PREFIX_ROOT`]
/// (so a test cannot wipe real data), else pool or command errors.
pub async fn delete_prefix(pool: &RedisPool, prefix: &str) -> Result<u64, CacheError> {
    if !prefix.starts_with(TEST_PREFIX_ROOT) || prefix.len() == TEST_PREFIX_ROOT.len() {
        return Err(CacheError::InvalidSetting {
            key: "prefix",
            reason: "delete_prefix only deletes under a unique_prefix()",
        });
    }
    let pattern = format!("{}*", escape_glob(prefix));
    let mut conn = pool.get().await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut *conn)
            .await?;
        if !keys.is_empty() {
            let removed: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut *conn).await?;
            deleted += removed;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// Escapes the characters SCAN's MATCH treats as a pattern.
fn escape_glob(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Counter values from one snapshot of a `metrics_util` `DebuggingRecorder`, typically installed
/// for one test with `metrics::set_default_local_recorder` (on the test's single thread).
#[derive(Debug, Clone, Default)]
pub struct CounterSnapshot(Vec<Counted>);

#[derive(Debug, Clone)]
struct Counted {
    name: String,
    labels: Vec<(String, String)>,
    count: u64,
}

impl CounterSnapshot {
    /// The counters recorded so far (taking a snapshot resets the recorder's counters).
    pub fn take(snapshotter: &Snapshotter) -> Self {
        let counters = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _unit, _description, value)| match value {
                DebugValue::Counter(count) => Some(Counted {
                    name: key.key().name().to_owned(),
                    labels: key
                        .key()
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect(),
                    count,
                }),
                _ => None,
            })
            .collect();
        Self(counters)
    }

    /// The sum of the counters named `name` that carry every one of `labels` (and maybe more).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .iter()
            .filter(|c| {
                c.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| c.labels.iter().any(|(ck, cv)| ck == k && cv == v))
            })
            .map(|c| c.count)
            .sum()
    }
}

/// A TCP server that accepts connections and never answers: a hung or black-holed Redis.
/// Stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct BlackHole {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl BlackHole {
    /// Listens on a free loopback port.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _peer)) = listener.accept().await {
                held.push(socket);
            }
        });
        Ok(Self { addr, task })
    }

    /// `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy to the test Redis whose connections the test can cut: a Redis connection that
/// breaks (a restart, a network fault) while the server stays up. Stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards every connection to the test Redis.
    ///
    /// # Errors
    /// When no loopback port can be bound or the test Redis URL has no host and port.
    pub async fn start() -> std::io::Result<Self> {
        let target = url::Url::parse(&test_redis_url())
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(6379))))
            .ok_or_else(|| std::io::Error::other("the test Redis URL has no host"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = std::sync::Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _peer)) = listener.accept().await {
                let target = target.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                if let Ok(mut held) = held.lock() {
                    held.push(forward);
                }
            }
        });
        Ok(Self {
            addr,
            accept,
            connections,
        })
    }

    /// `redis://` URL of this proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Closes every connection made so far; new ones are still forwarded.
    pub fn cut(&self) {
        if let Ok(mut held) = self.connections.lock() {
            for forward in held.drain(..) {
                forward.abort();
            }
        }
    }

    /// Closes every connection and stops accepting new ones.
    pub fn shut(&self) {
        self.accept.abort();
        self.cut();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shut();
    }
}

/// A logger whose records a test can read back: hand [`logger`](Self::logger) to an adapter's
/// `with_logger`, then look at [`records`](Self::records).
#[derive(Debug, Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<LogRecord>>>);

/// One record a [`CapturedLogs`] logger was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: slog::Level,
    /// Its message.
    pub message: String,
    /// Its key-values (the logger's own and the record's), each value as displayed.
    pub fields: Vec<(String, String)>,
}

impl LogRecord {
    /// The value of the field `key`, if the record has one.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl CapturedLogs {
    /// Nothing captured yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A logger that appends every record to this capture.
    pub fn logger(&self) -> slog::Logger {
        slog::Logger::root(Capture(Arc::clone(&self.0)), slog::o!())
    }

    /// The records so far, oldest first.
    pub fn records(&self) -> Vec<LogRecord> {
        self.0.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

struct Capture(Arc<Mutex<Vec<LogRecord>>>);

impl slog::Drain for Capture {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let mut fields = Fields(Vec::new());
        // Serializing into a Vec cannot fail; a field that did would only be missing.
        let _ = slog::KV::serialize(values, record, &mut fields);
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        if let Ok(mut records) = self.0.lock() {
            records.push(LogRecord {
                level: record.level(),
                message: record.msg().to_string(),
                fields: fields.0,
            });
        }
        Ok(())
    }
}

struct Fields(Vec<(String, String)>);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, value: &fmt::Arguments<'_>) -> slog::Result {
        self.0.push((key.to_string(), value.to_string()));
        Ok(())
    }
}
