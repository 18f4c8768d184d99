//! `POST /api/generate` bodies: parsed once, at the edge, into a [`NewJob`] that is
//! valid by construction.

use serde_json::{Map, Value};

use super::param::MAX_STRING_CHARS;
use super::{CONTRACT_PARAMS, DEFAULT_WORKFLOW, Workflow, WorkflowRegistry};
use crate::job::NewJob;
use crate::job::Priority;

/// A request that cannot become a job: which field, a stable code, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, code: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            field: (!field.is_empty()).then(|| field.to_owned()),
            code,
            message: message.into(),
        }
    }
}

/// What a prompt may not consist of only: Unicode whitespace and the information
/// separators U+001C–U+001F. The OpenAPI document spells the complement out
/// (`param::NOT_BLANK`), and a test checks that the two agree.
pub fn is_blank(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Checks a submission body and turns it into a new job. A missing seed becomes a
/// random one; parameters the request leaves out get their declared defaults.
pub fn parse_submission(body: &Value, workflows: &WorkflowRegistry) -> Result<NewJob, FieldError> {
    precheck(body)?;
    let name = workflow_field(body)?;
    let workflow = workflows.get(name).ok_or_else(|| {
        FieldError::new(
            "workflow",
            "unknown-workflow",
            format!(
                "unknown workflow {name:?}; known workflows: {}",
                workflows.names().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    parse_for(body, workflow)
}

/// The checks that come before a workflow is looked up: a JSON object with a
/// prompt.
/// A submission's `seed`, checked: `None` when absent (or null).
pub fn seed_field(v: Option<&Value>) -> Result<Option<u64>, FieldError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => super::param::as_whole(v).map(Some).ok_or_else(|| {
            FieldError::new(
                "seed",
                "invalid-seed",
                format!("seed must be an integer from 0 to {}", u64::MAX),
            )
        }),
    }
}

pub fn precheck(body: &Value) -> Result<(), FieldError> {
    let obj = body
        .as_object()
        .ok_or_else(|| FieldError::new("", "invalid-body", "request body must be a JSON object"))?;
    prompt_of(obj).map(drop)
}

/// The workflow a submission names (`name` or `name@version`; the default when
/// absent).
pub fn workflow_field(body: &Value) -> Result<&str, FieldError> {
    match body.get("workflow") {
        None | Some(Value::Null) => Ok(DEFAULT_WORKFLOW),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(FieldError::new(
            "workflow",
            "invalid-workflow",
            "workflow must be a string",
        )),
    }
}

fn prompt_of(obj: &Map<String, Value>) -> Result<&String, FieldError> {
    let prompt = match obj.get("prompt") {
        None | Some(Value::Null) => {
            return Err(FieldError::new(
                "prompt",
                "invalid-prompt",
                "prompt is required",
            ));
        }
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(FieldError::new(
                "prompt",
                "invalid-prompt",
                "prompt must be a string",
            ));
        }
    };
    if prompt.chars().all(is_blank) {
        return Err(FieldError::new(
            "prompt",
            "invalid-prompt",
            "prompt must not be empty or only whitespace",
        ));
    }
    Ok(prompt)
}

/// [`parse_submission`] for a workflow already found (a published version).
pub fn parse_for(body: &Value, workflow: &Workflow) -> Result<NewJob, FieldError> {
    let obj = body
        .as_object()
        .ok_or_else(|| FieldError::new("", "invalid-body", "request body must be a JSON object"))?;
    let prompt = prompt_of(obj)?;

    let limit = workflow
        .params
        .get("prompt")
        .and_then(|p| p.max_length)
        .unwrap_or(MAX_STRING_CHARS);
    let chars = prompt.chars().count();
    if chars > limit {
        return Err(FieldError::new(
            "prompt",
            "prompt-too-long",
            format!("prompt must be at most {limit} characters (got {chars})"),
        ));
    }

    let seed = seed_field(obj.get("seed"))?.unwrap_or_else(|| fastrand::u64(..));

    let priority = match obj.get("priority") {
        None | Some(Value::Null) => Priority::Normal,
        Some(v) => v.as_str().and_then(Priority::parse).ok_or_else(|| {
            FieldError::new(
                "priority",
                "invalid-priority",
                "priority must be low, normal or high",
            )
        })?,
    };

    // What the worker stores the pictures as (PNG, ComfyUI's own bytes, when absent).
    let output_format = match obj.get("output_format") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .filter(|f| OUTPUT_FORMATS.contains(f))
                .ok_or_else(|| {
                    FieldError::new(
                        "output_format",
                        "invalid-param",
                        "output_format must be png, jpeg or webp",
                    )
                })?,
        ),
    };
    let quality = match obj.get("quality") {
        None | Some(Value::Null) => None,
        // An integer, which JSON may also write as 75.0.
        Some(v) => Some(
            v.as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && (0.0..=100.0).contains(f))
                        .map(|f| f as u64)
                })
                .filter(|q| (1..=100).contains(q))
                .ok_or_else(|| {
                    FieldError::new(
                        "quality",
                        "invalid-param",
                        "quality must be an integer from 1 to 100 (JPEG; WebP is lossless)",
                    )
                })?,
        ),
    };

    // Where to tell the end (the server's address policy is applied by the API).
    let webhook_url = match obj.get("webhook_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) => Some(
            crate::webhooks::check_url(u, true)
                .map(|_| u.clone())
                .map_err(|e| {
                    FieldError::new(
                        "webhook_url",
                        "invalid-webhook-url",
                        format!("webhook_url {e}"),
                    )
                })?,
        ),
        Some(_) => {
            return Err(FieldError::new(
                "webhook_url",
                "invalid-webhook-url",
                "webhook_url must be a string (an http or https URL)",
            ));
        }
    };
    let webhook_events = match obj.get("webhook_events") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let bad = || {
                FieldError::new(
                    "webhook_events",
                    "invalid-webhook-events",
                    format!(
                        "webhook_events must be a non-empty list of {}",
                        crate::webhooks::EVENTS.join(", ")
                    ),
                )
            };
            let list = v.as_array().filter(|a| !a.is_empty()).ok_or_else(bad)?;
            let mut events: Vec<&str> = Vec::new();
            for e in list {
                let e = e
                    .as_str()
                    .filter(|e| crate::webhooks::EVENTS.contains(e))
                    .ok_or_else(bad)?;
                if !events.contains(&e) {
                    events.push(e);
                }
            }
            Some(events)
        }
    };
    let unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| {
            let carried_graph = *k == super::GRAPH_FIELD && workflow.name == super::GRAPH_WORKFLOW;
            !SUBMISSION_FIELDS.contains(k)
                && !CONTRACT_PARAMS.contains(k)
                && !workflow.params.contains_key(*k)
                && !carried_graph
        })
        .collect();
    if !unknown.is_empty() {
        let accepted: Vec<&str> = [
            "prompt",
            "seed",
            "workflow",
            "priority",
            "output_format",
            "quality",
            "webhook_url",
            "webhook_events",
        ]
        .into_iter()
        .chain(
            workflow
                .params
                .keys()
                .map(String::as_str)
                .filter(|k| !CONTRACT_PARAMS.contains(k)),
        )
        .collect();
        return Err(FieldError::new(
            &unknown.join(","),
            "unknown-field",
            format!(
                "unknown field{} {}; workflow {:?} accepts: {}",
                if unknown.len() == 1 { "" } else { "s" },
                unknown
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                workflow.name,
                accepted.join(", ")
            ),
        ));
    }

    let mut params = Map::new();
    for (key, spec) in &workflow.params {
        if CONTRACT_PARAMS.contains(&key.as_str()) {
            continue;
        }
        match obj.get(key) {
            None | Some(Value::Null) if spec.kind.is_picture() && spec.default.is_none() => {
                return Err(FieldError::new(
                    key,
                    "invalid-param",
                    format!("{key} is required: an upload_id from POST /api/uploads"),
                ));
            }
            None | Some(Value::Null) => {}
            Some(v) => {
                let v = spec.check(v).map_err(|e| {
                    FieldError::new(key, "invalid-param", format!("{key} {}", e.message))
                })?;
                params.insert(key.clone(), v);
            }
        }
    }
    workflow.resolve_defaults(&mut params);
    // Kept with the parameters (shown with them), read by the worker.
    if let Some(f) = output_format.filter(|f| *f != "png") {
        params.insert("output_format".into(), Value::String(f.to_owned()));
    }
    if let Some(q) = quality {
        params.insert("quality".into(), Value::from(q));
    }
    if let Some(u) = webhook_url {
        params.insert("webhook_url".into(), Value::String(u));
    }
    if let Some(events) = webhook_events {
        params.insert("webhook_events".into(), Value::from(events));
    }
    workflow.check_budget(&params).map_err(|m| {
        let fields: Vec<&str> = super::PIXEL_PARAMS
            .into_iter()
            .filter(|p| params.contains_key(*p))
            .collect();
        FieldError::new(&fields.join(","), "invalid-param", m)
    })?;

    Ok(NewJob::new(prompt.clone(), seed, workflow.name.clone(), params).owned("", priority))
}

/// What a job keeps in its parameters beyond the workflow's own, not sent by
/// clients: the published version it runs, a raw graph's graph, what a ComfyUI
/// client gave, its batch, the job it retries.
pub const KEPT_FIELDS: &[&str] = &[
    "workflow_version",
    "graph",
    "comfyui",
    "batch_id",
    "retry_of",
];

/// Fields of a submission beyond the workflow's parameters.
pub const SUBMISSION_FIELDS: &[&str] = &[
    "workflow",
    "priority",
    "output_format",
    "quality",
    "webhook_url",
    "webhook_events",
];

/// What `output_format` may say.
pub const OUTPUT_FORMATS: [&str; 3] = ["png", "jpeg", "webp"];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<NewJob, FieldError> {
        parse_submission(&v, &WorkflowRegistry::built_in())
    }

    #[test]
    fn the_prototype_body_is_accepted() {
        let job = parse(json!({"prompt": "a cat", "seed": 42, "workflow": "sdxl"})).unwrap();
        assert_eq!(job.prompt, "a cat");
        assert_eq!(job.seed, 42);
        assert_eq!(job.workflow, "sdxl");
        assert_eq!(job.params["steps"], json!(25), "defaults are resolved");
    }

    #[test]
    fn missing_workflow_means_sdxl_and_missing_seed_is_random() {
        let a = parse(json!({"prompt": "x"})).unwrap();
        let b = parse(json!({"prompt": "x", "seed": null})).unwrap();
        assert_eq!(a.workflow, "sdxl");
        assert_ne!(a.seed, b.seed, "two random seeds differ (1 in 2^64 flake)");
    }

    #[test]
    fn bad_prompts_name_the_field() {
        for body in [
            json!({}),
            json!({"prompt": ""}),
            json!({"prompt": " \n\t"}),
            json!({"prompt": "\u{1c}\u{3000}\u{85}"}),
            json!({"prompt": 5}),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("prompt"));
            assert_eq!(e.code, "invalid-prompt");
        }
        let e = parse(json!({"prompt": "x".repeat(MAX_STRING_CHARS + 1)})).unwrap_err();
        assert_eq!(e.code, "prompt-too-long");
    }

    #[test]
    fn seeds_must_be_u64() {
        for seed in [
            json!(-1),
            json!(1.5),
            json!("42"),
            json!(18446744073709551616.0),
            json!(true),
        ] {
            let e = parse(json!({"prompt": "x", "seed": seed})).unwrap_err();
            assert_eq!(e.code, "invalid-seed", "{seed}");
        }
        assert_eq!(
            parse(json!({"prompt": "x", "seed": u64::MAX}))
                .unwrap()
                .seed,
            u64::MAX
        );
        assert_eq!(parse(json!({"prompt": "x", "seed": 0})).unwrap().seed, 0);
    }

    #[test]
    fn unknown_workflows_list_the_known_ones() {
        let e = parse(json!({"prompt": "x", "workflow": "nope"})).unwrap_err();
        assert_eq!(e.code, "unknown-workflow");
        assert!(
            e.message
                .contains("sd15, sd15-inpaint, sdxl, sdxl-img2img, smoke, smoke-img2img"),
            "{}",
            e.message
        );
    }

    #[test]
    fn integral_numbers_are_read_exactly() {
        // Without serde_json's float_roundtrip this parses one step off
        // (2251799813685247.5), and a valid integer is refused.
        let v: Value =
            serde_json::from_str(r#"{"prompt": "x", "seed": 2251799813685247.0}"#).unwrap();
        let job = parse_submission(&v, &WorkflowRegistry::built_in()).unwrap();
        assert_eq!(job.seed, 2_251_799_813_685_247);
    }

    #[test]
    fn a_priority_is_low_normal_or_high() {
        assert_eq!(
            parse(json!({"prompt": "x"})).unwrap().priority,
            Priority::Normal
        );
        assert_eq!(
            parse(json!({"prompt": "x", "priority": "high"}))
                .unwrap()
                .priority,
            Priority::High
        );
        let e = parse(json!({"prompt": "x", "priority": "urgent"})).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid-priority", Some("priority"))
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse(json!({"prompt": "x", "colour": 1, "size": 2})).unwrap_err();
        assert_eq!(e.code, "unknown-field");
        assert_eq!(e.field.as_deref(), Some("colour,size"));
        assert!(e.message.contains("\"colour\""), "{}", e.message);
    }

    #[test]
    fn params_are_checked_against_the_declaration() {
        let e = parse(json!({"prompt": "x", "steps": 0})).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_deref()),
            ("invalid-param", Some("steps"))
        );
        let e = parse(json!({"prompt": "x", "workflow": "smoke", "width": 100000})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("width"));
        let ok =
            parse(json!({"prompt": "x", "workflow": "smoke", "width": 32, "height": 16})).unwrap();
        assert_eq!(ok.params["width"], json!(32));
    }

    #[test]
    fn the_pixel_budget_is_an_invalid_param_naming_the_fields() {
        let e = parse(json!({"prompt": "x", "workflow": "smoke", "width": 4096, "height": 4096, "batch_size": 16}))
            .unwrap_err();
        assert_eq!(e.code, "invalid-param");
        assert_eq!(e.field.as_deref(), Some("width,height,batch_size"));
        assert!(e.message.contains("at most 16777216"), "{}", e.message);
    }
}
