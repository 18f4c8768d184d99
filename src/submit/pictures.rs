//! Input pictures: checked ([`uploads::check`], off the runtime behind the
//! process's decode gate), stored content-addressed in the output storage,
//! recorded for their owner within its quota. One path for `POST /api/uploads`,
//! for `data:` URLs given inline in a submission, and for the other front doors'
//! uploads. Bodies being read count against a budget of buffered bytes for the
//! whole process and a cap on uploads in flight per client ([`Uploader::reserve`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Rejection, SubmitError};
use crate::clock;
use crate::picture::off_runtime;
use crate::storage::ImageStore;
use crate::store::{StoreError, UploadQuota, Uploads, within};
use crate::uploads::{self, UploadRecord};
use crate::workflow::Workflow;

/// Caps on input pictures.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    /// Bytes of one picture (`--max-upload-bytes`).
    pub max_bytes: u64,
    /// Pixels of one picture (`--max-upload-pixels`).
    pub max_pixels: u64,
    /// How long an upload is kept (the job TTL); a job that names it extends it.
    pub ttl: Duration,
    /// What one owner may hold at once (`--upload-quota`, `--upload-quota-count`).
    pub quota: UploadQuota,
    /// Upload bodies being read at once, in bytes, in this process
    /// (`--upload-buffer`).
    pub buffer: u64,
    /// Uploads one client (a key, or an address without one) may send at once
    /// (`--max-uploads-per-client`).
    pub per_client: usize,
}

/// How long an upload waits for room in the buffer budget before it is refused.
const BUFFER_WAIT: Duration = Duration::from_secs(1);

/// A checked picture, not stored yet.
pub struct Picture {
    /// Its content address (what a job names).
    pub upload_id: String,
    pub kind: &'static str,
    pub width: u32,
    pub height: u32,
    /// What is kept (a PNG without its ancillary chunks).
    pub bytes: Vec<u8>,
}

/// Checks and stores input pictures.
pub struct Uploader {
    pub limits: UploadLimits,
    pub images: Arc<dyn ImageStore>,
    /// The buffer budget, in KiB.
    buffered: Arc<Semaphore>,
    /// Uploads in flight per client.
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
}

/// Room for one upload body: held while it is read and checked.
pub struct Reservation {
    _budget: OwnedSemaphorePermit,
    _client: InFlight,
}

/// One of a client's uploads in flight; counted down when dropped.
struct InFlight {
    client: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.client);
            }
        }
    }
}

impl Uploader {
    pub fn new(limits: UploadLimits, images: Arc<dyn ImageStore>) -> Self {
        let kib = (limits.buffer.div_ceil(1024)).clamp(1, Semaphore::MAX_PERMITS as u64);
        Uploader {
            limits,
            images,
            buffered: Arc::new(Semaphore::new(kib as usize)),
            in_flight: Arc::default(),
        }
    }

    /// Room to read an upload body of at most `bytes` for `client`: refused at
    /// once when the client has its uploads in flight (429), after a second
    /// when the process's buffer budget stays full (503).
    pub async fn reserve(&self, bytes: u64, client: &str) -> Result<Reservation, Rejection> {
        {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(client.to_owned()).or_insert(0);
            if *n >= self.limits.per_client {
                return Err(Rejection::new(
                    429,
                    "too-many-uploads",
                    format!(
                        "this client is sending {} uploads already (--max-uploads-per-client); send the next when one is done",
                        self.limits.per_client
                    ),
                )
                .retry_after(1));
            }
            *n += 1;
        }
        let client = InFlight {
            client: client.to_owned(),
            counts: self.in_flight.clone(),
        };
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let kib = kib.min(self.buffered_total());
        match tokio::time::timeout(BUFFER_WAIT, self.buffered.clone().acquire_many_owned(kib)).await
        {
            Ok(Ok(permit)) => Ok(Reservation {
                _budget: permit,
                _client: client,
            }),
            _ => Err(Rejection::new(
                503,
                "upload-busy",
                "the server is reading as many uploads as it holds at once (--upload-buffer); try again shortly",
            )
            .retry_after(2)),
        }
    }

    fn buffered_total(&self) -> u32 {
        u32::try_from(self.limits.buffer.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
    }

    /// Checks `bytes` (what they are, against what the client declared, and the
    /// caps): the header at once, the whole picture off the runtime.
    pub async fn check(
        &self,
        bytes: Vec<u8>,
        declared: Option<&str>,
    ) -> Result<Picture, SubmitError> {
        let (max_bytes, max_pixels) = (self.limits.max_bytes, self.limits.max_pixels);
        uploads::check_header(&bytes, declared, max_bytes, max_pixels)?;
        let declared = declared.map(str::to_owned);
        let checked = off_runtime(move || {
            let (header, kept) =
                uploads::check(&bytes, declared.as_deref(), max_bytes, max_pixels)?;
            let kept = kept.into_owned();
            Ok::<_, uploads::UploadError>((header, kept))
        })
        .await
        .map_err(|e| Rejection::new(503, "upload-busy", e.to_string()).retry_after(2))??;
        let (header, bytes) = checked;
        Ok(Picture {
            upload_id: uploads::upload_id(&bytes),
            kind: header.kind,
            width: header.width,
            height: header.height,
            bytes,
        })
    }

    /// Records a checked picture for `owner` (within its quota), then stores its
    /// file. The file is written every time, present or not: the answer takes
    /// as long whether or not anyone sent these bytes before, and a file the
    /// sweeper was about to delete is written again.
    pub async fn store(
        &self,
        store: &dyn Uploads,
        owner: &str,
        picture: &Picture,
        timeout: Duration,
    ) -> Result<UploadRecord, SubmitError> {
        let record = UploadRecord {
            upload_id: picture.upload_id.clone(),
            width: picture.width,
            height: picture.height,
            content_type: picture.kind.to_owned(),
            size: picture.bytes.len() as u64,
            owner: owner.to_owned(),
            created_at: clock::iso8601(clock::now_micros()),
        };
        within(
            timeout,
            store.put_upload(&record, self.limits.ttl, &self.limits.quota),
        )
        .await?;
        self.images
            .put(&uploads::uploads_dir(), &record.upload_id, &picture.bytes)
            .await
            .map_err(|e| {
                SubmitError::Store(StoreError::Unavailable(format!(
                    "the storage is unavailable: {e}"
                )))
            })?;
        tracing::info!(upload_id = %record.upload_id, size = record.size, width = record.width, height = record.height, "upload stored");
        Ok(record)
    }

    /// Stores every picture a submission gave inline.
    pub(super) async fn store_all(
        &self,
        store: &dyn Uploads,
        owner: &str,
        pictures: Vec<Picture>,
        timeout: Duration,
    ) -> Result<(), SubmitError> {
        for p in &pictures {
            self.store(store, owner, p, timeout).await?;
        }
        Ok(())
    }

    /// Checks the `data:` URLs given for a submission's picture parameters and
    /// puts their upload ids in their place; the pictures are stored later, once
    /// the rest of the submission is checked.
    pub(super) async fn inline_pictures(
        &self,
        wf: &Workflow,
        mut body: Value,
    ) -> Result<(Value, Vec<Picture>), SubmitError> {
        let mut pictures = Vec::new();
        for (param, spec) in &wf.params {
            if !spec.kind.is_picture() {
                continue;
            }
            let Some(url) = body
                .get(param)
                .and_then(Value::as_str)
                .filter(|v| v.starts_with("data:"))
                .map(str::to_owned)
            else {
                continue;
            };
            let with_field = |e: SubmitError| match e {
                SubmitError::Rejected(r) => SubmitError::Rejected(r.field(param.clone())),
                e => e,
            };
            let (mime, bytes) = uploads::decode_data_url(&url, self.limits.max_bytes)
                .map_err(|e| with_field(e.into()))?;
            let picture = self.check(bytes, Some(&mime)).await.map_err(with_field)?;
            body[param] = Value::String(picture.upload_id.clone());
            pictures.push(picture);
        }
        Ok((body, pictures))
    }
}
