//! The embedded store's schema and its version.

use rusqlite::Connection;

use super::internal;
use crate::store::StoreError;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    list_seq         INTEGER NOT NULL,
    queue_seq        INTEGER NOT NULL,
    status           TEXT NOT NULL,
    progress         INTEGER NOT NULL DEFAULT 0,
    image_url        TEXT NOT NULL DEFAULT '',
    error            TEXT NOT NULL DEFAULT '',
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    updated_ms       INTEGER NOT NULL,
    prompt           TEXT NOT NULL,
    seed             TEXT,
    workflow         TEXT NOT NULL,
    params           TEXT NOT NULL DEFAULT '{}',
    attempt          INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancelled        INTEGER NOT NULL DEFAULT 0,
    outputs          TEXT NOT NULL DEFAULT '[]',
    backend          TEXT NOT NULL DEFAULT '',
    worker_id        TEXT NOT NULL DEFAULT '',
    lease_token      TEXT,
    last_error       TEXT NOT NULL DEFAULT '',
    run_at           INTEGER NOT NULL DEFAULT 0,
    rev              INTEGER NOT NULL DEFAULT 1,
    owner            TEXT NOT NULL DEFAULT '',
    priority         INTEGER NOT NULL DEFAULT 1,
    req              TEXT NOT NULL DEFAULT '',
    started_ms       INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_list_seq ON jobs(list_seq);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, list_seq);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(status, queue_seq);
CREATE INDEX IF NOT EXISTS jobs_by_worker ON jobs(worker_id) WHERE status = 'processing';
CREATE TABLE IF NOT EXISTS workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value)
    VALUES ('seq', COALESCE((SELECT MAX(list_seq) FROM jobs), 0));
INSERT OR IGNORE INTO counters (name, value)
    VALUES ('queued', (SELECT COUNT(*) FROM jobs WHERE status = 'queued'));
-- The virtual time of fair claims: the start of the lane served last.
INSERT OR IGNORE INTO counters (name, value) VALUES ('vtime', 0.0);
-- The number of queued jobs, kept by the database itself on every change, so the
-- queue cap costs one row read per submission instead of a count.
CREATE TRIGGER IF NOT EXISTS queued_on_insert AFTER INSERT ON jobs WHEN NEW.status = 'queued'
BEGIN UPDATE counters SET value = value + 1 WHERE name = 'queued'; END;
CREATE TRIGGER IF NOT EXISTS queued_on_delete AFTER DELETE ON jobs WHEN OLD.status = 'queued'
BEGIN UPDATE counters SET value = value - 1 WHERE name = 'queued'; END;
CREATE TRIGGER IF NOT EXISTS queued_on_update AFTER UPDATE OF status ON jobs
    WHEN (OLD.status = 'queued') != (NEW.status = 'queued')
BEGIN UPDATE counters SET value = value + (NEW.status = 'queued') - (OLD.status = 'queued')
    WHERE name = 'queued'; END;
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs(owner, status, list_seq);
CREATE INDEX IF NOT EXISTS jobs_lane ON jobs(owner, status, priority, queue_seq);
CREATE INDEX IF NOT EXISTS jobs_route ON jobs(owner, status, req, priority, queue_seq);
-- One lane per owner ('' for jobs without one): its share (weight), its cap on
-- running jobs (0: none), its virtual time for fair claims, and its counts, which
-- the triggers below keep.
CREATE TABLE IF NOT EXISTS lanes (
    owner       TEXT PRIMARY KEY,
    weight      INTEGER NOT NULL DEFAULT 1,
    max_running INTEGER NOT NULL DEFAULT 0,
    vt          REAL NOT NULL DEFAULT 0,
    queued      INTEGER NOT NULL DEFAULT 0,
    running     INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO lanes (owner) SELECT DISTINCT owner FROM jobs;
UPDATE lanes SET
    queued = (SELECT COUNT(*) FROM jobs WHERE jobs.owner = lanes.owner AND status = 'queued'),
    running = (SELECT COUNT(*) FROM jobs WHERE jobs.owner = lanes.owner AND status = 'processing');
-- A lane that gets work again (its first queued job, or room to run under its
-- cap) starts at the current virtual time, never behind it: idleness earns no
-- credit, and a claim can take the lowest `vt` straight from lanes_by_vt.
DROP TRIGGER IF EXISTS lane_on_insert;
CREATE TRIGGER lane_on_insert AFTER INSERT ON jobs
BEGIN
    INSERT OR IGNORE INTO lanes (owner) VALUES (NEW.owner);
    UPDATE lanes SET queued = queued + (NEW.status = 'queued'),
        running = running + (NEW.status = 'processing') WHERE owner = NEW.owner;
    UPDATE lanes SET vt = MAX(vt, (SELECT value FROM counters WHERE name = 'vtime'))
        WHERE owner = NEW.owner AND NEW.status = 'queued' AND queued = 1;
END;
DROP TRIGGER IF EXISTS lane_on_delete;
CREATE TRIGGER lane_on_delete AFTER DELETE ON jobs
BEGIN
    UPDATE lanes SET queued = queued - (OLD.status = 'queued'),
        running = running - (OLD.status = 'processing') WHERE owner = OLD.owner;
END;
DROP TRIGGER IF EXISTS lane_on_update;
CREATE TRIGGER lane_on_update AFTER UPDATE OF status ON jobs
    WHEN OLD.status != NEW.status
BEGIN
    UPDATE lanes SET queued = queued + (NEW.status = 'queued') - (OLD.status = 'queued'),
        running = running + (NEW.status = 'processing') - (OLD.status = 'processing')
        WHERE owner = NEW.owner;
    UPDATE lanes SET vt = MAX(vt, (SELECT value FROM counters WHERE name = 'vtime'))
        WHERE owner = NEW.owner AND queued > 0
          AND ((NEW.status = 'queued' AND queued = 1)
               OR (OLD.status = 'processing' AND max_running > 0
                   AND running = max_running - 1));
END;
CREATE INDEX IF NOT EXISTS lanes_by_vt ON lanes (vt, owner) WHERE queued > 0;
CREATE TABLE IF NOT EXISTS api_keys (
    id     TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    owner      TEXT NOT NULL,
    key        TEXT NOT NULL,
    body_hash  TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX IF NOT EXISTS idempotency_age ON idempotency (created_ms);
CREATE TABLE IF NOT EXISTS backend_reports (
    worker     TEXT PRIMARY KEY,
    report     TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    owner      TEXT NOT NULL,
    id         TEXT NOT NULL,
    record     TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    size       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, id)
);
-- Stored upload files (content-addressed, shared by owners) and until when a
-- record names them: a file no record names is deleted.
CREATE TABLE IF NOT EXISTS upload_files (
    id         TEXT PRIMARY KEY,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS upload_files_expiry ON upload_files (expires_ms);
CREATE INDEX IF NOT EXISTS uploads_expiry ON uploads (expires_ms);
-- Requirement sets by fingerprint (what jobs need of a backend), judged once by
-- each dispatcher; a job names its set in `req`.
CREATE TABLE IF NOT EXISTS requirement_sets (
    fp   TEXT PRIMARY KEY,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS capabilities (
    fp         TEXT PRIMARY KEY,
    json       TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
-- Webhooks (the outbox): a job's record, when it is due (NULL: out of the
-- outbox) and until when a worker holds it.
CREATE TABLE IF NOT EXISTS webhooks (
    job_id     TEXT PRIMARY KEY,
    record     TEXT NOT NULL,
    due_ms     INTEGER,
    lease_ms   INTEGER NOT NULL DEFAULT 0,
    expires_ms INTEGER NOT NULL,
    owner      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (due_ms) WHERE due_ms IS NOT NULL;
CREATE INDEX IF NOT EXISTS webhooks_owner ON webhooks (owner) WHERE due_ms IS NOT NULL;
-- Published workflows: every version (immutable), and per name the latest and
-- whether it is retired; settings.workflows_gen counts changes.
CREATE TABLE IF NOT EXISTS workflow_versions (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    definition TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS workflow_names (
    name    TEXT PRIMARY KEY,
    latest  INTEGER NOT NULL,
    retired INTEGER NOT NULL DEFAULT 0
);
-- Each job's stored outputs: its files, their bytes, when they may go.
CREATE TABLE IF NOT EXISTS outputs (
    job_id TEXT PRIMARY KEY,
    owner  TEXT NOT NULL,
    files  TEXT NOT NULL,
    bytes  INTEGER NOT NULL,
    due_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_due ON outputs (due_ms);
CREATE INDEX IF NOT EXISTS outputs_owner ON outputs (owner);
-- Usage accounts: one per attempt that ended, kept --usage-retention.
CREATE TABLE IF NOT EXISTS usage (
    job_id   TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    owner    TEXT NOT NULL,
    ended_ms INTEGER NOT NULL,
    gpu_ms   INTEGER NOT NULL,
    record   TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (ended_ms);
CREATE INDEX IF NOT EXISTS usage_by_owner ON usage (owner, ended_ms);
-- What is paused: '*' (the farm) or a backend.
CREATE TABLE IF NOT EXISTS pauses (
    target   TEXT PRIMARY KEY,
    since_ms INTEGER NOT NULL
);
-- Batches: many jobs submitted as one (a JSON record of its jobs).
CREATE TABLE IF NOT EXISTS batches (
    id         TEXT PRIMARY KEY,
    record     TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id    TEXT NOT NULL,
    error     TEXT NOT NULL,
    attempts  INTEGER NOT NULL,
    payload   TEXT NOT NULL,
    failed_at TEXT NOT NULL
);
"#;

/// The schema version this build writes (`PRAGMA user_version`). Version 2 stores
/// the prompt once (version 1 also kept the whole queue entry in `payload`) and
/// counts queued jobs; version 3 adds owners, priorities, lanes, API keys,
/// settings and idempotency records; version 4 routes jobs by requirement set
/// (`req`); version 5 keeps upload sizes (quotas), the upload files' index,
/// each webhook's owner (per-key caps), published workflows, and the workflow
/// version a job runs; version 6 when a job first started (`started_ms`), and
/// the batches, pauses, usage and outputs tables.
pub(super) const SCHEMA_VERSION: i64 = 6;

/// Creates the schema in a new file; refuses a file written by a newer version.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(internal)?;
    if version > SCHEMA_VERSION {
        return Err(internal(format!(
            "the database has schema version {version}, newer than this Studio Core ({SCHEMA_VERSION}); upgrade Studio Core"
        )));
    }
    if version == 1 {
        // The queue entry is rebuilt from the columns when needed.
        conn.execute_batch("ALTER TABLE jobs DROP COLUMN payload")
            .map_err(internal)?;
    }
    if (1..3).contains(&version) {
        conn.execute_batch(
            "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''; \
             ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;",
        )
        .map_err(internal)?;
    }
    if (1..4).contains(&version) {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN req TEXT NOT NULL DEFAULT '';")
            .map_err(internal)?;
    }
    // Version 4's tables gain their columns before the schema's indexes use them.
    let has_table = |name: &str| -> Result<bool, StoreError> {
        conn.query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(internal)
    };
    if (1..5).contains(&version) && has_table("uploads")? {
        conn.execute_batch(
            "ALTER TABLE uploads ADD COLUMN size INTEGER NOT NULL DEFAULT 0; \
             UPDATE uploads SET size = COALESCE(json_extract(record, '$.size'), 0);",
        )
        .map_err(internal)?;
    }
    if (1..6).contains(&version) && has_table("jobs")? {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN started_ms INTEGER NOT NULL DEFAULT 0;")
            .map_err(internal)?;
    }
    if (1..5).contains(&version) && has_table("webhooks")? {
        conn.execute_batch("ALTER TABLE webhooks ADD COLUMN owner TEXT NOT NULL DEFAULT '';")
            .map_err(internal)?;
    }
    conn.execute_batch(SCHEMA).map_err(internal)?;
    if (1..5).contains(&version) {
        // Files named by the records an earlier version kept.
        conn.execute_batch(
            "INSERT OR IGNORE INTO upload_files (id, expires_ms) \
             SELECT id, MAX(expires_ms) FROM uploads GROUP BY id;",
        )
        .map_err(internal)?;
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(internal)?;
    Ok(())
}
