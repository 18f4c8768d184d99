//! A small Server-Sent Events reader for the CLI.

use futures_util::StreamExt;
use serde_json::Value;

/// Reads a job's event stream, calling `show` with each state, until the job is
/// final (`Some(job)`) or the stream ends early (`None`).
pub async fn follow_job(
    request: reqwest::RequestBuilder,
    show: &mut impl FnMut(&Value),
) -> Result<Option<Value>, reqwest::Error> {
    let res = request.header("accept", "text/event-stream").send().await?;
    if !res.status().is_success() {
        return Ok(None);
    }
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            let is_job = block
                .lines()
                .any(|l| l.trim() == "event: job" || l.trim() == "event:job");
            if !is_job || data.is_empty() {
                continue;
            }
            let Ok(job) = serde_json::from_str::<Value>(&data.join("\n")) else {
                continue;
            };
            show(&job);
            if matches!(job["status"].as_str(), Some("finished" | "failed")) {
                return Ok(Some(job));
            }
        }
    }
    Ok(None)
}
