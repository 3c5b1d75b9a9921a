//! The address policy where connections are made: a resolver that keeps only the allowed
//! addresses of a name, and a connector layer for the addresses written in a URL (which
//! hyper-util's connector connects to without asking the resolver).
//!
//! Both run once per new connection, not per call: a pooled connection was checked when it was
//! opened.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use tower_service::Service;

use super::policy::AddressPolicy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Why no connection was opened: the endpoint's host has no address the policy allows. Its
/// text (host and addresses) is for the log only.
#[derive(Debug, thiserror::Error)]
#[error("endpoint address not allowed: {0}")]
pub struct AddressRefused(String);

/// Most addresses of a name named in the log line of a refusal.
const ADDRESSES_SHOWN: usize = 4;

/// Resolves names with the system's resolver (as hyper-util's own one does, on tokio's blocking
/// pool) and keeps the addresses the policy allows; none left is an [`AddressRefused`].
#[derive(Clone, Debug)]
pub struct PolicyResolver {
    policy: Arc<AddressPolicy>,
}

impl PolicyResolver {
    /// A resolver that filters by `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if found.is_empty() {
                return Err(format!("{} has no address", name.as_str()).into());
            }
            let (allowed, denied): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| policy.allows(a.ip()));
            if allowed.is_empty() {
                let shown: Vec<String> = denied
                    .iter()
                    .take(ADDRESSES_SHOWN)
                    .map(|a| a.ip().to_string())
                    .collect();
                return Err(AddressRefused(format!(
                    "{} resolves only to denied addresses ({})",
                    name.as_str(),
                    shown.join(", ")
                ))
                .into());
            }
            Ok(allowed.into_iter())
        })
    }
}

/// The address a URL's host spells, when it is one: what hyper-util's connector would connect
/// to without resolving (`127.0.0.1`, `[::1]`; brackets are taken off as it does).
fn literal_address(uri: &Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse().ok()
}

/// A connector that refuses a URL whose host is an address the policy denies, before the inner
/// connector connects to it; names go on to the inner connector and its resolver.
#[derive(Clone, Debug)]
pub struct Guarded<C> {
    inner: C,
    policy: Arc<AddressPolicy>,
}

impl<C> Guarded<C> {
    /// `inner`, refusing addresses `policy` denies.
    pub fn new(inner: C, policy: Arc<AddressPolicy>) -> Self {
        Self { inner, policy }
    }
}

impl<C> Service<Uri> for Guarded<C>
where
    C: Service<Uri>,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = BoxFuture<C::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some(address) = literal_address(&uri)
            && !self.policy.allows(address)
        {
            let refused = AddressRefused(format!("{address} is a denied address"));
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_written_in_a_url_are_read_as_the_connector_reads_them() {
        for (url, address) in [
            ("http://127.0.0.1:6379/v1", Some("127.0.0.1")),
            ("http://[::1]:5432/", Some("::1")),
            ("http://[::ffff:127.0.0.1]/", Some("::ffff:127.0.0.1")),
            ("https://169.254.169.254/latest", Some("169.254.169.254")),
            ("http://vllm:8000/v1", None),
            ("http://localhost/", None),
            // Not addresses to the connector: it hands these to the resolver, which filters.
            ("http://2130706433:6379/", None),
            ("http://0x7f.1/", None),
        ] {
            let uri: Uri = url.parse().expect(url);
            let expected = address.map(|a| a.parse::<IpAddr>().expect(a));
            assert_eq!(literal_address(&uri), expected, "{url}");
        }
    }
}
