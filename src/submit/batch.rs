//! Many jobs as one submission (`POST /api/batches`): one job's fields plus
//! `count`, `seeds`, `prompts` or `grid`, expanded into jobs that are each
//! checked like any other, then queued all or none.

use serde_json::{Map, Value};

use super::idempotency::{self, IdempotencyKey, fingerprint, scope};
use super::{Rejection, SubmitError, Submitter};
use crate::auth::Identity;
use crate::clock;
use crate::job::{BATCH_FIELD, BatchRecord, JobId, NewJob};
use crate::store::{CancelOutcome, IdempotencyClaim};
use crate::webhooks::WebhookRecord;

/// The fields that make a body a batch; exactly one of them.
pub const BATCH_FIELDS: [&str; 4] = ["count", "seeds", "prompts", "grid"];

/// Default of `--max-batch`.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// A request for a batch, as a front door received it.
pub struct BatchSubmission<'a> {
    pub who: &'a Identity,
    /// One job's fields plus one of [`BATCH_FIELDS`].
    pub body: Value,
    /// One key for the whole batch.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// A batch the store has, new or (for a repeated `Idempotency-Key`) from before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchAccepted {
    pub batch_id: String,
    pub job_ids: Vec<String>,
    pub workflow: String,
    pub replayed: bool,
}

/// How a batch's jobs differ from one another.
#[derive(Debug, PartialEq)]
enum Variation {
    /// N seeds counting up from the given (or a random) one.
    Count(usize, Option<u64>),
    Seeds(Vec<Value>),
    Prompts(Vec<Value>),
    /// Every combination of these values, the first field varying slowest.
    Grid(Vec<(String, Vec<Value>)>),
}

fn refuse(field: &str, message: impl Into<String>) -> SubmitError {
    Rejection::new(400, "invalid-batch", message)
        .field(field)
        .into()
}

/// Takes the batch field out of `body`: how the jobs vary.
fn variation_of(body: &mut Value, max: usize) -> Result<Variation, SubmitError> {
    let Some(obj) = body.as_object_mut() else {
        return Err(
            Rejection::new(400, "invalid-body", "request body must be a JSON object").into(),
        );
    };
    let given: Vec<&str> = BATCH_FIELDS
        .into_iter()
        .filter(|f| obj.get(*f).is_some_and(|v| !v.is_null()))
        .collect();
    let field = match given.as_slice() {
        [f] => *f,
        [] => {
            return Err(refuse(
                "count",
                "a batch needs one of count, seeds, prompts or grid",
            ));
        }
        [a, b, ..] => {
            return Err(refuse(
                b,
                format!("give one of count, seeds, prompts or grid, not {a} and {b}"),
            ));
        }
    };
    let value = obj.remove(field).unwrap_or(Value::Null);
    for f in BATCH_FIELDS {
        obj.remove(f);
    }
    let too_many = |n: usize| {
        refuse(
            field,
            format!("{field} would make {n} jobs; a batch holds 1 to {max} (--max-batch)"),
        )
    };
    let list = |v: Value, what: &str| -> Result<Vec<Value>, SubmitError> {
        match v {
            Value::Array(a) if a.is_empty() => Err(refuse(
                field,
                format!("{field} must list at least one {what}"),
            )),
            Value::Array(a) if a.len() > max => Err(too_many(a.len())),
            Value::Array(a) => Ok(a),
            _ => Err(refuse(field, format!("{field} must be a list of {what}s"))),
        }
    };
    match field {
        "count" => {
            // An integral number in any spelling (`4`, `4.0`), as seeds are read.
            let n = crate::workflow::param::as_whole(&value).ok_or_else(|| {
                refuse("count", format!("count must be an integer from 1 to {max}"))
            })?;
            if n == 0 || n > max as u64 {
                return Err(too_many(n as usize));
            }
            // The first seed, checked as a job's is (the others count up from it).
            let first = crate::workflow::request::seed_field(obj.get("seed"))?;
            Ok(Variation::Count(n as usize, first))
        }
        "seeds" => {
            if obj.get("seed").is_some_and(|v| !v.is_null()) {
                return Err(refuse("seeds", "give seeds or seed, not both"));
            }
            Ok(Variation::Seeds(list(value, "seed")?))
        }
        "prompts" => {
            if obj.get("prompt").is_some_and(|v| !v.is_null()) {
                return Err(refuse("prompts", "give prompts or prompt, not both"));
            }
            Ok(Variation::Prompts(list(value, "prompt")?))
        }
        _ => {
            let Value::Object(grid) = value else {
                return Err(refuse("grid", "grid must be an object of field: [values]"));
            };
            if grid.is_empty() {
                return Err(refuse("grid", "grid must name at least one field"));
            }
            let mut axes = Vec::with_capacity(grid.len());
            let mut total: usize = 1;
            for (k, v) in grid {
                if k == "workflow" || BATCH_FIELDS.contains(&k.as_str()) {
                    return Err(refuse(
                        &format!("grid.{k}"),
                        format!("a grid cannot vary {k}"),
                    ));
                }
                let Value::Array(values) = v else {
                    return Err(refuse(
                        &format!("grid.{k}"),
                        format!("grid.{k} must be a list of values"),
                    ));
                };
                if values.is_empty() {
                    return Err(refuse(
                        &format!("grid.{k}"),
                        format!("grid.{k} must list at least one value"),
                    ));
                }
                total = total.saturating_mul(values.len());
                if total > max {
                    return Err(too_many(total));
                }
                axes.push((k, values));
            }
            Ok(Variation::Grid(axes))
        }
    }
}

impl Variation {
    /// The bodies of the batch's jobs, in order.
    fn expand(&self, base: &Map<String, Value>) -> Vec<Value> {
        let with = |pairs: &[(&str, &Value)]| {
            let mut b = base.clone();
            for (k, v) in pairs {
                b.insert((*k).to_owned(), (*v).clone());
            }
            Value::Object(b)
        };
        match self {
            Variation::Count(n, first) => {
                let first = first.unwrap_or_else(|| fastrand::u64(..));
                (0..*n as u64)
                    .map(|i| with(&[("seed", &Value::from(first.wrapping_add(i)))]))
                    .collect()
            }
            Variation::Seeds(seeds) => seeds.iter().map(|s| with(&[("seed", s)])).collect(),
            Variation::Prompts(prompts) => prompts.iter().map(|p| with(&[("prompt", p)])).collect(),
            Variation::Grid(axes) => {
                let total: usize = axes.iter().map(|(_, v)| v.len()).product();
                (0..total)
                    .map(|mut i| {
                        let mut picked = vec![(String::new(), Value::Null); axes.len()];
                        for (slot, (k, values)) in picked.iter_mut().zip(axes).rev() {
                            *slot = (k.clone(), values[i % values.len()].clone());
                            i /= values.len();
                        }
                        let pairs: Vec<(&str, &Value)> =
                            picked.iter().map(|(k, v)| (k.as_str(), v)).collect();
                        with(&pairs)
                    })
                    .collect()
            }
        }
    }
}

impl Submitter {
    /// Submits a batch: expands it, checks every job as [`Submitter::submit`]
    /// does, then records the batch and queues its jobs in order. A batch the
    /// queue or the key's quota cannot hold whole is refused at its first job;
    /// if a later one is refused after all (another submission took the room in
    /// between), the jobs already queued are cancelled and the batch refused.
    pub async fn submit_batch(&self, s: BatchSubmission<'_>) -> Result<BatchAccepted, SubmitError> {
        let who = s.who;
        self.within_budget(who).await?;
        let original = s.body.clone();
        let mut body = s.body;
        let variation = variation_of(&mut body, self.max_batch)?;
        if Self::carries_graph(&body) {
            return Err(Rejection::new(
                400,
                "invalid-batch",
                "a batch runs a workflow by name, not a raw graph",
            )
            .field("graph")
            .into());
        }
        // The body the workflow is resolved with must pass as one job's.
        if let (Variation::Prompts(p), Some(obj)) = (&variation, body.as_object_mut()) {
            obj.insert("prompt".into(), p[0].clone());
        }
        let (wf, version, body) = self.workflow_of(who, body).await?;
        let wf = wf.as_ref();
        let (body, inline) = self.uploads.inline_pictures(wf, body).await?;
        let base = body.as_object().cloned().unwrap_or_default();
        let batch_id = JobId::random();
        let bodies = variation.expand(&base);
        let n = bodies.len();
        let mut jobs: Vec<(NewJob, Option<WebhookRecord>)> = Vec::with_capacity(n);
        for (i, b) in bodies.iter().enumerate() {
            let (mut job, webhook) = self
                .check(who, wf, version, b, &inline, None, None)
                .await
                .map_err(|e| e.in_batch(i))?;
            job.params
                .insert(BATCH_FIELD.into(), Value::String(batch_id.to_string()));
            job.following = (n - 1 - i) as u32;
            jobs.push((job, webhook));
        }
        self.uploads
            .store_all(self.store.as_ref(), who.owner(), inline, self.store_timeout)
            .await?;
        let record = BatchRecord {
            id: batch_id.to_string(),
            owner: who.owner().to_owned(),
            workflow: wf.name.clone(),
            created_ms: clock::now_ms(),
            job_ids: jobs.iter().map(|(j, _)| j.id.to_string()).collect(),
            webhook: jobs[0].1.is_some(),
        };
        let Some(key) = s.idempotency_key else {
            return self.enqueue_batch(&record, &jobs).await;
        };
        // Its own scope: a batch's key and a single job's never answer each other.
        let scope = scope(who.owner(), &format!("batch\0{}", key.as_str()));
        let claim = IdempotencyClaim {
            fingerprint: fingerprint(&original),
            job_id: jobs[0].0.id.clone(),
            seed: jobs[0].0.seed,
            workflow: record.workflow.clone(),
            taken_ms: clock::now_ms(),
        };
        match self.take_idempotency(&scope, &claim).await? {
            Some(first) => {
                let batch = match self.within(self.store.get(&first.job_id)).await? {
                    Some(job) => match job.batch_id() {
                        Some(id) => self.within(self.store.get_batch(id)).await?,
                        None => None,
                    },
                    None => None,
                };
                let batch = batch.ok_or_else(|| {
                    SubmitError::from(Rejection::new(
                        409,
                        "idempotency-key-in-progress",
                        "the batch this Idempotency-Key made is not readable yet; try again in a second",
                    )
                    .field("Idempotency-Key")
                    .retry_after(1))
                })?;
                Ok(BatchAccepted {
                    batch_id: batch.id,
                    job_ids: batch.job_ids,
                    workflow: batch.workflow,
                    replayed: true,
                })
            }
            None => match self.enqueue_batch(&record, &jobs).await {
                Ok(accepted) => Ok(accepted),
                Err(e) => {
                    idempotency::release(self.store.as_ref(), &scope).await;
                    Err(e)
                }
            },
        }
    }

    /// Records the batch (and its `batch.finished` webhook), then queues its jobs
    /// in order; a refusal cancels what was queued and forgets the batch.
    async fn enqueue_batch(
        &self,
        record: &BatchRecord,
        jobs: &[(NewJob, Option<WebhookRecord>)],
    ) -> Result<BatchAccepted, SubmitError> {
        let batch_id = JobId::parse(&record.id).expect("a batch id is a job id");
        self.within(self.store.put_batch(record)).await?;
        let batch_webhook = jobs[0].1.as_ref().map(|w| {
            let mut rec = WebhookRecord::new(
                w.url.clone(),
                vec![crate::webhooks::BATCH_FINISHED.to_owned()],
                clock::now_ms(),
            );
            rec.owner = w.owner.clone();
            rec.batch = true;
            rec
        });
        if let Err(e) = self.put_webhook(&batch_id, batch_webhook.as_ref()).await {
            let _ = self.within(self.store.delete_batch(&record.id)).await;
            return Err(e);
        }
        for (i, (job, webhook)) in jobs.iter().enumerate() {
            if let Err(e) = self.enqueue(job, webhook.as_ref()).await {
                for (done, _) in &jobs[..i] {
                    match self.within(self.store.cancel(&done.id)).await {
                        Ok(CancelOutcome::Cancelled(_) | CancelOutcome::Requested(_)) => {}
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(job_id = %done.id, error = %e, "could not cancel a job of a refused batch")
                        }
                    }
                }
                self.forget_webhook(&batch_id, batch_webhook.as_ref()).await;
                if i == 0 {
                    let _ = self.within(self.store.delete_batch(&record.id)).await;
                }
                return Err(e);
            }
        }
        Ok(BatchAccepted {
            batch_id: record.id.clone(),
            job_ids: record.job_ids.clone(),
            workflow: record.workflow.clone(),
            replayed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bodies(mut body: Value, max: usize) -> Result<Vec<Value>, SubmitError> {
        let v = variation_of(&mut body, max)?;
        Ok(v.expand(body.as_object().unwrap()))
    }

    #[test]
    fn a_grid_is_the_product_of_its_lists() {
        let b = bodies(
            json!({"prompt": "x", "grid": {"steps": [20, 30], "cfg": [5, 6, 7]}}),
            64,
        )
        .unwrap();
        assert_eq!(b.len(), 6);
        let pairs: Vec<(u64, u64)> = b
            .iter()
            .map(|b| (b["cfg"].as_u64().unwrap(), b["steps"].as_u64().unwrap()))
            .collect();
        // Fields in key order, the first slowest.
        assert_eq!(
            pairs,
            vec![(5, 20), (5, 30), (6, 20), (6, 30), (7, 20), (7, 30)]
        );
        assert!(
            b.iter()
                .all(|b| b["prompt"] == "x" && b.get("grid").is_none())
        );
    }

    #[test]
    fn count_counts_seeds_up_from_the_given_one() {
        let b = bodies(json!({"prompt": "x", "seed": 7, "count": 3}), 64).unwrap();
        let seeds: Vec<u64> = b.iter().map(|b| b["seed"].as_u64().unwrap()).collect();
        assert_eq!(seeds, vec![7, 8, 9]);
        let b = bodies(json!({"prompt": "x", "count": 2}), 64).unwrap();
        let (a, c) = (
            b[0]["seed"].as_u64().unwrap(),
            b[1]["seed"].as_u64().unwrap(),
        );
        assert_eq!(c, a.wrapping_add(1));
    }

    #[test]
    fn seeds_and_prompts_make_one_job_each() {
        let b = bodies(json!({"prompt": "x", "seeds": [1, 5]}), 64).unwrap();
        assert_eq!(b[1]["seed"], 5);
        let b = bodies(json!({"prompts": ["a", "b", "c"]}), 64).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[2]["prompt"], "c");
    }

    #[test]
    fn a_batch_out_of_bounds_is_refused_naming_the_field() {
        let field = |body: Value, max: usize| match bodies(body, max) {
            Err(SubmitError::Rejected(r)) => (r.code, r.field.unwrap_or_default()),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            field(json!({"prompt": "x", "count": 65}), 64),
            ("invalid-batch", "count".into())
        );
        assert_eq!(field(json!({"prompt": "x", "count": 0}), 64).1, "count");
        assert_eq!(field(json!({"prompt": "x", "count": "4"}), 64).1, "count");
        assert_eq!(field(json!({"prompt": "x", "count": 1.5}), 64).1, "count");
        assert_eq!(
            field(json!({"prompt": "x", "count": 2, "seed": -1}), 64),
            ("invalid-seed", "seed".into())
        );
        assert_eq!(
            bodies(json!({"prompt": "x", "count": 2.0}), 64)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(field(json!({"prompt": "x"}), 64).1, "count");
        assert_eq!(
            field(json!({"prompt": "x", "count": 2, "seeds": [1]}), 64).1,
            "seeds"
        );
        assert_eq!(
            field(json!({"prompt": "x", "seed": 1, "seeds": [1]}), 64).1,
            "seeds"
        );
        assert_eq!(
            field(
                json!({"prompt": "x", "grid": {"a": [1, 2, 3], "b": [1, 2, 3]}}),
                8
            )
            .1,
            "grid"
        );
        assert_eq!(
            field(json!({"prompt": "x", "grid": {"steps": []}}), 8).1,
            "grid.steps"
        );
        assert_eq!(
            field(json!({"prompt": "x", "grid": {"workflow": ["a"]}}), 8).1,
            "grid.workflow"
        );
        assert_eq!(field(json!({"prompt": "x", "prompts": []}), 8).1, "prompts");
        assert_eq!(
            field(json!({"prompt": "x", "prompts": ["a"]}), 8).1,
            "prompts"
        );
    }
}
