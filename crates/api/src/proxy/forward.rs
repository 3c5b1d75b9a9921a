//! One call to a model server: sent to an endpoint of its version (again to another when it
//! cannot have reached the first), its answer's headers awaited, and the response to the client
//! built around the answer's metered body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header;
use bytes::Bytes;
use futures_util::StreamExt as _;
use hyper::{Method, Uri};
use maas_domain::inference::UsageEvent;

use super::UpstreamError;
use super::balance::{EndpointIndex, Fleet, Lease, is_failure_status};
use super::body::MeteredBody;
use super::client::{CallSlot, Upstream, UpstreamResponse};
use super::headers::response_headers;
use super::meter::Meter;
use super::rewrite::{AnswerRewrite, Rewriter};
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
    /// The endpoint it came from, held until the body is over.
    lease: Option<Lease>,
}

/// A call that got no answer to pass on: why, and the endpoint it last went to.
#[derive(Debug)]
pub struct FleetFailure {
    /// Why.
    pub error: UpstreamError,
    /// The index of the endpoint, when it got that far.
    pub endpoint: Option<usize>,
}

/// What an attempt's outcome means for its endpoint and its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    /// It counts against the endpoint's health (else for it, when the endpoint answered).
    failed: bool,
    /// The model server cannot have seen the call: it may go to another endpoint.
    may_retry: bool,
}

/// The verdict on an attempt that got an answer with `status`, or failed with an error.
fn verdict(outcome: Result<u16, &UpstreamError>) -> Verdict {
    let (failed, may_retry) = match outcome {
        Ok(status) => (is_failure_status(status), status == 503),
        // No connection was made: to a dead server, or to none the address policy allows (an
        // endpoint that only ever gets the latter is taken out like a dead one, rather than
        // costing every call sent to it a retry).
        Err(UpstreamError::NotConnected(_) | UpstreamError::AddressNotAllowed(_)) => (true, true),
        Err(UpstreamError::Timeout | UpstreamError::Unreachable(_)) => (true, false),
        Err(_) => (false, false),
    };
    Verdict { failed, may_retry }
}

/// Sends a call to the endpoints of its version (`fleet`): to the one [`Fleet::pick`] gives,
/// and, when that one cannot have seen it (no connection could be made, none to an address the
/// policy allows, or it answered 503 before any of its body was read, which is dropped unread)
/// and another is left, to another, at most `upstream.max_retries` times and as the retry
/// budgets allow (the version's, and the replica's floor). `outbound` makes the call for the
/// endpoint of an index. Each attempt's outcome goes to its endpoint's health: no connection
/// (or no allowed address), no answer in time, or 502/503/504 count against it.
///
/// # Errors
/// The last attempt's failure (see [`send`]), with its endpoint.
pub async fn send_to_fleet(
    upstream: &Upstream,
    fleet: &Arc<Fleet>,
    model: &str,
    started: Instant,
    mut outbound: impl FnMut(usize) -> Result<Outbound, UpstreamError>,
) -> Result<Answer, FleetFailure> {
    let balancer = upstream.balancer();
    fleet.count_call(Instant::now());
    let mut lease = fleet.pick(0, Instant::now()).ok_or(FleetFailure {
        error: UpstreamError::NotConnected("the version has no endpoint".to_owned()),
        endpoint: None,
    })?;
    let (mut tried, mut retries) = (0u64, 0u32);
    loop {
        let index = lease.index();
        let call = outbound(index).map_err(|error| FleetFailure {
            error,
            endpoint: Some(index),
        })?;
        let outcome = send(upstream, started, call).await;
        let now = Instant::now();
        let verdict = verdict(outcome.as_ref().map(Answer::status));
        match (&outcome, verdict.failed) {
            (_, true) => lease.failed(now),
            (Ok(_), false) => lease.succeeded(),
            (Err(_), false) => {}
        }
        tried |= lease.bit();
        if verdict.may_retry && retries < balancer.max_retries() {
            // The next endpoint first: with none left, this outcome is the call's.
            if let Some(next) = fleet.pick(tried, now)
                && balancer.try_retry(fleet, model, now)
            {
                retries += 1;
                lease = next;
                continue;
            }
        }
        return match outcome {
            Ok(mut answer) => {
                answer.lease = Some(lease);
                Ok(answer)
            }
            Err(error) => Err(FleetFailure {
                error,
                endpoint: Some(index),
            }),
        };
    }
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
        lease: None,
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
    /// What an OpenAI call's answer needs changed on its way (`None`: passed as it is).
    pub rewrite: Option<AnswerRewrite>,
}

/// Most bytes of a rewritten JSON answer read before its response starts, to give it its new
/// `Content-Length`: an answer whose `model` comes later (after a large batch of embeddings,
/// say) is streamed without one.
const SETTLE_LIMIT: u64 = 64 * 1024;

/// Whether a content type is JSON (`application/json`, or a `+json` type).
fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json")
}

impl Answer {
    /// The model server's status code.
    pub fn status(&self) -> u16 {
        self.response.status().as_u16()
    }

    /// The index of the endpoint it came from, when it was sent through [`send_to_fleet`].
    pub fn endpoint(&self) -> Option<usize> {
        self.lease.as_ref().map(Lease::index)
    }

    /// The response to the client: the model server's status and end-to-end headers, the
    /// gateway's `x-maas-model`, `x-maas-version` and `x-maas-overhead-ms`, and the body
    /// streamed through a [`Meter`] that records `delivery.event` once it is over (and through
    /// the call's [`AnswerRewrite`], if it has one).
    ///
    /// A body of known length keeps `Content-Length`; a rewritten JSON answer is read up to its
    /// `model` value first (at most [`SETTLE_LIMIT`] bytes) so that its new length is known,
    /// and is streamed without one when it could not be.
    pub async fn into_response(self, delivery: Delivery<'_>) -> HttpResponse {
        let status = self.status();
        let content_type = self
            .response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let sse = content_type.starts_with("text/event-stream");
        let rewriter = delivery
            .rewrite
            .as_ref()
            .and_then(|r| Rewriter::new(r, sse, is_json(content_type)));
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
        if let Some(index) = self.endpoint() {
            out.insert_header(("x-maas-endpoint", index));
            out.extensions_mut().insert(EndpointIndex(index));
        }
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
        let mut body = MeteredBody::new(self.response.into_body(), meter, delivery.idle)
            .holding(delivery.slot, self.lease)
            .rewriting(rewriter);
        // A body of known length keeps it: the client gets `Content-Length` instead of chunked
        // framing, and the answer usually leaves in one write. Still streamed, never buffered.
        let Some(length) = body.exact_length().filter(|_| !sse) else {
            return out.streaming(body);
        };
        if !body.is_rewritten() {
            return out.body(actix_web::body::SizedStream::new(length, body));
        }
        let held = settle(&mut body).await;
        match body
            .length_change()
            .and_then(|change| length.checked_add_signed(change))
            .filter(|_| held.iter().all(Result::is_ok))
        {
            Some(length) => out.body(actix_web::body::SizedStream::new(
                length,
                futures_util::stream::iter(held).chain(body),
            )),
            None => out.streaming(futures_util::stream::iter(held).chain(body)),
        }
    }
}

/// Reads a rewritten body until its new length is known, it is over, or [`SETTLE_LIMIT`]
/// bytes of the model server's came (counted as they arrive, not as they come out: inside a
/// long `model` value nothing comes out); hands back what it read, to be sent first.
async fn settle<B>(body: &mut MeteredBody<B>) -> Vec<Result<Bytes, UpstreamError>>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut held = Vec::new();
    while body.length_change().is_none() && body.upstream_bytes() < SETTLE_LIMIT {
        match body.next_piece().await {
            Some(Ok(chunk)) if chunk.is_empty() => {}
            Some(Ok(chunk)) => held.push(Ok(chunk)),
            Some(Err(e)) => {
                held.push(Err(e));
                break;
            }
            None => break,
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::usage::UsageQueue;

    /// A body of known length that comes in these pieces.
    struct Pieces(VecDeque<Bytes>, u64);

    impl hyper::body::Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            hyper::body::SizeHint::with_exact(self.1)
        }
    }

    /// A rewritten JSON answer of `pieces`, settled: how many pieces were held, the change of
    /// length then known, and how many of the model server's bytes were read.
    async fn settled(pieces: Vec<String>) -> (usize, Option<i64>, u64) {
        let total = pieces.iter().map(|p| p.len() as u64).sum();
        let (queue, _receiver) = UsageQueue::new(1);
        let meter = Meter::new(
            crate::usage::tests::event(),
            Instant::now(),
            Instant::now(),
            false,
            queue,
            1_000,
        );
        let rewrite = AnswerRewrite {
            client_model: "asked".to_owned(),
            strip_usage_event: false,
        };
        let pieces = Pieces(pieces.into_iter().map(Bytes::from).collect(), total);
        let mut body = MeteredBody::new(pieces, meter, Duration::from_secs(5))
            .rewriting(Rewriter::new(&rewrite, false, true));
        let held = settle(&mut body).await;
        (held.len(), body.length_change(), body.upstream_bytes())
    }

    #[test]
    fn what_cannot_have_reached_a_model_server_may_go_elsewhere_and_counts_against_its_endpoint() {
        fn judged(outcome: Result<u16, &UpstreamError>) -> (bool, bool) {
            let Verdict { failed, may_retry } = verdict(outcome);
            (failed, may_retry)
        }
        assert_eq!(judged(Ok(200)), (false, false));
        assert_eq!(judged(Ok(404)), (false, false));
        assert_eq!(judged(Ok(503)), (true, true), "dropped unread");
        assert_eq!(judged(Ok(502)), (true, false));
        let error = |e: UpstreamError| judged(Err(&e));
        assert_eq!(
            error(UpstreamError::NotConnected("refused".into())),
            (true, true)
        );
        assert_eq!(
            error(UpstreamError::AddressNotAllowed("127.0.0.1".into())),
            (true, true),
            "taken out like a dead endpoint, not retried on every call sent to it"
        );
        assert_eq!(error(UpstreamError::Timeout), (true, false));
        assert_eq!(
            error(UpstreamError::Unreachable("reset".into())),
            (true, false)
        );
        assert_eq!(error(UpstreamError::Busy), (false, false));
    }

    #[tokio::test]
    async fn a_rewritten_answer_is_read_up_to_its_model_within_the_limit_and_no_further() {
        let early = vec![
            r#"{"id":"1","#.to_owned(),
            r#""model":"a-longer-name"}"#.to_owned(),
            " ".to_owned(),
        ];
        let (held, change, _) = settled(early).await;
        assert_eq!((held, change), (2, Some(-8)), "read until it was passed");
        let late = vec![
            format!(r#"{{"data":"{}","#, "x".repeat(70 * 1024)),
            r#""model":"m"}"#.to_owned(),
        ];
        let (held, change, _) = settled(late).await;
        assert_eq!(
            (held, change),
            (1, None),
            "past the limit: streamed without a length"
        );
        // A model value of many pieces: nothing of it comes out until it ends, and the limit
        // is of the model server's bytes all the same.
        let piece = 8 * 1024;
        let mut long = vec![r#"{"model":""#.to_owned()];
        long.extend((0..100).map(|_| "x".repeat(piece)));
        long.push(r#""}"#.to_owned());
        let (held, change, read) = settled(long).await;
        assert_eq!((held, change), (1, None), "only the start came out");
        assert!(
            (SETTLE_LIMIT..SETTLE_LIMIT + piece as u64).contains(&read),
            "read {read} bytes of 800 KiB"
        );
        assert!(is_json("application/json; charset=utf-8") && is_json("application/problem+json"));
        assert!(!is_json("text/event-stream"));
    }
}
