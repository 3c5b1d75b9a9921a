//! Finds the string value of the top-level `"model"` key of a JSON object, fed in pieces of any
//! size, without building anything of the document.
//!
//! A state machine over the bytes: each byte is looked at once, the position only moves forward,
//! and the state is a few words (nesting is a counter, not a stack), so the work is linear in the
//! bytes and the memory constant whatever the document. It stops at the first top-level key
//! spelled `model` (a key written with escapes is not recognised), and at anything that is not
//! a JSON object: what follows is not looked at.

use crate::proxy::scan::find_either;

/// Where the value of the top-level `model` key lies in the piece just fed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// The position of the value's opening quote, when it is in this piece.
    pub start: Option<usize>,
    /// The position just after its closing quote, when it is in this piece.
    pub end: Option<usize>,
}

/// The key looked for.
const MODEL: &[u8] = b"model";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Whitespace, then the `{` of the top-level object.
    Start,
    /// In the top-level object where a key (or its `}`) comes.
    Key,
    /// Inside a top-level key: how many bytes of `model` it matched so far.
    InKey {
        matched: u8,
        mismatch: bool,
        escaped: bool,
    },
    /// After a key: whitespace, then `:`.
    Colon { model: bool },
    /// After the `:`: whitespace, then the value.
    Value { model: bool },
    /// Inside the model's string value.
    ModelString { escaped: bool },
    /// Inside another string value.
    Text { escaped: bool },
    /// Inside an object or array value, `depth` levels down.
    Nested {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
    /// Inside a number, `true`, `false` or `null`.
    Scalar,
    /// After a value: whitespace, then `,` or the closing `}`.
    After,
    /// Nothing more to find.
    Done,
}

/// The scanner of one JSON text.
#[derive(Debug, Clone)]
pub(crate) struct ModelScanner {
    state: State,
}

impl Default for ModelScanner {
    fn default() -> Self {
        Self {
            state: State::Start,
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A table of the bytes a search stops at.
const fn table(bytes: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
}

/// What matters inside an object or array outside strings.
const NESTED_STOPS: [bool; 256] = table(b"\"{}[]");
/// What ends a number or literal.
const SCALAR_STOPS: [bool; 256] = table(b",} \t\r\n");

/// The first position at or after `from` of a `"` or `\\` (what ends a stretch of a string's
/// content), else the end: eight bytes at a time, as the meter's line search (strings are most
/// of what a long line holds).
fn string_stop(piece: &[u8], from: usize) -> usize {
    piece
        .get(from..)
        .and_then(|rest| find_either(b'"', b'\\', rest))
        .map_or(piece.len(), |at| from + at)
}

/// The first position at or after `from` of a byte in `stops`, else the end.
fn skip_to(piece: &[u8], from: usize, stops: &[bool; 256]) -> usize {
    let Some(rest) = piece.get(from..) else {
        return piece.len();
    };
    rest.iter()
        .position(|b| stops[usize::from(*b)])
        .map_or(piece.len(), |at| from + at)
}

impl ModelScanner {
    /// Whether nothing more can be found (the value was found, or the text is not an object
    /// with a `model` key of its own before its end).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `piece`, the next bytes of the text.
    pub fn feed(&mut self, piece: &[u8]) -> Found {
        let mut found = Found::default();
        let mut at = 0;
        while at < piece.len() {
            let byte = piece[at];
            self.state = match self.state {
                State::Done => break,
                State::Start if is_space(byte) => State::Start,
                State::Start if byte == b'{' => State::Key,
                State::Key | State::After if is_space(byte) => self.state,
                State::Key if byte == b'"' => State::InKey {
                    matched: 0,
                    mismatch: false,
                    escaped: false,
                },
                State::InKey {
                    matched,
                    mismatch,
                    escaped,
                } => Self::in_key(byte, matched, mismatch, escaped),
                State::Colon { model } if is_space(byte) => State::Colon { model },
                State::Colon { model } if byte == b':' => State::Value { model },
                State::Value { model } if is_space(byte) => State::Value { model },
                State::Value { model: true } if byte == b'"' => {
                    found.start = Some(at);
                    State::ModelString { escaped: false }
                }
                // The first model key holds something else than a string: nothing to rewrite.
                State::Value { model: true } => State::Done,
                State::Value { model: false } => match byte {
                    b'"' => State::Text { escaped: false },
                    b'{' | b'[' => State::Nested {
                        depth: 1,
                        in_string: false,
                        escaped: false,
                    },
                    _ => State::Scalar,
                },
                State::ModelString { escaped: true } | State::Text { escaped: true } => {
                    self.escaped_done()
                }
                State::ModelString { escaped: false } | State::Text { escaped: false } => {
                    let stop = string_stop(piece, at);
                    if stop == piece.len() {
                        break;
                    }
                    at = stop;
                    match (piece[at], self.state) {
                        (b'\\', State::ModelString { .. }) => State::ModelString { escaped: true },
                        (b'\\', _) => State::Text { escaped: true },
                        (_, State::ModelString { .. }) => {
                            found.end = Some(at + 1);
                            State::Done
                        }
                        _ => State::After,
                    }
                }
                State::Nested {
                    depth,
                    in_string,
                    escaped,
                } => {
                    let (state, next) = Self::nested(piece, at, depth, in_string, escaped);
                    at = next;
                    state
                }
                State::Scalar => {
                    at = skip_to(piece, at, &SCALAR_STOPS);
                    if at == piece.len() {
                        break;
                    }
                    // The stop byte is read again as what comes after the value.
                    self.state = State::After;
                    continue;
                }
                State::After if byte == b',' => State::Key,
                // The object's end, or anything that is not JSON.
                _ => State::Done,
            };
            at += 1;
        }
        found
    }

    /// The state after the character an escape stands for.
    fn escaped_done(&self) -> State {
        match self.state {
            State::ModelString { .. } => State::ModelString { escaped: false },
            _ => State::Text { escaped: false },
        }
    }

    fn in_key(byte: u8, matched: u8, mismatch: bool, escaped: bool) -> State {
        if escaped {
            return State::InKey {
                matched,
                mismatch: true,
                escaped: false,
            };
        }
        match byte {
            b'"' => State::Colon {
                model: !mismatch && usize::from(matched) == MODEL.len(),
            },
            // A key written with escapes is not recognised.
            b'\\' => State::InKey {
                matched,
                mismatch: true,
                escaped: true,
            },
            _ if !mismatch && MODEL.get(usize::from(matched)) == Some(&byte) => State::InKey {
                matched: matched + 1,
                mismatch: false,
                escaped: false,
            },
            _ => State::InKey {
                matched,
                mismatch: true,
                escaped: false,
            },
        }
    }

    /// One step inside an object or array value: the next state and the position of the byte
    /// it was decided on.
    fn nested(
        piece: &[u8],
        at: usize,
        depth: u32,
        in_string: bool,
        escaped: bool,
    ) -> (State, usize) {
        let inside = |depth, in_string, escaped| State::Nested {
            depth,
            in_string,
            escaped,
        };
        if escaped {
            return (inside(depth, true, false), at);
        }
        let stop = if in_string {
            string_stop(piece, at)
        } else {
            skip_to(piece, at, &NESTED_STOPS)
        };
        if stop == piece.len() {
            // Nothing that matters in the rest of the piece: the state stays, past its end.
            return (inside(depth, in_string, false), stop - 1);
        }
        let state = match (piece[stop], in_string) {
            (b'\\', true) => inside(depth, true, true),
            (b'"', true) => inside(depth, false, false),
            (b'"', false) => inside(depth, true, false),
            (b'{' | b'[', false) => inside(depth.saturating_add(1), false, false),
            // `}` or `]`.
            _ if depth <= 1 => State::After,
            _ => inside(depth - 1, false, false),
        };
        (state, stop)
    }
}

/// The position just after the closing quote of the JSON string whose opening quote is at
/// `open`, if it ends in `text`.
pub(crate) fn string_end(text: &[u8], open: usize) -> Option<usize> {
    let mut at = open + 1;
    loop {
        at = string_stop(text, at);
        match text.get(at)? {
            b'\\' => at += 2,
            _ => return Some(at + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model value of `text` fed in pieces of `size` bytes, as text.
    fn model_in(text: &str, size: usize) -> Option<String> {
        let bytes = text.as_bytes();
        let mut scanner = ModelScanner::default();
        let (mut start, mut end) = (None, None);
        for (i, piece) in bytes.chunks(size.max(1)).enumerate() {
            let found = scanner.feed(piece);
            let offset = i * size.max(1);
            start = start.or(found.start.map(|s| s + offset));
            end = end.or(found.end.map(|e| e + offset));
        }
        Some(text[start?..end?].to_owned())
    }

    fn every_split(text: &str) -> Option<String> {
        let whole = model_in(text, text.len());
        for size in 1..=text.len() {
            assert_eq!(model_in(text, size), whole, "{text} in pieces of {size}");
        }
        whole
    }

    #[test]
    fn the_top_level_model_string_is_found_wherever_the_pieces_break() {
        for (text, model) in [
            (r#"{"model":"llama"}"#, Some(r#""llama""#)),
            (
                r#" { "id" : "x", "model" : "ll\"a\\ma" , "n": 1}"#,
                Some(r#""ll\"a\\ma""#),
            ),
            (
                r#"{"data":[{"model":"inner"},[1,2,{"a":"}]"}]],"x":-1.5e3,"t":true,"model":"top"}"#,
                Some(r#""top""#),
            ),
            (r#"{"n":null,"s":"model","model":"m"}"#, Some(r#""m""#)),
            (r#"{"modelx":"a","mode":"b","model":"c"}"#, Some(r#""c""#)),
            (r#"{"model":"first","model":"second"}"#, Some(r#""first""#)),
            ("{\"\\u006dodel\":\"escaped key\",\"a\":1}", None),
            (r#"{"model":null,"model":"late"}"#, None),
            (r#"{"model":5}"#, None),
            (r#"["model","x"]"#, None),
            (r#""model""#, None),
            ("[DONE]", None),
            ("", None),
            (r#"{"a":{"model":"nested"}}"#, None),
            (r#"{"a":"b"}{"model":"second document"}"#, None),
        ] {
            assert_eq!(every_split(text).as_deref(), model, "{text}");
        }
    }

    #[test]
    fn deep_and_long_documents_are_read_to_their_model_without_a_stack() {
        // Deep nesting is a counter: no stack to overflow.
        let deep = format!(
            "{{\"a\":{}{}, \"model\":\"m\"}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(model_in(&deep, 4096).as_deref(), Some("\"m\""));
        // A long string value, a long number, a long array: each byte once.
        let long = format!(
            "{{\"s\":\"{}\",\"n\":{},\"v\":[{}],\"model\":\"m\"}}",
            "x".repeat(1 << 20),
            "9".repeat(1 << 20),
            vec!["0.5"; 1 << 18].join(",")
        );
        assert_eq!(model_in(&long, 1000).as_deref(), Some("\"m\""));
    }

    #[test]
    fn the_string_search_finds_the_first_stop_at_any_offset() {
        for len in 0..40 {
            for at in 0..len {
                for stop in [b'"', b'\\'] {
                    let mut text = vec![b'a'; len];
                    text[at] = stop;
                    if at + 3 < len {
                        text[at + 3] = b'"';
                    }
                    for from in 0..=at {
                        assert_eq!(string_stop(&text, from), at, "{len} {at} {from}");
                    }
                }
            }
            assert_eq!(string_stop(&vec![b'a'; len], 0), len);
        }
        let near: Vec<u8> = (0..=255u8).filter(|b| !matches!(b, b'"' | b'\\')).collect();
        assert_eq!(string_stop(&near, 0), near.len());
        assert_eq!(string_stop(b"ab", 5), 2);
    }

    #[test]
    fn a_string_ends_at_its_unescaped_quote() {
        assert_eq!(string_end(br#""ab""#, 0), Some(4));
        assert_eq!(string_end(br#"x"a\"b\\"y"#, 1), Some(9));
        assert_eq!(string_end(br#""open"#, 0), None);
        assert_eq!(string_end(br#""\"#, 0), None);
    }
}
