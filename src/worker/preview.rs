//! Previews of a running job's picture: ComfyUI sends one per sampler step (with
//! `--preview-method`), often many a second; a job publishes at most one every
//! [`MIN_INTERVAL`], always the latest (one that arrives too soon waits, and a
//! newer one replaces it).

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::store::Preview;

/// At most four previews a second per job.
pub const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// The previews of one attempt of one job.
#[derive(Default)]
pub struct Throttle {
    last: Option<Instant>,
    pending: Option<(&'static str, Bytes)>,
    seq: u64,
}

impl Throttle {
    /// A preview arrived at `now`: the one to publish now, if it may be.
    pub fn offer(
        &mut self,
        content_type: &'static str,
        image: Bytes,
        now: Instant,
    ) -> Option<Preview> {
        self.pending = Some((content_type, image));
        self.due(now)
    }

    /// The waiting preview, if its time has come.
    pub fn due(&mut self, now: Instant) -> Option<Preview> {
        if self.pending.is_none()
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < MIN_INTERVAL)
        {
            return None;
        }
        let (content_type, image) = self.pending.take()?;
        self.last = Some(now);
        self.seq += 1;
        Some(Preview {
            seq: self.seq,
            content_type: content_type.to_owned(),
            image,
        })
    }

    /// Previews published so far.
    pub fn published(&self) -> u64 {
        self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_four_a_second_and_always_the_latest() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let img = |n: u8| Bytes::from(vec![n]);
        let first = t.offer("image/png", img(1), t0).unwrap();
        assert_eq!((first.seq, first.image[0]), (1, 1));
        // Twenty more within the next 240 ms: none now, the last one waits.
        for n in 2..22u8 {
            let at = t0 + Duration::from_millis(11 * n as u64);
            assert!(t.offer("image/png", img(n), at).is_none());
        }
        assert!(t.due(t0 + Duration::from_millis(249)).is_none());
        let second = t.due(t0 + Duration::from_millis(250)).unwrap();
        assert_eq!((second.seq, second.image[0]), (2, 21), "the latest");
        assert!(
            t.due(t0 + Duration::from_millis(900)).is_none(),
            "nothing waits"
        );
        assert_eq!(t.published(), 2);
    }
}
