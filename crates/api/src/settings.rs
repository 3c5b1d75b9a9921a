//! The sections of the settings the api crate reads: `server`, `auth`, `rate_limit`,
//! `upstream`, `usage`, `registry` and `metrics`.
//!
//! `upstream` ([`UpstreamSettings`]) is the proxy's own, defined in `proxy::settings` and
//! re-exported here: this module uses the proxy's types, the proxy none of this module's.

use serde::{Deserialize, Serialize};

use crate::proxy::policy::{IpNetwork, deserialize_networks};
use crate::proxy::settings::DEFAULT_MAX_TOKENS_PER_CALL;
pub use crate::proxy::settings::UpstreamSettings;

/// How the HTTP server listens and behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to bind (`0.0.0.0` in containers).
    pub host: String,
    /// Port to bind; 0 picks a free one (tests).
    pub port: u16,
    /// Worker threads; the number of CPUs when not set.
    pub workers: Option<usize>,
    /// How long in-flight requests may run after SIGTERM before they are cut.
    pub shutdown_timeout_seconds: u64,
    /// On SIGTERM or SIGINT, how long `/health/ready` answers 503 `draining` while the server
    /// goes on serving, before it stops listening and drains: time for a load balancer to take
    /// the replica out of rotation. 0 (the default): stop listening at once.
    pub drain_seconds: u64,
    /// Largest accepted request body, in bytes (larger gives 413).
    pub max_body_bytes: usize,
    /// A request body must arrive whole within this long of the request's start, else 408: a
    /// client trickling its body cannot hold a connection and a worker's slot indefinitely.
    pub body_read_timeout_seconds: u64,
    /// A port of its own for `/metrics` (with `/health` and `/health/ready`), on `host`; then the
    /// main port does not serve `/metrics`, so it can stay private while the API is public.
    /// `None` (the default): `/metrics` on the main port.
    pub admin_port: Option<u16>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".to_owned(),
            port: 8000,
            workers: None,
            shutdown_timeout_seconds: 30,
            drain_seconds: 0,
            max_body_bytes: 256 * 1024,
            body_read_timeout_seconds: 30,
            admin_port: None,
        }
    }
}

/// The `auth` section: API keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// At start-up, if no admin exists, user `admin` is created holding this key (stored hashed).
    /// `maas_` followed by at least 32 characters of A-Z a-z 0-9 - _.
    pub bootstrap_admin_key: Option<String>,
    /// How long a key lookup stays cached in Redis. Revocation, disabling and role changes
    /// invalidate it at once; the TTL only bounds staleness if an invalidation is lost.
    pub key_cache_ttl_seconds: u64,
    /// How often `last_used_at` of used keys is written (in one batch).
    pub usage_flush_seconds: u64,
    /// Active (neither revoked nor expired) keys one user may hold; creating one more is 409.
    /// At least 1.
    pub max_keys_per_user: u32,
    /// Failed authentications a client address may have per minute, in each replica's memory;
    /// past it, its requests get 429 with `Retry-After` before anything is looked up. 0: off.
    pub failed_per_ip_per_minute: u32,
    /// Proxies in front of the gateway (CIDR networks) whose `X-Forwarded-For` is believed when
    /// finding a request's client address. Empty (the default): the client address is the TCP
    /// peer, and `X-Forwarded-For` is never believed.
    #[serde(deserialize_with = "deserialize_networks")]
    pub trusted_proxies: Vec<IpNetwork>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            bootstrap_admin_key: None,
            key_cache_ttl_seconds: 60,
            usage_flush_seconds: 10,
            max_keys_per_user: 20,
            failed_per_ip_per_minute: 60,
            trusted_proxies: Vec::new(),
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field(
                "bootstrap_admin_key",
                &self.bootstrap_admin_key.as_ref().map(|_| "***"),
            )
            .field("key_cache_ttl_seconds", &self.key_cache_ttl_seconds)
            .field("usage_flush_seconds", &self.usage_flush_seconds)
            .field("max_keys_per_user", &self.max_keys_per_user)
            .field("failed_per_ip_per_minute", &self.failed_per_ip_per_minute)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

impl AuthSettings {
    /// A copy safe to print: the bootstrap key becomes `***`.
    pub fn redacted(&self) -> Self {
        Self {
            bootstrap_admin_key: self.bootstrap_admin_key.as_ref().map(|_| "***".to_owned()),
            ..self.clone()
        }
    }
}

/// The `rate_limit` section: requests per minute per key, and per user; tokens per minute and
/// per month per key, and per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Requests per minute of a key that has no `rate_limit_rpm` of its own.
    pub default_rpm: u32,
    /// Requests per minute of all the keys of a user together, for users without a
    /// `rate_limit_rpm` of their own; `None` (the default): such users are held to their keys'
    /// limits only.
    pub user_rpm: Option<u32>,
    /// Requests that may arrive at once on top of the steady rate; over any minute a key gets
    /// at most `rpm + burst` requests admitted.
    pub burst: u32,
    /// When Redis is down or slow: admit (`true`, counted) or refuse with 503 (`false`).
    pub fail_open: bool,
    /// Busy keys: Redis grants several requests at once, admitted here within this many
    /// milliseconds without a Redis round trip each (`0`: one round trip per request). See
    /// `maas_cache::ratelimit` for what it costs in precision.
    pub lease_ms: u64,
    /// Tokens per minute of a key that has no `tpm` of its own; `None` (the default): no limit.
    pub default_tpm: Option<u64>,
    /// Tokens per calendar month (UTC) of a key that has no `monthly_tokens` of its own;
    /// `None` (the default): no quota.
    pub default_monthly_tokens: Option<u64>,
    /// Tokens per minute of all the keys of a user without a `tpm` of its own together;
    /// `None` (the default): none.
    pub user_tpm: Option<u64>,
    /// Tokens per month of all the keys of a user without a `monthly_tokens` of its own
    /// together; `None` (the default): none.
    pub user_monthly_tokens: Option<u64>,
    /// What a call that names no `max_tokens` (nor `max_completion_tokens`) reserves for its
    /// completion, and what a raw call does, for keys with token limits.
    pub default_max_tokens: u64,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            default_rpm: 600,
            user_rpm: None,
            burst: 20,
            fail_open: true,
            lease_ms: 250,
            default_tpm: None,
            default_monthly_tokens: None,
            user_tpm: None,
            user_monthly_tokens: None,
            default_max_tokens: 1_024,
        }
    }
}

impl RateLimitSettings {
    /// The domain's policy of these settings.
    pub fn limits(&self) -> maas_domain::limits::RateLimits {
        maas_domain::limits::RateLimits {
            default_rpm: self.default_rpm,
            burst: self.burst,
            user_rpm: self.user_rpm,
        }
    }

    /// The domain's token policy of these settings; a call's `max_tokens` is believed up to
    /// `max_tokens` (`usage.max_tokens_per_call`).
    pub fn token_policy(&self, max_tokens: u64) -> maas_domain::limits::TokenPolicy {
        maas_domain::limits::TokenPolicy {
            default_tpm: self.default_tpm,
            default_monthly_tokens: self.default_monthly_tokens,
            user_tpm: self.user_tpm,
            user_monthly_tokens: self.user_monthly_tokens,
            default_max_tokens: self.default_max_tokens,
            max_tokens,
        }
    }
}

/// The `usage` section: the in-memory queue of usage events and its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageSettings {
    /// Events held in memory at most; when full, new events are dropped and counted.
    pub queue_capacity: usize,
    /// Events written per INSERT at most (50 by default). A window's events go in several INSERTs
    /// rather than one: PostgreSQL spends about 14 µs of CPU per event, and on a host that also
    /// runs the gateway (one `docker compose up`) a 500-event INSERT is a burst of several
    /// milliseconds on one core that the proxied calls meeting it wait behind.
    pub batch_size: usize,
    /// Largest token count (prompt or completion) believed of one call's `usage`: a model server
    /// reporting more, a negative count or anything but an integer has its count recorded as
    /// unknown and counted in `maas_usage_rejected_total`.
    pub max_tokens_per_call: u64,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            batch_size: 50,
            max_tokens_per_call: DEFAULT_MAX_TOKENS_PER_CALL,
        }
    }
}

/// The `registry` section: rules of the model registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Model names only admins may create: exact names, or prefixes ending in `*` (`gpt-*`).
    /// In the environment, comma-separated (`MAAS_REGISTRY__RESERVED_NAMES=gpt-4o,claude-*`).
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub reserved_names: Vec<String>,
}

/// A list setting: a list in a file, or one string of comma-separated items (how a list comes
/// from an environment variable); items are trimmed, empty ones dropped.
///
/// # Errors
/// When the value is neither a list of strings nor a string.
pub fn list_or_comma_separated<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    let items = match Raw::deserialize(deserializer)? {
        Raw::List(items) => items,
        Raw::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect())
}

/// The `metrics` section: bounds on the series the gateway's metrics make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Distinct models with series of their own (`model` label); calls of models past that many
    /// are counted under `model="other"`. Also the most versions with endpoint states
    /// (`maas_upstream_endpoint_state`) at once.
    pub max_models: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { max_models: 1000 }
    }
}
