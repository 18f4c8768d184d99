//! Workflows: named ComfyUI API-format graphs with declared parameters.
//!
//! A template file is JSON: `{"name", "description", "params": {name: ParamSpec},
//! "graph": {node id: {"class_type", "inputs"}}}`. Built-in templates live in
//! `workflows/` and are compiled into the binary; users add their own in a directory
//! (`--workflows DIR`). See `docs/workflows.md`.

pub mod graph;
pub mod infer;
pub mod param;
pub mod request;
pub mod ui;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use param::{ParamKind, ParamSpec, Target, Transform};

/// The workflow used when a request names none (as in the prototype).
pub const DEFAULT_WORKFLOW: &str = "sdxl";

/// Templates compiled into the binary.
const BUILT_IN: &[(&str, &str)] = &[
    ("sdxl.json", include_str!("../../workflows/sdxl.json")),
    ("sd15.json", include_str!("../../workflows/sd15.json")),
    ("smoke.json", include_str!("../../workflows/smoke.json")),
    (
        "smoke-img2img.json",
        include_str!("../../workflows/smoke-img2img.json"),
    ),
    (
        "sdxl-img2img.json",
        include_str!("../../workflows/sdxl-img2img.json"),
    ),
    (
        "sd15-inpaint.json",
        include_str!("../../workflows/sd15-inpaint.json"),
    ),
];

/// The pixel budget of a workflow that declares none: 16,777,216 pixels per job
/// (2048² × 4, or 1024² × 16). `smoke` at its old bounds allowed 4096² × 16, about
/// 3 GB per node on the backend, from one anonymous request.
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 24;

/// The parameters whose product the pixel budget bounds.
pub const PIXEL_PARAMS: [&str; 3] = ["width", "height", "batch_size"];

/// Parameters every workflow has, because the prototype's contract has them.
pub const CONTRACT_PARAMS: &[&str] = &["prompt", "seed"];

/// Why a template could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
}

/// A loaded, checked template.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// Most pixels one job may ask for: `width` × `height` × `batch_size` (those of
    /// the three parameters the workflow has). Default [`DEFAULT_MAX_PIXELS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pixels: Option<u64>,
    pub graph: Map<String, Value>,
    /// The published version (absent: a built-in or a `--workflows` file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// The workflow name of a job that carries its own graph (a raw graph, or a
/// ComfyUI client's prompt): no published name starts with `_`.
pub const GRAPH_WORKFLOW: &str = "_graph";

/// Where such a job keeps its graph, among its parameters.
pub const GRAPH_FIELD: &str = "graph";

/// Where a job sent through the ComfyUI-compatible port keeps what ComfyUI's
/// clients gave with it (`client_id`, `number`, `extra_data`), among its
/// parameters: its worker relays ComfyUI's messages about it.
pub const COMFYUI_FIELD: &str = "comfyui";

impl Workflow {
    /// A raw graph as a workflow of no parameters: it runs as it is, only its
    /// `filename_prefix` made the job's.
    pub fn raw(graph: Map<String, Value>) -> Workflow {
        Workflow {
            name: GRAPH_WORKFLOW.to_owned(),
            description: String::new(),
            params: BTreeMap::new(),
            max_pixels: None,
            graph,
            version: None,
        }
    }

    /// Parses and checks one template file's text.
    pub fn parse(file: &str, text: &str) -> Result<Workflow, WorkflowError> {
        let invalid = |message: String| WorkflowError::Invalid {
            file: file.to_owned(),
            message,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        if is_ui_format(&value) || value.get("graph").is_some_and(is_ui_format) {
            return Err(invalid(
                "this is a ComfyUI UI-format workflow (it has \"nodes\" and \"links\"); \
                 Studio Core needs the API format. In ComfyUI, open the workflow and use \
                 Workflow → Export (API) (older versions: enable Dev mode in the settings, \
                 then \"Save (API Format)\"), then put that graph under \"graph\" in a \
                 template file (see docs/workflows.md)"
                    .into(),
            ));
        }
        let wf: Workflow =
            serde_json::from_value(value).map_err(|e| invalid(format!("not a template: {e}")))?;
        wf.check().map_err(invalid)?;
        Ok(wf)
    }

    /// The checks a published workflow passes too (those of a template file).
    pub fn check_published(&self) -> Result<(), String> {
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "workflow name {:?} must be letters, digits, '-' or '_'",
                self.name
            ));
        }
        if self.graph.is_empty() {
            return Err("the graph has no nodes".into());
        }
        for (id, node) in &self.graph {
            if node.get("class_type").and_then(Value::as_str).is_none() {
                return Err(format!("node {id} has no class_type"));
            }
            if !node.get("inputs").is_some_and(Value::is_object) {
                return Err(format!("node {id} has no inputs object"));
            }
        }
        for (name, spec) in &self.params {
            if name == "workflow"
                || request::SUBMISSION_FIELDS.contains(&name.as_str())
                || request::KEPT_FIELDS.contains(&name.as_str())
            {
                return Err(format!(
                    "a parameter cannot be named {name:?} (a submission field of its own)"
                ));
            }
            if spec.kind == ParamKind::Enum && spec.choices.is_empty() {
                return Err(format!("parameter {name}: an enum needs choices"));
            }
            for t in &spec.targets {
                if !self.graph.contains_key(&t.node) {
                    return Err(format!("parameter {name}: no node {} in the graph", t.node));
                }
            }
            if let Some(d) = &spec.default {
                spec.check(d)
                    .map_err(|e| format!("parameter {name}: default {d} {}", e.message))?;
            }
        }
        Ok(())
    }

    /// The graph for one job: parameters written into their targets, every
    /// `filename_prefix` made unique to the job.
    pub fn render(
        &self,
        job_id: &str,
        prompt: &str,
        seed: u64,
        params: &Map<String, Value>,
    ) -> Value {
        let mut graph = Value::Object(self.graph.clone());
        for (name, spec) in &self.params {
            let value = match name.as_str() {
                "prompt" => Some(Value::from(prompt)),
                "seed" => Some(Value::from(seed)),
                _ => params.get(name).cloned().or_else(|| spec.default.clone()),
            };
            if let Some(v) = value {
                spec.apply(&mut graph, &v);
            }
        }
        let prefix = filename_prefix(job_id);
        let savers: Vec<String> = self
            .graph
            .iter()
            .filter(|(_, n)| n["inputs"].get("filename_prefix").is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &savers {
            let p = if savers.len() == 1 {
                prefix.clone()
            } else {
                format!("{prefix}_{}", sanitize(id))
            };
            graph[id]["inputs"]["filename_prefix"] = Value::from(p);
        }
        graph
    }

    /// `Class.input` of a parameter's target (how backends key their model lists).
    pub fn input_key(&self, t: &Target) -> String {
        let class = self
            .graph
            .get(&t.node)
            .and_then(|n| n["class_type"].as_str())
            .unwrap_or("");
        format!("{class}.{}", t.input)
    }

    /// Most pixels one job may ask for.
    pub fn pixel_budget(&self) -> u64 {
        self.max_pixels.unwrap_or(DEFAULT_MAX_PIXELS)
    }

    /// Checks the pixel budget on resolved parameters: `Err` names the parameters
    /// and the budget.
    pub fn check_budget(&self, params: &Map<String, Value>) -> Result<(), String> {
        let used: Vec<(&str, u64)> = PIXEL_PARAMS
            .iter()
            .filter_map(|p| Some((*p, params.get(*p)?.as_u64()?)))
            .collect();
        if used.len() < 2 {
            return Ok(());
        }
        let budget = self.pixel_budget();
        let pixels = used.iter().fold(1u128, |acc, (_, v)| acc * u128::from(*v));
        if pixels <= u128::from(budget) {
            return Ok(());
        }
        let shown: Vec<String> = used.iter().map(|(p, v)| format!("{p} {v}")).collect();
        Err(format!(
            "{} ask for {pixels} pixels; workflow {} allows at most {budget} per job ({})",
            shown.join(" × "),
            self.name,
            used.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(" × ")
        ))
    }

    /// Declared defaults for the parameters a request did not give.
    pub fn resolve_defaults(&self, params: &mut Map<String, Value>) {
        for (name, spec) in &self.params {
            if CONTRACT_PARAMS.contains(&name.as_str()) || params.contains_key(name) {
                continue;
            }
            if let Some(d) = &spec.default {
                params.insert(name.clone(), d.clone());
            }
        }
    }
}

/// The per-job file name prefix: every saved file starts with it, so a cached run can
/// never hand back another job's file.
pub fn filename_prefix(job_id: &str) -> String {
    format!("studio_{}", sanitize(job_id))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A UI-format graph (what ComfyUI's "Save" writes) has `nodes` and `links` lists, or
/// `last_node_id`; an API-format graph is a map of node ids.
pub fn is_ui_format(v: &Value) -> bool {
    v.get("last_node_id").is_some()
        || (v.get("nodes").is_some_and(Value::is_array) && v.get("links").is_some())
}

/// All known workflows, by name.
#[derive(Clone, Debug, Default)]
pub struct WorkflowRegistry {
    by_name: BTreeMap<String, Arc<Workflow>>,
}

impl WorkflowRegistry {
    /// The built-in templates only.
    pub fn built_in() -> Self {
        let by_name = BUILT_IN
            .iter()
            .map(|(file, text)| {
                let wf = Workflow::parse(file, text).expect("built-in templates are valid");
                (wf.name.clone(), Arc::new(wf))
            })
            .collect();
        WorkflowRegistry { by_name }
    }

    /// Built-ins plus every `*.json` in `dir` (a user template replaces a built-in of
    /// the same name). Any invalid file is an error: better to refuse to start than
    /// to run without a workflow someone counts on.
    pub fn load(dir: Option<&Path>) -> Result<Self, WorkflowError> {
        let mut reg = Self::built_in();
        let Some(dir) = dir else { return Ok(reg) };
        let io = |file: &Path, source| WorkflowError::Io {
            file: file.display().to_string(),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            let wf = Workflow::parse(&path.display().to_string(), &text)?;
            reg.by_name.insert(wf.name.clone(), Arc::new(wf));
        }
        Ok(reg)
    }

    pub fn get(&self, name: &str) -> Option<&Workflow> {
        self.by_name.get(name).map(Arc::as_ref)
    }

    /// The shared workflow, to keep beyond this registry's life.
    pub fn get_arc(&self, name: &str) -> Option<Arc<Workflow>> {
        self.by_name.get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Workflow> {
        self.by_name.values().map(Arc::as_ref)
    }

    /// These workflows and `more` (which win on a name both have).
    pub fn with(&self, more: impl IntoIterator<Item = Arc<Workflow>>) -> WorkflowRegistry {
        let mut by_name = self.by_name.clone();
        for wf in more {
            by_name.insert(wf.name.clone(), wf);
        }
        WorkflowRegistry { by_name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn built_ins_load() {
        let reg = WorkflowRegistry::built_in();
        assert_eq!(
            reg.names().collect::<Vec<_>>(),
            [
                "sd15",
                "sd15-inpaint",
                "sdxl",
                "sdxl-img2img",
                "smoke",
                "smoke-img2img"
            ]
        );
    }

    #[test]
    fn ui_format_is_refused_with_export_instructions() {
        let text = r#"{"last_node_id": 9, "nodes": [], "links": []}"#;
        let e = Workflow::parse("mine.json", text).unwrap_err().to_string();
        assert!(e.contains("UI-format"), "{e}");
        assert!(e.contains("Export (API)"), "{e}");
    }

    #[test]
    fn templates_with_dangling_targets_are_refused() {
        let t = json!({"name": "x", "graph": {"1": {"class_type": "A", "inputs": {}}},
            "params": {"steps": {"type": "int", "targets": [{"node": "9", "input": "steps"}]}}});
        let e = Workflow::parse("x.json", &t.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no node 9"), "{e}");
    }

    #[test]
    fn render_writes_values_as_json_and_prefixes_outputs() {
        let reg = WorkflowRegistry::built_in();
        let wf = reg.get("sdxl").unwrap();
        let prompt = "a \"quoted\" {brace} prompt, ünïcødé \\ and\nnewline";
        let mut params = Map::new();
        params.insert("steps".into(), json!(7));
        wf.resolve_defaults(&mut params);
        let g = wf.render("job-1", prompt, u64::MAX, &params);
        let text = g.to_string();
        let back: Value = serde_json::from_str(&text).unwrap();
        let positive =
            back.as_object().unwrap().values().find(|n| {
                n["class_type"] == "CLIPTextEncode" && n["inputs"]["text"] == json!(prompt)
            });
        assert!(positive.is_some(), "prompt arrives intact: {text}");
        let sampler = back
            .as_object()
            .unwrap()
            .values()
            .find(|n| n["class_type"] == "KSampler")
            .unwrap();
        assert_eq!(sampler["inputs"]["seed"], json!(u64::MAX));
        assert_eq!(sampler["inputs"]["steps"], json!(7));
        let saver = back
            .as_object()
            .unwrap()
            .values()
            .find(|n| n["class_type"] == "SaveImage")
            .unwrap();
        assert_eq!(saver["inputs"]["filename_prefix"], json!("studio_job-1"));
    }

    #[test]
    fn the_pixel_budget_bounds_width_height_and_batch() {
        let reg = WorkflowRegistry::built_in();
        let smoke = reg.get("smoke").unwrap();
        let p = |w: u64, h: u64, b: u64| {
            let mut m = Map::new();
            m.insert("width".into(), json!(w));
            m.insert("height".into(), json!(h));
            m.insert("batch_size".into(), json!(b));
            m
        };
        assert!(smoke.check_budget(&p(2048, 2048, 4)).is_ok());
        let e = smoke.check_budget(&p(4096, 4096, 16)).unwrap_err();
        assert!(e.contains("268435456 pixels"), "{e}");
        assert!(e.contains("at most 16777216"), "{e}");
        let mut own = smoke.clone();
        own.max_pixels = Some(100);
        assert!(own.check_budget(&p(10, 10, 1)).is_ok());
        assert!(own.check_budget(&p(10, 10, 2)).is_err());
    }

    #[test]
    fn user_templates_load_from_a_directory() {
        let dir = std::env::temp_dir().join(format!("wf-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("mine.json"),
            json!({"name": "mine", "graph": {"1": {"class_type": "A", "inputs": {}}}}).to_string(),
        )
        .unwrap();
        let reg = WorkflowRegistry::load(Some(&dir)).unwrap();
        assert!(reg.get("mine").is_some());
        assert!(reg.get("sdxl").is_some());
        std::fs::write(dir.join("ui.json"), r#"{"nodes": [], "links": []}"#).unwrap();
        assert!(WorkflowRegistry::load(Some(&dir)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
