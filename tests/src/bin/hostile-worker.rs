//! A compromised worker, for `tests/tests/reliability_workers.rs`: the test links this binary into a
//! copy of the binary directory under a worker's name (`lumen-capture`, …), so the real broker
//! starts it as that worker, and it speaks the worker protocol badly.
//!
//! It is not a worker and has no sandbox. Each start takes the next line of `hostile-<name>.plan`
//! (next to itself; `<name>` is the worker kind it was started as: capture, encode, net, input),
//! appends `<pid> <mode> <unix ms>` to `hostile-<name>.log`, misbehaves as that mode says, and then acts as a
//! well-behaved worker (answers pings) until the broker kills it or says Shutdown, so that any end
//! of the process is the broker's doing. With the plan used up it only behaves well.
//!
//! Modes: `exit` (dies at once, every start), `wrong-version`, `garbage`, `oversized`,
//! `empty-record`, `fds`, `wrong-kind`, `net-request`, `stats-before-ready`, `second-ready`,
//! `flood`, `error-flood`, `behave`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::media::MediaStats;
use lumen_ipc::msg::{
    BrokerMsg, SandboxReport, WorkerKind, WorkerMsg, CHANNEL_FD, MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
};
use lumen_ipc::net_msg::NetRequest;
use rustix::net::{SendAncillaryBuffer, SendFlags};

/// How many stray messages `flood` sends.
const FLOOD_MESSAGES: u32 = 200_000;

fn main() -> Result<()> {
    let exe = std::env::current_exe().context("current_exe")?;
    let kind = kind_of(&exe)?;
    let dir = exe.parent().context("no directory")?.to_path_buf();
    let mode = next_mode(&dir, kind)?;

    if mode == "exit" {
        // A worker that cannot start: the broker must back off, not restart it hot.
        std::process::exit(1);
    }
    // SAFETY: the broker placed our channel at CHANNEL_FD and nothing else in this process owns
    // it; it is claimed once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(CHANNEL_FD) };
    let raw = fd.try_clone().context("dup of the channel")?;
    let mut channel = Channel::from_fd(fd).context("the control channel")?;
    let raw = raw.as_fd();

    match mode.as_str() {
        "wrong-version" => {
            // Version 99, then a well-formed Pong payload: refused for its version alone.
            let mut bytes = vec![99u8];
            bytes.extend(postcard_payload(&WorkerMsg::Pong { seq: 1 })?);
            send_raw(raw, &bytes, &[])?;
        }
        "garbage" => {
            let mut bytes = vec![PROTOCOL_VERSION as u8];
            bytes.extend(noise(4096));
            send_raw(raw, &bytes, &[])?;
        }
        "oversized" => send_raw(raw, &vec![0x55; MAX_MESSAGE_BYTES + 4096], &[])?,
        "empty-record" => send_raw(raw, &[], &[])?,
        "fds" => {
            ready(&channel, kind)?;
            let extra = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .context("opening /dev/null")?;
            channel.send(
                &WorkerMsg::Error {
                    message: "here is an fd".into(),
                },
                &[extra.as_fd()],
            )?;
        }
        "wrong-kind" => {
            let claimed = if kind == WorkerKind::Net {
                WorkerKind::Capture
            } else {
                WorkerKind::Net
            };
            ready(&channel, claimed)?;
        }
        "net-request" => {
            ready(&channel, kind)?;
            channel.send(
                &WorkerMsg::NetRequest {
                    id: 1,
                    request: NetRequest::TlsSign {
                        scheme: 0x0804,
                        message: b"sign this for me".to_vec(),
                    },
                },
                &[],
            )?;
        }
        "stats-before-ready" => channel.send(
            &WorkerMsg::SessionStats {
                generation: 1,
                stats: MediaStats::default(),
            },
            &[],
        )?,
        "second-ready" => {
            ready(&channel, kind)?;
            ready(&channel, kind)?;
        }
        "flood" => {
            ready(&channel, kind)?;
            for _ in 0..FLOOD_MESSAGES {
                // A stray Pong answers no ping: the broker must read and drop it, in bounded
                // batches, while it keeps serving everything else.
                match channel.send(&WorkerMsg::Pong { seq: u64::MAX }, &[]) {
                    Ok(()) => {}
                    Err(ChannelError::Closed) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        "error-flood" => {
            ready(&channel, kind)?;
            // Costly messages without end: each `Error` carries 1 KiB of text the broker would
            // log, and each goes with a line on stderr, which the broker logs too. The broker
            // must rate-limit both and kill this worker; it sends until the channel closes.
            let text = "e".repeat(1024);
            for n in 0u64.. {
                // Not eprintln!, which panics when stderr is gone.
                let _ = writeln!(std::io::stderr(), "hostile error-flood stderr line {n}");
                match channel.send(
                    &WorkerMsg::Error {
                        message: text.clone(),
                    },
                    &[],
                ) {
                    Ok(()) => {}
                    Err(ChannelError::Closed) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        "behave" => ready(&channel, kind)?,
        other => bail!("unknown mode {other:?}"),
    }
    behave(&mut channel)
}

/// Answers pings until the channel closes or the broker says Shutdown (a worker that never sent
/// Ready is killed by the broker's Ready timeout meanwhile).
fn behave(channel: &mut Channel) -> Result<()> {
    loop {
        match channel.recv::<BrokerMsg>() {
            Ok(received) => match received.msg {
                BrokerMsg::Ping { seq } => match channel.send(&WorkerMsg::Pong { seq }, &[]) {
                    Ok(()) | Err(ChannelError::Closed) => {}
                    Err(e) => return Err(e.into()),
                },
                BrokerMsg::Shutdown => return Ok(()),
                _ => {}
            },
            // The broker gave up on us; stay until it kills us, so the kill is what is seen.
            Err(ChannelError::Closed) => loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            },
            Err(e) => return Err(e.into()),
        }
    }
}

fn ready(channel: &Channel, kind: WorkerKind) -> Result<()> {
    channel.send(
        &WorkerMsg::Ready {
            kind,
            sandbox: no_sandbox(),
        },
        &[],
    )?;
    Ok(())
}

/// The honest report of this process: it entered no sandbox layer.
fn no_sandbox() -> SandboxReport {
    SandboxReport {
        notes: vec!["hostile-worker: a test stand-in with no sandbox".into()],
        ..SandboxReport::unconfined()
    }
}

/// The encoded message without the version that leads the envelope (the version is one byte
/// while it is below 128).
fn postcard_payload(msg: &WorkerMsg) -> Result<Vec<u8>> {
    let bytes = lumen_ipc::codec::encode(msg)?;
    if PROTOCOL_VERSION >= 128 {
        bail!("the version no longer fits one byte; update hostile-worker");
    }
    Ok(bytes[1..].to_vec())
}

/// Sends `bytes` as one record, with `fds`, bypassing the codec.
fn send_raw(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(rustix::net::SendAncillaryMessage::ScmRights(fds));
    }
    let sent = rustix::net::sendmsg(
        fd,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .context("sendmsg")?;
    if sent != bytes.len() {
        bail!("short send: {sent} of {}", bytes.len());
    }
    Ok(())
}

/// Deterministic junk (xorshift), different for every pid.
fn noise(len: usize) -> Vec<u8> {
    let mut state = u64::from(std::process::id()) | 1 << 40;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The worker kind this binary was started as, from its file name.
fn kind_of(exe: &Path) -> Result<WorkerKind> {
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    WorkerKind::ALL
        .into_iter()
        .find(|kind| kind.binary_name() == name)
        .with_context(|| format!("started as {name:?}, not as a lumen worker binary"))
}

/// Takes the next mode of the plan (the line after those already logged) and logs it.
fn next_mode(dir: &Path, kind: WorkerKind) -> Result<String> {
    let plan_path = dir.join(format!("hostile-{}.plan", kind.name()));
    let log_path: PathBuf = dir.join(format!("hostile-{}.log", kind.name()));
    let plan = std::fs::read_to_string(&plan_path).unwrap_or_default();
    let done = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mode = plan
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .nth(done.lines().count())
        .unwrap_or("behave")
        .to_string();
    // "exit" repeats forever once it is the last line: a worker that dies at every start.
    let mode = if mode == "behave" && plan.lines().last().map(str::trim) == Some("exit") {
        "exit".to_string()
    } else {
        mode
    };
    // The test made the log writable for the unprivileged worker uid.
    let mut log = OpenOptions::new()
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    writeln!(log, "{} {mode} {now_ms}", std::process::id()).context("writing the log")?;
    Ok(mode)
}
