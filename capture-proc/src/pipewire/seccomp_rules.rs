//! The syscalls the PipeWire client makes after lock-down, beyond the Rust runtime's. Found by
//! running a real capture under lumen-capture's allowlist (`captures_under_the_capture_seccomp_
//! allowlist` in `tests.rs`, which names every trapped call); none opens a path or a socket.

use lumen_ipc::sandbox::seccomp::{allow, allow_if, ArgRule, SyscallRule};

/// Extra allowlist entries for PipeWire capture; `capture-proc/src/seccomp.rs` adds them.
pub fn seccomp_rules() -> Vec<SyscallRule> {
    use libc::*;
    vec![
        allow_if(
            SYS_memfd_create,
            "memfd_create",
            ArgRule::BitsSet {
                arg: 1,
                bits: MFD_CLOEXEC as u64,
            },
            "PipeWire's client memory pool (node activation records) is a sealed memfd it shares \
             with the server; anonymous memory, no path",
        ),
        allow(
            SYS_ftruncate,
            "ftruncate",
            "sizing PipeWire's pool memfds (an fd, no path; sealed memfds refuse to shrink)",
        ),
        allow_if(
            SYS_fcntl,
            "fcntl",
            ArgRule::OneOf {
                arg: 1,
                values: &[F_ADD_SEALS as u64],
            },
            "sealing PipeWire's pool memfds before handing them to the server",
        ),
        allow(
            SYS_timerfd_create,
            "timerfd_create",
            "PipeWire loop timers (the first-buffer watchdog); an anonymous fd, no path",
        ),
        allow(
            SYS_timerfd_settime,
            "timerfd_settime",
            "arming PipeWire loop timers",
        ),
    ]
}
