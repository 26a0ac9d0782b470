//! When to restart a worker that died: exponential backoff, reset by a stable run, and crash-loop
//! detection.
//!
//! Pure bookkeeping over instants the caller passes in, so it is tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The restart rules of a worker slot.
#[derive(Clone, Debug)]
pub(crate) struct RestartPolicy {
    /// Delay before the first restart after a failure.
    pub initial_backoff: Duration,
    /// The delay doubles per failure up to this; a crash-looping worker is retried only this often.
    pub max_backoff: Duration,
    /// A worker that stayed up (after `Ready`) this long did its work: its death resets the
    /// backoff and the crash loop, and its successor starts at once (a stream is waiting on it).
    /// Short enough that a worker killed every few seconds is never taken for a crash loop.
    pub stable_after: Duration,
    /// `crash_loop_failures` failures within `crash_loop_window` make a crash loop.
    pub crash_loop_failures: usize,
    pub crash_loop_window: Duration,
    /// How long a new worker has to send `Ready` before it is killed (a failed start).
    pub ready_timeout: Duration,
    /// How often a running worker is pinged.
    pub ping_interval: Duration,
    /// A worker that leaves a ping unanswered this long is hung: it is killed and restarted.
    pub ping_timeout: Duration,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(3),
            crash_loop_failures: 5,
            crash_loop_window: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(2),
            ping_timeout: Duration::from_secs(10),
        }
    }
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Wait this long before the next start.
    pub delay: Duration,
    /// The worker is in a crash loop.
    pub failing: bool,
    /// This failure started the crash loop (warn once).
    pub entered_failing: bool,
}

/// The restart state of one slot.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RestartPolicy,
    next: Duration,
    /// Times of recent failures, at most `crash_loop_failures` of them, none older than the window.
    recent: VecDeque<Instant>,
    failing: bool,
}

impl Backoff {
    pub fn new(policy: RestartPolicy) -> Backoff {
        Backoff {
            next: policy.initial_backoff,
            recent: VecDeque::new(),
            failing: false,
            policy,
        }
    }

    /// Records a failure at `now` of a worker that had been up (since `Ready`) for `up_for`.
    pub fn on_failure(&mut self, now: Instant, up_for: Duration) -> Decision {
        if up_for >= self.policy.stable_after {
            // No sign of a loop: restart now; a successor that fails early backs off from the
            // initial delay.
            self.next = self.policy.initial_backoff;
            self.recent.clear();
            self.failing = false;
            return Decision {
                delay: Duration::ZERO,
                failing: false,
                entered_failing: false,
            };
        }
        let window = self.policy.crash_loop_window;
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        while self.recent.len() > self.policy.crash_loop_failures.max(1) {
            self.recent.pop_front();
        }

        let entered_failing = !self.failing && self.recent.len() >= self.policy.crash_loop_failures;
        self.failing |= entered_failing;
        let delay = if self.failing {
            self.policy.max_backoff
        } else {
            self.next.min(self.policy.max_backoff)
        };
        self.next = self.next.saturating_mul(2).min(self.policy.max_backoff);
        Decision {
            delay,
            failing: self.failing,
            entered_failing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_up_to_the_maximum_and_a_crash_loop_is_flagged_once() {
        let mut backoff = Backoff::new(RestartPolicy::default());
        let start = Instant::now();
        let mut now = start;
        let mut delays = Vec::new();
        let mut entered = Vec::new();
        for _ in 0..8 {
            let decision = backoff.on_failure(now, Duration::ZERO);
            delays.push(decision.delay);
            entered.push(decision.entered_failing);
            now += decision.delay;
        }
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                // Fifth failure within 60 s: crash loop, retried at the maximum only.
                Duration::from_secs(30),
                Duration::from_secs(30),
                Duration::from_secs(30),
                Duration::from_secs(30),
            ]
        );
        assert_eq!(
            entered,
            [false, false, false, false, true, false, false, false]
        );
    }

    #[test]
    fn failures_spread_over_time_are_no_crash_loop_but_still_back_off() {
        let mut backoff = Backoff::new(RestartPolicy::default());
        let mut now = Instant::now();
        for _ in 0..10 {
            let decision = backoff.on_failure(now, Duration::from_secs(1));
            assert!(!decision.failing);
            now += Duration::from_secs(61);
        }
        let decision = backoff.on_failure(now, Duration::ZERO);
        assert_eq!(
            decision.delay,
            Duration::from_secs(30),
            "doubling still capped"
        );
    }

    #[test]
    fn a_stable_run_resets_the_backoff_and_the_crash_loop() {
        let policy = RestartPolicy::default();
        let mut backoff = Backoff::new(policy.clone());
        let mut now = Instant::now();
        for _ in 0..6 {
            now += ms(10);
            backoff.on_failure(now, Duration::ZERO);
        }
        now += Duration::from_secs(31);
        let decision = backoff.on_failure(now, policy.stable_after);
        assert_eq!(
            decision,
            Decision {
                delay: Duration::ZERO,
                failing: false,
                entered_failing: false
            }
        );
        // Its successor failing early backs off from the initial delay again.
        now += ms(10);
        assert_eq!(
            backoff.on_failure(now, Duration::ZERO).delay,
            policy.initial_backoff
        );
    }

    #[test]
    fn a_worker_killed_every_few_seconds_is_restarted_at_once_every_time() {
        // Issue 6: ten or more SIGKILLs of one worker within two minutes while a client streams;
        // each successor served a few seconds before the next kill.
        let policy = RestartPolicy::default();
        let mut backoff = Backoff::new(policy.clone());
        let mut now = Instant::now();
        for _ in 0..20 {
            now += policy.stable_after + Duration::from_secs(1);
            let decision = backoff.on_failure(now, policy.stable_after + ms(500));
            assert_eq!(decision.delay, Duration::ZERO);
            assert!(!decision.failing);
        }
    }
}
