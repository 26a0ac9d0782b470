//! `lumen-input`'s sandbox: it injects validated input through the EIS fd (and a uinput fd) the broker hands it.
//! No network sockets at all (no `socket`, `bind`, `connect`, `accept`), its own network
//! namespace, no paths, no processes.

use lumen_ipc::msg::WorkerKind;
#[allow(unused_imports)]
use lumen_ipc::sandbox::seccomp::{allow, allow_if, rust_runtime};
use lumen_ipc::sandbox::Policy;

pub fn policy() -> Policy {
    #[allow(unused_mut)]
    let mut syscalls = rust_runtime();

    Policy {
        kind: WorkerKind::Input,
        own_network_namespace: true,
        deny_tcp_bind_connect: false,
        max_fds: 256,
        max_threads: 4,
        syscalls,
        soft_denied: Vec::new(),
        max_file_bytes: 0,
    }
}
