//! ComfyUI's UI format converted on the server equals what ComfyUI's own
//! frontend sends for it: every template Comfy-Org ships
//! (`comfyui-workflow-templates` from PyPI, installed by `scripts/test`) whose
//! node classes a CPU ComfyUI has, against the frontend's own conversions
//! (`tests/fixtures/workflows/*.api.json`, made by
//! `scripts/workflow-fixtures.py` in headless Chromium), node by node: ids,
//! class types, inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use studio_core::catalog::api_graph;
use studio_core::workflow::ui::convert;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/workflows")
}

/// The installed templates: `STUDIO_TEMPLATES_DIR`, or the package in the
/// tools venv.
pub fn templates_dir() -> PathBuf {
    if let Ok(d) = std::env::var("STUDIO_TEMPLATES_DIR") {
        return PathBuf::from(d);
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|d| {
        d.filter_map(Result::ok)
            .map(|e| {
                e.path()
                    .join("site-packages/comfyui_workflow_templates/templates")
            })
            .find(|p| p.is_dir())
    });
    found.unwrap_or_else(|| {
        panic!(
            "comfyui-workflow-templates is not installed under {} (scripts/test installs it)",
            lib.display()
        )
    })
}

/// The first difference between two API-format graphs, if any.
fn difference(ours: &Value, theirs: &Value) -> Option<String> {
    let (o, t) = (ours.as_object()?, theirs.as_object()?);
    let ids = |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    if ids(o) != ids(t) {
        return Some(format!(
            "node ids: ours {:?}, the frontend's {:?}",
            ids(o),
            ids(t)
        ));
    }
    for (id, tn) in t {
        let on = &o[id];
        if on["class_type"] != tn["class_type"] {
            return Some(format!(
                "node {id}: class {} vs {}",
                on["class_type"], tn["class_type"]
            ));
        }
        let (oi, ti) = (on["inputs"].as_object()?, tn["inputs"].as_object()?);
        let mut names: Vec<&String> = oi.keys().chain(ti.keys()).collect();
        names.sort();
        names.dedup();
        for n in names {
            if oi.get(n) != ti.get(n) {
                return Some(format!(
                    "node {id} ({}) input {n}: ours {}, the frontend's {}",
                    tn["class_type"],
                    oi.get(n).map_or("absent".into(), Value::to_string),
                    ti.get(n).map_or("absent".into(), Value::to_string)
                ));
            }
        }
    }
    None
}

#[test]
fn comfyuis_templates_convert_as_its_frontend_converts_them() {
    let dir = fixtures();
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("object_info.json")).unwrap())
            .unwrap();
    let known: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("differences.json")).unwrap())
            .unwrap();
    let templates = templates_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".api.json").map(str::to_owned))
        .collect();
    names.sort();
    assert!(names.len() > 100, "the reference conversions are there");
    let mut matched = 0;
    let mut unexpected = Vec::new();
    for name in &names {
        let ui: Value = serde_json::from_str(
            &std::fs::read_to_string(templates.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let theirs: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.api.json"))).unwrap(),
        )
        .unwrap();
        let ours = convert(&ui, &info).map(Value::Object);
        let diff = match &ours {
            Ok(g) => difference(g, &theirs),
            Err(e) => Some(format!("not converted: {e}")),
        };
        // And each passes the checks a published workflow passes.
        if let Err(e) = api_graph(&ui, Some(&info), "workflow") {
            unexpected.push(format!("{name}: would not publish: {e}"));
        }
        match (diff, known.get(name)) {
            (None, None) => matched += 1,
            (None, Some(_)) => unexpected.push(format!(
                "{name}: now matches; take it out of differences.json"
            )),
            (Some(d), None) => unexpected.push(format!("{name}: {d}")),
            (Some(_), Some(_)) => {}
        }
    }
    eprintln!(
        "{matched} of {} templates convert exactly as ComfyUI's frontend converts them; {} differ, each with its reason in tests/fixtures/workflows/differences.json",
        names.len(),
        known.len()
    );
    assert!(unexpected.is_empty(), "{}", unexpected.join("\n"));
}

/// Workflows of our own the templates do not cover, made in ComfyUI's frontend
/// and converted by it (`scripts/workflow-fixtures.py --groups`): group nodes,
/// the older way of nesting, with every widget of the group node changed.
#[test]
fn group_nodes_made_in_the_frontend_convert_as_it_converts_them() {
    let dir = fixtures();
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("object_info.json")).unwrap())
            .unwrap();
    let extra = dir.join("extra");
    let mut names: Vec<String> = std::fs::read_dir(&extra)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".ui.json").map(str::to_owned))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    let read = |n: String| -> Value {
        serde_json::from_str(&std::fs::read_to_string(extra.join(n)).unwrap()).unwrap()
    };
    for name in names {
        let ui = read(format!("{name}.ui.json"));
        let theirs = read(format!("{name}.api.json"));
        assert!(
            ui["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"].as_str().unwrap().starts_with("workflow>")),
            "{name} has a group node"
        );
        let ours = Value::Object(convert(&ui, &info).unwrap_or_else(|e| panic!("{name}: {e}")));
        assert_eq!(difference(&ours, &theirs), None, "{name}");
        api_graph(&ui, Some(&info), "workflow").unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
