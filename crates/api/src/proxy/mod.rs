//! Forwarding to model servers: one pooled HTTP client, header hygiene, and a body stream that
//! passes chunks through as they arrive while it watches for the upstream's `usage`.
//!
//! - [`client`]: the pooled [`Upstream`] client, one per worker thread, and its TLS settings;
//! - [`headers`]: which request and response headers go on, and the ones the gateway sets;
//! - [`target`]: the upstream URL, and the checks on a raw call's path and query;
//! - [`meter`]: the [`Meter`] that reads an answer's `usage` and records the call;
//! - [`body`]: [`MeteredBody`], the streamed upstream body with its idle cut-off.

pub mod body;
pub mod client;
pub mod headers;
pub mod meter;
pub mod target;

pub use body::{CLIENT_CLOSED_REQUEST, MeteredBody};
pub use client::{Upstream, UpstreamResponse};
pub use headers::{request_headers, response_headers};
pub use meter::{Meter, millis};
pub use target::{raw_call_path, raw_call_query, upstream_uri, upstream_url};
