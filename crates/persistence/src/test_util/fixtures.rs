//! Fixtures of domain values for the persistence tests: valid names and values (panicking on an
//! invalid one: fixtures are written by hand), models, versions, users, API keys, usage events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use maas_domain::identity::{KeyName, NewApiKey, NewUser, PlaintextKey, Role, TokenQuotas};
use maas_domain::inference::{UpstreamSecret, UsageEvent};
use maas_domain::model::{NewModel, NewVersion, Visibility};
use maas_domain::serving::{EndpointList, KeyChange};
use maas_domain::values::{
    AliasName, Description, EndpointUrl, Metadata, ModelName, SourceUri, Tags, Username,
    VersionNumber,
};
use uuid::Uuid;

/// A valid model name (panics on an invalid one: fixtures are written by hand).
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
pub fn described_model(name: &str, description: &str, tags: &[&str]) -> NewModel {
    NewModel {
        description: Some(
            Description::parse(description.to_owned())
                .unwrap_or_else(|e| panic!("fixture description: {e}")),
        ),
        tags: Tags::parse(tags.iter().map(|t| (*t).to_owned()).collect())
            .unwrap_or_else(|e| panic!("fixture tags: {e}")),
        ..new_model(name)
    }
}

/// A version with only a source URI.
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

/// A version with a source URI and the model server at `endpoint_url`.
pub fn servable_version(source_uri: &str, endpoint_url: &str) -> NewVersion {
    let url = EndpointUrl::parse(endpoint_url.to_owned())
        .unwrap_or_else(|e| panic!("fixture endpoint_url: {e}"));
    NewVersion {
        endpoints: EndpointList::shorthand(url, KeyChange::Keep),
        ..new_version(source_uri)
    }
}

/// A valid upstream credential.
pub fn upstream_secret(raw: &str) -> UpstreamSecret {
    UpstreamSecret::parse(raw.to_owned()).unwrap_or_else(|e| panic!("fixture secret: {e}"))
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

/// A valid username.
pub fn username(raw: &str) -> Username {
    Username::parse(raw).unwrap_or_else(|e| panic!("fixture username {raw:?}: {e}"))
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

/// A valid key label.
pub fn key_name(raw: &str) -> KeyName {
    KeyName::parse(raw.to_owned()).unwrap_or_else(|e| panic!("fixture key name {raw:?}: {e}"))
}

/// A freshly generated key and what storing it for `user_id` takes (no expiry, no own limit):
/// the plaintext stays with the test, to authenticate with or to look for in the database.
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

/// A [`metrics::Recorder`] that keeps counters only, to assert that something was counted.
///
/// Install it for the current thread with [`metrics::set_default_local_recorder`]; with
/// `#[tokio::test]`'s current-thread runtime that covers the code under test.
#[derive(Debug, Default)]
pub struct CountingRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl CountingRecorder {
    /// The value of counter `name` with exactly `labels` (in any order); 0 if never touched.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let key = counter_key(
            name,
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .map_or(0, |c| AtomicU64::load(c, Ordering::Relaxed))
    }
}

fn counter_key(name: &str, labels: impl Iterator<Item = (String, String)>) -> String {
    let mut labels: Vec<String> = labels.map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let key = counter_key(
            key.name(),
            key.labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned())),
        );
        let counter = Arc::clone(
            self.counters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(key)
                .or_default(),
        );
        metrics::Counter::from_arc(counter)
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
