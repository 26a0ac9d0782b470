//! The start-up every worker binary shares: find the control channel at [`CHANNEL_FD`], lock down,
//! report `Ready`; or, with `--sandbox-selftest`, run the sandbox self-test instead.
//!
//! The broker starts workers as `lumen-<kind> --worker [opt-out flags]` (see `broker/src/spawn.rs`).

use std::os::fd::{FromRawFd, OwnedFd};

use crate::channel::{Channel, ChannelError};
use crate::msg::{
    BrokerMsg, SandboxReport, WorkerMsg, ALLOW_MISSING_LANDLOCK_FLAG, ALLOW_MISSING_SECCOMP_FLAG,
    CHANNEL_FD, SELFTEST_FLAG, WORKER_FLAG,
};
use crate::sandbox::{self, selftest, Options, Policy, SandboxError};

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(
        "usage: {0} --worker (started by lumen-broker) | --sandbox-selftest [--state-dir DIR]"
    )]
    Usage(&'static str),
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
    #[error("no control channel at fd {CHANNEL_FD}: {0} (workers are started by lumen-broker)")]
    NoChannel(String),
    #[error("control channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("preparing before lock-down: {0}")]
    Prepare(String),
}

/// A worker that is locked down and has told the broker so.
pub struct Started {
    pub channel: Channel,
    pub report: SandboxReport,
}

/// What the command line asks for.
enum Mode {
    Worker(Options),
    SelfTest,
    Attempt,
}

fn parse_mode(args: &[String], binary: &'static str) -> Result<Mode, WorkerError> {
    match args.first().map(String::as_str) {
        Some(SELFTEST_FLAG) => Ok(Mode::SelfTest),
        Some(selftest::ATTEMPT_FLAG) => Ok(Mode::Attempt),
        Some(WORKER_FLAG) => {
            let mut options = Options::default();
            for arg in &args[1..] {
                match arg.as_str() {
                    ALLOW_MISSING_SECCOMP_FLAG => options.allow_missing_seccomp = true,
                    ALLOW_MISSING_LANDLOCK_FLAG => options.allow_missing_landlock = true,
                    other => return Err(WorkerError::UnknownArgument(other.to_string())),
                }
            }
            Ok(Mode::Worker(options))
        }
        _ => Err(WorkerError::Usage(binary)),
    }
}

/// Takes over the channel the broker placed at [`CHANNEL_FD`].
fn take_channel() -> Result<Channel, WorkerError> {
    // Check the fd is open before claiming it, so a worker started by hand gets a clear error.
    // SAFETY: fcntl(F_GETFD) only queries the fd table.
    if unsafe { libc::fcntl(CHANNEL_FD, libc::F_GETFD) } < 0 {
        return Err(WorkerError::NoChannel(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: the broker dup2'd the channel to CHANNEL_FD before exec and nothing else in this
    // process owns that fd; it is claimed exactly once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    Channel::from_fd(fd).map_err(|e| WorkerError::NoChannel(e.to_string()))
}

/// Starts a worker: runs the self-test and exits if asked to; otherwise takes the channel, locks down
/// and sends `Ready`. Call it first thing in `main`, while the process is single-threaded.
pub fn start(policy: &Policy) -> Result<Started, WorkerError> {
    start_prepared(policy, || Ok(())).map(|(started, ())| started)
}

/// Like [`start`], but runs `prepare` before lock-down, while files can still be opened: the place
/// to load codec and PipeWire plugins, read driver files, open a GPU. `prepare` must not read
/// anything untrusted, and should leave no thread running (lock-down applies to every thread, but
/// rlimits and namespaces are easiest to reason about single-threaded).
pub fn start_prepared<P>(
    policy: &Policy,
    prepare: impl FnOnce() -> Result<P, String>,
) -> Result<(Started, P), WorkerError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let binary = policy.kind.binary_name();
    match parse_mode(&args, binary)? {
        Mode::SelfTest => std::process::exit(selftest::run(policy, &args[1..])),
        Mode::Attempt => selftest::run_attempt(policy, &args[1..]),
        Mode::Worker(options) => {
            let channel = take_channel()?;
            let prepared = prepare().map_err(WorkerError::Prepare)?;
            let report = sandbox::lockdown(policy, &options)?;
            for note in &report.notes {
                eprintln!("{binary}: sandbox: {note}");
            }
            channel.send(
                &WorkerMsg::Ready {
                    kind: policy.kind,
                    sandbox: report.clone(),
                },
                &[],
            )?;
            Ok((Started { channel, report }, prepared))
        }
    }
}

/// What a worker's message handler decided.
pub type HandlerResult = Result<(), String>;

/// Serves the broker's control channel until `Shutdown` or until the broker goes away: answers
/// `Ping`, and hands every other message (with its fds) to `handle`. A message the worker cannot take
/// is reported to the broker as `WorkerMsg::Error` and ends the worker with status 2 (the broker then
/// starts a fresh one). Returns the process exit status.
pub fn serve(
    mut channel: Channel,
    binary: &'static str,
    mut handle: impl FnMut(BrokerMsg, Vec<OwnedFd>) -> HandlerResult,
) -> i32 {
    loop {
        let received = match channel.recv::<BrokerMsg>() {
            Ok(received) => received,
            // The broker is gone (its parent-death signal would kill us anyway): leave quietly.
            Err(ChannelError::Closed) => return 0,
            Err(e) => {
                eprintln!("{binary}: refusing a message from the broker: {e}");
                let _ = channel.send(
                    &WorkerMsg::Error {
                        message: e.to_string(),
                    },
                    &[],
                );
                return 2;
            }
        };
        let result = match received.msg {
            BrokerMsg::Ping { seq } if received.fds.is_empty() => channel
                .send(&WorkerMsg::Pong { seq }, &[])
                .map_err(|e| e.to_string()),
            BrokerMsg::Shutdown if received.fds.is_empty() => return 0,
            BrokerMsg::Ping { .. } | BrokerMsg::Shutdown => Err(format!(
                "{} unexpected fds with a control message",
                received.fds.len()
            )),
            other => handle(other, received.fds),
        };
        if let Err(message) = result {
            eprintln!("{binary}: {message}");
            let _ = channel.send(&WorkerMsg::Error { message }, &[]);
            return 2;
        }
    }
}

/// A worker's whole `main`: [`start`], then [`serve`] with `handle`; returns the exit status.
pub fn run(
    policy: &Policy,
    handle: impl FnMut(BrokerMsg, Vec<OwnedFd>) -> HandlerResult,
) -> std::process::ExitCode {
    run_prepared(policy, || Ok(()), |(), _reports| handle)
}

/// A worker's whole `main` with a step before lock-down: [`start_prepared`] runs `prepare`, then
/// `make_handler` turns what it prepared and a second handle on the control channel (for session
/// reports sent from other threads: `SessionStarted`, `SessionStats`, ...) into the message
/// handler, then [`serve`]. Returns the exit status.
pub fn run_prepared<P, H>(
    policy: &Policy,
    prepare: impl FnOnce() -> Result<P, String>,
    make_handler: impl FnOnce(P, Channel) -> H,
) -> std::process::ExitCode
where
    H: FnMut(BrokerMsg, Vec<OwnedFd>) -> HandlerResult,
{
    let binary = policy.kind.binary_name();
    let status = match start_prepared(policy, prepare).and_then(|(started, prepared)| {
        let reports = started.channel.try_clone()?;
        Ok((started, prepared, reports))
    }) {
        Ok((started, prepared, reports)) => {
            serve(started.channel, binary, make_handler(prepared, reports))
        }
        Err(e) => {
            eprintln!("{binary}: {e}");
            1
        }
    };
    std::process::ExitCode::from(u8::try_from(status).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn worker_mode_reads_opt_out_flags() {
        let Mode::Worker(options) = parse_mode(
            &args(&[
                "--worker",
                ALLOW_MISSING_SECCOMP_FLAG,
                ALLOW_MISSING_LANDLOCK_FLAG,
            ]),
            "lumen-net",
        )
        .unwrap() else {
            panic!("not worker mode");
        };
        assert!(options.allow_missing_seccomp && options.allow_missing_landlock);
        let Mode::Worker(options) = parse_mode(&args(&["--worker"]), "lumen-net").unwrap() else {
            panic!("not worker mode");
        };
        assert_eq!(options, Options::default());
    }

    #[test]
    fn unknown_arguments_and_no_mode_are_refused() {
        assert!(matches!(
            parse_mode(&args(&["--worker", "--yolo"]), "lumen-net"),
            Err(WorkerError::UnknownArgument(_))
        ));
        assert!(matches!(
            parse_mode(&args(&[]), "lumen-net"),
            Err(WorkerError::Usage(_))
        ));
        assert!(matches!(
            parse_mode(&args(&["serve"]), "lumen-net"),
            Err(WorkerError::Usage(_))
        ));
    }
}
