//! The upstream body on its way to the client: passed through chunk by chunk, metered, and cut
//! off when it goes quiet.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use super::UpstreamError;
use super::balance::Lease;
use super::client::CallSlot;
use super::meter::Meter;
use super::rewrite::Rewriter;

/// Status recorded for a call whose client went away before the body was complete (nginx's
/// convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The upstream body, passed through chunk by chunk (an OpenAI call's through its
/// [`Rewriter`]). Dropping it (the client went away) drops the upstream response, which cancels
/// the upstream call. A body that breaks off fails with [`UpstreamError::BrokeOff`] (the call
/// is recorded with status 502); one that sends nothing for `upstream.timeout_seconds` is cut
/// off with [`UpstreamError::WentIdle`] (recorded with status 504). Those errors reach the HTTP
/// server after the response's status and headers went out: it logs them and closes the
/// connection, so the client sees the body end early.
pub struct MeteredBody<B> {
    inner: B,
    meter: Meter,
    /// Changes the answer's `model` (and drops a stream's usage-only event) on the way.
    rewriter: Option<Rewriter>,
    /// The upstream body is over and what the rewriter held back was passed on.
    ended: bool,
    /// The upstream's `Content-Length`, if it sent one.
    expected: Option<u64>,
    seen: u64,
    /// Longest wait for the next chunk.
    idle: Duration,
    /// Armed when the body first waits; re-armed when it waits again after a chunk.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether a chunk came since the timer was last armed.
    progressed: bool,
    /// The call's place among `upstream.max_concurrent_calls`: given back when the body is
    /// over (dropped at the end, after the meter recorded the call).
    slot: Option<CallSlot>,
    /// The call's hold on its endpoint: in flight there until the body is over.
    lease: Option<Lease>,
}

impl<B: hyper::body::Body> MeteredBody<B> {
    /// Wraps an upstream body that may send nothing for at most `idle` between two chunks. Its
    /// exact length, when the upstream sent one, is kept: the call counts as complete once that
    /// many bytes passed, even if the server drops the body before polling its end (it knows
    /// the length, so it need not).
    pub fn new(inner: B, meter: Meter, idle: Duration) -> Self {
        Self {
            expected: inner.size_hint().exact(),
            inner,
            meter,
            rewriter: None,
            ended: false,
            seen: 0,
            idle,
            idle_timer: None,
            progressed: false,
            slot: None,
            lease: None,
        }
    }

    /// The same body, holding `slot` (and the endpoint's `lease`) until it is over or dropped.
    #[must_use]
    pub fn holding(mut self, slot: CallSlot, lease: Option<Lease>) -> Self {
        self.slot = Some(slot);
        self.lease = lease;
        self
    }

    /// The same body, passed through `rewriter`.
    #[must_use]
    pub(crate) fn rewriting(mut self, rewriter: Option<Rewriter>) -> Self {
        self.rewriter = rewriter;
        self
    }

    /// Whether the body is rewritten on its way.
    pub fn is_rewritten(&self) -> bool {
        self.rewriter.is_some()
    }

    /// The body's exact length, if the upstream sent one (the upstream's: see
    /// [`length_change`](Self::length_change) for a rewritten body's).
    pub fn exact_length(&self) -> Option<u64> {
        self.expected
    }

    /// How many bytes longer (or shorter) than the upstream's body this one comes out, once
    /// that is known: at once for a body passed as it is, after the rewritten value for a
    /// rewritten JSON answer, never for a rewritten stream.
    pub fn length_change(&self) -> Option<i64> {
        self.rewriter
            .as_ref()
            .map_or(Some(0), Rewriter::length_change)
    }

    /// Called when the upstream has nothing yet: (re)arms the idle timer if a chunk came since
    /// it was last armed, and tells whether it ran out.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.progressed || self.idle_timer.is_none() {
            let deadline = tokio::time::Instant::now() + self.idle;
            match &mut self.idle_timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.idle_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.progressed = false;
        }
        self.idle_timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }
}

impl<B> MeteredBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    /// Bytes of the upstream body read so far (not the rewritten ones passed on: inside a long
    /// `model` value those are none).
    pub fn upstream_bytes(&self) -> u64 {
        self.seen
    }

    /// The next upstream chunk as the client gets it, possibly empty (all of it held back or
    /// dropped by the rewriter), so that a reader can count the upstream's bytes as they come.
    pub async fn next_piece(&mut self) -> Option<Result<Bytes, UpstreamError>> {
        futures_util::future::poll_fn(|cx| self.poll_piece(cx)).await
    }

    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            return match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not passed on (actix-web's HTTP/1 writer has none).
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    self.progressed = true;
                    self.seen = self.seen.saturating_add(chunk.len() as u64);
                    let chunk = match &mut self.rewriter {
                        Some(rewriter) => rewriter.pass(chunk, &mut self.meter),
                        None => {
                            self.meter.observe(&chunk);
                            chunk
                        }
                    };
                    if self.expected.is_some_and(|n| self.seen >= n) {
                        self.meter.finish(None);
                    }
                    Poll::Ready(Some(Ok(chunk)))
                }
                Poll::Ready(Some(Err(e))) => {
                    self.meter.finish(Some(502));
                    Poll::Ready(Some(Err(UpstreamError::BrokeOff(e.to_string()))))
                }
                Poll::Ready(None) => {
                    self.meter.finish(None);
                    self.slot = None;
                    self.lease = None;
                    self.ended = true;
                    match self.rewriter.as_mut().and_then(Rewriter::finish) {
                        Some(rest) => Poll::Ready(Some(Ok(rest))),
                        None => Poll::Ready(None),
                    }
                }
                Poll::Pending if self.idle_expired(cx) => {
                    self.meter.finish(Some(504));
                    Poll::Ready(Some(Err(UpstreamError::WentIdle(self.idle))))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl<B> Stream for MeteredBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.poll_piece(cx) {
                // All of it held back or dropped by the rewriter; an empty chunk would end a
                // chunked response.
                Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => {}
                other => return other,
            }
        }
    }
}

impl<S> Drop for MeteredBody<S> {
    fn drop(&mut self) {
        self.meter.finish(Some(CLIENT_CLOSED_REQUEST));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::usage::UsageQueue;

    /// A body that sends `first`, then fails (`Some`) or waits for ever (`None`).
    struct Faulty {
        first: Option<Bytes>,
        fails_with: Option<&'static str>,
    }

    /// A body's error, as hyper's would be.
    #[derive(Debug)]
    struct Reset(&'static str);

    impl std::fmt::Display for Reset {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl hyper::body::Body for Faulty {
        type Data = Bytes;
        type Error = Reset;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            if let Some(first) = self.first.take() {
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
            }
            match self.fails_with {
                Some(reason) => Poll::Ready(Some(Err(Reset(reason)))),
                None => Poll::Pending,
            }
        }
    }

    fn metered(fails_with: Option<&'static str>, idle: Duration) -> MeteredBody<Faulty> {
        let (queue, _receiver) = UsageQueue::new(1);
        let meter = Meter::new(
            crate::usage::tests::event(),
            Instant::now(),
            Instant::now(),
            false,
            queue,
            1_000,
        );
        let body = Faulty {
            first: Some(Bytes::from_static(b"{\"id\":")),
            fails_with,
        };
        MeteredBody::new(body, meter, idle)
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_or_goes_quiet_fails_with_the_proxy_s_own_errors() {
        let mut broken = metered(Some("connection reset"), Duration::from_secs(5));
        assert!(matches!(broken.next_piece().await, Some(Ok(_))));
        match broken.next_piece().await {
            Some(Err(e @ UpstreamError::BrokeOff(_))) => assert_eq!(
                e.to_string(),
                "the model server's response broke off: connection reset"
            ),
            other => panic!("broke off: {other:?}"),
        }
        assert!(broken.meter.event().is_none(), "the call is recorded");

        let mut quiet = metered(None, Duration::from_millis(20));
        assert!(matches!(quiet.next_piece().await, Some(Ok(_))));
        match quiet.next_piece().await {
            Some(Err(e @ UpstreamError::WentIdle(_))) => {
                assert_eq!(e.to_string(), "the model server sent nothing for 0 s");
            }
            other => panic!("went idle: {other:?}"),
        }
        assert!(quiet.meter.event().is_none(), "the call is recorded");
    }
}
