//! A gigabyte output streams from ComfyUI to storage without filling the worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::exclusive;
use crate::support::TempDir;
use crate::support::proc::{Proc, rss_kib, submit, wait_status};
use crate::support::standin::{Knobs, StandIn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gigabyte_output_keeps_the_worker_under_100_mb() {
    let _one = exclusive().await;
    const SIZE: u64 = 1 << 30;
    let standin = StandIn::start_with(Knobs {
        output_bytes: Some(SIZE),
        duration: Duration::from_millis(20),
        ..Knobs::default()
    });
    let dir = TempDir::new();
    let p = Proc::spawn(
        &["serve"],
        &[
            ("STUDIO_DATA_DIR", dir.path().display().to_string()),
            ("PORT", "0".into()),
            ("COMFYUI_URL", standin.url()),
            ("STUDIO_HEALTH_INTERVAL", "200ms".into()),
        ],
        dir.path().join("backend.log"),
    );
    let base = p.wait_listening();
    let id = submit(
        &base,
        serde_json::json!({"prompt": "a very large file", "workflow": "smoke"}),
    )
    .await;
    let started = Instant::now();
    // Memory is sampled at every look at the job's status (every 30 ms).
    let peak = AtomicU64::new(0);
    let status = wait_status(&base, &id, Duration::from_secs(180), |v| {
        peak.fetch_max(rss_kib(p.pid()), Ordering::Relaxed);
        v["status"] == "finished" || v["status"] == "failed"
    })
    .await;
    let peak = peak.into_inner();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(status["status"], "finished", "{status}");
    assert_eq!(status["outputs"][0]["size"], SIZE, "{status}");
    let stored = std::fs::metadata(
        dir.path()
            .join("images")
            .join(&id)
            .join(status["outputs"][0]["filename"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(stored.len(), SIZE);
    eprintln!(
        "1 GiB output stored in {secs:.1} s ({:.0} MiB/s); studio serve peak RSS {} KiB",
        1024.0 / secs,
        peak
    );
    assert!(peak > 0 && peak < 100 * 1024, "peak RSS {peak} KiB");
}
