//! The real `lumen-capture` binary, locked down (seccomp, Landlock, namespaces), runs a test-pattern
//! session the way the broker drives it: every thread it starts after lock-down, every syscall its
//! sleeps and sends make, must pass its own seccomp allowlist (a blocked one kills it, exit 159).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lumen_core::pattern::read_code;
use lumen_ipc::channel::Channel;
use lumen_ipc::frame_pool::{create_pool, read_only_fd, round_slot_bytes, FramePool};
use lumen_ipc::media::{
    AudioLayout, CaptureSource, CaptureToEncode, EncodeToCapture, FramePoolSpec, SessionParams,
    VideoCodec, PCM_RING_BYTES,
};
use lumen_ipc::msg::{BrokerMsg, Layer, WorkerKind, WorkerMsg, CHANNEL_FD, WORKER_FLAG};
use lumen_ipc::ring::{create_ring, Consumer};

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
    // Its stderr (sandbox notes, a blocked syscall's name) goes straight to the test's output.
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

struct Peer {
    fds: Vec<OwnedFd>,
    pool: FramePool,
    encode: Channel,
    pcm: Consumer,
}

fn peer(spec: FramePoolSpec, generation: u64) -> Peer {
    let memfd = create_pool("pool", &spec).unwrap();
    let pool = FramePool::map(read_only_fd(memfd.as_fd()).unwrap(), spec, false).unwrap();
    let (capture_end, encode_end) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let ring = create_ring("pcm", PCM_RING_BYTES, generation).unwrap();
    let pcm = Consumer::attach(
        ring.memfd.try_clone().unwrap(),
        ring.doorbell.try_clone().unwrap(),
        generation,
    )
    .unwrap();
    Peer {
        fds: vec![memfd, capture_end, ring.memfd, ring.doorbell],
        pool,
        encode: Channel::from_fd(encode_end).unwrap(),
        pcm,
    }
}

/// Runs one session for `run_for` and checks frames, PCM and stats.
fn run_session(broker: &mut Channel, params: SessionParams, generation: u64, run_for: Duration) {
    let spec = FramePoolSpec {
        slots: 3,
        slot_bytes: round_slot_bytes(u64::from(params.width * params.height) * 2),
    };
    let mut peer = peer(spec, generation);
    let fds: Vec<_> = peer.fds.iter().map(|fd| fd.as_fd()).collect();
    broker
        .send(
            &BrokerMsg::StartCapture {
                params,
                pool: spec,
                source: CaptureSource::TestPattern,
                generation,
            },
            &fds,
        )
        .unwrap();
    drop(fds);
    peer.fds.clear();
    let started = broker
        .recv_timeout::<WorkerMsg>(Duration::from_secs(5))
        .unwrap();
    assert_eq!(started.msg, WorkerMsg::SessionStarted { generation });

    let begin = Instant::now();
    let mut frames = 0u64;
    while begin.elapsed() < run_for {
        let CaptureToEncode::Frame(desc) = peer
            .encode
            .recv_timeout(Duration::from_secs(2))
            .expect("a frame")
            .msg;
        desc.check(&spec).unwrap();
        let stride = desc.planes[0].stride as usize;
        let mut luma = vec![0u8; stride * params.height as usize];
        assert!(peer
            .pool
            .copy_out(desc.slot, desc.planes[0].offset as usize, &mut luma));
        let code = read_code(&luma, stride, params.width, params.height).expect("frame code");
        assert_eq!(u64::from(code.frame), desc.seq);
        peer.encode
            .send(&EncodeToCapture::Release { slot: desc.slot }, &[])
            .unwrap();
        frames += 1;
    }
    let mut packets = 0;
    while let Some(view) = peer.pcm.next().unwrap() {
        assert_eq!(
            view.len(),
            (params.audio_samples_per_packet() * params.audio.channels() * 4) as usize
        );
        view.release();
        packets += 1;
    }
    let expected_frames = run_for.as_millis() as u64 * u64::from(params.fps) / 1000;
    assert!(
        frames * 2 >= expected_frames,
        "{frames} frames, {expected_frames} expected"
    );
    assert!(packets > 0);
    match broker
        .recv_timeout::<WorkerMsg>(Duration::from_secs(3))
        .unwrap()
        .msg
    {
        WorkerMsg::SessionStats {
            generation: g,
            stats,
        } if g == generation => {
            assert!(stats.frames > 0 && stats.audio_packets > 0, "{stats:?}")
        }
        other => panic!("expected stats, got {other:?}"),
    }
}

#[test]
fn locked_down_worker_runs_test_pattern_sessions() {
    let (mut child, mut broker) = spawn_worker();
    let ready = match broker.recv_timeout::<WorkerMsg>(Duration::from_secs(10)) {
        Ok(ready) => ready.msg,
        Err(e) => {
            let _ = child.kill();
            panic!("no Ready ({e}); see the worker's stderr above");
        }
    };
    let WorkerMsg::Ready { kind, sandbox } = ready else {
        panic!("expected Ready, got {ready:?}");
    };
    assert_eq!(kind, WorkerKind::Capture);
    assert_eq!(sandbox.seccomp, Layer::On, "{sandbox:?}");

    let params = SessionParams {
        width: 640,
        height: 360,
        fps: 60,
        bitrate_kbps: 1000,
        codec: VideoCodec::H264,
        audio: AudioLayout::Stereo,
        audio_packet_ms: 5,
    };
    run_session(&mut broker, params, 1, Duration::from_millis(1200));
    // A second session replaces the first: threads stopped, joined and started again.
    let second = SessionParams {
        width: 1280,
        height: 720,
        fps: 30,
        audio: AudioLayout::Surround71,
        audio_packet_ms: 20,
        ..params
    };
    run_session(&mut broker, second, 2, Duration::from_millis(1200));
    broker.send(&BrokerMsg::StopSession, &[]).unwrap();
    broker.send(&BrokerMsg::Ping { seq: 5 }, &[]).unwrap();
    loop {
        match broker
            .recv_timeout::<WorkerMsg>(Duration::from_secs(3))
            .unwrap()
            .msg
        {
            WorkerMsg::Pong { seq: 5 } => break,
            WorkerMsg::SessionStats { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    broker.send(&BrokerMsg::Shutdown, &[]).unwrap();
    // A syscall outside the allowlist would have ended it with 159 (SIGSYS).
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
