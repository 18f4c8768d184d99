//! `GET /api/usage`: who used how much GPU, summed from the usage accounts
//! (admins see every key, a key its own), as JSON or CSV.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::access::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::QueryParams;
use crate::clock;
use crate::store::usage::{day_name, day_of};
use crate::store::{MAX_USAGE_ROWS, UsageRecord};

/// Query of `GET /api/usage`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// From this instant (RFC 3339) or UTC day (`YYYY-MM-DD`), inclusive
    /// (default: 30 days before `to`; at most 800 days before it). A range that
    /// ends before it starts holds nothing.
    from: Option<String>,
    /// Until this instant, exclusive, or through this UTC day (default: now).
    to: Option<String>,
    /// `key`, `workflow`, `day` or `backend` (default `key`).
    #[param(value_type = Option<GroupBy>)]
    group_by: Option<String>,
    /// Only this key's usage (admins; a key sees only its own anyway).
    key: Option<String>,
}

/// What usage can be grouped by.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum GroupBy {
    Key,
    Workflow,
    Day,
    Backend,
}

/// The usage of one group.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct UsageGroup {
    /// The key id, workflow (`name` or `name@version`), UTC day, or backend.
    pub group: String,
    /// Jobs that ended (finished, failed or cancelled).
    pub jobs: u64,
    pub finished: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Attempts that ran, retried ones included.
    pub attempts: u64,
    /// The backends' run time for the prompts.
    pub gpu_seconds: f64,
    /// Time the jobs waited in the queue, in all.
    pub wait_seconds: f64,
    pub output_bytes: u64,
    /// The GPUs it ran on (by `backend`: that backend's).
    pub gpus: Vec<String>,
}

/// Usage over a time range.
#[derive(Serialize, ToSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub group_by: String,
    pub groups: Vec<UsageGroup>,
    pub total: UsageGroup,
}

/// A time from the query: RFC 3339, or a UTC day (its start; `end_of_day`: the
/// start of the next).
fn instant(s: &str, field: &str, end_of_day: bool) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid-time",
            format!(
                "{field} must be an RFC 3339 time (2026-12-04T10:00:00Z) or a day (2026-12-04)"
            ),
        )
        .with_field(field)
    };
    if s.len() == 10 {
        let ms = clock::parse_iso8601_ms(&format!("{s}T00:00:00Z")).ok_or_else(bad)?;
        return Ok(if end_of_day { ms + 86_400_000 } else { ms });
    }
    clock::parse_iso8601_ms(s).ok_or_else(bad)
}

/// Sums the accounts into groups.
pub fn report(rows: &[UsageRecord], group_by: &str) -> (Vec<UsageGroup>, UsageGroup) {
    let mut groups: BTreeMap<String, UsageGroup> = BTreeMap::new();
    let mut total = UsageGroup {
        group: "total".into(),
        ..UsageGroup::default()
    };
    for r in rows {
        let name = match group_by {
            "workflow" => match r.version {
                Some(v) => format!("{}@{v}", r.workflow),
                None => r.workflow.clone(),
            },
            "day" => day_name(day_of(r.ended_ms)),
            "backend" => r.backend.clone(),
            _ => r.owner.clone(),
        };
        let g = groups.entry(name.clone()).or_insert_with(|| UsageGroup {
            group: name,
            ..UsageGroup::default()
        });
        for g in [g, &mut total] {
            g.attempts += 1;
            match r.outcome.as_str() {
                "finished" => g.finished += 1,
                "failed" => g.failed += 1,
                "cancelled" => g.cancelled += 1,
                _ => {}
            }
            if r.outcome != "retried" {
                g.jobs += 1;
            }
            g.gpu_seconds += r.gpu_ms as f64 / 1000.0;
            g.wait_seconds += r.wait_ms as f64 / 1000.0;
            g.output_bytes += r.output_bytes;
            if !r.gpu.is_empty() && !g.gpus.contains(&r.gpu) && g.gpus.len() < 16 {
                g.gpus.push(r.gpu.clone());
            }
        }
    }
    (groups.into_values().collect(), total)
}

/// A CSV field, quoted when it must be (RFC 4180), and never read as a formula
/// by a spreadsheet.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn to_csv(r: &UsageReport) -> String {
    let mut out = String::from(
        "group,jobs,finished,failed,cancelled,attempts,gpu_seconds,wait_seconds,output_bytes,gpus\r\n",
    );
    for g in r.groups.iter().chain(std::iter::once(&r.total)) {
        out.push_str(&format!(
            "{},{},{},{},{},{},{:.3},{:.3},{},{}\r\n",
            csv_field(&g.group),
            g.jobs,
            g.finished,
            g.failed,
            g.cancelled,
            g.attempts,
            g.gpu_seconds,
            g.wait_seconds,
            g.output_bytes,
            csv_field(&g.gpus.join(";"))
        ));
    }
    out
}

/// Usage over a time range, grouped: GPU-seconds (the backends' own run time
/// for the prompts, every attempt), queue wait, outputs, outcomes. `Accept:
/// text/csv` answers CSV.
#[utoipa::path(get, path = "/api/usage", tag = "usage", operation_id = "usage", params(UsageParams),
    responses(
        (status = 200, description = "Usage by group, and the total (as CSV, one line per group and a last `total` line, with `Accept: text/csv`)", content(
            (UsageReport = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "A bad query parameter (`invalid-time`, `invalid-group-by`, `invalid-query`)", body = ErrorBody),
        (status = 403, description = "A key asking for another key's usage (`forbidden`)", body = ErrorBody),
        (status = 413, description = "More accounts than one answer sums (`too-many-accounts`): narrow the range", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ))]
pub async fn usage(
    State(state): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    QueryParams(p): QueryParams<UsageParams>,
) -> Result<Response, ApiError> {
    let now = clock::now_ms();
    let to = match p.to.as_deref() {
        Some(s) => instant(s, "to", true)?,
        None => now,
    };
    let from = match p.from.as_deref() {
        Some(s) => instant(s, "from", false)?,
        None => to.saturating_sub(30 * 86_400_000),
    };
    // Accounts are kept at most `--usage-retention` (400 days by default): a
    // wider range reads no more than 800 days, and none of the future.
    let to = to.min(now + 86_400_000);
    let from = from.max(to.saturating_sub(800 * 86_400_000));
    let group_by = match p.group_by.as_deref() {
        None => "key",
        Some(g @ ("key" | "workflow" | "day" | "backend")) => g,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-group-by",
                format!("group_by must be key, workflow, day or backend (got {other:?})"),
            )
            .with_field("group_by"));
        }
    };
    let owner = match (&p.key, who.sees_all) {
        (Some(k), true) => Some(k.clone()),
        (None, true) => None,
        (Some(k), false) if k != who.owner() => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a key sees only its own usage",
            )
            .with_field("key"));
        }
        (_, false) => Some(who.owner().to_owned()),
    };
    let rows = state
        .with_timeout(
            state
                .store
                .usage(from, to, owner.as_deref(), MAX_USAGE_ROWS + 1),
        )
        .await?;
    if rows.len() > MAX_USAGE_ROWS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-many-accounts",
            format!("more than {MAX_USAGE_ROWS} accounts in this range; ask for a shorter one"),
        ));
    }
    let (groups, total) = report(&rows, group_by);
    let body = UsageReport {
        from: clock::iso8601(from * 1000),
        to: clock::iso8601(to * 1000),
        group_by: group_by.to_owned(),
        groups,
        total,
    };
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    if csv {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&body),
        )
            .into_response());
    }
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(owner: &str, gpu_ms: u64, outcome: &str) -> UsageRecord {
        UsageRecord {
            job_id: "j".into(),
            attempt: 1,
            owner: owner.into(),
            workflow: "sdxl".into(),
            version: None,
            backend: "http://gpu1:8188".into(),
            gpu: "RTX 4090".into(),
            gpu_ms,
            wait_ms: 500,
            output_bytes: 10,
            outcome: outcome.into(),
            ended_ms: 1_796_378_400_000,
        }
    }

    #[test]
    fn groups_sum_attempts_and_count_jobs_once() {
        let rows = [
            row("a", 1500, "retried"),
            row("a", 2000, "finished"),
            row("b", 1000, "failed"),
        ];
        let (groups, total) = report(&rows, "key");
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].jobs, groups[0].attempts), (1, 2));
        assert!((groups[0].gpu_seconds - 3.5).abs() < 1e-9);
        assert_eq!(total.jobs, 2);
        assert_eq!((total.finished, total.failed), (1, 1));
        let (by_day, _) = report(&rows, "day");
        assert_eq!(by_day[0].group, "2026-12-04");
        let csv = to_csv(&UsageReport {
            from: String::new(),
            to: String::new(),
            group_by: "key".into(),
            groups,
            total,
        });
        assert!(csv.starts_with("group,jobs,"));
        assert!(
            csv.contains("\r\na,1,1,0,0,2,3.500,1.000,20,RTX 4090\r\n"),
            "{csv}"
        );
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
