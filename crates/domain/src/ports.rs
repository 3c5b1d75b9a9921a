//! Ports: the traits that storage, cache and health adapters implement. The domain and the api
//! see only these; adapters live in other crates.

use async_trait::async_trait;

use crate::error::RepoError;
use crate::model::{
    Alias, Model, ModelFilter, ModelPatch, ModelVersion, NewModel, NewVersion, VersionPatch,
};
use crate::values::{AliasName, ModelName, PageLimit, VersionNumber};

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
    /// Applies a patch and bumps `updated_at`.
    async fn update_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
        patch: VersionPatch,
    ) -> Result<ModelVersion, RepoError>;
    /// Deletes a version and the aliases pointing at it. Its number is never reused.
    async fn delete_version(
        &self,
        model: &ModelName,
        version: VersionNumber,
    ) -> Result<(), RepoError>;

    /// Creates or moves an alias.
    async fn set_alias(
        &self,
        model: &ModelName,
        alias: &AliasName,
        version: VersionNumber,
    ) -> Result<Alias, RepoError>;
    /// The version an alias points to (`latest` is handled by the caller).
    async fn resolve_alias(
        &self,
        model: &ModelName,
        alias: &AliasName,
    ) -> Result<ModelVersion, RepoError>;
    /// Removes an alias.
    async fn delete_alias(&self, model: &ModelName, alias: &AliasName) -> Result<(), RepoError>;
}

/// Proof of what the cache looked like at a miss, handed back to [`Cache::fill`] so that a value
/// read before a concurrent invalidation is never written into the cache after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillToken(pub Option<String>);

/// What a cache lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup {
    /// The cached bytes.
    Hit(Vec<u8>),
    /// Not cached; fill with this token after loading.
    Miss(FillToken),
    /// The cache is off, down or too slow: go to the source and do not fill.
    Bypass,
}

/// A shared cache of serialized values, grouped in scopes that are invalidated as a whole.
///
/// Implementations never fail a read: any error becomes [`CacheLookup::Bypass`] and is counted
/// by the adapter. Lookups and fills return within the adapter's command timeout; an
/// invalidation may retry once, so it returns within twice that.
#[async_trait]
pub trait Cache: Send + Sync {
    /// Looks `field` up in `scope`.
    async fn lookup(&self, scope: &str, field: &str) -> CacheLookup;
    /// Stores `value` unless `scope` was invalidated since the lookup that gave `token`.
    async fn fill(&self, scope: &str, field: &str, token: FillToken, value: Vec<u8>);
    /// Drops every field of `scope`, and makes fills with older tokens no-ops.
    async fn invalidate(&self, scope: &str);
}

/// A cache that caches nothing (for `cache.enabled = false`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

#[async_trait]
impl Cache for NoCache {
    async fn lookup(&self, _scope: &str, _field: &str) -> CacheLookup {
        CacheLookup::Bypass
    }
    async fn fill(&self, _scope: &str, _field: &str, _token: FillToken, _value: Vec<u8>) {}
    async fn invalidate(&self, _scope: &str) {}
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

/// A dependency whose health `/health/ready` reports.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// Short name used in reports and metric labels (`postgres`, `redis`).
    fn name(&self) -> &'static str;
    /// Does a real round trip; `Err` says why it failed.
    async fn check(&self) -> Result<(), String>;
    /// Pool counts, if the dependency is pooled.
    fn pool_status(&self) -> Option<PoolStatus>;
}
