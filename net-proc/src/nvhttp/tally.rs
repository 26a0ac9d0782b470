//! What the nvhttp listeners answered and turned away since lumen-net started (reported with
//! each stream's statistics as `NetStats.http`), and a budget that keeps a flood of bad
//! connections from writing one log line each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lumen_ipc::net_msg::HttpCounters;

/// How a connection ended, as far as the counters care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// Served until the client closed (or kept alive until it did).
    Served,
    /// A malformed or oversized request head.
    Malformed,
    /// A request head, the TLS handshake or the connection's lifetime ran out of time.
    TimedOut,
    /// The TLS handshake failed.
    TlsFailed,
    /// Anything else (a reset, an I/O error).
    Other,
}

/// Connection-error log lines written per [`LOG_WINDOW`]; the rest are only counted.
const LOG_LINES_PER_WINDOW: u64 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct HttpTally {
    requests: AtomicU64,
    refused: AtomicU64,
    unauthorized: AtomicU64,
    malformed: AtomicU64,
    timeouts: AtomicU64,
    tls_failures: AtomicU64,
    waited_for_slot: AtomicU64,
    log: Mutex<LogBudget>,
}

/// Log lines left in the current window, and how many were held back in it.
#[derive(Debug, Default)]
struct LogBudget {
    window_start: Option<Instant>,
    written: u64,
    suppressed: u64,
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl HttpTally {
    /// A request was answered with this status (`status_code` of the XML, or the HTTP status).
    pub fn answered(&self, status: u32) {
        add(&self.requests);
        if status != 200 {
            add(&self.refused);
        }
        if status == 401 {
            add(&self.unauthorized);
        }
    }

    /// A connection had to wait for a free slot before it was accepted.
    pub fn waited_for_slot(&self) {
        add(&self.waited_for_slot);
    }

    /// A connection ended.
    pub fn ended(&self, end: ConnectionEnd) {
        match end {
            ConnectionEnd::Malformed => add(&self.malformed),
            ConnectionEnd::TimedOut => add(&self.timeouts),
            ConnectionEnd::TlsFailed => add(&self.tls_failures),
            ConnectionEnd::Served | ConnectionEnd::Other => {}
        }
    }

    pub fn counters(&self) -> HttpCounters {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HttpCounters {
            requests: read(&self.requests),
            refused: read(&self.refused),
            unauthorized: read(&self.unauthorized),
            malformed: read(&self.malformed),
            timeouts: read(&self.timeouts),
            tls_failures: read(&self.tls_failures),
            waited_for_slot: read(&self.waited_for_slot),
        }
    }

    /// Whether a connection error may be logged now: at most [`LOG_LINES_PER_WINDOW`] lines per
    /// [`LOG_WINDOW`], so a flood of bad connections cannot grow the log without bound. The
    /// first line of a window says how many the previous one held back (the counters have them
    /// all).
    pub fn log_line(&self, at: Instant) -> Option<LogPermit> {
        let mut budget = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = budget
            .window_start
            .is_none_or(|start| at.saturating_duration_since(start) >= LOG_WINDOW);
        let mut held_back = 0;
        if fresh {
            held_back = budget.suppressed;
            *budget = LogBudget {
                window_start: Some(at),
                written: 0,
                suppressed: 0,
            };
        }
        if budget.written >= LOG_LINES_PER_WINDOW {
            budget.suppressed += 1;
            return None;
        }
        budget.written += 1;
        Some(LogPermit { held_back })
    }
}

/// Leave to write one log line; `held_back` lines were suppressed in the window before.
#[derive(Debug, PartialEq, Eq)]
pub struct LogPermit {
    pub held_back: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_ends_land_in_their_counters() {
        let tally = HttpTally::default();
        for status in [200, 200, 400, 401, 404, 503] {
            tally.answered(status);
        }
        tally.waited_for_slot();
        for end in [
            ConnectionEnd::Served,
            ConnectionEnd::Malformed,
            ConnectionEnd::TimedOut,
            ConnectionEnd::TimedOut,
            ConnectionEnd::TlsFailed,
            ConnectionEnd::Other,
        ] {
            tally.ended(end);
        }
        assert_eq!(
            tally.counters(),
            HttpCounters {
                requests: 6,
                refused: 4,
                unauthorized: 1,
                malformed: 1,
                timeouts: 2,
                tls_failures: 1,
                waited_for_slot: 1,
            }
        );
    }

    #[test]
    fn log_lines_are_limited_per_window_and_the_held_back_are_reported() {
        let tally = HttpTally::default();
        let start = Instant::now();
        let permits: Vec<_> = (0..25).map(|_| tally.log_line(start)).collect();
        assert_eq!(
            permits.iter().flatten().count(),
            LOG_LINES_PER_WINDOW as usize
        );
        assert!(permits[LOG_LINES_PER_WINDOW as usize].is_none());
        // Still the same window just before it ends.
        assert!(tally.log_line(start + LOG_WINDOW / 2).is_none());
        // The next window starts with a line that says what was held back.
        assert_eq!(
            tally.log_line(start + LOG_WINDOW),
            Some(LogPermit { held_back: 16 })
        );
        assert_eq!(
            tally.log_line(start + LOG_WINDOW),
            Some(LogPermit { held_back: 0 })
        );
    }
}
