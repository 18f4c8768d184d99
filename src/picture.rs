//! Decoding a stored picture within bounds, for the work done on outputs after
//! they are stored (thumbnails, other formats): its dimensions are read first, so
//! a picture over the pixel bound is refused before anything is allocated for it.

/// The largest stored picture decoded.
pub const MAX_BYTES: u64 = 64 << 20;
/// The most pixels of a picture decoded.
pub const MAX_PIXELS: u64 = 40_000_000;

/// Why a picture was not decoded.
#[derive(Debug)]
pub enum DecodeError {
    /// Not a picture of a kind we read, or broken.
    Unreadable(String),
    /// Over [`MAX_PIXELS`] (the size, for the message).
    TooLarge(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Unreadable(why) => write!(f, "{why}"),
            DecodeError::TooLarge(what) => write!(f, "too large ({what})"),
        }
    }
}

/// Decodes `bytes` (of `format`, or guessed from them) if it has at most
/// [`MAX_PIXELS`], allocating at most `bytes_per_pixel` per pixel for it.
pub fn decode(
    bytes: &[u8],
    format: Option<image::ImageFormat>,
    bytes_per_pixel: u64,
) -> Result<image::DynamicImage, DecodeError> {
    let unreadable = |e: image::ImageError| DecodeError::Unreadable(e.to_string());
    let reader = || -> Result<_, DecodeError> {
        let cursor = std::io::Cursor::new(bytes);
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
