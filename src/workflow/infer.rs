//! Parameters read from a graph, for a workflow published without `params`:
//! what a studio's designers expect a form to offer, typed and bounded by the
//! backends' `/object_info`.
//!
//! - the sampler's `positive` text is `prompt`, its `negative` text
//!   `negative_prompt` (followed upstream through conditioning nodes to the node
//!   with a `text` input);
//! - the sampler's `seed` (or `noise_seed`), `steps`, `cfg`, `sampler_name`,
//!   `scheduler` and `denoise`;
//! - the latent it starts from: `width`, `height`, `batch_size` (with no
//!   sampler, those of the first `Empty…` node with a size);
//! - `checkpoint` (and `lora`, `lora_2`, …) as enums of what the backends hold;
//! - each `LoadImage` as an `image` parameter (`image`, `image_2`, …), each
//!   `LoadImageMask` as a `mask`;
//! - a node titled `$name` exposes its widgets: `name` for one, `name_<input>`
//!   for several (those the names above already offer keep those names).
//!
//! The graph's own values become the defaults.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use super::graph::as_link;
use super::param::{ParamKind, ParamSpec, Target};

/// The sampler inputs offered, and the names they get.
const SAMPLER_INPUTS: [(&str, &str); 7] = [
    ("seed", "seed"),
    ("noise_seed", "seed"),
    ("steps", "steps"),
    ("cfg", "cfg"),
    ("sampler_name", "sampler_name"),
    ("scheduler", "scheduler"),
    ("denoise", "denoise"),
];

/// Parameters for `graph`, typed from `object_info` when it is known.
pub fn infer(
    graph: &Map<String, Value>,
    object_info: Option<&Value>,
) -> BTreeMap<String, ParamSpec> {
    let mut out: BTreeMap<String, ParamSpec> = BTreeMap::new();
    let mut ids: Vec<&String> = graph.keys().collect();
    ids.sort_by_key(|id| (id.parse::<u64>().unwrap_or(u64::MAX), id.as_str()));
    let sampler = ids.iter().copied().find(|id| {
        graph[*id]["inputs"]
            .get("positive")
            .is_some_and(|v| as_link(v).is_some())
    });
    if let Some(s) = sampler {
        let inputs = &graph[s]["inputs"];
        for (side, name) in [("positive", "prompt"), ("negative", "negative_prompt")] {
            if let Some(node) = text_source(graph, inputs.get(side)) {
                let mut spec = spec_of(graph, object_info, &node, "text");
                if name == "prompt" {
                    spec.default = None;
                }
                out.insert(name.to_owned(), spec);
            }
        }
        for (input, name) in SAMPLER_INPUTS {
            if out.contains_key(name) {
                continue;
            }
            if inputs.get(input).is_some_and(is_widget_value) {
                let mut spec = spec_of(graph, object_info, s, input);
                if name == "seed" {
                    spec.kind = ParamKind::Int;
                    spec.min = Some(Number::from(0u64));
                    spec.max = Some(Number::from(u64::MAX));
                    spec.default = None;
                }
                out.insert(name.to_owned(), spec);
            }
        }
        if let Some((latent, _)) = inputs.get("latent_image").and_then(as_link) {
            for input in ["width", "height", "batch_size"] {
                if graph
                    .get(latent)
                    .and_then(|n| n["inputs"].get(input))
                    .is_some_and(is_widget_value)
                {
                    out.insert(input.to_owned(), spec_of(graph, object_info, latent, input));
                }
            }
        }
    }
    if !out.contains_key("width") {
        // No sampler's latent (a graph that makes pictures otherwise): the first
        // empty canvas with a size.
        let canvas = ids.iter().copied().find(|id| {
            let n = &graph[*id];
            n["class_type"]
                .as_str()
                .is_some_and(|c| c.starts_with("Empty"))
                && ["width", "height"]
                    .iter()
                    .all(|i| n["inputs"].get(*i).is_some_and(is_widget_value))
        });
        if let Some(c) = canvas {
            for input in ["width", "height", "batch_size"] {
                if graph[c]["inputs"].get(input).is_some_and(is_widget_value) {
                    out.insert(input.to_owned(), spec_of(graph, object_info, c, input));
                }
            }
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut numbered = |base: &'static str| {
        let n = counts.entry(base).or_insert(0);
        *n += 1;
        if *n == 1 {
            base.to_owned()
        } else {
            format!("{base}_{n}")
        }
    };
    for id in &ids {
        let node = &graph[*id];
        let class = node["class_type"].as_str().unwrap_or("");
        let inputs = &node["inputs"];
        let (input, base) = match class {
            "CheckpointLoaderSimple" | "CheckpointLoader" | "ImageOnlyCheckpointLoader" => {
                ("ckpt_name", "checkpoint")
            }
            "LoraLoader" | "LoraLoaderModelOnly" => ("lora_name", "lora"),
            "LoadImage" => ("image", "image"),
            "LoadImageMask" => ("image", "mask"),
            _ => continue,
        };
        if !inputs.get(input).is_some_and(Value::is_string) {
            continue;
        }
        let name = numbered(base);
        let mut spec = spec_of(graph, object_info, id, input);
        if base == "image" || base == "mask" {
            spec.kind = if base == "image" {
                ParamKind::Image
            } else {
                ParamKind::Mask
            };
            spec.default = None;
            spec.choices.clear();
        }
        out.insert(name, spec);
    }
    for id in &ids {
        let node = &graph[*id];
        let Some(name) = node
            .pointer("/_meta/title")
            .and_then(Value::as_str)
            .and_then(|t| t.strip_prefix('$'))
            .map(str::trim)
            .filter(|n| valid_name(n))
        else {
            continue;
        };
        let Some(inputs) = node["inputs"].as_object() else {
            continue;
        };
        let widgets: Vec<&String> = inputs
            .iter()
            .filter(|(_, v)| is_widget_value(v))
            .map(|(k, _)| k)
            .collect();
        for w in &widgets {
            // A widget the usual names already offer (the sampler's latent
            // titled `$size`: its width stays `width`) keeps that name.
            let taken = out
                .values()
                .any(|p| p.targets.iter().any(|t| t.node == **id && t.input == **w));
            if taken {
                continue;
            }
            let pname = if widgets.len() == 1 {
                name.to_owned()
            } else {
                format!("{name}_{w}")
            };
            out.insert(pname, spec_of(graph, object_info, id, w));
        }
    }
    out
}

/// Whether a parameter name may be used (as template names are).
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A widget's value (not a link).
fn is_widget_value(v: &Value) -> bool {
    !v.is_array() && !v.is_null() && !v.is_object()
}

/// The node upstream of `link` whose `text` input is a string: the text encoder
/// (followed through conditioning nodes, first link first).
fn text_source(graph: &Map<String, Value>, link: Option<&Value>) -> Option<String> {
    let mut next = link.and_then(as_link).map(|(id, _)| id.to_owned());
    let mut seen = 0;
    while let Some(id) = next {
        seen += 1;
        if seen > 64 {
            return None;
        }
        let inputs = graph.get(&id)?.get("inputs")?.as_object()?;
        if inputs.get("text").is_some_and(Value::is_string) {
            return Some(id);
        }
        next = [
            "conditioning",
            "positive",
            "conditioning_1",
            "conditioning_to",
        ]
        .iter()
        .find_map(|k| inputs.get(*k).and_then(as_link))
        .map(|(id, _)| id.to_owned());
    }
    None
}

/// The parameter for `node`'s input `input`: typed and bounded by its
/// `/object_info` spec when known, else by its value; its value the default.
fn spec_of(
    graph: &Map<String, Value>,
    object_info: Option<&Value>,
    node: &str,
    input: &str,
) -> ParamSpec {
    let current = graph[node]["inputs"][input].clone();
    let class = graph[node]["class_type"].as_str().unwrap_or("");
    let def = object_info.and_then(|i| {
        let c = i.get(class)?;
        c.pointer(&format!("/input/required/{input}"))
            .or_else(|| c.pointer(&format!("/input/optional/{input}")))
    });
    let mut spec = ParamSpec {
        kind: ParamKind::String,
        description: format!("{class} (node {node}) {input}"),
        default: Some(current.clone()),
        min: None,
        max: None,
        max_length: None,
        choices: Vec::new(),
        targets: vec![Target {
            node: node.to_owned(),
            input: input.to_owned(),
            transform: None,
        }],
    };
    let kind = def.and_then(|d| d.get(0));
    let opts = def.and_then(|d| d.get(1));
    let num = |k: &str| {
        opts.and_then(|o| o.get(k))
            .and_then(Value::as_number)
            .cloned()
    };
    match kind {
        Some(Value::Array(list)) => {
            spec.kind = ParamKind::Enum;
            spec.choices = list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
        }
        Some(Value::String(t)) if t == "COMBO" => {
            spec.kind = ParamKind::Enum;
            spec.choices = opts
                .and_then(|o| o.get("options"))
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
        }
        Some(Value::String(t)) if t == "INT" => {
            spec.kind = ParamKind::Int;
            spec.min = num("min");
            spec.max = num("max");
        }
        Some(Value::String(t)) if t == "FLOAT" => {
            spec.kind = ParamKind::Float;
            spec.min = num("min");
            spec.max = num("max");
        }
        Some(Value::String(t)) if t == "BOOLEAN" => spec.kind = ParamKind::Bool,
        _ => {
            spec.kind = match &current {
                Value::Number(n) if n.is_i64() || n.is_u64() => ParamKind::Int,
                Value::Number(_) => ParamKind::Float,
                Value::Bool(_) => ParamKind::Bool,
                _ => ParamKind::String,
            };
        }
    }
    // A list without the graph's own value (a file no backend has now) would
    // make the default invalid: offer what the backends hold, default to none.
    if spec.kind == ParamKind::Enum {
        if spec.choices.is_empty() {
            spec.kind = ParamKind::String;
        } else if !current
            .as_str()
            .is_some_and(|c| spec.choices.iter().any(|x| x == c))
        {
            spec.default = None;
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn txt2img() -> Map<String, Value> {
        json!({
            "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 8.0, "sampler_name": "euler",
                  "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
                  "negative": ["7", 0], "latent_image": ["5", 0]}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]},
                  "_meta": {"title": "Negative"}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}},
            "10": {"class_type": "StringConstant", "inputs": {"string": "oil paint"}, "_meta": {"title": "$style"}}
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn info() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/comfyui/files/object_info_full.json"
        ))
        .unwrap()
    }

    #[test]
    fn a_text_to_image_graph_gets_the_usual_form() {
        let mut info = info();
        info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = json!([
            "sd_xl_base_1.0.safetensors",
            "v1-5-pruned-emaonly.safetensors"
        ]);
        let p = infer(&txt2img(), Some(&info));
        let names: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "batch_size",
                "cfg",
                "checkpoint",
                "denoise",
                "height",
                "negative_prompt",
                "prompt",
                "sampler_name",
                "scheduler",
                "seed",
                "steps",
                "style",
                "width"
            ]
        );
        assert_eq!(p["prompt"].targets[0].node, "6");
        assert_eq!(p["negative_prompt"].targets[0].node, "7");
        assert_eq!(p["negative_prompt"].default, Some(json!("blurry")));
        assert_eq!(p["steps"].kind, ParamKind::Int);
        assert_eq!(p["steps"].default, Some(json!(20)));
        assert_eq!(p["steps"].max, Some(Number::from(10000)));
        assert_eq!(p["cfg"].kind, ParamKind::Float);
        assert_eq!(p["sampler_name"].kind, ParamKind::Enum);
        assert!(p["sampler_name"].choices.iter().any(|c| c == "dpmpp_2m"));
        assert_eq!(p["width"].targets[0].node, "5");
        assert_eq!(p["checkpoint"].kind, ParamKind::Enum);
        assert_eq!(p["checkpoint"].choices.len(), 2, "what the backends hold");
        assert_eq!(
            p["checkpoint"].default,
            Some(json!("v1-5-pruned-emaonly.safetensors"))
        );
        assert_eq!(p["style"].default, Some(json!("oil paint")));
        assert_eq!(p["seed"].default, None);
    }

    #[test]
    fn without_object_info_values_say_the_types() {
        let p = infer(&txt2img(), None);
        assert_eq!(p["steps"].kind, ParamKind::Int);
        assert_eq!(p["cfg"].kind, ParamKind::Float);
        assert_eq!(p["checkpoint"].kind, ParamKind::String);
    }

    #[test]
    fn with_no_sampler_the_first_empty_canvas_gives_the_size() {
        let g = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0}},
            "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        });
        let p = infer(g.as_object().unwrap(), Some(&info()));
        assert_eq!(p["width"].targets[0].node, "1");
        assert_eq!(p["height"].default, Some(json!(48)));
        assert_eq!(p["width"].max, Some(Number::from(16384)));
        assert!(p.contains_key("batch_size"));
        assert!(!p.contains_key("prompt"));
    }

    #[test]
    fn a_titled_node_exposes_only_what_the_usual_names_do_not() {
        let g = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 0},
                  "_meta": {"title": "$canvas"}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        });
        let p = infer(g.as_object().unwrap(), Some(&info()));
        let names: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(names, ["batch_size", "canvas_color", "height", "width"]);
    }

    #[test]
    fn pictures_become_image_and_mask_parameters() {
        let g = json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
            "3": {"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "red"}}
        });
        let p = infer(g.as_object().unwrap(), None);
        assert_eq!(p["image"].kind, ParamKind::Image);
        assert_eq!(p["image_2"].targets[0].node, "2");
        assert_eq!(p["mask"].kind, ParamKind::Mask);
        assert_eq!(p["image"].default, None);
    }
}
