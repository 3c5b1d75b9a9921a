//! The one place where errors become HTTP responses: RFC 9457 `application/problem+json`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use maas_domain::{DomainError, ValidationError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::proxy::{EndpointIndex, UpstreamError};
use crate::request_id::current_request_id;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank` style tags under `urn:maas:problem:`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short, fixed summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, naming the offending field where there is one.
    pub detail: String,
    /// The field at fault, when one is (`name`, `tags[3]`, `limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The request's id (also in the `x-request-id` header and the log line).
    pub request_id: Option<String>,
}

/// Everything a handler or extractor can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A use-case failed.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The body is not well-formed JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body is not JSON at all.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is larger than `server.max_body_bytes`.
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive within `server.body_read_timeout_seconds`.
    #[error("the request body did not arrive within server.body_read_timeout_seconds")]
    BodyTimeout,
    /// No such route.
    #[error("no route matches {0}")]
    RouteNotFound(String),
    /// The route exists, not with this method.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// No usable API key. The reason is for logs and metrics only: every case looks the same.
    #[error("a valid API key is required (Authorization: Bearer <key>, or x-api-key)")]
    Unauthorized,
    /// The key's rate limit is exhausted.
    #[error("rate limit exceeded; retry in {retry_after_seconds} s")]
    RateLimited {
        /// Seconds until one more request would be admitted.
        retry_after_seconds: u64,
    },
    /// A token window of the key, or of all its user's keys, is at its `tpm`: OpenAI's wording.
    #[error(
        "Rate limit reached for {whose} on tokens per min (TPM): Limit {limit}, Used {used}, \
         Requested {requested}. Please try again in {retry_in}."
    )]
    TokensLimited {
        /// Seconds until the call would be admitted (rounded up).
        retry_after_seconds: u64,
        /// The same, as OpenAI writes it (`1.5s`, `20ms`).
        retry_in: String,
        /// `this API key` or `this user's keys`.
        whose: &'static str,
        /// The tokens per minute.
        limit: u64,
        /// Tokens in the window.
        used: u64,
        /// What the call asked to reserve.
        requested: u64,
    },
    /// A call that reserves more tokens than a `tpm` of the key, or of all its user's keys,
    /// allows in a minute: it can never be admitted, so it is refused at once, with OpenAI's
    /// wording and no `Retry-After`.
    #[error(
        "Request too large for {whose} on tokens per min (TPM): Limit {limit}, Requested \
         {requested}. The input or output tokens must be reduced in order to run successfully \
         (max_tokens or max_completion_tokens, and the prompt)."
    )]
    RequestTooLarge {
        /// `this API key` or `this user's keys`.
        whose: &'static str,
        /// The tokens per minute.
        limit: u64,
        /// What the call asked to reserve.
        requested: u64,
    },
    /// A monthly token quota of the key, or of all its user's keys, is used up.
    #[error(
        "You exceeded the monthly token quota of {whose} ({limit} tokens in {month}, UTC); it \
         renews with the next month."
    )]
    QuotaExceeded {
        /// Seconds until the month ends.
        retry_after_seconds: u64,
        /// `this API key` or `this user's keys`.
        whose: &'static str,
        /// The quota.
        limit: u64,
        /// The month, `2027-01`.
        month: String,
    },
    /// The client's address failed to authenticate too often lately
    /// (`auth.failed_per_ip_per_minute`); its requests are not looked at until it may retry.
    #[error("too many failed authentications from this address; retry in {retry_after_seconds} s")]
    TooManyFailedAuthentications {
        /// Seconds until one more attempt would be looked at.
        retry_after_seconds: u64,
    },
    /// The rate limiter is down and `rate_limit.fail_open` is false.
    #[error("the rate limiter is unavailable; retry later")]
    RateLimiterUnavailable,
    /// The model server could not be reached (or its response broke off).
    #[error("the model server is unreachable")]
    UpstreamUnreachable(String),
    /// The model server did not answer within `upstream.timeout_seconds`.
    #[error("the model server did not answer in time")]
    UpstreamTimeout,
    /// The body could not be read from the connection.
    #[error("could not read the request body: {0}")]
    BadRequest(String),
    /// The version's endpoint has no address the gateway may connect to
    /// (`upstream.allowed_networks`, `upstream.denied_networks`); the text is for the log.
    #[error("{0}")]
    UpstreamAddressNotAllowed(String),
    /// The model server's answer has a status outside 100 to 599.
    #[error("the model server answered with status {0}, which is not an HTTP status")]
    UpstreamInvalidStatus(u16),
    /// `upstream.max_concurrent_calls` inference calls are in flight on this replica.
    #[error("the gateway is at its limit of concurrent inference calls; retry later")]
    Overloaded,
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::Domain(DomainError::Validation(e))
    }
}

/// The proxy's failures in HTTP terms: no answer in time (or a body gone idle) is 504, none at
/// all (or a body that broke off) 502, and a path that cannot go upstream is the caller's
/// invalid `path` (422).
///
/// A streamed body's failures ([`UpstreamError::BrokeOff`], [`UpstreamError::WentIdle`]) come
/// after the status was sent, so they never become a response: the HTTP server logs them and
/// closes the connection. They are mapped here all the same, so the mapping stays whole.
impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout | UpstreamError::WentIdle(_) => Self::UpstreamTimeout,
            UpstreamError::Unreachable(reason) | UpstreamError::NotConnected(reason) => {
                Self::UpstreamUnreachable(reason)
            }
            // Its reason is the body's error alone: kept with what it broke.
            broke @ UpstreamError::BrokeOff(_) => Self::UpstreamUnreachable(broke.to_string()),
            UpstreamError::InvalidPath(reason) => ValidationError::new("path", reason).into(),
            UpstreamError::AddressNotAllowed(reason) => Self::UpstreamAddressNotAllowed(reason),
            UpstreamError::Busy => Self::Overloaded,
            UpstreamError::InvalidStatus(status) => Self::UpstreamInvalidStatus(status),
        }
    }
}

impl ApiError {
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Domain(DomainError::Validation(_)) => ("validation", "Invalid field"),
            Self::Domain(DomainError::NotFound(_)) | Self::RouteNotFound(_) => {
                ("not-found", "Not found")
            }
            Self::Domain(DomainError::Conflict(_)) => ("conflict", "Conflict"),
            Self::Domain(DomainError::Forbidden(_)) => ("forbidden", "Forbidden"),
            Self::Unauthorized => ("unauthorized", "Unauthorized"),
            Self::RateLimited { .. }
            | Self::TokensLimited { .. }
            | Self::RequestTooLarge { .. } => ("rate-limited", "Too many requests"),
            Self::QuotaExceeded { .. } => ("quota-exceeded", "Quota exceeded"),
            Self::TooManyFailedAuthentications { .. } => {
                ("too-many-failed-authentications", "Too many requests")
            }
            Self::RateLimiterUnavailable => ("unavailable", "Service temporarily unavailable"),
            Self::Domain(DomainError::Unavailable(_)) => {
                ("unavailable", "Service temporarily unavailable")
            }
            Self::Domain(DomainError::Internal(_)) => ("internal", "Internal server error"),
            Self::MalformedJson(_) => ("malformed-json", "Malformed JSON"),
            Self::BadRequest(_) => ("bad-request", "Bad request"),
            Self::UnsupportedMediaType(_) => ("unsupported-media-type", "Unsupported media type"),
            Self::PayloadTooLarge(_) => ("payload-too-large", "Payload too large"),
            Self::BodyTimeout => ("request-timeout", "Request timeout"),
            Self::MethodNotAllowed(_) => ("method-not-allowed", "Method not allowed"),
            Self::UpstreamUnreachable(_)
            | Self::UpstreamAddressNotAllowed(_)
            | Self::UpstreamInvalidStatus(_) => ("bad-gateway", "Bad gateway"),
            Self::UpstreamTimeout => ("gateway-timeout", "Gateway timeout"),
            Self::Overloaded => ("unavailable", "Service temporarily unavailable"),
        }
    }

    /// The problem document for this error, with the current request's id.
    pub fn problem(&self) -> Problem {
        let (kind, title) = self.kind();
        let (detail, field) = match self {
            Self::Domain(DomainError::Validation(v)) => (v.to_string(), Some(v.field.clone())),
            Self::BodyTimeout => (format!("body: {self}"), Some("body".to_owned())),
            // Internals are logged by the access-log middleware, never shown to clients.
            Self::Domain(DomainError::Internal(_)) => (
                "the server failed to handle the request; it has been logged".to_owned(),
                None,
            ),
            Self::Domain(DomainError::Unavailable(_)) => (
                "a dependency of the gateway is unavailable; retry later".to_owned(),
                None,
            ),
            Self::UpstreamUnreachable(_) => (
                "the model server could not be reached; retry later".to_owned(),
                None,
            ),
            // Which address, and what the name resolved to, stay in the log.
            Self::UpstreamAddressNotAllowed(_) => (
                "endpoint address not allowed: the gateway does not connect to the address of \
                 this version's endpoint_url (upstream.allowed_networks, upstream.denied_networks)"
                    .to_owned(),
                None,
            ),
            other => (other.to_string(), None),
        };
        Problem {
            kind: format!("urn:maas:problem:{kind}"),
            title: title.to_owned(),
            status: self.status_code().as_u16(),
            detail,
            field,
            request_id: current_request_id(),
        }
    }
}

impl ApiError {
    /// OpenAI's `type` and `code` for this error (the `/v1` routes speak OpenAI's error shape).
    fn openai_kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::Domain(DomainError::NotFound(_)) => ("invalid_request_error", "model_not_found"),
            Self::RouteNotFound(_) => ("invalid_request_error", "unknown_url"),
            Self::Domain(DomainError::Validation(_)) => ("invalid_request_error", "invalid_value"),
            Self::MalformedJson(_) | Self::BadRequest(_) => {
                ("invalid_request_error", "invalid_json")
            }
            Self::UnsupportedMediaType(_) => ("invalid_request_error", "unsupported_media_type"),
            Self::PayloadTooLarge(_) => ("invalid_request_error", "request_too_large"),
            Self::BodyTimeout => ("invalid_request_error", "request_timeout"),
            Self::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            Self::Unauthorized => ("authentication_error", "invalid_api_key"),
            Self::Domain(DomainError::Forbidden(_)) => ("permission_error", "forbidden"),
            Self::Domain(DomainError::Conflict(_)) => ("invalid_request_error", "conflict"),
            // OpenAI names the limit that refused in `type`.
            Self::RateLimited { .. } => ("requests", "rate_limit_exceeded"),
            Self::TokensLimited { .. } | Self::RequestTooLarge { .. } => {
                ("tokens", "rate_limit_exceeded")
            }
            Self::QuotaExceeded { .. } => ("insufficient_quota", "insufficient_quota"),
            Self::TooManyFailedAuthentications { .. } => {
                ("rate_limit_error", "too_many_failed_authentications")
            }
            Self::UpstreamUnreachable(_) => ("api_error", "upstream_unreachable"),
            Self::UpstreamAddressNotAllowed(_) => ("api_error", "endpoint_not_allowed"),
            Self::UpstreamInvalidStatus(_) => ("api_error", "upstream_invalid_response"),
            Self::UpstreamTimeout => ("api_error", "upstream_timeout"),
            Self::Overloaded => ("api_error", "overloaded"),
            Self::Domain(DomainError::Unavailable(_)) | Self::RateLimiterUnavailable => {
                ("api_error", "service_unavailable")
            }
            Self::Domain(DomainError::Internal(_)) => ("api_error", "internal_error"),
        }
    }

    /// The same error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`,
    /// with the same status and headers as the problem response.
    pub fn openai_response(&self) -> HttpResponse {
        let problem = self.problem();
        let (kind, code) = self.openai_kind();
        let body = serde_json::json!({
            "error": {
                "message": problem.detail,
                "type": kind,
                "param": problem.field,
                "code": code,
            }
        });
        let mut response = self.error_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let extensions = response.extensions().get::<ErrorDetail>().cloned();
        let mut response = response.set_body(actix_web::body::BoxBody::new(
            serde_json::to_vec(&body).unwrap_or_default(),
        ));
        if let Some(detail) = extensions {
            response.extensions_mut().insert(detail);
        }
        response
    }
}

/// An [`ApiError`] rendered in OpenAI's error shape (for the `/v1` routes).
#[derive(Debug)]
pub struct OpenAiError {
    /// What went wrong.
    pub error: ApiError,
    /// The version the call had been routed to when it failed, if it got that far (the model
    /// server was unreachable, too slow, or not registered): the response names it in
    /// `x-maas-model` and `x-maas-version`, as a forwarded answer does.
    pub routed: Option<Routed>,
}

/// The model and version a call was routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The model's name.
    pub model: String,
    /// The version number.
    pub version: i32,
    /// The index of the endpoint it last went to, if it went to one (`x-maas-endpoint`).
    pub endpoint: Option<usize>,
}

impl OpenAiError {
    /// `error`, for a call that was routed to `routed`.
    pub fn routed(error: ApiError, routed: Routed) -> Self {
        Self {
            error,
            routed: Some(routed),
        }
    }
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for OpenAiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            routed: None,
        }
    }
}

impl From<DomainError> for OpenAiError {
    fn from(e: DomainError) -> Self {
        ApiError::Domain(e).into()
    }
}

impl From<ValidationError> for OpenAiError {
    fn from(e: ValidationError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<UpstreamError> for OpenAiError {
    fn from(e: UpstreamError) -> Self {
        ApiError::from(e).into()
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        self.error.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.error.openai_response();
        if let Some(routed) = &self.routed {
            let headers = response.headers_mut();
            if let Ok(model) = HeaderValue::from_str(&routed.model) {
                headers.insert(header::HeaderName::from_static("x-maas-model"), model);
            }
            headers.insert(
                header::HeaderName::from_static("x-maas-version"),
                HeaderValue::from(routed.version),
            );
            if let Some(index) = routed.endpoint {
                headers.insert(
                    header::HeaderName::from_static("x-maas-endpoint"),
                    HeaderValue::from(index),
                );
                response.extensions_mut().insert(EndpointIndex(index));
            }
        }
        response
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Domain(DomainError::Validation(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Domain(DomainError::NotFound(_)) | Self::RouteNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::Domain(DomainError::Conflict(_)) => StatusCode::CONFLICT,
            Self::Domain(DomainError::Forbidden(_)) => StatusCode::FORBIDDEN,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. }
            | Self::TokensLimited { .. }
            | Self::RequestTooLarge { .. }
            | Self::QuotaExceeded { .. }
            | Self::TooManyFailedAuthentications { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RateLimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Domain(DomainError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Domain(DomainError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::MalformedJson(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamUnreachable(_)
            | Self::UpstreamAddressNotAllowed(_)
            | Self::UpstreamInvalidStatus(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        match self {
            Self::Domain(DomainError::Unavailable(_))
            | Self::RateLimiterUnavailable
            | Self::Overloaded => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            Self::RateLimited {
                retry_after_seconds,
            }
            | Self::TokensLimited {
                retry_after_seconds,
                ..
            }
            | Self::QuotaExceeded {
                retry_after_seconds,
                ..
            }
            | Self::TooManyFailedAuthentications {
                retry_after_seconds,
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_seconds.to_string()));
            }
            Self::Unauthorized => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"maas-gateway\""),
                ));
            }
            _ => {}
        }
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = response.body(body);
        // Lets the access log record why a request failed without exposing it to the client.
        response
            .extensions_mut()
            .insert(ErrorDetail(self.to_string()));
        response
    }
}

/// The internal text of an error, carried on the response for the access log only.
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_s_failures_are_504_502_or_an_invalid_path_and_keep_their_reason_inside() {
        let cases = [
            (UpstreamError::Timeout, 504, "upstream_timeout", None),
            (
                UpstreamError::Unreachable("connection refused (os error 111)".into()),
                502,
                "upstream_unreachable",
                None,
            ),
            (
                UpstreamError::InvalidPath("must not hold `.` or `..` segments"),
                422,
                "invalid_value",
                Some("path"),
            ),
            (
                UpstreamError::AddressNotAllowed("localhost resolves only to 127.0.0.1".into()),
                502,
                "endpoint_not_allowed",
                None,
            ),
            (UpstreamError::Busy, 503, "overloaded", None),
            (
                UpstreamError::InvalidStatus(777),
                502,
                "upstream_invalid_response",
                None,
            ),
            (
                UpstreamError::BrokeOff("connection reset (os error 104)".into()),
                502,
                "upstream_unreachable",
                None,
            ),
            (
                UpstreamError::WentIdle(std::time::Duration::from_secs(300)),
                504,
                "upstream_timeout",
                None,
            ),
        ];
        for (upstream, status, code, field) in cases {
            let error = ApiError::from(upstream);
            assert_eq!(error.status_code().as_u16(), status, "{error}");
            assert_eq!(error.openai_kind().1, code, "{error}");
            let problem = error.problem();
            assert_eq!(problem.field.as_deref(), field, "{error}");
            assert!(!problem.detail.contains("os error"), "{}", problem.detail);
            assert!(!problem.detail.contains("127.0.0.1"), "{}", problem.detail);
        }
    }
}
