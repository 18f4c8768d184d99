//! ComfyUI's HTTP API, for one backend: submit, history, queue, view, interrupt,
//! queue delete, system stats, object info. Only public endpoints (PROTOCOL.md).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::messages::ExecutionError;
use crate::storage::ByteStream;

/// How long a connection attempt to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an ordinary call may take (`/history` and `/queue` answer in ms).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a `/view` download may take (large images, videos).
const VIEW_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest JSON answer read from `/history`, `/queue`, `/prompt` and the like: a
/// history entry lists file names, not files; 32 MiB is far beyond any real one.
pub const MAX_JSON_BYTES: usize = 32 << 20;
/// Largest `/object_info` (every node type with its inputs; a few MiB on a big
/// installation).
pub const MAX_OBJECT_INFO_BYTES: usize = 64 << 20;

/// What went wrong talking to a backend.
#[derive(Debug, thiserror::Error)]
pub enum ComfyError {
    /// No connection, a timeout, a reset: the backend's fault, not the job's.
    #[error("ComfyUI at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// An HTTP error status other than a validation 400.
    #[error("ComfyUI at {url} answered HTTP {status} to {what}: {body}")]
    Http {
        url: String,
        what: String,
        status: u16,
        body: String,
    },
    /// ComfyUI refused the workflow (`POST /prompt` 400): the job's own fault.
    #[error("{0}")]
    Rejected(String),
    /// A body we could not read.
    #[error("ComfyUI at {url} sent an unexpected answer to {what}: {reason}")]
    Protocol {
        url: String,
        what: String,
        reason: String,
    },
}

impl ComfyError {
    /// The job itself is at fault (retrying cannot help).
    pub fn is_job_fault(&self) -> bool {
        matches!(self, ComfyError::Rejected(_))
    }
}

/// A file a prompt produced, as named in its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRef {
    /// The node that produced it.
    pub node: String,
    /// The output key (`images`, `gifs`, `videos`, `audio`, ...).
    pub key: String,
    pub filename: String,
    pub subfolder: String,
    /// `output`, `temp` or `input`.
    pub kind: String,
}

/// How a prompt ended, according to its history entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunStatus {
    Success,
    Error(ExecutionError),
    Interrupted,
    /// An error entry without details (older servers).
    Failed(String),
}

/// A prompt's history entry: its outcome and the files its output nodes wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    pub status: RunStatus,
    pub files: Vec<FileRef>,
    /// How long the backend ran the prompt, by its own clock: from its
    /// `execution_start` to its last message (`None` when it recorded neither).
    pub run_ms: Option<u64>,
}

impl HistoryEntry {
    /// Reads one history entry (the value under the prompt id).
    pub fn parse(entry: &Value) -> HistoryEntry {
        let messages = entry
            .pointer("/status/messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let find = |name: &str| {
            messages.iter().find_map(|m| {
                let pair = m.as_array()?;
                (pair.first()?.as_str()? == name)
                    .then(|| pair.get(1).cloned().unwrap_or(Value::Null))
            })
        };
        let status_str = entry.pointer("/status/status_str").and_then(Value::as_str);
        let status = if let Some(err) = find("execution_error") {
            RunStatus::Error(ExecutionError::from_data(&err))
        } else if find("execution_interrupted").is_some() {
            RunStatus::Interrupted
        } else if status_str == Some("error") {
            RunStatus::Failed("ComfyUI recorded the prompt as failed without details".into())
        } else {
            RunStatus::Success
        };
        let mut files = Vec::new();
        if let Some(outputs) = entry.get("outputs").and_then(Value::as_object) {
            let mut nodes: Vec<(&String, &Value)> = outputs.iter().collect();
            // Node ids are usually numbers; order them as numbers, then as text.
            nodes.sort_by(|a, b| {
                let (na, nb) = (a.0.parse::<u64>().ok(), b.0.parse::<u64>().ok());
                na.cmp(&nb).then_with(|| a.0.cmp(b.0))
            });
            for (node, out) in nodes {
                let Some(out) = out.as_object() else { continue };
                let mut keys: Vec<&String> = out.keys().collect();
                // `images` first, so `image_url` is an image when there is one.
                keys.sort_by_key(|k| (k.as_str() != "images", k.as_str()));
                for key in keys {
                    let Some(list) = out[key].as_array() else {
                        continue;
                    };
                    for item in list {
                        let Some(filename) = item.get("filename").and_then(Value::as_str) else {
                            continue;
                        };
                        files.push(FileRef {
                            node: node.clone(),
                            key: key.clone(),
                            filename: filename.to_owned(),
                            subfolder: item
                                .get("subfolder")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                            kind: item
                                .get("type")
                                .and_then(Value::as_str)
                                .unwrap_or("output")
                                .to_owned(),
                        });
                    }
                }
            }
        }
        let stamp =
            |name: &str| find(name).and_then(|d| d.get("timestamp").and_then(Value::as_u64));
        let end = [
            "execution_success",
            "execution_error",
            "execution_interrupted",
        ]
        .into_iter()
        .find_map(stamp);
        let run_ms = match (stamp("execution_start"), end) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        HistoryEntry {
            status,
            files,
            run_ms,
        }
    }
}

/// Prompt ids in the backend's queue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    pub running: Vec<String>,
    pub pending: Vec<String>,
}

impl QueueState {
    pub fn contains(&self, id: &str) -> bool {
        self.running.iter().chain(&self.pending).any(|p| p == id)
    }

    fn parse(v: &Value) -> QueueState {
        let ids = |k: &str| {
            v.get(k)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.get(1).and_then(Value::as_str).map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        QueueState {
            running: ids("queue_running"),
            pending: ids("queue_pending"),
        }
    }
}

/// A successful submission.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// Errors of output branches ComfyUI dropped while queueing the rest.
    pub node_errors: Value,
}

/// Turns a `POST /prompt` 400 body into a sentence naming the node, its class, the
/// input and the reason (`node_errors`, since `error.details` is often empty).
pub fn describe_rejection(body: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(nodes) = body.get("node_errors").and_then(Value::as_object) {
        let mut ids: Vec<&String> = nodes.keys().collect();
        ids.sort_by_key(|id| (id.parse::<u64>().unwrap_or(u64::MAX), id.as_str()));
        for id in ids {
            let ne = &nodes[id];
            let class = ne.get("class_type").and_then(Value::as_str).unwrap_or("?");
            for e in ne
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let msg = e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("invalid");
                let details = e.get("details").and_then(Value::as_str).unwrap_or("");
                let input = e.pointer("/extra_info/input_name").and_then(Value::as_str);
                let mut p = match input {
                    Some(i) => format!("node {id} ({class}) input '{i}': {msg}"),
                    None => format!("node {id} ({class}): {msg}"),
                };
                if !details.is_empty() && Some(details) != input {
                    p.push_str(&format!(" ({details})"));
                }
                parts.push(p);
            }
        }
    }
    if parts.is_empty() {
        let msg = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("the workflow is invalid");
        let details = body
            .pointer("/error/details")
            .and_then(Value::as_str)
            .unwrap_or("");
        if details.is_empty() || details == msg {
            parts.push(msg.to_owned());
        } else {
            parts.push(format!("{msg} ({details})"));
        }
    }
    format!("ComfyUI rejected the workflow: {}", parts.join("; "))
}

/// A client for one ComfyUI server.
#[derive(Clone, Debug)]
pub struct ComfyClient {
    base: String,
    http: reqwest::Client,
    client_id: String,
}

impl ComfyClient {
    /// `base` is the server's URL (`http://127.0.0.1:8188`); `client_id` the id its
    /// WebSocket uses, sent with every prompt so events reach that socket.
    pub fn new(base: &str, client_id: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        ComfyClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
            client_id: client_id.to_owned(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The WebSocket URL for this client's id.
    pub fn ws_url(&self) -> String {
        let ws = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            format!("ws://{}", self.base)
        };
        format!("{ws}/ws?clientId={}", self.client_id)
    }

    fn unreachable(&self, e: reqwest::Error) -> ComfyError {
        ComfyError::Unreachable {
            url: self.base.clone(),
            reason: if e.is_timeout() {
                "timed out".to_owned()
            } else if e.is_connect() {
                "connection refused or failed".to_owned()
            } else {
                e.to_string()
            },
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, ComfyError> {
        let res = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let body = self
            .read_limited(res, what, 4096)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Err(ComfyError::Http {
            url: self.base.clone(),
            what: what.to_owned(),
            status: status.as_u16(),
            body: body.chars().take(300).collect(),
        })
    }

    async fn json(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, ComfyError> {
        self.json_within(req, what, MAX_JSON_BYTES).await
    }

    /// A JSON answer of at most `limit` bytes.
    async fn json_within(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        limit: usize,
    ) -> Result<Value, ComfyError> {
        let res = self.send(req.timeout(CALL_TIMEOUT), what).await?;
        let body = self.read_limited(res, what, limit).await?;
        serde_json::from_slice(&body).map_err(|e| ComfyError::Protocol {
            url: self.base.clone(),
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Reads a whole answer, refusing one larger than `limit` bytes (a misbehaving
    /// backend must not make the worker allocate without bound).
    async fn read_limited(
        &self,
        res: reqwest::Response,
        what: &str,
        limit: usize,
    ) -> Result<Vec<u8>, ComfyError> {
        let too_large = || ComfyError::Protocol {
            url: self.base.clone(),
            what: what.to_owned(),
            reason: format!("the answer is larger than {limit} bytes"),
        };
        if res.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// `POST /prompt` with our prompt id and client id (never `front`).
    pub async fn submit(
        &self,
        prompt_id: &str,
        graph: &Value,
        extra_pnginfo: Value,
    ) -> Result<Submitted, ComfyError> {
        let body = json!({
            "prompt": graph,
            "prompt_id": prompt_id,
            "client_id": self.client_id,
            "extra_data": {"extra_pnginfo": extra_pnginfo},
        });
        let res = self
            .http
            .post(format!("{}/prompt", self.base))
            .json(&body)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = res.status();
        let raw = self
            .read_limited(res, "POST /prompt", MAX_JSON_BYTES)
            .await?;
        let text = String::from_utf8_lossy(&raw);
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        match (status.as_u16(), parsed) {
            (200, Some(v)) => {
                let given = v.get("prompt_id").and_then(Value::as_str).unwrap_or("");
                if given != prompt_id {
                    // A server older than July 2025 ignores our prompt id: the run
                    // could not be followed or adopted, so take it back.
                    let _ = self.delete_queued(&[given]).await;
                    let _ = self.interrupt(given).await;
                    return Err(ComfyError::Protocol {
                        url: self.base.clone(),
                        what: "POST /prompt".into(),
                        reason: format!(
                            "it ignored our prompt_id (answered {given:?}); Studio Core needs a ComfyUI that accepts a client prompt_id (from July 2025, ComfyUI PR #8189)"
                        ),
                    });
                }
                Ok(Submitted {
                    node_errors: v.get("node_errors").cloned().unwrap_or(Value::Null),
                })
            }
            (400, Some(v)) if v.get("error").is_some() => {
                Err(ComfyError::Rejected(describe_rejection(&v)))
            }
            (code, _) => Err(ComfyError::Http {
                url: self.base.clone(),
                what: "POST /prompt".into(),
                status: code,
                body: text.chars().take(300).collect(),
            }),
        }
    }

    /// `POST /upload/image`: puts an input picture in ComfyUI's `input` directory
    /// under `file_name` (replacing a file of that name: ours are named by their
    /// content). The name to give `LoadImage` (`subfolder/name` when it has one).
    pub async fn upload_image(
        &self,
        bytes: Vec<u8>,
        file_name: &str,
        content_type: &str,
    ) -> Result<String, ComfyError> {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(file_name.to_owned())
            .mime_str(content_type)
            .map_err(|e| ComfyError::Protocol {
                url: self.base.clone(),
                what: "POST /upload/image".into(),
                reason: e.to_string(),
            })?;
        let form = reqwest::multipart::Form::new()
            .part("image", part)
            .text("type", "input")
            .text("overwrite", "true");
        let v = self
            .json_within(
                self.http
                    .post(format!("{}/upload/image", self.base))
                    .multipart(form),
                "POST /upload/image",
                64 * 1024,
            )
            .await?;
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            return Err(ComfyError::Protocol {
                url: self.base.clone(),
                what: "POST /upload/image".into(),
                reason: format!("no file name in the answer: {v}"),
            });
        }
        let sub = v.get("subfolder").and_then(Value::as_str).unwrap_or("");
        Ok(if sub.is_empty() {
            name.to_owned()
        } else {
            format!("{sub}/{name}")
        })
    }

    /// `GET /history/{id}`: the entry, or `None` while queued, running or unknown.
    pub async fn history(&self, prompt_id: &str) -> Result<Option<HistoryEntry>, ComfyError> {
        let v = self
            .json(
                self.http.get(format!("{}/history/{prompt_id}", self.base)),
                "GET /history",
            )
            .await?;
        Ok(v.get(prompt_id).map(HistoryEntry::parse))
    }

    /// `GET /queue`.
    pub async fn queue(&self) -> Result<QueueState, ComfyError> {
        let v = self
            .json(self.http.get(format!("{}/queue", self.base)), "GET /queue")
            .await?;
        Ok(QueueState::parse(&v))
    }

    /// `GET /view` of one output file, as a stream (never whole in memory), with
    /// its announced length when there is one.
    pub async fn view(&self, file: &FileRef) -> Result<(Option<u64>, ByteStream), ComfyError> {
        let req = self
            .http
            .get(format!("{}/view", self.base))
            .query(&[
                ("filename", &file.filename),
                ("subfolder", &file.subfolder),
                ("type", &file.kind),
            ])
            .timeout(VIEW_TIMEOUT);
        let res = self.send(req, "GET /view").await?;
        let len = res.content_length();
        let stream = res.bytes_stream().map(|c| c.map_err(std::io::Error::other));
        Ok((len, Box::pin(stream)))
    }

    /// `POST /interrupt {"prompt_id"}`: stops that prompt if (and only if) it runs.
    pub async fn interrupt(&self, prompt_id: &str) -> Result<(), ComfyError> {
        let req = self
            .http
            .post(format!("{}/interrupt", self.base))
            .json(&json!({"prompt_id": prompt_id}))
            .timeout(CALL_TIMEOUT);
        self.send(req, "POST /interrupt").await.map(drop)
    }

    /// `POST /queue {"delete": [ids]}`: removes prompts still waiting.
    pub async fn delete_queued(&self, prompt_ids: &[&str]) -> Result<(), ComfyError> {
        let req = self
            .http
            .post(format!("{}/queue", self.base))
            .json(&json!({"delete": prompt_ids}))
            .timeout(CALL_TIMEOUT);
        self.send(req, "POST /queue").await.map(drop)
    }

    /// `GET /system_stats`: the health check.
    pub async fn system_stats(&self) -> Result<Value, ComfyError> {
        self.json(
            self.http
                .get(format!("{}/system_stats", self.base))
                .timeout(CONNECT_TIMEOUT),
            "GET /system_stats",
        )
        .await
    }

    /// `GET /object_info`: every node type the backend has.
    pub async fn object_info(&self) -> Result<Value, ComfyError> {
        self.json_within(
            self.http.get(format!("{}/object_info", self.base)),
            "GET /object_info",
            MAX_OBJECT_INFO_BYTES,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_name_node_class_input_and_reason() {
        let body = json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "height", "extra_info": {"input_name": "height"}}], "dependent_outputs": ["2"], "class_type": "EmptyImage"}}});
        assert_eq!(
            describe_rejection(&body),
            "ComfyUI rejected the workflow: node 1 (EmptyImage) input 'height': Value 0 smaller than min of 1"
        );
        let body = json!({"error": {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode does not exist.", "details": "Node ID '#1'", "extra_info": {}}, "node_errors": {}});
        assert_eq!(
            describe_rejection(&body),
            "ComfyUI rejected the workflow: Cannot execute because node NoSuchNode does not exist. (Node ID '#1')"
        );
    }

    #[test]
    fn ws_url_follows_the_scheme() {
        assert_eq!(
            ComfyClient::new("http://h:8188/", "c").ws_url(),
            "ws://h:8188/ws?clientId=c"
        );
        assert_eq!(
            ComfyClient::new("https://h", "c").ws_url(),
            "wss://h/ws?clientId=c"
        );
    }

    #[test]
    fn queue_parses_running_and_pending_ids() {
        let v = json!({"queue_running": [[0, "a", {}, {}, ["2"]]], "queue_pending": [[-31, "c", {}, {}, []], [30, "b", {}, {}, []]]});
        let q = QueueState::parse(&v);
        assert_eq!(q.running, ["a"]);
        assert_eq!(q.pending, ["c", "b"]);
        assert!(q.contains("b") && !q.contains("z"));
    }
}
