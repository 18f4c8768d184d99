//! `GET /health`: 200 when the store answers, 503 (with what is down) otherwise.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::store::StoreKind;

/// The prototype's `{"status": "ok", "redis": "healthy"}`, plus the store kind,
/// version, queue counts and (with workers in this process) the backends.
pub async fn health(State(state): State<AppState>) -> Response {
    let kind = state.store.kind();
    let checked = match state.with_timeout(state.store.ping()).await {
        Ok(()) => state.with_timeout(state.store.stats()).await.map(Some),
        Err(e) => Err(e),
    };
    let redis_word = |ok: bool, err: &str| match (kind, ok) {
        (StoreKind::Sqlite, _) => "not used (embedded store)".to_owned(),
        (StoreKind::Redis, true) => "healthy".to_owned(),
        (StoreKind::Redis, false) => format!("unavailable: {err}"),
    };
    let backends = state.backends.as_ref().map(|b| b.snapshot());
    match checked {
        Ok(stats) => {
            let mut body = json!({
                "status": "ok",
                "redis": redis_word(true, ""),
                "store": kind.as_str(),
                "version": env!("CARGO_PKG_VERSION"),
                "queue": stats,
            });
            if let Some(b) = backends {
                body["backends"] = b;
            }
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            let mut body = json!({
                "status": "unavailable",
                "redis": redis_word(false, &e.message),
                "store": kind.as_str(),
                "version": env!("CARGO_PKG_VERSION"),
                "error": format!("the {} store is unavailable: {}", kind.as_str(), e.message),
            });
            if let Some(b) = backends {
                body["backends"] = b;
            }
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
