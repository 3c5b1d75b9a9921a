//! How a version is served: the model server's own name for the model ([`ServedModel`]), and
//! its model servers ([`Endpoint`]s: one or more replicas, each with a weight and perhaps a
//! credential of its own), as stored and as written ([`EndpointList`], [`EndpointsPatch`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::inference::UpstreamSecret;
use crate::values::EndpointUrl;

/// Most endpoints a version may have.
pub const MAX_ENDPOINTS: usize = 32;

/// The credentials of a version's endpoints, in their order (`None`, or past the end: that
/// endpoint has none).
pub type EndpointSecrets = std::sync::Arc<[Option<UpstreamSecret>]>;

/// The name a version's model server knows the model by (vLLM's `--served-model-name`, an
/// Ollama tag such as `llama3.1:8b`, `meta-llama/Llama-3.1-8B-Instruct`): what the gateway puts
/// in the `model` field of the calls it forwards. 1–256 characters, no control characters, not
/// blank, no whitespace at either end.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ServedModel(String);

impl ServedModel {
    /// Longest accepted name, in characters.
    pub const MAX_LEN: usize = 256;

    /// Parses and validates, naming `served_model` in the error.
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        let field = "served_model";
        let len = raw.chars().count();
        if len == 0 || len > Self::MAX_LEN {
            return Err(ValidationError::new(
                field,
                format!("must be 1 to {} characters long", Self::MAX_LEN),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValidationError::new(
                field,
                "must not contain control characters",
            ));
        }
        if raw.trim() != raw {
            return Err(ValidationError::new(
                field,
                "must not start or end with whitespace",
            ));
        }
        Ok(Self(raw))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServedModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(raw).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// How much of a version's traffic an endpoint takes, relative to the others: 1 to 1000, 1
/// when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u16")]
pub struct EndpointWeight(u16);

impl EndpointWeight {
    /// The largest weight.
    pub const MAX: u16 = 1000;

    /// Accepts 1..=1000, naming `field` in the error.
    pub fn parse_as(field: &str, raw: i64) -> Result<Self, ValidationError> {
        u16::try_from(raw)
            .ok()
            .filter(|w| (1..=Self::MAX).contains(w))
            .map(Self)
            .ok_or_else(|| {
                ValidationError::new(field, format!("must be an integer from 1 to {}", Self::MAX))
            })
    }

    /// The weight.
    pub fn get(self) -> u32 {
        u32::from(self.0)
    }
}

impl Default for EndpointWeight {
    fn default() -> Self {
        Self(1)
    }
}

impl TryFrom<i64> for EndpointWeight {
    type Error = String;

    fn try_from(raw: i64) -> Result<Self, String> {
        Self::parse_as("weight", raw).map_err(|e| e.message)
    }
}

impl From<EndpointWeight> for u16 {
    fn from(weight: EndpointWeight) -> Self {
        weight.0
    }
}

/// One model server of a version, as the registry shows it: never its credential, only whether
/// it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Base URL of the OpenAI-compatible server.
    pub url: EndpointUrl,
    /// Its share of the version's traffic.
    pub weight: EndpointWeight,
    /// Whether a credential is stored for it.
    pub has_upstream_api_key: bool,
}

/// What becomes of an endpoint's credential when a version's endpoints are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// Keep the one stored (in a list: of the endpoint with the same URL; in the `endpoint_url`
    /// shorthand: of the first endpoint); none on a new version.
    Keep,
    /// This one.
    Set(UpstreamSecret),
    /// None.
    Clear,
}

/// One endpoint as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    /// Base URL.
    pub url: EndpointUrl,
    /// Share of the traffic.
    pub weight: EndpointWeight,
    /// Its credential.
    pub upstream_api_key: KeyChange,
}

/// A version's endpoints as written: at most [`MAX_ENDPOINTS`], no URL twice; or the
/// `endpoint_url` shorthand (one endpoint of weight 1), which errors name as such.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointList {
    items: Vec<NewEndpoint>,
    shorthand: bool,
}

impl EndpointList {
    /// The list `endpoints`, checked.
    ///
    /// # Errors
    /// A validation error naming `endpoints` for too many, `endpoints[i].url` for a URL given
    /// twice.
    pub fn parse(items: Vec<NewEndpoint>) -> Result<Self, ValidationError> {
        if items.len() > MAX_ENDPOINTS {
            return Err(ValidationError::new(
                "endpoints",
                format!("must have at most {MAX_ENDPOINTS} entries"),
            ));
        }
        for (i, item) in items.iter().enumerate() {
            if items[..i].iter().any(|before| before.url == item.url) {
                return Err(ValidationError::new(
                    format!("endpoints[{i}].url"),
                    "is given twice (give it a larger weight instead)",
                ));
            }
        }
        Ok(Self {
            items,
            shorthand: false,
        })
    }

    /// `endpoint_url` with its `upstream_api_key`: one endpoint of weight 1.
    pub fn shorthand(url: EndpointUrl, upstream_api_key: KeyChange) -> Self {
        Self {
            items: vec![NewEndpoint {
                url,
                weight: EndpointWeight::default(),
                upstream_api_key,
            }],
            shorthand: true,
        }
    }

    /// No endpoint: the version cannot serve calls.
    pub fn none() -> Self {
        Self::default()
    }

    /// The endpoints, in order.
    pub fn items(&self) -> &[NewEndpoint] {
        &self.items
    }

    /// The field an error about `part` (`url`, `upstream_api_key`) of endpoint `i` names, as the
    /// client wrote it.
    pub fn field(&self, i: usize, part: &str) -> String {
        match (self.shorthand, part) {
            (true, "url") => "endpoint_url".to_owned(),
            (true, part) => part.to_owned(),
            (false, part) => format!("endpoints[{i}].{part}"),
        }
    }

    /// The endpoints to store, given the ones stored now (`current`: each URL with its stored
    /// credential, of any representation `K`).
    pub fn resolve<K: Clone>(self, current: &[(EndpointUrl, Option<K>)]) -> Vec<Resolved<K>> {
        let first_key = current.first().and_then(|(_, key)| key.clone());
        self.items
            .into_iter()
            .map(|item| {
                let key = match item.upstream_api_key {
                    KeyChange::Set(secret) => ResolvedKey::New(secret),
                    KeyChange::Clear => ResolvedKey::None,
                    KeyChange::Keep => {
                        let kept = if self.shorthand {
                            first_key.clone()
                        } else {
                            current
                                .iter()
                                .find(|(url, _)| *url == item.url)
                                .and_then(|(_, key)| key.clone())
                        };
                        kept.map_or(ResolvedKey::None, ResolvedKey::Stored)
                    }
                };
                Resolved {
                    url: item.url,
                    weight: item.weight,
                    upstream_api_key: key,
                }
            })
            .collect()
    }

    /// The field naming the first new credential, if the list sets one.
    pub fn new_secret_field(&self) -> Option<String> {
        self.items
            .iter()
            .position(|i| matches!(i.upstream_api_key, KeyChange::Set(_)))
            .map(|i| self.field(i, "upstream_api_key"))
    }
}

/// A change of a version's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointsPatch {
    /// These endpoints instead (`endpoints`, or `endpoint_url`; none: not servable).
    Replace(EndpointList),
    /// Only the first endpoint's credential (`upstream_api_key` alone, as before endpoints).
    FirstKey(Option<UpstreamSecret>),
}

impl EndpointsPatch {
    /// The endpoints to store, given the ones stored now.
    ///
    /// # Errors
    /// A validation error naming `upstream_api_key` when a credential is set on a version that
    /// has no endpoint to send it to.
    pub fn apply<K: Clone>(
        self,
        current: &[(EndpointUrl, EndpointWeight, Option<K>)],
    ) -> Result<Vec<Resolved<K>>, ValidationError> {
        match self {
            Self::Replace(list) => {
                let urls: Vec<(EndpointUrl, Option<K>)> = current
                    .iter()
                    .map(|(url, _, key)| (url.clone(), key.clone()))
                    .collect();
                Ok(list.resolve(&urls))
            }
            Self::FirstKey(secret) => {
                if current.is_empty() && secret.is_some() {
                    return Err(ValidationError::new(
                        "upstream_api_key",
                        "the version has no endpoint to send it to: give endpoint_url or endpoints",
                    ));
                }
                let stored =
                    |key: &Option<K>| key.clone().map_or(ResolvedKey::None, ResolvedKey::Stored);
                Ok(current
                    .iter()
                    .enumerate()
                    .map(|(i, (url, weight, key))| Resolved {
                        url: url.clone(),
                        weight: *weight,
                        upstream_api_key: match (i, &secret) {
                            (0, Some(secret)) => ResolvedKey::New(secret.clone()),
                            (0, None) => ResolvedKey::None,
                            _ => stored(key),
                        },
                    })
                    .collect())
            }
        }
    }

    /// The field naming a new credential, if the patch sets one.
    pub fn new_secret_field(&self) -> Option<String> {
        match self {
            Self::Replace(list) => list.new_secret_field(),
            Self::FirstKey(Some(_)) => Some("upstream_api_key".to_owned()),
            Self::FirstKey(None) => None,
        }
    }
}

/// An endpoint to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<K> {
    /// Base URL.
    pub url: EndpointUrl,
    /// Share of the traffic.
    pub weight: EndpointWeight,
    /// Its credential.
    pub upstream_api_key: ResolvedKey<K>,
}

impl<K> Resolved<K> {
    /// The endpoint as the registry shows it, and its credential to store: a stored one as it
    /// is, a new one made a `K` by `seal`.
    ///
    /// # Errors
    /// What `seal` fails with.
    pub fn split<E>(
        self,
        seal: impl FnOnce(UpstreamSecret) -> Result<K, E>,
    ) -> Result<(Endpoint, Option<K>), E> {
        let key = match self.upstream_api_key {
            ResolvedKey::None => None,
            ResolvedKey::New(secret) => Some(seal(secret)?),
            ResolvedKey::Stored(key) => Some(key),
        };
        let endpoint = Endpoint {
            url: self.url,
            weight: self.weight,
            has_upstream_api_key: key.is_some(),
        };
        Ok((endpoint, key))
    }
}

/// An endpoint's credential to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedKey<K> {
    /// None.
    None,
    /// A new one, to be sealed.
    New(UpstreamSecret),
    /// The one stored, as it is stored.
    Stored(K),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_names_are_what_model_servers_use_and_nothing_unprintable() {
        for ok in [
            "llama3.1:8b",
            "meta-llama/Llama-3.1-8B-Instruct",
            "gpt 4o (eu)",
            "modèle-été",
            &"x".repeat(256),
        ] {
            assert_eq!(ServedModel::parse(ok).expect(ok).as_str(), ok);
        }
        for bad in [
            "",
            " ",
            " lead",
            "trail\u{20}",
            "new\nline",
            "tab\there",
            "nul\u{0}",
            "del\u{7f}",
            "c1\u{85}",
            &"x".repeat(257),
        ] {
            assert_eq!(
                ServedModel::parse(bad).expect_err(bad).field,
                "served_model"
            );
        }
    }
}
