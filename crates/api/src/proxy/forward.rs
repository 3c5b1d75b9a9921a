//! One call to a model server: sent, its answer's headers awaited, and the response to the
//! client built around the answer's metered body.

use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header;
use bytes::Bytes;
use hyper::{Method, Uri};
use maas_domain::inference::UsageEvent;

use super::UpstreamError;
use super::body::MeteredBody;
use super::client::{CallSlot, Upstream, UpstreamResponse};
use super::headers::response_headers;
use super::meter::Meter;
use crate::meters;
use crate::usage::UsageQueue;

/// A call ready to go to its model server.
#[derive(Debug)]
pub struct Outbound {
    /// The request's method.
    pub method: Method,
    /// Where it goes: the version's endpoint joined with the call's path and query.
    pub uri: Uri,
    /// The headers that go upstream (see [`super::request_headers`]).
    pub headers: hyper::HeaderMap,
    /// The client's body, untouched.
    pub body: Bytes,
}

/// A model server's answer: its status and headers are in, its body is not read yet.
pub struct Answer {
    response: UpstreamResponse,
    /// When the call was sent upstream.
    upstream_started: Instant,
    /// The gateway's own time on the call so far, the model server's excluded.
    overhead: Duration,
}

/// Sends `call` and waits for the answer's headers, within `upstream.timeout_seconds`; records
/// the gateway's own time on the call until then (`maas_gateway_overhead_seconds`), counted
/// from `started`, when the gateway received the request.
///
/// # Errors
/// [`UpstreamError::Timeout`], [`UpstreamError::AddressNotAllowed`] or
/// [`UpstreamError::Unreachable`] (see [`Upstream::send`]); [`UpstreamError::InvalidStatus`]
/// for an answer whose status is outside 100 to 599 (its body is dropped unread).
pub async fn send(
    upstream: &Upstream,
    started: Instant,
    call: Outbound,
) -> Result<Answer, UpstreamError> {
    let upstream_started = Instant::now();
    let response = upstream
        .send(call.method, call.uri, call.headers, call.body)
        .await?;
    let overhead = started.elapsed().saturating_sub(upstream_started.elapsed());
    meters::record_overhead(overhead);
    let status = response.status().as_u16();
    if !(100..=599).contains(&status) {
        return Err(UpstreamError::InvalidStatus(status));
    }
    Ok(Answer {
        response,
        upstream_started,
        overhead,
    })
}

/// What the response to a forwarded call needs besides the answer: whom it came from and how
/// its usage is recorded.
pub struct Delivery<'a> {
    /// The model that answered (`x-maas-model`).
    pub model: &'a str,
    /// Its version (`x-maas-version`).
    pub version: i32,
    /// The call's usage event; its tokens and times are filled in when the body is over.
    pub event: UsageEvent,
    /// When the gateway received the request.
    pub started: Instant,
    /// Where the event goes.
    pub queue: UsageQueue,
    /// Longest quiet allowed between two chunks of the body.
    pub idle: Duration,
    /// Largest token count believed (`usage.max_tokens_per_call`).
    pub max_tokens: u64,
    /// The call's place among `upstream.max_concurrent_calls`, given back when the body is over
    /// or dropped.
    pub slot: CallSlot,
}

impl Answer {
    /// The model server's status code.
    pub fn status(&self) -> u16 {
        self.response.status().as_u16()
    }

    /// The response to the client: the model server's status and end-to-end headers, the
    /// gateway's `x-maas-model`, `x-maas-version` and `x-maas-overhead-ms`, and the body
    /// streamed through a [`Meter`] that records `delivery.event` once it is over.
    pub fn into_response(self, delivery: Delivery<'_>) -> HttpResponse {
        let status = self.status();
        let sse = self
            .response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let mut out =
            HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
        for (name, value) in response_headers(self.response.headers()) {
            out.append_header((name, value));
        }
        let overhead_us = self.overhead.as_micros();
        out.insert_header(("x-maas-model", delivery.model))
            .insert_header(("x-maas-version", delivery.version))
            .insert_header((
                "x-maas-overhead-ms",
                format!("{}.{:03}", overhead_us / 1000, overhead_us % 1000),
            ));
        if sse {
            // Proxies between the gateway and the client must not buffer the stream either.
            out.insert_header(("x-accel-buffering", "no"))
                .insert_header((header::CACHE_CONTROL, "no-cache"));
        }
        let meter = Meter::new(
            delivery.event,
            delivery.started,
            self.upstream_started,
            sse,
            delivery.queue,
            delivery.max_tokens,
        );
        let body = MeteredBody::new(self.response.into_body(), meter, delivery.idle)
            .holding(delivery.slot);
        // A body of known length keeps it: the client gets `Content-Length` instead of chunked
        // framing, and the answer usually leaves in one write. Still streamed, never buffered.
        match body.exact_length().filter(|_| !sse) {
            Some(length) => out.body(actix_web::body::SizedStream::new(length, body)),
            None => out.streaming(body),
        }
    }
}
