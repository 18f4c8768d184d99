//! What a job needs of a backend: refused now, not failed later on a GPU, when
//! no live backend has it; else named to the store, which registers the set with
//! the job, so dispatchers route the job by it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{Rejection, SubmitError, Submitter};
use crate::capabilities::{self, Requirements, is_model_input};
use crate::job::NewJob;
use crate::workflow::{GRAPH_WORKFLOW, Workflow};

/// Requirement sets worked out at most before the memory starts again.
const MAX_REMEMBERED: usize = 4096;

/// A requirement set as a submission uses it: the set, its fingerprint, its JSON.
pub(super) struct Need {
    set: Requirements,
    fp: String,
    json: String,
}

/// The requirement sets of recent submissions, by workflow (name and version:
/// both fixed for what they name) and the values of the parameters that choose
/// a model file: what a set depends on beside the graph. A raw graph is worked
/// out each time.
#[derive(Default)]
pub struct NeedMemory {
    by_key: Mutex<HashMap<String, Arc<Need>>>,
}

impl NeedMemory {
    /// `wf`'s set for a job with `params` (`prompt` and `seed` given apart).
    fn of(
        &self,
        wf: &Workflow,
        prompt: &str,
        seed: u64,
        params: &serde_json::Map<String, Value>,
    ) -> Arc<Need> {
        let work_out = || {
            let graph = wf.render("", prompt, seed, params);
            let set = Requirements::of_graph(&graph);
            Arc::new(Need {
                fp: set.fingerprint(),
                json: serde_json::to_string(&set).unwrap_or_default(),
                set,
            })
        };
        if wf.name == GRAPH_WORKFLOW {
            return work_out();
        }
        let mut key = format!("{}@{}", wf.name, wf.version.unwrap_or(0));
        for (name, spec) in &wf.params {
            if !spec.targets.iter().any(|t| is_model_input(&t.input)) {
                continue;
            }
            let value = match name.as_str() {
                "prompt" => Some(Value::from(prompt)),
                "seed" => Some(Value::from(seed)),
                _ => params.get(name).cloned().or_else(|| spec.default.clone()),
            };
            key.push('\0');
            key.push_str(name);
            key.push('=');
            key.push_str(&value.map(|v| v.to_string()).unwrap_or_default());
        }
        if let Some(n) = self.by_key.lock().expect("needs").get(&key) {
            return n.clone();
        }
        let need = work_out();
        let mut m = self.by_key.lock().expect("needs");
        if m.len() >= MAX_REMEMBERED {
            m.clear();
        }
        m.insert(key, need.clone());
        need
    }
}

impl Submitter {
    /// The job's requirement set (a node or a model none offers is refused;
    /// anything is accepted when no backend has reported yet): its fingerprint
    /// and JSON, for the store to register with the job; empty when the job
    /// goes to any backend.
    pub(super) async fn requirements(
        &self,
        wf: &Workflow,
        job: &NewJob,
    ) -> Result<(String, String), SubmitError> {
        let need = self.needs.of(wf, &job.prompt, job.seed, &job.params);
        let offers = self.within(self.offers.live(self.store.as_ref())).await?;
        if let Some(why) = capabilities::refusal(&need.set, &offers) {
            // Name the parameter that chose the missing file, if one did.
            let inputs = capabilities::missing_inputs(&need.set, &offers);
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
            let defaults = self
                .needs
                .of(wf, &job.prompt, job.seed, &Default::default());
            if defaults.fp != need.fp {
                return Ok((String::new(), String::new()));
            }
        }
        Ok((need.fp.clone(), need.json.clone()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;

    fn sd15() -> Workflow {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/workflows/sd15.json");
        Workflow::parse("sd15.json", &std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_set_follows_the_model_choice_not_the_prompt_or_seed() {
        let wf = sd15();
        let memory = NeedMemory::default();
        let a = memory.of(&wf, "a cat", 1, &Map::new());
        let b = memory.of(&wf, "a dog", 2, &Map::new());
        assert_eq!(a.fp, b.fp);
        assert!(Arc::ptr_eq(&a, &b), "worked out once");
        let mut other = Map::new();
        other.insert("checkpoint".into(), json!("other.safetensors"));
        let c = memory.of(&wf, "a cat", 1, &other);
        assert_ne!(c.fp, a.fp);
        assert!(c.json.contains("other.safetensors"));
        let fresh = Requirements::of_graph(&wf.render("j", "a cat", 1, &other));
        assert_eq!(c.fp, fresh.fingerprint(), "the same as working it out anew");
    }

    #[test]
    fn the_memory_is_bounded() {
        let wf = sd15();
        let memory = NeedMemory::default();
        for i in 0..MAX_REMEMBERED + 10 {
            let mut p = Map::new();
            p.insert("checkpoint".into(), json!(format!("m{i}.safetensors")));
            memory.of(&wf, "x", 1, &p);
            assert!(memory.by_key.lock().unwrap().len() <= MAX_REMEMBERED);
        }
    }
}
