//! Logging setup: tracing, written synchronously (no logging thread: the
//! supervisor forks) through the host's stderr buffer (`host_output`), so
//! log lines and forwarded worker lines never interleave.
//!
//! Level: `--log-level`, else `LRPM_LOG` (env-filter syntax), else info.
//! Format: text, or JSON (one object per line: timestamp, level, message,
//! and the job, name, slot and pid of the process the event is about).
//! Text lines escape control characters in every field (`escape::controls`),
//! so a job id or name can never forge a line or reach a terminal raw.

#![forbid(unsafe_code)]

use std::io::IsTerminal;

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};
use tracing_subscriber::EnvFilter;

use crate::escape;

use crate::host_output::LogWriter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The format logging was set up with (worker output follows it).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).map_err(|e| format!("--log-level {level}: {e}"))?,
        None => EnvFilter::try_from_env("LRPM_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = FORMAT.set(format);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(LogWriter).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(EscapedFields).with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
    };
    Ok(())
}

/// The process a log line is about: in JSON logs, its job id, name, slot
/// and pid are fields of their own (text logs say them in the message).
#[derive(Debug, Default, Clone, Copy)]
pub struct Subject<'a> {
    pub job: Option<&'a str>,
    pub name: Option<&'a str>,
    pub slot: Option<u32>,
    pub pid: Option<i32>,
}

/// Logs one line at a level chosen at run time, with its subject's fields in JSON.
pub fn log(level: crate::farm::LogLevel, message: &str, subject: Subject<'_>) {
    use crate::farm::LogLevel;
    let fields = format() == LogFormat::Json;
    let Subject { job, name, slot, pid } = subject;
    macro_rules! at {
        ($level:ident) => {
            if fields {
                tracing::$level!(job, name, slot, pid, "{message}")
            } else {
                tracing::$level!("{message}")
            }
        };
    }
    match level {
        LogLevel::Info => at!(info),
        LogLevel::Warn => at!(warn),
        LogLevel::Error => at!(error),
    }
}

/// A line with a block of lines after it (a worker's PHP stack): in text
/// logs the block's lines follow the message, each escaped; in JSON it is
/// the `block` field.
pub fn log_block(level: crate::farm::LogLevel, message: &str, block: &str, subject: Subject<'_>) {
    use crate::farm::LogLevel;
    let fields = format() == LogFormat::Json;
    let Subject { job, name, slot, pid } = subject;
    macro_rules! at {
        ($level:ident) => {
            if fields {
                tracing::$level!(job, name, slot, pid, block = %block, "{message}")
            } else {
                tracing::$level!(block = %block, "{message}")
            }
        };
    }
    match level {
        LogLevel::Info => at!(info),
        LogLevel::Warn => at!(warn),
        LogLevel::Error => at!(error),
    }
}

/// The field of an event that carries a block of lines the host built and
/// escaped itself (the SIGUSR1 report): written after the message, its
/// line breaks kept.
pub const BLOCK_FIELD: &str = "block";

/// Text logs' fields: `message` as is, others as `name=value`, every value
/// with its control characters escaped; `BLOCK_FIELD` on lines of its own.
struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor { writer: &mut writer, written: false, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'writer> {
    writer: &'a mut Writer<'writer>,
    written: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let text = format!("{value:?}");
        let separator = if self.written { " " } else { "" };
        self.written = true;
        self.result = match field.name() {
            "message" => write!(self.writer, "{separator}{}", escape::controls(&text)),
            BLOCK_FIELD => write!(self.writer, "\n{}", escape::controls_keeping_lines(&text)),
            name => write!(self.writer, "{separator}{name}={}", escape::controls(&text)),
        };
    }
}
