//! `lumen-capture`'s sandbox: it reads frames from the PipeWire fd the broker hands it and writes them into frame slots.
//! No network sockets at all (no `socket`, `bind`, `connect`, `accept`), its own network
//! namespace, no paths, no processes.

use lumen_ipc::msg::WorkerKind;
#[allow(unused_imports)]
use lumen_ipc::sandbox::seccomp::{allow, allow_if, rust_runtime};
use lumen_ipc::sandbox::Policy;

pub fn policy() -> Policy {
    // The test pattern, test tone and stats threads need nothing beyond the runtime's rules:
    // clone (threads), clock_nanosleep (absolute deadlines), the vDSO clock (rustix reads the aux
    // vector for it in `session::prepare`, before lock-down), sendmsg/recvmsg (frame and report
    // channels), write (PCM doorbell), futex (joins). tests/sandboxed_session.rs runs a session in
    // the locked-down binary to prove it.
    #[allow(unused_mut)]
    let mut syscalls = rust_runtime();
    syscalls.extend(crate::pipewire::seccomp_rules());

    Policy {
        kind: WorkerKind::Capture,
        own_network_namespace: true,
        deny_tcp_bind_connect: false,
        max_fds: 256,
        max_threads: 8,
        syscalls,
        soft_denied: Vec::new(),
        // PipeWire's client sizes memfds for its buffer pools with ftruncate.
        max_file_bytes: 256 << 20,
    }
}
