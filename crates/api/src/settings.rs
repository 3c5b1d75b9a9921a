//! The `server` section of the settings.

use serde::{Deserialize, Serialize};

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
    /// Largest accepted request body, in bytes (larger gives 413).
    pub max_body_bytes: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".to_owned(),
            port: 8000,
            workers: None,
            shutdown_timeout_seconds: 30,
            max_body_bytes: 256 * 1024,
        }
    }
}
