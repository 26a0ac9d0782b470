//! Tests of the broker's worker supervision with real processes: what a spawned child inherits
//! (fds, environment, uid, parent-death signal), reaping, restart backoff and crash loops,
//! shutdown within its deadline, recycling, and the LAN sockets reaching `lumen-net`.
//!
//! The broker is a binary crate, so this test crate compiles the supervision modules from their
//! source files. It is its own process on purpose: the supervisor reaps every child of its
//! process (`waitpid(-1)`), which must not race with other tests that wait for their own children.
//!
//! The workers here are stand-ins: `/bin/sh`, `/bin/sleep`, or this test binary re-run as a fake
//! worker ([`fake_worker`]) that speaks the real control protocol. The production path always
//! execs the real worker binaries; the whole-system tests in `tests/` run those.

#[allow(dead_code)]
#[path = "../src/procstatus.rs"]
mod procstatus;
#[allow(dead_code)]
#[path = "../src/sockets.rs"]
mod sockets;
#[allow(dead_code)]
#[path = "../src/spawn.rs"]
mod spawn;
#[allow(dead_code)]
#[path = "../src/supervisor/mod.rs"]
mod supervisor;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lumen_ipc::channel::Channel;
use lumen_ipc::msg::{
    BrokerMsg, Layer, SandboxReport, SocketRole, WorkerKind, WorkerMsg, CHANNEL_FD,
    WORKER_ENV_ALLOWLIST,
};
use rustix::process::{Pid, Signal};

use sockets::LanSockets;
use spawn::WorkerCommand;
use supervisor::backoff::RestartPolicy;
use supervisor::{Supervisor, WorkerStatus};

// ---------------------------------------------------------------------------------------------
// Helpers

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("lumen-supervisor-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).expect("scratch dir");
        Scratch(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn command(program: &str, args: &[&str]) -> WorkerCommand {
    WorkerCommand {
        program: program.into(),
        args: args.iter().map(OsString::from).collect(),
        env: Vec::new(),
        credentials: None,
    }
}

/// This test binary, re-run as a fake worker in `mode` (see [`fake_worker`]).
fn fake(mode: &str, kind: &str, out: Option<&Path>) -> WorkerCommand {
    let mut env = vec![
        ("LUMEN_FAKE_WORKER".into(), mode.into()),
        ("LUMEN_FAKE_KIND".into(), kind.into()),
    ];
    if let Some(out) = out {
        env.push(("LUMEN_FAKE_OUT".into(), out.as_os_str().to_owned()));
    }
    WorkerCommand {
        program: std::env::current_exe().expect("current_exe"),
        args: [
            "fake_worker",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        env,
        credentials: None,
    }
}

fn quick_policy() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(320),
        stable_after: Duration::from_secs(30),
        crash_loop_failures: 5,
        crash_loop_window: Duration::from_secs(60),
        ready_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_secs(2),
        ping_timeout: Duration::from_secs(10),
    }
}

fn status_of(supervisor: &Supervisor, kind: WorkerKind) -> WorkerStatus {
    supervisor
        .status()
        .into_iter()
        .find(|s| s.kind == kind)
        .expect("slot present")
}

/// Polls the status of `kind` until `ready` holds.
async fn wait_for(
    supervisor: &Supervisor,
    kind: WorkerKind,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&WorkerStatus) -> bool,
) -> WorkerStatus {
    let start = Instant::now();
    loop {
        let status = status_of(supervisor, kind);
        if ready(&status) {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; last status: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether `pid` exists at all (a zombie counts: it has not been reaped).
fn pid_present(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is alive (present and not a zombie).
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn kill(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid")).expect("pid");
    rustix::process::kill_process(pid, signal).expect("kill");
}

async fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_all(fd: OwnedFd) -> String {
    let mut text = String::new();
    std::fs::File::from(fd)
        .read_to_string(&mut text)
        .expect("read pipe");
    text
}

fn report() -> SandboxReport {
    SandboxReport {
        no_new_privs: Layer::On,
        capabilities_dropped: Layer::On,
        rlimits: Layer::On,
        not_dumpable: Layer::On,
        user_ns: Layer::Unavailable,
        mount_ns: Layer::Unavailable,
        pid_ns: Layer::Unavailable,
        ipc_ns: Layer::Unavailable,
        net_ns: Layer::NotInProfile,
        landlock_fs: Layer::On,
        landlock_net: Layer::On,
        landlock_scope: Layer::On,
        landlock_abi: 7,
        seccomp: Layer::On,
        seccomp_allowed_syscalls: 0,
        notes: vec!["fake worker of the supervisor tests".into()],
    }
}

// ---------------------------------------------------------------------------------------------
// The fake worker

fn parse_kind(name: &str) -> WorkerKind {
    match name {
        "capture" => WorkerKind::Capture,
        "encode" => WorkerKind::Encode,
        "net" => WorkerKind::Net,
        _ => WorkerKind::Input,
    }
}

fn append(out: &Option<String>, line: &str) {
    if let Some(out) = out {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .expect("open out file");
        writeln!(file, "{line}").expect("write out file");
    }
}

/// Not a test: this binary runs it as a worker stand-in (with `LUMEN_FAKE_WORKER` set) that
/// speaks the real protocol on fd 3. Run directly, without that variable, it does nothing.
#[test]
#[ignore = "run by the other tests as a fake worker process"]
fn fake_worker() {
    let Ok(mode) = std::env::var("LUMEN_FAKE_WORKER") else {
        return;
    };
    let out = std::env::var("LUMEN_FAKE_OUT").ok();
    let kind = parse_kind(&std::env::var("LUMEN_FAKE_KIND").unwrap_or_default());

    if mode == "intermediate" {
        // Starts a grandchild through the broker's spawn path, reports its pid, then waits to be
        // killed: the grandchild must die with it (parent-death signal).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let spawned = runtime
            .block_on(spawn::spawn(WorkerCommand {
                credentials: if rustix::process::geteuid().is_root() {
                    Some((65534, 65534))
                } else {
                    None
                },
                ..command("/bin/sleep", &["1000"])
            }))
            .expect("spawn grandchild");
        append(&out, &spawned.pid.as_raw_nonzero().to_string());
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    // SAFETY: the broker's spawn path put this process's control channel at fd 3 and nothing else
    // in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    let mut channel = Channel::from_fd(fd).expect("fd 3 is the control channel");
    let ready_kind = match (mode.as_str(), kind) {
        ("wrong-kind", WorkerKind::Net) => WorkerKind::Capture,
        ("wrong-kind", _) => WorkerKind::Net,
        _ => kind,
    };
    channel
        .send(
            &WorkerMsg::Ready {
                kind: ready_kind,
                sandbox: report(),
            },
            &[],
        )
        .expect("send Ready");
    println!("fake {mode} worker ready");
    if mode == "net-request" {
        channel
            .send(
                &WorkerMsg::NetRequest {
                    id: 5,
                    request: lumen_ipc::net_msg::NetRequest::TlsSign {
                        scheme: 0x0804,
                        message: vec![1, 2, 3],
                    },
                },
                &[],
            )
            .expect("send NetRequest");
    }
    if mode == "net-stats" {
        channel
            .send(
                &WorkerMsg::NetStats(Box::new(lumen_ipc::net_msg::NetStats {
                    stream: 1,
                    active: true,
                    counters: lumen_ipc::net_msg::NetCounters {
                        fec_recovered_frames: 9,
                        ..Default::default()
                    },
                    rtsp: Default::default(),
                    http: Default::default(),
                })),
                &[],
            )
            .expect("send NetStats");
    }
    match mode.as_str() {
        "ignore-shutdown" | "wrong-kind" => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        "flood" => {
            // Several threads, as fast as the socket takes them: the broker must still serve
            // everything else.
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    scope.spawn(
                        || {
                            while channel.send(&WorkerMsg::Pong { seq: 0 }, &[]).is_ok() {}
                        },
                    );
                }
            });
            std::process::exit(3);
        }
        "garbage" => {
            rustix::io::write(&channel, b"\xff\xffnot a message").expect("write garbage");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        _ => {}
    }
    loop {
        let received = match channel.recv::<BrokerMsg>() {
            Ok(received) => received,
            Err(e) => {
                eprintln!("fake worker: {e}");
                std::process::exit(2);
            }
        };
        match received.msg {
            BrokerMsg::Shutdown => std::process::exit(0),
            BrokerMsg::Ping { seq } => channel
                .send(&WorkerMsg::Pong { seq }, &[])
                .expect("send Pong"),
            BrokerMsg::NetSockets { roles } => {
                let mut line = String::new();
                for (role, fd) in roles.iter().zip(&received.fds) {
                    let addr = rustix::net::getsockname(fd).expect("getsockname");
                    let addr = SocketAddr::try_from(addr).expect("inet");
                    line.push_str(&format!("{role:?}={} ", addr.port()));
                }
                append(&out, line.trim_end());
            }
            BrokerMsg::StartCapture { generation, .. }
            | BrokerMsg::StartEncode { generation, .. } => {
                append(
                    &out,
                    &format!("start generation={generation} fds={}", received.fds.len()),
                );
                channel
                    .send(&WorkerMsg::SessionStarted { generation }, &[])
                    .expect("send SessionStarted");
            }
            BrokerMsg::StopSession => append(&out, "stop"),
            BrokerMsg::NetIdentity(identity) => {
                append(&out, &format!("identity {}", identity.uniqueid))
            }
            BrokerMsg::NetReply { id, reply } => append(&out, &format!("reply {id} {reply:?}")),
            BrokerMsg::StreamRings { generation } => append(
                &out,
                &format!("rings generation={generation} fds={}", received.fds.len()),
            ),
            msg @ (BrokerMsg::InputChannel
            | BrokerMsg::InputDevices { .. }
            | BrokerMsg::NetMdns(_)) => {
                append(&out, &format!("{msg:?} fds={}", received.fds.len()))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Spawn: what the child gets

#[tokio::test]
async fn spawned_child_has_only_fds_0_to_3() {
    // A leaky fd in the parent: not close-on-exec.
    let leaky = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .expect("open");
    assert!(rustix::io::fcntl_getfd(&leaky).expect("getfd").is_empty());

    let child = spawn::spawn(command("/bin/sleep", &["30"]))
        .await
        .expect("spawn");
    let pid = child.pid.as_raw_nonzero().get();
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list fds")
        .map(|e| {
            e.expect("entry")
                .file_name()
                .to_string_lossy()
                .parse()
                .expect("fd number")
        })
        .collect();
    fds.sort_unstable();
    assert_eq!(fds, [0, 1, 2, 3], "the child must hold only fds 0-3");
    let link = |fd: u32| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .expect("readlink")
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(link(0), "/dev/null");
    assert!(link(1).starts_with("pipe:"), "{}", link(1));
    assert!(link(2).starts_with("pipe:"), "{}", link(2));
    assert!(link(3).starts_with("socket:"), "{}", link(3));
    drop(leaky);

    rustix::process::pidfd_send_signal(&child.pidfd, Signal::KILL).expect("kill");
    let mut exit = child.exit;
    supervisor::reaper::reap_all();
    let status = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            supervisor::reaper::reap_all();
            if let Some(status) = exit.try_get() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("reaped");
    assert_eq!(status.to_string(), "killed by signal 9 (SIGKILL)");
    assert!(!pid_present(pid.unsigned_abs()), "reaped: no zombie");
}

#[tokio::test]
async fn spawned_child_sees_only_allowlisted_environment() {
    // The production command takes this process's environment through the allowlist; cargo
    // sets plenty of variables (PATH, CARGO_*, HOME...) that must not get through.
    assert!(std::env::var_os("PATH").is_some());
    let mut cmd = WorkerCommand::worker(Path::new("/"), WorkerKind::Net, false, false, None);
    cmd.program = "/usr/bin/env".into();
    cmd.args.clear();
    let child = spawn::spawn(cmd).await.expect("spawn env");
    let text = tokio::task::spawn_blocking(move || read_all(child.stdout))
        .await
        .expect("join");
    for line in text.lines() {
        let name = line.split('=').next().unwrap_or_default();
        assert!(
            WORKER_ENV_ALLOWLIST.contains(&name),
            "{name} leaked into the worker's environment: {text}"
        );
    }

    // And the allowlist itself keeps exactly the allowed names.
    let kept = spawn::allowlisted_env(
        [
            ("RUST_LOG", "debug"),
            ("SECRET_TOKEN", "x"),
            ("LUMEN_LOG", "info"),
            ("PATH", "/bin"),
            ("RUST_LOGX", "no"),
        ]
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    assert_eq!(
        kept,
        vec![
            (OsString::from("RUST_LOG"), OsString::from("debug")),
            (OsString::from("LUMEN_LOG"), OsString::from("info")),
        ]
    );
}

#[tokio::test]
async fn production_command_runs_the_worker_binary_with_its_flags() {
    let cmd = WorkerCommand::worker(
        Path::new("/opt/lumen"),
        WorkerKind::Encode,
        true,
        true,
        Some((7, 8)),
    );
    assert_eq!(cmd.program, Path::new("/opt/lumen/lumen-encode"));
    assert_eq!(
        cmd.args,
        [
            "--worker",
            "--insecure-allow-missing-seccomp",
            "--insecure-allow-missing-landlock"
        ]
        .map(OsString::from)
    );
    assert_eq!(cmd.credentials, Some((7, 8)));
    let plain = WorkerCommand::worker(Path::new("/opt/lumen"), WorkerKind::Net, false, false, None);
    assert_eq!(plain.args, [OsString::from("--worker")]);
}

#[tokio::test]
async fn a_root_broker_starts_workers_as_the_unprivileged_uid() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: switching uids needs root");
        return;
    }
    let child = spawn::spawn(WorkerCommand {
        credentials: Some((65534, 65534)),
        ..command("/bin/cat", &["/proc/self/status"])
    })
    .await
    .expect("spawn cat");
    let text = tokio::task::spawn_blocking(move || read_all(child.stdout))
        .await
        .expect("join");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid"), ["65534"; 4]);
    assert_eq!(field("Gid"), ["65534"; 4]);
    assert!(field("Groups").is_empty(), "supplementary groups dropped");
}

#[tokio::test]
async fn a_worker_dies_when_its_parent_dies() {
    // Orphans of this test come to this process (not to PID 1, which may not reap them), and the
    // supervisor's reaper, which reaps every child, collects them.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");
    let scratch = Scratch::new("pdeathsig");
    let out = scratch.file("grandchild");
    // The intermediate is a process running the broker's spawn path; its child is the "worker".
    let intermediate = spawn::spawn(fake("intermediate", "input", Some(&out)))
        .await
        .expect("spawn intermediate");
    wait_until(Duration::from_secs(10), "the grandchild's pid", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.ends_with('\n'))
    })
    .await;
    let grandchild: u32 = std::fs::read_to_string(&out)
        .expect("read")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        pid_alive(grandchild),
        "grandchild runs while its parent does"
    );

    rustix::process::pidfd_send_signal(&intermediate.pidfd, Signal::KILL).expect("kill");
    wait_until(
        Duration::from_secs(5),
        "the grandchild to die and be reaped",
        || {
            supervisor::reaper::reap_all();
            !pid_present(grandchild)
        },
    )
    .await;
    let mut exit = intermediate.exit;
    wait_until(
        Duration::from_secs(5),
        "the intermediate to be reaped",
        || {
            supervisor::reaper::reap_all();
            exit.try_get().is_some()
        },
    )
    .await;
}

#[tokio::test]
async fn a_missing_program_is_an_error_naming_it() {
    let err = spawn::spawn(command("/nonexistent/lumen-net", &[]))
        .await
        .expect_err("no such program");
    assert!(err.to_string().contains("/nonexistent/lumen-net"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Supervision

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_worker_backs_off_and_is_marked_failing() {
    init_logs();
    let scratch = Scratch::new("crashloop");
    let starts = scratch.file("starts");
    let script = format!("/bin/date +%s%N >> {}; exit 3", starts.display());
    let supervisor = Supervisor::start_with(
        vec![(WorkerKind::Capture, command("/bin/sh", &["-c", &script]))],
        None,
        quick_policy(),
    )
    .expect("start");

    let failing = wait_for(
        &supervisor,
        WorkerKind::Capture,
        Duration::from_secs(10),
        "the crash loop to be reported",
        |s| s.state == "failing" && s.restarts >= 8,
    )
    .await;
    assert_eq!(failing.last_exit.as_deref(), Some("exit 3"));
    supervisor.shutdown(Duration::from_secs(1)).await;

    let times: Vec<u128> = std::fs::read_to_string(&starts)
        .expect("starts")
        .lines()
        .map(|l| l.trim().parse().expect("timestamp"))
        .collect();
    assert!(times.len() >= 8, "{times:?}");
    // The n-th restart waits at least 20 ms · 2^n, capped at 320 ms; from the fifth failure on
    // (the crash loop) every retry waits the maximum.
    let expected_ms = [20u128, 40, 80, 160, 320, 320, 320];
    for (i, want) in expected_ms.iter().enumerate() {
        let gap_ms = (times[i + 1] - times[i]) / 1_000_000;
        assert!(
            gap_ms >= *want,
            "restart {i} came after {gap_ms} ms, expected at least {want} ms; starts: {times:?}"
        );
    }
    // Never a hot loop: in the time it took, far fewer starts than a tight loop would make.
    let span_ms = (times[times.len() - 1] - times[0]) / 1_000_000;
    assert!(times.len() <= 2 + (span_ms / 20) as usize, "{times:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_is_reaped_and_restarted() {
    init_logs();
    let supervisor = Supervisor::start_with(
        vec![(WorkerKind::Capture, fake("serve", "capture", None))],
        None,
        quick_policy(),
    )
    .expect("start");
    let first = wait_for(
        &supervisor,
        WorkerKind::Capture,
        Duration::from_secs(10),
        "the worker to run",
        |s| s.state == "running",
    )
    .await;
    let old = first.pid.expect("pid");
    assert_eq!(first.sandbox, Some(report()), "the worker's report is kept");
    let verified = first.verified.expect("the broker reads /proc itself");
    assert_eq!(verified.seccomp_mode, 0, "the fake worker has no seccomp");
    assert_eq!(verified.own_net_ns, Some(false));

    kill(old, Signal::KILL);
    let second = wait_for(
        &supervisor,
        WorkerKind::Capture,
        Duration::from_secs(10),
        "the worker to come back",
        |s| s.state == "running" && s.pid.is_some_and(|p| p != old),
    )
    .await;
    assert_eq!(second.restarts, 1);
    assert_eq!(
        second.last_exit.as_deref(),
        Some("killed by signal 9 (SIGKILL)")
    );
    assert!(!pid_present(old), "the killed worker was reaped, no zombie");
    supervisor.shutdown(Duration::from_secs(1)).await;
}

/// `is_running` is what the broker checks before handing out a channel between two workers: a
/// worker that never said Ready, or is not supervised at all, must not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_worker_that_said_ready_counts_as_running() {
    init_logs();
    let supervisor = Supervisor::start_with(
        vec![
            (WorkerKind::Capture, fake("serve", "capture", None)),
            (WorkerKind::Encode, command("/bin/sh", &["-c", "exit 3"])),
        ],
        None,
        quick_policy(),
    )
    .expect("start");
    wait_for(
        &supervisor,
        WorkerKind::Capture,
        Duration::from_secs(10),
        "the worker to run",
        |s| s.state == "running",
    )
    .await;
    assert!(supervisor.is_running(WorkerKind::Capture));
    wait_for(
        &supervisor,
        WorkerKind::Encode,
        Duration::from_secs(10),
        "the crashing worker to be restarted",
        |s| s.restarts >= 2,
    )
    .await;
    assert!(
        !supervisor.is_running(WorkerKind::Encode),
        "never said Ready"
    );
    assert!(!supervisor.is_running(WorkerKind::Input), "not supervised");
    supervisor.shutdown(Duration::from_secs(1)).await;
    assert!(!supervisor.is_running(WorkerKind::Capture), "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_meets_its_deadline_even_when_a_worker_ignores_it() {
    init_logs();
    let supervisor = Supervisor::start_with(
        vec![
            (WorkerKind::Capture, fake("serve", "capture", None)),
            (WorkerKind::Encode, fake("ignore-shutdown", "encode", None)),
            (WorkerKind::Input, command("/bin/sh", &["-c", "exit 1"])),
        ],
        None,
        quick_policy(),
    )
    .expect("start");
    let mut pids = Vec::new();
    for kind in [WorkerKind::Capture, WorkerKind::Encode] {
        let status = wait_for(&supervisor, kind, Duration::from_secs(10), "running", |s| {
            s.state == "running"
        })
        .await;
        pids.push(status.pid.expect("pid"));
    }

    let deadline = Duration::from_millis(800);
    let start = Instant::now();
    supervisor.shutdown(deadline).await;
    let took = start.elapsed();
    assert!(
        took <= deadline + Duration::from_millis(100),
        "took {took:?}"
    );
    for pid in pids {
        assert!(!pid_present(pid), "pid {pid} still present after shutdown");
    }
    let statuses = supervisor.status();
    for status in &statuses {
        assert_eq!(status.state, "stopped", "{status:?}");
        assert_eq!(status.pid, None);
    }
    let by_kind = |kind| {
        statuses
            .iter()
            .find(|s| s.kind == kind)
            .and_then(|s| s.last_exit.clone())
    };
    assert_eq!(by_kind(WorkerKind::Capture).as_deref(), Some("exit 0"));
    assert_eq!(
        by_kind(WorkerKind::Encode).as_deref(),
        Some("killed by signal 9 (SIGKILL); killed at shutdown")
    );
    // A second call has nothing left to do.
    let again = Instant::now();
    supervisor.shutdown(deadline).await;
    assert!(again.elapsed() < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_that_answers_no_ping_is_killed_and_restarted() {
    init_logs();
    let policy = RestartPolicy {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(400),
        ..quick_policy()
    };
    let supervisor = Supervisor::start_with(
        vec![
            // Ready, then never reads its channel again.
            (
                WorkerKind::Capture,
                fake("ignore-shutdown", "capture", None),
            ),
            // Ready, and answers every ping.
            (WorkerKind::Encode, fake("normal", "encode", None)),
        ],
        None,
        policy,
    )
    .expect("start");
    let status = wait_for(
        &supervisor,
        WorkerKind::Capture,
        Duration::from_secs(10),
        "the hung worker to be restarted",
        |s| s.restarts >= 1,
    )
    .await;
    let last = status.last_exit.unwrap_or_default();
    assert!(last.contains("hung: no answer to a ping"), "{last}");
    // The one that answers stays up, untouched.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let encode = status_of(&supervisor, WorkerKind::Encode);
    assert_eq!(encode.restarts, 0, "{encode:?}");
    assert_eq!(encode.state, "running");
    supervisor.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_breaks_the_protocol_is_killed_and_restarted() {
    init_logs();
    let policy = RestartPolicy {
        ready_timeout: Duration::from_millis(300),
        ..quick_policy()
    };
    let supervisor = Supervisor::start_with(
        vec![
            (WorkerKind::Capture, fake("garbage", "capture", None)),
            (WorkerKind::Encode, fake("wrong-kind", "encode", None)),
            (WorkerKind::Input, command("/bin/sleep", &["100"])),
        ],
        None,
        policy,
    )
    .expect("start");
    for (kind, reason) in [
        (WorkerKind::Capture, "sent a malformed message"),
        (WorkerKind::Encode, "claimed to be Net"),
        (WorkerKind::Input, "no Ready within 300ms"),
    ] {
        let status = wait_for(&supervisor, kind, Duration::from_secs(10), reason, |s| {
            s.restarts >= 1
        })
        .await;
        let last = status.last_exit.unwrap_or_default();
        assert!(
            last.starts_with("killed by signal 9 (SIGKILL); ") && last.contains(reason),
            "{kind:?}: {last}"
        );
    }
    supervisor.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycle_replaces_a_warm_worker_with_a_fresh_one() {
    init_logs();
    let supervisor = Supervisor::start_with(
        vec![(WorkerKind::Encode, fake("serve", "encode", None))],
        None,
        quick_policy(),
    )
    .expect("start");
    let before = wait_for(
        &supervisor,
        WorkerKind::Encode,
        Duration::from_secs(10),
        "running",
        |s| s.state == "running",
    )
    .await;
    let old = before.pid.expect("pid");
    tokio::time::timeout(
        Duration::from_secs(10),
        supervisor.recycle(WorkerKind::Encode),
    )
    .await
    .expect("recycle in time")
    .expect("recycle");
    let after = status_of(&supervisor, WorkerKind::Encode);
    assert_eq!(after.state, "running");
    assert!(after.pid.is_some_and(|p| p != old), "{after:?}");
    assert_eq!(after.restarts, 0, "a recycle is no failure");
    assert!(!pid_present(old), "the old worker is gone and reaped");
    assert!(
        supervisor.recycle(WorkerKind::Net).await.is_err(),
        "no such slot"
    );
    supervisor.shutdown(Duration::from_secs(1)).await;
    assert!(supervisor.recycle(WorkerKind::Encode).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_gets_the_same_sockets_after_every_restart() {
    init_logs();
    let scratch = Scratch::new("net");
    let out = scratch.file("sockets");
    let mut bound = None;
    for attempt in 0..50u16 {
        let base = 40_005 + (std::process::id() % 200) as u16 * 40 + attempt * 40;
        if let Ok(sockets) = LanSockets::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), base, false) {
            bound = Some(sockets);
            break;
        }
    }
    let sockets = bound.expect("a free port base");
    let expected: Vec<String> = sockets
        .ports()
        .iter()
        .map(|(role, port)| format!("{role:?}={port}"))
        .collect();
    let expected = expected.join(" ");
    let supervisor = Supervisor::start_with(
        vec![(WorkerKind::Net, fake("serve", "net", Some(&out)))],
        Some(sockets),
        quick_policy(),
    )
    .expect("start");
    let lines = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(10), "net to get its sockets", || {
        lines().len() == 1
    })
    .await;
    let first = status_of(&supervisor, WorkerKind::Net).pid.expect("pid");
    kill(first, Signal::KILL);
    wait_until(
        Duration::from_secs(10),
        "a restarted net to get them",
        || lines().len() == 2,
    )
    .await;
    assert_eq!(lines(), [expected.clone(), expected]);
    assert!(lines()[0].contains(&format!("{:?}=", SocketRole::Audio)));
    supervisor.shutdown(Duration::from_secs(1)).await;
}

async fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<supervisor::WorkerEvent>,
) -> supervisor::WorkerEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event in time")
        .expect("events open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_messages_reach_a_ready_worker_and_its_reports_come_back() {
    init_logs();
    let scratch = Scratch::new("session");
    let out = scratch.file("session");
    let supervisor = Supervisor::start_with(
        vec![(WorkerKind::Capture, fake("serve", "capture", Some(&out)))],
        None,
        quick_policy(),
    )
    .expect("start");
    let mut events = supervisor.take_events().expect("events");
    assert!(supervisor.take_events().is_none(), "only one taker");
    assert!(matches!(
        next_event(&mut events).await,
        supervisor::WorkerEvent::Ready {
            kind: WorkerKind::Capture
        }
    ));
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let msg = BrokerMsg::StartEncode {
        params: lumen_ipc::media::SessionParams {
            width: 640,
            height: 360,
            fps: 30,
            bitrate_kbps: 1000,
            codec: lumen_ipc::media::VideoCodec::H264,
            audio: lumen_ipc::media::AudioLayout::Stereo,
            audio_packet_ms: 5,
        },
        pool: lumen_ipc::media::FramePoolSpec {
            slots: 2,
            slot_bytes: 4096,
        },
        generation: 42,
    };
    supervisor
        .send(WorkerKind::Capture, msg, vec![memfd])
        .expect("queued");
    match next_event(&mut events).await {
        supervisor::WorkerEvent::Session {
            kind: WorkerKind::Capture,
            msg: WorkerMsg::SessionStarted { generation: 42 },
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&out).unwrap_or_default().trim(),
        "start generation=42 fds=1"
    );
    assert!(supervisor
        .send(WorkerKind::Net, BrokerMsg::StopSession, Vec::new())
        .is_err());
    // A killed worker shows as Exited, and its successor as Ready again.
    let pid = status_of(&supervisor, WorkerKind::Capture)
        .pid
        .expect("pid");
    kill(pid, Signal::KILL);
    assert!(matches!(
        next_event(&mut events).await,
        supervisor::WorkerEvent::Exited {
            kind: WorkerKind::Capture
        }
    ));
    assert!(matches!(
        next_event(&mut events).await,
        supervisor::WorkerEvent::Ready {
            kind: WorkerKind::Capture
        }
    ));
    supervisor.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_lumen_net_may_ask_the_broker_for_secrets() {
    init_logs();
    let scratch = Scratch::new("netreq");
    let out = scratch.file("net");
    let supervisor = Supervisor::start_with(
        vec![
            (WorkerKind::Net, fake("net-request", "net", Some(&out))),
            (WorkerKind::Capture, fake("net-request", "capture", None)),
        ],
        None,
        quick_policy(),
    )
    .expect("start");
    let mut events = supervisor.take_events().expect("events");
    let mut got_request = false;
    let mut capture_killed = false;
    while !(got_request && capture_killed) {
        match next_event(&mut events).await {
            supervisor::WorkerEvent::NetRequest { id: 5, request } => {
                assert!(matches!(
                    request,
                    lumen_ipc::net_msg::NetRequest::TlsSign { scheme: 0x0804, .. }
                ));
                got_request = true;
                supervisor
                    .send(
                        WorkerKind::Net,
                        BrokerMsg::NetReply {
                            id: 5,
                            reply: lumen_ipc::net_msg::NetReply::Refused("test".into()),
                        },
                        Vec::new(),
                    )
                    .expect("queued");
            }
            supervisor::WorkerEvent::Exited {
                kind: WorkerKind::Capture,
            } => capture_killed = true,
            supervisor::WorkerEvent::NetRequest { .. } => panic!("unexpected request"),
            _ => {}
        }
    }
    wait_until(Duration::from_secs(10), "net to get its reply", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("reply 5 Refused(\"test\")")
    })
    .await;
    let capture = status_of(&supervisor, WorkerKind::Capture);
    assert!(
        capture
            .last_exit
            .as_deref()
            .is_some_and(|e| e.contains("net request")),
        "{capture:?}"
    );
    supervisor.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_lumen_net_may_report_stream_statistics() {
    init_logs();
    let supervisor = Supervisor::start_with(
        vec![
            (WorkerKind::Net, fake("net-stats", "net", None)),
            (WorkerKind::Encode, fake("net-stats", "encode", None)),
        ],
        None,
        quick_policy(),
    )
    .expect("start");
    let mut events = supervisor.take_events().expect("events");
    let mut got_stats = false;
    let mut encode_killed = false;
    while !(got_stats && encode_killed) {
        match next_event(&mut events).await {
            supervisor::WorkerEvent::Session {
                kind,
                msg: WorkerMsg::NetStats(stats),
            } => {
                assert_eq!(kind, WorkerKind::Net, "passed on from {kind:?}");
                assert_eq!(stats.counters.fec_recovered_frames, 9);
                got_stats = true;
            }
            supervisor::WorkerEvent::Exited {
                kind: WorkerKind::Encode,
            } => encode_killed = true,
            supervisor::WorkerEvent::Exited {
                kind: WorkerKind::Net,
            } => panic!("lumen-net was stopped for its statistics"),
            _ => {}
        }
    }
    let encode = status_of(&supervisor, WorkerKind::Encode);
    assert!(
        encode
            .last_exit
            .as_deref()
            .is_some_and(|e| e.contains("stream statistics")),
        "{encode:?}"
    );
    supervisor.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn start_refuses_a_missing_worker_binary() {
    let sockets = {
        let mut bound = None;
        for attempt in 0..50u16 {
            let base = 45_005 + (std::process::id() % 200) as u16 * 40 + attempt * 40;
            if let Ok(s) = LanSockets::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), base, false) {
                bound = Some(s);
                break;
            }
        }
        bound.expect("a free port base")
    };
    let err = Supervisor::start(
        supervisor::SupervisorConfig {
            worker_dir: "/nonexistent-lumen".into(),
            allow_missing_seccomp: false,
            allow_missing_landlock: false,
            worker_uid: Some((65534, 65534)),
        },
        sockets,
    )
    .await
    .err()
    .expect("must fail");
    assert!(
        err.to_string().contains("/nonexistent-lumen/lumen-"),
        "{err}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_flooding_worker_does_not_starve_the_others() {
    init_logs();
    let supervisor = Supervisor::start_with(
        vec![
            (WorkerKind::Net, fake("flood", "net", None)),
            (WorkerKind::Capture, fake("serve", "capture", None)),
        ],
        None,
        quick_policy(),
    )
    .expect("start");
    for kind in [WorkerKind::Net, WorkerKind::Capture] {
        wait_for(&supervisor, kind, Duration::from_secs(10), "running", |s| {
            s.state == "running"
        })
        .await;
    }
    // One runtime thread, one worker sending without pause: the other is still supervised.
    let old = status_of(&supervisor, WorkerKind::Capture)
        .pid
        .expect("pid");
    kill(old, Signal::KILL);
    wait_for(
        &supervisor,
        WorkerKind::Capture,
        Duration::from_secs(10),
        "capture to come back beside the flood",
        |s| s.state == "running" && s.pid.is_some_and(|p| p != old),
    )
    .await;
    let start = Instant::now();
    supervisor.shutdown(Duration::from_secs(1)).await;
    assert!(start.elapsed() < Duration::from_millis(1100));
}
