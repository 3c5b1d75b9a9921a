//! The process-wide Prometheus recorder and the descriptions of every metric.
//!
//! The per-thread handle helpers live in [`crate::handles`], which needs no feature; they are
//! re-exported here too, so their `metrics::` paths keep working.

use std::sync::{Arc, OnceLock};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::TelemetryError;
pub use crate::handles::{
    HandleList, HandleMap, HandleMemo, memoised, with_admitted, with_mapped, with_memoised,
};
use crate::names;

/// Histogram buckets (seconds) for latencies, from 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Histogram buckets (seconds) for `maas_upstream_duration_seconds`, from 5 ms to 10 min: a call
/// lasts until the model server's body is complete, and a long generation takes minutes
/// (`upstream.timeout_seconds` is 300 by default).
pub const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// How often [`PrometheusHandle::run_upkeep`] should run (it drains histogram buffers).
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

static HANDLE: OnceLock<Result<PrometheusHandle, TelemetryError>> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process; later calls, also concurrent
/// ones, wait for it and return the same handle) and records `maas_build_info{version}`.
///
/// Render the text format with [`PrometheusHandle::render`]; call
/// [`PrometheusHandle::run_upkeep`] every [`UPKEEP_INTERVAL`].
///
/// # Errors
/// [`TelemetryError::Metrics`] when the recorder cannot be built,
/// [`TelemetryError::RecorderTaken`] when another recorder was installed first; every later
/// call gets the same error.
pub fn install_recorder(version: &str) -> Result<PrometheusHandle, TelemetryError> {
    let handle = HANDLE
        .get_or_init(|| {
            let built = |e: BuildError| TelemetryError::Metrics(Arc::new(e));
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .map_err(built)?
                // A full name wins over a suffix.
                .set_buckets_for_metric(
                    Matcher::Full(names::UPSTREAM_DURATION_SECONDS.into()),
                    UPSTREAM_BUCKETS,
                )
                .map_err(built)?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|_| TelemetryError::RecorderTaken)?;
            describe();
            Ok(handle)
        })
        .clone()?;
    metrics::gauge!(names::BUILD_INFO, "version" => version.to_owned()).set(1.0);
    Ok(handle)
}

fn describe() {
    describe_counter!(
        names::UPSTREAM_REQUESTS_TOTAL,
        "Calls forwarded to model servers"
    );
    describe_histogram!(
        names::UPSTREAM_DURATION_SECONDS,
        Unit::Seconds,
        "Model-server time per call, request sent to body complete"
    );
    describe_histogram!(
        names::GATEWAY_OVERHEAD_SECONDS,
        Unit::Seconds,
        "Time spent in the gateway per inference call, excluding the model server"
    );
    describe_counter!(names::USAGE_EVENTS_DROPPED_TOTAL, "Usage events not stored");
    describe_counter!(names::TOKENS_TOTAL, "Tokens reported by model servers");
    describe_counter!(names::HTTP_REQUESTS_TOTAL, "HTTP requests served");
    describe_histogram!(
        names::HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request latency"
    );
    describe_gauge!(names::HTTP_REQUESTS_IN_FLIGHT, "HTTP requests being served");
    describe_gauge!(names::DB_POOL_CONNECTIONS, "Pool connections by state");
    describe_counter!(
        names::CACHE_REQUESTS_TOTAL,
        "Cache lookups by kind and result"
    );
    describe_counter!(names::CACHE_WRITE_ERRORS_TOTAL, "Cache writes that failed");
    describe_gauge!(
        names::CACHE_LOCAL_LIVE,
        "1 while the in-process cache tier is in use (its invalidation subscription is up)"
    );
    describe_gauge!(names::BUILD_INFO, "Build information; always 1");
    describe_counter!(
        names::DB_UNAVAILABLE_TOTAL,
        "Database operations refused because the database was unreachable or saturated"
    );
    describe_histogram!(
        names::READINESS_CHECK_DURATION_SECONDS,
        Unit::Seconds,
        "Latency of readiness checks of dependencies"
    );
    describe_counter!(
        names::RATE_LIMIT_DECISIONS_TOTAL,
        "Rate-limit decisions: allowed, limited, or error when the limiter could not decide"
    );
    describe_counter!(
        names::AUTH_FAILURES_TOTAL,
        "Requests refused authentication, by reason"
    );
}
