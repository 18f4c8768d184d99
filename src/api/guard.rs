//! What keeps browsers and careless clients in line:
//! - [`Deliberate`]: a request that changes something must come from an allowed
//!   origin and be something no plain HTML form can send (JSON, or a header only a
//!   script sets), so a page on another site cannot make a visitor's browser submit
//!   or cancel jobs (CSRF);
//! - [`answers`]: every error answer is `{"error", "code"}` JSON, including those
//!   axum produces itself as plain text (a path that is not UTF-8, …); and every
//!   answer carries `nosniff`, no framing, no referrer, and a strict
//!   Content-Security-Policy unless a page sets its own.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::Service;

use super::error::ApiError;
use super::{AppState, INTENT_HEADERS};

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

/// Proof that a state-changing request is not one a cross-site page could forge:
/// it comes from an allowed origin (or none, or this server's own), and it is JSON
/// or carries a header only a script can set. Every handler that changes something
/// takes it (a test checks every non-GET route).
pub struct Deliberate;

impl FromRequestParts<AppState> for Deliberate {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let headers = &parts.headers;
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !(state.cors.allows(origin) || same_origin(origin, headers)) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden-origin",
                    format!(
                        "requests from the web page at {origin:?} may not change anything here; \
                         the server's --cors-origins must name that origin"
                    ),
                ));
            }
        }
        // Only a POST can come from a form or a simple cross-site request: any other
        // method makes the browser ask CORS first.
        if parts.method == axum::http::Method::POST
            && !is_json(headers)
            && !INTENT_HEADERS.iter().any(|h| headers.contains_key(*h))
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "a request that changes something must have Content-Type: application/json \
                 (an upload: the picture's own type, image/png, image/jpeg or image/webp), or \
                 an X-Requested-With header (needed for multipart/form-data uploads), so that \
                 no web form on another site can send it",
            ));
        }
        Ok(Deliberate)
    }
}

/// Whether the body is declared JSON (a type no HTML form can send).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        // JSON, or a picture's own type (an upload): no HTML form can send either.
        .is_some_and(|m| {
            matches!(
                m.as_str(),
                "application/json" | "image/png" | "image/jpeg" | "image/webp"
            )
        })
}

/// Whether `origin` is this server as the browser addressed it (its own page).
pub(crate) fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// What every answer passes through on its way out: a non-JSON error answer (axum's
/// own rejections are plain text) becomes the JSON error shape, keeping its status
/// and message; then the headers every answer should carry are added, leaving
/// those a handler set. A plain tower service around the whole router: it costs a
/// few header inserts per request, and an allocation only for an answer it must
/// rewrite.
#[derive(Clone)]
pub struct Answers<S> {
    inner: S,
}

impl<S> Answers<S> {
    pub fn new(inner: S) -> Self {
        Answers { inner }
    }
}

impl<S, B> Service<axum::http::Request<B>> for Answers<S>
where
    S: Service<axum::http::Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AnswersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let openai = req.uri().path().starts_with("/v1/");
        AnswersFuture::Inner {
            fut: self.inner.call(req),
            openai,
        }
    }
}

pin_project! {
    /// The answer of [`Answers`].
    #[project = Proj]
    pub enum AnswersFuture<F> {
        Inner { #[pin] fut: F, openai: bool },
        Rewrite { fut: Pin<Box<dyn Future<Output = Response> + Send>> },
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for AnswersFuture<F> {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let (res, openai) = match self.as_mut().project() {
                Proj::Inner { fut, openai } => match fut.poll(cx) {
                    Poll::Ready(Ok(res)) => (res, *openai),
                    Poll::Pending => return Poll::Pending,
                },
                Proj::Rewrite { fut } => match fut.as_mut().poll(cx) {
                    Poll::Ready(res) => return Poll::Ready(Ok(with_headers(res))),
                    Poll::Pending => return Poll::Pending,
                },
            };
            let error = res.status().is_client_error() || res.status().is_server_error();
            if openai && error {
                // OpenAI's clients read OpenAI's error shape.
                self.set(AnswersFuture::Rewrite {
                    fut: Box::pin(
                        async move { openai_error(json_error_if_needed(res).await).await },
                    ),
                });
                continue;
            }
            if !needs_rewrite(&res) {
                return Poll::Ready(Ok(with_headers(res)));
            }
            self.set(AnswersFuture::Rewrite {
                fut: Box::pin(json_error(res)),
            });
        }
    }
}

fn with_headers(mut res: Response) -> Response {
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

/// An error answer that is not JSON.
fn needs_rewrite(res: &Response) -> bool {
    let status = res.status();
    (status.is_client_error() || status.is_server_error())
        && !res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
}

async fn json_error_if_needed(res: Response) -> Response {
    if needs_rewrite(&res) {
        json_error(res).await
    } else {
        res
    }
}

/// Our error shape (`{"error", "code", "field"}`) as OpenAI's (`{"error":
/// {"message", "type", "param", "code"}}`); one already in it stays.
async fn openai_error(res: Response) -> Response {
    let status = res.status();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_TEXT_ERROR)
        .await
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let out = if v["error"].is_object() {
        v
    } else {
        serde_json::json!({"error": {
            "message": v["error"].as_str().unwrap_or(status.canonical_reason().unwrap_or("refused")),
            "type": openai_error_type(status),
            "param": v["field"],
            "code": v["code"],
        }})
    };
    let mut res = (status, axum::Json(out)).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            res.headers_mut().insert(name.clone(), value.clone());
        }
    }
    res
}

/// OpenAI's error `type` for an answer's status.
pub(crate) fn openai_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

async fn json_error(res: Response) -> Response {
    let status = res.status();
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
        use super::super::CorsOrigins;
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
