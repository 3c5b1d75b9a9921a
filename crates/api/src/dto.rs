//! Wire types: request bodies (raw, validated into domain types by `into_domain`) and responses.

mod aliases;
mod identity;
mod versions;

pub use aliases::{
    AliasResponse, AliasVersionResponse, ResolvedAliasResponse, SetAlias, SetAliasVersion,
    WeightedVersionResponse,
};
pub use identity::{
    CreateKey, CreateUser, CreatedKeyResponse, KeyList, KeyResponse, ListKeysQuery, ListUsersQuery,
    UpdateKey, UpdateUser, UserResponse,
};
pub use versions::{CreateVersion, EndpointBody, EndpointResponse, UpdateVersion, VersionResponse};

use chrono::{DateTime, Utc};
use maas_domain::ValidationError;
use maas_domain::model::{Grant, Model, ModelPatch, NewModel, Page as DomainPage, Visibility};
use maas_domain::values::{Description, Metadata, ModelName, Tags, VersionNumber};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// One page of a keyset-paginated list (models by name, versions newest first, users by name).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The page's items, in the list's order.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<D, T: From<D>> From<DomainPage<D>> for Page<T> {
    fn from(page: DomainPage<D>) -> Self {
        Self {
            items: page.items.into_iter().map(Into::into).collect(),
            next_cursor: page.next_cursor,
        }
    }
}

/// A page of models, ordered by name.
pub type ModelList = Page<ModelResponse>;
/// A page of a model's versions, newest first.
pub type VersionList = Page<VersionResponse>;
/// A page of users, ordered by name.
pub type UserList = Page<UserResponse>;

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`), for PATCH bodies.
fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn opt<T>(
    raw: Option<String>,
    parse: impl Fn(String) -> Result<T, ValidationError>,
) -> Result<Option<T>, ValidationError> {
    raw.map(parse).transpose()
}

fn opt_opt<T>(
    raw: Option<Option<String>>,
    parse: impl Fn(String) -> Result<T, ValidationError>,
) -> Result<Option<Option<T>>, ValidationError> {
    raw.map(|inner| inner.map(&parse).transpose()).transpose()
}

fn metadata(raw: Option<serde_json::Value>) -> Result<Option<Metadata>, ValidationError> {
    raw.map(Metadata::parse).transpose()
}

/// Body of `POST /api/v1/models`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateModel {
    /// 1–64 chars of `a-z 0-9 . _ -`, starting with a letter or digit.
    #[schema(example = "llama-3.1-8b")]
    pub name: String,
    /// At most 4096 characters.
    pub description: Option<String>,
    /// At most 32 tags of 1–64 characters.
    #[serde(default)]
    pub tags: Vec<String>,
    /// A JSON object of at most 64 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// `private` (the default: the owner, admins and the users an admin granted it to) or
    /// `public` (every user).
    #[schema(example = "private")]
    pub visibility: Option<String>,
}

impl CreateModel {
    /// Validates every field.
    pub fn into_domain(self) -> Result<NewModel, ValidationError> {
        Ok(NewModel {
            name: ModelName::parse(self.name)?,
            description: opt(self.description, Description::parse)?,
            tags: Tags::parse(self.tags)?,
            metadata: metadata(self.metadata)?.unwrap_or_default(),
            owner_id: None,
            visibility: opt(self.visibility, |v| Visibility::parse(&v))?.unwrap_or_default(),
        })
    }
}

/// Body of `PATCH /api/v1/models/{name}`: absent fields stay, `null` clears `description`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModel {
    /// New description; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    /// Replacement tags.
    pub tags: Option<Vec<String>>,
    /// Replacement metadata object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// `private` or `public`.
    pub visibility: Option<String>,
}

impl UpdateModel {
    /// Validates every field given.
    pub fn into_domain(self) -> Result<ModelPatch, ValidationError> {
        Ok(ModelPatch {
            description: opt_opt(self.description, Description::parse)?,
            tags: self.tags.map(Tags::parse).transpose()?,
            metadata: metadata(self.metadata)?,
            visibility: opt(self.visibility, |v| Visibility::parse(&v))?,
        })
    }
}

/// A registered model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelResponse {
    /// Stable id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Labels.
    pub tags: Vec<String>,
    /// JSON object.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// The user who created it; only they and admins may change it.
    pub owner_id: Option<Uuid>,
    /// `private` (the owner, admins and grantees) or `public` (every user).
    pub visibility: String,
    /// Highest existing version, `null` before the first.
    pub latest_version: Option<i32>,
    /// Creation time (RFC 3339).
    pub created_at: DateTime<Utc>,
    /// Last change (RFC 3339).
    pub updated_at: DateTime<Utc>,
}

impl From<Model> for ModelResponse {
    fn from(m: Model) -> Self {
        Self {
            id: m.id,
            name: m.name.into_inner(),
            description: m.description.map(|d| d.as_str().to_owned()),
            tags: m.tags.into_inner(),
            metadata: m.metadata.into_inner(),
            owner_id: m.owner_id,
            visibility: m.visibility.as_str().to_owned(),
            latest_version: m.latest_version.map(VersionNumber::get),
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// Query of `GET /api/v1/models`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListModelsQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<u16>)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only models with this tag.
    pub tag: Option<String>,
    /// Case-insensitive substring of name or description.
    pub q: Option<String>,
}

/// Query of `GET /api/v1/models/{name}/versions`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListVersionsQuery {
    /// Page size, 1–200 (default 50).
    #[param(value_type = Option<u16>)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Body of `POST /api/v1/models/{name}/grants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    /// The user who may use the model from their next call on.
    pub username: String,
}

/// A private model granted to a user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantResponse {
    /// The model.
    pub model: String,
    /// The user's id.
    pub user_id: Uuid,
    /// The user's name.
    pub username: String,
    /// When it was granted (RFC 3339).
    pub granted_at: DateTime<Utc>,
}

impl From<Grant> for GrantResponse {
    fn from(g: Grant) -> Self {
        Self {
            model: g.model.into_inner(),
            user_id: g.user_id,
            username: g.username.into_inner(),
            granted_at: g.granted_at,
        }
    }
}

/// A model's grants, by username.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantList {
    /// The grants.
    pub items: Vec<GrantResponse>,
}
