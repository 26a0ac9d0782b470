//! `lumen-encode`'s sandbox: it turns frames into bitstreams with CPU codecs, or a GPU driver opened before lock-down.
//! No network sockets at all (no `socket`, `bind`, `connect`, `accept`), its own network
//! namespace, no paths, no processes.

use lumen_ipc::msg::WorkerKind;
#[allow(unused_imports)]
use lumen_ipc::sandbox::seccomp::{allow, allow_if, rust_runtime};
use lumen_ipc::sandbox::Policy;

pub fn policy() -> Policy {
    #[allow(unused_mut)]
    let mut syscalls = rust_runtime();
    use libc::*;
    // Room for a GPU driver. libcuda/NVENC open their device nodes at cuInit, before lock-down, and
    // then talk to the kernel driver through ioctls on those fds; some driver paths JIT code.
    // What remains to be verified on NVIDIA hardware (no GPU here): that cuInit + NVENC session setup
    // before lock-down leave nothing that needs openat later (e.g. /dev/nvidia-uvm opened lazily), and
    // which ioctls and mmap flags the driver actually uses, so these two rules can be narrowed.
    syscalls.retain(|r| r.nr != SYS_ioctl && r.nr != SYS_mmap && r.nr != SYS_mprotect);
    syscalls.extend([
        allow(
            SYS_ioctl,
            "ioctl",
            "GPU driver requests on device fds opened before lock-down",
        ),
        allow(
            SYS_mmap,
            "mmap",
            "GPU driver mappings (may be executable: driver JIT)",
        ),
        allow(SYS_mprotect, "mprotect", "GPU driver mappings"),
        allow(
            SYS_sched_setaffinity,
            "sched_setaffinity",
            "encoder thread pinning",
        ),
    ]);
    Policy {
        kind: WorkerKind::Encode,
        own_network_namespace: true,
        deny_tcp_bind_connect: false,
        max_fds: 256,
        max_threads: 32,
        syscalls,
        soft_denied: Vec::new(),
    }
}
