//! Logging: console and a UTF-8 log file (`backend.log` in the data directory, as
//! the prototype had), level from `RUST_LOG` (default `info`).
//!
//! Lines are formatted once and appended to an in-memory buffer; a background thread
//! writes the buffer out every 100 ms (and a full buffer is written at once). A burst
//! of requests costs a copy per line, not a system call or a thread wake-up per line.
//! At most the last 100 ms of lines are lost if the process is killed.
//!
//! The file is rotated daily and by size (`backend.log.1` … `backend.log.N`, the
//! oldest deleted), so a flood of requests cannot fill the disk. Every field value
//! is written with its control characters escaped: text from outside (ComfyUI's
//! error messages echo user input) can neither forge a log line nor colour a
//! terminal.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use rolling_file::{BasicRollingFileAppender, RollingConditionBasic};
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How often buffered lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written out at once.
const FLUSH_AT: usize = 64 * 1024;

/// Where lines go: the log file, and the console too.
struct Outputs {
    file: BasicRollingFileAppender,
    console: bool,
    buf: Vec<u8>,
}

impl Outputs {
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        // A log that cannot be written must not take the service down.
        let _ = self.file.write_all(&self.buf);
        let _ = self.file.flush();
        if self.console {
            let _ = std::io::stdout().write_all(&self.buf);
        }
        self.buf.clear();
    }
}

/// Each line's time, in the shape tracing's own timer writes
/// (`2026-12-04T13:08:12.123456Z`), without its general formatter: a line per
/// request made that formatter a noticeable part of a request's cost.
struct UtcMicros;

impl tracing_subscriber::fmt::time::FormatTime for UtcMicros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let t = crate::clock::iso8601(crate::clock::now_micros());
        w.write_str(t.strip_suffix("+00:00").unwrap_or(&t))?;
        w.write_char('Z')
    }
}

/// A shared, buffered log writer.
#[derive(Clone)]
struct Buffered(Arc<Mutex<Outputs>>);

/// One line being written.
struct Line<'a>(MutexGuard<'a, Outputs>);

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.buf.extend_from_slice(bytes);
        if self.0.buf.len() >= FLUSH_AT {
            self.0.write_out();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// Keeps the log flushing; writes out what is left when dropped.
pub struct Telemetry {
    outputs: Arc<Mutex<Outputs>>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Ok(mut o) = self.outputs.lock() {
            o.write_out();
        }
    }
}

/// How the log file is kept.
#[derive(Clone, Copy, Debug)]
pub struct LogRotation {
    /// Rotate when the file reaches this many bytes (and daily in any case).
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

/// Installs the global subscriber writing to the console and to `log_file`.
pub fn init(log_file: &Path, rotation: LogRotation) -> anyhow::Result<Telemetry> {
    let dir = log_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create log directory {}", dir.display()))?;
    let file = BasicRollingFileAppender::new(
        log_file,
        RollingConditionBasic::new()
            .daily()
            .max_size(rotation.max_bytes),
        rotation.keep.max(1),
    )
    .with_context(|| format!("cannot open log file {}", log_file.display()))?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let terminal = std::io::stdout().is_terminal();
    // On a terminal the console gets its own (coloured, unbuffered) formatter; the
    // file still gets plain text.
    let outputs = Arc::new(Mutex::new(Outputs {
        file,
        console: !terminal,
        buf: Vec::with_capacity(FLUSH_AT),
    }));
    let plain = tracing_subscriber::fmt::layer()
        .with_timer(UtcMicros)
        .fmt_fields(EscapedFields)
        .with_writer(Buffered(outputs.clone()))
        .with_ansi(false);
    let installed = if terminal {
        registry
            .with(plain)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_timer(UtcMicros)
                    .fmt_fields(EscapedFields)
                    .with_writer(std::io::stdout)
                    .with_ansi(true),
            )
            .try_init()
    } else {
        registry.with(plain).try_init()
    };
    installed.context("a logger is already installed")?;
    let weak = Arc::downgrade(&outputs);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            while let Some(o) = weak.upgrade() {
                if let Ok(mut o) = o.lock() {
                    o.write_out();
                }
                drop(o);
                std::thread::sleep(FLUSH_EVERY);
            }
        })
        .context("cannot start the log writer")?;
    Ok(Telemetry { outputs })
}

/// Formats an event's fields like tracing's default (`message key=value …`), with
/// every control character (newlines and terminal escapes included) and every
/// bidirectional override escaped, whoever wrote the value.
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    /// Writes `name=value` (or the message alone), the value escaped as it is
    /// formatted: no copy of it is made.
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let name = field.name();
        self.result = if name == "message" {
            self.writer.write_str(sep)
        } else {
            write!(self.writer, "{sep}{}=", name.trim_start_matches("r#"))
        }
        .and_then(|()| fmt::write(&mut Escaping(&mut self.writer), value));
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"))
        } else {
            self.write(field, format_args!("{value:?}"))
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"))
    }
}

/// A writer that escapes control characters (newlines and terminal escapes
/// included) and bidirectional overrides in what passes through it.
struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(needs_escape) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().expect("a char at a char boundary");
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text with its control characters written as escapes (`\n`, `\u{1b}`), for
/// values logged outside tracing's fields.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Write::write_str(&mut Escaping(f), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn escaped_text_keeps_what_is_printable() {
        assert_eq!(
            Escaped("a\tb\u{1b}[0m\n\u{202e}é").to_string(),
            "a\\tb\\u{1b}[0m\\n\\u{202e}é"
        );
        assert_eq!(Escaped("plain text").to_string(), "plain text");
    }

    #[test]
    fn values_from_outside_cannot_forge_lines_or_colour_the_terminal() {
        let out = Capture::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let evil = "ckpt\n2026-11-28T00:00:00Z  INFO studio: forged line\u{1b}[31mred\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(error = %evil, name = evil, "job failed: {evil}");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{text:?}"
        );
        assert!(text.contains("forged line\\u{1b}[31mred"), "{text}");
        assert!(text.contains("error=ckpt\\n2026"), "{text}");
        assert!(text.contains("job failed: ckpt\\n"), "{text}");
    }
}
