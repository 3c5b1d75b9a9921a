//! Server-sent events read line by line for their `usage`, in time linear in the bytes streamed
//! and in bounded memory, whatever the shape of the lines: none at all, millions of empty ones,
//! one of many megabytes, `\r\n` endings, a `data:` line split across any number of chunks.
//!
//! Each byte is looked at a bounded number of times, and never again once its line is over:
//! once by the search for the end of its line; if its line is a `data:` line, once by the
//! search for a `"usage"` key whose value is an object (a little more where whitespace follows
//! such a key); if its line did not end in its chunk, once more when copied, but only while the
//! line may still be a `data:` line no longer than [`LINE_LIMIT`]; and if its line carries
//! usage, once by the parser. Nothing is shifted, and no buffer is searched from its start again.

use crate::proxy::scan::find_either;

/// Longest `data:` line read for usage, as a non-streamed body's whole-body limit: a longer line
/// is streamed through untouched but not read (a final chunk with usage is a few hundred bytes).
pub(in crate::proxy) const LINE_LIMIT: usize = super::USAGE_SCAN_LIMIT;

/// The field of a line the meter (and the rewriter) reads.
pub(in crate::proxy) const DATA: &[u8] = b"data:";

/// Where a stream's lines stand between two chunks.
#[derive(Debug, Default)]
pub(super) struct SseLines {
    /// The start of the line under way, held while it may still be a `data:` line of at most
    /// [`LINE_LIMIT`] bytes; empty at the start of a line.
    partial: Vec<u8>,
    /// The line under way cannot matter (it is not a `data:` line, or too long): the rest of it
    /// is passed over up to its end.
    skipping: bool,
}

impl SseLines {
    /// Reads `chunk`, the next bytes of the stream, and hands `usage` the JSON of each `data:`
    /// line that ends in it and carries a `usage` object, in the stream's order.
    pub(super) fn feed(&mut self, mut chunk: &[u8], mut usage: impl FnMut(&[u8])) {
        while let Some(end) = find_byte(b'\n', chunk) {
            let line = &chunk[..end];
            chunk = &chunk[end + 1..];
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if self.partial.is_empty() {
                read_line(line, &mut usage);
            } else {
                if self.partial.len() + line.len() <= LINE_LIMIT {
                    examined(line.len());
                    self.partial.extend_from_slice(line);
                    read_line(&self.partial, &mut usage);
                }
                self.partial.clear();
            }
        }
        if !self.skipping {
            self.hold(chunk);
        }
    }

    /// Keeps `piece`, the start (or more) of a line that goes on in the next chunk, unless the
    /// line can no longer be a `data:` line within the limit ([`may_hold`]).
    fn hold(&mut self, piece: &[u8]) {
        // Told apart by its first bytes before anything is copied.
        examined(
            piece
                .len()
                .min(DATA.len().saturating_sub(self.partial.len())),
        );
        if !may_hold(&self.partial, piece) {
            self.give_up_line();
            return;
        }
        examined(piece.len());
        self.partial.extend_from_slice(piece);
    }

    fn give_up_line(&mut self) {
        self.partial.clear();
        self.skipping = true;
    }

    /// Bytes held for the line under way (at most [`LINE_LIMIT`]), and the room kept for them.
    #[cfg(test)]
    pub(super) fn held(&self) -> (usize, usize) {
        (self.partial.len(), self.partial.capacity())
    }
}

/// Whether a line that starts with `held` and goes on with `more` (and does not end there) is
/// worth holding back: it may still be a `data:` line (as far as its first bytes tell) of at
/// most [`LINE_LIMIT`] bytes. The meter and the rewriter hold a line only while this is so;
/// any other streams through unread.
pub(in crate::proxy) fn may_hold(held: &[u8], more: &[u8]) -> bool {
    let from_held = held.len().min(DATA.len());
    let from_more = more.len().min(DATA.len() - from_held);
    held.len() + more.len() <= LINE_LIMIT
        && held[..from_held] == DATA[..from_held]
        && more[..from_more] == DATA[from_held..from_held + from_more]
}

/// A complete `line` (without its `\n`): hands `usage` its JSON when it is a `data:` line
/// within the limit that carries a `usage` object.
pub(super) fn read_line(line: &[u8], usage: &mut impl FnMut(&[u8])) {
    if line.len() > LINE_LIMIT {
        return;
    }
    let Some(data) = line.strip_prefix(DATA) else {
        return;
    };
    // `\r` of a `\r\n` ending goes with the other whitespace.
    examined(DATA.len() + data.len());
    let data = data.trim_ascii();
    if has_usage_object(data) {
        examined(data.len());
        usage(data);
    }
}

/// Whether `json` holds a `"usage"` key followed by an object: what the parser needs to find
/// any count (a `"usage": null` of every chunk before the last, as OpenAI sends it, is passed
/// over unparsed). A key in a string cannot match: its quotes would be escaped.
fn has_usage_object(json: &[u8]) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    // `g` is the key's rarest byte in JSON text: the fast search stops less often on it.
    const G_AT: usize = 4;
    let mut from = 0;
    while let Some(at) = find_byte(b'g', &json[from..]) {
        let g = from + at;
        from = g + 1;
        let Some(start) = g.checked_sub(G_AT) else {
            continue;
        };
        examined(KEY.len());
        if json.get(start..start + KEY.len()) != Some(KEY) {
            continue;
        }
        // The whitespace skipped here holds no `g`: it is looked at again at most once, by the
        // search for the next one.
        let after_key = &json[start + KEY.len()..];
        let rest = after_key.trim_ascii_start();
        examined(after_key.len() - rest.len() + 1);
        if let Some(value) = rest.strip_prefix(b":") {
            let value_start = value.trim_ascii_start();
            examined(value.len() - value_start.len() + 1);
            if value_start.first() == Some(&b'{') {
                return true;
            }
        }
    }
    false
}

/// The first position of `needle` in `haystack`: the first eight bytes one by one (the usual
/// distance between two newlines of a stream is short), then eight bytes at a time
/// ([`find_either`]).
pub(in crate::proxy) fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    let head = haystack.len().min(8);
    if let Some(i) = haystack[..head].iter().position(|b| *b == needle) {
        examined(i + 1);
        return Some(i);
    }
    let found = find_either(needle, needle, &haystack[head..]).map(|i| head + i);
    examined(found.map_or(haystack.len(), |i| i + 1));
    found
}

#[cfg(test)]
thread_local! {
    /// Bytes looked at on this thread by every search, copy and parse of the reader.
    pub(super) static EXAMINED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts `bytes` looked at, in tests only (the tests bound the work with it).
#[inline]
fn examined(bytes: usize) {
    #[cfg(test)]
    EXAMINED.with(|n| n.set(n.get() + bytes));
    #[cfg(not(test))]
    let _ = bytes;
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Instant;

    use super::super::Meter;
    use super::*;
    use crate::usage::UsageQueue;

    const MIB: usize = 1024 * 1024;
    /// OpenAI's final chunk: no choices, the call's usage.
    const USAGE: &[u8] = b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n";
    const DONE: &[u8] = b"data: [DONE]\n\n";

    /// What a meter made of a stream.
    #[derive(Debug)]
    struct Read {
        tokens: (Option<i64>, Option<i64>),
        /// Bytes looked at, by every search, copy and parse.
        examined: usize,
        /// The most bytes held for a line, and the most room kept for them.
        held: (usize, usize),
    }

    /// Streams `pieces` through a meter of server-sent events.
    fn meter<P: AsRef<[u8]>>(pieces: impl IntoIterator<Item = P>) -> Read {
        let (queue, _receiver) = UsageQueue::new(1);
        let event = crate::usage::tests::event();
        let mut meter = Meter::new(
            event,
            Instant::now(),
            Instant::now(),
            true,
            queue,
            1_000_000,
        );
        let before = EXAMINED.with(Cell::get);
        let mut held = (0, 0);
        for piece in pieces {
            meter.observe(piece.as_ref());
            let (len, room) = meter.lines.held();
            held = (held.0.max(len), held.1.max(room));
        }
        let examined = EXAMINED.with(Cell::get) - before;
        let event = meter.event().expect("not recorded yet");
        Read {
            tokens: (event.prompt_tokens, event.completion_tokens),
            examined,
            held,
        }
    }

    /// `body` in pieces of `size` bytes.
    fn pieces(body: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
        body.chunks(size)
    }

    /// The work is linear: at most `per_byte` bytes looked at for each byte streamed, whatever
    /// the stream's length (metering that shifts or searches a buffer again per line looks at
    /// about as many bytes per byte as there are bytes in a chunk).
    fn assert_linear(read: &Read, streamed: usize, per_byte: usize) {
        assert!(
            read.examined <= per_byte * streamed,
            "{} bytes looked at for {streamed} streamed: {read:?}",
            read.examined
        );
    }

    fn stream_of(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn a_stream_of_bare_newlines_is_looked_at_once_and_its_usage_still_found() {
        for size in [MIB, 4 * MIB] {
            let body = stream_of(&[&vec![b'\n'; size], USAGE, DONE]);
            for piece in [body.len(), 400 * 1024, 64 * 1024, 4096] {
                let read = meter(pieces(&body, piece));
                assert_eq!(read.tokens, (Some(7), Some(3)), "{size} in {piece}");
                assert_linear(&read, body.len(), 2);
                assert!(read.held.0 <= USAGE.len(), "{read:?}");
            }
        }
    }

    #[test]
    fn a_stream_without_newlines_is_passed_over_in_bounded_memory() {
        let no_lines = vec![b'x'; 10 * MIB];
        let mut one_data_line = b"data: {\"usage\":{\"prompt_tokens\":1},\"x\":\"".to_vec();
        one_data_line.resize(10 * MIB, b'x');
        for piece in [MIB, 64 * 1024, 1000] {
            let read = meter(pieces(&no_lines, piece));
            assert_eq!(read.tokens, (None, None));
            assert_linear(&read, no_lines.len(), 2);
            assert!(read.held.1 <= DATA.len() * 2, "not a data line: {read:?}");

            let read = meter(pieces(&one_data_line, piece));
            assert_eq!(read.tokens, (None, None), "never ends: never read");
            assert_linear(&read, one_data_line.len(), 3);
            assert!(read.held.0 <= LINE_LIMIT && read.held.1 <= 2 * LINE_LIMIT);
        }
    }

    #[test]
    fn a_line_over_the_limit_streams_through_unread_and_the_next_one_counts() {
        let mut long =
            b"data: {\"usage\":{\"prompt_tokens\":99,\"completion_tokens\":99},\"x\":\"".to_vec();
        long.resize(10 * MIB, b'x');
        long.extend_from_slice(b"\"}\n\n");
        let body = stream_of(&[&long, USAGE, DONE]);
        for piece in [body.len(), MIB, 64 * 1024, 999] {
            let read = meter(pieces(&body, piece));
            assert_eq!(read.tokens, (Some(7), Some(3)), "in {piece}");
            assert_linear(&read, body.len(), 3);
            assert!(read.held.0 <= LINE_LIMIT && read.held.1 <= 2 * LINE_LIMIT);
        }
        // Just within the limit, the line is read.
        let mut within = b"data: {\"usage\":{\"prompt_tokens\":5},\"x\":\"".to_vec();
        within.resize(LINE_LIMIT - 2, b'x');
        within.extend_from_slice(b"\"}\n");
        assert_eq!(meter(pieces(&within, 4096)).tokens, (Some(5), None));
    }

    #[test]
    fn crlf_line_endings_read_as_newlines() {
        let content =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\r\n\r\n";
        let crlf_usage = String::from_utf8_lossy(USAGE).replace('\n', "\r\n");
        let body = stream_of(&[
            content,
            content,
            crlf_usage.as_bytes(),
            b"data: [DONE]\r\n\r\n",
        ]);
        for piece in [body.len(), 7, 1] {
            assert_eq!(meter(pieces(&body, piece)).tokens, (Some(7), Some(3)));
        }
    }

    #[test]
    fn an_event_split_anywhere_across_chunks_is_read_whole() {
        let before = b": keep-alive\n\nevent: message\nid: 1\ndata: {\"choices\":[]}\n\n";
        for split in 0..=USAGE.len() {
            let (head, tail) = USAGE.split_at(split);
            let first = stream_of(&[before, head]);
            let second = stream_of(&[tail, DONE]);
            let read = meter([first, second]);
            assert_eq!(read.tokens, (Some(7), Some(3)), "split at {split}");
        }
        // Byte by byte, `data:` itself split every way.
        let body = stream_of(&[before, USAGE, DONE]);
        let read = meter(pieces(&body, 1));
        assert_eq!(read.tokens, (Some(7), Some(3)));
        assert_linear(&read, body.len(), 8);
    }

    #[test]
    fn the_last_usage_object_counts_and_null_or_quoted_ones_do_not() {
        let null_usage =
            b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}],\"usage\":null}\n\n";
        let quoted = b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\": {\\\"prompt_tokens\\\": 5}\"}}]}\n\n";
        let mut body = Vec::new();
        for _ in 0..1000 {
            body.extend_from_slice(null_usage);
            body.extend_from_slice(quoted);
        }
        assert_eq!(meter(pieces(&body, 4096)).tokens, (None, None));
        body.extend_from_slice(USAGE);
        body.extend_from_slice(DONE);
        assert_eq!(meter(pieces(&body, 4096)).tokens, (Some(7), Some(3)));
        // Running totals (vLLM's continuous usage): the last one's counts stand.
        let running: Vec<u8> = (1..=3)
            .flat_map(|n| {
                format!(
                    "data: {{\"usage\" : {{\"prompt_tokens\":7,\"completion_tokens\":{n}}}}}\n\n"
                )
                .into_bytes()
            })
            .collect();
        assert_eq!(meter(pieces(&running, 10)).tokens, (Some(7), Some(3)));
    }

    #[test]
    fn data_lines_dense_with_the_key_cost_a_bounded_amount_per_byte() {
        for filler in [
            &b"g"[..],
            b"\"usage\"",
            b"\"usage\"      ",
            b"\"usage\": 1,",
        ] {
            let mut line = b"data: ".to_vec();
            while line.len() < MIB / 2 {
                line.extend_from_slice(filler);
            }
            line.extend_from_slice(b"\n");
            let body = stream_of(&[&line, USAGE]);
            for piece in [body.len(), 64 * 1024] {
                let read = meter(pieces(&body, piece));
                assert_eq!(read.tokens, (Some(7), Some(3)));
                assert_linear(&read, body.len(), 16);
            }
        }
    }

    #[test]
    fn the_byte_search_finds_the_first_one_at_any_offset() {
        for len in 0..40 {
            for at in 0..len {
                let mut haystack = vec![b'a'; len];
                haystack[at] = b'\n';
                if at + 3 < len {
                    haystack[at + 3] = b'\n';
                }
                assert_eq!(find_byte(b'\n', &haystack), Some(at), "{len} {at}");
            }
            assert_eq!(find_byte(b'\n', &vec![b'a'; len]), None);
        }
        // Bytes around the needle's value do not fool the word test.
        let near: Vec<u8> = (0..=255u8).filter(|b| *b != b'g').collect();
        assert_eq!(find_byte(b'g', &near), None);
    }
}
