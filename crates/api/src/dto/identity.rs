//! Wire types of users and API keys.

use chrono::{DateTime, Utc};
use maas_domain::ValidationError;
use maas_domain::accounts::{KeyRequest, KeyUpdate};
use maas_domain::identity::{
    ApiKey, KeyName, ModelAllowlist, MonthlyTokens, NewUser, RateLimitRpm, Role, TokenQuotas,
    TokenQuotasPatch, TokensPerMinute, User, UserPatch,
};
use maas_domain::values::Username;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::double_option;

/// Body of `POST /api/v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Same rules as model names; `me` is reserved.
    pub username: String,
    /// `admin` or `member`.
    #[schema(example = "member")]
    pub role: String,
    /// Requests per minute of all the user's keys together (1 to 1,000,000); absent: the
    /// default, `rate_limit.user_rpm`.
    pub rate_limit_rpm: Option<i64>,
    /// Tokens per minute of all the user's keys together (1 to 1,000,000,000); absent: the
    /// default, `rate_limit.user_tpm`.
    pub tpm: Option<i64>,
    /// Tokens per calendar month (UTC) of all the user's keys together (1 to
    /// 1,000,000,000,000); absent: the default, `rate_limit.user_monthly_tokens`.
    pub monthly_tokens: Option<i64>,
}

/// Token quotas from a body's `tpm` and `monthly_tokens`.
fn token_quotas(tpm: Option<i64>, monthly: Option<i64>) -> Result<TokenQuotas, ValidationError> {
    Ok(TokenQuotas {
        tpm: tpm.map(TokensPerMinute::new).transpose()?,
        monthly_tokens: monthly.map(MonthlyTokens::new).transpose()?,
    })
}

/// A patch of token quotas from a PATCH body's `tpm` and `monthly_tokens` (`null`: back to the
/// default).
fn token_patch(
    tpm: Option<Option<i64>>,
    monthly: Option<Option<i64>>,
) -> Result<TokenQuotasPatch, ValidationError> {
    Ok(TokenQuotasPatch {
        tpm: tpm
            .map(|n| n.map(TokensPerMinute::new).transpose())
            .transpose()?,
        monthly_tokens: monthly
            .map(|n| n.map(MonthlyTokens::new).transpose())
            .transpose()?,
    })
}

impl CreateUser {
    /// Validates every field.
    pub fn into_domain(self) -> Result<NewUser, ValidationError> {
        if self.username == "me" {
            return Err(ValidationError::new(
                "username",
                "'me' is reserved: /api/v1/users/me is the caller",
            ));
        }
        Ok(NewUser {
            username: Username::parse_as("username", self.username)?,
            role: Role::parse(&self.role)?,
            rate_limit_rpm: self.rate_limit_rpm.map(RateLimitRpm::new).transpose()?,
            tokens: token_quotas(self.tpm, self.monthly_tokens)?,
        })
    }
}

/// Body of `PATCH /api/v1/users/{username}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New role.
    pub role: Option<String>,
    /// Disable (its keys are refused at once) or enable.
    pub disabled: Option<bool>,
    /// Requests per minute of all the user's keys together; `null`: back to the default.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub rate_limit_rpm: Option<Option<i64>>,
    /// Tokens per minute of all the user's keys together; `null`: back to the default.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub tpm: Option<Option<i64>>,
    /// Tokens per month of all the user's keys together; `null`: back to the default.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub monthly_tokens: Option<Option<i64>>,
}

impl UpdateUser {
    /// Validates every field given.
    pub fn into_domain(self) -> Result<UserPatch, ValidationError> {
        Ok(UserPatch {
            role: self.role.as_deref().map(Role::parse).transpose()?,
            disabled: self.disabled,
            rate_limit_rpm: self
                .rate_limit_rpm
                .map(|rpm| rpm.map(RateLimitRpm::new).transpose())
                .transpose()?,
            tokens: token_patch(self.tpm, self.monthly_tokens)?,
        })
    }
}

/// A user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserResponse {
    /// Stable id.
    pub id: Uuid,
    /// Unique name.
    pub username: String,
    /// `admin` or `member`.
    pub role: String,
    /// Disabled users' keys are refused.
    pub disabled: bool,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Requests per minute of all the user's keys together; `null`: the default.
    pub rate_limit_rpm: Option<u32>,
    /// Tokens per minute of all the user's keys together; `null`: the default.
    pub tpm: Option<u64>,
    /// Tokens per calendar month of all the user's keys together; `null`: the default.
    pub monthly_tokens: Option<u64>,
}

impl From<User> for UserResponse {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username.into_inner(),
            role: u.role.as_str().to_owned(),
            disabled: u.disabled,
            created_at: u.created_at,
            rate_limit_rpm: u.rate_limit_rpm.map(RateLimitRpm::get),
            tpm: u.tokens.tpm.map(TokensPerMinute::get),
            monthly_tokens: u.tokens.monthly_tokens.map(MonthlyTokens::get),
        }
    }
}

/// Query of `GET /api/v1/users`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListUsersQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<u16>)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Body of `POST /api/v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label, 1–128 characters.
    pub name: String,
    /// When the key stops working (RFC 3339, in the future).
    pub expires_at: Option<DateTime<Utc>>,
    /// Admins only: create the key for this user.
    pub user_id: Option<Uuid>,
    /// Admins only: this key's own requests-per-minute limit.
    pub rate_limit_rpm: Option<i64>,
    /// Admins only: this key's own tokens per minute (1 to 1,000,000,000).
    pub tpm: Option<i64>,
    /// Admins only: this key's own tokens per calendar month, UTC (1 to 1,000,000,000,000).
    pub monthly_tokens: Option<i64>,
    /// The models the key may be used with: 1 to 100 model names. Absent: every model its user
    /// may use (from a key with an allowlist: that key's).
    #[schema(example = json!(["llama-3.1-8b"]))]
    pub models: Option<Vec<String>>,
}

impl CreateKey {
    /// Validates every field.
    pub fn into_domain(self) -> Result<KeyRequest, ValidationError> {
        Ok(KeyRequest {
            name: KeyName::parse(self.name)?,
            expires_at: self.expires_at,
            user_id: self.user_id,
            rate_limit_rpm: self.rate_limit_rpm.map(RateLimitRpm::new).transpose()?,
            models: self.models.map(ModelAllowlist::parse).transpose()?,
            tokens: token_quotas(self.tpm, self.monthly_tokens)?,
        })
    }
}

/// Body of `PATCH /api/v1/keys/{id}`: at least one field; an absent one is left as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// The models the key may be used with (1 to 100 names), or `null` for every model its user
    /// may use.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub models: Option<Option<Vec<String>>>,
    /// Admins only: the key's own tokens per minute; `null`: back to the default.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub tpm: Option<Option<i64>>,
    /// Admins only: the key's own tokens per month; `null`: back to the default.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub monthly_tokens: Option<Option<i64>>,
}

impl UpdateKey {
    /// The change, validated.
    pub fn into_domain(self) -> Result<KeyUpdate, ValidationError> {
        Ok(KeyUpdate {
            models: self
                .models
                .map(|models| models.map(ModelAllowlist::parse).transpose())
                .transpose()?,
            tokens: token_patch(self.tpm, self.monthly_tokens)?,
        })
    }
}

/// Query of `GET /api/v1/keys`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListKeysQuery {
    /// Admins only: another user's keys.
    #[param(value_type = Option<Uuid>)]
    pub user_id: Option<String>,
}

/// An API key as listed: never the key itself.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyResponse {
    /// Stable id (revoke with `DELETE /api/v1/keys/{id}`).
    pub id: Uuid,
    /// Whose key it is.
    pub user_id: Uuid,
    /// Label.
    pub name: String,
    /// The key's first characters, to recognise it.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Roughly the last use (written in batches).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Own limit; `null` means the default.
    pub rate_limit_rpm: Option<u32>,
    /// Own tokens per minute; `null` means the default.
    pub tpm: Option<u64>,
    /// Own tokens per calendar month; `null` means the default.
    pub monthly_tokens: Option<u64>,
    /// The models it may be used with, by name; `null`: every model its user may use.
    pub models: Option<Vec<String>>,
}

impl From<ApiKey> for KeyResponse {
    fn from(k: ApiKey) -> Self {
        Self {
            id: k.id,
            user_id: k.user_id,
            name: k.name.as_str().to_owned(),
            prefix: k.prefix,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            last_used_at: k.last_used_at,
            rate_limit_rpm: k.rate_limit_rpm.map(RateLimitRpm::get),
            tpm: k.tokens.tpm.map(TokensPerMinute::get),
            monthly_tokens: k.tokens.monthly_tokens.map(MonthlyTokens::get),
            models: k.models.map(|list| {
                list.names()
                    .iter()
                    .map(|name| name.as_str().to_owned())
                    .collect()
            }),
        }
    }
}

/// A new key: the only response that ever contains the key itself.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKeyResponse {
    /// The key. Store it now: it cannot be shown again.
    pub key: String,
    /// The stored key's details.
    #[serde(flatten)]
    pub details: KeyResponse,
}

/// The list of a user's keys.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Keys, newest first, revoked ones included.
    pub items: Vec<KeyResponse>,
}
