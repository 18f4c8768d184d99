//! Where job outputs live: the [`ImageStore`] trait and its local-directory
//! implementation [`FsImageStore`] (`<data dir>/images/<job id>/<file>`).

mod fs;
pub mod s3;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use tokio::io::AsyncRead;

pub use fs::FsImageStore;
pub use s3::{S3ImageStore, S3Settings};

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
    /// The file is larger than the caller allows; nothing was kept.
    #[error("{name} is larger than the limit of {limit} bytes")]
    TooLarge { name: String, limit: u64 },
    /// The bytes stopped coming (the source broke off); nothing was kept.
    #[error("reading {name} failed: {error}")]
    Source { name: String, error: std::io::Error },
}

/// Bytes to store, as they arrive.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A stored file's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    pub name: String,
    pub size: u64,
    pub content_type: &'static str,
}

/// A stored file opened for reading (the whole of it, or the part asked for).
pub struct Blob {
    /// Bytes the reader yields.
    pub size: u64,
    /// The whole file's size.
    pub total: u64,
    /// The first byte the reader yields (0 for the whole file).
    pub start: u64,
    /// A strong validator of the file's contents (quoted, as in the `ETag` header).
    pub etag: String,
    pub content_type: &'static str,
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
}

impl Blob {
    /// Reads the whole blob, refusing one larger than `limit` bytes.
    pub async fn read_all(mut self, limit: u64) -> std::io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        if self.size > limit {
            return Err(std::io::Error::other(format!(
                "{} bytes, more than {limit}",
                self.size
            )));
        }
        let mut out = Vec::with_capacity(self.size as usize);
        (&mut self.reader)
            .take(limit + 1)
            .read_to_end(&mut out)
            .await?;
        if out.len() as u64 > limit {
            return Err(std::io::Error::other(format!("more than {limit} bytes")));
        }
        Ok(out)
    }
}

/// Bytes of a file asked for, as in a `Range: bytes=…` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// From this byte to the last byte included (`bytes=a-b`, `bytes=a-`).
    From { start: u64, end: Option<u64> },
    /// The last n bytes (`bytes=-n`).
    Last(u64),
}

impl ByteRange {
    /// What a store reads of a file of `total` bytes for `range`: first byte,
    /// length, and whether the range was satisfiable (if not, the whole file).
    pub fn span(range: Option<ByteRange>, total: u64) -> (u64, u64, bool) {
        match range.map(|r| r.resolve(total)) {
            None => (0, total, true),
            Some(None) => (0, total, false),
            Some(Some((a, b))) => (a, b - a + 1, true),
        }
    }

    /// The first and last byte (inclusive) of a file of `total` bytes, or `None`
    /// when the range is not satisfiable.
    pub fn resolve(self, total: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From { start, end } => {
                if start >= total {
                    return None;
                }
                let end = end.map_or(total - 1, |e| e.min(total - 1));
                (end >= start).then_some((start, end))
            }
            ByteRange::Last(0) => None,
            ByteRange::Last(n) => (total > 0).then(|| (total.saturating_sub(n), total - 1)),
        }
    }
}

/// Storage for job outputs.
#[async_trait]
pub trait ImageStore: Send + Sync + 'static {
    /// Stores what `body` yields as `name` under the job (replacing a file of that
    /// name), never holding the whole file in memory. More than `max_bytes` is
    /// [`StorageError::TooLarge`]; a broken `body` is [`StorageError::Source`]; in
    /// both cases nothing is kept.
    async fn put_stream(
        &self,
        job: &JobId,
        name: &str,
        body: ByteStream,
        max_bytes: u64,
    ) -> Result<StoredFile, StorageError>;

    /// Stores `bytes` as `name` under the job.
    async fn put(&self, job: &JobId, name: &str, bytes: &[u8]) -> Result<StoredFile, StorageError> {
        let chunk = Bytes::copy_from_slice(bytes);
        let body: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(chunk) }));
        self.put_stream(job, name, body, bytes.len() as u64).await
    }

    /// Opens a stored file, `None` if there is none.
    async fn open(&self, job: &JobId, name: &str) -> Result<Option<Blob>, StorageError> {
        Ok(self.open_part(job, name, None).await?.map(|(blob, _)| blob))
    }

    /// Opens a stored file, or the part of it `range` asks for. The flag says
    /// whether the range was satisfiable (when it is not, the blob is the whole
    /// file and the caller answers 416).
    async fn open_part(
        &self,
        job: &JobId,
        name: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Blob, bool)>, StorageError>;

    /// Deletes files of a job (those missing are no error), in as few requests
    /// as the store allows (S3: one batched delete per thousand).
    async fn delete(&self, job: &JobId, names: &[String]) -> Result<(), StorageError>;

    /// Jobs' directories an earlier version may have left, until
    /// [`ImageStore::mark_swept`] ran: each job id with its files and their
    /// sizes, the directory `skip` (the uploads') left out. Local disks only (an
    /// S3 bucket answers nothing; give it a lifecycle rule).
    async fn unswept(
        &self,
        _skip: &JobId,
    ) -> Result<Vec<(String, Vec<(String, u64)>)>, StorageError> {
        Ok(Vec::new())
    }

    /// Records that every directory an earlier version left is known now.
    async fn mark_swept(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// A URL that serves the file for `ttl` without this server (a presigned
    /// `GET`), if the store can make one; `None` also when there is no such file.
    async fn presigned_url(
        &self,
        _job: &JobId,
        _name: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<String>, StorageError> {
        Ok(None)
    }
}

/// The widths a thumbnail may have.
pub const THUMB_WIDTHS: [u32; 3] = [128, 256, 512];

/// The name a picture's thumbnail of width `w` is stored under, beside it (a
/// JPEG, whatever the picture is: `thumb-256-<stem>.<ext>.jpg`, shortened to fit).
pub fn thumb_name(file: &str, w: u32) -> String {
    fit_name(&format!("thumb-{w}-{file}.jpg"), "")
}

/// Every file a job's outputs may have left: the outputs and the thumbnails
/// that may have been made of them.
pub fn files_of(outputs: &[String]) -> Vec<String> {
    let mut all = outputs.to_vec();
    for o in outputs {
        all.extend(THUMB_WIDTHS.iter().map(|w| thumb_name(o, *w)));
    }
    all
}

/// `<job id>/<file name>`, both checked: what both stores put under their root.
pub fn job_file(job: &JobId, name: &str) -> Result<String, StorageError> {
    // Job ids are checked at parse time ([A-Za-z0-9._:-]); refuse the two that
    // would still be special as a path component.
    if matches!(job.as_str(), "." | "..") {
        return Err(StorageError::BadName(
            job.to_string(),
            "not a job directory",
        ));
    }
    Ok(format!("{}/{}", job.as_str(), check_name(name)?))
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

/// Makes `name` fit [`MAX_NAME_LEN`] with `suffix` (e.g. `-2`) before its extension,
/// shortening the stem rather than refusing the name. An extension longer than 16
/// bytes is not one.
pub fn fit_name(name: &str, suffix: &str) -> String {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() && e.len() <= 16 => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    let room = MAX_NAME_LEN.saturating_sub(suffix.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}{ext}", &stem[..cut])
}

/// A stored file name as it goes into a URL path: everything but letters, digits
/// and `-._~` percent-encoded (`a#b?c d.png` → `a%23b%3Fc%20d.png`).
pub fn url_segment(name: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(name, SEGMENT).to_string()
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
    fn long_names_are_shortened_to_fit_keeping_the_extension() {
        let long = format!("{}.png", "x".repeat(198));
        assert_eq!(long.len(), 202);
        let fitted = fit_name(&long, "-2");
        assert_eq!(fitted.len(), MAX_NAME_LEN);
        assert!(fitted.ends_with("-2.png"), "{fitted}");
        assert!(check_name(&fitted).is_ok());
        let multi = format!("{}.webp", "é".repeat(120));
        let f = fit_name(&multi, "");
        assert!(f.len() <= MAX_NAME_LEN && f.ends_with(".webp"), "{f}");
        assert_eq!(fit_name("short.png", "-3"), "short-3.png");
        assert_eq!(fit_name("noext", "-2"), "noext-2");
    }

    #[test]
    fn url_segments_are_percent_encoded() {
        assert_eq!(url_segment("a#b?c d.png"), "a%23b%3Fc%20d.png");
        assert_eq!(
            url_segment("studio_x-1_00001_.png"),
            "studio_x-1_00001_.png"
        );
        assert_eq!(url_segment("ü%.png"), "%C3%BC%25.png");
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
