//! Pictures and uploads made to hurt (security review 3, findings 1–3): a 16-bit
//! picture of zeros that decodes to 128 MiB, a PNG whose `iCCP` chunk inflates to
//! 256 MiB, upload bodies held open by many connections, and one key uploading
//! until the disk is full. The API must keep answering, stay within its memory,
//! and hold no more on disk than the key's quota.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::support::TempDir;
use crate::support::proc::{Proc, peak_rss_kib, rss_kib};
use crate::{exclusive, percentile};

/// `studio api` on the embedded store, on a free port.
fn start_api(dir: &TempDir, extra: &[(&str, String)]) -> (Proc, String) {
    let mut env = vec![
        ("STUDIO_DATA_DIR", dir.path().display().to_string()),
        ("PORT", "0".to_owned()),
        ("RUST_LOG", "info,studio::http=warn".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let p = Proc::spawn(&["api"], &env, dir.path().join("backend.log"));
    let base = p.wait_listening();
    (p, base)
}

/// A PNG of `w`×`h` RGB pixels at 16 bits, all zero: ~130 KB that decode to
/// 6 bytes a pixel.
fn sixteen_bit_zeros(w: u32, h: u32) -> Vec<u8> {
    use image::ImageEncoder;
    let raw = vec![0u8; w as usize * h as usize * 6];
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(&raw, w, h, image::ExtendedColorType::Rgb16)
    .unwrap();
    out
}

fn chunk(ty: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(ty);
    c.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(ty);
    crc.update(data);
    c.extend_from_slice(&crc.finalize().to_be_bytes());
    c
}

/// An 8×8 PNG whose `iCCP` chunk holds 256 MiB of zeros, compressed.
fn iccp_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        z.write_all(&zeros).unwrap();
    }
    let mut profile = b"bomb\0\0".to_vec();
    profile.extend_from_slice(&z.finish().unwrap());
    let small = crate::support::png(8, 8, [1, 2, 3]);
    let ihdr_end = 8 + 12 + 13;
    let mut out = small[..ihdr_end].to_vec();
    out.extend_from_slice(&chunk(b"iCCP", &profile));
    out.extend_from_slice(&small[ihdr_end..]);
    out
}

/// Polls `/health` every 20 ms until `stop`; the latencies, in ms.
async fn health_latencies(base: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    let client = reqwest::Client::new();
    let mut ms = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let ok = client
            .get(format!("{base}/health"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        assert!(ok, "/health answers during the flood");
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ms.sort_by(f64::total_cmp);
    ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picture_bombs_neither_stall_nor_swell_the_api() {
    let _one = exclusive().await;
    let dir = TempDir::new();
    let (p, base) = start_api(
        &dir,
        &[
            ("STUDIO_MAX_UPLOADS_PER_CLIENT", "64".into()),
            ("STUDIO_UPLOAD_QUOTA_COUNT", "10000".into()),
        ],
    );
    let wide = Arc::new(sixteen_bit_zeros(4096, 4096));
    let iccp = Arc::new(iccp_bomb());
    eprintln!(
        "bombs: a 16-bit 4096×4096 PNG of {} KB (128 MiB decoded), an 8×8 PNG of {} KB with 256 MiB in iCCP",
        wide.len() / 1024,
        iccp.len() / 1024
    );
    let before = rss_kib(p.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(health_latencies(base.clone(), stop.clone()));
    let started = Instant::now();
    let client = reqwest::Client::new();
    let uploads = (0..36).map(|i| {
        let body = if i % 9 == 8 {
            iccp.clone()
        } else {
            wide.clone()
        };
        let (client, base) = (client.clone(), base.clone());
        async move {
            let res = client
                .post(format!("{base}/api/uploads"))
                .header("content-type", "image/png")
                .body((*body).clone())
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let v: serde_json::Value = res.json().await.unwrap_or_default();
            (status, v)
        }
    });
    let answers = futures_util::future::join_all(uploads).await;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let ms = health.await.unwrap();
    let peak = peak_rss_kib(p.pid());
    let (p50, p99) = (percentile(&ms, 50.0), percentile(&ms, 99.0));
    eprintln!(
        "32 16-bit uploads + 4 iCCP bombs at once in {secs:.1} s: peak RSS {} MiB (from {} MiB); /health p50 {p50:.1} ms, p99 {p99:.1} ms over {} probes",
        peak / 1024,
        before / 1024,
        ms.len()
    );
    for (status, v) in &answers {
        assert_eq!(*status, 201, "each picture is a valid one: {v}");
    }
    // The iCCP bomb is stored without its ancillary chunks.
    let stripped = answers[8].1["size"].as_u64().unwrap();
    assert!(
        stripped < 1024,
        "the 256 MiB profile was dropped: {stripped} bytes kept"
    );
    assert!(
        peak < 300 * 1024,
        "peak RSS {} MiB under the bombs (bound: 300 MiB)",
        peak / 1024
    );
    assert!(
        p50 < 250.0,
        "/health stays quick while pictures decode (p50 {p50:.1} ms)"
    );
}

/// Sends all but the last byte of a `len`-byte upload, then holds.
async fn hold_upload(addr: SocketAddr, len: usize) -> Option<tokio::net::TcpStream> {
    let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /api/uploads HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: image/png\r\ncontent-length: {len}\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.ok()?;
    let block = vec![0u8; 1 << 20];
    let mut sent = 0;
    while sent < len - 1 {
        let n = block.len().min(len - 1 - sent);
        if c.write_all(&block[..n]).await.is_err() {
            // Refused before the body was read: the server closed.
            return None;
        }
        sent += n;
    }
    Some(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_bodies_held_open_stay_within_the_buffer_budget() {
    let _one = exclusive().await;
    let dir = TempDir::new();
    let (p, base) = start_api(
        &dir,
        &[
            // Every connection comes from 127.0.0.1: let the budget, not the
            // per-client cap, be what holds.
            ("STUDIO_MAX_UPLOADS_PER_CLIENT", "100".into()),
            ("STUDIO_UPLOAD_BUFFER", "64MiB".into()),
        ],
    );
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let before = rss_kib(p.pid());
    let held = futures_util::future::join_all((0..48).map(|_| hold_upload(addr, 20 << 20))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_kib(p.pid());
    let peak = peak_rss_kib(p.pid());
    let open = held.iter().filter(|c| c.is_some()).count();
    drop(held);
    eprintln!(
        "48 connections each holding 20 MiB minus a byte: RSS {} MiB before, {} MiB while held (peak {} MiB); {open} got their bodies read in full",
        before / 1024,
        during / 1024,
        peak / 1024
    );
    assert!(
        peak < 300 * 1024,
        "peak RSS {} MiB (bound: 300 MiB; unbounded it was about 1 GiB)",
        peak / 1024
    );
    // The server still takes a real upload once the holders are gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let res = reqwest::Client::new()
        .post(format!("{base}/api/uploads"))
        .header("content-type", "image/png")
        .body(crate::support::png(4, 4, [9, 9, 9]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

/// Files under a directory and their total size.
fn disk_use(dir: &std::path::Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                let (f, b) = disk_use(&e.path());
                files += f;
                bytes += b;
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_uploading_without_end_holds_its_quota_and_no_more() {
    let _one = exclusive().await;
    let dir = TempDir::new();
    let (_p, base) = start_api(
        &dir,
        &[
            ("STUDIO_UPLOAD_QUOTA", "10MiB".into()),
            ("STUDIO_UPLOAD_QUOTA_COUNT", "1000".into()),
        ],
    );
    // Distinct pictures, each padded with a 1 MiB private chunk (dropped).
    let client = reqwest::Client::new();
    let mut stored = 0;
    let mut refused = 0;
    let started = Instant::now();
    for i in 0..200u32 {
        let img = image::RgbImage::from_fn(512, 512, |x, y| {
            image::Rgb([(x ^ i) as u8, (y + i) as u8, (x * y + i) as u8])
        });
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        let mut png = png.into_inner();
        let iend = png.len() - 12;
        let pad = chunk(b"prVt", &vec![7u8; 1 << 20]);
        png.splice(iend..iend, pad);
        let res = client
            .post(format!("{base}/api/uploads"))
            .header("content-type", "image/png")
            .body(png)
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            201 => stored += 1,
            413 => {
                let v: serde_json::Value = res.json().await.unwrap();
                assert_eq!(v["code"], "upload-quota", "{v}");
                refused += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    let (files, bytes) = disk_use(&dir.path().join("images"));
    eprintln!(
        "200 uploads of ~1.8 MB from one key with a 10 MiB quota in {:.1} s: {stored} stored, {refused} refused; {files} files, {} KiB on disk",
        started.elapsed().as_secs_f64(),
        bytes / 1024
    );
    assert!(refused > 0, "the quota refused some");
    assert!(
        bytes <= 10 << 20,
        "the disk holds no more than the quota: {bytes} bytes"
    );
}
