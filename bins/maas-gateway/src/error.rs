//! Why a command of the binary failed: one enum, printed as one log line before the process
//! exits with status 1.

use maas_domain::DomainError;

/// A failure of start-up, serving, or an operator command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Prometheus recorder could not be installed.
    #[error("the metrics recorder: {0}")]
    Metrics(#[from] maas_telemetry::TelemetryError),
    /// PostgreSQL: unreachable, or a migration failed.
    #[error(transparent)]
    Database(#[from] maas_persistence::PersistenceError),
    /// Redis settings that give no usable connection.
    #[error(transparent)]
    Redis(#[from] maas_cache::CacheError),
    /// The HTTP client for model servers (no usable CA certificates).
    #[error("cannot build the upstream HTTP client: {0}")]
    Upstream(#[from] maas_api::proxy::ClientError),
    /// The listen address.
    #[error("cannot bind {address}: {source}")]
    Bind {
        /// `host:port` from the settings.
        address: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("the HTTP server: {0}")]
    Server(#[source] std::io::Error),
    /// The first admin could not be created.
    #[error("creating the bootstrap admin failed: {0}")]
    Bootstrap(#[source] DomainError),
    /// A use-case refused (an operator command's input, a conflict).
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Standard output is gone (a closed pipe).
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    /// A setting the loader could not check on its own.
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    /// The health probe found the server unhealthy.
    #[error("unhealthy: {0}")]
    Unhealthy(#[from] crate::commands::ProbeError),
}
