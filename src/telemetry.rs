//! Logging: console and a UTF-8 log file (`backend.log` in the data directory, as
//! the prototype had), level from `RUST_LOG` (default `info`). Both writers are
//! non-blocking so a burst of requests never waits on the disk.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the log writers flushing; drop it last.
pub struct Telemetry {
    _console: WorkerGuard,
    _file: WorkerGuard,
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
    let (file_writer, file_guard) = tracing_appender::non_blocking(file);
    let (console_writer, console_guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(console_writer)
                .with_ansi(std::io::stdout().is_terminal()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(file_writer)
                .with_ansi(false),
        )
        .try_init()
        .context("a logger is already installed")?;
    Ok(Telemetry {
        _console: console_guard,
        _file: file_guard,
    })
}
