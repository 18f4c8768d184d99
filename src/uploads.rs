//! Input images: what an upload must be (a whole PNG, JPEG or WebP, within the
//! size and pixel caps, nothing hidden after its end), and the record the store
//! keeps of it. The bytes live in the output storage, content-addressed by their
//! SHA-256, under [`UPLOADS_DIR`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::job::JobId;
use crate::picture;

/// The storage "job" whose files are the uploads (a name no job of ours has: job
/// ids we make are UUIDs).
pub const UPLOADS_DIR: &str = "_uploads";

/// The storage directory of uploads.
pub fn uploads_dir() -> JobId {
    JobId::parse(UPLOADS_DIR).expect("a valid job id")
}

/// Default cap on one upload, in bytes.
pub const DEFAULT_MAX_BYTES: u64 = 20 << 20;
/// Default cap on one upload's pixels (width × height): 4096 × 4096.
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 24;

/// An accepted image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadRecord {
    /// The SHA-256 of the bytes, in hex: what a job names in an image parameter.
    pub upload_id: String,
    pub width: u32,
    pub height: u32,
    /// `image/png`, `image/jpeg` or `image/webp`, from the bytes.
    pub content_type: String,
    pub size: u64,
    /// The key that uploaded it ("" without auth).
    #[serde(default, skip_serializing)]
    pub owner: String,
    pub created_at: String,
}

/// The file name an upload gets on a ComfyUI backend (content-named: the same
/// name always means the same bytes).
pub fn comfy_name(upload_id: &str, content_type: &str) -> String {
    let short = upload_id.get(..32).unwrap_or(upload_id);
    format!("studio-{short}.{}", ext_of(content_type))
}

fn ext_of(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        _ => "png",
    }
}

/// Why an upload was refused: an HTTP status, a stable code, and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> UploadError {
    UploadError {
        status,
        code,
        message: message.into(),
    }
}

/// Whether `s` is an upload id (64 lowercase hex digits).
pub fn is_upload_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The format the bytes start with.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// What an upload's header says: its type and dimensions, checked against the
/// declared type and the caps. Cheap (no decoding): run before [`check`], so most
/// refusals cost nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: &'static str,
    pub format: image::ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// Checks an upload's declared type (if any) against its bytes, its size, and
/// its dimensions against `max_pixels` (read from the header, before any
/// decoding).
pub fn check_header(
    bytes: &[u8],
    declared: Option<&str>,
    max_bytes: u64,
    max_pixels: u64,
) -> Result<Header, UploadError> {
    if bytes.len() as u64 > max_bytes {
        return Err(refuse(
            413,
            "upload-too-large",
            format!(
                "the image is {} bytes; at most {max_bytes} are accepted",
                bytes.len()
            ),
        ));
    }
    if bytes.is_empty() {
        return Err(refuse(400, "invalid-image", "the upload is empty"));
    }
    let Some(kind) = sniff(bytes) else {
        return Err(refuse(
            415,
            "unsupported-image-type",
            "not a PNG, JPEG or WebP image (its first bytes say otherwise)",
        ));
    };
    if let Some(d) = declared {
        let d = d
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let d = if d == "image/jpg" {
            "image/jpeg".to_owned()
        } else {
            d
        };
        if d != kind {
            return Err(refuse(
                415,
                "unsupported-image-type",
                format!("the content type says {d}, but the bytes are {kind}"),
            ));
        }
    }
    let format = match kind {
        "image/png" => image::ImageFormat::Png,
        "image/jpeg" => image::ImageFormat::Jpeg,
        _ => image::ImageFormat::WebP,
    };
    let (w, h) = if format == image::ImageFormat::Png {
        // Straight from IHDR: a decoder would read (and inflate) the chunks
        // before the first IDAT, an `iCCP` bomb among them.
        png_dimensions(bytes).ok_or_else(|| {
            refuse(
                400,
                "invalid-image",
                "cannot read the image/png header (IHDR)",
            )
        })?
    } else {
        let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
        reader.into_dimensions().map_err(|e| {
            refuse(
                400,
                "invalid-image",
                format!("cannot read the {kind} header: {e}"),
            )
        })?
    };
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(refuse(
            413,
            "image-too-large",
            format!("{w}×{h} is {pixels} pixels; at most {max_pixels} are accepted"),
        ));
    }
    if w == 0 || h == 0 {
        return Err(refuse(400, "invalid-image", "the image has no pixels"));
    }
    Ok(Header {
        kind,
        format,
        width: w,
        height: h,
    })
}

/// A PNG's width and height, from its first chunk (which must be `IHDR`).
fn png_dimensions(b: &[u8]) -> Option<(u32, u32)> {
    if b.get(12..16)? != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(b.get(16..20)?.try_into().ok()?);
    let h = u32::from_be_bytes(b.get(20..24)?.try_into().ok()?);
    Some((w, h))
}

/// Checks a whole upload: its header ([`check_header`]), its structure to its
/// end (nothing may follow it: a file that is also a ZIP or an HTML page is
/// refused; JPEG and WebP metadata is bounded), and a full decode (a truncated
/// or corrupt file fails). A PNG loses its ancillary chunks (text, ICC
/// profiles, private data), so what is kept and decoded is only the picture: the
/// bytes to keep are returned. Blocking (it decodes): call it through
/// [`crate::picture::off_runtime`].
pub fn check<'a>(
    bytes: &'a [u8],
    declared: Option<&str>,
    max_bytes: u64,
    max_pixels: u64,
) -> Result<(Header, Cow<'a, [u8]>), UploadError> {
    let header = check_header(bytes, declared, max_bytes, max_pixels)?;
    let kind = header.kind;
    let invalid = |why: String| refuse(400, "invalid-image", why);
    let kept = match header.format {
        image::ImageFormat::Png => picture::strip_png(bytes).map_err(invalid)?,
        format => {
            let end = picture::end_of(format, bytes).map_err(invalid)?;
            if end < bytes.len() {
                return Err(invalid(format!(
                    "{} bytes follow the end of the {kind} (a file that is also something else is refused)",
                    bytes.len() - end
                )));
            }
            Cow::Borrowed(bytes)
        }
    };
    let pixels = u64::from(header.width) * u64::from(header.height);
    // Decoded RGBA at 16 bits per channel, with room for the decoder's buffers
    // (a PNG is checked a row at a time and needs far less).
    let max_alloc = pixels.saturating_mul(8).saturating_add(64 << 20);
    picture::verify(&kept, header.format, max_alloc)
        .map_err(|e| invalid(format!("the {kind} does not decode: {e}")))?;
    Ok((header, kept))
}

/// The id of these bytes.
pub fn upload_id(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decodes a `data:image/…;base64,…` URL (for small images given inline).
pub fn decode_data_url(s: &str, max_bytes: u64) -> Result<(String, Vec<u8>), UploadError> {
    use base64::Engine;
    let rest = s
        .strip_prefix("data:")
        .ok_or_else(|| refuse(400, "invalid-image", "not a data: URL"))?;
    let (meta, data) = rest.split_once(',').ok_or_else(|| {
        refuse(
            400,
            "invalid-image",
            "a data: URL needs a comma before its data",
        )
    })?;
    let Some(mime) = meta.strip_suffix(";base64") else {
        return Err(refuse(
            400,
            "invalid-image",
            "a data: URL image must be base64 (…;base64,…)",
        ));
    };
    if (data.len() as u64) / 4 * 3 > max_bytes {
        return Err(refuse(
            413,
            "upload-too-large",
            format!("an inline image may be at most {max_bytes} bytes; use POST /api/uploads"),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| {
            refuse(
                400,
                "invalid-image",
                format!("the data: URL is not valid base64: {e}"),
            )
        })?;
    Ok((mime.to_owned(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([1, 2, 3]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 100, 50]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn webp(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbaImage::from_pixel(w, h, image::Rgba([9, 8, 7, 255]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::WebP).unwrap();
        out.into_inner()
    }

    #[test]
    fn good_images_of_each_format_pass() {
        let dims = |(h, _): (Header, Cow<'_, [u8]>)| (h.kind, h.width, h.height);
        assert_eq!(
            dims(check(&png(3, 2), Some("image/png"), 1 << 20, 100).unwrap()),
            ("image/png", 3, 2)
        );
        assert_eq!(
            dims(check(&jpeg(8, 8), None, 1 << 20, 100).unwrap()),
            ("image/jpeg", 8, 8)
        );
        assert_eq!(
            dims(check(&webp(5, 4), Some("image/webp"), 1 << 20, 100).unwrap()),
            ("image/webp", 5, 4)
        );
    }

    #[test]
    fn bad_images_are_refused_with_a_reason() {
        let p = png(16, 16);
        let e = check(&p[..p.len() - 20], None, 1 << 20, 1000).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (400, "invalid-image"),
            "truncated: {e:?}"
        );
        let e = check(b"GIF89a......", None, 1 << 20, 1000).unwrap_err();
        assert_eq!(e.status, 415, "{e:?}");
        let e = check(&p, Some("image/jpeg"), 1 << 20, 1000).unwrap_err();
        assert_eq!(e.status, 415, "declared type must match: {e:?}");
        let e = check(&p, None, 10, 1000).unwrap_err();
        assert_eq!((e.status, e.code), (413, "upload-too-large"));
        let e = check(&p, None, 1 << 20, 255).unwrap_err();
        assert_eq!((e.status, e.code), (413, "image-too-large"), "{e:?}");
        let mut poly = p.clone();
        poly.extend_from_slice(b"PK\x03\x04 a zip archive follows");
        let e = check(&poly, None, 1 << 20, 1000).unwrap_err();
        assert!(e.message.contains("follow the end"), "polyglot: {e:?}");
        let mut poly = jpeg(8, 8);
        poly.extend_from_slice(b"<html><script>alert(1)</script>");
        assert_eq!(check(&poly, None, 1 << 20, 1000).unwrap_err().status, 400);
        let mut poly = webp(4, 4);
        poly.extend_from_slice(b"<html>");
        assert_eq!(check(&poly, None, 1 << 20, 1000).unwrap_err().status, 400);
    }

    #[test]
    fn ids_and_data_urls() {
        let id = upload_id(b"abc");
        assert!(is_upload_id(&id));
        assert_eq!(&id[..8], "ba7816bf");
        assert!(!is_upload_id("BA7816BF"));
        use base64::Engine;
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png(2, 2))
        );
        let (mime, bytes) = decode_data_url(&url, 1 << 20).unwrap();
        assert_eq!(mime, "image/png");
        assert!(check(&bytes, Some(&mime), 1 << 20, 100).is_ok());
        assert_eq!(
            decode_data_url("data:image/png,abc", 100)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(decode_data_url(&url, 10).unwrap_err().status, 413);
    }
}
