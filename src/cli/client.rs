//! What every client command shares: where the server is, the HTTP client (the
//! key goes only to the server's own origin), uploads, and how a command fails.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

/// Where the server is, and the key to present.
#[derive(Args, Clone)]
pub struct ServerUrl {
    /// The Studio Core server.
    #[arg(long, env = "STUDIO_SERVER", default_value = "http://127.0.0.1:5000")]
    pub server: String,
    /// The API key (`sk_…`), when the server has auth on.
    #[arg(long, env = "STUDIO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerUrl")
            .field("server", &self.server)
            .field("api_key", &self.api_key.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Exit codes.
pub(crate) const FAILED: u8 = 1;
pub(crate) const USAGE: u8 = 2;

/// A command that could not do its work: what to print, and the exit code.
pub(crate) struct Fail(pub(crate) u8, pub(crate) String);

impl Fail {
    pub(crate) fn usage(m: impl Into<String>) -> Self {
        Fail(USAGE, m.into())
    }
}

pub(crate) fn finish(r: Result<(), Fail>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("studio: {msg}");
            ExitCode::from(code)
        }
    }
}

pub(super) struct Client {
    pub(super) base: String,
    pub(super) http: reqwest::Client,
}

impl Client {
    pub(super) fn new(server: &ServerUrl) -> Result<Self, Fail> {
        let base = server.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Fail::usage(format!(
                "--server must be an http:// or https:// URL, not {base:?}"
            )));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = server.api_key.as_deref().filter(|k| !k.is_empty()) {
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                    .map_err(|_| Fail::usage("--api-key holds characters a header cannot carry"))?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .default_headers(headers)
            .build()
            .map_err(|e| Fail::usage(e.to_string()))?;
        Ok(Client { base, http })
    }

    pub(super) fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub(super) fn unreachable(&self, e: reqwest::Error) -> Fail {
        Fail::usage(format!("cannot reach Studio Core at {}: {e}", self.base))
    }

    /// Sends a request; a JSON body back, or the server's error message.
    pub(super) async fn call(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), Fail> {
        let res = req
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
}

pub(super) fn server_error(status: u16, body: &Value) -> String {
    match body.get("error").and_then(Value::as_str) {
        Some(e) => format!("{e} (HTTP {status})"),
        None => format!("the server answered HTTP {status}"),
    }
}

/// Uploads a picture (`POST /api/uploads`); its upload id.
pub(super) async fn upload(client: &Client, path: &std::path::Path) -> Result<String, Fail> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| Fail::usage(format!("cannot read {}: {e}", path.display())))?;
    let content_type = crate::uploads::sniff(&bytes).ok_or_else(|| {
        Fail::usage(format!(
            "{} is not a PNG, JPEG or WebP picture",
            path.display()
        ))
    })?;
    let req = client
        .http
        .post(client.url("/api/uploads"))
        .header("content-type", content_type)
        .header("x-requested-with", "studio-cli")
        .body(bytes);
    let (status, v) = client.call(req).await?;
    if status != 201 {
        return Err(Fail::usage(format!(
            "{}: {}",
            path.display(),
            server_error(status, &v)
        )));
    }
    Ok(v["upload_id"].as_str().unwrap_or_default().to_owned())
}
