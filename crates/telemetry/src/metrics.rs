//! The process-wide Prometheus recorder and the descriptions of every metric.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::TelemetryError;
use crate::names;

/// Histogram buckets (seconds) for latencies, from 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Histogram buckets (seconds) for `maas_upstream_duration_seconds`, from 5 ms to 10 min: a call
/// lasts until the model server's body is complete, and a long generation takes minutes
/// (`upstream.timeout_seconds` is 300 by default).
pub const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// How often [`PrometheusHandle::run_upkeep`] should run (it drains histogram buffers).
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process; later calls, also concurrent
/// ones, wait for it and return the same handle) and records `maas_build_info{version}`.
///
/// Render the text format with [`PrometheusHandle::render`]; call
/// [`PrometheusHandle::run_upkeep`] every [`UPKEEP_INTERVAL`].
pub fn install_recorder(version: &str) -> Result<PrometheusHandle, TelemetryError> {
    let handle = HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                // A full name wins over a suffix.
                .set_buckets_for_metric(
                    Matcher::Full(names::UPSTREAM_DURATION_SECONDS.into()),
                    UPSTREAM_BUCKETS,
                )
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|_| "another metrics recorder is installed".to_owned())?;
            describe();
            Ok(handle)
        })
        .clone()
        .map_err(TelemetryError::Metrics)?;
    metrics::gauge!(names::BUILD_INFO, "version" => version.to_owned()).set(1.0);
    Ok(handle)
}

fn describe() {
    describe_counter!(
        names::UPSTREAM_REQUESTS_TOTAL,
        "Calls forwarded to model servers"
    );
    describe_histogram!(
        names::UPSTREAM_DURATION_SECONDS,
        Unit::Seconds,
        "Model-server time per call, request sent to body complete"
    );
    describe_histogram!(
        names::GATEWAY_OVERHEAD_SECONDS,
        Unit::Seconds,
        "Time spent in the gateway per inference call, excluding the model server"
    );
    describe_counter!(names::USAGE_EVENTS_DROPPED_TOTAL, "Usage events not stored");
    describe_counter!(names::TOKENS_TOTAL, "Tokens reported by model servers");
    describe_counter!(names::HTTP_REQUESTS_TOTAL, "HTTP requests served");
    describe_histogram!(
        names::HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request latency"
    );
    describe_gauge!(names::HTTP_REQUESTS_IN_FLIGHT, "HTTP requests being served");
    describe_gauge!(names::DB_POOL_CONNECTIONS, "Pool connections by state");
    describe_counter!(
        names::CACHE_REQUESTS_TOTAL,
        "Cache lookups by kind and result"
    );
    describe_counter!(names::CACHE_WRITE_ERRORS_TOTAL, "Cache writes that failed");
    describe_gauge!(
        names::CACHE_LOCAL_LIVE,
        "1 while the in-process cache tier is in use (its invalidation subscription is up)"
    );
    describe_gauge!(names::BUILD_INFO, "Build information; always 1");
    describe_counter!(
        names::DB_UNAVAILABLE_TOTAL,
        "Database operations refused because the database was unreachable or saturated"
    );
    describe_histogram!(
        names::READINESS_CHECK_DURATION_SECONDS,
        Unit::Seconds,
        "Latency of readiness checks of dependencies"
    );
    describe_counter!(
        names::RATE_LIMIT_DECISIONS_TOTAL,
        "Rate-limit decisions: allowed, limited, or error when the limiter could not decide"
    );
    describe_counter!(
        names::AUTH_FAILURES_TOTAL,
        "Requests refused authentication, by reason"
    );
}

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
/// `metrics::counter!(name, "label" => value)` builds a key (allocating owned label values),
/// hashes it and looks it up in the recorder's registry under a lock, every time. With a memo
/// in a `thread_local!`, each thread registers a label set once and reuses the handle: a lookup
/// is a scan of a few entries, with no allocation and no lock. Meant for metrics with a handful
/// of label sets; the memo never forgets one. (A handle is anything cheap to clone that each
/// thread should build once: the proxy keeps its per-thread HTTP clients in one too.) For label
/// values too many to scan (routes, models), see [`HandleMap`].
///
/// A handle comes from the recorder in effect when the thread first records that label set:
/// install the recorder (or a thread's local one) before recording.
///
/// ```
/// use maas_telemetry::metrics::{HandleMemo, memoised};
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
    entries: std::cell::RefCell<HandleList<K, H>>,
}

impl<K, H> HandleMemo<K, H> {
    /// An empty memo.
    pub const fn new() -> Self {
        Self {
            entries: std::cell::RefCell::new(HandleList::new()),
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
    memo: &'static std::thread::LocalKey<HandleMemo<K, H>>,
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
    memo: &'static std::thread::LocalKey<HandleMemo<K, H>>,
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
/// registered. The values must stay bounded (the map never forgets one). Used through
/// [`with_mapped`].
///
/// ```
/// use maas_telemetry::metrics::{HandleMap, with_mapped};
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
#[derive(Debug, Default)]
pub struct HandleMap<H> {
    entries: std::cell::RefCell<std::collections::HashMap<String, H>>,
}

impl<H> HandleMap<H> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            entries: std::cell::RefCell::new(std::collections::HashMap::new()),
        }
    }
}

/// Runs `record` on the handle (or group) kept under `value` in this thread's `map`, made by
/// `register` the first time. A thread that is shutting down (its map gone) records nothing:
/// `None`.
pub fn with_mapped<H: 'static, R>(
    map: &'static std::thread::LocalKey<HandleMap<H>>,
    value: &str,
    register: impl FnOnce() -> H,
    record: impl FnOnce(&mut H) -> R,
) -> Option<R> {
    map.try_with(|map| {
        let mut entries = map.entries.borrow_mut();
        // `get_mut` first: `entry` would need an owned key, an allocation on every call.
        let handle = match entries.get_mut(value) {
            Some(handle) => handle,
            None => entries.entry(value.to_owned()).or_insert_with(register),
        };
        record(handle)
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in handle group: how often it was recorded into, and counts by status.
    #[derive(Default)]
    struct Group {
        recorded: u32,
        by_status: HandleList<u16, u32>,
    }

    thread_local! {
        static BY_ROUTE: HandleMap<Group> = HandleMap::new();
        static BY_KIND: HandleMemo<&'static str, Group> = const { HandleMemo::new() };
    }

    #[test]
    fn each_label_set_is_registered_once_and_recorded_in_place() {
        // A thread of its own: its maps start empty.
        std::thread::spawn(|| {
            let registered = std::cell::Cell::new(0);
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
                let a = entries.get("/a").map(|g| g.by_status.entries.clone());
                assert_eq!(a, Some(vec![(200, 2), (404, 1)]));
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
}
