//! The settings the proxy reads: the `upstream` section ([`UpstreamSettings`], re-exported by
//! `crate::settings` beside the other sections) and the default of `usage.max_tokens_per_call`.
//! Kept here, not in `crate::settings`, so that the proxy does not use that module, which uses
//! the proxy's address policy.

use serde::{Deserialize, Serialize};

use super::policy::{AddressPolicy, DEFAULT_DENIED_NETWORKS, IpNetwork, deserialize_networks};

/// The default of `usage.max_tokens_per_call`: the largest token count of one call's `usage`
/// that is believed, until [`Upstream::with_max_tokens_per_call`](super::Upstream::with_max_tokens_per_call)
/// says otherwise.
pub const DEFAULT_MAX_TOKENS_PER_CALL: u64 = 10_000_000;

/// The `upstream` section: calls to model servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Longest wait for a model server's response headers, and between two chunks of its body
    /// (504 past it).
    pub timeout_seconds: u64,
    /// Longest wait to open a connection to a model server (502 past it).
    pub connect_timeout_seconds: u64,
    /// Largest accepted inference request body, in bytes (prompts can be long).
    pub max_body_bytes: usize,
    /// Idle keep-alive connections kept per model server.
    pub pool_max_idle_per_host: usize,
    /// Addresses the gateway may connect to even inside `denied_networks` (none by default):
    /// e.g. `127.0.0.1/32` for a model server on the gateway's own host.
    #[serde(deserialize_with = "deserialize_networks")]
    pub allowed_networks: Vec<IpNetwork>,
    /// Addresses the gateway never connects to unless allowed (see [`DEFAULT_DENIED_NETWORKS`]:
    /// loopback, unspecified, link-local, multicast, broadcast).
    #[serde(deserialize_with = "deserialize_networks")]
    pub denied_networks: Vec<IpNetwork>,
    /// Inference calls this replica serves at once; past it, new ones get 503 with
    /// `Retry-After` before their body is read (each may hold up to `max_body_bytes`).
    pub max_concurrent_calls: usize,
    /// An endpoint that fails this many calls in a row (no connection, no allowed address, no
    /// answer in time, or 502/503/504) is taken out of its version's rotation on this replica;
    /// 0: never.
    pub eject_after_failures: u32,
    /// How long an endpoint is out the first time; doubled each time its trial call fails
    /// (at most 5 minutes), back to this once a call succeeds.
    pub eject_seconds: u64,
    /// A call that cannot have reached a model server (no connection made, none to an allowed
    /// address, or 503 before any body byte) is sent again to another endpoint of its version
    /// at most this many times.
    pub max_retries: u32,
    /// A version's retries on this replica may add at most this share of its calls over 10 s
    /// (beyond it, a floor of 10 per 10 s shared by the versions, 3 at most each), so that a
    /// failing fleet does not get twice the load and cannot spend other versions' failover.
    pub retry_budget_percent: u32,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            timeout_seconds: 300,
            connect_timeout_seconds: 5,
            max_body_bytes: 16 * 1024 * 1024,
            pool_max_idle_per_host: 256,
            allowed_networks: Vec::new(),
            denied_networks: DEFAULT_DENIED_NETWORKS.to_vec(),
            max_concurrent_calls: 1024,
            eject_after_failures: 3,
            eject_seconds: 10,
            max_retries: 2,
            retry_budget_percent: 20,
        }
    }
}

impl UpstreamSettings {
    /// The rule `allowed_networks` and `denied_networks` make.
    pub fn address_policy(&self) -> AddressPolicy {
        AddressPolicy::new(&self.allowed_networks, &self.denied_networks)
    }
}
