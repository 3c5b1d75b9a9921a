//! # maas-domain
//!
//! The core of maas-gateway, free of I/O: the registry's entities ([`model`]), validated value
//! types ([`values`]: parse once, trust afterwards), errors ([`error`]), the ports that storage,
//! cache and health adapters implement ([`ports`]), aliases that split calls between versions
//! ([`alias`]), and the registry use-cases ([`Registry`]).
//!
//! Another service embeds it by implementing the ports (or taking `maas-persistence` and
//! `maas-cache`) and calling the use-cases:
//!
//! ```
//! use maas_domain::values::{ModelName, VersionNumber};
//!
//! let name = ModelName::parse("llama-3.1-8b").expect("a valid name");
//! assert_eq!(name.as_str(), "llama-3.1-8b");
//! assert!(ModelName::parse("Not Valid").is_err());
//! assert_eq!(VersionNumber::parse("2").map(VersionNumber::get), Ok(2));
//! ```
//!
//! Feature `test-util` adds [`test_util`]: in-memory adapters of every port and fixtures, so that
//! tests of the use-cases (here and in the crates above) need no database and no Redis.

pub mod accounts;
pub mod alias;
pub mod cursor;
pub mod error;
pub mod identity;
pub mod inference;
pub mod limits;
pub mod model;
pub mod ports;
pub mod quotas;
pub mod redact;
pub mod registry;
pub mod serving;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod usage;
pub mod values;

pub use accounts::Accounts;
pub use error::{DomainError, RepoError, ValidationError};
pub use quotas::Quotas;
pub use registry::Registry;
pub use usage::Usage;
