//! The ComfyUI backends as the rest of the service sees them: the state a worker
//! keeps of each (written by the worker, read by `/health`, `/metrics` and
//! `/api/ops`), the reports workers publish to the store, and what the live
//! backends offer. Types low, so the worker and the API can share them without
//! importing each other.

pub mod offers;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use offers::Offers;

/// Something that can describe the ComfyUI backends this process drives, for
/// `/health`.
pub trait BackendReport: Send + Sync {
    fn snapshot(&self) -> Vec<BackendState>;
    /// The backends as `/metrics` counts them.
    fn samples(&self) -> Vec<BackendSample>;
}

/// One ComfyUI backend as `/health` shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BackendState {
    pub url: String,
    /// `up`, `down` or `unknown` (not checked yet).
    pub state: &'static str,
    /// `connected` or `disconnected`.
    pub socket: &'static str,
    /// Jobs this process runs on it now.
    pub in_flight: usize,
    /// Jobs ended on it since start.
    pub done: usize,
    /// Preview pictures it sent for our jobs since start. None after jobs ran
    /// means no previews: ComfyUI sends them from samplers only when started with
    /// `--preview-method auto` (or `taesd`, `latent2rgb`).
    pub previews: u64,
    /// Set when jobs ran on it and it sent no preview: how to get them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previews_note: Option<&'static str>,
    /// Prompts in its own queue (running + pending) at the last check.
    pub queue_remaining: Option<u64>,
    /// Its first device (`cpu`, a GPU name).
    pub device: String,
    pub last_ok_at: String,
    pub last_error: String,
    pub last_error_at: String,
    /// A ComfyUI this process launched and supervises (`--comfyui-launch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessState>,
}

/// What `/health` shows of a launched process.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct ProcessState {
    /// `starting`, `warming-up`, `running`, `restarting`, `failed` or `stopped`.
    pub state: &'static str,
    pub pid: Option<u32>,
    /// Restarts since `studio` started.
    pub restarts: u64,
    /// How the last run ended (`exit status 1`, `killed: not answering for 60 s`).
    pub last_exit: String,
    /// The log file (admins only).
    pub log: String,
    /// The last lines it printed when it failed or last exited (admins only).
    pub log_tail: Vec<String>,
}

/// A launched process's state, shared between its supervisor (which writes it),
/// `/health` and the metrics (which read it).
#[derive(Default)]
pub struct Supervised {
    state: Mutex<ProcessState>,
    tail: Mutex<VecDeque<String>>,
    restarts: AtomicU64,
}

impl Supervised {
    pub fn snapshot(&self) -> ProcessState {
        let mut s = self.state.lock().expect("process state").clone();
        s.restarts = self.restarts.load(Ordering::Relaxed);
        s
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Counts one restart.
    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set(&self, f: impl FnOnce(&mut ProcessState)) {
        f(&mut self.state.lock().expect("process state"));
    }

    /// Keeps `line` among the last `keep` lines the process printed.
    pub fn keep_line(&self, line: String, keep: usize) {
        let mut t = self.tail.lock().expect("log tail");
        while t.len() >= keep.max(1) {
            t.pop_front();
        }
        t.push_back(line);
    }

    /// The last lines the process printed, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .expect("log tail")
            .iter()
            .cloned()
            .collect()
    }
}

/// A backend as its worker sees it: what `/metrics` counts, and what the worker
/// publishes to the store with each heartbeat for `/api/ops` (as JSON; a field a
/// reader does not find takes its default).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendSample {
    pub url: String,
    /// `up`, `down` or `unknown`.
    pub state: String,
    pub in_flight: u64,
    /// Jobs ended on it since the worker started.
    pub done: u64,
    /// Wall time it spent running the worker's prompts since the worker started.
    pub busy_seconds: f64,
    pub device: String,
    pub last_error: String,
    /// Restarts of a ComfyUI this worker launched itself (`--comfyui-launch`).
    pub restarts: u64,
    /// The fingerprint of what it offers (its capabilities, in the store); empty
    /// until read.
    pub caps: String,
}

impl Default for BackendSample {
    fn default() -> Self {
        BackendSample {
            url: String::new(),
            state: "unknown".into(),
            in_flight: 0,
            done: 0,
            busy_seconds: 0.0,
            device: String::new(),
            last_error: String::new(),
            restarts: 0,
            caps: String::new(),
        }
    }
}

impl BackendSample {
    pub fn up(&self) -> bool {
        self.state == "up"
    }
}
