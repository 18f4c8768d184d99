//! The one writer thread: takes every operation waiting, commits them together
//! (group commit), each in its own savepoint, then answers the callers and publishes
//! the changes.

use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::broadcast;

use crate::job::JobRecord;
use crate::store::JobEvent;

/// Operations committed together at most (bounds one transaction's latency).
const MAX_BATCH: usize = 512;

/// One write: runs inside the writer's transaction (or, given `None`, learns that no
/// transaction could be started), returns the changed records (to publish) and a
/// function that delivers its result once the commit is known.
pub(super) type WriteOp = Box<dyn FnOnce(Option<&Connection>) -> (Vec<JobRecord>, Deliver) + Send>;
pub(super) type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;

pub(super) fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.execute_batch("SAVEPOINT op")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE op")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
            Err(e)
        }
    }
}

/// The writer thread: takes every operation waiting, commits them together, then
/// answers each caller and publishes the changes.
pub(super) fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<WriteOp>,
    events: broadcast::Sender<JobEvent>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut done = Vec::with_capacity(batch.len());
        let committed = match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                for op in batch {
                    done.push(op(Some(&conn)));
                }
                let c = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
                if c.is_err() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                c
            }
            Err(e) => {
                tracing::error!(error = %e, "SQLite: cannot begin a transaction");
                for op in batch {
                    done.push(op(None));
                }
                Err(format!("cannot begin a transaction: {e}"))
            }
        };
        for (changed, deliver) in done {
            deliver(committed.clone());
            if committed.is_ok() {
                for job in changed {
                    let _ = events.send(JobEvent::changed(job));
                }
            }
        }
    }
}
