//! Row structs of every table and their conversions to and from the domain entities.
//!
//! Reading converts every column through the domain's constructors, so a row that breaks a rule
//! (edited by hand, or written by a buggy build) becomes [`RepoError::Internal`], never a panic
//! and never an invalid entity.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use maas_domain::RepoError;
use maas_domain::identity::{
    ApiKey, KeyHash, KeyName, ModelAllowlist, MonthlyTokens, NewApiKey, NewUser, RateLimitRpm,
    Role, TokenQuotas, TokenQuotasPatch, TokensPerMinute, User, UserPatch,
};
use maas_domain::model::{
    Model, ModelPatch, ModelVersion, NewModel, NewVersion, VersionPatch, Visibility,
};
use maas_domain::serving::ServedModel;
use maas_domain::values::{
    Description, Framework, Metadata, ModelName, PageLimit, SourceUri, Tags, Username,
    VersionNumber,
};
use uuid::Uuid;

use crate::error::corrupt;
use crate::schema::{api_keys, model_versions, models, users};

/// A row of `models`.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = models, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ModelRow {
    id: Uuid,
    name: String,
    description: Option<String>,
    tags: Vec<String>,
    metadata: serde_json::Value,
    owner_id: Option<Uuid>,
    latest_version: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    visibility: String,
}

impl TryFrom<ModelRow> for Model {
    type Error = RepoError;

    fn try_from(row: ModelRow) -> Result<Self, RepoError> {
        Ok(Self {
            id: row.id,
            name: ModelName::parse(row.name).map_err(|e| corrupt("models.name", e))?,
            description: description(row.description, "models.description")?,
            tags: Tags::parse(row.tags).map_err(|e| corrupt("models.tags", e))?,
            metadata: Metadata::parse(row.metadata).map_err(|e| corrupt("models.metadata", e))?,
            owner_id: row.owner_id,
            visibility: Visibility::parse(&row.visibility)
                .map_err(|e| corrupt("models.visibility", e))?,
            latest_version: row
                .latest_version
                .map(|n| VersionNumber::new(n.into()))
                .transpose()
                .map_err(|e| corrupt("models.latest_version", e))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A row of `model_versions`. Not `Debug`: it holds the upstream credentials (sealed).
#[derive(Queryable, Selectable)]
#[diesel(table_name = model_versions, check_for_backend(diesel::pg::Pg))]
pub(crate) struct VersionRow {
    id: Uuid,
    version: i32,
    source_uri: String,
    endpoints: serde_json::Value,
    framework: Option<String>,
    description: Option<String>,
    metadata: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    served_model: Option<String>,
    supports_stream_usage: bool,
}

impl VersionRow {
    /// The version number, checked.
    pub(crate) fn number(&self) -> Result<VersionNumber, RepoError> {
        VersionNumber::new(self.version.into()).map_err(|e| corrupt("model_versions.version", e))
    }

    /// The domain entity; `model` is the name of the model the row was selected under.
    pub(crate) fn into_domain(self, model: &ModelName) -> Result<ModelVersion, RepoError> {
        Ok(ModelVersion {
            id: self.id,
            model: model.clone(),
            version: self.number()?,
            source_uri: SourceUri::parse(self.source_uri)
                .map_err(|e| corrupt("model_versions.source_uri", e))?,
            // Credentials are read, decrypted, only by `upstream_secrets`.
            endpoints: crate::endpoints::shown(self.endpoints)?,
            served_model: self
                .served_model
                .map(ServedModel::parse)
                .transpose()
                .map_err(|e| corrupt("model_versions.served_model", e))?,
            supports_stream_usage: self.supports_stream_usage,
            framework: self
                .framework
                .map(Framework::parse)
                .transpose()
                .map_err(|e| corrupt("model_versions.framework", e))?,
            description: description(self.description, "model_versions.description")?,
            metadata: Metadata::parse(self.metadata)
                .map_err(|e| corrupt("model_versions.metadata", e))?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn description(raw: Option<String>, column: &str) -> Result<Option<Description>, RepoError> {
    raw.map(Description::parse)
        .transpose()
        .map_err(|e| corrupt(column, e))
}

/// The columns of a new `models` row; the rest take their defaults.
#[derive(Debug, Insertable)]
#[diesel(table_name = models)]
pub(crate) struct NewModelRow {
    name: String,
    description: Option<String>,
    tags: Vec<String>,
    metadata: serde_json::Value,
    owner_id: Option<Uuid>,
    visibility: &'static str,
}

impl From<NewModel> for NewModelRow {
    fn from(new: NewModel) -> Self {
        Self {
            name: new.name.into_inner(),
            description: new.description.map(|d| d.as_str().to_owned()),
            tags: new.tags.into_inner(),
            metadata: new.metadata.into_inner(),
            owner_id: new.owner_id,
            visibility: new.visibility.as_str(),
        }
    }
}

/// The columns of a new `model_versions` row, once its number is allocated (`endpoint_url` and
/// `upstream_api_key` are set from `endpoints` by the table's trigger). Not `Debug`: it holds
/// the upstream credentials (sealed).
#[derive(Insertable)]
#[diesel(table_name = model_versions)]
pub(crate) struct NewVersionRow {
    model_id: Uuid,
    version: i32,
    source_uri: String,
    endpoints: serde_json::Value,
    framework: Option<String>,
    description: Option<String>,
    metadata: serde_json::Value,
    served_model: Option<String>,
    supports_stream_usage: bool,
}

impl NewVersionRow {
    /// Version `version` of model `model_id`, with its endpoints as stored (their credentials
    /// sealed by [`crate::secrets::SecretKeys::seal`]).
    pub(crate) fn new(
        model_id: Uuid,
        version: i32,
        new: NewVersion,
        endpoints: serde_json::Value,
    ) -> Self {
        Self {
            model_id,
            version,
            source_uri: new.source_uri.as_str().to_owned(),
            endpoints,
            framework: new.framework.map(|f| f.as_str().to_owned()),
            description: new.description.map(|d| d.as_str().to_owned()),
            metadata: new.metadata.into_inner(),
            served_model: new.served_model.map(|s| s.as_str().to_owned()),
            supports_stream_usage: new.supports_stream_usage,
        }
    }
}

/// The changed columns of a model: `None` keeps a column, `Some(None)` sets it to NULL.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = models)]
pub(crate) struct ModelChanges {
    description: Option<Option<String>>,
    tags: Option<Vec<String>>,
    metadata: Option<serde_json::Value>,
    visibility: Option<&'static str>,
}

impl From<ModelPatch> for ModelChanges {
    fn from(patch: ModelPatch) -> Self {
        Self {
            description: patch.description.map(|d| d.map(|d| d.as_str().to_owned())),
            tags: patch.tags.map(Tags::into_inner),
            metadata: patch.metadata.map(Metadata::into_inner),
            visibility: patch.visibility.map(Visibility::as_str),
        }
    }
}

/// The changed columns of a version: `None` keeps a column, `Some(None)` sets it to NULL. Not
/// `Debug`: it may hold upstream credentials (sealed).
#[derive(AsChangeset)]
#[diesel(table_name = model_versions)]
pub(crate) struct VersionChanges {
    /// Set by [`crate::versions::update`], which reads the stored ones first.
    pub(crate) endpoints: Option<serde_json::Value>,
    framework: Option<Option<String>>,
    description: Option<Option<String>>,
    metadata: Option<serde_json::Value>,
    served_model: Option<Option<String>>,
    supports_stream_usage: Option<bool>,
}

impl VersionChanges {
    /// The columns `patch` changes but `endpoints` (which depend on the stored ones).
    pub(crate) fn new(patch: &VersionPatch) -> Self {
        fn text<T>(value: &Option<Option<T>>, show: impl Fn(&T) -> &str) -> Option<Option<String>> {
            value
                .as_ref()
                .map(|v| v.as_ref().map(|v| show(v).to_owned()))
        }
        Self {
            endpoints: None,
            framework: text(&patch.framework, Framework::as_str),
            description: text(&patch.description, Description::as_str),
            metadata: patch.metadata.as_ref().map(|m| m.as_value().clone()),
            served_model: text(&patch.served_model, ServedModel::as_str),
            supports_stream_usage: patch.supports_stream_usage,
        }
    }
}

/// `limit + 1` rows: the extra one tells the caller that a further page exists.
pub(crate) fn rows_for(limit: PageLimit) -> i64 {
    i64::from(limit.get()) + 1
}

/// A row of `users`.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub(crate) struct UserRow {
    id: Uuid,
    username: String,
    role: String,
    disabled: bool,
    created_at: DateTime<Utc>,
    rate_limit_rpm: Option<i32>,
    tpm: Option<i64>,
    monthly_tokens: Option<i64>,
}

/// Stored token quotas, checked to be quotas; `table` names them in the error.
fn stored_tokens(
    table: &str,
    tpm: Option<i64>,
    monthly_tokens: Option<i64>,
) -> Result<TokenQuotas, RepoError> {
    Ok(TokenQuotas {
        tpm: tpm
            .map(TokensPerMinute::new)
            .transpose()
            .map_err(|e| corrupt(&format!("{table}.tpm"), e))?,
        monthly_tokens: monthly_tokens
            .map(MonthlyTokens::new)
            .transpose()
            .map_err(|e| corrupt(&format!("{table}.monthly_tokens"), e))?,
    })
}

/// A quota as a column: every quota fits an `i64`, so the error is unreachable, but an error
/// rather than a panic.
fn token_column(quota: Option<u64>) -> Result<Option<i64>, RepoError> {
    quota
        .map(i64::try_from)
        .transpose()
        .map_err(|e| RepoError::Internal(format!("token quota out of range: {e}")))
}

/// The columns of token quotas: `tpm` and `monthly_tokens`.
type TokenColumns = (Option<i64>, Option<i64>);

/// Token quotas as their columns.
fn token_columns(quotas: TokenQuotas) -> Result<TokenColumns, RepoError> {
    Ok((
        token_column(quotas.tpm.map(TokensPerMinute::get))?,
        token_column(quotas.monthly_tokens.map(MonthlyTokens::get))?,
    ))
}

/// Changed token quota columns: `tpm` and `monthly_tokens`.
type TokenChanges = (Option<Option<i64>>, Option<Option<i64>>);

/// A patch of token quotas as changed columns (`None` keeps a column, `Some(None)` clears it).
fn token_changes(patch: TokenQuotasPatch) -> Result<TokenChanges, RepoError> {
    Ok((
        patch
            .tpm
            .map(|tpm| token_column(tpm.map(TokensPerMinute::get)))
            .transpose()?,
        patch
            .monthly_tokens
            .map(|m| token_column(m.map(MonthlyTokens::get)))
            .transpose()?,
    ))
}

/// A stored limit, checked to be one; `column` names it in the error.
fn stored_rpm(column: &str, rpm: Option<i32>) -> Result<Option<RateLimitRpm>, RepoError> {
    rpm.map(|n| RateLimitRpm::new(n.into()))
        .transpose()
        .map_err(|e| corrupt(column, e))
}

/// A limit as a column: `RateLimitRpm::MAX` fits an `i32`, so the error is unreachable, but an
/// error rather than a panic.
fn rpm_column(rpm: Option<RateLimitRpm>) -> Result<Option<i32>, RepoError> {
    rpm.map(|rpm| i32::try_from(rpm.get()))
        .transpose()
        .map_err(|e| RepoError::Internal(format!("rate_limit_rpm out of range: {e}")))
}

/// An allowlist as a column.
pub(crate) fn models_column(models: Option<&ModelAllowlist>) -> Option<Vec<String>> {
    models.map(|list| list.names().iter().map(|n| n.as_str().to_owned()).collect())
}

impl TryFrom<UserRow> for User {
    type Error = RepoError;

    fn try_from(row: UserRow) -> Result<Self, RepoError> {
        Ok(Self {
            id: row.id,
            username: Username::parse(row.username).map_err(|e| corrupt("users.username", e))?,
            role: Role::parse(&row.role).map_err(|e| corrupt("users.role", e))?,
            disabled: row.disabled,
            created_at: row.created_at,
            rate_limit_rpm: stored_rpm("users.rate_limit_rpm", row.rate_limit_rpm)?,
            tokens: stored_tokens("users", row.tpm, row.monthly_tokens)?,
        })
    }
}

/// The columns of a new `users` row; the rest take their defaults.
#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub(crate) struct NewUserRow {
    username: String,
    role: &'static str,
    rate_limit_rpm: Option<i32>,
    tpm: Option<i64>,
    monthly_tokens: Option<i64>,
}

impl TryFrom<NewUser> for NewUserRow {
    type Error = RepoError;

    fn try_from(new: NewUser) -> Result<Self, RepoError> {
        let (tpm, monthly_tokens) = token_columns(new.tokens)?;
        Ok(Self {
            username: new.username.into_inner(),
            role: new.role.as_str(),
            rate_limit_rpm: rpm_column(new.rate_limit_rpm)?,
            tpm,
            monthly_tokens,
        })
    }
}

/// The changed columns of a user: `None` keeps a column, `Some(None)` clears the limit.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = users)]
pub(crate) struct UserChanges {
    role: Option<&'static str>,
    disabled: Option<bool>,
    rate_limit_rpm: Option<Option<i32>>,
    tpm: Option<Option<i64>>,
    monthly_tokens: Option<Option<i64>>,
}

impl UserChanges {
    /// The changes of `patch`, or `None` when it changes nothing (diesel refuses an empty `SET`).
    pub(crate) fn of(patch: UserPatch) -> Result<Option<Self>, RepoError> {
        if patch.is_empty() {
            return Ok(None);
        }
        let (tpm, monthly_tokens) = token_changes(patch.tokens)?;
        Ok(Some(Self {
            role: patch.role.map(Role::as_str),
            disabled: patch.disabled,
            rate_limit_rpm: patch.rate_limit_rpm.map(rpm_column).transpose()?,
            tpm,
            monthly_tokens,
        }))
    }
}

/// A row of `api_keys`, without its hash (which [`ApiKey`] does not carry).
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ApiKeyRow {
    id: Uuid,
    user_id: Uuid,
    name: String,
    prefix: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    rate_limit_rpm: Option<i32>,
    models: Option<Vec<String>>,
    tpm: Option<i64>,
    monthly_tokens: Option<i64>,
}

impl TryFrom<ApiKeyRow> for ApiKey {
    type Error = RepoError;

    fn try_from(row: ApiKeyRow) -> Result<Self, RepoError> {
        Ok(Self {
            id: row.id,
            user_id: row.user_id,
            name: KeyName::parse(row.name).map_err(|e| corrupt("api_keys.name", e))?,
            prefix: row.prefix,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
            rate_limit_rpm: stored_rpm("api_keys.rate_limit_rpm", row.rate_limit_rpm)?,
            models: row
                .models
                .map(ModelAllowlist::parse)
                .transpose()
                .map_err(|e| corrupt("api_keys.models", e))?,
            tokens: stored_tokens("api_keys", row.tpm, row.monthly_tokens)?,
        })
    }
}

/// The changed token quotas of a key: `None` keeps a column, `Some(None)` clears it.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = api_keys)]
pub(crate) struct KeyQuotaChanges {
    tpm: Option<Option<i64>>,
    monthly_tokens: Option<Option<i64>>,
}

impl KeyQuotaChanges {
    /// The changes of `patch`, or `None` when it changes nothing (diesel refuses an empty `SET`).
    pub(crate) fn of(patch: TokenQuotasPatch) -> Result<Option<Self>, RepoError> {
        if patch.is_empty() {
            return Ok(None);
        }
        let (tpm, monthly_tokens) = token_changes(patch)?;
        Ok(Some(Self {
            tpm,
            monthly_tokens,
        }))
    }
}

/// A stored `api_keys.key_hash`, checked to be a SHA-256.
pub(crate) fn key_hash(bytes: &[u8]) -> Result<KeyHash, RepoError> {
    KeyHash::from_bytes(bytes).ok_or_else(|| {
        corrupt(
            "api_keys.key_hash",
            format!("{} bytes instead of 32", bytes.len()),
        )
    })
}

/// The columns of a new `api_keys` row; the rest take their defaults.
#[derive(Debug, Insertable)]
#[diesel(table_name = api_keys)]
pub(crate) struct NewApiKeyRow {
    user_id: Uuid,
    name: String,
    key_hash: Vec<u8>,
    prefix: String,
    expires_at: Option<DateTime<Utc>>,
    rate_limit_rpm: Option<i32>,
    models: Option<Vec<String>>,
    tpm: Option<i64>,
    monthly_tokens: Option<i64>,
}

impl NewApiKeyRow {
    /// The row of `new`, held by `user_id` (which overrides `new.user_id`).
    pub(crate) fn held_by(user_id: Uuid, new: NewApiKey) -> Result<Self, RepoError> {
        let (tpm, monthly_tokens) = token_columns(new.tokens)?;
        Ok(Self {
            tpm,
            monthly_tokens,
            user_id,
            name: new.name.as_str().to_owned(),
            key_hash: new.hash.as_bytes().to_vec(),
            prefix: new.prefix,
            expires_at: new.expires_at,
            rate_limit_rpm: rpm_column(new.rate_limit_rpm)?,
            models: models_column(new.models.as_ref()),
        })
    }
}
