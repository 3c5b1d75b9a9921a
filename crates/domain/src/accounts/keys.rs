//! Keys: created (by their user, or by admins for anyone and with limits of their own), listed,
//! changed (their allowlist; admins: their token quotas) and revoked.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Accounts, CreatedKey, KeyRequest, admin_only};
use crate::error::{DomainError, ValidationError};
use crate::identity::{
    ApiKey, KeyName, ModelAllowlist, NewApiKey, PlaintextKey, Principal, RateLimitRpm, TokenQuotas,
    TokenQuotasPatch,
};
use crate::ports::Scope;
use crate::values::Username;

/// A change of a key ([`Accounts::update_key`]); `None` leaves a part as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    /// The models it may be used with (`Some(None)`: every model its user may use).
    pub models: Option<Option<ModelAllowlist>>,
    /// Admins only: its own token quotas.
    pub tokens: TokenQuotasPatch,
}

impl Accounts {
    /// Creates a key for the actor, or (admins only) for another user and with its own limit
    /// and token quotas.
    /// From a key with a models allowlist, the new key's allowlist must be within it (absent:
    /// the same). Past the user's active keys, a conflict.
    pub async fn create_key(
        &self,
        actor: &Principal,
        request: KeyRequest,
        now: DateTime<Utc>,
    ) -> Result<CreatedKey, DomainError> {
        if (request.user_id.is_some_and(|id| id != actor.user_id)
            || request.rate_limit_rpm.is_some()
            || request.tokens != TokenQuotas::default())
            && !actor.is_admin()
        {
            return Err(DomainError::Forbidden(
                "only admins may create keys for other users or set rate_limit_rpm, tpm or \
                 monthly_tokens"
                    .to_owned(),
            ));
        }
        if request.expires_at.is_some_and(|at| at <= now) {
            return Err(ValidationError::new("expires_at", "must be in the future").into());
        }
        let models = within_actors_allowlist(actor, request.models)?;
        self.issue_key(
            request.user_id.unwrap_or(actor.user_id),
            NewKeyParts {
                name: request.name,
                expires_at: request.expires_at,
                rate_limit_rpm: request.rate_limit_rpm,
                models,
                tokens: request.tokens,
            },
            self.max_keys_per_user,
        )
        .await
    }

    /// Changes the models a key of the actor (admins: any key) may be used with; `None`: every
    /// model its user may use. From a key with an allowlist, only within it. The very next
    /// request with the key sees the change, on every replica.
    pub async fn set_key_models(
        &self,
        actor: &Principal,
        id: Uuid,
        models: Option<ModelAllowlist>,
    ) -> Result<ApiKey, DomainError> {
        let key = self.repo.get_key(id).await?;
        if key.user_id != actor.user_id && !actor.is_admin() {
            return Err(DomainError::NotFound(format!("API key {id} not found")));
        }
        let models = within_actors_allowlist(actor, models)?;
        let (key, hash) = self.repo.set_key_models(id, models).await?;
        self.cache.invalidate(&Scope::Key(hash)).await;
        Ok(key)
    }

    /// Changes a key of the actor (admins: any key): its models allowlist (within the actor's
    /// own, as [`set_key_models`](Self::set_key_models)) and, admins only, its token quotas.
    /// The very next request with the key sees the change, on every replica.
    pub async fn update_key(
        &self,
        actor: &Principal,
        id: Uuid,
        update: KeyUpdate,
    ) -> Result<ApiKey, DomainError> {
        if update.models.is_none() && update.tokens.is_empty() {
            return Err(ValidationError::new(
                "models",
                "is required unless tpm or monthly_tokens is given",
            )
            .into());
        }
        let key = self.repo.get_key(id).await?;
        if key.user_id != actor.user_id && !actor.is_admin() {
            return Err(DomainError::NotFound(format!("API key {id} not found")));
        }
        if !update.tokens.is_empty() {
            admin_only(actor)?;
        }
        let models = update
            .models
            .map(|models| within_actors_allowlist(actor, models))
            .transpose()?;
        let (mut updated, mut hash) = (key, None);
        if let Some(models) = models {
            let (key, key_hash) = self.repo.set_key_models(id, models).await?;
            (updated, hash) = (key, Some(key_hash));
        }
        if !update.tokens.is_empty() {
            let (key, key_hash) = self.repo.set_key_quotas(id, update.tokens).await?;
            (updated, hash) = (key, Some(key_hash));
        }
        if let Some(hash) = hash {
            self.cache.invalidate(&Scope::Key(hash)).await;
        }
        Ok(updated)
    }

    /// Creates a key for a user without an actor: for operators at the command line.
    pub async fn create_key_as_operator(
        &self,
        username: &Username,
        name: KeyName,
    ) -> Result<CreatedKey, DomainError> {
        let user = self.repo.get_user(username).await?;
        let parts = NewKeyParts {
            name,
            expires_at: None,
            rate_limit_rpm: None,
            models: None,
            tokens: TokenQuotas::default(),
        };
        // Operators are not bound by max_keys_per_user: it protects the gateway from members.
        self.issue_key(user.id, parts, None).await
    }

    async fn issue_key(
        &self,
        user_id: Uuid,
        parts: NewKeyParts,
        max_active: Option<u32>,
    ) -> Result<CreatedKey, DomainError> {
        let plaintext = PlaintextKey::generate()
            .map_err(|e| DomainError::Internal(format!("no randomness: {e}")))?;
        let new = NewApiKey {
            user_id,
            name: parts.name,
            hash: plaintext.hash(),
            prefix: plaintext.display_prefix(),
            expires_at: parts.expires_at,
            rate_limit_rpm: parts.rate_limit_rpm,
            models: parts.models,
            tokens: parts.tokens,
        };
        let key = self.repo.create_key(new, max_active).await?;
        self.unknown.forget(&plaintext.hash());
        self.cache.invalidate(&Scope::Key(plaintext.hash())).await;
        Ok(CreatedKey { key, plaintext })
    }

    /// The keys of the actor, or (admins only) of `user_id`.
    pub async fn list_keys(
        &self,
        actor: &Principal,
        user_id: Option<Uuid>,
    ) -> Result<Vec<ApiKey>, DomainError> {
        let owner = user_id.unwrap_or(actor.user_id);
        if owner != actor.user_id {
            admin_only(actor)?;
        }
        Ok(self.repo.list_keys(owner).await?)
    }

    /// Revokes a key of the actor (admins: any key). The very next request with it is refused,
    /// on every replica: the cached lookup is dropped before this returns.
    pub async fn revoke_key(&self, actor: &Principal, id: Uuid) -> Result<ApiKey, DomainError> {
        let key = self.repo.get_key(id).await?;
        if key.user_id != actor.user_id && !actor.is_admin() {
            // Same answer as a missing key: members cannot probe other users' key ids.
            return Err(DomainError::NotFound(format!("API key {id} not found")));
        }
        let (key, hash) = self.repo.revoke_key(id).await?;
        self.cache.invalidate(&Scope::Key(hash)).await;
        Ok(key)
    }
}

/// What a new key is made of, besides its user and the key itself.
struct NewKeyParts {
    name: KeyName,
    expires_at: Option<DateTime<Utc>>,
    rate_limit_rpm: Option<RateLimitRpm>,
    models: Option<ModelAllowlist>,
    tokens: TokenQuotas,
}

/// The allowlist a key made or changed by `actor` gets: what was asked, which must be within
/// the actor's own allowlist when it has one (nothing asked: the actor's).
fn within_actors_allowlist(
    actor: &Principal,
    asked: Option<ModelAllowlist>,
) -> Result<Option<ModelAllowlist>, DomainError> {
    match (&actor.models, asked) {
        (None, asked) => Ok(asked),
        (Some(own), None) => Ok(Some(own.clone())),
        (Some(own), Some(asked)) if asked.is_within(own) => Ok(Some(asked)),
        (Some(_), Some(_)) => Err(DomainError::Forbidden(
            "models: a key with an allowlist may only give keys models on its own list".to_owned(),
        )),
    }
}
