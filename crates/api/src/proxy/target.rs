//! Where a call goes: the upstream URL of a version's endpoint and a path, and the checks that
//! keep a raw call's path and query below its endpoint.

use hyper::Uri;

use super::UpstreamError;

/// `{endpoint_url}/{path}?{query}` as a request target. The fast path takes it as it is; a URL
/// with characters a URI may not hold (a raw call's path with a space, say, which actix hands
/// over decoded) is normalised by the WHATWG URL parser first, which percent-encodes them as a
/// browser would.
///
/// # Errors
/// [`UpstreamError::InvalidPath`] when even that gives no URI.
pub fn upstream_uri(endpoint: &str, path: &str, query: Option<&str>) -> Result<Uri, UpstreamError> {
    // Taking the `String` keeps its buffer: no copy.
    if let Ok(uri) = Uri::try_from(upstream_url(endpoint, path, query)) {
        return Ok(uri);
    }
    url::Url::parse(&upstream_url(endpoint, path, query))
        .ok()
        .and_then(|u| Uri::try_from(u.as_str()).ok())
        .ok_or(UpstreamError::InvalidPath(
            "is not a valid URL path for the model server",
        ))
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
/// [`UpstreamError::InvalidPath`] for a segment that is `.` or `..` (also when
/// percent-encoded), or that holds, percent-encoded, a `/`, `\`, `?`, `#` or a control character:
/// any of them could take the call out of the endpoint on a server that decodes before routing.
pub fn raw_call_path(request_path: &str) -> Result<&str, UpstreamError> {
    // "", "v1", "models", the name, "invoke", then the rest.
    let tail = request_path.splitn(6, '/').nth(5).unwrap_or("");
    for segment in tail.split('/') {
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(segment).collect();
        if decoded == b"." || decoded == b".." {
            return Err(UpstreamError::InvalidPath(
                "must not hold `.` or `..` segments: a raw call stays below the endpoint",
            ));
        }
        if decoded
            .iter()
            .any(|b| matches!(b, b'/' | b'\\' | b'?' | b'#') || b.is_ascii_control())
        {
            return Err(UpstreamError::InvalidPath(
                "must not hold an encoded `/`, `\\`, `?`, `#` or control character",
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
