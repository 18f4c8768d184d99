//! Running one claimed job on one backend: adopt a run that already happened,
//! otherwise submit; follow it (socket as a hint, history as the authority, always
//! under a deadline); collect its outputs; record the outcome.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::WorkerConfig;
use super::backend::Backend;
use super::progress::ProgressTracker;
use crate::comfy::{ComfyClient, ComfyError, HistoryEntry, RunStatus, SocketEvent, WsMessage};
use crate::job::{JobRecord, Output};
use crate::storage::{ImageStore, check_name, content_type, kind_of};
use crate::store::{Claim, Completion, JobEvent, JobStore, Lease, LeaseState, RetryOutcome};
use crate::workflow::{CONTRACT_PARAMS, WorkflowRegistry};

/// Polling interval while the socket is down or silent about our prompt.
const FAST_POLL: Duration = Duration::from_millis(250);
/// How often a running job checks its lease (and learns of a cancel).
const LEASE_CHECK: Duration = Duration::from_secs(2);
/// Progress is written at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// A backend that cannot be reached for this long fails the attempt (retried).
const UNREACHABLE_GRACE: Duration = Duration::from_secs(3);
/// After cancelling, how long we wait for the prompt to leave the backend before
/// giving its slot to the next job anyway.
const CANCEL_DRAIN: Duration = Duration::from_secs(30);

/// Everything a job run needs.
#[derive(Clone)]
pub struct RunContext {
    pub store: Arc<dyn JobStore>,
    pub workflows: Arc<WorkflowRegistry>,
    pub images: Arc<dyn ImageStore>,
    pub config: Arc<WorkerConfig>,
    pub backend: Arc<Backend>,
    /// Turns true when the grace period after shutdown is over: hand jobs back.
    pub abort: watch::Receiver<bool>,
}

/// How an attempt ended.
#[derive(Debug)]
enum Outcome {
    Finished {
        image_url: String,
        outputs: Vec<Output>,
    },
    /// The job's own fault: no retry.
    Failed(String),
    /// Cancelled; if a prompt was stopped on the backend, wait for it to leave (after
    /// recording the cancel) before the slot goes to the next job.
    Cancelled { drain: Option<ComfyClient> },
    /// Not the job's fault: retry later, maybe elsewhere.
    Retry(String),
    /// Someone else holds the job now.
    LeaseLost,
    /// Shutting down: hand the job back.
    HandBack,
}

/// How following a prompt ended.
enum Followed {
    Done(HistoryEntry),
    Cancel,
    LeaseLost,
    Vanished,
    Unreachable(ComfyError),
    TimedOut,
    HandBack,
}

/// The dispatcher's turn: given back once this job has been submitted to its
/// backend (or never will be), so jobs reach ComfyUI's queue in the order they were
/// claimed. Given back on drop at the latest.
pub struct Turn(Option<oneshot::Sender<()>>);

impl Turn {
    pub fn new() -> (Turn, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Turn(Some(tx)), rx)
    }

    fn give_back(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Runs one claimed job to its end and records the outcome.
pub async fn run_job(ctx: RunContext, claim: Claim, mut turn: Turn) {
    let span = tracing::info_span!("job", job_id = %claim.lease.job_id, backend = %ctx.backend.url, attempt = claim.lease.attempt);
    async move {
        let lease = claim.lease.clone();
        let outcome = execute(&ctx, &lease, &claim.job, &mut turn).await;
        turn.give_back();
        tracing::debug!(?outcome, "attempt over");
        settle(&ctx, &lease, &outcome).await;
        if let Outcome::Cancelled {
            drain: Some(client),
        } = &outcome
        {
            // Keep the backend slot until the stopped prompt is gone, so the next
            // job does not queue behind a dying one unseen.
            wait_gone(client, lease.job_id.as_str(), CANCEL_DRAIN).await;
        }
    }
    .instrument(span)
    .await
}

/// Exponential backoff with jitter for attempt `n` (1-based): half of
/// `base * 2^(n-1)` (capped) plus a random part up to the other half.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    let half = exp / 2;
    half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
}

async fn settle(ctx: &RunContext, lease: &Lease, outcome: &Outcome) {
    let store = &ctx.store;
    // The store may be briefly down; a lost outcome would be re-run (and adopted),
    // so try for a while before giving up.
    for attempt in 0..10u32 {
        let result = match outcome {
            Outcome::Finished { image_url, outputs } => store
                .complete(
                    lease,
                    Completion::Finished {
                        image_url: image_url.clone(),
                        outputs: outputs.clone(),
                    },
                )
                .await
                .map(drop),
            Outcome::Failed(error) => store
                .complete(
                    lease,
                    Completion::Failed {
                        error: error.clone(),
                    },
                )
                .await
                .map(drop),
            Outcome::Cancelled { .. } => {
                store.complete(lease, Completion::Cancelled).await.map(drop)
            }
            Outcome::Retry(error) => {
                let delay = backoff(ctx.config.retry_base, ctx.config.retry_max, lease.attempt);
                store.retry_later(lease, error, delay).await.map(|r| {
                    if r == RetryOutcome::GaveUp {
                        tracing::warn!(%error, "giving up on the job");
                    }
                })
            }
            Outcome::HandBack => store.release(lease).await,
            Outcome::LeaseLost => Ok(()),
        };
        match result {
            Ok(()) => return,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "cannot record the outcome yet; retrying");
                tokio::time::sleep(Duration::from_millis(200 * (attempt as u64 + 1))).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record the outcome");
                return;
            }
        }
    }
    tracing::error!(
        "gave up recording the outcome; the job will be reclaimed after its lease expires"
    );
}

async fn execute(ctx: &RunContext, lease: &Lease, job: &JobRecord, turn: &mut Turn) -> Outcome {
    let id = lease.job_id.as_str();
    // A job that ran before may have run on a backend that is still there: adopt
    // that run instead of using a GPU twice.
    if lease.attempt > 1
        && !job.backend.is_empty()
        && let Some(outcome) = adopt(ctx, lease, job, turn).await
    {
        return outcome;
    }

    let Some(workflow) = ctx.workflows.get(&job.workflow) else {
        return Outcome::Failed(format!(
            "unknown workflow {:?}; known workflows: {}",
            job.workflow,
            ctx.workflows.names().collect::<Vec<_>>().join(", ")
        ));
    };
    let mut params = Map::new();
    for (k, v) in &job.params {
        match workflow.params.get(k) {
            Some(spec) if !CONTRACT_PARAMS.contains(&k.as_str()) => match spec.check(v) {
                Ok(v) => {
                    params.insert(k.clone(), v);
                }
                Err(e) => return Outcome::Failed(format!("parameter {k} {}", e.message)),
            },
            _ => {
                return Outcome::Failed(format!(
                    "workflow {} has no parameter {k:?}",
                    workflow.name
                ));
            }
        }
    }
    workflow.resolve_defaults(&mut params);
    let seed = job.seed.unwrap_or_else(|| fastrand::u64(..));
    let graph = workflow.render(id, &job.prompt, seed, &params);

    // Record where the job runs before submitting, so a worker that re-claims it
    // after a crash knows where to look.
    match ctx.store.update(lease, None, Some(&ctx.backend.url)).await {
        Ok(LeaseState::Held) => {}
        Ok(LeaseState::CancelRequested) => return Outcome::Cancelled { drain: None },
        Ok(LeaseState::Lost) => return Outcome::LeaseLost,
        Err(e) => return Outcome::Retry(format!("could not record the backend: {e}")),
    }

    // Listen before submitting, so no event of our prompt is missed.
    let socket = ctx.backend.socket.subscribe();
    let cancels = ctx.store.subscribe();
    let extra = json!({"studio": {
        "job_id": id,
        "prompt": job.prompt,
        "seed": seed,
        "workflow": workflow.name,
        "params": Value::Object(params.clone()),
    }});
    let client = &ctx.backend.client;
    let submitted = client.submit(id, &graph, extra).await;
    turn.give_back();
    match submitted {
        Ok(s) => {
            if s.node_errors.as_object().is_some_and(|m| !m.is_empty()) {
                tracing::warn!(node_errors = %s.node_errors, "ComfyUI dropped some output branches as invalid");
            }
        }
        Err(e) if e.is_job_fault() => return Outcome::Failed(e.to_string()),
        Err(e) => {
            if matches!(e, ComfyError::Unreachable { .. }) {
                ctx.backend.mark_down(&e.to_string());
            }
            return Outcome::Retry(e.to_string());
        }
    }
    tracing::debug!("submitted");
    let followed = follow(
        ctx,
        lease,
        client,
        Some(socket),
        cancels,
        graph.as_object().map_or(1, Map::len),
    )
    .await;
    conclude(ctx, lease, client, followed).await
}

/// Looks for an earlier run of this job on the backend recorded for it. `None` when
/// there is nothing to adopt (then the job is submitted afresh).
async fn adopt(
    ctx: &RunContext,
    lease: &Lease,
    job: &JobRecord,
    turn: &mut Turn,
) -> Option<Outcome> {
    let id = lease.job_id.as_str();
    let ours = job.backend == ctx.backend.url;
    let client = if ours {
        ctx.backend.client.clone()
    } else {
        ComfyClient::new(
            &job.backend,
            &format!("studio-adopt-{}", uuid::Uuid::new_v4().simple()),
        )
    };
    let socket = ours.then(|| ctx.backend.socket.subscribe());
    let cancels = ctx.store.subscribe();
    let known = match client.history(id).await {
        Ok(Some(entry)) => {
            turn.give_back();
            tracing::info!(recorded = %job.backend, "adopting the run that already finished");
            return Some(conclude(ctx, lease, &client, Followed::Done(entry)).await);
        }
        Ok(None) => client
            .queue()
            .await
            .map(|q| q.contains(id))
            .unwrap_or(false),
        Err(_) => false,
    };
    if !known {
        return None;
    }
    turn.give_back();
    tracing::info!(recorded = %job.backend, "adopting the run still on the backend");
    if let Ok(LeaseState::Lost) = ctx.store.update(lease, None, Some(&job.backend)).await {
        return Some(Outcome::LeaseLost);
    }
    let total = ctx
        .workflows
        .get(&job.workflow)
        .map_or(1, |w| w.graph.len());
    let followed = follow(ctx, lease, &client, socket, cancels, total).await;
    Some(conclude(ctx, lease, &client, followed).await)
}

/// Turns how following ended into the attempt's outcome.
async fn conclude(
    ctx: &RunContext,
    lease: &Lease,
    client: &ComfyClient,
    followed: Followed,
) -> Outcome {
    let id = lease.job_id.as_str();
    match followed {
        Followed::Done(entry) => match entry.status {
            RunStatus::Success => collect(ctx, lease, client, &entry).await,
            RunStatus::Error(e) => Outcome::Failed(e.describe()),
            RunStatus::Failed(m) => Outcome::Failed(m),
            RunStatus::Interrupted => {
                // Not interrupted by us (we return through `Cancel` then): someone
                // stopped it on the ComfyUI server itself.
                Outcome::Failed(format!(
                    "the run was interrupted on the ComfyUI server at {}",
                    client.base_url()
                ))
            }
        },
        Followed::Cancel => {
            stop_prompt(client, id).await;
            Outcome::Cancelled {
                drain: Some(client.clone()),
            }
        }
        Followed::LeaseLost => {
            // Another worker may have adopted this very prompt (same backend): only
            // stop it if the job now lives elsewhere or is over.
            match ctx.store.get(&lease.job_id).await {
                Ok(Some(now)) if now.backend != client.base_url() || now.status.is_final() => {
                    tracing::warn!("lease lost; stopping our prompt");
                    stop_prompt(client, id).await;
                }
                _ => tracing::warn!("lease lost; leaving the prompt to whoever holds the job now"),
            }
            Outcome::LeaseLost
        }
        Followed::Vanished => Outcome::Retry(format!(
            "the prompt disappeared from ComfyUI at {} without a result (did the server restart?)",
            client.base_url()
        )),
        Followed::Unreachable(e) => {
            ctx.backend.mark_down(&e.to_string());
            Outcome::Retry(e.to_string())
        }
        Followed::TimedOut => {
            stop_prompt(client, id).await;
            Outcome::Retry(format!(
                "ComfyUI at {} did not finish the job within {} s",
                client.base_url(),
                ctx.config.job_timeout.as_secs()
            ))
        }
        Followed::HandBack => Outcome::HandBack,
    }
}

/// Removes the prompt from the backend's queue if it waits there, and interrupts
/// exactly it if it runs (never a global interrupt).
async fn stop_prompt(client: &ComfyClient, id: &str) {
    if let Err(e) = client.delete_queued(&[id]).await {
        tracing::debug!(error = %e, "queue delete failed");
    }
    if let Err(e) = client.interrupt(id).await {
        tracing::debug!(error = %e, "interrupt failed");
    }
}

/// Waits until the prompt has left the backend (history written, or not queued).
async fn wait_gone(client: &ComfyClient, id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match client.queue().await {
            Ok(q) if !q.contains(id) => return,
            Err(_) => return,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Follows a submitted prompt to its end.
async fn follow(
    ctx: &RunContext,
    lease: &Lease,
    client: &ComfyClient,
    mut socket: Option<broadcast::Receiver<SocketEvent>>,
    mut cancels: broadcast::Receiver<JobEvent>,
    total_nodes: usize,
) -> Followed {
    let id = lease.job_id.as_str();
    let deadline = Instant::now() + ctx.config.job_timeout;
    let mut tracker = ProgressTracker::new(id, total_nodes);
    let mut written: u8 = 0;
    let mut last_write = Instant::now() - PROGRESS_EVERY;
    let socket_ok = |s: &Option<broadcast::Receiver<SocketEvent>>| {
        s.is_some() && ctx.backend.socket.is_connected()
    };
    let mut poll_every = if socket_ok(&socket) {
        ctx.config.poll_interval
    } else {
        FAST_POLL
    };
    let mut next_poll = Instant::now() + poll_every;
    let mut lease_check = tokio::time::interval(LEASE_CHECK);
    lease_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    lease_check.tick().await;
    let mut flush = tokio::time::interval(PROGRESS_EVERY);
    flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut unreachable_since: Option<Instant> = None;
    let mut missing = 0u32;
    let mut abort = ctx.abort.clone();

    loop {
        tokio::select! {
            ev = recv_socket(&mut socket) => match ev {
                Some(SocketEvent::Message(m)) if m.prompt_id() == Some(id) => {
                    if m.is_done_for(id) {
                        // History is written before this message: look now.
                        next_poll = Instant::now();
                        continue;
                    }
                    if let WsMessage::ExecutionStart { .. } = *m {
                        tracing::debug!("running");
                    }
                    tracker.apply(&m);
                }
                Some(SocketEvent::Message(_)) => {}
                Some(SocketEvent::Connected) => {
                    // Anything may have happened while the socket was down.
                    poll_every = ctx.config.poll_interval;
                    next_poll = Instant::now();
                }
                Some(SocketEvent::Disconnected(_)) => {
                    poll_every = FAST_POLL;
                    next_poll = next_poll.min(Instant::now() + FAST_POLL);
                }
                None => {
                    // Lagged or closed: re-sync by polling.
                    poll_every = FAST_POLL;
                    next_poll = Instant::now();
                }
            },
            _ = tokio::time::sleep_until(next_poll) => {
                match poll(client, id).await {
                    Ok(Some(entry)) => {
                        flush_progress(ctx, lease, &tracker, &mut written).await;
                        return Followed::Done(entry);
                    }
                    Ok(None) => {
                        unreachable_since = None;
                        missing = 0;
                    }
                    Err(PollError::Missing) => {
                        unreachable_since = None;
                        // Between "not in history" and "not in the queue" the prompt
                        // may just have finished: only a second miss means it is gone.
                        missing += 1;
                        if missing >= 2 {
                            return Followed::Vanished;
                        }
                        next_poll = Instant::now() + Duration::from_millis(50);
                        continue;
                    }
                    Err(PollError::Comfy(e)) => {
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= UNREACHABLE_GRACE {
                            return Followed::Unreachable(e);
                        }
                        poll_every = FAST_POLL;
                    }
                }
                if socket_ok(&socket) && poll_every == FAST_POLL && unreachable_since.is_none() {
                    poll_every = ctx.config.poll_interval;
                }
                next_poll = Instant::now() + poll_every;
            }
            _ = flush.tick() => {
                if tracker.percent() > written && last_write.elapsed() >= PROGRESS_EVERY {
                    match write_progress(ctx, lease, tracker.percent()).await {
                        Some(LeaseState::Lost) => return Followed::LeaseLost,
                        Some(LeaseState::CancelRequested) => return Followed::Cancel,
                        Some(LeaseState::Held) => written = tracker.percent(),
                        None => {}
                    }
                    last_write = Instant::now();
                }
            }
            _ = lease_check.tick() => {
                match ctx.store.update(lease, None, None).await {
                    Ok(LeaseState::Lost) => return Followed::LeaseLost,
                    Ok(LeaseState::CancelRequested) => return Followed::Cancel,
                    _ => {}
                }
            }
            ev = cancels.recv() => match ev {
                Ok(JobEvent { job }) if job.id == id && job.cancel_requested => return Followed::Cancel,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => cancels = ctx.store.subscribe(),
            },
            _ = tokio::time::sleep_until(deadline) => return Followed::TimedOut,
            _ = crate::shutdown::signalled(&mut abort) => return Followed::HandBack,
        }
    }
}

async fn recv_socket(socket: &mut Option<broadcast::Receiver<SocketEvent>>) -> Option<SocketEvent> {
    match socket {
        Some(rx) => match rx.recv().await {
            Ok(ev) => Some(ev),
            Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => {
                *socket = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

enum PollError {
    /// Neither in history nor in the queue.
    Missing,
    Comfy(ComfyError),
}

/// History first (the authority), then the queue.
async fn poll(client: &ComfyClient, id: &str) -> Result<Option<HistoryEntry>, PollError> {
    if let Some(entry) = client.history(id).await.map_err(PollError::Comfy)? {
        return Ok(Some(entry));
    }
    let q = client.queue().await.map_err(PollError::Comfy)?;
    if q.contains(id) {
        Ok(None)
    } else {
        // One more look: it may have finished between the two calls.
        match client.history(id).await.map_err(PollError::Comfy)? {
            Some(entry) => Ok(Some(entry)),
            None => Err(PollError::Missing),
        }
    }
}

async fn write_progress(ctx: &RunContext, lease: &Lease, pct: u8) -> Option<LeaseState> {
    match ctx.store.update(lease, Some(pct), None).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "progress not written");
            None
        }
    }
}

async fn flush_progress(
    ctx: &RunContext,
    lease: &Lease,
    tracker: &ProgressTracker,
    written: &mut u8,
) {
    if tracker.percent() > *written
        && write_progress(ctx, lease, tracker.percent())
            .await
            .is_some()
    {
        *written = tracker.percent();
    }
}

/// Fetches every output file through `/view` and stores it.
async fn collect(
    ctx: &RunContext,
    lease: &Lease,
    client: &ComfyClient,
    entry: &HistoryEntry,
) -> Outcome {
    let job_id = &lease.job_id;
    let mut outputs: Vec<Output> = Vec::new();
    for file in entry.files.iter().filter(|f| f.kind == "output") {
        let name = match stored_name(&file.subfolder, &file.filename) {
            Ok(n) => unique(n, &outputs),
            Err(why) => {
                tracing::warn!(filename = %file.filename, subfolder = %file.subfolder, why, "refused an output file name from the backend");
                continue;
            }
        };
        let (bytes, _) = match client.view(file).await {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Retry(format!("could not download output {}: {e}", file.filename));
            }
        };
        let stored = match ctx.images.put(job_id, &name, &bytes).await {
            Ok(s) => s,
            Err(e) => return Outcome::Retry(format!("could not store output {name}: {e}")),
        };
        let ctype = content_type(&stored.name);
        outputs.push(Output {
            node: file.node.clone(),
            filename: stored.name.clone(),
            kind: kind_of(ctype).to_owned(),
            content_type: ctype.to_owned(),
            url: format!(
                "{}/images/{}/{}",
                ctx.config.public_url, job_id, stored.name
            ),
            size: stored.size,
        });
    }
    if outputs.is_empty() {
        return Outcome::Failed(
            "the workflow finished but saved no output file (it needs a SaveImage or another save node)".into(),
        );
    }
    let image_url = outputs
        .iter()
        .find(|o| o.kind == "image")
        .unwrap_or(&outputs[0])
        .url
        .clone();
    Outcome::Finished { image_url, outputs }
}

/// The name an output is stored under: its file name, prefixed by its subfolder when
/// it has one, every part checked (no `..`, no absolute paths, no odd characters).
fn stored_name(subfolder: &str, filename: &str) -> Result<String, &'static str> {
    check_name(filename).map_err(|_| "bad file name")?;
    if subfolder.is_empty() {
        return Ok(filename.to_owned());
    }
    if subfolder.starts_with('/') || subfolder.starts_with('\\') {
        return Err("absolute subfolder");
    }
    let mut parts = Vec::new();
    for part in subfolder.split(['/', '\\']).filter(|p| !p.is_empty()) {
        check_name(part).map_err(|_| "bad subfolder")?;
        parts.push(part);
    }
    parts.push(filename);
    let name = parts.join("_");
    check_name(&name).map_err(|_| "name too long")?;
    Ok(name)
}

/// Makes a name unique among the outputs already stored for this job.
fn unique(name: String, taken: &[Output]) -> String {
    if !taken.iter().any(|o| o.filename == name) {
        return name;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) => (s.to_owned(), format!(".{e}")),
        None => (name.clone(), String::new()),
    };
    (2..)
        .map(|i| format!("{stem}-{i}{ext}"))
        .find(|n| !taken.iter().any(|o| &o.filename == n))
        .expect("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_from_a_misbehaving_backend_are_refused() {
        assert_eq!(stored_name("", "a.png").unwrap(), "a.png");
        assert_eq!(stored_name("x/y", "a.png").unwrap(), "x_y_a.png");
        assert!(stored_name("", "../a.png").is_err());
        assert!(stored_name("../..", "a.png").is_err());
        assert!(stored_name("/etc", "a.png").is_err());
        assert!(stored_name("", "/etc/passwd").is_err());
        assert!(stored_name("", ".bashrc").is_err());
        assert!(stored_name("a", "b\u{0}.png").is_err());
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for attempt in 1..20 {
            let d = backoff(base, max, attempt);
            let exp = base.saturating_mul(1 << (attempt - 1).min(16)).min(max);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
        }
    }
}
