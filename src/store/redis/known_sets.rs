//! The requirement sets this process saw registered, so its submissions of them
//! leave the set's JSON out (the enqueue script still checks, and asks for the
//! JSON again when the registry lost it). Bounded: when full it forgets them
//! all, which costs only the JSON sent once more per set.

use std::collections::HashSet;
use std::sync::Mutex;

pub(super) struct KnownSets {
    cap: usize,
    sets: Mutex<HashSet<String>>,
}

impl KnownSets {
    pub(super) fn new(cap: usize) -> KnownSets {
        KnownSets {
            cap: cap.max(1),
            sets: Mutex::new(HashSet::new()),
        }
    }

    /// Whether set `fp` was registered by this process (or there is none).
    pub(super) fn knows(&self, fp: &str) -> bool {
        fp.is_empty() || self.sets.lock().expect("sets known").contains(fp)
    }

    /// Set `fp` is registered now.
    pub(super) fn remember(&self, fp: &str) {
        if fp.is_empty() {
            return;
        }
        let mut sets = self.sets.lock().expect("sets known");
        if sets.contains(fp) {
            return;
        }
        if sets.len() >= self.cap {
            sets.clear();
        }
        sets.insert(fp.to_owned());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sets.lock().expect("sets known").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_known_once_remembered_and_none_is_always_known() {
        let k = KnownSets::new(4);
        assert!(k.knows(""));
        assert!(!k.knows("a"));
        k.remember("a");
        k.remember("");
        assert!(k.knows("a"));
        assert_eq!(k.len(), 1);
    }

    #[test]
    fn the_memory_stays_within_its_bound() {
        let k = KnownSets::new(3);
        for i in 0..100 {
            k.remember(&format!("set-{i}"));
            assert!(k.len() <= 3, "{} sets after {i}", k.len());
            // The newest is always known.
            assert!(k.knows(&format!("set-{i}")));
        }
    }

    #[test]
    fn remembering_a_known_set_again_keeps_the_others() {
        let k = KnownSets::new(3);
        for fp in ["a", "b", "c"] {
            k.remember(fp);
        }
        k.remember("b");
        assert_eq!(k.len(), 3);
        assert!(["a", "b", "c"].iter().all(|fp| k.knows(fp)));
    }
}
