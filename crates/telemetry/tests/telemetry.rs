//! Log lines and metric rendering, as an operator sees them.

use std::io::Write;
use std::sync::{Arc, Mutex};

use maas_telemetry::logging::{LogFormat, LogLevel, LogSettings, build_logger};
use maas_telemetry::names;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("buffer lock").clone()).expect("utf-8 logs")
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_level_message_and_fields() {
    let buffer = Buffer::default();
    let (logger, guard) = build_logger(&LogSettings::default(), buffer.clone());
    slog::info!(logger, "request"; "request_id" => "abc", "status" => 201);
    slog::warn!(logger, "second");
    drop(guard);

    let text = buffer.text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["msg"], "request");
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[0]["request_id"], "abc");
    assert_eq!(lines[0]["status"], 201);
    assert_eq!(lines[0]["service"], "maas-gateway");
    assert!(lines[0]["ts"].is_string());
    assert_eq!(lines[1]["level"], "WARN");
}

#[test]
fn json_fields_keep_their_types_and_odd_text_survives() {
    let buffer = Buffer::default();
    let (logger, guard) = build_logger(&LogSettings::default(), buffer.clone());
    let error: Option<&str> = None;
    let path = "/v1/models/a \"b\"\\c\n/invoke";
    slog::error!(logger, "upstream {} failed: {}", "m\"1", 502;
        "path" => path, "latency_ms" => 0.065_472, "status" => 502_u16, "delta" => -3_i64,
        "big" => u64::MAX, "cached" => false, "error" => error, "nan" => f64::NAN,
        "grade" => 'é', "reason" => format_args!("{}\t{}", "x", 1));
    drop(guard);

    let text = buffer.text();
    let line = text.lines().next().expect("one line");
    assert!(
        line.starts_with(r#"{"msg":"upstream m\"1 failed: 502","level":"ERRO","ts":""#),
        "message, level and time come first: {line}"
    );
    let parsed: serde_json::Value = serde_json::from_str(line).expect("the line is JSON");
    let ts = parsed["ts"].as_str().expect("ts is a string");
    assert!(
        ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "RFC 3339 UTC with nanoseconds: {ts}"
    );
    let expected = serde_json::json!({
        "path": path, "latency_ms": 0.065_472, "status": 502, "delta": -3, "big": u64::MAX,
        "cached": false, "error": null, "nan": null, "grade": "é", "reason": "x\t1",
        "service": "maas-gateway",
    });
    for (key, value) in expected.as_object().expect("an object") {
        assert_eq!(&parsed[key], value, "{key}");
    }
}

#[test]
fn lines_below_the_configured_level_are_not_written() {
    let buffer = Buffer::default();
    let settings = LogSettings {
        level: LogLevel::Warning,
        format: LogFormat::Json,
    };
    let (logger, guard) = build_logger(&settings, buffer.clone());
    slog::info!(logger, "quiet");
    slog::error!(logger, "loud");
    drop(guard);
    let text = buffer.text();
    assert!(!text.contains("quiet"));
    assert!(text.contains("loud"));
}

#[test]
fn pretty_format_is_not_json() {
    let buffer = Buffer::default();
    let settings = LogSettings {
        format: LogFormat::Pretty,
        ..LogSettings::default()
    };
    let (logger, guard) = build_logger(&settings, buffer.clone());
    slog::info!(logger, "hello"; "port" => 8000);
    drop(guard);
    let text = buffer.text();
    assert!(
        text.contains("hello") && text.contains("port: 8000"),
        "{text}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
}

#[test]
fn settings_reject_unknown_formats_and_levels_by_name() {
    let err = serde_json::from_str::<LogSettings>(r#"{"format":"xml"}"#).expect_err("xml");
    assert!(err.to_string().contains("xml"), "{err}");
    let err = serde_json::from_str::<LogSettings>(r#"{"level":"loud"}"#).expect_err("loud");
    assert!(err.to_string().contains("loud"), "{err}");
}

#[test]
fn histograms_render_with_buckets_and_build_info_is_set() {
    let handle = maas_telemetry::metrics::install_recorder("9.9.9").expect("recorder");
    let again = maas_telemetry::metrics::install_recorder("9.9.9").expect("idempotent");
    metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS, "route" => "/x").record(0.003);
    handle.run_upkeep();
    let text = again.render();
    assert!(
        text.contains("http_request_duration_seconds_bucket{route=\"/x\",le=\"0.005\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("maas_build_info{version=\"9.9.9\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE http_request_duration_seconds histogram"),
        "{text}"
    );
}

#[test]
fn lines_from_many_threads_arrive_whole_and_all_of_them() {
    let buffer = Buffer::default();
    let (logger, guard) = build_logger(&LogSettings::default(), buffer.clone());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let logger = logger.clone();
            std::thread::spawn(move || {
                for i in 0..2_000 {
                    slog::info!(logger, "request"; "thread" => t, "i" => i, "pad" => "x".repeat(100));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("logging thread");
    }
    drop(guard);
    let text = buffer.text();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("each line whole JSON");
        seen.insert((value["thread"].as_u64(), value["i"].as_u64()));
    }
    assert_eq!(seen.len(), 8_000, "every line written once");
    assert_eq!(text.lines().count(), 8_000);
}

#[test]
fn lines_reach_the_sink_while_the_logger_runs() {
    let buffer = Buffer::default();
    let (logger, guard) = build_logger(&LogSettings::default(), buffer.clone());
    slog::info!(logger, "early");
    // Written by the background thread on its next tick, not only at exit.
    let mut written = false;
    for _ in 0..500 {
        if buffer.text().contains("early") {
            written = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(written, "the line was not written within 5 s");
    drop(guard);
}
