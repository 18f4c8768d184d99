//! `GET /api/jobs?status=…` on Redis costs what it returns, however many jobs wait.

use std::sync::Arc;
use std::time::Instant;

use redis::Commands;
use serde_json::Map;
use studio_core::config::Role;
use studio_core::job::NewJob;
use studio_core::store::Completion;

use crate::exclusive;
use crate::support::proc::PrivateRedis;
use crate::support::{Backing, RedisPrefix, TempDir, TestApp};

/// Bytes Redis has sent to all its clients so far (`INFO stats`).
fn net_output(c: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("stats").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Bytes Redis sends while `f` runs, minus our own INFO replies.
async fn bytes_sent_during<F: std::future::Future<Output = usize>>(
    c: &mut redis::Connection,
    f: F,
) -> (i64, usize) {
    let v0 = net_output(c);
    let v1 = net_output(c);
    let info_reply = v1 - v0;
    let out = f.await;
    let v2 = net_output(c);
    (v2 - v1 - info_reply, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_listing_reads_at_most_four_times_what_it_answers() {
    let _one = exclusive().await;
    let redis = PrivateRedis::start();
    let prefix = RedisPrefix {
        url: redis.url(),
        prefix: String::new(),
    };
    let app = TestApp::spawn_with(
        Backing::Redis,
        Role::Api,
        Some(prefix),
        Arc::new(TempDir::new()),
        |_| {},
    )
    .await;
    let store = app.store.clone();
    // Five jobs finished long ago...
    let worker = studio_core::store::WorkerId::generate();
    store.heartbeat(&worker).await.unwrap();
    for i in 0..5 {
        store
            .enqueue(&NewJob::new(
                format!("old {i}"),
                i,
                "smoke".into(),
                Map::new(),
            ))
            .await
            .unwrap();
        let claim = store
            .claim(&worker, std::time::Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        store
            .complete(
                &claim.lease,
                Completion::Finished {
                    image_url: "/images/x/a.png".into(),
                    outputs: vec![],
                },
            )
            .await
            .unwrap();
    }
    // ...and 9,600 queued since, each with an 8 KB prompt.
    let big = "p".repeat(8 * 1024);
    let started = Instant::now();
    for chunk in 0..96 {
        let jobs = (0..100).map(|i| {
            let store = store.clone();
            let prompt = format!("{chunk}-{i} {big}");
            async move {
                store
                    .enqueue(&NewJob::new(prompt, 1, "smoke".into(), Map::new()))
                    .await
                    .unwrap()
            }
        });
        futures_util::future::join_all(jobs).await;
    }
    eprintln!(
        "queued 9,600 jobs of 8 KB in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let queued: i64 = c.llen("job_queue").unwrap();
    assert_eq!(queued, 9_600);

    for (query, expect) in [
        ("status=finished&limit=5", 5),
        ("status=failed", 0),
        ("status=processing&limit=100", 0),
        ("status=queued&limit=3", 3),
        ("limit=2", 2),
    ] {
        let url = app.url(&format!("/api/jobs?{query}"));
        let (read, answered) = bytes_sent_during(&mut c, async {
            let res = app.http.get(&url).send().await.unwrap();
            assert_eq!(res.status(), 200);
            let body = res.bytes().await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["jobs"].as_array().unwrap().len(), expect, "{query}: {v}");
            body.len()
        })
        .await;
        eprintln!(
            "GET /api/jobs?{query}: {answered} bytes answered, {read} bytes read from Redis ({:.2}×)",
            read as f64 / answered as f64
        );
        assert!(
            read <= 4 * answered as i64,
            "{query}: read {read} bytes from Redis to answer {answered}"
        );
    }
    app.stop().await;
}
