//! Running one claimed job on one backend: adopt a run that already happened,
//! otherwise submit; follow it (socket as a hint, history as the authority, always
//! under a deadline); collect its outputs; record the outcome.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use super::attempt::{Outcome, RunContext};
use super::convert::Convert;
use super::follow::{Followed, follow};
use super::outputs::collect;
use crate::comfy::{ComfyClient, ComfyError, RunStatus};
use crate::job::JobRecord;
use crate::store::{Claim, Completion, Lease, LeaseState, RetryOutcome};
use crate::workflow::CONTRACT_PARAMS;

/// After cancelling, how long we wait for the prompt to leave the backend before
/// giving its slot to the next job anyway.
const CANCEL_DRAIN: Duration = Duration::from_secs(30);

/// How recording an attempt's outcome went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    /// The job ended (finished, failed, cancelled, or out of attempts).
    Ended,
    /// It was handed back for a later attempt.
    Retried,
    /// Nothing of ours was recorded (the lease was lost, a hand-back, an error).
    Not,
}

/// Puts an uploaded picture on this backend, once per backend (content-named,
/// so a second job with the same picture uploads nothing); the name to use.
async fn put_input(ctx: &RunContext, upload: &str) -> Result<String, Outcome> {
    if let Some(name) = ctx.backend.inputs.lock().expect("inputs").get(upload) {
        return Ok(name.clone());
    }
    let dir = crate::uploads::uploads_dir();
    let blob = match ctx.images.open(&dir, upload).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(Outcome::Failed(format!(
                "input picture {upload} is no longer stored"
            )));
        }
        Err(e) => {
            return Err(Outcome::Retry(format!(
                "cannot read input picture {upload}: {e}"
            )));
        }
    };
    let bytes = match blob.read_all(ctx.config.max_output_bytes).await {
        Ok(b) => b,
        Err(e) => {
            return Err(Outcome::Retry(format!(
                "cannot read input picture {upload}: {e}"
            )));
        }
    };
    let kind = crate::uploads::sniff(&bytes).unwrap_or("image/png");
    let name = crate::uploads::comfy_name(upload, kind);
    match ctx.backend.client.upload_image(bytes, &name, kind).await {
        Ok(name) => {
            let mut known = ctx.backend.inputs.lock().expect("inputs");
            if known.len() >= super::backend::MAX_KNOWN_INPUTS {
                known.clear();
            }
            known.insert(upload.to_owned(), name.clone());
            Ok(name)
        }
        Err(e) => {
            if matches!(e, ComfyError::Unreachable { .. }) {
                ctx.backend.mark_down(&e.to_string());
            }
            Err(Outcome::Retry(format!(
                "cannot put input picture on the backend: {e}"
            )))
        }
    }
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
    let ctx = RunContext {
        ran: Arc::default(),
        ..ctx
    };
    async move {
        let lease = claim.lease.clone();
        let taken = std::time::Instant::now();
        let claimed_ms = crate::clock::now_ms();
        let workflow = ctx.metrics.workflow(&claim.job.workflow);
        if lease.attempt == 1
            && let Some(created) = crate::clock::parse_iso8601_ms(&claim.job.created_at)
        {
            let waited = crate::clock::now_ms().saturating_sub(created);
            ctx.metrics
                .job_wait
                .get_or_create(&workflow)
                .observe(waited as f64 / 1000.0);
        }
        let outcome = execute(&ctx, &lease, &claim.job, &mut turn).await;
        let ended = match &outcome {
            Outcome::Finished { .. } => Some("finished"),
            Outcome::Failed(_) => Some("failed"),
            Outcome::Cancelled { .. } => Some("cancelled"),
            Outcome::Retry(_) => {
                ctx.metrics.job_retries.get_or_create(&workflow).inc();
                None
            }
            Outcome::HandBack | Outcome::LeaseLost => None,
        };
        if let Some(outcome) = ended {
            ctx.metrics
                .jobs_completed
                .get_or_create(&crate::metrics::OutcomeLabels {
                    workflow: workflow.workflow.clone(),
                    outcome,
                })
                .inc();
            ctx.metrics
                .job_run
                .get_or_create(&workflow)
                .observe(taken.elapsed().as_secs_f64());
        }
        turn.give_back();
        ctx.backend.pacing.ended(
            lease.job_id.as_str(),
            matches!(outcome, Outcome::Finished { .. }),
        );
        tracing::debug!(?outcome, "attempt over");
        let settled = settle(&ctx, &lease, &outcome).await;
        if let Outcome::Cancelled {
            drain: Some(client),
        } = &outcome
        {
            // Keep the backend slot until the stopped prompt is gone, so the next
            // job does not queue behind a dying one unseen.
            wait_gone(client, lease.job_id.as_str(), CANCEL_DRAIN).await;
            // What it ran before it stopped is in its history now.
            if let Ok(Some(entry)) = client.history(lease.job_id.as_str()).await {
                let mut ran = ctx.ran.lock().expect("ran");
                ran.backend = client.base_url().to_owned();
                ran.run_ms = entry.run_ms;
            }
        }
        account(&ctx, &claim.job, &lease, &outcome, settled, claimed_ms).await;
        if settled == Settled::Ended
            && let Outcome::Finished { outputs, .. } = &outcome
        {
            keep_outputs(&ctx, &claim.job, outputs).await;
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

async fn settle(ctx: &RunContext, lease: &Lease, outcome: &Outcome) -> Settled {
    let store = &ctx.store;
    // The store may be down for a while (a Redis restart loads its whole AOF
    // before it answers). While this worker heartbeats, nobody else will take the
    // job, so keep trying (backing off to 5 s) for up to ten minutes.
    let until = tokio::time::Instant::now() + SETTLE_FOR;
    for attempt in 0u32.. {
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
                .map(ended),
            Outcome::Failed(error) => store
                .complete(
                    lease,
                    Completion::Failed {
                        error: error.clone(),
                    },
                )
                .await
                .map(ended),
            Outcome::Cancelled { .. } => store
                .complete(lease, Completion::Cancelled)
                .await
                .map(ended),
            Outcome::Retry(error) => {
                let delay = backoff(ctx.config.retry_base, ctx.config.retry_max, lease.attempt);
                store
                    .retry_later(lease, error, delay)
                    .await
                    .map(|r| match r {
                        RetryOutcome::GaveUp => {
                            tracing::warn!(%error, "giving up on the job");
                            Settled::Ended
                        }
                        RetryOutcome::Cancelled => Settled::Ended,
                        RetryOutcome::Scheduled { .. } => Settled::Retried,
                        RetryOutcome::Lost => Settled::Not,
                    })
            }
            Outcome::HandBack => store.release(lease).await.map(|()| Settled::Not),
            Outcome::LeaseLost => Ok(Settled::Not),
        };
        match result {
            Ok(settled) => return settled,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < until => {
                if attempt < 10 || attempt % 20 == 0 {
                    tracing::warn!(error = %e, "cannot record the outcome yet; retrying");
                }
                let wait = Duration::from_millis(200 * (u64::from(attempt) + 1));
                tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
            }
            Err(e) => {
                // A store that refuses (or has been away for ten minutes): the job
                // stays with this worker until it stops, then the reaper requeues it.
                tracing::error!(error = %e, "cannot record the outcome; the job is reclaimed when this worker stops");
                return Settled::Not;
            }
        }
    }
    Settled::Not
}

/// A completion's answer as a settlement: written (ours), or not.
fn ended(written: bool) -> Settled {
    if written {
        Settled::Ended
    } else {
        Settled::Not
    }
}

/// Records a finished job's outputs for the sweep: they go `--output-ttl` after
/// it ended (never while its record lives), and count against its key's
/// stored bytes meanwhile.
async fn keep_outputs(ctx: &RunContext, job: &JobRecord, outputs: &[crate::job::Output]) {
    if outputs.is_empty() {
        return;
    }
    let o = crate::store::StoredOutputs {
        job_id: job.id.clone(),
        owner: job.owner.clone(),
        files: outputs.iter().map(|o| o.filename.clone()).collect(),
        bytes: outputs.iter().map(|o| o.size).sum(),
    };
    let due = crate::clock::now_ms() + ctx.config.output_ttl.as_millis() as u64;
    if let Err(e) = a_few_times(|| ctx.store.keep_outputs(&o, due)).await {
        tracing::error!(error = %e, "cannot record the job's outputs for deletion; they stay until swept by hand");
    }
}

/// A store write after the outcome, tried up to five times while the store is
/// unavailable (backing off 0.2 to 0.8 s).
async fn a_few_times<T, F: Future<Output = Result<T, crate::store::StoreError>>>(
    mut write: impl FnMut() -> F,
) -> Result<T, crate::store::StoreError> {
    let mut attempt = 0u64;
    loop {
        match write().await {
            Err(e) if e.is_retryable() && attempt < 4 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            r => return r,
        }
    }
}

/// Writes the attempt's usage account once its outcome is recorded as ours (so
/// an attempt whose lease was lost, and whose prompt another worker adopted,
/// is never counted twice): every attempt that ended the job, and an attempt
/// handed back after its prompt ran.
async fn account(
    ctx: &RunContext,
    job: &JobRecord,
    lease: &Lease,
    outcome: &Outcome,
    settled: Settled,
    claimed_ms: u64,
) {
    let ran = ctx.ran.lock().expect("ran").clone();
    let outcome_word = match (settled, outcome) {
        (Settled::Not, _) => return,
        (Settled::Retried, _) if ran.run_ms.is_none() => return,
        (Settled::Retried, _) => "retried",
        (Settled::Ended, Outcome::Finished { .. }) => "finished",
        (Settled::Ended, Outcome::Cancelled { .. }) => "cancelled",
        (Settled::Ended, _) => "failed",
    };
    let now = crate::clock::now_ms();
    let backend = if ran.backend.is_empty() {
        ctx.backend.url.clone()
    } else {
        ran.backend
    };
    let gpu = if backend == ctx.backend.url {
        ctx.backend.device()
    } else {
        String::new()
    };
    let created = crate::clock::parse_iso8601_ms(&job.created_at).unwrap_or(now);
    // Its first start: recorded by an earlier attempt, or this claim.
    let started = if job.started_ms > 0 {
        job.started_ms
    } else {
        claimed_ms
    };
    let record = crate::store::UsageRecord {
        job_id: lease.job_id.to_string(),
        attempt: lease.attempt,
        owner: job.owner.clone(),
        workflow: job.workflow.clone(),
        version: job.workflow_version(),
        backend,
        gpu,
        gpu_ms: ran.run_ms.unwrap_or(0),
        wait_ms: if settled == Settled::Ended {
            started.saturating_sub(created)
        } else {
            0
        },
        output_bytes: match outcome {
            Outcome::Finished { outputs, .. } => outputs.iter().map(|o| o.size).sum(),
            _ => 0,
        },
        outcome: outcome_word.into(),
        ended_ms: now,
    };
    if let Err(e) = a_few_times(|| ctx.store.record_usage(&record)).await {
        tracing::error!(error = %e, gpu_ms = record.gpu_ms, "cannot write the job's usage account");
    }
}

/// How long a worker keeps trying to record a job's outcome while the store is
/// unavailable.
const SETTLE_FOR: Duration = Duration::from_secs(600);

async fn execute(ctx: &RunContext, lease: &Lease, job: &JobRecord, turn: &mut Turn) -> Outcome {
    let id = lease.job_id.as_str();
    // A job that no live backend has been able to run for longer than the grace
    // (accepted before any backend reported, or the backends with its model
    // left) was claimed to be failed, saying why.
    let req = crate::job::QueuePayload::parse(&lease.payload)
        .and_then(|(p, _)| p.req)
        .unwrap_or_default();
    if let Some(why) = ctx.backend.routing.doomed(&req) {
        return Outcome::Failed(format!("model-unavailable: {why}"));
    }
    // A job that ran before may have run on a backend that is still there: adopt
    // that run instead of using a GPU twice.
    if lease.attempt > 1
        && !job.backend.is_empty()
        && let Some(outcome) = adopt(ctx, lease, job, turn).await
    {
        return outcome;
    }

    let version = job.workflow_version();
    let workflow = match ctx.catalog.for_job(job).await {
        Ok(Some(wf)) => wf,
        Ok(None) => {
            return Outcome::Failed(match version {
                Some(v) => format!("workflow {}@{v} is not published", job.workflow),
                None => format!(
                    "unknown workflow {:?}; known workflows: {}",
                    job.workflow,
                    ctx.catalog.current().names().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Err(e) => return Outcome::Retry(format!("cannot read workflow {}: {e}", job.workflow)),
    };
    let mut params = Map::new();
    for (k, v) in &job.params {
        // Not the graph's: what the pictures are stored as (read by `collect`).
        if crate::workflow::request::SUBMISSION_FIELDS.contains(&k.as_str())
            || crate::workflow::request::KEPT_FIELDS.contains(&k.as_str())
        {
            continue;
        }
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
    // Jobs other programs pushed never passed the API's checks.
    if let Err(e) = workflow.check_budget(&params) {
        return Outcome::Failed(e);
    }
    let seed = job.seed.unwrap_or_else(|| fastrand::u64(..));
    // Input pictures go to the backend first; the graph gets the names it gave.
    let mut rendered = params.clone();
    for (name, spec) in &workflow.params {
        if !spec.kind.is_picture() {
            continue;
        }
        let Some(upload) = params.get(name).and_then(Value::as_str) else {
            continue;
        };
        match put_input(ctx, upload).await {
            Ok(file) => {
                rendered.insert(name.clone(), Value::String(file));
            }
            Err(outcome) => return outcome,
        }
    }
    let graph = workflow.render(id, &job.prompt, seed, &rendered);
    ctx.backend
        .routing
        .loaded(&crate::capabilities::Requirements::of_graph(&graph));

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
    if submitted.is_ok() {
        ctx.backend.pacing.submitted(id);
    }
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
        (
            &job.owner,
            job.params.contains_key(crate::workflow::COMFYUI_FIELD),
        ),
        client,
        Some(socket),
        cancels,
        graph.as_object().map_or(1, Map::len),
    )
    .await;
    conclude(ctx, lease, client, followed, Convert::of(&job.params)).await
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
    // The recorded backend is only a hint written into the store: a worker talks to
    // no server but those it was configured with.
    let configured = ctx
        .config
        .backends
        .iter()
        .any(|b| b.trim_end_matches('/') == job.backend);
    if !configured {
        tracing::info!(recorded = %job.backend, "the job ran before on a backend this worker does not drive; starting it afresh");
        return None;
    }
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
            return Some(
                conclude(
                    ctx,
                    lease,
                    &client,
                    Followed::Done(entry),
                    Convert::of(&job.params),
                )
                .await,
            );
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
        .catalog
        .for_job(job)
        .await
        .ok()
        .flatten()
        .map_or(1, |w| w.graph.len());
    let relay = job.params.contains_key(crate::workflow::COMFYUI_FIELD);
    let followed = follow(
        ctx,
        lease,
        (&job.owner, relay),
        &client,
        socket,
        cancels,
        total,
    )
    .await;
    Some(conclude(ctx, lease, &client, followed, Convert::of(&job.params)).await)
}

/// Turns how following ended into the attempt's outcome.
async fn conclude(
    ctx: &RunContext,
    lease: &Lease,
    client: &ComfyClient,
    followed: Followed,
    convert: Option<Convert>,
) -> Outcome {
    let id = lease.job_id.as_str();
    if let Followed::Done(entry) = &followed {
        let mut ran = ctx.ran.lock().expect("ran");
        ran.backend = client.base_url().to_owned();
        ran.run_ms = entry.run_ms;
    }
    match followed {
        Followed::Done(entry) => match entry.status {
            RunStatus::Success => collect(ctx, lease, client, &entry, convert).await,
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

#[cfg(test)]
mod tests {
    use super::*;

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
