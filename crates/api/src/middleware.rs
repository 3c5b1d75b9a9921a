//! The outermost middleware: request ids, the access log line and the HTTP metrics.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, web};

use crate::error::ErrorDetail;
use crate::meters;
use crate::proxy::EndpointIndex;
pub use crate::request_id::current_request_id;
use crate::request_id::{is_acceptable, with_request_id};
use crate::state::AppState;

/// The header carrying the request id, in both directions.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Route label of requests that matched no route (keeps metric cardinality bounded).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Accepts the caller's id when it is 1–128 visible ASCII characters, else makes a UUID.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// When the gateway received the request (set by [`request_context`]).
#[derive(Debug, Clone, Copy)]
pub struct RequestStarted(pub Instant);

struct InFlight;

impl InFlight {
    fn enter() -> Self {
        meters::add_in_flight(1.0);
        Self
    }
}

impl Drop for InFlight {
    // Runs even when the client goes away and the request future is dropped.
    fn drop(&mut self) {
        meters::add_in_flight(-1.0);
    }
}

/// Gives every request an id (echoed in `x-request-id` and in problem bodies), writes one access
/// log line per request and records `http_requests_total` and `http_request_duration_seconds`
/// under the matched route pattern.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let _in_flight = InFlight::enter();
    let id = request_id(&req);
    actix_web::HttpMessage::extensions_mut(&req).insert(RequestStarted(started));
    // Handlers and extractors turn their errors into responses inside this scope, so problem
    // bodies carry the id. (Cloning the request here would break routing: it must stay unique.)
    let mut response = with_request_id(id.clone(), next.call(req)).await?;

    let elapsed = started.elapsed();
    let status = response.status();
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    meters::record_request(
        response.request().method(),
        &route,
        status.as_u16(),
        elapsed,
    );

    if let Some(state) = response.request().app_data::<web::Data<AppState>>() {
        let log = &state.logger;
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let method = response.request().method().as_str();
        let path = response.request().path();
        let extensions = response.response().extensions();
        let error = extensions.get::<ErrorDetail>().map(|d| d.0.clone());
        // The index of the model server's endpoint an inference call went to (never its URL).
        let endpoint = extensions.get::<EndpointIndex>().map(|e| e.0);
        drop(extensions);
        if status.is_server_error() {
            slog::error!(log, "request";
                "request_id" => &id, "method" => method, "route" => &route, "path" => path,
                "status" => status.as_u16(), "latency_ms" => latency_ms, "error" => error,
                "endpoint" => endpoint);
        } else {
            slog::info!(log, "request";
                "request_id" => &id, "method" => method, "route" => &route, "path" => path,
                "status" => status.as_u16(), "latency_ms" => latency_ms, "error" => error,
                "endpoint" => endpoint);
        }
    }

    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    Ok(response)
}
