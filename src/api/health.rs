//! `GET /health`: 200 when the store answers, 503 (with what is down) otherwise.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access::Caller;
use crate::backends::BackendState;
use crate::store::{QueueStats, StoreKind};

/// The prototype's `{"status": "ok", "redis": "healthy"}`, plus more.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the store does not answer.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// `healthy`, `unavailable: <why>`, or `not used (embedded store)`.
    #[schema(example = "healthy")]
    pub redis: String,
    /// `redis` or `sqlite`.
    pub store: &'static str,
    pub version: &'static str,
    /// Queue counts (when the store answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStats>,
    /// The ComfyUI backends of the workers in this process, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<Vec<BackendState>>,
    /// What is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// This process's HTTP connections and event streams, against their caps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsState>,
}

/// Open HTTP connections and event streams, with their caps.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LimitsState {
    pub connections: usize,
    pub max_connections: usize,
    pub streams: usize,
    pub max_streams: usize,
    pub max_streams_per_client: usize,
}

/// Health of the store and of this process's backends.
#[utoipa::path(get, path = "/health", tag = "service",
    responses(
        (status = 200, description = "The store answers", body = Health),
        (status = 503, description = "The store does not answer (within about a second)", body = Health),
    ))]
pub async fn health(State(state): State<AppState>, Caller(who): Caller) -> Response {
    let kind = state.store.kind();
    let checked = match state.with_timeout(state.store.ping()).await {
        Ok(()) => state.with_timeout(state.store.stats()).await,
        Err(e) => Err(e),
    };
    let mut body = Health {
        status: "ok",
        redis: String::new(),
        store: kind.as_str(),
        version: env!("CARGO_PKG_VERSION"),
        queue: None,
        backends: state.backends.as_ref().map(|b| {
            let mut list = b.snapshot();
            // Internal addresses and raw errors are for admins (anyone, with auth off).
            if !who.sees_all {
                for (i, s) in list.iter_mut().enumerate() {
                    s.url = format!("backend {}", i + 1);
                    s.last_error = if s.last_error.is_empty() {
                        String::new()
                    } else {
                        "(an admin key shows the error)".into()
                    };
                    s.device = String::new();
                    if let Some(p) = &mut s.process {
                        p.log = String::new();
                        p.log_tail = Vec::new();
                    }
                }
            }
            list
        }),
        error: None,
        limits: state.connections.as_ref().map(|c| {
            let (max_streams, max_streams_per_client) = state.streams.caps();
            LimitsState {
                connections: c.open(),
                max_connections: c.limits.max_connections,
                streams: state.streams.open(),
                max_streams,
                max_streams_per_client,
            }
        }),
    };
    let code = match checked {
        Ok(stats) => {
            body.queue = Some(stats);
            StatusCode::OK
        }
        Err(e) => {
            body.status = "unavailable";
            body.error = Some(format!(
                "the {} store is unavailable: {}",
                kind.as_str(),
                e.message
            ));
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    body.redis = match (kind, &body.error) {
        (StoreKind::Sqlite, _) => "not used (embedded store)".to_owned(),
        (StoreKind::Redis, None) => "healthy".to_owned(),
        (StoreKind::Redis, Some(e)) => format!("unavailable: {e}"),
    };
    (code, Json(body)).into_response()
}
