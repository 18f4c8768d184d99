//! Logging: console and a UTF-8 log file (`backend.log` in the data directory, as
//! the prototype had), level from `RUST_LOG` (default `info`).
//!
//! Lines are formatted once and appended to an in-memory buffer; a background thread
//! writes the buffer out every 100 ms (and a full buffer is written at once). A burst
//! of requests costs a copy per line, not a system call or a thread wake-up per line.
//! At most the last 100 ms of lines are lost if the process is killed.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How often buffered lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written out at once.
const FLUSH_AT: usize = 64 * 1024;

/// Where lines go: the log file, and the console too.
struct Outputs {
    file: File,
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
        if self.console {
            let _ = std::io::stdout().write_all(&self.buf);
        }
        self.buf.clear();
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

/// Installs the global subscriber writing to the console and to `log_file`.
pub fn init(log_file: &Path) -> anyhow::Result<Telemetry> {
    let dir = log_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create log directory {}", dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
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
        .with_writer(Buffered(outputs.clone()))
        .with_ansi(false);
    let installed = if terminal {
        registry
            .with(plain)
            .with(
                tracing_subscriber::fmt::layer()
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
