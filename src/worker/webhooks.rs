//! The delivery loop of a worker process: claims due webhooks from the outbox,
//! reads each job, sends what its state calls for, and writes back how it went.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinSet;

use crate::auth::signing::{Signing, UrlSigner};
use crate::clock;
use crate::job::{BatchView, JobRecord, JobStatus, JobView};
use crate::metrics::Metrics;
use crate::store::{ClaimedWebhook, JobStore};
use crate::webhooks::{
    ORPHAN_GRACE, WebhookRecord, WebhookSettings, egress, message_id, signature,
};

/// How often the outbox is looked at without a wake-up (due retries, rechecks).
const POLL: Duration = Duration::from_millis(500);

/// What a failed attempt means for the webhook.
#[derive(Debug)]
enum Failure {
    /// Try again on the schedule.
    Retry { error: String, status: u16 },
    /// `410 Gone`: the receiver wants nothing more.
    Gone,
    /// The address may not be sent to.
    Refused(String),
}

/// The JSON body of every message (the spec's suggested shape): `data` is the
/// job's view, or the batch's.
#[derive(Serialize)]
struct Message<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: T,
}

/// Sends webhooks for one worker process.
pub struct Deliverer {
    store: Arc<dyn JobStore>,
    settings: Arc<WebhookSettings>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    signer: tokio::sync::OnceCell<UrlSigner>,
    fair: Fairness,
}

/// Consecutive failed attempts at one receiver that open its breaker.
const BREAKER_AFTER: u32 = 3;
/// Longest an opened breaker stays open. It opens at first for the schedule's
/// first retry delay (5 s by default: a receiver back soon loses little), doubling
/// while the receiver keeps failing.
const BREAKER_MAX: Duration = Duration::from_secs(300);
/// A webhook whose receiver or key has its share in flight is due again this
/// much later (no attempt counted).
const DEFER: Duration = Duration::from_secs(1);

/// Sharing the deliverer's slots: a receiver (scheme, host and port) and a key
/// each get a part of them, so one key's slow or dead receiver cannot hold back
/// everyone else's webhooks; a receiver that keeps failing has its breaker
/// opened, and its webhooks wait without an attempt counted.
struct Fairness {
    per_receiver: usize,
    per_owner: usize,
    /// How long a breaker opens at first.
    open_for: Duration,
    state: std::sync::Mutex<FairState>,
}

#[derive(Default)]
struct FairState {
    receivers: std::collections::HashMap<String, usize>,
    owners: std::collections::HashMap<String, usize>,
    /// Receiver → (failures in a row, open until ms).
    breakers: std::collections::HashMap<String, (u32, u64)>,
}

/// What the fair share decided for one claimed webhook.
enum Turn {
    Go(Share),
    /// Due again at this time (ms), untouched.
    Later(u64),
}

/// A delivery's place in its receiver's and its key's shares.
struct Share {
    receiver: String,
    owner: String,
    fair: Arc<Deliverer>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut guard = self.fair.fair.lock();
        let s = &mut *guard;
        for (map, key) in [
            (&mut s.receivers, &self.receiver),
            (&mut s.owners, &self.owner),
        ] {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

/// The receiver a webhook goes to: its URL's scheme, host and port.
fn receiver_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| {
            format!(
                "{}://{}:{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port_or_known_default().unwrap_or(0)
            )
        })
        .unwrap_or_else(|_| url.to_owned())
}

impl Fairness {
    fn new(slots: usize, open_for: Duration) -> Self {
        Fairness {
            per_receiver: (slots / 4).max(2),
            per_owner: (slots / 2).max(2),
            open_for: open_for.clamp(Duration::from_millis(50), BREAKER_MAX),
            state: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FairState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver's attempt ended: a success closes its breaker, a failure
    /// counts toward opening it.
    fn ended(&self, receiver: &str, ok: bool) {
        let mut s = self.lock();
        if ok {
            s.breakers.remove(receiver);
            return;
        }
        let now = clock::now_ms();
        let (failures, until) = s.breakers.entry(receiver.to_owned()).or_insert((0, 0));
        *failures += 1;
        if *failures >= BREAKER_AFTER {
            let doublings = (*failures - BREAKER_AFTER).min(8);
            let open = (self.open_for * 2u32.pow(doublings)).min(BREAKER_MAX);
            *until = now + open.as_millis() as u64;
            if *failures == BREAKER_AFTER {
                tracing::warn!(
                    receiver,
                    open_s = open.as_secs(),
                    "webhook receiver keeps failing: its breaker is open; its webhooks wait"
                );
            }
        }
    }
}

/// The HTTP client webhooks go out with: no redirects, no proxy, every name
/// resolved through the address guard, the attempt bounded by the timeout.
pub fn client(settings: &WebhookSettings) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(4)
        .user_agent(concat!("StudioCore-Webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(egress::GuardedResolver {
            allow_private: settings.allow_private,
        }))
        .build()
        .map_err(|e| e.to_string())
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn JobStore>,
        settings: Arc<WebhookSettings>,
        metrics: Arc<Metrics>,
    ) -> Result<Deliverer, String> {
        Ok(Deliverer {
            fair: Fairness::new(
                settings.concurrency.max(1),
                settings
                    .schedule
                    .first()
                    .copied()
                    .unwrap_or(Duration::from_secs(5)),
            ),
            client: client(&settings)?,
            store,
            settings,
            metrics,
            signer: tokio::sync::OnceCell::new(),
        })
    }

    /// Runs until `shutdown` turns true. Deliveries in flight then are dropped;
    /// their leases run out and another worker sends them again (same id).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut events = self.store.subscribe();
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let look = tokio::select! {
                _ = shutdown.changed() => break,
                ev = events.recv() => match ev {
                    Ok(ev) if ev.preview.is_none() && (wants_wake(&ev.job) || ends_batch(&ev.job)) => {
                        // The job's own webhook, and its batch's when it ended.
                        let ids = [
                            Some(ev.job.id.as_str()).filter(|_| wants_wake(&ev.job)),
                            ev.job.batch_id().filter(|_| ends_batch(&ev.job)),
                        ];
                        for id in ids.into_iter().flatten() {
                            if let Ok(id) = crate::job::JobId::parse(id)
                                && let Err(e) = self.store.wake_webhook(&id).await
                            {
                                tracing::debug!(error = %e, "webhook wake-up failed; the recheck catches it");
                            }
                        }
                        true
                    }
                    Ok(_) => false,
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => {
                        tokio::time::sleep(POLL).await;
                        events = self.store.subscribe();
                        true
                    }
                },
                _ = tick.tick() => true,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => true,
            };
            let free = slots.available_permits();
            if !look || free == 0 {
                continue;
            }
            // Look deeper than the free slots: entries whose receiver or key has
            // its share in flight are put back, and what lies behind them (another
            // key's webhook) is reached in this round, not after many.
            let look_at = (free * 8).clamp(64, 256);
            match self
                .store
                .claim_webhooks(self.settings.lease(), look_at)
                .await
            {
                Ok(claimed) => {
                    for c in claimed {
                        let share = match self.clone().turn(&c) {
                            Turn::Go(share) => share,
                            Turn::Later(due) => {
                                let mut rec = c.record.clone();
                                if rec.next_attempt_ms > 0 {
                                    rec.next_attempt_ms = rec.next_attempt_ms.max(due);
                                }
                                self.settle(&c, &mut rec, Some(due)).await;
                                continue;
                            }
                        };
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            // No slot left this round: back, due at once.
                            drop(share);
                            let mut rec = c.record.clone();
                            self.settle(&c, &mut rec, Some(clock::now_ms())).await;
                            continue;
                        };
                        let me = self.clone();
                        tasks.spawn(async move {
                            me.deliver(c).await;
                            drop(share);
                            drop(permit);
                        });
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot claim webhooks"),
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    /// Whether a claimed webhook goes now: its receiver's breaker is closed and
    /// its receiver and key are within their shares.
    fn turn(self: Arc<Self>, c: &ClaimedWebhook) -> Turn {
        let receiver = receiver_of(&c.record.url);
        let owner = c.record.owner.clone();
        let now = clock::now_ms();
        {
            let mut s = self.fair.lock();
            if let Some((_, until)) = s.breakers.get(&receiver)
                && *until > now
            {
                return Turn::Later(*until);
            }
            let busy_receiver = s.receivers.get(&receiver).copied().unwrap_or(0);
            let busy_owner = s.owners.get(&owner).copied().unwrap_or(0);
            if busy_receiver >= self.fair.per_receiver || busy_owner >= self.fair.per_owner {
                return Turn::Later(now + DEFER.as_millis() as u64);
            }
            *s.receivers.entry(receiver.clone()).or_insert(0) += 1;
            *s.owners.entry(owner.clone()).or_insert(0) += 1;
        }
        Turn::Go(Share {
            receiver,
            owner,
            fair: self,
        })
    }

    /// Sends what job `c.job_id`'s state calls for, then settles the entry.
    pub async fn deliver(&self, c: ClaimedWebhook) {
        if c.record.batch {
            return self.deliver_batch(c).await;
        }
        let mut rec = c.record.clone();
        let job = match self.store.get(&c.job_id).await {
            Ok(job) => job,
            // The lease runs out and the entry comes back.
            Err(e) => {
                return tracing::debug!(job_id = %c.job_id, error = %e, "webhook: cannot read the job");
            }
        };
        let now = clock::now_ms();
        let Some(job) = job else {
            let due = if now < rec.created_ms + ORPHAN_GRACE.as_millis() as u64 {
                // Submitted a moment ago: its job is being queued.
                Some(now + 10_000)
            } else {
                rec.state = "failed".into();
                rec.last_error = "the job is gone (expired, or it was never queued)".into();
                None
            };
            return self.settle(&c, &mut rec, due).await;
        };
        loop {
            let Some(event) = next_message(&rec, &job) else {
                if job.status.is_final() {
                    rec.state = if rec.delivered > 0 {
                        "delivered"
                    } else {
                        "skipped"
                    }
                    .into();
                    return self.settle(&c, &mut rec, None).await;
                }
                rec.state = "waiting".into();
                let recheck = recheck_after(clock::now_ms().saturating_sub(rec.created_ms));
                self.settle(&c, &mut rec, Some(clock::now_ms() + recheck))
                    .await;
                // A change while this worker held the entry did not wake it.
                if let Ok(Some(now)) = self.store.get(&c.job_id).await
                    && (now.status.is_final() || now.status != job.status)
                {
                    let _ = self.store.wake_webhook(&c.job_id).await;
                }
                return;
            };
            rec.last_message_id = message_id(&job.id, event);
            let sent = self.send(&rec, &job, event).await;
            self.ended(&rec, &sent);
            match sent {
                Ok(status) => {
                    self.succeeded(&mut rec, status);
                    tracing::info!(job_id = %job.id, event, url = %rec.url, status, "webhook delivered");
                    if event == "job.started" {
                        rec.started_done = true;
                        continue;
                    }
                    return self.settle(&c, &mut rec, None).await;
                }
                Err(f) => {
                    let due = self.failed(&mut rec, event, f);
                    if due.is_none() && event == "job.started" && rec.state == "failed" {
                        // The start could not be told; the end still will be.
                        rec.started_done = true;
                        rec.attempts = 0;
                        continue;
                    }
                    return self.settle(&c, &mut rec, due).await;
                }
            }
        }
    }

    /// Records a failed attempt; when the webhook is due again (`None`: never).
    fn failed(&self, rec: &mut WebhookRecord, event: &str, f: Failure) -> Option<u64> {
        let now = clock::now_ms();
        rec.attempts += 1;
        rec.next_attempt_ms = 0;
        match f {
            Failure::Gone => {
                self.count("gone");
                rec.state = "gone".into();
                rec.last_status = 410;
                rec.last_error = "the receiver answered 410 Gone: nothing more is sent".into();
                None
            }
            Failure::Refused(why) => {
                self.count("refused");
                rec.state = "refused".into();
                rec.last_status = 0;
                rec.last_error = why;
                None
            }
            Failure::Retry { error, status } => {
                rec.last_status = status;
                rec.last_error = error;
                let attempts = rec.attempts as usize;
                match self.settings.schedule.get(attempts - 1) {
                    Some(delay) => {
                        self.count("retry");
                        rec.state = "retrying".into();
                        rec.next_attempt_ms = now + delay.as_millis() as u64;
                        tracing::info!(url = %rec.url, event, attempts, error = %rec.last_error, retry_in_s = delay.as_secs_f64(), "webhook attempt failed");
                        Some(rec.next_attempt_ms)
                    }
                    None => {
                        self.count("failed");
                        rec.state = "failed".into();
                        tracing::warn!(url = %rec.url, event, attempts, error = %rec.last_error, "webhook failed: out of retries");
                        None
                    }
                }
            }
        }
    }

    async fn settle(&self, c: &ClaimedWebhook, rec: &mut WebhookRecord, due: Option<u64>) {
        if due.is_none() {
            rec.next_attempt_ms = 0;
        }
        match self.store.settle_webhook(c, rec, due).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(job_id = %c.job_id, "webhook lease lost before settling")
            }
            Err(e) => {
                tracing::warn!(job_id = %c.job_id, error = %e, "cannot record a webhook delivery; it is retried when its lease ends")
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .webhook_attempts
            .get_or_create(&crate::metrics::OutcomeLabel { outcome })
            .inc();
    }

    /// Sends `batch.finished` once every job of batch `c.job_id` has ended,
    /// then settles the entry.
    async fn deliver_batch(&self, c: ClaimedWebhook) {
        let mut rec = c.record.clone();
        let batch = match self.store.get_batch(c.job_id.as_str()).await {
            Ok(b) => b,
            Err(e) => {
                return tracing::debug!(batch_id = %c.job_id, error = %e, "webhook: cannot read the batch");
            }
        };
        let Some(batch) = batch else {
            rec.state = "failed".into();
            rec.last_error = "the batch is gone (expired, or it was refused)".into();
            return self.settle(&c, &mut rec, None).await;
        };
        let jobs = match self.store.get_many(&batch.job_ids).await {
            Ok(jobs) => jobs,
            Err(e) => {
                return tracing::debug!(batch_id = %c.job_id, error = %e, "webhook: cannot read the batch's jobs");
            }
        };
        if !crate::job::batch::ended(&crate::job::batch::counts(&jobs)) {
            rec.state = "waiting".into();
            let recheck = recheck_after(clock::now_ms().saturating_sub(rec.created_ms));
            return self
                .settle(&c, &mut rec, Some(clock::now_ms() + recheck))
                .await;
        }
        let event = crate::webhooks::BATCH_FINISHED;
        rec.last_message_id = message_id(&batch.id, event);
        let sent = match self.signing_for(&batch.owner).await {
            Ok(signing) => {
                let data = BatchView::new(&batch, &jobs, signing.as_ref(), false);
                self.post(&rec, &batch.id, event, data).await
            }
            Err(f) => Err(f),
        };
        self.ended(&rec, &sent);
        let due = match sent {
            Ok(status) => {
                self.succeeded(&mut rec, status);
                tracing::info!(batch_id = %batch.id, event, url = %rec.url, status, "webhook delivered");
                None
            }
            Err(f) => self.failed(&mut rec, event, f),
        };
        self.settle(&c, &mut rec, due).await
    }

    /// Tells the fair share how an attempt at `rec`'s receiver went.
    fn ended(&self, rec: &WebhookRecord, sent: &Result<u16, Failure>) {
        match sent {
            Ok(_) => self.fair.ended(&receiver_of(&rec.url), true),
            Err(Failure::Retry { .. }) => self.fair.ended(&receiver_of(&rec.url), false),
            Err(_) => {}
        }
    }

    /// Records a delivered message.
    fn succeeded(&self, rec: &mut WebhookRecord, status: u16) {
        self.count("delivered");
        rec.delivered += 1;
        rec.delivered_ms = clock::now_ms();
        rec.attempts = 0;
        rec.last_status = status;
        rec.last_error.clear();
        rec.next_attempt_ms = 0;
        rec.state = "delivered".into();
    }

    /// One attempt at one message about a job; the receiver's status when it
    /// took it.
    async fn send(
        &self,
        rec: &WebhookRecord,
        job: &JobRecord,
        event: &str,
    ) -> Result<u16, Failure> {
        let signing = self.signing_for(&job.owner).await?;
        let data = JobView::new(job, None, signing.as_ref(), false);
        self.post(rec, &job.id, event, data).await
    }

    /// How picture URLs in a body for `owner`'s job are signed (none without
    /// an owner: auth is off).
    async fn signing_for(&self, owner: &str) -> Result<Option<Signing<'_>>, Failure> {
        if owner.is_empty() {
            return Ok(None);
        }
        match self.signer().await {
            Some(signer) => Ok(Some(Signing {
                signer,
                exp: clock::now_ms() / 1000 + self.settings.image_url_ttl.as_secs(),
            })),
            None => Err(Failure::Retry {
                error: "cannot read the URL-signing secret from the store".into(),
                status: 0,
            }),
        }
    }

    /// Signs and posts one message about `subject` (a job or a batch id).
    async fn post(
        &self,
        rec: &WebhookRecord,
        subject: &str,
        event: &str,
        data: impl Serialize,
    ) -> Result<u16, Failure> {
        let url = reqwest::Url::parse(&rec.url)
            .map_err(|e| Failure::Refused(format!("not a URL: {e}")))?;
        let s = &self.settings;
        // IP literals here; names when the client resolves them (GuardedResolver),
        // whose refusal comes back through the request's error.
        if !s.allow_private {
            egress::check_literal(url.host()).map_err(Failure::Refused)?;
        }
        if s.secrets.is_empty() {
            return Err(Failure::Retry {
                error: "this worker has no --webhook-secret to sign with".into(),
                status: 0,
            });
        }
        let now = clock::now_ms();
        let body = serde_json::to_vec(&Message {
            kind: event,
            timestamp: clock::iso8601(now * 1000),
            data,
        })
        .expect("a view serializes");
        let id = message_id(subject, event);
        let ts = now / 1000;
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature(&s.secrets, &id, ts, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| match refusal(&e) {
                Some(r) => Failure::Refused(r.to_string()),
                None => Failure::Retry {
                    error: describe(&e, s.timeout),
                    status: 0,
                },
            })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(status);
        }
        if status == 410 {
            return Err(Failure::Gone);
        }
        let mut error = format!("HTTP {status}");
        if resp.status().is_redirection() {
            error.push_str(" (redirects are not followed)");
        } else if let Ok(Some(chunk)) =
            tokio::time::timeout(Duration::from_secs(1), bounded_chunk(resp)).await
        {
            let text = String::from_utf8_lossy(&chunk);
            let text: String = text.chars().take(crate::webhooks::MAX_ERROR_BODY).collect();
            if !text.trim().is_empty() {
                error = format!("{error}: {}", text.trim());
            }
        }
        Err(Failure::Retry { error, status })
    }

    async fn signer(&self) -> Option<&UrlSigner> {
        self.signer
            .get_or_try_init(|| async {
                self.store.server_secret().await.map(|s| UrlSigner::new(&s))
            })
            .await
            .ok()
    }
}

/// The first bytes of an answer's body (one chunk at most).
async fn bounded_chunk(mut resp: reqwest::Response) -> Option<bytes::Bytes> {
    resp.chunk().await.ok().flatten()
}

/// The address guard's refusal, if that is why a request failed.
fn refusal(e: &reqwest::Error) -> Option<&egress::Refused> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<egress::Refused>() {
            return Some(r);
        }
        source = s.source();
    }
    None
}

/// A transport error in words a user can act on.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs_f64());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// The message job `job`'s state calls for next, if any.
fn next_message(rec: &WebhookRecord, job: &JobRecord) -> Option<&'static str> {
    let ran = job.status == JobStatus::Processing || (job.status.is_final() && job.attempt > 0);
    if !rec.started_done && ran {
        return Some("job.started");
    }
    let event = match job.status {
        JobStatus::Finished => "job.finished",
        JobStatus::Failed => "job.failed",
        _ => return None,
    };
    rec.wants(event).then_some(event)
}

/// How long to wait before looking at a job that is not done yet, when no change
/// wakes its webhook first: 10 s for a new job, growing with its age to 5 min.
fn recheck_after(age_ms: u64) -> u64 {
    (age_ms / 10).clamp(10_000, 300_000)
}

/// Whether a job's change may end its batch (and so call for `batch.finished`).
fn ends_batch(job: &JobRecord) -> bool {
    job.status.is_final() && job.batch_id().is_some()
}

/// Whether a job's change may call for a webhook message.
fn wants_wake(job: &JobRecord) -> bool {
    job.params.contains_key("webhook_url")
        && (job.status.is_final() || job.status == JobStatus::Processing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: JobStatus, attempt: u32) -> JobRecord {
        JobRecord {
            id: "j".into(),
            status,
            attempt,
            ..JobRecord::default()
        }
    }

    #[test]
    fn messages_follow_the_job() {
        let plain = WebhookRecord::new(
            "http://x".into(),
            vec!["job.finished".into(), "job.failed".into()],
            0,
        );
        assert_eq!(next_message(&plain, &job(JobStatus::Queued, 0)), None);
        assert_eq!(next_message(&plain, &job(JobStatus::Processing, 1)), None);
        assert_eq!(
            next_message(&plain, &job(JobStatus::Finished, 1)),
            Some("job.finished")
        );
        assert_eq!(
            next_message(&plain, &job(JobStatus::Failed, 0)),
            Some("job.failed")
        );

        let mut all = WebhookRecord::new(
            "http://x".into(),
            crate::webhooks::EVENTS
                .iter()
                .map(|e| e.to_string())
                .collect(),
            0,
        );
        assert_eq!(
            next_message(&all, &job(JobStatus::Processing, 1)),
            Some("job.started")
        );
        assert_eq!(
            next_message(&all, &job(JobStatus::Finished, 1)),
            Some("job.started")
        );
        // Cancelled while queued: it never started.
        assert_eq!(
            next_message(&all, &job(JobStatus::Failed, 0)),
            Some("job.failed")
        );
        all.started_done = true;
        assert_eq!(
            next_message(&all, &job(JobStatus::Finished, 1)),
            Some("job.finished")
        );

        let only_failed = WebhookRecord::new("http://x".into(), vec!["job.failed".into()], 0);
        assert_eq!(
            next_message(&only_failed, &job(JobStatus::Finished, 1)),
            None
        );
    }

    #[test]
    fn rechecks_grow_with_age_and_stay_bounded() {
        assert_eq!(recheck_after(0), 10_000);
        assert_eq!(recheck_after(1_000_000), 100_000);
        assert_eq!(recheck_after(u64::MAX / 2), 300_000);
    }
}
