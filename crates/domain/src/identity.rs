//! Identity: users, API keys and the principal a request acts as.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{DomainError, ValidationError};
use crate::values::{ModelName, Username};

mod allowlist;
mod key;
mod quota;

pub use allowlist::ModelAllowlist;
pub use key::{KeyHash, PlaintextKey};
pub use quota::{MonthlyTokens, TokenQuotas, TokenQuotasPatch, TokensPerMinute};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including user management.
    Admin,
    /// Reads everything; changes only what it owns.
    Member,
}

impl Role {
    /// Parses `admin` or `member`.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            _ => Err(ValidationError::new("role", "must be 'admin' or 'member'")),
        }
    }

    /// `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
}

/// A user of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id.
    pub id: Uuid,
    /// Unique name (same rules as model names).
    pub username: Username,
    /// What the user may do.
    pub role: Role,
    /// A disabled user's keys are refused.
    pub disabled: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The requests per minute all of the user's keys together may make (set by an admin),
    /// else `rate_limit.user_rpm`, if set. Required in a cached record, so that one cached by a
    /// build from before user limits is read again from the store rather than taken as "none".
    #[serde(deserialize_with = "Option::deserialize")]
    pub rate_limit_rpm: Option<RateLimitRpm>,
    /// The tokens all of the user's keys together may use (set by an admin), else
    /// `rate_limit.user_tpm` and `rate_limit.user_monthly_tokens`, if set. Required in a cached
    /// record, so that one cached by a build from before token quotas is read again.
    pub tokens: TokenQuotas,
}

/// What is needed to create a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Unique name.
    pub username: Username,
    /// Role.
    pub role: Role,
    /// Limit of all the user's keys together, if not the default.
    pub rate_limit_rpm: Option<RateLimitRpm>,
    /// Token quotas of all the user's keys together, where not the defaults.
    pub tokens: TokenQuotas,
}

/// A change of a user's role, disabled flag, limit or token quotas; `None` leaves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserPatch {
    /// New role.
    pub role: Option<Role>,
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// A limit of the user's own, or back to the default (`Some(None)`).
    pub rate_limit_rpm: Option<Option<RateLimitRpm>>,
    /// Token quotas of the user's own, or back to the defaults.
    pub tokens: TokenQuotasPatch,
}

impl UserPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.role.is_none()
            && self.disabled.is_none()
            && self.rate_limit_rpm.is_none()
            && self.tokens.is_empty()
    }
}

/// Requests per minute allowed to one key, or to all of a user's keys together: 1..=1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RateLimitRpm(u32);

impl RateLimitRpm {
    /// The highest accepted limit.
    pub const MAX: u32 = 1_000_000;

    /// Accepts 1..=1,000,000.
    pub fn new(n: i64) -> Result<Self, ValidationError> {
        u32::try_from(n)
            .ok()
            .filter(|n| (1..=Self::MAX).contains(n))
            .map(Self)
            .ok_or_else(|| {
                ValidationError::new(
                    "rate_limit_rpm",
                    format!("must be an integer from 1 to {}", Self::MAX),
                )
            })
    }

    /// The limit.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// A key's label: 1–128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyName(String);

impl KeyName {
    /// Validates length and characters.
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        let len = raw.chars().count();
        if len == 0 || len > 128 || raw.trim().is_empty() {
            return Err(ValidationError::new(
                "name",
                "must be 1 to 128 characters long",
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "name",
                "must not contain control characters",
            ));
        }
        Ok(Self(raw))
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An API key as stored and listed: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Stable id (used to revoke it).
    pub id: Uuid,
    /// Whose key it is.
    pub user_id: Uuid,
    /// Label.
    pub name: KeyName,
    /// The first characters of the key, to recognise it (`maas_AbCdEfGh`).
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// After this it is refused.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked; a revoked key is refused.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Roughly when it was last used (updated in batches).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Its own requests-per-minute limit, else the default.
    pub rate_limit_rpm: Option<RateLimitRpm>,
    /// The models it may be used with; `None`: every model its user may use. Required in a
    /// cached record, so that one cached by a build from before allowlists is read again from
    /// the store rather than taken as "every model".
    #[serde(deserialize_with = "Option::deserialize")]
    pub models: Option<ModelAllowlist>,
    /// Its own token quotas (set by an admin), else the defaults. Required in a cached record,
    /// so that one cached by a build from before token quotas is read again from the store.
    pub tokens: TokenQuotas,
}

/// What is needed to store a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// Whose key it is.
    pub user_id: Uuid,
    /// Label.
    pub name: KeyName,
    /// SHA-256 of the key.
    pub hash: KeyHash,
    /// Display prefix.
    pub prefix: String,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Own limit.
    pub rate_limit_rpm: Option<RateLimitRpm>,
    /// The models it may be used with; `None`: all its user may use.
    pub models: Option<ModelAllowlist>,
    /// Its own token quotas.
    pub tokens: TokenQuotas,
}

/// A key and its user, as the authentication lookup returns (and the cache holds) them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key.
    pub key: ApiKey,
    /// Its user.
    pub user: User,
}

/// Who a request acts as: an authenticated key of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The user.
    pub user_id: Uuid,
    /// The user's name.
    pub username: Username,
    /// The user's role.
    pub role: Role,
    /// The key used.
    pub key_id: Uuid,
    /// The key's own limit, if any.
    pub rate_limit_rpm: Option<RateLimitRpm>,
    /// The user's own limit (of all its keys together), if any.
    pub user_rate_limit_rpm: Option<RateLimitRpm>,
    /// The models the key may be used with; `None`: every model the user may use.
    pub models: Option<ModelAllowlist>,
    /// The key's own token quotas.
    pub key_tokens: TokenQuotas,
    /// The user's own token quotas (of all its keys together).
    pub user_tokens: TokenQuotas,
}

impl Principal {
    /// True for admins.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the key acting may be used with `model` (its allowlist has it, or it has none).
    /// Says nothing about whether the user may use the model.
    pub fn key_allows(&self, model: &ModelName) -> bool {
        self.models.as_ref().is_none_or(|list| list.allows(model))
    }

    /// [`DomainError::Forbidden`] unless [`key_allows`](Self::key_allows) `model`. Decided on
    /// the name alone, with no lookup, so it reveals nothing about the model.
    pub fn check_key_allows(&self, model: &ModelName) -> Result<(), DomainError> {
        if self.key_allows(model) {
            Ok(())
        } else {
            Err(DomainError::Forbidden(format!(
                "this API key may not be used with model '{model}' (see its `models`)"
            )))
        }
    }

    /// Admins may change anything; members only what they own.
    pub fn may_change(&self, owner: Option<Uuid>) -> bool {
        self.is_admin() || owner == Some(self.user_id)
    }
}

impl From<&KeyRecord> for Principal {
    fn from(r: &KeyRecord) -> Self {
        Self {
            user_id: r.user.id,
            username: r.user.username.clone(),
            role: r.user.role,
            key_id: r.key.id,
            rate_limit_rpm: r.key.rate_limit_rpm,
            user_rate_limit_rpm: r.user.rate_limit_rpm,
            models: r.key.models.clone(),
            key_tokens: r.key.tokens,
            user_tokens: r.user.tokens,
        }
    }
}

/// Why a request was not authenticated. Kept off the HTTP response (which is always the same
/// 401) and used as the `reason` label of `maas_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No key in the request.
    Missing,
    /// Not shaped like a key.
    Malformed,
    /// Shaped like a key the gateway creates, but its checksum does not match: made up.
    BadChecksum,
    /// No such key.
    Unknown,
    /// Past `expires_at`.
    Expired,
    /// Revoked.
    Revoked,
    /// The user is disabled.
    Disabled,
}

impl AuthFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadChecksum => "checksum",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Disabled => "disabled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_change_only_what_they_own_and_admins_everything() {
        let me = Uuid::new_v4();
        let member = Principal {
            user_id: me,
            username: Username::parse("m").expect("valid"),
            role: Role::Member,
            key_id: Uuid::new_v4(),
            rate_limit_rpm: None,
            user_rate_limit_rpm: None,
            models: None,
            key_tokens: TokenQuotas::default(),
            user_tokens: TokenQuotas::default(),
        };
        assert!(member.may_change(Some(me)));
        assert!(!member.may_change(Some(Uuid::new_v4())));
        assert!(!member.may_change(None));
        let admin = Principal {
            role: Role::Admin,
            ..member
        };
        assert!(admin.may_change(Some(Uuid::new_v4())) && admin.may_change(None));
        let model = |raw: &str| ModelName::parse(raw).expect("valid");
        assert!(admin.key_allows(&model("any")), "no allowlist: every model");
        let restricted = Principal {
            models: Some(ModelAllowlist::parse(vec!["llama".into()]).expect("valid")),
            ..admin
        };
        assert!(restricted.key_allows(&model("llama")));
        assert!(!restricted.key_allows(&model("gpt")), "admins' keys too");
        assert!(matches!(
            restricted.check_key_allows(&model("gpt")),
            Err(DomainError::Forbidden(_))
        ));
    }

    #[test]
    fn limits_and_names_are_bounded() {
        assert!(RateLimitRpm::new(0).is_err());
        assert!(RateLimitRpm::new(1_000_001).is_err());
        assert_eq!(RateLimitRpm::new(60).expect("valid").get(), 60);
        assert!(KeyName::parse(String::new()).is_err());
        assert!(KeyName::parse("ci key".into()).is_ok());
        assert_eq!(Role::parse("root").expect_err("bad").field, "role");
    }
}
