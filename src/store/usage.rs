//! Usage metering: one account per attempt that ended (its GPU-seconds by the
//! backend's own clock, the job's queue wait and outputs on the one that ended
//! the job), kept for `--usage-retention`, and each key's spend per UTC day and
//! month for budgets.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Accounts read by one usage query at most.
pub const MAX_USAGE_ROWS: usize = 200_000;
/// Default of `--usage-retention`.
pub const DEFAULT_USAGE_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);

/// What one attempt at a job used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub job_id: String,
    pub attempt: u32,
    /// The API key that submitted it ("" for none).
    pub owner: String,
    pub workflow: String,
    /// The published version it ran (absent for a built-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The ComfyUI backend it ran on.
    pub backend: String,
    /// The backend's GPU, as its `/system_stats` names it ("" if unknown).
    pub gpu: String,
    /// The backend's run time for the prompt, in ms.
    pub gpu_ms: u64,
    /// From submission to its first start, in ms (on the account that ended the
    /// job; 0 on the others).
    pub wait_ms: u64,
    /// Bytes of the pictures it produced.
    pub output_bytes: u64,
    /// `finished`, `failed`, `cancelled`, or `retried` (an attempt that did not
    /// end the job).
    pub outcome: String,
    /// When the attempt ended (ms since the epoch).
    pub ended_ms: u64,
}

/// A key's GPU time in the current UTC day and month, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    pub day_ms: u64,
    pub month_ms: u64,
}

/// Usage accounts. Safe to call from many tasks and processes at once.
#[async_trait]
pub trait Usage: Send + Sync + 'static {
    /// Records an attempt's account once: `false` when that attempt of that job
    /// has one already (nothing counted twice).
    async fn record_usage(&self, r: &UsageRecord) -> Result<bool, StoreError>;

    /// Accounts that ended in `[from_ms, to_ms)`, of `owner` only when given;
    /// at most `max`.
    async fn usage(
        &self,
        from_ms: u64,
        to_ms: u64,
        owner: Option<&str>,
        max: usize,
    ) -> Result<Vec<UsageRecord>, StoreError>;

    /// `owner`'s GPU time in the UTC day and month of `now_ms`.
    async fn spend(&self, owner: &str, now_ms: u64) -> Result<Spend, StoreError>;
}

/// The UTC day of `ms`: days since the epoch.
pub fn day_of(ms: u64) -> u64 {
    ms / 86_400_000
}

/// `YYYY-MM-DD` of a day since the epoch.
pub fn day_name(day: u64) -> String {
    let (y, m, d) = crate::clock::civil_from_days(day as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM` of `ms`.
pub fn month_name(ms: u64) -> String {
    let (y, m, _) = crate::clock::civil_from_days(day_of(ms) as i64);
    format!("{y:04}-{m:02}")
}

/// The first ms of the UTC month of `ms`.
pub fn month_start_ms(ms: u64) -> u64 {
    let (y, m, _) = crate::clock::civil_from_days(day_of(ms) as i64);
    days_from_civil(y, m, 1) as u64 * 86_400_000
}

/// The first ms of the next UTC month after `ms`.
pub fn next_month_ms(ms: u64) -> u64 {
    let (y, m, _) = crate::clock::civil_from_days(day_of(ms) as i64);
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1) as u64 * 86_400_000
}

/// (year, month, day) → days since the epoch.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_days_and_months() {
        // 2026-12-04T10:00:00Z
        let ms = 1_796_378_400_000;
        assert_eq!(day_name(day_of(ms)), "2026-12-04");
        assert_eq!(month_name(ms), "2026-12");
        assert_eq!(day_name(day_of(month_start_ms(ms))), "2026-12-01");
        assert_eq!(day_name(day_of(next_month_ms(ms))), "2027-01-01");
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(day_of(951_782_400_000)), "2000-02-29");
        for d in [0i64, 59, 60, 10_957, 20_000, 30_000] {
            let (y, m, dd) = crate::clock::civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
