//! Server-sent events on their way to the client, line by line: the top-level `model` of each
//! `data:` line's JSON set back to the client's name, the usage-only final event dropped when
//! the gateway asked for it (see [`super::AnswerRewrite`]), and every complete `data:` line
//! handed to the [`Meter`], which reads no other copy of the stream then.
//!
//! The work is linear in the bytes streamed and the memory bounded, whatever the lines:
//! - each byte is looked at by one search for the end of its line, and a line is read only
//!   when it is a `data:` line of at most [`LINE_LIMIT`] bytes: by the meter as before, and for
//!   its `model` by the scanner of `json.rs` (one pass) — or, when the line starts with the same
//!   bytes as the last line up to its model value (OpenAI's chunks of one stream all do: the
//!   same `id`, `object` and `created`), by one comparison of those bytes;
//! - a `data:` line that does not end in its chunk is held back until it does (an SSE client
//!   acts on an event only at its end, so it loses nothing), copied once, and only while it is
//!   at most [`LINE_LIMIT`] bytes; a longer line is let go and streams through unread, like any
//!   line that is not a `data:` line;
//! - a chunk in which nothing changes goes on as the same bytes, and one in which something
//!   does is copied once.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::json::{ModelScanner, string_end};
use crate::proxy::meter::{DATA, LINE_LIMIT, Meter, find_byte, may_hold};
/// Longest start of a line remembered up to its model value.
const MEMO_LIMIT: usize = 512;

/// Where a stream's lines stand between two chunks.
#[derive(Debug)]
pub(crate) struct SseRelay {
    /// The client's `model`, as a JSON string.
    replacement: Bytes,
    /// Drop the final event that carries only `usage`.
    strip_usage: bool,
    /// The start of a `data:` line that goes on in a later chunk, held back.
    partial: Vec<u8>,
    /// The line under way passes through unread.
    passing: bool,
    /// An event was dropped: its blank line goes too.
    drop_blank: bool,
    /// The last line read up to its model value (at most [`MEMO_LIMIT`] bytes; empty: none).
    memo: Vec<u8>,
}

/// What becomes of one complete line.
#[derive(Debug, PartialEq, Eq)]
enum Edit {
    Keep,
    Drop,
    /// The model value at this range of the line is replaced.
    Model(Range<usize>),
}

/// The chunk going to the client: the same bytes until something changes, then a copy.
struct Out<'c> {
    chunk: &'c Bytes,
    buf: Option<BytesMut>,
    upto: usize,
}

impl<'c> Out<'c> {
    fn new(chunk: &'c Bytes) -> Self {
        Self {
            chunk,
            buf: None,
            upto: 0,
        }
    }

    /// `range` of the chunk (after every earlier one) becomes `with`.
    fn replace(&mut self, range: Range<usize>, with: &[u8]) {
        let chunk = self.chunk;
        // Room for a longer name in every line of the chunk, usually: growing the copy would
        // copy it again.
        let buf = self
            .buf
            .get_or_insert_with(|| BytesMut::with_capacity(chunk.len() + chunk.len() / 2 + 64));
        buf.extend_from_slice(&chunk[self.upto..range.start]);
        buf.extend_from_slice(with);
        self.upto = range.end;
    }

    fn finish(self) -> Bytes {
        match self.buf {
            None => self.chunk.clone(),
            Some(mut buf) => {
                buf.extend_from_slice(&self.chunk[self.upto..]);
                buf.freeze()
            }
        }
    }
}

/// Whether an event's JSON has an empty `choices` (OpenAI's usage-only final chunk; the caller
/// knows it carries a `usage` object).
fn has_no_choices(json: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Choices<'a> {
        #[serde(default, borrow)]
        choices: Option<&'a RawValue>,
    }
    serde_json::from_slice::<Choices<'_>>(json)
        .ok()
        .and_then(|c| c.choices)
        .and_then(|c| c.get().strip_prefix('['))
        .and_then(|c| c.strip_suffix(']'))
        .is_some_and(|inside| inside.trim_ascii().is_empty())
}

impl SseRelay {
    /// A relay writing `replacement` (a JSON string) as the model, and dropping the usage-only
    /// event when `strip_usage`.
    pub fn new(replacement: Bytes, strip_usage: bool) -> Self {
        Self {
            replacement,
            strip_usage,
            partial: Vec::new(),
            passing: false,
            drop_blank: false,
            memo: Vec::new(),
        }
    }

    /// The next chunk of the stream, as the client gets it (possibly empty).
    pub fn pass(&mut self, chunk: Bytes, meter: &mut Meter) -> Bytes {
        let mut out = Out::new(&chunk);
        let mut at = 0;
        if self.passing || !self.partial.is_empty() {
            let Some(end) = find_byte(b'\n', &chunk) else {
                self.line_goes_on(&chunk, &mut out);
                return out.finish();
            };
            if !std::mem::take(&mut self.passing) {
                self.held_line_ends(&chunk[..end], &mut out, meter);
            }
            at = end + 1;
        }
        while at < chunk.len() {
            let Some(len) = find_byte(b'\n', &chunk[at..]) else {
                let rest = &chunk[at..];
                if may_hold(rest, b"") {
                    self.partial.extend_from_slice(rest);
                    out.replace(at..chunk.len(), b"");
                } else {
                    self.passing = true;
                }
                break;
            };
            let line = at..at + len;
            match self.edit(&chunk[line.clone()], meter) {
                Edit::Keep => {}
                Edit::Drop => out.replace(line.start..line.end + 1, b""),
                Edit::Model(value) => out.replace(
                    line.start + value.start..line.start + value.end,
                    &self.replacement,
                ),
            }
            at = line.end + 1;
        }
        out.finish()
    }

    /// The stream is over: what is still held back (a last line without its end, as it came).
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.partial.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.partial)))
    }

    /// A chunk without a line end, while a line is under way.
    fn line_goes_on(&mut self, chunk: &[u8], out: &mut Out<'_>) {
        if self.passing {
            return;
        }
        if may_hold(&self.partial, chunk) {
            self.partial.extend_from_slice(chunk);
            out.replace(0..chunk.len(), b"");
        } else {
            out.replace(0..0, &std::mem::take(&mut self.partial));
            self.passing = true;
        }
    }

    /// The held line ends with `rest`, the start of this chunk before its `\n`.
    fn held_line_ends(&mut self, rest: &[u8], out: &mut Out<'_>, meter: &mut Meter) {
        let mut line = std::mem::take(&mut self.partial);
        if line.len() + rest.len() > LINE_LIMIT {
            // Too long to read: it goes on as it came.
            out.replace(0..0, &line);
            return;
        }
        line.extend_from_slice(rest);
        let ends_at = rest.len() + 1;
        match self.edit(&line, meter) {
            Edit::Keep => {
                line.push(b'\n');
                out.replace(0..ends_at, &line);
            }
            Edit::Drop => out.replace(0..ends_at, b""),
            Edit::Model(value) => {
                let mut edited = Vec::with_capacity(line.len() + self.replacement.len() + 1);
                edited.extend_from_slice(&line[..value.start]);
                edited.extend_from_slice(&self.replacement);
                edited.extend_from_slice(&line[value.end..]);
                edited.push(b'\n');
                out.replace(0..ends_at, &edited);
            }
        }
        // The held line's buffer is kept for the next one.
        line.clear();
        self.partial = line;
    }

    /// What becomes of a complete `line` (without its `\n`).
    fn edit(&mut self, line: &[u8], meter: &mut Meter) -> Edit {
        if std::mem::take(&mut self.drop_blank) && matches!(line, b"" | b"\r") {
            return Edit::Drop;
        }
        let Some(json) = line.strip_prefix(DATA) else {
            return Edit::Keep;
        };
        if line.len() > LINE_LIMIT {
            return Edit::Keep;
        }
        let usage = meter.line(line);
        if usage && self.strip_usage && has_no_choices(json) {
            self.drop_blank = true;
            return Edit::Drop;
        }
        match self.model_value(json) {
            Some(value) if json[value.clone()] != *self.replacement => {
                Edit::Model(DATA.len() + value.start..DATA.len() + value.end)
            }
            _ => Edit::Keep,
        }
    }

    /// Where the top-level model string of `json` lies.
    fn model_value(&mut self, json: &[u8]) -> Option<Range<usize>> {
        let start = self.memo.len();
        // The scanner's state after the same bytes is the same: the value starts here too.
        if start > 0 && json.get(start) == Some(&b'"') && json.starts_with(&self.memo) {
            return string_end(json, start).map(|end| start..end);
        }
        let found = ModelScanner::default().feed(json);
        let value = found.start?..found.end?;
        self.memo.clear();
        if value.start <= MEMO_LIMIT {
            self.memo.extend_from_slice(&json[..value.start]);
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::usage::UsageQueue;

    const MIB: usize = 1024 * 1024;

    fn meter() -> Meter {
        let (queue, _receiver) = UsageQueue::new(1);
        Meter::new(
            crate::usage::tests::event(),
            Instant::now(),
            Instant::now(),
            true,
            queue,
            1_000_000,
        )
    }

    fn chunk(model: &str, content: &str) -> String {
        format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"{model}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}],\"usage\":null}}\n\n"
        )
    }

    const USAGE_ONLY: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"served\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n";

    /// `body` through a relay in pieces of `size`: what the client gets, and the meter's counts.
    fn relay(body: &[u8], size: usize, strip: bool) -> (Vec<u8>, (Option<i64>, Option<i64>)) {
        let mut relay = SseRelay::new(Bytes::from_static(b"\"asked@prod\""), strip);
        let mut meter = meter();
        let mut out = Vec::new();
        for piece in body.chunks(size) {
            out.extend_from_slice(&relay.pass(Bytes::copy_from_slice(piece), &mut meter));
        }
        if let Some(rest) = relay.finish() {
            out.extend_from_slice(&rest);
        }
        let event = meter.event().expect("not recorded");
        (out, (event.prompt_tokens, event.completion_tokens))
    }

    fn stream(usage: bool) -> String {
        let mut body = String::from(": keep-alive\n\nevent: message\n");
        body.push_str(&chunk("served", "Hel"));
        body.push_str(&chunk("served", "lo").replace("\n\n", "\r\n\r\n"));
        body.push_str("data: {\"model\": \"served\", \"x\": 1.0e3}\n\n");
        if usage {
            body.push_str(USAGE_ONLY);
        }
        body.push_str("data: [DONE]\n\n");
        body
    }

    #[test]
    fn every_events_model_is_the_clients_whatever_the_chunks() {
        let body = stream(true);
        let expected = body.replace("\"served\"", "\"asked@prod\"");
        for size in [body.len(), 100, 17, 5, 1] {
            let (out, tokens) = relay(body.as_bytes(), size, false);
            assert_eq!(
                String::from_utf8_lossy(&out),
                expected,
                "in pieces of {size}"
            );
            assert_eq!(tokens, (Some(7), Some(3)), "metered in pieces of {size}");
        }
    }

    #[test]
    fn the_usage_only_event_is_dropped_when_asked_and_still_metered() {
        let body = stream(true);
        let expected = stream(false).replace("\"served\"", "\"asked@prod\"");
        for size in [body.len(), 64, 7, 1] {
            let (out, tokens) = relay(body.as_bytes(), size, true);
            assert_eq!(
                String::from_utf8_lossy(&out),
                expected,
                "in pieces of {size}"
            );
            assert_eq!(tokens, (Some(7), Some(3)));
        }
        // Usage beside choices is not a usage-only event: it stays.
        let with_choices = "data: {\"model\":\"m\",\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let (out, _) = relay(with_choices.as_bytes(), 9, true);
        assert_eq!(
            String::from_utf8_lossy(&out),
            with_choices.replace("\"m\"", "\"asked@prod\"")
        );
    }

    #[test]
    fn a_chunk_where_nothing_changes_is_the_same_bytes() {
        let line = "data: {\"model\":\"asked@prod\",\"choices\":[]}\n\n: ping\n\n";
        let mut relay = SseRelay::new(Bytes::from_static(b"\"asked@prod\""), false);
        let mut meter = meter();
        let chunk = Bytes::copy_from_slice(line.as_bytes());
        let out = relay.pass(chunk.clone(), &mut meter);
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "not copied");
    }

    #[test]
    fn non_json_and_overlong_lines_pass_untouched() {
        let mut long = b"data: {\"model\":\"served\",\"x\":\"".to_vec();
        long.resize(LINE_LIMIT + 10, b'x');
        long.extend_from_slice(b"\"}\n\n");
        let mut body = b"data: not json \"model\":\"served\"\n\nid: 1\n".to_vec();
        body.extend_from_slice(&long);
        body.extend_from_slice(b"data: {\"model\":\"served\"}");
        for size in [body.len(), MIB / 3, 4096] {
            let (out, _) = relay(&body, size, true);
            assert!(
                out == body,
                "in pieces of {size}: not JSON, too long, or without an end: as it came"
            );
        }
    }

    #[test]
    fn the_model_is_found_by_comparison_when_lines_start_alike_and_by_scanning_when_not() {
        let mut relay = SseRelay::new(Bytes::from_static(b"\"x\""), false);
        let mut meter = meter();
        let a = "data: {\"id\":\"1\",\"model\":\"m\",\"c\":[]}\n";
        let b = "data: {\"id\":\"1\",\"model\":\"mm\",\"c\":[]}\n";
        let c = "data: {\"id\":\"2\",\"model\":\"m\"}\n";
        let d = "data: {\"id\":\"1\",\"model\":5,\"m\":{\"model\":\"z\"}}\n";
        for (line, expected) in [
            (a, a.replace("\"m\"", "\"x\"")),
            (b, b.replace("\"mm\"", "\"x\"")),
            (c, c.replace("\"m\"", "\"x\"")),
            (d, d.to_owned()),
        ] {
            let out = relay.pass(Bytes::copy_from_slice(line.as_bytes()), &mut meter);
            assert_eq!(String::from_utf8_lossy(&out), expected);
        }
    }

    #[test]
    fn lines_are_held_only_while_they_may_be_data_lines_within_the_limit() {
        let mut relay = SseRelay::new(Bytes::from_static(b"\"x\""), false);
        let mut meter = meter();
        // Not a data line: passes at once, whole.
        let out = relay.pass(Bytes::from_static(b": a comment without end"), &mut meter);
        assert_eq!(&out[..], b": a comment without end");
        let out = relay.pass(Bytes::from_static(b" goes on\ndat"), &mut meter);
        assert_eq!(&out[..], b" goes on\n", "`dat` may start a data line");
        let out = relay.pass(Bytes::from_static(b"e: 1\n"), &mut meter);
        assert_eq!(&out[..], b"date: 1\n");
        // A data line that outgrows the limit is let go, and what was held comes first.
        let big = vec![b'x'; LINE_LIMIT];
        let out = relay.pass(Bytes::from_static(b"data: {\"model\":\"m\""), &mut meter);
        assert!(out.is_empty());
        assert!(relay.partial.len() < 32);
        let out = relay.pass(Bytes::from(big.clone()), &mut meter);
        assert_eq!(out.len(), big.len() + 18);
        assert!(relay.partial.is_empty() && relay.passing);
        let out = relay.pass(Bytes::from_static(b"}\n"), &mut meter);
        assert_eq!(&out[..], b"}\n");
    }

    /// Streams made of the pieces that matter to lines, JSON strings and the model key, in a
    /// pseudo-random order (a fixed seed): whatever the chunks, the client gets the same bytes,
    /// and nothing panics.
    #[test]
    fn the_output_does_not_depend_on_where_the_chunks_break() {
        const PIECES: &[&str] = &[
            "data: ",
            "data:",
            "{",
            "}",
            "\"model\"",
            ":",
            "\"served\"",
            "\"",
            "\\",
            "\n",
            "\r\n",
            "\n\n",
            ",",
            "[",
            "]",
            "\"choices\":[]",
            "\"usage\":{\"prompt_tokens\":1}",
            " ",
            "x",
            "[DONE]",
            ": c",
            "dat",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let len = 1 + next() % 60;
            let body: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let strip = next() % 2 == 0;
            let whole = relay(body.as_bytes(), body.len(), strip);
            for size in [1, 2, 3, 7, 16] {
                assert_eq!(
                    relay(body.as_bytes(), size, strip),
                    whole,
                    "{body:?} in {size}"
                );
            }
        }
    }

    #[test]
    fn a_flood_of_lines_or_one_endless_line_is_relayed_in_bounded_memory() {
        let newlines = vec![b'\n'; 4 * MIB];
        let (out, _) = relay(&newlines, 64 * 1024, true);
        assert_eq!(out, newlines);
        let mut endless = b"data: {\"model\":\"served\",\"x\":\"".to_vec();
        endless.resize(4 * MIB, b'x');
        let mut relay_ = SseRelay::new(Bytes::from_static(b"\"x\""), false);
        let mut meter = meter();
        let mut out = 0;
        for piece in endless.chunks(64 * 1024) {
            out += relay_.pass(Bytes::copy_from_slice(piece), &mut meter).len();
            assert!(relay_.partial.len() <= LINE_LIMIT);
        }
        assert_eq!(out, endless.len(), "let go once over the limit");
    }
}
