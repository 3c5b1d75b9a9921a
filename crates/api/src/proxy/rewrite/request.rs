//! The body of an OpenAI call as the client sent it. The gateway reads `model` from it and, when
//! it forwards the call, changes only the bytes of that value: every other byte (key order,
//! whitespace, number spellings such as `1.0e3`, `1.10` or integers no float holds, escapes)
//! reaches the model server as the client wrote it. Nothing is serialised again.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use maas_domain::ValidationError;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Why a body is not an OpenAI call the gateway can route.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not JSON, or not a JSON object, or a key given twice; says why.
    #[error("{0}")]
    Malformed(String),
    /// `model` is missing or not a string.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// An OpenAI call's body, with where its top-level `model` value lies.
#[derive(Debug, Clone)]
pub struct OpenAiBody {
    bytes: Bytes,
    /// The client's `model` string, decoded.
    model: String,
    /// The bytes of its value, quotes included.
    model_span: Range<usize>,
}

/// The top-level fields the gateway reads, as the client wrote them; the rest is skipped
/// unread (but checked to be JSON). A field given twice is an error, so the gateway and the
/// model server cannot read different values from one body.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    model: Option<&'a RawValue>,
}

/// A field that is there, `null` included (serde's `Option` would make `null` absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Where `part`, a slice of `whole`, lies in it.
fn span_in(whole: &[u8], part: &RawValue) -> Option<Range<usize>> {
    let part = part.get().as_bytes();
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let range = start..start.checked_add(part.len())?;
    // Always so for a value parsed from `whole`; checked rather than trusted.
    (whole.get(range.clone()) == Some(part)).then_some(range)
}

impl OpenAiBody {
    /// Reads `bytes`: a JSON object with a string `model`.
    ///
    /// # Errors
    /// [`BodyError::Malformed`] for anything but a JSON object (or one with a key given twice),
    /// [`BodyError::Invalid`] naming `model` when it is missing or not a string.
    pub fn parse(bytes: Bytes) -> Result<Self, BodyError> {
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(BodyError::Malformed(
                "the request body must be a JSON object".to_owned(),
            ));
        }
        let envelope: Envelope<'_> =
            serde_json::from_slice(&bytes).map_err(|e| BodyError::Malformed(e.to_string()))?;
        let raw = envelope
            .model
            .ok_or_else(|| ValidationError::new("model", "is required"))?;
        let model: String = serde_json::from_str(raw.get())
            .map_err(|_| ValidationError::new("model", "must be a string"))?;
        let model_span = span_in(&bytes, raw)
            .ok_or_else(|| BodyError::Malformed("the body could not be read".to_owned()))?;
        Ok(Self {
            bytes,
            model,
            model_span,
        })
    }

    /// The `model` the client asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The body as the client sent it.
    pub fn as_sent(&self) -> &Bytes {
        &self.bytes
    }

    /// The body to send to a model server that knows the model as `served`: the client's
    /// bytes with only the value of `model` replaced (the same bytes when it already says so).
    pub fn for_model(&self, served: &str) -> Bytes {
        let value = json_string(served);
        if self.bytes.get(self.model_span.clone()) == Some(value.as_bytes()) {
            return self.bytes.clone();
        }
        splice(&self.bytes, &[(self.model_span.clone(), value.as_bytes())])
    }
}

/// `text` as a JSON string, quotes included.
pub(crate) fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `bytes` with each range of `edits` (in order, not overlapping) replaced by its bytes.
pub(crate) fn splice(bytes: &[u8], edits: &[(Range<usize>, &[u8])]) -> Bytes {
    let grown: usize = edits.iter().map(|(_, with)| with.len()).sum();
    let mut out = BytesMut::with_capacity(bytes.len() + grown);
    let mut from = 0;
    for (range, with) in edits {
        out.extend_from_slice(&bytes[from..range.start]);
        out.extend_from_slice(with);
        from = range.end;
    }
    out.extend_from_slice(&bytes[from..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> OpenAiBody {
        OpenAiBody::parse(Bytes::copy_from_slice(text.as_bytes())).expect("an OpenAI body")
    }

    #[test]
    fn only_the_model_value_changes_and_every_other_byte_stays() {
        let sent = "{ \"temperature\" :1.0e3,\"top_p\": 1.10 ,\n\t\"seed\":123456789012345678901234567890,\
                    \"model\" : \"ll\\u0061ma@prod\", \"stop\":[\"\\u00e9\\n\"],\"n\":-0,\"x\":{\"model\":\"inner\"}}  ";
        let parsed = body(sent);
        assert_eq!(parsed.model(), "llama@prod");
        let forwarded = parsed.for_model("meta-llama/Llama-3.1-8B \"Instruct\"");
        let expected = sent.replace(
            "\"ll\\u0061ma@prod\"",
            "\"meta-llama/Llama-3.1-8B \\\"Instruct\\\"\"",
        );
        assert_eq!(std::str::from_utf8(&forwarded), Ok(expected.as_str()));
        let value: serde_json::Value = serde_json::from_slice(&forwarded).expect("still JSON");
        assert_eq!(value["model"], "meta-llama/Llama-3.1-8B \"Instruct\"");
        assert_eq!(value["x"]["model"], "inner", "only the top-level key");
    }

    #[test]
    fn a_body_that_already_names_the_served_model_is_the_same_bytes() {
        let parsed = body(r#"{"model":"llama","messages":[]}"#);
        let forwarded = parsed.for_model("llama");
        assert_eq!(forwarded.as_ptr(), parsed.as_sent().as_ptr(), "not copied");
    }

    #[test]
    fn what_is_not_an_object_with_one_string_model_is_refused() {
        for (text, field) in [
            (r#"{"messages":[]}"#, Some("model")),
            (r#"{"model":5}"#, Some("model")),
            (r#"{"model":null}"#, Some("model")),
            (r#"["model","llama"]"#, None),
            (r#""llama""#, None),
            (r#"{"model":"a","model":"b"}"#, None),
            (r#"{"model":"a""#, None),
            ("", None),
        ] {
            let err = OpenAiBody::parse(Bytes::copy_from_slice(text.as_bytes())).expect_err(text);
            match (err, field) {
                (BodyError::Invalid(e), Some(field)) => assert_eq!(e.field, field, "{text}"),
                (BodyError::Malformed(_), None) => {}
                (err, _) => panic!("{text}: {err:?}"),
            }
        }
    }

    #[test]
    fn json_strings_escape_what_json_needs() {
        assert_eq!(json_string("a\"b\\c\u{1}é"), "\"a\\\"b\\\\c\\u0001é\"");
    }
}
