//! ComfyUI's WebSocket messages, typed. The parser is lenient the way the
//! transcripts require: unknown message types and keys are kept or ignored, numbers
//! may be integers or floats, node ids may be strings or numbers, and binary frames
//! are recognised by their 4-byte event type.

use std::collections::BTreeMap;

use serde_json::Value;

/// The progress of one node in a `progress_state` message.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeProgress {
    pub value: f64,
    pub max: f64,
    /// `running` or `finished`.
    pub state: String,
}

/// The details of a run-time error (`execution_error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionError {
    pub node_id: String,
    pub node_type: String,
    pub exception_type: String,
    pub exception_message: String,
}

impl ExecutionError {
    /// A message a person can act on: which node, what kind of error, what it said.
    pub fn describe(&self) -> String {
        format!(
            "ComfyUI failed while running node {} ({}): {}: {}",
            self.node_id,
            self.node_type,
            self.exception_type,
            self.exception_message.trim_end()
        )
    }

    /// Reads the `execution_error` data object (from the socket or from history).
    pub fn from_data(d: &Value) -> Self {
        ExecutionError {
            node_id: id_of(d.get("node_id")).unwrap_or_default(),
            node_type: str_of(d, "node_type"),
            exception_type: str_of(d, "exception_type"),
            exception_message: str_of(d, "exception_message"),
        }
    }
}

/// One message from ComfyUI's `/ws`.
#[derive(Clone, Debug, PartialEq)]
pub enum WsMessage {
    /// Queue size changed (also the first message on connect, with the socket's sid).
    Status {
        queue_remaining: Option<u64>,
        sid: Option<String>,
    },
    ExecutionStart {
        prompt_id: String,
    },
    /// Nodes whose cached results will be reused.
    ExecutionCached {
        prompt_id: String,
        nodes: Vec<String>,
    },
    /// A node started; `node: None` with a prompt id means the prompt is done and
    /// its history is written. After a reconnect the server resends the running
    /// node without a prompt id.
    Executing {
        prompt_id: Option<String>,
        node: Option<String>,
    },
    /// Steps of the running node (e.g. sampler steps).
    Progress {
        prompt_id: Option<String>,
        node: Option<String>,
        value: f64,
        max: f64,
    },
    /// Every non-pending node of a prompt with its progress.
    ProgressState {
        prompt_id: String,
        nodes: BTreeMap<String, NodeProgress>,
    },
    /// A node produced UI output (images...).
    Executed {
        prompt_id: String,
        node: String,
        output: Value,
    },
    ExecutionSuccess {
        prompt_id: String,
    },
    ExecutionError {
        prompt_id: String,
        error: ExecutionError,
    },
    ExecutionInterrupted {
        prompt_id: String,
        node_id: Option<String>,
    },
    FeatureFlags(Value),
    /// A preview of a picture forming (binary frame 1, or 4 with metadata): the
    /// prompt it belongs to when the frame says (type 4 only), the picture's
    /// content type (from its own bytes), and the picture.
    Preview {
        prompt_id: Option<String>,
        content_type: &'static str,
        image: bytes::Bytes,
    },
    /// Any other binary frame (3: progress text; unknown types; previews that are
    /// not a picture we know or are over [`MAX_PREVIEW_BYTES`]), by event type and
    /// length.
    Binary {
        event: u32,
        len: usize,
    },
    /// A message type this client does not use.
    Other {
        kind: String,
    },
}

/// The largest preview picture kept (ComfyUI's are 512 px by default, tens of
/// KB; SaveImageWebsocket sends full pictures this way).
pub const MAX_PREVIEW_BYTES: usize = 4 << 20;

/// A picture's content type from its first bytes: PNG, JPEG or WebP; `None` for
/// anything else (never served as a picture).
pub fn picture_type(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// Why a text frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("a {0} message without the {1} it needs")]
    Missing(String, &'static str),
}

fn str_of(d: &Value, k: &str) -> String {
    d.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A node or prompt id written as a string or as a number.
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn num_of(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl WsMessage {
    /// The message as ComfyUI sends it, for a client of ours following its
    /// prompt: those about the run so far (its start, the cached nodes, the
    /// node running, steps, every node's state). `None` for the rest: how a run
    /// ended is told from the job's record, once its pictures are stored.
    pub fn relayed_text(&self, now_ms: u64) -> Option<String> {
        use serde_json::json;
        let v = match self {
            WsMessage::ExecutionStart { prompt_id } => json!({"type": "execution_start",
                "data": {"prompt_id": prompt_id, "timestamp": now_ms}}),
            WsMessage::ExecutionCached { prompt_id, nodes } => json!({"type": "execution_cached",
                "data": {"nodes": nodes, "prompt_id": prompt_id, "timestamp": now_ms}}),
            WsMessage::Executing {
                prompt_id: Some(p),
                node: Some(n),
            } => json!({"type": "executing",
                "data": {"node": n, "display_node": n, "prompt_id": p}}),
            WsMessage::Progress {
                prompt_id: Some(p),
                node,
                value,
                max,
            } => json!({"type": "progress",
                "data": {"value": value, "max": max, "prompt_id": p, "node": node}}),
            WsMessage::ProgressState { prompt_id, nodes } => {
                let nodes: serde_json::Map<String, Value> = nodes
                    .iter()
                    .map(|(id, n)| {
                        (
                            id.clone(),
                            json!({"value": n.value, "max": n.max, "state": n.state,
                            "node_id": id, "prompt_id": prompt_id, "display_node_id": id,
                            "parent_node_id": null, "real_node_id": id}),
                        )
                    })
                    .collect();
                json!({"type": "progress_state", "data": {"prompt_id": prompt_id, "nodes": nodes}})
            }
            _ => return None,
        };
        Some(v.to_string())
    }

    /// Parses a text frame.
    pub fn parse(text: &str) -> Result<WsMessage, ParseError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let d = v.get("data").cloned().unwrap_or(Value::Null);
        let prompt = |what: &str| {
            id_of(d.get("prompt_id"))
                .ok_or_else(|| ParseError::Missing(what.to_owned(), "prompt_id"))
        };
        Ok(match kind.as_str() {
            "status" => WsMessage::Status {
                queue_remaining: d
                    .pointer("/status/exec_info/queue_remaining")
                    .and_then(|n| num_of(Some(n)))
                    .map(|n| n.max(0.0) as u64),
                sid: d.get("sid").and_then(Value::as_str).map(str::to_owned),
            },
            "execution_start" => WsMessage::ExecutionStart {
                prompt_id: prompt(&kind)?,
            },
            "execution_cached" => WsMessage::ExecutionCached {
                prompt_id: prompt(&kind)?,
                nodes: d
                    .get("nodes")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|n| id_of(Some(n))).collect())
                    .unwrap_or_default(),
            },
            "executing" => WsMessage::Executing {
                prompt_id: id_of(d.get("prompt_id")),
                node: id_of(d.get("node")),
            },
            "progress" => WsMessage::Progress {
                prompt_id: id_of(d.get("prompt_id")),
                node: id_of(d.get("node")),
                value: num_of(d.get("value")).unwrap_or(0.0),
                max: num_of(d.get("max")).unwrap_or(0.0),
            },
            "progress_state" => WsMessage::ProgressState {
                prompt_id: prompt(&kind)?,
                nodes: d
                    .get("nodes")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(id, n)| {
                                (
                                    id.clone(),
                                    NodeProgress {
                                        value: num_of(n.get("value")).unwrap_or(0.0),
                                        max: num_of(n.get("max")).unwrap_or(0.0),
                                        state: str_of(n, "state"),
                                    },
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            "executed" => WsMessage::Executed {
                prompt_id: prompt(&kind)?,
                node: id_of(d.get("node")).unwrap_or_default(),
                output: d.get("output").cloned().unwrap_or(Value::Null),
            },
            "execution_success" => WsMessage::ExecutionSuccess {
                prompt_id: prompt(&kind)?,
            },
            "execution_error" => WsMessage::ExecutionError {
                prompt_id: prompt(&kind)?,
                error: ExecutionError::from_data(&d),
            },
            "execution_interrupted" => WsMessage::ExecutionInterrupted {
                prompt_id: prompt(&kind)?,
                node_id: id_of(d.get("node_id")),
            },
            "feature_flags" => WsMessage::FeatureFlags(d),
            _ => WsMessage::Other { kind },
        })
    }

    /// Reads a binary frame: previews (types 1 and 4) with their picture, the
    /// rest by event type. Never fails: a short or odd frame is just `Binary`.
    pub fn binary(frame: &bytes::Bytes) -> WsMessage {
        let u32_at = |at: usize| {
            frame
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let other = || WsMessage::Binary {
            event: u32_at(0).unwrap_or(0),
            len: frame.len(),
        };
        let preview = |prompt_id: Option<String>, at: usize| {
            let image = frame.slice(at.min(frame.len())..);
            match picture_type(&image) {
                Some(content_type) if image.len() <= MAX_PREVIEW_BYTES => WsMessage::Preview {
                    prompt_id,
                    content_type,
                    image,
                },
                _ => other(),
            }
        };
        match u32_at(0) {
            // u32 type · u32 format (1 JPEG, 2 PNG) · picture
            Some(1) if frame.len() > 8 => preview(None, 8),
            // u32 type · u32 M · M bytes of JSON metadata · picture
            Some(4) => {
                let Some(m) = u32_at(4).map(|m| m as usize) else {
                    return other();
                };
                let Some(meta) = frame.get(8..8usize.saturating_add(m)) else {
                    return other();
                };
                let prompt_id = serde_json::from_slice::<Value>(meta)
                    .ok()
                    .and_then(|v| v.get("prompt_id")?.as_str().map(str::to_owned));
                preview(prompt_id, 8 + m)
            }
            _ => other(),
        }
    }

    /// The prompt this message is about, if it says.
    pub fn prompt_id(&self) -> Option<&str> {
        match self {
            WsMessage::ExecutionStart { prompt_id }
            | WsMessage::ExecutionCached { prompt_id, .. }
            | WsMessage::ProgressState { prompt_id, .. }
            | WsMessage::Executed { prompt_id, .. }
            | WsMessage::ExecutionSuccess { prompt_id }
            | WsMessage::ExecutionError { prompt_id, .. }
            | WsMessage::ExecutionInterrupted { prompt_id, .. } => Some(prompt_id),
            WsMessage::Executing { prompt_id, .. }
            | WsMessage::Progress { prompt_id, .. }
            | WsMessage::Preview { prompt_id, .. } => prompt_id.as_deref(),
            _ => None,
        }
    }

    /// `executing` with `node: null` for this prompt: done, and history is written.
    pub fn is_done_for(&self, id: &str) -> bool {
        matches!(self, WsMessage::Executing { prompt_id: Some(p), node: None } if p == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_may_be_floats_and_ids_numbers() {
        let m = WsMessage::parse(
            r#"{"type":"progress","data":{"value":3.0,"max":20,"prompt_id":"p","node":3}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            WsMessage::Progress {
                prompt_id: Some("p".into()),
                node: Some("3".into()),
                value: 3.0,
                max: 20.0
            }
        );
    }

    #[test]
    fn unknown_types_and_keys_are_accepted() {
        let m = WsMessage::parse(r#"{"type":"crystools.monitor","data":{"cpu":3}}"#).unwrap();
        assert_eq!(
            m,
            WsMessage::Other {
                kind: "crystools.monitor".into()
            }
        );
        let m = WsMessage::parse(
            r#"{"type":"execution_start","data":{"prompt_id":"p","timestamp":1,"new":true}}"#,
        )
        .unwrap();
        assert_eq!(m.prompt_id(), Some("p"));
        assert!(WsMessage::parse("nope").is_err());
    }

    #[test]
    fn executing_null_is_completion() {
        let m = WsMessage::parse(r#"{"type":"executing","data":{"node":null,"prompt_id":"p"}}"#)
            .unwrap();
        assert!(m.is_done_for("p"));
        assert!(!m.is_done_for("q"));
        // After a reconnect: a node without a prompt id is not completion.
        let m = WsMessage::parse(r#"{"type":"executing","data":{"node":"10"}}"#).unwrap();
        assert!(!m.is_done_for("p"));
        assert_eq!(m.prompt_id(), None);
    }

    #[test]
    fn binary_frames_give_their_event_type() {
        let b = |v: &[u8]| bytes::Bytes::copy_from_slice(v);
        assert_eq!(
            WsMessage::binary(&b(&[0, 0, 0, 3, 0, 0, 0, 1, b'4'])),
            WsMessage::Binary { event: 3, len: 9 }
        );
        assert_eq!(
            WsMessage::binary(&b(&[1])),
            WsMessage::Binary { event: 0, len: 1 }
        );
        // Truncated or lying headers, and pictures of no known kind, are not
        // previews (and do not panic).
        for frame in [
            &[0, 0, 0, 1, 0, 0, 0, 2][..],
            &[0, 0, 0, 1, 0, 0, 0, 2, b'G', b'I', b'F', b'8'][..],
            &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff, b'{'][..],
            &[0, 0, 0, 4, 0, 0][..],
            &[0, 0, 0, 9, 1, 2, 3][..],
        ] {
            assert!(
                matches!(WsMessage::binary(&b(frame)), WsMessage::Binary { .. }),
                "{frame:?}"
            );
        }
    }

    /// Every binary frame the real server sent in the recordings.
    #[test]
    fn recorded_frames_are_read() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/comfyui/files");
        let read = |name: &str| WsMessage::binary(&std::fs::read(dir.join(name)).unwrap().into());
        let preview = |name: &str| match read(name) {
            WsMessage::Preview {
                prompt_id,
                content_type,
                image,
            } => (prompt_id, content_type, image),
            m => panic!("{name}: {m:?}"),
        };
        for n in 1..=6 {
            let (prompt_id, content_type, image) =
                preview(&format!("g_progress_savewebsocket_main_ws_binary_{n}.bin"));
            assert_eq!(
                (prompt_id, content_type, image.len()),
                (None, "image/png", 87)
            );
        }
        for n in 1..=3 {
            let (prompt_id, content_type, image) =
                preview(&format!("g_progress_savewebsocket_meta_ws_binary_{n}.bin"));
            assert_eq!(
                prompt_id.as_deref(),
                Some("06d428d1-6680-4e04-83b1-4ced4268d372")
            );
            assert_eq!(content_type, "image/png");
            assert!(image.starts_with(b"\x89PNG"));
        }
        for name in [
            "a3_batch_preview_and_progress_text_main_ws_binary_1.bin",
            "l_progress_text_broadcast_and_free_main_ws_binary_1.bin",
        ] {
            let m = read(name);
            assert!(
                matches!(m, WsMessage::Binary { event: 3, len: 45 }),
                "{name}: {m:?}"
            );
        }
    }
}
