//! What a call reserves before it is made ([`estimate`]), and what it is charged once its
//! answer is over ([`charge`]).

use serde::Deserialize;

use crate::error::ValidationError;
use crate::inference::UsageEvent;
use crate::limits::TokenPolicy;

/// What kind of call a body is, for its estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A chat completion or a completion: its answer is up to `max_completion_tokens` or
    /// `max_tokens` long.
    Completion,
    /// Embeddings: no completion, only the input counts.
    Embeddings,
    /// The raw route: any body, read as nothing but its length.
    Raw,
}

/// What an OpenAI body asks for, read from `max_tokens` and `max_completion_tokens` wherever
/// they occur: a body may name one twice, and the model server may believe either occurrence
/// (most JSON readers keep the last, some the first), so the largest of them all is what the
/// call may cost. Everything else is skipped without being built.
#[derive(Default)]
struct Asked {
    /// The largest count named, if any.
    named: Option<u64>,
    /// The first of the two fields found holding something other than a count.
    invalid: Option<&'static str>,
}

/// A top-level key of an OpenAI body, as far as the estimate cares.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum AskedKey {
    MaxTokens,
    MaxCompletionTokens,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Asked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Asked;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Asked, A::Error> {
                let mut asked = Asked::default();
                while let Some(key) = map.next_key::<AskedKey>()? {
                    let field = match key {
                        AskedKey::MaxTokens => "max_tokens",
                        AskedKey::MaxCompletionTokens => "max_completion_tokens",
                        AskedKey::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    match believed(field, map.next_value()?) {
                        Ok(count) => asked.named = asked.named.max(count),
                        Err(_) => {
                            asked.invalid.get_or_insert(field);
                        }
                    }
                }
                Ok(asked)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// What a call reserves: `tokens`, of which `required` are fixed by the client's own request (its
/// prompt, and a `max_tokens` or `max_completion_tokens` it named), the rest being the gateway's
/// default for a completion the client did not bound. A call whose `required` exceeds a `tpm` can
/// never be admitted (the client must ask for less); one whose `tokens` only do so by the
/// default reserves at most the `tpm` (see [`crate::Quotas::reserve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Tokens to reserve.
    pub tokens: u64,
    /// The part of them the client chose.
    pub required: u64,
}

impl From<u64> for Estimate {
    /// An estimate the client chose whole.
    fn from(tokens: u64) -> Self {
        Self {
            tokens,
            required: tokens,
        }
    }
}

/// Tokens a call reserves: its completion (a completion's `max_completion_tokens` or
/// `max_tokens`, the largest of every occurrence of either, at most `policy.max_tokens`; else
/// `policy.default_max_tokens`; embeddings none; a raw call `policy.default_max_tokens`) plus its
/// body's length in bytes / 4 (for the prompt, which is most of a body), at least 1. Linear in
/// the body, which serde skips through without building it.
///
/// # Errors
/// `max_tokens` or `max_completion_tokens` present and neither `null` nor a non-negative
/// integer (a fraction, an exponent, a string): 422 naming the field.
pub fn estimate(
    policy: &TokenPolicy,
    kind: CallKind,
    body: &[u8],
) -> Result<Estimate, ValidationError> {
    // The completion, and whether the client named it.
    let (completion, named) = match kind {
        CallKind::Embeddings => (0, true),
        CallKind::Raw => (policy.default_max_tokens, false),
        CallKind::Completion => {
            // The handler has read the body as a JSON object already; anything else is its
            // error to report, so here it only means "nothing asked".
            let asked = serde_json::from_slice::<Asked>(body).unwrap_or_default();
            if let Some(field) = asked.invalid {
                return Err(invalid_count(field));
            }
            let named = asked.named;
            match named {
                Some(n) => (n.min(policy.max_tokens), true),
                None => (policy.default_max_tokens, false),
            }
        }
    };
    let prompt = u64::try_from(body.len() / 4).unwrap_or(u64::MAX);
    let tokens = completion.saturating_add(prompt).max(1);
    Ok(Estimate {
        tokens,
        required: if named { tokens } else { prompt.max(1) },
    })
}

/// A token count as the client wrote it: `None` when absent or `null`.
fn believed(
    field: &'static str,
    value: Option<serde_json::Value>,
) -> Result<Option<u64>, ValidationError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(_) => Err(invalid_count(field)),
    }
}

/// `field` holds something other than a token count.
fn invalid_count(field: &'static str) -> ValidationError {
    ValidationError::new(
        field,
        "must be a non-negative integer (of at most 18446744073709551615)",
    )
}

/// What a call is charged against its token quotas, from its usage event:
///
/// - the model server reported usage: its prompt and completion tokens (an unknown one counts
///   nothing), whatever was reserved;
/// - no answer came from a model server (the gateway refused or failed the call, or the model
///   server could not be reached): nothing, the reservation is refunded;
/// - the model server answered with a 4xx status and no usage (it refused the call, e.g. a
///   prompt too long for the model): nothing;
/// - otherwise (usage unknown: the call was sent but not answered in time, which the model
///   server may have spent its time on, so timeouts are not a way to free calls; the client went
///   away, the body broke off, the server does not report usage): the reservation is kept.
pub fn charge(event: &UsageEvent) -> u64 {
    let known = |count: Option<i64>| count.map(|n| u64::try_from(n).unwrap_or(0));
    let (prompt, completion) = (known(event.prompt_tokens), known(event.completion_tokens));
    if prompt.is_some() || completion.is_some() {
        return prompt.unwrap_or(0).saturating_add(completion.unwrap_or(0));
    }
    let answered = event.upstream_ms.is_some();
    let sent_unanswered = !answered && event.status == GATEWAY_TIMEOUT;
    let refused_by_server =
        answered && (400..500).contains(&event.status) && event.status != CLIENT_CLOSED_REQUEST;
    if (!answered && !sent_unanswered) || refused_by_server {
        return 0;
    }
    event.reservation.map_or(0, |r| r.tokens)
}

/// The status of a call the gateway sent and gave up waiting for (its `upstream.timeout`).
const GATEWAY_TIMEOUT: u16 = 504;

/// The status the gateway records for a call whose client went away (nginx's 499): not the
/// model server's refusal.
const CLIENT_CLOSED_REQUEST: u16 = 499;

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TokenPolicy {
        TokenPolicy::without_limits(100, 1_000)
    }

    fn completion(body: &str) -> Result<u64, ValidationError> {
        estimate(&policy(), CallKind::Completion, body.as_bytes()).map(|e| e.tokens)
    }

    #[test]
    fn a_completion_reserves_what_it_asks_for_plus_a_quarter_of_its_bytes() {
        let body = r#"{"model":"m","max_tokens":10}"#;
        assert_eq!(completion(body), Ok(10 + body.len() as u64 / 4));
        let both = r#"{"model":"m","max_tokens":10,"max_completion_tokens":40}"#;
        assert_eq!(
            completion(both),
            Ok(40 + both.len() as u64 / 4),
            "the larger"
        );
        let none = r#"{"model":"m","max_tokens":null}"#;
        assert_eq!(
            completion(none),
            Ok(100 + none.len() as u64 / 4),
            "the default"
        );
        let huge = r#"{"model":"m","max_tokens":99999999}"#;
        assert_eq!(
            completion(huge),
            Ok(1_000 + huge.len() as u64 / 4),
            "bounded"
        );
    }

    #[test]
    fn a_count_named_twice_reserves_the_larger_whichever_the_server_believes() {
        // A model server may read either occurrence; the reservation must cover both.
        for body in [
            r#"{"max_tokens":1,"max_tokens":1000}"#,
            r#"{"max_tokens":1000,"max_tokens":1}"#,
            r#"{"max_tokens":1,"max_completion_tokens":1000,"max_tokens":null}"#,
        ] {
            let expected = 1000 + u64::try_from(body.len() / 4).expect("small");
            assert_eq!(completion(body).expect(body), expected, "{body}");
        }
        let twice_wrong = r#"{"max_tokens":1,"max_tokens":"lots"}"#;
        assert_eq!(
            completion(twice_wrong).expect_err("a string").field,
            "max_tokens"
        );
    }

    #[test]
    fn only_integers_are_believed() {
        for (body, field) in [
            (r#"{"max_tokens":1.5}"#, "max_tokens"),
            (r#"{"max_tokens":1e3}"#, "max_tokens"),
            (r#"{"max_tokens":-1}"#, "max_tokens"),
            (r#"{"max_completion_tokens":"10"}"#, "max_completion_tokens"),
            (r#"{"max_tokens":99999999999999999999999}"#, "max_tokens"),
        ] {
            assert_eq!(completion(body).expect_err(body).field, field);
        }
    }

    #[test]
    fn embeddings_reserve_their_input_and_raw_calls_the_default_too() {
        let body = br#"{"model":"m","input":"hello there, model"}"#;
        let quarter = body.len() as u64 / 4;
        let tokens = |kind, body| estimate(&policy(), kind, body).map(|e| e.tokens);
        assert_eq!(tokens(CallKind::Embeddings, body), Ok(quarter));
        assert_eq!(tokens(CallKind::Raw, body), Ok(100 + quarter));
        assert_eq!(tokens(CallKind::Embeddings, b""), Ok(1), "at least 1");
    }

    #[test]
    fn what_the_client_chose_is_required_and_the_default_is_not() {
        let of = |kind, body: &str| estimate(&policy(), kind, body.as_bytes()).expect("valid");
        let named = r#"{"model":"m","max_tokens":10}"#;
        let quarter = |body: &str| body.len() as u64 / 4;
        assert_eq!(
            of(CallKind::Completion, named),
            Estimate {
                tokens: 10 + quarter(named),
                required: 10 + quarter(named)
            }
        );
        let unbounded = r#"{"model":"m"}"#;
        assert_eq!(
            of(CallKind::Completion, unbounded),
            Estimate {
                tokens: 100 + quarter(unbounded),
                required: quarter(unbounded)
            },
            "the default is the gateway's, not the client's"
        );
        assert_eq!(of(CallKind::Raw, named).required, quarter(named));
        assert_eq!(
            of(CallKind::Embeddings, named),
            Estimate::from(quarter(named))
        );
    }
}
