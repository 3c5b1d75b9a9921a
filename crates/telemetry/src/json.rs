//! The JSON-lines drain: one object per record, written straight into a buffer.
//!
//! It writes what slog-json's default format writes — `msg`, `level` (slog's short names:
//! `INFO`, `WARN`, …), `ts` (RFC 3339, UTC, nanoseconds), the logger's values, then the
//! record's — but escapes and appends each field itself and hands the sink one finished line
//! in one `write_all`. slog-json goes through serde_json's serializer and writes each key,
//! value and punctuation mark separately; for the gateway's access line that was about 10k
//! instructions, now about a third of that.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use slog::{Drain, Key, OwnedKVList, Record, Serializer};

/// A slog drain writing one JSON object per record and line to `W`. Wrap it in a `Mutex` to
/// share it between threads, as slog-json's drain.
pub struct JsonLines<W: Write> {
    out: RefCell<W>,
    line: RefCell<Vec<u8>>,
}

impl<W: Write> JsonLines<W> {
    /// A drain writing to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out: RefCell::new(out),
            line: RefCell::new(Vec::with_capacity(512)),
        }
    }
}

impl<W: Write> Drain for JsonLines<W> {
    type Ok = ();
    type Err = std::io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> std::io::Result<()> {
        let mut line = self.line.borrow_mut();
        line.clear();
        line.extend_from_slice(b"{\"msg\":");
        write_arguments(&mut line, record.msg());
        line.extend_from_slice(b",\"level\":\"");
        line.extend_from_slice(record.level().as_short_str().as_bytes());
        line.extend_from_slice(b"\",\"ts\":\"");
        write_timestamp(&mut line, SystemTime::now());
        line.push(b'"');
        let mut fields = Fields(&mut line);
        // As slog-json: the logger's values, then the record's (each in slog's order).
        slog::KV::serialize(values, record, &mut fields).map_err(std::io::Error::other)?;
        slog::KV::serialize(&record.kv(), record, &mut fields).map_err(std::io::Error::other)?;
        line.extend_from_slice(b"}\n");
        self.out.borrow_mut().write_all(&line)
    }
}

/// Appends `,"key":value` for each field.
struct Fields<'a>(&'a mut Vec<u8>);

impl Fields<'_> {
    fn key(&mut self, key: &str) {
        self.0.push(b',');
        write_str(self.0, key);
        self.0.push(b':');
    }

    fn raw(&mut self, key: &str, value: impl fmt::Display) -> slog::Result {
        self.key(key);
        write!(self.0, "{value}")?;
        Ok(())
    }
}

macro_rules! emit_integers {
    ($($name:ident: $t:ty),* $(,)?) => {
        $(fn $name(&mut self, key: Key, value: $t) -> slog::Result {
            self.raw(key, value)
        })*
    };
}

impl Serializer for Fields<'_> {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments<'_>) -> slog::Result {
        self.key(key);
        write_arguments(self.0, value);
        Ok(())
    }

    fn emit_str(&mut self, key: Key, value: &str) -> slog::Result {
        self.key(key);
        write_str(self.0, value);
        Ok(())
    }

    fn emit_char(&mut self, key: Key, value: char) -> slog::Result {
        self.key(key);
        write_str(self.0, value.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn emit_bool(&mut self, key: Key, value: bool) -> slog::Result {
        self.raw(key, value)
    }

    fn emit_unit(&mut self, key: Key) -> slog::Result {
        self.raw(key, "null")
    }

    fn emit_none(&mut self, key: Key) -> slog::Result {
        self.raw(key, "null")
    }

    fn emit_f32(&mut self, key: Key, value: f32) -> slog::Result {
        self.emit_f64(key, f64::from(value))
    }

    fn emit_f64(&mut self, key: Key, value: f64) -> slog::Result {
        // JSON has no NaN or infinity; serde_json writes them as null too.
        if value.is_finite() {
            self.raw(key, value)
        } else {
            self.raw(key, "null")
        }
    }

    emit_integers!(
        emit_u8: u8, emit_i8: i8, emit_u16: u16, emit_i16: i16, emit_u32: u32, emit_i32: i32,
        emit_u64: u64, emit_i64: i64, emit_u128: u128, emit_i128: i128,
        emit_usize: usize, emit_isize: isize,
    );
}

/// Appends `value` as a JSON string.
fn write_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    escape_into(out, value);
    out.push(b'"');
}

/// Appends formatted `args` as a JSON string, escaping as it goes (no intermediate `String`).
fn write_arguments(out: &mut Vec<u8>, args: &fmt::Arguments<'_>) {
    out.push(b'"');
    match args.as_str() {
        Some(text) => escape_into(out, text),
        None => {
            struct Escaping<'a>(&'a mut Vec<u8>);
            impl fmt::Write for Escaping<'_> {
                fn write_str(&mut self, s: &str) -> fmt::Result {
                    escape_into(self.0, s);
                    Ok(())
                }
            }
            // Writing into memory fails only if a `Display` impl reports an error; what it
            // wrote so far stays.
            let _ = fmt::write(&mut Escaping(out), *args);
        }
    }
    out.push(b'"');
}

/// Appends `text` with JSON's escapes: quote, backslash and control characters. Everything else,
/// including non-ASCII UTF-8, is copied as is, in runs.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Most text needs no escape at all: look for one eight bytes at a time first.
    let clean = bytes
        .chunks_exact(8)
        .take_while(|chunk| {
            let word = u64::from_le_bytes((*chunk).try_into().unwrap_or([0; 8]));
            !needs_escape(word)
        })
        .count()
        * 8;
    out.extend_from_slice(&bytes[..clean]);
    let bytes = &bytes[clean..];
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..at]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether any of the eight bytes in `word` is a control character, `"` or `\\` (the classic
/// "has a zero byte" and "has a byte below n" bit tricks; a false alarm only costs the slow path).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
    below_space
        || has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
}

/// Appends `value` as at least two decimal digits.
fn push_two(out: &mut Vec<u8>, value: u64) {
    if value >= 100 {
        let _ = write!(out, "{value}");
        return;
    }
    // Both below 10, so the casts cannot truncate.
    out.push(b'0' + (value / 10) as u8);
    out.push(b'0' + (value % 10) as u8);
}

/// Appends `at` as RFC 3339 in UTC with nanoseconds (`2026-11-29T08:05:48.155341022Z`).
pub(crate) fn write_timestamp(out: &mut Vec<u8>, at: SystemTime) {
    // A clock before 1970 is written as the epoch.
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    push_two(out, year / 100);
    push_two(out, year % 100);
    out.push(b'-');
    push_two(out, month);
    out.push(b'-');
    push_two(out, day);
    out.push(b'T');
    push_two(out, of_day / 3600);
    out.push(b':');
    push_two(out, of_day % 3600 / 60);
    out.push(b':');
    push_two(out, of_day % 60);
    out.push(b'.');
    let mut nanos = since.subsec_nanos();
    let mut digits = [b'0'; 9];
    for digit in digits.iter_mut().rev() {
        // A single decimal digit: the cast cannot truncate.
        *digit = b'0' + (nanos % 10) as u8;
        nanos /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn timestamp(seconds: u64, nanos: u32) -> String {
        let mut out = Vec::new();
        write_timestamp(&mut out, UNIX_EPOCH + Duration::new(seconds, nanos));
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_nanoseconds() {
        assert_eq!(timestamp(0, 0), "1970-01-01T00:00:00.000000000Z");
        // Leap days, the end of a leap year, a century that is no leap year and one that is.
        assert_eq!(timestamp(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            timestamp(1_735_689_599, 999_999_999),
            "2024-12-31T23:59:59.999999999Z"
        );
        assert_eq!(
            timestamp(4_107_542_400, 0),
            "2100-03-01T00:00:00.000000000Z"
        );
        assert_eq!(
            timestamp(1_795_940_748, 155_341_022),
            "2026-11-29T08:25:48.155341022Z"
        );
    }

    fn escaped(text: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, text);
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
    }

    #[test]
    fn strings_escape_what_json_requires_and_keep_the_rest() {
        assert_eq!(escaped("plain /v1/x"), r#""plain /v1/x""#);
        assert_eq!(
            escaped("a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{1f}"),
            r#""a\"b\\c\nd\re\tf\bg\fh\u0001i\u001f""#
        );
        assert_eq!(escaped("grüße ✓"), "\"grüße ✓\"");
        // Escapes at every position of an eight-byte block, and past the last whole block.
        for at in 0..19 {
            for special in ["\"", "\\", "\n", "\u{1}", "\u{1f}"] {
                let mut text = "abcdefghijklmnopqr".to_owned();
                text.insert_str(at, special);
                let parsed: String = serde_json::from_str(&escaped(&text)).expect("valid JSON");
                assert_eq!(parsed, text, "{text:?}");
            }
        }
        // Bytes just around the ones that need escaping do not.
        assert_eq!(escaped(" !#[]~\u{7f}é"), "\" !#[]~\u{7f}é\"");
        for text in ["", "\"", "\u{0}\u{7f}\u{80}", "x\\\"y", "\u{2028}"] {
            let parsed: String = serde_json::from_str(&escaped(text)).expect("valid JSON");
            assert_eq!(parsed, text);
        }
    }
}
