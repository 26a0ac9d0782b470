//! The layers behind seccomp, proven on their own.
//!
//! In the workers' profiles seccomp stops `socket`, `bind`, `connect`, `openat` and `kill` before any
//! other layer is asked, so the self-test only ever sees seccomp refuse them. This test enters the
//! production [`lockdown`] with a probe policy whose seccomp allowlist lets exactly those calls
//! through, and checks that the next layers still refuse them: Landlock's TCP rules (bind and
//! connect, on a socket of its own and on one handed in like `lumen-net`'s), Landlock's filesystem
//! rules (listing the root), and Landlock's signal scope (signalling a process of the same uid outside
//! the sandbox, which plain DAC would allow).
//!
//! `harness = false`: the probe child must be single-threaded to enter a user namespace, so this
//! file is its own `main` and re-executes itself for the child side.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

use lumen_ipc::msg::{Layer, WorkerKind};
use lumen_ipc::sandbox::seccomp::{allow, rust_runtime};
use lumen_ipc::sandbox::{lockdown, Options, Policy};

const CHILD_FLAG: &str = "--landlock-probe-child";
const UNPRIVILEGED_ID: u32 = 65534;
/// Where the parent puts the unconnected TCP socket it hands to the child.
const HANDED_FD: i32 = 10;

fn probe_policy() -> Policy {
    let mut syscalls = rust_runtime();
    syscalls.extend([
        allow(
            libc::SYS_socket,
            "socket",
            "probe: reach Landlock's TCP rules",
        ),
        allow(libc::SYS_bind, "bind", "probe: reach Landlock's TCP rules"),
        allow(
            libc::SYS_connect,
            "connect",
            "probe: reach Landlock's TCP rules",
        ),
        allow(
            libc::SYS_openat,
            "openat",
            "probe: reach Landlock's filesystem rules",
        ),
        allow(
            libc::SYS_kill,
            "kill",
            "probe: reach Landlock's signal scope",
        ),
    ]);
    Policy {
        kind: WorkerKind::Net,
        own_network_namespace: false,
        deny_tcp_bind_connect: true,
        max_fds: 64,
        max_threads: 0,
        syscalls,
        soft_denied: Vec::new(),
        max_file_bytes: 0,
    }
}

fn errno_of(rc: libc::c_int) -> Result<(), i32> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
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

fn bind_any(fd: i32) -> Result<(), i32> {
    let addr = loopback(0);
    // SAFETY: `addr` is a valid sockaddr_in on our stack, its size passed with it.
    errno_of(unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
}

fn connect_to(fd: i32, port: u16) -> Result<(), i32> {
    let addr = loopback(port);
    // SAFETY: as in bind_any.
    errno_of(unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
}

fn new_tcp_socket() -> Result<i32, i32> {
    // SAFETY: socket(2) takes integers only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(fd)
    }
}

/// The child: production lock-down with the probe policy, then one line per probe.
fn child(port: u16, sibling: i32) -> ExitCode {
    let report = match lockdown(&probe_policy(), &Options::default()) {
        Ok(report) => report,
        Err(e) => {
            println!("SETUP lockdown failed: {e}");
            return ExitCode::from(4);
        }
    };
    if report.landlock_net != Layer::On || report.landlock_scope != Layer::On {
        println!("SETUP Landlock layers missing: {report:?}");
        return ExitCode::from(5);
    }
    let mut results: Vec<(&str, Result<(), i32>, i32)> = Vec::new();
    match new_tcp_socket() {
        Ok(fd) => {
            results.push(("bind a new TCP socket", bind_any(fd), libc::EACCES));
            results.push((
                "connect a new TCP socket",
                connect_to(fd, port),
                libc::EACCES,
            ));
        }
        Err(e) => println!("SETUP socket() failed: errno {e}"),
    }
    results.push((
        "bind the handed TCP socket",
        bind_any(HANDED_FD),
        libc::EACCES,
    ));
    results.push((
        "connect the handed TCP socket",
        connect_to(HANDED_FD, port),
        libc::EACCES,
    ));
    // SAFETY: openat(2) with a constant path; the fd, if any, is closed at once.
    let root = unsafe {
        libc::openat(
            libc::AT_FDCWD,
            c"/".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    let root_result = if root >= 0 {
        // SAFETY: `root` is the fd just opened and owned by nobody else.
        unsafe { libc::close(root) };
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    };
    results.push(("list the root directory", root_result, libc::EACCES));
    // SAFETY: kill(2) with signal 0 only checks permission; it delivers nothing.
    results.push((
        "signal a same-uid process outside the sandbox",
        errno_of(unsafe { libc::kill(sibling, 0) }),
        libc::EPERM,
    ));

    let mut all_denied = results.len() == 6;
    for (what, result, want) in results {
        match result {
            Err(errno) if errno == want => println!("DENIED {what}: errno {errno}"),
            Err(errno) => {
                all_denied = false;
                println!("WRONG {what}: errno {errno}, expected {want}");
            }
            Ok(()) => {
                all_denied = false;
                println!("ALLOWED {what}");
            }
        }
    }
    if all_denied {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Moves `fd` to `target` in a forked child before exec (dup2 clears close-on-exec).
fn place_fd(command: &mut Command, fd: &OwnedFd, target: i32) {
    let raw = fd.as_raw_fd();
    // SAFETY: the closure only calls dup2/fcntl, async-signal-safe, in the forked child.
    unsafe {
        command.pre_exec(move || {
            let rc = if raw == target {
                libc::fcntl(target, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, target)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn parent() -> Result<(), String> {
    let as_root = rustix::process::geteuid().is_root();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    // SAFETY: socket(2) takes integers only; the fd is wrapped into an OwnedFd at once.
    let handed = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if handed < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `handed` is a fresh fd nobody else owns.
    let handed = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(handed) };

    // A process with the probe's own uid, outside its sandbox: only Landlock's scope keeps the
    // probe from signalling it.
    let mut sibling = Command::new("sleep");
    sibling.arg("60").stdin(Stdio::null());
    if as_root {
        sibling.uid(UNPRIVILEGED_ID).gid(UNPRIVILEGED_ID);
    }
    let mut sibling = sibling.spawn().map_err(|e| format!("spawn sleep: {e}"))?;

    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut probe = Command::new(exe);
    probe
        .args([CHILD_FLAG, &port.to_string(), &sibling.id().to_string()])
        .env_clear()
        .stdin(Stdio::null());
    if as_root {
        probe.uid(UNPRIVILEGED_ID).gid(UNPRIVILEGED_ID);
    }
    place_fd(&mut probe, &handed, HANDED_FD);
    let output = probe.output().map_err(|e| format!("spawn probe: {e}"));
    let _ = sibling.kill();
    let _ = sibling.wait();
    let output = output?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    drop(listener);
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("probe child: {:?}", output.status))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD_FLAG) {
        let port = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        let sibling: i32 = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(0);
        if port == 0 || sibling <= 0 {
            println!("SETUP usage: {CHILD_FLAG} PORT SIBLING_PID");
            return ExitCode::from(2);
        }
        return child(port, sibling);
    }
    // `cargo test -- --list` and filters: there is a single check here, run unless listing.
    if args.iter().any(|a| a == "--list") {
        println!("landlock_layers_refuse_what_seccomp_would_let_through: test");
        return ExitCode::SUCCESS;
    }
    println!("running 1 test (landlock layers behind seccomp)");
    match parent() {
        Ok(()) => {
            println!("test landlock_layers_refuse_what_seccomp_would_let_through ... ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("test landlock_layers_refuse_what_seccomp_would_let_through ... FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
