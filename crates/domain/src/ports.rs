//! Ports: the traits that storage, cache and health adapters implement. The domain and the api
//! see only these; adapters live in other crates.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use thiserror::Error;
use uuid::Uuid;

use crate::alias::{AliasSplit, ResolvedAlias};
use crate::error::{RepoError, ValidationError};
use crate::identity::{
    ApiKey, KeyHash, KeyRecord, ModelAllowlist, NewApiKey, NewUser, TokenQuotasPatch, User,
    UserPatch,
};
use crate::inference::{ServableModel, UpstreamSecret, UsageEvent, UsageQuery, UsageRow};
use crate::model::{
    Alias, Grant, Model, ModelFilter, ModelPatch, ModelVersion, NewModel, NewVersion, VersionPatch,
};
use crate::values::{AliasName, EndpointUrl, ModelName, PageLimit, Username, VersionNumber};

mod rate;
mod tokens;

pub use rate::{Allowance, RateDecision, RateLimit, RateLimiter, RateRequest, UserRateLimit};
pub use tokens::{
    Admission, Counters, LimiterUnavailable, Month, MonthSeed, QuotaSubject, RateFigures,
    Reservation, Settlement, TokenDecision, TokenLimiter, TokenLimits, TokenRefusal, TokenRequest,
    WindowFigures,
};

/// Durable storage of the model registry.
///
/// Methods that address a model or version that does not exist return
/// [`RepoError::NotFound`] with a message naming it.
#[async_trait]
pub trait RegistryRepository: Send + Sync {
    /// Inserts a model; [`RepoError::Conflict`] if the name is taken.
    async fn create_model(&self, new: NewModel) -> Result<Model, RepoError>;
    /// One model by name.
    async fn get_model(&self, name: &ModelName) -> Result<Model, RepoError>;
    /// Models ordered by name, strictly after `after`, at most `limit + 1` of them (the extra one
    /// tells the caller a further page exists).
    async fn list_models(
        &self,
        filter: &ModelFilter,
        after: Option<&ModelName>,
        limit: PageLimit,
    ) -> Result<Vec<Model>, RepoError>;
    /// Applies a patch and bumps `updated_at`.
    async fn update_model(&self, name: &ModelName, patch: ModelPatch) -> Result<Model, RepoError>;
    /// Deletes a model with its versions and aliases.
    async fn delete_model(&self, name: &ModelName) -> Result<(), RepoError>;

    /// Adds the next version (gapless per model, safe under concurrent calls).
    async fn create_version(
        &self,
        model: &ModelName,
        new: NewVersion,
    ) -> Result<ModelVersion, RepoError>;
    /// Versions newest first, strictly below `before`, at most `limit + 1` of them.
    async fn list_versions(
        &self,
        model: &ModelName,
        before: Option<VersionNumber>,
        limit: PageLimit,
    ) -> Result<Vec<ModelVersion>, RepoError>;
    /// One version.
    async fn get_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<ModelVersion, RepoError>;
    /// The highest existing version.
    async fn latest_version(&self, model: &ModelName) -> Result<ModelVersion, RepoError>;
    /// The endpoints stored for a version as of now, each URL with its credential, decrypted
    /// (`None` for one that has none), in the order of its endpoints. The URL comes with the
    /// credential so that a caller holding an older copy of the version can attach each
    /// credential only to the URL it was stored for.
    async fn upstream_secrets(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<Vec<(EndpointUrl, Option<UpstreamSecret>)>, RepoError>;
    /// The highest version that has an endpoint.
    async fn latest_servable_version(&self, model: &ModelName) -> Result<ModelVersion, RepoError>;
    /// Every model with at least one version that has an endpoint and that passes
    /// `filter`'s `usable_by` and `names` (its `tag` and `q` are ignored), ordered by name.
    async fn list_servable_models(
        &self,
        filter: &ModelFilter,
    ) -> Result<Vec<ServableModel>, RepoError>;
    /// Applies a patch and bumps `updated_at`.
    async fn update_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
        patch: VersionPatch,
    ) -> Result<ModelVersion, RepoError>;
    /// Deletes a version and takes it out of the aliases pointing at it (their other versions
    /// keep their weights); an alias left without versions is deleted. Its number is never
    /// reused.
    async fn delete_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<(), RepoError>;

    /// Creates an alias or replaces its whole split, atomically: every version of `split` must
    /// exist ([`RepoError::NotFound`] naming the first that does not, and nothing changes).
    async fn set_alias(
        &self,
        model: &ModelName,
        alias: &AliasName,
        split: &AliasSplit,
    ) -> Result<Alias, RepoError>;
    /// The versions an alias points to, with their weights, in ascending version order
    /// (`latest` is handled by the caller).
    async fn resolve_alias(
        &self,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<ResolvedAlias, RepoError>;
    /// Removes an alias.
    async fn delete_alias(&self, model: &ModelName, alias: &AliasName) -> Result<(), RepoError>;

    /// Lets user `username` use `model`; returns the grant and whether it is new (granting
    /// twice keeps the first grant). [`RepoError::NotFound`] for a missing model or user.
    async fn grant(
        &self,
        model: &ModelName,
        username: &Username,
    ) -> Result<(Grant, bool), RepoError>;
    /// Takes a grant back; [`RepoError::NotFound`] if there was none.
    async fn revoke_grant(&self, model: &ModelName, username: &Username) -> Result<(), RepoError>;
    /// A model's grants, ordered by username.
    async fn list_grants(&self, model: &ModelName) -> Result<Vec<Grant>, RepoError>;
}

/// Proof of what the cache looked like at a miss, handed back to [`Cache::fill`] so that a value
/// read before a concurrent invalidation is never written into the cache after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillToken(pub Option<String>);

/// A cached value: its bytes, and beside them a slot for the value decoded from them.
///
/// An in-process tier hands out the same `Cached` for as long as it holds the entry, so a hot
/// entry is decoded once instead of on every read ([`decode`](Self::decode)); the decoded value
/// lives and dies with the bytes, so it is exactly as fresh as they are. A value fetched over
/// the network comes with an empty slot of its own.
#[derive(Clone)]
pub struct Cached {
    bytes: Arc<[u8]>,
    decoded: Arc<OnceLock<Arc<dyn Any + Send + Sync>>>,
}

impl Cached {
    /// A value with nothing decoded yet.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self {
            bytes: bytes.into(),
            decoded: Arc::new(OnceLock::new()),
        }
    }

    /// The serialized value.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The value as a `T`: `decode` runs on the bytes the first time, and later calls (on this
    /// `Cached` or its clones) get a copy of what it gave. `None` when `decode` fails. A value
    /// decoded as another type before is decoded afresh and not kept.
    pub fn decode<T, F>(&self, decode: F) -> Option<T>
    where
        T: Any + Clone + Send + Sync,
        F: FnOnce(&[u8]) -> Option<T>,
    {
        if let Some(value) = self.decoded.get() {
            return match value.downcast_ref::<T>() {
                Some(value) => Some(value.clone()),
                None => decode(&self.bytes),
            };
        }
        let value = decode(&self.bytes)?;
        // A concurrent reader may have stored its own copy first; both decoded the same bytes.
        let _ = self.decoded.set(Arc::new(value.clone()));
        Some(value)
    }
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("bytes", &String::from_utf8_lossy(&self.bytes))
            .field("decoded", &self.decoded.get().is_some())
            .finish()
    }
}

/// Two values are equal when their bytes are.
impl PartialEq for Cached {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Cached {}

impl From<Vec<u8>> for Cached {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl From<&[u8]> for Cached {
    fn from(bytes: &[u8]) -> Self {
        Self::new(bytes)
    }
}

/// What a cache lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup {
    /// The cached value.
    Hit(Cached),
    /// Not cached; fill with this token after loading.
    Miss(FillToken),
    /// The cache is off, down or too slow: go to the source and do not fill.
    Bypass,
}

/// What a group of cached values is about; every value in it is dropped at once by
/// [`Cache::invalidate`].
///
/// Its [`Display`](fmt::Display) form is what adapters store and publish (`model:{name}`,
/// `key:{sha256 hex}`): those strings are in Redis keys and invalidation messages that replicas
/// of other builds read, so they never change. [`Scope::parse`] reads them back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// A model with its versions, aliases and default target: `model:{name}`.
    Model(ModelName),
    /// The authentication lookup of one API key: `key:{sha256 hex}`.
    Key(KeyHash),
}

impl Scope {
    const MODEL: &'static str = "model";
    const KEY: &'static str = "key";

    /// What the scope is about, `model` or `key`: the `kind` label of cache metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Model(_) => Self::MODEL,
            Self::Key(_) => Self::KEY,
        }
    }

    /// Reads back the [`Display`](fmt::Display) form; anything else is a `scope` error.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let unknown = || ValidationError::new("scope", "is not 'model:<name>' or 'key:<sha256>'");
        let (kind, rest) = raw.split_once(':').ok_or_else(unknown)?;
        match kind {
            Self::MODEL => ModelName::parse(rest)
                .map(Self::Model)
                .map_err(|_| unknown()),
            Self::KEY => KeyHash::from_hex(rest).map(Self::Key).ok_or_else(unknown),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Model(name) => write!(f, "{}:{name}", Self::MODEL),
            Self::Key(hash) => {
                f.write_str(Self::KEY)?;
                f.write_str(":")?;
                hash.write_hex(f)
            }
        }
    }
}

/// Which value of a [`Scope`] is meant.
///
/// Its [`Display`](fmt::Display) form (`m`, `v:{n}`, `s:{alias}`, `ds`, `g`, `k`) is the field's
/// name in the stored scope and, like the scope's, never changes for a value of the same shape.
/// A field whose value changes shape gets a new name instead: builds before alias splits cached
/// one version under `a:{alias}` and `d`; the splits ([`ResolvedAlias`]) live under `s:{alias}`
/// and `ds`, so that during a rolling upgrade neither build reads the other's entries (an old
/// replica, which routes a split alias wholly to its primary version, cannot make a new one do
/// the same), and both are dropped by the same invalidation of the scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// The model itself (in a [`Scope::Model`]): `m`.
    Model,
    /// One version of the model: `v:{n}`.
    Version(VersionNumber),
    /// The versions an alias resolves to with their weights, `latest` included: `s:{alias}`.
    Alias(AliasName),
    /// The versions a bare model name is served by: `ds`.
    DefaultTarget,
    /// The users a private model is granted to: `g`.
    Grantees,
    /// The key with its user, or that there is none (in a [`Scope::Key`]): `k`.
    Key,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Model => f.write_str("m"),
            Self::Version(version) => write!(f, "v:{version}"),
            Self::Alias(alias) => write!(f, "s:{alias}"),
            Self::DefaultTarget => f.write_str("ds"),
            Self::Grantees => f.write_str("g"),
            Self::Key => f.write_str("k"),
        }
    }
}

/// A shared cache of serialized values, grouped in scopes that are invalidated as a whole.
///
/// Implementations never fail a read: any error becomes [`CacheLookup::Bypass`] and is counted
/// by the adapter. Lookups and fills return within the adapter's command timeout; an
/// invalidation may retry once, so it returns within twice that.
#[async_trait]
pub trait Cache: Send + Sync {
    /// Looks `field` up in `scope`.
    async fn lookup(&self, scope: &Scope, field: &Field) -> CacheLookup;
    /// Stores `value` unless `scope` was invalidated since the lookup that gave `token`.
    async fn fill(&self, scope: &Scope, field: &Field, token: FillToken, value: Vec<u8>);
    /// Drops every field of `scope`, and makes fills with older tokens no-ops.
    async fn invalidate(&self, scope: &Scope);
}

/// A cache that caches nothing (for `cache.enabled = false`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

#[async_trait]
impl Cache for NoCache {
    async fn lookup(&self, _scope: &Scope, _field: &Field) -> CacheLookup {
        CacheLookup::Bypass
    }
    async fn fill(&self, _scope: &Scope, _field: &Field, _token: FillToken, _value: Vec<u8>) {}
    async fn invalidate(&self, _scope: &Scope) {}
}

/// Connection counts of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    /// Configured maximum.
    pub max: u32,
    /// Open connections, idle or in use.
    pub open: u32,
    /// Open connections waiting for work.
    pub idle: u32,
}

impl PoolStatus {
    /// Open connections currently lent out.
    pub fn in_use(&self) -> u32 {
        self.open.saturating_sub(self.idle)
    }
}

/// Why a dependency failed its readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HealthError {
    /// Nothing conclusive within the time limit: no connection, or no answer to the round trip.
    /// A pool that keeps retrying a refused connection until its timeout ends here too.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Connecting failed with an error; the text says which.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Connected, but the round trip failed or answered something unexpected.
    #[error("check failed: {0}")]
    Failed(String),
}

impl HealthError {
    /// `timeout`, `unreachable` or `failed`: a label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Failed(_) => "failed",
        }
    }
}

/// A dependency whose health `/health/ready` reports.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// Short name used in reports and metric labels (`postgres`, `redis`).
    fn name(&self) -> &'static str;
    /// Does a real round trip; the error says why it failed.
    async fn check(&self) -> Result<(), HealthError>;
    /// Pool counts, if the dependency is pooled.
    fn pool_status(&self) -> Option<PoolStatus>;
}

/// Durable storage of users and API keys. Only key hashes are ever stored.
#[async_trait]
pub trait IdentityRepository: Send + Sync {
    /// Inserts a user; [`RepoError::Conflict`] if the name is taken.
    async fn create_user(&self, new: NewUser) -> Result<User, RepoError>;
    /// One user by name.
    async fn get_user(&self, username: &Username) -> Result<User, RepoError>;
    /// One user by id.
    async fn get_user_by_id(&self, id: Uuid) -> Result<User, RepoError>;
    /// Users ordered by name, strictly after `after`, at most `limit + 1` of them.
    async fn list_users(
        &self,
        after: Option<&Username>,
        limit: PageLimit,
    ) -> Result<Vec<User>, RepoError>;
    /// Changes a user's role, disabled flag or limit.
    async fn update_user(&self, username: &Username, patch: UserPatch) -> Result<User, RepoError>;

    /// Stores a key (its hash); [`RepoError::NotFound`] if the user does not exist. With
    /// `max_active`, [`RepoError::Conflict`] if the user already holds that many active keys
    /// (neither revoked nor expired), decided atomically: concurrent creations for one user
    /// take turns, so together they never exceed it.
    async fn create_key(
        &self,
        new: NewApiKey,
        max_active: Option<u32>,
    ) -> Result<ApiKey, RepoError>;
    /// Sets the models a key may be used with (`None`: all its user may use) and returns it
    /// with its hash.
    async fn set_key_models(
        &self,
        id: Uuid,
        models: Option<ModelAllowlist>,
    ) -> Result<(ApiKey, KeyHash), RepoError>;
    /// Changes a key's own token quotas and returns it with its hash.
    async fn set_key_quotas(
        &self,
        id: Uuid,
        patch: TokenQuotasPatch,
    ) -> Result<(ApiKey, KeyHash), RepoError>;
    /// One key by id.
    async fn get_key(&self, id: Uuid) -> Result<ApiKey, RepoError>;
    /// A user's keys, newest first, revoked ones included.
    async fn list_keys(&self, user_id: Uuid) -> Result<Vec<ApiKey>, RepoError>;
    /// Marks a key revoked (keeping the first revocation time) and returns it with its hash.
    async fn revoke_key(&self, id: Uuid) -> Result<(ApiKey, KeyHash), RepoError>;
    /// Hashes of every key of a user (to invalidate cached lookups).
    async fn key_hashes_of_user(&self, user_id: Uuid) -> Result<Vec<KeyHash>, RepoError>;
    /// The key with this hash and its user, whatever their state.
    async fn find_key(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, RepoError>;
    /// Sets `last_used_at` of many keys in one statement (never moving it backwards).
    async fn touch_keys(&self, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), RepoError>;
    /// Atomically, across replicas: if no admin exists, creates admin user `username` holding
    /// `key` (whose `user_id` is ignored) and returns it; if an admin exists, returns `None`.
    async fn bootstrap_admin(
        &self,
        username: &Username,
        key: NewApiKey,
    ) -> Result<Option<User>, RepoError>;
}

/// Durable storage of inference usage events.
#[async_trait]
pub trait UsageRepository: Send + Sync {
    /// Appends events in one statement.
    async fn insert_usage(&self, events: &[UsageEvent]) -> Result<(), RepoError>;
    /// Aggregates events per the query's grouping, ordered by group.
    async fn aggregate_usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, RepoError>;
    /// The tokens `subject`'s calls in `[from, to)` count against its quotas: each call's
    /// `quota_tokens` when it had a reservation, else its prompt and completion tokens
    /// (unknown ones count nothing).
    async fn tokens_used(
        &self,
        subject: QuotaSubject,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<u64, RepoError>;
    /// The same, per key of `user_id` (keys without calls left out), in no particular order.
    async fn tokens_used_by_key(
        &self,
        user_id: Uuid,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, u64)>, RepoError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> ModelName {
        ModelName::parse(name).expect("valid")
    }

    #[test]
    fn scopes_and_fields_are_spelled_as_stored_by_earlier_builds() {
        let hash = KeyHash::from_bytes(&[0xa5; 32]).expect("32 bytes");
        assert_eq!(
            Scope::Model(model("llama-3.1")).to_string(),
            "model:llama-3.1"
        );
        assert_eq!(
            Scope::Key(hash).to_string(),
            format!("key:{}", "a5".repeat(32))
        );
        let version = VersionNumber::new(12).expect("valid");
        let alias = AliasName::parse("production").expect("valid");
        // `s:` and `ds` replaced `a:` and `d` when aliases became splits (see `Field`).
        let fields = [
            (Field::Model, "m"),
            (Field::Version(version), "v:12"),
            (Field::Alias(alias), "s:production"),
            (Field::DefaultTarget, "ds"),
            (Field::Grantees, "g"),
            (Field::Key, "k"),
        ];
        for (field, spelled) in fields {
            assert_eq!(field.to_string(), spelled);
        }
    }

    #[test]
    fn a_scope_names_its_kind_and_parses_back_from_its_display_form() {
        let hash = KeyHash::from_bytes(&[7; 32]).expect("32 bytes");
        for (scope, kind) in [
            (Scope::Model(model("a")), "model"),
            (Scope::Key(hash), "key"),
        ] {
            assert_eq!(scope.kind(), kind);
            assert_eq!(Scope::parse(&scope.to_string()), Ok(scope));
        }
        for bad in [
            "",
            "model",
            "model:",
            "model:Upper",
            "key:00",
            "user:a",
            "unscoped",
        ] {
            assert_eq!(Scope::parse(bad).expect_err(bad).field, "scope");
        }
    }

    #[test]
    fn a_cached_value_is_decoded_once_and_shared_by_its_clones() {
        let cached = Cached::from(b"7".to_vec());
        let copy = cached.clone();
        let calls = std::cell::Cell::new(0);
        let as_number = |bytes: &[u8]| {
            calls.set(calls.get() + 1);
            std::str::from_utf8(bytes).ok()?.parse::<i64>().ok()
        };
        assert_eq!(cached.decode(as_number), Some(7));
        assert_eq!(copy.decode(as_number), Some(7));
        assert_eq!(calls.get(), 1);
        // Another type is decoded afresh each time, and does not replace the kept value.
        let as_text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).ok();
        assert_eq!(copy.decode(as_text), Some("7".to_owned()));
        assert_eq!(cached.decode(as_number), Some(7));
        assert_eq!(calls.get(), 1);
        // A failed decode keeps nothing, and a later one may still succeed.
        let fresh = Cached::from(b"x".to_vec());
        assert_eq!(fresh.decode(as_number), None);
        assert_eq!(fresh.decode(as_text), Some("x".to_owned()));
    }
}
