//! Forwarding to model servers: one pooled HTTP client, header hygiene, and a body stream that
//! passes chunks through as they arrive while it watches for the upstream's `usage`.

use std::future::Future as _;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::sync::Arc;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use maas_domain::ValidationError;
use maas_domain::inference::UsageEvent;
use maas_telemetry::metrics::{HandleMemo, memoised};

use crate::error::ApiError;
use crate::meters;
use crate::settings::UpstreamSettings;
use crate::usage::UsageQueue;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the gateway sets itself: never forwarded in
/// either direction. The client's credentials are among them: its API key never leaves.
/// `expect` was answered by the gateway, which read the whole body before forwarding it, and
/// `accept-encoding` is replaced by `identity` (see [`request_headers`]).
const NOT_FORWARDED: &[&str] = &[
    "expect",
    "accept-encoding",
    "x-forwarded-for",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "cookie",
];

/// The HTTP client behind [`Upstream`]: hyper-util's pooled client, plain HTTP or rustls.
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The upstream's answer: status, headers and a body that is read as it arrives.
pub type UpstreamResponse = hyper::Response<Incoming>;

/// The gateway's client for every model server: keep-alive pools per upstream host, so a warm
/// call pays no connection, DNS or TLS set-up.
///
/// It is hyper-util's client with nothing on top: no redirects (a model server's redirect is
/// passed to the caller as is), no proxy from the environment, no retries, and the URL parsed
/// once per call.
///
/// One `Upstream` serves the whole process, but it keeps the connections of each worker thread
/// apart: a connection is driven by the runtime of the thread that opened it, and actix-web
/// runs one single-threaded runtime per worker. A connection shared across workers would cost
/// two cross-thread wake-ups per call (the request handed to the thread that drives the
/// connection, the response handed back), which on a busy machine is most of the proxy's tail
/// latency. So each worker thread gets its own pool, built from the same settings on first use;
/// `upstream.pool_max_idle_per_host` applies per worker thread.
#[derive(Clone)]
pub struct Upstream {
    settings: UpstreamSettings,
    /// Tells this `Upstream`'s per-thread clients from those of another one (tests run several).
    id: u64,
    /// TLS settings and the system's CA roots, loaded once and shared by every thread's client.
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("settings", &self.settings)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

static NEXT_UPSTREAM_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's clients, by [`Upstream::id`]: the shape of a thread's metric handles (a
    /// short list by key, each built once, cloned out), so the same memo keeps them.
    static THREAD_CLIENTS: HandleMemo<u64, HttpClient> = const { HandleMemo::new() };
}

/// rustls with the ring provider and the system's CA roots. A system without any (a bare
/// container image) still gets a client: plain-HTTP model servers work, HTTPS ones fail their
/// handshake with an unknown-issuer error, which reaches the log of the failed call. A system
/// whose certificates are there but none of them usable is a start-up error.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (valid, invalid) = roots.add_parsable_certificates(found.certs);
    if valid == 0 && (invalid > 0 || !found.errors.is_empty()) {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "none of the system's CA certificates is usable ({invalid} unparsable): {}",
            errors.join("; ")
        ));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn build_client(settings: &UpstreamSettings, tls: &rustls::ClientConfig) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(settings.connect_timeout_seconds)));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}

impl Upstream {
    /// A client with the configured timeouts and pool size.
    ///
    /// # Errors
    /// When the system's CA certificates exist but none of them can be used.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, String> {
        Ok(Self {
            tls: Arc::new(tls_config()?),
            settings: *settings,
            id: NEXT_UPSTREAM_ID.fetch_add(1, Ordering::Relaxed),
            timeout: Duration::from_secs(settings.timeout_seconds),
        })
    }

    /// Longest wait for the response headers, and between two chunks of the body.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The calling thread's client (built on first use; while the thread shuts down, a client
    /// of its own for this one call).
    fn client(&self) -> HttpClient {
        memoised(
            &THREAD_CLIENTS,
            |id| *id == self.id,
            || self.id,
            || build_client(&self.settings, &self.tls),
        )
    }

    /// Sends a request and waits for the response headers, within `upstream.timeout_seconds`.
    ///
    /// # Errors
    /// [`ApiError::UpstreamTimeout`] past the timeout, [`ApiError::UpstreamUnreachable`] when no
    /// connection could be made or it broke before the headers.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        headers: hyper::HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, ApiError> {
        let mut request = hyper::Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match tokio::time::timeout(self.timeout, self.client().request(request)).await {
            Err(_) => Err(ApiError::UpstreamTimeout),
            Ok(Err(e)) => Err(ApiError::UpstreamUnreachable(error_chain(&e))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// `{endpoint_url}/{path}?{query}` as a request target. The fast path takes it as it is; a URL
/// with characters a URI may not hold (a raw call's path with a space, say, which actix hands
/// over decoded) is normalised by the WHATWG URL parser first, which percent-encodes them as a
/// browser would.
///
/// # Errors
/// A validation error naming `path` when even that gives no URI.
pub fn upstream_uri(endpoint: &str, path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
    // Taking the `String` keeps its buffer: no copy.
    if let Ok(uri) = Uri::try_from(upstream_url(endpoint, path, query)) {
        return Ok(uri);
    }
    url::Url::parse(&upstream_url(endpoint, path, query))
        .ok()
        .and_then(|u| Uri::try_from(u.as_str()).ok())
        .ok_or_else(|| {
            ValidationError::new("path", "is not a valid URL path for the model server").into()
        })
}

/// An error and its sources, one after the other (hyper-util's own message is only the kind).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Whether a header goes on: not hop-by-hop, not the gateway's own, and not named by one of
/// the message's `Connection` values (`connection`, compared without regard to case, as header
/// names are).
fn forwarded(name: &str, connection: &[&[u8]]) -> bool {
    !NOT_FORWARDED.contains(&name)
        && !connection.iter().any(|value| {
            value
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
        })
}

/// The client's headers that go upstream: end-to-end ones only, never its credentials.
///
/// Two are set by the gateway:
/// - `accept-encoding: identity`: the answer must come uncompressed, or the meter could not read
///   its `usage` (a client could dodge its token accounting by asking for gzip);
/// - `x-forwarded-for`: what the client sent, if anything, with `peer` (the address the gateway
///   saw) appended, as nginx's `$proxy_add_x_forwarded_for` does. Only the last entry is the
///   gateway's word; the ones before it are what the client or proxies in front of the gateway
///   said.
pub fn request_headers(
    incoming: &HeaderMap,
    request_id: Option<&str>,
    upstream_key: Option<&str>,
    peer: Option<std::net::IpAddr>,
) -> hyper::HeaderMap {
    // Collected once (no allocation when there is none, the usual case over HTTP/1.1).
    let connection: Vec<&[u8]> = incoming
        .get_all(actix_web::http::header::CONNECTION)
        .map(HeaderValue::as_bytes)
        .collect();
    let mut out = hyper::HeaderMap::new();
    for (name, value) in incoming {
        if !forwarded(name.as_str(), &connection) || name.as_str() == "x-request-id" {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            hyper::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(name, value);
        }
    }
    if let Some(id) = request_id.and_then(|id| hyper::header::HeaderValue::from_str(id).ok()) {
        out.insert("x-request-id", id);
    }
    out.insert(
        hyper::header::ACCEPT_ENCODING,
        hyper::header::HeaderValue::from_static("identity"),
    );
    if let Some(peer) = peer {
        let mut chain = Vec::new();
        for value in incoming.get_all("x-forwarded-for") {
            chain.extend_from_slice(value.as_bytes());
            chain.extend_from_slice(b", ");
        }
        // Formatted straight into the header's bytes (writing to a `Vec` cannot fail).
        let _ = write!(chain, "{peer}");
        if let Ok(value) = hyper::header::HeaderValue::from_bytes(&chain) {
            out.insert("x-forwarded-for", value);
        }
    }
    if let Some(key) =
        upstream_key.and_then(|k| hyper::header::HeaderValue::from_str(&format!("Bearer {k}")).ok())
    {
        out.insert(hyper::header::AUTHORIZATION, key);
    }
    out
}

/// The upstream's headers that go back to the client (end-to-end ones only).
pub fn response_headers(
    upstream: &hyper::HeaderMap,
) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
    let connection: Vec<&[u8]> = upstream
        .get_all(hyper::header::CONNECTION)
        .iter()
        .map(hyper::header::HeaderValue::as_bytes)
        .collect();
    upstream
        .iter()
        .filter(move |(name, _)| forwarded(name.as_str(), &connection))
        .filter(|(name, _)| name.as_str() != "set-cookie" && name.as_str() != "x-request-id")
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_str().as_bytes()).ok()?,
                HeaderValue::from_bytes(value.as_bytes()).ok()?,
            ))
        })
}

/// `{endpoint_url}/{path}?{query}`, with exactly one slash between the two paths. A query on
/// the endpoint itself (`https://h/openai?api-version=1`) comes first, then the call's; a
/// fragment on the endpoint is left out.
pub fn upstream_url(endpoint: &str, path: &str, query: Option<&str>) -> String {
    let endpoint = endpoint
        .split_once('#')
        .map_or(endpoint, |(before, _)| before);
    let (base, endpoint_query) = endpoint.split_once('?').unwrap_or((endpoint, ""));
    let mut url = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    let queries = [endpoint_query, query.unwrap_or("")];
    let mut separator = '?';
    for query in queries.into_iter().filter(|q| !q.is_empty()) {
        url.push(separator);
        url.push_str(query);
        separator = '&';
    }
    url
}

/// The part of a raw call's request path after `/v1/models/{name}/invoke/`, exactly as the
/// client sent it (still percent-encoded, so the model server gets the same bytes), checked so
/// that it stays below the version's `endpoint_url`.
///
/// # Errors
/// A validation error naming `path` for a segment that is `.` or `..` (also when
/// percent-encoded), or that holds, percent-encoded, a `/`, `\`, `?`, `#` or a control character:
/// any of them could take the call out of the endpoint on a server that decodes before routing.
pub fn raw_call_path(request_path: &str) -> Result<&str, ApiError> {
    // "", "v1", "models", the name, "invoke", then the rest.
    let tail = request_path.splitn(6, '/').nth(5).unwrap_or("");
    for segment in tail.split('/') {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(segment).collect();
        if decoded == b"." || decoded == b".." {
            return Err(ValidationError::new(
                "path",
                "must not hold `.` or `..` segments: a raw call stays below the endpoint",
            )
            .into());
        }
        if decoded
            .iter()
            .any(|b| matches!(b, b'/' | b'\\' | b'?' | b'#') || b.is_ascii_control())
        {
            return Err(ValidationError::new(
                "path",
                "must not hold an encoded `/`, `\\`, `?`, `#` or control character",
            )
            .into());
        }
    }
    Ok(tail)
}

/// A raw call's query without the gateway's own `alias` and `version` parameters; every other
/// pair goes on byte for byte, in its order.
pub fn raw_call_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(key, _)| key);
        let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
        if key == "alias" || key == "version" {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(pair);
    }
    out
}

/// Most bytes of a non-streamed body kept to find its `usage` (the body itself is never held).
const USAGE_SCAN_LIMIT: usize = 1024 * 1024;
/// Of a longer body (a large batch of embeddings, say), only its last bytes are kept: OpenAI's
/// answers end with `usage`.
const USAGE_TAIL: usize = 64 * 1024;

/// Watches a response body for the OpenAI `usage` object, and records the call when the body
/// ends, fails, or is dropped because the client went away.
pub struct Meter {
    /// The event to record, with tokens and times filled in at the end; `None` once recorded.
    event: Option<UsageEvent>,
    /// When the gateway received the request.
    started: Instant,
    /// When the request was sent upstream.
    upstream_started: Instant,
    /// Whether the body is server-sent events.
    sse: bool,
    /// Where the event goes.
    queue: UsageQueue,
    buffer: Vec<u8>,
    /// A non-streamed body outgrew [`USAGE_SCAN_LIMIT`]: `buffer` holds only its tail.
    tail_only: bool,
}

impl Meter {
    /// A meter for one call.
    pub fn new(
        event: UsageEvent,
        started: Instant,
        upstream_started: Instant,
        sse: bool,
        queue: UsageQueue,
    ) -> Self {
        Self {
            event: Some(event),
            started,
            upstream_started,
            sse,
            queue,
            buffer: Vec::new(),
            tail_only: false,
        }
    }

    /// The event as it stands, until it is recorded.
    pub fn event(&self) -> Option<&UsageEvent> {
        self.event.as_ref()
    }

    fn observe(&mut self, chunk: &[u8]) {
        if self.sse {
            self.buffer.extend_from_slice(chunk);
            while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                self.scan_sse_line(&line);
            }
            if self.buffer.len() > USAGE_SCAN_LIMIT {
                self.buffer.clear();
            }
        } else if !self.tail_only && self.buffer.len() + chunk.len() <= USAGE_SCAN_LIMIT {
            self.buffer.extend_from_slice(chunk);
        } else {
            // Up to twice the tail is held, then cut back to one: each byte is moved at most
            // once, however small the chunks.
            self.tail_only = true;
            self.buffer
                .extend_from_slice(&chunk[chunk.len().saturating_sub(2 * USAGE_TAIL)..]);
            if self.buffer.len() > 2 * USAGE_TAIL {
                let drop = self.buffer.len() - USAGE_TAIL;
                self.buffer.drain(..drop);
            }
        }
    }

    /// Reads the tokens of a non-streamed body, once it is complete.
    fn settle_usage(&mut self) {
        if self.sse || self.buffer.is_empty() {
            return;
        }
        let body = std::mem::take(&mut self.buffer);
        if !self.tail_only {
            self.take_usage(&body);
            return;
        }
        // The tail starts anywhere: read the last `"usage":` key that is not inside a string
        // (where its quotes would be escaped) and the object after it.
        let key = b"\"usage\"";
        let found = (0..body.len().saturating_sub(key.len() - 1))
            .rev()
            .filter(|&at| body[at..].starts_with(key) && (at == 0 || body[at - 1] != b'\\'))
            .find_map(|at| {
                let rest = body[at + key.len()..].trim_ascii_start();
                rest.strip_prefix(b":")
            });
        if let Some(value) = found {
            let mut values = serde_json::Deserializer::from_slice(value).into_iter::<UsageCounts>();
            if let Some(Ok(usage)) = values.next() {
                self.count(usage);
            }
        }
    }

    fn scan_sse_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data.windows(7).any(|w| w == b"\"usage\"") {
            self.take_usage(data);
        }
    }

    fn take_usage(&mut self, json: &[u8]) {
        // Only `usage` is kept; the rest of the body (the completion itself) is skipped over
        // without building a tree of it.
        let Ok(WithUsage { usage: Some(usage) }) = serde_json::from_slice::<WithUsage>(json) else {
            return;
        };
        self.count(usage);
    }

    fn count(&mut self, usage: UsageCounts) {
        let Some(event) = &mut self.event else {
            return;
        };
        if let Some(n) = usage.prompt_tokens.0 {
            event.prompt_tokens = Some(n);
        }
        if let Some(n) = usage.completion_tokens.0 {
            event.completion_tokens = Some(n);
        }
    }

    /// Records the call once; `status` overrides the event's when the body broke off.
    fn finish(&mut self, status: Option<u16>) {
        if self.event.is_none() {
            return;
        }
        self.settle_usage();
        let Some(mut event) = self.event.take() else {
            return;
        };
        if let Some(status) = status {
            event.status = status;
        }
        let upstream = self.upstream_started.elapsed();
        event.upstream_ms = Some(millis(upstream));
        event.latency_ms = millis(self.started.elapsed());
        meters::record_upstream(
            &event.model,
            upstream,
            event.prompt_tokens,
            event.completion_tokens,
        );
        self.queue.push(event);
    }
}

/// The part of an upstream answer the meter reads; everything else is skipped unread.
#[derive(serde::Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<UsageCounts>,
}

/// OpenAI's `usage` object, the two counts the gateway keeps (its other fields are skipped).
#[derive(serde::Deserialize)]
struct UsageCounts {
    #[serde(default)]
    prompt_tokens: Count,
    #[serde(default)]
    completion_tokens: Count,
}

/// A token count, or `None` when the field holds anything but an integer: a field of an
/// unexpected type must not cost the other one.
#[derive(Default)]
struct Count(Option<i64>);

impl<'de> serde::Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A number deserialises into a `Value` without allocating; anything else is dropped.
        let value = <serde_json::Value as serde::Deserialize>::deserialize(deserializer)?;
        Ok(Self(value.as_i64()))
    }
}

/// Milliseconds, saturating at `i32::MAX`.
pub fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// Status recorded for a call whose client went away before the body was complete (nginx's
/// convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The upstream body, passed through chunk by chunk. Dropping it (the client went away) drops
/// the upstream response, which cancels the upstream call. A body that sends nothing for
/// `upstream.timeout_seconds` is cut off (the call is recorded with status 504).
pub struct MeteredBody<B> {
    inner: B,
    meter: Meter,
    /// The upstream's `Content-Length`, if it sent one.
    expected: Option<u64>,
    seen: u64,
    /// Longest wait for the next chunk.
    idle: Duration,
    /// Armed when the body first waits; re-armed when it waits again after a chunk.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether a chunk came since the timer was last armed.
    progressed: bool,
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
            seen: 0,
            idle,
            idle_timer: None,
            progressed: false,
        }
    }

    /// The body's exact length, if the upstream sent one.
    pub fn exact_length(&self) -> Option<u64> {
        self.expected
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

impl<B> Stream for MeteredBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            return match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not passed on (actix-web's HTTP/1 writer has none).
                    let Ok(chunk) = frame.into_data() else {
                        continue;
                    };
                    this.progressed = true;
                    this.meter.observe(&chunk);
                    this.seen = this.seen.saturating_add(chunk.len() as u64);
                    if this.expected.is_some_and(|n| this.seen >= n) {
                        this.meter.finish(None);
                    }
                    Poll::Ready(Some(Ok(chunk)))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.meter.finish(Some(502));
                    Poll::Ready(Some(Err(actix_web::error::ErrorBadGateway(format!(
                        "the model server's response broke off: {e}"
                    )))))
                }
                Poll::Ready(None) => {
                    this.meter.finish(None);
                    Poll::Ready(None)
                }
                Poll::Pending if this.idle_expired(cx) => {
                    this.meter.finish(Some(504));
                    Poll::Ready(Some(Err(actix_web::error::ErrorGatewayTimeout(format!(
                        "the model server sent nothing for {} s",
                        this.idle.as_secs()
                    )))))
                }
                Poll::Pending => Poll::Pending,
            };
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
    use super::*;

    /// The token counts a non-streamed answer's meter takes from `body`.
    fn tokens_of(body: &[u8]) -> (Option<i64>, Option<i64>) {
        let (queue, _receiver) = UsageQueue::new(1);
        let event = crate::usage::tests::event();
        let mut meter = Meter::new(event, Instant::now(), Instant::now(), false, queue);
        meter.take_usage(body);
        let event = meter.event().expect("not recorded yet");
        (event.prompt_tokens, event.completion_tokens)
    }

    /// The token counts a meter reads from a non-streamed `body` that arrives in `chunk`-byte
    /// pieces.
    fn tokens_of_chunked(body: &[u8], chunk: usize) -> (Option<i64>, Option<i64>) {
        let (queue, _receiver) = UsageQueue::new(1);
        let event = crate::usage::tests::event();
        let mut meter = Meter::new(event, Instant::now(), Instant::now(), false, queue);
        for piece in body.chunks(chunk) {
            meter.observe(piece);
        }
        meter.settle_usage();
        let event = meter.event().expect("not recorded yet");
        (event.prompt_tokens, event.completion_tokens)
    }

    /// An embeddings answer of about `bytes` bytes, `usage` last, as OpenAI sends it; `filler`
    /// goes into the last embedding's object, after its vector.
    fn large_answer(bytes: usize, filler: &str) -> Vec<u8> {
        let vector = vec!["0.0123456789"; bytes / 13].join(",");
        format!(
            r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[{vector}],"note":"{filler}"}}],"model":"m","usage":{{"prompt_tokens":5,"total_tokens":5}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_large_answer_still_gives_its_usage_from_its_tail() {
        let body = large_answer(3 * USAGE_SCAN_LIMIT, "");
        assert!(body.len() > 2 * USAGE_SCAN_LIMIT);
        for chunk in [1000, 16 * 1024, USAGE_TAIL + 7, 3 * USAGE_TAIL, body.len()] {
            assert_eq!(tokens_of_chunked(&body, chunk), (Some(5), None), "{chunk}");
        }
        let just_over = large_answer(USAGE_SCAN_LIMIT + 3 * USAGE_TAIL, "");
        assert!(just_over.len() > USAGE_SCAN_LIMIT);
        assert_eq!(
            tokens_of_chunked(&just_over, 1),
            (Some(5), None),
            "byte by byte"
        );
        // A `"usage"` inside a string (its quotes escaped) is not the answer's.
        let body = large_answer(
            2 * USAGE_SCAN_LIMIT,
            r#"say "usage": {"prompt_tokens": 99}"#,
        );
        assert_eq!(tokens_of_chunked(&body, 16 * 1024), (Some(5), None));
        // A tail without `usage` leaves the counts empty.
        let mut body = large_answer(2 * USAGE_SCAN_LIMIT, "");
        body.truncate(body.len() - 60);
        assert_eq!(tokens_of_chunked(&body, 16 * 1024), (None, None));
    }

    #[test]
    fn usage_is_read_from_anywhere_in_the_answer_and_nothing_else_is_needed() {
        let answer = br#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"{\"usage\": 9}"}}],
            "usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46},"extra":[1,{"a":null}]}"#;
        assert_eq!(tokens_of(answer), (Some(12), Some(34)));
        let usage_first = br#"{"usage":{"completion_tokens":5},"choices":[]}"#;
        assert_eq!(tokens_of(usage_first), (None, Some(5)));
        let detailed = br#"{"usage":{"prompt_tokens_details":{"cached_tokens":2},"prompt_tokens":7,
            "total_tokens":9,"completion_tokens":2,"completion_tokens_details":null}}"#;
        assert_eq!(tokens_of(detailed), (Some(7), Some(2)));
    }

    #[test]
    fn odd_usage_costs_only_the_odd_field() {
        assert_eq!(
            tokens_of(br#"{"usage":{"prompt_tokens":"many","completion_tokens":3}}"#),
            (None, Some(3))
        );
        assert_eq!(
            tokens_of(br#"{"usage":{"prompt_tokens":{"n":1},"completion_tokens":2.5}}"#),
            (None, None)
        );
        assert_eq!(
            tokens_of(br#"{"usage":{"prompt_tokens":[1],"completion_tokens":4}}"#),
            (None, Some(4))
        );
        for body in [
            &br#"{"usage":null}"#[..],
            br#"{"usage":"none"}"#,
            br#"{"choices":[]}"#,
            br#"[1,2]"#,
            b"not json",
            br#"{"usage":{"prompt_tokens":1}"#,
        ] {
            assert_eq!(
                tokens_of(body),
                (None, None),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn upstream_hop_by_hop_headers_and_cookies_stay_behind() {
        let mut upstream = hyper::HeaderMap::new();
        for (k, v) in [
            ("connection", "close"),
            ("connection", "X-Upstream-Hop"),
            ("x-upstream-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "session=1"),
            ("x-request-id", "theirs"),
            ("content-type", "application/json"),
            ("openai-processing-ms", "12"),
            ("openai-processing-ms", "13"),
        ] {
            upstream.append(
                hyper::header::HeaderName::from_static(k),
                hyper::header::HeaderValue::from_static(v),
            );
        }
        let out: Vec<(String, String)> = response_headers(&upstream)
            .map(|(name, value)| {
                let value = value.to_str().map(str::to_owned).unwrap_or_default();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            out,
            vec![
                pair("content-type", "application/json"),
                pair("openai-processing-ms", "12"),
                pair("openai-processing-ms", "13"),
            ]
        );
    }

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(
            upstream_url("http://vllm:8000/v1/", "/chat/completions", None),
            "http://vllm:8000/v1/chat/completions"
        );
        assert_eq!(
            upstream_url("http://h/v1", "generate", Some("a=1")),
            "http://h/v1/generate?a=1"
        );
    }

    #[test]
    fn an_endpoint_query_comes_first_and_its_fragment_is_left_out() {
        assert_eq!(
            upstream_url("https://h/openai?api-version=1", "chat/completions", None),
            "https://h/openai/chat/completions?api-version=1"
        );
        assert_eq!(
            upstream_url("https://h/openai/?api-version=1#x", "embed", Some("a=1")),
            "https://h/openai/embed?api-version=1&a=1"
        );
        assert_eq!(
            upstream_url("https://h/v1#frag", "embed", Some("")),
            "https://h/v1/embed"
        );
    }

    #[test]
    fn a_raw_call_path_is_kept_as_sent_below_the_endpoint() {
        let tail = |path: &str| {
            raw_call_path(path)
                .map(str::to_owned)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            tail("/v1/models/m/invoke/echo/deep").as_deref(),
            Ok("echo/deep")
        );
        assert_eq!(
            tail("/v1/models/m/invoke/a%20b/%C3%A9").as_deref(),
            Ok("a%20b/%C3%A9")
        );
        assert_eq!(tail("/v1/models/m/invoke/").as_deref(), Ok(""));
        assert_eq!(
            tail("/v1/models/m/invoke/a..b/.x/..y").as_deref(),
            Ok("a..b/.x/..y")
        );
        for escape in [
            "/v1/models/m/invoke/../../admin",
            "/v1/models/m/invoke/echo/..",
            "/v1/models/m/invoke/./echo",
            "/v1/models/m/invoke/%2e%2E/admin",
            "/v1/models/m/invoke/.%2e/admin",
            "/v1/models/m/invoke/..%2F..%2Fsecret",
            "/v1/models/m/invoke/a%5cb",
            "/v1/models/m/invoke/echo%3Fversion=9",
            "/v1/models/m/invoke/echo%23frag",
            "/v1/models/m/invoke/echo%0d%0aX-Inj:%201",
            "/v1/models/m/invoke/echo%00",
        ] {
            let err = tail(escape).expect_err(escape);
            assert!(err.contains("path"), "{escape}: {err}");
        }
    }

    #[test]
    fn a_raw_call_query_loses_only_the_gateway_parameters() {
        assert_eq!(raw_call_query("version=1&foo=bar"), "foo=bar");
        assert_eq!(
            raw_call_query("flag&alias=prod&b=%FF&c=a+b%20c&%76ersion=2&versions=3"),
            "flag&b=%FF&c=a+b%20c&versions=3"
        );
        assert_eq!(raw_call_query(""), "");
        assert_eq!(raw_call_query("&&x=1&"), "x=1");
    }

    #[test]
    fn the_answer_is_asked_for_uncompressed_and_the_peer_is_appended_to_x_forwarded_for() {
        let mut incoming = HeaderMap::new();
        for (k, v) in [
            ("accept-encoding", "gzip, br"),
            ("expect", "100-continue"),
            ("x-forwarded-for", "6.6.6.6"),
        ] {
            incoming.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        incoming.append(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("10.0.0.1"),
        );
        let peer = "192.0.2.7".parse().ok();
        let out = request_headers(&incoming, None, None, peer);
        let all = |name: &str| -> Vec<&str> {
            out.get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        assert_eq!(all("accept-encoding"), ["identity"]);
        assert!(
            all("expect").is_empty(),
            "the gateway answered Expect itself"
        );
        assert_eq!(all("x-forwarded-for"), ["6.6.6.6, 10.0.0.1, 192.0.2.7"]);

        let out = request_headers(&HeaderMap::new(), None, None, peer);
        assert_eq!(
            out.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            Some("192.0.2.7")
        );
        assert_eq!(
            out.get("accept-encoding").and_then(|v| v.to_str().ok()),
            Some("identity")
        );
    }

    #[test]
    fn hop_by_hop_headers_and_client_credentials_stay_behind() {
        let mut incoming = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer maas_client"),
            ("x-api-key", "maas_client"),
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
            ("openai-organization", "org"),
        ] {
            incoming.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = request_headers(&incoming, Some("rid-1"), Some("sk-upstream"), None);
        assert_eq!(
            out.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer sk-upstream")
        );
        assert!(out.get("x-api-key").is_none());
        assert!(out.get("connection").is_none() && out.get("keep-alive").is_none());
        assert!(
            out.get("x-custom-hop").is_none(),
            "headers named by Connection are hop-by-hop"
        );
        assert_eq!(
            out.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert_eq!(
            out.get("accept").and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        assert_eq!(
            out.get("x-request-id").and_then(|v| v.to_str().ok()),
            Some("rid-1")
        );
        let out = request_headers(&incoming, None, None, None);
        assert!(
            out.get("authorization").is_none(),
            "no upstream key: no Authorization at all"
        );
    }
}
