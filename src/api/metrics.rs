//! `GET /metrics`: the process's Prometheus metrics. Open with auth off; with auth
//! on it needs an admin key (Prometheus sends one with `authorization:
//! credentials` in its scrape config).

use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use std::sync::Arc;

use super::access::{Access, Caller, Gate};
use super::error::{ApiError, ErrorBody};
use super::events::StreamLimiter;
use super::{ApiService, AppState, CorsOrigins};
use crate::auth::Identity;
use crate::backends::BackendReport;
use crate::metrics::{CONTENT_TYPE, Metrics, Snapshot};
use crate::store::JobStore;
use crate::transport::ConnStats;

/// How long a scrape waits for the store's counts.
const STORE_WAIT: Duration = Duration::from_secs(1);

/// What a scrape reads.
pub struct Sources {
    pub store: Arc<dyn JobStore>,
    pub backends: Option<Arc<dyn BackendReport>>,
    pub streams: Option<Arc<StreamLimiter>>,
    pub connections: Option<ConnStats>,
    pub metrics: Arc<Metrics>,
}

impl Sources {
    async fn answer(&self, who: &Identity) -> Result<Response, ApiError> {
        if !who.sees_all {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "metrics need an admin key when auth is on",
            ));
        }
        let queue = match tokio::time::timeout(STORE_WAIT, self.store.stats()).await {
            Ok(Ok(q)) => Some(q),
            _ => None,
        };
        let snap = Snapshot {
            queue,
            backends: self
                .backends
                .as_ref()
                .map(|b| b.samples())
                .unwrap_or_default(),
            event_streams: self.streams.as_ref().map(|s| s.open() as u64),
            http_connections: self.connections.as_ref().map(|c| c.open() as u64),
            budgets: tokio::time::timeout(STORE_WAIT, budgets(self.store.as_ref()))
                .await
                .unwrap_or_default(),
        };
        Ok((
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            self.metrics.render(&snap),
        )
            .into_response())
    }
}

/// Every key with a budget: its spend in the windows it has budgets for.
/// Keys are few (each made by an operator); a key without a budget costs no read.
pub async fn budgets(store: &dyn JobStore) -> Vec<crate::metrics::BudgetSample> {
    let Ok(keys) = store.list_keys().await else {
        return Vec::new();
    };
    let now = crate::clock::now_ms();
    let mut out = Vec::new();
    for k in keys.iter().filter(|k| !k.is_revoked()) {
        let (day, month) = (k.limits.gpu_seconds_per_day, k.limits.gpu_seconds_per_month);
        if day.is_none() && month.is_none() {
            continue;
        }
        let Ok(spend) = store.spend(&k.id, now).await else {
            continue;
        };
        for (window, budget, used) in [("day", day, spend.day_ms), ("month", month, spend.month_ms)]
        {
            if let Some(b) = budget {
                out.push(crate::metrics::BudgetSample {
                    key: k.id.clone(),
                    window,
                    used_seconds: used as f64 / 1000.0,
                    budget_seconds: b as f64,
                });
            }
        }
    }
    out
}

/// The process's metrics, in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses(
        (status = 200, description = "Metrics in the OpenMetrics text format (what Prometheus asks for): jobs submitted and completed, wait and run time, queue depth by state, workers, backends up / busy / in flight, HTTP requests by route and status with latency, refusals, event streams, connections", content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "Auth is on and there is no valid key (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "Auth is on and the key is not an admin's (`forbidden`)", body = ErrorBody),
    ))]
pub async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    Sources {
        store: state.store.clone(),
        backends: state.backends.clone(),
        streams: Some(state.streams.clone()),
        connections: state.connections.clone(),
        metrics: state.metrics.clone(),
    }
    .answer(&who)
    .await
}

/// A worker-only process's listener (`--metrics-port`): `/metrics` and nothing
/// else, behind the same gate as the API.
pub fn worker_service(sources: Sources, access: Arc<Access>) -> ApiService {
    let sources = Arc::new(sources);
    let routes = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move |Caller(who): Caller| {
                let sources = sources.clone();
                async move { sources.answer(&who).await }
            }),
        )
        .fallback(|| async {
            ApiError::not_found("not-found", "this worker's port serves /metrics only")
        });
    let cors = CorsOrigins::parse("loopback").layer();
    super::guard::Answers::new(tower::Layer::layer(&cors, Gate::new(routes, access)))
}
