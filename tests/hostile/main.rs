//! Hostile clients against a real `studio` process on loopback: floods that must
//! not leak memory, slowloris and stream floods that must not slow other clients,
//! a gigabyte output that must not fill the worker's memory, and listings that must
//! not read the whole queue. Each test is bounded in count and time, stops by
//! itself, and prints its figures.
//!
//! A binary of its own, so these run one at a time (a lock below) and nothing else
//! in the suite competes with them for the two cores while they measure.

#[allow(unused_macros, unused_imports)]
#[path = "../it/support/mod.rs"]
#[macro_use]
mod support;

mod bombs;
mod chaos;
mod fairness;
mod floods;
mod listing;
mod outputs;
mod webhook_fairness;

use std::net::SocketAddr;
use std::sync::OnceLock;

use tokio::net::{TcpSocket, TcpStream};

/// One flood at a time.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

/// A TCP connection to `to` from the loopback address `from` (an attacker gets an
/// address of its own, 127.0.0.1 is everyone else).
pub async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    s.connect(to).await
}

/// A loopback address for this run's attacker, 127.0.0.2 to 127.0.0.254: a run
/// within a minute of another does not meet the ports that one left in TIME_WAIT.
pub fn attacker_address() -> [u8; 4] {
    [127, 0, 0, fastrand::u8(2..=254)]
}

/// Closes a connection with a reset, leaving nothing in TIME_WAIT.
pub fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// The p-th percentile (0–100) of sorted durations, in ms.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
