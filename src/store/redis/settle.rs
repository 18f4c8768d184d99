//! A claimed payload's fate in the `{job_queue}` slot (settle.lua: claimed, drop,
//! done, delay, dead, release), leasing a moved payload, and reaping dead
//! workers' jobs.

use super::conn::Conn;
use super::scripts::Settle;
use super::{RedisStore, truncate};
use crate::clock;
use crate::job::{JobId, JobRecord, QueuePayload};
use crate::store::{Claim, DeadLetter, EXPIRED_MESSAGE, Lease, StoreError, WorkerId};
use crate::workflow::DEFAULT_WORKFLOW;

impl RedisStore {
    pub(super) async fn settle(
        &self,
        worker: &WorkerId,
        payload: &str,
        job_id: &str,
        action: Settle<'_>,
    ) -> Result<(), StoreError> {
        let k = &self.keys;
        let (name, due, dead, status) = match action {
            Settle::Claimed => ("claimed", 0, String::new(), ""),
            Settle::Drop(status) => ("drop", 0, String::new(), status),
            Settle::Done(status) => ("done", 0, String::new(), status),
            Settle::Delay(due) => ("delay", due, String::new(), ""),
            Settle::Dead(d) => ("dead", 0, serde_json::to_string(d).unwrap_or_default(), ""),
            Settle::Release => ("release", 0, String::new(), ""),
        };
        let mut inv = self.scripts.settle.prepare_invoke();
        for key in k.settle_keys(worker.as_str()) {
            inv.key(key);
        }
        inv.arg(name)
            .arg(payload)
            .arg(job_id)
            .arg(self.settings.index_cap)
            .arg(due)
            .arg(dead)
            .arg(status)
            .arg(k.tag());
        let mut conn = self.conn.clone();
        self.run(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// Leases a payload just moved into the worker's processing list. `None` if it
    /// had to be dropped (final, running elsewhere, cancelled, dead).
    pub(super) async fn lease_payload(
        &self,
        worker: &WorkerId,
        raw: String,
    ) -> Result<Option<Claim>, StoreError> {
        let Some((payload, id)) = QueuePayload::parse(&raw) else {
            tracing::warn!(payload = %truncate(&raw, 200), "unreadable queue entry moved to dead letters");
            let dl = DeadLetter {
                job_id: String::new(),
                error: "unreadable queue entry (not JSON with a valid job_id)".into(),
                attempts: 0,
                payload: raw.clone(),
                failed_at: clock::iso8601(clock::now_micros()),
            };
            self.settle(worker, &raw, "", Settle::Dead(&dl)).await?;
            return Ok(None);
        };
        let micros = clock::now_micros();
        let now_iso = clock::iso8601(micros);
        let token = uuid::Uuid::new_v4().simple().to_string();
        // A queue entry whose record expired while it waited is too old to start
        // (the embedded store fails such jobs when their time is up).
        let expired = payload
            .created_at
            .as_deref()
            .and_then(clock::parse_iso8601_ms)
            .is_some_and(|created| {
                micros / 1000 > created + self.settings.job_ttl.as_millis() as u64
            });
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(self.keys.status(id.as_str()))
            .arg(self.keys.events())
            .arg(worker.as_str())
            .arg(&token)
            .arg(&now_iso)
            .arg(micros / 1000)
            .arg(self.settings.max_attempts)
            .arg(self.ttl_secs())
            .arg(if expired { "1" } else { "0" })
            .arg(EXPIRED_MESSAGE);
        // What a hash written by nobody (or by another program) lacks.
        let created_at = payload
            .created_at
            .clone()
            .unwrap_or_else(|| now_iso.clone());
        let mut defaults: Vec<(&str, String)> = vec![
            ("job_id", id.to_string()),
            ("prompt", payload.prompt.clone()),
            (
                "workflow",
                payload
                    .workflow
                    .clone()
                    .unwrap_or_else(|| DEFAULT_WORKFLOW.into()),
            ),
            ("created_at", created_at),
            ("progress", "0".into()),
            ("image_url", String::new()),
            ("error", String::new()),
        ];
        if let Some(seed) = payload.seed {
            defaults.push(("seed", seed.to_string()));
        }
        if let Some(params) = &payload.params {
            defaults.push((
                "params",
                serde_json::Value::Object(params.clone()).to_string(),
            ));
        }
        for (k, v) in &defaults {
            inv.arg(*k).arg(v);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        match reply.first().map(String::as_str) {
            Some("ok") => {
                let attempt = reply.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
                let job = JobRecord::from_fields(
                    reply[2..]
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0].as_str(), c[1].as_str())),
                );
                self.settle(worker, &raw, id.as_str(), Settle::Claimed)
                    .await?;
                tracing::info!(job_id = %id, attempt, worker = %worker, "job processing");
                Ok(Some(Claim {
                    lease: Lease {
                        job_id: id,
                        worker: worker.clone(),
                        token,
                        attempt,
                        payload: raw,
                    },
                    job,
                }))
            }
            Some("dead") => {
                let attempts = reply.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
                let error = reply.get(2).cloned().unwrap_or_default();
                let dl = DeadLetter {
                    job_id: id.to_string(),
                    error: error.clone(),
                    attempts,
                    payload: raw.clone(),
                    failed_at: now_iso,
                };
                self.settle(worker, &raw, id.as_str(), Settle::Dead(&dl))
                    .await?;
                tracing::warn!(job_id = %id, attempts, %error, "job failed: out of attempts, dead-lettered");
                Ok(None)
            }
            Some("drop") => {
                let reason = reply.get(1).map(String::as_str).unwrap_or("");
                let status = match reason {
                    "finished" => "finished",
                    "running" => "processing",
                    _ => "failed",
                };
                self.settle(worker, &raw, id.as_str(), Settle::Drop(status))
                    .await?;
                if reason == "cancelled" {
                    tracing::info!(job_id = %id, "job failed: cancelled before it started");
                } else if reason == "expired" {
                    tracing::warn!(job_id = %id, "job failed: it waited past its time to live without starting");
                } else {
                    tracing::debug!(job_id = %id, reason, "dropped a queue entry for a job that is {reason}");
                }
                Ok(None)
            }
            other => Err(StoreError::Internal(format!(
                "unexpected lease reply {other:?}"
            ))),
        }
    }

    pub(super) async fn reap_locked(&self, conn: &mut Conn) -> Result<Vec<JobId>, StoreError> {
        let k = &self.keys;
        let workers: Vec<String> = self
            .run(::redis::cmd("SMEMBERS").arg(k.workers()).query_async(conn))
            .await?;
        let mut reaped = Vec::new();
        for w in workers {
            let alive: bool = self
                .run(
                    ::redis::cmd("EXISTS")
                        .arg(k.heartbeat(&w))
                        .query_async(conn),
                )
                .await?;
            if alive {
                continue;
            }
            let payloads: Vec<String> = self
                .run(
                    ::redis::cmd("LRANGE")
                        .arg(k.processing(&w))
                        .arg(0)
                        .arg(-1)
                        .query_async(conn),
                )
                .await?;
            // Statuses first: once a job is `queued` again with no lease token, a
            // claim of the returned payload leases it, and the dead worker (if it was
            // only paused) is fenced off.
            let micros = clock::now_micros();
            let mut args: Vec<(String, String)> = Vec::new();
            for p in &payloads {
                let id = QueuePayload::parse(p).map(|(_, id)| id);
                if let Some(id) = &id {
                    let mut inv = self.scripts.requeue_status.prepare_invoke();
                    inv.key(k.status(id.as_str()))
                        .arg(k.events())
                        .arg(&w)
                        .arg(clock::iso8601(micros))
                        .arg(micros / 1000)
                        .arg(self.ttl_secs());
                    let n: i64 = self.run(inv.invoke_async(conn)).await?;
                    if n == 1 {
                        tracing::warn!(job_id = %id, worker = %w, "job queued again: its worker stopped heartbeating");
                    }
                    reaped.push(id.clone());
                }
                args.push((p.clone(), id.map(|i| i.to_string()).unwrap_or_default()));
            }
            let mut inv = self.scripts.reap.prepare_invoke();
            inv.key(k.queue())
                .key(k.processing(&w))
                .key(k.heartbeat(&w))
                .key(k.workers())
                .key(k.pending())
                .key(k.index());
            for key in k.status_indexes() {
                inv.key(key);
            }
            for key in k.lane_keys() {
                inv.key(key);
            }
            inv.arg(&w).arg(k.tag());
            for (p, id) in &args {
                inv.arg(p).arg(id);
            }
            self.run(inv.invoke_async::<i64>(conn)).await?;
        }
        Ok(reaped)
    }
}
