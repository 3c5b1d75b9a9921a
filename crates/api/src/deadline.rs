//! `server.body_read_timeout_seconds`: a request body must arrive whole within that time of the
//! request's start, or the request is answered 408. Without it, a client sending one byte every
//! few seconds holds its connection and a worker's slot for as long as it likes.
//!
//! The middleware wraps the payload of every request that has one, so every body reader (the
//! JSON extractor, the inference routes' raw body) meets the same deadline: past it the payload
//! yields a `TimedOut` I/O error, which [`crate::extract::read_body`] turns into
//! [`crate::error::ApiError::BodyTimeout`]. A timer is only set once the body stalls: one that
//! arrives with its head costs nothing.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use actix_web::{Error, HttpMessage as _};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

/// How long a request body may take to arrive, as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyReadTimeout(pub Duration);

/// The message of the error a late body yields.
pub const TIMED_OUT: &str = "the request body did not arrive in time";

/// Puts the deadline on the request's payload when it has a body.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0");
    if has_body && let Some(timeout) = req.app_data::<web::Data<BodyReadTimeout>>().map(|t| t.0) {
        let inner = req.take_payload();
        let deadline = Instant::now() + timeout;
        req.set_payload(Payload::Stream {
            payload: Box::pin(Deadline {
                inner,
                deadline,
                timer: None,
                expired: false,
            }),
        });
    }
    next.call(req).await
}

/// A payload that fails with `TimedOut` once `deadline` has passed.
struct Deadline {
    inner: Payload,
    deadline: Instant,
    /// Set when the body first stalls.
    timer: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => {}
            ready => {
                // A body that keeps coming past the deadline is cut too, not only a stalled one.
                if Instant::now() < this.deadline {
                    return ready;
                }
            }
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            this.expired = true;
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                TIMED_OUT,
            )))));
        }
        Poll::Pending
    }
}
