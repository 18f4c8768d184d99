//! What the listener knows of each connection: whether a request is in flight,
//! when it last moved a byte, when its next request started arriving; the I/O
//! and body wrappers that keep those clocks; and the registry the cap's eviction
//! looks through.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use axum::body::Body;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ConnLimits;

/// Milliseconds since the first call, for cheap atomic timestamps.
pub(super) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One connection's state, shared by its I/O wrapper, its requests and its
/// watchdog.
pub(super) struct ConnState {
    /// Requests in flight (headers received, response body not yet done).
    pub(super) busy: AtomicUsize,
    /// Last time a byte moved either way.
    pub(super) last_io: AtomicU64,
    /// When the connection last became idle.
    pub(super) idle_since: AtomicU64,
    /// When the first byte of the next request arrived while idle (0: none yet).
    pub(super) head_started: AtomicU64,
    /// Told to close (evicted to make room).
    pub(super) evict: Notify,
    /// Cut rather than finished: the socket closes with a reset.
    pub(super) reset: std::sync::atomic::AtomicBool,
}

impl ConnState {
    pub(super) fn new() -> Self {
        let now = now_ms();
        ConnState {
            busy: AtomicUsize::new(0),
            last_io: AtomicU64::new(now),
            idle_since: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            evict: Notify::new(),
            reset: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// When the connection should be closed, given the limits; `None` while busy and
    /// moving.
    pub(super) fn deadline(&self, l: &ConnLimits) -> u64 {
        if self.is_idle() {
            match self.head_started.load(Ordering::Acquire) {
                0 => self.idle_since.load(Ordering::Acquire) + l.idle_timeout.as_millis() as u64,
                t => t + l.header_timeout.as_millis() as u64,
            }
        } else {
            self.last_io.load(Ordering::Acquire) + l.stall_timeout.as_millis() as u64
        }
    }

    /// How long it has been "waiting for a client" (eviction order: longest first).
    pub(super) fn idle_rank(&self) -> Option<u64> {
        if !self.is_idle() {
            return None;
        }
        Some(match self.head_started.load(Ordering::Acquire) {
            0 => self.idle_since.load(Ordering::Acquire),
            t => t,
        })
    }
}

/// Marks a request in flight until dropped (with the response body).
pub(super) struct Busy(pub(super) Arc<ConnState>);

impl Busy {
    pub(super) fn start(state: &Arc<ConnState>) -> Busy {
        state.busy.fetch_add(1, Ordering::AcqRel);
        state.head_started.store(0, Ordering::Release);
        Busy(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = now_ms();
        self.0.idle_since.store(now, Ordering::Release);
        self.0.last_io.store(now, Ordering::Release);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request marked in flight until it is done.
pub(super) struct TrackedBody {
    pub(super) inner: Body,
    pub(super) _busy: Busy,
}

impl HttpBody for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting every byte that moves.
pub(super) struct TrackedIo {
    pub(super) inner: TcpStream,
    pub(super) state: Arc<ConnState>,
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        if self.state.reset.load(Ordering::Acquire) {
            // Cut (timed out or evicted), not finished: close with a reset. A
            // normal close would leave the connection in TIME_WAIT here for a
            // minute, and a client reconnecting from the same port (a slowloris
            // does) would run into it.
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl TrackedIo {
    pub(super) fn moved(&self, read: bool) {
        let now = now_ms();
        self.state.last_io.store(now, Ordering::Release);
        if read && self.state.is_idle() {
            // The first byte of a new request: the header clock starts.
            let _ = self.state.head_started.compare_exchange(
                0,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved(true);
        }
        r
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved(false);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Every open connection, for eviction.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    pub(super) next_id: AtomicU64,
}

impl Registry {
    pub(super) fn add(&self, state: Arc<ConnState>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().expect("registry").insert(id, state);
        id
    }

    pub(super) fn remove(&self, id: u64) {
        self.conns.lock().expect("registry").remove(&id);
    }

    /// Tells the connection that has waited for its client the longest to close.
    /// `false` if every connection is busy.
    pub(super) fn evict_one(&self) -> bool {
        let conns = self.conns.lock().expect("registry");
        let victim = conns
            .values()
            .filter_map(|c| c.idle_rank().map(|r| (r, c)))
            .min_by_key(|(r, _)| *r);
        match victim {
            Some((_, c)) => {
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.conns.lock().expect("registry").len()
    }
}
