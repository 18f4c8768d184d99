//! The studio page (`/`), the API documentation (`/docs`; the document itself is
//! `openapi.rs`'s) and
//! their static assets, all embedded in the binary: no CDN, no network, works
//! offline and behind a firewall.

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::error::{ApiError, ErrorBody};
use super::extract::PathParams;
use super::guard::PAGE_CSP;

/// The page's files, and Swagger UI (vendored, `web/vendor/swagger-ui/README.md`).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/app.css"),
    ),
    (
        "ops.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/ops.js"),
    ),
    (
        "docs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/docs.js"),
    ),
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/vendor/swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/vendor/swagger-ui/swagger-ui.css"),
    ),
];

/// Pages carry the version in their asset URLs, so assets can be cached for long.
/// Pages allow scripts and styles from this server only (no inline script).
fn page(template: &str) -> Response {
    let html = template.replace("{{VERSION}}", env!("CARGO_PKG_VERSION"));
    (
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
        ],
        Html(html),
    )
        .into_response()
}

/// The studio page.
#[utoipa::path(get, path = "/", tag = "pages",
    responses((status = 200, description = "The studio page", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    page(include_str!("../../web/index.html"))
}

/// Readable API documentation (Swagger UI over `/openapi.json`).
#[utoipa::path(get, path = "/docs", tag = "pages",
    responses((status = 200, description = "The documentation page", content_type = "text/html", body = String)))]
pub async fn docs() -> Response {
    page(include_str!("../../web/docs.html"))
}

/// The operator's view: queue depth and throughput over the last hour, backends,
/// failures (drawn from `GET /api/ops`).
#[utoipa::path(get, path = "/ops", tag = "pages",
    responses((status = 200, description = "The operator's page", content_type = "text/html", body = String)))]
pub async fn ops_page() -> Response {
    page(include_str!("../../web/ops.html"))
}

/// The assets' names, for the documentation.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum AssetName {
    #[schema(rename = "app.js")]
    AppJs,
    #[schema(rename = "app.css")]
    AppCss,
    #[schema(rename = "docs.js")]
    DocsJs,
    #[schema(rename = "ops.js")]
    OpsJs,
    #[schema(rename = "swagger-ui-bundle.js")]
    SwaggerJs,
    #[schema(rename = "swagger-ui.css")]
    SwaggerCss,
}

/// A static file of the page or the docs.
#[utoipa::path(get, path = "/assets/{file}", tag = "pages",
    params(("file" = AssetName, Path, description = "A file of the page or the docs")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
        )),
        (status = 404, description = "No such file", body = ErrorBody),
    ))]
pub async fn asset(PathParams(file): PathParams<String>) -> Result<Response, ApiError> {
    let Some((_, ctype, bytes)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return Err(ApiError::not_found(
            "not-found",
            format!("no asset {file:?}"),
        ));
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, *ctype),
            (header::CACHE_CONTROL, "public, max-age=86400"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *bytes,
    )
        .into_response())
}
