//! The embedded job store: one SQLite file in the data directory (WAL mode), with
//! the same states and semantics as the Redis store.
//!
//! All writes go through one writer thread that commits whatever has piled up in one
//! transaction (group commit), each operation in its own savepoint; reads use a small
//! pool of connections. Events are published in-process after each commit.
//! Several processes may share the file (SQLite's locking; `busy_timeout`), but
//! events only reach the process that wrote them.

mod api_keys;
mod batches;
mod claim;
mod idempotency;
mod lease;
mod outbox;
mod previews;
mod queue;
mod retention;
mod routing;
mod rows;
mod schema;
mod steering;
mod uploads;
mod usage;
mod workflows;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{Notify, Semaphore, broadcast, oneshot};

use self::rows::{
    COLUMN_COUNT, COLUMNS, FRONT_OF_QUEUE, changed, get_record, holds_lease, insert_dead_letter,
    next_seq, record_from_row,
};
use self::schema::migrate;
use self::writer::{Deliver, WriteOp, in_savepoint, writer_loop};
use super::{EVENT_BUFFER, JobEvent, Preview, StoreError, StoreSettings};
use crate::auth::rate::LocalLimiter;
use crate::job::JobRecord;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "studio.db";

/// Read connections kept open (reads run on tokio's blocking pool).
const READERS: usize = 4;

/// A job store in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<WriteOp>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: Arc<Semaphore>,
    settings: StoreSettings,
    events: broadcast::Sender<JobEvent>,
    /// ComfyUI's messages relayed (see `Previews::relay`).
    relayed: broadcast::Sender<crate::store::Relayed>,
    /// Woken whenever a job becomes claimable in this process.
    wake: Arc<Notify>,
    /// Worker ids this process registered (never reaped as "a previous life").
    own_workers: Mutex<Vec<String>>,
    /// Rate limits, counted in this process.
    limiter: LocalLimiter,
    /// Each job's latest preview (only this process uses the file), with when it
    /// was put; at most [`MAX_PREVIEWS`], the oldest forgotten first.
    previews: Mutex<HashMap<String, (Instant, Preview)>>,
}

/// Previews kept in memory at most (one per running job).
const MAX_PREVIEWS: usize = 1024;

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a commit survives a crash of the process (kill -9); only a
    // power loss can lose the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// A time in ms since the epoch as SQLite stores it (a signed 64-bit integer):
/// one past the last it can hold (`u64::MAX`, "every time") stays the greatest,
/// not a negative number.
fn sql_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("SQLite: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/studio.db`.
    pub fn open(dir: &Path, settings: StoreSettings) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let conn = open(&path).map_err(internal)?;
        migrate(&conn)?;
        let mut readers = Vec::new();
        for _ in 0..READERS {
            readers.push(open(&path).map_err(internal)?);
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (tx, rx) = mpsc::channel::<WriteOp>();
        let ev = events.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, ev))
            .map_err(internal)?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(tx),
            readers: Arc::new(Mutex::new(readers)),
            read_permits: Arc::new(Semaphore::new(READERS)),
            settings,
            events,
            relayed: broadcast::channel(crate::store::RELAY_BUFFER).0,
            wake: Arc::new(Notify::new()),
            own_workers: Mutex::new(Vec::new()),
            limiter: LocalLimiter::default(),
            previews: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` in the writer's next transaction.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<(T, Vec<JobRecord>)> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let op: WriteOp = Box::new(move |conn| {
            let Some(conn) = conn else {
                let deliver: Deliver = Box::new(move |r| {
                    let _ = tx.send(Err(internal(r.err().unwrap_or_default())));
                });
                return (Vec::new(), deliver);
            };
            let r = in_savepoint(conn, f);
            let (value, events) = match r {
                Ok((v, ev)) => (Ok(v), ev),
                Err(e) => (Err(internal(e)), Vec::new()),
            };
            let deliver: Deliver = Box::new(move |committed| {
                let out = match committed {
                    Ok(()) => value,
                    Err(e) => Err(internal(e)),
                };
                let _ = tx.send(out);
            });
            (events, deliver)
        });
        self.writer
            .lock()
            .expect("writer lock")
            .send(op)
            .map_err(|_| internal("the writer thread has stopped"))?;
        rx.await
            .map_err(|_| internal("the writer thread has stopped"))?
    }

    /// Runs `f`, a read of a few rows by key (a job's status), on a pooled read
    /// connection right here when one is free: such a read takes microseconds
    /// from the page cache, less than the hand-over to a blocking thread and
    /// back; else as [`Self::read`] does.
    async fn read_now<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Ok(permit) = self.read_permits.clone().try_acquire_owned() else {
            return self.read(f).await;
        };
        let conn = self
            .readers
            .lock()
            .expect("reader pool")
            .pop()
            .expect("a permit guarantees a connection");
        let r = f(&conn);
        self.readers.lock().expect("reader pool").push(conn);
        drop(permit);
        r.map_err(internal)
    }

    /// Runs `f` on a pooled read connection.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        // At most READERS reads at once: each holds one pooled connection, so the
        // pool (and its page caches) never grows under load.
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(internal)?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .lock()
                .expect("reader pool")
                .pop()
                .expect("a permit guarantees a connection");
            let r = f(&conn);
            pool.lock().expect("reader pool").push(conn);
            drop(permit);
            r
        })
        .await
        .map_err(internal)?
        .map_err(internal)
    }

    fn ttl_ms(&self) -> i64 {
        self.settings.job_ttl.as_millis() as i64
    }
}
