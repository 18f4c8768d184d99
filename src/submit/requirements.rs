//! What a job needs of a backend: refused now, not failed later on a GPU, when
//! no live backend has it; else registered, so dispatchers route the job by it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Rejection, SubmitError, Submitter};
use crate::capabilities::{self, Requirements};
use crate::clock;
use crate::job::NewJob;
use crate::workflow::Workflow;

impl Submitter {
    /// The job's requirement set (a node or a model none offers is refused;
    /// anything is accepted when no backend has reported yet), registered in
    /// the store. Its fingerprint, or "" when it cannot be registered (the
    /// registry is full: the job then goes to any backend).
    pub(super) async fn requirements(
        &self,
        wf: &Workflow,
        job: &NewJob,
    ) -> Result<String, SubmitError> {
        let graph = wf.render(job.id.as_str(), &job.prompt, job.seed, &job.params);
        let need = Requirements::of_graph(&graph);
        let offers = self.within(self.offers.live(self.store.as_ref())).await?;
        if let Some(why) = capabilities::refusal(&need, &offers) {
            // Name the parameter that chose the missing file, if one did.
            let inputs = capabilities::missing_inputs(&need, &offers);
            let field = wf
                .params
                .iter()
                .find(|(_, spec)| {
                    spec.targets
                        .iter()
                        .any(|t| inputs.contains(&wf.input_key(t)))
                })
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| "workflow".to_owned());
            return Err(Rejection::new(400, "model-unavailable", why)
                .field(field)
                .into());
        }
        if offers.is_empty() {
            // No backend has said what it holds yet, so any name passes the check
            // above. Only what the workflow needs with its own defaults is
            // registered then (a bounded set: one per workflow, so such jobs are
            // routed, or failed after the grace, once backends report); a job
            // that names other files goes to any backend, whose own check names
            // what is missing, and made-up names cannot fill the registry.
            let defaults = wf.render(job.id.as_str(), &job.prompt, job.seed, &Default::default());
            if Requirements::of_graph(&defaults).fingerprint() != need.fingerprint() {
                return Ok(String::new());
            }
        }
        let fp = need.fingerprint();
        let json = serde_json::to_string(&need).unwrap_or_default();
        if !self
            .within(self.store.register_requirements(&fp, &json))
            .await?
        {
            warn_registry_full(&fp);
            return Ok(String::new());
        }
        Ok(fp)
    }
}

/// Once a minute at most: a flood of such jobs must not flood the log.
fn warn_registry_full(fp: &str) {
    static WARNED_MS: AtomicU64 = AtomicU64::new(0);
    let now = clock::now_ms();
    let last = WARNED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60_000
        && WARNED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            requirement_set = %fp,
            "the requirement-set registry is full: jobs with new sets go to any backend"
        );
    }
}
