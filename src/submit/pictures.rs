//! Input pictures: checked ([`uploads::check`]), stored content-addressed in the
//! output storage, and recorded for their owner. One path for `POST
//! /api/uploads` and for `data:` URLs given inline in a submission.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::SubmitError;
use crate::clock;
use crate::storage::{ByteRange, ImageStore};
use crate::store::{StoreError, Uploads, within};
use crate::uploads::{self, UploadRecord};
use crate::workflow::{DEFAULT_WORKFLOW, WorkflowRegistry};

/// Caps on input pictures.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    /// Bytes of one picture (`--max-upload-bytes`).
    pub max_bytes: u64,
    /// Pixels of one picture (`--max-upload-pixels`).
    pub max_pixels: u64,
    /// How long an upload is kept (the job TTL); a job that names it extends it.
    pub ttl: Duration,
}

/// A checked picture, not stored yet.
pub struct Picture {
    /// Its content address (what a job names).
    pub upload_id: String,
    pub kind: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: Vec<u8>,
}

/// Checks and stores input pictures.
pub struct Uploader {
    pub limits: UploadLimits,
    pub images: Arc<dyn ImageStore>,
}

impl Uploader {
    /// Checks `bytes` (what they are, against what the client declared, and the
    /// caps).
    pub fn check(&self, bytes: Vec<u8>, declared: Option<&str>) -> Result<Picture, SubmitError> {
        let (kind, width, height) = uploads::check(
            &bytes,
            declared,
            self.limits.max_bytes,
            self.limits.max_pixels,
        )?;
        Ok(Picture {
            upload_id: uploads::upload_id(&bytes),
            kind,
            width,
            height,
            bytes,
        })
    }

    /// Stores a checked picture (once per content, whoever sends it) and records
    /// it for `owner`.
    pub async fn store(
        &self,
        store: &dyn Uploads,
        owner: &str,
        picture: &Picture,
        timeout: Duration,
    ) -> Result<UploadRecord, SubmitError> {
        let dir = uploads::uploads_dir();
        let id = &picture.upload_id;
        let unavailable = |e: crate::storage::StorageError| {
            SubmitError::Store(StoreError::Unavailable(format!(
                "the storage is unavailable: {e}"
            )))
        };
        let present = self
            .images
            .open_part(
                &dir,
                id,
                Some(ByteRange::From {
                    start: 0,
                    end: Some(0),
                }),
            )
            .await
            .map_err(unavailable)?
            .is_some();
        if !present {
            self.images
                .put(&dir, id, &picture.bytes)
                .await
                .map_err(unavailable)?;
        }
        let record = UploadRecord {
            upload_id: id.clone(),
            width: picture.width,
            height: picture.height,
            content_type: picture.kind.to_owned(),
            size: picture.bytes.len() as u64,
            owner: owner.to_owned(),
            created_at: clock::iso8601(clock::now_micros()),
        };
        within(timeout, store.put_upload(&record, self.limits.ttl)).await?;
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
        workflows: &WorkflowRegistry,
        mut body: Value,
    ) -> Result<(Value, Vec<Picture>), SubmitError> {
        let name = body
            .get("workflow")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_WORKFLOW)
            .to_owned();
        let mut pictures = Vec::new();
        let Some(wf) = workflows.get(&name) else {
            return Ok((body, pictures));
        };
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
            let picture = self.check(bytes, Some(&mime)).map_err(with_field)?;
            body[param] = Value::String(picture.upload_id.clone());
            pictures.push(picture);
        }
        Ok((body, pictures))
    }
}
