//! Landlock: no filesystem access at all; for `lumen-net` no TCP bind or connect either (ABI ≥ 4);
//! and, for every worker, no signals to and no abstract unix sockets of processes outside the
//! sandbox (ABI ≥ 6), so a compromised worker cannot signal the broker.
//!
//! Every access right the kernel knows is "handled" and no rule grants any of it back.

use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};

use super::{Options, Policy, SandboxError};
use crate::msg::{Layer, SandboxReport};

/// The newest ABI this code knows what to ask of.
const TARGET_ABI: ABI = ABI::V7;

fn abi_number(abi: ABI) -> u8 {
    abi as u8
}

/// `LANDLOCK_CREATE_RULESET_VERSION`: ask `landlock_create_ruleset` for the ABI version.
const CREATE_RULESET_VERSION: libc::c_uint = 1;

/// The ABI the running kernel offers, or why there is none.
pub fn kernel_abi() -> Result<ABI, String> {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns a number; no memory is passed.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if version < 0 {
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no Landlock".into(),
            Some(libc::EOPNOTSUPP) => "Landlock is built in but not enabled at boot".into(),
            _ => format!("landlock_create_ruleset: {err}"),
        });
    }
    Ok(ABI::from(i32::try_from(version).unwrap_or(i32::MAX)))
}

/// Restricts the process; fills the Landlock fields of `report`.
pub fn restrict(
    policy: &Policy,
    options: &Options,
    report: &mut SandboxReport,
) -> Result<(), SandboxError> {
    let abi = match kernel_abi() {
        Ok(abi) if abi != ABI::Unsupported => abi,
        Ok(_) => {
            return missing(
                "the kernel reports no usable Landlock ABI".into(),
                options,
                report,
            )
        }
        Err(why) => return missing(why, options, report),
    };
    report.landlock_abi = abi_number(abi);
    let want_net = policy.deny_tcp_bind_connect;

    let landlock_err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(landlock_err)?;
    if want_net && abi >= ABI::V4 {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(TARGET_ABI))
            .map_err(landlock_err)?;
    }
    if abi >= ABI::V6 {
        ruleset = ruleset
            .scope(Scope::from_all(TARGET_ABI))
            .map_err(landlock_err)?;
    }
    let status = ruleset
        .create()
        .map_err(landlock_err)?
        .restrict_self()
        .map_err(landlock_err)?;

    if status.ruleset == RulesetStatus::NotEnforced {
        return missing("the ruleset was not enforced".into(), options, report);
    }
    report.landlock_fs = Layer::On;
    report.landlock_net = match (want_net, abi >= ABI::V4) {
        (false, _) => Layer::NotInProfile,
        (true, true) => Layer::On,
        (true, false) => {
            report.notes.push(format!(
                "Landlock ABI {} has no network rules (needs 4): TCP bind/connect is refused by seccomp only",
                abi_number(abi)
            ));
            Layer::Unavailable
        }
    };
    report.landlock_scope = if abi >= ABI::V6 {
        Layer::On
    } else {
        report.notes.push(format!(
            "Landlock ABI {} cannot scope signals (needs 6): signals to outside processes are refused by seccomp only",
            abi_number(abi)
        ));
        Layer::Unavailable
    };
    if status.ruleset == RulesetStatus::PartiallyEnforced {
        report.notes.push(format!(
            "Landlock ABI {} enforces only part of ABI {}'s filesystem rights",
            abi_number(abi),
            abi_number(TARGET_ABI)
        ));
    }
    Ok(())
}

fn missing(why: String, options: &Options, report: &mut SandboxReport) -> Result<(), SandboxError> {
    if !options.allow_missing_landlock {
        return Err(SandboxError::LandlockMissing(why));
    }
    report.landlock_fs = Layer::OptedOut;
    report.landlock_net = Layer::OptedOut;
    report.landlock_scope = Layer::OptedOut;
    report.notes.push(format!(
        "running WITHOUT Landlock by the user's choice: {why}"
    ));
    Ok(())
}
