//! `studio mcp`: an MCP server on stdin/stdout for an agent on this machine,
//! relaying each JSON-RPC message to a Studio Core server's `/mcp` (with
//! `--server` and `--api-key`) and its answers back, one JSON message a line.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use std::io::{BufRead, Read, Write};

use super::client::{Client, ServerUrl, finish};

/// The longest line read (an upload's base64 picture fits).
const MAX_LINE: usize = 48 << 20;

/// `studio mcp`.
#[derive(Args, Clone, Debug)]
pub struct McpArgs {
    #[command(flatten)]
    pub server: ServerUrl,
}

/// `studio mcp`: until stdin ends.
pub async fn mcp(a: McpArgs) -> ExitCode {
    finish(run(a).await)
}

async fn run(a: McpArgs) -> Result<(), super::Fail> {
    let client = Client::new(&a.server)?;
    // Lines read on a thread of their own (stdin blocks), a few at a time.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // At most MAX_LINE bytes of a line are kept; the rest is skipped.
            let Ok(n) = (&mut input)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
            else {
                break;
            };
            if n == 0 {
                break;
            }
            if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
                let mut rest = Vec::new();
                while matches!((&mut input).take(1 << 20).read_until(b'\n', &mut rest), Ok(m) if m > 0)
                    && rest.last() != Some(&b'\n')
                {
                    rest.clear();
                }
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        if line.trim().is_empty() {
            continue;
        }
        let answer = if line.len() > MAX_LINE {
            Some(
                json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "message too large"}}),
            )
        } else {
            relay(&client, &line).await
        };
        if let Some(a) = answer {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{a}").is_err() || out.flush().is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// One message to the server; its answer (none for a notification).
async fn relay(client: &Client, line: &str) -> Option<Value> {
    let id = serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    let failed = |m: String| {
        Some(json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": m}}))
    };
    let res = client
        .post("/mcp")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            reqwest::header::ACCEPT,
            "application/json, text/event-stream",
        )
        .body(line.to_owned())
        .timeout(Duration::from_secs(180))
        .send()
        .await;
    let res = match res {
        Ok(r) => r,
        Err(e) => return failed(format!("cannot reach Studio Core: {e}")),
    };
    let status = res.status();
    if status == reqwest::StatusCode::ACCEPTED {
        return None;
    }
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if body.get("jsonrpc").is_some() || body.is_array() {
        return Some(body);
    }
    let message = body["error"]
        .as_str()
        .unwrap_or("the server refused")
        .to_owned();
    failed(format!("{message} (HTTP {})", status.as_u16()))
}
