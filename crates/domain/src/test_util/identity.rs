//! [`InMemoryIdentity`]: users and API keys in memory, answering as `PgIdentityRepository` does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::support::{Clock, Controls};
use crate::error::RepoError;
use crate::identity::{
    ApiKey, KeyHash, KeyRecord, ModelAllowlist, NewApiKey, NewUser, Role, TokenQuotas,
    TokenQuotasPatch, User, UserPatch,
};
use crate::ports::IdentityRepository;
use crate::values::{PageLimit, Username};

/// Users and API keys (their hashes) in memory.
///
/// As in Postgres: usernames and key hashes are unique, users sort bytewise, a user's keys are
/// listed newest first, a key past the user's `max_active` active keys (neither revoked nor
/// expired) is a [`RepoError::Conflict`] (checked and stored in one step, as the row lock makes
/// it in Postgres), revoking keeps the first revocation time, `touch_keys` keeps the latest
/// time of each key and never moves `last_used_at` backwards (unknown keys are ignored), the last
/// enabled admin can be neither demoted nor disabled ([`RepoError::Conflict`]; a patch that
/// changes nothing is not checked), and [`bootstrap_admin`](IdentityRepository::bootstrap_admin)
/// creates the admin and its key together or not at all, only while no admin exists (a disabled
/// one counts). Timestamps come from the system clock in whole microseconds, each later than the
/// one before.
#[derive(Debug, Default)]
pub struct InMemoryIdentity {
    directory: Directory,
    clock: Clock,
    controls: Controls,
}

/// The users and keys of an [`InMemoryIdentity`], shared with an
/// [`InMemoryRegistry`](super::InMemoryRegistry) that checks model owners against them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Directory(Arc<Mutex<Users>>);

#[derive(Debug, Default)]
pub(crate) struct Users {
    users: BTreeMap<Username, User>,
    /// Keys in creation order, each with its hash.
    keys: Vec<(ApiKey, KeyHash)>,
}

impl Directory {
    fn lock(&self) -> MutexGuard<'_, Users> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The name of user `id`, if it exists.
    pub(crate) fn username_of(&self, id: Uuid) -> Option<Username> {
        self.lock().user_by_id(id).map(|u| u.username.clone())
    }

    /// The id of the user named `username`, if there is one.
    pub(crate) fn id_of(&self, username: &Username) -> Option<Uuid> {
        self.lock().users.get(username).map(|u| u.id)
    }
}

fn user_not_found(username: &Username) -> RepoError {
    RepoError::NotFound(format!("user '{username}' not found"))
}

fn user_id_not_found(id: Uuid) -> RepoError {
    RepoError::NotFound(format!("user {id} not found"))
}

fn key_not_found(id: Uuid) -> RepoError {
    RepoError::NotFound(format!("API key {id} not found"))
}

/// The same words as Postgres's adapter.
fn too_many_keys(max: u32) -> RepoError {
    RepoError::Conflict(format!(
        "the user already has {max} active API keys, the most allowed \
         (auth.max_keys_per_user); revoke one first"
    ))
}

impl Users {
    fn user_by_id(&self, id: Uuid) -> Option<&User> {
        self.users.values().find(|u| u.id == id)
    }

    fn enabled_admins(&self) -> usize {
        self.users
            .values()
            .filter(|u| u.role == Role::Admin && !u.disabled)
            .count()
    }

    /// Stores a key for `user_id`, which must exist and hold fewer than `max_active` active
    /// keys; its hash must be new.
    fn insert_key(
        &mut self,
        user_id: Uuid,
        new: NewApiKey,
        max_active: Option<u32>,
        now: DateTime<Utc>,
    ) -> Result<ApiKey, RepoError> {
        if self.user_by_id(user_id).is_none() {
            return Err(user_id_not_found(user_id));
        }
        if let Some(max) = max_active {
            let active = self
                .keys
                .iter()
                .filter(|(k, _)| {
                    k.user_id == user_id
                        && k.revoked_at.is_none()
                        && k.expires_at.is_none_or(|at| at > now)
                })
                .count();
            if active >= usize::try_from(max).unwrap_or(usize::MAX) {
                return Err(too_many_keys(max));
            }
        }
        if self.keys.iter().any(|(_, hash)| *hash == new.hash) {
            // Like Postgres's message, it never shows the hash.
            return Err(RepoError::Conflict(
                "an API key with the same hash is already stored".to_owned(),
            ));
        }
        let key = ApiKey {
            id: Uuid::new_v4(),
            user_id,
            name: new.name,
            prefix: new.prefix,
            created_at: now,
            expires_at: new.expires_at,
            revoked_at: None,
            last_used_at: None,
            rate_limit_rpm: new.rate_limit_rpm,
            models: new.models,
            tokens: new.tokens,
        };
        self.keys.push((key.clone(), new.hash));
        Ok(key)
    }

    fn new_user(new: NewUser, now: DateTime<Utc>) -> User {
        User {
            id: Uuid::new_v4(),
            username: new.username,
            role: new.role,
            disabled: false,
            created_at: now,
            rate_limit_rpm: new.rate_limit_rpm,
            tokens: new.tokens,
        }
    }
}

impl InMemoryIdentity {
    /// No users, no keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Call counts, the outage switch and holds (see [`Controls`]).
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    pub(crate) fn directory(&self) -> Directory {
        self.directory.clone()
    }

    /// Runs one operation: counted, failed while the store is switched off, and held if a test
    /// asked to hold it.
    async fn run<T>(
        &self,
        op: &'static str,
        work: impl FnOnce(&mut Users, DateTime<Utc>) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        self.controls.enter(op)?;
        let result = {
            let now = self.clock.now();
            work(&mut self.directory.lock(), now)
        };
        self.controls.leave(op).await;
        result
    }
}

#[async_trait]
impl IdentityRepository for InMemoryIdentity {
    async fn create_user(&self, new: NewUser) -> Result<User, RepoError> {
        self.run("create_user", |users, now| {
            if users.users.contains_key(&new.username) {
                return Err(RepoError::Conflict(format!(
                    "user '{}' already exists",
                    new.username
                )));
            }
            let user = Users::new_user(new, now);
            users.users.insert(user.username.clone(), user.clone());
            Ok(user)
        })
        .await
    }

    async fn get_user(&self, username: &Username) -> Result<User, RepoError> {
        self.run("get_user", |users, _| {
            users
                .users
                .get(username)
                .cloned()
                .ok_or_else(|| user_not_found(username))
        })
        .await
    }

    async fn get_user_by_id(&self, id: Uuid) -> Result<User, RepoError> {
        self.run("get_user_by_id", |users, _| {
            users
                .user_by_id(id)
                .cloned()
                .ok_or_else(|| user_id_not_found(id))
        })
        .await
    }

    async fn list_users(
        &self,
        after: Option<&Username>,
        limit: PageLimit,
    ) -> Result<Vec<User>, RepoError> {
        self.run("list_users", |users, _| {
            Ok(users
                .users
                .values()
                .filter(|u| after.is_none_or(|after| u.username > *after))
                .take(usize::from(limit.get()) + 1)
                .cloned()
                .collect())
        })
        .await
    }

    async fn update_user(&self, username: &Username, patch: UserPatch) -> Result<User, RepoError> {
        self.run("update_user", |users, _| {
            let before = users.enabled_admins();
            let user = users
                .users
                .get(username)
                .ok_or_else(|| user_not_found(username))?;
            if patch == UserPatch::default() {
                return Ok(user.clone());
            }
            let changed = User {
                role: patch.role.unwrap_or(user.role),
                disabled: patch.disabled.unwrap_or(user.disabled),
                rate_limit_rpm: patch.rate_limit_rpm.unwrap_or(user.rate_limit_rpm),
                tokens: patch.tokens.applied_to(user.tokens),
                ..user.clone()
            };
            let was_enabled_admin = user.role == Role::Admin && !user.disabled;
            let is_enabled_admin = changed.role == Role::Admin && !changed.disabled;
            let after = before - usize::from(was_enabled_admin) + usize::from(is_enabled_admin);
            if before > 0 && after == 0 {
                return Err(RepoError::Conflict(format!(
                    "'{username}' is the last enabled admin: it cannot be demoted or disabled"
                )));
            }
            users.users.insert(username.clone(), changed.clone());
            Ok(changed)
        })
        .await
    }

    async fn create_key(
        &self,
        new: NewApiKey,
        max_active: Option<u32>,
    ) -> Result<ApiKey, RepoError> {
        self.run("create_key", |users, now| {
            users.insert_key(new.user_id, new, max_active, now)
        })
        .await
    }

    async fn set_key_models(
        &self,
        id: Uuid,
        models: Option<ModelAllowlist>,
    ) -> Result<(ApiKey, KeyHash), RepoError> {
        self.run("set_key_models", |users, _| {
            let (key, hash) = users
                .keys
                .iter_mut()
                .find(|(k, _)| k.id == id)
                .ok_or_else(|| key_not_found(id))?;
            key.models = models;
            Ok((key.clone(), *hash))
        })
        .await
    }

    async fn set_key_quotas(
        &self,
        id: Uuid,
        patch: TokenQuotasPatch,
    ) -> Result<(ApiKey, KeyHash), RepoError> {
        self.run("set_key_quotas", |users, _| {
            let (key, hash) = users
                .keys
                .iter_mut()
                .find(|(k, _)| k.id == id)
                .ok_or_else(|| key_not_found(id))?;
            key.tokens = patch.applied_to(key.tokens);
            Ok((key.clone(), *hash))
        })
        .await
    }

    async fn get_key(&self, id: Uuid) -> Result<ApiKey, RepoError> {
        self.run("get_key", |users, _| {
            users
                .keys
                .iter()
                .find(|(k, _)| k.id == id)
                .map(|(k, _)| k.clone())
                .ok_or_else(|| key_not_found(id))
        })
        .await
    }

    async fn list_keys(&self, user_id: Uuid) -> Result<Vec<ApiKey>, RepoError> {
        self.run("list_keys", |users, _| {
            let mut keys: Vec<ApiKey> = users
                .keys
                .iter()
                .filter(|(k, _)| k.user_id == user_id)
                .map(|(k, _)| k.clone())
                .collect();
            keys.sort_by_key(|k| std::cmp::Reverse((k.created_at, k.id)));
            Ok(keys)
        })
        .await
    }

    async fn revoke_key(&self, id: Uuid) -> Result<(ApiKey, KeyHash), RepoError> {
        self.run("revoke_key", |users, now| {
            let (key, hash) = users
                .keys
                .iter_mut()
                .find(|(k, _)| k.id == id)
                .ok_or_else(|| key_not_found(id))?;
            key.revoked_at = key.revoked_at.or(Some(now));
            Ok((key.clone(), *hash))
        })
        .await
    }

    async fn key_hashes_of_user(&self, user_id: Uuid) -> Result<Vec<KeyHash>, RepoError> {
        self.run("key_hashes_of_user", |users, _| {
            Ok(users
                .keys
                .iter()
                .filter(|(k, _)| k.user_id == user_id)
                .map(|(_, hash)| *hash)
                .collect())
        })
        .await
    }

    async fn find_key(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, RepoError> {
        self.run("find_key", |users, _| {
            let Some((key, _)) = users.keys.iter().find(|(_, h)| h == hash) else {
                return Ok(None);
            };
            let user = users
                .user_by_id(key.user_id)
                .cloned()
                .ok_or_else(|| RepoError::Internal(format!("key {} has no user", key.id)))?;
            Ok(Some(KeyRecord {
                key: key.clone(),
                user,
            }))
        })
        .await
    }

    async fn touch_keys(&self, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), RepoError> {
        self.run("touch_keys", |users, _| {
            for &(id, at) in used {
                if let Some((key, _)) = users.keys.iter_mut().find(|(k, _)| k.id == id) {
                    key.last_used_at = key.last_used_at.max(Some(at));
                }
            }
            Ok(())
        })
        .await
    }

    async fn bootstrap_admin(
        &self,
        username: &Username,
        key: NewApiKey,
    ) -> Result<Option<User>, RepoError> {
        self.run("bootstrap_admin", |users, now| {
            if users.users.values().any(|u| u.role == Role::Admin) {
                return Ok(None);
            }
            if users.users.contains_key(username) {
                return Err(RepoError::Conflict(format!(
                    "user '{username}' already exists and is not an admin"
                )));
            }
            if users.keys.iter().any(|(_, hash)| *hash == key.hash) {
                return Err(RepoError::Conflict(
                    "an API key with the same hash is already stored".to_owned(),
                ));
            }
            let admin = Users::new_user(
                NewUser {
                    username: username.clone(),
                    role: Role::Admin,
                    rate_limit_rpm: None,
                    tokens: TokenQuotas::default(),
                },
                now,
            );
            users.users.insert(admin.username.clone(), admin.clone());
            users.insert_key(admin.id, key, None, now)?;
            Ok(Some(admin))
        })
        .await
    }
}
