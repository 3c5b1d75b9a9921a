//! The pooled client for model servers: one hyper-util client per worker thread over rustls,
//! connecting only to addresses the [`AddressPolicy`] allows, and at most
//! `upstream.max_concurrent_calls` calls at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use maas_telemetry::handles::{HandleMemo, memoised};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::UpstreamError;
use super::balance::Balancer;
use super::guard::{AddressRefused, Guarded, PolicyResolver};
use super::policy::AddressPolicy;
use super::settings::{DEFAULT_MAX_TOKENS_PER_CALL, UpstreamSettings};

/// The HTTP client behind [`Upstream`]: hyper-util's pooled client, plain HTTP or rustls, over
/// connections the address policy allows.
type HttpClient = Client<HttpsConnector<Guarded<HttpConnector<PolicyResolver>>>, Full<Bytes>>;

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
///
/// Every connection goes only to addresses `upstream.allowed_networks` and
/// `upstream.denied_networks` allow, checked after name resolution (each time a connection is
/// opened, so a name that later resolves elsewhere is checked again) and on addresses written
/// in the URL; a call whose endpoint has no allowed address fails with
/// [`UpstreamError::AddressNotAllowed`], whoever registered it.
#[derive(Clone)]
pub struct Upstream {
    settings: Arc<UpstreamSettings>,
    /// Tells this `Upstream`'s per-thread clients from those of another one (tests run several).
    id: u64,
    /// TLS settings and the system's CA roots, loaded once and shared by every thread's client.
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    policy: Arc<AddressPolicy>,
    /// One permit per call in flight, `upstream.max_concurrent_calls` in all.
    slots: Arc<Semaphore>,
    /// `usage.max_tokens_per_call`.
    max_tokens_per_call: u64,
    /// Which endpoint of a version each call goes to, and their health on this replica.
    balancer: Arc<Balancer>,
}

/// A call's place among `upstream.max_concurrent_calls`: held from before its body is read
/// until its answer's body is over or dropped.
#[derive(Debug)]
pub struct CallSlot {
    /// Given back to `upstream.max_concurrent_calls` when dropped.
    _permit: OwnedSemaphorePermit,
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

/// Why the [`Upstream`] client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The system has CA certificates, and none of them is usable.
    #[error(
        "none of the system's CA certificates is usable ({invalid} unparsable): {}",
        joined(.errors)
    )]
    NoUsableCertificates {
        /// How many certificates could not be parsed.
        invalid: usize,
        /// What went wrong loading them.
        errors: Vec<rustls_native_certs::Error>,
    },
    /// rustls refused the TLS settings.
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// The errors' messages, separated by `; `.
fn joined(errors: &[rustls_native_certs::Error]) -> String {
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    errors.join("; ")
}

/// rustls with the ring provider and the system's CA roots. A system without any (a bare
/// container image) still gets a client: plain-HTTP model servers work, HTTPS ones fail their
/// handshake with an unknown-issuer error, which reaches the log of the failed call. A system
/// whose certificates are there but none of them usable is a start-up error.
fn tls_config() -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (valid, invalid) = roots.add_parsable_certificates(found.certs);
    if valid == 0 && (invalid > 0 || !found.errors.is_empty()) {
        return Err(ClientError::NoUsableCertificates {
            invalid,
            errors: found.errors,
        });
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn build_client(
    settings: &UpstreamSettings,
    tls: &rustls::ClientConfig,
    policy: &Arc<AddressPolicy>,
) -> HttpClient {
    let mut http = HttpConnector::new_with_resolver(PolicyResolver::new(Arc::clone(policy)));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(settings.connect_timeout_seconds)));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(Guarded::new(http, Arc::clone(policy)));
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
    /// [`ClientError::NoUsableCertificates`] when the system's CA certificates exist but none
    /// of them can be used.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, ClientError> {
        let slots = settings.max_concurrent_calls.min(Semaphore::MAX_PERMITS);
        Ok(Self {
            tls: Arc::new(tls_config()?),
            settings: Arc::new(settings.clone()),
            id: NEXT_UPSTREAM_ID.fetch_add(1, Ordering::Relaxed),
            timeout: Duration::from_secs(settings.timeout_seconds),
            policy: Arc::new(settings.address_policy()),
            slots: Arc::new(Semaphore::new(slots)),
            max_tokens_per_call: DEFAULT_MAX_TOKENS_PER_CALL,
            balancer: Arc::new(Balancer::new(settings)),
        })
    }

    /// The same client, believing token counts of at most `max` (`usage.max_tokens_per_call`).
    #[must_use]
    pub fn with_max_tokens_per_call(mut self, max: u64) -> Self {
        self.max_tokens_per_call = max;
        self
    }

    /// Largest token count of one call's `usage` that is believed.
    pub fn max_tokens_per_call(&self) -> u64 {
        self.max_tokens_per_call
    }

    /// Which endpoint of a version each call goes to.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// The task that drops the balancer's idle fleets periodically (see
    /// [`super::balance::sweep_every`]): spawn it beside the server; without it, fleets go only
    /// when the balancer's bounds make room.
    pub fn sweep_fleets(&self) -> impl Future<Output = ()> + Send + 'static {
        super::balance::sweep_every(Arc::clone(&self.balancer))
    }

    /// Which addresses calls may go to (also checked when a version's endpoint is written).
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// A place for one more call, unless `upstream.max_concurrent_calls` are in flight.
    ///
    /// # Errors
    /// [`UpstreamError::Busy`] when every place is taken.
    pub fn try_slot(&self) -> Result<CallSlot, UpstreamError> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .map(|permit| CallSlot { _permit: permit })
            .map_err(|_| UpstreamError::Busy)
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
            || build_client(&self.settings, &self.tls, &self.policy),
        )
    }

    /// Sends a request and waits for the response headers, within `upstream.timeout_seconds`.
    ///
    /// # Errors
    /// [`UpstreamError::Timeout`] past the timeout, [`UpstreamError::AddressNotAllowed`] when
    /// the endpoint has no address the policy allows, [`UpstreamError::NotConnected`] when no
    /// connection could be made (the request was not sent), [`UpstreamError::Unreachable`] when
    /// it broke before the headers.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        headers: hyper::HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut request = hyper::Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        match tokio::time::timeout(self.timeout, self.client().request(request)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) => Err(match refusal(&e) {
                Some(refused) => UpstreamError::AddressNotAllowed(refused.to_string()),
                None if e.is_connect() => UpstreamError::NotConnected(error_chain(&e)),
                None => UpstreamError::Unreachable(error_chain(&e)),
            }),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// The policy's refusal among an error's sources, if that is why the call failed.
fn refusal<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e AddressRefused> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<AddressRefused>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
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
