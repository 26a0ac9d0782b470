//! The one place where the broker's children are reaped.
//!
//! The broker is not PID 1's business: it reaps every child it has, each exactly once, and hands
//! each exit status to whoever started that child. [`reap_all`] calls `waitpid(-1, WNOHANG)` until
//! nothing is left to reap; it is run on every `SIGCHLD` and whenever a worker's pidfd turns
//! readable, so an exit is seen even if one of the two wake-ups is lost or merged with another.
//!
//! A child is registered (under the same lock that [`reap_all`] takes) between its fork and the
//! first moment it could be reaped, so no exit status is ever lost and no pid is reused while the
//! broker still refers to it. A child nobody registered is reaped too, and logged.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions, WaitStatus};
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Exited(i32),
    Signaled(i32),
    /// A wait status that is neither (not expected without `WUNTRACED`), raw.
    Other(i32),
}

impl ExitStatus {
    fn from_wait(status: WaitStatus) -> ExitStatus {
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => ExitStatus::Exited(code),
            (None, Some(signal)) => ExitStatus::Signaled(signal),
            // Without WUNTRACED/WCONTINUED waitpid reports only ends; keep the raw value visible.
            (None, None) => ExitStatus::Other(status.as_raw()),
        }
    }
}

/// The conventional name of a signal number (Linux x86-64/arm64 numbering).
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return None,
    })
}

/// What a signal usually means for a lumen worker.
fn signal_meaning(signal: i32) -> Option<&'static str> {
    match signal {
        libc::SIGSYS => Some("seccomp violation"),
        libc::SIGABRT => Some("abort, e.g. a panic"),
        libc::SIGSEGV => Some("memory fault"),
        libc::SIGXFSZ | libc::SIGXCPU => Some("rlimit exceeded"),
        _ => None,
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(code) => {
                write!(f, "exit {code}")?;
                // A shell reports death by signal N as 128 + N.
                let meaning = match code {
                    101 => Some("panic".to_owned()),
                    129..=159 => {
                        let signal = code - 128;
                        match (signal_name(signal), signal_meaning(signal)) {
                            (_, Some(meaning)) => Some(meaning.to_owned()),
                            (Some(name), None) => Some(format!("128 + {name}")),
                            (None, None) => None,
                        }
                    }
                    _ => None,
                };
                match meaning {
                    Some(meaning) => write!(f, " ({meaning})"),
                    None => Ok(()),
                }
            }
            ExitStatus::Other(raw) => write!(f, "wait status {raw:#x}"),
            ExitStatus::Signaled(signal) => {
                write!(f, "killed by signal {signal}")?;
                match (signal_name(signal), signal_meaning(signal)) {
                    (Some(name), Some(meaning)) => write!(f, " ({name}: {meaning})"),
                    (Some(name), None) => write!(f, " ({name})"),
                    (None, _) => Ok(()),
                }
            }
        }
    }
}

/// Resolves with the exit status of one registered child; may be asked any number of times.
#[derive(Debug)]
pub(crate) struct ExitWatch {
    receiver: oneshot::Receiver<ExitStatus>,
    /// Set once the answer is known: `Some(None)` if the registration was dropped unanswered.
    known: Option<Option<ExitStatus>>,
}

impl ExitWatch {
    /// Waits for the child's end. `None` only if the reaper dropped the registration without a
    /// status, which it never does.
    pub async fn wait(&mut self) -> Option<ExitStatus> {
        if let Some(known) = self.known {
            return known;
        }
        let status = (&mut self.receiver).await.ok();
        self.known = Some(status);
        status
    }

    /// The status if the child has been reaped already.
    pub fn try_get(&mut self) -> Option<ExitStatus> {
        if let Some(known) = self.known {
            return known;
        }
        match self.receiver.try_recv() {
            Ok(status) => {
                self.known = Some(Some(status));
                Some(status)
            }
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => {
                self.known = Some(None);
                None
            }
        }
    }
}

/// The children waiting to be reaped, by pid.
type Waiting = BTreeMap<i32, oneshot::Sender<ExitStatus>>;

static TABLE: Mutex<Waiting> = Mutex::new(BTreeMap::new());

/// The process-wide table, locked: hold it from fork until the child is registered.
pub(crate) fn lock() -> TableGuard {
    TableGuard(TABLE.lock().unwrap_or_else(PoisonError::into_inner))
}

/// The locked table of children waiting to be reaped.
pub(crate) struct TableGuard(MutexGuard<'static, Waiting>);

impl TableGuard {
    /// Registers `pid`; its exit status goes to the returned watch.
    pub fn register(&mut self, pid: Pid) -> ExitWatch {
        let (sender, receiver) = oneshot::channel();
        self.0.insert(pid.as_raw_nonzero().get(), sender);
        ExitWatch {
            receiver,
            known: None,
        }
    }
}

/// Reaps every child that has ended, delivering each status to its watch.
pub(crate) fn reap_all() {
    let mut guard = lock();
    loop {
        // `wait` is wait4(-1): any child. (rustix's `waitpid(None)` is wait4(0), only children in
        // the broker's process group, and workers have their own.)
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                let status = ExitStatus::from_wait(status);
                let raw = pid.as_raw_nonzero().get();
                match guard.0.remove(&raw) {
                    // The watcher may be gone (its supervisor stopped); the child is reaped anyway.
                    Some(sender) => {
                        let _ = sender.send(status);
                    }
                    None => tracing::info!("reaped pid {raw}, not a worker: {status}"),
                }
            }
            Ok(None) => return,
            Err(Errno::INTR) => continue,
            Err(Errno::CHILD) => return,
            Err(errno) => {
                tracing::warn!("waitpid failed: {errno}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_described_in_words() {
        let cases = [
            (ExitStatus::Exited(0), "exit 0"),
            (ExitStatus::Exited(1), "exit 1"),
            (ExitStatus::Exited(101), "exit 101 (panic)"),
            (ExitStatus::Exited(159), "exit 159 (seccomp violation)"),
            (ExitStatus::Exited(137), "exit 137 (128 + SIGKILL)"),
            (ExitStatus::Signaled(9), "killed by signal 9 (SIGKILL)"),
            (
                ExitStatus::Signaled(31),
                "killed by signal 31 (SIGSYS: seccomp violation)",
            ),
            (
                ExitStatus::Signaled(6),
                "killed by signal 6 (SIGABRT: abort, e.g. a panic)",
            ),
            (ExitStatus::Signaled(40), "killed by signal 40"),
        ];
        for (status, words) in cases {
            assert_eq!(status.to_string(), words);
        }
    }
}
