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
//!
//! Features: `logging` (the first) and `prometheus` (the second and third), both on by default. Without
//! them the crate is [`names`] alone and depends on nothing, which is how `maas-persistence` uses
//! it.
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
#[cfg(feature = "logging")]
pub mod json;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "prometheus")]
pub mod metrics;
pub mod names;
#[cfg(feature = "logging")]
pub mod pretty;

/// Why telemetry could not be set up.
#[cfg(feature = "prometheus")]
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The metrics recorder could not be built or installed.
    #[error("metrics: {0}")]
    Metrics(String),
}
