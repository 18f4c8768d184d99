//! Following a submitted prompt to its end: the socket as a hint, `/history` as the
//! authority, always under the job's deadline; progress written as it rises; a
//! cancel or a lost lease noticed on the way.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::{Instant, MissedTickBehavior};

use super::attempt::RunContext;
use super::progress::ProgressTracker;
use crate::comfy::{ComfyClient, ComfyError, HistoryEntry, SocketEvent, WsMessage};
use crate::store::{JobEvent, Lease, LeaseState};

/// Polling interval while the socket is down or silent about our prompt.
const FAST_POLL: Duration = Duration::from_millis(250);
/// How often a running job checks its lease (and learns of a cancel).
const LEASE_CHECK: Duration = Duration::from_secs(2);
/// Progress is written at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// A backend that cannot be reached for this long fails the attempt (retried).
const UNREACHABLE_GRACE: Duration = Duration::from_secs(3);

/// How following a prompt ended.
pub(super) enum Followed {
    Done(HistoryEntry),
    Cancel,
    LeaseLost,
    Vanished,
    Unreachable(ComfyError),
    TimedOut,
    HandBack,
}

/// Follows a submitted prompt to its end.
pub(super) async fn follow(
    ctx: &RunContext,
    lease: &Lease,
    // The job's owner, and whether ComfyUI's messages about it are relayed (it
    // came through the ComfyUI-compatible port).
    (owner, relay): (&str, bool),
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
    let mut previews = super::preview::Throttle::default();
    // Whether our prompt is the one running: a preview without a prompt id (frame
    // type 1, from a ComfyUI that does not send type 4) is then ours.
    let mut running = false;

    loop {
        tokio::select! {
            ev = recv_socket(&mut socket) => match ev {
                Some(SocketEvent::Message(m)) if m.prompt_id() == Some(id) => {
                    if m.is_done_for(id) {
                        ctx.backend.pacing.ended(id, true);
                        // History is written before this message: look now.
                        next_poll = Instant::now();
                        continue;
                    }
                    if let WsMessage::ExecutionStart { .. } = *m {
                        ctx.backend.pacing.started(id);
                        running = true;
                        tracing::debug!("running");
                    }
                    if let WsMessage::Preview { content_type, image, .. } = &*m {
                        offer_preview(ctx, lease, owner, &mut previews, content_type, image).await;
                        continue;
                    }
                    if relay && let Some(text) = m.relayed_text(crate::clock::now_ms()) {
                        // Fire and forget: the client's stream is live, as ComfyUI's is.
                        let _ = ctx.store.relay(&lease.job_id, owner, &text).await;
                    }
                    tracker.apply(&m);
                }
                Some(SocketEvent::Message(m)) if running => {
                    if let WsMessage::Preview { prompt_id: None, content_type, image } = &*m {
                        offer_preview(ctx, lease, owner, &mut previews, content_type, image).await;
                    }
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
                        if relay {
                            relay_buffered(ctx, lease, owner, &mut socket).await;
                        }
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
                if let Some(p) = previews.due(std::time::Instant::now()) {
                    publish_preview(ctx, lease, owner, &p).await;
                }
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
                Ok(JobEvent { job, preview: None }) if job.id == id && job.cancel_requested => return Followed::Cancel,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => cancels = ctx.store.subscribe(),
            },
            _ = tokio::time::sleep_until(deadline) => return Followed::TimedOut,
            _ = crate::shutdown::signalled(&mut abort) => return Followed::HandBack,
        }
    }
}

/// What the socket had already said about a prompt that has ended (a fast
/// prompt ends before its messages are read), relayed before its end is
/// written, so a client hears every node.
async fn relay_buffered(
    ctx: &RunContext,
    lease: &Lease,
    owner: &str,
    socket: &mut Option<broadcast::Receiver<SocketEvent>>,
) {
    let Some(rx) = socket else { return };
    let id = lease.job_id.as_str();
    // Bounded by what is buffered now (the channel's capacity).
    while let Ok(ev) = rx.try_recv() {
        if let SocketEvent::Message(m) = ev
            && m.prompt_id() == Some(id)
            && let Some(text) = m.relayed_text(crate::clock::now_ms())
        {
            let _ = ctx.store.relay(&lease.job_id, owner, &text).await;
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

/// A preview of our picture arrived: counted for the backend, and published
/// (throttled) for the API processes.
async fn offer_preview(
    ctx: &RunContext,
    lease: &Lease,
    owner: &str,
    previews: &mut super::preview::Throttle,
    content_type: &'static str,
    image: &bytes::Bytes,
) {
    ctx.backend.note_preview();
    if let Some(p) = previews.offer(content_type, image.clone(), std::time::Instant::now()) {
        publish_preview(ctx, lease, owner, &p).await;
    }
}

async fn publish_preview(ctx: &RunContext, lease: &Lease, owner: &str, p: &crate::store::Preview) {
    if let Err(e) = ctx.store.put_preview(&lease.job_id, owner, p).await {
        // A preview is a nicety: the job goes on without it.
        tracing::debug!(error = %e, "could not publish a preview");
    }
}
