//! Rows and records: reading a job, bumping its revision, the sequence, dead
//! letters, lease checks.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::job::Priority;
use crate::job::{JobRecord, JobStatus};

/// The columns every record query selects, in [`record_from_row`]'s order.
pub(super) const COLUMNS: &str = "id, status, progress, image_url, error, created_at, updated_at, updated_ms, \
    prompt, seed, workflow, params, attempt, cancel_requested, cancelled, outputs, backend, \
    worker_id, last_error, run_at, rev, owner, priority, req, started_ms";

/// Columns in [`COLUMNS`] (the next one selected is at this index).
pub(super) const COLUMN_COUNT: usize = 25;

/// The next number of the one sequence that orders both the listing and the queue:
/// O(1), where `MAX(queue_seq)` would scan the whole queue index.
pub(super) fn next_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("UPDATE counters SET value = value + 1 WHERE name = 'seq' RETURNING value")?
        .query_row([], |r| r.get(0))
}

pub(super) fn record_from_row(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let seed: Option<String> = r.get(9)?;
    let params: String = r.get(11)?;
    let outputs: String = r.get(15)?;
    Ok(JobRecord {
        id: r.get(0)?,
        status: JobStatus::parse(&r.get::<_, String>(1)?),
        progress: r.get::<_, i64>(2)?.clamp(0, 100) as u8,
        image_url: r.get(3)?,
        error: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        updated_ms: r.get::<_, i64>(7)?.max(0) as u64,
        prompt: r.get(8)?,
        seed: seed.and_then(|s| s.parse().ok()),
        workflow: r.get(10)?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        attempt: r.get::<_, i64>(12)?.max(0) as u32,
        cancel_requested: r.get::<_, i64>(13)? == 1,
        cancelled: r.get::<_, i64>(14)? == 1,
        outputs: serde_json::from_str(&outputs).unwrap_or_default(),
        backend: r.get(16)?,
        worker_id: r.get(17)?,
        last_error: r.get(18)?,
        retry_at: r.get::<_, i64>(19)?.max(0) as u64,
        rev: r.get::<_, i64>(20)?.max(0) as u64,
        owner: r.get(21)?,
        priority: match r.get::<_, i64>(22)? {
            0 => Priority::High,
            2 => Priority::Low,
            _ => Priority::Normal,
        },
        req: r.get(23)?,
        started_ms: r.get::<_, i64>(24)?.max(0) as u64,
        extra: Default::default(),
    })
}

/// A job just changed: bumps its revision (what event consumers order by) and reads
/// it back for publishing.
pub(super) fn changed(conn: &Connection, id: &str) -> rusqlite::Result<Option<JobRecord>> {
    conn.prepare_cached("UPDATE jobs SET rev = rev + 1 WHERE id = ?1")?
        .execute(params![id])?;
    get_record(conn, id)
}

pub(super) fn get_record(conn: &Connection, id: &str) -> rusqlite::Result<Option<JobRecord>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))?
        .query_row(params![id], record_from_row)
        .optional()
}

pub(super) fn insert_dead_letter(
    conn: &Connection,
    id: &str,
    error: &str,
    attempts: i64,
    payload: &str,
    now: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO dead_letters (job_id, error, attempts, payload, failed_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, error, attempts, payload, now],
    )?;
    // Keep the newest 10,000, as the Redis store does.
    conn.execute(
        "DELETE FROM dead_letters WHERE seq <= (SELECT MAX(seq) FROM dead_letters) - 10000",
        [],
    )?;
    Ok(())
}

/// Whether `token` is the current lease of a running job: `Some(cancel requested)`,
/// or `None` when the lease is gone.
pub(super) fn holds_lease(
    conn: &Connection,
    id: &str,
    token: &str,
) -> rusqlite::Result<Option<bool>> {
    conn.query_row(
        "SELECT cancel_requested FROM jobs WHERE id = ?1 AND lease_token = ?2 AND status = 'processing'",
        params![id, token],
        |r| Ok(r.get::<_, i64>(0)? == 1),
    )
    .optional()
}

/// The `queue_seq` that puts a job first in line (requeued by the reaper, handed
/// back at shutdown).
pub(super) const FRONT_OF_QUEUE: &str =
    "(SELECT COALESCE(MIN(queue_seq), 0) - 1 FROM jobs WHERE status = 'queued')";
