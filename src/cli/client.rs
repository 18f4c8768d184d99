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
    #[arg(
        long,
        global = true,
        env = "STUDIO_SERVER",
        default_value = "http://127.0.0.1:5000"
    )]
    pub server: String,
    /// The API key (`sk_…`), when the server has auth on.
    #[arg(long, global = true, env = "STUDIO_API_KEY", hide_env_values = true)]
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
    /// `Authorization: Bearer <key>`, sent only to the server's own origin.
    key: Option<reqwest::header::HeaderValue>,
}

impl Client {
    pub(super) fn new(server: &ServerUrl) -> Result<Self, Fail> {
        let base = server.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Fail::usage(format!(
                "--server must be an http:// or https:// URL, not {base:?}"
            )));
        }
        let key = match server.api_key.as_deref().filter(|k| !k.is_empty()) {
            Some(key) => {
                let mut v =
                    reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                        .map_err(|_| {
                            Fail::usage("--api-key holds characters a header cannot carry")
                        })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Fail::usage(e.to_string()))?;
        Ok(Client { base, http, key })
    }

    pub(super) fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// A request to `path` (or to an absolute URL the server gave): the key
    /// goes along only to the server's own origin, never to another host a
    /// server (or whoever answers in its place) names.
    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = self.url(path);
        let req = self.http.request(method, &url);
        match &self.key {
            Some(key) if same_origin(&url, &self.base) => {
                req.header(reqwest::header::AUTHORIZATION, key.clone())
            }
            _ => req,
        }
    }

    pub(super) fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    pub(super) fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    pub(super) fn unreachable(&self, e: reqwest::Error) -> Fail {
        Fail::usage(format!("cannot reach Studio Core at {}: {e}", self.base))
    }

    /// Sends a request; a JSON body back, or the server's error message.
    pub(super) async fn call(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), Fail> {
        self.call_within(req, Duration::from_secs(30)).await
    }

    /// [`Client::call`] for a request the server may take `limit` to answer.
    pub(super) async fn call_within(
        &self,
        req: reqwest::RequestBuilder,
        limit: Duration,
    ) -> Result<(u16, Value), Fail> {
        let res = req
            .timeout(limit)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
}

/// Whether `url` is on `base`'s origin (scheme, host and port).
fn same_origin(url: &str, base: &str) -> bool {
    let origin = |u: &str| {
        let (scheme, rest) = u.split_once("://")?;
        let authority = rest.split(['/', '?', '#']).next()?;
        Some((scheme.to_ascii_lowercase(), authority.to_ascii_lowercase()))
    };
    matches!((origin(url), origin(base)), (Some(a), Some(b)) if a == b)
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
        .post("/api/uploads")
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

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn the_key_goes_only_to_the_servers_origin() {
        let base = "http://127.0.0.1:5000";
        assert!(same_origin("http://127.0.0.1:5000/images/j/a.png", base));
        assert!(!same_origin("http://127.0.0.1:5001/x", base));
        assert!(!same_origin("https://127.0.0.1:5000/x", base));
        assert!(!same_origin("http://evil.example/x", base));
        assert!(!same_origin("http://127.0.0.1:5000@evil.example/x", base));
    }
}
