//! The per-request metrics, with their handles kept per thread (in
//! [`maas_telemetry::handles`]' `HandleMap`, `HandleList` and `HandleMemo`).
//!
//! `metrics::counter!(name, "label" => value)` builds a key (allocating its owned label
//! values), hashes it and looks it up in the recorder's registry, under a lock, on every call.
//! A proxied call records about ten such metrics. Here each worker thread registers a label set
//! once and keeps the handle: later calls cost one lookup of a short string in a map of the
//! thread's own, with no allocation and no lock. What reaches the recorder is the same.
//!
//! Handles come from the recorder in effect when a thread first records a label set, so install
//! the recorder before serving (the gateway's binary and the test harness do). A thread that is
//! shutting down, its memo gone, records nothing more.
//!
//! Label sets stay bounded: routes are the matched patterns, methods outside the standard ones
//! are counted as `OTHER` (a client cannot mint new series with made-up methods), models are
//! the registry's and at most `metrics.max_models` of them get series of their own (the others
//! share `model="other"`), statuses are 100 to 599 (a model server's status outside them is
//! `invalid`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use actix_web::http::Method;
use maas_telemetry::handles::{
    HandleList, HandleMap, HandleMemo, memoised, with_admitted, with_mapped,
};
use maas_telemetry::names;
use metrics::{Counter, Gauge, Histogram};

/// The `method` label: the method itself when it is a standard one, else `OTHER`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// `http_request_duration_seconds` of one method on one route, and `http_requests_total` of it
/// by status.
struct MethodMeters {
    duration: Histogram,
    by_status: HandleList<u16, Counter>,
}

/// The meters of one model.
struct ModelMeters {
    upstream_duration: Histogram,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    by_status: HandleList<u16, Counter>,
}

impl ModelMeters {
    fn new(model: &str) -> Self {
        Self {
            upstream_duration: metrics::histogram!(names::UPSTREAM_DURATION_SECONDS,
                "model" => model.to_owned()),
            prompt_tokens: metrics::counter!(names::TOKENS_TOTAL,
                "model" => model.to_owned(), "kind" => "prompt"),
            completion_tokens: metrics::counter!(names::TOKENS_TOTAL,
                "model" => model.to_owned(), "kind" => "completion"),
            by_status: HandleList::new(),
        }
    }
}

/// The `model` label of the models past `metrics.max_models`.
pub const OTHER_MODELS: &str = "other";

/// The `status` label of a model server's status outside 100 to 599.
pub const INVALID_STATUS: &str = "invalid";

thread_local! {
    static IN_FLIGHT: Gauge = metrics::gauge!(names::HTTP_REQUESTS_IN_FLIGHT);
    static OVERHEAD: Histogram = metrics::histogram!(names::GATEWAY_OVERHEAD_SECONDS);
    /// By route pattern, then by method.
    static ROUTES: HandleMap<HandleList<&'static str, MethodMeters>> = HandleMap::new();
    /// By model name, for the models [`MODEL_LABELS`] admitted; the others share the map's
    /// overflow entry, labelled [`OTHER_MODELS`] (kept apart from a model of that name).
    static MODELS: HandleMap<ModelMeters> = HandleMap::new();
    /// `maas_usage_rejected_total` by reason.
    static USAGE_REJECTED: HandleMemo<&'static str, Counter> = const { HandleMemo::new() };
    /// `maas_upstream_refused_total` by reason.
    static UPSTREAM_REFUSED: HandleMemo<&'static str, Counter> = const { HandleMemo::new() };
}

/// Which models have series of their own: the first `max` distinct ones seen by the process
/// (the recorder is the process's, so is the bound). A thread asks only the first time it meets
/// a model; once the set is full it is frozen and read without a lock.
pub struct ModelLabels {
    max: AtomicUsize,
    /// Empty until the first model is admitted.
    admitted: Mutex<Option<HashSet<String>>>,
    frozen: OnceLock<HashSet<String>>,
}

impl ModelLabels {
    /// Room for `max` models.
    pub const fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max),
            admitted: Mutex::new(None),
            frozen: OnceLock::new(),
        }
    }

    /// Sets the bound (for the models not seen yet; once full, the set stays as it is).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Whether `model` has series of its own: already admitted, or admitted now while there is
    /// room.
    pub fn admit(&self, model: &str) -> bool {
        if let Some(frozen) = self.frozen.get() {
            return frozen.contains(model);
        }
        let mut guard = self
            .admitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let admitted = guard.get_or_insert_with(HashSet::new);
        if admitted.contains(model) {
            return true;
        }
        if admitted.len() < self.max.load(Ordering::Relaxed) {
            admitted.insert(model.to_owned());
            return true;
        }
        let _ = self.frozen.set(admitted.clone());
        false
    }
}

/// The process's [`ModelLabels`], sized by [`limit_models`].
static MODEL_LABELS: ModelLabels = ModelLabels::new(1000);

/// Gives at most `max` models series of their own (`metrics.max_models`); call before serving.
pub fn limit_models(max: usize) {
    MODEL_LABELS.set_max(max);
}

/// `metrics.max_models`: also the most versions whose endpoints' states are on `/metrics`.
pub fn max_models() -> usize {
    MODEL_LABELS.max.load(Ordering::Relaxed)
}

/// The `model` label of `model`'s series: its name while `metrics.max_models` allows, else
/// [`OTHER_MODELS`].
pub fn model_label(model: &str) -> &str {
    if MODEL_LABELS.admit(model) {
        model
    } else {
        OTHER_MODELS
    }
}

/// Adds `delta` to `http_requests_in_flight` (while the thread is alive; a thread shutting down
/// records nothing).
pub fn add_in_flight(delta: f64) {
    let _ = IN_FLIGHT.try_with(|gauge| gauge.increment(delta));
}

/// Records one served request: `http_requests_total{method,route,status}` and
/// `http_request_duration_seconds{method,route}`.
pub fn record_request(method: &Method, route: &str, status: u16, elapsed: Duration) {
    let method = method_label(method);
    with_mapped(&ROUTES, route, HandleList::new, |methods| {
        let meters = methods.get_or_register(
            |m| *m == method,
            || method,
            || MethodMeters {
                duration: metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS,
                    "method" => method, "route" => route.to_owned()),
                by_status: HandleList::new(),
            },
        );
        meters.duration.record(elapsed.as_secs_f64());
        meters
            .by_status
            .get_or_register(
                |s| *s == status,
                || status,
                || {
                    metrics::counter!(names::HTTP_REQUESTS_TOTAL, "method" => method,
                        "route" => route.to_owned(), "status" => status.to_string())
                },
            )
            .increment(1);
    });
}

/// Records the gateway's own time on an inference call (`maas_gateway_overhead_seconds`).
pub fn record_overhead(overhead: Duration) {
    let _ = OVERHEAD.try_with(|histogram| histogram.record(overhead.as_secs_f64()));
}

/// Runs `f` on the meters of `model` (registering them the first time), or on those of
/// [`OTHER_MODELS`] when `model` has no series of its own; `f` gets the label too.
/// [`MODEL_LABELS`] is asked only when this thread has no meters of `model` yet.
fn with_model(model: &str, f: impl FnOnce(&mut ModelMeters, &str)) {
    let _ = with_admitted(
        &MODELS,
        model,
        OTHER_MODELS,
        |model| MODEL_LABELS.admit(model),
        ModelMeters::new,
        f,
    );
}

/// Counts a call forwarded to `model`'s server, by the status the caller got
/// (`maas_upstream_requests_total{model,status}`); a status outside 100 to 599 (a model
/// server's own) is counted as [`INVALID_STATUS`].
pub fn count_upstream(model: &str, status: u16) {
    let valid = (100..=599).contains(&status);
    let key = if valid { status } else { 0 };
    with_model(model, |meters, label| {
        meters
            .by_status
            .get_or_register(
                |s| *s == key,
                || key,
                || {
                    let status = if valid {
                        status.to_string()
                    } else {
                        INVALID_STATUS.to_owned()
                    };
                    metrics::counter!(names::UPSTREAM_REQUESTS_TOTAL,
                        "model" => label.to_owned(), "status" => status)
                },
            )
            .increment(1);
    });
}

/// Counts a token count of a model server's `usage` that was not believed
/// (`maas_usage_rejected_total{reason}`, see `proxy::meter::rejected`).
pub fn count_usage_rejected(reason: &'static str) {
    memoised(
        &USAGE_REJECTED,
        |r| *r == reason,
        || reason,
        || metrics::counter!(names::USAGE_REJECTED_TOTAL, "reason" => reason),
    )
    .increment(1);
}

/// Counts a call the gateway refused to send to a model server
/// (`maas_upstream_refused_total{reason}`).
pub fn count_upstream_refused(reason: &'static str) {
    memoised(
        &UPSTREAM_REFUSED,
        |r| *r == reason,
        || reason,
        || metrics::counter!(names::UPSTREAM_REFUSED_TOTAL, "reason" => reason),
    )
    .increment(1);
}

/// Records a completed upstream call of `model`: its duration and the tokens it reported
/// (`maas_upstream_duration_seconds{model}`, `maas_tokens_total{model,kind}`).
pub fn record_upstream(
    model: &str,
    duration: Duration,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
) {
    with_model(model, |meters, _| {
        meters.upstream_duration.record(duration.as_secs_f64());
        if let Some(n) = prompt_tokens {
            meters.prompt_tokens.increment(n.max(0).unsigned_abs());
        }
        if let Some(n) = completion_tokens {
            meters.completion_tokens.increment(n.max(0).unsigned_abs());
        }
    });
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    /// What a metric holds: a counter's count, a gauge's value, or a histogram's sample count.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Counter(u64),
        Gauge(f64),
        Samples(usize),
    }

    /// Every metric recorded under `name` with exactly `labels`.
    fn seen(
        snapshot: &[(
            metrics_util::CompositeKey,
            Option<metrics::Unit>,
            Option<metrics::SharedString>,
            DebugValue,
        )],
        name: &str,
        labels: &[(&str, &str)],
    ) -> Vec<Seen> {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                let key = key.key();
                let mut have: Vec<(&str, &str)> =
                    key.labels().map(|l| (l.key(), l.value())).collect();
                let mut want = labels.to_vec();
                have.sort_unstable();
                want.sort_unstable();
                key.name() == name && have == want
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => Seen::Counter(*n),
                DebugValue::Gauge(v) => Seen::Gauge(v.into_inner()),
                DebugValue::Histogram(samples) => Seen::Samples(samples.len()),
            })
            .collect()
    }

    #[test]
    fn memoised_handles_record_under_the_same_labels_as_the_macros() {
        // A thread of its own: its memos start empty and see this recorder.
        std::thread::spawn(|| {
            let recorder = DebuggingRecorder::new();
            let snapshotter = recorder.snapshotter();
            let _guard = metrics::set_default_local_recorder(&recorder);

            for _ in 0..3 {
                record_request(&Method::POST, "/v1/chat/completions", 200, Duration::ZERO);
            }
            record_request(&Method::POST, "/v1/chat/completions", 429, Duration::ZERO);
            let made_up = Method::from_bytes(b"BREW").expect("an extension method");
            record_request(&made_up, "/health", 405, Duration::ZERO);
            count_upstream("m", 200);
            count_upstream("m", 200);
            count_upstream("m", 502);
            count_upstream("n", 200);
            count_upstream("m", 777);
            count_upstream("m", 999);
            record_upstream("m", Duration::from_millis(2), Some(7), None);
            record_upstream("m", Duration::from_millis(2), Some(3), Some(-1));
            add_in_flight(1.0);
            add_in_flight(1.0);
            add_in_flight(-1.0);
            record_overhead(Duration::from_micros(50));

            let snapshot = snapshotter.snapshot().into_vec();
            let route = "/v1/chat/completions";
            let count = |name, labels: &[(&str, &str)]| seen(&snapshot, name, labels);
            assert_eq!(
                count(
                    names::HTTP_REQUESTS_TOTAL,
                    &[("method", "POST"), ("route", route), ("status", "200")]
                ),
                vec![Seen::Counter(3)]
            );
            assert_eq!(
                count(
                    names::HTTP_REQUESTS_TOTAL,
                    &[("method", "POST"), ("route", route), ("status", "429")]
                ),
                vec![Seen::Counter(1)]
            );
            assert_eq!(
                count(
                    names::HTTP_REQUESTS_TOTAL,
                    &[("method", "OTHER"), ("route", "/health"), ("status", "405")]
                ),
                vec![Seen::Counter(1)],
                "made-up methods share one label value"
            );
            assert_eq!(
                count(
                    names::HTTP_REQUEST_DURATION_SECONDS,
                    &[("method", "POST"), ("route", route)]
                ),
                vec![Seen::Samples(4)]
            );
            for (model, status, n) in [("m", "200", 2), ("m", "502", 1), ("n", "200", 1)] {
                assert_eq!(
                    count(
                        names::UPSTREAM_REQUESTS_TOTAL,
                        &[("model", model), ("status", status)]
                    ),
                    vec![Seen::Counter(n)],
                    "{model} {status}"
                );
            }
            assert_eq!(
                count(
                    names::UPSTREAM_REQUESTS_TOTAL,
                    &[("model", "m"), ("status", INVALID_STATUS)]
                ),
                vec![Seen::Counter(2)],
                "statuses outside 100 to 599 share one label value"
            );
            assert_eq!(
                count(names::TOKENS_TOTAL, &[("model", "m"), ("kind", "prompt")]),
                vec![Seen::Counter(10)]
            );
            assert_eq!(
                count(
                    names::TOKENS_TOTAL,
                    &[("model", "m"), ("kind", "completion")]
                ),
                vec![Seen::Counter(0)],
                "a negative count adds nothing"
            );
            assert_eq!(
                count(names::UPSTREAM_DURATION_SECONDS, &[("model", "m")]),
                vec![Seen::Samples(2)]
            );
            assert_eq!(
                count(names::HTTP_REQUESTS_IN_FLIGHT, &[]),
                vec![Seen::Gauge(1.0)]
            );
            assert_eq!(
                count(names::GATEWAY_OVERHEAD_SECONDS, &[]),
                vec![Seen::Samples(1)]
            );
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn models_past_the_bound_get_no_series_of_their_own_and_the_first_ones_keep_theirs() {
        let labels = ModelLabels::new(2);
        assert!(labels.admit("a"));
        assert!(labels.admit("b"));
        assert!(labels.admit("a"), "seen before");
        assert!(!labels.admit("c"));
        assert!(labels.admit("b"), "still, once full");
        assert!(!labels.admit("d"));
        let none = ModelLabels::new(0);
        assert!(!none.admit("a"));
    }

    #[test]
    fn standard_methods_keep_their_names() {
        for method in [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS] {
            assert_eq!(method_label(&method), method.as_str());
        }
        let made_up = Method::from_bytes(b"PURGE").expect("an extension method");
        assert_eq!(method_label(&made_up), "OTHER");
    }
}
