//! What a thumbnail costs: a 1024×1024 picture (a PNG with noise and gradients,
//! like a generated one) made 128, 256 and 512 pixels wide, as
//! `GET /images/…?w=` does the first time (decode, resize, encode as JPEG); later
//! requests serve the kept file. Prints the time per thumbnail (p50, max) and its
//! size next to the picture's.
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
}
