//! # maas-gateway
//!
//! The gateway as a library: settings loading ([`Settings`]), the composition root
//! ([`Application`]) and the operator commands. The `maas-gateway` binary only parses its
//! command line and calls these; the full-stack tests start the very same [`Application`] on
//! port 0, and another service can embed the whole gateway the same way:
//!
//! ```no_run
//! # async fn demo() -> Result<(), maas_gateway::Error> {
//! let mut settings = maas_gateway::Settings::default();
//! settings.server.port = 0;
//! let log = maas_telemetry::logging::discard_logger();
//! let app = maas_gateway::Application::build(settings, &log).await?;
//! println!("serving on port {}", app.port());
//! app.run_until_stopped().await
//! # }
//! ```

pub mod commands;
pub mod error;
pub mod settings;
pub mod startup;

pub use error::Error;
pub use settings::{Settings, SettingsError};
pub use startup::{Application, ShutdownHandle};
