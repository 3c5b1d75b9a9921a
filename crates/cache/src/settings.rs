//! Typed settings of the Redis connection (`redis.*`) and of the cache (`cache.*`).
//!
//! `Default` is the one place where defaults live; the binary deserializes these structs from its
//! configuration layers and hands them to [`crate::connect`] and [`crate::RedisCache::from_settings`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use maas_domain::redact::{ConnectionUrl, REDACTED, UNPARSEABLE};

/// How to reach Redis (`redis.*`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Logical database number.
    pub db: i64,
    /// Password (`AUTH`), if the server requires one.
    pub password: Option<String>,
    /// A full `redis://` (or `redis+unix://`) URL; when set it overrides host, port, db and
    /// password. TLS (`rediss://`) is not built in: the connection is refused at start-up.
    pub url: Option<String>,
    /// Most connections the pool opens.
    pub pool_max_size: u32,
    /// Bound on every cache call (pool checkout plus command), in milliseconds. A slower Redis is
    /// treated as down: reads go to the source instead.
    pub command_timeout_ms: u64,
    /// Prefix of every key this service writes, so several services or tests can share a server.
    pub key_prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            host: "localhost".to_owned(),
            port: 6379,
            db: 0,
            password: None,
            url: None,
            pool_max_size: 16,
            command_timeout_ms: 100,
            key_prefix: "maas:".to_owned(),
        }
    }
}

impl RedisSettings {
    /// The URL to connect with: `url` if set, else one built from host, port, db and password.
    pub fn connection_url(&self) -> String {
        if let Some(url) = &self.url {
            return url.clone();
        }
        let auth = match &self.password {
            Some(password) => format!(":{}@", percent_encode(password)),
            None => String::new(),
        };
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("redis://{auth}{host}:{}/{}", self.port, self.db)
    }

    /// A copy that is safe to print or log: the password, also one inside `url`, becomes `***`.
    pub fn redacted(&self) -> Self {
        Self {
            password: self.password.as_ref().map(|_| REDACTED.to_owned()),
            url: self.url.as_deref().map(redact_url),
            ..self.clone()
        }
    }

    /// [`command_timeout_ms`](Self::command_timeout_ms) as a duration.
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms)
    }
}

// Hand-written so that a settings struct in a log line or panic message never shows a password.
impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = self.redacted();
        f.debug_struct("RedisSettings")
            .field("host", &redacted.host)
            .field("port", &redacted.port)
            .field("db", &redacted.db)
            .field("password", &redacted.password)
            .field("url", &redacted.url)
            .field("pool_max_size", &redacted.pool_max_size)
            .field("command_timeout_ms", &redacted.command_timeout_ms)
            .field("key_prefix", &redacted.key_prefix)
            .finish()
    }
}

/// Whether and how long to cache registry reads (`cache.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// `false` replaces the Redis cache with `maas_domain::ports::NoCache`.
    pub enabled: bool,
    /// Longest time a cached value lives, in seconds.
    pub ttl_seconds: u64,
    /// Longest time a value lives in the in-process tier in front of Redis, in milliseconds;
    /// `0` turns that tier off. Invalidations reach it through Redis pub/sub at once; this only
    /// bounds staleness if they cannot (see `maas_cache::near`).
    pub local_ttl_ms: u64,
    /// Most values the in-process tier holds.
    pub local_max_entries: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: 300,
            local_ttl_ms: 5_000,
            local_max_entries: 10_000,
        }
    }
}

impl CacheSettings {
    /// [`ttl_seconds`](Self::ttl_seconds) as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_seconds)
    }

    /// Whether the in-process tier is on: the cache is, and `local_ttl_ms` and
    /// `local_max_entries` are not zero.
    pub fn local_enabled(&self) -> bool {
        self.enabled && self.local_ttl_ms > 0 && self.local_max_entries > 0
    }

    /// [`local_ttl_ms`](Self::local_ttl_ms) as a duration.
    pub fn local_ttl(&self) -> Duration {
        Duration::from_millis(self.local_ttl_ms)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for the userinfo of a URL.
fn percent_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The URL as the redis client reads it, rendered again with its password replaced (see
/// [`maas_domain::redact`]); one it cannot read is not shown.
fn redact_url(raw: &str) -> String {
    let Ok(info) = redis::IntoConnectionInfo::into_connection_info(raw) else {
        return UNPARSEABLE.to_owned();
    };
    let settings = info.redis_settings();
    let user = settings.username().map(str::to_owned);
    let db = settings.db().to_string();
    let shown = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => ConnectionUrl {
            scheme: "redis",
            user,
            has_password: settings.password().is_some(),
            hosts: vec![ConnectionUrl::host_port(host, *port)],
            path: Some(db),
            params: Vec::new(),
        },
        // `redis+unix:///path?db=n&pass=…`, as such URLs are written.
        redis::ConnectionAddr::Unix(path) => {
            let mut params = vec![("db".to_owned(), db)];
            if settings.password().is_some() {
                params.push(("pass".to_owned(), REDACTED.to_owned()));
            }
            ConnectionUrl {
                scheme: "redis+unix",
                user,
                has_password: false,
                hosts: Vec::new(),
                path: Some(
                    path.display()
                        .to_string()
                        .trim_start_matches('/')
                        .to_owned(),
                ),
                params,
            }
        }
        // TLS, which this build does not connect with.
        _ => return UNPARSEABLE.to_owned(),
    };
    shown.to_string()
}
