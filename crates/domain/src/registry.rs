//! Registry use-cases: storage through [`RegistryRepository`], hot reads through [`Cache`].
//!
//! Reads of a model, a version and an alias resolution are cache-aside. Every write to a model,
//! its versions, its aliases or its grants invalidates the model's whole cache scope after the
//! write commits and before the use-case returns, so a read that follows a write never sees the
//! old value.
//!
//! # Who may do what
//! - A model is *usable* by its owner, by admins, by everyone when it is
//!   [`Visibility::Public`], and by the users an admin granted it to. Every read of a model,
//!   its versions and aliases, every inference target, and every list takes the acting
//!   [`Principal`] and shows only usable models: one that is not usable is answered exactly as
//!   one that does not exist, so its existence is not revealed.
//! - Only its owner and admins change a model, its versions and aliases (403 for others who may
//!   use it); only admins grant.
//! - Names in [`ReservedNames`] are created by admins only.
//! - A key with a models allowlist ([`Principal::models`]) acts only on the models on it, admins'
//!   keys too: anything else it addresses by name is forbidden (403, decided on the name alone,
//!   before any lookup), and lists show only models on it.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

mod aliases;

use crate::cursor;
use crate::error::DomainError;
use crate::identity::Principal;
use crate::inference::{Selector, ServableModel, Target};
use crate::model::{
    Grant, Model, ModelFilter, ModelPatch, ModelVersion, NewModel, NewVersion, Page, ReservedNames,
    VersionPatch, Visibility,
};
use crate::ports::{Cache, CacheLookup, Field, RegistryRepository, Scope};
use crate::serving::{EndpointSecrets, EndpointsPatch};
use crate::values::{ModelName, PageLimit, Username, VersionNumber};

mod secret_memo;

use secret_memo::SecretMemo;

/// The model registry's use-cases.
#[derive(Clone)]
pub struct Registry {
    repo: Arc<dyn RegistryRepository>,
    cache: Arc<dyn Cache>,
    reserved: Arc<ReservedNames>,
    /// Whether the store can keep upstream credentials (it has an encryption key).
    secret_storage: bool,
    secrets: Arc<SecretMemo>,
}

/// What a model that does not exist, or that the actor may not use, is answered with (the same
/// text as the stores' own).
fn model_not_found(model: &ModelName) -> DomainError {
    DomainError::NotFound(format!("model '{model}' not found"))
}

impl Registry {
    /// A registry over a store and a cache (use [`crate::ports::NoCache`] for none), with no
    /// reserved names.
    pub fn new(repo: Arc<dyn RegistryRepository>, cache: Arc<dyn Cache>) -> Self {
        Self {
            repo,
            cache,
            reserved: Arc::new(ReservedNames::default()),
            secret_storage: true,
            secrets: Arc::new(SecretMemo::default()),
        }
    }

    /// Whether the store can keep upstream credentials (the gateway has a
    /// `secrets.encryption_key`); without, a version with one is refused (422) and everything
    /// else works.
    #[must_use]
    pub fn with_secret_storage(mut self, available: bool) -> Self {
        self.secret_storage = available;
        self
    }

    /// Refuses a new credential (named by `field`) when the store cannot keep it.
    fn check_secret_storage(&self, field: Option<String>) -> Result<(), DomainError> {
        match field {
            Some(field) if !self.secret_storage => Err(crate::error::ValidationError::new(
                field,
                "cannot be stored: the gateway has no secrets.encryption_key to encrypt it with",
            )
            .into()),
            _ => Ok(()),
        }
    }

    /// The credentials of `version`'s model servers, in the order of its endpoints, decrypted
    /// (in this process only; fetched once per version and change, see [`SecretMemo`], and not
    /// at all when no endpoint has one: then the list is empty).
    ///
    /// `version` may be an older copy than the store's (a cached read a few seconds old). Each
    /// credential goes only to the URL it was stored for: an endpoint of `version` gets the
    /// stored credential of the same URL (at its own index, else the first with that URL), never
    /// one stored for another URL, and when an endpoint that `version` says has a credential
    /// finds none stored for its URL, the copy is out of date: the model's cached entries are
    /// dropped (on every replica) and the call is refused as unavailable (503, to be retried:
    /// the retry routes by the store's version) rather than sent without it.
    ///
    /// # Errors
    /// The store's errors; [`DomainError::Unavailable`] when `version` is out of date as above.
    pub async fn upstream_secrets(
        &self,
        version: &ModelVersion,
    ) -> Result<EndpointSecrets, DomainError> {
        if !version.endpoints.iter().any(|e| e.has_upstream_api_key) {
            // The common case, on every call: no allocation.
            static NONE: std::sync::LazyLock<EndpointSecrets> =
                std::sync::LazyLock::new(|| Vec::new().into());
            return Ok(NONE.clone());
        }
        if let Some(secrets) = self.secrets.get(version) {
            return Ok(secrets);
        }
        let stored = self
            .repo
            .upstream_secrets(&version.model, version.version)
            .await?;
        let secrets: EndpointSecrets = match matched_secrets(version, stored) {
            Ok(secrets) => secrets.into(),
            Err(stale) => {
                // The copy routed by is older than the store (an invalidation was missed or is
                // on its way): drop it everywhere, so the next call routes by the store's.
                self.invalidate(&version.model).await;
                return Err(stale);
            }
        };
        self.secrets.put(version, secrets.clone());
        Ok(secrets)
    }

    /// Names (and prefixes) only admins may create.
    #[must_use]
    pub fn with_reserved_names(mut self, reserved: ReservedNames) -> Self {
        self.reserved = Arc::new(reserved);
        self
    }

    async fn cached<T, F>(&self, model: &ModelName, field: Field, load: F) -> Result<T, DomainError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: Future<Output = Result<T, DomainError>>,
    {
        let scope = Scope::Model(model.clone());
        let token = match self.cache.lookup(&scope, &field).await {
            CacheLookup::Hit(cached) => {
                match cached.decode(|bytes| serde_json::from_slice(bytes).ok()) {
                    Some(value) => return Ok(value),
                    // An entry from an incompatible build: reload and overwrite it.
                    None => Some(crate::ports::FillToken(None)),
                }
            }
            CacheLookup::Miss(token) => Some(token),
            CacheLookup::Bypass => None,
        };
        let value = load.await?;
        if let Some(token) = token
            && let Ok(bytes) = serde_json::to_vec(&value)
        {
            self.cache.fill(&scope, &field, token, bytes).await;
        }
        Ok(value)
    }

    /// The model, whoever asks (cached).
    async fn model(&self, name: &ModelName) -> Result<Model, DomainError> {
        self.cached(name, Field::Model, async {
            Ok(self.repo.get_model(name).await?)
        })
        .await
    }

    /// Whether `actor` may use `model`: admin, owner, public, or granted (the grantees are
    /// read, cached, only when nothing else decides).
    async fn may_use(&self, actor: &Principal, model: &Model) -> Result<bool, DomainError> {
        if actor.is_admin()
            || model.visibility == Visibility::Public
            || model.owner_id == Some(actor.user_id)
        {
            return Ok(true);
        }
        let grantees: Vec<Uuid> = self
            .cached(&model.name, Field::Grantees, async {
                let grants = self.repo.list_grants(&model.name).await?;
                Ok(grants.into_iter().map(|g| g.user_id).collect())
            })
            .await?;
        Ok(grantees.contains(&actor.user_id))
    }

    /// The model if `actor` may use it; else what a missing model gets.
    async fn usable(&self, actor: &Principal, name: &ModelName) -> Result<Model, DomainError> {
        actor.check_key_allows(name)?;
        let model = self.model(name).await?;
        if self.may_use(actor, &model).await? {
            Ok(model)
        } else {
            Err(model_not_found(name))
        }
    }

    /// Admins change anything; members only models they own (and their versions and aliases),
    /// and a member who may not even use the model is told it does not exist. The owner never
    /// changes, so the cached model is good enough to decide.
    async fn authorize(&self, actor: &Principal, model: &ModelName) -> Result<(), DomainError> {
        let found = self.usable(actor, model).await?;
        if actor.may_change(found.owner_id) {
            Ok(())
        } else {
            Err(DomainError::Forbidden(format!(
                "only the owner of model '{model}' or an admin may change it"
            )))
        }
    }

    async fn invalidate(&self, model: &ModelName) {
        self.cache.invalidate(&Scope::Model(model.clone())).await;
    }

    /// The filter `actor` lists through: only models it may use, unless it is an admin, and
    /// only those on its key's allowlist.
    fn scoped(actor: &Principal, filter: &ModelFilter) -> ModelFilter {
        let mut scoped = filter.within(actor.models.as_ref());
        if !actor.is_admin() {
            scoped.usable_by = Some(actor.user_id);
        }
        scoped
    }

    /// Registers a model owned by `actor` (private unless `new.visibility` says otherwise).
    /// A reserved name is for admins only (403 naming `name`).
    pub async fn create_model(
        &self,
        actor: &Principal,
        mut new: NewModel,
    ) -> Result<Model, DomainError> {
        actor.check_key_allows(&new.name)?;
        if !actor.is_admin() && self.reserved.reserves(&new.name) {
            return Err(DomainError::Forbidden(format!(
                "name: '{}' is reserved; only admins may create it",
                new.name
            )));
        }
        new.owner_id = Some(actor.user_id);
        let name = new.name.clone();
        let model = self.repo.create_model(new).await?;
        self.invalidate(&name).await;
        Ok(model)
    }

    /// One model `actor` may use (cached).
    pub async fn get_model(
        &self,
        actor: &Principal,
        name: &ModelName,
    ) -> Result<Model, DomainError> {
        self.usable(actor, name).await
    }

    /// A page of the models `actor` may use, ordered by name.
    pub async fn list_models(
        &self,
        actor: &Principal,
        filter: &ModelFilter,
        cursor: Option<&str>,
        limit: PageLimit,
    ) -> Result<Page<Model>, DomainError> {
        let after = cursor.map(cursor::decode_model_cursor).transpose()?;
        let filter = Self::scoped(actor, filter);
        let rows = self
            .repo
            .list_models(&filter, after.as_ref(), limit)
            .await?;
        Ok(paginate(rows, limit, |m| {
            cursor::encode_model_cursor(&m.name)
        }))
    }

    /// Changes a model's description, tags, metadata or visibility.
    pub async fn update_model(
        &self,
        actor: &Principal,
        name: &ModelName,
        patch: ModelPatch,
    ) -> Result<Model, DomainError> {
        self.authorize(actor, name).await?;
        if patch.is_empty() {
            return self.model(name).await;
        }
        let result = self.repo.update_model(name, patch).await;
        self.invalidate(name).await;
        Ok(result?)
    }

    /// Deletes a model, its versions, aliases and grants.
    pub async fn delete_model(
        &self,
        actor: &Principal,
        name: &ModelName,
    ) -> Result<(), DomainError> {
        self.authorize(actor, name).await?;
        let result = self.repo.delete_model(name).await;
        self.invalidate(name).await;
        Ok(result?)
    }

    /// Adds the next version of a model.
    pub async fn create_version(
        &self,
        actor: &Principal,
        model: &ModelName,
        new: NewVersion,
    ) -> Result<ModelVersion, DomainError> {
        self.check_secret_storage(new.endpoints.new_secret_field())?;
        self.authorize(actor, model).await?;
        let result = self.repo.create_version(model, new).await;
        self.invalidate(model).await;
        Ok(result?)
    }

    /// A page of a model's versions, newest first.
    pub async fn list_versions(
        &self,
        actor: &Principal,
        model: &ModelName,
        cursor: Option<&str>,
        limit: PageLimit,
    ) -> Result<Page<ModelVersion>, DomainError> {
        self.usable(actor, model).await?;
        let before = cursor.map(cursor::decode_version_cursor).transpose()?;
        let rows = self.repo.list_versions(model, before, limit).await?;
        Ok(paginate(rows, limit, |v| {
            cursor::encode_version_cursor(v.version)
        }))
    }

    /// One version (cached).
    pub async fn get_version(
        &self,
        actor: &Principal,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<ModelVersion, DomainError> {
        self.usable(actor, model).await?;
        self.version(model, version).await
    }

    async fn version(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<ModelVersion, DomainError> {
        self.cached(model, Field::Version(version), async {
            Ok(self.repo.get_version(model, version).await?)
        })
        .await
    }

    /// Changes a version's endpoint, framework, description or metadata.
    pub async fn update_version(
        &self,
        actor: &Principal,
        model: &ModelName,
        version: VersionNumber,
        patch: VersionPatch,
    ) -> Result<ModelVersion, DomainError> {
        self.check_secret_storage(
            patch
                .endpoints
                .as_ref()
                .and_then(EndpointsPatch::new_secret_field),
        )?;
        self.authorize(actor, model).await?;
        if patch.is_empty() {
            return self.version(model, version).await;
        }
        if let Some(EndpointsPatch::FirstKey(Some(_))) = &patch.endpoints
            && self.version(model, version).await?.endpoints.is_empty()
        {
            return Err(crate::error::ValidationError::new(
                "upstream_api_key",
                "the version has no endpoint to send it to: give endpoint_url or endpoints",
            )
            .into());
        }
        let result = self.repo.update_version(model, version, patch).await;
        self.invalidate(model).await;
        Ok(result?)
    }

    /// Deletes a version and the aliases on it.
    pub async fn delete_version(
        &self,
        actor: &Principal,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<(), DomainError> {
        self.authorize(actor, model).await?;
        let result = self.repo.delete_version(model, version).await;
        self.invalidate(model).await;
        Ok(result?)
    }
}

/// Grants: admins only.
impl Registry {
    /// Admins, with a key allowed to act on `model`.
    fn admins_only(actor: &Principal, model: &ModelName) -> Result<(), DomainError> {
        if actor.is_admin() {
            actor.check_key_allows(model)
        } else {
            Err(DomainError::Forbidden(
                "only admins may grant models to users".to_owned(),
            ))
        }
    }

    /// Lets `user` use `model` from its next call on, on every replica; returns the grant and
    /// whether it is new (granting again keeps the first).
    pub async fn grant(
        &self,
        actor: &Principal,
        model: &ModelName,
        user: &Username,
    ) -> Result<(Grant, bool), DomainError> {
        Self::admins_only(actor, model)?;
        let result = self.repo.grant(model, user).await;
        self.invalidate(model).await;
        Ok(result?)
    }

    /// Takes `user`'s grant of `model` back, from its next call on.
    pub async fn revoke_grant(
        &self,
        actor: &Principal,
        model: &ModelName,
        user: &Username,
    ) -> Result<(), DomainError> {
        Self::admins_only(actor, model)?;
        let result = self.repo.revoke_grant(model, user).await;
        self.invalidate(model).await;
        Ok(result?)
    }

    /// The users `model` is granted to.
    pub async fn list_grants(
        &self,
        actor: &Principal,
        model: &ModelName,
    ) -> Result<Vec<Grant>, DomainError> {
        Self::admins_only(actor, model)?;
        self.model(model).await?;
        Ok(self.repo.list_grants(model).await?)
    }
}

impl Registry {
    /// The version an inference call of `actor` goes to (cached): `name@alias`,
    /// `name:version`, or for a bare name the `production` alias when set, else the highest
    /// version with an endpoint. An alias that splits calls between versions sends all of
    /// `actor`'s key's calls to one of them ([`crate::alias`]). A model `actor` may not use is
    /// not found, and so is a version without endpoints.
    pub async fn resolve_target(
        &self,
        actor: &Principal,
        target: &Target,
    ) -> Result<ModelVersion, DomainError> {
        let model = &target.model;
        self.usable(actor, model).await?;
        // An alias's split is sticky per API key: the key's calls all go to one version.
        let version = match &target.selector {
            Selector::Alias(alias) => self.alias(model, alias).await?.pick(actor.key_id),
            Selector::Version(v) => Some(self.version(model, *v).await?),
            Selector::Default => self.default_target(model).await?.pick(actor.key_id),
        }
        .ok_or_else(|| model_not_found(model))?;
        if version.endpoints.is_empty() {
            return Err(DomainError::NotFound(format!(
                "version {} of model '{model}' has no endpoint to serve it",
                version.version
            )));
        }
        Ok(version)
    }

    /// Models `actor` may call (for `GET /v1/models`).
    pub async fn list_servable_models(
        &self,
        actor: &Principal,
    ) -> Result<Vec<ServableModel>, DomainError> {
        let filter = Self::scoped(actor, &ModelFilter::default());
        Ok(self.repo.list_servable_models(&filter).await?)
    }
}

/// Cuts the `limit + 1` rows a repository returns into a page and its next cursor.
fn paginate<T>(mut rows: Vec<T>, limit: PageLimit, key: impl Fn(&T) -> String) -> Page<T> {
    let limit = usize::from(limit.get());
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(key)
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

/// The credentials of `version`'s endpoints, in its order, taken from `stored` (the store's
/// endpoints now) by URL, so that none goes to a URL it was not stored for. Linear in the
/// endpoints for the usual case (same order), at most quadratic in [`MAX_ENDPOINTS`] otherwise.
///
/// [`MAX_ENDPOINTS`]: crate::serving::MAX_ENDPOINTS
fn matched_secrets(
    version: &ModelVersion,
    stored: Vec<(
        crate::values::EndpointUrl,
        Option<crate::inference::UpstreamSecret>,
    )>,
) -> Result<Vec<Option<crate::inference::UpstreamSecret>>, DomainError> {
    let bounded = &stored[..stored.len().min(crate::serving::MAX_ENDPOINTS)];
    version
        .endpoints
        .iter()
        .enumerate()
        .map(|(index, endpoint)| {
            let same_place = bounded.get(index).filter(|(url, _)| *url == endpoint.url);
            let found = same_place.or_else(|| bounded.iter().find(|(url, _)| *url == endpoint.url));
            match found {
                Some((_, secret @ Some(_))) => Ok(secret.clone()),
                _ if endpoint.has_upstream_api_key => Err(DomainError::Unavailable(format!(
                    "version {} of model '{}' changed while the call was routed; retry",
                    version.version, version.model
                ))),
                _ => Ok(None),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_has_a_cursor_only_when_more_rows_exist() {
        let limit = PageLimit::new(2).expect("valid");
        let full = paginate(vec![1, 2, 3], limit, |n| n.to_string());
        assert_eq!(full.items, [1, 2]);
        assert_eq!(full.next_cursor.as_deref(), Some("2"));
        let last = paginate(vec![1, 2], limit, |n| n.to_string());
        assert_eq!(last.next_cursor, None);
    }
}
