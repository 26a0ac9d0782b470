//! The seccomp layer: a per-worker allowlist that kills on violation and leaves a log line naming the
//! blocked syscall.
//!
//! How a violation kills and still names the syscall: the allowlist's mismatch action is `Trap`; the
//! `SIGSYS` handler installed here writes `lumen-<kind>: seccomp: blocked syscall <name> (<nr>)` to
//! stderr (which the broker logs) with raw `write(2)` and ends the process with `exit_group(159)`
//! (128 + SIGSYS, firecracker's convention). The filter refuses `rt_sigaction` on `SIGSYS`, so the
//! handler cannot be replaced; a `SIGSYS` that arrives while blocked is forced by the kernel, which
//! kills the process. Either way the process dies.
//!
//! A second, tiny filter makes `clone3` fail with `ENOSYS`: its flags sit behind a pointer a filter
//! cannot read, so glibc is pushed to `clone`, whose flags the allowlist checks (threads only).
//!
//! Each worker lists its own rules next to its code (`<worker>-proc/src/seccomp.rs`); the syscalls any
//! Rust program with std threads needs are in [`rust_runtime`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicPtr, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{Options, Policy, SandboxError};
use crate::msg::{Layer, SandboxReport};

/// Exit status of a process killed by its seccomp filter (128 + SIGSYS).
pub const SECCOMP_EXIT_STATUS: i32 = 159;

/// One allowed syscall.
#[derive(Debug, Clone, Copy)]
pub struct SyscallRule {
    pub nr: libc::c_long,
    pub name: &'static str,
    pub args: ArgRule,
    /// Who needs it, and why.
    pub why: &'static str,
}

/// A syscall that fails with `errno` instead of killing (see [`Policy::soft_denied`]).
#[derive(Debug, Clone, Copy)]
pub struct SoftDenied {
    pub nr: libc::c_long,
    pub name: &'static str,
    pub errno: i32,
    /// Who makes it, and why failing it is harmless.
    pub why: &'static str,
}

/// A condition on a syscall's arguments. All but [`ArgRule::Equals`] look at the low 32 bits, the
/// `int` the kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgRule {
    Any,
    /// Argument `arg` equals `value`, all 64 bits compared (for pointer arguments).
    Equals {
        arg: u8,
        value: u64,
    },
    /// Argument `arg` is one of `values`.
    OneOf {
        arg: u8,
        values: &'static [u64],
    },
    /// Argument `arg` differs from `value`.
    NotEqual {
        arg: u8,
        value: u64,
    },
    /// Every bit of `bits` is set in argument `arg`.
    BitsSet {
        arg: u8,
        bits: u64,
    },
    /// No bit of `bits` is set in argument `arg`.
    BitsClear {
        arg: u8,
        bits: u64,
    },
    /// Argument `arg` equals the calling process's pid (filled in at install time).
    OwnPid {
        arg: u8,
    },
}

/// `prctl(PR_GET_AUXV)` (Linux 6.4); not in every libc crate yet.
const PR_GET_AUXV: u64 = 0x4155_5856;

/// Shorthand for the rule tables.
pub const fn allow(nr: libc::c_long, name: &'static str, why: &'static str) -> SyscallRule {
    SyscallRule {
        nr,
        name,
        args: ArgRule::Any,
        why,
    }
}

/// Shorthand for a rule with an argument condition.
pub const fn allow_if(
    nr: libc::c_long,
    name: &'static str,
    args: ArgRule,
    why: &'static str,
) -> SyscallRule {
    SyscallRule {
        nr,
        name,
        args,
        why,
    }
}

/// What every lumen worker needs to run Rust std code with threads, talk on its channel and read
/// rings. Nothing here opens a path, creates a socket or a process, or changes privileges.
pub fn rust_runtime() -> Vec<SyscallRule> {
    use libc::*;
    vec![
        allow(SYS_read, "read", "channel, eventfd doorbells, pipes"),
        allow(SYS_write, "write", "stderr log lines, eventfd doorbells"),
        allow(SYS_readv, "readv", "std io"),
        allow(SYS_writev, "writev", "std io"),
        allow(SYS_pread64, "pread64", "std io on handed fds"),
        allow(SYS_pwrite64, "pwrite64", "std io on handed fds"),
        allow(SYS_close, "close", "dropping OwnedFd"),
        allow(SYS_fstat, "fstat", "fdcheck: kind of a received fd"),
        allow_if(
            SYS_newfstatat,
            "newfstatat",
            ArgRule::BitsSet {
                arg: 3,
                bits: AT_EMPTY_PATH as u64,
            },
            "fstat through glibc (fd only: AT_EMPTY_PATH)",
        ),
        allow_if(
            SYS_statx,
            "statx",
            ArgRule::BitsSet {
                arg: 2,
                bits: AT_EMPTY_PATH as u64,
            },
            "std metadata on fds (fd only: AT_EMPTY_PATH)",
        ),
        allow(
            SYS_fstatfs,
            "fstatfs",
            "fdcheck: memfd/dmabuf/anon-inode magic",
        ),
        allow_if(
            SYS_fcntl,
            "fcntl",
            // Not F_SETOWN/F_SETOWN_EX/F_SETSIG: they would route SIGIO (or any signal) from a
            // handed fd to another process, the broker included, past the ban on kill.
            ArgRule::OneOf {
                arg: 1,
                values: &[
                    F_GETFD as u64,
                    F_SETFD as u64,
                    F_GETFL as u64,
                    F_SETFL as u64,
                    F_DUPFD_CLOEXEC as u64,
                    F_GET_SEALS as u64,
                ],
            },
            "fd flags (std, tokio), F_DUPFD_CLOEXEC (try_clone), F_GET_SEALS (fdcheck)",
        ),
        allow_if(
            SYS_ioctl,
            "ioctl",
            ArgRule::OneOf {
                arg: 1,
                values: &[FIONBIO, FIOCLEX],
            },
            "non-blocking mode and close-on-exec on fds",
        ),
        allow(SYS_dup, "dup", "fd handling"),
        allow(SYS_dup3, "dup3", "fd handling"),
        allow(SYS_lseek, "lseek", "std io on handed memfds"),
        allow_if(
            SYS_mmap,
            "mmap",
            ArgRule::BitsClear {
                arg: 2,
                bits: PROT_EXEC as u64,
            },
            "allocator, ring mappings; never executable",
        ),
        allow_if(
            SYS_mprotect,
            "mprotect",
            ArgRule::BitsClear {
                arg: 2,
                bits: PROT_EXEC as u64,
            },
            "thread stack guards; never executable",
        ),
        allow(SYS_munmap, "munmap", "allocator, ring mappings"),
        allow(SYS_mremap, "mremap", "allocator"),
        allow(SYS_madvise, "madvise", "allocator"),
        allow(SYS_brk, "brk", "allocator"),
        allow(SYS_futex, "futex", "std sync, thread join"),
        allow(SYS_set_robust_list, "set_robust_list", "glibc thread start"),
        allow(SYS_rseq, "rseq", "glibc thread start"),
        allow_if(
            SYS_clone,
            "clone",
            ArgRule::BitsSet {
                arg: 0,
                bits: CLONE_THREAD as u64,
            },
            "std::thread::spawn (threads only, never a process)",
        ),
        allow(
            SYS_clone3,
            "clone3",
            "answered ENOSYS by the companion filter so glibc uses clone",
        ),
        allow(SYS_exit, "exit", "thread exit"),
        allow(SYS_exit_group, "exit_group", "process exit"),
        allow(
            SYS_rt_sigreturn,
            "rt_sigreturn",
            "return from signal handlers (SIGSYS)",
        ),
        allow(
            SYS_rt_sigprocmask,
            "rt_sigprocmask",
            "glibc thread start, signal masks",
        ),
        allow_if(
            SYS_rt_sigaction,
            "rt_sigaction",
            ArgRule::NotEqual {
                arg: 0,
                value: SIGSYS as u64,
            },
            "std runtime signal setup; never SIGSYS, whose handler reports violations",
        ),
        allow(
            SYS_sigaltstack,
            "sigaltstack",
            "std stack-overflow handler per thread",
        ),
        allow_if(
            SYS_tgkill,
            "tgkill",
            ArgRule::OwnPid { arg: 0 },
            "abort() raises SIGABRT on itself only",
        ),
        allow(SYS_sched_yield, "sched_yield", "spin-then-block waits"),
        allow(
            SYS_sched_getaffinity,
            "sched_getaffinity",
            "std::thread::available_parallelism",
        ),
        allow(SYS_nanosleep, "nanosleep", "std::thread::sleep"),
        allow(SYS_clock_nanosleep, "clock_nanosleep", "std::thread::sleep"),
        allow(
            SYS_clock_gettime,
            "clock_gettime",
            "Instant::now when the vDSO is unavailable",
        ),
        allow(SYS_gettimeofday, "gettimeofday", "SystemTime::now fallback"),
        allow(SYS_getpid, "getpid", "logs"),
        allow(SYS_gettid, "gettid", "glibc thread ids"),
        allow(SYS_getuid, "getuid", "reports"),
        allow(SYS_geteuid, "geteuid", "reports"),
        allow(SYS_getgid, "getgid", "reports"),
        allow(SYS_getegid, "getegid", "reports"),
        allow(SYS_getrandom, "getrandom", "HashMap seeds, nonces"),
        allow(SYS_poll, "poll", "channel waits with a timeout"),
        allow(SYS_ppoll, "ppoll", "channel waits with a timeout"),
        allow(SYS_epoll_create1, "epoll_create1", "event loops"),
        allow(SYS_epoll_ctl, "epoll_ctl", "event loops"),
        allow(SYS_epoll_wait, "epoll_wait", "event loops"),
        allow(SYS_epoll_pwait, "epoll_pwait", "event loops"),
        allow(SYS_eventfd2, "eventfd2", "event loop wake-ups"),
        allow(SYS_recvmsg, "recvmsg", "control channel with fds"),
        allow(SYS_sendmsg, "sendmsg", "control channel with fds"),
        allow(SYS_recvfrom, "recvfrom", "reads on handed sockets"),
        allow(SYS_sendto, "sendto", "writes on handed sockets"),
        allow(
            SYS_getsockopt,
            "getsockopt",
            "fdcheck: SO_DOMAIN/SO_TYPE/SO_ACCEPTCONN",
        ),
        allow(SYS_shutdown, "shutdown", "closing a handed connection"),
        allow_if(
            SYS_prctl,
            "prctl",
            ArgRule::OneOf {
                arg: 0,
                values: &[PR_SET_NAME as u64, PR_GET_NAME as u64, PR_GET_AUXV],
            },
            "thread names; PR_GET_AUXV (reads our own auxiliary vector: CPU feature probes in \
             codec libraries)",
        ),
        allow_if(
            SYS_prlimit64,
            "prlimit64",
            ArgRule::Equals { arg: 2, value: 0 },
            "reading limits only (no new limit)",
        ),
        allow(
            SYS_restart_syscall,
            "restart_syscall",
            "kernel restart of interrupted sleeps",
        ),
    ]
}

/// Syscall names for the violation log line: every allowed one plus those a hostile worker would try.
const EXTRA_NAMES: &[(libc::c_long, &str)] = &[
    (libc::SYS_openat, "openat"),
    (libc::SYS_openat2, "openat2"),
    (libc::SYS_execve, "execve"),
    (libc::SYS_execveat, "execveat"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_socketpair, "socketpair"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_listen, "listen"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_kill, "kill"),
    (libc::SYS_tkill, "tkill"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_memfd_create, "memfd_create"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_unshare, "unshare"),
    (libc::SYS_setns, "setns"),
    (libc::SYS_chroot, "chroot"),
    (libc::SYS_setuid, "setuid"),
    (libc::SYS_setresuid, "setresuid"),
    (libc::SYS_setgid, "setgid"),
    (libc::SYS_capset, "capset"),
    (libc::SYS_personality, "personality"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_pidfd_open, "pidfd_open"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_pidfd_send_signal, "pidfd_send_signal"),
    (libc::SYS_seccomp, "seccomp"),
    (libc::SYS_unlinkat, "unlinkat"),
    (libc::SYS_mkdirat, "mkdirat"),
    (libc::SYS_getdents64, "getdents64"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_vfork, "vfork"),
    (libc::SYS_fork, "fork"),
    (libc::SYS_open, "open"),
];

/// Longest line the SIGSYS handler writes.
const REPORT_CAPACITY: usize = 160;

/// What the SIGSYS handler needs, prepared before the filter goes in (the handler may not allocate).
struct ViolationReporter {
    prefix: String,
    names: Vec<(libc::c_long, &'static str)>,
}

static REPORTER: AtomicPtr<ViolationReporter> = AtomicPtr::new(std::ptr::null_mut());

/// Appends `bytes` to `buf` at `*len`, as far as it fits.
fn push_bytes(buf: &mut [u8; REPORT_CAPACITY], len: &mut usize, bytes: &[u8]) {
    for &b in bytes {
        if *len >= buf.len() {
            return;
        }
        buf[*len] = b;
        *len += 1;
    }
}

/// Formats `n` in decimal without allocating.
fn push_decimal(buf: &mut [u8; REPORT_CAPACITY], len: &mut usize, n: i64) {
    let mut digits = [0u8; 20];
    let mut count = 0;
    let mut rest = n.unsigned_abs();
    loop {
        digits[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 || count == digits.len() {
            break;
        }
    }
    if n < 0 {
        push_bytes(buf, len, b"-");
    }
    for i in (0..count).rev() {
        push_bytes(buf, len, &digits[i..=i]);
    }
}

/// The line the handler writes for syscall `nr` (pure; tested).
fn violation_line(
    reporter: &ViolationReporter,
    nr: i64,
    arg0: Option<i64>,
    buf: &mut [u8; REPORT_CAPACITY],
) -> usize {
    let mut len = 0;
    push_bytes(buf, &mut len, reporter.prefix.as_bytes());
    push_bytes(buf, &mut len, b"seccomp: blocked syscall ");
    match reporter.names.iter().find(|(n, _)| *n == nr) {
        Some((_, name)) => push_bytes(buf, &mut len, name.as_bytes()),
        None => push_bytes(buf, &mut len, b"unknown"),
    }
    push_bytes(buf, &mut len, b" (");
    push_decimal(buf, &mut len, nr);
    push_bytes(buf, &mut len, b")");
    // The first argument tells which prctl, fcntl or ioctl request a library made.
    if let Some(arg0) = arg0 {
        push_bytes(buf, &mut len, b" arg0=");
        push_decimal(buf, &mut len, arg0);
    }
    push_bytes(buf, &mut len, b"; the process is killed\n");
    len
}

/// The first syscall argument from the signal context (x86-64: rdi).
#[cfg(target_arch = "x86_64")]
fn first_argument(ctx: *mut libc::c_void) -> Option<i64> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: for an SA_SIGINFO handler the kernel passes a valid ucontext_t as the third argument;
    // only a register value is copied out of it.
    Some(unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RDI as usize] })
}

#[cfg(not(target_arch = "x86_64"))]
fn first_argument(_ctx: *mut libc::c_void) -> Option<i64> {
    None
}

/// Offset of `si_syscall` in the kernel's `siginfo_t` for SIGSYS: after si_signo, si_errno, si_code
/// (3 × int, padded to 16 on 64-bit) comes `void *si_call_addr`, then `int si_syscall`.
const SI_SYSCALL_OFFSET: usize = 16 + std::mem::size_of::<usize>();

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let mut nr: i64 = -1;
    if !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; for SIGSYS the int at
        // SI_SYSCALL_OFFSET is si_syscall. read_unaligned needs no alignment.
        nr = i64::from(unsafe {
            std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>())
        });
    }
    let reporter = REPORTER.load(Ordering::Acquire);
    if !reporter.is_null() {
        let mut buf = [0u8; REPORT_CAPACITY];
        // SAFETY: REPORTER points at a leaked Box that is never freed or mutated after install.
        let len = violation_line(unsafe { &*reporter }, nr, first_argument(ctx), &mut buf);
        // SAFETY: write(2) of our own stack buffer to stderr; async-signal-safe.
        unsafe { libc::write(2, buf.as_ptr().cast(), len) };
    }
    // SAFETY: exit_group(2) ends the process; async-signal-safe.
    unsafe { libc::syscall(libc::SYS_exit_group, SECCOMP_EXIT_STATUS) };
}

fn install_sigsys_handler(policy: &Policy) -> Result<(), SandboxError> {
    let mut names: Vec<(libc::c_long, &'static str)> =
        policy.syscalls.iter().map(|r| (r.nr, r.name)).collect();
    names.extend_from_slice(EXTRA_NAMES);
    let reporter = Box::new(ViolationReporter {
        prefix: format!("{}: ", policy.kind.binary_name()),
        names,
    });
    REPORTER.store(Box::into_raw(reporter), Ordering::Release);

    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value to fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    action.sa_sigaction = handler as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler that only does async-signal-safe work (see on_sigsys).
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(SandboxError::last_os("sigaction(SIGSYS)"));
    }
    Ok(())
}

/// Conditions on `int` arguments compare the low 32 bits, which is all the kernel reads of them: a
/// 64-bit comparison could be dodged by setting the upper half. [`ArgRule::Equals`] is for pointers
/// and compares all 64 bits.
fn condition(
    arg: u8,
    width: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, width, op, value).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn rules_for(args: ArgRule, own_pid: u64) -> Result<Vec<SeccompRule>, SandboxError> {
    let rule = |conds: Vec<SeccompCondition>| {
        SeccompRule::new(conds).map_err(|e| SandboxError::Seccomp(e.to_string()))
    };
    use SeccompCmpArgLen::{Dword, Qword};
    Ok(match args {
        ArgRule::Any => Vec::new(),
        ArgRule::Equals { arg, value } => {
            vec![rule(vec![condition(arg, Qword, SeccompCmpOp::Eq, value)?])?]
        }
        ArgRule::OneOf { values: [], .. } => {
            return Err(SandboxError::Seccomp(
                "an empty OneOf rule would allow everything".into(),
            ))
        }
        ArgRule::OneOf { arg, values } => values
            .iter()
            .map(|&v| rule(vec![condition(arg, Dword, SeccompCmpOp::Eq, v)?]))
            .collect::<Result<_, _>>()?,
        ArgRule::NotEqual { arg, value } => {
            vec![rule(vec![condition(arg, Dword, SeccompCmpOp::Ne, value)?])?]
        }
        ArgRule::BitsSet { arg, bits } => {
            vec![rule(vec![condition(
                arg,
                Dword,
                SeccompCmpOp::MaskedEq(bits),
                bits,
            )?])?]
        }
        ArgRule::BitsClear { arg, bits } => {
            vec![rule(vec![condition(
                arg,
                Dword,
                SeccompCmpOp::MaskedEq(bits),
                0,
            )?])?]
        }
        ArgRule::OwnPid { arg } => {
            vec![rule(vec![condition(
                arg,
                Dword,
                SeccompCmpOp::Eq,
                own_pid,
            )?])?]
        }
    })
}

fn target_arch() -> Result<TargetArch, SandboxError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
}

/// Compiles the allowlist of `policy` (mismatch: trap) to BPF.
pub fn allowlist_program(policy: &Policy, own_pid: u64) -> Result<BpfProgram, SandboxError> {
    // None: allowed unconditionally; Some(rules): allowed when any of the rules matches.
    let mut table: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for rule in &policy.syscalls {
        let conditions = rules_for(rule.args, own_pid)?;
        let slot = table.entry(rule.nr).or_insert_with(|| Some(Vec::new()));
        match slot {
            Some(_) if conditions.is_empty() => *slot = None,
            Some(list) => list.extend(conditions),
            None => {}
        }
    }
    // Soft-denied syscalls pass the allowlist; a companion filter turns them into an errno (a
    // filter's Trap would outrank the companion's Errno).
    for soft in &policy.soft_denied {
        table.insert(soft.nr, None);
    }
    let rules: BTreeMap<i64, Vec<SeccompRule>> = table
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        target_arch()?,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
}

/// The companion filters: `clone3` → ENOSYS, and each soft-denied syscall → its errno (one filter
/// per errno); everything else passes on to the allowlist.
pub fn companion_programs(policy: &Policy) -> Result<Vec<BpfProgram>, SandboxError> {
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    by_errno
        .entry(libc::ENOSYS)
        .or_default()
        .insert(libc::SYS_clone3, Vec::new());
    for soft in &policy.soft_denied {
        if soft.nr == libc::SYS_clone3 {
            continue;
        }
        by_errno
            .entry(soft.errno)
            .or_default()
            .insert(soft.nr, Vec::new());
    }
    by_errno
        .into_iter()
        .map(|(errno, rules)| {
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno as u32),
                target_arch()?,
            )
            .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
            filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
        })
        .collect()
}

/// True when the kernel supports seccomp filters.
fn seccomp_available() -> Result<(), String> {
    // SAFETY: prctl(PR_GET_SECCOMP) takes no pointers.
    let rc = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    if rc < 0 {
        Err(format!(
            "prctl(PR_GET_SECCOMP): {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(())
    }
}

/// Installs the SIGSYS reporter and both filters on every thread; fills the seccomp fields.
pub fn install(
    policy: &Policy,
    options: &Options,
    report: &mut SandboxReport,
) -> Result<(), SandboxError> {
    if let Err(why) = seccomp_available() {
        if !options.allow_missing_seccomp {
            return Err(SandboxError::SeccompMissing(why));
        }
        report.seccomp = Layer::OptedOut;
        report.notes.push(format!(
            "running WITHOUT seccomp by the user's choice: {why}"
        ));
        return Ok(());
    }
    let own_pid = u64::from(
        rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .unsigned_abs(),
    );
    let allowlist = allowlist_program(policy, own_pid)?;
    let companions = companion_programs(policy)?;
    install_sigsys_handler(policy)?;
    for companion in &companions {
        seccompiler::apply_filter_all_threads(companion)
            .map_err(|e| SandboxError::Seccomp(format!("companion filter: {e}")))?;
    }
    seccompiler::apply_filter_all_threads(&allowlist)
        .map_err(|e| SandboxError::Seccomp(format!("allowlist: {e}")))?;
    report.seccomp = Layer::On;
    report.seccomp_allowed_syscalls = u32::try_from(
        policy
            .syscalls
            .iter()
            .map(|r| r.nr)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
    )
    .unwrap_or(u32::MAX);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A soft-denied `openat` fails with its errno under the real filters, and the process lives
    /// (without the soft-deny the allowlist would trap it).
    #[test]
    fn soft_denied_syscalls_fail_with_their_errno_instead_of_killing() {
        let mut policy = Policy {
            kind: crate::msg::WorkerKind::Encode,
            own_network_namespace: true,
            deny_tcp_bind_connect: false,
            max_fds: 64,
            max_threads: 0,
            syscalls: rust_runtime(),
            soft_denied: vec![SoftDenied {
                nr: libc::SYS_openat,
                name: "openat",
                errno: libc::ENOENT,
                why: "test",
            }],
            max_file_bytes: 0,
        };
        policy.syscalls.retain(|r| r.nr != libc::SYS_openat);
        // SAFETY: getpid takes no arguments.
        let pid = unsafe { libc::getpid() } as u64;
        let allowlist = allowlist_program(&policy, pid).unwrap();
        let companions = companion_programs(&policy).unwrap();
        assert_eq!(companions.len(), 2, "clone3→ENOSYS and openat→ENOENT");
        let path = c"/proc/self/status";
        // SAFETY: the child only makes raw syscalls (prctl, seccomp, openat, _exit) on
        // data prepared before the fork, which is async-signal-safe.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            // SAFETY: plain prctl/seccomp/openat/_exit syscalls on valid pointers.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for program in companions.iter().chain(std::iter::once(&allowlist)) {
                    let prog = libc::sock_fprog {
                        len: program.len() as u16,
                        filter: program.as_ptr() as *mut libc::sock_filter,
                    };
                    if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog)
                        != 0
                    {
                        libc::_exit(10);
                    }
                }
                let fd = libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY);
                if fd >= 0 {
                    libc::_exit(11);
                }
                if *libc::__errno_location() != libc::ENOENT {
                    libc::_exit(12);
                }
                libc::_exit(42);
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child; status is a valid out-pointer.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(waited, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 42,
            "the child must get ENOENT from openat and live: status {status:#x}"
        );
    }

    fn reporter() -> ViolationReporter {
        ViolationReporter {
            prefix: "lumen-net: ".into(),
            names: vec![(libc::SYS_socket, "socket")],
        }
    }

    #[test]
    fn violation_line_names_a_known_syscall() {
        let mut buf = [0u8; REPORT_CAPACITY];
        let len = violation_line(&reporter(), libc::SYS_socket, Some(2), &mut buf);
        let line = std::str::from_utf8(&buf[..len]).unwrap();
        assert_eq!(
            line,
            format!(
                "lumen-net: seccomp: blocked syscall socket ({}) arg0=2; the process is killed\n",
                libc::SYS_socket
            )
        );
    }

    #[test]
    fn violation_line_gives_the_number_of_an_unknown_syscall() {
        let mut buf = [0u8; REPORT_CAPACITY];
        let len = violation_line(&reporter(), 4242, None, &mut buf);
        let line = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(line.contains("unknown (4242)"), "{line}");
    }

    #[test]
    fn violation_line_never_overflows_its_buffer() {
        let long = ViolationReporter {
            prefix: "x".repeat(500),
            names: vec![],
        };
        let mut buf = [0u8; REPORT_CAPACITY];
        assert_eq!(
            violation_line(&long, i64::MIN, Some(i64::MIN), &mut buf),
            REPORT_CAPACITY
        );
    }

    #[test]
    fn runtime_allowlist_has_no_path_socket_or_process_creation_syscall() {
        let forbidden = [
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_memfd_create,
            libc::SYS_io_uring_setup,
            libc::SYS_unshare,
            libc::SYS_mount,
        ];
        for rule in rust_runtime() {
            assert!(
                !forbidden.contains(&rule.nr),
                "{} must not be allowed",
                rule.name
            );
        }
    }
}
