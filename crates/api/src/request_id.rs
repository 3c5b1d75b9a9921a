//! The id of the request being handled, carried in a task-local so that every problem body, the
//! `x-request-id` header and the access log line agree.
//!
//! A leaf: it imports nothing of the crate, so that the error mapping, the middleware and the
//! proxy can all read the id without depending on one another.

use std::future::Future;

use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs `handling` with `id` as the current request id.
pub fn with_request_id<F: Future>(id: String, handling: F) -> TaskLocalFuture<String, F> {
    REQUEST_ID.scope(id, handling)
}

/// Whether a caller's `x-request-id` is fit to be adopted: 1–128 visible ASCII characters.
pub fn is_acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}
