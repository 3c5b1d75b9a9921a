//! The body of an OpenAI call as the client sent it. The gateway reads `model` from it and, when
//! it forwards the call, changes only the bytes of that value (and, for a stream that does not
//! ask for its usage, those that ask for it: see [`OpenAiBody::for_call`]): every other byte
//! (key order, whitespace, number spellings such as `1.0e3`, `1.10` or integers no float holds,
//! escapes) reaches the model server as the client wrote it. Nothing is serialised again.

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
    /// `model` is missing or not a string, or `stream` is neither a boolean nor `null`.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// An OpenAI call's body, with where its top-level `model` value lies and what it says of a
/// stream's usage.
#[derive(Debug, Clone)]
pub struct OpenAiBody {
    bytes: Bytes,
    /// The client's `model` string, decoded.
    model: String,
    /// The bytes of its value, quotes included.
    model_span: Range<usize>,
    /// `"stream": true` (anything but `true`, `false` or `null` is refused: a model server
    /// that reads `"true"` or `1` as true would stream without being asked for its usage).
    stream: bool,
    /// What `stream_options` is.
    stream_options: StreamOptions,
}

/// The top-level `stream_options` of a call, and where its parts lie.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamOptions {
    Absent,
    Null(Range<usize>),
    Object {
        /// Where its `{` is.
        open: usize,
        empty: bool,
        /// Its `include_usage` value, if it has one, and whether it is `true`.
        include_usage: Option<(Range<usize>, bool)>,
    },
    /// Anything else (a string, an array…): replaced when the gateway asks for the usage.
    Other(Range<usize>),
}

/// The top-level fields the gateway reads, as the client wrote them; the rest is skipped
/// unread (but checked to be JSON). A field given twice is an error, so the gateway and the
/// model server cannot read different values from one body.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    model: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stream: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
}

/// The field of `stream_options` the gateway reads.
#[derive(Deserialize)]
struct Options<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    include_usage: Option<&'a RawValue>,
}

/// What asks a model server for a stream's usage: the object, the pair, the value.
const ASK_OBJECT: &[u8] = br#"{"include_usage":true}"#;
const ASK_PAIR: &[u8] = br#""include_usage":true"#;
const ASK_PAIR_BEFORE: &[u8] = br#""include_usage":true,"#;
const ASK_FIELD: &[u8] = br#","stream_options":{"include_usage":true}"#;

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
        let unread = || BodyError::Malformed("the body could not be read".to_owned());
        let model_span = span_in(&bytes, raw).ok_or_else(unread)?;
        let stream = match envelope.stream.map(RawValue::get) {
            None | Some("false" | "null") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ValidationError::new("stream", "must be a boolean").into());
            }
        };
        let stream_options = match envelope.stream_options {
            None => StreamOptions::Absent,
            Some(raw) => stream_options(&bytes, raw).ok_or_else(unread)??,
        };
        Ok(Self {
            bytes,
            model,
            model_span,
            stream,
            stream_options,
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
        self.for_call(served, false).0
    }

    /// The body to send to a model server that knows the model as `served`, and whether the
    /// gateway asked for the stream's usage on the client's behalf. When `ask_usage` and the
    /// call is a stream (`"stream": true`) that does not ask for its usage with
    /// `"include_usage": true`, it is asked for: `"stream_options": {"include_usage": true}` is
    /// added (or written over a `stream_options` that is not an object), or
    /// `"include_usage": true` into the client's `stream_options`, or its `include_usage` of
    /// anything but `true` (`false`, `null`, `0`, `"yes"`…) made `true`, so that no spelling a
    /// model server might read as "no" leaves a stream unmetered (the gateway meters every
    /// stream; the client still gets the stream it asked for, see
    /// [`super::AnswerRewrite::strip_usage_event`]). Only a call that says `true` already is
    /// left as it is.
    pub fn for_call(&self, served: &str, ask_usage: bool) -> (Bytes, bool) {
        let value = json_string(served);
        let mut edits: Vec<(Range<usize>, &[u8])> = Vec::with_capacity(2);
        if self.bytes.get(self.model_span.clone()) != Some(value.as_bytes()) {
            edits.push((self.model_span.clone(), value.as_bytes()));
        }
        let ask = if ask_usage && self.stream {
            self.usage_edit()
        } else {
            None
        };
        let asked = ask.is_some();
        edits.extend(ask);
        if edits.is_empty() {
            return (self.bytes.clone(), false);
        }
        edits.sort_by_key(|(range, _)| range.start);
        (splice(&self.bytes, &edits), asked)
    }

    /// The change that asks for a stream's usage, unless the call asks already.
    fn usage_edit(&self) -> Option<(Range<usize>, &'static [u8])> {
        match &self.stream_options {
            StreamOptions::Absent => {
                // Before the object's closing brace (the body is an object, checked at parse).
                let end = self.bytes.trim_ascii_end().len().checked_sub(1)?;
                (self.bytes.get(end) == Some(&b'}')).then_some((end..end, ASK_FIELD))
            }
            StreamOptions::Null(range) | StreamOptions::Other(range) => {
                Some((range.clone(), ASK_OBJECT))
            }
            StreamOptions::Object {
                open,
                empty,
                include_usage: None,
            } => {
                let after = open + 1;
                let pair = if *empty { ASK_PAIR } else { ASK_PAIR_BEFORE };
                Some((after..after, pair))
            }
            StreamOptions::Object {
                include_usage: Some((range, false)),
                ..
            } => Some((range.clone(), b"true")),
            StreamOptions::Object {
                include_usage: Some((_, true)),
                ..
            } => None,
        }
    }
}

/// What `raw`, the `stream_options` of `bytes`, is; `None` when it cannot be placed in them.
fn stream_options(bytes: &[u8], raw: &RawValue) -> Option<Result<StreamOptions, BodyError>> {
    let span = span_in(bytes, raw)?;
    let text = raw.get();
    if text == "null" {
        return Some(Ok(StreamOptions::Null(span)));
    }
    if !text.starts_with('{') {
        return Some(Ok(StreamOptions::Other(span)));
    }
    let options: Options<'_> = match serde_json::from_str(text) {
        Ok(options) => options,
        Err(e) => return Some(Err(BodyError::Malformed(format!("stream_options: {e}")))),
    };
    let include_usage = match options.include_usage {
        None => None,
        Some(value) => Some((span_in(bytes, value)?, value.get() == "true")),
    };
    let empty = text[1..text.len() - 1].trim_ascii().is_empty();
    Some(Ok(StreamOptions::Object {
        open: span.start,
        empty,
        include_usage,
    }))
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
            // OpenAI refuses these too; a model server that coerced them would stream unasked.
            (r#"{"model":"a","stream":"true"}"#, Some("stream")),
            (r#"{"model":"a","stream":1}"#, Some("stream")),
            (r#"{"model":"a","stream":0}"#, Some("stream")),
            (r#"{"model":"a","stream":"false"}"#, Some("stream")),
            (r#"{"model":"a","stream":[true]}"#, Some("stream")),
            (r#"{"model":"a","stream":{}}"#, Some("stream")),
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

    /// What goes upstream for `sent` (with `ask_usage`), and whether usage was asked for.
    fn asked(sent: &str, ask_usage: bool) -> (String, bool) {
        let (out, asked) = body(sent).for_call("m", ask_usage);
        (String::from_utf8(out.to_vec()).expect("UTF-8"), asked)
    }

    #[test]
    fn a_stream_that_does_not_ask_for_its_usage_is_made_to_with_nothing_else_changed() {
        for (sent, expected) in [
            (
                "{\"model\":\"m\",\"stream\":true, \"n\":1.10 }\n",
                "{\"model\":\"m\",\"stream\":true, \"n\":1.10 ,\"stream_options\":{\"include_usage\":true}}\n",
            ),
            (
                "{\"stream_options\" : null,\"model\":\"m\",\"stream\":true}",
                "{\"stream_options\" : {\"include_usage\":true},\"model\":\"m\",\"stream\":true}",
            ),
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{ }}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true }}",
            ),
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"continuous_usage_stats\": true}}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\": true}}",
            ),
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\" :false}}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\" :true}}",
            ),
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":null}}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
            ),
            // What a lenient server might read as "no" (pydantic reads 0 and "no" as false).
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":0}}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
            ),
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":\"no\", \"x\":1}}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true, \"x\":1}}",
            ),
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":\"yes\"}}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
            ),
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":{}}}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
            ),
            // Not an object: written over.
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":[1]}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
            ),
            (
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":\"include_usage\"}",
                "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
            ),
        ] {
            assert_eq!(asked(sent, true), (expected.to_owned(), true), "{sent}");
            let upstream: serde_json::Value = serde_json::from_str(expected).expect("still JSON");
            assert_eq!(upstream["stream_options"]["include_usage"], true);
        }
    }

    #[test]
    fn a_call_that_asks_already_is_not_a_stream_or_may_not_be_asked_goes_as_it_came() {
        for sent in [
            "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
            "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"x\":1,\"include_usage\" : true }}",
            "{\"model\":\"m\",\"stream\":false}",
            "{\"model\":\"m\",\"stream\":null,\"stream_options\":{\"include_usage\":false}}",
            "{\"model\":\"m\",\"stream_options\":[1]}",
            "{\"model\":\"m\"}",
        ] {
            assert_eq!(asked(sent, true), (sent.to_owned(), false), "{sent}");
        }
        let stream = "{\"model\":\"m\",\"stream\":true}";
        assert_eq!(asked(stream, false), (stream.to_owned(), false));
        // The model changes all the same.
        assert_eq!(
            body(stream).for_call("other", false).0,
            "{\"model\":\"other\",\"stream\":true}"
        );
        let twice = "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":false,\"include_usage\":true}}";
        assert!(matches!(
            OpenAiBody::parse(Bytes::from_static(twice.as_bytes())),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn json_strings_escape_what_json_needs() {
        assert_eq!(json_string("a\"b\\c\u{1}é"), "\"a\\\"b\\\\c\\u0001é\"");
    }
}
