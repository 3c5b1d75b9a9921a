//! Token quotas on the HTTP side.
//!
//! An inference call of a key with a token limit (its own or its user's `tpm` or
//! `monthly_tokens`, or a default) reserves an estimate of its tokens, decided together with
//! its request-rate limits in one step of the limiter; the estimate needs the body, so for such
//! a principal the auth middleware does not decide a `POST` under `/v1` itself but marks it
//! [`Deferred`], and the inference handler calls [`reserve`] once the body is read. Whatever it
//! decided is left on the request (`Decided`) for the middleware to stamp as headers:
//! `RateLimit-*` as on every route, and OpenAI's `x-ratelimit-{limit,remaining,reset}-requests`
//! and, when the key or its user has a `tpm`, `-tokens`. A deferred request that never reached
//! [`reserve`] (a bad body, an unknown route, no free call slot) is decided by the middleware
//! afterwards as any other request (see `crate::auth`), so every request still spends one unit
//! of the request rate.
//!
//! Keys without token limits are decided by the middleware exactly as before (before the body
//! is read, from a lease when busy): for them this module costs a few comparisons.

use actix_web::http::Method;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest};
use maas_domain::identity::Principal;
use maas_domain::ports::{
    Allowance, RateFigures, RateRequest, Reservation, TokenDecision, TokenRefusal, WindowFigures,
};
use maas_domain::quotas::{CallKind, estimate};

use maas_telemetry::names::{self, token_limit_decision};

use crate::auth::{Quota, unknown_usage};
use crate::error::{ApiError, OpenAiError};
use crate::state::AppState;

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// On a request whose rate decision waits for its body (set by the auth middleware).
#[derive(Debug, Clone, Copy)]
pub struct Deferred;

/// The figures a deferred decision left for the response's headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decided {
    /// The request rate's (`None`: nothing to say, the limiter was down and calls are refused).
    pub(crate) requests: Option<Quota>,
    /// The tighter token window's, when there is a `tpm`.
    pub(crate) tokens: Option<WindowFigures>,
}

impl Decided {
    /// Stamps `RateLimit-*` and OpenAI's `x-ratelimit-*` headers.
    pub(crate) fn stamp(self, headers: &mut HeaderMap) {
        if let Some(requests) = self.requests {
            requests.stamp(headers);
            headers.insert(LIMIT_REQUESTS, HeaderValue::from(requests.limit));
            headers.insert(REMAINING_REQUESTS, HeaderValue::from(requests.remaining));
            insert_duration(
                headers,
                RESET_REQUESTS,
                requests.reset_seconds.saturating_mul(1_000),
            );
        }
        if let Some(tokens) = self.tokens {
            headers.insert(LIMIT_TOKENS, HeaderValue::from(tokens.limit));
            headers.insert(REMAINING_TOKENS, HeaderValue::from(tokens.remaining));
            insert_duration(headers, RESET_TOKENS, tokens.reset_ms);
        }
    }
}

fn insert_duration(headers: &mut HeaderMap, name: HeaderName, ms: u64) {
    if let Ok(value) = HeaderValue::from_str(&go_duration(ms)) {
        headers.insert(name, value);
    }
}

/// A duration as OpenAI's headers write it (Go's `Duration.String`, to the millisecond):
/// `20ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`.
pub fn go_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let (hours, minutes) = (ms / 3_600_000, ms / 60_000 % 60);
    let (seconds, fraction) = (ms / 1_000 % 60, ms % 1_000);
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&seconds.to_string());
    if fraction > 0 {
        let digits = format!("{fraction:03}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('s');
    out
}

/// Whether the auth middleware leaves `principal`'s request to [`reserve`]: a `POST` under
/// `/v1` (where every `POST` route is an inference call) by a principal with a token limit.
pub fn defers(state: &AppState, principal: &Principal, method: &Method, path: &str) -> bool {
    method == Method::POST && path.starts_with("/v1/") && state.quotas.applies_to(principal)
}

/// The kind of OpenAI call forwarded to `path` (below the endpoint).
pub fn kind_of(path: &str) -> CallKind {
    if path == "embeddings" {
        CallKind::Embeddings
    } else {
        CallKind::Completion
    }
}

fn whose(allowance: Allowance) -> &'static str {
    match allowance {
        Allowance::Key => "this API key",
        Allowance::User => "this user's keys",
    }
}

/// Decides a deferred call once its body is read: its request and its estimated tokens
/// ([`estimate`] of `kind` and `body`) in one step. Returns the reservation its usage event must
/// carry to be settled; `None` when its decision was not deferred (no token limits: the
/// middleware decided) or the limiter was down and `rate_limit.fail_open` admitted it (nothing
/// reserved, nothing to settle).
///
/// # Errors
/// A `max_tokens` that is not an integer (422; the middleware then decides the request as any
/// other), a refusal (429 `rate_limit_exceeded` of type `requests` or `tokens`, or
/// `insufficient_quota`, with `Retry-After`; a call larger than a `tpm`, which no wait would
/// admit: 429 `rate_limit_exceeded` of type `tokens`, "Request too large", without), the limiter down and `rate_limit.fail_open` false
/// (503).
pub async fn reserve(
    req: &HttpRequest,
    state: &AppState,
    kind: CallKind,
    body: &[u8],
) -> Result<Option<Reservation>, OpenAiError> {
    if req.extensions().get::<Deferred>().is_none() {
        return Ok(None);
    }
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        return Ok(None);
    };
    let estimate = estimate(state.quotas.policy(), kind, body)?;
    let rate = state.quotas.request_for(&principal, estimate.tokens).rate;
    let (decided, outcome) = match state.quotas.reserve(&principal, estimate).await {
        TokenDecision::Admitted(admission) => (
            Decided {
                requests: Some(quota_of(&rate, admission.requests)),
                tokens: admission.tokens,
            },
            Ok(Some(admission.reservation)),
        ),
        TokenDecision::Refused(refusal) => refused(&rate, refusal),
        TokenDecision::Unavailable | TokenDecision::Unseeded { .. }
            if state.rate_limit.fail_open =>
        {
            let decided = Decided {
                requests: Some(unknown_usage(&rate)),
                tokens: None,
            };
            (decided, Ok(None))
        }
        TokenDecision::Unavailable | TokenDecision::Unseeded { .. } => {
            let decided = Decided {
                requests: None,
                tokens: None,
            };
            (decided, Err(ApiError::RateLimiterUnavailable))
        }
    };
    req.extensions_mut().insert(decided);
    outcome.map_err(OpenAiError::from)
}

/// The `RateLimit-*` figures of `figures`, of `rate`'s limits.
fn quota_of(rate: &RateRequest, figures: RateFigures) -> Quota {
    Quota {
        limit: rate.limit_of(figures.allowance).rpm,
        remaining: figures.remaining,
        reset_seconds: figures.reset_seconds,
    }
}

/// The headers and the error of a refusal.
fn refused(
    rate: &RateRequest,
    refusal: TokenRefusal,
) -> (Decided, Result<Option<Reservation>, ApiError>) {
    match refusal {
        TokenRefusal::Requests {
            retry_after_seconds,
            reset_seconds,
            allowance,
        } => (
            Decided {
                requests: Some(Quota {
                    limit: rate.limit_of(allowance).rpm,
                    remaining: 0,
                    reset_seconds,
                }),
                tokens: None,
            },
            Err(ApiError::RateLimited {
                retry_after_seconds,
            }),
        ),
        TokenRefusal::Tokens {
            retry_after_ms,
            limit,
            used,
            requested,
            allowance,
            requests,
        } => (
            Decided {
                requests: Some(quota_of(rate, requests)),
                tokens: Some(WindowFigures {
                    limit,
                    remaining: limit.saturating_sub(used),
                    reset_ms: retry_after_ms,
                    allowance,
                }),
            },
            Err(ApiError::TokensLimited {
                retry_after_seconds: retry_after_ms.div_ceil(1_000).max(1),
                retry_in: go_duration(retry_after_ms),
                whose: whose(allowance),
                limit,
                used,
                requested,
            }),
        ),
        TokenRefusal::TooLarge {
            limit,
            requested,
            allowance,
        } => {
            metrics::counter!(
                names::TOKEN_LIMIT_DECISIONS_TOTAL,
                "decision" => token_limit_decision::TOO_LARGE
            )
            .increment(1);
            let decided = Decided {
                requests: None,
                tokens: None,
            };
            let error = ApiError::RequestTooLarge {
                whose: whose(allowance),
                limit,
                requested,
            };
            (decided, Err(error))
        }
        TokenRefusal::Monthly {
            month,
            limit,
            allowance,
            requests,
            ..
        } => {
            let until_next = (month.end() - chrono::Utc::now()).num_seconds();
            (
                Decided {
                    requests: Some(quota_of(rate, requests)),
                    tokens: None,
                },
                Err(ApiError::QuotaExceeded {
                    retry_after_seconds: u64::try_from(until_next).unwrap_or(0).max(1),
                    whose: whose(allowance),
                    limit,
                    month: month.to_string(),
                }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_openai_writes_them() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(20), "20ms");
        assert_eq!(go_duration(1_000), "1s");
        assert_eq!(go_duration(1_500), "1.5s");
        assert_eq!(go_duration(41_724), "41.724s");
        assert_eq!(go_duration(61_000), "1m1s");
        assert_eq!(go_duration(360_000), "6m0s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(go_duration(3_723_040), "1h2m3.04s");
    }
}
