//! Starting a worker process: fork, set up the child's fds, credentials and parent-death signal,
//! and exec at once.
//!
//! The child runs no worker code before exec (it would inherit the broker's memory and secrets):
//! between fork and exec it makes only raw system calls, with no allocation and no lock
//! ([`child_setup`]). After exec the worker finds
//! - fd 0: `/dev/null`; fds 1 and 2: pipes whose lines the broker logs under the worker's name;
//! - fd 3 ([`CHANNEL_FD`]): its end of a `SOCK_SEQPACKET` control channel;
//! - no other fd: everything from fd 4 up is marked close-on-exec by `close_range` just before
//!   exec (marked rather than closed, so std's exec-error pipe still reports a failed exec);
//! - only the environment variables in [`WORKER_ENV_ALLOWLIST`];
//! - when the broker runs as root: no supplementary groups and the configured unprivileged
//!   uid/gid (real, effective and saved);
//! - `PR_SET_PDEATHSIG(SIGKILL)`, set after the uid switch (which clears it), and a check that
//!   the broker had not already died before it was set.
//!
//! The parent-death signal fires when the *thread* that forked the child exits, so every spawn
//! runs on one dedicated thread that lives as long as the process ([`spawner`]). Right after the
//! fork that thread opens a pidfd for the child and registers it with the reaper, all under the
//! reaper's lock, so the child cannot be reaped (and its pid reused) before both are in place.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;

use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::msg::{
    WorkerKind, ALLOW_MISSING_LANDLOCK_FLAG, ALLOW_MISSING_SECCOMP_FLAG, CHANNEL_FD,
    WORKER_ENV_ALLOWLIST, WORKER_FLAG,
};
use rustix::process::{Gid, Pid, PidfdFlags, Signal, Uid};

use crate::supervisor::reaper::{self, ExitWatch};

/// What to exec for one worker, and as whom.
#[derive(Clone, Debug)]
pub(crate) struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment of the child (see [`allowlisted_env`]).
    pub env: Vec<(OsString, OsString)>,
    /// The uid and gid the child switches to before exec; `None` keeps the broker's.
    pub credentials: Option<(u32, u32)>,
}

impl WorkerCommand {
    /// The production command for `kind`: `<worker_dir>/lumen-<kind> --worker [opt-out flags]`,
    /// with the broker's allowlisted environment.
    pub fn worker(
        worker_dir: &Path,
        kind: WorkerKind,
        allow_missing_seccomp: bool,
        allow_missing_landlock: bool,
        credentials: Option<(u32, u32)>,
    ) -> WorkerCommand {
        let mut args = vec![OsString::from(WORKER_FLAG)];
        if allow_missing_seccomp {
            args.push(ALLOW_MISSING_SECCOMP_FLAG.into());
        }
        if allow_missing_landlock {
            args.push(ALLOW_MISSING_LANDLOCK_FLAG.into());
        }
        WorkerCommand {
            program: worker_dir.join(kind.binary_name()),
            args,
            env: allowlisted_env(std::env::vars_os()),
            credentials,
        }
    }
}

/// The variables of `vars` whose names are in [`WORKER_ENV_ALLOWLIST`].
pub(crate) fn allowlisted_env(
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    vars.filter(|(name, _)| WORKER_ENV_ALLOWLIST.iter().any(|allowed| name == allowed))
        .collect()
}

/// A started worker: everything the broker holds of it.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: Pid,
    /// For race-free signals, and readable once the process has exited.
    pub pidfd: OwnedFd,
    /// The broker's end of the control channel (blocking; the caller may switch it).
    pub channel: Channel,
    /// Read ends of the child's stdout and stderr pipes.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Resolves with the exit status once the reaper has reaped the child.
    pub exit: ExitWatch,
}

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("creating the control channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("starting {program}: {source}")]
    Start { program: String, source: io::Error },
    #[error("started {program} but it gave no {what}")]
    MissingPipe { program: String, what: &'static str },
    #[error("pidfd_open for the new worker (pid {pid}) failed: {errno}; the child was killed")]
    Pidfd { pid: i32, errno: rustix::io::Errno },
    #[error("the spawner thread is gone: {0}")]
    Spawner(String),
}

/// Starts `cmd` (on the spawner thread, see the module doc).
pub(crate) async fn spawn(cmd: WorkerCommand) -> Result<Spawned, SpawnError> {
    let (reply, result) = tokio::sync::oneshot::channel();
    spawner()?
        .send(SpawnJob { cmd, reply })
        .map_err(|_| SpawnError::Spawner("it stopped taking requests".into()))?;
    result
        .await
        .map_err(|_| SpawnError::Spawner("it dropped a request".into()))?
}

struct SpawnJob {
    cmd: WorkerCommand,
    reply: tokio::sync::oneshot::Sender<Result<Spawned, SpawnError>>,
}

/// The queue of the one thread that forks workers; it is started on first use and never exits
/// (its exit would fire every worker's parent-death signal).
fn spawner() -> Result<&'static mpsc::Sender<SpawnJob>, SpawnError> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnJob>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (sender, jobs) = mpsc::channel::<SpawnJob>();
            std::thread::Builder::new()
                .name("lumen-spawner".into())
                .spawn(move || {
                    while let Ok(job) = jobs.recv() {
                        // The requester may have given up; nothing to do then.
                        let _ = job.reply.send(spawn_here(&job.cmd));
                    }
                })
                .map(|_| sender)
                .map_err(|e| format!("cannot start the spawner thread: {e}"))
        })
        .as_ref()
        .map_err(|e| SpawnError::Spawner(e.clone()))
}

/// Forks and execs `cmd` on the calling thread, which must outlive the child (see module doc).
fn spawn_here(cmd: &WorkerCommand) -> Result<Spawned, SpawnError> {
    reserve_low_fds();
    let (broker_end, worker_end) = Channel::pair()?;
    let program = cmd.program.display().to_string();

    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C on the broker's terminal reaches the broker only, which
        // then stops the workers in order.
        .process_group(0);

    // Everything the child needs is computed here, before the fork.
    let channel_fd = worker_end.as_raw_fd();
    let broker_pid = rustix::process::getpid();
    let credentials = cmd
        .credentials
        .map(|(uid, gid)| (Uid::from_raw(uid), Gid::from_raw(gid)));
    // SAFETY: `child_setup` runs in the forked child before exec and only makes raw system calls
    // (rustix's and libc's thin wrappers) on plain integers it captured by value: it allocates
    // nothing, takes no lock and touches no state shared with other threads of the parent.
    unsafe {
        command.pre_exec(move || child_setup(channel_fd, broker_pid, credentials));
    }

    let mut table = reaper::lock();
    let mut child = command.spawn().map_err(|source| SpawnError::Start {
        program: program.clone(),
        source,
    })?;
    let raw_pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    // A successful spawn always gives a positive pid.
    let pid = Pid::from_raw(raw_pid).ok_or(SpawnError::Pidfd {
        pid: raw_pid,
        errno: rustix::io::Errno::SRCH,
    })?;
    // From here on every exit of this pid is delivered to `exit`, whatever happens below.
    let exit = table.register(pid);
    let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(pidfd) => pidfd,
        Err(errno) => {
            // Not reaped yet (we hold the reaper's lock), so the pid is still this child.
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            return Err(SpawnError::Pidfd {
                pid: pid.as_raw_nonzero().get(),
                errno,
            });
        }
    };
    drop(table);
    // The worker's end now lives in the child only.
    drop(worker_end);

    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    // `child` is dropped without waiting: the reaper owns the exit status.
    let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
        let _ = rustix::process::pidfd_send_signal(&pidfd, Signal::KILL);
        return Err(SpawnError::MissingPipe {
            program,
            what: "stdout/stderr pipe",
        });
    };
    Ok(Spawned {
        pid,
        pidfd,
        channel: broker_end,
        stdout,
        stderr,
        exit,
    })
}

/// Keeps fds 0 to [`CHANNEL_FD`] occupied in the broker (with `/dev/null`, close-on-exec, where
/// one is free), so that no fd std opens for a spawn (its exec-error pipe, the stdio pipes) can
/// sit at a number the child overwrites with `dup2` before exec.
fn reserve_low_fds() {
    loop {
        let Ok(fd) = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            return;
        };
        if fd.as_raw_fd() > CHANNEL_FD {
            return;
        }
        // Deliberately kept open for the life of the process: it only holds the number.
        let _ = fd.into_raw_fd();
    }
}

/// Runs in the forked child, between fork and exec: async-signal-safe system calls only.
fn child_setup(
    channel_fd: RawFd,
    broker_pid: Pid,
    credentials: Option<(Uid, Gid)>,
) -> io::Result<()> {
    // The control channel at fd 3, inherited across exec.
    if channel_fd == CHANNEL_FD {
        // SAFETY: fcntl(F_SETFD) on an fd number only changes that fd's flags.
        if unsafe { libc::fcntl(CHANNEL_FD, libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    } else {
        // SAFETY: dup2 on fd numbers; fd 3 was reserved by the parent (a /dev/null it keeps
        // only to hold the number), so replacing it here closes nothing the child needs. The
        // new fd 3 does not have FD_CLOEXEC.
        if unsafe { libc::dup2(channel_fd, CHANNEL_FD) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Every other fd (including the original channel fd) is closed by the exec.
    // The raw system call (Linux ≥ 5.11 for CLOSE_RANGE_CLOEXEC), so no particular C library
    // version is needed; on an older kernel this fails (ENOSYS/EINVAL) and the spawn with it.
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC takes integers and only sets the close-on-exec
    // flag on this process's fds from 4 up.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (CHANNEL_FD + 1).unsigned_abs(),
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    if let Some((uid, gid)) = credentials {
        // Groups first (needs CAP_SETGID), then gid, then uid (after which nothing can be
        // changed back). These are the raw per-thread system calls, and this child has one thread.
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    }
    // After the uid switch, which clears it.
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    // The broker may have died before the line above; then no signal will ever come.
    if rustix::process::getppid() != Some(broker_pid) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}
