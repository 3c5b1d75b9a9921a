//! In-memory adapters of every port, and fixtures (feature `test-util`), so that the use-cases'
//! rules can be tested without Postgres or Redis, here and in the crates above.
//!
//! The repositories answer as the Postgres adapters do (the same orders, pages, conflicts and
//! error messages) and the cache follows the Redis adapter's generation rule; each documents
//! what it mirrors. Every adapter can be steered and observed: the repositories through their
//! [`Controls`] (call counts, an outage switch, holding a call mid-flight), the cache through
//! [`InMemoryCache::stats`] and [`InMemoryCache::set_bypass`], the rate limiter through its own
//! clock. [`InMemory`] wires them all into the use-cases.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use maas_domain::identity::Role;
//! use maas_domain::test_util::{InMemory, new_model, principal_of};
//!
//! let world = InMemory::new();
//! let admin = world.user("root", Role::Admin).await;
//! let admin = principal_of(&admin);
//! let model = world
//!     .registry
//!     .create_model(&admin, new_model("llama"))
//!     .await
//!     .expect("created");
//! world.registry.get_model(&admin, &model.name).await.expect("loaded, then cached");
//! world.registry.get_model(&admin, &model.name).await.expect("from the cache");
//! assert_eq!(world.registry_store.controls().calls("get_model"), 1);
//! # }
//! ```
//!
//! A dependant enables it for its tests only:
//! `maas-domain = { workspace = true, features = ["test-util"] }` under `[dev-dependencies]`.

mod cache;
mod fixtures;
mod health;
mod identity;
mod limiter;
mod registry;
mod support;
mod tokens;
mod usage;

use std::sync::Arc;

pub use cache::{CacheStats, InMemoryCache};
pub use fixtures::*;
pub use health::InMemoryHealth;
pub use identity::InMemoryIdentity;
pub use limiter::InMemoryRateLimiter;
pub use registry::InMemoryRegistry;
pub use support::{Controls, Hold};
pub use usage::InMemoryUsage;

use crate::identity::{PlaintextKey, Principal, Role, User};
use crate::limits::{RateLimits, TokenPolicy};
use crate::ports::IdentityRepository;
use crate::{Accounts, Quotas, Registry, Usage};

/// The use-cases over in-memory adapters, with a handle on each adapter to steer and observe
/// it. Models and keys have a cache each, as in the gateway (which gives them different TTLs).
pub struct InMemory {
    /// Registry use-cases over [`registry_store`](Self::registry_store) and
    /// [`model_cache`](Self::model_cache).
    pub registry: Registry,
    /// Identity use-cases over [`identity_store`](Self::identity_store) and
    /// [`key_cache`](Self::key_cache).
    pub accounts: Accounts,
    /// Usage use-cases over [`usage_store`](Self::usage_store).
    pub usage: Usage,
    /// The registry's store; model owners must be users of `identity_store`.
    pub registry_store: Arc<InMemoryRegistry>,
    /// Users and keys.
    pub identity_store: Arc<InMemoryIdentity>,
    /// Usage events.
    pub usage_store: Arc<InMemoryUsage>,
    /// The cache of models, versions, aliases and default targets.
    pub model_cache: Arc<InMemoryCache>,
    /// The cache of key lookups.
    pub key_cache: Arc<InMemoryCache>,
}

impl InMemory {
    /// Empty stores and caches, wired into [`Registry`], [`Accounts`] and [`Usage`].
    pub fn new() -> Self {
        let identity_store = Arc::new(InMemoryIdentity::new());
        let registry_store = Arc::new(InMemoryRegistry::with_users(&identity_store));
        let usage_store = Arc::new(InMemoryUsage::new());
        let model_cache = Arc::new(InMemoryCache::new());
        let key_cache = Arc::new(InMemoryCache::new());
        Self {
            registry: Registry::new(registry_store.clone(), model_cache.clone()),
            accounts: Accounts::new(identity_store.clone(), key_cache.clone()),
            usage: Usage::new(usage_store.clone()),
            registry_store,
            identity_store,
            usage_store,
            model_cache,
            key_cache,
        }
    }

    /// Stores a user straight in the identity store (no actor needed).
    pub async fn user(&self, name: &str, role: Role) -> User {
        self.identity_store
            .create_user(new_user(name, role))
            .await
            .unwrap_or_else(|e| panic!("fixture user {name:?}: {e}"))
    }

    /// A new user `name` acting through a key of its own (see [`principal_of`]).
    pub async fn actor(&self, name: &str, role: Role) -> Principal {
        principal_of(&self.user(name, role).await)
    }

    /// Token quotas decided by `limiter` under `rates` and `policy`, over this world's usage
    /// and identity stores.
    pub fn quotas(
        &self,
        limiter: Arc<InMemoryRateLimiter>,
        rates: RateLimits,
        policy: TokenPolicy,
    ) -> Quotas {
        Quotas::new(
            limiter,
            self.usage_store.clone(),
            self.identity_store.clone(),
            rates,
            policy,
        )
    }

    /// Stores a key of `user` straight in the identity store; returns the key itself.
    pub async fn key_of(&self, user: &User) -> PlaintextKey {
        let (plaintext, new) = new_key(user.id, "fixture");
        self.identity_store
            .create_key(new, None)
            .await
            .unwrap_or_else(|e| panic!("fixture key of {}: {e}", user.username));
        plaintext
    }
}

impl Default for InMemory {
    fn default() -> Self {
        Self::new()
    }
}
