//! [`InMemoryRegistry`]: the registry port in memory, answering as `PgRegistryRepository` does
//! (the same values, orders, pages and error messages).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

mod aliases;

use aliases::alias_not_found;

use super::identity::{Directory, InMemoryIdentity};
use super::support::{Clock, Controls};
use crate::alias::{AliasSplit, ResolvedAlias};
use crate::error::RepoError;
use crate::inference::{ServableModel, UpstreamSecret};
use crate::model::{
    Alias, Grant, Model, ModelFilter, ModelPatch, ModelVersion, NewModel, NewVersion, VersionPatch,
    Visibility,
};
use crate::ports::RegistryRepository;
use crate::serving::{Endpoint, Resolved};
use crate::values::{AliasName, EndpointUrl, ModelName, PageLimit, Username, VersionNumber};

/// The model registry in memory.
///
/// As in Postgres: versions are numbered 1, 2, 3… per model without gaps, a deleted number is
/// never handed out again (a model deleted and created again starts at 1), deleting a version
/// takes it out of the aliases on it (deleting those it was the last version of; see
/// [`aliases`]) and moves `latest_version` to the highest one left, names sort
/// bytewise, the `q` filter matches name or description ignoring case with no wildcards, the
/// `tag` filter matches whole tags, and a page holds up to `limit + 1` rows. Timestamps come
/// from the system clock in whole microseconds, each later than the one before.
///
/// [`new`](Self::new) accepts any owner id; [`with_users`](Self::with_users) checks owners
/// against an [`InMemoryIdentity`] and reports their names in
/// [`list_servable_models`](RegistryRepository::list_servable_models), as the foreign key and
/// the join do in Postgres.
#[derive(Debug, Default)]
pub struct InMemoryRegistry {
    state: Mutex<BTreeMap<ModelName, Entry>>,
    users: Option<Directory>,
    clock: Clock,
    controls: Controls,
}

#[derive(Debug)]
struct Entry {
    model: Model,
    /// The number the next version gets; never goes down.
    next_version: i32,
    versions: BTreeMap<VersionNumber, ModelVersion>,
    /// Each alias's split and when it was set.
    aliases: BTreeMap<AliasName, (AliasSplit, DateTime<Utc>)>,
    /// Users granted the model, and when.
    grants: BTreeMap<Uuid, DateTime<Utc>>,
    /// Versions' upstream credentials by endpoint, apart from the versions (as Postgres keeps
    /// them beside what the entity carries).
    secrets: BTreeMap<VersionNumber, Vec<Option<UpstreamSecret>>>,
}

fn model_not_found(model: &ModelName) -> RepoError {
    RepoError::NotFound(format!("model '{model}' not found"))
}

fn version_not_found(model: &ModelName, version: VersionNumber) -> RepoError {
    RepoError::NotFound(format!("version {version} of model '{model}' not found"))
}

fn not_granted(model: &ModelName, username: &Username) -> RepoError {
    RepoError::NotFound(format!("model '{model}' is not granted to '{username}'"))
}

/// Endpoints to store as the entity shows them, and their credentials apart.
fn stored(resolved: Vec<Resolved<UpstreamSecret>>) -> (Vec<Endpoint>, Vec<Option<UpstreamSecret>>) {
    let split = |r: Resolved<_>| r.split(Ok::<_, std::convert::Infallible>);
    resolved.into_iter().filter_map(|r| split(r).ok()).unzip()
}

fn entry<'a>(
    models: &'a mut BTreeMap<ModelName, Entry>,
    name: &ModelName,
) -> Result<&'a mut Entry, RepoError> {
    models.get_mut(name).ok_or_else(|| model_not_found(name))
}

/// Whether `text` contains `needle`, ignoring case (as `ILIKE '%needle%'` with the wildcards
/// taken literally).
fn contains_ignoring_case(text: &str, needle: &str) -> bool {
    text.to_lowercase().contains(&needle.to_lowercase())
}

/// Whether `entry` passes the filter's `usable_by` and `names` (as the Postgres query's
/// `visibility = 'public' OR owner_id = $u OR EXISTS (grant)` and `name = ANY($names)`).
fn usable(entry: &Entry, filter: &ModelFilter) -> bool {
    let model = &entry.model;
    let usable = filter.usable_by.is_none_or(|user| {
        model.visibility == Visibility::Public
            || model.owner_id == Some(user)
            || entry.grants.contains_key(&user)
    });
    let named = filter
        .names
        .as_ref()
        .is_none_or(|names| names.contains(&model.name));
    usable && named
}

fn matches(model: &Model, filter: &ModelFilter) -> bool {
    let tag_ok = filter
        .tag
        .as_ref()
        .is_none_or(|tag| model.tags.as_slice().contains(tag));
    let text_ok = filter.q.as_ref().is_none_or(|q| {
        contains_ignoring_case(model.name.as_str(), q)
            || model
                .description
                .as_ref()
                .is_some_and(|d| contains_ignoring_case(d.as_str(), q))
    });
    tag_ok && text_ok
}

/// `limit + 1` rows: the extra one tells the caller a further page exists.
fn rows_for(limit: PageLimit) -> usize {
    usize::from(limit.get()) + 1
}

impl InMemoryRegistry {
    /// An empty registry that takes any owner id as given.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry whose model owners must be users of `identity` (else creating the
    /// model is [`RepoError::NotFound`] naming the user), listed by name among servable models.
    pub fn with_users(identity: &InMemoryIdentity) -> Self {
        Self {
            users: Some(identity.directory()),
            ..Self::default()
        }
    }

    /// Call counts, the outage switch and holds (see [`Controls`]).
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// Runs one operation: counted, failed while the store is switched off, and held if a test
    /// asked to hold it.
    async fn run<T>(
        &self,
        op: &'static str,
        work: impl FnOnce(&mut BTreeMap<ModelName, Entry>, DateTime<Utc>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        self.controls.enter(op)?;
        let result = {
            let now = self.clock.now();
            let mut models = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut models, now)
        };
        self.controls.leave(op).await;
        result
    }

    /// The id of user `username`, as the grant statements look it up.
    fn user_id_of(&self, username: &Username) -> Result<Uuid, RepoError> {
        self.users
            .as_ref()
            .and_then(|users| users.id_of(username))
            .ok_or_else(|| RepoError::NotFound(format!("user '{username}' not found")))
    }

    fn owner_name(&self, owner: Option<Uuid>) -> Option<String> {
        let users = self.users.as_ref()?;
        users.username_of(owner?).map(|name| name.into_inner())
    }
}

#[async_trait]
impl RegistryRepository for InMemoryRegistry {
    async fn create_model(&self, new: NewModel) -> Result<Model, RepoError> {
        self.run("create_model", |models, now| {
            if let (Some(users), Some(owner)) = (&self.users, new.owner_id)
                && users.username_of(owner).is_none()
            {
                return Err(RepoError::NotFound(format!("user {owner} not found")));
            }
            if models.contains_key(&new.name) {
                return Err(RepoError::Conflict(format!(
                    "model '{}' already exists",
                    new.name
                )));
            }
            let model = Model {
                id: Uuid::new_v4(),
                name: new.name.clone(),
                description: new.description,
                tags: new.tags,
                metadata: new.metadata,
                owner_id: new.owner_id,
                visibility: new.visibility,
                latest_version: None,
                created_at: now,
                updated_at: now,
            };
            models.insert(
                new.name,
                Entry {
                    model: model.clone(),
                    next_version: 1,
                    versions: BTreeMap::new(),
                    aliases: BTreeMap::new(),
                    grants: BTreeMap::new(),
                    secrets: BTreeMap::new(),
                },
            );
            Ok(model)
        })
        .await
    }

    async fn get_model(&self, name: &ModelName) -> Result<Model, RepoError> {
        self.run("get_model", |models, _| {
            Ok(entry(models, name)?.model.clone())
        })
        .await
    }

    async fn list_models(
        &self,
        filter: &ModelFilter,
        after: Option<&ModelName>,
        limit: PageLimit,
    ) -> Result<Vec<Model>, RepoError> {
        self.run("list_models", |models, _| {
            Ok(models
                .values()
                .filter(|e| usable(e, filter))
                .map(|e| &e.model)
                .filter(|m| after.is_none_or(|after| m.name > *after))
                .filter(|m| matches(m, filter))
                .take(rows_for(limit))
                .cloned()
                .collect())
        })
        .await
    }

    async fn update_model(&self, name: &ModelName, patch: ModelPatch) -> Result<Model, RepoError> {
        self.run("update_model", |models, now| {
            let model = &mut entry(models, name)?.model;
            if let Some(description) = patch.description {
                model.description = description;
            }
            if let Some(tags) = patch.tags {
                model.tags = tags;
            }
            if let Some(metadata) = patch.metadata {
                model.metadata = metadata;
            }
            if let Some(visibility) = patch.visibility {
                model.visibility = visibility;
            }
            model.updated_at = now;
            Ok(model.clone())
        })
        .await
    }

    async fn delete_model(&self, name: &ModelName) -> Result<(), RepoError> {
        self.run("delete_model", |models, _| {
            models
                .remove(name)
                .map(drop)
                .ok_or_else(|| model_not_found(name))
        })
        .await
    }

    async fn create_version(
        &self,
        model: &ModelName,
        new: NewVersion,
    ) -> Result<ModelVersion, RepoError> {
        self.run("create_version", |models, now| {
            let entry = entry(models, model)?;
            let number = VersionNumber::new(entry.next_version.into())
                .map_err(|e| RepoError::Internal(format!("create_version: {e}")))?;
            entry.next_version = entry.next_version.saturating_add(1);
            let (endpoints, secrets) = stored(new.endpoints.resolve(&[]));
            let version = ModelVersion {
                id: Uuid::new_v4(),
                model: model.clone(),
                version: number,
                source_uri: new.source_uri,
                endpoints,
                served_model: new.served_model,
                supports_stream_usage: new.supports_stream_usage,
                framework: new.framework,
                description: new.description,
                metadata: new.metadata,
                created_at: now,
                updated_at: now,
            };
            entry.versions.insert(number, version.clone());
            entry.secrets.insert(number, secrets);
            entry.model.latest_version = Some(number);
            entry.model.updated_at = now;
            Ok(version)
        })
        .await
    }

    async fn list_versions(
        &self,
        model: &ModelName,
        before: Option<VersionNumber>,
        limit: PageLimit,
    ) -> Result<Vec<ModelVersion>, RepoError> {
        self.run("list_versions", |models, _| {
            Ok(entry(models, model)?
                .versions
                .values()
                .rev()
                .filter(|v| before.is_none_or(|before| v.version < before))
                .take(rows_for(limit))
                .cloned()
                .collect())
        })
        .await
    }

    async fn get_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<ModelVersion, RepoError> {
        self.run("get_version", |models, _| {
            entry(models, model)?
                .versions
                .get(&version)
                .cloned()
                .ok_or_else(|| version_not_found(model, version))
        })
        .await
    }

    async fn upstream_secrets(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<Vec<(EndpointUrl, Option<UpstreamSecret>)>, RepoError> {
        self.run("upstream_secrets", |models, _| {
            let entry = entry(models, model)?;
            let Some(stored) = entry.versions.get(&version) else {
                return Err(version_not_found(model, version));
            };
            let secrets = entry.secrets.get(&version);
            Ok(stored
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    (
                        e.url.clone(),
                        secrets.and_then(|s| s.get(i).cloned().flatten()),
                    )
                })
                .collect())
        })
        .await
    }

    async fn latest_version(&self, model: &ModelName) -> Result<ModelVersion, RepoError> {
        self.run("latest_version", |models, _| {
            entry(models, model)?
                .versions
                .values()
                .next_back()
                .cloned()
                .ok_or_else(|| RepoError::NotFound(format!("model '{model}' has no versions")))
        })
        .await
    }

    async fn latest_servable_version(&self, model: &ModelName) -> Result<ModelVersion, RepoError> {
        self.run("latest_servable_version", |models, _| {
            entry(models, model)?
                .versions
                .values()
                .rev()
                .find(|v| !v.endpoints.is_empty())
                .cloned()
                .ok_or_else(|| {
                    RepoError::NotFound(format!("model '{model}' has no version with an endpoint"))
                })
        })
        .await
    }

    async fn list_servable_models(
        &self,
        filter: &ModelFilter,
    ) -> Result<Vec<ServableModel>, RepoError> {
        let servable = self
            .run("list_servable_models", |models, _| {
                Ok(models
                    .values()
                    .filter(|e| e.versions.values().any(|v| !v.endpoints.is_empty()))
                    .filter(|e| usable(e, filter))
                    .map(|e| (e.model.name.clone(), e.model.created_at, e.model.owner_id))
                    .collect::<Vec<_>>())
            })
            .await?;
        // Owners' names are looked up after the registry's lock is let go.
        Ok(servable
            .into_iter()
            .map(|(name, created_at, owner)| ServableModel {
                name,
                created_at,
                owner: self.owner_name(owner),
            })
            .collect())
    }

    async fn update_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
        patch: VersionPatch,
    ) -> Result<ModelVersion, RepoError> {
        self.run("update_version", |models, now| {
            let entry = entry(models, model)?;
            let stored_version = entry
                .versions
                .get_mut(&version)
                .ok_or_else(|| version_not_found(model, version))?;
            if let Some(change) = patch.endpoints {
                let secrets = entry.secrets.entry(version).or_default();
                let current: Vec<_> = stored_version
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.url.clone(), e.weight, secrets.get(i).cloned().flatten()))
                    .collect();
                let resolved = change.apply(&current).map_err(RepoError::Invalid)?;
                (stored_version.endpoints, *secrets) = stored(resolved);
            }
            if let Some(served_model) = patch.served_model {
                stored_version.served_model = served_model;
            }
            if let Some(supported) = patch.supports_stream_usage {
                stored_version.supports_stream_usage = supported;
            }
            if let Some(framework) = patch.framework {
                stored_version.framework = framework;
            }
            if let Some(description) = patch.description {
                stored_version.description = description;
            }
            if let Some(metadata) = patch.metadata {
                stored_version.metadata = metadata;
            }
            stored_version.updated_at = now;
            Ok(stored_version.clone())
        })
        .await
    }

    async fn delete_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<(), RepoError> {
        self.run("delete_version", |models, now| {
            let entry = entry(models, model)?;
            entry
                .versions
                .remove(&version)
                .ok_or_else(|| version_not_found(model, version))?;
            aliases::drop_version(entry, version);
            entry.secrets.remove(&version);
            // next_version stays: a deleted number is never handed out again.
            entry.model.latest_version = entry.versions.keys().next_back().copied();
            entry.model.updated_at = now;
            Ok(())
        })
        .await
    }

    async fn set_alias(
        &self,
        model: &ModelName,
        alias: &AliasName,
        split: &AliasSplit,
    ) -> Result<Alias, RepoError> {
        self.run("set_alias", |models, now| {
            aliases::set(entry(models, model)?, alias, split, now)
        })
        .await
    }

    async fn resolve_alias(
        &self,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<ResolvedAlias, RepoError> {
        self.run("resolve_alias", |models, _| {
            aliases::resolve(entry(models, model)?, alias)
        })
        .await
    }

    async fn delete_alias(&self, model: &ModelName, alias: &AliasName) -> Result<(), RepoError> {
        self.run("delete_alias", |models, _| {
            entry(models, model)?
                .aliases
                .remove(alias)
                .map(drop)
                .ok_or_else(|| alias_not_found(model, alias))
        })
        .await
    }

    async fn grant(
        &self,
        model: &ModelName,
        username: &Username,
    ) -> Result<(Grant, bool), RepoError> {
        let user_id = self.user_id_of(username)?;
        self.run("grant", |models, now| {
            let entry = entry(models, model)?;
            let created = !entry.grants.contains_key(&user_id);
            let granted_at = *entry.grants.entry(user_id).or_insert(now);
            Ok((
                Grant {
                    model: model.clone(),
                    user_id,
                    username: username.clone(),
                    granted_at,
                },
                created,
            ))
        })
        .await
    }

    async fn revoke_grant(&self, model: &ModelName, username: &Username) -> Result<(), RepoError> {
        let user_id = self.user_id_of(username)?;
        self.run("revoke_grant", |models, _| {
            entry(models, model)?
                .grants
                .remove(&user_id)
                .map(drop)
                .ok_or_else(|| not_granted(model, username))
        })
        .await
    }

    async fn list_grants(&self, model: &ModelName) -> Result<Vec<Grant>, RepoError> {
        let granted = self
            .run("list_grants", |models, _| {
                Ok(entry(models, model)?
                    .grants
                    .iter()
                    .map(|(user, at)| (*user, *at))
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut grants: Vec<Grant> = granted
            .into_iter()
            .filter_map(|(user_id, granted_at)| {
                let username = self.users.as_ref()?.username_of(user_id)?;
                Some(Grant {
                    model: model.clone(),
                    user_id,
                    username,
                    granted_at,
                })
            })
            .collect();
        grants.sort_by(|a, b| a.username.as_str().cmp(b.username.as_str()));
        Ok(grants)
    }
}
