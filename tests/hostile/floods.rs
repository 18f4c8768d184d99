//! Request and connection floods against `studio api`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TempDir;
use crate::support::proc::{Proc, fd_count, rss_kib, submit};
use crate::{attacker_address, connect_from, exclusive, percentile, reset};

/// `studio api` on the embedded store, on a free port.
fn start_api(dir: &TempDir, extra: &[(&str, String)]) -> (Proc, SocketAddr) {
    let mut env = vec![
        ("STUDIO_DATA_DIR", dir.path().display().to_string()),
        ("PORT", "0".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let p = Proc::spawn(&["api"], &env, dir.path().join("backend.log"));
    let base = p.wait_listening();
    let addr = base.trim_start_matches("http://").parse().unwrap();
    (p, addr)
}

/// Sends `n` pipelined requests for `path_of(i)` on one connection and reads the
/// answers; returns how many had `status`.
async fn pipelined(
    addr: SocketAddr,
    n: usize,
    batch: usize,
    status: &str,
    path_of: impl Fn(usize) -> String,
) -> usize {
    let mut conn = connect_from([127, 0, 0, 1], addr).await.unwrap();
    let marker = format!("HTTP/1.1 {status}").into_bytes();
    let mut seen = 0;
    let mut buf = vec![0u8; 256 * 1024];
    // The end of the previous read, shorter than the marker: a status line split
    // between two reads is found, and none is counted twice.
    let mut carry: Vec<u8> = Vec::new();
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        let mut out = String::with_capacity(k * 90);
        for i in sent..sent + k {
            out.push_str(&format!(
                "GET {} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
                path_of(i)
            ));
        }
        conn.write_all(out.as_bytes()).await.unwrap();
        let want = seen + k;
        while seen < want {
            let got = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
                .await
                .expect("answers keep coming")
                .unwrap();
            assert!(got > 0, "the server closed a busy connection");
            carry.extend_from_slice(&buf[..got]);
            seen += carry
                .windows(marker.len())
                .filter(|w| *w == marker.as_slice())
                .count();
            let keep = carry.len().min(marker.len() - 1);
            carry.drain(..carry.len() - keep);
        }
        sent += k;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_event_requests_for_unknown_jobs_leave_memory_where_it_was() {
    let _one = exclusive().await;
    let dir = TempDir::new();
    let (p, addr) = start_api(&dir, &[("RUST_LOG", "info,studio::http=warn".into())]);
    let events = |_: usize| format!("/api/jobs/{}/events", uuid::Uuid::new_v4());
    // Warm up (allocator arenas, buffers), then measure.
    let conns = 8;
    let warm = futures_util::future::join_all(
        (0..conns).map(|_| pipelined(addr, 2_000, 200, "404", events)),
    )
    .await;
    assert_eq!(warm.iter().sum::<usize>(), conns * 2_000);
    let before = rss_kib(p.pid());
    let started = Instant::now();
    let total = 200_000;
    let done = futures_util::future::join_all(
        (0..conns).map(|_| pipelined(addr, total / conns, 250, "404", events)),
    )
    .await;
    assert_eq!(
        done.iter().sum::<usize>(),
        total,
        "every request answered 404"
    );
    // Streams of jobs already final end after their snapshot: those too.
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let id = submit(
        &base,
        serde_json::json!({"prompt": "x", "workflow": "smoke"}),
    )
    .await;
    let cancel = client
        .post(format!("{base}/api/jobs/{id}/cancel"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    for _ in 0..500 {
        let body = client
            .get(format!("{base}/api/jobs/{id}/events"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("\"cancelled\":true"), "{body}");
    }
    let after = rss_kib(p.pid());
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "200,000 event requests for unknown jobs + 500 for a final one in {secs:.1} s ({:.0}/s): RSS {} KiB before, {} KiB after",
        total as f64 / secs,
        before,
        after
    );
    assert!(
        after < before + 10 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

/// Holds one slowloris connection: a request line and headers trickled a byte at a
/// time, reconnecting whenever the server closes it, until `stop`.
async fn slowloris(from: [u8; 4], addr: SocketAddr, stop: Arc<AtomicBool>, open: Arc<AtomicUsize>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = connect_from(from, addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        open.fetch_add(1, Ordering::Relaxed);
        let _ = c
            .write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
            .await;
        let mut byte = [0u8; 1];
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                r = c.read(&mut byte) => if matches!(r, Ok(0) | Err(_)) { break },
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    if c.write_all(b"a").await.is_err() { break }
                }
            }
        }
        open.fetch_sub(1, Ordering::Relaxed);
        reset(c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_of_ten_thousand_and_two_thousand_streams_do_not_slow_other_clients() {
    let _one = exclusive().await;
    let dir = TempDir::new();
    let (p, addr) = start_api(&dir, &[("RUST_LOG", "info,studio::http=warn".into())]);
    let base = format!("http://{addr}");
    let idle_rss = rss_kib(p.pid());

    // The attacker, from an address of its own: 2,000 event streams first...
    let attacker = attacker_address();
    let mut streams = Vec::new();
    let mut refused = 0;
    for chunk in 0..20 {
        let opened = futures_util::future::join_all((0..100).map(|_| async {
            let mut c = connect_from(attacker, addr).await.unwrap();
            c.write_all(b"GET /api/events HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                .await
                .unwrap();
            let mut head = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut head))
                .await
                .expect("an answer to the stream request")
                .unwrap();
            (String::from_utf8_lossy(&head[..n]).into_owned(), c)
        }))
        .await;
        for (head, c) in opened {
            if head.starts_with("HTTP/1.1 200") {
                streams.push(c);
            } else {
                reset(c);
                assert!(
                    head.starts_with("HTTP/1.1 429") && head.contains("too-many-streams"),
                    "chunk {chunk}: {head}"
                );
                assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
                refused += 1;
            }
        }
    }
    assert_eq!(streams.len(), 32, "the per-client cap (default 32)");
    assert_eq!(refused, 2_000 - 32);

    // ...then 10,000 slowloris connections, held until the end.
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for _ in 0..10_000 {
        attackers.push(tokio::spawn(slowloris(
            attacker,
            addr,
            stop.clone(),
            open.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while open.load(Ordering::Relaxed) < 10_000 {
        assert!(
            Instant::now() < deadline,
            "only {} slowloris connections opened",
            open.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut flood_rss = 0;
    let mut flood_fds = 0;

    // Another client, from 127.0.0.1: health checks and submissions, one at a time,
    // for about twelve seconds (past the 10 s header timeout, so the attacker's
    // reconnections are part of it).
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 1]))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut health, mut submit) = (Vec::new(), Vec::new());
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        // The server's side of the flood, at its peak.
        flood_fds = flood_fds.max(fd_count(p.pid()));
        flood_rss = flood_rss.max(rss_kib(p.pid()));
        let t = Instant::now();
        let r = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        health.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let r = client
            .post(format!("{base}/api/generate"))
            .json(&serde_json::json!({"prompt": "a lighthouse", "workflow": "smoke"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        submit.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let still_open = open.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    streams.into_iter().for_each(reset);
    health.sort_by(f64::total_cmp);
    submit.sort_by(f64::total_cmp);
    eprintln!(
        "under 10,000 slowloris + 32 streams (1,968 refused) from one address: GET /health p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} requests); POST /api/generate p50 {:.2} ms p99 {:.2} ms max {:.2} ms; server RSS {} KiB idle, {} KiB flooded (peak); {} fds open (peak); {} slowloris connections open at the end",
        percentile(&health, 50.0),
        percentile(&health, 99.0),
        health.last().unwrap(),
        health.len(),
        percentile(&submit, 50.0),
        percentile(&submit, 99.0),
        submit.last().unwrap(),
        idle_rss,
        flood_rss,
        flood_fds,
        still_open,
    );
    assert!(
        flood_fds >= 10_000,
        "the flood was really held: {flood_fds} fds"
    );
    assert!(percentile(&health, 99.0) < 100.0, "GET /health p99");
    assert!(percentile(&submit, 99.0) < 100.0, "POST /api/generate p99");
}
