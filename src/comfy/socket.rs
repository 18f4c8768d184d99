//! One WebSocket per backend, with a stable `clientId`, opened before the first
//! submit and kept open: reconnected with backoff after any drop, the old socket
//! always closed before a new one opens (a second socket with the same id can go
//! silent, PROTOCOL.md §9). Messages are fanned out to every job following a prompt.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::messages::WsMessage;

/// How often we ping an idle socket. ComfyUI sends no pings of its own, and a TCP
/// connection can die without a close frame.
const PING_EVERY: Duration = Duration::from_secs(10);
/// A socket that has received nothing (not even a pong) for this long is dead.
const DEAD_AFTER: Duration = Duration::from_secs(25);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Messages buffered per follower before it must re-sync by polling.
const BUFFER: usize = 1024;

/// What followers of a backend's socket see.
#[derive(Clone, Debug)]
pub enum SocketEvent {
    /// The socket is (again) open. After a drop, anything may have happened: poll.
    Connected,
    /// The socket dropped; events are being missed until `Connected`.
    Disconnected(String),
    Message(Arc<WsMessage>),
}

/// A handle to a backend's socket task.
#[derive(Clone)]
pub struct ComfySocket {
    events: broadcast::Sender<SocketEvent>,
    connected: watch::Receiver<bool>,
}

impl ComfySocket {
    /// Starts the socket task for `url` (`ws://host/ws?clientId=...`); it runs until
    /// `stop` turns true.
    pub fn spawn(url: String, stop: watch::Receiver<bool>) -> ComfySocket {
        let (events, _) = broadcast::channel(BUFFER);
        let (connected_tx, connected) = watch::channel(false);
        tokio::spawn(run(url, events.clone(), connected_tx, stop));
        ComfySocket { events, connected }
    }

    /// Every event from now on. Subscribe before submitting a prompt.
    pub fn subscribe(&self) -> broadcast::Receiver<SocketEvent> {
        self.events.subscribe()
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }
}

/// What this client supports, sent on connect (ComfyUI reads only this flag).
const FEATURE_FLAGS: &str = r#"{"type":"feature_flags","data":{"supports_preview_metadata":true}}"#;

async fn run(
    url: String,
    events: broadcast::Sender<SocketEvent>,
    connected: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let reason = match attempt {
            Ok(Ok((ws, _))) => {
                backoff = BACKOFF_MIN;
                connected.send_replace(true);
                let _ = events.send(SocketEvent::Connected);
                tracing::debug!(%url, "ComfyUI socket open");
                let (mut sink, mut stream) = ws.split();
                // Ask for previews with their prompt id (frame type 4), so a preview
                // is never taken for another prompt's.
                let _ = sink.send(Message::Text(FEATURE_FLAGS.into())).await;
                let mut last_rx = Instant::now();
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                let reason = loop {
                    tokio::select! {
                        frame = stream.next() => {
                            last_rx = Instant::now();
                            match frame {
                                Some(Ok(Message::Text(t))) => match WsMessage::parse(t.as_str()) {
                                    Ok(m) => { let _ = events.send(SocketEvent::Message(Arc::new(m))); }
                                    Err(e) => tracing::debug!(error = %e, "unreadable ComfyUI message ignored"),
                                },
                                Some(Ok(Message::Binary(b))) => {
                                    let _ = events.send(SocketEvent::Message(Arc::new(WsMessage::binary(&b))));
                                }
                                Some(Ok(Message::Close(_))) | None => break "closed by the server".to_owned(),
                                Some(Ok(_)) => {}
                                Some(Err(e)) => break e.to_string(),
                            }
                        }
                        _ = ping.tick() => {
                            if last_rx.elapsed() > DEAD_AFTER {
                                break format!("no frame for {} s", DEAD_AFTER.as_secs());
                            }
                            if let Err(e) = sink.send(Message::Ping(Vec::new().into())).await {
                                break e.to_string();
                            }
                        }
                        _ = stop.changed() => {
                            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                            connected.send_replace(false);
                            return;
                        }
                    }
                };
                // Close the old socket before a new one with the same clientId opens.
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                drop(stream);
                connected.send_replace(false);
                let _ = events.send(SocketEvent::Disconnected(reason.clone()));
                Some(reason)
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("connect timed out".to_owned()),
        };
        if let Some(r) = reason {
            tracing::debug!(%url, reason = %r, retry_in_ms = backoff.as_millis() as u64, "ComfyUI socket down");
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
