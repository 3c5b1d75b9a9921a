//! Identity use-cases: authentication (cached), users and API keys, and the batched
//! `last_used_at` bookkeeping that keeps writes off the request path.
//!
//! # Who may do what
//! - Admins alone manage users (and set a user's `rate_limit_rpm`) and other users' keys.
//! - Everyone creates, lists and revokes their own keys, at most
//!   [`with_max_keys_per_user`](Accounts::with_max_keys_per_user) active ones (409 beyond).
//! - A key with a models allowlist creates and changes keys only within that allowlist: a
//!   restricted key cannot mint a less restricted one.
//!
//! # What a made-up key costs
//! Nothing before [`PlaintextKey::read`]: a key in the gateway's checked format whose checksum
//! fails is refused without any lookup; so is every key from an address past
//! [`FailedAuthLimit`]. A well-formed unknown key costs one lookup in the store, and is then
//! remembered as unknown in this process only ([`UnknownKeys`]), never in the shared cache.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{DomainError, ValidationError};
use crate::identity::{
    ApiKey, AuthFailure, KeyHash, KeyName, KeyRecord, ModelAllowlist, NewApiKey, NewUser,
    PlaintextKey, Principal, RateLimitRpm, TokenQuotas, User, UserPatch,
};
use crate::model::Page;
use crate::ports::{Cache, CacheLookup, Field, IdentityRepository, Scope};
use crate::values::{PageLimit, Username};

mod failures;
mod keys;
mod unknown;

pub use failures::FailedAuthLimit;
pub use keys::KeyUpdate;
use unknown::UnknownKeys;

/// Why authentication failed: the client sees one 401 either way, or 429 when throttled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The key is not acceptable; the reason is for logs and metrics only.
    Refused(AuthFailure),
    /// The client's address failed too often lately ([`FailedAuthLimit`]); nothing was looked
    /// at.
    Throttled {
        /// Seconds until one more attempt would be looked at.
        retry_after_seconds: u64,
    },
    /// The key could not be checked (database down).
    Unavailable(String),
}

/// How long a key the store does not know is remembered as unknown, unless
/// [`Accounts::with_unknown_keys`] says otherwise.
pub const DEFAULT_UNKNOWN_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// How many unknown keys are remembered at most, unless [`Accounts::with_unknown_keys`] says
/// otherwise.
pub const DEFAULT_UNKNOWN_KEYS: usize = 10_000;

/// What a key is asked for with ([`Accounts::create_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRequest {
    /// Its label.
    pub name: KeyName,
    /// When it stops working (in the future).
    pub expires_at: Option<DateTime<Utc>>,
    /// Admins only: the user it is for (default: the actor).
    pub user_id: Option<Uuid>,
    /// Admins only: its own limit.
    pub rate_limit_rpm: Option<RateLimitRpm>,
    /// The models it may be used with; `None`: every model its user may use (or, from a key
    /// with an allowlist, that key's allowlist).
    pub models: Option<ModelAllowlist>,
    /// Admins only: its own token quotas.
    pub tokens: TokenQuotas,
}

impl KeyRequest {
    /// A key labelled `name` for the actor, with nothing else set.
    pub fn named(name: KeyName) -> Self {
        Self {
            name,
            expires_at: None,
            user_id: None,
            rate_limit_rpm: None,
            models: None,
            tokens: TokenQuotas::default(),
        }
    }
}

/// Keys used since the last flush, with the latest use of each. Recording is a map insert;
/// [`Accounts::flush_key_usage`] writes them all in one statement.
#[derive(Debug, Default)]
pub struct KeyUsage {
    pending: Mutex<HashMap<Uuid, DateTime<Utc>>>,
}

impl KeyUsage {
    /// Notes that `key_id` was used at `at`.
    pub fn record(&self, key_id: Uuid, at: DateTime<Utc>) {
        if let Ok(mut pending) = self.pending.lock() {
            let slot = pending.entry(key_id).or_insert(at);
            if *slot < at {
                *slot = at;
            }
        }
    }

    fn take(&self) -> Vec<(Uuid, DateTime<Utc>)> {
        self.pending
            .lock()
            .map(|mut p| p.drain().collect())
            .unwrap_or_default()
    }

    fn put_back(&self, used: Vec<(Uuid, DateTime<Utc>)>) {
        for (id, at) in used {
            self.record(id, at);
        }
    }
}

/// What creating a key returns: the stored key and, once only, the key itself.
#[derive(Debug)]
pub struct CreatedKey {
    /// The stored key (no secret).
    pub key: ApiKey,
    /// The plaintext key; shown to its owner once and never again.
    pub plaintext: PlaintextKey,
}

/// Identity use-cases.
#[derive(Clone)]
pub struct Accounts {
    repo: Arc<dyn IdentityRepository>,
    cache: Arc<dyn Cache>,
    usage: Arc<KeyUsage>,
    unknown: Arc<UnknownKeys>,
    failures: Arc<FailedAuthLimit>,
    /// Active keys a user may hold; `None`: no bound.
    max_keys_per_user: Option<u32>,
}

fn admin_only(actor: &Principal) -> Result<(), DomainError> {
    if actor.is_admin() {
        Ok(())
    } else {
        Err(DomainError::Forbidden(
            "only admins may manage users and other users' keys".to_owned(),
        ))
    }
}

impl Accounts {
    /// Identity use-cases over a store and a cache of key lookups (use a short TTL).
    ///
    /// Unknown keys are remembered in process for [`DEFAULT_UNKNOWN_KEY_TTL`] (at most
    /// [`DEFAULT_UNKNOWN_KEYS`]); failed authentications are not limited and a user may hold
    /// any number of keys until the `with_` methods say otherwise.
    pub fn new(repo: Arc<dyn IdentityRepository>, cache: Arc<dyn Cache>) -> Self {
        Self {
            repo,
            cache,
            usage: Arc::new(KeyUsage::default()),
            unknown: Arc::new(UnknownKeys::new(
                DEFAULT_UNKNOWN_KEY_TTL,
                DEFAULT_UNKNOWN_KEYS,
            )),
            failures: Arc::new(FailedAuthLimit::off()),
            max_keys_per_user: None,
        }
    }

    /// Remembers keys the store does not know for `ttl`, at most `max_entries` of them, in this
    /// process (zero for either: not at all).
    #[must_use]
    pub fn with_unknown_keys(mut self, ttl: std::time::Duration, max_entries: usize) -> Self {
        self.unknown = Arc::new(UnknownKeys::new(ttl, max_entries));
        self
    }

    /// Limits failed authentications per client address (see [`FailedAuthLimit`]).
    #[must_use]
    pub fn with_failed_auth_limit(mut self, limit: FailedAuthLimit) -> Self {
        self.failures = Arc::new(limit);
        self
    }

    /// At most `max` active (neither revoked nor expired) keys per user, enforced atomically by
    /// the store; creating one more is a conflict (409).
    #[must_use]
    pub fn with_max_keys_per_user(mut self, max: u32) -> Self {
        self.max_keys_per_user = Some(max);
        self
    }

    /// [`authenticate_from`](Self::authenticate_from) without a client address: no limit of
    /// failures applies.
    pub async fn authenticate(
        &self,
        raw: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Principal, AuthError> {
        self.authenticate_from(None, raw, now).await
    }

    /// Checks a key sent from `client` and returns who it acts as.
    ///
    /// In order, each step only if the one before passed: the client's failures
    /// ([`AuthError::Throttled`], nothing looked up); the key's shape and checksum (no lookup);
    /// the unknown keys remembered in process (no lookup); the cached lookup (revocation,
    /// disabling and role changes invalidate it, so a refused key is refused on every replica
    /// at once); the store. Every refusal but a missing key counts as a failure of `client`.
    pub async fn authenticate_from(
        &self,
        client: Option<IpAddr>,
        raw: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Principal, AuthError> {
        if let Some(client) = client
            && let Err(retry_after_seconds) = self.failures.check(client, now)
        {
            return Err(AuthError::Throttled {
                retry_after_seconds,
            });
        }
        let mut taken = false;
        let result = self.authenticate_key(raw, now, client, &mut taken).await;
        if let Some(client) = client {
            match &result {
                // What the lookup took ahead stands as this failure.
                Err(AuthError::Refused(_)) if taken => {}
                Err(AuthError::Refused(reason)) if *reason != AuthFailure::Missing => {
                    self.failures.record(client, now);
                }
                // Found usable, or the store failed: not the client's fault.
                Ok(_) | Err(AuthError::Unavailable(_)) if taken => {
                    self.failures.give_back(client);
                }
                _ => {}
            }
        }
        result
    }

    async fn authenticate_key(
        &self,
        raw: Option<&str>,
        now: DateTime<Utc>,
        client: Option<IpAddr>,
        taken: &mut bool,
    ) -> Result<Principal, AuthError> {
        let raw = raw.ok_or(AuthError::Refused(AuthFailure::Missing))?;
        let key = PlaintextKey::read(raw).map_err(AuthError::Refused)?;
        let hash = key.hash();
        if self.unknown.contains(&hash, now) {
            return Err(AuthError::Refused(AuthFailure::Unknown));
        }
        let record = self.lookup(&hash, now, client, taken).await?;
        let Some(record) = record else {
            self.unknown.insert(hash, now);
            return Err(AuthError::Refused(AuthFailure::Unknown));
        };
        if record.key.revoked_at.is_some() {
            return Err(AuthError::Refused(AuthFailure::Revoked));
        }
        if record.key.expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::Refused(AuthFailure::Expired));
        }
        if record.user.disabled {
            return Err(AuthError::Refused(AuthFailure::Disabled));
        }
        self.usage.record(record.key.id, now);
        Ok(Principal::from(&record))
    }

    /// The key with this hash, cached when usable. Unknown keys are not cached here (the caller
    /// remembers them in process: anyone can make up keys, and each would be an entry in the
    /// shared cache), nor are revoked keys and disabled users. An "unknown" cached by an older
    /// build is still read as such (creating a key drops it).
    ///
    /// A lookup that goes to the store (the costly step anyone can cause with made-up keys)
    /// from an address that failed recently first takes one failure of its allowance (`taken`),
    /// so that it never has more of them in flight than its allowance: lookups at once from
    /// many connections would otherwise all pass the check before the next failure is counted.
    async fn lookup(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
        client: Option<IpAddr>,
        taken: &mut bool,
    ) -> Result<Option<KeyRecord>, AuthError> {
        let scope = Scope::Key(*hash);
        let token = match self.cache.lookup(&scope, &Field::Key).await {
            CacheLookup::Hit(cached) => {
                let decoded =
                    cached.decode(|bytes| serde_json::from_slice::<Option<KeyRecord>>(bytes).ok());
                if let Some(record) = decoded {
                    return Ok(record);
                }
                Some(crate::ports::FillToken(None))
            }
            CacheLookup::Miss(token) => Some(token),
            CacheLookup::Bypass => None,
        };
        if let Some(client) = client {
            *taken = self
                .failures
                .take(client, now)
                .map_err(|retry_after_seconds| AuthError::Throttled {
                    retry_after_seconds,
                })?;
        }
        let found = self.repo.find_key(hash).await.map_err(|e| match e {
            crate::RepoError::NotFound(_) => AuthError::Refused(AuthFailure::Unknown),
            other => AuthError::Unavailable(other.to_string()),
        })?;
        let cacheable = found
            .as_ref()
            .is_some_and(|r| r.key.revoked_at.is_none() && !r.user.disabled);
        if let Some(token) = token
            && cacheable
            && let Ok(bytes) = serde_json::to_vec(&found)
        {
            self.cache.fill(&scope, &Field::Key, token, bytes).await;
        }
        Ok(found)
    }

    /// Writes the `last_used_at` of every key used since the last flush, in one statement.
    /// On failure the uses are kept for the next flush. Returns how many keys were written.
    pub async fn flush_key_usage(&self) -> Result<usize, DomainError> {
        let used = self.usage.take();
        if used.is_empty() {
            return Ok(0);
        }
        match self.repo.touch_keys(&used).await {
            Ok(()) => Ok(used.len()),
            Err(e) => {
                self.usage.put_back(used);
                Err(e.into())
            }
        }
    }

    /// Creates a user (admins only).
    pub async fn create_user(&self, actor: &Principal, new: NewUser) -> Result<User, DomainError> {
        admin_only(actor)?;
        Ok(self.repo.create_user(new).await?)
    }

    /// Creates a user without an actor: for operators at the command line.
    pub async fn create_user_as_operator(&self, new: NewUser) -> Result<User, DomainError> {
        Ok(self.repo.create_user(new).await?)
    }

    /// A page of users by name (admins only).
    pub async fn list_users(
        &self,
        actor: &Principal,
        cursor: Option<&str>,
        limit: PageLimit,
    ) -> Result<Page<User>, DomainError> {
        admin_only(actor)?;
        let after = cursor.map(decode_user_cursor).transpose()?;
        let mut rows = self.repo.list_users(after.as_ref(), limit).await?;
        let next_cursor = if rows.len() > usize::from(limit.get()) {
            rows.truncate(usize::from(limit.get()));
            rows.last().map(|u| encode_user_cursor(&u.username))
        } else {
            None
        };
        Ok(Page {
            items: rows,
            next_cursor,
        })
    }

    /// The actor's own user.
    pub async fn me(&self, actor: &Principal) -> Result<User, DomainError> {
        Ok(self.repo.get_user_by_id(actor.user_id).await?)
    }

    /// Changes a user's role, disabled flag or limit (admins only); the user's cached key
    /// lookups are dropped before this returns, so the change applies to its next request on
    /// every replica.
    pub async fn update_user(
        &self,
        actor: &Principal,
        username: &Username,
        patch: UserPatch,
    ) -> Result<User, DomainError> {
        admin_only(actor)?;
        let user = self.repo.update_user(username, patch).await?;
        for hash in self.repo.key_hashes_of_user(user.id).await? {
            self.cache.invalidate(&Scope::Key(hash)).await;
        }
        Ok(user)
    }

    /// At start-up: if no admin exists, creates user `admin` holding `key`. Safe when several
    /// replicas start at once. Returns the user when it was created.
    pub async fn bootstrap_admin(&self, key: &PlaintextKey) -> Result<Option<User>, DomainError> {
        let username = Username::parse("admin")?;
        let new = NewApiKey {
            user_id: Uuid::nil(),
            name: KeyName::parse("bootstrap".to_owned())?,
            hash: key.hash(),
            prefix: key.display_prefix(),
            expires_at: None,
            rate_limit_rpm: None,
            models: None,
            tokens: TokenQuotas::default(),
        };
        let created = self.repo.bootstrap_admin(&username, new).await?;
        if created.is_some() {
            self.unknown.forget(&key.hash());
            self.cache.invalidate(&Scope::Key(key.hash())).await;
        }
        Ok(created)
    }
}

fn encode_user_cursor(last: &Username) -> String {
    crate::cursor::encode_tagged("u:", last.as_str())
}

fn decode_user_cursor(raw: &str) -> Result<Username, ValidationError> {
    crate::cursor::decode_tagged(raw, "u:")
        .and_then(|s| Username::parse(s).map_err(|_| crate::cursor::bad_cursor()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_usage_keeps_the_latest_use_of_each_key() {
        let usage = KeyUsage::default();
        let key = Uuid::new_v4();
        let early = DateTime::<Utc>::from_timestamp(1_000, 0).expect("valid");
        let late = DateTime::<Utc>::from_timestamp(2_000, 0).expect("valid");
        usage.record(key, late);
        usage.record(key, early);
        usage.record(Uuid::new_v4(), early);
        let mut taken = usage.take();
        taken.sort_by_key(|(_, at)| *at);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[1], (key, late));
        assert!(usage.take().is_empty(), "taking empties it");
    }
}
