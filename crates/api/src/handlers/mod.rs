//! Request handlers: extract, call a use-case, map the result. Nothing else.

pub mod aliases;
pub mod docs;
pub mod grants;
pub mod health;
pub mod inference;
pub mod keys;
pub mod models;
pub mod usage;
pub mod users;
pub mod versions;

use maas_domain::ValidationError;
use maas_domain::values::{AliasName, ModelName, PageLimit, VersionNumber};

use crate::error::ApiError;

/// Parses the `{name}` path segment.
pub(crate) fn model_name(raw: String) -> Result<ModelName, ApiError> {
    Ok(ModelName::parse(raw)?)
}

/// Parses the `{version}` path segment.
pub(crate) fn version_number(raw: &str) -> Result<VersionNumber, ApiError> {
    Ok(VersionNumber::parse(raw)?)
}

/// Parses the `{alias}` path segment.
pub(crate) fn alias_name(raw: String) -> Result<AliasName, ApiError> {
    Ok(AliasName::parse(raw)?)
}

/// Parses the `limit` query parameter (default 50).
pub(crate) fn page_limit(raw: Option<&str>) -> Result<PageLimit, ApiError> {
    match raw {
        None => Ok(PageLimit::default()),
        Some(raw) => {
            let n = raw.parse::<i64>().map_err(|_| {
                ValidationError::new(
                    "limit",
                    format!("must be an integer from 1 to {}", PageLimit::MAX),
                )
            })?;
            Ok(PageLimit::new(n)?)
        }
    }
}
