//! `lumen-encode`'s sandbox: it turns frames into bitstreams with CPU codecs, or a GPU driver opened before lock-down.
//! No network sockets at all (no `socket`, `bind`, `connect`, `accept`), its own network
//! namespace, no paths, no processes.

use lumen_ipc::msg::WorkerKind;
#[allow(unused_imports)]
use lumen_ipc::sandbox::seccomp::{allow, allow_if, rust_runtime, SoftDenied};
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
            SYS_getpriority,
            "getpriority",
            "x265's thread pool reads the process priority for its workers",
        ),
        allow(
            SYS_setpriority,
            "setpriority",
            "x265 lowers its worker threads' priority (raising it needs a capability we lack)",
        ),
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
        soft_denied: soft_denied(),
        max_file_bytes: 0,
    }
}

/// Probes the codec libraries make after lock-down, when a session opens its encoder; each copes
/// with the failure. The files are out of reach anyway (empty mount namespace, Landlock).
fn soft_denied() -> Vec<SoftDenied> {
    use libc::*;
    vec![
        SoftDenied {
            nr: SYS_openat,
            name: "openat",
            errno: ENOENT,
            why: "x265 and glibc's get_nprocs/sysconf read /proc and /sys for CPU counts when an \
              encoder opens; they fall back to sched_getaffinity / one node",
        },
        SoftDenied {
            nr: SYS_get_mempolicy,
            name: "get_mempolicy",
            errno: ENOSYS,
            why: "libnuma's numa_available() (x265's thread pools) probes NUMA support; ENOSYS \
              reads as 'no NUMA', and x265 runs one pool",
        },
        SoftDenied {
            nr: SYS_sched_setscheduler,
            name: "sched_setscheduler",
            errno: EPERM,
            why:
                "SVT-AV1 starts every thread with SCHED_FIFO priority 99 and retries without it on \
              EPERM, which is what the kernel answers a process without CAP_SYS_NICE anyway",
        },
    ]
}
