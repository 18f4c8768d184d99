//! Pictures read within bounds: what an upload or a stored output may cost to
//! look at.
//!
//! - **Off the runtime, a few at a time.** Every decode runs on the blocking pool
//!   behind one process-wide gate ([`off_runtime`], half the cores), so a burst
//!   of large pictures queues instead of starving the requests around it.
//! - **Dimensions first.** A picture over the pixel bound is refused from its
//!   header, before anything is allocated for it.
//! - **No bombs in the margins.** A PNG's ancillary chunks (text, ICC profiles,
//!   private data) are dropped before decoding ([`strip_png`]), so a megabyte of
//!   compressed zeros in an `iCCP` chunk is never inflated; a PNG is checked row
//!   by row ([`verify`]), so a 16-bit picture costs one row of memory, not the
//!   whole frame. JPEG and WebP metadata segments are bounded
//!   ([`MAX_METADATA_BYTES`]).
//! - **Nothing after the end.** The end of a JPEG is where its entropy-coded
//!   data reaches the end-of-image marker, of a WebP where its last known chunk
//!   ends ([`end_of`]): a file that is also something else is refused.

use std::borrow::Cow;
use std::sync::LazyLock;

use tokio::sync::Semaphore;

/// The largest stored picture decoded.
pub const MAX_BYTES: u64 = 64 << 20;
/// The most pixels of a picture decoded.
pub const MAX_PIXELS: u64 = 40_000_000;
/// Metadata (JPEG `APPn`/`COM` segments, WebP `EXIF`/`XMP `/`ICCP` chunks)
/// accepted in one picture: a camera's EXIF with a thumbnail and an ICC profile
/// fit well within it; a file that hides megabytes there does not.
pub const MAX_METADATA_BYTES: usize = 512 << 10;

/// Decodes running at once in this process: half the cores (at least one), so
/// the other half keeps answering requests.
static DECODING: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Semaphore::new((cores / 2).max(1))
});

/// Why a picture was not decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a picture of a kind we read, or broken.
    #[error("{0}")]
    Unreadable(String),
    /// Over [`MAX_PIXELS`] (the size, for the message).
    #[error("too large ({0})")]
    TooLarge(String),
}

/// Runs `f` (a decode, an encode) on the blocking pool once a turn at the
/// process-wide decode gate comes.
pub async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DecodeError> {
    let _turn = DECODING
        .acquire()
        .await
        .map_err(|_| DecodeError::Unreadable("the process is stopping".into()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DecodeError::Unreadable(format!("the decoder stopped: {e}")))
}

/// Decodes `bytes` (of `format`, or guessed from them) if it has at most
/// [`MAX_PIXELS`], allocating at most `bytes_per_pixel` per pixel for it. A
/// PNG's ancillary chunks are dropped first. Blocking: call it through
/// [`off_runtime`].
pub fn decode(
    bytes: &[u8],
    format: Option<image::ImageFormat>,
    bytes_per_pixel: u64,
) -> Result<image::DynamicImage, DecodeError> {
    let unreadable = |e: image::ImageError| DecodeError::Unreadable(e.to_string());
    let bytes = if bytes.starts_with(PNG_SIGNATURE) {
        strip_png(bytes).map_err(DecodeError::Unreadable)?
    } else {
        Cow::Borrowed(bytes)
    };
    let reader = || -> Result<_, DecodeError> {
        let cursor = std::io::Cursor::new(bytes.as_ref());
        let mut r = match format {
            Some(f) => image::ImageReader::with_format(cursor, f),
            None => image::ImageReader::new(cursor)
                .with_guessed_format()
                .map_err(|e| DecodeError::Unreadable(e.to_string()))?,
        };
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(MAX_PIXELS * bytes_per_pixel);
        r.limits(limits);
        Ok(r)
    };
    let (w, h) = reader()?.into_dimensions().map_err(unreadable)?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(DecodeError::TooLarge(format!("{w}×{h} pixels")));
    }
    reader()?.decode().map_err(unreadable)
}

/// The eight bytes every PNG starts with.
pub const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The chunks a PNG keeps: what it needs to be drawn as it looks (pixels,
/// palette, transparency, colour space in its fixed-size forms). Everything
/// else (text, ICC profiles, EXIF, private chunks) is dropped.
const PNG_KEPT: [&[u8; 4]; 10] = [
    b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs",
];

/// The PNG without its ancillary chunks (borrowed when it had none), ending at
/// its `IEND`. An error when its chunk structure is broken or something follows
/// `IEND`.
pub fn strip_png(b: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    if !b.starts_with(PNG_SIGNATURE) {
        return Err("not a PNG".into());
    }
    let mut at = PNG_SIGNATURE.len();
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let mut dropped = false;
    loop {
        let len = b
            .get(at..at + 4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .ok_or("the PNG ends inside a chunk header")?;
        let ty: &[u8] = b
            .get(at + 4..at + 8)
            .ok_or("the PNG ends inside a chunk header")?;
        let end = at
            .checked_add(12)
            .and_then(|e| e.checked_add(len))
            .filter(|e| *e <= b.len())
            .ok_or("the PNG ends inside a chunk")?;
        if PNG_KEPT.iter().any(|k| k.as_slice() == ty) {
            kept.push((at, end));
        } else {
            dropped = true;
        }
        at = end;
        if ty == b"IEND" {
            break;
        }
    }
    if at < b.len() {
        return Err(format!(
            "{} bytes follow the end of the PNG (a file that is also something else is refused)",
            b.len() - at
        ));
    }
    if !dropped {
        return Ok(Cow::Borrowed(b));
    }
    let mut out = Vec::with_capacity(kept.iter().map(|(s, e)| e - s).sum::<usize>() + 8);
    out.extend_from_slice(PNG_SIGNATURE);
    for (s, e) in kept {
        out.extend_from_slice(&b[s..e]);
    }
    Ok(Cow::Owned(out))
}

/// Checks that a whole picture decodes, at the cost of one row for a PNG (the
/// PNG must have been through [`strip_png`]) and of the frame for JPEG and WebP,
/// with `max_alloc` bytes at most for the decoder. Blocking: call it through
/// [`off_runtime`].
pub fn verify(bytes: &[u8], format: image::ImageFormat, max_alloc: u64) -> Result<(), String> {
    if format == image::ImageFormat::Png {
        let limits = png::Limits {
            bytes: usize::try_from(max_alloc).unwrap_or(usize::MAX),
        };
        let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
        decoder.set_ignore_text_chunk(true);
        decoder.set_ignore_iccp_chunk(true);
        let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
        while reader.next_row().map_err(|e| e.to_string())?.is_some() {}
        return reader.finish().map_err(|e| e.to_string());
    }
    let mut r = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_alloc);
    r.limits(limits);
    r.decode().map(drop).map_err(|e| e.to_string())
}

/// Where a JPEG's or WebP's own bytes end, walking its structure the way a
/// decoder does; `Err` with why when the structure is broken or its metadata
/// is over [`MAX_METADATA_BYTES`].
pub fn end_of(format: image::ImageFormat, b: &[u8]) -> Result<usize, String> {
    match format {
        image::ImageFormat::Jpeg => jpeg_end(b),
        image::ImageFormat::WebP => webp_end(b),
        image::ImageFormat::Png => strip_png(b).map(|_| b.len()),
        f => Err(format!("no end walker for {f:?}")),
    }
}

/// A JPEG: segments up to each scan, the entropy-coded data of each scan (where
/// a `0xFF` is followed by `0x00` or a restart marker), and the end-of-image
/// marker.
fn jpeg_end(b: &[u8]) -> Result<usize, String> {
    let broken = || "the JPEG's structure is broken".to_string();
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err(broken());
    }
    let mut i = 2usize;
    let mut metadata = 0usize;
    loop {
        if *b.get(i).ok_or_else(broken)? != 0xFF {
            return Err(broken());
        }
        while *b.get(i).ok_or_else(broken)? == 0xFF {
            i += 1;
        }
        let marker = b[i];
        i += 1;
        match marker {
            0xD9 => return Ok(i),
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = b
            .get(i..i + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
            .ok_or_else(broken)?;
        if len < 2 {
            return Err(broken());
        }
        // APP1–APP13, APP15 and COM are metadata; APP0 (JFIF) and APP14 (Adobe:
        // the colour transform) say how to draw the picture.
        if matches!(marker, 0xE1..=0xED | 0xEF | 0xFE) {
            metadata += len;
            if metadata > MAX_METADATA_BYTES {
                return Err(format!(
                    "the JPEG carries more than {MAX_METADATA_BYTES} bytes of metadata"
                ));
            }
        }
        i = i
            .checked_add(len)
            .filter(|e| *e <= b.len())
            .ok_or_else(broken)?;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is not a stuffed
            // zero or a restart.
            loop {
                let c = *b.get(i).ok_or_else(broken)?;
                if c != 0xFF {
                    i += 1;
                    continue;
                }
                let next = *b.get(i + 1).ok_or_else(broken)?;
                if next == 0x00 || (0xD0..=0xD7).contains(&next) {
                    i += 2;
                } else if next == 0xFF {
                    i += 1;
                } else {
                    break;
                }
            }
        }
    }
}

/// A WebP: the RIFF header and its chunks, each of a kind WebP defines, to the
/// size the header declares.
fn webp_end(b: &[u8]) -> Result<usize, String> {
    let broken = || "the WebP's structure is broken".to_string();
    if b.len() < 12 || &b[..4] != b"RIFF" || &b[8..12] != b"WEBP" {
        return Err(broken());
    }
    let size = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let end = size
        .checked_add(8)
        .filter(|e| *e <= b.len())
        .ok_or_else(broken)?;
    let mut at = 12usize;
    let mut metadata = 0usize;
    while at < end {
        let fourcc = b.get(at..at + 4).ok_or_else(broken)?;
        let len = b
            .get(at + 4..at + 8)
            .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .ok_or_else(broken)?;
        match fourcc {
            b"VP8 " | b"VP8L" | b"VP8X" | b"ALPH" | b"ANIM" | b"ANMF" => {}
            b"EXIF" | b"XMP " | b"ICCP" => {
                metadata += len;
                if metadata > MAX_METADATA_BYTES {
                    return Err(format!(
                        "the WebP carries more than {MAX_METADATA_BYTES} bytes of metadata"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "the WebP holds a chunk WebP does not define ({:?})",
                    String::from_utf8_lossy(other)
                ));
            }
        }
        at = at
            .checked_add(8)
            .and_then(|a| a.checked_add(len + len % 2))
            .ok_or_else(broken)?;
    }
    if at != end {
        return Err(broken());
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// `png` with `extra` chunks inserted after IHDR.
    fn with_chunks(png: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
        let ihdr_end = 8 + 12 + 13;
        let mut out = png[..ihdr_end].to_vec();
        for c in extra {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&png[ihdr_end..]);
        out
    }

    #[test]
    fn a_clean_png_is_kept_as_it_is_and_ancillary_chunks_are_dropped() {
        let p = png(4, 4);
        assert!(matches!(strip_png(&p).unwrap(), Cow::Borrowed(_)));
        let dirty = with_chunks(
            &p,
            &[
                chunk(b"iCCP", &[0u8; 1000]),
                chunk(b"tEXt", b"k\0v"),
                chunk(b"prVt", &[7u8; 5000]),
            ],
        );
        let clean = strip_png(&dirty).unwrap();
        assert_eq!(clean.as_ref(), p.as_slice());
        verify(&clean, image::ImageFormat::Png, 1 << 20).unwrap();
    }

    #[test]
    fn data_after_a_png_or_a_broken_chunk_is_refused() {
        let mut p = png(2, 2);
        p.extend_from_slice(b"PK\x03\x04 a zip");
        assert!(strip_png(&p).unwrap_err().contains("follow the end"));
        let p = png(2, 2);
        assert!(strip_png(&p[..p.len() - 3]).is_err());
    }

    #[test]
    fn a_png_is_verified_row_by_row_within_a_small_allocation() {
        // 2048×2048 RGB at 16 bits: 24 MiB decoded whole, a row is 12 KiB.
        let img = image::ImageBuffer::<image::Rgb<u16>, _>::new(2048, 2048);
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb16(img)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        let bytes = out.into_inner();
        verify(&bytes, image::ImageFormat::Png, 1 << 20).unwrap();
        let mut broken = bytes.clone();
        let mid = broken.len() / 2;
        broken[mid] ^= 0xFF;
        assert!(verify(&broken, image::ImageFormat::Png, 1 << 20).is_err());
    }

    fn jpeg() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 90]))
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn a_jpeg_ends_at_its_end_of_image_marker_not_at_the_files_last_bytes() {
        let j = jpeg();
        assert_eq!(jpeg_end(&j).unwrap(), j.len());
        // A second JPEG appended: the file still ends in FF D9.
        let mut polyglot = j.clone();
        polyglot.extend_from_slice(&j);
        assert_eq!(jpeg_end(&polyglot).unwrap(), j.len());
        assert!(jpeg_end(&j[..j.len() - 10]).is_err());
    }

    #[test]
    fn jpeg_metadata_is_bounded() {
        let j = jpeg();
        let mut big = j[..2].to_vec();
        for _ in 0..10 {
            big.extend_from_slice(&[0xFF, 0xE1, 0xFF, 0xFF]);
            big.extend_from_slice(&[0u8; 0xFFFD]);
        }
        big.extend_from_slice(&j[2..]);
        assert!(jpeg_end(&big).unwrap_err().contains("metadata"));
    }

    fn webp() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbaImage::from_pixel(8, 8, image::Rgba([9, 8, 7, 255]))
            .write_to(&mut out, image::ImageFormat::WebP)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn a_webp_holds_only_webp_chunks_to_its_declared_size() {
        let w = webp();
        assert_eq!(webp_end(&w).unwrap(), w.len());
        // An unknown chunk inside the RIFF, the size raised to cover it.
        let mut inner = w.clone();
        inner.extend_from_slice(b"ZIP \x04\0\0\0abcd");
        let size = (inner.len() - 8) as u32;
        inner[4..8].copy_from_slice(&size.to_le_bytes());
        assert!(webp_end(&inner).unwrap_err().contains("does not define"));
        // Bytes after the RIFF end.
        let mut after = w.clone();
        after.extend_from_slice(b"trailer");
        assert_eq!(webp_end(&after).unwrap(), w.len());
    }
}
