//! [`NearCache`]: an in-process tier in front of a shared [`Cache`] (the [`RedisCache`]), kept
//! coherent across replicas by Redis pub/sub, so that hot reads (API keys, model resolution)
//! cost no network round trip at all.
//!
//! # How it stays coherent
//! - Every [`RedisCache::invalidate`] publishes the scope on the prefix's invalidation channel
//!   ([`RedisCache::invalidation_channel`]) in the same `MULTI` as the invalidation itself.
//! - [`listen_for_invalidations`] keeps one subscription to that channel per process and drops
//!   the scope of every message (a [`Scope`]'s display form, read back with [`Scope::parse`])
//!   from the [`LocalStore`]; a message it cannot read drops everything. It also pings Redis
//!   over the subscription every [`LISTENER_PING_INTERVAL`], so a silently dead connection is
//!   noticed.
//! - The local tier is used only while the subscription is confirmed ("live"). When the
//!   subscription is lost the tier is cleared and bypassed until a new subscription is
//!   confirmed, and it is cleared again then (messages sent in between were missed).
//! - The local tier is filled only from values read in the shared cache, never from the source,
//!   and only if no invalidation reached this process since the read began (an epoch counter
//!   bumped by every drop): a value read before a concurrent invalidation cannot outlive it.
//! - An invalidation made through this process drops the scope locally before and after the
//!   shared invalidation, so this process reads its own writes at once; other replicas drop it
//!   when the message arrives (on a LAN, well under a millisecond after the write's response).
//! - Entries also expire after a short TTL, which bounds staleness should everything above fail.
//!
//! Lookups that hit the local tier are counted in [`names::CACHE_REQUESTS_TOTAL`] with
//! `result="local_hit"`; everything else is counted by the shared cache as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use maas_domain::ports::{Cache, CacheLookup, Cached, Field, FillToken, Scope};
use maas_telemetry::names::{self, cache_result};

use crate::cache::count_lookup;

#[cfg(doc)]
use crate::RedisCache;

mod listen;

pub use listen::{
    LISTENER_PING_INTERVAL, listen_for_invalidations, listen_for_invalidations_with_logger,
};

struct Entry {
    /// The bytes and, once a reader decoded them, the decoded value.
    value: Cached,
    expires_at: Instant,
}

#[derive(Default)]
struct Entries {
    /// scope → field → value.
    scopes: HashMap<Scope, HashMap<Field, Entry>>,
    /// Number of fields over all scopes.
    len: usize,
    /// Bumped by every drop and every change of liveness; a fill that began under an older epoch
    /// is not stored.
    epoch: u64,
}

impl Entries {
    fn clear(&mut self) {
        self.scopes.clear();
        self.len = 0;
        self.epoch = self.epoch.wrapping_add(1);
    }

    fn drop_scope(&mut self, scope: &Scope) {
        if let Some(fields) = self.scopes.remove(scope) {
            self.len = self.len.saturating_sub(fields.len());
        }
        self.epoch = self.epoch.wrapping_add(1);
    }

    fn purge_expired(&mut self, now: Instant) {
        let mut len = 0;
        self.scopes.retain(|_, fields| {
            fields.retain(|_, entry| entry.expires_at > now);
            len += fields.len();
            !fields.is_empty()
        });
        self.len = len;
    }
}

/// The in-process tier: values by scope and field, shared by every [`NearCache`] of a process
/// and fed invalidations by [`listen_for_invalidations`]. Cheap to share behind an [`Arc`].
pub struct LocalStore {
    entries: RwLock<Entries>,
    /// Whether the invalidation subscription is confirmed; the tier is bypassed otherwise.
    live: AtomicBool,
    ttl: Duration,
    max_entries: usize,
    /// Invalidation messages received (for tests and debugging).
    received: AtomicU64,
    /// Subscriptions confirmed (for tests and debugging).
    subscriptions: AtomicU64,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("live", &self.is_live())
            .field("len", &self.len())
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    /// An empty, not yet live store whose entries live at most `ttl` and which holds at most
    /// `max_entries` values (further fills are skipped until entries expire).
    pub fn new(ttl: Duration, max_entries: usize) -> Arc<Self> {
        Arc::new(Self {
            entries: RwLock::new(Entries::default()),
            live: AtomicBool::new(false),
            ttl,
            max_entries,
            received: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
        })
    }

    /// Whether the invalidation subscription is confirmed, so the tier is in use.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.entries.read().map_or(0, |e| e.len)
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Invalidation messages received since start.
    pub fn invalidations_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Subscriptions confirmed since start (more than one means the listener reconnected).
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Drops every value of `scope` here (not in Redis).
    pub fn drop_scope(&self, scope: &Scope) {
        if let Ok(mut entries) = self.entries.write() {
            entries.drop_scope(scope);
        }
    }

    /// Drops every value here (not in Redis).
    fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
        }
    }

    /// Marks the subscription confirmed: clears what is held (messages may have been missed)
    /// and starts using the tier.
    pub fn go_live(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
            self.live.store(true, Ordering::Release);
        }
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(names::CACHE_LOCAL_LIVE).set(1.0);
    }

    /// Marks the subscription lost: stops using the tier and clears it.
    pub fn go_dark(&self) {
        self.live.store(false, Ordering::Release);
        self.clear();
        metrics::gauge!(names::CACHE_LOCAL_LIVE).set(0.0);
    }

    fn get(&self, scope: &Scope, field: &Field) -> Option<Cached> {
        if !self.is_live() {
            return None;
        }
        let entries = self.entries.read().ok()?;
        let entry = entries.scopes.get(scope)?.get(field)?;
        (entry.expires_at > Instant::now()).then(|| entry.value.clone())
    }

    /// The epoch to hand to [`insert`](Self::insert) after a read that starts now.
    fn epoch(&self) -> u64 {
        self.entries.read().map_or(u64::MAX, |e| e.epoch)
    }

    /// Stores a value read under `epoch`, unless anything was dropped since or the tier is not
    /// live.
    fn insert(&self, epoch: u64, scope: &Scope, field: &Field, value: &Cached) {
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        if entries.epoch != epoch || !self.is_live() {
            return;
        }
        let now = Instant::now();
        if entries.len >= self.max_entries {
            entries.purge_expired(now);
            if entries.len >= self.max_entries {
                return;
            }
        }
        let fields = entries.scopes.entry(scope.clone()).or_default();
        let previous = fields.insert(
            field.clone(),
            Entry {
                value: value.clone(),
                expires_at: now + self.ttl,
            },
        );
        if previous.is_none() {
            entries.len += 1;
        }
    }
}

/// A [`Cache`] that answers from a [`LocalStore`] when it can and from `shared` otherwise.
///
/// See the [module documentation](self) for how it stays coherent across replicas.
#[derive(Clone)]
pub struct NearCache {
    local: Arc<LocalStore>,
    shared: Arc<dyn Cache>,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl NearCache {
    /// `local` in front of `shared`. Several near caches (with different shared TTLs, say) may
    /// share one local store, as long as their scopes do not collide.
    pub fn new(local: Arc<LocalStore>, shared: Arc<dyn Cache>) -> Self {
        Self { local, shared }
    }

    /// The local tier.
    pub fn local(&self) -> &Arc<LocalStore> {
        &self.local
    }
}

#[async_trait]
impl Cache for NearCache {
    async fn lookup(&self, scope: &Scope, field: &Field) -> CacheLookup {
        if let Some(value) = self.local.get(scope, field) {
            count_lookup(scope, cache_result::LOCAL_HIT);
            return CacheLookup::Hit(value);
        }
        let epoch = self.local.epoch();
        let found = self.shared.lookup(scope, field).await;
        if let CacheLookup::Hit(value) = &found {
            self.local.insert(epoch, scope, field, value);
        }
        found
    }

    async fn fill(&self, scope: &Scope, field: &Field, token: FillToken, value: Vec<u8>) {
        // Only the shared tier: the local one is filled from it by the next lookup, so that it
        // never holds a value the shared tier refused (because of a concurrent invalidation).
        self.shared.fill(scope, field, token, value).await;
    }

    async fn invalidate(&self, scope: &Scope) {
        self.local.drop_scope(scope);
        self.shared.invalidate(scope).await;
        // A lookup that read the shared tier while it was being invalidated must not keep
        // what it read.
        self.local.drop_scope(scope);
    }
}

#[cfg(test)]
mod tests {
    use maas_domain::values::{AliasName, ModelName, VersionNumber};

    use super::*;

    fn model(name: &str) -> Scope {
        Scope::Model(ModelName::parse(name).expect("valid"))
    }

    fn version(n: i64) -> Field {
        Field::Version(VersionNumber::new(n).expect("valid"))
    }

    fn live_store(ttl: Duration, max_entries: usize) -> Arc<LocalStore> {
        let store = LocalStore::new(ttl, max_entries);
        store.go_live();
        store
    }

    #[test]
    fn a_read_that_began_before_a_drop_is_not_kept() {
        let store = live_store(Duration::from_secs(60), 10);
        let epoch = store.epoch();
        // An invalidation arrives while the read is in flight...
        store.drop_scope(&model("a"));
        // ...so what the read brings back may predate it.
        store.insert(
            epoch,
            &model("a"),
            &Field::Model,
            &Cached::from(&b"old"[..]),
        );
        assert!(store.get(&model("a"), &Field::Model).is_none());
        // A read that began after it is kept.
        let epoch = store.epoch();
        store.insert(
            epoch,
            &model("a"),
            &Field::Model,
            &Cached::from(&b"new"[..]),
        );
        assert_eq!(
            store
                .get(&model("a"), &Field::Model)
                .as_ref()
                .map(Cached::bytes),
            Some(&b"new"[..])
        );
    }

    #[test]
    fn nothing_is_kept_or_served_while_not_live() {
        let store = LocalStore::new(Duration::from_secs(60), 10);
        store.insert(
            store.epoch(),
            &model("a"),
            &Field::Model,
            &Cached::from(&b"v"[..]),
        );
        assert!(store.is_empty());
        store.go_live();
        store.insert(
            store.epoch(),
            &model("a"),
            &Field::Model,
            &Cached::from(&b"v"[..]),
        );
        assert_eq!(store.len(), 1);
        store.go_dark();
        assert!(store.is_empty());
        assert!(store.get(&model("a"), &Field::Model).is_none());
    }

    #[test]
    fn going_live_again_starts_empty_and_voids_reads_in_flight() {
        let store = live_store(Duration::from_secs(60), 10);
        store.insert(
            store.epoch(),
            &model("a"),
            &Field::Model,
            &Cached::from(&b"v"[..]),
        );
        let epoch = store.epoch();
        store.go_live();
        assert!(store.is_empty());
        store.insert(
            epoch,
            &model("a"),
            &Field::DefaultTarget,
            &Cached::from(&b"v"[..]),
        );
        assert!(store.is_empty());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let store = live_store(Duration::from_millis(20), 10);
        store.insert(
            store.epoch(),
            &model("a"),
            &Field::Model,
            &Cached::from(&b"v"[..]),
        );
        assert!(store.get(&model("a"), &Field::Model).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(store.get(&model("a"), &Field::Model).is_none());
    }

    #[test]
    fn a_full_store_takes_no_more_until_entries_expire() {
        let store = live_store(Duration::from_millis(20), 2);
        store.insert(
            store.epoch(),
            &model("a"),
            &version(1),
            &Cached::from(&b"v"[..]),
        );
        store.insert(
            store.epoch(),
            &model("a"),
            &version(2),
            &Cached::from(&b"v"[..]),
        );
        store.insert(
            store.epoch(),
            &model("b"),
            &version(1),
            &Cached::from(&b"v"[..]),
        );
        assert_eq!(store.len(), 2);
        assert!(store.get(&model("b"), &version(1)).is_none());
        // Overwriting a field does not count twice.
        store.insert(
            store.epoch(),
            &model("a"),
            &version(2),
            &Cached::from(&b"w"[..]),
        );
        assert_eq!(store.len(), 2);
        std::thread::sleep(Duration::from_millis(40));
        store.insert(
            store.epoch(),
            &model("b"),
            &version(1),
            &Cached::from(&b"v"[..]),
        );
        assert_eq!(store.len(), 1);
        assert!(store.get(&model("b"), &version(1)).is_some());
    }

    #[test]
    fn a_held_entry_is_decoded_once_for_all_its_readers() {
        let store = live_store(Duration::from_secs(60), 10);
        store.insert(
            store.epoch(),
            &model("a"),
            &Field::Model,
            &Cached::from(&b"41"[..]),
        );
        let decodes = std::cell::Cell::new(0);
        let decode = |bytes: &[u8]| {
            decodes.set(decodes.get() + 1);
            std::str::from_utf8(bytes).ok()?.parse::<u32>().ok()
        };
        for _ in 0..3 {
            let cached = store.get(&model("a"), &Field::Model).expect("held");
            assert_eq!(cached.decode(decode), Some(41));
        }
        assert_eq!(decodes.get(), 1);
        // A new value for the field starts undecoded.
        store.insert(
            store.epoch(),
            &model("a"),
            &Field::Model,
            &Cached::from(&b"42"[..]),
        );
        let cached = store.get(&model("a"), &Field::Model).expect("held");
        assert_eq!(cached.decode(decode), Some(42));
        assert_eq!(decodes.get(), 2);
    }

    #[test]
    fn dropping_a_scope_drops_all_its_fields_and_only_them() {
        let store = live_store(Duration::from_secs(60), 10);
        let prod = Field::Alias(AliasName::parse("prod").expect("valid"));
        for field in [Field::Model, version(1), prod] {
            store.insert(store.epoch(), &model("a"), &field, &Cached::from(&b"v"[..]));
        }
        store.insert(
            store.epoch(),
            &model("b"),
            &Field::Model,
            &Cached::from(&b"v"[..]),
        );
        store.drop_scope(&model("a"));
        assert_eq!(store.len(), 1);
        assert!(store.get(&model("b"), &Field::Model).is_some());
    }
}
