//! `--sandbox-selftest`: proves, on this machine, that a worker's production lock-down refuses what
//! its profile forbids.
//!
//! The parent (not sandboxed) prepares what the attempts need, then runs each attempt in a fresh child:
//! its own binary, exec'd with [`ATTEMPT_FLAG`], which enters exactly the production [`lockdown`] with
//! the worker's own [`Policy`] and then tries one forbidden thing. The child exits 0 if the attempt
//! succeeded (a failure of the sandbox), [`EXIT_DENIED`] if it was refused with an error, and is killed
//! by seccomp ([`SECCOMP_EXIT_STATUS`]) where the allowlist stops it — both count as denied. One
//! attempt that the profile allows is run too, so a harness that denies everything cannot pass.
//!
//! When run as root, the children drop to an unprivileged uid first, as the broker's workers do, so
//! that the test checks the sandbox and not the mercy of file permissions.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::seccomp::SECCOMP_EXIT_STATUS;
use super::{lockdown_layers, Layers, Options, Policy};
use crate::msg::WorkerKind;

/// Hidden flag: run one attempt (the child side).
pub const ATTEMPT_FLAG: &str = "--sandbox-selftest-attempt";

/// Child argument: enter every layer but seccomp (the second, defence-in-depth pass).
const WITHOUT_SECCOMP_ARG: &str = "layers=all-but-seccomp";

/// Child exit status: the attempt was refused with an error.
pub const EXIT_DENIED: i32 = 3;
/// Child exit status: the sandbox could not even be entered.
pub const EXIT_SETUP_FAILED: i32 = 4;

/// The unprivileged uid/gid the children use when the self-test runs as root.
const UNPRIVILEGED_ID: u32 = 65534;

/// Everything the attempts need from the parent, passed on the child's command line.
#[derive(Debug, Clone, Default)]
struct Context {
    broker_pid: i32,
    secret_file: PathBuf,
    state_dir: PathBuf,
    scratch_dir: PathBuf,
    listen_port: u16,
    handed_tcp: Option<i32>,
    handed_udp: Option<i32>,
}

impl Context {
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("broker_pid={}", self.broker_pid),
            format!("secret_file={}", self.secret_file.display()),
            format!("state_dir={}", self.state_dir.display()),
            format!("scratch_dir={}", self.scratch_dir.display()),
            format!("listen_port={}", self.listen_port),
        ];
        if let Some(fd) = self.handed_tcp {
            args.push(format!("handed_tcp={fd}"));
        }
        if let Some(fd) = self.handed_udp {
            args.push(format!("handed_udp={fd}"));
        }
        args
    }

    fn from_args(args: &[String]) -> Context {
        let mut ctx = Context::default();
        for arg in args {
            let Some((key, value)) = arg.split_once('=') else {
                continue;
            };
            match key {
                "broker_pid" => ctx.broker_pid = value.parse().unwrap_or(0),
                "secret_file" => ctx.secret_file = value.into(),
                "state_dir" => ctx.state_dir = value.into(),
                "scratch_dir" => ctx.scratch_dir = value.into(),
                "listen_port" => ctx.listen_port = value.parse().unwrap_or(0),
                "handed_tcp" => ctx.handed_tcp = value.parse().ok(),
                "handed_udp" => ctx.handed_udp = value.parse().ok(),
                _ => {}
            }
        }
        ctx
    }
}

/// One thing a worker must not (or, for the control attempt, may) do.
struct Attempt {
    name: &'static str,
    /// Whether the profile allows it: only the control attempt.
    expect_allowed: bool,
    /// Whether the layers beneath seccomp (Landlock, namespaces, no capabilities) must refuse it on
    /// their own too; checked in a second pass with seccomp left out.
    beneath_seccomp: bool,
    /// Run only for profiles where this holds.
    applies: fn(&Policy) -> bool,
    /// Returns Ok if the attempt succeeded, Err(reason) if it was refused.
    run: fn(&Context) -> Result<(), String>,
}

fn always(_: &Policy) -> bool {
    true
}

fn net_only(policy: &Policy) -> bool {
    policy.kind == WorkerKind::Net
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

/// Turns a libc return value into the attempt's outcome; a success closes what it opened.
fn outcome(rc: libc::c_long) -> Result<(), String> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn connect_fd(fd: i32, port: u16) -> Result<(), String> {
    let addr = loopback(port);
    // SAFETY: connect(2) reads `addr` for the given length; the fd is ours.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    outcome(rc.into())
}

fn bind_fd(fd: i32) -> Result<(), String> {
    let addr = loopback(0);
    // SAFETY: bind(2) reads `addr` for the given length; the fd is ours.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    outcome(rc.into())
}

fn new_socket(domain: libc::c_int, ty: libc::c_int) -> Result<i32, String> {
    // SAFETY: socket(2) takes integers only.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

fn path_c(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())
}

fn open_path(path: &Path, flags: libc::c_int) -> Result<(), String> {
    let c = path_c(path)?;
    // SAFETY: open(2) of a NUL-terminated path we own.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    outcome(fd.into())
}

const ATTEMPTS: &[Attempt] = &[
    Attempt {
        name: "write a log line to stderr (allowed: proves the child ran sandboxed)",
        expect_allowed: true,
        beneath_seccomp: false,
        applies: always,
        run: |_| {
            let line = b"selftest child: sandboxed and alive\n";
            // SAFETY: write(2) of a static buffer to stderr.
            let rc = unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
            outcome(rc as libc::c_long)
        },
    },
    Attempt {
        name: "start a thread (allowed: workers run their pipelines on threads)",
        expect_allowed: true,
        beneath_seccomp: false,
        applies: always,
        run: |_| {
            std::thread::Builder::new()
                .spawn(|| ())
                .map_err(|e| e.to_string())?
                .join()
                .map_err(|_| "the thread panicked".to_string())
        },
    },
    Attempt {
        name: "read /etc/passwd",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |_| {
            std::fs::read("/etc/passwd")
                .map(drop)
                .map_err(|e| e.to_string())
        },
    },
    Attempt {
        name: "read a world-readable file outside the sandbox",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |ctx| {
            std::fs::read(&ctx.secret_file)
                .map(drop)
                .map_err(|e| e.to_string())
        },
    },
    Attempt {
        name: "read the broker's state dir",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |ctx| open_path(&ctx.state_dir, libc::O_RDONLY | libc::O_DIRECTORY),
    },
    Attempt {
        name: "create a file",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |ctx| {
            open_path(
                &ctx.scratch_dir.join("created-by-sandboxed-worker"),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            )
        },
    },
    Attempt {
        name: "execve /bin/sh",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |_| {
            let sh = c"/bin/sh";
            let argv = [
                sh.as_ptr(),
                c"-c".as_ptr(),
                c"exit 0".as_ptr(),
                std::ptr::null(),
            ];
            let envp = [std::ptr::null()];
            // SAFETY: execve(2) with NUL-terminated argv/envp arrays that outlive the call. On
            // success the shell replaces us and exits 0 (which the parent reads as "allowed").
            let rc = unsafe { libc::execve(sh.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            outcome(rc.into())
        },
    },
    Attempt {
        name: "fork a process",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        run: |_| {
            // SAFETY: fork(2); the child leaves at once with _exit, touching nothing.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: _exit(2) in the forked child.
                unsafe { libc::_exit(0) };
            }
            outcome(pid.into())
        },
    },
    Attempt {
        name: "socket(AF_INET)",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        run: |_| new_socket(libc::AF_INET, libc::SOCK_STREAM).map(drop),
    },
    Attempt {
        name: "socket(AF_UNIX)",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        run: |_| new_socket(libc::AF_UNIX, libc::SOCK_STREAM).map(drop),
    },
    Attempt {
        name: "connect to 127.0.0.1 with a new socket",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        run: |ctx| {
            connect_fd(
                new_socket(libc::AF_INET, libc::SOCK_STREAM)?,
                ctx.listen_port,
            )
        },
    },
    Attempt {
        name: "bind a new socket",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        run: |_| bind_fd(new_socket(libc::AF_INET, libc::SOCK_DGRAM)?),
    },
    Attempt {
        name: "connect to 127.0.0.1 with a handed TCP socket",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: net_only,
        run: |ctx| {
            connect_fd(
                ctx.handed_tcp.ok_or("no handed TCP socket")?,
                ctx.listen_port,
            )
        },
    },
    Attempt {
        name: "bind a handed TCP socket",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: net_only,
        run: |ctx| bind_fd(ctx.handed_tcp.ok_or("no handed TCP socket")?),
    },
    Attempt {
        name: "bind a handed UDP socket",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: net_only,
        run: |ctx| bind_fd(ctx.handed_udp.ok_or("no handed UDP socket")?),
    },
    Attempt {
        name: "ptrace the broker",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |ctx| {
            // SAFETY: ptrace(2) with integer arguments and null pointers.
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_ATTACH,
                    ctx.broker_pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            outcome(rc)
        },
    },
    Attempt {
        name: "route SIGIO to the broker (fcntl F_SETOWN)",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        // Setting another process as owner of our stderr pipe would let I/O on it signal that
        // process; stderr is always open.
        // SAFETY: fcntl(2) with integer arguments on fd 2.
        run: |ctx| outcome(unsafe { libc::fcntl(2, libc::F_SETOWN, ctx.broker_pid) }.into()),
    },
    Attempt {
        name: "kill the broker",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        // SIGCONT: harmless to a running parent, yet subject to every permission check.
        // SAFETY: kill(2) takes integers only.
        run: |ctx| outcome(unsafe { libc::kill(ctx.broker_pid, libc::SIGCONT) }.into()),
    },
    Attempt {
        name: "process_vm_readv on the broker",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |ctx| {
            let mut byte = 0u8;
            let local = libc::iovec {
                iov_base: (&mut byte as *mut u8).cast(),
                iov_len: 1,
            };
            let remote = libc::iovec {
                iov_base: (&ctx.broker_pid as *const i32).cast_mut().cast(),
                iov_len: 1,
            };
            // SAFETY: reads at most one byte into `byte`; the remote address is only read by the kernel.
            let rc = unsafe { libc::process_vm_readv(ctx.broker_pid, &local, 1, &remote, 1, 0) };
            outcome(rc as libc::c_long)
        },
    },
    Attempt {
        name: "pidfd_open the broker",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        // SAFETY: pidfd_open(2) takes integers only.
        run: |ctx| outcome(unsafe { libc::syscall(libc::SYS_pidfd_open, ctx.broker_pid, 0) }),
    },
    Attempt {
        name: "open a device node (/dev/null)",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |_| open_path(Path::new("/dev/null"), libc::O_RDWR),
    },
    Attempt {
        name: "open a device node (/dev/kmsg)",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |_| open_path(Path::new("/dev/kmsg"), libc::O_RDONLY),
    },
    Attempt {
        name: "io_uring_setup",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        run: |_| {
            let mut params = [0u8; 120];
            // SAFETY: io_uring_setup(2) writes at most sizeof(io_uring_params) = 120 bytes to `params`.
            outcome(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) })
        },
    },
    Attempt {
        name: "memfd_create",
        expect_allowed: false,
        beneath_seccomp: false,
        // lumen-capture's PipeWire client makes its own buffer-pool memfds (anonymous memory,
        // no path, sized within its RLIMIT_FSIZE); every other worker may not.
        applies: |policy| {
            !policy
                .syscalls
                .iter()
                .any(|r| r.nr == libc::SYS_memfd_create)
        },
        // SAFETY: memfd_create(2) with a constant name.
        run: |_| outcome(unsafe { libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC) }.into()),
    },
    Attempt {
        name: "unshare a new user namespace (escape)",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        // SAFETY: unshare(2) takes a flag word only.
        run: |_| outcome(unsafe { libc::unshare(libc::CLONE_NEWUSER) }.into()),
    },
    Attempt {
        name: "mount a tmpfs",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |ctx| {
            let target = path_c(&ctx.scratch_dir)?;
            // SAFETY: mount(2) with constant strings and a path we own.
            let rc = unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            outcome(rc.into())
        },
    },
    Attempt {
        name: "chroot",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        // SAFETY: chroot(2) with a constant path.
        run: |_| outcome(unsafe { libc::chroot(c"/".as_ptr()) }.into()),
    },
    Attempt {
        name: "setuid(0)",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        // SAFETY: setuid(2) takes an integer only. Raw syscall: glibc's wrapper signals every thread.
        run: |_| outcome(unsafe { libc::syscall(libc::SYS_setuid, 0) }),
    },
    Attempt {
        name: "bpf(BPF_MAP_CREATE)",
        expect_allowed: false,
        beneath_seccomp: true,
        applies: always,
        run: |_| {
            let mut attr = [0u8; 128];
            attr[0] = 2; // BPF_MAP_TYPE_ARRAY
            attr[4] = 4; // key size
            attr[8] = 4; // value size
            attr[12] = 1; // max entries
                          // SAFETY: bpf(2) reads `attr` for the given size.
            outcome(unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), attr.len()) })
        },
    },
    Attempt {
        name: "perf_event_open",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        run: |_| {
            let mut attr = [0u8; 128];
            attr[0] = 1; // PERF_TYPE_SOFTWARE
            attr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
                                                               // SAFETY: perf_event_open(2) reads `attr` for its declared size.
            outcome(unsafe {
                libc::syscall(libc::SYS_perf_event_open, attr.as_mut_ptr(), 0, -1, -1, 0)
            })
        },
    },
    Attempt {
        name: "userfaultfd",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        // SAFETY: userfaultfd(2) takes a flag word only.
        run: |_| outcome(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) }),
    },
    Attempt {
        name: "keyctl (join a session keyring)",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        // SAFETY: keyctl(2) KEYCTL_JOIN_SESSION_KEYRING (1) with a null name.
        run: |_| outcome(unsafe { libc::syscall(libc::SYS_keyctl, 1, std::ptr::null::<u8>()) }),
    },
    Attempt {
        name: "personality(READ_IMPLIES_EXEC)",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: always,
        // SAFETY: personality(2) takes an integer only.
        run: |_| outcome(unsafe { libc::personality(0x0400000) }.into()),
    },
    Attempt {
        name: "map executable memory",
        expect_allowed: false,
        beneath_seccomp: false,
        applies: |p| p.kind != WorkerKind::Encode,
        run: |_| {
            // SAFETY: an anonymous mapping we never touch; unmapped at once if it succeeds.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(errno());
            }
            // SAFETY: unmapping the mapping just made.
            unsafe { libc::munmap(ptr, 4096) };
            Ok(())
        },
    },
];

/// Runs one attempt in this (child) process; never returns.
pub fn run_attempt(policy: &Policy, args: &[String]) -> ! {
    let Some(name) = args.first() else {
        eprintln!("selftest child: no attempt named");
        std::process::exit(EXIT_SETUP_FAILED);
    };
    let Some(attempt) = ATTEMPTS.iter().find(|a| a.name == name) else {
        eprintln!("selftest child: unknown attempt {name:?}");
        std::process::exit(EXIT_SETUP_FAILED);
    };
    let ctx = Context::from_args(&args[1..]);
    let layers = if args.iter().any(|a| a == WITHOUT_SECCOMP_ARG) {
        Layers::AllButSeccomp
    } else {
        Layers::All
    };
    if let Err(e) = lockdown_layers(policy, &Options::default(), layers) {
        eprintln!("selftest child: lock-down failed: {e}");
        std::process::exit(EXIT_SETUP_FAILED);
    }
    match (attempt.run)(&ctx) {
        Ok(()) => std::process::exit(0),
        Err(why) => {
            eprintln!("refused: {why}");
            std::process::exit(EXIT_DENIED);
        }
    }
}

/// Everything the parent prepared and must keep alive while children run.
struct Fixture {
    ctx: Context,
    _listener: std::net::TcpListener,
    _handed: Vec<OwnedFd>,
    scratch: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("lumen");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/state/lumen")
}

fn prepare(policy: &Policy, state_dir_arg: Option<PathBuf>) -> Result<Fixture, String> {
    use std::os::unix::fs::PermissionsExt;
    let scratch = std::env::temp_dir().join(format!(
        "lumen-selftest-{}-{}",
        policy.kind.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    // World-writable and world-readable on purpose: only the sandbox may stand in the way.
    std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    let secret_file = scratch.join("secret");
    std::fs::write(&secret_file, b"not for workers").map_err(|e| e.to_string())?;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;

    let state_dir = state_dir_arg.unwrap_or_else(default_state_dir);
    let state_dir = if state_dir.is_dir() {
        state_dir
    } else {
        // No broker state here yet: a world-readable stand-in shows the same denial.
        let stand_in = scratch.join("state");
        std::fs::create_dir_all(&stand_in).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        stand_in
    };

    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let listen_port = listener.local_addr().map_err(|e| e.to_string())?.port();

    let mut handed = Vec::new();
    let (mut handed_tcp, mut handed_udp) = (None, None);
    if policy.kind == WorkerKind::Net {
        for (ty, slot) in [
            (rustix::net::SocketType::STREAM, &mut handed_tcp),
            (rustix::net::SocketType::DGRAM, &mut handed_udp),
        ] {
            // Not close-on-exec: the children inherit these, as lumen-net inherits its sockets.
            let fd = rustix::net::socket(rustix::net::AddressFamily::INET, ty, None)
                .map_err(|e| format!("socket: {e}"))?;
            *slot = Some(fd.as_raw_fd());
            handed.push(fd);
        }
    }

    Ok(Fixture {
        ctx: Context {
            broker_pid: std::process::id() as i32,
            secret_file,
            state_dir,
            scratch_dir: scratch.clone(),
            listen_port,
            handed_tcp,
            handed_udp,
        },
        _listener: listener,
        _handed: handed,
        scratch,
    })
}

/// How one child ended.
fn verdict(status: std::process::ExitStatus, stderr: &str) -> (bool, String) {
    let detail = stderr.lines().last().unwrap_or("").trim().to_string();
    match (status.code(), status.signal()) {
        (Some(0), _) => (true, "succeeded".into()),
        (Some(SECCOMP_EXIT_STATUS), _) => (false, format!("killed by seccomp ({detail})")),
        (Some(EXIT_DENIED), _) => (false, detail),
        (Some(EXIT_SETUP_FAILED), _) => (false, format!("SETUP FAILED: {detail}")),
        (_, Some(libc::SIGSYS)) => (false, "killed by SIGSYS".into()),
        (code, signal) => (
            false,
            format!("ended oddly: code {code:?}, signal {signal:?}: {detail}"),
        ),
    }
}

/// Runs the whole self-test, printing one line per attempt; returns the process exit status (0 when
/// every forbidden attempt was denied and the allowed one succeeded).
pub fn run(policy: &Policy, args: &[String]) -> i32 {
    let state_dir_arg = args
        .iter()
        .position(|a| a == "--state-dir")
        .and_then(|i| args.get(i + 1))
        .map(|d| PathBuf::from(d).join("state"));
    let fixture = match prepare(policy, state_dir_arg) {
        Ok(f) => f,
        Err(e) => {
            println!("FAIL could not prepare the self-test: {e}");
            return 1;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            println!("FAIL cannot find my own binary: {e}");
            return 1;
        }
    };
    let as_root = rustix::process::geteuid().is_root();
    println!(
        "{} sandbox self-test{}",
        policy.kind.binary_name(),
        if as_root {
            " (running as root: attempts run as uid 65534, as workers do)"
        } else {
            ""
        }
    );

    let (mut total, mut denied, mut allowed, mut failures) = (0, 0, 0, 0);
    for pass in [Layers::All, Layers::AllButSeccomp] {
        if pass == Layers::AllButSeccomp {
            println!("-- again with every layer but seccomp: the layers beneath must hold on their own --");
        }
        for attempt in ATTEMPTS
            .iter()
            .filter(|a| (a.applies)(policy))
            .filter(|a| pass == Layers::All || a.beneath_seccomp || a.expect_allowed)
        {
            let mut cmd = Command::new(&exe);
            cmd.arg(ATTEMPT_FLAG)
                .arg(attempt.name)
                .args(fixture.ctx.to_args());
            if pass == Layers::AllButSeccomp {
                cmd.arg(WITHOUT_SECCOMP_ARG);
            }
            cmd.env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if as_root {
                cmd.uid(UNPRIVILEGED_ID).gid(UNPRIVILEGED_ID);
            }
            total += 1;
            let output = match cmd.output() {
                Ok(o) => o,
                Err(e) => {
                    println!("FAIL could not start the attempt {:?}: {e}", attempt.name);
                    failures += 1;
                    continue;
                }
            };
            let stderr = String::from_utf8_lossy(&output.stderr);
            let (succeeded, how) = verdict(output.status, &stderr);
            let setup_failed = how.starts_with("SETUP FAILED");
            match (attempt.expect_allowed, succeeded) {
                (false, false) if !setup_failed => {
                    denied += 1;
                    println!("PASS denied  {}: {how}", attempt.name);
                }
                (true, true) => {
                    allowed += 1;
                    println!("PASS allowed {}", attempt.name);
                }
                (false, true) => {
                    allowed += 1;
                    failures += 1;
                    println!("FAIL allowed {}", attempt.name);
                }
                _ => {
                    failures += 1;
                    println!("FAIL {}: {how}", attempt.name);
                }
            }
        }
    }
    println!("{total} attempts, {denied} denied, {allowed} allowed, {failures} failed");
    if failures == 0 {
        0
    } else {
        1
    }
}
