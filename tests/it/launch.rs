//! `--comfyui-launch`: `studio serve` starts its own ComfyUI processes (here the
//! stand-in executable, `examples/comfyui_standin.rs`, which takes ComfyUI's
//! command line), gates them on readiness, restarts them when they crash or hang,
//! gives up on a crash loop, and leaves no child behind when it stops or is
//! killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::TempDir;
use crate::support::proc::{Proc, get, submit, wait_final, wait_status};

/// The stand-in executable, built by `cargo test` with the other examples.
fn standin_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/comfyui_standin");
    assert!(
        p.exists(),
        "{} is missing: `cargo test` builds it (or `cargo build --example comfyui_standin`)",
        p.display()
    );
    p
}

struct Studio {
    proc: Proc,
    base: String,
    data: TempDir,
}

/// `studio serve` on the embedded store, launching `gpus` stand-ins with `args`.
fn launch(gpus: &str, args: &str, extra: &[(&'static str, String)]) -> Studio {
    let data = TempDir::new();
    let checkout = data.path().join("ComfyUI");
    std::fs::create_dir_all(&checkout).unwrap();
    std::fs::write(checkout.join("main.py"), "# stand-in\n").unwrap();
    let mut env: Vec<(&str, String)> = vec![
        ("PORT", "0".into()),
        ("STUDIO_DATA_DIR", data.path().display().to_string()),
        ("STUDIO_COMFYUI_LAUNCH", checkout.display().to_string()),
        ("STUDIO_COMFYUI_PYTHON", standin_exe().display().to_string()),
        ("STUDIO_GPUS", gpus.into()),
        ("STUDIO_COMFYUI_ARGS", args.into()),
        ("STUDIO_COMFYUI_HANG_TIMEOUT", "2s".into()),
        ("STUDIO_COMFYUI_STOP_GRACE", "1s".into()),
        ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
        ("STUDIO_POLL_INTERVAL", "300ms".into()),
        ("STUDIO_RETRY_BASE", "100ms".into()),
        ("STUDIO_SHUTDOWN_GRACE", "1s".into()),
    ];
    env.extend(extra.iter().cloned());
    let proc = Proc::spawn(&["serve"], &env, data.path().join("studio.log"));
    let base = proc.wait_listening();
    Studio { proc, base, data }
}

async fn processes(base: &str) -> Vec<Value> {
    let h = get(&format!("{base}/health")).await;
    h["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["process"].clone())
        .collect()
}

/// Waits until every launched process satisfies `want`; the last health seen.
async fn wait_processes(base: &str, limit: Duration, want: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let p = processes(base).await;
        if !p.is_empty() && p.iter().all(&want) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "processes never got there: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: u64) -> bool {
    // A zombie has exited: only its entry is left.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

fn wait_gone(pid: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u64, sig: i32) {
    // SAFETY: kill(2) on a child we started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn environ(pid: u64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn cmdline(pid: u64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_comfyui_per_gpu_starts_and_takes_work_only_once_it_answers() {
    let s = launch("0,1", "--standin-slow-start-ms 1500", &[]);
    // Both start at once and answer only after 1.5 s: nothing runs before.
    let starting = processes(&s.base).await;
    assert_eq!(starting.len(), 2, "{starting:?}");
    for p in &starting {
        assert_eq!(p["state"], "starting", "{p}");
    }
    let id = submit(
        &s.base,
        json!({"prompt": "after the start", "workflow": "smoke"}),
    )
    .await;
    let v = get(&format!("{}/api/status/{id}", s.base)).await;
    assert_eq!(
        v["status"], "queued",
        "no backend takes work before it answers: {v}"
    );

    let running = wait_processes(&s.base, Duration::from_secs(20), |p| {
        p["state"] == "running"
    })
    .await;
    let v = wait_final(&s.base, &id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");

    // Each on its own GPU, port and directories, with ComfyUI's flags.
    let health = get(&format!("{}/health", s.base)).await;
    let mut gpus = Vec::new();
    for (i, p) in running.iter().enumerate() {
        let pid = p["pid"].as_u64().unwrap();
        let env = environ(pid);
        gpus.extend(
            env.iter()
                .filter(|e| e.starts_with("CUDA_VISIBLE_DEVICES="))
                .cloned(),
        );
        let cmd = cmdline(pid).join(" ");
        let url = health["backends"][i]["url"].as_str().unwrap();
        let port = url.rsplit(':').next().unwrap();
        assert!(
            cmd.contains(&format!(
                "--listen 127.0.0.1 --port {port} --preview-method auto"
            )),
            "{cmd}"
        );
        assert!(cmd.contains(&format!("comfyui-{}/output", i + 1)), "{cmd}");
        assert!(cmd.contains("main.py"), "{cmd}");
        assert!(!cmd.contains("--cpu"), "a GPU instance: {cmd}");
        let log =
            std::fs::read_to_string(s.data.path().join(format!("comfyui-{}.log", i + 1))).unwrap();
        assert!(
            log.contains("To see the GUI go to"),
            "its output is in its log: {log}"
        );
    }
    gpus.sort();
    assert_eq!(gpus, ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comfyui_killed_mid_job_is_restarted_and_the_job_finishes() {
    let s = launch("cpu", "--standin-duration-ms 2500", &[]);
    let first = wait_processes(&s.base, Duration::from_secs(20), |p| {
        p["state"] == "running"
    })
    .await;
    let pid = first[0]["pid"].as_u64().unwrap();
    assert!(
        cmdline(pid).contains(&"--cpu".to_owned()),
        "no GPU: one CPU instance"
    );
    let id = submit(&s.base, json!({"prompt": "survive", "workflow": "smoke"})).await;
    wait_status(&s.base, &id, Duration::from_secs(20), |v| {
        v["status"] == "processing"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(pid, libc::SIGKILL);

    let after = wait_processes(&s.base, Duration::from_secs(20), |p| {
        p["state"] == "running" && p["restarts"] == 1
    })
    .await;
    assert_ne!(after[0]["pid"], first[0]["pid"], "a new process");
    assert!(
        after[0]["last_exit"].as_str().unwrap().contains("signal 9"),
        "{}",
        after[0]
    );
    let v = wait_final(&s.base, &id, Duration::from_secs(30)).await;
    assert_eq!(
        v["status"], "finished",
        "the job finished after the restart: {v}"
    );

    let metrics = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("studio_comfyui_restarts_total{"))
        .unwrap_or_else(|| panic!("no restart counter:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_is_marked_failed_with_its_last_log_lines() {
    let s = launch(
        "cpu",
        "--standin-exit-at-start",
        &[("STUDIO_COMFYUI_MAX_RESTARTS", "3".into())],
    );
    let failed = wait_processes(&s.base, Duration::from_secs(30), |p| p["state"] == "failed").await;
    let p = &failed[0];
    assert_eq!(p["restarts"], 2, "three starts, two restarts: {p}");
    assert!(
        p["last_exit"].as_str().unwrap().contains("not restarted"),
        "{p}"
    );
    let tail: Vec<&str> = p["log_tail"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tail.iter()
            .any(|l| l.contains("ModuleNotFoundError: No module named 'torch'")),
        "the last lines say why: {tail:?}"
    );
    let h = get(&format!("{}/health", s.base)).await;
    assert_eq!(h["backends"][0]["state"], "down", "{h}");
    // And it stays failed: no more restarts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(processes(&s.base).await[0]["restarts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comfyui_that_stops_answering_is_killed_and_restarted() {
    let s = launch("cpu", "", &[]);
    let first = wait_processes(&s.base, Duration::from_secs(20), |p| {
        p["state"] == "running"
    })
    .await;
    let pid = first[0]["pid"].as_u64().unwrap();
    signal(pid, libc::SIGSTOP);
    let after = wait_processes(&s.base, Duration::from_secs(20), |p| {
        p["state"] == "running" && p["restarts"] == 1
    })
    .await;
    assert!(
        after[0]["last_exit"]
            .as_str()
            .unwrap()
            .contains("not answering for 2 s"),
        "{}",
        after[0]
    );
    wait_gone(pid, Duration::from_secs(5));
    let id = submit(
        &s.base,
        json!({"prompt": "after a hang", "workflow": "smoke"}),
    )
    .await;
    let v = wait_final(&s.base, &id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_studio_stops_every_child_even_one_that_ignores_sigterm() {
    let s = launch("0,1", "--standin-ignore-sigterm", &[]);
    let running = wait_processes(&s.base, Duration::from_secs(20), |p| {
        p["state"] == "running"
    })
    .await;
    let pids: Vec<u64> = running.iter().map(|p| p["pid"].as_u64().unwrap()).collect();
    let mut proc = s.proc;
    signal(u64::from(proc.pid()), libc::SIGTERM);
    let started = Instant::now();
    let status = proc.child.wait().unwrap();
    assert!(status.success(), "studio exits cleanly: {status}");
    for pid in pids {
        assert!(!alive(pid), "child {pid} is gone when studio has exited");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGKILL after the 1 s grace: {:?}",
        started.elapsed()
    );
    let log = std::fs::read_to_string(&proc.log).unwrap();
    assert!(log.contains("did not stop after SIGTERM"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_studio_leaves_no_orphan() {
    let s = launch("0,1", "", &[]);
    let running = wait_processes(&s.base, Duration::from_secs(20), |p| {
        p["state"] == "running"
    })
    .await;
    let pids: Vec<u64> = running.iter().map(|p| p["pid"].as_u64().unwrap()).collect();
    let mut proc = s.proc;
    proc.kill9();
    for pid in pids {
        wait_gone(pid, Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_job_runs_before_the_backend_takes_work() {
    let s = launch(
        "cpu",
        "--standin-duration-ms 800",
        &[("STUDIO_COMFYUI_WARMUP", "smoke".into())],
    );
    // It warms up first (visible in /health), then runs.
    wait_processes(&s.base, Duration::from_secs(20), |p| {
        p["state"] == "warming-up"
    })
    .await;
    let id = submit(
        &s.base,
        json!({"prompt": "after the warm-up", "workflow": "smoke"}),
    )
    .await;
    let v = get(&format!("{}/api/status/{id}", s.base)).await;
    assert_eq!(v["status"], "queued", "no work during the warm-up: {v}");
    let v = wait_final(&s.base, &id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "finished", "{v}");
    let log = std::fs::read_to_string(&s.proc.log).unwrap();
    assert!(log.contains("warm-up done"), "{log}");
}
