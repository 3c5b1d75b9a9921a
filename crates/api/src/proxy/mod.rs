//! Forwarding to model servers: one pooled HTTP client, header hygiene, and a body stream that
//! passes chunks through as they arrive while it watches for the upstream's `usage`.
//!
//! - [`client`]: the pooled [`Upstream`] client, one per worker thread, and its TLS settings;
//!   the places of calls in flight ([`CallSlot`], `upstream.max_concurrent_calls`);
//! - [`policy`]: which addresses model servers may have ([`AddressPolicy`], CIDR networks);
//! - [`guard`]: the policy where connections are made (a resolver, a connector layer);
//! - [`headers`]: which request and response headers go on, and the ones the gateway sets;
//! - [`target`]: the upstream URL, and the checks on a raw call's path and query;
//! - [`settings`]: what the proxy is configured with ([`UpstreamSettings`], the `upstream`
//!   section, re-exported by `crate::settings`);
//! - [`meter`]: the [`Meter`] that reads an answer's `usage` and records the call;
//! - [`rewrite`]: the `model` of an OpenAI call set to the model server's name on the way in
//!   and back to the client's on the way out, nothing else of the bytes touched;
//! - [`body`]: [`MeteredBody`], the streamed upstream body with its idle cut-off (failing
//!   with an [`UpstreamError`] too, which the HTTP server only logs: the status is sent);
//! - `scan`: the byte search the meter and the rewriter share;
//! - [`balance`]: choosing the peer: which endpoint of a version a call goes to (power of two
//!   choices by weight), the endpoints' passive health, the retry budget;
//! - [`forward`]: a call sent to its version's endpoints ([`send_to_fleet`], retried on another
//!   only when it cannot have reached a model server) and its [`Answer`] turned into the
//!   streamed response.
//!
//! Its failures are [`UpstreamError`]s, which know nothing of HTTP: `crate::error` alone turns
//! them into statuses and problem bodies. Nothing here imports the error mapping, the
//! middleware, the app state or `crate::settings` (which imports the proxy's address policy
//! and re-exports its settings).

pub mod balance;
pub mod body;
pub mod client;
pub mod forward;
pub mod guard;
pub mod headers;
pub mod meter;
pub mod policy;
pub mod rewrite;
mod scan;
pub mod settings;
pub mod target;

pub use balance::{Balancer, EndpointIndex, Fleet, Lease};
pub use body::{CLIENT_CLOSED_REQUEST, MeteredBody};
pub use client::{CallSlot, ClientError, Upstream, UpstreamResponse};
pub use forward::{Answer, Delivery, FleetFailure, Outbound, send, send_to_fleet};
pub use headers::{request_headers, response_headers};
pub use meter::{Meter, millis};
pub use policy::{AddressPolicy, IpNetwork};
pub use rewrite::{AnswerRewrite, BodyError, OpenAiBody};
pub use settings::{DEFAULT_MAX_TOKENS_PER_CALL, UpstreamSettings};
pub use target::{raw_call_path, raw_call_query, upstream_uri, upstream_url};

/// Why a call could not be sent to its model server, or got no answer from it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The model server sent no response headers within `upstream.timeout_seconds`.
    #[error("the model server did not answer in time")]
    Timeout,
    /// No connection could be made (refused, reset or timed out while connecting), so the
    /// request was not sent; the reason is the client's error and its sources, for the log.
    #[error("the model server is unreachable: {0}")]
    NotConnected(String),
    /// The connection broke after the request was (perhaps) sent, before the response
    /// headers; the reason is the client's error and its sources, for the log.
    #[error("the model server is unreachable: {0}")]
    Unreachable(String),
    /// The call's path would leave the version's endpoint, or makes no URL; says why.
    #[error("path {0}")]
    InvalidPath(&'static str),
    /// The endpoint's host has no address `upstream.allowed_networks` and
    /// `upstream.denied_networks` allow; the text (host and addresses) is for the log.
    #[error("{0}")]
    AddressNotAllowed(String),
    /// `upstream.max_concurrent_calls` calls are already in flight.
    #[error("upstream.max_concurrent_calls calls are in flight")]
    Busy,
    /// The model server answered with a status outside 100 to 599.
    #[error("the model server answered with status {0}, which is not an HTTP status")]
    InvalidStatus(u16),
    /// The answer's body broke off (the connection failed after its headers); the reason is
    /// the body's error, for the log. The error of a [`MeteredBody`].
    #[error("the model server's response broke off: {0}")]
    BrokeOff(String),
    /// The answer's body sent nothing for this long (`upstream.timeout_seconds`) and was cut
    /// off. The error of a [`MeteredBody`].
    #[error("the model server sent nothing for {} s", .0.as_secs())]
    WentIdle(std::time::Duration),
}
