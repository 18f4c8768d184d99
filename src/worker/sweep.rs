//! Deleting stored files no record names any more: upload files whose every
//! record has expired (content-addressed, so shared by owners: a file goes only
//! when no owner's record names it). One pass every `--sweep-interval` in each
//! worker process; passes on several processes do not collide (the store hands
//! each file to one of them).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock;
use crate::shutdown::signalled;
use crate::storage::ImageStore;
use crate::store::Uploads;
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

/// Sweeps every `every` until `stop`.
pub async fn sweep_loop(
    store: Arc<dyn Uploads>,
    images: Arc<dyn ImageStore>,
    every: Duration,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = signalled(&mut stop) => return,
        }
        loop {
            match sweep_uploads(store.as_ref(), images.as_ref(), grace).await {
                // A full batch: there may be more at once.
                Ok(n) if n >= BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "the upload sweep failed; next pass later");
                    break;
                }
            }
        }
    }
}
