//! An OpenAI-compatible model server for the tests, on a free port, that the test steers through
//! fields of the request body (which the gateway forwards untouched): `stub_delay_ms`,
//! `stub_status`, `stub_drip` (an endless slow stream, to see cancellation) with `stub_drip_ms`
//! between its chunks (50 by default), `stub_newlines` (a stream of that many bare `\n` bytes,
//! then the chunk with `usage`) with `stub_hold` (the stream waits after the newlines until the
//! test calls [`Stub::release`], for at most a minute), `stub_usage` (a string: the JSON text of
//! the answer's `usage`, written as is, so that it can hold what no JSON value of the test's
//! holds, such as `1e400`; in a stream, in its final chunk, which it sends only when the call
//! asks with `"stream_options": {"include_usage": true}`), `stub_dimensions` (an embedding of
//! that many numbers). A test may also make one stub
//! answer every call with a status of its choosing ([`Stub::answer_with`]), answer none
//! ([`Stub::never_answer`]), count the connections it accepted ([`Stub::connections`]), or kill
//! it ([`Stub::kill`]: it stops listening and drops its connections, and keeps what it saw).

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    cancelled: AtomicBool,
    /// Lets a held stream (`stub_hold`) go on.
    release: tokio::sync::Notify,
    /// Every call is answered with this status (0: as the body asks).
    forced_status: AtomicU16,
    /// Every call waits this long before its answer (0: as the body asks).
    forced_delay_ms: AtomicU64,
    /// Connections accepted so far.
    connections: AtomicU64,
}

pub struct Stub {
    /// `http://127.0.0.1:<port>/v1`: use as a version's endpoint_url.
    pub base: String,
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
}

impl Stub {
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().last().cloned().expect("the stub saw a request")
    }

    pub fn was_cancelled(&self) -> bool {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Lets the held stream (`stub_hold`) send the rest of its body.
    pub fn release(&self) {
        self.shared.release.notify_one();
    }

    /// From now on, every call is answered with `status` and an OpenAI error body.
    pub fn answer_with(&self, status: u16) {
        self.shared.forced_status.store(status, Ordering::SeqCst);
    }

    /// From now on, every call waits `ms` before it is answered.
    pub fn delay(&self, ms: u64) {
        self.shared.forced_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on, no call is answered while the test runs (each waits a day, or until the stub
    /// stops).
    pub fn never_answer(&self) {
        self.delay(24 * 3600 * 1000);
    }

    /// How many connections the stub accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every connection at once, as a crashed server would; what it
    /// saw stays readable.
    pub async fn kill(&self) {
        self.handle.stop(false).await;
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

struct DripGuard(Arc<Shared>);

impl Drop for DripGuard {
    fn drop(&mut self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
    }
}

fn sse(chunks: Vec<String>) -> HttpResponse {
    let mut body = String::new();
    for chunk in chunks {
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    body.push_str("data: [DONE]\n\n");
    // Sent in several pieces so that the gateway must pass a real stream through.
    let pieces: Vec<Result<web::Bytes, actix_web::Error>> = body
        .as_bytes()
        .chunks(40)
        .map(|c| Ok(web::Bytes::copy_from_slice(c)))
        .collect();
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(futures_util::stream::iter(pieces))
}

/// `text/event-stream` of `newlines` bare `\n` bytes (in pieces of up to 1 MiB), then, once
/// released when `hold`, the final chunk with `usage` and `[DONE]`.
fn newline_flood(newlines: u64, hold: bool, shared: &Arc<Shared>, usage: &Value) -> HttpResponse {
    const PIECE: u64 = 1024 * 1024;
    let pieces = (0..newlines.div_ceil(PIECE)).map(move |i| {
        let len = PIECE.min(newlines - i * PIECE) as usize;
        Ok::<_, actix_web::Error>(web::Bytes::from(vec![b'\n'; len]))
    });
    let shared = shared.clone();
    let end = format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"object": "chat.completion.chunk", "choices": [], "usage": usage})
    );
    let end = futures_util::stream::once(async move {
        if hold {
            // Bounded, so that a test that never releases cannot hang the stub.
            let _ = tokio::time::timeout(Duration::from_secs(60), shared.release.notified()).await;
        }
        Ok::<_, actix_web::Error>(web::Bytes::from(end))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(futures_util::stream::iter(pieces).chain(end))
}

async fn handle(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let seen = Seen {
        path: req.path().to_owned(),
        query: req.query_string().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    shared.seen.lock().expect("lock").push(seen.clone());
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let forced_delay = shared.forced_delay_ms.load(Ordering::SeqCst);
    if let Some(ms) = (forced_delay != 0)
        .then_some(forced_delay)
        .or_else(|| request["stub_delay_ms"].as_u64())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let forced = shared.forced_status.load(Ordering::SeqCst);
    if let Some(status) = (forced != 0)
        .then_some(u64::from(forced))
        .or_else(|| request["stub_status"].as_u64())
    {
        let status = actix_web::http::StatusCode::from_u16(status as u16).expect("status");
        return HttpResponse::build(status)
            .content_type("application/json")
            .body(r#"{"error":{"message":"upstream says no","type":"server_error"}}"#);
    }
    let path = req.path();
    if path.contains("/echo") {
        return HttpResponse::Ok().json(json!({
            "path": path,
            "query": seen.query,
            "content_type": seen.header("content-type"),
            "body": String::from_utf8_lossy(&seen.body),
        }));
    }
    let usage = json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10});
    let usage_text = request["stub_usage"]
        .as_str()
        .map_or_else(|| usage.to_string(), str::to_owned);
    // `value` with its `usage` written as `usage_text`.
    let with_usage = |value: Value| {
        value
            .to_string()
            .replace(r#""usage":"USAGE""#, &format!(r#""usage":{usage_text}"#))
    };
    if request["stub_drip"].as_bool() == Some(true) {
        let every = Duration::from_millis(request["stub_drip_ms"].as_u64().unwrap_or(50));
        let guard = DripGuard(shared.get_ref().clone());
        let stream = futures_util::stream::unfold((0_u64, guard), move |(n, guard)| async move {
            tokio::time::sleep(every).await;
            let chunk = format!("data: {{\"n\":{n}}}\n\n");
            Some((
                Ok::<_, actix_web::Error>(web::Bytes::from(chunk)),
                (n + 1, guard),
            ))
        });
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(stream);
    }
    if let Some(newlines) = request["stub_newlines"].as_u64() {
        return newline_flood(
            newlines,
            request["stub_hold"].as_bool() == Some(true),
            &shared,
            &usage,
        );
    }
    if path.ends_with("/embeddings") {
        // `stub_dimensions` makes a long vector (its answer's `model` comes after it).
        let embedding = match request["stub_dimensions"].as_u64() {
            Some(n) => json!(vec![0.125; n as usize]),
            None => json!([0.1, 0.2, 0.3]),
        };
        return HttpResponse::Ok().json(json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
            "model": request["model"],
            "usage": {"prompt_tokens": 7, "total_tokens": 7},
        }));
    }
    if request["stream"].as_bool() == Some(true) {
        let model = &request["model"];
        let mut chunks: Vec<String> = ["Hel", "lo"]
            .iter()
            .map(|t| json!({"object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": t}}]}).to_string())
            .collect();
        // As OpenAI and vLLM: the usage-only final chunk only when asked for.
        if request["stream_options"]["include_usage"].as_bool() == Some(true) {
            chunks.push(with_usage(
                json!({"object": "chat.completion.chunk", "model": model, "choices": [], "usage": "USAGE"}),
            ));
        }
        return sse(chunks);
    }
    HttpResponse::Ok()
        // A hop-by-hop header that must not reach the client.
        .insert_header(("x-upstream", "stub"))
        .content_type("application/json")
        .body(with_usage(json!({
            "id": "cmpl-1",
            "object": if path.ends_with("/chat/completions") { "chat.completion" } else { "text_completion" },
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "text": "Hello", "finish_reason": "stop"}],
            "usage": "USAGE",
        })))
}

pub async fn start_stub() -> Stub {
    let shared = Arc::new(Shared::default());
    let data = web::Data::new(shared.clone());
    let counted = shared.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind stub");
    let port = listener.local_addr().expect("addr").port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .default_service(web::to(handle))
    })
    .on_connect(move |_, _| {
        counted.connections.fetch_add(1, Ordering::SeqCst);
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(0)
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Stub {
        base: format!("http://127.0.0.1:{port}/v1"),
        shared,
        handle,
    }
}
