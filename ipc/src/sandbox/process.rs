//! Per-process hardening that needs no namespace: resource limits, `no_new_privs`, not dumpable,
//! and dropping every capability (effective, permitted, inheritable, ambient and bounding).

use rustix::process::{setrlimit, Resource, Rlimit};

use super::{Policy, SandboxError};
use crate::msg::{Layer, SandboxReport};

fn limit(resource: Resource, value: u64, step: &'static str) -> Result<(), SandboxError> {
    setrlimit(
        resource,
        Rlimit {
            current: Some(value),
            maximum: Some(value),
        },
    )
    .map_err(|e| SandboxError::Syscall {
        step,
        source: e.into(),
    })
}

/// No core dumps (they would write worker memory, session keys included, to disk), no file growth
/// beyond the policy's (none for a worker that sizes no memfd), and a bounded number of fds.
pub fn set_early_limits(policy: &Policy) -> Result<(), SandboxError> {
    limit(Resource::Core, 0, "setrlimit(RLIMIT_CORE)")?;
    limit(
        Resource::Fsize,
        policy.max_file_bytes,
        "setrlimit(RLIMIT_FSIZE)",
    )?;
    limit(Resource::Nofile, policy.max_fds, "setrlimit(RLIMIT_NOFILE)")?;
    Ok(())
}

/// Caps the worker's threads: RLIMIT_NPROC counts the processes of our uid in our own user
/// namespace, which are this process and its threads.
pub fn limit_threads(policy: &Policy) -> Result<(), SandboxError> {
    limit(
        Resource::Nproc,
        1 + policy.max_threads,
        "setrlimit(RLIMIT_NPROC)",
    )
}

pub fn set_no_new_privs() -> Result<(), SandboxError> {
    rustix::thread::set_no_new_privs(true).map_err(|e| SandboxError::Syscall {
        step: "prctl(PR_SET_NO_NEW_PRIVS)",
        source: e.into(),
    })
}

/// Not dumpable: no core file, no ptrace by same-uid processes, `/proc/PID` owned by root.
pub fn set_not_dumpable() -> Result<(), SandboxError> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable).map_err(
        |e| SandboxError::Syscall {
            step: "prctl(PR_SET_DUMPABLE)",
            source: e.into(),
        },
    )
}

/// Drops every capability. Inside our user namespace the process holds a full set until now (it
/// needed them to mount); the bounding set can only be emptied while CAP_SETPCAP is still held, so it
/// goes first.
pub fn drop_capabilities(report: &mut SandboxReport) -> Result<(), SandboxError> {
    let mut bounding_failed = None;
    for cap in 0..64u32 {
        // SAFETY: prctl(PR_CAPBSET_READ/DROP) takes integers only and touches no memory of ours.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if present < 0 {
            // EINVAL: past the kernel's last capability.
            break;
        }
        if present == 1 {
            // SAFETY: as above.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if rc != 0 && bounding_failed.is_none() {
                bounding_failed = Some((cap, std::io::Error::last_os_error()));
            }
        }
    }
    // SAFETY: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL) takes integers only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(SandboxError::last_os("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
    }
    let empty = rustix::thread::CapabilitySet::empty();
    rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: empty,
            permitted: empty,
            inheritable: empty,
        },
    )
    .map_err(|e| SandboxError::Syscall {
        step: "capset",
        source: e.into(),
    })?;
    report.capabilities_dropped = Layer::On;
    if let Some((cap, err)) = bounding_failed {
        // Without a user namespace an unprivileged process cannot shrink its bounding set; with
        // no_new_privs and empty permitted/effective sets it can never regain a capability anyway.
        report.notes.push(format!(
            "capability bounding set not emptied (dropping cap {cap}: {err}); effective, permitted, inheritable and ambient sets are empty"
        ));
    }
    Ok(())
}
