//! What a worker may make the broker do: a bounded number of log lines per second, and no
//! endless stream of messages that cost the broker work.
//!
//! A worker is untrusted, and some of its messages are not free for the broker: an `Error` is
//! logged (up to 1 KiB of text each), a session report is passed on to the session code, a net
//! request is answered. [`LogBudget`] lets a worker have its first lines of every second logged
//! and counts the rest, which are summarised as one "N … suppressed" line when the next second
//! begins; [`FloodGuard`] also counts every costly message and says when a worker has sent more
//! than a generous bound in each of several seconds in a row, so the broker kills it.
//!
//! Pure bookkeeping over instants the caller passes in, so it is tested without waiting.

use std::time::{Duration, Instant};

/// The length of one accounting window.
const WINDOW: Duration = Duration::from_secs(1);

/// Log lines one source of one worker may have logged per window.
pub(crate) const LOG_LINES_PER_SECOND: u32 = 20;

/// Costly messages per window beyond which a window counts as flooding. Far above what any
/// honest worker sends (stats come about once a second, errors one per refused message, net
/// requests one per TLS handshake or pairing step).
pub(crate) const FLOOD_MESSAGES_PER_SECOND: u32 = 1000;

/// Flooding windows in a row after which the worker is killed.
pub(crate) const FLOOD_SECONDS_TO_KILL: u32 = 3;

/// Lets through the first [`LOG_LINES_PER_SECOND`] lines of every window and counts the rest.
#[derive(Debug)]
pub(crate) struct LogBudget {
    per_window: u32,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineVerdict {
    /// Log this line.
    pub log: bool,
    /// Lines suppressed in the window that just ended: log the summary first.
    pub suppressed_before: Option<u64>,
}

impl Default for LogBudget {
    fn default() -> LogBudget {
        LogBudget::new(LOG_LINES_PER_SECOND)
    }
}

impl LogBudget {
    pub(crate) fn new(per_window: u32) -> LogBudget {
        LogBudget {
            per_window,
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Accounts for one line at `now`.
    pub(crate) fn line(&mut self, now: Instant) -> LineVerdict {
        let suppressed_before = self.roll(now);
        let log = self.logged < self.per_window;
        if log {
            self.logged += 1;
        } else {
            self.suppressed += 1;
        }
        LineVerdict {
            log,
            suppressed_before,
        }
    }

    /// The count of lines suppressed in a window that has ended by `now` (or, with `force`,
    /// in the current one, e.g. when the worker is gone), once.
    pub(crate) fn take_summary(&mut self, now: Instant, force: bool) -> Option<u64> {
        if force {
            return Some(std::mem::take(&mut self.suppressed)).filter(|n| *n > 0);
        }
        self.roll(now)
    }

    /// Starts a new window if the current one has ended; returns what it suppressed.
    fn roll(&mut self, now: Instant) -> Option<u64> {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => None,
            _ => {
                self.window_start = Some(now);
                self.logged = 0;
                Some(std::mem::take(&mut self.suppressed)).filter(|n| *n > 0)
            }
        }
    }
}

/// What one worker instance has cost the broker: its logged errors and its costly messages.
#[derive(Debug, Default)]
pub(crate) struct WorkerCosts {
    /// How many of its `Error` reports are logged; the rest are counted.
    pub error_log: LogBudget,
    /// Its costly messages per second (a worker that floods for long is killed).
    pub flood: FloodGuard,
}

/// Counts a worker's costly messages per window and decides when it is flooding.
#[derive(Debug)]
pub(crate) struct FloodGuard {
    per_window: u32,
    windows_to_kill: u32,
    window_start: Option<Instant>,
    messages: u32,
    /// Flooding windows in a row before the current one.
    streak: u32,
}

impl Default for FloodGuard {
    fn default() -> FloodGuard {
        FloodGuard::new(FLOOD_MESSAGES_PER_SECOND, FLOOD_SECONDS_TO_KILL)
    }
}

impl FloodGuard {
    pub(crate) fn new(per_window: u32, windows_to_kill: u32) -> FloodGuard {
        FloodGuard {
            per_window,
            windows_to_kill: windows_to_kill.max(1),
            window_start: None,
            messages: 0,
            streak: 0,
        }
    }

    /// Accounts for one costly message at `now`; `Some(reason)` when the worker has now flooded
    /// for long enough to be killed.
    pub(crate) fn message(&mut self, now: Instant) -> Option<String> {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < WINDOW => {}
            Some(start) => {
                let flooded = self.messages > self.per_window;
                // A gap of a whole window or more was a quiet window: the streak is broken.
                let adjacent = now.saturating_duration_since(start) < WINDOW * 2;
                self.streak = if flooded && adjacent {
                    self.streak + 1
                } else {
                    0
                };
                self.window_start = Some(now);
                self.messages = 0;
            }
            None => self.window_start = Some(now),
        }
        self.messages = self.messages.saturating_add(1);
        if self.messages > self.per_window && self.streak + 1 >= self.windows_to_kill {
            return Some(format!(
                "flooded the broker: more than {} costly messages a second, {} seconds in a row",
                self.per_window, self.windows_to_kill
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_logs_the_first_lines_of_each_second_and_summarises_the_rest() {
        let start = Instant::now();
        let mut budget = LogBudget::new(3);
        let verdicts: Vec<bool> = (0..10).map(|_| budget.line(start).log).collect();
        assert_eq!(
            verdicts,
            [true, true, true, false, false, false, false, false, false, false]
        );
        // Nothing to summarise while the window lasts.
        assert_eq!(budget.take_summary(start + WINDOW / 2, false), None);
        // The next window opens with the summary of the last one and a fresh budget.
        let next = budget.line(start + WINDOW);
        assert_eq!(
            next,
            LineVerdict {
                log: true,
                suppressed_before: Some(7)
            }
        );
        assert_eq!(budget.line(start + WINDOW).suppressed_before, None);
    }

    #[test]
    fn a_summary_is_given_once_when_the_window_ends_or_the_worker_is_gone() {
        let start = Instant::now();
        let mut budget = LogBudget::new(1);
        for _ in 0..5 {
            budget.line(start);
        }
        assert_eq!(budget.take_summary(start + WINDOW * 3, false), Some(4));
        assert_eq!(budget.take_summary(start + WINDOW * 6, false), None);
        for _ in 0..3 {
            budget.line(start + WINDOW * 6);
        }
        assert_eq!(budget.take_summary(start + WINDOW * 6, true), Some(2));
        assert_eq!(budget.take_summary(start + WINDOW * 6, true), None);
    }

    #[test]
    fn a_worker_flooding_for_several_seconds_in_a_row_is_killed() {
        let start = Instant::now();
        let mut guard = FloodGuard::new(10, 3);
        let mut killed_at = None;
        'seconds: for second in 0..10u32 {
            for i in 0..50u32 {
                let now = start + WINDOW * second + Duration::from_millis(u64::from(i));
                if let Some(reason) = guard.message(now) {
                    assert!(reason.contains("more than 10"), "{reason}");
                    killed_at = Some((second, i));
                    break 'seconds;
                }
            }
        }
        // Seconds 0 and 1 flood; in second 2 the 11th message goes over the bound.
        assert_eq!(killed_at, Some((2, 10)));
    }

    #[test]
    fn bursts_with_quiet_seconds_between_them_are_not_a_flood() {
        let start = Instant::now();
        let mut guard = FloodGuard::new(10, 3);
        // A burst over the bound every other second, and a steady rate at the bound.
        for second in (0..20u32).step_by(2) {
            for i in 0..100u32 {
                let now = start + WINDOW * second + Duration::from_millis(u64::from(i));
                assert_eq!(guard.message(now), None, "second {second}");
            }
        }
        let later = start + WINDOW * 100;
        for second in 0..20u32 {
            for i in 0..10u32 {
                let now = later + WINDOW * second + Duration::from_millis(u64::from(i) * 50);
                assert_eq!(guard.message(now), None, "second {second}");
            }
        }
    }
}
