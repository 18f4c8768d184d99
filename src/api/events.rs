//! Live events as Server-Sent Events.
//!
//! - `GET /api/jobs/{id}/events`: a snapshot of the job first, then every change
//!   (status, progress, outputs, error), ending after the final state.
//! - `GET /api/events`: every change of every job (galleries, dashboards).
//!
//! Each event is `event: job`, `id: <revision>`, `data: <the job as /api/status
//! shows it>`. A reconnecting client (with or without `Last-Event-ID`) gets a fresh
//! snapshot, so nothing is missed; while idle, streams re-read the job now and then,
//! in case a change was lost on the way (Redis pub/sub is fire-and-forget), and send
//! keep-alive comments.
//!
//! Fan-out: the store has one subscription per process (one Redis connection); the
//! [`EventHub`] hands each change to the streams of that job and to the all-jobs
//! streams, in memory. Thousands of open streams cost no Redis connection each.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{broadcast, watch};

use super::AppState;
use super::access::{Access, Caller};
use super::error::{ApiError, ErrorBody};
use super::extract::JobIdPath;
use crate::auth::signing::Signing;
use crate::job::JobView;
use crate::job::{JobId, JobRecord};
use crate::limit::IpKey;
use crate::shutdown::signalled;
use crate::store::{JobEvent, JobStore};

/// How often an idle per-job stream re-reads its job (a change lost on the way is
/// seen at most this late).
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// Keep-alive comment interval (proxies close silent connections).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Changes buffered per job channel before a slow stream skips to a fresh snapshot.
const PER_JOB_BUFFER: usize = 64;

/// Hands store changes to per-job and all-jobs subscribers, in memory.
pub struct EventHub {
    all: broadcast::Sender<JobEvent>,
    per_job: Mutex<HashMap<String, broadcast::Sender<JobEvent>>>,
}

impl EventHub {
    /// Starts the hub's one reader of the store's changes.
    pub fn start(store: Arc<dyn JobStore>) -> Arc<EventHub> {
        let hub = Arc::new(EventHub {
            all: broadcast::channel(crate::store::EVENT_BUFFER).0,
            per_job: Mutex::new(HashMap::new()),
        });
        let mut rx = store.subscribe();
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let Some(hub) = weak.upgrade() else { return };
                        hub.dispatch(ev);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "event hub fell behind; streams will resync");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        hub
    }

    fn dispatch(&self, ev: JobEvent) {
        let _ = self.all.send(ev.clone());
        let map = self.per_job.lock().expect("hub lock");
        if let Some(tx) = map.get(&ev.job.id) {
            let _ = tx.send(ev);
        }
    }

    /// Changes of one job from now on. The hub forgets the job when the last of its
    /// subscriptions is dropped, whatever happens to the job (it may never change
    /// again, or not exist at all).
    pub fn subscribe_job(self: &Arc<Self>, id: &str) -> JobSubscription {
        let mut map = self.per_job.lock().expect("hub lock");
        let rx = map
            .entry(id.to_owned())
            .or_insert_with(|| broadcast::channel(PER_JOB_BUFFER).0)
            .subscribe();
        JobSubscription {
            hub: self.clone(),
            id: id.to_owned(),
            rx: Some(rx),
        }
    }

    /// Changes of every job from now on.
    pub fn subscribe_all(&self) -> broadcast::Receiver<JobEvent> {
        self.all.subscribe()
    }

    /// Jobs with at least one subscriber (what the hub keeps in memory).
    pub fn jobs_watched(&self) -> usize {
        self.per_job.lock().expect("hub lock").len()
    }
}

/// Job `id` once it is final, or as it is at `deadline` (its changes, and a
/// read now and then in case one was lost); `None` if it is not there.
pub async fn wait_final(
    state: &AppState,
    id: &JobId,
    deadline: tokio::time::Instant,
) -> Result<Option<JobRecord>, ApiError> {
    let mut sub = state.hub.subscribe_job(id.as_str());
    loop {
        let job = state.with_timeout(state.store.get(id)).await?;
        match job {
            Some(j) if !j.status.is_final() && tokio::time::Instant::now() < deadline => {}
            other => return Ok(other),
        }
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(2)),
            sub.recv(),
        )
        .await;
    }
}

/// A subscription to one job's changes; the hub's entry for the job goes with the
/// last one.
pub struct JobSubscription {
    hub: Arc<EventHub>,
    id: String,
    rx: Option<broadcast::Receiver<JobEvent>>,
}

impl JobSubscription {
    pub async fn recv(&mut self) -> Result<JobEvent, broadcast::error::RecvError> {
        match self.rx.as_mut() {
            Some(rx) => rx.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for JobSubscription {
    fn drop(&mut self) {
        // Drop our receiver first, so the count below does not include it.
        drop(self.rx.take());
        let mut map = self.hub.per_job.lock().expect("hub lock");
        if map.get(&self.id).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(&self.id);
        }
    }
}

/// Why an event stream was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamRefusal {
    /// This client address holds its share already.
    PerClient(usize),
    /// The server holds as many streams as it will.
    Total(usize),
}

/// Counts open event streams, in total and per client address, and refuses the
/// ones over the caps.
pub struct StreamLimiter {
    max_total: usize,
    max_per_client: usize,
    open: Mutex<(usize, HashMap<IpKey, usize>)>,
}

impl StreamLimiter {
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(StreamLimiter {
            max_total,
            max_per_client,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for one stream from `ip`, held until the guard is dropped.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<StreamGuard, StreamRefusal> {
        let key = IpKey::of(ip);
        let mut g = self.open.lock().expect("stream limiter");
        let mine = g.1.get(&key).copied().unwrap_or(0);
        if mine >= self.max_per_client {
            return Err(StreamRefusal::PerClient(self.max_per_client));
        }
        if g.0 >= self.max_total {
            return Err(StreamRefusal::Total(self.max_total));
        }
        g.0 += 1;
        g.1.insert(key, mine + 1);
        Ok(StreamGuard {
            limiter: self.clone(),
            key,
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("stream limiter").0
    }

    /// Client addresses with streams open now.
    pub fn clients(&self) -> usize {
        self.open.lock().expect("stream limiter").1.len()
    }

    /// The caps: in total, per client.
    pub fn caps(&self) -> (usize, usize) {
        (self.max_total, self.max_per_client)
    }
}

/// One open stream's slot.
pub struct StreamGuard {
    limiter: Arc<StreamLimiter>,
    key: IpKey,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut g = self.limiter.open.lock().expect("stream limiter");
        g.0 -= 1;
        if let Some(n) = g.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.key);
            }
        }
    }
}

impl From<StreamRefusal> for ApiError {
    fn from(r: StreamRefusal) -> Self {
        match r {
            StreamRefusal::PerClient(n) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-streams",
                format!(
                    "this client already has {n} event streams open (--max-streams-per-client); close one, or follow every job on GET /api/events"
                ),
            )
            .retry_after(5),
            StreamRefusal::Total(n) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "streams-exhausted",
                format!("the server has {n} event streams open (--max-streams); try again shortly"),
            )
            .retry_after(5),
        }
    }
}

fn event_of(job: &JobRecord, position: Option<u64>, access: &Access, internal: bool) -> Event {
    let signing = access
        .signs_urls()
        .then(|| access.signer_ready())
        .flatten()
        .map(|signer| Signing {
            signer,
            exp: access.url_expiry(),
        });
    Event::default()
        .event("job")
        .id(job.rev.to_string())
        .json_data(JobView::new(job, position, signing.as_ref(), internal))
        .unwrap_or_else(|_| Event::default().comment("unserializable job"))
}

/// `event: preview`: a new preview of a job's picture, by sequence number, and
/// where to get it.
fn preview_event(public_url: &str, id: &str, seq: u64) -> Event {
    Event::default().event("preview").data(
        serde_json::json!({
            "job_id": id,
            "seq": seq,
            "url": format!("{public_url}/api/jobs/{id}/preview?seq={seq}"),
        })
        .to_string(),
    )
}

/// Whether `next` is news after `last` (a later revision; or, for hashes written by
/// other programs without revisions, any visible difference).
fn is_news(last: &JobRecord, next: &JobRecord) -> bool {
    if next.rev != last.rev {
        return next.rev > last.rev;
    }
    next.rev == 0
        && (next.status != last.status
            || next.progress != last.progress
            || next.error != last.error
            || next.image_url != last.image_url
            || next.updated_at != last.updated_at)
}

struct JobStream {
    id: JobId,
    state: AppState,
    rx: JobSubscription,
    _slot: StreamGuard,
    shutdown: watch::Receiver<bool>,
    last: Option<JobRecord>,
    first: Option<(JobRecord, Option<u64>)>,
    done: bool,
    /// The viewer may see the backend's address (an admin).
    internal: bool,
}

impl JobStream {
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        if let Some((job, position)) = self.first.take() {
            return Some(self.emit(job, position));
        }
        loop {
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(JobEvent { job, preview: Some(seq) }) => {
                        return Some(preview_event(&self.state.public_url, &job.id, seq));
                    }
                    Ok(JobEvent { job, .. }) => {
                        if self.last.as_ref().is_none_or(|l| is_news(l, &job)) {
                            return Some(self.emit((*job).clone(), None));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(ev) = self.resync().await {
                            return Some(ev);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(RESYNC_EVERY) => {
                    if let Some(ev) = self.resync().await {
                        return Some(ev);
                    }
                }
                _ = signalled(&mut self.shutdown) => return None,
            }
        }
    }

    /// Re-reads the job; an event if it changed unseen.
    async fn resync(&mut self) -> Option<Event> {
        let (job, position) = self.state.store.status(&self.id).await.ok().flatten()?;
        if self.last.as_ref().is_none_or(|l| is_news(l, &job)) {
            Some(self.emit(job, position))
        } else {
            None
        }
    }

    fn emit(&mut self, job: JobRecord, position: Option<u64>) -> Event {
        let ev = event_of(&job, position, &self.state.access, self.internal);
        self.done = job.status.is_final();
        self.last = Some(job);
        ev
    }
}

/// A job's live events (Server-Sent Events): a snapshot first, then every change,
/// ending after the final state. Each event is `event: job`, `id: <revision>`,
/// `data: <the job, as GET /api/status shows it>`; keep-alive comments every 15 s. On
/// reconnect (with or without `Last-Event-ID`) a fresh snapshot comes first. While
/// the job runs, `event: preview` with `data: {"job_id", "seq", "url"}` announces
/// each new preview of its picture (`GET /api/jobs/{job_id}/preview`).
#[utoipa::path(get, path = "/api/jobs/{job_id}/events", tag = "events",
    params(("job_id" = String, Path, description = "The job id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 200, description = "An event stream; each `data` is a JobView", content_type = "text/event-stream", body = JobView),
        (status = 400, description = "Malformed job id", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 429, description = "This client has too many streams open (`too-many-streams`)", body = ErrorBody),
        (status = 503, description = "The server has too many streams open (`streams-exhausted`), or the store is unavailable", body = ErrorBody),
    ))]
pub async fn job_events(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Caller(who): Caller,
    JobIdPath(id): JobIdPath,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = state.streams.acquire(peer.ip())?;
    // Subscribe before reading the snapshot, so no change falls in between. The
    // subscription is dropped (and the hub forgets the job) on every way out.
    let rx = state.hub.subscribe_job(id.as_str());
    state.signing().await?;
    let Some(first) = state
        .with_timeout(state.store.status(&id))
        .await?
        .filter(|(job, _)| who.may_see(&job.owner))
    else {
        return Err(
            ApiError::not_found("job-not-found", format!("no job with id {id}"))
                .with_field("job_id"),
        );
    };
    let stream = JobStream {
        id,
        shutdown: state.shutdown.clone(),
        state,
        rx,
        _slot: slot,
        last: None,
        first: Some(first),
        done: false,
        internal: who.sees_all,
    };
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        let ev = s.next().await?;
        Some((Ok(ev), s))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Every change of every job (Server-Sent Events), from now on: `event: job` with
/// the job as `data`; `event: preview` (`{"job_id", "seq", "url"}`) for each new
/// preview of a running job's picture; `event: lagged` (data: how many changes were
/// skipped) if the client reads too slowly.
#[utoipa::path(get, path = "/api/events", tag = "events",
    responses(
        (status = 200, description = "An event stream; each `data` is a JobView", content_type = "text/event-stream", body = JobView),
        (status = 429, description = "This client has too many streams open (`too-many-streams`)", body = ErrorBody),
        (status = 503, description = "The server has too many streams open (`streams-exhausted`)", body = ErrorBody),
    ))]
pub async fn all_events(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Caller(who): Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = state.streams.acquire(peer.ip())?;
    state.signing().await?;
    let rx = state.hub.subscribe_all();
    let shutdown = state.shutdown.clone();
    let access = state.access.clone();
    let public_url = state.public_url.clone();
    let events = futures_util::stream::unfold(
        (rx, shutdown, slot),
        move |(mut rx, mut shutdown, slot)| {
            let (who, access, public_url) = (who.clone(), access.clone(), public_url.clone());
            async move {
                let ev = loop {
                    tokio::select! {
                        r = rx.recv() => match r {
                            // Only the caller's jobs (every job for an admin).
                            Ok(JobEvent { job, preview }) if who.may_see(&job.owner) => break match preview {
                                Some(seq) => preview_event(&public_url, &job.id, seq),
                                None => event_of(&job, None, &access, who.sees_all),
                            },
                            Ok(_) => {}
                            // A slow client: say how many changes it missed (it can re-read).
                            Err(broadcast::error::RecvError::Lagged(n)) => break Event::default().event("lagged").data(n.to_string()),
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                        _ = signalled(&mut shutdown) => return None,
                    }
                };
                Some((Ok(ev), (rx, shutdown, slot)))
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_are_capped_per_client_and_in_total_and_given_back() {
        let l = StreamLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = l.acquire(a).unwrap();
        let _a2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(StreamRefusal::PerClient(2)));
        let _b1 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(StreamRefusal::Total(3)));
        drop(a1);
        assert_eq!(l.open(), 2);
        let _b2 = l.acquire(b).unwrap();
        drop(_b1);
        drop(_b2);
        drop(_a2);
        assert_eq!((l.open(), l.clients()), (0, 0), "nothing left behind");
    }
}
