//! Structured logging with slog: JSON lines for machines, a coloured-free compact format for humans,
//! formatted by the caller and written in batches by one background thread.

use std::io::Write;

use serde::{Deserialize, Serialize};
use slog::{Drain, Logger, o};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (the default; what log shippers want).
    #[default]
    Json,
    /// Human-readable lines.
    Pretty,
}

/// The lowest level that is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation (the default).
    #[default]
    Info,
    /// Something unexpected that the gateway survived. `warn` is accepted too (as `RUST_LOG` and
    /// most loggers spell it).
    #[serde(alias = "warn")]
    Warning,
    /// A failed operation.
    Error,
    /// Only the worst.
    Critical,
}

impl LogLevel {
    fn slog(self) -> slog::Level {
        match self {
            Self::Trace => slog::Level::Trace,
            Self::Debug => slog::Level::Debug,
            Self::Info => slog::Level::Info,
            Self::Warning => slog::Level::Warning,
            Self::Error => slog::Level::Error,
            Self::Critical => slog::Level::Critical,
        }
    }

    fn log(self) -> log::Level {
        match self {
            Self::Trace => log::Level::Trace,
            Self::Debug => log::Level::Debug,
            Self::Info => log::Level::Info,
            Self::Warning => log::Level::Warn,
            Self::Error | Self::Critical => log::Level::Error,
        }
    }
}

/// The `log` section of the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Lowest level written (`info` by default).
    pub level: LogLevel,
    /// `json` (default) or `pretty`.
    pub format: LogFormat,
}

/// Keeps the log writer thread running; drop it last, on exit, to flush the final lines.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    // Field order matters: the bridge is released before the writer thread is flushed and joined.
    _bridge: Option<slog_scope::GlobalLoggerGuard>,
    _writer: WriterGuard,
}

/// Lines gathered past this size wake the writer thread before its next tick.
const WAKE_AT_BYTES: usize = 64 * 1024;
/// Lines gathered past this size make the logging caller wait for the writer (a stuck sink
/// slows requests down rather than growing memory without bound or losing lines).
const WAIT_AT_BYTES: usize = 8 * 1024 * 1024;
/// How often the writer thread writes what was gathered.
pub const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// What the logging callers and the writer thread share.
#[derive(Default)]
struct Gathered {
    lines: std::sync::Mutex<Vec<u8>>,
    /// Signalled when lines pass [`WAKE_AT_BYTES`] and at stop.
    wake: std::sync::Condvar,
    /// Signalled after each write, for callers waiting at [`WAIT_AT_BYTES`].
    written: std::sync::Condvar,
    stop: std::sync::atomic::AtomicBool,
}

/// The `io::Write` the formatters write into: an append to memory, no system call and no
/// wake-up per line (a wake-up per access-log line of another thread was a measurable share of
/// the proxy's tail latency on a busy 2-core machine).
///
/// Both drains ([`crate::json::JsonLines`], [`crate::pretty::PrettyLines`]) write each record
/// as one finished line, which goes to the shared buffer as it is. A formatter that wrote a
/// record in pieces would gather them in `record`, which only this writer touches (the drain's mutex serialises the
/// records), and hands them over a line at a time: one lock of the shared buffer per record
/// either way.
enum GatherWriter {
    Gather {
        shared: std::sync::Arc<Gathered>,
        record: Vec<u8>,
    },
    /// The writer thread could not be started: lines go straight to the sink.
    Direct(Box<dyn Write + Send>),
}

/// Appends `record` to the shared lines and empties it; waits while the writer thread is more
/// than [`WAIT_AT_BYTES`] behind.
fn hand_over(shared: &Gathered, record: &[u8]) -> std::io::Result<()> {
    let mut lines = shared
        .lines
        .lock()
        .map_err(|_| std::io::Error::other("log buffer poisoned"))?;
    while lines.len() >= WAIT_AT_BYTES && !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
        shared.wake.notify_one();
        lines = shared
            .written
            .wait_timeout(lines, WRITE_INTERVAL)
            .map_err(|_| std::io::Error::other("log buffer poisoned"))?
            .0;
    }
    lines.extend_from_slice(record);
    if lines.len() >= WAKE_AT_BYTES {
        shared.wake.notify_one();
    }
    Ok(())
}

impl Write for GatherWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Direct(sink) => sink.write(buf),
            // A whole line at once: no copy into `record`.
            Self::Gather { shared, record } if record.is_empty() && buf.ends_with(b"\n") => {
                hand_over(shared, buf)?;
                Ok(buf.len())
            }
            Self::Gather { shared, record } => {
                record.extend_from_slice(buf);
                // A record ends with its newline (JSON escapes those inside values; a pretty
                // line with one inside is handed over in two parts, in order).
                if buf.ends_with(b"\n") {
                    hand_over(shared, record)?;
                    record.clear();
                }
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            // The writer thread flushes the sink after each write.
            Self::Gather { shared, record } if !record.is_empty() => {
                hand_over(shared, record)?;
                record.clear();
                Ok(())
            }
            Self::Gather { .. } => Ok(()),
            Self::Direct(sink) => sink.flush(),
        }
    }
}

impl Drop for GatherWriter {
    fn drop(&mut self) {
        if let Self::Gather { shared, record } = self
            && !record.is_empty()
        {
            // Nowhere to report it; only a record without its newline can be left here.
            let _ = hand_over(shared, record);
            record.clear();
        }
    }
}

/// Stops the writer thread (which writes what is left first) and waits for it.
struct WriterGuard {
    shared: std::sync::Arc<Gathered>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the thread that writes gathered lines to `sink` every [`WRITE_INTERVAL`] (sooner
/// when [`WAKE_AT_BYTES`] have gathered), each time in one `write_all` and a flush.
fn start_writer<W>(sink: W) -> (GatherWriter, WriterGuard)
where
    W: Write + Send + 'static,
{
    let shared = std::sync::Arc::new(Gathered::default());
    let theirs = std::sync::Arc::clone(&shared);
    // Handed to the thread through a slot, so it can be taken back if the thread cannot start.
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(sink)));
    let thread_slot = std::sync::Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("maas-log".into())
        .spawn(move || {
            let Some(mut sink) = thread_slot.lock().ok().and_then(|mut s| s.take()) else {
                return;
            };
            let mut batch = Vec::new();
            loop {
                let stopping = {
                    let Ok(mut lines) = theirs.lines.lock() else {
                        return;
                    };
                    let stopping = theirs.stop.load(std::sync::atomic::Ordering::Relaxed);
                    if !stopping && lines.len() < WAKE_AT_BYTES {
                        lines = match theirs.wake.wait_timeout(lines, WRITE_INTERVAL) {
                            Ok((lines, _)) => lines,
                            Err(_) => return,
                        };
                    }
                    std::mem::swap(&mut *lines, &mut batch);
                    stopping
                };
                theirs.written.notify_all();
                if !batch.is_empty() {
                    // Nowhere to report a failed log write; the next batch tries again.
                    let _ = sink.write_all(&batch).and_then(|()| sink.flush());
                    batch.clear();
                }
                if stopping {
                    return;
                }
            }
        });
    match spawned {
        Ok(thread) => (
            GatherWriter::Gather {
                shared: std::sync::Arc::clone(&shared),
                record: Vec::with_capacity(1024),
            },
            WriterGuard {
                shared,
                thread: Some(thread),
            },
        ),
        Err(error) => {
            eprintln!("cannot start the log writer thread ({error}); writing log lines directly");
            let sink = slot.lock().ok().and_then(|mut s| s.take());
            let writer = match sink {
                Some(sink) => GatherWriter::Direct(Box::new(sink)),
                None => GatherWriter::Direct(Box::new(std::io::sink())),
            };
            (
                writer,
                WriterGuard {
                    shared,
                    thread: None,
                },
            )
        }
    }
}

/// Builds a logger writing to `sink` (stdout in production, a buffer in tests).
///
/// A line is formatted by the caller into memory; a background thread writes what has gathered
/// every [`WRITE_INTERVAL`] (50 ms), in one write. The returned guard writes the rest when
/// dropped. Nothing is dropped when the writer falls behind: past 8 MiB of waiting lines the
/// caller waits instead, so no request's access line is ever lost. Should the thread fail to
/// start, lines are written directly by the callers.
pub fn build_logger<W>(settings: &LogSettings, sink: W) -> (Logger, LogGuard)
where
    W: Write + Send + 'static,
{
    let (writer, guard) = start_writer(sink);
    let level = settings.level.slog();
    let logger = match settings.format {
        LogFormat::Json => {
            let drain = crate::json::JsonLines::new(writer).fuse();
            let drain = std::sync::Mutex::new(drain).ignore_res();
            Logger::root(
                slog::LevelFilter::new(drain, level).fuse(),
                o!("service" => "maas-gateway"),
            )
        }
        LogFormat::Pretty => {
            let drain = crate::pretty::PrettyLines::new(writer).fuse();
            let drain = std::sync::Mutex::new(drain).ignore_res();
            Logger::root(
                slog::LevelFilter::new(drain, level).fuse(),
                o!("service" => "maas-gateway"),
            )
        }
    };
    (
        logger,
        LogGuard {
            _bridge: None,
            _writer: guard,
        },
    )
}

/// Builds the process logger on stdout and routes the `log` crate (actix-web's own messages)
/// into it. Call once, at start-up; keep the guard until exit.
pub fn init_process_logger(settings: &LogSettings) -> (Logger, LogGuard) {
    init_process_logger_on(settings, std::io::stdout())
}

/// As [`init_process_logger`], writing to `sink` (e.g. stderr for commands whose stdout is
/// their result).
pub fn init_process_logger_on<W>(settings: &LogSettings, sink: W) -> (Logger, LogGuard)
where
    W: Write + Send + 'static,
{
    let (logger, mut guard) = build_logger(settings, sink);
    guard._bridge = Some(slog_scope::set_global_logger(logger.clone()));
    // Fails only if another `log` backend was installed first; the slog one is then not needed.
    let _ = slog_stdlog::init_with_level(settings.level.log());
    (logger, guard)
}

/// A logger that writes nothing, for tests and embedders that bring no logger.
pub fn discard_logger() -> Logger {
    Logger::root(slog::Discard, o!())
}
