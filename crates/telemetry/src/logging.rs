//! Structured logging with slog: JSON lines for machines, a coloured-free compact format for humans.

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
    /// Something unexpected that the gateway survived.
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

/// Keeps the asynchronous log writer running; drop it last, on exit, to flush the final lines.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    // Field order matters: the bridge is released before the writer thread is flushed and joined.
    _bridge: Option<slog_scope::GlobalLoggerGuard>,
    _writer: slog_async::AsyncGuard,
}

/// Builds a logger writing to `sink` (stdout in production, a buffer in tests).
///
/// Lines are written on a background thread; the returned guard flushes them when dropped.
/// Nothing is dropped when the channel is full: the caller waits instead, so no request's access
/// line is ever lost.
pub fn build_logger<W>(settings: &LogSettings, sink: W) -> (Logger, LogGuard)
where
    W: Write + Send + 'static,
{
    let (logger, writer) = match settings.format {
        LogFormat::Json => {
            let drain = slog_json::Json::new(sink)
                .set_newlines(true)
                .add_default_keys()
                .build()
                .fuse();
            async_logger(settings, drain)
        }
        LogFormat::Pretty => {
            let decorator = slog_term::PlainDecorator::new(sink);
            let drain = slog_term::FullFormat::new(decorator).build().fuse();
            async_logger(settings, drain)
        }
    };
    (
        logger,
        LogGuard {
            _bridge: None,
            _writer: writer,
        },
    )
}

fn async_logger<D>(settings: &LogSettings, drain: D) -> (Logger, slog_async::AsyncGuard)
where
    D: Drain<Ok = (), Err = slog::Never> + Send + 'static,
{
    let drain = slog::LevelFilter::new(drain, settings.level.slog()).fuse();
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(16 * 1024)
        .overflow_strategy(slog_async::OverflowStrategy::Block)
        .thread_name("maas-log".into())
        .build_with_guard();
    (
        Logger::root(drain.fuse(), o!("service" => "maas-gateway")),
        guard,
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
