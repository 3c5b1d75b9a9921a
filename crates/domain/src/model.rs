//! Registry entities and the inputs that create or change them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::inference::UpstreamSecret;
use crate::values::{
    AliasName, Description, EndpointUrl, Framework, Metadata, ModelName, SourceUri, Tags,
    VersionNumber,
};

/// A registered model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Stable identifier.
    pub id: Uuid,
    /// Unique name; the model's address in the API.
    pub name: ModelName,
    /// Free text.
    pub description: Option<Description>,
    /// Labels to filter by.
    pub tags: Tags,
    /// Arbitrary JSON object.
    pub metadata: Metadata,
    /// The user who created it (`None` for models from before users existed: admins only).
    pub owner_id: Option<Uuid>,
    /// The highest existing version, if any.
    pub latest_version: Option<VersionNumber>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// What is needed to register a model.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModel {
    /// Unique name.
    pub name: ModelName,
    /// Free text.
    pub description: Option<Description>,
    /// Labels.
    pub tags: Tags,
    /// Arbitrary JSON object.
    pub metadata: Metadata,
    /// The creating user; set by [`crate::Registry::create_model`] from its actor.
    pub owner_id: Option<Uuid>,
}

/// A partial update of a model: `None` leaves a field as it is; `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPatch {
    /// New description, or clear it.
    pub description: Option<Option<Description>>,
    /// Replacement tags.
    pub tags: Option<Tags>,
    /// Replacement metadata.
    pub metadata: Option<Metadata>,
}

impl ModelPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.description.is_none() && self.tags.is_none() && self.metadata.is_none()
    }
}

/// One version of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// Stable identifier.
    pub id: Uuid,
    /// The model this is a version of.
    pub model: ModelName,
    /// 1, 2, 3… per model.
    pub version: VersionNumber,
    /// Where the artifact lives.
    pub source_uri: SourceUri,
    /// Base URL of the model server serving this version.
    pub endpoint_url: Option<EndpointUrl>,
    /// Credential sent to the model server; never returned by the API.
    pub upstream_api_key: Option<UpstreamSecret>,
    /// Framework name.
    pub framework: Option<Framework>,
    /// Free text.
    pub description: Option<Description>,
    /// Arbitrary JSON object.
    pub metadata: Metadata,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// What is needed to add a version.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    /// Where the artifact lives.
    pub source_uri: SourceUri,
    /// Base URL of the model server.
    pub endpoint_url: Option<EndpointUrl>,
    /// Credential sent to the model server.
    pub upstream_api_key: Option<UpstreamSecret>,
    /// Framework name.
    pub framework: Option<Framework>,
    /// Free text.
    pub description: Option<Description>,
    /// Arbitrary JSON object.
    pub metadata: Metadata,
}

/// A partial update of a version; `source_uri` is immutable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionPatch {
    /// New endpoint, or clear it.
    pub endpoint_url: Option<Option<EndpointUrl>>,
    /// New upstream credential, or clear it.
    pub upstream_api_key: Option<Option<UpstreamSecret>>,
    /// New framework, or clear it.
    pub framework: Option<Option<Framework>>,
    /// New description, or clear it.
    pub description: Option<Option<Description>>,
    /// Replacement metadata.
    pub metadata: Option<Metadata>,
}

impl VersionPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.endpoint_url.is_none()
            && self.upstream_api_key.is_none()
            && self.framework.is_none()
            && self.description.is_none()
            && self.metadata.is_none()
    }
}

/// A named pointer to a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    /// The model.
    pub model: ModelName,
    /// The alias.
    pub alias: AliasName,
    /// The version it points to.
    pub version: VersionNumber,
    /// When it was last moved.
    pub updated_at: DateTime<Utc>,
}

/// Filters of the model list. Both are optional and combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFilter {
    /// Only models carrying this tag.
    pub tag: Option<String>,
    /// Case-insensitive substring of name or description.
    pub q: Option<String>,
}

/// One page of a keyset-paginated list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in list order.
    pub items: Vec<T>,
    /// Opaque cursor of the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}
