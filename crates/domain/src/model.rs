//! Registry entities and the inputs that create or change them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::alias::AliasSplit;
use crate::serving::{Endpoint, EndpointList, EndpointWeight, EndpointsPatch, ServedModel};
use crate::values::{
    AliasName, Description, EndpointUrl, Framework, Metadata, ModelName, SourceUri, Tags,
    VersionNumber,
};

/// Who may use a model (call it, read it and its versions, see it listed), besides its owner and
/// the admins, who always may.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only the users an admin granted it to (the default for a new model).
    #[default]
    Private,
    /// Every authenticated user.
    Public,
}

impl Visibility {
    /// `private` or `public`.
    ///
    /// # Errors
    /// A validation error naming `visibility` for anything else.
    pub fn parse(raw: &str) -> Result<Self, crate::ValidationError> {
        match raw {
            "private" => Ok(Self::Private),
            "public" => Ok(Self::Public),
            _ => Err(crate::ValidationError::new(
                "visibility",
                "must be 'private' or 'public'",
            )),
        }
    }

    /// `private` or `public`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Public => "public",
        }
    }

    /// What a cached model of a build from before visibility existed was: every model was
    /// public then.
    fn before_visibility() -> Self {
        Self::Public
    }
}

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
    /// Who besides the owner and the admins may use it.
    #[serde(default = "Visibility::before_visibility")]
    pub visibility: Visibility,
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
    /// Who may use it.
    pub visibility: Visibility,
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
    /// New visibility.
    pub visibility: Option<Visibility>,
}

impl ModelPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.description.is_none()
            && self.tags.is_none()
            && self.metadata.is_none()
            && self.visibility.is_none()
    }
}

/// One version of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "VersionRecord", into = "VersionRecord")]
pub struct ModelVersion {
    /// Stable identifier.
    pub id: Uuid,
    /// The model this is a version of.
    pub model: ModelName,
    /// 1, 2, 3… per model.
    pub version: VersionNumber,
    /// Where the artifact lives.
    pub source_uri: SourceUri,
    /// The model servers serving this version, in order (none: it cannot serve calls). Their
    /// credentials are never part of this entity, which is cached: see
    /// [`crate::Registry::upstream_secrets`].
    pub endpoints: Vec<Endpoint>,
    /// The model server's own name for the model (`None`: the model's name in the registry).
    pub served_model: Option<ServedModel>,
    /// Whether its model servers accept `stream_options.include_usage`, which the gateway adds
    /// to streamed calls that do not ask for usage, so that they are metered.
    pub supports_stream_usage: bool,
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

impl ModelVersion {
    /// The name the model server knows the model by: `served_model`, else the model's name.
    pub fn served_name(&self) -> &str {
        self.served_model
            .as_ref()
            .map_or_else(|| self.model.as_str(), ServedModel::as_str)
    }

    /// The first endpoint's URL (what `endpoint_url` was before versions had several).
    pub fn endpoint_url(&self) -> Option<&EndpointUrl> {
        self.endpoints.first().map(|e| &e.url)
    }

    /// Whether the first endpoint has a credential.
    pub fn has_upstream_api_key(&self) -> bool {
        self.endpoints
            .first()
            .is_some_and(|e| e.has_upstream_api_key)
    }
}

/// A [`ModelVersion`] as cached. Replicas of other builds share the cache during a rolling
/// upgrade: `endpoint_url` and `has_upstream_api_key` (the first endpoint's) are still written
/// for builds that know no `endpoints`. An entry of such a build, without `endpoints`,
/// `served_model` or `supports_stream_usage`, does not decode (those fields are required, even
/// when `null`), so the version is read from the store instead: taking it as "one
/// endpoint, no served name" would route the version's calls under the wrong name, or without
/// its other endpoints, until the entry expires.
#[derive(Serialize, Deserialize)]
struct VersionRecord {
    id: Uuid,
    model: ModelName,
    version: VersionNumber,
    source_uri: SourceUri,
    endpoint_url: Option<EndpointUrl>,
    #[serde(default)]
    has_upstream_api_key: bool,
    #[serde(deserialize_with = "Option::deserialize")]
    endpoints: Option<Vec<Endpoint>>,
    #[serde(deserialize_with = "Option::deserialize")]
    served_model: Option<ServedModel>,
    supports_stream_usage: bool,
    framework: Option<Framework>,
    description: Option<Description>,
    metadata: Metadata,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<VersionRecord> for ModelVersion {
    fn from(r: VersionRecord) -> Self {
        let endpoints = r.endpoints.unwrap_or_else(|| {
            r.endpoint_url
                .into_iter()
                .map(|url| Endpoint {
                    url,
                    weight: EndpointWeight::default(),
                    has_upstream_api_key: r.has_upstream_api_key,
                })
                .collect()
        });
        Self {
            id: r.id,
            model: r.model,
            version: r.version,
            source_uri: r.source_uri,
            endpoints,
            served_model: r.served_model,
            supports_stream_usage: r.supports_stream_usage,
            framework: r.framework,
            description: r.description,
            metadata: r.metadata,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl From<ModelVersion> for VersionRecord {
    fn from(v: ModelVersion) -> Self {
        Self {
            endpoint_url: v.endpoint_url().cloned(),
            has_upstream_api_key: v.has_upstream_api_key(),
            id: v.id,
            model: v.model,
            version: v.version,
            source_uri: v.source_uri,
            endpoints: Some(v.endpoints),
            served_model: v.served_model,
            supports_stream_usage: v.supports_stream_usage,
            framework: v.framework,
            description: v.description,
            metadata: v.metadata,
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}

/// What is needed to add a version.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    /// Where the artifact lives.
    pub source_uri: SourceUri,
    /// Its model servers, with their credentials (none: it cannot serve calls yet).
    pub endpoints: EndpointList,
    /// The model server's own name for the model (`None`: the model's name).
    pub served_model: Option<ServedModel>,
    /// Whether its model servers accept `stream_options.include_usage`.
    pub supports_stream_usage: bool,
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
    /// New endpoints, or only the first one's credential.
    pub endpoints: Option<EndpointsPatch>,
    /// New served name, or clear it (back to the model's name).
    pub served_model: Option<Option<ServedModel>>,
    /// Whether its model servers accept `stream_options.include_usage`.
    pub supports_stream_usage: Option<bool>,
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
        self.endpoints.is_none()
            && self.served_model.is_none()
            && self.supports_stream_usage.is_none()
            && self.framework.is_none()
            && self.description.is_none()
            && self.metadata.is_none()
    }
}

/// A named pointer to one or more versions, which share its calls by weight (see
/// [`crate::alias`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    /// The model.
    pub model: ModelName,
    /// The alias.
    pub alias: AliasName,
    /// The versions it points to, with their weights.
    pub versions: AliasSplit,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

/// Filters of the model list. All are optional and combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelFilter {
    /// Only models carrying this tag.
    pub tag: Option<String>,
    /// Case-insensitive substring of name or description.
    pub q: Option<String>,
    /// Only models this user may use (public, owned, or granted); `None`: every model.
    pub usable_by: Option<Uuid>,
    /// Only models of these names (an API key's allowlist); `None`: any name.
    pub names: Option<Vec<ModelName>>,
}

impl ModelFilter {
    /// This filter narrowed to the names on `allowlist` (none: unchanged).
    pub fn within(&self, allowlist: Option<&crate::identity::ModelAllowlist>) -> Self {
        let mut narrowed = self.clone();
        if let Some(allowed) = allowlist {
            narrowed.names = Some(match narrowed.names.take() {
                Some(names) => names.into_iter().filter(|n| allowed.allows(n)).collect(),
                None => allowed.names().to_vec(),
            });
        }
        narrowed
    }
}

/// A private model granted to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The model.
    pub model: ModelName,
    /// The user who may use it.
    pub user_id: Uuid,
    /// Their name.
    pub username: crate::values::Username,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
}

/// One page of a keyset-paginated list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in list order.
    pub items: Vec<T>,
    /// Opaque cursor of the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Model names only admins may create: exact names, and prefixes written with a trailing `*`
/// (`gpt-*` reserves every name starting with `gpt-`), so that a member cannot take a popular
/// name first and receive the prompts meant for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReservedNames {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl ReservedNames {
    /// Most entries accepted: the check runs on every model a member creates.
    pub const MAX_ENTRIES: usize = 1_000;

    /// Reads `registry.reserved_names`: each entry a model name, or the start of one followed
    /// by `*`.
    ///
    /// # Errors
    /// A validation error naming `registry.reserved_names` for an entry that is neither, or
    /// for more than [`Self::MAX_ENTRIES`] entries.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, crate::ValidationError> {
        const FIELD: &str = "registry.reserved_names";
        if entries.len() > Self::MAX_ENTRIES {
            return Err(crate::ValidationError::new(
                FIELD,
                format!("must have at most {} entries", Self::MAX_ENTRIES),
            ));
        }
        let mut reserved = Self::default();
        for entry in entries {
            let entry = entry.as_ref();
            let (name, prefix) = match entry.strip_suffix('*') {
                Some(start) => (start, true),
                None => (entry, false),
            };
            // A prefix is checked as the name it starts: what is left must be a valid name
            // start, so `*` alone (reserving everything) is refused too.
            ModelName::parse(name.to_owned()).map_err(|e| {
                crate::ValidationError::new(FIELD, format!("'{entry}': {}", e.message))
            })?;
            if prefix {
                reserved.prefixes.push(name.to_owned());
            } else {
                reserved.exact.push(name.to_owned());
            }
        }
        Ok(reserved)
    }

    /// Whether `name` is reserved.
    pub fn reserves(&self, name: &ModelName) -> bool {
        let name = name.as_str();
        self.exact.iter().any(|e| e == name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(raw: &str) -> ModelName {
        ModelName::parse(raw.to_owned()).expect("a valid name")
    }

    #[test]
    fn reserved_names_are_exact_names_and_prefixes() {
        let reserved = ReservedNames::parse(&["gpt-4o", "claude-*"]).expect("valid");
        assert!(reserved.reserves(&name("gpt-4o")));
        assert!(!reserved.reserves(&name("gpt-4o-mini")));
        assert!(reserved.reserves(&name("claude-3")));
        assert!(!reserved.reserves(&name("llama")));
        assert!(!ReservedNames::default().reserves(&name("gpt-4o")));
    }

    #[test]
    fn a_reserved_entry_must_be_a_name_or_a_name_start() {
        for bad in ["*", "Not A Name", "a b*", ""] {
            let err = ReservedNames::parse(&[bad]).expect_err(bad);
            assert_eq!(err.field, "registry.reserved_names", "{bad}");
        }
        assert!(visibility_parses());
    }

    fn visibility_parses() -> bool {
        Visibility::parse("private") == Ok(Visibility::Private)
            && Visibility::parse("public") == Ok(Visibility::Public)
            && Visibility::parse("secret").is_err()
    }
}
