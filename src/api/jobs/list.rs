//! `GET /api/jobs`: recent jobs, newest first, a page at a time.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::extract::QueryParams;
use crate::auth::Identity;
use crate::job::{JobRecord, JobStatus, JobView};
use crate::store::ListQuery;

/// Jobs per page of `GET /api/jobs` when the request does not say.
pub const DEFAULT_PAGE: usize = 20;
/// Most jobs per page.
pub const MAX_PAGE: usize = 100;
/// Largest cursor: sequence numbers stay below 2^53, so they are exact as JSON
/// numbers, SQLite integers and Redis scores alike (both stores answer the same).
pub const MAX_CURSOR: u64 = (1 << 53) - 1;

/// Query of `GET /api/jobs`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs in this state.
    #[param(value_type = Option<ListStatus>)]
    status: Option<String>,
    /// Jobs per page, 1–100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 9007199254740991_u64)]
    cursor: Option<String>,
    /// Only the jobs of this batch (`POST /api/batches`), newest first.
    #[param(value_type = Option<String>, pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    batch_id: Option<String>,
}

/// The states a listing can be filtered by.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ListStatus {
    Queued,
    Processing,
    Finished,
    Failed,
}

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
pub struct JobPage<'a> {
    pub jobs: Vec<JobView<'a>>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Recent jobs, newest first.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", operation_id = "list_jobs", params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "A bad query parameter (`invalid-status`, `invalid-limit`, `invalid-cursor`, `invalid-batch-id`, `invalid-query`)", body = ErrorBody),
        (status = 404, description = "`batch_id` names no batch this caller can see (`batch-not-found`)", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Caller(who): Caller,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Response, ApiError> {
    let status = match p.status.as_deref() {
        None => None,
        Some(s @ ("queued" | "processing" | "finished" | "failed")) => Some(JobStatus::parse(s)),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid-status",
                format!(
                    "status must be one of queued, processing, finished, failed (got {other:?})"
                ),
            )
            .with_field("status"));
        }
    };
    let limit = match p.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid-limit",
                    format!("limit must be an integer from 1 to {MAX_PAGE} (got {s:?})"),
                )
                .with_field("limit"));
            }
        },
    };
    let cursor = match p.cursor.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<u64>()
                .ok()
                .filter(|c| *c <= MAX_CURSOR)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid-cursor",
                        format!(
                            "cursor must be a next_cursor value from a previous page (an integer from 0 to {MAX_CURSOR})"
                        ),
                    )
                    .with_field("cursor")
                })?,
        ),
    };
    if let Some(batch) = p.batch_id.as_deref() {
        return of_batch(&state, &who, batch, status, limit, cursor).await;
    }
    let page = state
        .with_timeout(state.store.list(&ListQuery {
            status,
            limit,
            cursor,
            owner: (!who.sees_all).then(|| who.owner().to_owned()),
        }))
        .await?;
    let signing = state.signing().await?;
    Ok(Json(JobPage {
        jobs: page
            .jobs
            .iter()
            .map(|j| JobView::new(j, None, signing.as_ref(), who.sees_all))
            .collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
    .into_response())
}

/// A page of a batch's jobs, newest first; the cursor counts jobs skipped.
async fn of_batch(
    state: &AppState,
    who: &Identity,
    batch: &str,
    status: Option<JobStatus>,
    limit: usize,
    cursor: Option<u64>,
) -> Result<Response, ApiError> {
    let (_, jobs) = crate::api::batches::read(state, who, batch).await?;
    let matching: Vec<&JobRecord> = jobs
        .iter()
        .rev()
        .flatten()
        .filter(|j| status.as_ref().is_none_or(|s| &j.status == s))
        .collect();
    let skip = cursor.unwrap_or(0).min(matching.len() as u64) as usize;
    let end = (skip + limit).min(matching.len());
    let signing = state.signing().await?;
    Ok(Json(JobPage {
        jobs: matching[skip..end]
            .iter()
            .map(|j| JobView::new(j, None, signing.as_ref(), who.sees_all))
            .collect(),
        next_cursor: (end < matching.len()).then(|| end.to_string()),
    })
    .into_response())
}
