//! The real `lumen-encode --worker` under its sandbox (seccomp, Landlock, empty mount namespace),
//! started the way the broker starts it (its channel at fd 3), running H.264 and HEVC sessions with
//! every audio layout. A syscall the codecs need and the allowlist lacks kills the worker with a
//! `seccomp: blocked syscall NAME` line, which this test prints.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lumen_ipc::channel::Channel;
use lumen_ipc::frame_pool::{create_pool, read_only_fd, round_slot_bytes, FramePool};
use lumen_ipc::media::{
    AudioLayout, CaptureToEncode, EncodeToCapture, EncoderControl, FrameDesc, FramePoolSpec,
    PixelFormat, Plane, SessionParams, VideoCodec, AUDIO_RING_BYTES, PCM_RING_BYTES,
    VIDEO_RING_BYTES,
};
use lumen_ipc::msg::{BrokerMsg, WorkerMsg, CHANNEL_FD, WORKER_FLAG};
use lumen_ipc::ring::{create_ring, Consumer, Producer, RecordMeta, FLAG_KEYFRAME};

const W: u32 = 640;
const H: u32 = 360;

fn spawn() -> (std::process::Child, Channel) {
    let (broker, worker) = Channel::pair().unwrap();
    let fd: OwnedFd = worker.into();
    let raw = fd.as_raw_fd();
    // LUMEN_TEST_STRACE=FILE: run the worker under `strace -f -o FILE` to see what failed.
    let mut command = match std::env::var_os("LUMEN_TEST_STRACE") {
        Some(out) => {
            let mut c = Command::new("strace");
            c.args(["-f", "-tt", "-o"])
                .arg(out)
                .arg(env!("CARGO_BIN_EXE_lumen-encode"));
            c
        }
        // LUMEN_TEST_AS_NOBODY=1: as uid/gid 65534, as a root broker runs its workers.
        None if std::env::var_os("LUMEN_TEST_AS_NOBODY").is_some() => {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_lumen-encode"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_lumen-encode")),
    };
    command
        .arg(WORKER_FLAG)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
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
    let child = command.spawn().unwrap();
    drop(fd);
    (child, broker)
}

/// The next message that is not about an older session (`generation` 0: any session).
fn recv(broker: &mut Channel, generation: u64) -> WorkerMsg {
    loop {
        let msg = broker
            .recv_timeout::<WorkerMsg>(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no message from the worker: {e}"))
            .msg;
        match msg {
            WorkerMsg::SessionStats { .. } => {}
            WorkerMsg::SessionFailed { generation: g, .. } if g < generation => {}
            msg => return msg,
        }
    }
}

fn session(broker: &mut Channel, generation: u64, codec: VideoCodec, audio: AudioLayout) {
    let spec = FramePoolSpec {
        slots: 3,
        slot_bytes: round_slot_bytes(u64::from(W * H * 4)),
    };
    let memfd = create_pool("pool", &spec).unwrap();
    let ro = read_only_fd(memfd.as_fd()).unwrap();
    let mut pool = FramePool::map(memfd, spec, true).unwrap();
    let (mut capture, capture_enc) = Channel::pair().unwrap();
    let (control, control_enc) = Channel::pair().unwrap();
    let pcm = create_ring("pcm", PCM_RING_BYTES, generation).unwrap();
    let video = create_ring("video", VIDEO_RING_BYTES, generation).unwrap();
    let audio_ring = create_ring("audio", AUDIO_RING_BYTES, generation).unwrap();
    let capture_enc: OwnedFd = capture_enc.into();
    let control_enc: OwnedFd = control_enc.into();
    let params = SessionParams {
        width: W,
        height: H,
        fps: 30,
        bitrate_kbps: 2000,
        codec,
        audio,
        audio_packet_ms: 5,
    };
    broker
        .send(
            &BrokerMsg::StartEncode {
                params,
                pool: spec,
                generation,
            },
            &[
                ro.as_fd(),
                capture_enc.as_fd(),
                pcm.memfd.as_fd(),
                pcm.doorbell.as_fd(),
                video.memfd.as_fd(),
                video.doorbell.as_fd(),
                audio_ring.memfd.as_fd(),
                audio_ring.doorbell.as_fd(),
                control_enc.as_fd(),
            ],
        )
        .unwrap();
    drop((ro, capture_enc, control_enc));
    match recv(broker, generation) {
        WorkerMsg::SessionStarted { generation: g } if g == generation => {}
        other => panic!("{codec:?}: {other:?}"),
    }
    let mut pcm_ring = Producer::attach(pcm.memfd, pcm.doorbell, generation).unwrap();
    let mut video_ring = Consumer::attach(video.memfd, video.doorbell, generation).unwrap();
    let mut audio_out =
        Consumer::attach(audio_ring.memfd, audio_ring.doorbell, generation).unwrap();
    let samples = 240 * audio.channels() as usize;
    let mut aus = 0;
    let mut keyframes = 0;
    let mut packets = 0;
    let start = Instant::now();
    for n in 0..30u64 {
        let slot = (n % 3) as u32;
        if n > 0 {
            // Slots come back before they are reused.
            let _ = capture.recv_timeout::<EncodeToCapture>(Duration::from_secs(5));
        }
        let bytes = pool.slot_mut(slot).unwrap();
        for (i, b) in bytes[..(W * H * 4) as usize].iter_mut().enumerate() {
            *b = (i as u64 * 7 + n * 13) as u8;
        }
        capture
            .send(
                &CaptureToEncode::Frame(FrameDesc {
                    slot,
                    seq: n,
                    captured_ns: n,
                    width: W,
                    height: H,
                    format: PixelFormat::Bgrx,
                    planes: vec![Plane {
                        offset: 0,
                        stride: u64::from(W * 4),
                    }],
                }),
                &[],
            )
            .unwrap();
        let pcm_bytes: Vec<u8> = (0..samples)
            .flat_map(|i| ((i as f32 * 0.01).sin() * 0.3).to_le_bytes())
            .collect();
        pcm_ring
            .push(
                &RecordMeta {
                    seq: n,
                    ..RecordMeta::default()
                },
                &pcm_bytes,
            )
            .unwrap();
        if n == 15 {
            control.send(&EncoderControl::RequestIdr, &[]).unwrap();
            control
                .send(&EncoderControl::SetBitrate { kbps: 1000 }, &[])
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(33));
        while let Some(record) = video_ring.next().unwrap() {
            aus += 1;
            if record.meta().flags & FLAG_KEYFRAME != 0 {
                keyframes += 1;
            }
            record.release();
        }
        while let Some(record) = audio_out.next().unwrap() {
            packets += 1;
            record.release();
        }
    }
    assert!(
        aus >= 25,
        "{codec:?}: {aus} access units in {:?}",
        start.elapsed()
    );
    assert!(
        keyframes >= 2,
        "{codec:?}: {keyframes} keyframes, {aus} access units in {:?}",
        start.elapsed()
    );
    assert!(packets >= 25, "{audio:?}: {packets} Opus packets");
    broker.send(&BrokerMsg::StopSession, &[]).unwrap();
}

#[test]
fn sessions_run_under_the_sandbox() {
    let (mut child, mut broker) = spawn();
    let mut stderr = child.stderr.take().unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match recv(&mut broker, 0) {
            WorkerMsg::Ready { .. } => {}
            other => panic!("{other:?}"),
        }
        // Right after Ready: what this worker can encode, found before lock-down. Every session
        // below needs its codec and layout in it.
        match recv(&mut broker, 0) {
            WorkerMsg::EncoderCapabilities(caps) => {
                for codec in [VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Av1] {
                    assert!(caps.codecs.contains(&codec), "{caps:?}");
                }
                for layout in [
                    AudioLayout::Stereo,
                    AudioLayout::Surround51,
                    AudioLayout::Surround71,
                ] {
                    assert!(caps.audio_layouts.contains(&layout), "{caps:?}");
                }
            }
            other => panic!("after Ready: {other:?}"),
        }
        session(&mut broker, 1, VideoCodec::H264, AudioLayout::Stereo);
        session(&mut broker, 2, VideoCodec::Hevc, AudioLayout::Surround51);
        session(&mut broker, 3, VideoCodec::H264, AudioLayout::Surround71);
        session(&mut broker, 4, VideoCodec::Av1, AudioLayout::Stereo);
        // A start the worker cannot take fails that session only; the worker answers on.
        broker
            .send(
                &BrokerMsg::StartEncode {
                    params: SessionParams {
                        width: W,
                        height: H,
                        fps: 30,
                        bitrate_kbps: 2000,
                        codec: VideoCodec::H264,
                        audio: AudioLayout::Stereo,
                        audio_packet_ms: 5,
                    },
                    pool: FramePoolSpec {
                        slots: 1,
                        slot_bytes: 4096,
                    },
                    generation: 5,
                },
                &[],
            )
            .unwrap();
        assert!(matches!(
            recv(&mut broker, 5),
            WorkerMsg::SessionFailed { generation: 5, .. }
        ));
        broker.send(&BrokerMsg::Ping { seq: 9 }, &[]).unwrap();
        assert_eq!(recv(&mut broker, 6), WorkerMsg::Pong { seq: 9 });
        broker.send(&BrokerMsg::Shutdown, &[]).unwrap();
    }));
    let status = if result.is_ok() {
        child.wait().unwrap()
    } else {
        let _ = child.kill();
        child.wait().unwrap()
    };
    let mut log = String::new();
    let _ = stderr.read_to_string(&mut log);
    eprintln!("worker stderr:\n{log}");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(!log.contains("seccomp: blocked"), "{log}");
    assert!(status.success(), "{status}");
}
