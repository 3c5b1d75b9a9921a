//! [`ClientAddress`]: which address a request comes from, for the limit of failed
//! authentications per client address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use actix_web::http::header::{HeaderMap, HeaderName};

use crate::proxy::IpNetwork;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// How a request's client address is found: the TCP peer, unless the peer is one of the
/// operator's `auth.trusted_proxies`; then `X-Forwarded-For` is read from the right (each
/// proxy appends the address it saw), skipping trusted proxies, and the first address that is
/// not one is the client. Without trusted proxies (the default) the header is never believed:
/// anyone can write it.
///
/// An entry that is not an address stops the walk at the last trusted hop, so a request that
/// came through a trusted proxy with a header it cannot read counts as that proxy's.
#[derive(Debug, Clone, Default)]
pub struct ClientAddress {
    trusted_proxies: Arc<[IpNetwork]>,
}

impl ClientAddress {
    /// Believes `X-Forwarded-For` from `trusted_proxies` only.
    pub fn new(trusted_proxies: &[IpNetwork]) -> Self {
        Self {
            trusted_proxies: trusted_proxies.into(),
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }

    /// The client address of a request from `peer` with `headers`; `None` without a peer.
    pub fn of(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusted(peer) {
            return Some(peer);
        }
        let mut entries = Vec::new();
        for value in headers.get_all(X_FORWARDED_FOR) {
            let Ok(text) = value.to_str() else {
                return Some(peer);
            };
            entries.extend(text.split(','));
        }
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = forwarded_ip(entry.trim()) else {
                return Some(client);
            };
            if !self.trusted(ip) {
                return Some(ip);
            }
            client = ip;
        }
        Some(client)
    }
}

/// An address as proxies write it: bare, or with a port (`203.0.113.7:51234`, `[2001:db8::1]:443`).
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("an address")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                X_FORWARDED_FOR,
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() {
        let policy = ClientAddress::default();
        let headers = forwarded(&["198.51.100.1"]);
        assert_eq!(
            policy.of(Some(ip("10.0.0.5")), &headers),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(policy.of(None, &headers), None);
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let policy = ClientAddress::new(&[IpNetwork::v4(10, 0, 0, 0, 8)]);
        // The client claims 1.1.1.1; the trusted proxies saw 203.0.113.9, then each other.
        let headers = forwarded(&["1.1.1.1, 203.0.113.9", "10.0.0.3"]);
        assert_eq!(
            policy.of(Some(ip("10.0.0.2")), &headers),
            Some(ip("203.0.113.9"))
        );
        // Not from a trusted proxy: the header is not read.
        assert_eq!(
            policy.of(Some(ip("192.0.2.1")), &headers),
            Some(ip("192.0.2.1"))
        );
        // Ports and IPv6 as proxies write them.
        let headers = forwarded(&["[2001:db8::7]:443"]);
        assert_eq!(
            policy.of(Some(ip("10.0.0.2")), &headers),
            Some(ip("2001:db8::7"))
        );
    }

    #[test]
    fn a_header_that_cannot_be_read_counts_as_the_last_trusted_hop() {
        let policy = ClientAddress::new(&[IpNetwork::v4(10, 0, 0, 0, 8)]);
        let headers = forwarded(&["not-an-address, 10.0.0.9"]);
        assert_eq!(
            policy.of(Some(ip("10.0.0.2")), &headers),
            Some(ip("10.0.0.9"))
        );
        assert_eq!(
            policy.of(Some(ip("10.0.0.2")), &HeaderMap::new()),
            Some(ip("10.0.0.2"))
        );
        // A v4-mapped peer is judged as the IPv4 address it is.
        assert_eq!(
            policy.of(Some(ip("::ffff:10.0.0.2")), &forwarded(&["203.0.113.1"])),
            Some(ip("203.0.113.1"))
        );
    }
}
