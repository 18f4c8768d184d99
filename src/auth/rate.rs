//! Rate limits: GCRA (the generic cell rate algorithm), the arithmetic that a
//! token bucket does with one number per client: the theoretical arrival time of
//! the next request. The Redis store runs it in one script (shared by every API
//! process); the embedded store here, in memory.

use std::collections::HashMap;
use std::sync::Mutex;

/// Buckets kept at most in memory; the ones already full (idle) go first.
const MAX_BUCKETS: usize = 100_000;

pub use crate::limit::{RateCheck, RateDecision};

/// One step of GCRA. `tat_ms` is the stored theoretical arrival time (0 when
/// none); returns the decision and the new value to store (unchanged if refused).
pub fn gcra(tat_ms: f64, now_ms: f64, rate: f64, burst: u32) -> (RateDecision, f64) {
    let interval = 1000.0 / rate;
    let capacity = interval * f64::from(burst);
    let tat = tat_ms.max(now_ms);
    let new_tat = tat + interval;
    let allow_at = new_tat - capacity;
    if now_ms < allow_at {
        let used = tat - now_ms;
        return (
            RateDecision {
                allowed: false,
                remaining: 0,
                reset_secs: used / 1000.0,
                retry_after_secs: (allow_at - now_ms) / 1000.0,
            },
            tat_ms,
        );
    }
    let used = new_tat - now_ms;
    (
        RateDecision {
            allowed: true,
            remaining: ((capacity - used) / interval).floor().max(0.0) as u32,
            reset_secs: used / 1000.0,
            retry_after_secs: 0.0,
        },
        new_tat,
    )
}

/// GCRA buckets in this process.
#[derive(Default)]
pub struct LocalLimiter {
    buckets: Mutex<HashMap<String, f64>>,
}

impl LocalLimiter {
    pub fn check(&self, bucket: &str, now_ms: f64, rate: f64, burst: u32) -> RateDecision {
        let mut map = self.buckets.lock().expect("rate buckets");
        if map.len() >= MAX_BUCKETS && !map.contains_key(bucket) {
            // A bucket whose arrival time has passed is full: forgetting it
            // changes nothing.
            map.retain(|_, tat| *tat > now_ms);
            if map.len() >= MAX_BUCKETS {
                // Still full of live buckets: forget the one nearest to full
                // (the least allowance gained by forgetting), not all of them.
                if let Some(k) = map
                    .iter()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&k);
                }
            }
        }
        let tat = map.get(bucket).copied().unwrap_or(0.0);
        let (decision, new_tat) = gcra(tat, now_ms, rate, burst);
        map.insert(bucket.to_owned(), new_tat);
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate() {
        let l = LocalLimiter::default();
        // 2 per second, burst 4: four at once, then one every 500 ms.
        let t = 1_000_000.0;
        let got: Vec<bool> = (0..6).map(|_| l.check("k", t, 2.0, 4).allowed).collect();
        assert_eq!(got, [true, true, true, true, false, false]);
        let refused = l.check("k", t, 2.0, 4);
        assert!((refused.retry_after_secs - 0.5).abs() < 1e-9, "{refused:?}");
        assert!(l.check("k", t + 499.0, 2.0, 4).allowed.eq(&false));
        assert!(l.check("k", t + 500.0, 2.0, 4).allowed);
        assert!(!l.check("k", t + 500.0, 2.0, 4).allowed);
        // Other buckets are independent.
        assert!(l.check("other", t, 2.0, 4).allowed);
    }

    #[test]
    fn a_full_limiter_forgets_one_bucket_not_all() {
        let l = LocalLimiter::default();
        let t = 1_000_000.0;
        // A spent bucket, then enough live ones to fill the map.
        for _ in 0..4 {
            l.check("spent", t, 0.001, 4);
        }
        for i in 0..MAX_BUCKETS {
            l.check(&format!("b{i}"), t, 1.0, 1);
        }
        assert!(
            !l.check("spent", t, 0.001, 4).allowed,
            "the spent bucket is still remembered"
        );
    }

    #[test]
    fn remaining_and_reset_count_down() {
        let (d, tat) = gcra(0.0, 0.0, 1.0, 3);
        assert_eq!((d.allowed, d.remaining), (true, 2));
        assert!((d.reset_secs - 1.0).abs() < 1e-9);
        let (d, tat) = gcra(tat, 0.0, 1.0, 3);
        assert_eq!(d.remaining, 1);
        let (d, _) = gcra(tat, 0.0, 1.0, 3);
        assert_eq!((d.remaining, d.reset_secs), (0, 3.0));
    }
}
