//! Validated value types. Each is parsed once, in its constructor, so later code can trust it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Longest accepted model name, alias or tag, in characters.
pub const MAX_NAME_LEN: usize = 64;
/// Most tags a model may carry.
pub const MAX_TAGS: usize = 32;
/// Longest accepted description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 4096;
/// Largest accepted metadata object, serialized, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Longest accepted source URI, framework name or other free-form short text.
pub const MAX_SHORT_TEXT_LEN: usize = 2048;

fn check_identifier(field: &str, raw: &str) -> Result<(), ValidationError> {
    let len = raw.chars().count();
    if len == 0 || len > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters long"),
        ));
    }
    let mut chars = raw.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = raw
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok {
        return Err(ValidationError::new(
            field,
            "must contain only a-z, 0-9, '.', '_' and '-', and start with a letter or digit",
        ));
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses and validates; the error names the field.
            pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
                Self::parse_as($field, raw)
            }

            /// Parses and validates, naming `field` in the error.
            pub fn parse_as(field: &str, raw: impl Into<String>) -> Result<Self, ValidationError> {
                let raw = raw.into();
                check_identifier(field, &raw)?;
                Ok(Self(raw))
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The validated text, owned.
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(|e| serde::de::Error::custom(e.message))
            }
        }
    };
}

identifier!(
    /// A model's unique name: 1–64 chars of `a-z 0-9 . _ -`, starting with a letter or digit.
    ModelName,
    "name"
);
identifier!(
    /// A movable, named pointer to a version of a model (e.g. `production`). Same rules as names.
    AliasName,
    "alias"
);
identifier!(
    /// A user's unique name. Same rules as model names.
    Username,
    "username"
);

impl AliasName {
    /// The reserved alias that always resolves to the highest version.
    pub const LATEST: &'static str = "latest";

    /// True for `latest`, which cannot be set or deleted.
    pub fn is_latest(&self) -> bool {
        self.0 == Self::LATEST
    }
}

/// A version number of a model: 1, 2, 3… allocated without gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionNumber(i32);

impl VersionNumber {
    /// Accepts 1..=i32::MAX.
    pub fn new(n: i64) -> Result<Self, ValidationError> {
        i32::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .map(Self)
            .ok_or_else(|| ValidationError::new("version", "must be a positive integer"))
    }

    /// Parses a decimal string such as a path segment.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        raw.parse::<i64>()
            .map_err(|_| ValidationError::new("version", "must be a positive integer"))
            .and_then(Self::new)
    }

    /// The number.
    pub fn get(self) -> i32 {
        self.0
    }
}

impl fmt::Display for VersionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A model's tags: at most 32, each 1–64 characters, duplicates removed, order kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tags(Vec<String>);

impl Tags {
    /// Validates count and length of each tag.
    pub fn parse(raw: Vec<String>) -> Result<Self, ValidationError> {
        if raw.len() > MAX_TAGS {
            return Err(ValidationError::new(
                "tags",
                format!("at most {MAX_TAGS} tags are allowed"),
            ));
        }
        let mut out: Vec<String> = Vec::with_capacity(raw.len());
        for (i, tag) in raw.into_iter().enumerate() {
            Self::check_one(&format!("tags[{i}]"), &tag)?;
            if !out.contains(&tag) {
                out.push(tag);
            }
        }
        Ok(Self(out))
    }

    /// Validates one tag (as used in a `tag` filter), naming `field` in the error.
    pub fn check_one(field: &str, tag: &str) -> Result<(), ValidationError> {
        let len = tag.chars().count();
        if len == 0 || len > MAX_NAME_LEN {
            return Err(ValidationError::new(
                field,
                format!("must be 1 to {MAX_NAME_LEN} characters long"),
            ));
        }
        if tag.chars().any(char::is_control) {
            return Err(ValidationError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(())
    }

    /// The tags.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The tags, owned.
    pub fn into_inner(self) -> Vec<String> {
        self.0
    }
}

/// Free text of at most 4096 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Description(String);

impl Description {
    /// Validates the length.
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        if raw.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(ValidationError::new(
                "description",
                format!("must be at most {MAX_DESCRIPTION_LEN} characters long"),
            ));
        }
        Ok(Self(raw))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A JSON object of at most 64 KiB serialized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(serde_json::Value);

impl Default for Metadata {
    fn default() -> Self {
        Self(serde_json::Value::Object(serde_json::Map::new()))
    }
}

impl Metadata {
    /// Accepts only a JSON object no larger than 64 KiB when serialized.
    pub fn parse(raw: serde_json::Value) -> Result<Self, ValidationError> {
        if !raw.is_object() {
            return Err(ValidationError::new("metadata", "must be a JSON object"));
        }
        let size = serde_json::to_vec(&raw)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_METADATA_BYTES {
            return Err(ValidationError::new(
                "metadata",
                format!("must be at most {MAX_METADATA_BYTES} bytes when serialized"),
            ));
        }
        Ok(Self(raw))
    }

    /// The object.
    pub fn as_value(&self) -> &serde_json::Value {
        &self.0
    }

    /// The object, owned.
    pub fn into_inner(self) -> serde_json::Value {
        self.0
    }
}

/// Where a version's artifact lives (e.g. `s3://bucket/model.bin`): non-blank, ≤ 2048 chars.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceUri(String);

impl SourceUri {
    /// Validates that the URI is non-blank, bounded and free of control characters.
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        short_text("source_uri", &raw)?;
        Ok(Self(raw))
    }

    /// The URI.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The framework a version was built with (e.g. `pytorch`): non-blank, ≤ 2048 chars.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Framework(String);

impl Framework {
    /// Validates that the name is non-blank, bounded and free of control characters.
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        short_text("framework", &raw)?;
        Ok(Self(raw))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn short_text(field: &str, raw: &str) -> Result<(), ValidationError> {
    if raw.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if raw.chars().count() > MAX_SHORT_TEXT_LEN {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_SHORT_TEXT_LEN} characters long"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// The base URL of the model server serving a version: an absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EndpointUrl(String);

impl EndpointUrl {
    /// Accepts only absolute `http` or `https` URLs with a host and no credentials; errors
    /// name `endpoint_url`.
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        Self::parse_as("endpoint_url", raw)
    }

    /// As [`parse`](Self::parse), naming `field` in the error.
    pub fn parse_as(field: &str, raw: String) -> Result<Self, ValidationError> {
        if raw.len() > MAX_SHORT_TEXT_LEN {
            return Err(ValidationError::new(
                field,
                format!("must be at most {MAX_SHORT_TEXT_LEN} characters long"),
            ));
        }
        let url = url::Url::parse(&raw)
            .map_err(|e| ValidationError::new(field, format!("is not an absolute URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ValidationError::new(field, "must use http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ValidationError::new(field, "must have a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ValidationError::new(
                field,
                "must not carry credentials in the URL",
            ));
        }
        Ok(Self(raw))
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many items a page holds: 1..=200, 50 when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(u16);

impl PageLimit {
    /// The most items a page may hold.
    pub const MAX: u16 = 200;
    /// Items per page when the caller does not say.
    pub const DEFAULT: u16 = 50;

    /// Accepts 1..=200.
    pub fn new(n: i64) -> Result<Self, ValidationError> {
        u16::try_from(n)
            .ok()
            .filter(|n| (1..=Self::MAX).contains(n))
            .map(Self)
            .ok_or_else(|| {
                ValidationError::new(
                    "limit",
                    format!("must be an integer from 1 to {}", Self::MAX),
                )
            })
    }

    /// The number of items.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        Self(Self::DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_follow_the_documented_alphabet() {
        for ok in ["a", "0model", "llama-3.1_8b", &"x".repeat(64)] {
            assert!(ModelName::parse(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "",
            "-lead",
            ".lead",
            "_lead",
            "Upper",
            "sp ace",
            "ü",
            &"x".repeat(65),
        ] {
            let err = ModelName::parse(bad).expect_err(bad);
            assert_eq!(err.field, "name");
        }
    }

    #[test]
    fn aliases_name_their_own_field_and_know_latest() {
        assert_eq!(AliasName::parse("Prod").expect_err("upper").field, "alias");
        assert!(AliasName::parse("latest").expect("valid").is_latest());
        assert!(!AliasName::parse("production").expect("valid").is_latest());
    }

    #[test]
    fn version_numbers_are_positive_32_bit_integers() {
        assert_eq!(VersionNumber::parse("3").expect("valid").get(), 3);
        for bad in ["0", "-1", "abc", "1.5", "", "4294967296"] {
            assert_eq!(VersionNumber::parse(bad).expect_err(bad).field, "version");
        }
    }

    #[test]
    fn tags_are_bounded_in_count_and_length_and_deduplicated() {
        let tags = Tags::parse(vec!["a".into(), "b".into(), "a".into()]).expect("valid");
        assert_eq!(tags.as_slice(), ["a", "b"]);
        assert_eq!(
            Tags::parse(vec![String::new()]).expect_err("empty").field,
            "tags[0]"
        );
        assert_eq!(
            Tags::parse(vec!["ok".into(), "y".repeat(65)])
                .expect_err("long")
                .field,
            "tags[1]"
        );
        let many = (0..33).map(|i| i.to_string()).collect();
        assert_eq!(Tags::parse(many).expect_err("too many").field, "tags");
        assert!(Tags::parse((0..32).map(|i| i.to_string()).collect()).is_ok());
    }

    #[test]
    fn description_is_limited_to_4096_characters() {
        assert!(Description::parse("é".repeat(4096)).is_ok());
        assert_eq!(
            Description::parse("é".repeat(4097))
                .expect_err("long")
                .field,
            "description"
        );
    }

    #[test]
    fn metadata_must_be_a_bounded_object() {
        assert!(Metadata::parse(serde_json::json!({"k": 1})).is_ok());
        for bad in [
            serde_json::json!([1]),
            serde_json::json!("s"),
            serde_json::json!(null),
        ] {
            assert_eq!(
                Metadata::parse(bad).expect_err("not object").field,
                "metadata"
            );
        }
        let big = serde_json::json!({"k": "v".repeat(MAX_METADATA_BYTES)});
        assert_eq!(Metadata::parse(big).expect_err("big").field, "metadata");
    }

    #[test]
    fn endpoint_urls_must_be_absolute_http() {
        assert!(EndpointUrl::parse("http://vllm:8000/v1".into()).is_ok());
        assert!(EndpointUrl::parse("https://example.com".into()).is_ok());
        for bad in [
            "vllm:8000",
            "/v1",
            "ftp://host/x",
            "http://user:pw@host/",
            "not a url",
        ] {
            assert_eq!(
                EndpointUrl::parse(bad.into()).expect_err(bad).field,
                "endpoint_url"
            );
        }
    }

    #[test]
    fn page_limit_is_1_to_200_defaulting_to_50() {
        assert_eq!(PageLimit::default().get(), 50);
        assert_eq!(PageLimit::new(200).expect("valid").get(), 200);
        for bad in [0, 201, -1] {
            assert_eq!(
                PageLimit::new(bad).expect_err("out of range").field,
                "limit"
            );
        }
    }

    #[test]
    fn short_texts_reject_blank_and_control_characters() {
        assert_eq!(
            SourceUri::parse("  ".into()).expect_err("blank").field,
            "source_uri"
        );
        assert_eq!(
            Framework::parse("a\u{0}b".into()).expect_err("nul").field,
            "framework"
        );
    }
}
