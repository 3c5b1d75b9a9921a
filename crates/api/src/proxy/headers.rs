//! Header hygiene in both directions: hop-by-hop headers, the client's credentials and the
//! gateway's own headers stay behind; the gateway sets what the model server must see.

use std::io::Write as _;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

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

#[cfg(test)]
mod tests {
    use super::*;

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
