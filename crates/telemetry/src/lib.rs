//! # maas-telemetry
//!
//! Logs and metrics for maas-gateway and for services that embed its crates.
//!
//! - [`logging`]: an slog logger writing JSON lines (or a human format), formatted by the caller
//!   into memory and written in batches by one writer thread, and the bridge that routes the `log` crate (actix-web's own messages) into it.
//! - [`metrics`](mod@metrics): the process-wide Prometheus recorder with histogram buckets set
//!   (so histograms render as histograms, not summaries).
//! - [`exposition`]: gauges written at scrape time beside the recorder's text, for series that
//!   must go when what they describe goes.
//! - [`names`]: every metric name, so no other crate spells one as a literal.
//! - [`handles`]: a thread's metric handles by label values ([`handles::HandleMemo`],
//!   [`handles::HandleList`], [`handles::HandleMap`]), for metrics recorded on every request:
//!   each label set registered once per thread, then used with no allocation and no lock.
//!
//! Features: `logging` (the first) and `prometheus` (the second and third), both on by default.
//! Without them the crate is [`names`] and [`handles`] alone and depends on nothing, which is how
//! `maas-persistence` and `maas-cache` use it: an adapter crate counts under the gateway's names,
//! through per-thread handles, without pulling in a logger or the Prometheus exporter.
//!
//! ```
//! use maas_telemetry::logging::{LogFormat, LogSettings, build_logger};
//!
//! let settings = LogSettings { format: LogFormat::Json, ..LogSettings::default() };
//! let (logger, guard) = build_logger(&settings, std::io::sink());
//! slog::info!(logger, "started"; "port" => 8000);
//! drop(guard); // flushes
//!
//! let handle = maas_telemetry::metrics::install_recorder("0.1.0").expect("first recorder");
//! metrics::counter!(maas_telemetry::names::HTTP_REQUESTS_TOTAL).increment(1);
//! assert!(handle.render().contains("maas_build_info"));
//! ```

#[cfg(feature = "prometheus")]
pub mod exposition;
pub mod handles;
#[cfg(feature = "logging")]
pub mod json;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "prometheus")]
pub mod metrics;
pub mod names;
#[cfg(feature = "logging")]
pub mod pretty;

/// Why telemetry could not be set up. Cloned to every caller of
/// [`metrics::install_recorder`], which tries once per process.
#[cfg(feature = "prometheus")]
#[derive(Debug, Clone, thiserror::Error)]
pub enum TelemetryError {
    /// The metrics recorder could not be built.
    #[error("metrics: {0}")]
    Metrics(#[source] std::sync::Arc<metrics_exporter_prometheus::BuildError>),
    /// Another metrics recorder was installed in the process first.
    #[error("metrics: another metrics recorder is installed")]
    RecorderTaken,
}
