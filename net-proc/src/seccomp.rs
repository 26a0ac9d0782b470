//! `lumen-net`'s sandbox: the only worker that faces the LAN, so it gets the host's network
//! namespace (to serve on the sockets the broker bound) and nothing else: no socket, bind, connect or
//! listen of its own (Landlock also refuses TCP bind/connect), no paths, no processes.

use lumen_ipc::msg::WorkerKind;
use lumen_ipc::sandbox::seccomp::{allow, allow_if, rust_runtime, SoftDenied};
use lumen_ipc::sandbox::{ArgRule, Policy};

pub fn policy() -> Policy {
    use libc::*;
    let mut syscalls = rust_runtime();
    syscalls.extend([
        allow(
            SYS_accept4,
            "accept4",
            "HTTP, HTTPS and RTSP connections on the handed listeners",
        ),
        allow(
            SYS_recvmmsg,
            "recvmmsg",
            "batched reads of client pings and control datagrams",
        ),
        allow(
            SYS_sendmmsg,
            "sendmmsg",
            "batched video and audio datagrams",
        ),
        allow_if(
            SYS_setsockopt,
            "setsockopt",
            ArgRule::OneOf {
                arg: 1,
                values: &[
                    SOL_SOCKET as u64,
                    IPPROTO_IP as u64,
                    IPPROTO_IPV6 as u64,
                    IPPROTO_TCP as u64,
                    IPPROTO_UDP as u64,
                ],
            },
            "send buffers, UDP GSO segment size, DSCP, TCP_NODELAY on handed sockets",
        ),
        allow(
            SYS_getsockname,
            "getsockname",
            "the local address a client reached (sessionUrl0)",
        ),
        allow(SYS_getpeername, "getpeername", "the client's address"),
        allow(
            SYS_timerfd_create,
            "timerfd_create",
            "packet pacing across the frame interval",
        ),
        allow(SYS_timerfd_settime, "timerfd_settime", "packet pacing"),
        allow(SYS_timerfd_gettime, "timerfd_gettime", "packet pacing"),
        allow_if(
            SYS_socketpair,
            "socketpair",
            ArgRule::Equals {
                arg: 0,
                value: AF_UNIX as u64,
            },
            "tokio's signal driver makes one unnamed AF_UNIX pair when the nvhttp runtime starts \
             (the workspace's tokio has its `signal` feature); such a pair reaches nothing outside \
             the process",
        ),
    ]);
    Policy {
        kind: WorkerKind::Net,
        own_network_namespace: false,
        deny_tcp_bind_connect: true,
        max_fds: 1024,
        max_threads: 16,
        syscalls,
        // glibc reads /proc/sys/vm/overcommit_memory the first time it trims a thread's heap (once
        // per process, from any thread) and copes when it cannot: failing it spares the worker.
        // Nothing could be opened anyway (empty mount namespace, Landlock).
        soft_denied: vec![SoftDenied {
            nr: libc::SYS_openat,
            name: "openat",
            errno: libc::ENOENT,
            why: "glibc's heap trimming probes /proc/sys/vm/overcommit_memory",
        }],
        max_file_bytes: 0,
    }
}
