//! Outputs in a local directory: `<root>/<job id>/<file name>`.

use std::path::PathBuf;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{
    Blob, ByteRange, ByteStream, ImageStore, StorageError, StoredFile, content_type, job_file,
};
use crate::job::JobId;

/// An image store in a directory on local disk.
#[derive(Clone, Debug)]
pub struct FsImageStore {
    root: PathBuf,
}

impl FsImageStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsImageStore { root: root.into() }
    }

    fn path(&self, job: &JobId, name: &str) -> Result<PathBuf, StorageError> {
        Ok(self.root.join(job_file(job, name)?))
    }
}

/// The file that says a disk's pictures from earlier versions are known.
const SWEPT_MARKER: &str = ".swept-v6";

#[async_trait]
impl ImageStore for FsImageStore {
    async fn unswept(
        &self,
        skip: &JobId,
    ) -> Result<Vec<(String, Vec<(String, u64)>)>, StorageError> {
        if tokio::fs::try_exists(self.root.join(SWEPT_MARKER))
            .await
            .unwrap_or(false)
        {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut dirs = match tokio::fs::read_dir(&self.root).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        while let Some(d) = dirs.next_entry().await? {
            let name = d.file_name().to_string_lossy().into_owned();
            if name == skip.as_str() || name.starts_with('.') || !d.file_type().await?.is_dir() {
                continue;
            }
            if JobId::parse(&name).is_err() {
                continue;
            }
            let mut files = Vec::new();
            let mut entries = tokio::fs::read_dir(d.path()).await?;
            while let Some(f) = entries.next_entry().await? {
                let fname = f.file_name().to_string_lossy().into_owned();
                if fname.starts_with('.') {
                    continue;
                }
                let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                files.push((fname, size));
            }
            out.push((name, files));
        }
        Ok(out)
    }

    async fn mark_swept(&self) -> Result<(), StorageError> {
        tokio::fs::create_dir_all(&self.root).await?;
        tokio::fs::write(self.root.join(SWEPT_MARKER), b"").await?;
        Ok(())
    }

    async fn delete(&self, job: &JobId, names: &[String]) -> Result<(), StorageError> {
        for name in names {
            match tokio::fs::remove_file(self.path(job, name)?).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The job's directory goes when it is empty (best effort: a file may be
        // arriving).
        if let Some(dir) = self.path(job, "x")?.parent() {
            let _ = tokio::fs::remove_dir(dir).await;
        }
        Ok(())
    }

    async fn put_stream(
        &self,
        job: &JobId,
        name: &str,
        mut body: ByteStream,
        max_bytes: u64,
    ) -> Result<StoredFile, StorageError> {
        let path = self.path(job, name)?;
        let dir = path.parent().expect("a file path has a parent");
        tokio::fs::create_dir_all(dir).await?;
        // Write aside, then rename: a reader never sees half a file.
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|error| StorageError::Source {
                    name: name.to_owned(),
                    error,
                })?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(StorageError::TooLarge {
                        name: name.to_owned(),
                        limit: max_bytes,
                    });
                }
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            Ok(size)
        }
        .await;
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        Ok(StoredFile {
            name: name.to_owned(),
            size,
            content_type: content_type(name),
        })
    }

    async fn open_part(
        &self,
        job: &JobId,
        name: &str,
        range: Option<ByteRange>,
    ) -> Result<Option<(Blob, bool)>, StorageError> {
        let path = match self.path(job, name) {
            Ok(p) => p,
            Err(StorageError::BadName(..)) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Never follow a symbolic link, neither the job's directory nor the file:
        // a link planted in the images folder must not serve /etc/passwd.
        let dir = path.parent().expect("a file path has a parent");
        match tokio::fs::symlink_metadata(dir).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let opened = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .await;
        match opened {
            Ok(mut f) => {
                let meta = f.metadata().await?;
                if !meta.is_file() {
                    return Ok(None);
                }
                let total = meta.len();
                // Size and modification time: a file is written once (aside, then
                // renamed), so they change whenever its bytes do.
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                let etag = format!("\"{total:x}-{mtime:x}\"");
                let (start, size, satisfiable) = ByteRange::span(range, total);
                if start > 0 {
                    f.seek(std::io::SeekFrom::Start(start)).await?;
                }
                let blob = Blob {
                    size,
                    total,
                    start,
                    etag,
                    content_type: content_type(name),
                    reader: Box::pin(f.take(size)),
                };
                Ok(Some((blob, satisfiable)))
            }
            // ELOOP: the file is a symbolic link.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn files_round_trip_and_bad_names_never_touch_disk() {
        let root = std::env::temp_dir().join(format!("fs-store-{}", uuid::Uuid::new_v4()));
        let store = FsImageStore::new(&root);
        let job = JobId::parse("job-1").unwrap();
        let f = store.put(&job, "a.png", b"png bytes").await.unwrap();
        assert_eq!((f.size, f.content_type), (9, "image/png"));
        let mut blob = store.open(&job, "a.png").await.unwrap().unwrap();
        let mut s = Vec::new();
        blob.reader.read_to_end(&mut s).await.unwrap();
        assert_eq!(s, b"png bytes");
        assert!(store.put(&job, "../escape.png", b"x").await.is_err());
        assert!(!root.join("escape.png").exists());
        assert!(store.open(&job, "../a.png").await.unwrap().is_none());
        assert!(store.open(&job, "missing.png").await.unwrap().is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn symbolic_links_are_never_followed() {
        let root = std::env::temp_dir().join(format!("fs-store-{}", uuid::Uuid::new_v4()));
        let store = FsImageStore::new(&root);
        let job = JobId::parse("job-1").unwrap();
        store.put(&job, "real.png", b"ok").await.unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("job-1/passwd.png")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("linked-dir")).unwrap();
        assert!(store.open(&job, "passwd.png").await.unwrap().is_none());
        let linked = JobId::parse("linked-dir").unwrap();
        assert!(store.open(&linked, "passwd").await.unwrap().is_none());
        assert!(store.open(&job, "real.png").await.unwrap().is_some());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_stream_over_the_limit_leaves_nothing_behind() {
        let root = std::env::temp_dir().join(format!("fs-store-{}", uuid::Uuid::new_v4()));
        let store = FsImageStore::new(&root);
        let job = JobId::parse("job-1").unwrap();
        let chunks = (0..10).map(|_| Ok(bytes::Bytes::from(vec![7u8; 1000])));
        let body: ByteStream = Box::pin(futures_util::stream::iter(chunks));
        let e = store
            .put_stream(&job, "big.bin", body, 5_000)
            .await
            .unwrap_err();
        assert!(
            matches!(e, StorageError::TooLarge { limit: 5_000, .. }),
            "{e}"
        );
        let left: Vec<_> = std::fs::read_dir(root.join("job-1")).unwrap().collect();
        assert!(left.is_empty(), "temporary file removed");
        let broken: ByteStream = Box::pin(futures_util::stream::iter([
            Ok(bytes::Bytes::from_static(b"half")),
            Err(std::io::Error::other("connection reset")),
        ]));
        let e = store
            .put_stream(&job, "cut.bin", broken, 5_000)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Source { .. }), "{e}");
        assert!(store.open(&job, "cut.bin").await.unwrap().is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
