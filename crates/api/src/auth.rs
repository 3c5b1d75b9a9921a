//! Authentication and rate limiting of `/api/v1` and `/v1`: one middleware that turns the
//! request's API key into a [`Principal`] (refusing, before any lookup, a client address that
//! failed too often), spends one unit of the key's rate limit and of its user's in one decision,
//! and stamps the `RateLimit-*` headers of the tighter of the two on the response. An inference
//! call of a principal with token limits is decided after its body is read instead, with its
//! token reservation (see [`crate::quota`]); the middleware stamps what that decided.

use std::future::{Ready, ready};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use maas_domain::accounts::AuthError;
use maas_domain::identity::Principal;
use maas_domain::ports::{RateDecision, RateRequest};
use maas_telemetry::names;

use crate::error::ApiError;
use crate::quota::{self, Decided};
use crate::state::AppState;

/// The header carrying an API key when `Authorization: Bearer` is not used.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The key a request carries: `Authorization: Bearer <key>`, else `x-api-key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, key) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| key.trim())
            .filter(|k| !k.is_empty());
    }
    headers.get(&API_KEY_HEADER)?.to_str().ok().map(str::trim)
}

/// The three `RateLimit-*` values of a response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quota {
    /// Requests per minute of the tighter allowance.
    pub(crate) limit: u32,
    /// Requests that could still be made at once.
    pub(crate) remaining: u32,
    /// Seconds until the allowance is full again.
    pub(crate) reset_seconds: u64,
}

impl Quota {
    pub(crate) fn stamp(self, headers: &mut HeaderMap) {
        headers.insert(LIMIT, HeaderValue::from(self.limit));
        headers.insert(REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RESET, HeaderValue::from(self.reset_seconds));
    }
}

fn refuse<B>(
    req: ServiceRequest,
    err: ApiError,
    quota: Option<Quota>,
) -> ServiceResponse<EitherBody<B>> {
    refuse_request(req.into_parts().0, err, quota)
}

fn refuse_request<B>(
    req: HttpRequest,
    err: ApiError,
    quota: Option<Quota>,
) -> ServiceResponse<EitherBody<B>> {
    // The OpenAI-compatible routes answer in OpenAI's error shape, so its SDKs understand them.
    let mut response = if req.path().starts_with("/v1/") || req.path() == "/v1" {
        err.openai_response()
    } else {
        err.error_response()
    };
    if let Some(quota) = quota {
        quota.stamp(response.headers_mut());
    }
    ServiceResponse::new(req, response).map_into_right_body()
}

/// Authenticates the request and spends one unit of its key's rate limit (and its user's).
///
/// Refusals: 401 (no usable key; the same answer whatever the reason, which goes to
/// `maas_auth_failures_total{reason}`), 429 with `Retry-After` (rate limited, or too many failed
/// authentications from the client's address, `reason="throttled"`), 503 when the key store is
/// down or the limiter is down and `rate_limit.fail_open` is false.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(refuse(req, ApiError::Unauthorized, None));
    };
    let now = chrono::Utc::now();
    let client = state
        .client_address
        .of(req.peer_addr().map(|peer| peer.ip()), req.headers());
    let principal = match state
        .accounts
        .authenticate_from(client, presented_key(req.headers()), now)
        .await
    {
        Ok(principal) => principal,
        Err(AuthError::Refused(reason)) => {
            metrics::counter!(names::AUTH_FAILURES_TOTAL, "reason" => reason.as_str()).increment(1);
            return Ok(refuse(req, ApiError::Unauthorized, None));
        }
        Err(AuthError::Throttled {
            retry_after_seconds,
        }) => {
            metrics::counter!(names::AUTH_FAILURES_TOTAL, "reason" => "throttled").increment(1);
            let err = ApiError::TooManyFailedAuthentications {
                retry_after_seconds,
            };
            return Ok(refuse(req, err, None));
        }
        Err(AuthError::Unavailable(e)) => {
            metrics::counter!(names::AUTH_FAILURES_TOTAL, "reason" => "unavailable").increment(1);
            let err = ApiError::Domain(maas_domain::DomainError::Unavailable(e));
            return Ok(refuse(req, err, None));
        }
    };

    if quota::defers(&state, &principal, req.method(), req.path()) {
        req.extensions_mut().insert(principal);
        req.extensions_mut().insert(quota::Deferred);
        let response = next.call(req).await?;
        return Ok(after_deferred(&state, response).await);
    }
    let request = state.rate_limit.limits().request_for(&principal);
    let quota = match decide(&state, &request).await {
        Ok(quota) => quota,
        Err((err, quota)) => return Ok(refuse(req, err, quota)),
    };

    req.extensions_mut().insert(principal);
    let mut response = next.call(req).await?;
    quota.stamp(response.headers_mut());
    Ok(response.map_into_left_body())
}

/// One request of `request`'s limits: its headers, or the refusal with them.
async fn decide(
    state: &AppState,
    request: &RateRequest,
) -> Result<Quota, (ApiError, Option<Quota>)> {
    match state.rate_limiter.decide(request).await {
        RateDecision::Allowed {
            remaining,
            reset_seconds,
            allowance,
        } => Ok(Quota {
            limit: request.limit_of(allowance).rpm,
            remaining,
            reset_seconds,
        }),
        RateDecision::Limited {
            retry_after_seconds,
            reset_seconds,
            allowance,
        } => {
            let quota = Quota {
                limit: request.limit_of(allowance).rpm,
                remaining: 0,
                reset_seconds,
            };
            let err = ApiError::RateLimited {
                retry_after_seconds,
            };
            Err((err, Some(quota)))
        }
        RateDecision::Unavailable if state.rate_limit.fail_open => Ok(unknown_usage(request)),
        RateDecision::Unavailable => Err((ApiError::RateLimiterUnavailable, None)),
    }
}

/// A deferred request once its handler ran: the headers of what [`quota::reserve`] decided;
/// or, when it never got there (a bad body, no free call slot, a route that is no inference
/// call), the request is decided now as any other, and refused (its response replaced) when
/// its rate is spent: nothing was forwarded for it.
async fn after_deferred<B>(
    state: &AppState,
    response: ServiceResponse<B>,
) -> ServiceResponse<EitherBody<B>> {
    let decided = response.request().extensions().get::<Decided>().copied();
    let decided = match decided {
        Some(decided) => decided,
        None => {
            let principal = response.request().extensions().get::<Principal>().cloned();
            let Some(principal) = principal else {
                return response.map_into_left_body();
            };
            let request = state.rate_limit.limits().request_for(&principal);
            match decide(state, &request).await {
                Ok(quota) => Decided {
                    requests: Some(quota),
                    tokens: None,
                },
                Err((err, quota)) => {
                    return refuse_request(response.into_parts().0, err, quota);
                }
            }
        }
    };
    let mut response = response;
    decided.stamp(response.headers_mut());
    response.map_into_left_body()
}

/// The headers of an admission while the limiter cannot decide: nothing is known about the
/// usage, so a full allowance of the tighter limit.
pub(crate) fn unknown_usage(request: &RateRequest) -> Quota {
    let tighter = match request.user {
        Some(user) if user.limit.rpm < request.key.rpm => user.limit,
        _ => request.key,
    };
    Quota {
        limit: tighter.rpm,
        remaining: tighter.burst,
        reset_seconds: 0,
    }
}

/// The authenticated principal of the request (set by [`authenticate`]).
#[derive(Debug, Clone)]
pub struct Actor(pub Principal);

impl FromRequest for Actor {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .map(Actor)
                .ok_or(ApiError::Unauthorized),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        map
    }

    #[test]
    fn keys_come_from_bearer_or_x_api_key() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer k1")])),
            Some("k1")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  k1 ")])),
            Some("k1")
        );
        assert_eq!(presented_key(&headers(&[("x-api-key", "k2")])), Some("k2"));
        assert_eq!(
            presented_key(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer")])),
            None
        );
        assert_eq!(presented_key(&headers(&[])), None);
        // An Authorization header wins, even when it is unusable.
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Basic x"),
                ("x-api-key", "k")
            ])),
            None
        );
    }
}
