//! The HTTP transport: accepting connections under limits, for any service (the
//! API's router, the worker's `/metrics`): a cap on open connections, and
//! timeouts for a request's headers, for an idle keep-alive connection and for a
//! request that makes no progress. `axum::serve` has none of these, so one client
//! with a slowloris script could hold every file descriptor.
//!
//! Each connection is tracked: whether a request is in flight (from its headers to
//! the end of its response body), when it last moved a byte, and when the first byte
//! of its next request arrived. A watchdog per connection closes it when
//! - it is idle (no request in flight, nothing received) for `idle_timeout`;
//! - a request has started arriving but its headers are not complete within
//!   `header_timeout` (slowloris);
//! - a request is in flight and no byte has moved either way for `stall_timeout`
//!   (a client that stopped reading, or a handler stuck).
//!
//! At the connection cap, a new connection takes the place of the one that has been
//! idle (or trickling headers) the longest; only when every connection is busy does
//! it wait briefly, then get a `503` and the door. So the operator's `/health` still
//! answers while a flood holds idle connections.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

mod tracked;

use self::tracked::{Busy, ConnState, Registry, TrackedBody, TrackedIo, now_ms};
use crate::shutdown::signalled;

/// Longest request head (request line and headers) accepted; 431 beyond.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// hyper's read and write buffer bound per connection (its default is ~400 KiB):
/// ten thousand idle connections must not cost gigabytes.
const MAX_BUF_BYTES: usize = 64 * 1024;
/// How long a connection over the cap waits for a slot when no connection can be
/// evicted, before it gets a 503.
const OVERFLOW_WAIT: Duration = Duration::from_millis(250);
/// Connections kept out of `max_connections` by default: Redis, the backends'
/// sockets and HTTP pools, the database, the log, files being served or stored.
const FD_RESERVE_MIN: u64 = 256;

/// The limits of the HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Time from a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// An open connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// A request in flight with no byte moving either way is cut after this long.
    pub stall_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Connections the kernel queues for `accept`: room for a burst of reconnections
/// (ten thousand slowloris connections cut at once come back at once) without
/// dropping a newcomer's SYN. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener on `addr` (a host name is resolved; the first address that
/// binds is used) with [`LISTEN_BACKLOG`].
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to bind");
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Raises the soft limit on open files to the hard limit (the default soft limit is
/// often 1024 while the hard one allows far more), and returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        // An unlimited hard limit is not a number we can use; the kernel caps
        // open files per process at nr_open (1,048,576 by default) anyway.
        let target = if lim.rlim_max == libc::RLIM_INFINITY {
            1_048_576
        } else {
            lim.rlim_max
        };
        if lim.rlim_cur < target {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return target;
            }
        }
        lim.rlim_cur
    }
}

/// The default connection cap for a file-descriptor limit: the limit minus a
/// reserve for everything else the process opens (256 plus a tenth).
pub fn default_max_connections(fd_limit: u64) -> usize {
    let reserve = FD_RESERVE_MIN + fd_limit / 10;
    fd_limit.saturating_sub(reserve).max(16) as usize
}

/// What `/health` and the logs can learn about the listener.
#[derive(Clone)]
pub struct ConnStats {
    registry: Arc<Registry>,
    pub limits: ConnLimits,
}

impl ConnStats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.registry.len()
    }
}

/// The listener and its bookkeeping.
pub struct Server {
    listener: TcpListener,
    limits: ConnLimits,
    registry: Arc<Registry>,
    permits: Arc<Semaphore>,
}

impl Server {
    pub fn new(listener: TcpListener, limits: ConnLimits) -> Self {
        Server {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            registry: Arc::new(Registry::default()),
        }
    }

    pub fn stats(&self) -> ConnStats {
        ConnStats {
            registry: self.registry.clone(),
            limits: self.limits,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `router` until `stop` turns true; then stops accepting, asks every
    /// connection to finish its request and close, and waits for them.
    pub async fn run<S>(self, router: S, mut stop: watch::Receiver<bool>) -> io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        let mut conns = JoinSet::new();
        let mut accept_failing = false;
        loop {
            while conns.try_join_next().is_some() {}
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = signalled(&mut stop) => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    accept_failing = false;
                    a
                }
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to close.
                    if !accept_failing {
                        tracing::warn!(error = %e, "cannot accept connections; retrying");
                        accept_failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => match self.make_room().await {
                    Some(p) => p,
                    None => {
                        conns.spawn(refuse(stream));
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            conns.spawn(serve_one(
                stream,
                peer,
                router.clone(),
                self.limits,
                self.registry.clone(),
                permit,
                stop.clone(),
            ));
        }
        drop(self.listener);
        while conns.join_next().await.is_some() {}
        Ok(())
    }

    /// At the cap: evict the longest-idle connection and take its slot, or wait a
    /// little for one to close.
    async fn make_room(&self) -> Option<OwnedSemaphorePermit> {
        let wait = if self.registry.evict_one() {
            // The evicted connection closes at once; its permit comes back.
            OVERFLOW_WAIT * 4
        } else {
            OVERFLOW_WAIT
        };
        tokio::time::timeout(wait, self.permits.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

/// Over the cap with every connection busy: a short JSON 503, then close.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":"the server has too many open connections; try again shortly","code":"too-many-connections"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

async fn serve_one<S>(
    stream: TcpStream,
    peer: SocketAddr,
    router: S,
    limits: ConnLimits,
    registry: Arc<Registry>,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let state = Arc::new(ConnState::new());
    let id = registry.add(state.clone());
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        state: state.clone(),
    });
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let busy = Busy::start(&svc_state);
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let res = router
                .oneshot(req)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(res.map(|inner| TrackedBody { inner, _busy: busy }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Our watchdog keeps the clocks (hyper's own would also cut idle keep-alive
        // connections at the header timeout).
        .header_read_timeout(None)
        .max_buf_size(MAX_BUF_BYTES)
        .max_header_size(MAX_HEADER_BYTES);
    // The connection runs in a task of its own, woken only by its own I/O; the
    // watchdog below wakes only for its clocks, an eviction or shutdown, and ends
    // the connection by aborting that task (or, at shutdown, asking it to finish).
    let (finish, finish_rx) = oneshot::channel::<()>();
    let mut conn_task = tokio::spawn(async move {
        // Upgrades: WebSockets (the ComfyUI-compatible port's `/ws`), which
        // then live on outside this connection's clocks, capped as streams are.
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
            }
            Ok(()) = finish_rx => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    });
    // A deadline only moves earlier when a request starts arriving on an idle
    // connection, and then to at least one header timeout from now: waking at least
    // that often never misses one.
    let recheck = limits.header_timeout.as_millis() as u64;
    let mut finish = Some(finish);
    loop {
        let now = now_ms();
        let deadline = state.deadline(&limits).min(now + recheck);
        let wake = Instant::now() + Duration::from_millis(deadline.saturating_sub(now));
        tokio::select! {
            _ = &mut conn_task => break,
            _ = tokio::time::sleep_until(wake) => {
                // The clocks may have moved meanwhile: look again.
                if now_ms() >= state.deadline(&limits) {
                    tracing::debug!(%peer, busy = !state.is_idle(), "connection timed out");
                    state.reset.store(true, Ordering::Release);
                    conn_task.abort();
                    break;
                }
            }
            _ = state.evict.notified() => {
                tracing::debug!(%peer, "idle connection closed to make room");
                state.reset.store(true, Ordering::Release);
                conn_task.abort();
                break;
            }
            _ = signalled(&mut stop), if finish.is_some() => {
                if let Some(f) = finish.take() {
                    let _ = f.send(());
                }
            }
        }
    }
    registry.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_a_reserve() {
        assert_eq!(default_max_connections(20_000), 20_000 - 256 - 2_000);
        assert_eq!(default_max_connections(1024), 1024 - 256 - 102);
        assert_eq!(default_max_connections(100), 16);
    }

    #[test]
    fn deadlines_follow_the_state() {
        let l = ConnLimits {
            max_connections: 1,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
        };
        let s = ConnState::new();
        s.idle_since.store(1_000, Ordering::Release);
        assert_eq!(s.deadline(&l), 61_000, "idle");
        s.head_started.store(5_000, Ordering::Release);
        assert_eq!(s.deadline(&l), 15_000, "headers trickling");
        assert_eq!(s.idle_rank(), Some(5_000));
        s.busy.store(1, Ordering::Release);
        s.last_io.store(7_000, Ordering::Release);
        assert_eq!(s.deadline(&l), 37_000, "busy");
        assert_eq!(s.idle_rank(), None);
    }
}
