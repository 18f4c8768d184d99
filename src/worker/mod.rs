//! Workers: one dispatcher per ComfyUI backend, plus this process's heartbeat and
//! the queue's maintenance (reaping dead workers' jobs, promoting due retries).
//!
//! A dispatcher claims a job only when its backend is up and has room: one prompt
//! running plus `prefetch` already submitted, so the GPU starts the next prompt the
//! moment the last one ends while the finished one's outputs are collected. The
//! prefetched job is claimed just before the running prompt should end
//! (`pacing.rs`), so the fair queue's choice is as fresh as it can be.

pub mod attempt;
pub mod backend;
pub mod convert;
mod follow;
pub mod launch;
mod outputs;
mod pacing;
pub mod preview;
pub mod progress;
pub mod routing;
pub mod run;
pub mod sweep;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use self::attempt::RunContext;
use self::backend::Backend;
use self::run::{Turn, run_job};
use crate::backends::{BackendReport, BackendSample, BackendState, Offers};
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::shutdown::signalled;
use crate::storage::ImageStore;
use crate::store::{JobStore, Routed, StoreError, WorkerId};

/// How long a dispatcher waits for its backend's capabilities before its first
/// claim.
const OFFER_WAIT: Duration = Duration::from_secs(10);

/// How workers behave. Defaults are for production; tests shorten the durations.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// How long job records live after their last change (`--job-ttl`).
    pub job_ttl: Duration,
    /// How long a job's outputs are kept after it ends (`--output-ttl`).
    pub output_ttl: Duration,
    /// How often stored files no record names are looked for and deleted.
    pub sweep_interval: Duration,
    /// How long such a file is kept after its last record expired.
    pub sweep_grace: Duration,
    /// ComfyUI servers, one dispatcher each.
    pub backends: Vec<String>,
    /// Prompts submitted ahead of the running one on each backend.
    pub prefetch: usize,
    /// Longest a job may take on a backend (queue wait included) before it is
    /// stopped and retried.
    pub job_timeout: Duration,
    /// First retry delay; doubles per attempt, with jitter.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How often `/history` is polled while the socket is healthy (a safety net for
    /// a silent socket; with the socket down, polling is every 250 ms).
    pub poll_interval: Duration,
    /// How often each backend's `/system_stats` is checked.
    pub health_interval: Duration,
    /// How often this process heartbeats (well inside the store's worker TTL).
    pub heartbeat_interval: Duration,
    /// How often the reaper and the retry promoter run.
    pub maintenance_interval: Duration,
    /// How long one claim call waits for a job (bounds shutdown latency).
    pub claim_wait: Duration,
    /// After a shutdown signal, how long running jobs may take to finish before
    /// they are handed back to the queue.
    pub shutdown_grace: Duration,
    /// Prefix of output URLs.
    pub public_url: String,
    /// Largest output file downloaded from ComfyUI; a larger one fails the job.
    pub max_output_bytes: u64,
    /// How often each backend's `/object_info` is read again (also on every
    /// reconnect).
    pub capabilities_interval: Duration,
    /// ComfyUI processes to launch and supervise (each adds a backend).
    pub launch: Option<launch::LaunchConfig>,
    /// How long jobs no live backend can run wait (for one that can to come)
    /// before they are failed.
    pub unroutable_after: Duration,
    /// How webhooks are delivered (this process delivers them).
    pub webhooks: Arc<crate::webhooks::WebhookSettings>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            job_ttl: Duration::from_secs(24 * 3600),
            output_ttl: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(60),
            sweep_grace: sweep::GRACE,
            backends: vec!["http://127.0.0.1:8188".into()],
            prefetch: 1,
            job_timeout: Duration::from_secs(600),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            health_interval: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(10),
            maintenance_interval: Duration::from_secs(1),
            claim_wait: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            public_url: String::new(),
            max_output_bytes: 2 << 30,
            launch: None,
            capabilities_interval: Duration::from_secs(300),
            unroutable_after: Duration::from_secs(60),
            webhooks: Default::default(),
        }
    }
}

/// All the workers of one process.
pub struct Workers {
    pub id: WorkerId,
    store: Arc<dyn JobStore>,
    catalog: Arc<Catalog>,
    images: Arc<dyn ImageStore>,
    config: Arc<WorkerConfig>,
    backends: Vec<Arc<Backend>>,
    /// ComfyUI processes this process launches, with their backends.
    launched: Vec<(
        launch::Instance,
        Arc<Backend>,
        Arc<crate::backends::Supervised>,
    )>,
    /// Stops the sockets and health checks, last of all.
    stop_backends: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

/// The backends of a process, as `/health` lists them.
pub struct BackendList(Vec<Arc<Backend>>);

impl BackendList {
    /// What `report_backends` publishes: the samples, as JSON.
    fn report_json(&self) -> String {
        serde_json::to_string(&self.samples()).unwrap_or_else(|_| "[]".into())
    }

    /// Its backends' capability fingerprints, in order.
    fn offers(&self) -> Vec<String> {
        self.0.iter().map(|b| b.offer_fingerprint()).collect()
    }
}

impl BackendReport for BackendList {
    fn snapshot(&self) -> Vec<BackendState> {
        self.0.iter().map(|b| b.snapshot()).collect()
    }

    fn samples(&self) -> Vec<BackendSample> {
        self.0
            .iter()
            .map(|b| {
                let s = b.snapshot();
                BackendSample {
                    url: s.url,
                    state: s.state.to_owned(),
                    in_flight: s.in_flight as u64,
                    done: s.done as u64,
                    busy_seconds: b.pacing.busy().as_secs_f64(),
                    device: s.device,
                    last_error: s.last_error,
                    restarts: b.process.as_ref().map_or(0, |p| p.restarts()),
                    caps: b.offer_fingerprint(),
                }
            })
            .collect()
    }
}

impl Workers {
    /// Sets up the backends (their sockets open at once).
    pub fn start(
        config: WorkerConfig,
        store: Arc<dyn JobStore>,
        catalog: Arc<Catalog>,
        images: Arc<dyn ImageStore>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Workers> {
        let (stop_backends, stop_rx) = watch::channel(false);
        let mut backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|url| {
                let client_id = format!("studio-{}", uuid::Uuid::new_v4().simple());
                Arc::new(Backend::start(url, &client_id, stop_rx.clone()))
            })
            .collect();
        let mut launched = Vec::new();
        if let Some(l) = &config.launch {
            let instances = launch::plan(l)
                .map_err(|e| anyhow::anyhow!("no free loopback port for ComfyUI: {e}"))?;
            for inst in instances {
                let sup = Arc::new(crate::backends::Supervised::default());
                let client_id = format!("studio-{}", uuid::Uuid::new_v4().simple());
                let b = Arc::new(Backend::start_with(
                    &inst.url(),
                    &client_id,
                    stop_rx.clone(),
                    Some(sup.clone()),
                ));
                backends.push(b.clone());
                launched.push((inst, b, sup));
            }
        }
        Ok(Workers {
            launched,
            id: WorkerId::generate(),
            store,
            catalog,
            images,
            config: Arc::new(config),
            backends,
            stop_backends,
            metrics,
        })
    }

    /// A view of the backends for `/health`.
    pub fn report(&self) -> Arc<dyn BackendReport> {
        Arc::new(BackendList(self.backends.clone()))
    }

    /// Runs until `shutdown` turns true; then stops claiming, lets running jobs
    /// finish for the grace period, hands back the rest, and deregisters.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let id = self.id.clone();
        let urls: Vec<&str> = self.backends.iter().map(|b| b.url.as_str()).collect();
        tracing::info!(worker = %id, backends = ?urls, launched = self.launched.len(), prefetch = self.config.prefetch, "workers starting");
        if let Err(e) = self.store.heartbeat(&id).await {
            tracing::warn!(error = %e, "first heartbeat failed; retrying in the background");
        }
        let (abort_tx, abort_rx) = watch::channel(false);
        let stop_rx = self.stop_backends.subscribe();
        let mut tasks = JoinSet::new();
        // The heartbeat stops first at the end, so it cannot re-register the worker
        // after it has deregistered.
        let (stop_heartbeat, heartbeat_stop_rx) = watch::channel(false);
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.store.clone(),
            BackendList(self.backends.clone()),
            id.clone(),
            self.config.heartbeat_interval,
            heartbeat_stop_rx,
        ));
        tasks.spawn(maintenance_loop(
            self.store.clone(),
            self.metrics.clone(),
            self.config.maintenance_interval,
            shutdown.clone(),
        ));
        tasks.spawn(sweep::sweep_loop(
            self.store.clone(),
            self.images.clone(),
            self.config.clone(),
            shutdown.clone(),
        ));
        match webhooks::Deliverer::new(
            self.store.clone(),
            self.config.webhooks.clone(),
            self.metrics.clone(),
        ) {
            Ok(d) => {
                tasks.spawn(Arc::new(d).run(shutdown.clone()));
            }
            Err(e) => tracing::error!(error = %e, "cannot make the webhook client; webhooks wait"),
        }
        for b in &self.backends {
            let b = b.clone();
            let every = self.config.health_interval;
            let stop = stop_rx.clone();
            tasks.spawn(async move { b.health_loop(every, stop).await });
        }
        for b in &self.backends {
            let b = b.clone();
            let store = self.store.clone();
            let every = self.config.capabilities_interval;
            let stop = stop_rx.clone();
            tasks.spawn(async move { b.capabilities_loop(store, every, stop).await });
        }
        // Launched ComfyUIs: stopped after the dispatchers, so running jobs can
        // finish on them during the grace period.
        let (stop_children, children_rx) = watch::channel(false);
        let mut supervisors = JoinSet::new();
        if let Some(l) = &self.config.launch {
            let l = Arc::new(l.clone());
            for (inst, b, sup) in &self.launched {
                supervisors.spawn(launch::supervise(
                    l.clone(),
                    inst.clone(),
                    b.clone(),
                    sup.clone(),
                    self.catalog.clone(),
                    children_rx.clone(),
                ));
            }
        }
        let mut dispatchers = JoinSet::new();
        let offers = Arc::new(Offers::default());
        let (pauses_tx, pauses_rx) = watch::channel(crate::store::Pauses::default());
        tasks.spawn(pause_loop(self.store.clone(), pauses_tx, shutdown.clone()));
        for b in &self.backends {
            let ctx = RunContext {
                store: self.store.clone(),
                catalog: self.catalog.clone(),
                images: self.images.clone(),
                config: self.config.clone(),
                backend: b.clone(),
                abort: abort_rx.clone(),
                metrics: self.metrics.clone(),
                offers: offers.clone(),
                pauses: pauses_rx.clone(),
                ran: Arc::default(),
            };
            dispatchers.spawn(dispatch(ctx, id.clone(), shutdown.clone()));
        }
        signalled(&mut shutdown.clone()).await;
        tracing::info!(
            grace_s = self.config.shutdown_grace.as_secs_f64(),
            "workers stopping: no new claims; finishing running jobs"
        );
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while dispatchers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::info!("grace period over: handing running jobs back to the queue");
            let _ = abort_tx.send(true);
            while dispatchers.join_next().await.is_some() {}
        }
        let _ = stop_children.send(true);
        while supervisors.join_next().await.is_some() {}
        let _ = stop_heartbeat.send(true);
        let _ = heartbeat.await;
        if let Err(e) = self.store.deregister(&id).await {
            tracing::warn!(error = %e, "could not deregister; the reaper will clean up");
        }
        let _ = self.stop_backends.send(true);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        tracing::info!(worker = %id, "workers stopped");
    }
}

/// How often a worker process reads what is paused: a pause takes effect
/// within this (a claim already waiting for a job hands it back untouched).
pub const PAUSE_POLL: Duration = Duration::from_millis(250);

/// Reads what is paused, for every dispatcher of this process.
async fn pause_loop(
    store: Arc<dyn JobStore>,
    tx: watch::Sender<crate::store::Pauses>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PAUSE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = signalled(&mut shutdown) => return,
        }
        match store.pauses().await {
            Ok(p) => {
                tx.send_if_modified(|old| {
                    let changed = *old != p;
                    if changed {
                        tracing::info!(farm = p.farm, backends = ?p.backends, "paused: what dispatchers may claim changed");
                        *old = p.clone();
                    }
                    changed
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read what is paused; keeping the last state")
            }
        }
    }
}

/// One backend's dispatcher: claims while the backend is up and has room.
async fn dispatch(ctx: RunContext, worker: WorkerId, mut shutdown: watch::Receiver<bool>) {
    let backend = ctx.backend.clone();
    let slots = Arc::new(Semaphore::new(1 + ctx.config.prefetch));
    let mut runners = JoinSet::new();
    let mut claim_failing = false;
    let mut offer_waited = false;
    loop {
        while runners.try_join_next().is_some() {}
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = backend.wait_up() => {}
            _ = signalled(&mut shutdown) => break,
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = signalled(&mut shutdown) => break,
        };
        if !backend.ready() {
            continue;
        }
        if ctx.pauses.borrow().blocks(&backend.url) {
            // Paused by an operator: claim nothing until resumed (running jobs go on).
            drop(permit);
            let mut pauses = ctx.pauses.clone();
            tokio::select! {
                _ = pauses.wait_for(|p| !p.blocks(&backend.url)) => {}
                _ = signalled(&mut shutdown) => break,
            }
            continue;
        }
        if ctx.config.prefetch > 0 {
            tokio::select! {
                _ = backend.pacing.wait() => {}
                _ = signalled(&mut shutdown) => break,
            }
        }
        if !offer_waited {
            // Its capabilities are read as soon as it is up: wait for them a
            // moment, so its first claim is routed too (then claim regardless:
            // a backend whose /object_info fails still runs what it is given).
            tokio::select! {
                _ = backend.wait_offer(OFFER_WAIT) => {}
                _ = signalled(&mut shutdown) => break,
            }
            offer_waited = true;
        }
        let route = match ctx.offers.live(ctx.store.as_ref()).await {
            Ok(live) => {
                let grace = ctx.config.unroutable_after;
                (backend.routing)
                    .route(backend.offer(), &live, grace, ctx.store.as_ref())
                    .await
            }
            Err(e) => Err(e),
        };
        let claimed = match route {
            Ok(route) => ctx
                .store
                .claim_routed(&worker, ctx.config.claim_wait, &route)
                .await
                .map(|r| match r {
                    Routed::Job(claim) => Some(*claim),
                    Routed::Nothing => None,
                    Routed::Stale => {
                        backend.routing.mark_stale();
                        None
                    }
                }),
            Err(e) => Err(e),
        };
        if claimed.is_ok() && claim_failing {
            tracing::info!(backend = %backend.url, "claiming jobs again");
            claim_failing = false;
        }
        match claimed {
            Ok(Some(claim)) if !backend.ready() || ctx.pauses.borrow().blocks(&backend.url) => {
                // The backend went down while we waited for a job: hand the job back
                // untouched (the attempt does not count) for a backend that is up.
                if let Err(e) = ctx.store.release(&claim.lease).await {
                    tracing::warn!(error = %e, job_id = %claim.lease.job_id, "could not hand back a job; it returns when its lease expires");
                }
            }
            Ok(Some(claim)) => {
                backend.in_flight.fetch_add(1, Ordering::Relaxed);
                let ctx = ctx.clone();
                let (turn, submitted) = Turn::new();
                runners.spawn(async move {
                    let b = ctx.backend.clone();
                    run_job(ctx, claim, turn).await;
                    b.in_flight.fetch_sub(1, Ordering::Relaxed);
                    b.done.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                });
                // Claim the next job only once this one is in the backend's queue, so
                // jobs reach ComfyUI in claim order.
                tokio::select! {
                    _ = submitted => {}
                    _ = signalled(&mut shutdown) => break,
                }
            }
            Ok(None) => {}
            Err(e) => {
                // Once per outage, not every half second.
                if !claim_failing {
                    tracing::warn!(error = %e, backend = %backend.url, "cannot claim jobs; retrying every 500 ms");
                    claim_failing = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = signalled(&mut shutdown) => break,
                }
            }
        }
    }
    while runners.join_next().await.is_some() {}
}

/// Claims one job for `backend` and runs it to its end, waiting up to `wait` for a
/// job. The dispatcher's step, callable from tests; `Ok(false)` if none came.
pub async fn run_one(
    ctx: RunContext,
    worker: &WorkerId,
    wait: Duration,
) -> Result<bool, StoreError> {
    match ctx.store.claim(worker, wait).await? {
        Some(claim) => {
            run_job(ctx, claim, Turn::new().0).await;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Heartbeats, and with each one publishes how this worker's backends are doing
/// (for `/ops` in any API process).
async fn heartbeat_loop(
    store: Arc<dyn JobStore>,
    backends: BackendList,
    id: WorkerId,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        let report = backends.report_json();
        let beat = async {
            store.heartbeat(&id).await?;
            store.report_backends(&id, &report).await
        };
        match beat.await {
            Ok(()) if failing => {
                tracing::info!("heartbeat restored");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "heartbeat failed");
                failing = true;
            }
            Err(_) => {}
        }
        // While failing, beat again soon: the moment the store is back, this
        // worker's lease must be renewed before a reaper decides it died.
        let next = if failing {
            every.min(Duration::from_millis(100))
        } else {
            every
        };
        // A backend that just read its capabilities is reported at once (within a
        // quarter second), not at the next beat: until then the API cannot refuse
        // the jobs it cannot run, nor offer its models.
        let reported = backends.offers();
        let until = tokio::time::Instant::now() + next;
        loop {
            let now = tokio::time::Instant::now();
            if now >= until || backends.offers() != reported {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep((until - now).min(Duration::from_millis(250))) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

async fn maintenance_loop(
    store: Arc<dyn JobStore>,
    metrics: Arc<Metrics>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match store.reap().await {
            Ok(taken_back) => {
                metrics.lease_expiries.inc_by(taken_back.len() as u64);
            }
            Err(e) => tracing::debug!(error = %e, "reaper skipped"),
        }
        if let Err(e) = store.promote_due().await {
            tracing::debug!(error = %e, "retry promotion skipped");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = signalled(&mut stop) => return,
        }
    }
}
