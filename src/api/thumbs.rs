//! Thumbnails of stored pictures (`GET /images/{job}/{file}?w=256`): made once per
//! size from the stored picture, kept beside it in the same storage, and served
//! like any output after that. Only a few widths exist, so thumbnails cannot be
//! used to fill the disk (at most one per width per picture, each smaller than the
//! picture), and making them is bounded (at the process's decode gate, pictures up
//! to 64 MiB and 40 megapixels).

use axum::http::StatusCode;

use super::AppState;
use super::error::ApiError;
use crate::job::JobId;

use crate::picture::{DecodeError, MAX_BYTES};

pub use crate::storage::THUMB_WIDTHS as WIDTHS;

/// A width the query asked for, checked.
pub fn width(w: u32) -> Result<u32, ApiError> {
    if WIDTHS.contains(&w) {
        Ok(w)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            format!("w: thumbnails are {WIDTHS:?} pixels wide, not {w}"),
        )
        .with_field("w"))
    }
}

pub use crate::storage::thumb_name as stored_name;

/// The thumbnail's stored name, made and stored first if it was not there. `None`
/// when there is no such picture.
pub async fn ensure(
    state: &AppState,
    job: &JobId,
    file: &str,
    w: u32,
) -> Result<Option<String>, ApiError> {
    let name = stored_name(file, w);
    if state
        .images
        .open(job, &name)
        .await
        .map_err(storage)?
        .is_some()
    {
        return Ok(Some(name));
    }
    let Some(blob) = state.images.open(job, file).await.map_err(storage)? else {
        return Ok(None);
    };
    if !matches!(blob.content_type, "image/png" | "image/jpeg" | "image/webp") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            format!(
                "w: only PNG, JPEG and WebP pictures have thumbnails, not {}",
                blob.content_type
            ),
        )
        .with_field("w"));
    }
    if blob.total > MAX_BYTES {
        return Err(too_large(format!("{} bytes", blob.total)));
    }
    let bytes = blob.read_all(MAX_BYTES).await.map_err(storage)?;
    // Made off the runtime, at the process's decode gate (shared with uploads).
    let made = crate::picture::off_runtime(move || make(&bytes, w))
        .await
        .map_err(storage)??;
    state.images.put(job, &name, &made).await.map_err(storage)?;
    Ok(Some(name))
}

/// Decodes a picture (within the bounds) and encodes it `w` pixels wide (never
/// wider than it is) as a JPEG.
pub fn make(bytes: &[u8], w: u32) -> Result<Vec<u8>, ApiError> {
    let picture = crate::picture::decode(bytes, None, 4).map_err(|e| match e {
        DecodeError::Unreadable(why) => unreadable(why),
        DecodeError::TooLarge(what) => too_large(what),
    })?;
    let (pw, ph) = (picture.width(), picture.height());
    let tw = w.min(pw).max(1);
    let th = ((ph as u64 * tw as u64) / pw.max(1) as u64).max(1) as u32;
    let small = picture.resize_exact(tw, th, image::imageops::FilterType::Triangle);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 82)
        .encode_image(&small.to_rgb8())
        .map_err(|e| unreadable(e.to_string()))?;
    Ok(out)
}

fn storage(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "cannot make a thumbnail");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage-error",
        "the thumbnail cannot be made",
    )
}

fn unreadable(why: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unreadable-picture",
        format!("the stored picture cannot be read for a thumbnail: {why}"),
    )
}

fn too_large(what: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "picture-too-large",
        format!("no thumbnail of a picture this large ({what})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn thumbnails_keep_the_aspect_and_never_grow() {
        let t = make(&png(1024, 768), 256).unwrap();
        let d = image::load_from_memory(&t).unwrap();
        assert_eq!((d.width(), d.height()), (256, 192));
        assert_eq!(&t[..3], &[0xff, 0xd8, 0xff], "a JPEG");
        let t = make(&png(100, 50), 512).unwrap();
        let d = image::load_from_memory(&t).unwrap();
        assert_eq!(
            (d.width(), d.height()),
            (100, 50),
            "never wider than the picture"
        );
    }

    #[test]
    fn thumbnails_are_stored_as_jpegs_beside_the_picture() {
        assert_eq!(stored_name("a.png", 256), "thumb-256-a.png.jpg");
        let long = stored_name(&format!("{}.webp", "x".repeat(400)), 128);
        assert!(
            long.ends_with(".jpg") && long.len() <= crate::storage::MAX_NAME_LEN,
            "{long}"
        );
        assert_eq!(crate::storage::content_type(&long), "image/jpeg");
    }

    #[test]
    fn only_the_listed_widths() {
        assert!(width(256).is_ok());
        for w in [0, 1, 255, 257, 4096, u32::MAX] {
            assert!(width(w).is_err(), "{w}");
        }
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(make(b"\x89PNG\r\n\x1a\nnot really", 128).is_err());
        assert!(make(&[], 128).is_err());
    }
}
