//! `lumen-encode`'s sandbox: it turns frames into bitstreams with CPU codecs (libraries loaded and
//! warmed up before lock-down). No network sockets at all (no `socket`, `bind`, `connect`, `accept`), its own network
//! namespace, no paths, no processes.

use lumen_ipc::msg::WorkerKind;
use lumen_ipc::sandbox::seccomp::{allow, rust_runtime, SoftDenied};
use lumen_ipc::sandbox::Policy;

pub fn policy() -> Policy {
    let mut syscalls = rust_runtime();
    use libc::*;
    // No GPU rules: NVENC would need its CUDA context (and the device nodes it opens) made before
    // lock-down and kept; until that exists a session's NVENC open fails here and the software
    // encoder takes over, so ioctl, mmap and mprotect keep rust_runtime's narrow rules (no
    // executable mappings). x264, x265 and SVT-AV1 run precompiled assembly, no JIT.
    syscalls.extend([
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
            "encoder thread pinning (x265 pins its pool to its NUMA node)",
        ),
        allow(
            SYS_get_mempolicy,
            "get_mempolicy",
            "libnuma's numa_available() (x265's thread pools); reads the caller's policy only",
        ),
        allow(
            SYS_set_mempolicy,
            "set_mempolicy",
            "x265 sets its pool threads' NUMA memory policy (interleave, local); the calling \
             thread's own allocations only",
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
            nr: SYS_sched_setscheduler,
            name: "sched_setscheduler",
            errno: EPERM,
            why:
                "SVT-AV1 starts every thread with SCHED_FIFO priority 99 and retries without it on \
              EPERM, which is what the kernel answers a process without CAP_SYS_NICE anyway",
        },
    ]
}
