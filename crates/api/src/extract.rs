//! Extractors that turn every kind of bad input into a 4xx problem naming the field.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use maas_domain::ValidationError;

/// Largest accepted request body, in bytes (`server.max_body_bytes`), as app data.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl Default for BodyLimit {
    fn default() -> Self {
        Self(256 * 1024)
    }
}

/// A JSON body, checked in this order: content type (415), size (413), syntax (400), then shape:
/// unknown, missing or mistyped fields (422, naming the field).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<BodyLimit>>()
            .map_or_else(|| BodyLimit::default().0, |l| l.0);
        let content_type_ok = is_json(req);
        let declared_len = content_length(req);
        let payload = payload.take();
        Box::pin(async move {
            if !content_type_ok {
                return Err(ApiError::UnsupportedMediaType(
                    "the request body must be JSON (content-type: application/json)".into(),
                ));
            }
            let body = read_body(payload, declared_len, limit).await?;
            parse_json(&body).map(Json)
        })
    }
}

/// Reads a whole request body of at most `limit` bytes (413 past it, also when chunked).
pub async fn read_body(
    mut payload: Payload,
    declared_len: Option<usize>,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    if declared_len.is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match &e {
            actix_web::error::PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                ApiError::BodyTimeout
            }
            _ => ApiError::BadRequest(e.to_string()),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The declared `Content-Length`, if any.
pub fn content_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// True when the request declares a JSON media type (`application/json` or `*/*+json`).
pub fn is_json(req: &HttpRequest) -> bool {
    match req.mime_type() {
        Ok(Some(mime)) => {
            mime.type_() == "application"
                && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        }
        _ => false,
    }
}

/// Parses JSON, telling syntax errors (400) from shape errors (422 naming the field).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = strip_position(&inner.to_string());
                let field = match (path.as_str(), quoted_field(&message)) {
                    (".", quoted) => quoted.unwrap_or_else(|| "body".to_owned()),
                    // A field missing from a nested object: the path names the object.
                    (_, Some(missing)) if message.starts_with("missing field") => {
                        format!("{path}.{missing}")
                    }
                    _ => path,
                };
                ApiError::from(ValidationError::new(field, message))
            }
            _ => ApiError::MalformedJson(inner.to_string()),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// serde's "missing field `x`" and "unknown field `x`, expected …" name the field in backticks.
fn quoted_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned())
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Parses a query string into `T` (whose fields are all optional strings, and which denies
/// unknown fields), naming an unknown parameter in the 422.
pub fn parse_query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    serde_urlencoded::from_str(req.query_string()).map_err(|e| {
        let message = e.to_string();
        let field = quoted_field(&message).unwrap_or_else(|| "query".to_owned());
        ApiError::from(ValidationError::new(field, message))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use maas_domain::DomainError;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: Option<u32>,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u8,
    }

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::Domain(DomainError::Validation(v)) => v.field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_are_malformed_and_shape_errors_name_the_field() {
        assert!(matches!(
            parse_json::<Body>(b"{\"name\": "),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse_json::<Body>(b"{\"name\":\"a\"} trailing"),
            Err(ApiError::MalformedJson(_))
        ));
        assert_eq!(
            field_of(parse_json::<Body>(b"{}").expect_err("missing")),
            "name"
        );
        assert_eq!(
            field_of(parse_json::<Body>(br#"{"name":"a","bogus":1}"#).expect_err("unknown")),
            "bogus"
        );
        assert_eq!(
            field_of(parse_json::<Body>(br#"{"name":"a","count":"x"}"#).expect_err("type")),
            "count"
        );
        assert_eq!(
            field_of(parse_json::<Body>(br#"{"name":"a","inner":{"n":300}}"#).expect_err("range")),
            "inner.n"
        );
        assert_eq!(
            field_of(parse_json::<Body>(br#"{"name":"a","inner":{}}"#).expect_err("missing")),
            "inner.n"
        );
        assert_eq!(
            field_of(parse_json::<Body>(b"\"text\"").expect_err("string")),
            "body"
        );
    }
}
