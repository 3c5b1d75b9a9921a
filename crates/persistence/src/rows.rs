//! Row structs of the registry tables and their conversions to and from the domain entities.
//!
//! Reading converts every column through the domain's constructors, so a row that breaks a rule
//! (edited by hand, or written by a buggy build) becomes [`RepoError::Internal`], never a panic
//! and never an invalid entity.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use maas_domain::RepoError;
use maas_domain::model::{Model, ModelPatch, ModelVersion, NewModel, NewVersion, VersionPatch};
use maas_domain::values::{
    Description, EndpointUrl, Framework, Metadata, ModelName, SourceUri, Tags, VersionNumber,
};
use uuid::Uuid;

use crate::error::corrupt;
use crate::schema::{model_versions, models};

/// A row of `models`.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = models, check_for_backend(diesel::pg::Pg))]
pub(crate) struct ModelRow {
    id: Uuid,
    name: String,
    description: Option<String>,
    tags: Vec<String>,
    metadata: serde_json::Value,
    latest_version: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
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

/// A row of `model_versions`.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = model_versions, check_for_backend(diesel::pg::Pg))]
pub(crate) struct VersionRow {
    id: Uuid,
    version: i32,
    source_uri: String,
    endpoint_url: Option<String>,
    framework: Option<String>,
    description: Option<String>,
    metadata: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
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
            endpoint_url: self
                .endpoint_url
                .map(EndpointUrl::parse)
                .transpose()
                .map_err(|e| corrupt("model_versions.endpoint_url", e))?,
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
}

impl From<NewModel> for NewModelRow {
    fn from(new: NewModel) -> Self {
        Self {
            name: new.name.into_inner(),
            description: new.description.map(|d| d.as_str().to_owned()),
            tags: new.tags.into_inner(),
            metadata: new.metadata.into_inner(),
        }
    }
}

/// The columns of a new `model_versions` row, once its number is allocated.
#[derive(Debug, Insertable)]
#[diesel(table_name = model_versions)]
pub(crate) struct NewVersionRow {
    model_id: Uuid,
    version: i32,
    source_uri: String,
    endpoint_url: Option<String>,
    framework: Option<String>,
    description: Option<String>,
    metadata: serde_json::Value,
}

impl NewVersionRow {
    /// Version `version` of model `model_id`.
    pub(crate) fn new(model_id: Uuid, version: i32, new: NewVersion) -> Self {
        Self {
            model_id,
            version,
            source_uri: new.source_uri.as_str().to_owned(),
            endpoint_url: new.endpoint_url.map(|u| u.as_str().to_owned()),
            framework: new.framework.map(|f| f.as_str().to_owned()),
            description: new.description.map(|d| d.as_str().to_owned()),
            metadata: new.metadata.into_inner(),
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
}

impl From<ModelPatch> for ModelChanges {
    fn from(patch: ModelPatch) -> Self {
        Self {
            description: patch.description.map(|d| d.map(|d| d.as_str().to_owned())),
            tags: patch.tags.map(Tags::into_inner),
            metadata: patch.metadata.map(Metadata::into_inner),
        }
    }
}

/// The changed columns of a version: `None` keeps a column, `Some(None)` sets it to NULL.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = model_versions)]
pub(crate) struct VersionChanges {
    endpoint_url: Option<Option<String>>,
    framework: Option<Option<String>>,
    description: Option<Option<String>>,
    metadata: Option<serde_json::Value>,
}

impl From<VersionPatch> for VersionChanges {
    fn from(patch: VersionPatch) -> Self {
        Self {
            endpoint_url: patch.endpoint_url.map(|u| u.map(|u| u.as_str().to_owned())),
            framework: patch.framework.map(|f| f.map(|f| f.as_str().to_owned())),
            description: patch.description.map(|d| d.map(|d| d.as_str().to_owned())),
            metadata: patch.metadata.map(Metadata::into_inner),
        }
    }
}
