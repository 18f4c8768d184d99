//! The client commands: `studio generate`, `status`, `cancel`, `jobs`. They talk to
//! a running server over its public API. Exit codes: 0 finished (or done), 1 the job
//! failed, 2 a usage or connection error (message on stderr).

pub mod keys;
mod root;
mod sse;

pub use root::{Cli, Command, unknown_studio_env};

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value, json};

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

/// `studio generate`.
#[derive(Args, Clone, Debug)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    /// Workflow to run (default: the server's default, sdxl).
    #[arg(long, short)]
    pub workflow: Option<String>,
    /// Seed (default: random).
    #[arg(long, short)]
    pub seed: Option<u64>,
    /// A workflow parameter, `name=value` (repeatable), e.g. `--param steps=30`.
    /// Numbers and true/false are sent as such; anything else as text.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// An input picture (PNG, JPEG or WebP) for the workflow's `image` parameter
    /// (e.g. `--workflow smoke-img2img`); uploaded first.
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// A mask picture for the workflow's `mask` parameter (inpainting: white is
    /// repainted); uploaded first.
    #[arg(long, value_name = "PATH")]
    pub mask: Option<PathBuf>,
    /// Where to save the outputs.
    #[arg(long, short, default_value = ".")]
    pub out: PathBuf,
    /// Submit and print the job id without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Order among this key's own jobs (at most the key's highest).
    #[arg(long, value_enum)]
    pub priority: Option<crate::job::Priority>,
    /// What the pictures are stored as: png (ComfyUI's own), jpeg, or webp
    /// (lossless); the prompt metadata is kept.
    #[arg(long, value_parser = ["png", "jpeg", "webp"])]
    pub format: Option<String>,
    /// JPEG quality, 1–100 (default 90).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub quality: Option<u8>,
    /// Have the server POST the job's end here (a signed Standard Webhook).
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Which webhook messages to send (default: job.finished,job.failed).
    #[arg(long, value_delimiter = ',', value_parser = crate::webhooks::EVENTS)]
    pub webhook_events: Vec<String>,
    #[command(flatten)]
    pub server: ServerUrl,
}

/// `studio status ID` / `studio cancel ID`.
#[derive(Args, Clone, Debug)]
pub struct JobArgs {
    /// The job id.
    pub job_id: String,
    /// Print the job as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerUrl,
}

/// `studio jobs`.
#[derive(Args, Clone, Debug)]
pub struct JobsArgs {
    /// Only jobs in this state (queued, processing, finished, failed).
    #[arg(long)]
    pub status: Option<String>,
    /// How many.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print the page as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: ServerUrl,
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

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(server: &ServerUrl) -> Result<Self, Fail> {
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

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> Fail {
        Fail::usage(format!("cannot reach Studio Core at {}: {e}", self.base))
    }

    /// Sends a request; a JSON body back, or the server's error message.
    async fn call(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), Fail> {
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

fn server_error(status: u16, body: &Value) -> String {
    match body.get("error").and_then(Value::as_str) {
        Some(e) => format!("{e} (HTTP {status})"),
        None => format!("the server answered HTTP {status}"),
    }
}

/// `name=value` → (name, JSON value): numbers and booleans as such, the rest text.
pub fn parse_param(p: &str) -> Result<(String, Value), String> {
    let (k, v) = p
        .split_once('=')
        .ok_or_else(|| format!("--param {p:?} is not NAME=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("--param {p:?} has no name"));
    }
    let value = match serde_json::from_str::<Value>(v.trim()) {
        Ok(n @ Value::Number(_)) => n,
        Ok(b @ Value::Bool(_)) => b,
        _ => Value::from(v),
    };
    Ok((k.to_owned(), value))
}

/// Uploads a picture (`POST /api/uploads`); its upload id.
async fn upload(client: &Client, path: &std::path::Path) -> Result<String, Fail> {
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

/// Tries at a submission that meets a network error or a 502/503/504.
const SUBMIT_TRIES: u64 = 3;

/// `studio generate PROMPT ...`.
pub async fn generate(a: GenerateArgs) -> ExitCode {
    finish(generate_inner(a).await)
}

async fn generate_inner(a: GenerateArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let mut body = Map::new();
    body.insert("prompt".into(), a.prompt.clone().into());
    if let Some(w) = &a.workflow {
        body.insert("workflow".into(), w.clone().into());
    }
    if let Some(s) = a.seed {
        body.insert("seed".into(), s.into());
    }
    for p in &a.params {
        let (k, v) = parse_param(p).map_err(Fail::usage)?;
        body.insert(k, v);
    }
    if let Some(f) = &a.format {
        body.insert("output_format".into(), f.clone().into());
    }
    if let Some(q) = a.quality {
        body.insert("quality".into(), q.into());
    }
    if let Some(p) = a.priority {
        body.insert("priority".into(), p.as_str().into());
    }
    if let Some(u) = &a.webhook_url {
        body.insert("webhook_url".into(), u.clone().into());
    }
    if !a.webhook_events.is_empty() {
        body.insert("webhook_events".into(), a.webhook_events.clone().into());
    }
    for (param, path) in [("image", &a.image), ("mask", &a.mask)] {
        if let Some(path) = path {
            let id = upload(&client, path).await?;
            body.insert(param.into(), id.into());
        }
    }
    // One Idempotency-Key for every try: a submission retried after a lost answer
    // or a passing outage is answered with the job the first try queued.
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let mut tries = 0;
    let (status, v) = loop {
        tries += 1;
        let req = client
            .http
            .post(client.url("/api/generate"))
            .header("idempotency-key", &idempotency_key)
            .json(&body);
        let answer = client.call(req).await;
        let retry = match &answer {
            Err(_) => true,
            Ok((status, _)) => *status == 502 || *status == 503 || *status == 504,
        };
        if !retry || tries >= SUBMIT_TRIES {
            break answer?;
        }
        tokio::time::sleep(Duration::from_secs(tries)).await;
    };
    if status != 202 {
        return Err(Fail::usage(server_error(status, &v)));
    }
    let id = v["job_id"].as_str().unwrap_or_default().to_owned();
    if a.no_wait {
        println!("{id}");
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    if !tty {
        println!("job {id} queued (seed {})", v["seed"]);
    }
    let job = follow(&client, &id, tty).await?;
    match job["status"].as_str() {
        Some("finished") => {
            let saved = download(&client, &job, &a.out).await?;
            for p in saved {
                println!("saved {}", p.display());
            }
            Ok(())
        }
        _ => Err(Fail(
            FAILED,
            format!(
                "job {id} failed: {}",
                job["error"].as_str().unwrap_or("unknown error")
            ),
        )),
    }
}

/// Follows a job's events to its final state, showing progress. Reconnects a few
/// times; falls back to polling if the stream cannot be had.
async fn follow(client: &Client, id: &str, tty: bool) -> Result<Value, Fail> {
    let mut shown = String::new();
    let mut show = |job: &Value| {
        let status = job["status"].as_str().unwrap_or("?");
        let progress = job["progress"].as_u64().unwrap_or(0);
        let line = match (status, job["queue_position"].as_u64()) {
            ("queued", Some(p)) => format!("queued ({p} ahead)"),
            _ => format!("{status} {progress}%"),
        };
        if line == shown {
            return;
        }
        if tty {
            let filled = (progress as usize) / 5;
            print!(
                "\r[{}{}] {line:<24}",
                "#".repeat(filled),
                "-".repeat(20 - filled)
            );
            let _ = std::io::stdout().flush();
        } else {
            println!("{line}");
        }
        shown = line;
    };
    let mut failures = 0;
    loop {
        match sse::follow_job(
            &client.http,
            &client.url(&format!("/api/jobs/{id}/events")),
            &mut show,
        )
        .await
        {
            Ok(Some(job)) => {
                if tty {
                    println!();
                }
                return Ok(job);
            }
            Ok(None) | Err(_) if failures < 5 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(300 * failures)).await;
            }
            _ => break,
        }
    }
    // The stream is not available: poll.
    loop {
        let (status, job) = client
            .call(client.http.get(client.url(&format!("/api/status/{id}"))))
            .await?;
        if status != 200 {
            return Err(Fail::usage(server_error(status, &job)));
        }
        show(&job);
        if matches!(job["status"].as_str(), Some("finished" | "failed")) {
            if tty {
                println!();
            }
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Saves every output of a finished job into `dir`.
async fn download(client: &Client, job: &Value, dir: &Path) -> Result<Vec<PathBuf>, Fail> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Fail::usage(format!("cannot create {}: {e}", dir.display())))?;
    let mut saved = Vec::new();
    for o in job["outputs"].as_array().into_iter().flatten() {
        let (Some(url), Some(name)) = (o["url"].as_str(), o["filename"].as_str()) else {
            continue;
        };
        // The server checks names; still, only a plain file name lands on disk.
        let name = Path::new(name)
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let res = client
            .http
            .get(client.url(url))
            .send()
            .await
            .map_err(|e| client.unreachable(e))?;
        if !res.status().is_success() {
            return Err(Fail::usage(format!(
                "cannot download {url}: HTTP {}",
                res.status().as_u16()
            )));
        }
        let bytes = res.bytes().await.map_err(|e| client.unreachable(e))?;
        let path = dir.join(name);
        std::fs::write(&path, &bytes)
            .map_err(|e| Fail::usage(format!("cannot write {}: {e}", path.display())))?;
        saved.push(path);
    }
    Ok(saved)
}

/// `studio status ID`.
pub async fn status(a: JobArgs) -> ExitCode {
    finish(status_inner(a).await)
}

async fn status_inner(a: JobArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let (status, job) = client
        .call(
            client
                .http
                .get(client.url(&format!("/api/status/{}", a.job_id))),
        )
        .await?;
    if status != 200 {
        return Err(Fail::usage(server_error(status, &job)));
    }
    if a.json {
        println!("{job}");
    } else {
        print_job(&job);
    }
    if job["status"] == "failed" {
        return Err(Fail(
            FAILED,
            format!(
                "job {} failed: {}",
                a.job_id,
                job["error"].as_str().unwrap_or("")
            ),
        ));
    }
    Ok(())
}

fn print_job(job: &Value) {
    println!("job       {}", job["job_id"].as_str().unwrap_or(""));
    println!(
        "status    {} {}%",
        job["status"].as_str().unwrap_or(""),
        job["progress"]
    );
    if let Some(p) = job["queue_position"].as_u64() {
        println!("queue     {p} ahead");
    }
    println!(
        "workflow  {} (seed {})",
        job["workflow"].as_str().unwrap_or(""),
        job["seed"]
    );
    println!("prompt    {}", job["prompt"].as_str().unwrap_or(""));
    println!("attempt   {}", job["attempt"]);
    println!("created   {}", job["created_at"].as_str().unwrap_or(""));
    for o in job["outputs"].as_array().into_iter().flatten() {
        println!("output    {}", o["url"].as_str().unwrap_or(""));
    }
    if let Some(e) = job["error"].as_str().filter(|e| !e.is_empty()) {
        println!("error     {e}");
    }
    let w = &job["webhook"];
    if let Some(url) = w["url"].as_str() {
        println!(
            "webhook   {} {} ({} delivered)",
            w["state"].as_str().unwrap_or(""),
            url,
            w["delivered"]
        );
        if let Some(e) = w["last_error"].as_str().filter(|e| !e.is_empty()) {
            println!("          last error: {e}");
        }
    }
}

/// `studio cancel ID`.
pub async fn cancel(a: JobArgs) -> ExitCode {
    finish(cancel_inner(a).await)
}

async fn cancel_inner(a: JobArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let (status, job) = client
        .call(
            client
                .http
                .post(client.url(&format!("/api/jobs/{}/cancel", a.job_id)))
                .json(&json!({})),
        )
        .await?;
    match status {
        200 => println!("job {} cancelled", a.job_id),
        202 => println!(
            "job {} is running; its worker has been asked to stop it",
            a.job_id
        ),
        409 => return Err(Fail(FAILED, server_error(status, &job))),
        _ => return Err(Fail::usage(server_error(status, &job))),
    }
    if a.json {
        println!("{job}");
    }
    Ok(())
}

/// `studio jobs`.
pub async fn jobs(a: JobsArgs) -> ExitCode {
    finish(jobs_inner(a).await)
}

async fn jobs_inner(a: JobsArgs) -> Result<(), Fail> {
    let client = Client::new(&a.server)?;
    let mut query = vec![("limit", a.limit.to_string())];
    if let Some(s) = &a.status {
        query.push(("status", s.clone()));
    }
    let (status, page) = client
        .call(client.http.get(client.url("/api/jobs")).query(&query))
        .await?;
    if status != 200 {
        return Err(Fail::usage(server_error(status, &page)));
    }
    if a.json {
        println!("{page}");
        return Ok(());
    }
    println!(
        "{:<36}  {:<10}  {:>4}  {:<8}  {:<32}  prompt",
        "job", "status", "%", "workflow", "created"
    );
    for j in page["jobs"].as_array().into_iter().flatten() {
        let prompt: String = j["prompt"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(40)
            .collect();
        println!(
            "{:<36}  {:<10}  {:>4}  {:<8}  {:<32}  {}",
            j["job_id"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            j["progress"],
            j["workflow"].as_str().unwrap_or(""),
            j["created_at"].as_str().unwrap_or(""),
            prompt.replace('\n', " ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_become_numbers_booleans_or_text() {
        assert_eq!(
            parse_param("steps=30").unwrap(),
            ("steps".into(), json!(30))
        );
        assert_eq!(parse_param("cfg=6.5").unwrap(), ("cfg".into(), json!(6.5)));
        assert_eq!(
            parse_param("hires=true").unwrap(),
            ("hires".into(), json!(true))
        );
        assert_eq!(
            parse_param("sampler=euler").unwrap(),
            ("sampler".into(), json!("euler"))
        );
        assert_eq!(
            parse_param("negative_prompt=a=b, c").unwrap(),
            ("negative_prompt".into(), json!("a=b, c"))
        );
        assert!(parse_param("nothing").is_err());
        assert!(parse_param("=3").is_err());
    }
}
