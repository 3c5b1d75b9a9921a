//! What every handler can reach.

use std::sync::Arc;

use maas_domain::ports::{HealthCheck, RateLimiter};
use maas_domain::{Accounts, Quotas, Registry, Usage};

use crate::proxy::Upstream;
use crate::settings::UpstreamSettings;
use crate::usage::UsageQueue;
use metrics_exporter_prometheus::PrometheusHandle;

/// A dependency reported by `/health/ready`.
#[derive(Clone)]
pub struct Dependency {
    /// The adapter's check.
    pub check: Arc<dyn HealthCheck>,
    /// When a required dependency is down the gateway is not ready (503); when an optional one
    /// is down it is `degraded` but still serves (200).
    pub required: bool,
}

/// Shared state of the app: use-cases, dependencies to report on, telemetry.
#[derive(Clone)]
pub struct AppState {
    /// Registry use-cases.
    pub registry: Registry,
    /// Identity use-cases (authentication, users, keys).
    pub accounts: Accounts,
    /// The shared per-key rate limiter.
    pub rate_limiter: Arc<dyn RateLimiter>,
    /// Default limits, burst and what to do when the limiter is down.
    pub rate_limit: crate::settings::RateLimitSettings,
    /// Token quotas: which calls reserve tokens, their reservations and reports.
    pub quotas: Quotas,
    /// How a request's client address is found (for the limit of failed authentications).
    pub client_address: crate::client_address::ClientAddress,
    /// The pooled client for model servers.
    pub upstream: Upstream,
    /// Upstream limits (body size) the handlers apply.
    pub upstream_settings: UpstreamSettings,
    /// Where inference calls leave their usage events.
    pub usage_queue: UsageQueue,
    /// Usage reports.
    pub usage: Usage,
    /// Dependencies checked by `/health/ready`.
    pub dependencies: Arc<[Dependency]>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Where access lines and errors go.
    pub logger: slog::Logger,
}

/// Set once the server was told to stop and is waiting out `server.drain_seconds`:
/// `/health/ready` then answers 503 `draining`. [`crate::run`] registers one; an app without it
/// is never draining.
#[derive(Debug, Default)]
pub struct Draining(std::sync::atomic::AtomicBool);

impl Draining {
    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From now on, readiness says `draining`.
    pub fn start(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
