//! Publishing a workflow: a name, a graph in either of ComfyUI's formats, and
//! parameters (declared, or read from the graph), checked whole before the store
//! makes it the name's next version.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::Catalog;
use crate::capabilities::Requirements;
use crate::store::StoreError;
use crate::workflow::param::ParamSpec;
use crate::workflow::{Workflow, graph, infer, is_ui_format, ui};

/// Longest published name.
pub const MAX_NAME: usize = 64;
/// The longest description kept, in characters.
pub const MAX_DESCRIPTION: usize = 2000;

/// What a designer publishes.
#[derive(Clone, Debug)]
pub struct Publish {
    pub name: String,
    pub description: Option<String>,
    /// An API-format graph, or a UI-format workflow (converted).
    pub workflow: Value,
    /// Declared parameters (as a template file declares them); read from the
    /// graph when absent.
    pub params: Option<Value>,
    /// Who publishes (a key id, or empty), for the log.
    pub by: String,
    /// Check and convert only: nothing is stored (what the page shows before
    /// a designer publishes).
    pub dry_run: bool,
}

/// A published version.
#[derive(Clone, Debug)]
pub struct Published {
    pub workflow: Arc<Workflow>,
    pub requirements: Requirements,
    /// The graph came in the UI format and was converted.
    pub converted: bool,
}

/// Why a workflow was not published (or converted).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Something in the request: the field at fault and why.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The name is a built-in or a `--workflows` file's, which are read-only.
    #[error("{0:?} is a built-in or file workflow: read-only")]
    ReadOnly(String),
    /// A UI-format workflow needs the backends' `/object_info`, and no backend
    /// has ever reported one.
    #[error("no backend has reported its nodes yet: a UI-format workflow cannot be converted")]
    NoNodeInfo,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> PublishError {
    PublishError::Invalid {
        field,
        message: message.into(),
    }
}

/// Whether a published name may be used: letters, digits, `-` and `_`, not
/// starting with `_` (names of our own, like `_graph`).
pub fn check_name(name: &str) -> Result<(), PublishError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!(
                "must be 1 to {MAX_NAME} letters, digits, '-' or '_', not starting with '_' (got {name:?})"
            ),
        ))
    }
}

/// An API-format graph from either format, checked: its shape, links and size,
/// and (when the backends' `/object_info` is known) its node classes.
pub fn api_graph(
    workflow: &Value,
    object_info: Option<&Value>,
    field: &'static str,
) -> Result<(Map<String, Value>, bool), PublishError> {
    let (graph, converted) = if is_ui_format(workflow) {
        let info = object_info.ok_or(PublishError::NoNodeInfo)?;
        let g = ui::convert(workflow, info).map_err(|e| invalid(field, e.to_string()))?;
        (Value::Object(g), true)
    } else {
        (workflow.clone(), false)
    };
    graph::check(&graph).map_err(|e| invalid(field, e.to_string()))?;
    let graph = match graph {
        Value::Object(m) => m,
        _ => unreachable!("checked: an object"),
    };
    if let Some(info) = object_info {
        let unknown = graph::unknown_classes(&graph, info);
        if let Some((id, class)) = unknown.first() {
            return Err(invalid(
                field,
                format!(
                    "node {id}: no live backend has node class {class:?}{}",
                    if unknown.len() > 1 {
                        format!(" (nor {} more)", unknown.len() - 1)
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        if let Some((id, input, ty)) = graph::value_for_link(&graph, info) {
            return Err(invalid(
                field,
                format!(
                    "node {id}: input {input:?} takes a link [\"node id\", output index] to an {ty}, not a value"
                ),
            ));
        }
    }
    Ok((graph, converted))
}

impl Catalog {
    /// Checks and converts `p`, then stores it as its name's next version.
    /// `object_info` is what the live backends (or the last to report) have.
    pub async fn publish(
        &self,
        p: Publish,
        object_info: Option<&Value>,
    ) -> Result<Published, PublishError> {
        check_name(&p.name)?;
        if let Some(d) = &p.description
            && d.chars().count() > MAX_DESCRIPTION
        {
            return Err(invalid(
                "description",
                format!("must be at most {MAX_DESCRIPTION} characters"),
            ));
        }
        if self.base().contains(&p.name) {
            return Err(PublishError::ReadOnly(p.name));
        }
        let (graph, converted) = api_graph(&p.workflow, object_info, "workflow")?;
        let params: BTreeMap<String, ParamSpec> = match &p.params {
            None | Some(Value::Null) => infer::infer(&graph, object_info),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                invalid(
                    "params",
                    format!("not parameters as a template declares them: {e}"),
                )
            })?,
        };
        let wf = Workflow {
            name: p.name.clone(),
            description: p.description.clone().unwrap_or_default(),
            params,
            max_pixels: None,
            graph,
            version: None,
        };
        wf.check_published().map_err(|m| invalid("params", m))?;
        if p.dry_run {
            let requirements = Requirements::of_graph(&Value::Object(wf.graph.clone()));
            return Ok(Published {
                workflow: Arc::new(wf),
                requirements,
                converted,
            });
        }
        let definition = serde_json::to_string(&wf)
            .map_err(|e| StoreError::Internal(format!("a workflow does not serialize: {e}")))?;
        let version = self.store.publish_workflow(&p.name, &definition).await?;
        tracing::info!(workflow = %p.name, version, by = %p.by, converted, "workflow published");
        let _ = self.refresh().await;
        let requirements = Requirements::of_graph(&Value::Object(wf.graph.clone()));
        let workflow = Arc::new(Workflow {
            version: Some(version),
            ..wf
        });
        Ok(Published {
            workflow,
            requirements,
            converted,
        })
    }

    /// Retires a published name: `false` when it was never published.
    pub async fn retire(&self, name: &str, by: &str) -> Result<bool, StoreError> {
        let done = self.store.retire_workflow(name).await?;
        if done {
            tracing::info!(workflow = %name, by = %by, "workflow retired");
            let _ = self.refresh().await;
        }
        Ok(done)
    }
}
