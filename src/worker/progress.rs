//! Progress 0–100 from a prompt's events: nodes done out of nodes to run, plus the
//! fraction of the running node's steps. Never goes backwards; 100 only when the job
//! is finished (so at most 99 here).

use std::collections::BTreeSet;

use crate::comfy::WsMessage;

/// Tracks one prompt.
#[derive(Clone, Debug)]
pub struct ProgressTracker {
    prompt_id: String,
    total: usize,
    done: BTreeSet<String>,
    running: Option<String>,
    fraction: f64,
    reported: u8,
}

impl ProgressTracker {
    /// `total`: the nodes of the prompt (all of a template's nodes feed its outputs).
    pub fn new(prompt_id: &str, total: usize) -> Self {
        ProgressTracker {
            prompt_id: prompt_id.to_owned(),
            total: total.max(1),
            done: BTreeSet::new(),
            running: None,
            fraction: 0.0,
            reported: 0,
        }
    }

    /// Takes one message into account; returns the new percentage if it rose.
    pub fn apply(&mut self, m: &WsMessage) -> Option<u8> {
        match m {
            WsMessage::ExecutionCached { prompt_id, nodes } if *prompt_id == self.prompt_id => {
                self.done.extend(nodes.iter().cloned());
            }
            WsMessage::Executing {
                prompt_id: Some(p),
                node: Some(n),
            } if *p == self.prompt_id => {
                if let Some(prev) = self.running.replace(n.clone())
                    && prev != *n
                {
                    self.done.insert(prev);
                }
                self.fraction = 0.0;
            }
            WsMessage::Progress {
                prompt_id: Some(p),
                node,
                value,
                max,
            } if *p == self.prompt_id => {
                if node.is_none() || *node == self.running {
                    self.fraction = step_fraction(*value, *max).max(self.fraction);
                }
            }
            WsMessage::ProgressState { prompt_id, nodes } if *prompt_id == self.prompt_id => {
                for (id, n) in nodes {
                    if n.state == "finished" {
                        self.done.insert(id.clone());
                    } else if Some(id) == self.running.as_ref() {
                        self.fraction = step_fraction(n.value, n.max).max(self.fraction);
                    }
                }
            }
            _ => return None,
        }
        let running_frac = match &self.running {
            Some(r) if !self.done.contains(r) => self.fraction,
            _ => 0.0,
        };
        let done = self.done.len().min(self.total) as f64;
        let pct = ((done + running_frac) / self.total as f64 * 100.0)
            .floor()
            .clamp(0.0, 99.0) as u8;
        if pct > self.reported {
            self.reported = pct;
            Some(pct)
        } else {
            None
        }
    }

    /// The highest percentage so far.
    pub fn percent(&self) -> u8 {
        self.reported
    }
}

/// `value / max` of a node's steps, within 0..1. ComfyUI's progress values are
/// 0-based for some nodes (SaveImageWebsocket sends 0..N-1 of N) and 1-based for
/// samplers; either way the fraction stays below the node's completion.
fn step_fraction(value: f64, max: f64) -> f64 {
    if max > 0.0 && value.is_finite() {
        (value / max).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> WsMessage {
        WsMessage::parse(s).unwrap()
    }

    #[test]
    fn nodes_and_steps_make_a_rising_percentage() {
        let mut t = ProgressTracker::new("p", 4);
        assert_eq!(
            t.apply(&msg(
                r#"{"type":"execution_cached","data":{"nodes":["1"],"prompt_id":"p"}}"#
            )),
            Some(25)
        );
        assert_eq!(
            t.apply(&msg(
                r#"{"type":"executing","data":{"node":"2","prompt_id":"p"}}"#
            )),
            None
        );
        assert_eq!(
            t.apply(&msg(
                r#"{"type":"progress","data":{"value":10,"max":20,"prompt_id":"p","node":"2"}}"#
            )),
            Some(37)
        );
        // Going backwards is ignored.
        assert_eq!(
            t.apply(&msg(
                r#"{"type":"progress","data":{"value":5,"max":20,"prompt_id":"p","node":"2"}}"#
            )),
            None
        );
        assert_eq!(
            t.apply(&msg(
                r#"{"type":"executing","data":{"node":"3","prompt_id":"p"}}"#
            )),
            Some(50)
        );
        assert_eq!(
            t.apply(&msg(
                r#"{"type":"executing","data":{"node":"4","prompt_id":"p"}}"#
            )),
            Some(75)
        );
        // Done for the tracker is 99; 100 is written only with the finished state.
        assert_eq!(t.apply(&msg(r#"{"type":"progress_state","data":{"prompt_id":"p","nodes":{"4":{"value":1,"max":1,"state":"finished"}}}}"#)), Some(99));
        assert_eq!(t.percent(), 99);
    }

    #[test]
    fn other_prompts_are_ignored() {
        let mut t = ProgressTracker::new("p", 2);
        assert_eq!(
            t.apply(&msg(
                r#"{"type":"execution_cached","data":{"nodes":["1"],"prompt_id":"q"}}"#
            )),
            None
        );
        assert_eq!(
            t.apply(&msg(r#"{"type":"executing","data":{"node":"1"}}"#)),
            None
        );
        assert_eq!(t.percent(), 0);
    }
}
