//! Evidence from outside that a worker started the way the broker starts it is really locked down,
//! and that its main loop keeps the worker protocol.
//!
//! Each test starts a real worker binary (`target/debug/lumen-<kind>`, built by
//! `cargo build --workspace`) with `--worker`, the control channel at fd 3 and, when the test runs as
//! root, uid/gid 65534 as the broker would give it. It then reads what the kernel says about the
//! worker in `/proc/<pid>/status` and `/proc/<pid>/ns/net` rather than trusting the worker's own
//! `Ready` report, and drives its main loop through `Ping`, a wrong message and `Shutdown`.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::msg::{
    BrokerMsg, Layer, SocketRole, WorkerKind, WorkerMsg, CHANNEL_FD, WORKER_FLAG,
};

const UNPRIVILEGED_ID: u32 = 65534;
const WAIT: Duration = Duration::from_secs(20);

/// Where cargo put the worker binaries: next to the `deps/` folder holding this test executable.
fn worker_binary(kind: WorkerKind) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(kind.binary_name());
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        path.display()
    );
    path
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A worker started as the broker starts it, with our end of its channel.
struct Worker {
    child: Child,
    channel: Channel,
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_worker(kind: WorkerKind) -> Worker {
    let (ours, theirs) = Channel::pair().expect("channel pair");
    let theirs_fd = theirs.as_raw_fd();
    let mut command = Command::new(worker_binary(kind));
    command
        .arg(WORKER_FLAG)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if running_as_root() {
        // As the broker does: a worker never runs as uid 0 on the host.
        command.uid(UNPRIVILEGED_ID).gid(UNPRIVILEGED_ID);
    }
    // SAFETY: the closure runs in the forked child before exec and only calls dup2/fcntl, which
    // are async-signal-safe; `theirs_fd` stays open in the parent until spawn returns.
    unsafe {
        command.pre_exec(move || {
            if theirs_fd == CHANNEL_FD {
                // Already in place: only the close-on-exec flag must go.
                if libc::fcntl(CHANNEL_FD, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, CHANNEL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawn worker");
    drop(theirs);
    Worker {
        child,
        channel: ours,
    }
}

fn stderr_of(worker: &mut Worker) -> String {
    let mut text = String::new();
    if let Some(mut err) = worker.child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

fn expect_ready(worker: &mut Worker, kind: WorkerKind) -> lumen_ipc::msg::SandboxReport {
    match worker.channel.recv_timeout::<WorkerMsg>(WAIT) {
        Ok(received) => match received.msg {
            WorkerMsg::Ready { kind: k, sandbox } => {
                assert_eq!(k, kind);
                assert!(received.fds.is_empty());
                if kind == WorkerKind::Encode {
                    // lumen-encode follows Ready with what it can encode (found before lock-down).
                    let next = worker
                        .channel
                        .recv_timeout::<WorkerMsg>(WAIT)
                        .expect("encoder capabilities");
                    match next.msg {
                        WorkerMsg::EncoderCapabilities(caps) => assert!(
                            caps.codecs.contains(&lumen_ipc::media::VideoCodec::H264),
                            "{caps:?}"
                        ),
                        other => panic!("encode: after Ready came {other:?}"),
                    }
                }
                sandbox
            }
            other => panic!("{kind:?}: first message was {other:?}, not Ready"),
        },
        Err(e) => {
            let _ = worker.child.kill();
            panic!("{kind:?}: no Ready ({e}); stderr: {}", stderr_of(worker));
        }
    }
}

/// The `Name:\tvalue` line of `/proc/<pid>/status`.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in status:\n{status}"))
}

fn wait_exit(worker: &mut Worker) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = worker.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "worker did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The worker's next message that is not a periodic report: lumen-input sends its counters about
/// once a second, and one may come before the answer a test waits for.
fn recv_answer(
    worker: &mut Worker,
) -> Result<lumen_ipc::channel::Received<WorkerMsg>, lumen_ipc::channel::ChannelError> {
    loop {
        let received = worker.channel.recv_timeout::<WorkerMsg>(WAIT)?;
        if !matches!(received.msg, WorkerMsg::InputStats(_)) {
            return Ok(received);
        }
    }
}

fn ping(worker: &mut Worker, seq: u64) {
    worker
        .channel
        .send(&BrokerMsg::Ping { seq }, &[])
        .expect("send Ping");
    let received = recv_answer(worker).expect("answer to Ping");
    assert_eq!(received.msg, WorkerMsg::Pong { seq });
}

/// What the kernel shows of a locked-down worker, checked for one kind.
fn kernel_evidence(kind: WorkerKind) {
    let mut worker = spawn_worker(kind);
    let report = expect_ready(&mut worker, kind);
    let pid = worker.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");

    assert_eq!(
        status_field(&status, "Seccomp"),
        "2",
        "{kind:?}: seccomp filter mode"
    );
    assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{kind:?}");
    assert_eq!(
        status_field(&status, "CapEff"),
        "0000000000000000",
        "{kind:?}"
    );
    assert_eq!(
        status_field(&status, "CapPrm"),
        "0000000000000000",
        "{kind:?}"
    );
    assert_eq!(
        status_field(&status, "CapAmb"),
        "0000000000000000",
        "{kind:?}"
    );
    // At least two filters: the clone3 companion and the allowlist (soft-denied syscalls add one
    // companion per errno).
    let filters: u32 = status_field(&status, "Seccomp_filters")
        .parse()
        .expect("Seccomp_filters is a number");
    assert!(filters >= 2, "{kind:?}: {filters} seccomp filters");
    if running_as_root() {
        let uid = status_field(&status, "Uid");
        assert!(
            uid.split_whitespace()
                .all(|u| u == UNPRIVILEGED_ID.to_string()),
            "{kind:?}: worker uids {uid}"
        );
    }
    assert_eq!(report.seccomp, Layer::On, "{kind:?}: {report:?}");
    assert_eq!(report.no_new_privs, Layer::On);
    assert_eq!(report.capabilities_dropped, Layer::On);
    assert_eq!(report.landlock_fs, Layer::On, "{kind:?}: {report:?}");

    if report.user_ns == Layer::On {
        // Inside its own user namespace the worker could empty its bounding set too.
        assert_eq!(
            status_field(&status, "CapBnd"),
            "0000000000000000",
            "{kind:?}"
        );
        let want_net_ns = if kind == WorkerKind::Net {
            Layer::NotInProfile
        } else {
            Layer::On
        };
        assert_eq!(report.net_ns, want_net_ns, "{kind:?}: {report:?}");
    }

    // The report claims a pid namespace only if the kernel agrees.
    let our_pid_ns = std::fs::read_link("/proc/self/ns/pid").expect("own pidns");
    if let Ok(their_pid_ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) {
        assert_eq!(
            report.pid_ns == Layer::On,
            their_pid_ns != our_pid_ns,
            "{kind:?}: report says pid_ns {:?}, kernel says {their_pid_ns:?} (ours {our_pid_ns:?})",
            report.pid_ns
        );
    }

    // Network namespace: everyone but net gets its own (when the system allows namespaces).
    let ours = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    match std::fs::read_link(format!("/proc/{pid}/ns/net")) {
        Ok(theirs) => match (kind, report.net_ns) {
            (WorkerKind::Net, layer) => {
                assert_eq!(layer, Layer::NotInProfile);
                assert_eq!(theirs, ours, "lumen-net must serve from the host's network");
            }
            (_, Layer::On) => assert_ne!(theirs, ours, "{kind:?} shares the host's network"),
            (_, layer) => {
                assert_eq!(layer, Layer::Unavailable);
                assert_eq!(theirs, ours, "{kind:?} reports no netns but has one");
            }
        },
        // A non-dumpable process in another user namespace: only root may look.
        Err(e) => assert!(!running_as_root(), "reading {kind:?}'s netns as root: {e}"),
    }

    ping(&mut worker, 41);
    worker
        .channel
        .send(&BrokerMsg::Shutdown, &[])
        .expect("send Shutdown");
    let exit = wait_exit(&mut worker);
    assert_eq!(exit.code(), Some(0), "{kind:?} on Shutdown: {exit:?}");
}

#[test]
fn net_worker_is_locked_down_in_the_hosts_network() {
    kernel_evidence(WorkerKind::Net);
}

#[test]
fn capture_worker_is_locked_down_in_its_own_network() {
    kernel_evidence(WorkerKind::Capture);
}

#[test]
fn encode_worker_is_locked_down_in_its_own_network() {
    kernel_evidence(WorkerKind::Encode);
}

#[test]
fn input_worker_is_locked_down_in_its_own_network() {
    kernel_evidence(WorkerKind::Input);
}

#[test]
fn workers_leave_quietly_when_the_broker_goes_away() {
    for kind in WorkerKind::ALL {
        let mut worker = spawn_worker(kind);
        expect_ready(&mut worker, kind);
        let Worker { child, channel } = &mut worker;
        // Dropping our end closes the channel: the worker sees end-of-stream.
        drop(std::mem::replace(channel, Channel::pair().expect("pair").0));
        let deadline = Instant::now() + WAIT;
        let exit = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?} kept running without a broker"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(exit.code(), Some(0), "{kind:?}: {exit:?}");
    }
}

#[test]
fn non_net_workers_refuse_lan_sockets_and_exit_for_a_restart() {
    for kind in [WorkerKind::Capture, WorkerKind::Encode, WorkerKind::Input] {
        let mut worker = spawn_worker(kind);
        expect_ready(&mut worker, kind);
        worker
            .channel
            .send(&BrokerMsg::NetSockets { roles: vec![] }, &[])
            .expect("send");
        let answer = recv_answer(&mut worker).expect("answer");
        assert!(
            matches!(answer.msg, WorkerMsg::Error { .. }),
            "{kind:?} answered {:?}",
            answer.msg
        );
        let exit = wait_exit(&mut worker);
        assert!(exit.code().is_some_and(|c| c != 0), "{kind:?}: {exit:?}");
    }
}

#[test]
fn net_keeps_lan_sockets_of_the_right_kind_and_refuses_the_wrong_ones() {
    let mut worker = spawn_worker(WorkerKind::Net);
    expect_ready(&mut worker, WorkerKind::Net);
    let http: OwnedFd = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("listener")
        .into();
    let video: OwnedFd = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("udp")
        .into();
    worker
        .channel
        .send(
            &BrokerMsg::NetSockets {
                roles: vec![SocketRole::Http, SocketRole::Video],
            },
            &[http.as_fd(), video.as_fd()],
        )
        .expect("send sockets");
    // Still serving: the sockets were accepted.
    ping(&mut worker, 7);
    worker
        .channel
        .send(&BrokerMsg::Shutdown, &[])
        .expect("send Shutdown");
    let exit = wait_exit(&mut worker);
    assert_eq!(exit.code(), Some(0), "{exit:?}");

    // A fresh worker handed a UDP socket for a TCP role refuses it and exits for the broker to
    // restart it.
    let mut worker = spawn_worker(WorkerKind::Net);
    expect_ready(&mut worker, WorkerKind::Net);
    worker
        .channel
        .send(
            &BrokerMsg::NetSockets {
                roles: vec![SocketRole::Rtsp],
            },
            &[video.as_fd()],
        )
        .expect("send wrong socket");
    let answer = worker.channel.recv_timeout::<WorkerMsg>(WAIT);
    match answer {
        Ok(received) => assert!(
            matches!(&received.msg, WorkerMsg::Error { message } if message.contains("Rtsp")),
            "{:?}",
            received.msg
        ),
        Err(ChannelError::Closed) => panic!("net exited without saying why"),
        Err(e) => panic!("no answer: {e}"),
    }
    let exit = wait_exit(&mut worker);
    assert!(exit.code().is_some_and(|c| c != 0), "{exit:?}");
    assert_eq!(exit.signal(), None);
}
