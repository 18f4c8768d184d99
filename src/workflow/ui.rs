//! ComfyUI's UI format (what *Workflow → Save* writes: `nodes`, `links`,
//! `widgets_values`) turned into the API format, as ComfyUI's own frontend does
//! it when it queues a prompt (`app.graphToPrompt()`), with the backends'
//! `/object_info` saying which inputs are widgets and in which order:
//!
//! - each node's widgets, in the order of its class's inputs (`input_order`,
//!   required then optional), take `widgets_values` in turn; an INT or COMBO
//!   input with `control_after_generate` is followed by a widget of the
//!   frontend's own (its value is in `widgets_values`, never in the prompt), and
//!   so is an image or video input with an upload button;
//! - links become `[source id, output slot]`, followed through `Reroute` nodes
//!   and through bypassed nodes (to the bypassed node's input of the same type);
//!   a `PrimitiveNode` writes its value into the inputs it feeds;
//! - muted nodes (mode 2) and bypassed ones (mode 4) are left out, notes and
//!   other virtual nodes too, and so are inputs linked from what was left out;
//! - subgraphs (`definitions.subgraphs`) are expanded, their nodes' ids written
//!   `<outer id>:<inner id>` as the frontend writes them;
//! - `_meta.title` is the node's title, or its class's display name.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

/// Most nodes converted (subgraphs expanded): a bound on work for hostile files.
pub const MAX_UI_NODES: usize = 5_000;

/// Why a UI-format workflow cannot be converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", node.as_ref().map(|n| format!("node {n}: ")).unwrap_or_default())]
pub struct UiError {
    pub node: Option<String>,
    pub message: String,
}

fn err(node: impl Into<Option<String>>, message: impl Into<String>) -> UiError {
    UiError {
        node: node.into(),
        message: message.into(),
    }
}

/// Node classes the frontend only draws: never part of a prompt.
const VIRTUAL: [&str; 5] = [
    "Note",
    "MarkdownNote",
    "PrimitiveNode",
    "Reroute",
    "GroupNode",
];

/// Modes: 2 never runs (muted), 4 is bypassed.
const MUTED: u64 = 2;
const BYPASSED: u64 = 4;

/// One link: from (node, slot) to (node, slot), of a type.
#[derive(Clone, Debug)]
struct Link {
    from: String,
    from_slot: u64,
    ty: String,
}

/// A node of the flattened graph.
#[derive(Clone, Debug)]
struct Node {
    id: String,
    class: String,
    mode: u64,
    title: Option<String>,
    /// Its inputs (sockets): name, type, the link into it, whether it is a
    /// widget turned into an input.
    inputs: Vec<(String, String, Option<String>, Option<String>)>,
    widgets_values: Value,
}

/// The flattened graph: nodes by id, links by id.
struct Flat {
    nodes: Vec<Node>,
    by_id: HashMap<String, usize>,
    links: HashMap<String, Link>,
    /// Values a subgraph instance's widgets give the inner inputs they stand
    /// for, by (inner node id, input name).
    promoted: HashMap<(String, String), Value>,
}

/// Converts a UI-format workflow (with `object_info`: what the backends have)
/// to an API-format graph.
pub fn convert(ui: &Value, object_info: &Value) -> Result<Map<String, Value>, UiError> {
    let flat = flatten(ui, object_info)?;
    let mut out = Map::new();
    // Primitive nodes write their value into the widgets they feed.
    let mut primed: HashMap<(String, String), Value> = flat.promoted.clone();
    for node in &flat.nodes {
        if node.class != "PrimitiveNode" {
            continue;
        }
        let value = node.widgets_values.get(0).cloned().unwrap_or(Value::Null);
        for (lid, link) in &flat.links {
            if link.from != node.id {
                continue;
            }
            // The input this link feeds.
            for target in &flat.nodes {
                for (name, _, l, _) in &target.inputs {
                    if l.as_deref() == Some(lid.as_str()) {
                        primed.insert((target.id.clone(), name.clone()), value.clone());
                    }
                }
            }
        }
    }
    for node in &flat.nodes {
        if VIRTUAL.contains(&node.class.as_str()) || node.mode == MUTED || node.mode == BYPASSED {
            continue;
        }
        let def = object_info.get(&node.class).ok_or_else(|| {
            err(
                node.id.clone(),
                format!("no live backend has node class {:?}", node.class),
            )
        })?;
        let mut inputs = Map::new();
        for (name, value) in widget_values(node, def)? {
            let value = primed
                .get(&(node.id.clone(), name.clone()))
                .cloned()
                .unwrap_or(value);
            let value = match value {
                Value::Array(a) => json!({"__value__": a}),
                v => v,
            };
            inputs.insert(name, value);
        }
        for (name, ty, link, _) in &node.inputs {
            let Some(lid) = link else { continue };
            if let Some((from, slot)) = resolve(&flat, lid, ty)? {
                inputs.insert(name.clone(), json!([from, slot]));
            }
        }
        let title = node.title.clone().unwrap_or_else(|| {
            def.get("display_name")
                .and_then(Value::as_str)
                .unwrap_or(&node.class)
                .to_owned()
        });
        out.insert(
            node.id.clone(),
            json!({"inputs": inputs, "class_type": node.class, "_meta": {"title": title}}),
        );
    }
    // Inputs linked from nodes left out go.
    let ids: Vec<String> = out.keys().cloned().collect();
    for node in out.values_mut() {
        if let Some(inputs) = node.get_mut("inputs").and_then(Value::as_object_mut) {
            inputs.retain(|_, v| match v.as_array() {
                Some(a) if a.len() == 2 => {
                    a[0].as_str().is_some_and(|s| ids.iter().any(|i| i == s))
                }
                _ => true,
            });
        }
    }
    Ok(out)
}

/// Where a link into a node really comes from: through reroutes and bypassed
/// nodes; `None` when it leads to nothing that runs.
fn resolve(flat: &Flat, link: &str, ty: &str) -> Result<Option<(String, u64)>, UiError> {
    let mut link = match flat.links.get(link) {
        Some(l) => l.clone(),
        None => return Ok(None),
    };
    for _ in 0..MAX_UI_NODES {
        let Some(&i) = flat.by_id.get(&link.from) else {
            return Ok(None);
        };
        let parent = &flat.nodes[i];
        if parent.class == "Reroute" {
            let Some(next) = parent.inputs.first().and_then(|(_, _, l, _)| l.clone()) else {
                return Ok(None);
            };
            link = match flat.links.get(&next) {
                Some(l) => l.clone(),
                None => return Ok(None),
            };
            continue;
        }
        if parent.mode == BYPASSED {
            // The bypassed node passes on its input of the same type: the one at
            // the output's slot if it matches, else the first that does.
            let want = if link.ty.is_empty() {
                ty
            } else {
                link.ty.as_str()
            };
            let slot = link.from_slot as usize;
            let pick = parent
                .inputs
                .get(slot)
                .filter(|(_, t, l, _)| l.is_some() && types_match(t, want))
                .or_else(|| {
                    parent
                        .inputs
                        .iter()
                        .find(|(_, t, l, _)| l.is_some() && types_match(t, want))
                });
            let Some((_, _, Some(next), _)) = pick else {
                return Ok(None);
            };
            link = match flat.links.get(next) {
                Some(l) => l.clone(),
                None => return Ok(None),
            };
            continue;
        }
        if VIRTUAL.contains(&parent.class.as_str()) {
            return Ok(None);
        }
        return Ok(Some((parent.id.clone(), link.from_slot)));
    }
    Err(err(None, "links loop through reroutes or bypassed nodes"))
}

fn types_match(a: &str, b: &str) -> bool {
    a == b || a == "*" || b == "*"
}

/// One widget of a node as the frontend makes it.
struct Widget {
    name: String,
    kind: WidgetKind,
    /// Its value when `widgets_values` has none for it (the spec's default).
    default: Value,
}

enum WidgetKind {
    /// A value from `widgets_values`.
    Value,
    /// The frontend's own (a seed's "control after generate", an upload button,
    /// an auto-refresh toggle): it takes a place in `widgets_values`, never a
    /// place in the prompt.
    Hidden,
    /// The frontend's own, sent with a fixed value (a refresh button sends
    /// "refresh"; audio players and 3D previews send "").
    Fixed(Value),
}

/// Classes the frontend's extensions give a widget of their own at the end of
/// their required inputs, sent as "" (the audio player, the 3D preview).
const ADDED_WIDGETS: [(&str, &str); 8] = [
    ("LoadAudio", "audioUI"),
    ("SaveAudio", "audioUI"),
    ("PreviewAudio", "audioUI"),
    ("SaveAudioMP3", "audioUI"),
    ("SaveAudioOpus", "audioUI"),
    ("SaveGLB", "image"),
    ("Preview3D", "image"),
    ("Preview3DAnimation", "image"),
];

/// The widgets the frontend makes for a class, in order.
fn widgets_of(class: &str, def: &Value) -> Vec<Widget> {
    let mut out = Vec::new();
    let hidden = |name: &str| Widget {
        name: name.to_owned(),
        kind: WidgetKind::Hidden,
        default: Value::Null,
    };
    let fixed = |name: &str, v: Value| Widget {
        name: name.to_owned(),
        kind: WidgetKind::Fixed(v.clone()),
        default: v,
    };
    for section in ["required", "optional"] {
        let specs = def
            .pointer(&format!("/input/{section}"))
            .and_then(Value::as_object);
        if let Some(specs) = specs {
            let order: Vec<String> = def
                .pointer(&format!("/input_order/{section}"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_else(|| specs.keys().cloned().collect());
            for name in order {
                let Some(spec) = specs.get(&name) else {
                    continue;
                };
                if spec.get(0).and_then(Value::as_str) == Some("AUDIO_RECORD") {
                    // The recorder: a player sent as "" when nothing was
                    // recorded in the browser, and its record button.
                    out.push(fixed(&name, json!("")));
                    out.push(hidden("record"));
                    continue;
                }
                if !is_widget(spec) {
                    continue;
                }
                out.push(Widget {
                    name: name.clone(),
                    kind: WidgetKind::Value,
                    default: default_of(spec),
                });
                let opts = spec.get(1);
                let flag = |k: &str| {
                    opts.and_then(|o| o.get(k))
                        .is_some_and(|v| v.as_bool().unwrap_or(!v.is_null()))
                };
                if flag("control_after_generate") {
                    out.push(hidden("control_after_generate"));
                }
                if let Some(remote) = opts.and_then(|o| o.get("remote")) {
                    out.push(hidden("auto-refresh"));
                    if remote.get("refresh_button").and_then(Value::as_bool) == Some(true) {
                        out.push(fixed("refresh", json!("refresh")));
                    }
                }
                if [
                    "image_upload",
                    "video_upload",
                    "audio_upload",
                    "animated_image_upload",
                ]
                .iter()
                .any(|k| flag(k))
                {
                    out.push(hidden("upload"));
                }
            }
        }
        if section == "required" {
            for (c, name) in ADDED_WIDGETS {
                if c == class {
                    out.push(fixed(name, json!("")));
                }
            }
        }
    }
    if class == "PreviewAny" {
        // Made after the node (its value never saved): sent as "".
        out.push(fixed("preview", json!("")));
    }
    out
}

/// A widget's value when the saved workflow has none: the spec's default, else
/// the type's (the first choice of a list, the minimum of a number, "", false).
fn default_of(spec: &Value) -> Value {
    let opts = spec.get(1);
    if let Some(d) = opts.and_then(|o| o.get("default")) {
        return d.clone();
    }
    match spec.get(0) {
        Some(Value::Array(list)) => list.first().cloned().unwrap_or(Value::Null),
        Some(Value::String(t)) => match t.as_str() {
            "COMBO" => opts
                .and_then(|o| o.get("options"))
                .and_then(|o| o.get(0))
                .cloned()
                .unwrap_or(Value::Null),
            "INT" | "FLOAT" => opts.and_then(|o| o.get("min")).cloned().unwrap_or(json!(0)),
            "BOOLEAN" => json!(false),
            _ => json!(""),
        },
        _ => Value::Null,
    }
}

/// A number as JavaScript writes it: an integral float is an integer.
fn as_js(v: Value) -> Value {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        v => v,
    }
}

/// The prompt's widget inputs of a node, with their values from
/// `widgets_values` (or their defaults).
fn widget_values(node: &Node, def: &Value) -> Result<Vec<(String, Value)>, UiError> {
    let widgets = widgets_of(&node.class, def);
    let mut out = Vec::new();
    for (i, w) in widgets.iter().enumerate() {
        let saved = match &node.widgets_values {
            Value::Array(values) => values.get(i).cloned(),
            Value::Object(map) => map.get(&w.name).cloned(),
            _ => None,
        };
        match &w.kind {
            WidgetKind::Hidden => {}
            WidgetKind::Fixed(v) => out.push((w.name.clone(), v.clone())),
            WidgetKind::Value => {
                let v = saved.unwrap_or_else(|| w.default.clone());
                out.push((w.name.clone(), as_js(v)));
            }
        }
    }
    Ok(out)
}

/// Whether an input spec is drawn as a widget (a value in the node), not only a
/// socket.
fn is_widget(spec: &Value) -> bool {
    let opts = spec.get(1);
    if opts
        .and_then(|o| o.get("forceInput"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        return false;
    }
    match spec.get(0) {
        Some(Value::Array(_)) => true,
        Some(Value::String(t)) => {
            matches!(t.as_str(), "INT" | "FLOAT" | "STRING" | "BOOLEAN" | "COMBO")
        }
        _ => false,
    }
}

/// What a level's nodes may name besides node classes: subgraphs, the older
/// group nodes, and what the backends have (a group node's inputs and outputs
/// are its inner nodes' classes').
struct Defs<'a> {
    subgraphs: HashMap<String, &'a Value>,
    groups: Option<&'a Map<String, Value>>,
    info: &'a Value,
}

/// The UI graph with subgraphs and group nodes expanded: nodes with their final
/// ids, links by (scoped) id.
fn flatten(ui: &Value, info: &Value) -> Result<Flat, UiError> {
    let defs = Defs {
        subgraphs: ui
            .pointer("/definitions/subgraphs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s.get("id")?.as_str()?.to_owned(), s)))
            .collect(),
        groups: ui.pointer("/extra/groupNodes").and_then(Value::as_object),
        info,
    };
    let mut flat = Flat {
        nodes: Vec::new(),
        by_id: HashMap::new(),
        links: HashMap::new(),
        promoted: HashMap::new(),
    };
    add_level(ui, "", &defs, &mut flat, 0)?;
    Ok(flat)
}

/// A link list: `[id, from, from_slot, to, to_slot, type]` arrays (top level) or
/// objects (`{id, origin_id, origin_slot, target_id, target_slot, type}`, in
/// subgraphs).
fn read_links(v: Option<&Value>) -> Vec<(String, String, u64, String, u64, String)> {
    let mut out = Vec::new();
    for l in v.and_then(Value::as_array).into_iter().flatten() {
        let id_of = |v: &Value| match v {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => Some(s.clone()),
            _ => None,
        };
        let parsed = if let Some(a) = l.as_array() {
            (|| {
                Some((
                    id_of(a.first()?)?,
                    id_of(a.get(1)?)?,
                    a.get(2)?.as_u64()?,
                    id_of(a.get(3)?)?,
                    a.get(4)?.as_u64()?,
                    a.get(5).and_then(Value::as_str).unwrap_or("").to_owned(),
                ))
            })()
        } else {
            (|| {
                Some((
                    id_of(l.get("id")?)?,
                    id_of(l.get("origin_id")?)?,
                    l.get("origin_slot")?.as_u64()?,
                    id_of(l.get("target_id")?)?,
                    l.get("target_slot")?.as_u64()?,
                    l.get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                ))
            })()
        };
        if let Some(p) = parsed {
            out.push(p);
        }
    }
    out
}

/// Adds one level's nodes (`prefix` is `<outer id>:` inside a subgraph).
fn add_level(
    level: &Value,
    prefix: &str,
    defs: &Defs,
    flat: &mut Flat,
    depth: usize,
) -> Result<(), UiError> {
    if depth > 16 {
        return Err(err(None, "subgraphs nest more than 16 deep"));
    }
    let nodes = level
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| err(None, "a UI-format workflow has a \"nodes\" list"))?;
    for l in read_links(level.get("links")) {
        let (id, from, from_slot, _to, _to_slot, ty) = l;
        flat.links.insert(
            format!("{prefix}{id}"),
            Link {
                from: format!("{prefix}{from}"),
                from_slot,
                ty,
            },
        );
    }
    for n in nodes {
        if flat.nodes.len() >= MAX_UI_NODES {
            return Err(err(None, format!("more than {MAX_UI_NODES} nodes")));
        }
        let raw_id = match n.get("id") {
            Some(Value::Number(x)) => x.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => return Err(err(None, "a node has no id")),
        };
        let id = format!("{prefix}{raw_id}");
        let class = n
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| err(id.clone(), "no type"))?
            .to_owned();
        let mode = n.get("mode").and_then(Value::as_u64).unwrap_or(0);
        let inputs = read_inputs(n, Some(prefix));
        if let Some(sub) = defs.subgraphs.get(&class) {
            expand(n, &id, sub, defs, flat, depth)?;
            continue;
        }
        if let Some(group) = group_name(&class).and_then(|g| defs.groups?.get(g)) {
            expand_group(n, &id, prefix, mode, group, defs.info, flat)?;
            continue;
        }
        flat.by_id.insert(id.clone(), flat.nodes.len());
        flat.nodes.push(Node {
            id,
            class,
            mode,
            title: n.get("title").and_then(Value::as_str).map(str::to_owned),
            inputs,
            widgets_values: n.get("widgets_values").cloned().unwrap_or(Value::Null),
        });
    }
    Ok(())
}

/// Expands a subgraph instance `outer` (node id `id`): its inner nodes get ids
/// `<id>:<inner>`; links to its inputs and from its outputs go through.
fn expand(
    outer: &Value,
    id: &str,
    sub: &Value,
    defs: &Defs,
    flat: &mut Flat,
    depth: usize,
) -> Result<(), UiError> {
    let prefix = format!("{id}:");
    add_level(sub, &prefix, defs, flat, depth + 1)?;
    // The subgraph's input node (id -10) and output node (id -20): links from
    // -10 slot k come from whatever feeds the outer node's input k; links into
    // -20 slot k are what the outer node's output k gives.
    // The outer node's inputs by the subgraph's input names (a saved instance
    // may list fewer inputs than its definition: those shown as widgets).
    let outer_list: Vec<&Value> = outer
        .get("inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let link_of = |i: &Value| match i.get("link") {
        Some(Value::Number(x)) => Some(x.to_string()),
        _ => None,
    };
    let sub_inputs: Vec<&Value> = sub
        .get("inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let outer_inputs: Vec<Option<String>> = if sub_inputs.is_empty() {
        outer_list.iter().map(|i| link_of(i)).collect()
    } else {
        sub_inputs
            .iter()
            .enumerate()
            .map(|(k, si)| {
                let name = si.get("name").and_then(Value::as_str);
                let by_name = name.and_then(|n| {
                    outer_list
                        .iter()
                        .find(|i| i.get("name").and_then(Value::as_str) == Some(n))
                });
                match name {
                    Some(_) => by_name.and_then(|i| link_of(i)),
                    None => outer_list.get(k).and_then(|i| link_of(i)),
                }
            })
            .collect()
    };
    let inner_links = read_links(sub.get("links"));
    let outer_prefix = id
        .rsplit_once(':')
        .map(|(p, _)| format!("{p}:"))
        .unwrap_or_default();
    // The instance's widgets: one for each subgraph input that feeds an inner
    // widget, in order, their values in the instance's `widgets_values`.
    let widget_target = |slot: u64| {
        inner_links
            .iter()
            .find_map(|(_, from, from_slot, to, to_slot, _)| {
                if from != "-10" || *from_slot != slot {
                    return None;
                }
                let node = &flat.nodes[*flat.by_id.get(&format!("{prefix}{to}"))?];
                let (_, _, _, widget) = node.inputs.get(*to_slot as usize)?;
                Some((node.id.clone(), widget.clone()?))
            })
    };
    let mut promoted = Vec::new();
    let values = outer.get("widgets_values").and_then(Value::as_array);
    let mut w = 0;
    for k in 0..sub_inputs.len() as u64 {
        if let Some(target) = widget_target(k) {
            if outer_inputs.get(k as usize).cloned().flatten().is_none()
                && let Some(v) = values.and_then(|v| v.get(w))
            {
                promoted.push((target, v.clone()));
            }
            w += 1;
        }
    }
    flat.promoted.extend(promoted);
    for (lid, from, from_slot, _, _, ty) in &inner_links {
        if from != "-10" {
            continue;
        }
        let key = format!("{prefix}{lid}");
        match outer_inputs.get(*from_slot as usize).cloned().flatten() {
            Some(outer_link) => {
                let src = flat
                    .links
                    .get(&format!("{outer_prefix}{outer_link}"))
                    .cloned();
                match src {
                    Some(l) => {
                        flat.links.insert(key, l);
                    }
                    None => {
                        flat.links.remove(&key);
                    }
                }
            }
            None => {
                let _ = ty;
                flat.links.remove(&key);
            }
        }
    }
    // Links leaving the outer node's outputs now leave the inner node that feeds
    // the subgraph's output.
    let mut outputs: BTreeMap<u64, (String, u64, String)> = BTreeMap::new();
    for (_, from, from_slot, to, to_slot, ty) in &inner_links {
        if to == "-20" {
            outputs.insert(
                *to_slot,
                (format!("{prefix}{from}"), *from_slot, ty.clone()),
            );
        }
    }
    let outer_id = id.to_owned();
    for link in flat.links.values_mut() {
        if link.from == outer_id
            && let Some((from, slot, ty)) = outputs.get(&link.from_slot)
        {
            link.from = from.clone();
            link.from_slot = *slot;
            if link.ty.is_empty() {
                link.ty = ty.clone();
            }
        }
    }
    Ok(())
}

/// A node's input sockets: name, type, the link into it (scoped by `prefix`;
/// none without one), the widget it stands for.
type Socket = (String, String, Option<String>, Option<String>);

fn read_inputs(n: &Value, prefix: Option<&str>) -> Vec<Socket> {
    n.get("inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|i| {
            let name = i
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let ty = match i.get("type") {
                Some(Value::String(s)) => s.clone(),
                _ => "*".to_owned(),
            };
            let link = match (i.get("link"), prefix) {
                (Some(Value::Number(x)), Some(p)) => Some(format!("{p}{x}")),
                _ => None,
            };
            let widget = i
                .pointer("/widget/name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            (name, ty, link, widget)
        })
        .collect()
}

/// The definition a group node's type names (`extra.groupNodes`): `workflow>NAME`,
/// or `workflow/NAME` as frontends before 1.2.63 wrote it.
fn group_name(class: &str) -> Option<&str> {
    class
        .strip_prefix("workflow>")
        .or_else(|| class.strip_prefix("workflow/"))
}

/// A class's inputs in the frontend's order (required then optional, each in
/// `input_order`, else as listed), with their specs.
fn input_specs(def: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for section in ["required", "optional"] {
        let Some(specs) = def
            .pointer(&format!("/input/{section}"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        let order: Vec<String> = def
            .pointer(&format!("/input_order/{section}"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_else(|| specs.keys().cloned().collect());
        for name in order {
            if let Some(spec) = specs.get(&name) {
                out.push((name, spec.clone()));
            }
        }
    }
    out
}

/// How many widgets the frontend makes for one widget input of a group node:
/// the value, then its own (a seed's control, which a group node also gives
/// every `seed` and `noise_seed`; an upload button; a remote list's refresh).
fn widget_count(name: &str, spec: &Value) -> usize {
    let own = widgets_of("", &json!({"input": {"required": {name: spec}}}));
    let control = own.iter().any(|w| w.name == "control_after_generate");
    own.len() + usize::from(!control && (name == "seed" || name == "noise_seed"))
}

/// Expands an instance `outer` (node id `id`, on the level whose link ids carry
/// `level`) of a group node, the frontend's older way of nesting (a type
/// `workflow>NAME`, its definition in `extra.groupNodes`), as the frontend's
/// group node extension does: inner nodes get ids `<id>:<index>`; the group's
/// inputs are its inner nodes' unlinked sockets (first the plain ones, node by
/// node, then the widgets' sockets), its widgets those widgets in the same
/// order, and its outputs the inner outputs not used inside (or marked
/// external).
fn expand_group(
    outer: &Value,
    id: &str,
    level: &str,
    mode: u64,
    group: &Value,
    info: &Value,
    flat: &mut Flat,
) -> Result<(), UiError> {
    let nodes = group
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            err(
                id.to_owned(),
                "its group node definition has no \"nodes\" list",
            )
        })?;
    if flat.nodes.len() + nodes.len() > MAX_UI_NODES {
        return Err(err(None, format!("more than {MAX_UI_NODES} nodes")));
    }
    let prefix = format!("{id}:");
    let base = flat.nodes.len();
    for (i, n) in nodes.iter().enumerate() {
        let inner = format!("{prefix}{i}");
        let class = n
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| err(inner.clone(), "no type"))?;
        if group_name(class).is_some() {
            return Err(err(inner, "a group node inside a group node"));
        }
        let own = n.get("mode").and_then(Value::as_u64).unwrap_or(0);
        flat.by_id.insert(inner.clone(), flat.nodes.len());
        flat.nodes.push(Node {
            id: inner,
            class: class.to_owned(),
            mode: if mode == MUTED || mode == BYPASSED {
                mode
            } else {
                own
            },
            title: n.get("title").and_then(Value::as_str).map(str::to_owned),
            inputs: read_inputs(n, None),
            widgets_values: n.get("widgets_values").cloned().unwrap_or(Value::Null),
        });
    }
    // Links inside: [from index, from slot, to index, to slot, from id, type].
    let index = |v: Option<&Value>| v.and_then(Value::as_u64).map(|x| x as usize);
    let mut links_to: HashMap<(usize, usize), ()> = HashMap::new();
    let mut links_from: HashMap<(usize, usize), ()> = HashMap::new();
    for (k, l) in group
        .get("links")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let (Some(from), Some(from_slot), Some(to), Some(to_slot)) = (
            index(l.get(0)),
            index(l.get(1)),
            index(l.get(2)),
            index(l.get(3)),
        ) else {
            continue;
        };
        if from >= nodes.len() || to >= nodes.len() {
            return Err(err(
                id.to_owned(),
                format!(
                    "its group node definition links node index {} of {}",
                    from.max(to),
                    nodes.len()
                ),
            ));
        }
        let lid = format!("{prefix}~{k}");
        flat.links.insert(
            lid.clone(),
            Link {
                from: format!("{prefix}{from}"),
                from_slot: from_slot as u64,
                ty: l.get(5).and_then(Value::as_str).unwrap_or("").to_owned(),
            },
        );
        if let Some(socket) = flat.nodes[base + to].inputs.get_mut(to_slot) {
            socket.2 = Some(lid);
        }
        links_to.insert((to, to_slot), ());
        links_from.insert((from, from_slot), ());
    }
    let external: Vec<(usize, usize)> = group
        .get("external")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| Some((index(e.get(0))?, index(e.get(1))?)))
        .collect();
    let config = |i: usize, kind: &str, key: &str| {
        group
            .get("config")
            .and_then(|c| c.get(i.to_string()))
            .and_then(|c| c.get(kind))
            .and_then(|c| c.get(key))
            .and_then(|c| c.get("visible"))
            .and_then(Value::as_bool)
    };
    // The group node's definition, as the frontend builds it.
    let mut inputs: Vec<(usize, usize, String)> = Vec::new();
    let mut widgets: Vec<(usize, String, Value)> = Vec::new();
    let mut outputs: Vec<(usize, usize)> = Vec::new();
    let mut later = Vec::new();
    for i in 0..nodes.len() {
        let node = &flat.nodes[base + i];
        let (specs, n_out) = match node.class.as_str() {
            "Reroute" => {
                let used_inside = links_to.keys().any(|(t, _)| *t == i)
                    && links_from.keys().any(|(f, _)| *f == i)
                    && !external.contains(&(i, 0));
                if used_inside {
                    continue;
                }
                (
                    vec![("*".to_owned(), json!(["*", {"forceInput": true}]))],
                    1,
                )
            }
            "PrimitiveNode" => {
                if !links_from.keys().any(|(f, _)| *f == i) {
                    continue;
                }
                return Err(err(
                    node.id.clone(),
                    "a PrimitiveNode inside a group node; in ComfyUI, convert the group node to nodes and save again",
                ));
            }
            c => match info.get(c) {
                Some(def) => (
                    input_specs(def),
                    def.get("output")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len),
                ),
                None if VIRTUAL.contains(&c) => continue,
                None => {
                    return Err(err(
                        node.id.clone(),
                        format!("no live backend has node class {c:?}"),
                    ));
                }
            },
        };
        let mut slots = Vec::new();
        let mut converted = Vec::new();
        for (name, spec) in specs {
            if !is_widget(&spec) {
                slots.push(name);
                continue;
            }
            let socket = node
                .inputs
                .iter()
                .position(|(n, _, _, w)| *n == name && w.as_deref() == Some(name.as_str()));
            match socket {
                Some(pos) => converted.push((pos, name, spec)),
                None => widgets.push((i, name, spec)),
            }
        }
        for (slot, name) in slots.iter().enumerate() {
            if links_to.contains_key(&(i, slot)) || config(i, "input", name) == Some(false) {
                continue;
            }
            inputs.push((i, slot, name.clone()));
        }
        later.push((i, slots.len(), converted));
        for o in 0..n_out {
            let used_inside = links_from.contains_key(&(i, o)) && !external.contains(&(i, o));
            if config(i, "output", &o.to_string()).unwrap_or(!used_inside) {
                outputs.push((i, o));
            }
        }
    }
    // Widgets with sockets come after every node's plain inputs, each node's in
    // the order of their sockets (sorted as JavaScript sorts numbers: as text).
    for (i, n_slots, mut converted) in later {
        converted.sort_by_key(|(pos, _, _)| pos.to_string());
        for (k, (_, name, spec)) in converted.into_iter().enumerate() {
            let slot = n_slots + k;
            if links_to.contains_key(&(i, slot)) {
                continue;
            }
            widgets.push((i, name.clone(), spec));
            inputs.push((i, slot, name));
        }
    }
    // What feeds the instance's inputs feeds the inner sockets they stand for.
    let outer_inputs = read_inputs(outer, Some(level));
    for (k, (i, slot, name)) in inputs.into_iter().enumerate() {
        let Some(link) = outer_inputs.get(k).and_then(|s| s.2.clone()) else {
            continue;
        };
        let node = &mut flat.nodes[base + i];
        match node.inputs.get_mut(slot) {
            Some(socket) => socket.2 = Some(link),
            None => node.inputs.push((name, "*".to_owned(), Some(link), None)),
        }
    }
    // The instance's widget values go to the inner widgets they stand for.
    let values = outer.get("widgets_values").and_then(Value::as_array);
    let mut at = 0;
    for (i, name, spec) in widgets {
        if let Some(v) = values.and_then(|v| v.get(at)) {
            flat.promoted
                .insert((format!("{prefix}{i}"), name.clone()), v.clone());
        }
        at += widget_count(&name, &spec);
    }
    // Links from the instance's outputs leave the inner outputs they stand for.
    for link in flat.links.values_mut() {
        if link.from == id {
            match outputs.get(link.from_slot as usize) {
                Some((i, o)) => {
                    link.from = format!("{prefix}{i}");
                    link.from_slot = *o as u64;
                }
                None => link.from = format!("{prefix}(no output {})", link.from_slot),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Value {
        serde_json::from_str(include_str!(
            "../../tests/fixtures/comfyui/files/object_info_full.json"
        ))
        .unwrap()
    }

    /// The default workflow's shape: checkpoint, two prompts, latent, sampler
    /// (with its seed control), decode, save; a note, a reroute, a primitive.
    fn ui() -> Value {
        json!({
            "last_node_id": 12, "last_link_id": 12,
            "nodes": [
                {"id": 4, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [],
                 "widgets_values": ["v1-5-pruned-emaonly.safetensors"]},
                {"id": 6, "type": "CLIPTextEncode", "mode": 0, "inputs": [{"name": "clip", "type": "CLIP", "link": 3}],
                 "widgets_values": ["a cat"]},
                {"id": 7, "type": "CLIPTextEncode", "mode": 0, "title": "Negative",
                 "inputs": [{"name": "clip", "type": "CLIP", "link": 5}], "widgets_values": ["blurry"]},
                {"id": 5, "type": "EmptyLatentImage", "mode": 0, "inputs": [],
                 "widgets_values": [512, 512, 1]},
                {"id": 3, "type": "KSampler", "mode": 0, "inputs": [
                    {"name": "model", "type": "MODEL", "link": 1},
                    {"name": "positive", "type": "CONDITIONING", "link": 4},
                    {"name": "negative", "type": "CONDITIONING", "link": 6},
                    {"name": "latent_image", "type": "LATENT", "link": 2},
                    {"name": "steps", "type": "INT", "link": 12, "widget": {"name": "steps"}}],
                 "widgets_values": [156680208700286_u64, "randomize", 20, 8, "euler", "normal", 1]},
                {"id": 8, "type": "VAEDecode", "mode": 0, "inputs": [
                    {"name": "samples", "type": "LATENT", "link": 7},
                    {"name": "vae", "type": "VAE", "link": 9}], "widgets_values": []},
                {"id": 10, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 8}]},
                {"id": 9, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 10}],
                 "widgets_values": ["ComfyUI"]},
                {"id": 11, "type": "Note", "mode": 0, "inputs": [], "widgets_values": ["hello"]},
                {"id": 12, "type": "PrimitiveNode", "mode": 0, "inputs": [], "widgets_values": [30, "fixed"]},
                {"id": 13, "type": "SaveImage", "mode": 2, "inputs": [{"name": "images", "type": "IMAGE", "link": 11}],
                 "widgets_values": ["muted"]}
            ],
            "links": [
                [1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
                [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
                [7, 3, 0, 8, 0, "LATENT"], [8, 8, 0, 10, 0, "IMAGE"], [9, 4, 2, 8, 1, "VAE"],
                [10, 10, 0, 9, 0, "IMAGE"], [11, 8, 0, 13, 0, "IMAGE"], [12, 12, 0, 3, 4, "INT"]
            ]
        })
    }

    #[test]
    fn the_default_workflow_converts_as_the_frontend_sends_it() {
        let g = convert(&ui(), &info()).unwrap();
        let ids: Vec<&str> = g.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            ["3", "4", "5", "6", "7", "8", "9"],
            "virtual and muted nodes left out"
        );
        let ks = &g["3"]["inputs"];
        assert_eq!(ks["seed"], json!(156680208700286_u64));
        assert_eq!(ks["steps"], json!(30), "from the primitive");
        assert_eq!(ks["cfg"], json!(8));
        assert_eq!(ks["sampler_name"], "euler");
        assert_eq!(ks["denoise"], json!(1));
        assert!(ks.get("control_after_generate").is_none());
        assert_eq!(ks["model"], json!(["4", 0]));
        assert_eq!(ks["negative"], json!(["7", 0]));
        assert_eq!(
            g["9"]["inputs"]["images"],
            json!(["8", 0]),
            "through the reroute"
        );
        assert_eq!(g["7"]["_meta"]["title"], "Negative");
        assert_eq!(g["6"]["_meta"]["title"], "CLIP Text Encode (Prompt)");
        assert_eq!(
            g["5"]["inputs"],
            json!({"width": 512, "height": 512, "batch_size": 1})
        );
    }

    #[test]
    fn a_bypassed_node_passes_its_input_on() {
        let mut w = ui();
        // Bypass the decoder: the save node then gets... nothing of its type
        // (VAEDecode has no IMAGE input), so its input goes.
        w["nodes"][5]["mode"] = json!(4);
        let g = convert(&w, &info()).unwrap();
        assert!(g.get("8").is_none());
        assert!(g["9"]["inputs"].get("images").is_none());
    }

    #[test]
    fn unknown_classes_and_broken_files_are_named() {
        let mut w = ui();
        w["nodes"][0]["type"] = json!("NoSuchNode");
        let e = convert(&w, &info()).unwrap_err();
        assert_eq!(e.node.as_deref(), Some("4"));
        assert!(convert(&json!({"nodes": 3}), &info()).is_err());
    }

    #[test]
    fn a_broken_group_node_is_named() {
        let group = |links: Value, inner: Value| {
            json!({
                "nodes": [
                    {"id": 1, "type": "EmptyImage", "mode": 0, "inputs": [], "widgets_values": [8, 8, 1, 0]},
                    {"id": 6, "type": "workflow>pair", "mode": 0,
                     "inputs": [{"name": "image", "type": "IMAGE", "link": 1}], "widgets_values": [1, 1.0]},
                    {"id": 4, "type": "SaveImage", "mode": 0,
                     "inputs": [{"name": "images", "type": "IMAGE", "link": 2}], "widgets_values": ["x"]}
                ],
                "links": [[1, 1, 0, 6, 0, "IMAGE"], [2, 6, 0, 4, 0, "IMAGE"]],
                "extra": {"groupNodes": {"pair": {"nodes": inner, "links": links, "external": []}}}
            })
        };
        let inner = json!([
            {"type": "ImageInvert", "inputs": [{"name": "image", "type": "IMAGE", "link": null}], "widgets_values": []},
            {"type": "ImageBlur", "inputs": [{"name": "image", "type": "IMAGE", "link": null}], "widgets_values": [2, 1.5]}
        ]);
        let ok = convert(
            &group(json!([[0, 0, 1, 0, 2, "IMAGE"]]), inner.clone()),
            &info(),
        )
        .unwrap();
        assert_eq!(ok["6:1"]["inputs"]["image"], json!(["6:0", 0]));
        assert_eq!(ok["6:0"]["inputs"]["image"], json!(["1", 0]));
        assert_eq!(ok["4"]["inputs"]["images"], json!(["6:1", 0]));
        assert_eq!(
            ok["6:1"]["inputs"]["blur_radius"],
            json!(1),
            "the group node's widget"
        );
        let e = convert(&group(json!([[0, 0, 9, 0, 2, "IMAGE"]]), inner), &info()).unwrap_err();
        assert_eq!(e.node.as_deref(), Some("6"), "{e}");
        let primitive = json!([
            {"type": "PrimitiveNode", "inputs": [], "outputs": [{"name": "INT", "type": "INT"}], "widgets_values": [3]},
            {"type": "ImageBlur", "inputs": [{"name": "image", "type": "IMAGE", "link": null},
                                             {"name": "blur_radius", "type": "INT", "widget": {"name": "blur_radius"}, "link": null}],
             "widgets_values": [2, 1.5]}
        ]);
        let e = convert(&group(json!([[0, 0, 1, 1, 2, "INT"]]), primitive), &info()).unwrap_err();
        assert_eq!(e.node.as_deref(), Some("6:0"), "{e}");
    }
}
