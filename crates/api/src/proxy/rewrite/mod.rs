//! The bytes of an OpenAI call changed on the way, and nothing else: the `model` of the request
//! set to the model server's own name for the model ([`OpenAiBody`]), and the `model` of its
//! answer set back to what the client asked for ([`AnswerRewrite`]), in a JSON answer and in
//! every event of a stream, so that an OpenAI client sees its own name.
//!
//! Only the value of a top-level `model` key of a JSON object is ever changed; everything else
//! reaches the other side byte for byte, and anything that is not such an object (a non-JSON
//! answer, an error page, a `data:` line that is not JSON or is over the meter's line limit)
//! passes untouched. The raw route (`/v1/models/{name}/invoke/…`) is not rewritten at all.
//! Rewriting an answer is linear in its bytes with memory bounded by the meter's own line limit
//! (see `json.rs` and `sse.rs`).

mod json;
pub mod request;
mod sse;

use bytes::{Bytes, BytesMut};

pub use request::{BodyError, OpenAiBody};

use self::json::ModelScanner;
use self::sse::SseRelay;
use super::meter::Meter;

/// What an OpenAI call's answer needs changed on its way to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRewrite {
    /// The `model` the client asked for, which the answer's `model` is set back to.
    pub client_model: String,
    /// The gateway asked the model server for a stream's usage the client did not ask for
    /// ([`OpenAiBody::for_call`]): the final event that carries only `usage` (an empty
    /// `choices`) is metered and not passed on, so that the client gets the stream it asked
    /// for. Usage the server puts in an event with choices is passed on as it is.
    pub strip_usage_event: bool,
}

/// The rewriting of one answer's body, by its kind.
pub(crate) enum Rewriter {
    /// A JSON answer: one value, found by a scan that stops once it is past it.
    Json(JsonAnswer),
    /// Server-sent events, line by line (the meter reads the lines through it).
    Sse(SseRelay),
}

impl Rewriter {
    /// The rewriter of an answer of this kind: server-sent events, or a JSON body; `None` for
    /// anything else, which passes untouched.
    pub fn new(rewrite: &AnswerRewrite, sse: bool, json: bool) -> Option<Self> {
        let replacement = Bytes::from(request::json_string(&rewrite.client_model));
        if sse {
            Some(Self::Sse(SseRelay::new(
                replacement,
                rewrite.strip_usage_event,
            )))
        } else if json {
            Some(Self::Json(JsonAnswer::new(replacement)))
        } else {
            None
        }
    }

    /// The next chunk as the client gets it (possibly empty), the meter having read it.
    pub fn pass(&mut self, chunk: Bytes, meter: &mut Meter) -> Bytes {
        match self {
            Self::Json(answer) => {
                meter.observe(&chunk);
                answer.pass(chunk)
            }
            Self::Sse(relay) => relay.pass(chunk, meter),
        }
    }

    /// The body is over: what was held back, if anything.
    pub fn finish(&mut self) -> Option<Bytes> {
        match self {
            Self::Json(_) => None,
            Self::Sse(relay) => relay.finish(),
        }
    }

    /// How many bytes longer (or shorter) the whole answer comes out, once that is known:
    /// always for a JSON answer whose value was passed (or that has none), never for a stream.
    pub fn length_change(&self) -> Option<i64> {
        match self {
            Self::Json(answer) => answer.length_change(),
            Self::Sse(_) => None,
        }
    }
}

/// A JSON answer's top-level `model` set to the client's, wherever the value falls in the
/// chunks; once past it, chunks go on untouched and unread.
pub(crate) struct JsonAnswer {
    scanner: ModelScanner,
    replacement: Bytes,
    /// Bytes of the original value passed so far (quotes included), once it started.
    original: Option<usize>,
    /// The value goes on in the next chunk.
    in_value: bool,
}

impl JsonAnswer {
    fn new(replacement: Bytes) -> Self {
        Self {
            scanner: ModelScanner::default(),
            replacement,
            original: None,
            in_value: false,
        }
    }

    fn pass(&mut self, chunk: Bytes) -> Bytes {
        if self.scanner.is_done() {
            return chunk;
        }
        let found = self.scanner.feed(&chunk);
        match (found.start, found.end) {
            (Some(start), Some(end)) => {
                self.original = Some(end - start);
                if chunk[start..end] == self.replacement[..] {
                    return chunk;
                }
                request::splice(&chunk, &[(start..end, &self.replacement)])
            }
            (Some(start), None) => {
                self.in_value = true;
                self.original = Some(chunk.len() - start);
                let mut out = BytesMut::with_capacity(start + self.replacement.len());
                out.extend_from_slice(&chunk[..start]);
                out.extend_from_slice(&self.replacement);
                out.freeze()
            }
            (None, Some(end)) => {
                self.in_value = false;
                self.original = self.original.map(|n| n + end);
                chunk.slice(end..)
            }
            (None, None) if self.in_value => {
                self.original = self.original.map(|n| n + chunk.len());
                Bytes::new()
            }
            (None, None) => chunk,
        }
    }

    fn length_change(&self) -> Option<i64> {
        if !self.scanner.is_done() {
            return None;
        }
        let Some(original) = self.original else {
            return Some(0);
        };
        let (new, old) = (
            i64::try_from(self.replacement.len()).ok()?,
            i64::try_from(original).ok()?,
        );
        Some(new - old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str, size: usize) -> (String, Option<i64>) {
        let mut answer = JsonAnswer::new(Bytes::from_static(b"\"asked:2\""));
        let mut out = Vec::new();
        let mut change = None;
        for piece in body.as_bytes().chunks(size) {
            out.extend_from_slice(&answer.pass(Bytes::copy_from_slice(piece)));
            change = change.or(answer.length_change());
        }
        (String::from_utf8(out).expect("utf-8"), change)
    }

    #[test]
    fn a_json_answers_model_is_the_clients_and_its_new_length_known_once_past_it() {
        let body = r#"{"object":"list","data":[{"embedding":[0.1,-2e-3],"model":"inner"}],"model":"served-model","usage":{"prompt_tokens":1}}"#;
        let expected = body.replace(r#""served-model""#, r#""asked:2""#);
        for size in 1..=body.len() {
            let (out, change) = answer(body, size);
            assert_eq!(out, expected, "in pieces of {size}");
            assert_eq!(change, Some(-5), "in pieces of {size}");
        }
    }

    #[test]
    fn an_answer_without_a_model_or_not_json_is_untouched() {
        for body in [
            r#"{"error":{"message":"no","model":"x"}}"#,
            "Internal Server Error",
            r#"{"model":null}"#,
        ] {
            assert_eq!(answer(body, 3), (body.to_owned(), Some(0)));
        }
        // Unfinished: its length change is not known.
        assert_eq!(answer(r#"{"a":1,"#, 2).1, None);
    }
}
