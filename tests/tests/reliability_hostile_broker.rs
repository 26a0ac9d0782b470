//! A hostile broker against every real worker — `lumen-encode`, `lumen-input`, `lumen-capture`
//! and `lumen-net` (issue 6, the other direction of `reliability_workers`): the test starts each
//! worker as the broker does (fd 3 = its control channel, `--worker`, cleared environment; it
//! locks itself down as in production), waits for `Ready`, then sends what a compromised broker
//! could: another protocol version, garbage, oversized records, fds where none belong, messages
//! for another worker kind, messages out of order, session fds of the wrong size, kind or seals,
//! LAN sockets of the wrong type or count, an identity whose certificate is not one, and, for
//! running sessions, frame descriptions outside the pool, random bytes over the frame pool and the
//! rings' headers, and a hostile peer on the capture ↔ encode and net ↔ input channels.
//!
//! Every refusal must be reported (`WorkerMsg::Error`, then exit status 2 for a message the worker
//! cannot take at all; `SessionFailed` with the worker still answering pings for a session that
//! cannot run), and no worker may panic or die by a signal.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::frame_pool::{self, round_slot_bytes, FramePool};
use lumen_ipc::input::{InputEvent, InputStats, NetToInput};
use lumen_ipc::media::{
    AudioLayout, CaptureSource, CaptureToEncode, EncodeToCapture, FrameDesc, FramePoolSpec,
    PixelFormat, Plane, SessionParams, VideoCodec, AUDIO_RING_BYTES, PCM_RING_BYTES,
    VIDEO_RING_BYTES,
};
use lumen_ipc::msg::{
    BrokerMsg, SocketRole, WorkerMsg, MAX_MESSAGE_BYTES, PROTOCOL_VERSION, WORKER_FLAG,
};
use lumen_ipc::ring::{create_ring, Consumer, RingFds, HEADER_LEN};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

const WAIT: Duration = Duration::from_secs(30);

/// Sends one hostile message to a worker.
type Misdeed<'a> = Box<dyn Fn(&Worker) -> Result<()> + 'a>;
/// Turns a valid session's StartEncode fds into a broken StartEncode.
type BreakSession<'a> = dyn Fn(&Session, Vec<OwnedFd>) -> Result<(BrokerMsg, Vec<OwnedFd>)> + 'a;
/// Turns a valid frame description into one that does not fit the pool.
type BreakFrame = Box<dyn Fn(FrameDesc) -> FrameDesc>;
/// Turns a valid StartCapture's fds into a broken StartCapture.
type BreakCapture<'a> =
    dyn Fn(&CaptureSession, Vec<OwnedFd>) -> Result<(BrokerMsg, Vec<OwnedFd>)> + 'a;
/// Picks one of a session's rings.
type RingOf = fn(&Session) -> &RingFds;

/// A real worker started as the broker starts it, its stderr collected.
struct Worker {
    name: &'static str,
    child: Child,
    broker: Channel,
    stderr: Arc<Mutex<String>>,
    /// Collects stderr until the worker (the pipe's only writer) is gone.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    next_ping: u64,
    /// `SessionFailed` texts that came while waiting for something else.
    skipped_failures: Vec<String>,
}

impl Worker {
    fn start(name: &'static str) -> Result<Worker> {
        let (mut broker, worker_end) = Channel::pair()?;
        let fd = worker_end.as_raw_fd();
        let mut command = Command::new(lumen_tests::bin(name)?);
        command
            .arg(WORKER_FLAG)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        lumen_tests::pass_channel_as_fd3(&mut command, fd);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        drop(worker_end);
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().context("no stderr pipe")?;
        let collected = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Ok(mut all) = collected.lock() {
                    all.push_str(&text);
                }
            }
        });
        let ready = broker
            .recv_timeout::<WorkerMsg>(WAIT)
            .with_context(|| format!("waiting for {name}'s Ready"))?;
        if !matches!(ready.msg, WorkerMsg::Ready { .. }) {
            bail!("{name}: first message is {:?}, not Ready", ready.msg);
        }
        Ok(Worker {
            name,
            child,
            broker,
            stderr,
            stderr_reader: Some(stderr_reader),
            next_ping: 1,
            skipped_failures: Vec::new(),
        })
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn send(&self, msg: &BrokerMsg, fds: &[BorrowedFd<'_>]) -> Result<()> {
        self.broker.send(msg, fds)?;
        Ok(())
    }

    /// The next report the worker sends that `pick` accepts, skipping everything else (stats,
    /// capabilities, pongs).
    fn report<T>(&mut self, what: &str, pick: impl Fn(&WorkerMsg) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{}: no {what} within {WAIT:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            match self.broker.recv_timeout::<WorkerMsg>(left) {
                Ok(received) => {
                    if let Some(found) = pick(&received.msg) {
                        return Ok(found);
                    }
                    if let WorkerMsg::SessionFailed { message, .. } = received.msg {
                        self.skipped_failures.push(message);
                    }
                }
                Err(ChannelError::Timeout(_)) => {}
                Err(e) => bail!(
                    "{}: channel ended while waiting for {what}: {e}; stderr:\n{}",
                    self.name,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for `SessionStarted` of `generation`; a `SessionFailed` instead fails the test.
    fn wait_started(&mut self, generation: u64) -> Result<()> {
        let started = self.report("SessionStarted", |msg| match msg {
            WorkerMsg::SessionStarted { generation: g } if *g == generation => Some(Ok(())),
            WorkerMsg::SessionFailed { message, .. } => Some(Err(message.clone())),
            _ => None,
        })?;
        if let Err(message) = started {
            bail!(
                "{}: a valid session (generation {generation}) failed: {message}",
                self.name
            );
        }
        Ok(())
    }

    /// The text of the next `Error` report.
    fn error(&mut self) -> Result<String> {
        self.report("an Error report", |msg| match msg {
            WorkerMsg::Error { message } => Some(message.clone()),
            _ => None,
        })
    }

    /// The text of the next `SessionFailed` report.
    fn session_failed(&mut self) -> Result<String> {
        self.report("SessionFailed", |msg| match msg {
            WorkerMsg::SessionFailed { message, .. } => Some(message.clone()),
            WorkerMsg::Error { message } => {
                Some(format!("(an Error, not SessionFailed) {message}"))
            }
            _ => None,
        })
    }

    /// A ping answered: the worker is alive and serving its channel.
    fn ping(&mut self) -> Result<()> {
        let seq = self.next_ping;
        self.next_ping += 1;
        self.send(&BrokerMsg::Ping { seq }, &[])?;
        self.report("the Pong", |msg| match msg {
            WorkerMsg::Pong { seq: got } if *got == seq => Some(()),
            _ => None,
        })
        .with_context(|| format!("{} stopped answering pings", self.name))
    }

    /// Waits for the worker to exit on its own, and for the last of its stderr.
    fn exit_status(&mut self) -> Result<ExitStatus> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit; stderr:\n{}", self.name, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker refused a message it cannot take: it reported an Error containing `expected`
    /// and exited with status 2 (not a panic, not a signal), saying why on stderr.
    fn refuses_and_exits(mut self, case: &str, expected: &str) -> Result<()> {
        let message = self.error().with_context(|| format!("case {case}"))?;
        assert!(
            message.contains(expected),
            "{}: {case}: the Error should say {expected:?}: {message:?}",
            self.name
        );
        let status = self.exit_status()?;
        let stderr = self.stderr();
        assert_eq!(
            status.code(),
            Some(2),
            "{}: {case}: exit {status:?} (expected status 2); stderr:\n{stderr}",
            self.name
        );
        assert_no_panic(self.name, &stderr);
        assert!(
            stderr.contains(expected),
            "{}: {case}: no clear error line on stderr:\n{stderr}",
            self.name
        );
        println!("{:>13} {case:>34}: {message}", self.name);
        Ok(())
    }

    /// Ends a worker that survived everything: Shutdown, exit status 0, no panic on stderr.
    fn shut_down(mut self) -> Result<String> {
        self.send(&BrokerMsg::Shutdown, &[])?;
        let status = self.exit_status()?;
        let stderr = self.stderr();
        assert!(
            status.success(),
            "{} ended with {status:?} after Shutdown; stderr:\n{stderr}",
            self.name
        );
        assert_no_panic(self.name, &stderr);
        Ok(stderr)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_no_panic(name: &str, stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{name} panicked:\n{stderr}"
    );
}

/// Sends `bytes` as one record with `fds`, past the codec (for what the codec would not encode).
fn send_raw(channel: &Channel, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        control.push(SendAncillaryMessage::ScmRights(fds));
    }
    let sent = rustix::net::sendmsg(
        channel,
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

/// Deterministic noise (xorshift) from `seed`.
struct Noise(u64);

impl Noise {
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }

    fn below(&mut self, n: u64) -> u64 {
        let b = self.bytes(8);
        u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) % n.max(1)
    }
}

fn dev_null() -> Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

/// The envelope with another protocol version, around a well-formed Ping.
fn wrong_version_record() -> Result<Vec<u8>> {
    let bytes = lumen_ipc::codec::encode(&BrokerMsg::Ping { seq: 1 })?;
    if PROTOCOL_VERSION >= 128 || bytes.first() != Some(&(PROTOCOL_VERSION as u8)) {
        bail!("the version no longer fits one byte; update this test");
    }
    let mut record = vec![99u8];
    record.extend_from_slice(&bytes[1..]);
    Ok(record)
}

/// The protocol-level refusals every worker shares (`lumen_ipc::worker::serve`): each ends the
/// worker with an Error and status 2. Returns how many cases ran.
fn common_refusals(name: &'static str) -> Result<usize> {
    let null = dev_null()?;
    let mut noise = Noise(0x5eed_0000_1234_5678);
    let mut garbage = vec![PROTOCOL_VERSION as u8];
    garbage.extend(noise.bytes(4096));
    let cases: Vec<(&str, &str, Misdeed<'_>)> = vec![
        (
            "wrong protocol version",
            "version 99",
            Box::new(|w| send_raw(&w.broker, &wrong_version_record()?, &[])),
        ),
        (
            "garbage",
            "malformed",
            Box::new(move |w| send_raw(&w.broker, &garbage, &[])),
        ),
        (
            "oversized record",
            "exceeds the limit",
            Box::new(|w| send_raw(&w.broker, &vec![0x55; MAX_MESSAGE_BYTES + 4096], &[])),
        ),
        (
            "an fd with Ping",
            "unexpected fds",
            Box::new(|w| w.send(&BrokerMsg::Ping { seq: 7 }, &[null.as_fd()])),
        ),
        (
            "fds with StopSession",
            "StopSession",
            Box::new(|w| w.send(&BrokerMsg::StopSession, &[null.as_fd(), null.as_fd()])),
        ),
        if name == "lumen-net" {
            (
                "StartEncode (encode's)",
                "unexpected message",
                Box::new(|w| {
                    w.send(
                        &BrokerMsg::StartEncode {
                            params: params(),
                            pool: FramePoolSpec {
                                slots: 4,
                                slot_bytes: 4096,
                            },
                            generation: 1,
                        },
                        &[],
                    )
                }),
            )
        } else {
            (
                "NetSockets (net's message)",
                "unexpected message",
                Box::new(|w| {
                    w.send(
                        &BrokerMsg::NetSockets {
                            roles: vec![SocketRole::Http],
                        },
                        &[null.as_fd()],
                    )
                }),
            )
        },
    ];
    let count = cases.len();
    for (case, expected, send) in cases {
        let worker = Worker::start(name)?;
        send(&worker)?;
        worker.refuses_and_exits(case, expected)?;
    }
    Ok(count)
}

/// A four-slot pool for BGRx frames of [`params`] (with room for row padding).
fn pool_spec() -> FramePoolSpec {
    let p = params();
    FramePoolSpec {
        slots: 4,
        slot_bytes: round_slot_bytes(
            u64::from(p.width) * u64::from(p.height) * 4 + 64 * u64::from(p.height),
        ),
    }
}

fn params() -> SessionParams {
    SessionParams {
        width: 320,
        height: 240,
        fps: 30,
        bitrate_kbps: 1000,
        codec: VideoCodec::H264,
        audio: AudioLayout::Stereo,
        audio_packet_ms: 10,
    }
}

/// One session's fds, built as the broker builds them (`broker/src/session/plumbing.rs`), with
/// the test keeping the other ends: capture's, the consumer's, and write access to everything.
struct Session {
    generation: u64,
    spec: FramePoolSpec,
    pool_rw: OwnedFd,
    capture: Channel,
    pcm: RingFds,
    video: RingFds,
    audio: RingFds,
    _control: Channel,
}

impl Session {
    fn new(generation: u64) -> Result<(Session, Vec<OwnedFd>)> {
        let spec = pool_spec();
        let pool_rw = frame_pool::create_pool("hostile-frames", &spec)?;
        let pool_ro = frame_pool::read_only_fd(pool_rw.as_fd())?;
        let (capture, encode_end) = Channel::pair()?;
        let pcm = create_ring("hostile-pcm", PCM_RING_BYTES, generation)?;
        let video = create_ring("hostile-video", VIDEO_RING_BYTES, generation)?;
        let audio = create_ring("hostile-audio", AUDIO_RING_BYTES, generation)?;
        let (control, control_encode) = Channel::pair()?;
        let fds = vec![
            pool_ro,
            OwnedFd::from(encode_end),
            pcm.memfd.try_clone()?,
            pcm.doorbell.try_clone()?,
            video.memfd.try_clone()?,
            video.doorbell.try_clone()?,
            audio.memfd.try_clone()?,
            audio.doorbell.try_clone()?,
            OwnedFd::from(control_encode),
        ];
        capture.set_nonblocking(true)?;
        Ok((
            Session {
                generation,
                spec,
                pool_rw,
                capture,
                pcm,
                video,
                audio,
                _control: control,
            },
            fds,
        ))
    }

    fn start_msg(&self) -> BrokerMsg {
        BrokerMsg::StartEncode {
            params: params(),
            pool: self.spec,
            generation: self.generation,
        }
    }

    /// A well-formed BGRx frame description for `slot`.
    fn frame(&self, slot: u32, seq: u64) -> FrameDesc {
        let p = params();
        FrameDesc {
            slot,
            seq,
            captured_ns: lumen_ipc::ring::monotonic_ns(),
            width: p.width,
            height: p.height,
            format: PixelFormat::Bgrx,
            planes: vec![Plane {
                offset: 0,
                stride: u64::from(p.width) * 4,
            }],
        }
    }

    fn send_frame(&self, desc: FrameDesc) -> Result<()> {
        self.capture.send(&CaptureToEncode::Frame(desc), &[])?;
        Ok(())
    }

    /// Slots encode handed back so far (non-blocking).
    fn releases(&mut self) -> Vec<u32> {
        let mut slots = Vec::new();
        while let Ok(Some(received)) = self.capture.try_recv::<EncodeToCapture>() {
            let EncodeToCapture::Release { slot } = received.msg;
            slots.push(slot);
        }
        slots
    }

    /// Writes random bytes over `len` bytes at `offset` of `fd` (a memfd the worker has mapped).
    fn scribble(fd: &OwnedFd, offset: u64, len: usize, noise: &mut Noise) -> Result<()> {
        let bytes = noise.bytes(len);
        rustix::io::pwrite(fd, &bytes, offset).context("pwrite")?;
        Ok(())
    }
}

/// Rings an eventfd doorbell, so a waiting reader looks at the ring now.
fn ring_doorbell(doorbell: &OwnedFd) {
    let _ = rustix::io::write(doorbell, &1u64.to_ne_bytes());
}

/// Starts a session and waits for it to run (frames in, records out).
fn start_running_session(worker: &mut Worker, generation: u64) -> Result<(Session, Consumer)> {
    let (mut session, fds) = Session::new(generation)?;
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    worker.send(&session.start_msg(), &borrowed)?;
    drop(fds);
    worker.wait_started(generation)?;
    let mut video = Consumer::attach(
        session.video.memfd.try_clone()?,
        session.video.doorbell.try_clone()?,
        generation,
    )?;
    let mut pool = FramePool::map(session.pool_rw.try_clone()?, session.spec, true)?;
    if let Some(slot) = pool.slot_mut(0) {
        slot.fill(0x80);
    }
    session.send_frame(session.frame(0, 1))?;
    let deadline = Instant::now() + WAIT;
    loop {
        if video.wait(Some(Duration::from_millis(200)))? {
            if let Some(record) = video.next()? {
                record.release();
                break;
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no video record from a valid session; stderr:\n{}",
                worker.stderr()
            );
        }
    }
    assert!(session.releases().contains(&0), "slot 0 was not released");
    Ok((session, video))
}

#[test]
fn lumen_encode_refuses_a_hostile_broker_and_survives_scribbled_sessions() -> Result<()> {
    let shared_cases = common_refusals("lumen-encode")?;

    // Messages for other workers, and out of order: refused, the worker exits with status 2.
    let (a, b) = Channel::pair()?;
    let cases: Vec<(&str, BrokerMsg, Vec<BorrowedFd<'_>>)> = vec![
        (
            "StreamRings (net's, no session)",
            BrokerMsg::StreamRings { generation: 1 },
            vec![a.as_fd(), b.as_fd()],
        ),
        (
            "InputChannel (input's)",
            BrokerMsg::InputChannel,
            vec![a.as_fd()],
        ),
        (
            "InputDevices (input's)",
            BrokerMsg::InputDevices {
                eis: false,
                uinput: 0,
            },
            vec![],
        ),
    ];
    for (case, msg, fds) in cases {
        let worker = Worker::start("lumen-encode")?;
        worker.send(&msg, &fds)?;
        worker.refuses_and_exits(case, "unexpected message")?;
    }

    // Sessions that cannot run: SessionFailed, and the worker keeps answering.
    let mut worker = Worker::start("lumen-encode")?;
    let null = dev_null()?;
    let mut generation = 10;
    let mut failures = Vec::new();
    let mut refuse_session =
        |worker: &mut Worker, case: &str, build: &BreakSession<'_>| -> Result<()> {
            generation += 1;
            let (session, fds) = Session::new(generation)?;
            let (msg, fds) = build(&session, fds)?;
            let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
            worker.send(&msg, &borrowed)?;
            let message = worker
                .session_failed()
                .with_context(|| format!("case {case}"))?;
            assert!(
                !message.starts_with("(an Error"),
                "{case}: the worker refused the whole message instead of the session: {message}"
            );
            worker.ping()?;
            println!(
                "{:>13} {case:>34}: SessionFailed: {message}",
                "lumen-encode"
            );
            failures.push(case.to_string());
            Ok(())
        };
    refuse_session(&mut worker, "StartEncode without fds", &|s, _| {
        Ok((s.start_msg(), Vec::new()))
    })?;
    refuse_session(&mut worker, "StartEncode with /dev/null fds", &|s, fds| {
        let nulls = (0..fds.len())
            .map(|_| dev_null())
            .collect::<Result<Vec<_>>>()?;
        Ok((s.start_msg(), nulls))
    })?;
    refuse_session(&mut worker, "pool spec larger than its memfd", &|s, fds| {
        let msg = BrokerMsg::StartEncode {
            params: params(),
            pool: FramePoolSpec {
                slots: s.spec.slots + 1,
                slot_bytes: s.spec.slot_bytes,
            },
            generation: s.generation,
        };
        Ok((msg, fds))
    })?;
    refuse_session(&mut worker, "unsealed pool memfd", &|s, mut fds| {
        let total = s.spec.slot_bytes * u64::from(s.spec.slots);
        let unsealed = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&unsealed, total)?;
        fds[0] = unsealed;
        Ok((s.start_msg(), fds))
    })?;
    refuse_session(
        &mut worker,
        "video ring header > memfd size",
        &|s, mut fds| {
            // A sealed memfd of header + 4 KiB whose header (copied from the real ring) claims
            // the real ring's 16 MiB.
            let mut header = vec![0u8; HEADER_LEN];
            rustix::io::pread(&s.video.memfd, &mut header, 0)?;
            let small = rustix::fs::memfd_create(
                "small",
                rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
            )?;
            rustix::fs::ftruncate(&small, (HEADER_LEN + 4096) as u64)?;
            rustix::io::pwrite(&small, &header, 0)?;
            rustix::fs::fcntl_add_seals(
                &small,
                rustix::fs::SealFlags::SHRINK
                    | rustix::fs::SealFlags::GROW
                    | rustix::fs::SealFlags::SEAL,
            )?;
            fds[4] = small;
            Ok((s.start_msg(), fds))
        },
    )?;
    refuse_session(&mut worker, "unsealed audio ring memfd", &|s, mut fds| {
        let unsealed = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&unsealed, (HEADER_LEN + AUDIO_RING_BYTES) as u64)?;
        fds[6] = unsealed;
        Ok((s.start_msg(), fds))
    })?;
    refuse_session(
        &mut worker,
        "PCM ring of another generation",
        &|s, mut fds| {
            let other = create_ring("other", PCM_RING_BYTES, s.generation + 1000)?;
            fds[2] = other.memfd;
            fds[3] = other.doorbell;
            Ok((s.start_msg(), fds))
        },
    )?;
    refuse_session(
        &mut worker,
        "doorbell that is not an eventfd",
        &|s, mut fds| {
            fds[5] = null.try_clone()?;
            Ok((s.start_msg(), fds))
        },
    )?;
    refuse_session(&mut worker, "session parameters out of range", &|s, fds| {
        let msg = BrokerMsg::StartEncode {
            params: SessionParams {
                width: 0,
                fps: 100_000,
                ..params()
            },
            pool: s.spec,
            generation: s.generation,
        };
        Ok((msg, fds))
    })?;

    // A running session, then a second StartEncode with a pool spec its memfd does not match:
    // the old session ends, the new one fails, the worker answers.
    let (_running, _video) = start_running_session(&mut worker, 100)?;
    refuse_session(
        &mut worker,
        "second StartEncode, mismatched pool",
        &|s, fds| {
            let msg = BrokerMsg::StartEncode {
                params: params(),
                pool: FramePoolSpec {
                    slots: s.spec.slots,
                    slot_bytes: s.spec.slot_bytes * 2,
                },
                generation: s.generation,
            };
            Ok((msg, fds))
        },
    )?;

    // Frame descriptions outside the pool: the session fails, the worker stays.
    let bad_frames: Vec<(&str, BreakFrame)> = vec![
        (
            "frame in slot 4 of 4",
            Box::new(|d| FrameDesc { slot: 4, ..d }),
        ),
        (
            "frame with u32::MAX slot",
            Box::new(|d| FrameDesc {
                slot: u32::MAX,
                ..d
            }),
        ),
        (
            "frame with no planes",
            Box::new(|d| FrameDesc {
                planes: vec![],
                ..d
            }),
        ),
        (
            "frame with 3 planes for BGRx",
            Box::new(|d| FrameDesc {
                planes: vec![Plane::default(); 3],
                ..d
            }),
        ),
        (
            "frame with a short stride",
            Box::new(|d| FrameDesc {
                planes: vec![Plane {
                    offset: 0,
                    stride: 4,
                }],
                ..d
            }),
        ),
        (
            "frame with a huge stride",
            Box::new(|d| FrameDesc {
                planes: vec![Plane {
                    offset: 0,
                    stride: u64::MAX / 2,
                }],
                ..d
            }),
        ),
        (
            "frame with an offset past the slot",
            Box::new(|d| FrameDesc {
                planes: vec![Plane {
                    offset: u64::MAX - 10,
                    stride: 320 * 4,
                }],
                ..d
            }),
        ),
        (
            "frame larger than the slot",
            Box::new(|d| FrameDesc {
                width: 16384,
                height: 16384,
                planes: vec![Plane {
                    offset: 0,
                    stride: 16384 * 4,
                }],
                ..d
            }),
        ),
    ];
    for (i, (case, mangle)) in bad_frames.into_iter().enumerate() {
        let (session, _video) = start_running_session(&mut worker, 200 + i as u64)?;
        session.send_frame(mangle(session.frame(1, 2)))?;
        let message = worker
            .session_failed()
            .with_context(|| format!("case {case}"))?;
        assert!(
            message.contains("does not fit the pool"),
            "{case}: {message}"
        );
        worker.ping()?;
        println!(
            "{:>13} {case:>34}: SessionFailed: {message}",
            "lumen-encode"
        );
        failures.push(case.to_string());
    }

    // Random bytes over the pixels while frames go: pixels are untrusted data, the session runs on.
    let mut noise = Noise(0xdead_beef_cafe_f00d);
    let (mut session, mut video) = start_running_session(&mut worker, 300)?;
    let pool_bytes = session.spec.slot_bytes * u64::from(session.spec.slots);
    let mut records = 0u64;
    let until = Instant::now() + Duration::from_secs(2);
    let mut seq = 10;
    while Instant::now() < until {
        Session::scribble(
            &session.pool_rw,
            noise.below(pool_bytes - 65536),
            65536,
            &mut noise,
        )?;
        let released = session.releases();
        seq += 1;
        let slot = (seq % 4) as u32;
        if seq < 14 || released.contains(&slot) || seq % 3 == 0 {
            let _ = session.send_frame(session.frame(slot, seq));
        }
        while let Some(record) = video.next()? {
            record.release();
            records += 1;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(records > 0, "no video while the pixels were scribbled over");
    worker.ping()?;
    println!(
        "{:>13} {:>34}: {records} records, no failure",
        "lumen-encode", "scribbled pixels"
    );

    // Random bytes over each ring's header (and then the whole ring) while the encoder runs:
    // it must detect or tolerate it, never crash; it keeps answering.
    let targets: [(&str, RingOf); 3] = [
        ("PCM ring (encode reads)", |s| &s.pcm),
        ("video ring (encode writes)", |s| &s.video),
        ("audio ring (encode writes)", |s| &s.audio),
    ];
    let mut ring_outcomes = Vec::new();
    for (i, (name, ring)) in targets.into_iter().enumerate() {
        for whole in [false, true] {
            let generation = 400 + 2 * i as u64 + u64::from(whole);
            let (s, _video) = start_running_session(&mut worker, generation)?;
            session = s;
            worker.skipped_failures.clear();
            let fds = ring(&session);
            let len = if whole {
                rustix::fs::fstat(&fds.memfd)?.st_size as usize
            } else {
                HEADER_LEN
            };
            let until = Instant::now() + Duration::from_millis(800);
            let mut seq = 1000;
            while Instant::now() < until {
                let chunk = len.min(64 * 1024);
                let offset = noise.below((len - chunk + 1) as u64);
                Session::scribble(&fds.memfd, offset, chunk, &mut noise)?;
                ring_doorbell(&fds.doorbell);
                seq += 1;
                let _ = session.send_frame(session.frame((seq % 4) as u32, seq));
                std::thread::sleep(Duration::from_millis(20));
            }
            worker.ping()?;
            // A failure is reported, or the session still runs; either is fine, a crash is not.
            let failed = drain_failure(&mut worker)?;
            let what = if whole { "whole" } else { "header" };
            println!(
                "{:>13} {:>34}: {}",
                "lumen-encode",
                format!("scribbled {name} {what}"),
                failed
                    .as_deref()
                    .unwrap_or("no failure reported (corruption tolerated)")
            );
            ring_outcomes.push(failed);
        }
    }
    assert!(
        ring_outcomes.iter().any(Option::is_some),
        "no scribbled ring was ever detected as corrupt"
    );
    worker.ping()?;
    let stderr = worker.shut_down()?;
    println!(
        "lumen-encode: {shared_cases} shared and 3 out-of-order refusals with exit 2, {} refused sessions, \
         {} stderr lines, no panic",
        failures.len(),
        stderr.lines().count()
    );
    Ok(())
}

/// Reads what the worker sent until a pause; the first SessionFailed's text, if any.
fn drain_failure(worker: &mut Worker) -> Result<Option<String>> {
    let mut failed = worker.skipped_failures.drain(..).next();
    loop {
        match worker
            .broker
            .recv_timeout::<WorkerMsg>(Duration::from_millis(300))
        {
            Ok(received) => {
                if let WorkerMsg::SessionFailed { message, .. } = received.msg {
                    failed.get_or_insert(message);
                }
            }
            Err(ChannelError::Timeout(_)) => return Ok(failed),
            Err(e) => bail!(
                "{}'s channel ended: {e}; stderr:\n{}",
                worker.name,
                worker.stderr()
            ),
        }
    }
}

/// The next InputStats whose check holds.
fn input_stats_until(
    worker: &mut Worker,
    check: impl Fn(&InputStats) -> bool,
) -> Result<InputStats> {
    worker.report("matching InputStats", |msg| match msg {
        WorkerMsg::InputStats(stats) if check(stats) => Some(*stats),
        _ => None,
    })
}

#[test]
fn lumen_input_refuses_a_hostile_broker_and_a_hostile_net_channel() -> Result<()> {
    let shared_cases = common_refusals("lumen-input")?;

    // Devices and channels of the wrong kind or count: refused with exit 2.
    let null = dev_null()?;
    let (pipe_r, _pipe_w) = rustix::pipe::pipe()?;
    let (stream, _other) = std::os::unix::net::UnixStream::pair()?;
    let datagram = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    let (chan_a, _chan_b) = Channel::pair()?;
    let cases: Vec<(&str, &str, BrokerMsg, Vec<BorrowedFd<'_>>)> = vec![
        (
            "InputDevices: /dev/null as EIS",
            "EIS fd",
            BrokerMsg::InputDevices {
                eis: true,
                uinput: 0,
            },
            vec![null.as_fd()],
        ),
        (
            "InputDevices: datagram as EIS",
            "EIS fd",
            BrokerMsg::InputDevices {
                eis: true,
                uinput: 0,
            },
            vec![datagram.as_fd()],
        ),
        (
            "InputDevices: a pipe as uinput",
            "not a character device",
            BrokerMsg::InputDevices {
                eis: true,
                uinput: 1,
            },
            vec![stream.as_fd(), pipe_r.as_fd()],
        ),
        (
            "InputDevices: count mismatch",
            "announces",
            BrokerMsg::InputDevices {
                eis: true,
                uinput: 3,
            },
            vec![stream.as_fd()],
        ),
        (
            "InputChannel without an fd",
            "carries 0 fds",
            BrokerMsg::InputChannel,
            vec![],
        ),
        (
            "InputChannel: two fds",
            "carries 2 fds",
            BrokerMsg::InputChannel,
            vec![chan_a.as_fd(), chan_a.as_fd()],
        ),
        (
            "InputChannel: a stream socket",
            "input channel",
            BrokerMsg::InputChannel,
            vec![stream.as_fd()],
        ),
        (
            "StartEncode (encode's)",
            "unexpected message",
            BrokerMsg::StartEncode {
                params: params(),
                pool: FramePoolSpec {
                    slots: 4,
                    slot_bytes: 4096,
                },
                generation: 1,
            },
            vec![],
        ),
        (
            "StreamRings (net's)",
            "unexpected message",
            BrokerMsg::StreamRings { generation: 1 },
            vec![],
        ),
    ];
    let count = cases.len();
    for (case, expected, msg, fds) in cases {
        let worker = Worker::start("lumen-input")?;
        worker.send(&msg, &fds)?;
        worker.refuses_and_exits(case, expected)?;
    }

    // The net ↔ input channel: an oversized batch and out-of-range events are dropped and
    // counted; garbage and oversized records close the channel (logged); a fresh channel works.
    let mut worker = Worker::start("lumen-input")?;
    let (net, input_end) = Channel::pair()?;
    worker.send(&BrokerMsg::InputChannel, &[input_end.as_fd()])?;
    drop(input_end);
    net.send(
        &NetToInput::StreamStarted {
            width: 1280,
            height: 720,
        },
        &[],
    )?;
    net.send(
        &NetToInput::Events(vec![InputEvent::MouseMove { dx: 1, dy: 0 }; 65]),
        &[],
    )?;
    let out_of_range = vec![
        InputEvent::MousePosition {
            x: 5000,
            y: 10,
            ref_width: 1280,
            ref_height: 720,
        },
        InputEvent::MousePosition {
            x: 1,
            y: 1,
            ref_width: 0,
            ref_height: 0,
        },
        InputEvent::Text('\u{0}'),
    ];
    let invalid = out_of_range.len() as u64;
    net.send(&NetToInput::Events(out_of_range), &[])?;
    let stats = input_stats_until(&mut worker, |s| s.dropped_invalid >= 65 + invalid)?;
    assert_eq!(stats.dropped_invalid, 65 + invalid, "{stats:?}");
    assert_eq!(stats.injected, 0, "{stats:?}");
    worker.ping()?;
    println!(
        "{:>13} {:>34}: {stats:?}",
        "lumen-input", "oversized batch, out-of-range events"
    );

    let mut noise = Noise(0x1234_5678_9abc_def1);
    let hostile_records: Vec<(&str, Vec<u8>)> = vec![
        ("garbage on the net channel", {
            let mut g = vec![PROTOCOL_VERSION as u8];
            g.extend(noise.bytes(1000));
            g
        }),
        (
            "oversized record on the net channel",
            vec![0x42; MAX_MESSAGE_BYTES + 1],
        ),
        ("wrong version on the net channel", {
            let mut r = lumen_ipc::codec::encode(&NetToInput::StreamEnded)?;
            r[0] = 99;
            r
        }),
    ];
    for (case, record) in hostile_records {
        let (mut net, input_end) = Channel::pair()?;
        worker.send(&BrokerMsg::InputChannel, &[input_end.as_fd()])?;
        drop(input_end);
        // The fresh channel works before the hostile record.
        net.send(&NetToInput::StreamEnded, &[])?;
        send_raw(&net, &record, &[])?;
        // lumen-input closes its end: our next read sees the channel closed.
        let closed = match net.recv_timeout::<lumen_ipc::input::InputToNet>(WAIT) {
            Err(ChannelError::Closed) => true,
            other => {
                println!("{case}: {other:?}");
                false
            }
        };
        assert!(closed, "{case}: lumen-input kept the channel open");
        worker.ping()?;
        println!("{:>13} {case:>34}: channel closed", "lumen-input");
    }
    let (mut net, input_end) = Channel::pair()?;
    worker.send(&BrokerMsg::InputChannel, &[input_end.as_fd()])?;
    drop(input_end);
    net.send(&NetToInput::StreamEnded, &[null.as_fd()])?;
    assert!(
        matches!(
            net.recv_timeout::<lumen_ipc::input::InputToNet>(WAIT),
            Err(ChannelError::Closed)
        ),
        "lumen-input kept a net channel that sent it an fd"
    );
    worker.ping()?;
    println!(
        "{:>13} {:>34}: channel closed",
        "lumen-input", "an fd on the net channel"
    );
    let stderr = worker.shut_down()?;
    assert!(
        stderr.contains("refusing the net channel") && stderr.contains("fds on the input channel"),
        "lumen-input did not say why it closed the net channels:\n{stderr}"
    );
    println!(
        "lumen-input: {shared_cases} shared and {count} device/channel refusals with exit 2, \
         net channel refusals logged, no panic"
    );
    Ok(())
}

// ---- lumen-capture ------------------------------------------------------------------------------

/// A test-pattern capture session's fds as the broker makes them (frame pool, capture's end of the
/// frame channel, the PCM ring and its doorbell); the test keeps encode's end of the channel and
/// the ring.
struct CaptureSession {
    spec: FramePoolSpec,
    encode: Channel,
    pcm: RingFds,
}

impl CaptureSession {
    fn new(generation: u64) -> Result<(CaptureSession, Vec<OwnedFd>)> {
        let spec = pool_spec();
        let pool = frame_pool::create_pool("hostile-capture-frames", &spec)?;
        let (capture_end, encode) = Channel::pair()?;
        let pcm = create_ring("hostile-capture-pcm", PCM_RING_BYTES, generation)?;
        let fds = vec![
            pool,
            OwnedFd::from(capture_end),
            pcm.memfd.try_clone()?,
            pcm.doorbell.try_clone()?,
        ];
        Ok((CaptureSession { spec, encode, pcm }, fds))
    }

    fn start_msg(spec: FramePoolSpec, generation: u64) -> BrokerMsg {
        BrokerMsg::StartCapture {
            params: params(),
            pool: spec,
            source: CaptureSource::TestPattern,
            generation,
        }
    }

    /// The next frame capture hands to encode.
    fn next_frame(&mut self) -> Result<FrameDesc> {
        match self.encode.recv_timeout::<CaptureToEncode>(WAIT) {
            Ok(received) => match received.msg {
                CaptureToEncode::Frame(desc) => Ok(desc),
            },
            Err(e) => bail!("no frame from lumen-capture: {e}"),
        }
    }
}

/// Starts a valid test-pattern session and waits for its first frame.
fn start_capture_session(
    worker: &mut Worker,
    generation: u64,
) -> Result<(CaptureSession, FrameDesc)> {
    let (mut session, fds) = CaptureSession::new(generation)?;
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    worker.send(
        &CaptureSession::start_msg(session.spec, generation),
        &borrowed,
    )?;
    drop(fds);
    worker.wait_started(generation)?;
    let frame = session.next_frame()?;
    Ok((session, frame))
}

/// A memfd of `len` bytes without the seals a frame pool must carry.
fn unsealed_memfd(len: u64) -> Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("hostile-unsealed", rustix::fs::MemfdFlags::CLOEXEC)?;
    rustix::fs::ftruncate(&fd, len)?;
    Ok(fd)
}

#[test]
fn lumen_capture_refuses_a_hostile_broker_and_a_hostile_encode_end() -> Result<()> {
    let shared_cases = common_refusals("lumen-capture")?;

    // Messages for other workers: refused, the worker exits with status 2.
    let null = dev_null()?;
    let others: Vec<(&str, BrokerMsg, Vec<BorrowedFd<'_>>)> = vec![
        (
            "StartEncode (encode's)",
            BrokerMsg::StartEncode {
                params: params(),
                pool: FramePoolSpec {
                    slots: 4,
                    slot_bytes: 4096,
                },
                generation: 1,
            },
            vec![],
        ),
        (
            "InputChannel (input's)",
            BrokerMsg::InputChannel,
            vec![null.as_fd()],
        ),
        (
            "StreamRings (net's)",
            BrokerMsg::StreamRings { generation: 1 },
            vec![],
        ),
    ];
    let other_count = others.len();
    for (case, msg, fds) in others {
        let worker = Worker::start("lumen-capture")?;
        worker.send(&msg, &fds)?;
        worker.refuses_and_exits(case, "unexpected message")?;
    }

    // Broken sessions: SessionFailed naming the fault, and the worker keeps serving.
    let mut worker = Worker::start("lumen-capture")?;
    let mut generation = 10;
    let broken: Vec<(&str, &str, Box<BreakCapture<'_>>)> = vec![
        (
            "three fds",
            "carries 3 fds",
            Box::new(|s, mut fds| {
                fds.pop();
                Ok((CaptureSession::start_msg(s.spec, 0), fds))
            }),
        ),
        (
            "/dev/null as the frame pool",
            "frame pool fd",
            Box::new(|s, mut fds| {
                fds[0] = dev_null()?;
                Ok((CaptureSession::start_msg(s.spec, 0), fds))
            }),
        ),
        (
            "an unsealed memfd as the frame pool",
            "frame pool fd",
            Box::new(|s, mut fds| {
                fds[0] = unsealed_memfd(s.spec.slot_bytes * u64::from(s.spec.slots))?;
                Ok((CaptureSession::start_msg(s.spec, 0), fds))
            }),
        ),
        (
            "a pool smaller than announced",
            "frame pool",
            Box::new(|s, mut fds| {
                let small = FramePoolSpec { slots: 1, ..s.spec };
                fds[0] = frame_pool::create_pool("hostile-small", &small)?;
                Ok((CaptureSession::start_msg(s.spec, 0), fds))
            }),
        ),
        (
            "a pipe as the frame channel",
            "frame channel",
            Box::new(|s, mut fds| {
                let (read, _write) = rustix::pipe::pipe()?;
                fds[1] = read;
                Ok((CaptureSession::start_msg(s.spec, 0), fds))
            }),
        ),
        (
            "a PCM ring of another generation",
            "PCM ring",
            Box::new(|s, mut fds| {
                let other = create_ring("hostile-other-gen", PCM_RING_BYTES, 999)?;
                fds[2] = other.memfd;
                fds[3] = other.doorbell;
                Ok((CaptureSession::start_msg(s.spec, 0), fds))
            }),
        ),
        (
            "a zero-sized picture",
            "session parameters",
            Box::new(|s, fds| {
                let mut msg = CaptureSession::start_msg(s.spec, 0);
                if let BrokerMsg::StartCapture { params, .. } = &mut msg {
                    params.width = 0;
                }
                Ok((msg, fds))
            }),
        ),
    ];
    let broken_count = broken.len();
    for (case, expected, break_it) in broken {
        generation += 1;
        let (session, fds) = CaptureSession::new(generation)?;
        let (mut msg, fds) = break_it(&session, fds)?;
        if let BrokerMsg::StartCapture { generation: g, .. } = &mut msg {
            *g = generation;
        }
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        worker.send(&msg, &borrowed)?;
        let message = worker.session_failed()?;
        assert!(
            message.contains(expected),
            "lumen-capture: {case}: SessionFailed should say {expected:?}: {message:?}"
        );
        worker.ping()?;
        println!("{:>13} {case:>34}: {message}", "lumen-capture");
    }

    // A hostile encode end of a running session: each ends that session with SessionFailed; the
    // worker serves the next one.
    type Misbehave = Box<dyn Fn(&CaptureSession, &FrameDesc) -> Result<()>>;
    let hostile_encode: Vec<(&str, &str, Misbehave)> = vec![
        (
            "a Release of a slot never handed out",
            "released slot 99",
            Box::new(|s, _| {
                s.encode.send(&EncodeToCapture::Release { slot: 99 }, &[])?;
                Ok(())
            }),
        ),
        (
            "a Release twice",
            "had not handed",
            Box::new(|s, frame| {
                let release = EncodeToCapture::Release { slot: frame.slot };
                s.encode.send(&release, &[])?;
                s.encode.send(&release, &[])?;
                Ok(())
            }),
        ),
        (
            "an fd with a Release",
            "fds",
            Box::new(|s, frame| {
                let null = dev_null()?;
                s.encode.send(
                    &EncodeToCapture::Release { slot: frame.slot },
                    &[null.as_fd()],
                )?;
                Ok(())
            }),
        ),
        (
            "garbage on the frame channel",
            "frame channel",
            Box::new(|s, _| {
                let mut noise = Noise(0xfeed_beef_0bad_cafe);
                let mut record = vec![PROTOCOL_VERSION as u8];
                record.extend(noise.bytes(600));
                send_raw(&s.encode, &record, &[])
            }),
        ),
    ];
    let hostile_count = hostile_encode.len();
    for (case, expected, misbehave) in hostile_encode {
        generation += 1;
        let (session, frame) = start_capture_session(&mut worker, generation)?;
        misbehave(&session, &frame)?;
        let message = worker
            .session_failed()
            .with_context(|| format!("lumen-capture: {case}"))?;
        assert!(
            message.contains(expected),
            "lumen-capture: {case}: SessionFailed should say {expected:?}: {message:?}"
        );
        worker.ping()?;
        println!("{:>13} {case:>34}: {message}", "lumen-capture");
    }

    // Random bytes over the PCM ring's header while capture produces into it: the session may
    // fail (reported), the worker must not.
    generation += 1;
    let (session, _) = start_capture_session(&mut worker, generation)?;
    let mut noise = Noise(0x0dd_ba11_5eed_0001);
    for _ in 0..20 {
        let bytes = noise.bytes(HEADER_LEN);
        rustix::io::pwrite(&session.pcm.memfd, &bytes, 0).context("pwrite")?;
        ring_doorbell(&session.pcm.doorbell);
        std::thread::sleep(Duration::from_millis(25));
    }
    worker.ping()?;
    let scribbled = drain_failure(&mut worker)?;
    println!(
        "{:>13} {:>34}: {}",
        "lumen-capture",
        "scribbled PCM ring header",
        scribbled.as_deref().unwrap_or("session kept running")
    );
    worker.send(&BrokerMsg::StopSession, &[])?;
    worker.ping()?;
    worker.shut_down()?;
    println!(
        "lumen-capture: {shared_cases} shared and {other_count} other-worker refusals with exit 2, \
         {broken_count} broken sessions and {hostile_count} hostile encode ends reported, no panic"
    );
    Ok(())
}

// ---- lumen-net ---------------------------------------------------------------------------------

/// A TCP listener on loopback, as the broker binds the HTTP, HTTPS and RTSP ports.
fn tcp_listener() -> Result<OwnedFd> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.into())
}

/// A UDP socket on loopback, as the broker binds the media and control ports.
fn udp_socket() -> Result<OwnedFd> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.into())
}

#[test]
fn lumen_net_refuses_a_hostile_broker() -> Result<()> {
    let shared_cases = common_refusals("lumen-net")?;

    // Sockets, identities and channels of the wrong kind, count or order, and messages for other
    // workers: refused with exit 2.
    let null = dev_null()?;
    let (http, https, udp) = (tcp_listener()?, tcp_listener()?, udp_socket()?);
    let (stream, _other) = std::os::unix::net::UnixStream::pair()?;
    let identity = || lumen_ipc::net_msg::NetIdentity {
        uniqueid: "0123456789ABCDEF".into(),
        cert_pem: "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
            .into(),
        paired_sha256: Vec::new(),
        encrypt_video: true,
        encoder: Default::default(),
    };
    let cases: Vec<(&str, &str, BrokerMsg, Vec<BorrowedFd<'_>>)> = vec![
        (
            "NetSockets: two roles, one fd",
            "2 roles but carries 1 fds",
            BrokerMsg::NetSockets {
                roles: vec![SocketRole::Http, SocketRole::Https],
            },
            vec![http.as_fd()],
        ),
        (
            "NetSockets: a role twice",
            "repeats the role",
            BrokerMsg::NetSockets {
                roles: vec![SocketRole::Http, SocketRole::Http],
            },
            vec![http.as_fd(), https.as_fd()],
        ),
        (
            "NetSockets: /dev/null as HTTP",
            "Http socket",
            BrokerMsg::NetSockets {
                roles: vec![SocketRole::Http],
            },
            vec![null.as_fd()],
        ),
        (
            "NetSockets: UDP as HTTP",
            "Http socket",
            BrokerMsg::NetSockets {
                roles: vec![SocketRole::Http],
            },
            vec![udp.as_fd()],
        ),
        (
            "NetSockets: a listener as video",
            "Video socket",
            BrokerMsg::NetSockets {
                roles: vec![SocketRole::Video],
            },
            vec![http.as_fd()],
        ),
        (
            "NetIdentity with an fd",
            "unexpected message",
            BrokerMsg::NetIdentity(identity()),
            vec![null.as_fd()],
        ),
        (
            "NetMdns before the sockets",
            "without an mDNS socket",
            BrokerMsg::NetMdns(lumen_ipc::msg::MdnsAdvert {
                instance: "lumen".into(),
                host: "lumen".into(),
                port: 47989,
                interfaces: vec![lumen_ipc::msg::MdnsInterface {
                    address: std::net::Ipv4Addr::LOCALHOST,
                    prefix_len: 8,
                }],
            }),
            vec![],
        ),
        (
            "NetMdns with no interface",
            "no interface to advertise on",
            BrokerMsg::NetMdns(lumen_ipc::msg::MdnsAdvert {
                instance: "lumen".into(),
                host: "lumen".into(),
                port: 47989,
                interfaces: Vec::new(),
            }),
            vec![],
        ),
        (
            "InputChannel without an fd",
            "carries 0 fds",
            BrokerMsg::InputChannel,
            vec![],
        ),
        (
            "InputChannel: a stream socket",
            "InputChannel",
            BrokerMsg::InputChannel,
            vec![stream.as_fd()],
        ),
        (
            "StreamRings before streaming",
            "without streaming",
            BrokerMsg::StreamRings { generation: 1 },
            vec![],
        ),
        (
            "StartCapture (capture's)",
            "unexpected message",
            BrokerMsg::StartCapture {
                params: params(),
                pool: FramePoolSpec {
                    slots: 4,
                    slot_bytes: 4096,
                },
                source: CaptureSource::TestPattern,
                generation: 1,
            },
            vec![],
        ),
    ];
    let count = cases.len();
    for (case, expected, msg, fds) in cases {
        let worker = Worker::start("lumen-net")?;
        worker.send(&msg, &fds)?;
        worker.refuses_and_exits(case, expected)?;
    }

    // In order, then out of it: sockets twice; an identity whose certificate is not one.
    let roles = vec![SocketRole::Http, SocketRole::Https];
    let sockets = |w: &Worker| {
        w.send(
            &BrokerMsg::NetSockets {
                roles: roles.clone(),
            },
            &[http.as_fd(), https.as_fd()],
        )
    };
    let mut worker = Worker::start("lumen-net")?;
    sockets(&worker)?;
    worker.ping()?;
    sockets(&worker)?;
    worker.refuses_and_exits("NetSockets twice", "sent twice")?;

    let mut worker = Worker::start("lumen-net")?;
    sockets(&worker)?;
    worker.ping()?;
    worker.send(&BrokerMsg::NetIdentity(identity()), &[])?;
    worker.refuses_and_exits("NetIdentity: a broken certificate", "certificate")?;

    // A reply to a request net never made is dropped; net goes on serving.
    let mut worker = Worker::start("lumen-net")?;
    worker.send(
        &BrokerMsg::NetReply {
            id: 77,
            reply: lumen_ipc::net_msg::NetReply::Refused("never asked".into()),
        },
        &[],
    )?;
    worker.ping()?;
    let stderr = worker.shut_down()?;
    assert!(
        stderr.contains("late broker reply"),
        "lumen-net did not say it dropped the unasked reply:\n{stderr}"
    );
    println!(
        "{:>13} {:>34}: dropped, still serving",
        "lumen-net", "a reply to no request"
    );
    println!(
        "lumen-net: {shared_cases} shared and {} socket/identity/channel refusals with exit 2, no \
         panic",
        count + 2
    );
    Ok(())
}
