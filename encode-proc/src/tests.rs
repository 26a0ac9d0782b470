//! Whole-session tests: real pools, rings and channels as the broker makes them, the handler as the
//! worker runs it (without the sandbox), and FFmpeg / libopus decoders reading the output back.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ffmpeg_next as ffmpeg;
use lumen_ipc::channel::Channel;
use lumen_ipc::frame_pool::{create_pool, read_only_fd, round_slot_bytes, FramePool};
use lumen_ipc::media::{
    AudioLayout, CaptureToEncode, EncodeToCapture, EncoderControl, FrameDesc, FramePoolSpec,
    PixelFormat, Plane, SessionParams, VideoCodec, AUDIO_RING_BYTES, PCM_RING_BYTES,
    VIDEO_RING_BYTES,
};
use lumen_ipc::msg::{BrokerMsg, WorkerMsg};
use lumen_ipc::ring::{
    create_ring, Consumer, Producer, RecordMeta, FLAG_END_OF_FRAME, FLAG_KEYFRAME, TS_CAPTURED,
    TS_SPARE,
};

use crate::annexb;
use crate::audio::{testing::OpusDecoder, Layout};
use crate::session::Handler;
use crate::video::Probe;

const W: u32 = 640;
const H: u32 = 360;
const SLOTS: u32 = 4;

fn probe() -> Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            ffmpeg::init().unwrap();
            ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
            Probe::run()
        })
        .clone()
}

fn params(codec: VideoCodec, fps: u32) -> SessionParams {
    SessionParams {
        width: W,
        height: H,
        fps,
        bitrate_kbps: 1000,
        codec,
        audio: AudioLayout::Stereo,
        audio_packet_ms: 5,
    }
}

fn dup(fd: &OwnedFd) -> OwnedFd {
    fd.try_clone().unwrap()
}

/// The broker's and peers' side of one session.
struct Rig {
    handler: Handler,
    reports: Channel,
    capture: Channel,
    pool: FramePool,
    spec: FramePoolSpec,
    pcm: Producer,
    video: Consumer,
    audio: Consumer,
    control: Channel,
    generation: u64,
    /// The fds `StartEncode` will carry.
    fds: Option<Vec<OwnedFd>>,
}

impl Rig {
    fn new() -> Rig {
        let (ours, theirs) = Channel::pair().unwrap();
        Self::with_handler(Handler::new(probe(), theirs), ours, 7)
    }

    /// A fresh set of session fds; the handler is kept (as the worker keeps it across sessions).
    fn with_handler(handler: Handler, reports: Channel, generation: u64) -> Rig {
        let spec = FramePoolSpec {
            slots: SLOTS,
            slot_bytes: round_slot_bytes(u64::from(W * H * 4)),
        };
        let memfd = create_pool("test-pool", &spec).unwrap();
        let ro = read_only_fd(memfd.as_fd()).unwrap();
        let pool = FramePool::map(memfd, spec, true).unwrap();
        let (capture, capture_enc) = Channel::pair().unwrap();
        let (control, control_enc) = Channel::pair().unwrap();
        let pcm = create_ring("pcm", PCM_RING_BYTES, generation).unwrap();
        let video = create_ring("video", VIDEO_RING_BYTES, generation).unwrap();
        let audio = create_ring("audio", AUDIO_RING_BYTES, generation).unwrap();
        let fds = vec![
            ro,
            capture_enc.into(),
            dup(&pcm.memfd),
            dup(&pcm.doorbell),
            dup(&video.memfd),
            dup(&video.doorbell),
            dup(&audio.memfd),
            dup(&audio.doorbell),
            control_enc.into(),
        ];
        Rig {
            handler,
            reports,
            capture,
            pool,
            spec,
            pcm: Producer::attach(pcm.memfd, pcm.doorbell, generation).unwrap(),
            video: Consumer::attach(video.memfd, video.doorbell, generation).unwrap(),
            audio: Consumer::attach(audio.memfd, audio.doorbell, generation).unwrap(),
            control,
            generation,
            fds: Some(fds),
        }
    }

    fn start(&mut self, params: SessionParams) {
        let fds = self.fds.take().unwrap();
        self.handler
            .handle(
                BrokerMsg::StartEncode {
                    params,
                    pool: self.spec,
                    generation: self.generation,
                },
                fds,
            )
            .unwrap();
    }

    /// The next report that is not `SessionStats`.
    fn report(&mut self) -> WorkerMsg {
        loop {
            let msg = self
                .reports
                .recv_timeout::<WorkerMsg>(Duration::from_secs(10))
                .unwrap()
                .msg;
            if !matches!(msg, WorkerMsg::SessionStats { .. }) {
                return msg;
            }
        }
    }

    fn stats(&mut self) -> lumen_ipc::media::MediaStats {
        loop {
            let msg = self
                .reports
                .recv_timeout::<WorkerMsg>(Duration::from_secs(10))
                .unwrap()
                .msg;
            if let WorkerMsg::SessionStats { stats, .. } = msg {
                return stats;
            }
        }
    }

    fn write_nv12(&mut self, slot: u32, seq: u64, luma: impl Fn(u32, u32) -> u8, uv: (u8, u8)) {
        let bytes = self.pool.slot_mut(slot).unwrap();
        for y in 0..H {
            for x in 0..W {
                bytes[(y * W + x) as usize] = luma(x, y);
            }
        }
        let chroma = &mut bytes[(W * H) as usize..(W * H * 3 / 2) as usize];
        for pair in chroma.chunks_exact_mut(2) {
            pair[0] = uv.0;
            pair[1] = uv.1;
        }
        self.send(FrameDesc {
            slot,
            seq,
            captured_ns: 1000 + seq,
            width: W,
            height: H,
            format: PixelFormat::Nv12,
            planes: vec![
                Plane {
                    offset: 0,
                    stride: u64::from(W),
                },
                Plane {
                    offset: u64::from(W * H),
                    stride: u64::from(W),
                },
            ],
        });
    }

    fn write_bgrx(&mut self, slot: u32, seq: u64, bgr: (u8, u8, u8)) {
        let bytes = self.pool.slot_mut(slot).unwrap();
        for px in bytes[..(W * H * 4) as usize].chunks_exact_mut(4) {
            px.copy_from_slice(&[bgr.0, bgr.1, bgr.2, 0xff]);
        }
        self.send(FrameDesc {
            slot,
            seq,
            captured_ns: 1000 + seq,
            width: W,
            height: H,
            format: PixelFormat::Bgrx,
            planes: vec![Plane {
                offset: 0,
                stride: u64::from(W * 4),
            }],
        });
    }

    /// Noise that x264/x265 cannot predict: every frame costs what the bitrate allows.
    fn write_noise(&mut self, slot: u32, seq: u64) {
        let mut state = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        self.write_nv12_with(slot, seq, |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        });
    }

    fn write_nv12_with(&mut self, slot: u32, seq: u64, mut byte: impl FnMut(usize) -> u8) {
        let bytes = self.pool.slot_mut(slot).unwrap();
        for (i, b) in bytes[..(W * H * 3 / 2) as usize].iter_mut().enumerate() {
            *b = byte(i);
        }
        self.send(FrameDesc {
            slot,
            seq,
            captured_ns: 1000 + seq,
            width: W,
            height: H,
            format: PixelFormat::Nv12,
            planes: vec![
                Plane {
                    offset: 0,
                    stride: u64::from(W),
                },
                Plane {
                    offset: u64::from(W * H),
                    stride: u64::from(W),
                },
            ],
        });
    }

    fn send(&self, desc: FrameDesc) {
        self.capture
            .send(&CaptureToEncode::Frame(desc), &[])
            .unwrap();
    }

    /// The next access unit in the video ring.
    fn au(&mut self) -> (RecordMeta, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(record) = self.video.next().unwrap() {
                let meta = *record.meta();
                let data = record.copy_to_vec();
                record.release();
                return (meta, data);
            }
            assert!(Instant::now() < deadline, "no access unit in 10 s");
            self.video.wait(Some(Duration::from_millis(100))).unwrap();
        }
    }

    /// The next access unit that encodes capture frame `seq` anew (not a repeat).
    fn au_of(&mut self, seq: u64) -> (RecordMeta, Vec<u8>) {
        loop {
            let (meta, data) = self.au();
            if meta.seq == seq && meta.timestamps[TS_SPARE] == 0 {
                return (meta, data);
            }
        }
    }

    /// Slots released so far.
    fn releases(&mut self) -> Vec<u32> {
        let mut out = Vec::new();
        while let Ok(Some(received)) = self.capture.try_recv::<EncodeToCapture>() {
            let EncodeToCapture::Release { slot } = received.msg;
            out.push(slot);
        }
        out
    }

    fn wait_release(&mut self, slot: u32) {
        let received = self
            .capture
            .recv_timeout::<EncodeToCapture>(Duration::from_secs(10))
            .unwrap();
        assert_eq!(received.msg, EncodeToCapture::Release { slot });
    }
}

fn nal_types(codec: VideoCodec, au: &[u8]) -> Vec<u8> {
    annexb::split(au)
        .iter()
        .filter_map(|n| annexb::nal_type(codec, au, n.header))
        .collect()
}

/// Checks the first AU's shape: parameter sets, then the IDR slice, no SEI in front of it.
fn assert_idr_shape(codec: VideoCodec, au: &[u8]) {
    let kinds = nal_types(codec, au);
    let first_slice = kinds
        .iter()
        .position(|&k| annexb::is_slice(codec, k))
        .expect("a slice");
    assert!(annexb::is_idr_slice(codec, kinds[first_slice]), "{kinds:?}");
    let before = &kinds[..first_slice];
    assert!(
        !before.iter().any(|&k| annexb::is_sei(codec, k)),
        "SEI before the slice: {kinds:?}"
    );
    let wanted: &[u8] = match codec {
        VideoCodec::H264 => &[7, 8],
        VideoCodec::Hevc => &[32, 33, 34],
        VideoCodec::Av1 => &[],
    };
    for kind in wanted {
        assert!(
            before.contains(kind),
            "no NAL {kind} before the IDR: {kinds:?}"
        );
    }
}

/// Decodes access units and returns the last picture as planar 4:2:0 (Y, U, V) rows.
struct Decoder {
    dec: ffmpeg::decoder::Video,
}

impl Decoder {
    fn new(codec: VideoCodec) -> Decoder {
        let id = match codec {
            VideoCodec::H264 => ffmpeg::codec::Id::H264,
            VideoCodec::Hevc => ffmpeg::codec::Id::HEVC,
            VideoCodec::Av1 => ffmpeg::codec::Id::AV1,
        };
        let codec = ffmpeg::decoder::find(id).unwrap();
        let dec = ffmpeg::codec::context::Context::new_with_codec(codec)
            .decoder()
            .video()
            .unwrap();
        Decoder { dec }
    }

    fn decode(&mut self, au: &[u8]) -> ffmpeg::frame::Video {
        self.dec.send_packet(&ffmpeg::Packet::copy(au)).unwrap();
        let mut frame = ffmpeg::frame::Video::empty();
        self.dec.receive_frame(&mut frame).unwrap();
        frame
    }
}

fn sample(frame: &ffmpeg::frame::Video, plane: usize, x: usize, y: usize) -> u8 {
    frame.data(plane)[y * frame.stride(plane) + x]
}

fn close(got: u8, want: f64, what: &str) {
    assert!(
        (f64::from(got) - want).abs() <= 6.0,
        "{what}: got {got}, want {want:.1}"
    );
}

#[test]
fn x264_nv12_gradient_round_trips() {
    let mut rig = Rig::new();
    rig.start(params(VideoCodec::H264, 30));
    assert_eq!(rig.report(), WorkerMsg::SessionStarted { generation: 7 });
    rig.write_nv12(0, 41, |x, _| (16 + x * 200 / W) as u8, (90, 160));
    let (meta, au) = rig.au_of(41);
    rig.wait_release(0);
    assert_eq!(meta.flags, FLAG_KEYFRAME | FLAG_END_OF_FRAME);
    assert_eq!(meta.timestamps[TS_CAPTURED], 1041);
    assert_idr_shape(VideoCodec::H264, &au);
    let picture = Decoder::new(VideoCodec::H264).decode(&au);
    assert_eq!((picture.width(), picture.height()), (W, H));
    for x in [20usize, 160, 320, 480, 620] {
        close(
            sample(&picture, 0, x, 180),
            16.0 + (x as f64 * 200.0 / f64::from(W)).floor(),
            "luma",
        );
    }
    close(sample(&picture, 1, 100, 90), 90.0, "U");
    close(sample(&picture, 2, 100, 90), 160.0, "V");
}

#[test]
fn x265_bgrx_flat_colour_round_trips() {
    let mut rig = Rig::new();
    rig.start(params(VideoCodec::Hevc, 30));
    assert_eq!(rig.report(), WorkerMsg::SessionStarted { generation: 7 });
    // BGRx: B=200, G=50, R=30 → BT.601 limited range Y 68.5, U 196.8, V 108.6.
    rig.write_bgrx(3, 5, (200, 50, 30));
    let (meta, au) = rig.au_of(5);
    rig.wait_release(3);
    assert_ne!(meta.flags & FLAG_KEYFRAME, 0);
    assert_idr_shape(VideoCodec::Hevc, &au);
    let picture = Decoder::new(VideoCodec::Hevc).decode(&au);
    close(sample(&picture, 0, 300, 200), 68.5, "Y");
    close(sample(&picture, 1, 150, 100), 196.8, "U");
    close(sample(&picture, 2, 150, 100), 108.6, "V");
}

#[test]
fn x264_bgrx_is_scaled_to_the_session_size() {
    let mut rig = Rig::new();
    rig.start(SessionParams {
        width: 320,
        height: 180,
        ..params(VideoCodec::H264, 30)
    });
    rig.report();
    rig.write_bgrx(1, 9, (200, 50, 30));
    let (_, au) = rig.au_of(9);
    let picture = Decoder::new(VideoCodec::H264).decode(&au);
    assert_eq!((picture.width(), picture.height()), (320, 180));
    close(sample(&picture, 0, 160, 90), 68.5, "Y");
}

#[test]
fn request_idr_makes_the_next_frame_a_keyframe() {
    for codec in [VideoCodec::H264, VideoCodec::Hevc] {
        let mut rig = Rig::new();
        // 1 fps: no repeat comes between the request and the frame.
        rig.start(params(codec, 1));
        rig.report();
        rig.write_noise(0, 1);
        let (meta, _) = rig.au_of(1);
        assert_ne!(meta.flags & FLAG_KEYFRAME, 0);
        rig.write_noise(1, 2);
        let (meta, au) = rig.au_of(2);
        assert_eq!(meta.flags & FLAG_KEYFRAME, 0, "{codec:?}");
        assert!(!annexb::is_idr_slice(codec, nal_types(codec, &au)[0]));
        rig.control.send(&EncoderControl::RequestIdr, &[]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        rig.write_noise(2, 3);
        let (meta, au) = rig.au_of(3);
        assert_ne!(meta.flags & FLAG_KEYFRAME, 0, "{codec:?}");
        assert_idr_shape(codec, &au);
        rig.write_noise(3, 4);
        let (meta, _) = rig.au_of(4);
        assert_eq!(meta.flags & FLAG_KEYFRAME, 0, "{codec:?}");
    }
}

#[test]
fn set_bitrate_changes_the_output_size() {
    for codec in [VideoCodec::H264, VideoCodec::Hevc] {
        let mut rig = Rig::new();
        rig.start(SessionParams {
            bitrate_kbps: 3000,
            ..params(codec, 30)
        });
        rig.report();
        let mut seq = 0;
        let mut mean = |rig: &mut Rig, frames: u64| {
            let mut total = 0;
            for _ in 0..frames {
                seq += 1;
                rig.write_noise((seq % u64::from(SLOTS)) as u32, seq);
                total += rig.au_of(seq).1.len();
            }
            total / frames as usize
        };
        mean(&mut rig, 3);
        let high = mean(&mut rig, 8);
        rig.control
            .send(&EncoderControl::SetBitrate { kbps: 500 }, &[])
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        mean(&mut rig, 3);
        let low = mean(&mut rig, 8);
        // 3000 kbit/s at 30 fps is 12.5 kB a frame, 500 kbit/s about 2 kB.
        assert!(
            high > 3 * low,
            "{codec:?}: {high} bytes at 3000, {low} at 500"
        );
    }
}

#[test]
fn repeats_keep_the_frame_rate_when_nothing_new_comes() {
    let mut rig = Rig::new();
    rig.start(params(VideoCodec::H264, 30));
    rig.report();
    rig.write_nv12(2, 77, |_, _| 100, (128, 128));
    let (first, _) = rig.au_of(77);
    let start = Instant::now();
    let mut repeats = 0;
    while start.elapsed() < Duration::from_millis(1000) {
        let (meta, au) = rig.au();
        assert_eq!(meta.seq, 77);
        assert_eq!(meta.timestamps[TS_SPARE], 1);
        assert_eq!(meta.timestamps[TS_CAPTURED], first.timestamps[TS_CAPTURED]);
        assert_eq!(meta.flags, FLAG_END_OF_FRAME);
        assert!(!au.is_empty());
        repeats += 1;
    }
    // 30 fps for a second, give or take scheduling on a busy machine.
    assert!((20..=32).contains(&repeats), "{repeats} repeats in 1 s");
    // The slot went back right after the copy; repeats come from encode's own copy.
    assert_eq!(rig.releases(), vec![2]);
    let stats = rig.stats();
    assert!(stats.repeated >= 20, "{stats:?}");
    assert!(
        stats
            .component
            .starts_with("libx264 640x360@30 1000 kbit/s"),
        "{stats:?}"
    );
}

#[test]
fn stale_frames_are_released_and_only_the_newest_is_encoded() {
    let mut rig = Rig::new();
    // Queued before the session reads anything: three frames wait together.
    rig.write_nv12(0, 10, |_, _| 50, (128, 128));
    rig.write_nv12(1, 11, |_, _| 60, (128, 128));
    rig.write_nv12(2, 12, |_, _| 70, (128, 128));
    rig.start(params(VideoCodec::H264, 30));
    rig.report();
    let (meta, _) = rig.au();
    assert_eq!(meta.seq, 12);
    assert_eq!(meta.timestamps[TS_SPARE], 0);
    let mut released = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while released.len() < 3 && Instant::now() < deadline {
        released.extend(rig.releases());
        std::thread::sleep(Duration::from_millis(20));
    }
    released.sort();
    assert_eq!(released, vec![0, 1, 2]);
    let stats = rig.stats();
    assert!(stats.dropped >= 2, "{stats:?}");
}

#[test]
fn lying_frame_descriptions_end_the_session_not_the_worker() {
    let mut rig = Rig::new();
    rig.start(params(VideoCodec::H264, 30));
    rig.report();
    let mut desc = FrameDesc {
        slot: SLOTS + 5,
        seq: 1,
        captured_ns: 0,
        width: W,
        height: H,
        format: PixelFormat::Bgrx,
        planes: vec![Plane {
            offset: 0,
            stride: u64::from(W * 4),
        }],
    };
    rig.send(desc.clone());
    let WorkerMsg::SessionFailed {
        generation,
        message,
    } = rig.report()
    else {
        panic!("no SessionFailed");
    };
    assert_eq!(generation, 7);
    assert!(message.contains("slot"), "{message}");
    assert!(rig.handler.session().unwrap().failed());

    // The next session on the same handler runs; a plane past the slot ends it too.
    let Rig {
        handler, reports, ..
    } = rig;
    let mut rig = Rig::with_handler(handler, reports, 8);
    rig.start(params(VideoCodec::H264, 30));
    assert_eq!(rig.report(), WorkerMsg::SessionStarted { generation: 8 });
    desc.slot = 0;
    desc.planes[0].offset = rig.spec.slot_bytes - 100;
    rig.send(desc.clone());
    let WorkerMsg::SessionFailed { message, .. } = rig.report() else {
        panic!("no SessionFailed");
    };
    assert!(message.contains("past the slot"), "{message}");

    // A one-row plane with a huge stride: refused (FrameDesc::check bounds the stride by the slot).
    let Rig {
        handler, reports, ..
    } = rig;
    let mut rig = Rig::with_handler(handler, reports, 9);
    rig.start(params(VideoCodec::H264, 30));
    rig.report();
    desc.height = 1;
    desc.planes[0] = Plane {
        offset: 0,
        stride: u64::MAX / 4,
    };
    rig.send(desc);
    let WorkerMsg::SessionFailed { message, .. } = rig.report() else {
        panic!("no SessionFailed");
    };
    assert!(
        message.contains("stride") || message.contains("past the slot"),
        "{message}"
    );
}

#[test]
fn wrong_fds_and_bad_params_fail_the_session_only() {
    let mut rig = Rig::new();
    rig.handler
        .handle(
            BrokerMsg::StartEncode {
                params: params(VideoCodec::H264, 30),
                pool: rig.spec,
                generation: 3,
            },
            Vec::new(),
        )
        .unwrap();
    let WorkerMsg::SessionFailed {
        generation,
        message,
    } = rig.report()
    else {
        panic!("no SessionFailed");
    };
    assert_eq!(generation, 3);
    assert!(message.contains("0 fds, expected 9"), "{message}");
    rig.start(SessionParams {
        audio_packet_ms: 7,
        ..params(VideoCodec::H264, 30)
    });
    assert!(matches!(rig.report(), WorkerMsg::SessionFailed { .. }));
    // Anything but Start/Stop is refused (the worker then exits and the broker restarts it).
    assert!(rig.handler.handle(BrokerMsg::Shutdown, Vec::new()).is_err());
    assert!(rig
        .handler
        .handle(BrokerMsg::StopSession, Vec::new())
        .is_ok());
}

#[test]
fn av1_runs_or_fails_naming_the_encoder() {
    let mut rig = Rig::new();
    rig.start(params(VideoCodec::Av1, 30));
    match rig.report() {
        WorkerMsg::SessionStarted { .. } => {
            rig.write_bgrx(0, 3, (200, 50, 30));
            let (meta, au) = rig.au_of(3);
            assert_ne!(meta.flags & FLAG_KEYFRAME, 0);
            let picture = Decoder::new(VideoCodec::Av1).decode(&au);
            close(sample(&picture, 0, 300, 200), 68.5, "Y");
        }
        WorkerMsg::SessionFailed { message, .. } => {
            assert!(message.contains("libsvtav1"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

/// Frequency of a sampled signal from its zero crossings.
fn frequency(samples: &[f32]) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    crossings as f64 / 2.0 / (samples.len() as f64 / 48_000.0)
}

fn opus_round_trip(layout: AudioLayout, packet_ms: u32) {
    let mut rig = Rig::new();
    rig.start(SessionParams {
        audio: layout,
        audio_packet_ms: packet_ms,
        ..params(VideoCodec::H264, 30)
    });
    rig.report();
    let channels = layout.channels() as usize;
    let per_packet = 48 * packet_ms as usize;
    // Channel c carries a tone of 500 + 250·c Hz.
    let tone = |c: usize, n: usize| {
        0.5 * (2.0 * std::f64::consts::PI * (500.0 + 250.0 * c as f64) * n as f64 / 48_000.0).sin()
            as f32
    };
    let packets = 200 / packet_ms as usize * 2; // 400 ms
    for p in 0..packets {
        let mut bytes = Vec::with_capacity(per_packet * channels * 4);
        for i in 0..per_packet {
            for c in 0..channels {
                bytes.extend_from_slice(&tone(c, p * per_packet + i).to_le_bytes());
            }
        }
        let meta = RecordMeta {
            seq: p as u64,
            timestamps: [5000 + p as u64, 0, 0, 0],
            ..RecordMeta::default()
        };
        rig.pcm.push(&meta, &bytes).unwrap();
        if p == 3 {
            // A record of the wrong size is dropped and counted, not encoded.
            rig.pcm.push(&meta, &bytes[..100]).unwrap();
        }
    }
    let mut decoder = OpusDecoder::new(Layout::of(layout));
    let mut decoded: Vec<f32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 0;
    while seq < packets as u64 {
        assert!(Instant::now() < deadline, "only {seq} Opus packets");
        let Some(record) = rig.audio.next().unwrap() else {
            rig.audio.wait(Some(Duration::from_millis(100))).unwrap();
            continue;
        };
        let meta = *record.meta();
        let packet = record.copy_to_vec();
        record.release();
        assert_eq!(meta.seq, seq);
        assert_eq!(meta.timestamps[TS_CAPTURED], 5000 + seq);
        let pcm = decoder.decode(&packet);
        assert_eq!(pcm.len(), per_packet * channels);
        decoded.extend(pcm);
        seq += 1;
    }
    // Skip the codec's start-up, then check each channel's tone.
    let skip = 4800 * channels;
    for c in 0..channels {
        let channel: Vec<f32> = decoded[skip..]
            .iter()
            .skip(c)
            .step_by(channels)
            .copied()
            .collect();
        let want = 500.0 + 250.0 * c as f64;
        let got = frequency(&channel);
        assert!(
            (got - want).abs() < want * 0.03,
            "{layout:?} channel {c}: {got:.0} Hz, want {want}"
        );
    }
    let stats = rig.stats();
    assert!(stats.dropped >= 1, "{stats:?}");
}

#[test]
fn opus_stereo_tone_round_trips() {
    opus_round_trip(AudioLayout::Stereo, 5);
}

#[test]
fn opus_51_tone_round_trips() {
    opus_round_trip(AudioLayout::Surround51, 10);
}

#[test]
fn opus_71_tone_round_trips() {
    opus_round_trip(AudioLayout::Surround71, 20);
}

/// Per-frame cost at 1080p (run with `cargo test --release -p lumen-encode cost_at_1080p --
/// --ignored --nocapture`): conversion from capture's formats and encoding, per encoder.
#[test]
#[ignore]
fn cost_at_1080p() {
    use crate::scale::Converter;
    use crate::video::{Backend, VideoConfig, VideoEncoder};
    ffmpeg::init().unwrap();
    let (w, h) = (1920u32, 1080u32);
    let spec = FramePoolSpec {
        slots: 2,
        slot_bytes: round_slot_bytes(u64::from(w * h * 4)),
    };
    let mut pool = FramePool::map(create_pool("bench", &spec).unwrap(), spec, true).unwrap();
    for (i, b) in pool.slot_mut(0).unwrap().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let bgrx = FrameDesc {
        slot: 0,
        seq: 0,
        captured_ns: 0,
        width: w,
        height: h,
        format: PixelFormat::Bgrx,
        planes: vec![Plane {
            offset: 0,
            stride: u64::from(w * 4),
        }],
    };
    let nv12 = FrameDesc {
        format: PixelFormat::Nv12,
        planes: vec![
            Plane {
                offset: 0,
                stride: u64::from(w),
            },
            Plane {
                offset: u64::from(w * h),
                stride: u64::from(w),
            },
        ],
        ..bgrx.clone()
    };
    for backend in [Backend::X264, Backend::X265, Backend::SvtAv1] {
        let config = VideoConfig {
            width: w,
            height: h,
            fps: 60,
            bitrate_kbps: 20_000,
        };
        let mut enc = VideoEncoder::open(backend, config).unwrap();
        let mut frame = enc.new_frame();
        let mut conv = Converter::default();
        for desc in [&bgrx, &nv12] {
            let frames = 60;
            let (mut convert, mut encode) = (Duration::ZERO, Duration::ZERO);
            for n in 0..frames {
                let t = Instant::now();
                conv.convert(&pool, desc, &mut frame).unwrap();
                convert += t.elapsed();
                let t = Instant::now();
                enc.encode(&mut frame, n == 0).unwrap();
                encode += t.elapsed();
            }
            eprintln!(
                "{} {:?} → {:?} ({}): convert {:.2} ms, encode {:.2} ms per frame",
                backend.name(),
                desc.format,
                backend.pixel(),
                conv.last_path,
                convert.as_secs_f64() * 1000.0 / f64::from(frames),
                encode.as_secs_f64() * 1000.0 / f64::from(frames)
            );
        }
    }
}

/// A capture that never reads its releases cannot wedge the video thread: the session fails once
/// the channel is full, and StopSession returns at once.
#[test]
fn a_capture_that_stops_reading_fails_the_session_without_blocking() {
    let mut rig = Rig::new();
    rig.start(params(VideoCodec::H264, 30));
    rig.report();
    rig.capture.set_nonblocking(true).unwrap();
    let desc = FrameDesc {
        slot: 0,
        seq: 0,
        captured_ns: 0,
        width: 64,
        height: 64,
        format: PixelFormat::Nv12,
        planes: vec![
            Plane {
                offset: 0,
                stride: 64,
            },
            Plane {
                offset: 4096,
                stride: 64,
            },
        ],
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let message = loop {
        assert!(Instant::now() < deadline, "the session never failed");
        // Frames go out as fast as encode takes them; releases pile up unread.
        let _ = rig.capture.send(&CaptureToEncode::Frame(desc.clone()), &[]);
        if let Ok(Some(received)) = rig.reports.try_recv::<WorkerMsg>() {
            if let WorkerMsg::SessionFailed { message, .. } = received.msg {
                break message;
            }
        }
    };
    assert!(message.contains("does not read"), "{message}");
    let stop = Instant::now();
    rig.handler
        .handle(BrokerMsg::StopSession, Vec::new())
        .unwrap();
    assert!(stop.elapsed() < Duration::from_secs(2));
}

/// Capture closing its channel (teardown, or a crash the broker handles) ends video quietly: no
/// SessionFailed, and the session still stops cleanly.
#[test]
fn capture_going_away_is_not_a_session_failure() {
    let mut rig = Rig::new();
    rig.start(params(VideoCodec::H264, 30));
    rig.report();
    rig.write_nv12(0, 1, |_, _| 80, (128, 128));
    rig.au_of(1);
    let (replacement, _) = Channel::pair().unwrap();
    drop(std::mem::replace(&mut rig.capture, replacement));
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Ok(received) = rig
            .reports
            .recv_timeout::<WorkerMsg>(Duration::from_millis(100))
        {
            assert!(
                matches!(received.msg, WorkerMsg::SessionStats { .. }),
                "{:?}",
                received.msg
            );
        }
    }
    assert!(!rig.handler.session().unwrap().failed());
    rig.handler
        .handle(BrokerMsg::StopSession, Vec::new())
        .unwrap();
}
