//! Deleting stored files no record names any more: outputs past `--output-ttl`
//! whose jobs' records are gone (and, once per disk, what earlier versions
//! kept for ever), and upload files whose every record has expired (content-addressed, so shared by owners: a file goes only
//! when no owner's record names it). One pass every `--sweep-interval` in each
//! worker process; passes on several processes do not collide (the store hands
//! each file to one of them).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::WorkerConfig;
use crate::clock;
use crate::job::JobId;
use crate::shutdown::signalled;
use crate::storage::{ImageStore, files_of};
use crate::store::{JobStore, StoredOutputs, Uploads};
use crate::uploads::uploads_dir;

/// Files deleted per pass at most (one batched delete on S3).
const BATCH: usize = 500;

/// How long after its last record expired a file is kept: a record renewed in
/// the meantime (the same bytes uploaded again) keeps it. The job TTL when that
/// is shorter.
pub const GRACE: Duration = Duration::from_secs(600);

/// One pass: the upload files no record has named for `grace`, deleted.
/// Returns how many.
pub async fn sweep_uploads(
    store: &dyn Uploads,
    images: &dyn ImageStore,
    grace: Duration,
) -> Result<usize, String> {
    let before = clock::now_ms().saturating_sub(grace.as_millis() as u64);
    let candidates = store
        .expired_upload_files(before, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let mut gone = Vec::with_capacity(candidates.len());
    for id in candidates {
        if store
            .forget_upload_file(&id, before)
            .await
            .map_err(|e| e.to_string())?
        {
            gone.push(id);
        }
    }
    if !gone.is_empty() {
        images
            .delete(&uploads_dir(), &gone)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            files = gone.len(),
            "upload files no record names were deleted"
        );
    }
    Ok(gone.len())
}

/// One pass over the outputs due: a job whose record still lives keeps them
/// (due again when the record would have expired); the others' files and
/// thumbnails are deleted (one batched request per job on S3), then their
/// entry and bytes. Returns how many jobs' outputs went.
pub async fn sweep_outputs(
    store: &dyn JobStore,
    images: &dyn ImageStore,
    job_ttl: Duration,
) -> Result<usize, String> {
    let now = clock::now_ms();
    let due = store
        .due_outputs(now, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let mut gone = 0;
    for o in due {
        let Ok(id) = JobId::parse(&o.job_id) else {
            let _ = store.forget_outputs(&o.job_id).await;
            continue;
        };
        if let Some(job) = store.get(&id).await.map_err(|e| e.to_string())? {
            // Its record still names them: never before the record goes.
            let until = (job.updated_ms + job_ttl.as_millis() as u64).max(now) + 1000;
            store
                .postpone_outputs(&o.job_id, until)
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        images
            .delete(&id, &files_of(&o.files))
            .await
            .map_err(|e| e.to_string())?;
        store
            .forget_outputs(&o.job_id)
            .await
            .map_err(|e| e.to_string())?;
        gone += 1;
    }
    if gone > 0 {
        tracing::info!(
            jobs = gone,
            "outputs past --output-ttl whose records are gone were deleted"
        );
    }
    Ok(gone)
}

/// Once per disk: the job directories an earlier version left (it kept every
/// picture for ever) are put in the outputs index, due now; the next passes
/// delete those whose records are gone.
pub async fn adopt_unswept(store: &dyn JobStore, images: &dyn ImageStore) -> Result<usize, String> {
    let found = images
        .unswept(&uploads_dir())
        .await
        .map_err(|e| e.to_string())?;
    let now = clock::now_ms();
    let n = found.len();
    for (job_id, files) in found {
        let owner = match JobId::parse(&job_id) {
            Ok(id) => store
                .get(&id)
                .await
                .map_err(|e| e.to_string())?
                .map(|j| j.owner)
                .unwrap_or_default(),
            Err(_) => continue,
        };
        // Thumbnails are found with their pictures; the index keeps the outputs.
        let (thumbs, outputs): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|(f, _)| f.starts_with("thumb-"));
        let o = StoredOutputs {
            job_id,
            owner,
            bytes: outputs.iter().chain(&thumbs).map(|(_, b)| b).sum(),
            files: outputs.into_iter().map(|(f, _)| f).collect(),
        };
        store
            .keep_outputs(&o, now)
            .await
            .map_err(|e| e.to_string())?;
    }
    images.mark_swept().await.map_err(|e| e.to_string())?;
    if n > 0 {
        tracing::info!(
            jobs = n,
            "pictures left by an earlier version are now swept as outputs"
        );
    }
    Ok(n)
}

/// Sweeps every `--sweep-interval` until `stop`: uploads no record names, and
/// outputs past `--output-ttl` whose records are gone.
pub async fn sweep_loop(
    store: Arc<dyn JobStore>,
    images: Arc<dyn ImageStore>,
    config: Arc<WorkerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    if let Err(e) = adopt_unswept(store.as_ref(), images.as_ref()).await {
        tracing::warn!(error = %e, "cannot look for pictures an earlier version left; next start");
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.sweep_interval) => {}
            _ = signalled(&mut stop) => return,
        }
        loop {
            match sweep_uploads(store.as_ref(), images.as_ref(), config.sweep_grace).await {
                // A full batch: there may be more at once.
                Ok(n) if n >= BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "the upload sweep failed; next pass later");
                    break;
                }
            }
        }
        loop {
            match sweep_outputs(store.as_ref(), images.as_ref(), config.job_ttl).await {
                Ok(n) if n >= BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "the output sweep failed; next pass later");
                    break;
                }
            }
        }
    }
}
