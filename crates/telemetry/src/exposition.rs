//! Series written at scrape time in the Prometheus text format, beside what the recorder
//! renders: for values whose series must go when what they describe goes (the recorder keeps
//! every series it was ever given, and the exporter's idle timeout would also drop gauges that
//! threads hold handles to, such as `http_requests_in_flight`).
//!
//! ```
//! use maas_telemetry::exposition::GaugeFamily;
//!
//! let mut text = String::new();
//! let mut family = GaugeFamily::new(&mut text, "queue_depth", "Items waiting");
//! family.sample(&[("queue", "a\"b")], 3.0);
//! assert_eq!(
//!     text,
//!     "# HELP queue_depth Items waiting\n# TYPE queue_depth gauge\nqueue_depth{queue=\"a\\\"b\"} 3\n"
//! );
//! ```

use std::fmt::Write as _;

/// A gauge's series appended to a text in the exposition format: its `# HELP` and `# TYPE`
/// lines before the first sample (none at all without samples), then one line per sample.
#[derive(Debug)]
pub struct GaugeFamily<'t> {
    text: &'t mut String,
    name: &'static str,
    help: &'static str,
    started: bool,
}

impl<'t> GaugeFamily<'t> {
    /// The family `name` (a metric name from [`crate::names`]), described by `help` (one line),
    /// appended to `text` (which gets a line end first if it lacks one).
    pub fn new(text: &'t mut String, name: &'static str, help: &'static str) -> Self {
        Self {
            text,
            name,
            help,
            started: false,
        }
    }

    /// One series: its labels, in order, and its value.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        if !self.started {
            self.started = true;
            if !self.text.is_empty() && !self.text.ends_with('\n') {
                self.text.push('\n');
            }
            let _ = writeln!(self.text, "# HELP {} {}", self.name, self.help);
            let _ = writeln!(self.text, "# TYPE {} gauge", self.name);
        }
        self.text.push_str(self.name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_into(self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        write_value(self.text, value);
        self.text.push('\n');
    }
}

/// A label value as the format escapes it: backslash, double quote and line feed.
fn escape_into(text: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => text.push_str("\\\\"),
            '"' => text.push_str("\\\""),
            '\n' => text.push_str("\\n"),
            c => text.push(c),
        }
    }
}

/// A sample value as the format spells it (whole numbers without a fraction, as the recorder
/// writes them).
fn write_value(text: &mut String, value: f64) {
    let _ = if value.is_nan() {
        write!(text, "NaN")
    } else if value.is_infinite() {
        write!(text, "{}", if value > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        write!(text, "{value}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_samples_write_nothing_and_values_are_spelled_as_prometheus_reads_them() {
        let mut text = String::from("a 1");
        GaugeFamily::new(&mut text, "g", "h");
        assert_eq!(text, "a 1");
        let mut family = GaugeFamily::new(&mut text, "g", "h");
        family.sample(&[], 0.0);
        family.sample(&[("l", "x\\y\nz"), ("m", "")], 0.5);
        family.sample(&[("l", "n")], f64::NAN);
        family.sample(&[("l", "i")], f64::NEG_INFINITY);
        assert_eq!(
            text,
            "a 1\n# HELP g h\n# TYPE g gauge\ng 0\ng{l=\"x\\\\y\\nz\",m=\"\"} 0.5\ng{l=\"n\"} NaN\ng{l=\"i\"} -Inf\n"
        );
    }
}
