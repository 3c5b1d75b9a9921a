//! Wire types of versions: their bodies (validated into domain types by `into_domain`) and the
//! version as shown, with its endpoints but never their credentials.

use chrono::{DateTime, Utc};
use maas_domain::ValidationError;
use maas_domain::inference::UpstreamSecret;
use maas_domain::model::{ModelVersion, NewVersion, VersionPatch};
use maas_domain::serving::{
    Endpoint, EndpointList, EndpointWeight, EndpointsPatch, KeyChange, NewEndpoint, ServedModel,
};
use maas_domain::values::{Description, EndpointUrl, Framework, SourceUri};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{double_option, metadata, opt, opt_opt};

/// One model server of a version, as written.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    /// Base URL of an OpenAI-compatible server (absolute http/https).
    #[schema(example = "http://vllm-0:8000/v1")]
    pub url: String,
    /// Its share of the version's calls, 1–1000 (default 1).
    pub weight: Option<i64>,
    /// Sent to this server as `Authorization: Bearer`; stored encrypted, never returned. On a
    /// change of `endpoints`, leaving it out keeps the credential of the endpoint with the same
    /// `url`, and `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub upstream_api_key: Option<Option<String>>,
}

impl EndpointBody {
    fn into_domain(self, i: usize) -> Result<NewEndpoint, ValidationError> {
        let field = |part: &str| format!("endpoints[{i}].{part}");
        Ok(NewEndpoint {
            url: EndpointUrl::parse_as(&field("url"), self.url)?,
            weight: self
                .weight
                .map(|w| EndpointWeight::parse_as(&field("weight"), w))
                .transpose()?
                .unwrap_or_default(),
            upstream_api_key: match self.upstream_api_key {
                None => KeyChange::Keep,
                Some(None) => KeyChange::Clear,
                Some(Some(key)) => {
                    KeyChange::Set(UpstreamSecret::parse_as(&field("upstream_api_key"), key)?)
                }
            },
        })
    }
}

/// The change of endpoints a body asks for: `endpoints`, or the one-endpoint shorthand
/// `endpoint_url` with `upstream_api_key`, or `upstream_api_key` alone (the first endpoint's);
/// `None` when it names none of them. On a new version `null` is the same as absent.
fn endpoints_of(
    endpoints: Option<Option<Vec<EndpointBody>>>,
    endpoint_url: Option<Option<String>>,
    upstream_api_key: Option<Option<String>>,
) -> Result<Option<EndpointsPatch>, ValidationError> {
    if endpoints.is_some() && (endpoint_url.is_some() || upstream_api_key.is_some()) {
        return Err(ValidationError::new(
            "endpoints",
            "give either endpoints or endpoint_url (with upstream_api_key), not both",
        ));
    }
    let key = match upstream_api_key {
        None => KeyChange::Keep,
        Some(None) => KeyChange::Clear,
        Some(Some(key)) => KeyChange::Set(UpstreamSecret::parse(key)?),
    };
    Ok(match (endpoints, endpoint_url) {
        (Some(None), _) => Some(EndpointsPatch::Replace(EndpointList::none())),
        (Some(Some(items)), _) => {
            let items = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| item.into_domain(i))
                .collect::<Result<Vec<_>, _>>()?;
            Some(EndpointsPatch::Replace(EndpointList::parse(items)?))
        }
        (None, Some(Some(url))) => Some(EndpointsPatch::Replace(EndpointList::shorthand(
            EndpointUrl::parse(url)?,
            key,
        ))),
        (None, Some(None)) => {
            if matches!(key, KeyChange::Set(_)) {
                return Err(needs_an_endpoint());
            }
            Some(EndpointsPatch::Replace(EndpointList::none()))
        }
        (None, None) => match key {
            KeyChange::Keep => None,
            KeyChange::Clear => Some(EndpointsPatch::FirstKey(None)),
            KeyChange::Set(secret) => Some(EndpointsPatch::FirstKey(Some(secret))),
        },
    })
}

fn needs_an_endpoint() -> ValidationError {
    ValidationError::new(
        "upstream_api_key",
        "needs an endpoint to go to: give endpoint_url, or endpoints with their own credentials",
    )
}

/// Body of `POST /api/v1/models/{name}/versions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVersion {
    /// Where the artifact lives (e.g. `s3://bucket/model.safetensors`).
    pub source_uri: String,
    /// The model servers serving this version (at most 32), balanced by weight with
    /// failover. Or, for one server, `endpoint_url`.
    #[serde(default, deserialize_with = "double_option")]
    pub endpoints: Option<Option<Vec<EndpointBody>>>,
    /// Base URL of the one OpenAI-compatible server serving this version (absolute
    /// http/https): the same as `endpoints` with one endpoint of weight 1.
    #[schema(example = "http://vllm:8000/v1")]
    pub endpoint_url: Option<String>,
    /// Sent to the `endpoint_url` server as `Authorization: Bearer`; stored encrypted, never
    /// returned.
    pub upstream_api_key: Option<String>,
    /// The model server's own name for the model, put in the `model` field of the OpenAI calls
    /// forwarded to it (1–256 characters, no control characters); by default the model's name.
    #[schema(example = "meta-llama/Llama-3.1-8B-Instruct")]
    pub served_model: Option<String>,
    /// Whether the model servers accept `stream_options.include_usage` (default true): the
    /// gateway adds it to streamed calls that do not ask for usage, so that their tokens are
    /// metered. `false` for servers that refuse it: such calls go as sent.
    pub supports_stream_usage: Option<bool>,
    /// Framework name.
    pub framework: Option<String>,
    /// At most 4096 characters.
    pub description: Option<String>,
    /// A JSON object of at most 64 KiB.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

impl CreateVersion {
    /// Validates every field.
    pub fn into_domain(self) -> Result<NewVersion, ValidationError> {
        if self.upstream_api_key.is_some()
            && self.endpoint_url.is_none()
            && self.endpoints.is_none()
        {
            return Err(needs_an_endpoint());
        }
        let endpoints = endpoints_of(
            self.endpoints,
            self.endpoint_url.map(Some),
            self.upstream_api_key.map(Some),
        )?;
        Ok(NewVersion {
            source_uri: SourceUri::parse(self.source_uri)?,
            endpoints: match endpoints {
                Some(EndpointsPatch::Replace(list)) => list,
                _ => EndpointList::none(),
            },
            served_model: opt(self.served_model, ServedModel::parse)?,
            supports_stream_usage: self.supports_stream_usage.unwrap_or(true),
            framework: opt(self.framework, Framework::parse)?,
            description: opt(self.description, Description::parse)?,
            metadata: metadata(self.metadata)?.unwrap_or_default(),
        })
    }
}

/// Body of `PATCH /api/v1/models/{name}/versions/{version}`; `source_uri` cannot change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVersion {
    /// New model servers (replacing them all; `null` or `[]`: none). An endpoint without
    /// `upstream_api_key` keeps the credential of the endpoint with the same `url`.
    #[serde(default, deserialize_with = "double_option")]
    pub endpoints: Option<Option<Vec<EndpointBody>>>,
    /// One model server instead of those there are (`null`: none); the first endpoint's
    /// credential stays unless `upstream_api_key` is given too.
    #[serde(default, deserialize_with = "double_option")]
    pub endpoint_url: Option<Option<String>>,
    /// New credential of the first endpoint; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub upstream_api_key: Option<Option<String>>,
    /// New name of the model on its server; `null`: the model's name again.
    #[serde(default, deserialize_with = "double_option")]
    pub served_model: Option<Option<String>>,
    /// Whether the model servers accept `stream_options.include_usage`.
    pub supports_stream_usage: Option<bool>,
    /// New framework; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub framework: Option<Option<String>>,
    /// New description; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    /// Replacement metadata object.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

impl UpdateVersion {
    /// Validates every field given.
    pub fn into_domain(self) -> Result<VersionPatch, ValidationError> {
        Ok(VersionPatch {
            endpoints: endpoints_of(self.endpoints, self.endpoint_url, self.upstream_api_key)?,
            served_model: opt_opt(self.served_model, ServedModel::parse)?,
            supports_stream_usage: self.supports_stream_usage,
            framework: opt_opt(self.framework, Framework::parse)?,
            description: opt_opt(self.description, Description::parse)?,
            metadata: metadata(self.metadata)?,
        })
    }
}

/// One model server of a version, as shown: never its credential.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EndpointResponse {
    /// Base URL.
    pub url: String,
    /// Its share of the version's calls.
    pub weight: u32,
    /// Whether a credential is stored for it.
    pub has_upstream_api_key: bool,
}

impl From<Endpoint> for EndpointResponse {
    fn from(e: Endpoint) -> Self {
        Self {
            url: e.url.as_str().to_owned(),
            weight: e.weight.get(),
            has_upstream_api_key: e.has_upstream_api_key,
        }
    }
}

/// A version of a model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionResponse {
    /// Stable id.
    pub id: Uuid,
    /// The model's name.
    pub model: String,
    /// 1, 2, 3… per model.
    pub version: i32,
    /// Where the artifact lives.
    pub source_uri: String,
    /// The first endpoint's base URL (for clients from before `endpoints`).
    pub endpoint_url: Option<String>,
    /// Whether the first endpoint has a credential (the credential itself is never returned).
    pub has_upstream_api_key: bool,
    /// The model servers, in order.
    pub endpoints: Vec<EndpointResponse>,
    /// The model server's own name for the model (`null`: the model's name).
    pub served_model: Option<String>,
    /// Whether the model servers accept `stream_options.include_usage`.
    pub supports_stream_usage: bool,
    /// Framework name.
    pub framework: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// JSON object.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<ModelVersion> for VersionResponse {
    fn from(v: ModelVersion) -> Self {
        Self {
            id: v.id,
            endpoint_url: v.endpoint_url().map(|u| u.as_str().to_owned()),
            has_upstream_api_key: v.has_upstream_api_key(),
            model: v.model.into_inner(),
            version: v.version.get(),
            source_uri: v.source_uri.as_str().to_owned(),
            endpoints: v.endpoints.into_iter().map(Into::into).collect(),
            served_model: v.served_model.map(|s| s.as_str().to_owned()),
            supports_stream_usage: v.supports_stream_usage,
            framework: v.framework.map(|f| f.as_str().to_owned()),
            description: v.description.map(|d| d.as_str().to_owned()),
            metadata: v.metadata.into_inner(),
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}
