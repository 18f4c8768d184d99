//! Outputs in a local directory: `<root>/<job id>/<file name>`.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Blob, ImageStore, StorageError, StoredFile, check_name, content_type};
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
        // Job ids are checked at parse time ([A-Za-z0-9._:-]); refuse the two
        // that would still be special as a path component.
        if matches!(job.as_str(), "." | "..") {
            return Err(StorageError::BadName(
                job.to_string(),
                "not a job directory",
            ));
        }
        Ok(self.root.join(job.as_str()).join(check_name(name)?))
    }
}

#[async_trait]
impl ImageStore for FsImageStore {
    async fn put(&self, job: &JobId, name: &str, bytes: &[u8]) -> Result<StoredFile, StorageError> {
        let path = self.path(job, name)?;
        let dir = path.parent().expect("a file path has a parent");
        tokio::fs::create_dir_all(dir).await?;
        // Write aside, then rename: a reader never sees half a file.
        let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&tmp, bytes).await?;
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        Ok(StoredFile {
            name: name.to_owned(),
            size: bytes.len() as u64,
            content_type: content_type(name),
        })
    }

    async fn open(&self, job: &JobId, name: &str) -> Result<Option<Blob>, StorageError> {
        let path = match self.path(job, name) {
            Ok(p) => p,
            Err(StorageError::BadName(..)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match tokio::fs::File::open(&path).await {
            Ok(f) => {
                let meta = f.metadata().await?;
                if !meta.is_file() {
                    return Ok(None);
                }
                Ok(Some(Blob {
                    size: meta.len(),
                    content_type: content_type(name),
                    reader: Box::pin(f),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
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
}
