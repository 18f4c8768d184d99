//! A new job from a failed one (`POST /api/jobs/{id}/retry`, requeued dead
//! letters): the same prompt, seed, workflow version and parameters, checked
//! and queued as any submission, with `retry_of` recorded.

use serde_json::{Map, Value};

use super::{Accepted, Submission, SubmitError, Submitter};
use crate::auth::Identity;
use crate::job::{JobRecord, QueuePayload};
use crate::workflow::request::KEPT_FIELDS;
use crate::workflow::{GRAPH_FIELD, GRAPH_WORKFLOW};

/// The parameter a retried job keeps the id of the job it retries in.
pub const RETRY_OF: &str = "retry_of";

/// What a retry is made from: a job's record, or (its record expired) its dead
/// letter's queue entry.
pub struct Retried {
    pub id: String,
    pub prompt: String,
    pub seed: Option<u64>,
    pub workflow: String,
    pub params: Map<String, Value>,
    /// The key that submitted it ("" for none).
    pub owner: String,
}

impl From<&JobRecord> for Retried {
    fn from(j: &JobRecord) -> Self {
        Retried {
            id: j.id.clone(),
            prompt: j.prompt.clone(),
            seed: j.seed,
            workflow: j.workflow.clone(),
            params: j.params.clone(),
            owner: j.owner.clone(),
        }
    }
}

impl From<QueuePayload> for Retried {
    fn from(p: QueuePayload) -> Self {
        Retried {
            id: p.job_id,
            prompt: p.prompt,
            seed: p.seed,
            workflow: p.workflow.unwrap_or_default(),
            params: p.params.unwrap_or_default(),
            owner: p.owner.unwrap_or_default(),
        }
    }
}

/// The submission body that makes the same job again.
pub fn retry_body(r: &Retried) -> Value {
    let mut body = Map::new();
    body.insert("prompt".into(), Value::String(r.prompt.clone()));
    if let Some(seed) = r.seed {
        body.insert("seed".into(), Value::from(seed));
    }
    let version = r.params.get("workflow_version").and_then(Value::as_u64);
    if r.workflow == GRAPH_WORKFLOW {
        if let Some(g) = r.params.get(GRAPH_FIELD) {
            body.insert(GRAPH_FIELD.into(), g.clone());
        }
    } else if !r.workflow.is_empty() {
        let name = match version {
            Some(v) => format!("{}@{v}", r.workflow),
            None => r.workflow.clone(),
        };
        body.insert("workflow".into(), Value::String(name));
    }
    for (k, v) in &r.params {
        if KEPT_FIELDS.contains(&k.as_str()) || k == RETRY_OF {
            continue;
        }
        body.insert(k.clone(), v.clone());
    }
    Value::Object(body)
}

impl Submitter {
    /// Submits a new job that runs `r` again, as `who` (its owner).
    pub async fn retry(&self, who: &Identity, r: &Retried) -> Result<Accepted, SubmitError> {
        self.submit(Submission {
            who,
            body: retry_body(r),
            idempotency_key: None,
            extra: Some((RETRY_OF, Value::String(r.id.clone()))),
            job_id: None,
            rate: None,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_retry_asks_for_the_same_job() {
        let params = json!({"steps": 20, "workflow_version": 3, "batch_id": "b", "retry_of": "x", "webhook_url": "https://e.com/h"});
        let r = Retried {
            id: "j1".into(),
            prompt: "a cat".into(),
            seed: Some(7),
            workflow: "portrait".into(),
            params: params.as_object().unwrap().clone(),
            owner: String::new(),
        };
        assert_eq!(
            retry_body(&r),
            json!({"prompt": "a cat", "seed": 7, "workflow": "portrait@3", "steps": 20, "webhook_url": "https://e.com/h"})
        );
    }
}
