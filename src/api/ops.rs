//! The operator's view: `GET /api/ops` (admins, or anyone with auth off) and the
//! page at `/ops` that draws it. An API process samples the store every
//! `--ops-interval` (10 s) and keeps the last hour in memory: queue depth by state,
//! jobs finished and failed per interval, and each backend's busy time as its
//! worker last reported it (so utilization covers every machine, not only this
//! one). Recent failures are grouped by cause when asked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use crate::backends::BackendSample;
use crate::clock;
use crate::job::JobStatus;
use crate::store::{JobStore, ListQuery};

/// An hour of samples at most.
const KEEP: Duration = Duration::from_secs(3600);
/// Recent jobs read per sample to count the finished and failed (a farm finishing
/// more than this per interval shows the cap).
const PER_SAMPLE: usize = 100;
/// Failed jobs read to group failures by cause.
const FAILURES_READ: usize = 200;
/// Window for a backend's utilization.
const UTILIZATION_WINDOW: Duration = Duration::from_secs(60);

/// One sample of the queue.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Point {
    /// Milliseconds since the epoch.
    pub t: u64,
    pub queued: u64,
    pub processing: u64,
    pub delayed: u64,
    pub dead: u64,
    pub workers: u64,
    /// Jobs finished since the sample before (at most 100 counted).
    pub finished: u64,
    /// Jobs failed since the sample before (at most 100 counted).
    pub failed: u64,
}

/// A backend as its worker last reported it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BackendView {
    pub worker: String,
    pub url: String,
    /// `up`, `down`, `unknown`.
    pub state: String,
    pub in_flight: u64,
    pub done: u64,
    pub device: String,
    pub last_error: String,
    /// Restarts of a ComfyUI its worker launched (`--comfyui-launch`).
    pub restarts: u64,
    /// Share of the last minute it spent running prompts (0–1); null until two
    /// reports a minute apart are in.
    pub utilization: Option<f64>,
}

/// Failed jobs with the same cause.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FailureGroup {
    /// The error with numbers and ids blanked out, so alike failures group.
    pub cause: String,
    pub count: u64,
    /// The newest of them.
    pub last_at: String,
    pub job_id: String,
    pub error: String,
}

/// `GET /api/ops`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OpsView {
    pub interval_s: f64,
    pub series: Vec<Point>,
    pub backends: Vec<BackendView>,
    pub failures: Vec<FailureGroup>,
}

/// A backend's busy time as reported: (ms, busy seconds), oldest first.
type BusySamples = VecDeque<(u64, f64)>;

/// The samples of the last hour.
pub struct OpsHistory {
    interval: Duration,
    points: Mutex<VecDeque<Point>>,
    /// (worker, url) → (ms, busy seconds) samples of the last minute or so.
    busy: Mutex<HashMap<(String, String), BusySamples>>,
}

impl OpsHistory {
    pub fn new(interval: Duration) -> Arc<OpsHistory> {
        Arc::new(OpsHistory {
            interval: interval.max(Duration::from_millis(100)),
            points: Mutex::new(VecDeque::new()),
            busy: Mutex::new(HashMap::new()),
        })
    }

    /// Samples until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn JobStore>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut since = clock::now_ms();
        loop {
            // A store outage skips a sample; the chart shows the gap.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.sample(&*store, &mut since))
                .await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = crate::shutdown::signalled(&mut stop) => return,
            }
        }
    }

    async fn sample(
        &self,
        store: &dyn JobStore,
        since: &mut u64,
    ) -> Result<(), crate::store::StoreError> {
        let now = clock::now_ms();
        let stats = store.stats().await?;
        let mut ended = [0u64; 2];
        for (i, status) in [JobStatus::Finished, JobStatus::Failed]
            .into_iter()
            .enumerate()
        {
            let page = store
                .list(&ListQuery {
                    status: Some(status),
                    limit: PER_SAMPLE,
                    cursor: None,
                    owner: None,
                })
                .await?;
            ended[i] = page.jobs.iter().filter(|j| j.updated_ms > *since).count() as u64;
        }
        *since = now;
        let reports = store.backend_reports().await?;
        {
            let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            let mut seen = Vec::new();
            for (worker, report) in &reports {
                for b in parse_report(report) {
                    let key = (worker.clone(), b.url);
                    let h = busy.entry(key.clone()).or_default();
                    h.push_back((now, b.busy_seconds));
                    let keep = now.saturating_sub(
                        UTILIZATION_WINDOW.as_millis() as u64 + self.interval.as_millis() as u64,
                    );
                    while h.len() > 2 && h.front().is_some_and(|(t, _)| *t < keep) {
                        h.pop_front();
                    }
                    seen.push(key);
                }
            }
            busy.retain(|k, _| seen.contains(k));
        }
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        points.push_back(Point {
            t: now,
            queued: stats.queued,
            processing: stats.processing,
            delayed: stats.delayed,
            dead: stats.dead,
            workers: stats.workers,
            finished: ended[0],
            failed: ended[1],
        });
        let oldest = now.saturating_sub(KEEP.as_millis() as u64);
        while points.front().is_some_and(|p| p.t < oldest) {
            points.pop_front();
        }
        Ok(())
    }

    fn utilization(&self, worker: &str, url: &str) -> Option<f64> {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let h = busy.get(&(worker.to_owned(), url.to_owned()))?;
        let (t0, b0) = h.front()?;
        let (t1, b1) = h.back()?;
        if t1 <= t0 {
            return None;
        }
        Some(((b1 - b0) / ((t1 - t0) as f64 / 1000.0)).clamp(0.0, 1.0))
    }
}

/// A worker's report: its backends (unreadable reports count as none).
fn parse_report(report: &str) -> Vec<BackendSample> {
    serde_json::from_str(report).unwrap_or_default()
}

/// An error with what differs between alike failures blanked: digits, ids and
/// quoted values, cut to 120 characters.
pub fn cause_of(error: &str) -> String {
    let mut out = String::with_capacity(error.len().min(160));
    let mut quoted: Option<char> = None;
    let mut last_hash = false;
    for c in error.chars() {
        if let Some(q) = quoted {
            if c == q {
                quoted = None;
                out.push(c);
            }
            continue;
        }
        if c == '\'' || c == '"' {
            quoted = Some(c);
            out.push(c);
            out.push('…');
            last_hash = false;
            continue;
        }
        if c.is_ascii_digit() {
            if !last_hash {
                out.push('#');
                last_hash = true;
            }
            continue;
        }
        last_hash = false;
        out.push(c);
        if out.chars().count() >= 120 {
            out.push('…');
            break;
        }
    }
    out
}

/// The last hour of the farm: queue depth and throughput, backends, failures.
#[utoipa::path(get, path = "/api/ops", tag = "service",
    responses(
        (status = 200, description = "Samples of the last hour (`series`, every `interval_s`), every live worker's backends with their utilization over the last minute, and recent failures grouped by cause", body = OpsView),
        (status = 403, description = "Auth is on and the key is not an admin's (`forbidden`)", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn ops(
    State(state): State<AppState>,
    Caller(who): Caller,
) -> Result<Json<OpsView>, ApiError> {
    if !who.sees_all {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the operator's view needs an admin key",
        ));
    }
    let reports = state.with_timeout(state.store.backend_reports()).await?;
    let failed = state
        .with_timeout(state.store.list(&ListQuery {
            status: Some(JobStatus::Failed),
            limit: FAILURES_READ,
            cursor: None,
            owner: None,
        }))
        .await?;
    let mut groups: BTreeMap<String, FailureGroup> = BTreeMap::new();
    for job in &failed.jobs {
        let cause = cause_of(&job.error);
        groups
            .entry(cause.clone())
            .and_modify(|g| g.count += 1)
            .or_insert_with(|| FailureGroup {
                cause,
                count: 1,
                last_at: job.updated_at.clone(),
                job_id: job.id.clone(),
                error: job.error.chars().take(500).collect(),
            });
    }
    let mut failures: Vec<FailureGroup> = groups.into_values().collect();
    failures.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_at.cmp(&a.last_at)));
    failures.truncate(20);
    let ops = &state.ops;
    let backends = reports
        .iter()
        .flat_map(|(worker, report)| parse_report(report).into_iter().map(move |b| (worker, b)))
        .map(|(worker, b)| BackendView {
            utilization: ops.utilization(worker, &b.url),
            worker: worker.clone(),
            url: b.url,
            state: b.state,
            in_flight: b.in_flight,
            done: b.done,
            device: b.device,
            last_error: b.last_error,
            restarts: b.restarts,
        })
        .collect();
    let series = ops
        .points
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    Ok(Json(OpsView {
        interval_s: ops.interval.as_secs_f64(),
        series,
        backends,
        failures,
    }))
}

#[cfg(test)]
mod tests {
    use super::cause_of;

    #[test]
    fn alike_failures_share_a_cause() {
        let a = cause_of(
            "ComfyUI rejected the workflow: node 4 (CheckpointLoaderSimple) input 'ckpt_name': Value not in list (ckpt_name: 'a.safetensors' not in ['b'])",
        );
        let b = cause_of(
            "ComfyUI rejected the workflow: node 12 (CheckpointLoaderSimple) input 'ckpt_name': Value not in list (ckpt_name: 'zz.safetensors' not in ['b'])",
        );
        assert_eq!(a, b);
        assert_ne!(a, cause_of("cancelled"));
        assert!(cause_of(&"x".repeat(500)).chars().count() <= 121);
    }
}
