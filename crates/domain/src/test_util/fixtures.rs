//! Fixtures: valid domain values from literals. They panic on an invalid literal, which is a
//! mistake in the test that wrote it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::alias::{AliasSplit, AliasTarget, Weight};
use crate::identity::{
    KeyName, ModelAllowlist, NewApiKey, NewUser, PlaintextKey, Principal, Role, TokenQuotas, User,
};
use crate::inference::{UpstreamSecret, UsageEvent};
use crate::model::{NewModel, NewVersion, Visibility};
use crate::serving::{EndpointList, EndpointWeight, KeyChange, NewEndpoint};
use crate::values::{
    AliasName, Description, EndpointUrl, Metadata, ModelName, SourceUri, Tags, Username,
    VersionNumber,
};

/// A valid model name.
pub fn model_name(raw: &str) -> ModelName {
    ModelName::parse(raw).unwrap_or_else(|e| panic!("fixture name {raw:?}: {e}"))
}

/// A valid alias name.
pub fn alias_name(raw: &str) -> AliasName {
    AliasName::parse(raw).unwrap_or_else(|e| panic!("fixture alias {raw:?}: {e}"))
}

/// A valid version number.
pub fn version(n: i64) -> VersionNumber {
    VersionNumber::new(n).unwrap_or_else(|e| panic!("fixture version {n}: {e}"))
}

/// Alias targets from `(version, weight)` pairs, in the order given.
pub fn targets(pairs: &[(i64, i64)]) -> Vec<AliasTarget> {
    pairs
        .iter()
        .map(|(v, w)| AliasTarget {
            version: version(*v),
            weight: Weight::parse_as("weight", *w)
                .unwrap_or_else(|e| panic!("fixture weight {w}: {e}")),
        })
        .collect()
}

/// A valid alias split from `(version, weight)` pairs.
pub fn split(pairs: &[(i64, i64)]) -> AliasSplit {
    AliasSplit::new(targets(pairs)).unwrap_or_else(|e| panic!("fixture split {pairs:?}: {e}"))
}

/// A valid username.
pub fn username(raw: &str) -> Username {
    Username::parse(raw).unwrap_or_else(|e| panic!("fixture username {raw:?}: {e}"))
}

/// A valid key label.
pub fn key_name(raw: &str) -> KeyName {
    KeyName::parse(raw.to_owned()).unwrap_or_else(|e| panic!("fixture key name {raw:?}: {e}"))
}

/// A valid endpoint URL.
pub fn endpoint(raw: &str) -> EndpointUrl {
    EndpointUrl::parse(raw.to_owned()).unwrap_or_else(|e| panic!("fixture endpoint {raw:?}: {e}"))
}

/// A valid description.
pub fn description(raw: &str) -> Description {
    Description::parse(raw.to_owned()).unwrap_or_else(|e| panic!("fixture description: {e}"))
}

/// A valid upstream credential.
pub fn upstream_secret(raw: &str) -> UpstreamSecret {
    UpstreamSecret::parse(raw.to_owned()).unwrap_or_else(|e| panic!("fixture secret: {e}"))
}

/// A public model with only a name, and no owner (public, as every model was before
/// visibility: [`private_model`] for one that is not).
pub fn new_model(name: &str) -> NewModel {
    NewModel {
        name: model_name(name),
        description: None,
        tags: Tags::default(),
        metadata: Metadata::default(),
        owner_id: None,
        visibility: Visibility::Public,
    }
}

/// A private model with only a name, owned by user `owner`.
pub fn private_model(name: &str, owner: Uuid) -> NewModel {
    NewModel {
        owner_id: Some(owner),
        visibility: Visibility::Private,
        ..new_model(name)
    }
}

/// A model with only a name, owned by user `owner`.
pub fn owned_model(name: &str, owner: Uuid) -> NewModel {
    NewModel {
        owner_id: Some(owner),
        ..new_model(name)
    }
}

/// A model with a description and tags.
pub fn described_model(name: &str, text: &str, tags: &[&str]) -> NewModel {
    NewModel {
        description: Some(description(text)),
        tags: Tags::parse(tags.iter().map(|t| (*t).to_owned()).collect())
            .unwrap_or_else(|e| panic!("fixture tags: {e}")),
        ..new_model(name)
    }
}

/// A version with only a source URI: it has no endpoint, so it cannot serve calls.
pub fn new_version(source_uri: &str) -> NewVersion {
    NewVersion {
        source_uri: SourceUri::parse(source_uri.to_owned())
            .unwrap_or_else(|e| panic!("fixture source_uri: {e}")),
        endpoints: EndpointList::none(),
        served_model: None,
        supports_stream_usage: true,
        framework: None,
        description: None,
        metadata: Metadata::default(),
    }
}

/// A version with a source URI and the model server at `endpoint_url` (written as the
/// `endpoint_url` shorthand).
pub fn servable_version(source_uri: &str, endpoint_url: &str) -> NewVersion {
    NewVersion {
        endpoints: EndpointList::shorthand(endpoint(endpoint_url), KeyChange::Keep),
        ..new_version(source_uri)
    }
}

/// A version served by `endpoint_url` with credential `secret` (the shorthand).
pub fn keyed_version(source_uri: &str, endpoint_url: &str, secret: &str) -> NewVersion {
    NewVersion {
        endpoints: EndpointList::shorthand(
            endpoint(endpoint_url),
            KeyChange::Set(upstream_secret(secret)),
        ),
        ..new_version(source_uri)
    }
}

/// An endpoint to write: `url` with `weight` and, when given, the credential `secret`.
pub fn new_endpoint(url: &str, weight: i64, secret: Option<&str>) -> NewEndpoint {
    NewEndpoint {
        url: endpoint(url),
        weight: EndpointWeight::parse_as("weight", weight)
            .unwrap_or_else(|e| panic!("fixture weight {weight}: {e}")),
        upstream_api_key: secret.map_or(KeyChange::Keep, |s| KeyChange::Set(upstream_secret(s))),
    }
}

/// The endpoint list `endpoints`, checked.
pub fn endpoint_list(endpoints: Vec<NewEndpoint>) -> EndpointList {
    EndpointList::parse(endpoints).unwrap_or_else(|e| panic!("fixture endpoints: {e}"))
}

/// A version served by several endpoints.
pub fn fleet_version(source_uri: &str, endpoints: Vec<NewEndpoint>) -> NewVersion {
    NewVersion {
        endpoints: endpoint_list(endpoints),
        ..new_version(source_uri)
    }
}

/// A user to create.
pub fn new_user(name: &str, role: Role) -> NewUser {
    NewUser {
        username: username(name),
        role,
        rate_limit_rpm: None,
        tokens: TokenQuotas::default(),
    }
}

/// A fresh key for `user_id` labelled `name`, and what to store of it.
pub fn new_key(user_id: Uuid, name: &str) -> (PlaintextKey, NewApiKey) {
    let key = PlaintextKey::generate().unwrap_or_else(|e| panic!("no randomness: {e}"));
    let new = NewApiKey {
        user_id,
        name: key_name(name),
        hash: key.hash(),
        prefix: key.display_prefix(),
        expires_at: None,
        rate_limit_rpm: None,
        models: None,
        tokens: TokenQuotas::default(),
    };
    (key, new)
}

/// `user` acting through a key of its own (a fresh key id, no limit of its own), as
/// authentication would give it.
pub fn principal_of(user: &User) -> Principal {
    Principal {
        user_id: user.id,
        username: user.username.clone(),
        role: user.role,
        key_id: Uuid::new_v4(),
        rate_limit_rpm: None,
        user_rate_limit_rpm: user.rate_limit_rpm,
        models: None,
        key_tokens: TokenQuotas::default(),
        user_tokens: user.tokens,
    }
}

/// An allowlist of valid model names.
pub fn allowlist(names: &[&str]) -> ModelAllowlist {
    ModelAllowlist::parse(names.iter().map(|n| (*n).to_owned()).collect())
        .unwrap_or_else(|e| panic!("fixture allowlist {names:?}: {e}"))
}

/// An admin that is no stored user: for tests that read the registry and are not about who may
/// (an admin may use every model).
pub fn admin_reader() -> Principal {
    Principal {
        user_id: Uuid::new_v4(),
        username: username("reader"),
        role: Role::Admin,
        key_id: Uuid::new_v4(),
        rate_limit_rpm: None,
        user_rate_limit_rpm: None,
        models: None,
        key_tokens: TokenQuotas::default(),
        user_tokens: TokenQuotas::default(),
    }
}

/// `secs` seconds after the epoch, UTC.
pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_else(|| panic!("fixture time {secs}"))
}

/// A successful call of `model` version 1 by `key_id` of `user_id` at `created_at`, on
/// `/v1/chat/completions`, 10 ms in the gateway of which 8 upstream, without token counts.
pub fn usage_event(
    key_id: Uuid,
    user_id: Uuid,
    model: &str,
    created_at: DateTime<Utc>,
) -> UsageEvent {
    UsageEvent {
        key_id,
        user_id,
        model: model.to_owned(),
        version: Some(1),
        route: "/v1/chat/completions".into(),
        status: 200,
        latency_ms: 10,
        upstream_ms: Some(8),
        prompt_tokens: None,
        completion_tokens: None,
        created_at,
        reservation: None,
    }
}
