//! Raw graphs: a submission that carries its own API-format graph (`"graph"`
//! instead of `"workflow"`) runs it once, unpublished, for callers trusted with
//! it (admin keys and keys made with `--graphs`). It passes the checks a
//! published workflow passes: its shape and size, its node classes on a live
//! backend, the pixel budget; the requirement check that follows is the same.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::{Rejection, SubmitError, Submitter};
use crate::auth::Identity;
use crate::catalog::{PublishError, api_graph};
use crate::workflow::{GRAPH_FIELD, PIXEL_PARAMS, Workflow, infer};

/// The prompt a raw graph's job shows when the request gives none.
const UNNAMED: &str = "(graph)";

/// The upload a `LoadImage` value names: a 64-hex upload id, alone or with a
/// picture's extension.
pub fn upload_id_of(value: &str) -> Option<&str> {
    // A client may put the upload's subfolder in front ("sub/<name>").
    let value = value.rsplit('/').next().unwrap_or(value);
    let id = value
        .strip_suffix(".png")
        .or_else(|| value.strip_suffix(".jpg"))
        .or_else(|| value.strip_suffix(".jpeg"))
        .or_else(|| value.strip_suffix(".webp"))
        .unwrap_or(value);
    (id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(id)
}

fn invalid(message: impl Into<String>) -> SubmitError {
    Rejection::new(400, "invalid-graph", message)
        .field(GRAPH_FIELD)
        .into()
}

impl Submitter {
    /// Whether a submission carries its own graph.
    pub(super) fn carries_graph(body: &Value) -> bool {
        body.get(GRAPH_FIELD).is_some_and(|g| !g.is_null())
    }

    /// The workflow a raw graph runs as, and the body to parse (given a
    /// `prompt`, the graph's own text, when it has none).
    pub(super) async fn raw_graph(
        &self,
        who: &Identity,
        mut body: Value,
    ) -> Result<(Arc<Workflow>, Value), SubmitError> {
        let Some(obj) = body.as_object_mut() else {
            return Err(invalid("request body must be a JSON object"));
        };
        if obj.get("workflow").is_some_and(|w| !w.is_null()) {
            return Err(invalid("give \"workflow\" or \"graph\", not both"));
        }
        if !who.may_run_graphs() {
            return Err(Rejection::new(
                403,
                "graphs-not-allowed",
                "this key may not run raw graphs (admin keys and keys made with --graphs may); \
                 publish the workflow and name it instead",
            )
            .field(GRAPH_FIELD)
            .into());
        }
        let given = obj.get(GRAPH_FIELD).cloned().unwrap_or(Value::Null);
        if !given.is_object() {
            return Err(invalid(
                "graph must be a JSON object: an API-format graph (node ids to nodes)",
            ));
        }
        let info = self
            .within(self.offers.object_info(self.store.as_ref()))
            .await?;
        let (graph, _) = api_graph(&given, info.as_deref(), GRAPH_FIELD).map_err(|e| match e {
            PublishError::Store(e) => SubmitError::Store(e),
            PublishError::Invalid { message, .. } => invalid(message),
            other => invalid(other.to_string()),
        })?;
        // The graph's own values of the parameters a workflow would have: its
        // prompt shown for the job, its size held to the pixel budget.
        let inferred = infer::infer(&graph, info.as_deref());
        if obj.get("prompt").is_none_or(Value::is_null) {
            let text = inferred
                .get("prompt")
                .and_then(|p| p.targets.first())
                .and_then(|t| graph.get(&t.node)?["inputs"].get(&t.input)?.as_str())
                .filter(|t| !t.trim().is_empty())
                .unwrap_or(UNNAMED);
            obj.insert("prompt".into(), Value::from(text));
        }
        let mut wf = Workflow::raw(graph);
        // A `LoadImage` (or `LoadImageMask`) naming an upload of ours (its id,
        // or the name the ComfyUI port's `/upload/image` gave: `<id>.png`)
        // takes that picture as a parameter would: its owner's, put on the
        // backend that runs the job.
        for (name, spec) in inferred.iter().filter(|(_, s)| s.kind.is_picture()) {
            let Some(target) = spec.targets.first() else {
                continue;
            };
            let given = wf
                .graph
                .get(&target.node)
                .and_then(|n| n["inputs"].get(&target.input));
            let Some(id) = given.and_then(Value::as_str).and_then(upload_id_of) else {
                continue;
            };
            if let Some(obj) = body.as_object_mut() {
                obj.insert(name.clone(), Value::from(id));
            }
            wf.params.insert(name.clone(), spec.clone());
        }
        let sizes: Map<String, Value> = PIXEL_PARAMS
            .iter()
            .filter_map(|p| Some((p.to_string(), inferred.get(*p)?.default.clone()?)))
            .collect();
        wf.check_budget(&sizes).map_err(invalid)?;
        // The graph as converted (a UI-format one arrives in the API format).
        if let Some(obj) = body.as_object_mut() {
            obj.insert(GRAPH_FIELD.into(), Value::Object(wf.graph.clone()));
        }
        Ok((Arc::new(wf), body))
    }
}
