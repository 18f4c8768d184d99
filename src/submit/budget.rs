//! A key's GPU budget and storage quota: over its GPU-seconds for the UTC day
//! (or month), its submissions are refused until the window turns (running jobs
//! finish); over `--max-stored-bytes` of pictures, until some are deleted.

use super::{Rejection, SubmitError, Submitter};
use crate::auth::Identity;
use crate::clock;
use crate::store::usage::{day_of, next_month_ms};

impl Submitter {
    /// Refuses a submission of a key over its budget (`429 budget-exhausted`,
    /// with `Retry-After` until the window turns). One store read, only for keys
    /// that have a budget.
    pub(super) async fn within_budget(&self, who: &Identity) -> Result<(), SubmitError> {
        let Some(key) = &who.key else { return Ok(()) };
        if let Some(max) = self.max_stored_bytes {
            let stored = self.within(self.store.stored_bytes(&key.id)).await?;
            if stored >= max {
                return Err(Rejection::new(
                    413,
                    "storage-quota",
                    format!(
                        "this key has {stored} bytes of pictures stored, its quota is {max} (--max-stored-bytes); delete some (DELETE /api/jobs/<id>) or wait for them to expire"
                    ),
                )
                .into());
            }
        }
        let (per_day, per_month) = (
            key.limits.gpu_seconds_per_day,
            key.limits.gpu_seconds_per_month,
        );
        if per_day.is_none() && per_month.is_none() {
            return Ok(());
        }
        let now = clock::now_ms();
        let spend = self.within(self.store.spend(&key.id, now)).await?;
        let over = |budget: Option<u64>, spent_ms: u64| budget.filter(|b| spent_ms >= b * 1000);
        let refuse = |budget: u64, spent_ms: u64, window: &str, turns_ms: u64| {
            let secs = turns_ms.saturating_sub(now).div_ceil(1000).max(1);
            SubmitError::from(
                Rejection::new(
                    429,
                    "budget-exhausted",
                    format!(
                        "this key has used {:.1} of its {budget} GPU-seconds for this {window} (UTC); it may submit again when the {window} turns, in {secs} s",
                        spent_ms as f64 / 1000.0
                    ),
                )
                .retry_after(secs),
            )
        };
        if let Some(b) = over(per_day, spend.day_ms) {
            return Err(refuse(
                b,
                spend.day_ms,
                "day",
                (day_of(now) + 1) * 86_400_000,
            ));
        }
        if let Some(b) = over(per_month, spend.month_ms) {
            return Err(refuse(b, spend.month_ms, "month", next_month_ms(now)));
        }
        Ok(())
    }
}
