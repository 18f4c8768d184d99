//! Middleware that keeps browsers and careless clients in line:
//! - [`state_changes`]: a request that changes something must come from an allowed
//!   origin and be something no plain HTML form can send (JSON, or a header only a
//!   script sets), so a page on another site cannot make a visitor's browser submit
//!   or cancel jobs (CSRF);
//! - [`security_headers`]: `nosniff`, no framing, no referrer, and a strict
//!   Content-Security-Policy unless a page sets its own;
//! - [`json_errors`]: every error answer is `{"error", "code"}` JSON, including
//!   those axum produces itself as plain text (a path that is not UTF-8, …).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{CorsOrigins, INTENT_HEADERS};

/// The Content-Security-Policy of everything that is not a page: nothing may load,
/// nothing may frame it.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The Content-Security-Policy of our pages: scripts, styles and images only from
/// this server (no inline script), no framing, forms only to this server.
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// Longest plain-text error body turned into JSON (axum's rejections are short).
const MAX_TEXT_ERROR: usize = 4096;

/// Refuses state-changing requests a cross-site page could forge.
pub async fn state_changes(State(cors): State<CorsOrigins>, req: Request, next: Next) -> Response {
    if matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return next.run(req).await;
    }
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !(cors.allows(origin) || same_origin(origin, headers)) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden-origin",
                format!(
                    "requests from the web page at {origin:?} may not change anything here; \
                     the server's --cors-origins must name that origin"
                ),
            )
            .into_response();
        }
    }
    if !is_json(headers) && !INTENT_HEADERS.iter().any(|h| headers.contains_key(*h)) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "a request that changes something must have Content-Type: application/json \
             (or an X-Requested-With header), so that no web form on another site can send it",
        )
        .into_response();
    }
    next.run(req).await
}

/// Whether the body is declared JSON (a type no HTML form can send).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether `origin` is this server as the browser addressed it (its own page).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// Adds the headers every answer should carry, leaving those a handler set.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, API_CSP),
    ] {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
    res
}

/// Rewrites a non-JSON error answer (axum's own rejections are plain text) into the
/// JSON error shape, keeping its status and message.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = match axum::body::to_bytes(body, MAX_TEXT_ERROR).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned()
    } else {
        text
    };
    let mut out = ApiError::new(status, code_for(status), message).into_response();
    // Keep what the original answer said beyond its body (Allow, Retry-After, …).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// A stable code for an error answer that came without one.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers-too-large",
        s if s.is_server_error() => "internal",
        _ => "request-refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_compares_the_host_the_browser_used() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:5000"));
        assert!(same_origin("http://127.0.0.1:5000", &h));
        assert!(!same_origin("http://127.0.0.1:5001", &h));
        assert!(!same_origin("http://evil.example", &h));
        assert!(!same_origin("null", &h));
    }

    #[test]
    fn loopback_origins_and_named_ones() {
        let c = CorsOrigins::parse("loopback");
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "http://127.0.0.1:5173",
            "http://[::1]:8080",
            "https://localhost:8443",
        ] {
            assert!(c.allows(ok), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example:80",
            "http://[::1].evil:80",
            "http://localhost:99999x",
            "null",
            "file://",
        ] {
            assert!(!c.allows(bad), "{bad}");
        }
        let named = CorsOrigins::parse("https://Studio.example/, loopback");
        assert!(named.allows("https://studio.example"));
        assert!(named.allows("http://localhost:3000"));
        let only = CorsOrigins::parse("https://studio.example");
        assert!(!only.allows("http://localhost:3000"));
        assert_eq!(CorsOrigins::parse("https://a, *"), CorsOrigins::Any);
    }
}
