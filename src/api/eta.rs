//! How long a queued job will wait: each API process learns the recent run
//! times of every workflow from the store's change events (a job that ends,
//! from its first start to its end) and counts the live backends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::job::{JobRecord, JobStatus};
use crate::store::JobStore;

/// Workflows whose run times are kept at most (the least used go first).
const MAX_WORKFLOWS: usize = 10_000;
/// Weight of the newest run time in the moving average.
const ALPHA: f64 = 0.2;

/// Recent run times by workflow.
#[derive(Default)]
pub struct RunTimes {
    by_workflow: Mutex<HashMap<String, (f64, u64)>>,
}

impl RunTimes {
    /// Starts learning from `store`'s events; stops when the process does.
    pub fn start(store: Arc<dyn JobStore>) -> Arc<RunTimes> {
        let times = Arc::new(RunTimes::default());
        let mut events = store.subscribe();
        let t = times.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.preview.is_none() => t.learn(&ev.job),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        times
    }

    /// Takes in a job that just finished.
    pub fn learn(&self, job: &JobRecord) {
        if job.status != JobStatus::Finished || job.started_ms == 0 {
            return;
        }
        let ran = job.updated_ms.saturating_sub(job.started_ms) as f64;
        let mut m = self.by_workflow.lock().expect("run times");
        if m.len() >= MAX_WORKFLOWS
            && !m.contains_key(&job.workflow)
            && let Some(k) = m
                .iter()
                .min_by_key(|(_, (_, n))| *n)
                .map(|(k, _)| k.clone())
        {
            m.remove(&k);
        }
        let e = m.entry(job.workflow.clone()).or_insert((ran, 0));
        e.0 = if e.1 == 0 {
            ran
        } else {
            e.0 * (1.0 - ALPHA) + ran * ALPHA
        };
        e.1 += 1;
    }

    /// The recent run time of `workflow`, in ms, if one ended here lately.
    pub fn of(&self, workflow: &str) -> Option<f64> {
        self.by_workflow
            .lock()
            .expect("run times")
            .get(workflow)
            .map(|(ms, _)| *ms)
    }

    /// About how many seconds until a queued job starts: the jobs ahead of it
    /// and itself, each taking its workflow's recent run time, spread over the
    /// live backends.
    pub fn eta(&self, workflow: &str, ahead: u64, backends: usize) -> Option<u64> {
        let ms = self.of(workflow)?;
        let rounds = (ahead as f64 / backends.max(1) as f64).floor();
        Some(((rounds * ms) / 1000.0).ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(workflow: &str, ran_ms: u64) -> JobRecord {
        JobRecord {
            status: JobStatus::Finished,
            workflow: workflow.into(),
            started_ms: 1_000,
            updated_ms: 1_000 + ran_ms,
            ..JobRecord::default()
        }
    }

    #[test]
    fn the_estimate_follows_recent_runs_and_the_backends() {
        let t = RunTimes::default();
        assert_eq!(t.eta("sdxl", 3, 1), None, "nothing known yet");
        t.learn(&done("sdxl", 10_000));
        assert_eq!(t.eta("sdxl", 0, 1), Some(0), "next in line");
        assert_eq!(t.eta("sdxl", 3, 1), Some(30));
        assert_eq!(
            t.eta("sdxl", 3, 2),
            Some(10),
            "two backends take two at a time"
        );
        t.learn(&done("sdxl", 20_000));
        assert_eq!(t.of("sdxl"), Some(12_000.0), "a moving average");
        // Jobs that failed or never started teach nothing.
        let mut failed = done("sdxl", 1);
        failed.status = JobStatus::Failed;
        t.learn(&failed);
        assert_eq!(t.of("sdxl"), Some(12_000.0));
    }
}
