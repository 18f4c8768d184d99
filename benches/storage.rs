//! Output throughput: storing generated outputs (64 KiB chunks, as a download from
//! ComfyUI arrives) on the local disk and in S3 (s3s-fs on loopback, which checks
//! signatures and writes to the same disk), for 1.5 MB pictures and 100 MB videos.
//! Prints MB/s and how far the process's resident memory rose while storing (the
//! bound: one 5 MiB buffer, or 8 MiB parts with two in flight). A benchmark: it
//! prints, it does not judge.
//!
//! Run: `cargo bench --bench storage` (needs `s3s-fs` on the PATH or in Cargo's bin
//! directory; `scripts/test` installs it). `BENCH_SMALL` (40) pictures and
//! `BENCH_LARGE` (3) videos.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use studio_core::job::JobId;
use studio_core::storage::{ByteStream, FsImageStore, ImageStore, S3ImageStore, S3Settings};
use support::{env_or, free_port};

fn generated(size: u64) -> ByteStream {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![0x5au8; CHUNK as usize]);
    let n = size.div_ceil(CHUNK);
    Box::pin(futures_util::stream::iter((0..n).map(move |i| {
        let len = CHUNK.min(size - i * CHUNK) as usize;
        Ok(chunk.slice(..len))
    })))
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn run(label: &str, store: &dyn ImageStore, size: u64, count: usize) {
    let base = rss_kib();
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let job = JobId::random();
    let t = Instant::now();
    for i in 0..count {
        store
            .put_stream(&job, &format!("out_{i:05}.bin"), generated(size), u64::MAX)
            .await
            .unwrap();
    }
    let elapsed = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let mb = (size * count as u64) as f64 / 1e6;
    println!(
        "{label:<8} {count:>3} × {:>6.1} MB  {:>7.1} MB/s  {:>6.1} ms each  RSS +{:.1} MiB while storing",
        size as f64 / 1e6,
        mb / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / count as f64,
        (peak.load(Ordering::Relaxed).saturating_sub(base)) as f64 / 1024.0
    );
}

fn main() {
    let small: usize = env_or("BENCH_SMALL", 40);
    let large: usize = env_or("BENCH_LARGE", 3);
    let dir =
        std::env::temp_dir().join(format!("studio-storage-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("s3/bench")).unwrap();
    let bin = std::env::var("STUDIO_S3S_FS").unwrap_or_else(|_| {
        let home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
        format!("{home}/bin/s3s-fs")
    });
    let port = free_port();
    let mut s3s = std::process::Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", "bench", "--secret-key", "bench-secret"])
        .arg(dir.join("s3"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("s3s-fs runs (scripts/test installs it)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("Studio Core output storage, release build, one machine (disk and s3s-fs share it)");
    rt.block_on(async {
        let fs = FsImageStore::new(dir.join("fs"));
        let s3 = S3ImageStore::new(&S3Settings {
            bucket: "bench".into(),
            prefix: "outputs".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: Some("us-east-1".into()),
            access_key_id: Some("bench".into()),
            secret_access_key: Some("bench-secret".into()),
        })
        .unwrap();
        s3.check().await.unwrap();
        for (size, count) in [(1_500_000u64, small), (100_000_000u64, large)] {
            run("disk", &fs, size, count).await;
            run("s3", &s3, size, count).await;
        }
    });
    let _ = s3s.kill();
    let _ = s3s.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
