//! The real `lumen-capture` binary, locked down (seccomp, Landlock, namespaces, rlimits), captures
//! from a real (private, headless) PipeWire the way the broker drives it: the broker connects to
//! the PipeWire socket and hands the fd over with `StartCapture`; frames of the node's size and
//! format reach the frame pool, sound reaches the PCM ring, and no syscall outside the allowlist is
//! made (one would kill the worker with status 159 and name the call on stderr).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lumen_ipc::channel::Channel;
use lumen_ipc::frame_pool::{create_pool, read_only_fd, FramePool};
use lumen_ipc::media::{
    AudioLayout, CaptureSource, CaptureToEncode, EncodeToCapture, FramePoolSpec, PixelFormat,
    SessionParams, VideoCodec, PCM_RING_BYTES,
};
use lumen_ipc::msg::{BrokerMsg, Layer, WorkerKind, WorkerMsg, CHANNEL_FD, WORKER_FLAG};
use lumen_ipc::ring::{create_ring, Consumer};
use lumen_tests::pipewire_env::{PipeWireEnv, VideoSource};

/// The worker with its control channel at `CHANNEL_FD`, as the broker starts it.
fn spawn_worker() -> (Child, Channel) {
    let (broker_end, worker_end) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    let raw = worker_end.as_raw_fd();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lumen-capture"));
    command.arg(WORKER_FLAG).stderr(Stdio::inherit());
    // SAFETY: between fork and exec the closure makes only async-signal-safe calls (dup2, fcntl)
    // on fds this process owns.
    unsafe {
        command.pre_exec(move || {
            if raw == CHANNEL_FD {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, CHANNEL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("spawning lumen-capture");
    drop(worker_end);
    (child, Channel::from_fd(broker_end).expect("channel"))
}

/// The next message that is not `SessionStats`.
fn next_report(broker: &mut Channel) -> WorkerMsg {
    loop {
        match broker
            .recv_timeout::<WorkerMsg>(Duration::from_secs(15))
            .expect("a report from the worker")
            .msg
        {
            WorkerMsg::SessionStats { .. } => continue,
            other => return other,
        }
    }
}

/// Needs lumen-capture's `Policy.max_file_bytes` above 0: PipeWire sizes its shared-memory pool
/// (memfds) with ftruncate, and RLIMIT_FSIZE 0 fails the session with "File too large".
#[test]
fn locked_down_worker_captures_from_a_real_pipewire() {
    let Some(mut env) = PipeWireEnv::start().expect("starting the private PipeWire") else {
        return;
    };
    env.add_video_source(&VideoSource {
        name: "lumen-sandbox-video".into(),
        width: 320,
        height: 240,
        fps: 30,
        format: "BGRx".into(),
        solid_argb: Some(0xFF10_2030),
    })
    .expect("video source");
    env.add_null_sink("lumen-sandbox-sink").expect("null sink");
    env.add_player("lumen-sandbox-player", 440).expect("player");

    let (mut child, mut broker) = spawn_worker();
    let ready = match broker.recv_timeout::<WorkerMsg>(Duration::from_secs(10)) {
        Ok(ready) => ready.msg,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no Ready ({e}); see the worker's stderr above");
        }
    };
    let WorkerMsg::Ready { kind, sandbox } = ready else {
        panic!("expected Ready, got {ready:?}");
    };
    assert_eq!(kind, WorkerKind::Capture);
    // PipeWire's preload must leave the worker single-threaded, or the user namespace (and all
    // that hangs on it) is refused at lock-down.
    for (layer, state) in [
        ("seccomp", sandbox.seccomp),
        ("user_ns", sandbox.user_ns),
        ("mount_ns", sandbox.mount_ns),
        ("net_ns", sandbox.net_ns),
    ] {
        assert_eq!(state, Layer::On, "{layer}: {sandbox:?}");
    }

    let params = SessionParams {
        width: 1280,
        height: 720,
        fps: 60,
        bitrate_kbps: 5000,
        codec: VideoCodec::H264,
        audio: AudioLayout::Stereo,
        audio_packet_ms: 5,
    };
    let spec = FramePoolSpec {
        slots: 3,
        slot_bytes: 1 << 20,
    };
    let generation = 3;
    let memfd = create_pool("pool", &spec).unwrap();
    let pool = FramePool::map(read_only_fd(memfd.as_fd()).unwrap(), spec, false).unwrap();
    let (capture_end, encode_end) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut encode = Channel::from_fd(encode_end).unwrap();
    let ring = create_ring("pcm", PCM_RING_BYTES, generation).unwrap();
    let mut pcm = Consumer::attach(
        ring.memfd.try_clone().unwrap(),
        ring.doorbell.try_clone().unwrap(),
        generation,
    )
    .unwrap();
    // What the broker does: connect to the PipeWire socket and hand the connection over.
    let remote = OwnedFd::from(env.connect().unwrap());
    let fds = [
        memfd.as_fd(),
        capture_end.as_fd(),
        ring.memfd.as_fd(),
        ring.doorbell.as_fd(),
        remote.as_fd(),
    ];
    broker
        .send(
            &BrokerMsg::StartCapture {
                params,
                pool: spec,
                source: CaptureSource::PipeWire {
                    video_node: "lumen-sandbox-video".into(),
                    audio_node: None,
                },
                generation,
            },
            &fds,
        )
        .unwrap();
    drop((memfd, capture_end, ring, remote));
    assert_eq!(
        next_report(&mut broker),
        WorkerMsg::SessionStarted { generation }
    );

    let begin = Instant::now();
    let mut frames = 0u32;
    let mut packets = 0u32;
    while begin.elapsed() < Duration::from_secs(3) {
        if let Ok(received) = encode.recv_timeout::<CaptureToEncode>(Duration::from_millis(10)) {
            let CaptureToEncode::Frame(desc) = received.msg;
            desc.check(&spec).unwrap();
            assert_eq!(
                (desc.width, desc.height, desc.format),
                (320, 240, PixelFormat::Bgrx)
            );
            let mut pixel = [0u8; 4];
            let middle = desc.planes[0].offset + desc.planes[0].stride * 120 + 4 * 160;
            assert!(pool.copy_out(desc.slot, middle as usize, &mut pixel));
            assert_eq!(&pixel[..3], &[0x30, 0x20, 0x10], "BGR of 0x102030");
            encode
                .send(&EncodeToCapture::Release { slot: desc.slot }, &[])
                .unwrap();
            frames += 1;
        }
        while let Some(view) = pcm.next().unwrap() {
            assert_eq!(view.len(), 240 * 2 * 4);
            view.release();
            packets += 1;
        }
    }
    eprintln!("sandboxed PipeWire capture: {frames} frames, {packets} PCM packets in 3 s");
    assert!(frames >= 45, "{frames} frames in 3 s from a 30 fps node");
    assert!(
        packets >= 300,
        "{packets} PCM packets in 3 s (600 expected)"
    );

    // Stats name the negotiated source.
    let stats = match broker
        .recv_timeout::<WorkerMsg>(Duration::from_secs(3))
        .unwrap()
        .msg
    {
        WorkerMsg::SessionStats { stats, .. } => stats,
        other => panic!("expected stats, got {other:?}"),
    };
    assert!(
        stats.component.starts_with("pipewire BGRx 320x240"),
        "{stats:?}"
    );

    broker.send(&BrokerMsg::StopSession, &[]).unwrap();
    broker.send(&BrokerMsg::Ping { seq: 9 }, &[]).unwrap();
    loop {
        match broker
            .recv_timeout::<WorkerMsg>(Duration::from_secs(5))
            .unwrap()
            .msg
        {
            WorkerMsg::Pong { seq: 9 } => break,
            WorkerMsg::SessionStats { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    broker.send(&BrokerMsg::Shutdown, &[]).unwrap();
    // A syscall outside the allowlist would have ended it with 159 (SIGSYS).
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
