//! A thread's metric handles by label values, for metrics recorded on every request.
//!
//! `metrics::counter!(name, "label" => value)` builds a key (allocating owned label values),
//! hashes it and looks it up in the recorder's registry under a lock, every time. Kept in a
//! `thread_local!`, the helpers here let each thread register a label set once and reuse its
//! handle: a lookup is a scan of a few entries ([`HandleMemo`], [`HandleList`]) or one hash
//! lookup of a borrowed value ([`HandleMap`]), with no allocation and no lock.
//!
//! The module depends on nothing (not even the `metrics` crate: a handle is whatever the caller
//! registers), so it is compiled without any of the crate's features: an adapter crate counts
//! through it without pulling in the Prometheus exporter.
//!
//! A handle comes from the recorder in effect when the thread first records that label set:
//! install the recorder (or a thread's local one) before recording.

use std::cell::RefCell;
use std::collections::HashMap;
use std::thread::LocalKey;

/// Handles by label values, for one thread: a short list scanned in order, which for a handful
/// of entries beats a map. Found or registered with [`HandleList::get_or_register`]; it never
/// forgets an entry. Meant to be held in a [`HandleMemo`] or [`HandleMap`] entry, or inside a
/// handle group of one (a route's counters by status, say).
#[derive(Debug)]
pub struct HandleList<K, H> {
    entries: Vec<(K, H)>,
}

impl<K, H> HandleList<K, H> {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// The handle of the entry that `matches` picks; the first time, `register` makes it and
    /// `key` names it.
    pub fn get_or_register(
        &mut self,
        matches: impl Fn(&K) -> bool,
        key: impl FnOnce() -> K,
        register: impl FnOnce() -> H,
    ) -> &mut H {
        let at = match self.entries.iter().position(|(k, _)| matches(k)) {
            Some(at) => at,
            None => {
                self.entries.push((key(), register()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[at].1
    }
}

impl<K, H> Default for HandleList<K, H> {
    fn default() -> Self {
        Self::new()
    }
}

/// A thread's memo of metric handles by label values, for metrics recorded on every request.
///
/// With a memo in a `thread_local!`, each thread registers a label set once and reuses the
/// handle: a lookup is a scan of a few entries, with no allocation and no lock. Meant for
/// metrics with a handful of label sets; the memo never forgets one. (A handle is anything
/// cheap to clone that each thread should build once: the gateway's proxy keeps its per-thread
/// HTTP clients in one too.) For label values too many to scan (routes, models), see
/// [`HandleMap`].
///
/// ```
/// use maas_telemetry::handles::{HandleMemo, memoised};
///
/// thread_local! {
///     static DECISIONS: HandleMemo<&'static str, metrics::Counter> = const { HandleMemo::new() };
/// }
///
/// fn count(decision: &'static str) {
///     memoised(&DECISIONS, |d| *d == decision, || decision, || {
///         metrics::counter!("decisions_total", "decision" => decision)
///     })
///     .increment(1);
/// }
/// count("allowed");
/// ```
#[derive(Debug)]
pub struct HandleMemo<K, H> {
    entries: RefCell<HandleList<K, H>>,
}

impl<K, H> HandleMemo<K, H> {
    /// An empty memo.
    pub const fn new() -> Self {
        Self {
            entries: RefCell::new(HandleList::new()),
        }
    }
}

impl<K, H> Default for HandleMemo<K, H> {
    fn default() -> Self {
        Self::new()
    }
}

/// The handle of the label set that `matches` picks in this thread's `memo`; the first time,
/// `register` makes it and `key` names it. A thread that is shutting down (its memo gone) gets
/// a freshly registered handle.
pub fn memoised<K: 'static, H: Clone + 'static>(
    memo: &'static LocalKey<HandleMemo<K, H>>,
    matches: impl Fn(&K) -> bool,
    key: impl FnOnce() -> K,
    register: impl Fn() -> H,
) -> H {
    memo.try_with(|memo| {
        memo.entries
            .borrow_mut()
            .get_or_register(matches, key, &register)
            .clone()
    })
    .unwrap_or_else(|_| register())
}

/// Runs `record` on the handle (or group of handles) of the label set that `matches` picks in
/// this thread's `memo`, registered by `register` and named by `key` the first time. Unlike
/// [`memoised`] it hands out the handle in place, so a group can hold lists of its own (a
/// [`HandleList`] by status, say). A thread that is shutting down (its memo gone) records
/// nothing: `None`.
pub fn with_memoised<K: 'static, H: 'static, R>(
    memo: &'static LocalKey<HandleMemo<K, H>>,
    matches: impl Fn(&K) -> bool,
    key: impl FnOnce() -> K,
    register: impl FnOnce() -> H,
    record: impl FnOnce(&mut H) -> R,
) -> Option<R> {
    memo.try_with(|memo| {
        record(
            memo.entries
                .borrow_mut()
                .get_or_register(matches, key, register),
        )
    })
    .ok()
}

/// A thread's handles by one label value (a route pattern, a model name), for label values too
/// many for [`HandleMemo`]'s scan: one hash lookup of the borrowed value, no allocation once
/// registered. The values must stay bounded (the map never forgets one): either by what they
/// are ([`with_mapped`]), or by a bound the caller keeps, the values it does not admit sharing
/// one overflow entry ([`with_admitted`]).
///
/// ```
/// use maas_telemetry::handles::{HandleMap, with_mapped};
///
/// thread_local! {
///     static BY_ROUTE: HandleMap<metrics::Counter> = HandleMap::new();
/// }
///
/// fn count(route: &str) {
///     with_mapped(&BY_ROUTE, route, || {
///         metrics::counter!("requests_total", "route" => route.to_owned())
///     }, |counter| counter.increment(1));
/// }
/// count("/health");
/// ```
#[derive(Debug)]
pub struct HandleMap<H> {
    entries: RefCell<MapEntries<H>>,
}

/// What a [`HandleMap`] holds: the entries by value, and apart from them the one entry of the
/// values [`with_admitted`] did not admit (so no value, whatever it is, shares that entry).
#[derive(Debug)]
struct MapEntries<H> {
    by_value: HashMap<String, H>,
    overflow: Option<H>,
}

impl<H> HandleMap<H> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            entries: RefCell::new(MapEntries {
                by_value: HashMap::new(),
                overflow: None,
            }),
        }
    }
}

impl<H> Default for HandleMap<H> {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `record` on the handle (or group) kept under `value` in this thread's `map`, made by
/// `register` the first time. A thread that is shutting down (its map gone) records nothing:
/// `None`.
pub fn with_mapped<H: 'static, R>(
    map: &'static LocalKey<HandleMap<H>>,
    value: &str,
    register: impl FnOnce() -> H,
    record: impl FnOnce(&mut H) -> R,
) -> Option<R> {
    map.try_with(|map| {
        let entries = &mut map.entries.borrow_mut().by_value;
        // `get_mut` first: `entry` would need an owned key, an allocation on every call.
        let handle = match entries.get_mut(value) {
            Some(handle) => handle,
            None => entries.entry(value.to_owned()).or_insert_with(register),
        };
        record(handle)
    })
    .ok()
}

/// Like [`with_mapped`], for label values bounded by the caller rather than by what they are
/// (the models a process serves, say): runs `record` on the handle (or group) kept under
/// `value` in this thread's `map`, with the label it is recorded under.
///
/// Only when this thread has no entry for `value` is `admit` asked (it may take a lock or keep
/// a process-wide count: once registered, a value costs one hash lookup, no lock and no
/// allocation). Admitted, `value` gets an entry of its own, made by `register(value)`; not
/// admitted, it is recorded in the map's one overflow entry, made by `register(overflow)` the
/// first time and recorded under the label `overflow`. The overflow entry is kept apart from
/// the entries by value: a value spelled like `overflow` that is admitted gets its own.
///
/// `admit`, `register` and `record` must not use `map` themselves. A thread that is shutting
/// down (its map gone) records nothing: `None`.
///
/// ```
/// use maas_telemetry::handles::{HandleMap, with_admitted};
///
/// thread_local! {
///     static BY_MODEL: HandleMap<metrics::Counter> = HandleMap::new();
/// }
///
/// fn count(model: &str) {
///     with_admitted(
///         &BY_MODEL,
///         model,
///         "other",
///         |model| model.len() < 20, // a process-wide bound, in practice
///         |label| metrics::counter!("calls_total", "model" => label.to_owned()),
///         |counter, _label| counter.increment(1),
///     );
/// }
/// count("small-model");
/// count("a-model-with-a-long-name");
/// ```
pub fn with_admitted<H: 'static, R>(
    map: &'static LocalKey<HandleMap<H>>,
    value: &str,
    overflow: &str,
    admit: impl FnOnce(&str) -> bool,
    register: impl FnOnce(&str) -> H,
    record: impl FnOnce(&mut H, &str) -> R,
) -> Option<R> {
    map.try_with(|map| {
        let mut entries = map.entries.borrow_mut();
        let MapEntries {
            by_value,
            overflow: other,
        } = &mut *entries;
        if let Some(handle) = by_value.get_mut(value) {
            return record(handle, value);
        }
        if admit(value) {
            let handle = by_value
                .entry(value.to_owned())
                .or_insert_with(|| register(value));
            return record(handle, value);
        }
        let handle = other.get_or_insert_with(|| register(overflow));
        record(handle, overflow)
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A stand-in handle group: how often it was recorded into, and counts by status.
    #[derive(Default)]
    struct Group {
        recorded: u32,
        by_status: HandleList<u16, u32>,
    }

    /// A stand-in handle: the label it was registered under, and how often it was recorded
    /// into.
    struct Labelled {
        label: String,
        recorded: u32,
    }

    thread_local! {
        static BY_ROUTE: HandleMap<Group> = HandleMap::new();
        static BY_KIND: HandleMemo<&'static str, Group> = const { HandleMemo::new() };
        static BY_MODEL: HandleMap<Labelled> = HandleMap::new();
    }

    #[test]
    fn each_label_set_is_registered_once_and_recorded_in_place() {
        // A thread of its own: its maps start empty.
        std::thread::spawn(|| {
            let registered = Cell::new(0);
            let record = |route: &str, status: u16| {
                with_mapped(
                    &BY_ROUTE,
                    route,
                    || {
                        registered.set(registered.get() + 1);
                        Group::default()
                    },
                    |group| {
                        group.recorded += 1;
                        *group
                            .by_status
                            .get_or_register(|s| *s == status, || status, || 0) += 1;
                        (group.recorded, group.by_status.entries.len())
                    },
                )
            };
            assert_eq!(record("/a", 200), Some((1, 1)));
            assert_eq!(record("/a", 200), Some((2, 1)));
            assert_eq!(record("/a", 404), Some((3, 2)));
            assert_eq!(record("/b", 200), Some((1, 1)));
            assert_eq!(registered.get(), 2, "one registration per route");
            BY_ROUTE.with(|map| {
                let entries = map.entries.borrow();
                let a = entries
                    .by_value
                    .get("/a")
                    .map(|g| g.by_status.entries.clone());
                assert_eq!(a, Some(vec![(200, 2), (404, 1)]));
                assert!(entries.overflow.is_none());
            });

            for _ in 0..3 {
                let seen = with_memoised(
                    &BY_KIND,
                    |k| *k == "hit",
                    || "hit",
                    Group::default,
                    |group| {
                        group.recorded += 1;
                        group.recorded
                    },
                );
                assert!(seen.is_some());
            }
            let hits = with_memoised(
                &BY_KIND,
                |k| *k == "hit",
                || "hit",
                Group::default,
                |g| g.recorded,
            );
            assert_eq!(hits, Some(3));
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn admitted_values_get_entries_of_their_own_and_the_others_share_the_overflow_one() {
        std::thread::spawn(|| {
            // Admits the first two values it is asked about (and those again), like a
            // process-wide bound of two.
            let admitted: RefCell<Vec<String>> = RefCell::new(Vec::new());
            let asked = Cell::new(0);
            let registered = Cell::new(0);
            let record = |value: &str| {
                with_admitted(
                    &BY_MODEL,
                    value,
                    "other",
                    |value| {
                        asked.set(asked.get() + 1);
                        let mut admitted = admitted.borrow_mut();
                        let known = admitted.iter().any(|a| a == value);
                        if !known && admitted.len() < 2 {
                            admitted.push(value.to_owned());
                        }
                        known || admitted.iter().any(|a| a == value)
                    },
                    |label| {
                        registered.set(registered.get() + 1);
                        Labelled {
                            label: label.to_owned(),
                            recorded: 0,
                        }
                    },
                    |handle, label| {
                        assert_eq!(handle.label, label);
                        handle.recorded += 1;
                        (label.to_owned(), handle.recorded)
                    },
                )
            };
            let seen = |label: &str, n: u32| Some((label.to_owned(), n));

            assert_eq!(record("a"), seen("a", 1));
            assert_eq!(record("a"), seen("a", 2));
            assert_eq!(asked.get(), 1, "asked only on the thread's first miss");
            // A value spelled like the overflow label, admitted: an entry of its own.
            assert_eq!(record("other"), seen("other", 1));
            assert_eq!(
                record("c"),
                seen("other", 1),
                "past the bound: the overflow"
            );
            assert_eq!(record("d"), seen("other", 2), "the same overflow entry");
            assert_eq!(
                record("other"),
                seen("other", 2),
                "its own entry, not the overflow"
            );
            assert_eq!(record("c"), seen("other", 3));
            assert_eq!(registered.get(), 3, "a, other, and the overflow once");
            assert_eq!(asked.get(), 5, "never again for a value with an entry");

            BY_MODEL.with(|map| {
                let entries = map.entries.borrow();
                let recorded = |value: &str| entries.by_value.get(value).map(|h| h.recorded);
                assert_eq!(recorded("a"), Some(2));
                assert_eq!(recorded("other"), Some(2));
                assert_eq!(recorded("c"), None);
                assert_eq!(entries.overflow.as_ref().map(|h| h.recorded), Some(3));
            });
        })
        .join()
        .expect("the test thread");
    }
}
