//! Fair share end to end, with the ComfyUI stand-in: the figures the issue sets.
//!
//! - User A queues 1,000 jobs, then user B submits one: on 4 backends of 200 ms,
//!   B's job starts within 2 job durations (the one running, and the one each
//!   dispatcher keeps ready behind it).
//! - Keys of weight 1 and 3, both with work waiting all along: the GPU time splits
//!   25/75 ± 5 %.
//!
//! Both on each store. The start and end of every run are the stand-in's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use studio_core::auth::{AuthMode, KeyLimits, Role};
use studio_core::config::Role as ServerRole;

use crate::support::standin::{Knobs, StandIn};
use crate::support::{Backing, TestApp};

fn standins(n: usize, duration: Duration) -> Vec<StandIn> {
    (0..n)
        .map(|_| {
            StandIn::start_with(Knobs {
                duration,
                previews: false,
                ..Knobs::default()
            })
        })
        .collect()
}

async fn app_on(kind: Backing, backends: &[StandIn]) -> TestApp {
    let urls: Vec<String> = backends.iter().map(|s| s.url()).collect();
    TestApp::spawn(kind, ServerRole::Serve, move |a| {
        a.auth = AuthMode::Keys;
        a.comfyui = urls;
        a.max_queued = 10_000;
    })
    .await
}

async fn user(app: &TestApp, name: &str, weight: u32) -> String {
    let limits = KeyLimits {
        weight,
        ..KeyLimits::default()
    };
    app.new_key(name, Role::User, limits).await
}

/// Who a run is for: the smoke workflow's graph carries only the seed (as node 1's
/// colour, its low 24 bits), so each user's seeds start at `user << 20`.
const A: u64 = 0;
const B: u64 = 1;
const LIGHT: u64 = 2;
const HEAVY: u64 = 3;

/// Submits `n` smoke jobs for `key`, seeds `(user << 20) + i`, 16 at a time.
async fn flood(app: &Arc<TestApp>, key: &str, user: u64, n: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (app, key, next) = (app.clone(), key.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let res = app
                    .http
                    .post(app.url("/api/generate"))
                    .bearer_auth(&key)
                    .json(&json!({"prompt": "fair", "workflow": "smoke", "seed": (user << 20) + i as u64}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The user (and job number) of a run on a stand-in, from its seed.
fn user_of(s: &StandIn, prompt_id: &str) -> Option<(u64, u64)> {
    let graph = s.graph_of(prompt_id)?;
    let colour = graph["1"]["inputs"]["color"].as_u64()?;
    Some((colour >> 20, colour & 0xF_FFFF))
}

async fn a_late_user_starts_within_two_job_durations(kind: Backing) {
    let duration = Duration::from_millis(200);
    let backends = standins(4, duration);
    let app = Arc::new(app_on(kind, &backends).await);
    let a = user(&app, "a", 1).await;
    let b = user(&app, "b", 1).await;
    flood(&app, &a, A, 1000).await;
    // Let the farm settle into A's backlog: every backend busy.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let submitted = Instant::now();
    flood(&app, &b, B, 1).await;
    let started = loop {
        let run = backends.iter().find_map(|s| {
            s.runs()
                .into_iter()
                .find(|r| user_of(s, &r.prompt_id) == Some((B, 0)))
        });
        if let Some(r) = run {
            break r.started;
        }
        assert!(
            submitted.elapsed() < Duration::from_secs(10),
            "B's job never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let wait = started.saturating_duration_since(submitted);
    let a_done: usize = backends.iter().map(|s| s.runs().len()).sum::<usize>() - 1;
    println!(
        "fairness[{kind:?}]: B's job started {:.0} ms after its submission, with {} of A's 1,000 run; bar {} ms",
        wait.as_secs_f64() * 1000.0,
        a_done,
        2 * duration.as_millis()
    );
    assert!(
        wait <= 2 * duration,
        "B waited {wait:?}, over two job durations"
    );
    assert!(a_done < 100, "A's backlog was still there ({a_done} done)");
}

async fn weights_one_and_three_split_gpu_time_25_75(kind: Backing) {
    let duration = Duration::from_millis(100);
    let backends = standins(4, duration);
    let app = Arc::new(app_on(kind, &backends).await);
    let light = user(&app, "light", 1).await;
    let heavy = user(&app, "heavy", 3).await;
    // More than the window can run for either, so both wait all along.
    let (l, h) = (app.clone(), app.clone());
    let (lk, hk) = (light.clone(), heavy.clone());
    tokio::join!(
        async move { flood(&l, &lk, LIGHT, 300).await },
        async move { flood(&h, &hk, HEAVY, 400).await },
    );
    let from = Instant::now() + Duration::from_secs(1);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let to = Instant::now();
    // GPU time inside [from, to], per owner.
    let (mut light_ms, mut heavy_ms) = (0.0, 0.0);
    for s in &backends {
        for r in s.runs() {
            let start = r.started.max(from);
            let end = r.ended.min(to);
            if end <= start {
                continue;
            }
            let ms = (end - start).as_secs_f64() * 1000.0;
            match user_of(s, &r.prompt_id) {
                Some((LIGHT, _)) => light_ms += ms,
                Some((HEAVY, _)) => heavy_ms += ms,
                _ => {}
            }
        }
    }
    let share = heavy_ms / (light_ms + heavy_ms);
    println!(
        "fairness[{kind:?}]: weights 1 and 3 over 6 s on 4 backends of 100 ms: GPU time {:.0} ms / {:.0} ms, heavy share {:.1} % (bar 75 ± 5 %)",
        light_ms,
        heavy_ms,
        share * 100.0
    );
    assert!(light_ms + heavy_ms > 10_000.0, "the backends were busy");
    assert!((0.70..=0.80).contains(&share), "share {share}");
}

macro_rules! on_both_stores {
    ($($name:ident),*) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let _one = crate::exclusive().await;
                    super::$name(crate::support::Backing::Sqlite).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let _one = crate::exclusive().await;
                    super::$name(crate::support::Backing::Redis).await
                }
            )*
        }
    };
}

on_both_stores!(
    a_late_user_starts_within_two_job_durations,
    weights_one_and_three_split_gpu_time_25_75
);
