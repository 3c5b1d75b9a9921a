//! The usage meter: reads the OpenAI `usage` of an answer (a JSON body or server-sent events)
//! as it streams through, and records the call once it is over.
//!
//! Whatever a model server sends, the meter's work is linear in the bytes it streams and its
//! memory bounded: a JSON body is held up to [`USAGE_SCAN_LIMIT`], then only its last
//! [`USAGE_TAIL`] bytes (each byte moved at most once); server-sent events are read line by
//! line as they pass, each byte looked at a bounded number of times (see `sse.rs`).
//!
//! The counts are the model server's word, so only believable ones are kept: a count must be a
//! non-negative integer of at most `usage.max_tokens_per_call`. Anything else (negative, too
//! large, a fraction, a string, a number too long for any integer type) is recorded as unknown
//! and counted in `maas_usage_rejected_total{reason}`.

use std::time::{Duration, Instant};

use maas_domain::inference::UsageEvent;
use serde_json::value::RawValue;

use crate::meters;
use crate::usage::UsageQueue;

mod sse;

use sse::SseLines;
pub(super) use sse::{DATA, LINE_LIMIT, find_byte, may_hold};

/// Most bytes of a non-streamed body kept to find its `usage` (the body itself is never held).
const USAGE_SCAN_LIMIT: usize = 1024 * 1024;
/// Of a longer body (a large batch of embeddings, say), only its last bytes are kept: OpenAI's
/// answers end with `usage`.
const USAGE_TAIL: usize = 64 * 1024;

/// Watches a response body for the OpenAI `usage` object, and records the call when the body
/// ends, fails, or is dropped because the client went away.
pub struct Meter {
    /// The event to record, with tokens and times filled in at the end; `None` once recorded.
    event: Option<UsageEvent>,
    /// When the gateway received the request.
    started: Instant,
    /// When the request was sent upstream.
    upstream_started: Instant,
    /// Whether the body is server-sent events.
    sse: bool,
    /// Where the event goes.
    queue: UsageQueue,
    /// A non-streamed body, or its tail.
    buffer: Vec<u8>,
    /// A non-streamed body outgrew [`USAGE_SCAN_LIMIT`]: `buffer` holds only its tail.
    tail_only: bool,
    /// Where the lines of server-sent events stand.
    lines: SseLines,
    /// How counts are judged, and the ones refused so far.
    tokens: Tokens,
}

/// Why a count was refused (the `reason` of `maas_usage_rejected_total`).
pub mod rejected {
    /// Below zero.
    pub const NEGATIVE: &str = "negative";
    /// Above `usage.max_tokens_per_call`.
    pub const TOO_LARGE: &str = "too_large";
    /// A fraction, an exponent, a string or any other JSON value but an integer.
    pub const NOT_AN_INTEGER: &str = "not_an_integer";
}

/// The bound on a count, and why the last count of each kind was refused, if it was.
struct Tokens {
    max: u64,
    /// Prompt, completion.
    refused: [Option<&'static str>; 2],
}

impl Meter {
    /// A meter for one call.
    pub fn new(
        event: UsageEvent,
        started: Instant,
        upstream_started: Instant,
        sse: bool,
        queue: UsageQueue,
        max_tokens: u64,
    ) -> Self {
        Self {
            event: Some(event),
            started,
            upstream_started,
            sse,
            queue,
            buffer: Vec::new(),
            tail_only: false,
            lines: SseLines::default(),
            tokens: Tokens {
                max: max_tokens,
                refused: [None; 2],
            },
        }
    }

    /// The event as it stands, until it is recorded.
    pub fn event(&self) -> Option<&UsageEvent> {
        self.event.as_ref()
    }

    /// Reads one chunk of the body on its way through.
    pub(super) fn observe(&mut self, chunk: &[u8]) {
        if self.sse {
            // Every event with usage counts, a later one's counts over an earlier one's.
            let (event, tokens) = (&mut self.event, &mut self.tokens);
            self.lines.feed(chunk, |json| {
                if let Some(usage) = usage_of(json) {
                    count(event, tokens, &usage);
                }
            });
        } else if !self.tail_only && self.buffer.len() + chunk.len() <= USAGE_SCAN_LIMIT {
            self.buffer.extend_from_slice(chunk);
        } else {
            // Up to twice the tail is held, then cut back to one: each byte is moved at most
            // once, however small the chunks.
            self.tail_only = true;
            self.buffer
                .extend_from_slice(&chunk[chunk.len().saturating_sub(2 * USAGE_TAIL)..]);
            if self.buffer.len() > 2 * USAGE_TAIL {
                let drop = self.buffer.len() - USAGE_TAIL;
                self.buffer.drain(..drop);
            }
        }
    }

    /// Reads one complete line of server-sent events (without its `\n`), for a caller that
    /// splits the stream into lines itself (and then feeds no chunk to [`observe`]); tells
    /// whether the line carried a `usage` object. Read as `observe` reads each line.
    ///
    /// [`observe`]: Self::observe
    pub(super) fn line(&mut self, line: &[u8]) -> bool {
        let (event, tokens) = (&mut self.event, &mut self.tokens);
        let mut carried = false;
        sse::read_line(line, &mut |json| {
            carried = true;
            if let Some(usage) = usage_of(json) {
                count(event, tokens, &usage);
            }
        });
        carried
    }

    /// Reads the tokens of a non-streamed body, once it is complete.
    fn settle_usage(&mut self) {
        if self.sse || self.buffer.is_empty() {
            return;
        }
        let body = std::mem::take(&mut self.buffer);
        if !self.tail_only {
            self.take_usage(&body);
            return;
        }
        // The tail starts anywhere: read the last `"usage":` key that is not inside a string
        // (where its quotes would be escaped) and the object after it.
        let key = b"\"usage\"";
        let found = (0..body.len().saturating_sub(key.len() - 1))
            .rev()
            .filter(|&at| body[at..].starts_with(key) && (at == 0 || body[at - 1] != b'\\'))
            .find_map(|at| {
                let rest = body[at + key.len()..].trim_ascii_start();
                rest.strip_prefix(b":")
            });
        if let Some(value) = found {
            let mut values = serde_json::Deserializer::from_slice(value).into_iter::<UsageCounts>();
            if let Some(Ok(usage)) = values.next() {
                self.count(&usage);
            }
        }
    }

    fn take_usage(&mut self, json: &[u8]) {
        if let Some(usage) = usage_of(json) {
            self.count(&usage);
        }
    }

    fn count(&mut self, usage: &UsageCounts<'_>) {
        count(&mut self.event, &mut self.tokens, usage);
    }

    /// Records the call once; `status` overrides the event's when the body broke off.
    pub(super) fn finish(&mut self, status: Option<u16>) {
        if self.event.is_none() {
            return;
        }
        self.settle_usage();
        let Some(mut event) = self.event.take() else {
            return;
        };
        if let Some(status) = status {
            event.status = status;
        }
        for reason in self.tokens.refused.iter().flatten() {
            meters::count_usage_rejected(reason);
        }
        let upstream = self.upstream_started.elapsed();
        event.upstream_ms = Some(millis(upstream));
        event.latency_ms = millis(self.started.elapsed());
        meters::record_upstream(
            &event.model,
            upstream,
            event.prompt_tokens,
            event.completion_tokens,
        );
        self.queue.push(event);
    }
}

/// The `usage` of a JSON answer or event. Only `usage` is kept, its counts as written; the rest
/// (the completion itself) is skipped over without building a tree of it.
fn usage_of(json: &[u8]) -> Option<UsageCounts<'_>> {
    serde_json::from_slice::<WithUsage<'_>>(json).ok()?.usage
}

/// Sets the counts `usage` has on the event, until it is recorded: a believable count replaces
/// the one before, a refused one leaves the count unknown (and is remembered for the metric).
fn count(event: &mut Option<UsageEvent>, tokens: &mut Tokens, usage: &UsageCounts<'_>) {
    let Some(event) = event else {
        return;
    };
    let fields = [
        (usage.prompt_tokens, &mut event.prompt_tokens),
        (usage.completion_tokens, &mut event.completion_tokens),
    ];
    for ((given, slot), refused) in fields.into_iter().zip(&mut tokens.refused) {
        let Some(given) = given else {
            continue;
        };
        match judge(given, tokens.max) {
            Ok(n) => {
                *slot = Some(n);
                *refused = None;
            }
            Err(reason) => {
                *slot = None;
                *refused = Some(reason);
            }
        }
    }
}

/// A count as the model server wrote it, believed if it is a plain non-negative integer of at
/// most `max`. Read from its text, so a number no integer type holds (`1e400`,
/// `99999999999999999999`) is refused like any other, in time linear in its length.
fn judge(given: &RawValue, max: u64) -> Result<i64, &'static str> {
    let text = given.get().trim_ascii();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(rejected::NOT_AN_INTEGER);
    }
    if negative {
        return if digits.bytes().all(|b| b == b'0') {
            Ok(0)
        } else {
            Err(rejected::NEGATIVE)
        };
    }
    digits
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= max)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or(rejected::TOO_LARGE)
}

/// The part of an upstream answer the meter reads; everything else is skipped unread.
#[derive(serde::Deserialize)]
struct WithUsage<'a> {
    #[serde(default, borrow)]
    usage: Option<UsageCounts<'a>>,
}

/// OpenAI's `usage` object: the two counts the gateway keeps, as the model server wrote them
/// (its other fields are skipped); `null` is the same as absent.
#[derive(serde::Deserialize)]
struct UsageCounts<'a> {
    #[serde(default, borrow)]
    prompt_tokens: Option<&'a RawValue>,
    #[serde(default, borrow)]
    completion_tokens: Option<&'a RawValue>,
}

/// Milliseconds, saturating at `i32::MAX`.
pub fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token counts a non-streamed answer's meter takes from `body`.
    fn tokens_of(body: &[u8]) -> (Option<i64>, Option<i64>) {
        let (queue, _receiver) = UsageQueue::new(1);
        let event = crate::usage::tests::event();
        let mut meter = Meter::new(
            event,
            Instant::now(),
            Instant::now(),
            false,
            queue,
            1_000_000,
        );
        meter.take_usage(body);
        let event = meter.event().expect("not recorded yet");
        (event.prompt_tokens, event.completion_tokens)
    }

    /// The token counts a meter reads from a non-streamed `body` that arrives in `chunk`-byte
    /// pieces.
    fn tokens_of_chunked(body: &[u8], chunk: usize) -> (Option<i64>, Option<i64>) {
        let (queue, _receiver) = UsageQueue::new(1);
        let event = crate::usage::tests::event();
        let mut meter = Meter::new(
            event,
            Instant::now(),
            Instant::now(),
            false,
            queue,
            1_000_000,
        );
        for piece in body.chunks(chunk) {
            meter.observe(piece);
        }
        meter.settle_usage();
        let event = meter.event().expect("not recorded yet");
        (event.prompt_tokens, event.completion_tokens)
    }

    /// An embeddings answer of about `bytes` bytes, `usage` last, as OpenAI sends it; `filler`
    /// goes into the last embedding's object, after its vector.
    fn large_answer(bytes: usize, filler: &str) -> Vec<u8> {
        let vector = vec!["0.0123456789"; bytes / 13].join(",");
        format!(
            r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[{vector}],"note":"{filler}"}}],"model":"m","usage":{{"prompt_tokens":5,"total_tokens":5}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn a_large_answer_still_gives_its_usage_from_its_tail() {
        let body = large_answer(3 * USAGE_SCAN_LIMIT, "");
        assert!(body.len() > 2 * USAGE_SCAN_LIMIT);
        for chunk in [1000, 16 * 1024, USAGE_TAIL + 7, 3 * USAGE_TAIL, body.len()] {
            assert_eq!(tokens_of_chunked(&body, chunk), (Some(5), None), "{chunk}");
        }
        let just_over = large_answer(USAGE_SCAN_LIMIT + 3 * USAGE_TAIL, "");
        assert!(just_over.len() > USAGE_SCAN_LIMIT);
        assert_eq!(
            tokens_of_chunked(&just_over, 1),
            (Some(5), None),
            "byte by byte"
        );
        // A `"usage"` inside a string (its quotes escaped) is not the answer's.
        let body = large_answer(
            2 * USAGE_SCAN_LIMIT,
            r#"say "usage": {"prompt_tokens": 99}"#,
        );
        assert_eq!(tokens_of_chunked(&body, 16 * 1024), (Some(5), None));
        // A tail without `usage` leaves the counts empty.
        let mut body = large_answer(2 * USAGE_SCAN_LIMIT, "");
        body.truncate(body.len() - 60);
        assert_eq!(tokens_of_chunked(&body, 16 * 1024), (None, None));
    }

    #[test]
    fn a_long_answer_in_small_pieces_is_held_at_most_twice_its_tail() {
        let body = large_answer(10 * USAGE_SCAN_LIMIT, "");
        let (queue, _receiver) = UsageQueue::new(1);
        let event = crate::usage::tests::event();
        let mut meter = Meter::new(
            event,
            Instant::now(),
            Instant::now(),
            false,
            queue,
            1_000_000,
        );
        for piece in body.chunks(1000) {
            meter.observe(piece);
            assert!(
                meter.buffer.len() <= USAGE_SCAN_LIMIT.max(2 * USAGE_TAIL),
                "{}",
                meter.buffer.len()
            );
            if meter.tail_only {
                assert!(meter.buffer.len() <= 2 * USAGE_TAIL);
            }
        }
        assert!(meter.tail_only);
        meter.settle_usage();
        let event = meter.event().expect("not recorded yet");
        assert_eq!(
            (event.prompt_tokens, event.completion_tokens),
            (Some(5), None)
        );
    }

    #[test]
    fn usage_is_read_from_anywhere_in_the_answer_and_nothing_else_is_needed() {
        let answer = br#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"{\"usage\": 9}"}}],
            "usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46},"extra":[1,{"a":null}]}"#;
        assert_eq!(tokens_of(answer), (Some(12), Some(34)));
        let usage_first = br#"{"usage":{"completion_tokens":5},"choices":[]}"#;
        assert_eq!(tokens_of(usage_first), (None, Some(5)));
        let detailed = br#"{"usage":{"prompt_tokens_details":{"cached_tokens":2},"prompt_tokens":7,
            "total_tokens":9,"completion_tokens":2,"completion_tokens_details":null}}"#;
        assert_eq!(tokens_of(detailed), (Some(7), Some(2)));
    }

    /// The reasons a meter refused the counts of `body` for, prompt then completion.
    fn refused_in(body: &[u8]) -> [Option<&'static str>; 2] {
        let (queue, _receiver) = UsageQueue::new(1);
        let event = crate::usage::tests::event();
        let mut meter = Meter::new(
            event,
            Instant::now(),
            Instant::now(),
            false,
            queue,
            1_000_000,
        );
        meter.take_usage(body);
        meter.tokens.refused
    }

    #[test]
    fn only_non_negative_integers_up_to_the_bound_are_believed() {
        use rejected::{NEGATIVE, NOT_AN_INTEGER, TOO_LARGE};
        for (usage, tokens, refused) in [
            (
                r#"{"prompt_tokens":-1000000,"completion_tokens":3}"#,
                (None, Some(3)),
                [Some(NEGATIVE), None],
            ),
            (
                r#"{"prompt_tokens":1000000,"completion_tokens":1000001}"#,
                (Some(1_000_000), None),
                [None, Some(TOO_LARGE)],
            ),
            (
                r#"{"prompt_tokens":99999999999999999999999,"completion_tokens":18446744073709551616}"#,
                (None, None),
                [Some(TOO_LARGE), Some(TOO_LARGE)],
            ),
            (
                r#"{"prompt_tokens":1e400,"completion_tokens":2.5}"#,
                (None, None),
                [Some(NOT_AN_INTEGER), Some(NOT_AN_INTEGER)],
            ),
            (
                r#"{"prompt_tokens":1e3,"completion_tokens":-2.5}"#,
                (None, None),
                [Some(NOT_AN_INTEGER), Some(NOT_AN_INTEGER)],
            ),
            (
                r#"{"prompt_tokens":"7","completion_tokens":true}"#,
                (None, None),
                [Some(NOT_AN_INTEGER), Some(NOT_AN_INTEGER)],
            ),
            (
                r#"{"prompt_tokens":0,"completion_tokens":-0}"#,
                (Some(0), Some(0)),
                [None, None],
            ),
            (
                r#"{"prompt_tokens":null,"total_tokens":-5}"#,
                (None, None),
                [None, None],
            ),
        ] {
            let body = format!(r#"{{"usage":{usage}}}"#);
            assert_eq!(tokens_of(body.as_bytes()), tokens, "{usage}");
            assert_eq!(refused_in(body.as_bytes()), refused, "{usage}");
        }
    }

    #[test]
    fn a_refused_count_replaces_a_believed_one_and_the_other_way_round() {
        let (queue, _receiver) = UsageQueue::new(1);
        let event = crate::usage::tests::event();
        let mut meter = Meter::new(event, Instant::now(), Instant::now(), true, queue, 100);
        meter.observe(b"data: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":-1}}\n\n");
        meter.observe(b"data: {\"usage\":{\"prompt_tokens\":500,\"completion_tokens\":4}}\n\n");
        let event = meter.event().expect("not recorded yet");
        assert_eq!(
            (event.prompt_tokens, event.completion_tokens),
            (None, Some(4))
        );
        assert_eq!(meter.tokens.refused, [Some(rejected::TOO_LARGE), None]);
    }

    #[test]
    fn odd_usage_costs_only_the_odd_field() {
        assert_eq!(
            tokens_of(br#"{"usage":{"prompt_tokens":"many","completion_tokens":3}}"#),
            (None, Some(3))
        );
        assert_eq!(
            tokens_of(br#"{"usage":{"prompt_tokens":{"n":1},"completion_tokens":2.5}}"#),
            (None, None)
        );
        assert_eq!(
            tokens_of(br#"{"usage":{"prompt_tokens":[1],"completion_tokens":4}}"#),
            (None, Some(4))
        );
        for body in [
            &br#"{"usage":null}"#[..],
            br#"{"usage":"none"}"#,
            br#"{"choices":[]}"#,
            br#"[1,2]"#,
            b"not json",
            br#"{"usage":{"prompt_tokens":1}"#,
        ] {
            assert_eq!(
                tokens_of(body),
                (None, None),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
