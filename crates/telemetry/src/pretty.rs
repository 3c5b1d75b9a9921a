//! The human-readable drain (`log.format = "pretty"`): `ts LEVEL msg, key: value, …`, one record
//! per line.
//!
//! Every control character of the message and of each value (a newline above all) is written
//! escaped (`\n`, `\r`, `\t`, `\u{1b}`, and `\\` for a backslash), as the JSON drain does, so a
//! value that came from a client (a path, a header) cannot end its line and forge another.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::time::SystemTime;

use slog::{Drain, Key, OwnedKVList, Record, Serializer};

/// A slog drain writing one human-readable line per record to `W`. Wrap it in a `Mutex` to share
/// it between threads.
pub struct PrettyLines<W: Write> {
    out: RefCell<W>,
    line: RefCell<String>,
}

impl<W: Write> PrettyLines<W> {
    /// A drain writing to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out: RefCell::new(out),
            line: RefCell::new(String::with_capacity(256)),
        }
    }
}

impl<W: Write> Drain for PrettyLines<W> {
    type Ok = ();
    type Err = std::io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> std::io::Result<()> {
        let mut line = self.line.borrow_mut();
        line.clear();
        let mut ts = Vec::with_capacity(30);
        crate::json::write_timestamp(&mut ts, SystemTime::now());
        line.push_str(&String::from_utf8_lossy(&ts));
        line.push(' ');
        line.push_str(record.level().as_short_str());
        line.push(' ');
        Escaped(&mut line)
            .write_fmt(*record.msg())
            .map_err(std::io::Error::other)?;
        let mut fields = Fields(&mut line);
        // As the JSON drain: the record's values, then the logger's.
        slog::KV::serialize(&record.kv(), record, &mut fields).map_err(std::io::Error::other)?;
        slog::KV::serialize(values, record, &mut fields).map_err(std::io::Error::other)?;
        line.push('\n');
        self.out.borrow_mut().write_all(line.as_bytes())
    }
}

/// Writes what it is given with control characters escaped.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            match c {
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                '\\' => self.0.push_str("\\\\"),
                c if c.is_control() => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// Appends `, key: value` for each field, escaped.
struct Fields<'a>(&'a mut String);

impl Serializer for Fields<'_> {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments<'_>) -> slog::Result {
        let mut out = Escaped(self.0);
        out.write_str(", ")?;
        out.write_str(key)?;
        out.write_str(": ")?;
        out.write_fmt(*value)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use slog::{Logger, info, o};

    use super::*;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(write: impl FnOnce(&Logger)) -> String {
        let sink = Shared::default();
        let drain = Mutex::new(PrettyLines::new(sink.clone())).fuse();
        let log = Logger::root(drain, o!("service" => "maas-gateway"));
        write(&log);
        let bytes = sink.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn a_line_has_the_level_the_message_and_every_field() {
        let out = logged(|log| info!(log, "request"; "status" => 200, "path" => "/health"));
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        let (_ts, rest) = out.split_once(' ').expect("a timestamp");
        assert_eq!(
            rest,
            "INFO request, path: /health, status: 200, service: maas-gateway\n"
        );
    }

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let forged = "/x\n2026-01-01T00:00:00Z CRIT admin logged in\r\t\u{1b}[31m \\";
        let out = logged(|log| info!(log, "msg\nwith a newline"; "path" => forged));
        assert_eq!(out.matches('\n').count(), 1, "one line: {out:?}");
        assert!(out.contains("msg\\nwith a newline"), "{out}");
        assert!(
            out.contains(r"path: /x\n2026-01-01T00:00:00Z CRIT admin logged in\r\t\u{1b}[31m \\"),
            "{out}"
        );
    }
}
