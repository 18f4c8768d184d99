//! A ComfyUI backend as the worker sees it: its client, its socket, and its health
//! (checked with `/system_stats`; a backend that stops answering is `down`, claims
//! nothing, and rejoins by itself when it answers again).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::backends::BackendState;
use crate::capabilities::Capabilities;
use crate::clock;
use crate::comfy::{ComfyClient, ComfySocket};

/// Input pictures remembered per backend.
pub const MAX_KNOWN_INPUTS: usize = 10_000;

/// A backend's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet.
    Unknown,
    Up,
    Down,
}

impl Health {
    fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

#[derive(Default)]
struct Info {
    last_error: String,
    last_error_at: String,
    last_ok_at: String,
    queue_remaining: Option<u64>,
    device: String,
}

/// What `/health` says of a backend that ran jobs without sending a preview.
const NO_PREVIEWS: &str = "no previews received: ComfyUI sends them from samplers (KSampler and the like) when started with --preview-method auto (or taesd); graphs without a sampler have none";

/// One ComfyUI server.
pub struct Backend {
    pub url: String,
    pub client: ComfyClient,
    pub socket: ComfySocket,
    health: watch::Sender<Health>,
    info: Mutex<Info>,
    /// Jobs this process is running on it right now.
    pub in_flight: AtomicUsize,
    /// Jobs finished (any outcome) on it since start.
    pub done: AtomicUsize,
    /// Preview pictures it sent for our jobs since start.
    previews: std::sync::atomic::AtomicU64,
    /// When to claim the next job for it.
    pub pacing: super::pacing::Pacing,
    /// Whether it may take work besides being up: a launched ComfyUI is admitted
    /// once it answers and its warm-up is done, and not while it restarts.
    admitted: watch::Sender<bool>,
    /// Input pictures already put on it: upload id → the name ComfyUI gave it
    /// (bounded: forgotten wholesale past [`MAX_KNOWN_INPUTS`]).
    pub inputs: Mutex<std::collections::HashMap<String, String>>,
    /// Its capabilities with their fingerprint, once read from `/object_info`
    /// (watched: the dispatcher waits a moment for them before its first claim).
    offer: watch::Sender<Option<(String, Arc<Capabilities>)>>,
    /// Which jobs its dispatcher may claim.
    pub routing: super::routing::Routing,
    /// The process behind it, when this worker launched it.
    pub process: Option<std::sync::Arc<crate::backends::Supervised>>,
}

impl Backend {
    /// Opens the backend's socket at once (before any submit) with a stable client id.
    pub fn start(url: &str, client_id: &str, stop: watch::Receiver<bool>) -> Backend {
        Self::start_with(url, client_id, stop, None)
    }

    /// A backend whose ComfyUI this worker launches and supervises: it takes no
    /// work until the supervisor admits it.
    pub fn start_with(
        url: &str,
        client_id: &str,
        stop: watch::Receiver<bool>,
        process: Option<std::sync::Arc<crate::backends::Supervised>>,
    ) -> Backend {
        let admitted = process.is_none();
        let client = ComfyClient::new(url, client_id);
        let socket = ComfySocket::spawn(client.ws_url(), stop);
        Backend {
            url: client.base_url().to_owned(),
            client,
            socket,
            health: watch::channel(Health::Unknown).0,
            info: Mutex::new(Info::default()),
            in_flight: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            previews: Default::default(),
            pacing: Default::default(),
            admitted: watch::channel(admitted).0,
            inputs: Mutex::new(std::collections::HashMap::new()),
            offer: watch::channel(None).0,
            routing: Default::default(),
            process,
        }
    }

    /// Lets the dispatcher give it work (or not).
    pub fn set_admitted(&self, yes: bool) {
        self.admitted.send_replace(yes);
    }

    /// Waits until it answers its health check (admitted or not).
    pub async fn wait_healthy(&self) {
        let mut rx = self.health.subscribe();
        let _ = rx.wait_for(|h| *h == Health::Up).await;
    }

    /// Waits until it stops answering.
    pub async fn wait_unhealthy(&self) {
        let mut rx = self.health.subscribe();
        let _ = rx.wait_for(|h| *h != Health::Up).await;
    }

    /// Reads its `/object_info` and publishes what it offers: on every (re)connect
    /// and every `every`, until `stop`.
    pub async fn capabilities_loop(
        &self,
        store: std::sync::Arc<dyn crate::store::JobStore>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = self.wait_healthy() => {}
                _ = stop.changed() => return,
            }
            match self.client.object_info().await {
                Ok(info) => {
                    let mut caps = crate::capabilities::Capabilities::from_object_info(&info);
                    caps.info = self.publish_info(store.as_ref(), &info).await;
                    let fp = caps.fingerprint();
                    let json = serde_json::to_string(&caps).unwrap_or_default();
                    // Kept for three refreshes: a worker that dies takes its offer
                    // with it soon after (its heartbeat report goes first).
                    match store.put_capabilities(&fp, &json, every * 3).await {
                        Ok(()) => {
                            let changed = self.offer.send_if_modified(|o| {
                                if o.as_ref().is_some_and(|(f, _)| *f == fp) {
                                    return false;
                                }
                                *o = Some((fp.clone(), Arc::new(caps.clone())));
                                true
                            });
                            if changed {
                                tracing::info!(backend = %self.url, nodes = caps.nodes.len(), model_lists = caps.models.len(), fingerprint = %fp, "backend capabilities read");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(backend = %self.url, error = %e, "cannot publish backend capabilities; retrying")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(backend = %self.url, error = %e, "cannot read /object_info; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                // A reconnect is a chance its models changed: read again then.
                _ = self.wait_unhealthy() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Keeps the whole `/object_info` in the store (for conversions and ComfyUI's
    /// frontend) and notes it as the last one reported; its fingerprint, or ""
    /// when it could not be kept.
    async fn publish_info(
        &self,
        store: &dyn crate::store::Routing,
        info: &serde_json::Value,
    ) -> String {
        use crate::capabilities::{INFO_TTL, LAST_INFO, info_fingerprint, info_key};
        let text = info.to_string();
        let fp = info_fingerprint(&text);
        let kept = async {
            store
                .put_capabilities(&info_key(&fp), &text, INFO_TTL)
                .await?;
            store.put_capabilities(LAST_INFO, &fp, INFO_TTL).await
        }
        .await;
        match kept {
            Ok(()) => fp,
            Err(e) => {
                tracing::warn!(backend = %self.url, error = %e, "cannot keep /object_info in the store");
                String::new()
            }
        }
    }

    /// It sent a preview of a job's picture.
    pub fn note_preview(&self) {
        self.previews.fetch_add(1, Ordering::Relaxed);
    }

    /// Its capabilities, once read.
    pub fn offer(&self) -> Option<(String, Arc<Capabilities>)> {
        self.offer.borrow().clone()
    }

    /// The fingerprint of its capabilities ("" until read).
    pub fn offer_fingerprint(&self) -> String {
        self.offer
            .borrow()
            .as_ref()
            .map(|(fp, _)| fp.clone())
            .unwrap_or_default()
    }

    /// Waits until its capabilities are known, at most `limit`.
    pub async fn wait_offer(&self, limit: Duration) {
        let mut rx = self.offer.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
    }

    /// Up and admitted: the dispatcher may claim for it.
    pub fn ready(&self) -> bool {
        self.health() == Health::Up && *self.admitted.borrow()
    }

    pub fn health(&self) -> Health {
        *self.health.borrow()
    }

    /// Waits until the backend is up and admitted (or returns at once if it is).
    pub async fn wait_up(&self) {
        let mut health = self.health.subscribe();
        let mut admitted = self.admitted.subscribe();
        loop {
            if *health.borrow_and_update() == Health::Up && *admitted.borrow_and_update() {
                return;
            }
            tokio::select! {
                r = health.changed() => if r.is_err() { return },
                r = admitted.changed() => if r.is_err() { return },
            }
        }
    }

    /// Records a failure seen by anyone (a health check, a job): the backend is down
    /// until a health check passes again.
    pub fn mark_down(&self, error: &str) {
        {
            let mut info = self.info.lock().expect("backend info");
            info.last_error = error.to_owned();
            info.last_error_at = clock::iso8601(clock::now_micros());
        }
        if self.health.send_replace(Health::Down) != Health::Down {
            tracing::warn!(backend = %self.url, %error, "backend down");
        }
    }

    /// Its GPU, as its `/system_stats` last named it ("" before).
    pub fn device(&self) -> String {
        self.info.lock().expect("backend info").device.clone()
    }

    fn mark_up(&self, stats: &Value) {
        {
            let mut info = self.info.lock().expect("backend info");
            info.last_ok_at = clock::iso8601(clock::now_micros());
            info.device = stats
                .pointer("/devices/0/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
        }
        if self.health.send_replace(Health::Up) != Health::Up {
            tracing::info!(backend = %self.url, "backend up");
        }
    }

    /// One health check.
    pub async fn check(&self) {
        match self.client.system_stats().await {
            Ok(stats) => {
                self.mark_up(&stats);
                if let Ok(q) = self.client.queue().await {
                    self.info.lock().expect("backend info").queue_remaining =
                        Some((q.running.len() + q.pending.len()) as u64);
                }
            }
            Err(e) => self.mark_down(&e.to_string()),
        }
    }

    /// Checks the backend every `every` until `stop`.
    pub async fn health_loop(&self, every: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            self.check().await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// The backend as `/health` shows it.
    pub fn snapshot(&self) -> BackendState {
        let info = self.info.lock().expect("backend info");
        BackendState {
            url: self.url.clone(),
            state: self.health().as_str(),
            socket: if self.socket.is_connected() {
                "connected"
            } else {
                "disconnected"
            },
            in_flight: self.in_flight.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            previews: self.previews.load(Ordering::Relaxed),
            previews_note: (self.done.load(Ordering::Relaxed) > 0
                && self.previews.load(Ordering::Relaxed) == 0)
                .then_some(NO_PREVIEWS),
            queue_remaining: info.queue_remaining,
            device: info.device.clone(),
            last_ok_at: info.last_ok_at.clone(),
            last_error: info.last_error.clone(),
            last_error_at: info.last_error_at.clone(),
            process: self.process.as_ref().map(|p| p.snapshot()),
        }
    }
}
