//! The embedded store's claim: the next due job the route allows, taken in one
//! `UPDATE … RETURNING`, and how a dead worker on this host is recognised.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use super::{COLUMNS, SqliteStore, record_from_row};
use crate::clock;
use crate::job::JobId;
use crate::store::{AFFINITY_WINDOW, Claim, Lease, Route, Routed, StoreError, WorkerId, hostname};

impl SqliteStore {
    /// Leases the next due job the route allows in one `UPDATE … RETURNING`;
    /// `None` when nothing is due. (A queued job here is never cancelled — cancel
    /// fails queued jobs at once — and never out of attempts: the reaper fails
    /// those instead of requeueing them.)
    pub(super) async fn try_claim(
        &self,
        worker: &WorkerId,
        route: &Route,
    ) -> Result<Routed, StoreError> {
        let w = worker.as_str().to_owned();
        // The route as a JSON array for `json_each`, jobs without a set included
        // (None: any job).
        let runnable = route.runnable.as_ref().map(|r| {
            let mut all: Vec<&str> = r.iter().map(String::as_str).collect();
            all.push("");
            serde_json::to_string(&all).unwrap_or_default()
        });
        let prefer_list = route.prefer.clone();
        let prefer = serde_json::to_string(&route.prefer).unwrap_or_default();
        let known = route.known as i64;
        self.write(move |conn| {
            if runnable.is_some() {
                let n: i64 = conn
                    .prepare_cached("SELECT COUNT(*) FROM requirement_sets")?
                    .query_row([], |r| r.get(0))?;
                if n != known {
                    return Ok((Routed::Stale, Vec::new()));
                }
            }
            let micros = clock::now_micros();
            let token = uuid::Uuid::new_v4().simple().to_string();
            let now_ms = (micros / 1000) as i64;
            // The fair pick: of the lanes with a job due that the route allows and
            // room to run one more, the lowest virtual time, walking `lanes_by_vt`
            // (the triggers lift a lane that comes back to the current virtual
            // time, so an idle one counts from now).
            let vtime: f64 = conn
                .prepare_cached("SELECT value FROM counters WHERE name = 'vtime'")?
                .query_row([], |r| r.get(0))?;
            // Routed, a job is found through `jobs_route` one set at a time: the
            // cost grows with the sets this backend runs, not with the jobs of
            // other sets queued ahead.
            let lane_sql = if runnable.is_some() {
                "SELECT owner, MAX(vt, ?1), weight FROM lanes \
                 WHERE queued > 0 AND (max_running = 0 OR running < max_running) \
                   AND EXISTS (SELECT 1 FROM jobs WHERE jobs.owner = lanes.owner \
                               AND status = 'queued' \
                               AND req IN (SELECT value FROM json_each(?3)) AND run_at <= ?2) \
                 ORDER BY vt, owner LIMIT 1"
            } else {
                "SELECT owner, MAX(vt, ?1), weight FROM lanes \
                 WHERE queued > 0 AND (max_running = 0 OR running < max_running) \
                   AND EXISTS (SELECT 1 FROM jobs WHERE jobs.owner = lanes.owner \
                               AND status = 'queued' AND run_at <= ?2 AND ?3 IS NULL) \
                 ORDER BY vt, owner LIMIT 1"
            };
            let lane: Option<(String, f64, i64)> = conn
                .prepare_cached(lane_sql)?
                .query_row(params![vtime, now_ms, runnable], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let Some((owner, start, weight)) = lane else {
                return Ok((Routed::Nothing, Vec::new()));
            };
            // Within the lane: the first the route allows, or a preferred one
            // (same model files as the backend's last job) close behind it.
            let first_sql = if runnable.is_some() {
                "SELECT j.id, j.priority, j.queue_seq, j.req FROM json_each(?3) AS r, jobs AS j \
                 WHERE j.id = (SELECT id FROM jobs WHERE owner = ?1 AND status = 'queued' \
                               AND req = r.value AND run_at <= ?2 \
                               ORDER BY priority, queue_seq LIMIT 1) \
                 ORDER BY j.priority, j.queue_seq LIMIT 1"
            } else {
                "SELECT id, priority, queue_seq, req FROM jobs WHERE owner = ?1 \
                 AND status = 'queued' AND run_at <= ?2 AND ?3 IS NULL \
                 ORDER BY priority, queue_seq LIMIT 1"
            };
            let first: Option<(String, i64, i64, String)> = conn
                .prepare_cached(first_sql)?
                .query_row(params![owner, now_ms, runnable], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            let Some((first_id, priority, seq, req)) = first else {
                return Ok((Routed::Nothing, Vec::new()));
            };
            let chosen = if !prefer_list.is_empty() && !prefer_list.contains(&req) {
                conn.prepare_cached(
                    "SELECT id FROM jobs WHERE owner = ?1 AND status = 'queued' AND run_at <= ?2 \
                     AND priority = ?3 AND queue_seq > ?4 AND queue_seq <= ?4 + ?5 \
                     AND req IN (SELECT value FROM json_each(?6)) \
                     ORDER BY queue_seq LIMIT 1",
                )?
                .query_row(
                    params![owner, now_ms, priority, seq, AFFINITY_WINDOW as i64, prefer],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(first_id)
            } else {
                first_id
            };
            let claimed = conn
                .prepare_cached(&format!(
                    "UPDATE jobs SET status = 'processing', attempt = attempt + 1, worker_id = ?1, \
                     lease_token = ?2, progress = 0, run_at = 0, updated_at = ?3, updated_ms = ?4, \
                     rev = rev + 1 WHERE id = ?5 RETURNING {COLUMNS}"
                ))?
                .query_row(
                    params![w, token, clock::iso8601(micros), now_ms, chosen],
                    record_from_row,
                )
                .optional()?;
            if claimed.is_some() {
                conn.prepare_cached(
                    "UPDATE counters SET value = MAX(value, ?1) WHERE name = 'vtime'",
                )?
                .execute(params![start])?;
                conn.prepare_cached("UPDATE lanes SET vt = ?2 WHERE owner = ?1")?
                    .execute(params![owner, start + 1.0 / weight.max(1) as f64])?;
            }
            let Some(rec) = claimed else {
                return Ok((Routed::Nothing, Vec::new()));
            };
            let lease = Lease {
                job_id: JobId::parse(&rec.id).unwrap_or_else(|_| JobId::random()),
                worker: WorkerId::from_string(w.clone()),
                token,
                attempt: rec.attempt,
                payload: rec.payload(),
            };
            tracing::info!(job_id = %rec.id, attempt = rec.attempt, worker = %w, "job processing");
            Ok((
                Routed::Job(Box::new(Claim {
                    lease,
                    job: rec.clone(),
                })),
                vec![rec],
            ))
        })
        .await
    }

    /// Whether a worker row on this host belongs to a process that no longer runs.
    pub(super) fn dead_local_worker(&self, id: &str, host: &str, pid: u32) -> bool {
        if host != hostname() || !Path::new("/proc/self").exists() {
            return false;
        }
        if self
            .own_workers
            .lock()
            .expect("own workers")
            .iter()
            .any(|w| w == id)
        {
            return false;
        }
        // Our own pid under an id we did not register: our previous life (a restarted
        // container gets the same pid).
        pid == std::process::id() || !Path::new(&format!("/proc/{pid}")).exists()
    }
}
