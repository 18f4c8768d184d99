//! ComfyUI processes Studio Core starts and watches itself (`--comfyui-launch`):
//! one per GPU (or one on the CPU), each on a free loopback port with its own
//! output and temp directories and its log in `data/comfyui-<n>.log`.
//!
//! A supervisor per process: it starts the child in a process group of its own
//! with `PR_SET_PDEATHSIG` (so it dies with `studio`, even on SIGKILL), waits for
//! `/system_stats` before the backend takes work, optionally runs a warm-up job
//! first, restarts the child with backoff when it exits or stops answering for
//! longer than the hang timeout, and gives up (`failed`, with the last log lines
//! in `/health`) when it crashes in a loop. On shutdown: SIGTERM to the group, then
//! SIGKILL after a grace.

use crate::backends::Supervised;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::backend::Backend;
use crate::catalog::Catalog;
use crate::comfy::client::RunStatus;
use crate::workflow::WorkflowRegistry;

/// Lines of a child's output kept for `/health`.
const TAIL_LINES: usize = 20;
/// Longest line kept (a progress bar can be one very long line).
const MAX_LINE: usize = 2000;
/// A run shorter than this that ends in an exit counts towards a crash loop.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How launched ComfyUI processes are run.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    /// The ComfyUI checkout (its `main.py`).
    pub dir: PathBuf,
    /// The interpreter (or any program that takes `main.py` and ComfyUI's flags).
    pub python: PathBuf,
    /// Extra flags for every instance.
    pub extra_args: Vec<String>,
    /// One instance per entry: `Some(gpu index)` or `None` for the CPU.
    pub devices: Vec<Option<String>>,
    /// Where logs and per-instance directories go.
    pub data_dir: PathBuf,
    /// A running instance that does not answer `/system_stats` this long is
    /// killed and restarted.
    pub hang_timeout: Duration,
    /// How long a start may take before the instance counts as hung.
    pub start_timeout: Duration,
    /// Exits in a row, each within a minute of its start, before giving up.
    pub max_fast_exits: u32,
    /// After SIGTERM, how long before SIGKILL.
    pub stop_grace: Duration,
    /// Each log file's size before it rolls over, and files kept.
    pub log_max_bytes: u64,
    pub log_files: usize,
    /// A workflow run once on each instance before it takes real work.
    pub warmup: Option<String>,
    /// How long the warm-up may take.
    pub warmup_timeout: Duration,
}

impl LaunchConfig {
    /// The interpreter to use when none is given: the checkout's own virtualenv
    /// (`venv/` or `.venv/`) if it has one, else `python3`.
    pub fn default_python(dir: &Path) -> PathBuf {
        for v in ["venv", ".venv"] {
            let p = dir.join(v).join("bin/python");
            if p.exists() {
                return p;
            }
        }
        PathBuf::from("python3")
    }

    /// GPUs as `nvidia-smi -L` lists them (`GPU 0: …`); empty when there is no
    /// such command or it fails.
    pub fn detect_gpus() -> Vec<String> {
        let Ok(out) = std::process::Command::new("nvidia-smi")
            .arg("-L")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            return Vec::new();
        };
        if !out.status.success() {
            return Vec::new();
        }
        parse_gpu_list(&String::from_utf8_lossy(&out.stdout))
    }
}

/// Indices from `nvidia-smi -L` output.
pub fn parse_gpu_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("GPU "))
        .filter_map(|rest| rest.split(':').next())
        .map(|i| i.trim().to_owned())
        .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

/// Picks a loopback port nothing listens on now.
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One instance: what it runs and where.
#[derive(Clone, Debug)]
pub struct Instance {
    /// 1-based, as in `comfyui-<n>.log`.
    pub n: usize,
    pub port: u16,
    pub device: Option<String>,
}

impl Instance {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Plans the instances: a port each.
pub fn plan(config: &LaunchConfig) -> std::io::Result<Vec<Instance>> {
    config
        .devices
        .iter()
        .enumerate()
        .map(|(i, device)| {
            Ok(Instance {
                n: i + 1,
                port: free_loopback_port()?,
                device: device.clone(),
            })
        })
        .collect()
}

/// A rolling log shared by a child's stdout and stderr.
struct Log {
    file: Mutex<rolling_file::RollingFileAppender<rolling_file::RollingConditionBasic>>,
}

impl Log {
    fn open(path: &Path, max_bytes: u64, files: usize) -> std::io::Result<Log> {
        let condition = rolling_file::RollingConditionBasic::new()
            .daily()
            .max_size(max_bytes);
        let file = rolling_file::RollingFileAppender::new(path, condition, files.max(1))?;
        Ok(Log {
            file: Mutex::new(file),
        })
    }

    fn line(&self, line: &str) {
        let mut f = self.file.lock().expect("log file");
        let _ = f.write_all(line.as_bytes());
        let _ = f.write_all(b"\n");
        let _ = f.flush();
    }
}

async fn pump(reader: impl AsyncRead + Unpin, log: Arc<Log>, sup: Arc<Supervised>) {
    let mut lines = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bounded: a line longer than MAX_LINE is cut (the rest is read and dropped).
        match (&mut lines)
            .take(MAX_LINE as u64 * 4)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf);
        let mut line: String = text.trim_end_matches(['\n', '\r']).to_owned();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        log.line(&line);
        sup.keep_line(line, TAIL_LINES);
    }
}

/// Starts the child: its own process group, killed if `studio` dies.
fn spawn(config: &LaunchConfig, inst: &Instance) -> std::io::Result<Child> {
    let own = config.data_dir.join(format!("comfyui-{}", inst.n));
    let output = own.join("output");
    let temp = own.join("temp");
    std::fs::create_dir_all(&output)?;
    std::fs::create_dir_all(&temp)?;
    let mut cmd = Command::new(&config.python);
    cmd.arg(config.dir.join("main.py"))
        .args(["--listen", "127.0.0.1", "--port", &inst.port.to_string()])
        .args(["--preview-method", "auto"])
        .arg("--output-directory")
        .arg(&output)
        .arg("--temp-directory")
        .arg(&temp);
    match &inst.device {
        Some(gpu) => {
            cmd.env("CUDA_VISIBLE_DEVICES", gpu);
        }
        None => {
            cmd.arg("--cpu");
        }
    }
    cmd.args(&config.extra_args)
        .current_dir(&config.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the line above: then nobody would
            // send the signal.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn signal_group(pid: u32, sig: i32) {
    // SAFETY: a plain kill(2) on the child's process group.
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

/// Stops a child: SIGTERM to its group, SIGKILL after `grace`.
async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(pid, "ComfyUI did not stop after SIGTERM; killing it");
            signal_group(pid, libc::SIGKILL);
        }
    }
    let _ = child.kill().await;
}

fn exit_text(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended".into(),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// Supervises one instance until `stop_rx` turns true.
pub async fn supervise(
    config: Arc<LaunchConfig>,
    inst: Instance,
    backend: Arc<Backend>,
    sup: Arc<Supervised>,
    catalog: Arc<Catalog>,
    mut stop_rx: watch::Receiver<bool>,
) {
    let log_path = config.data_dir.join(format!("comfyui-{}.log", inst.n));
    sup.set(|s| s.log = log_path.display().to_string());
    let log = match Log::open(&log_path, config.log_max_bytes, config.log_files) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            sup.set(|s| {
                s.state = "failed";
                s.last_exit = format!("cannot open its log {}: {e}", log_path.display());
            });
            backend.mark_down("its log file cannot be opened");
            return;
        }
    };
    let mut fast_exits = 0u32;
    loop {
        if *stop_rx.borrow() {
            sup.set(|s| s.state = "stopped");
            return;
        }
        backend.set_admitted(false);
        sup.set(|s| {
            s.state = "starting";
            s.pid = None;
        });
        log.line(&format!(
            "---- studio: starting ComfyUI {} on port {} ({})",
            inst.n,
            inst.port,
            inst.device
                .as_deref()
                .map(|g| format!("GPU {g}"))
                .unwrap_or_else(|| "CPU".into())
        ));
        let started = Instant::now();
        let mut child = match spawn(&config, &inst) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start {}: {e}", config.python.display());
                tracing::error!(instance = inst.n, error = %msg, "ComfyUI not started");
                log.line(&format!("---- studio: {msg}"));
                sup.set(|s| {
                    s.state = "failed";
                    s.last_exit = msg.clone();
                    s.log_tail = sup.tail();
                });
                backend.mark_down(&msg);
                let _ = stop_rx.wait_for(|s| *s).await;
                return;
            }
        };
        let pid = child.id();
        sup.set(|s| s.pid = pid);
        tracing::info!(instance = inst.n, pid, port = inst.port, "ComfyUI started");
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(out, log.clone(), sup.clone())));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(err, log.clone(), sup.clone())));
        }

        let ended = watch_child(
            &config,
            &inst,
            &backend,
            &sup,
            &catalog.current(),
            &mut child,
            &mut stop_rx,
        )
        .await;
        let reason = match ended {
            Ended::Stop => {
                sup.set(|s| s.state = "stopped");
                backend.set_admitted(false);
                stop(&mut child, config.stop_grace).await;
                for p in pumps {
                    let _ = tokio::time::timeout(Duration::from_secs(1), p).await;
                }
                log.line("---- studio: stopped");
                tracing::info!(instance = inst.n, "ComfyUI stopped");
                return;
            }
            Ended::Exited(text) => text,
            Ended::Hung(text) => {
                if let Some(pid) = child.id() {
                    signal_group(pid, libc::SIGKILL);
                }
                let _ = child.wait().await;
                text
            }
        };
        for p in pumps {
            let _ = tokio::time::timeout(Duration::from_secs(1), p).await;
        }
        backend.mark_down(&format!("ComfyUI {reason}"));
        log.line(&format!("---- studio: ComfyUI {reason}"));
        if started.elapsed() < STABLE_AFTER {
            fast_exits += 1;
        } else {
            fast_exits = 1;
        }
        let tail = sup.tail();
        if fast_exits >= config.max_fast_exits {
            tracing::error!(instance = inst.n, %reason, exits = fast_exits, "ComfyUI crashes in a loop; not restarting it (see /health and its log)");
            sup.set(|s| {
                s.state = "failed";
                s.pid = None;
                s.last_exit = format!(
                    "{reason}; {fast_exits} exits in a row within a minute of starting: not restarted"
                );
                s.log_tail = tail;
            });
            let _ = stop_rx.wait_for(|s| *s).await;
            sup.set(|s| s.state = "stopped");
            return;
        }
        let backoff = (Duration::from_secs(1) * 2u32.saturating_pow(fast_exits.saturating_sub(1)))
            .min(MAX_BACKOFF);
        tracing::warn!(instance = inst.n, %reason, backoff_s = backoff.as_secs_f64(), "ComfyUI ended; restarting it");
        sup.restarted();
        sup.set(|s| {
            s.state = "restarting";
            s.pid = None;
            s.last_exit = reason.clone();
            s.log_tail = tail;
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_rx.wait_for(|s| *s) => {}
        }
    }
}

enum Ended {
    Stop,
    Exited(String),
    Hung(String),
}

/// Waits for readiness (then warms up and admits the backend), then watches the
/// child until it exits, hangs, or `studio` stops.
async fn watch_child(
    config: &LaunchConfig,
    inst: &Instance,
    backend: &Backend,
    sup: &Supervised,
    workflows: &WorkflowRegistry,
    child: &mut Child,
    stop_rx: &mut watch::Receiver<bool>,
) -> Ended {
    let every = Duration::from_millis(250);
    let mut last_ok = Instant::now();
    let mut limit = config.start_timeout;
    let mut ready = false;
    loop {
        tokio::select! {
            status = child.wait() => return Ended::Exited(exit_text(status)),
            _ = stop_rx.wait_for(|s| *s) => return Ended::Stop,
            _ = tokio::time::sleep(every) => {}
        }
        let answered = tokio::time::timeout(
            Duration::from_secs(5).min(config.hang_timeout),
            backend.client.system_stats(),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if answered {
            last_ok = Instant::now();
            if !ready {
                ready = true;
                limit = config.hang_timeout;
                backend.check().await;
                tracing::info!(instance = inst.n, "ComfyUI answers");
                if let Some(name) = &config.warmup {
                    sup.set(|s| s.state = "warming-up");
                    tokio::select! {
                        r = warm_up(backend, workflows, name, config.warmup_timeout) => match r {
                            Ok(secs) => tracing::info!(instance = inst.n, workflow = %name, seconds = secs, "warm-up done"),
                            Err(e) => tracing::warn!(instance = inst.n, workflow = %name, error = %e, "warm-up failed; taking work anyway"),
                        },
                        status = child.wait() => return Ended::Exited(exit_text(status)),
                        _ = stop_rx.wait_for(|s| *s) => return Ended::Stop,
                    }
                }
                sup.set(|s| s.state = "running");
                backend.set_admitted(true);
            }
        } else if last_ok.elapsed() > limit {
            let what = if ready {
                format!("killed: not answering for {} s", limit.as_secs())
            } else {
                format!("killed: not ready after {} s", limit.as_secs())
            };
            return Ended::Hung(what);
        }
    }
}

/// Runs a workflow with its defaults once; its seconds.
async fn warm_up(
    backend: &Backend,
    workflows: &WorkflowRegistry,
    name: &str,
    timeout: Duration,
) -> Result<f64, String> {
    let wf = workflows
        .get(name)
        .ok_or_else(|| format!("no workflow {name:?}"))?;
    let id = uuid::Uuid::new_v4().to_string();
    let graph = wf.render(&id, "warm-up", 1, &serde_json::Map::new());
    let started = Instant::now();
    backend
        .client
        .submit(&id, &graph, serde_json::json!({"studio_warmup": true}))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = started + timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(Some(entry)) = backend.client.history(&id).await {
            return match entry.status {
                RunStatus::Success => Ok(started.elapsed().as_secs_f64()),
                RunStatus::Error(e) => Err(format!("{e:?}")),
                RunStatus::Interrupted => Err("interrupted".into()),
                RunStatus::Failed(e) => Err(e),
            };
        }
        if Instant::now() > deadline {
            let _ = backend.client.interrupt(&id).await;
            return Err(format!("not done after {} s", timeout.as_secs()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_list_is_read_from_nvidia_smi() {
        let text =
            "GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-1)\nGPU 1: NVIDIA A100 (UUID: GPU-2)\n";
        assert_eq!(parse_gpu_list(text), vec!["0", "1"]);
        assert!(parse_gpu_list("No devices were found\n").is_empty());
        assert!(parse_gpu_list("").is_empty());
    }
}
