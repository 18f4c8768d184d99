//! Where job outputs live: the [`ImageStore`] trait and its local-directory
//! implementation [`FsImageStore`] (`<data dir>/images/<job id>/<file>`).

mod fs;

use std::pin::Pin;

use async_trait::async_trait;
use tokio::io::AsyncRead;

pub use fs::FsImageStore;

use crate::job::JobId;

/// Longest stored file name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// A storage operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A name that must not become a path (`..`, a separator, a control character...).
    #[error("refused file name {0:?}: {1}")]
    BadName(String, &'static str),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A stored file's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    pub name: String,
    pub size: u64,
    pub content_type: &'static str,
}

/// A stored file opened for reading.
pub struct Blob {
    pub size: u64,
    pub content_type: &'static str,
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
}

/// Storage for job outputs.
#[async_trait]
pub trait ImageStore: Send + Sync + 'static {
    /// Stores `bytes` as `name` under the job (replacing a file of that name).
    async fn put(&self, job: &JobId, name: &str, bytes: &[u8]) -> Result<StoredFile, StorageError>;

    /// Opens a stored file, `None` if there is none.
    async fn open(&self, job: &JobId, name: &str) -> Result<Option<Blob>, StorageError>;
}

/// Checks a file name before it goes anywhere near a path: one plain component,
/// no separators, no `..`, no hidden files, no control characters.
pub fn check_name(name: &str) -> Result<&str, StorageError> {
    let bad = |why| Err(StorageError::BadName(name.to_owned(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("too long");
    }
    if name.contains(['/', '\\']) {
        return bad("contains a path separator");
    }
    if name.starts_with('.') {
        return bad("starts with a dot");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    if name.contains(':') {
        return bad("contains a colon");
    }
    Ok(name)
}

/// The MIME type a stored file is served with, by extension. Anything a browser
/// could run (HTML, SVG, JS) is served as a download.
pub fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "avif" => "image/avif",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// `image`, `video`, `audio` or `file`, from the content type.
pub fn kind_of(content_type: &str) -> &'static str {
    match content_type.split('/').next() {
        Some("image") => "image",
        Some("video") => "video",
        Some("audio") => "audio",
        _ => "file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [
            "", "..", "../x.png", "a/b.png", "a\\b.png", ".hidden", "x\0.png", "c:x.png", "a\nb",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(201)).is_err());
        assert_eq!(
            check_name("studio_abc_00001_.png").unwrap(),
            "studio_abc_00001_.png"
        );
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("a.PNG"), "image/png");
        assert_eq!(content_type("a.mp4"), "video/mp4");
        assert_eq!(content_type("a.html"), "application/octet-stream");
        assert_eq!(content_type("noext"), "application/octet-stream");
        assert_eq!(kind_of("audio/flac"), "audio");
        assert_eq!(kind_of("application/json"), "file");
    }
}
