//! Inference routing: which version a call goes to, and the usage it leaves behind.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ValidationError;
use crate::ports::Reservation;
use crate::values::{AliasName, ModelName, VersionNumber};

/// Which version of a model a call selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Alias `production` when set, else the highest version with an endpoint.
    Default,
    /// A named alias (`latest` included).
    Alias(AliasName),
    /// A version number.
    Version(VersionNumber),
}

/// The target of an inference call: `name`, `name@alias` or `name:version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The model.
    pub model: ModelName,
    /// The version within it.
    pub selector: Selector,
}

impl Target {
    /// The alias a bare model name prefers.
    pub const DEFAULT_ALIAS: &'static str = "production";

    /// Parses the OpenAI `model` field: `name`, `name@alias` or `name:version`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let field = "model";
        if let Some((name, alias)) = raw.split_once('@') {
            return Ok(Self {
                model: ModelName::parse_as(field, name)?,
                selector: Selector::Alias(AliasName::parse_as(field, alias)?),
            });
        }
        if let Some((name, version)) = raw.split_once(':') {
            let version = VersionNumber::parse(version).map_err(|_| {
                ValidationError::new(field, "the part after ':' must be a version number")
            })?;
            return Ok(Self {
                model: ModelName::parse_as(field, name)?,
                selector: Selector::Version(version),
            });
        }
        Ok(Self {
            model: ModelName::parse_as(field, raw)?,
            selector: Selector::Default,
        })
    }

    /// A target from the raw route's `alias` / `version` query parameters.
    pub fn with_params(
        model: ModelName,
        alias: Option<&str>,
        version: Option<&str>,
    ) -> Result<Self, ValidationError> {
        let selector = match (alias, version) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "alias",
                    "give either alias or version, not both",
                ));
            }
            (Some(alias), None) => Selector::Alias(AliasName::parse(alias)?),
            (None, Some(version)) => Selector::Version(VersionNumber::parse(version)?),
            (None, None) => Selector::Default,
        };
        Ok(Self { model, selector })
    }
}

/// A credential the gateway sends to a version's model server (`Authorization: Bearer`). It is
/// stored server-side and never returned by the API; `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpstreamSecret(String);

impl UpstreamSecret {
    /// 1–4096 visible ASCII characters; errors name `upstream_api_key`.
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        Self::parse_as("upstream_api_key", raw)
    }

    /// As [`parse`](Self::parse), naming `field` in the error.
    pub fn parse_as(field: &str, raw: String) -> Result<Self, ValidationError> {
        if raw.is_empty() || raw.len() > 4096 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValidationError::new(
                field,
                "must be 1 to 4096 visible ASCII characters",
            ));
        }
        Ok(Self(raw))
    }

    /// The secret, for the upstream request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UpstreamSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UpstreamSecret(***)")
    }
}

/// A model that can serve calls: it has a version with an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServableModel {
    /// The model.
    pub name: ModelName,
    /// Its creation time.
    pub created_at: DateTime<Utc>,
    /// Its owner's username, if it has one.
    pub owner: Option<String>,
}

/// One inference call, as recorded for usage reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// The key that made the call.
    pub key_id: Uuid,
    /// The key's user.
    pub user_id: Uuid,
    /// The model called.
    pub model: String,
    /// The version that served it, if one was resolved.
    pub version: Option<i32>,
    /// The gateway route pattern (`/v1/chat/completions`, …); the gateway's own are static.
    pub route: Cow<'static, str>,
    /// HTTP status returned to the client.
    pub status: u16,
    /// Total time in the gateway, in milliseconds.
    pub latency_ms: i32,
    /// Time waiting for the upstream (headers and body), in milliseconds.
    pub upstream_ms: Option<i32>,
    /// Prompt tokens, from the upstream's `usage`.
    pub prompt_tokens: Option<i64>,
    /// Completion tokens, from the upstream's `usage`.
    pub completion_tokens: Option<i64>,
    /// When the call was made.
    pub created_at: DateTime<Utc>,
    /// The tokens the call reserved in its key's and user's token limits, when they have
    /// any: settled from this event (see [`crate::quotas`]); not stored as such (its charge is,
    /// as [`quota_tokens`](Self::quota_tokens)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
}

impl UsageEvent {
    /// What the call is charged against its token quotas, when it reserved tokens (see
    /// [`crate::quotas::charge`]).
    pub fn quota_tokens(&self) -> Option<u64> {
        self.reservation.map(|_| crate::quotas::charge(self))
    }
}

/// How usage is grouped in reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageGrouping {
    /// One row per model.
    Model,
    /// One row per API key.
    Key,
    /// One row per UTC day.
    Day,
    /// One row per model and version (to compare a canary with the version beside it).
    Version,
}

impl UsageGrouping {
    /// Parses `model`, `key`, `day` or `version`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "model" => Ok(Self::Model),
            "key" => Ok(Self::Key),
            "day" => Ok(Self::Day),
            "version" => Ok(Self::Version),
            _ => Err(ValidationError::new(
                "group_by",
                "must be 'model', 'key', 'day' or 'version'",
            )),
        }
    }
}

/// A usage report's filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// From this time (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// Until this time (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Only this model.
    pub model: Option<ModelName>,
    /// Only these models (the acting key's allowlist; set by [`crate::Usage::report`]).
    pub within: Option<crate::identity::ModelAllowlist>,
    /// Only calls of this user's keys (members see only their own).
    pub user_id: Option<Uuid>,
    /// Grouping.
    pub group_by: UsageGrouping,
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The model name, key id or day (`YYYY-MM-DD`), per the grouping; grouped by version,
    /// `model:version` as a call names it (just `model` for calls that failed before a version
    /// was chosen).
    pub group: String,
    /// Grouped by version: the model.
    pub model: Option<String>,
    /// Grouped by version: the version (`None` for calls that failed before one was chosen).
    pub version: Option<i32>,
    /// Calls.
    pub requests: i64,
    /// Calls that ended with a status of 400 or above.
    pub errors: i64,
    /// Sum of prompt tokens.
    pub prompt_tokens: i64,
    /// Sum of completion tokens.
    pub completion_tokens: i64,
    /// Mean total latency in milliseconds.
    pub avg_latency_ms: f64,
    /// Median total latency in milliseconds (interpolated, as PostgreSQL's `percentile_cont`).
    pub p50_latency_ms: f64,
    /// 95th percentile of the total latency in milliseconds (interpolated likewise).
    pub p95_latency_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_name_name_at_alias_or_name_colon_version() {
        let t = Target::parse("llama").expect("valid");
        assert_eq!(t.selector, Selector::Default);
        let t = Target::parse("llama@canary").expect("valid");
        assert_eq!(
            t.selector,
            Selector::Alias(AliasName::parse("canary").expect("valid"))
        );
        let t = Target::parse("llama:3").expect("valid");
        assert_eq!(
            t.selector,
            Selector::Version(VersionNumber::new(3).expect("valid"))
        );
        assert_eq!(t.model.as_str(), "llama");
        for bad in [
            "", "Llama", "llama@", "llama:", "llama:x", "llama:0", "@prod", "a@B",
        ] {
            assert_eq!(Target::parse(bad).expect_err(bad).field, "model");
        }
    }

    #[test]
    fn raw_route_parameters_pick_one_selector() {
        let name = ModelName::parse("m").expect("valid");
        assert_eq!(
            Target::with_params(name.clone(), None, Some("2"))
                .expect("valid")
                .selector,
            Selector::Version(VersionNumber::new(2).expect("valid"))
        );
        assert!(Target::with_params(name.clone(), Some("a"), Some("2")).is_err());
        assert_eq!(
            Target::with_params(name, None, Some("x"))
                .expect_err("bad")
                .field,
            "version"
        );
    }

    #[test]
    fn upstream_secrets_never_show_in_debug_output() {
        let s = UpstreamSecret::parse("sk-secret".into()).expect("valid");
        assert!(!format!("{s:?}").contains("sk-secret"));
        assert!(UpstreamSecret::parse("has space".into()).is_err());
    }
}
