//! When a dispatcher takes its next job: just in time, not as early as it can.
//!
//! With `prefetch` 1 a backend holds the prompt running plus one submitted behind
//! it, so the GPU never waits for a claim. Claimed as early as possible, though,
//! the job behind is chosen a whole prompt ahead: a newcomer to the fair queue (or
//! a high-priority job) then waits up to two prompt durations before it starts.
//! So the next job is claimed shortly before the running prompt is expected to end
//! (its start plus the backend's typical duration, less a lead of a fifth of that,
//! 30 ms to 1 s): the GPU still finds the next prompt queued, and the choice is
//! made as late as that allows. Without an estimate yet (the first prompts), or
//! with nothing of ours on the backend, the claim is at once, as before.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

const LEAD_MIN: Duration = Duration::from_millis(30);
const LEAD_MAX: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// Our prompts submitted to the backend and not yet ended.
    submitted: HashSet<String>,
    /// The one executing, and since when.
    running: Option<(String, Instant)>,
    /// A moving average of how long prompts execute here.
    typical: Option<Duration>,
    /// Wall time spent running our prompts (ended ones).
    busy: Duration,
}

/// One backend's pace.
#[derive(Default)]
pub struct Pacing {
    state: Mutex<State>,
    changed: Notify,
}

/// What the dispatcher should do before claiming.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Now,
    /// Claim at this instant.
    At(Instant),
    /// A prompt of ours waits to start: look again when it does (or after this).
    AfterStart(Duration),
}

impl Pacing {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    pub fn submitted(&self, prompt: &str) {
        self.with(|s| s.submitted.insert(prompt.to_owned()));
        self.changed.notify_waiters();
    }

    pub fn started(&self, prompt: &str) {
        self.with(|s| {
            if s.submitted.contains(prompt) {
                s.running = Some((prompt.to_owned(), Instant::now()));
            }
        });
        self.changed.notify_waiters();
    }

    /// The prompt is over; `completed` when it ran to its end (only those teach the
    /// typical duration).
    pub fn ended(&self, prompt: &str, completed: bool) {
        self.with(|s| {
            s.submitted.remove(prompt);
            if s.running.as_ref().is_some_and(|(p, _)| p == prompt) {
                let (_, since) = s.running.take().expect("checked");
                s.busy += since.elapsed();
                if completed {
                    let d = since.elapsed();
                    s.typical = Some(match s.typical {
                        None => d,
                        Some(t) => t.mul_f64(0.7) + d.mul_f64(0.3),
                    });
                }
            }
        });
        self.changed.notify_waiters();
    }

    /// Wall time the backend has spent running our prompts, the one running now
    /// included.
    pub fn busy(&self) -> Duration {
        self.with(|s| {
            s.busy
                + s.running
                    .as_ref()
                    .map_or(Duration::ZERO, |(_, t)| t.elapsed())
        })
    }

    pub fn next(&self) -> Next {
        self.with(|s| {
            let Some(typical) = s.typical else {
                return Next::Now;
            };
            if s.submitted.is_empty() {
                return Next::Now;
            }
            match &s.running {
                Some((_, since)) => {
                    let lead = (typical / 5).clamp(LEAD_MIN, LEAD_MAX);
                    Next::At(*since + typical.saturating_sub(lead))
                }
                None => Next::AfterStart(typical),
            }
        })
    }

    /// Waits until the next job should be claimed.
    pub async fn wait(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.next() {
                Next::Now => return,
                Next::At(at) if at <= Instant::now() => return,
                Next::At(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => return,
                        _ = changed => {}
                    }
                }
                Next::AfterStart(limit) => {
                    // Not forever: a start we do not hear of (socket down) must not
                    // stall the backend.
                    if tokio::time::timeout(limit, changed).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn near(d: Duration, want: Duration) -> bool {
        d.abs_diff(want) < Duration::from_millis(40)
    }

    #[tokio::test]
    async fn the_next_claim_comes_just_before_the_running_prompt_should_end() {
        let p = Pacing::default();
        assert_eq!(p.next(), Next::Now, "no estimate yet");
        p.submitted("a");
        p.started("a");
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.ended("a", true);
        assert_eq!(p.next(), Next::Now, "nothing of ours on the backend");
        p.submitted("b");
        let Next::AfterStart(typical) = p.next() else {
            panic!("b waits to start: {:?}", p.next());
        };
        assert!(near(typical, Duration::from_millis(200)), "{typical:?}");
        p.started("b");
        let start = Instant::now();
        let Next::At(at) = p.next() else {
            panic!("{:?}", p.next());
        };
        // A fifth of the typical duration ahead of its end.
        assert!(near(at - start, typical - typical / 5), "{:?}", at - start);
        // A prompt that failed does not teach the typical duration.
        p.ended("b", false);
        p.submitted("c");
        p.started("c");
        let Next::At(at) = p.next() else {
            panic!("{:?}", p.next());
        };
        assert!(near(at - Instant::now(), typical - typical / 5));
        // A start for a prompt that is not ours changes nothing.
        p.ended("c", false);
        p.started("someone else's");
        assert_eq!(p.next(), Next::Now);
    }

    #[tokio::test]
    async fn waiting_ends_at_the_claim_time_or_when_a_start_is_never_heard() {
        let p = Pacing::default();
        p.submitted("a");
        p.started("a");
        tokio::time::sleep(Duration::from_millis(250)).await;
        p.ended("a", true);
        p.submitted("b");
        p.started("b");
        let t = Instant::now();
        p.wait().await;
        assert!(
            near(t.elapsed(), Duration::from_millis(200)),
            "{:?}",
            t.elapsed()
        );
        p.ended("b", true);
        p.submitted("c");
        // c's start never arrives: the wait gives up after a typical duration.
        let t = Instant::now();
        p.wait().await;
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }
}
