//! The one lock-down every worker enters before it reads an untrusted byte, and its self-test.
//!
//! Order matters and is fixed here, in [`lockdown`]:
//! 1. rlimits (no core dumps, no file writes, few fds) and `no_new_privs`;
//! 2. new user, mount (empty read-only root), pid, ipc and — unless the profile keeps the host's
//!    network, as `lumen-net` must — network namespaces ([`namespaces`]); refused namespaces degrade
//!    to a reported [`Layer::Unavailable`], never to a failure;
//! 3. not dumpable (after the id maps are written: a non-dumpable process may not write its own);
//! 4. every capability dropped, bounding set included ([`process`]);
//! 5. Landlock: no filesystem access, for `lumen-net` no TCP bind/connect, and no signals or abstract
//!    sockets beyond the sandbox ([`landlock_layer`]);
//! 6. the worker's seccomp allowlist, which kills on violation and logs the syscall ([`seccomp`]).
//!
//! Missing Landlock or seccomp fails closed unless the user opted out by the named flag.

pub mod landlock_layer;
pub mod namespaces;
pub mod process;
pub mod seccomp;
pub mod selftest;

use crate::msg::{Layer, SandboxReport, WorkerKind};

pub use seccomp::{ArgRule, SoftDenied, SyscallRule};

/// What one worker's sandbox looks like; each worker binary defines its own next to its code.
#[derive(Debug, Clone)]
pub struct Policy {
    pub kind: WorkerKind,
    /// True for every worker but `lumen-net`, which serves the LAN from the host's network.
    pub own_network_namespace: bool,
    /// `lumen-net`: refuse TCP bind/connect through Landlock (it only uses sockets it was handed).
    pub deny_tcp_bind_connect: bool,
    /// Highest number of fds the worker may hold (RLIMIT_NOFILE).
    pub max_fds: u64,
    /// Threads the worker may run besides its main thread (RLIMIT_NPROC inside its user namespace).
    pub max_threads: u64,
    /// The syscalls the worker may make, beyond none at all.
    pub syscalls: Vec<SyscallRule>,
    /// Syscalls that fail with an errno instead of killing: for libraries that probe files
    /// (`/proc/cpuinfo`, `/sys/devices/system/cpu`) and cope when they cannot. They still achieve
    /// nothing (the mount namespace is empty and Landlock grants no file access); the errno only
    /// spares the worker's life.
    pub soft_denied: Vec<SoftDenied>,
    /// RLIMIT_FSIZE: the largest file the worker may grow. 0 for workers that write no file; a
    /// worker whose libraries size memfds with `ftruncate` (PipeWire's buffer pools) needs room,
    /// as the limit applies to memfds too. It opens no path either way.
    pub max_file_bytes: u64,
}

/// The user's explicit opt-outs, passed by the broker as named command-line flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub allow_missing_seccomp: bool,
    pub allow_missing_landlock: bool,
}

/// Why a worker could not lock itself down.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{step} failed: {source}")]
    Syscall {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Landlock is not available ({0}); refusing to run without it (pass --insecure-allow-missing-landlock to the broker to run anyway)")]
    LandlockMissing(String),
    #[error("Landlock setup failed: {0}")]
    Landlock(String),
    #[error("seccomp is not available ({0}); refusing to run without it (pass --insecure-allow-missing-seccomp to the broker to run anyway)")]
    SeccompMissing(String),
    #[error("seccomp filter could not be built or applied: {0}")]
    Seccomp(String),
}

impl SandboxError {
    pub(crate) fn last_os(step: &'static str) -> SandboxError {
        SandboxError::Syscall {
            step,
            source: std::io::Error::last_os_error(),
        }
    }
}

/// Locks the calling process down according to `policy`. Call it once, early in `main`, while the
/// process is still single-threaded, after acquiring what the worker needs and before reading
/// anything untrusted. On success the process can no longer leave the sandbox.
pub fn lockdown(policy: &Policy, options: &Options) -> Result<SandboxReport, SandboxError> {
    lockdown_layers(policy, options, Layers::All)
}

/// Which layers to enter: production always enters all of them. The self-test also enters all but
/// seccomp, to show that the layers beneath it hold on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layers {
    All,
    AllButSeccomp,
}

pub(crate) fn lockdown_layers(
    policy: &Policy,
    options: &Options,
    layers: Layers,
) -> Result<SandboxReport, SandboxError> {
    let mut report = SandboxReport::unconfined();

    process::set_early_limits(policy)?;
    report.rlimits = Layer::On;
    process::set_no_new_privs()?;
    report.no_new_privs = Layer::On;

    namespaces::enter(policy, &mut report);
    if report.user_ns == Layer::On {
        // Inside our own user namespace the process count is ours alone, so a thread budget is
        // enforceable; without it RLIMIT_NPROC would count every process of the user.
        process::limit_threads(policy)?;
    } else {
        report.notes.push(
            "RLIMIT_NPROC not set without a user namespace; seccomp alone forbids new processes"
                .into(),
        );
    }

    process::set_not_dumpable()?;
    report.not_dumpable = Layer::On;

    process::drop_capabilities(&mut report)?;

    landlock_layer::restrict(policy, options, &mut report)?;

    if layers == Layers::All {
        seccomp::install(policy, options, &mut report)?;
    }

    Ok(report)
}
