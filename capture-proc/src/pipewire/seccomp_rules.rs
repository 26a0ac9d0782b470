//! The syscalls the PipeWire client makes after lock-down, beyond the Rust runtime's.

use lumen_ipc::sandbox::seccomp::{allow, SyscallRule};

/// Extra allowlist entries for PipeWire capture; `capture-proc/src/seccomp.rs` adds them.
pub fn seccomp_rules() -> Vec<SyscallRule> {
    use libc::*;
    vec![
        allow(
            SYS_timerfd_create,
            "timerfd_create",
            "PipeWire loop timers (stream timeouts); an anonymous fd, no path",
        ),
        allow(
            SYS_timerfd_settime,
            "timerfd_settime",
            "arming PipeWire loop timers",
        ),
    ]
}
