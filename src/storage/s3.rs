//! Outputs in an S3-compatible bucket (AWS, R2, MinIO, Garage, Ceph, s3s), with
//! `object_store`: `<prefix>/<job id>/<file name>`. Uploads stream: up to 5 MiB
//! goes up in one `PUT`, anything larger as a multipart upload in 8 MiB parts, a
//! few in flight, so a worker never holds a whole file. Reads stream too, with
//! byte ranges; `presigned_url` gives a short-lived `GET` URL for redirects.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::{
    Blob, ByteRange, ByteStream, ImageStore, StorageError, StoredFile, content_type, job_file,
};
use crate::job::JobId;

/// Up to this much, one `PUT`; beyond, a multipart upload.
const SINGLE_PUT: usize = 5 * 1024 * 1024;
/// Multipart part size.
const PART: usize = 8 * 1024 * 1024;
/// Parts uploading at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Where and how to reach the bucket.
#[derive(Clone, Debug, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix, without slashes at either end (may be empty).
    pub prefix: String,
    /// A custom endpoint (`AWS_ENDPOINT_URL`): path-style requests, `http` allowed.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl S3Settings {
    /// `s3://bucket[/prefix]`.
    pub fn parse_url(url: &str) -> Result<(String, String), String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not fs or s3://bucket[/prefix]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url:?} names no bucket"));
        }
        Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
    }
}

fn io(e: object_store::Error) -> StorageError {
    StorageError::Io(std::io::Error::other(e.to_string()))
}

/// An image store in a bucket.
#[derive(Debug)]
pub struct S3ImageStore {
    store: AmazonS3,
    prefix: String,
}

impl S3ImageStore {
    pub fn new(s: &S3Settings) -> Result<Self, String> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(s.region.as_deref().unwrap_or("us-east-1"));
        if let Some(e) = &s.endpoint {
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(k) = &s.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &s.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let store = b.build().map_err(|e| e.to_string())?;
        Ok(S3ImageStore {
            store,
            prefix: s.prefix.clone(),
        })
    }

    /// Checks at start that the bucket answers and takes these credentials: a
    /// wrong secret fails here, not at the first job.
    pub async fn check(&self) -> Result<(), String> {
        let probe = self.key_of(".studio-check");
        match self.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn key_of(&self, rest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn path(&self, job: &JobId, name: &str) -> Result<Path, StorageError> {
        Ok(self.key_of(&job_file(job, name)?))
    }
}

#[async_trait]
impl ImageStore for S3ImageStore {
    async fn delete(&self, job: &JobId, names: &[String]) -> Result<(), StorageError> {
        let paths: Vec<Result<Path, object_store::Error>> = names
            .iter()
            .map(|n| self.path(job, n))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(Ok)
            .collect();
        // One DeleteObjects request per thousand keys (object_store batches).
        let mut done = self
            .store
            .delete_stream(futures_util::stream::iter(paths).boxed());
        while let Some(r) = done.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(StorageError::Io(std::io::Error::other(e.to_string()))),
            }
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
        let mut size = 0u64;
        let mut first = BytesMut::new();
        let too_large = || StorageError::TooLarge {
            name: name.to_owned(),
            limit: max_bytes,
        };
        let source = |error| StorageError::Source {
            name: name.to_owned(),
            error,
        };
        // Small files: one PUT.
        let mut rest: Option<Bytes> = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(source)?;
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(too_large());
            }
            if first.len() + chunk.len() <= SINGLE_PUT {
                first.extend_from_slice(&chunk);
            } else {
                rest = Some(chunk);
                break;
            }
        }
        let Some(rest) = rest else {
            self.store
                .put(&path, PutPayload::from(first.freeze()))
                .await
                .map_err(io)?;
            return Ok(StoredFile {
                name: name.to_owned(),
                size,
                content_type: content_type(name),
            });
        };
        // Larger: multipart, a few parts in flight; aborted on any failure.
        let upload = self.store.put_multipart(&path).await.map_err(io)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        w.write(&first);
        w.write(&rest);
        let streamed: Result<(), StorageError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(source)?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(too_large());
                }
                w.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(io)?;
                w.write(&chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish().await.map_err(io)?;
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
        let meta = match self.store.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let total = meta.size;
        let (start, size, satisfiable) = ByteRange::span(range, total);
        let opts = GetOptions {
            range: (size < total).then(|| GetRange::Bounded(start..start + size)),
            // The object we looked at, not one written since.
            if_match: meta.e_tag.clone(),
            ..GetOptions::default()
        };
        let got = match self.store.get_opts(&path, opts).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let stream = got
            .into_stream()
            .map_err(|e| std::io::Error::other(e.to_string()));
        let etag = match &meta.e_tag {
            Some(t) if t.starts_with('"') => t.clone(),
            Some(t) => format!("\"{t}\""),
            None => format!("\"{total:x}\""),
        };
        Ok(Some((
            Blob {
                size,
                total,
                start,
                etag,
                content_type: content_type(name),
                reader: Box::pin(tokio_util::io::StreamReader::new(stream)),
            },
            satisfiable,
        )))
    }

    async fn presigned_url(
        &self,
        job: &JobId,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StorageError> {
        let path = match self.path(job, name) {
            Ok(p) => p,
            Err(StorageError::BadName(..)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match self.store.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let url = self
            .store
            .signed_url(axum::http::Method::GET, &path, ttl)
            .await
            .map_err(io)?;
        Ok(Some(url.to_string()))
    }
}
