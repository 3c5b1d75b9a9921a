//! [`InMemoryCache`]: the cache port in memory, with the generation rule of the Redis adapter,
//! and counts of what was asked of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::ports::{Cache, CacheLookup, Cached, Field, FillToken, Scope};

/// A cache in memory that behaves as `maas_cache::RedisCache` does with a Redis that answers:
///
/// - a miss hands out the scope's generation as its [`FillToken`] (`None` while the scope was
///   never invalidated);
/// - a fill stores its value only if the scope's generation is still the token's, so a value
///   loaded before an invalidation is never cached after it;
/// - an invalidation drops every field of the scope and bumps its generation.
///
/// Values never expire. [`set_bypass`](Self::set_bypass) makes it behave as the Redis adapter
/// does while Redis is down or its breaker is open: lookups answer [`CacheLookup::Bypass`] and
/// fills do nothing, while invalidations still apply (the adapter always attempts them).
/// [`stats`](Self::stats) counts every call, so a test can tell a cached read from a loaded one.
#[derive(Debug, Default)]
pub struct InMemoryCache {
    state: Mutex<State>,
    bypass: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    scopes: HashMap<Scope, HashMap<Field, Cached>>,
    /// Bumped by every invalidation of the scope; absent until the first.
    generations: HashMap<Scope, u64>,
    stats: CacheStats,
    invalidated: HashMap<Scope, u64>,
}

/// What an [`InMemoryCache`] was asked so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found the value.
    pub hits: u64,
    /// Lookups that found nothing (and handed out a token).
    pub misses: u64,
    /// Lookups answered [`CacheLookup::Bypass`] while bypassing.
    pub bypasses: u64,
    /// Fills that stored their value.
    pub fills_stored: u64,
    /// Fills refused because their scope was invalidated after their lookup (or while
    /// bypassing).
    pub fills_refused: u64,
    /// Invalidations, of any scope.
    pub invalidations: u64,
}

impl CacheStats {
    /// Every lookup, whatever it found.
    pub fn lookups(&self) -> u64 {
        self.hits + self.misses + self.bypasses
    }

    /// Every fill, stored or not.
    pub fn fills(&self) -> u64 {
        self.fills_stored + self.fills_refused
    }
}

impl InMemoryCache {
    /// An empty cache that caches.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// While `true`, lookups answer [`CacheLookup::Bypass`] and fills store nothing;
    /// invalidations still apply.
    pub fn set_bypass(&self, bypass: bool) {
        self.bypass.store(bypass, Ordering::SeqCst);
    }

    /// What was asked so far.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// How many times `scope` was invalidated.
    pub fn invalidations_of(&self, scope: &Scope) -> u64 {
        self.lock().invalidated.get(scope).copied().unwrap_or(0)
    }

    /// The bytes held for `field` of `scope`, without counting a lookup.
    pub fn peek(&self, scope: &Scope, field: &Field) -> Option<Vec<u8>> {
        self.lock()
            .scopes
            .get(scope)?
            .get(field)
            .map(|cached| cached.bytes().to_vec())
    }

    /// Whether anything is held for `scope`.
    pub fn holds_scope(&self, scope: &Scope) -> bool {
        self.lock().scopes.get(scope).is_some_and(|f| !f.is_empty())
    }
}

/// The token of a scope at generation `generation` (the Redis adapter's is the counter's text).
fn token(generation: Option<u64>) -> FillToken {
    FillToken(generation.map(|g| g.to_string()))
}

#[async_trait]
impl Cache for InMemoryCache {
    async fn lookup(&self, scope: &Scope, field: &Field) -> CacheLookup {
        let mut state = self.lock();
        if self.bypass.load(Ordering::SeqCst) {
            state.stats.bypasses += 1;
            return CacheLookup::Bypass;
        }
        let found = state.scopes.get(scope).and_then(|f| f.get(field)).cloned();
        match found {
            Some(cached) => {
                state.stats.hits += 1;
                CacheLookup::Hit(cached)
            }
            None => {
                state.stats.misses += 1;
                CacheLookup::Miss(token(state.generations.get(scope).copied()))
            }
        }
    }

    async fn fill(&self, scope: &Scope, field: &Field, fill_token: FillToken, value: Vec<u8>) {
        let mut state = self.lock();
        let current = token(state.generations.get(scope).copied());
        if self.bypass.load(Ordering::SeqCst) || fill_token != current {
            state.stats.fills_refused += 1;
            return;
        }
        state.stats.fills_stored += 1;
        state
            .scopes
            .entry(scope.clone())
            .or_default()
            .insert(field.clone(), Cached::new(value));
    }

    async fn invalidate(&self, scope: &Scope) {
        let mut state = self.lock();
        state.stats.invalidations += 1;
        *state.invalidated.entry(scope.clone()).or_insert(0) += 1;
        *state.generations.entry(scope.clone()).or_insert(0) += 1;
        state.scopes.remove(scope);
    }
}
