//! `lumen-input`'s sandbox: it injects validated input through the EIS fd (and the uinput fds)
//! the broker hands it. No network sockets at all (no `socket`, `bind`, `connect`, `accept`),
//! its own network namespace, no paths, no processes.
//!
//! Beyond the Rust runtime's rules it needs only the uinput ioctls, each by number (the EIS
//! socket uses sendmsg/recvmsg, the poll loop poll/eventfd, all in the runtime's list).

use lumen_ipc::msg::WorkerKind;
use lumen_ipc::sandbox::seccomp::{allow_if, rust_runtime, ArgRule};
use lumen_ipc::sandbox::Policy;

use crate::uinput::ALL_IOCTLS;

pub fn policy() -> Policy {
    let mut syscalls = rust_runtime();
    syscalls.push(allow_if(
        libc::SYS_ioctl,
        "ioctl",
        ArgRule::OneOf {
            arg: 1,
            values: &ALL_IOCTLS,
        },
        "uinput: build, create and destroy virtual pads, answer force-feedback uploads",
    ));

    Policy {
        kind: WorkerKind::Input,
        own_network_namespace: true,
        deny_tcp_bind_connect: false,
        max_fds: 256,
        // The control thread and the injection thread.
        max_threads: 4,
        syscalls,
        soft_denied: Vec::new(),
        max_file_bytes: 0,
    }
}
