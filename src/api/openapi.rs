//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the response types' `ToSchema` derives.

use utoipa::OpenApi;

use super::{events, health, images, jobs, pages, workflows};

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Studio Core",
        description = "A job API in front of ComfyUI servers. Submit with POST /api/generate, follow with GET /api/status/{job_id} or the live events, fetch the pictures from /images. Every error is JSON: {\"error\", \"code\"} plus \"field\" when a request field is to blame.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        health::health,
        jobs::generate,
        jobs::status,
        jobs::get,
        jobs::list,
        jobs::cancel,
        events::job_events,
        events::all_events,
        workflows::list,
        images::image,
        pages::index,
        pages::docs,
        pages::openapi_json,
        pages::asset,
    ),
    tags(
        (name = "jobs", description = "Submit, follow, list and cancel generation jobs; download their outputs"),
        (name = "events", description = "Live changes as Server-Sent Events"),
        (name = "workflows", description = "The workflows and their parameters"),
        (name = "service", description = "Health"),
        (name = "pages", description = "The studio page and these docs"),
    )
)]
pub struct ApiDoc;
