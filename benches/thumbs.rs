//! What a thumbnail costs: a 1024×1024 picture (a PNG with noise and gradients,
//! like a generated one) made 128, 256 and 512 pixels wide, as
//! `GET /images/…?w=` does the first time (decode, resize, encode as JPEG); later
//! requests serve the kept file. Prints the time per thumbnail (p50, max) and its
//! size next to the picture's.
//!
//! Then the bytes `output_format` saves: every PNG the real ComfyUI wrote in the
//! recordings (tests/fixtures/comfyui/files) and the 1024×1024 picture, stored as
//! JPEG (quality 90) and lossless WebP, with the time each conversion takes.
//!
//! Run: `cargo bench --bench thumbs` (`BENCH_ROUNDS`, default 20).

mod support;

use std::time::{Duration, Instant};

use support::{env_or, pct};

fn picture() -> Vec<u8> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let img = image::RgbImage::from_fn(1024, 1024, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed & 0x1f) as u8;
        image::Rgb([(x / 4) as u8 ^ n, (y / 4) as u8, ((x + y) / 8) as u8 ^ n])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn main() {
    let rounds: usize = env_or("BENCH_ROUNDS", 20);
    let png = picture();
    println!(
        "Studio Core thumbnails of a 1024×1024 PNG ({} KB), {rounds} rounds, release build",
        png.len() / 1024
    );
    for w in studio_core::api::thumbs::WIDTHS {
        let mut times: Vec<Duration> = Vec::new();
        let mut size = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let thumb = studio_core::api::thumbs::make(&png, w).unwrap();
            times.push(t.elapsed());
            size = thumb.len();
        }
        times.sort();
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        println!(
            "w={w:<4} {:>6.1} ms p50, {:>6.1} ms max, {:>6} bytes ({:.1} % of the picture)",
            ms(pct(&times, 0.5)),
            ms(times.last().copied()),
            size,
            size as f64 * 100.0 / png.len() as f64
        );
    }

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/comfyui/files");
    let mut pngs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "png").then(|| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
        })
        .collect();
    pngs.sort();
    pngs.push(("the 1024×1024 picture above".into(), png.clone()));
    println!(
        "output_format on {} pictures (the recorded outputs of a real ComfyUI, then the large one):",
        pngs.len()
    );
    use studio_core::worker::convert::Convert;
    let (mut total_png, mut total_jpeg, mut total_webp) = (0usize, 0usize, 0usize);
    for (name, bytes) in &pngs {
        let t = Instant::now();
        let jpeg = Convert::Jpeg { quality: 90 }.apply(bytes).unwrap();
        let tj = t.elapsed();
        let t = Instant::now();
        let webp = Convert::Webp.apply(bytes).unwrap();
        let tw = t.elapsed();
        total_png += bytes.len();
        total_jpeg += jpeg.len();
        total_webp += webp.len();
        println!(
            "  {name:<48} png {:>8} B  jpeg {:>8} B ({:>5.1} ms)  webp {:>8} B ({:>5.1} ms)",
            bytes.len(),
            jpeg.len(),
            tj.as_secs_f64() * 1000.0,
            webp.len(),
            tw.as_secs_f64() * 1000.0
        );
    }
    println!(
        "  in all: png {total_png} B, jpeg {total_jpeg} B ({:+.1} %), webp {total_webp} B ({:+.1} %)",
        (total_jpeg as f64 / total_png as f64 - 1.0) * 100.0,
        (total_webp as f64 / total_png as f64 - 1.0) * 100.0
    );
}
