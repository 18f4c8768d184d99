//! Checks on an API-format graph from outside (a published workflow, a raw graph
//! in a submission): its shape, its links, its size, no cycles. What ComfyUI would
//! refuse later, refused now with the node named.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Most nodes a graph may have: the largest real workflows have a few hundred.
pub const MAX_NODES: usize = 2_000;

/// What is wrong with a graph, and at which node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", node.as_ref().map(|n| format!("node {n}: ")).unwrap_or_default())]
pub struct GraphError {
    pub node: Option<String>,
    pub message: String,
}

fn at(node: &str, message: impl Into<String>) -> GraphError {
    GraphError {
        node: Some(node.to_owned()),
        message: message.into(),
    }
}

/// A link in an input: `[source node id, output index]`.
pub fn as_link(v: &Value) -> Option<(&str, u64)> {
    let a = v.as_array()?;
    if a.len() != 2 {
        return None;
    }
    Some((a[0].as_str()?, a[1].as_u64()?))
}

/// Checks an API-format graph: a non-empty map of at most [`MAX_NODES`] nodes,
/// each with a `class_type` and an `inputs` object; every input that is an array
/// is a link `[node id, output index]` to a node of the graph; no cycles.
pub fn check(graph: &Value) -> Result<(), GraphError> {
    let nodes = graph.as_object().ok_or_else(|| GraphError {
        node: None,
        message: "an API-format graph is an object of nodes by id".into(),
    })?;
    if nodes.is_empty() {
        return Err(GraphError {
            node: None,
            message: "the graph has no nodes".into(),
        });
    }
    if nodes.len() > MAX_NODES {
        return Err(GraphError {
            node: None,
            message: format!(
                "the graph has {} nodes; at most {MAX_NODES} are accepted",
                nodes.len()
            ),
        });
    }
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (id, node) in nodes {
        if id.is_empty() || id.len() > 64 {
            return Err(at(id, "a node id is 1 to 64 characters"));
        }
        let class = node.get("class_type").and_then(Value::as_str);
        if class.is_none_or(str::is_empty) {
            return Err(at(id, "no class_type"));
        }
        let inputs = node
            .get("inputs")
            .and_then(Value::as_object)
            .ok_or_else(|| at(id, "no inputs object"))?;
        let deps = edges.entry(id).or_default();
        for (name, v) in inputs {
            if !v.is_array() {
                continue;
            }
            let (src, _) = as_link(v).ok_or_else(|| {
                at(
                    id,
                    format!(
                        "input {name:?} is a list but not a link ([\"node id\", output index])"
                    ),
                )
            })?;
            if !nodes.contains_key(src) {
                return Err(at(
                    id,
                    format!("input {name:?} links to node {src}, which is not in the graph"),
                ));
            }
            deps.insert(src);
        }
    }
    if let Some(node) = cycle(&edges) {
        return Err(at(node, "is part of a cycle: a graph must flow one way"));
    }
    Ok(())
}

/// A node on a cycle, if the links make one (Kahn's algorithm).
fn cycle<'a>(edges: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Option<&'a str> {
    let mut waiting: BTreeMap<&str, usize> = edges.iter().map(|(n, d)| (*n, d.len())).collect();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, deps) in edges {
        for d in deps {
            users.entry(d).or_default().push(node);
        }
    }
    let mut ready: Vec<&str> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut done = 0;
    while let Some(n) = ready.pop() {
        done += 1;
        for u in users.get(n).into_iter().flatten() {
            let w = waiting.get_mut(u).expect("every user is a node");
            *w -= 1;
            if *w == 0 {
                ready.push(u);
            }
        }
    }
    (done < edges.len()).then(|| {
        waiting
            .into_iter()
            .find(|(_, n)| *n > 0)
            .map(|(k, _)| k)
            .expect("a node left waiting")
    })
}

/// The node classes of a graph that `object_info` does not have (when it is
/// known), by node id.
pub fn unknown_classes(graph: &Map<String, Value>, object_info: &Value) -> Vec<(String, String)> {
    graph
        .iter()
        .filter_map(|(id, n)| {
            let class = n.get("class_type")?.as_str()?;
            object_info
                .get(class)
                .is_none()
                .then(|| (id.clone(), class.to_owned()))
        })
        .collect()
}

/// Types an input takes as a value (a widget's); others come through links.
const VALUE_TYPES: [&str; 5] = ["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"];

/// The first input given a value where `object_info` says it takes a link: its
/// type is one some class outputs (an `IMAGE`, a `MODEL`…), not a widget's.
/// `(node id, input, type)`.
pub fn value_for_link(
    graph: &Map<String, Value>,
    object_info: &Value,
) -> Option<(String, String, String)> {
    let classes = object_info.as_object()?;
    let outputs: BTreeSet<&str> = classes
        .values()
        .filter_map(|c| c.get("output")?.as_array())
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| !VALUE_TYPES.contains(t) && *t != "*")
        .collect();
    for (id, node) in graph {
        let Some(def) = node
            .get("class_type")
            .and_then(Value::as_str)
            .and_then(|c| classes.get(c))
        else {
            continue;
        };
        let Some(inputs) = node.get("inputs").and_then(Value::as_object) else {
            continue;
        };
        for (name, v) in inputs {
            if as_link(v).is_some() {
                continue;
            }
            let ty = ["required", "optional"]
                .iter()
                .find_map(|s| def.pointer(&format!("/input/{s}/{}", escape(name))))
                .and_then(|spec| spec.get(0))
                .and_then(Value::as_str);
            if let Some(ty) = ty.filter(|t| outputs.contains(t)) {
                return Some((id.clone(), name.clone(), ty.to_owned()));
            }
        }
    }
    None
}

/// A JSON pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smoke() -> Value {
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
        })
    }

    #[test]
    fn a_good_graph_passes() {
        check(&smoke()).unwrap();
    }

    #[test]
    fn bad_graphs_name_the_node() {
        let mut g = smoke();
        g["2"]["inputs"]["images"] = json!(["9", 0]);
        assert_eq!(check(&g).unwrap_err().node.as_deref(), Some("2"));
        let mut g = smoke();
        g["2"]["inputs"]["images"] = json!([1, 2, 3]);
        assert!(check(&g).unwrap_err().message.contains("not a link"));
        let mut g = smoke();
        g["1"]["inputs"]["width"] = json!(["2", 0]);
        assert!(check(&g).unwrap_err().message.contains("cycle"));
        let mut g = smoke();
        g["1"].as_object_mut().unwrap().remove("class_type");
        assert!(check(&g).unwrap_err().message.contains("class_type"));
        assert!(check(&json!([])).is_err());
        assert!(check(&json!({})).is_err());
    }

    #[test]
    fn a_value_where_a_link_belongs_is_found() {
        let info = json!({
            "EmptyImage": {"input": {"required": {"width": ["INT", {}]}}, "output": ["IMAGE"]},
            "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}}, "output": []}
        });
        let g = smoke();
        assert_eq!(value_for_link(g.as_object().unwrap(), &info), None);
        let mut g = smoke();
        g["2"]["inputs"]["images"] = json!({"node": "1"});
        assert_eq!(
            value_for_link(g.as_object().unwrap(), &info),
            Some(("2".into(), "images".into(), "IMAGE".into()))
        );
        let mut g = smoke();
        g["2"]["inputs"]["filename_prefix"] = json!(7);
        assert_eq!(
            value_for_link(g.as_object().unwrap(), &info),
            None,
            "a widget's value"
        );
    }

    #[test]
    fn ten_thousand_nodes_are_too_many() {
        let mut g = Map::new();
        for i in 0..10_000 {
            g.insert(
                i.to_string(),
                json!({"class_type": "EmptyImage", "inputs": {}}),
            );
        }
        assert!(
            check(&Value::Object(g))
                .unwrap_err()
                .message
                .contains("at most")
        );
    }
}
