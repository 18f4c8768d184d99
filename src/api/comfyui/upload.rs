//! `POST /upload/image` and `/upload/mask`: a picture into Studio Core's
//! uploads (bounded, checked, counted against the key's quota as
//! `POST /api/uploads` is), answered as ComfyUI answers: `{"name", "subfolder",
//! "type": "input"}`. The name (`<upload id>.<ext>`) is what a graph's
//! `LoadImage` then names; the worker puts the picture on whichever backend
//! runs the prompt. A mask is kept as the picture it is (ComfyUI's server
//! would paint it into its `original_ref`'s alpha; clients that need that use
//! `LoadImageMask` on the mask itself).

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::cross_site;
use crate::api::AppState;
use crate::api::access::Caller;

/// The name ComfyUI's clients give an upload in a graph.
pub fn input_name(upload_id: &str, content_type: &str) -> String {
    let ext = match content_type {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        _ => "png",
    };
    format!("{upload_id}.{ext}")
}

pub async fn upload(State(state): State<AppState>, Caller(who): Caller, req: Request) -> Response {
    if let Some(refused) = cross_site(req.headers()) {
        return refused;
    }
    match crate::api::uploads::receive(&state, &who, req).await {
        Ok(record) => Json(json!({
            "name": input_name(&record.upload_id, &record.content_type),
            "subfolder": "",
            "type": "input",
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}
