//! What a ComfyUI backend can run, read from its `/object_info`: its node classes
//! and the choices of its model inputs (checkpoints, LoRAs, VAEs, upscalers,
//! ControlNets, …); and what a job's graph needs of them.
//!
//! Workers publish each backend's capabilities to the store under their
//! fingerprint (the same set of models on many machines is stored once) and name
//! the fingerprint in their heartbeat report, so the API knows what the live
//! backends offer without reading every backend itself.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Whether an input of a node names a model file: `ckpt_name`, `lora_name`,
/// `vae_name`, `model_name`, `control_net_name`, … (`sampler_name` is not a file).
pub fn is_model_input(name: &str) -> bool {
    name.ends_with("_name") && name != "sampler_name"
}

/// 24 hex digits of the SHA-256 of a value's JSON.
fn short_hash<T: Serialize>(v: &T) -> String {
    let json = serde_json::to_vec(v).unwrap_or_default();
    let d = Sha256::digest(&json);
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// A backend's offer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Node classes.
    pub nodes: BTreeSet<String>,
    /// `Class.input` → the files it can load.
    pub models: BTreeMap<String, BTreeSet<String>>,
    /// The fingerprint of its whole `/object_info`, kept in the store beside the
    /// offer (as `info:<fingerprint>`): what converting a UI-format workflow and
    /// ComfyUI's own frontend read. Empty when not published.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub info: String,
}

/// How long a backend's `/object_info` is kept in the store: long after the
/// backend went, so a workflow can still be converted from the last one reported.
pub const INFO_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The store's name of a whole `/object_info` by its fingerprint.
pub fn info_key(fp: &str) -> String {
    format!("info:{fp}")
}

/// The store's name of the fingerprint of the `/object_info` reported last.
pub const LAST_INFO: &str = "info:last";

/// The fingerprint of an `/object_info` document's text.
pub fn info_fingerprint(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The choices of an input spec: `[["a", "b"], {…}]` (V1) or
/// `["COMBO", {"options": ["a", "b"]}]` (V3); `None` when it is not a list.
fn choices(spec: &Value) -> Option<BTreeSet<String>> {
    let first = spec.get(0)?;
    let list = match first {
        Value::Array(a) => a,
        Value::String(s) if s == "COMBO" => spec.get(1)?.get("options")?.as_array()?,
        _ => return None,
    };
    Some(
        list.iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
    )
}

impl Capabilities {
    /// Reads `GET /object_info`.
    pub fn from_object_info(info: &Value) -> Capabilities {
        let mut caps = Capabilities::default();
        let Some(classes) = info.as_object() else {
            return caps;
        };
        for (class, def) in classes {
            caps.nodes.insert(class.clone());
            for section in ["required", "optional"] {
                let Some(inputs) = def
                    .pointer(&format!("/input/{section}"))
                    .and_then(Value::as_object)
                else {
                    continue;
                };
                for (name, spec) in inputs {
                    if !is_model_input(name) {
                        continue;
                    }
                    if let Some(list) = choices(spec) {
                        caps.models.insert(format!("{class}.{name}"), list);
                    }
                }
            }
        }
        caps
    }

    /// A short id of exactly this offer.
    pub fn fingerprint(&self) -> String {
        short_hash(self)
    }

    /// What of `need` this backend lacks (empty: it can run it).
    pub fn missing(&self, need: &Requirements) -> Vec<Missing> {
        let mut out = Vec::new();
        for class in &need.nodes {
            if !self.nodes.contains(class) {
                out.push(Missing::Node(class.clone()));
            }
        }
        for (key, file) in &need.models {
            // A list the backend did not publish (an unknown input format) is not
            // held against the job: ComfyUI's own validation still runs.
            if let Some(list) = self.models.get(key)
                && !list.contains(file)
            {
                out.push(Missing::Model {
                    input: key.clone(),
                    file: file.clone(),
                });
            }
        }
        out
    }
}

/// Something a job needs that a backend does not offer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Missing {
    Node(String),
    Model { input: String, file: String },
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Node(c) => write!(f, "node {c}"),
            Missing::Model { input, file } => write!(f, "{file:?} for {input}"),
        }
    }
}

/// What a graph needs: its node classes and the model files its loaders name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements {
    pub nodes: BTreeSet<String>,
    /// `Class.input` → file.
    pub models: BTreeMap<String, String>,
}

impl Requirements {
    pub fn of_graph(graph: &Value) -> Requirements {
        let mut need = Requirements::default();
        let Some(nodes) = graph.as_object() else {
            return need;
        };
        for node in nodes.values() {
            let Some(class) = node.get("class_type").and_then(Value::as_str) else {
                continue;
            };
            need.nodes.insert(class.to_owned());
            if let Some(inputs) = node.get("inputs").and_then(Value::as_object) {
                for (name, v) in inputs {
                    if let (true, Some(file)) = (is_model_input(name), v.as_str()) {
                        need.models
                            .insert(format!("{class}.{name}"), file.to_owned());
                    }
                }
            }
        }
        need
    }

    /// A short id of exactly this set of needs: jobs with the same one can run on
    /// the same backends, so dispatchers judge each set once, not each job.
    pub fn fingerprint(&self) -> String {
        short_hash(self)
    }

    /// The model files it loads: two jobs with the same ones reuse what a backend
    /// has in memory (the checkpoint, its LoRAs), so a backend prefers them.
    pub fn files(&self) -> BTreeSet<&str> {
        self.models.values().map(String::as_str).collect()
    }
}

/// Why no live backend can run a job: what is missing everywhere, and what the
/// backends have for the model inputs concerned. `None` when one of `offers` can
/// run it, or when there are no offers at all (nobody has reported yet).
pub fn refusal(need: &Requirements, offers: &[Capabilities]) -> Option<String> {
    if offers.is_empty() {
        return None;
    }
    let mut best: Option<Vec<Missing>> = None;
    for caps in offers {
        let missing = caps.missing(need);
        if missing.is_empty() {
            return None;
        }
        if best.as_ref().is_none_or(|b| missing.len() < b.len()) {
            best = Some(missing);
        }
    }
    let missing = best.unwrap_or_default();
    let mut parts: Vec<String> = Vec::new();
    for m in &missing {
        match m {
            Missing::Node(c) => parts.push(format!("node {c} (no live backend has it)")),
            Missing::Model { input, file } => {
                let mut have: BTreeSet<&str> = BTreeSet::new();
                for caps in offers {
                    if let Some(list) = caps.models.get(input) {
                        have.extend(list.iter().map(String::as_str));
                    }
                }
                let have: Vec<&str> = have.into_iter().take(50).collect();
                parts.push(format!(
                    "{file:?} for {input}; available: {}",
                    if have.is_empty() {
                        "none".to_owned()
                    } else {
                        have.join(", ")
                    }
                ));
            }
        }
    }
    Some(format!(
        "no live backend can run this job: it needs {}",
        parts.join("; ")
    ))
}

/// The model inputs of `missing` (to name the parameters that set them).
pub fn missing_inputs(need: &Requirements, offers: &[Capabilities]) -> BTreeSet<String> {
    offers
        .iter()
        .flat_map(|c| c.missing(need))
        .filter_map(|m| match m {
            Missing::Model { input, .. } => Some(input),
            Missing::Node(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn real() -> Capabilities {
        let text = include_str!("../tests/fixtures/comfyui/files/object_info_full.json");
        Capabilities::from_object_info(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn a_real_object_info_is_read() {
        let caps = real();
        assert_eq!(caps.nodes.len(), 496);
        assert!(caps.nodes.contains("KSampler"));
        assert!(
            caps.models["CheckpointLoaderSimple.ckpt_name"].is_empty(),
            "no checkpoints on that server"
        );
        assert_eq!(
            caps.models["VAELoader.vae_name"],
            ["pixel_space".to_owned()].into_iter().collect()
        );
        assert!(
            caps.models.contains_key("UpscaleModelLoader.model_name"),
            "V3 COMBO inputs too"
        );
        assert!(
            !caps.models.contains_key("KSampler.sampler_name"),
            "samplers are not models"
        );
        assert_eq!(caps.fingerprint(), real().fingerprint(), "stable");
    }

    #[test]
    fn a_graph_needing_a_missing_checkpoint_is_refused_naming_it() {
        let graph = json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
            "3": {"class_type": "KSampler", "inputs": {"sampler_name": "euler", "model": ["4", 0]}}
        });
        let need = Requirements::of_graph(&graph);
        assert_eq!(need.models.len(), 1, "{need:?}");
        let why = refusal(&need, &[real()]).unwrap();
        assert!(why.contains("\"sd_xl_base_1.0.safetensors\" for CheckpointLoaderSimple.ckpt_name; available: none"), "{why}");
        let mut with = real();
        with.models
            .get_mut("CheckpointLoaderSimple.ckpt_name")
            .unwrap()
            .insert("sd_xl_base_1.0.safetensors".into());
        assert_eq!(
            refusal(&need, &[real(), with]),
            None,
            "one backend that has it is enough"
        );
        assert_eq!(refusal(&need, &[]), None, "nobody reported: accepted");
        let exotic =
            Requirements::of_graph(&json!({"1": {"class_type": "NoSuchNode", "inputs": {}}}));
        assert!(
            refusal(&exotic, &[real()])
                .unwrap()
                .contains("node NoSuchNode")
        );
    }
}
