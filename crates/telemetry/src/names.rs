//! Every metric name the gateway emits, in one place. Other crates use these constants, never
//! string literals, so a rename cannot miss a call site.

/// Counter of HTTP requests, labelled `method`, `route` (the matched pattern) and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// Histogram of request latency in seconds, labelled `method` and `route`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
/// Gauge of requests being served.
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
/// Gauge of pool connections, labelled `pool` (`postgres`, `redis`) and `state` (`idle`, `in_use`, `max`).
pub const DB_POOL_CONNECTIONS: &str = "db_pool_connections";
/// Counter of cache lookups, labelled `kind` (the scope's text before its first `:`, e.g.
/// `model` or `key`) and `result` (`local_hit` in the process, `hit` in Redis, `miss`, `error`).
pub const CACHE_REQUESTS_TOTAL: &str = "maas_cache_requests_total";
/// Gauge: 1 while the in-process cache tier is in use (its invalidation subscription is up).
pub const CACHE_LOCAL_LIVE: &str = "maas_cache_local_live";
/// Counter of cache writes (fills, invalidations) that failed, labelled `op`.
pub const CACHE_WRITE_ERRORS_TOTAL: &str = "maas_cache_write_errors_total";
/// Gauge, always 1, labelled `version`.
pub const BUILD_INFO: &str = "maas_build_info";
/// Counter of database operations that failed because the database was unreachable or the pool
/// was exhausted, labelled `op`.
pub const DB_UNAVAILABLE_TOTAL: &str = "maas_db_unavailable_total";
/// Histogram of dependency check latency in seconds, labelled `dependency`.
pub const READINESS_CHECK_DURATION_SECONDS: &str = "maas_readiness_check_duration_seconds";
/// Counter of rate-limit decisions, labelled `decision` (see [`rate_limit_decision`]).
pub const RATE_LIMIT_DECISIONS_TOTAL: &str = "maas_rate_limit_decisions_total";
/// Counter of token-reserving decisions (inference calls of keys with token limits; also counted
/// in [`RATE_LIMIT_DECISIONS_TOTAL`]), labelled `decision` (see [`token_limit_decision`]).
pub const TOKEN_LIMIT_DECISIONS_TOTAL: &str = "maas_token_limit_decisions_total";
/// Counter of token reservations settled with their calls' usage, labelled `result`
/// (`settled`; `failed`: the limiter was down, the reservations stay as they were).
pub const QUOTA_SETTLEMENTS_TOTAL: &str = "maas_quota_settlements_total";
/// Counter of refused authentications, labelled `reason` (kept off the HTTP response).
pub const AUTH_FAILURES_TOTAL: &str = "maas_auth_failures_total";

/// Counter of calls forwarded to model servers, labelled `model` and `status`.
pub const UPSTREAM_REQUESTS_TOTAL: &str = "maas_upstream_requests_total";
/// Histogram of model-server time (request sent to body complete), labelled `model`.
pub const UPSTREAM_DURATION_SECONDS: &str = "maas_upstream_duration_seconds";
/// Histogram of time spent in the gateway per inference call, excluding the model server.
pub const GATEWAY_OVERHEAD_SECONDS: &str = "maas_gateway_overhead_seconds";
/// Counter of usage events not stored, labelled `reason` (`queue_full`, `write_failed`).
pub const USAGE_EVENTS_DROPPED_TOTAL: &str = "maas_usage_events_dropped_total";
/// Counter of tokens reported by model servers, labelled `model` and `kind` (`prompt`, `completion`).
pub const TOKENS_TOTAL: &str = "maas_tokens_total";
/// Counter of token counts in a model server's `usage` that were not believed and recorded as
/// unknown, labelled `reason` (`negative`, `too_large`, `not_an_integer`).
pub const USAGE_REJECTED_TOTAL: &str = "maas_usage_rejected_total";
/// Counter of inference calls the gateway refused to send to a model server, labelled `reason`
/// (`address_not_allowed`: the endpoint's address is denied by `upstream.denied_networks`;
/// `concurrency_limit`: `upstream.max_concurrent_calls` calls were already in flight).
pub const UPSTREAM_REFUSED_TOTAL: &str = "maas_upstream_refused_total";

/// Gauge of each endpoint of a version on this replica, labelled `model`, `version` and
/// `endpoint` (its index in the version's list): 1 in rotation, 0 taken out after failures.
/// Written at each scrape (`exposition`) for the versions the replica keeps then, at most
/// `metrics.max_models` of them, never through the recorder.
pub const UPSTREAM_ENDPOINT_STATE: &str = "maas_upstream_endpoint_state";
/// Counter of calls sent again to another endpoint because the first could not have reached a
/// model server, labelled `model`.
pub const UPSTREAM_RETRIES_TOTAL: &str = "maas_upstream_retries_total";
/// Counter of endpoints taken out of rotation after failing, labelled `model`.
pub const UPSTREAM_EJECTIONS_TOTAL: &str = "maas_upstream_ejections_total";

/// Label values of [`CACHE_REQUESTS_TOTAL`].
pub mod cache_result {
    /// Found in the in-process tier: no network round trip.
    pub const LOCAL_HIT: &str = "local_hit";
    /// Found in the cache (Redis).
    pub const HIT: &str = "hit";
    /// Not in the cache; loaded from the source.
    pub const MISS: &str = "miss";
    /// The cache failed or timed out; the source was used.
    pub const ERROR: &str = "error";
}

/// Label values of [`RATE_LIMIT_DECISIONS_TOTAL`].
pub mod rate_limit_decision {
    /// The request was admitted.
    pub const ALLOWED: &str = "allowed";
    /// The request was refused: the key is over its limit.
    pub const LIMITED: &str = "limited";
    /// The limiter could not decide (store down, too slow, or skipped after a recent failure).
    pub const ERROR: &str = "error";
}

/// Label values of [`TOKEN_LIMIT_DECISIONS_TOTAL`].
pub mod token_limit_decision {
    /// Admitted: its tokens are reserved.
    pub const ALLOWED: &str = "allowed";
    /// Refused by a request rate (the key's or its user's `rpm`).
    pub const REQUESTS: &str = "requests";
    /// Refused by a token window (`tpm`).
    pub const TOKENS: &str = "tokens";
    /// Refused by a month's quota (`monthly_tokens`).
    pub const MONTHLY: &str = "monthly";
    /// Refused before the limiter was asked: the client asked for more than a `tpm`.
    pub const TOO_LARGE: &str = "too_large";
    /// A month's counter was missing and is to be seeded; the call is decided again.
    pub const UNSEEDED: &str = "unseeded";
    /// The limiter could not decide.
    pub const ERROR: &str = "error";
}
