//! GPU utilisation: N ComfyUI stand-ins, each taking D ms per prompt; M jobs through
//! `studio serve`. Prints the achieved throughput as a share of the ideal N/D, and
//! the idle gap each backend saw between the end of one prompt and the start of the
//! next (p50, p99, max) — once with prefetch 1 (one prompt running plus one
//! submitted) and once with prefetch 0 (submit, wait, fetch, repeat: the
//! prototype's plan), in the same run. A benchmark: it prints, it does not judge.
//!
//! Run: `cargo bench --bench throughput` (`BENCH_N`, `BENCH_D_MS`, `BENCH_M`;
//! defaults 4, 200, 400; `BENCH_STORE=redis` to use the Redis at 127.0.0.1:6379).

#[path = "../tests/it/support/standin.rs"]
mod standin;

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use standin::{Knobs, StandIn};
use support::{Studio, cleanup_redis, env_or, pct, prefix, redis_url};

fn start_studio(backends: &[String], prefetch: usize, redis_prefix: Option<&str>) -> Studio {
    let mut envs = vec![
        ("COMFYUI_URL", backends.join(",")),
        ("STUDIO_PREFETCH", prefetch.to_string()),
        ("STUDIO_HEALTH_INTERVAL", "1s".to_owned()),
    ];
    if let Some(p) = redis_prefix {
        envs.push(("REDIS_URL", redis_url()));
        envs.push(("STUDIO_REDIS_PREFIX", p.to_owned()));
    }
    Studio::start("serve", &envs)
}

fn ms(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

async fn run(n: usize, d: Duration, m: usize, prefetch: usize, store: &str) {
    let standins: Vec<StandIn> = (0..n)
        .map(|_| {
            StandIn::start_with(Knobs {
                duration: d,
                steps: 1,
                previews: false,
                ..Knobs::default()
            })
        })
        .collect();
    let urls: Vec<String> = standins.iter().map(|s| s.url()).collect();
    let prefix = prefix("tput");
    let studio = start_studio(
        &urls,
        prefetch,
        (store == "redis").then_some(prefix.as_str()),
    );
    let http = reqwest::Client::new();
    // Wait until every backend is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{}/health", studio.base())).send().await
            && let Ok(v) = r.json::<Value>().await
            && v["backends"]
                .as_array()
                .is_some_and(|b| b.len() == n && b.iter().all(|b| b["state"] == "up"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "studio or its backends did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(m);
    for i in 0..m {
        let v: Value = http
            .post(format!("{}/api/generate", studio.base()))
            .json(&json!({"prompt": format!("bench {i}"), "workflow": "smoke", "seed": i}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(v["job_id"].as_str().unwrap().to_owned());
    }
    let submitted = t0.elapsed();
    let mut pending = ids.clone();
    let mut failed = 0;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            let v: Value = http
                .get(format!("{}/api/status/{id}", studio.base()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match v["status"].as_str() {
                Some("finished") => {}
                Some("failed") => failed += 1,
                _ => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "did not finish in 10 minutes"
        );
    }
    let total = t0.elapsed();

    let ideal = d.as_secs_f64() * m as f64 / n as f64;
    let mut gaps = Vec::new();
    let mut busy = 0.0;
    for s in &standins {
        let mut runs = s.runs();
        runs.sort_by_key(|r| r.started);
        for r in &runs {
            busy += (r.ended - r.started).as_secs_f64();
        }
        for w in runs.windows(2) {
            gaps.push(
                w[1].started
                    .saturating_duration_since(w[0].ended)
                    .as_secs_f64()
                    * 1000.0,
            );
        }
    }
    gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let submitted_total: u32 = standins.iter().map(|s| s.submitted_total()).sum();
    println!(
        "prefetch {prefetch}: {m} jobs in {:.2} s (ideal {:.2} s) -> {:.1}% of ideal N/D = {:.1} jobs/s (achieved {:.2}); \
         GPU busy {:.1}%; idle gap p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {failed} failed; {submitted_total} prompts submitted; submission took {:.2} s",
        total.as_secs_f64(),
        ideal,
        100.0 * ideal / total.as_secs_f64(),
        n as f64 / d.as_secs_f64(),
        m as f64 / total.as_secs_f64(),
        100.0 * busy / (n as f64 * total.as_secs_f64()),
        ms(pct(&gaps, 0.5)),
        ms(pct(&gaps, 0.99)),
        gaps.last().copied().unwrap_or(f64::NAN),
        submitted.as_secs_f64(),
    );
    drop(studio);
    if store == "redis" {
        cleanup_redis(&prefix);
    }
}

fn main() {
    let n: usize = env_or("BENCH_N", 4);
    let d = Duration::from_millis(env_or("BENCH_D_MS", 200));
    let m: usize = env_or("BENCH_M", 400);
    let store: String = env_or("BENCH_STORE", "sqlite".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Studio Core GPU utilisation: N={n} stand-in backends, D={} ms per prompt, M={m} jobs, store {store}, release build",
        d.as_millis()
    );
    for prefetch in [1, 0] {
        rt.block_on(run(n, d, m, prefetch, &store));
    }
}
