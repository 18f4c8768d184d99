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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{broadcast, watch};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::JobIdPath;
use super::jobs::JobView;
use crate::job::{JobId, JobRecord};
use crate::shutdown::signalled;
use crate::store::JobStore;

/// How often an idle per-job stream re-reads its job (a change lost on the way is
/// seen at most this late).
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// Keep-alive comment interval (proxies close silent connections).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Changes buffered per job channel before a slow stream skips to a fresh snapshot.
const PER_JOB_BUFFER: usize = 64;

/// Hands store changes to per-job and all-jobs subscribers, in memory.
pub struct EventHub {
    all: broadcast::Sender<Arc<JobRecord>>,
    per_job: Mutex<HashMap<String, broadcast::Sender<Arc<JobRecord>>>>,
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
                        hub.dispatch(ev.job);
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

    fn dispatch(&self, job: Arc<JobRecord>) {
        let _ = self.all.send(job.clone());
        let mut map = self.per_job.lock().expect("hub lock");
        if let Some(tx) = map.get(&job.id)
            && tx.send(job.clone()).is_err()
        {
            // Nobody listens to this job any more.
            map.remove(&job.id);
        }
    }

    /// Changes of one job from now on.
    pub fn subscribe_job(&self, id: &str) -> broadcast::Receiver<Arc<JobRecord>> {
        let mut map = self.per_job.lock().expect("hub lock");
        map.entry(id.to_owned())
            .or_insert_with(|| broadcast::channel(PER_JOB_BUFFER).0)
            .subscribe()
    }

    /// Changes of every job from now on.
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<JobRecord>> {
        self.all.subscribe()
    }
}

fn event_of(job: &JobRecord, position: Option<u64>) -> Event {
    Event::default()
        .event("job")
        .id(job.rev.to_string())
        .json_data(JobView::new(job, position))
        .unwrap_or_else(|_| Event::default().comment("unserializable job"))
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
    rx: broadcast::Receiver<Arc<JobRecord>>,
    shutdown: watch::Receiver<bool>,
    last: Option<JobRecord>,
    first: Option<(JobRecord, Option<u64>)>,
    done: bool,
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
                    Ok(job) => {
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
        let ev = event_of(&job, position);
        self.done = job.status.is_final();
        self.last = Some(job);
        ev
    }
}

/// A job's live events (Server-Sent Events): a snapshot first, then every change,
/// ending after the final state. Each event is `event: job`, `id: <revision>`,
/// `data: <the job, as GET /api/status shows it>`; keep-alive comments every 15 s. On
/// reconnect (with or without `Last-Event-ID`) a fresh snapshot comes first.
#[utoipa::path(get, path = "/api/jobs/{job_id}/events", tag = "events",
    params(("job_id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "An event stream; each `data` is a JobView", content_type = "text/event-stream", body = JobView),
        (status = 400, description = "Malformed job id", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
    ))]
pub async fn job_events(
    State(state): State<AppState>,
    JobIdPath(id): JobIdPath,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before reading the snapshot, so no change falls in between.
    let rx = state.hub.subscribe_job(id.as_str());
    let Some(first) = state.with_timeout(state.store.status(&id)).await? else {
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
        last: None,
        first: Some(first),
        done: false,
    };
    let events = futures_util::stream::unfold(stream, |mut s| async move {
        let ev = s.next().await?;
        Some((Ok(ev), s))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Every change of every job (Server-Sent Events), from now on: `event: job` with
/// the job as `data`; `event: lagged` (data: how many changes were skipped) if the
/// client reads too slowly.
#[utoipa::path(get, path = "/api/events", tag = "events",
    responses((status = 200, description = "An event stream; each `data` is a JobView", content_type = "text/event-stream", body = JobView)))]
pub async fn all_events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.hub.subscribe_all();
    let shutdown = state.shutdown.clone();
    let events = futures_util::stream::unfold(
        (rx, shutdown),
        |(mut rx, mut shutdown)| async move {
            let ev = tokio::select! {
                r = rx.recv() => match r {
                    Ok(job) => event_of(&job, None),
                    // A slow client: say how many changes it missed (it can re-read).
                    Err(broadcast::error::RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = signalled(&mut shutdown) => return None,
            };
            Some((Ok(ev), (rx, shutdown)))
        },
    );
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
