//! Prometheus metrics (`GET /metrics`, in the OpenMetrics text format Prometheus
//! asks for), with the `prometheus-client` crate. One [`Metrics`] per process,
//! shared by its API and its workers. Counters and histograms are updated where
//! things happen; the gauges that describe shared state (queue depth, workers) are
//! read from the store at scrape time, so every process reports the same.
//!
//! Label values are bounded: workflows are the loaded ones (anything else is
//! `other`), routes are the router's templates, backends the configured URLs.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::backends::BackendSample;
use crate::store::QueueStats;

/// The content type of the answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowLabel {
    pub workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub workflow: String,
    /// `finished`, `failed`, `cancelled`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// An API key's budget window.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabel {
    pub key: String,
    /// `day` or `month` (UTC).
    pub window: String,
}

/// A key's spend against its budget in one window, read at a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetSample {
    pub key: String,
    pub window: &'static str,
    pub used_seconds: f64,
    pub budget_seconds: f64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered`, `retry`, `failed`, `gone`, `refused`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabel {
    pub code: &'static str,
}

type Hist = Family<WorkflowLabel, Histogram, fn() -> Histogram>;
type RouteHist = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Seconds a job waits or runs: 50 ms to about an hour.
fn job_seconds() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ])
}

/// Seconds an HTTP request takes to answer (its head, for event streams).
fn http_seconds() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// What a process measures.
pub struct Metrics {
    registry: Registry,
    workflows: Vec<String>,
    pub jobs_submitted: Family<WorkflowLabel, Counter>,
    pub jobs_completed: Family<OutcomeLabels, Counter>,
    pub job_wait: Hist,
    pub job_run: Hist,
    pub job_retries: Family<WorkflowLabel, Counter>,
    pub lease_expiries: Counter,
    pub webhook_attempts: Family<OutcomeLabel, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: RouteHist,
    pub http_refusals: Family<RefusalLabel, Counter>,
    queue_jobs: Family<StateLabel, Gauge>,
    workers: Gauge,
    store_up: Gauge,
    backend_up: Family<BackendLabel, Gauge>,
    key_gpu_used: Family<BudgetLabel, Gauge<f64, AtomicU64>>,
    key_gpu_budget: Family<BudgetLabel, Gauge<f64, AtomicU64>>,
    backend_in_flight: Family<BackendLabel, Gauge>,
    backend_busy: Family<BackendLabel, Counter<f64, AtomicU64>>,
    backend_jobs: Family<BackendLabel, Counter>,
    backend_restarts: Family<BackendLabel, Counter>,
    event_streams: Gauge,
    http_connections: Gauge,
}

/// What a scrape reads from the rest of the process.
#[derive(Default)]
pub struct Snapshot {
    /// `None` when the store did not answer.
    pub queue: Option<QueueStats>,
    pub backends: Vec<BackendSample>,
    pub event_streams: Option<u64>,
    pub http_connections: Option<u64>,
    /// Keys with a budget: their spend.
    pub budgets: Vec<BudgetSample>,
}

impl Metrics {
    /// The metrics of one process; `workflows` are the label values workflow
    /// metrics may take (others count as `other`).
    pub fn new(workflows: impl IntoIterator<Item = String>) -> Arc<Metrics> {
        let mut r = Registry::default();
        let m = Metrics {
            workflows: workflows.into_iter().collect(),
            jobs_submitted: Family::default(),
            jobs_completed: Family::default(),
            job_wait: Family::new_with_constructor(job_seconds as fn() -> Histogram),
            job_run: Family::new_with_constructor(job_seconds as fn() -> Histogram),
            job_retries: Family::default(),
            lease_expiries: Counter::default(),
            webhook_attempts: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http_seconds as fn() -> Histogram),
            http_refusals: Family::default(),
            queue_jobs: Family::default(),
            workers: Gauge::default(),
            store_up: Gauge::default(),
            backend_up: Family::default(),
            key_gpu_used: Family::default(),
            key_gpu_budget: Family::default(),
            backend_restarts: Family::default(),
            backend_in_flight: Family::default(),
            backend_busy: Family::default(),
            backend_jobs: Family::default(),
            event_streams: Gauge::default(),
            http_connections: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "studio_jobs_submitted",
            "Jobs accepted by POST /api/generate in this process",
            m.jobs_submitted.clone(),
        );
        r.register(
            "studio_jobs_completed",
            "Jobs this process's workers ended, by outcome (finished, failed, cancelled)",
            m.jobs_completed.clone(),
        );
        r.register_with_unit(
            "studio_job_wait",
            "Time from submission to a worker taking the job",
            Unit::Seconds,
            m.job_wait.clone(),
        );
        r.register_with_unit(
            "studio_job_run",
            "Time from a worker taking the job to its end",
            Unit::Seconds,
            m.job_run.clone(),
        );
        r.register(
            "studio_job_retries",
            "Attempts that ended in a retry later",
            m.job_retries.clone(),
        );
        r.register(
            "studio_lease_expiries",
            "Jobs taken back from workers whose heartbeat stopped (by this process's reaper)",
            m.lease_expiries.clone(),
        );
        r.register(
            "studio_webhook_attempts",
            "Webhook delivery attempts by this process's workers, by outcome (delivered, retry, failed, gone, refused)",
            m.webhook_attempts.clone(),
        );
        r.register(
            "studio_http_requests",
            "HTTP requests answered, by route template and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "studio_http_request_duration",
            "Time to answer an HTTP request (to the head of an event stream)",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "studio_http_refusals",
            "Requests refused before routing: no valid API key, or over a rate limit",
            m.http_refusals.clone(),
        );
        r.register(
            "studio_queue_jobs",
            "Jobs in the store by state (queued, processing, delayed retries, dead letters)",
            m.queue_jobs.clone(),
        );
        r.register(
            "studio_workers",
            "Worker processes with a live heartbeat",
            m.workers.clone(),
        );
        r.register(
            "studio_store_up",
            "1 when the store answered this scrape",
            m.store_up.clone(),
        );
        r.register(
            "studio_key_gpu_seconds",
            "GPU-seconds an API key with a budget used in the current UTC day or month",
            m.key_gpu_used.clone(),
        );
        r.register(
            "studio_key_gpu_budget_seconds",
            "An API key's GPU-second budget for the UTC day or month",
            m.key_gpu_budget.clone(),
        );
        r.register(
            "studio_backend_up",
            "1 when the ComfyUI backend answers its health check",
            m.backend_up.clone(),
        );
        r.register(
            "studio_comfyui_restarts",
            "Restarts of a ComfyUI this process launched (--comfyui-launch) after it exited or hung",
            m.backend_restarts.clone(),
        );
        r.register(
            "studio_backend_jobs_in_flight",
            "Jobs this process has on the backend (running or submitted behind)",
            m.backend_in_flight.clone(),
        );
        r.register_with_unit(
            "studio_backend_busy",
            "Wall time the backend spent running this process's prompts; its rate is the utilization",
            Unit::Seconds,
            m.backend_busy.clone(),
        );
        r.register(
            "studio_backend_jobs_done",
            "Jobs ended on the backend since this process started",
            m.backend_jobs.clone(),
        );
        r.register(
            "studio_event_streams",
            "Open Server-Sent Events streams",
            m.event_streams.clone(),
        );
        r.register(
            "studio_http_connections",
            "Open HTTP connections",
            m.http_connections.clone(),
        );
        Arc::new(Metrics { registry: r, ..m })
    }

    /// A workflow name as a label: a loaded workflow's name, else `other` (jobs
    /// pushed by other programs may name anything).
    pub fn workflow(&self, name: &str) -> WorkflowLabel {
        let known = self.workflows.iter().any(|w| w == name);
        WorkflowLabel {
            workflow: if known { name } else { "other" }.to_owned(),
        }
    }

    /// The text answer, after reading `snap` into the gauges.
    pub fn render(&self, snap: &Snapshot) -> String {
        match &snap.queue {
            Some(q) => {
                self.store_up.set(1);
                for (state, n) in [
                    ("queued", q.queued),
                    ("processing", q.processing),
                    ("delayed", q.delayed),
                    ("dead", q.dead),
                ] {
                    self.queue_jobs
                        .get_or_create(&StateLabel { state })
                        .set(n as i64);
                }
                self.workers.set(q.workers as i64);
            }
            None => {
                self.store_up.set(0);
            }
        }
        for b in &snap.budgets {
            let l = BudgetLabel {
                key: b.key.clone(),
                window: b.window.to_owned(),
            };
            self.key_gpu_used.get_or_create(&l).set(b.used_seconds);
            self.key_gpu_budget.get_or_create(&l).set(b.budget_seconds);
        }
        for b in &snap.backends {
            let l = BackendLabel {
                backend: b.url.clone(),
            };
            self.backend_up.get_or_create(&l).set(i64::from(b.up()));
            self.backend_in_flight
                .get_or_create(&l)
                .set(b.in_flight as i64);
            let restarts = self.backend_restarts.get_or_create(&l);
            let more = b.restarts.saturating_sub(restarts.get());
            if more > 0 {
                restarts.inc_by(more);
            }
            let done = self.backend_jobs.get_or_create(&l);
            let more = b.done.saturating_sub(done.get());
            if more > 0 {
                done.inc_by(more);
            }
            // A counter only goes up: add what it gained since the last scrape.
            let busy = self.backend_busy.get_or_create(&l);
            let gained = b.busy_seconds - busy.get();
            if gained > 0.0 {
                busy.inc_by(gained);
            }
        }
        if let Some(n) = snap.event_streams {
            self.event_streams.set(n as i64);
        }
        if let Some(n) = snap.http_connections {
            self.http_connections.set(n as i64);
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
