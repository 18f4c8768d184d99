//! ComfyUI's own frontend on the ComfyUI-compatible port: its files
//! (`--comfyui-frontend DIR`, by default the `comfyui_frontend_package` of the
//! launched ComfyUI's Python), a login page that keeps the key in an HttpOnly
//! cookie (a browser can send neither `X-API-Key` nor a bearer token on a
//! WebSocket), and the routes the frontend reads that belong to one machine
//! (users, settings, saved workflows), answered as a single-user ComfyUI would.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::{Map, Value, json};

use super::paths::KEY_COOKIE;
use crate::api::AppState;
use crate::api::access::Caller;
use crate::api::extract::{PathParams, read_body};
use crate::auth::Identity;

/// What ComfyUI's frontend may load: its own files, pictures and workers from
/// blobs, its API and WebSocket on this port.
const FRONTEND_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' data: blob:; \
     font-src 'self' data:; connect-src 'self' ws: wss: data: blob:; worker-src 'self' blob:; \
     frame-ancestors 'none'; form-action 'self'";
/// The login page: its inline style, a form to this port.
const LOGIN_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'";

/// The largest frontend file served.
const MAX_FILE: u64 = 64 << 20;
/// Settings kept per key, in this process: at most this many keys, each at most
/// this many bytes of settings.
const MAX_SETTINGS_OWNERS: usize = 1000;
const MAX_SETTINGS_BYTES: usize = 256 << 10;

/// What the frontend needs beyond the API: where its files are, and each key's
/// settings.
#[derive(Default)]
pub struct Frontend {
    pub dir: Option<PathBuf>,
    /// Comfy-Org's workflow templates (`comfyui-workflow-templates`), served at
    /// `/templates/` as ComfyUI serves them, when installed beside the frontend.
    templates: Option<PathBuf>,
    settings: Mutex<HashMap<String, Map<String, Value>>>,
}

impl Frontend {
    pub fn new(dir: Option<PathBuf>) -> Self {
        let templates = dir
            .as_deref()
            .and_then(|d| d.parent()?.parent().map(Path::to_path_buf))
            .map(|site| site.join("comfyui_workflow_templates/templates"))
            .filter(|t| t.is_dir());
        Frontend {
            dir,
            templates,
            settings: Mutex::default(),
        }
    }
}

/// The frontend's file for a request path, if it is one (no `..`, no absolute
/// path, no hidden file).
fn file_of(dir: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let p = Path::new(rel);
    let clean = p.components().all(|c| match c {
        Component::Normal(s) => !s.to_string_lossy().starts_with('.'),
        _ => false,
    });
    clean.then(|| dir.join(p))
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "wasm" => "application/wasm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A file of the frontend (`GET /` is its page). Without a key when one is
/// needed, the page sends the browser to the login page.
pub async fn file(State(state): State<AppState>, Caller(who): Caller, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some(dir) = state.comfyui.dir.as_deref() else {
        return (
            StatusCode::NOT_FOUND,
            Html(
                "<!doctype html><title>Studio Core</title><p>ComfyUI's frontend is not installed here: \
                 start Studio Core with <code>--comfyui-frontend DIR</code> (the <code>static</code> \
                 directory of the <code>comfyui-frontend-package</code> from PyPI), or with \
                 <code>--comfyui-launch</code>. ComfyUI's API is served at this port.</p>",
            ),
        )
            .into_response();
    };
    if (path == "/" || path == "/index.html") && needs_login(&state, &who) {
        return Redirect::to("/login").into_response();
    }
    let found = match (path.strip_prefix("/templates/"), &state.comfyui.templates) {
        (Some(rest), Some(t)) => file_of(t, rest),
        _ => file_of(dir, &path),
    };
    let Some(file) = found else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let meta = match tokio::fs::metadata(&file).await {
        Ok(m) if m.is_file() && m.len() <= MAX_FILE => m,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let _ = meta;
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let cache = if path == "/" || path.ends_with(".html") {
                "no-cache"
            } else {
                "public, max-age=3600"
            };
            (
                [
                    (header::CONTENT_TYPE, content_type(&file)),
                    (header::CACHE_CONTROL, cache),
                    (header::CONTENT_SECURITY_POLICY, FRONTEND_CSP),
                    // Its requests carry their real Origin (`no-referrer`
                    // makes a browser send "null"), which this port checks.
                    (header::REFERRER_POLICY, "same-origin"),
                ],
                bytes,
            )
                .into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Whether this caller must log in first: keys are required and it has none.
fn needs_login(state: &AppState, who: &Identity) -> bool {
    state.access.keys_required() && who.key.is_none()
}

const LOGIN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Studio Core: sign in</title>
<style>body{font:16px system-ui,sans-serif;background:#202020;color:#ddd;display:grid;place-items:center;height:100vh;margin:0}
form{background:#2b2b2b;padding:2em;border-radius:8px;display:grid;gap:.8em;min-width:20em}
input,button{font:inherit;padding:.5em;border-radius:4px;border:1px solid #555;background:#1a1a1a;color:#eee}
button{background:#3a6ea5;border:0;cursor:pointer}.err{color:#f88}</style></head>
<body><form method="post" action="/login">
<h1 style="margin:0;font-size:1.3em">ComfyUI on Studio Core</h1>
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
ERROR
<button id="sign-in" type="submit">Sign in</button>
</form></body></html>"#;

/// `GET /login`: the login page.
pub async fn login_page() -> Response {
    (
        [
            (header::CONTENT_SECURITY_POLICY, LOGIN_CSP),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        Html(LOGIN_PAGE.replace("ERROR", "")),
    )
        .into_response()
}

/// `POST /login` (a form with `key`): checks the key and keeps it in an
/// HttpOnly, SameSite=Strict cookie for the frontend's requests and its
/// WebSocket, then sends the browser to the frontend.
pub async fn login(State(state): State<AppState>, req: Request) -> Response {
    if let Some(refused) = super::cross_site(req.headers()) {
        return refused;
    }
    let secure = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"))
        || state.public_url.starts_with("https://");
    let body = match read_body(req, 4096, state.body_timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let key = form_field(&body, "key").unwrap_or_default();
    // The page again, with the reason (a 200: error answers are JSON here).
    let refused = |m: &str| {
        (
            StatusCode::OK,
            [
                (header::CONTENT_SECURITY_POLICY, LOGIN_CSP),
                (header::REFERRER_POLICY, "same-origin"),
            ],
            Html(LOGIN_PAGE.replace("ERROR", &format!("<p class=\"err\">{m}</p>"))),
        )
            .into_response()
    };
    if key.is_empty() || key.len() > 512 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return refused("That is not an API key.");
    }
    match state.access.check_key(&key).await {
        Ok(true) => {}
        Ok(false) => return refused("That key is not valid (or has been revoked)."),
        Err(e) => return e.into_response(),
    }
    let cookie = format!(
        "{KEY_COOKIE}={key}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000{}",
        if secure { "; Secure" } else { "" }
    );
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// A field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            out.push(b' ');
        } else if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 2;
        } else {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /users`: one user per key, already set up (single-user mode).
pub async fn users(_: Caller) -> Response {
    Json(json!({"storage": "server", "migrated": true})).into_response()
}

/// `GET /settings`: the caller's settings, as this process keeps them.
pub async fn settings(State(state): State<AppState>, Caller(who): Caller) -> Response {
    let all = state.comfyui.settings.lock().expect("settings");
    Json(all.get(who.owner()).cloned().unwrap_or_default()).into_response()
}

/// `GET /settings/{id}`: one setting, or null.
pub async fn setting(
    State(state): State<AppState>,
    Caller(who): Caller,
    PathParams(id): PathParams<String>,
) -> Response {
    let all = state.comfyui.settings.lock().expect("settings");
    let v = all
        .get(who.owner())
        .and_then(|m| m.get(&id))
        .cloned()
        .unwrap_or(Value::Null);
    Json(v).into_response()
}

fn keep(state: &AppState, who: &Identity, changes: Map<String, Value>) -> Response {
    let mut all = state.comfyui.settings.lock().expect("settings");
    if !all.contains_key(who.owner()) && all.len() >= MAX_SETTINGS_OWNERS {
        return (
            StatusCode::INSUFFICIENT_STORAGE,
            Json(json!({"error": "too many users' settings kept"})),
        )
            .into_response();
    }
    let mine = all.entry(who.owner().to_owned()).or_default();
    let mut next = mine.clone();
    next.extend(changes);
    if Value::Object(next.clone()).to_string().len() > MAX_SETTINGS_BYTES {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"error": format!("settings are kept up to {MAX_SETTINGS_BYTES} bytes")})),
        )
            .into_response();
    }
    *mine = next;
    StatusCode::OK.into_response()
}

/// `POST /settings`: settings to keep (an object of them).
pub async fn save_settings(
    State(state): State<AppState>,
    Caller(who): Caller,
    req: Request,
) -> Response {
    match json_body(&state, req).await {
        Ok(Value::Object(m)) => keep(&state, &who, m),
        Ok(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "settings are an object"})),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// `POST /settings/{id}`: one setting to keep.
pub async fn save_setting(
    State(state): State<AppState>,
    Caller(who): Caller,
    PathParams(id): PathParams<String>,
    req: Request,
) -> Response {
    match json_body(&state, req).await {
        Ok(v) => keep(&state, &who, Map::from_iter([(id, v)])),
        Err(r) => r,
    }
}

async fn json_body(state: &AppState, req: Request) -> Result<Value, Response> {
    if let Some(refused) = super::cross_site(req.headers()) {
        return Err(refused);
    }
    let body = read_body(req, MAX_SETTINGS_BYTES, state.body_timeout)
        .await
        .map_err(IntoResponse::into_response)?;
    serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("not JSON: {e}")})),
        )
            .into_response()
    })
}

/// `GET /userdata?dir=`, `GET /v2/userdata`: no saved files (workflows are
/// saved in the browser, or published with `POST /api/workflows` on Studio
/// Core's own port).
pub async fn userdata_list(_: Caller) -> Response {
    Json(json!([])).into_response()
}

/// `GET /userdata/{file}`: none kept.
pub async fn userdata_file(_: Caller) -> Response {
    StatusCode::NOT_FOUND.into_response()
}

/// `POST /userdata/{file}`: not kept on a farm; answered as ComfyUI answers a
/// save, so the frontend goes on.
pub async fn userdata_save(_: Caller, PathParams(file): PathParams<String>) -> Response {
    Json(json!({"path": file, "size": 0, "modified": crate::clock::now_ms()})).into_response()
}

/// `GET /extensions`: no extension scripts (custom nodes' web directories live
/// on the backends).
pub async fn extensions(_: Caller) -> Response {
    Json(json!([])).into_response()
}

/// `GET /i18n`, `GET /workflow_templates`: none beyond the frontend's own.
pub async fn empty_object(_: Caller) -> Response {
    Json(json!({})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_frontends_own_files() {
        let d = Path::new("/srv/front");
        assert_eq!(file_of(d, "/"), Some(d.join("index.html")));
        assert_eq!(file_of(d, "/assets/a.js"), Some(d.join("assets/a.js")));
        for bad in ["/../etc/passwd", "/assets/../../x", "/.git/config", "/.env"] {
            assert!(file_of(d, bad).is_none(), "{bad}");
        }
        assert_eq!(
            file_of(d, "//etc/passwd"),
            Some(d.join("etc/passwd")),
            "under the directory"
        );
    }

    #[test]
    fn forms_decode() {
        assert_eq!(
            form_field(b"key=sk_a%2Bb&x=1", "key").as_deref(),
            Some("sk_a+b")
        );
        assert_eq!(form_field(b"x=1", "key"), None);
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
