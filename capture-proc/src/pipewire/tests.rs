//! Frame copying and format helpers on their own, then real capture from a private PipeWire
//! (`lumen_tests::pipewire_env`) into the real sinks, the frame pool and the PCM ring.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lumen_ipc::channel::Channel;
use lumen_ipc::frame_pool::{create_pool, read_only_fd, FramePool};
use lumen_ipc::media::{
    AudioLayout, CaptureToEncode, EncodeToCapture, FramePoolSpec, PixelFormat, Plane,
    SessionParams, VideoCodec, PCM_RING_BYTES,
};
use lumen_ipc::ring::{create_ring, Consumer, Producer, TS_CAPTURED};
use lumen_tests::pipewire_env::{PipeWireEnv, VideoSource};

use super::audio::{decode_samples, SampleClock};
use super::video::{copy_frame, slot_format, source_planes, SourceChunk, SourcePlane};
use super::*;
use crate::sink::{AudioSink, Counters, VideoSink};

/// A chunk with the producer's offset and stride and no size.
fn chunk(offset: u32, stride: i32) -> SourceChunk {
    SourceChunk {
        offset,
        size: 0,
        stride,
    }
}

/// GStreamer's pipewiresink leaves the stride out and pads NV12 rows of 98 pixels to 100 bytes:
/// the stride follows from the size; a size that does not divide means unpadded rows.
#[test]
fn a_missing_stride_follows_from_the_chunk_size() {
    let nv12 = SourceChunk {
        offset: 0,
        size: 100 * 96,
        stride: 0,
    };
    let planes = source_planes(PixelFormat::Nv12, 98, 64, &[nv12]).unwrap();
    assert_eq!(
        planes,
        vec![
            SourcePlane {
                data: 0,
                offset: 0,
                stride: 100
            },
            SourcePlane {
                data: 0,
                offset: 6400,
                stride: 100
            }
        ]
    );
    let odd = SourceChunk {
        offset: 16,
        size: 40 * 10 + 3,
        stride: 0,
    };
    let planes = source_planes(PixelFormat::Bgrx, 10, 10, &[odd]).unwrap();
    assert_eq!(planes[0].stride, 40);
    // A size that would make rows shorter than the picture is not believed either.
    let short = SourceChunk {
        offset: 0,
        size: 30 * 10,
        stride: 0,
    };
    assert_eq!(
        source_planes(PixelFormat::Bgrx, 10, 10, &[short]).unwrap()[0].stride,
        40
    );
}

#[test]
fn targets_digits_are_portal_node_ids_anything_else_a_name() {
    assert_eq!(Target::parse("42"), Target::Id(42));
    assert_eq!(
        Target::parse("test-src"),
        Target::Name("test-src".to_string())
    );
    assert_eq!(Target::parse("+42"), Target::Name("+42".to_string()));
    assert_eq!(Target::Id(7).connect_args(), (Some(7), None));
    assert_eq!(Target::Name("x".into()).connect_args(), (None, Some("x")));
}

#[test]
fn only_formats_the_encoder_takes_are_accepted() {
    use pipewire::spa::param::video::VideoFormat;
    let slot = |f| slot_format(f).map(|(slot, _)| slot);
    assert_eq!(slot(VideoFormat::BGRx), Some(PixelFormat::Bgrx));
    assert_eq!(slot(VideoFormat::BGRA), Some(PixelFormat::Bgrx));
    assert_eq!(slot(VideoFormat::RGBx), Some(PixelFormat::Rgbx));
    assert_eq!(slot(VideoFormat::RGBA), Some(PixelFormat::Rgbx));
    assert_eq!(slot(VideoFormat::NV12), Some(PixelFormat::Nv12));
    assert_eq!(
        slot_format(VideoFormat::BGRA).map(|(_, name)| name),
        Some("BGRA")
    );
    assert_eq!(slot_format(VideoFormat::YUY2), None);
    assert_eq!(slot_format(VideoFormat::xRGB), None);
}

#[test]
fn format_pods_serialize() {
    let params = session(320, 240, 30);
    let video = video::serialize(video::enum_format(&params)).unwrap();
    assert!(pipewire::spa::pod::Pod::from_bytes(&video).is_some());
    let buffers = video::serialize(video::buffers_param()).unwrap();
    assert!(pipewire::spa::pod::Pod::from_bytes(&buffers).is_some());
    let audio = video::serialize(audio::enum_format(6)).unwrap();
    assert!(pipewire::spa::pod::Pod::from_bytes(&audio).is_some());
    assert_eq!(audio::positions(8).len(), 8);
}

/// A BGRx source with padded rows (stride 24 for 4 pixels) into a slot with stride 64.
#[test]
fn copy_honours_source_and_slot_strides() {
    let (w, h) = (4u32, 3u32);
    let mut src = vec![0xEEu8; 8 + 24 * 3];
    for row in 0..3 {
        for byte in 0..16 {
            src[8 + row * 24 + byte] = (row * 16 + byte) as u8;
        }
    }
    let planes = source_planes(PixelFormat::Bgrx, w, h, &[chunk(8, 24)]).unwrap();
    assert_eq!(
        planes,
        vec![SourcePlane {
            data: 0,
            offset: 8,
            stride: 24
        }]
    );
    let mut slot = vec![0u8; 64 * 3];
    let dst = [Plane {
        offset: 0,
        stride: 64,
    }];
    assert!(copy_frame(
        PixelFormat::Bgrx,
        w,
        h,
        &[&src],
        &planes,
        &mut slot,
        &dst
    ));
    for row in 0..3 {
        for byte in 0..16 {
            assert_eq!(slot[row * 64 + byte], (row * 16 + byte) as u8);
        }
        // The padding of the slot rows is not written from the source's padding.
        assert_eq!(slot[row * 64 + 16], 0);
    }
}

#[test]
fn contiguous_nv12_finds_its_chroma_plane() {
    let (w, h) = (6u32, 4u32);
    // Y rows of stride 8, then 2 UV rows of stride 8.
    let mut src = vec![0u8; 8 * 4 + 8 * 2];
    for (i, byte) in src.iter_mut().enumerate() {
        *byte = i as u8;
    }
    let planes = source_planes(PixelFormat::Nv12, w, h, &[chunk(0, 8)]).unwrap();
    assert_eq!(planes[1].offset, 32);
    assert_eq!(planes[1].stride, 8);
    let dst = [
        Plane {
            offset: 0,
            stride: 6,
        },
        Plane {
            offset: 24,
            stride: 6,
        },
    ];
    let mut slot = vec![0u8; 36];
    assert!(copy_frame(
        PixelFormat::Nv12,
        w,
        h,
        &[&src],
        &planes,
        &mut slot,
        &dst
    ));
    assert_eq!(&slot[0..6], &[0, 1, 2, 3, 4, 5]);
    assert_eq!(&slot[6..12], &[8, 9, 10, 11, 12, 13]);
    assert_eq!(&slot[24..30], &[32, 33, 34, 35, 36, 37]);
    assert_eq!(&slot[30..36], &[40, 41, 42, 43, 44, 45]);
    // Two data blocks: one plane each, with their own chunk offsets.
    let planes = source_planes(PixelFormat::Nv12, w, h, &[chunk(0, 8), chunk(4, 8)]).unwrap();
    assert_eq!(
        planes[1],
        SourcePlane {
            data: 1,
            offset: 4,
            stride: 8
        }
    );
}

#[test]
fn lying_chunks_copy_nothing() {
    let src = vec![7u8; 100];
    let mut slot = vec![0u8; 4096];
    let dst = [Plane {
        offset: 0,
        stride: 64,
    }];
    // Rows past the mapped block.
    let planes = source_planes(PixelFormat::Bgrx, 10, 10, &[chunk(0, 40)]).unwrap();
    assert!(!copy_frame(
        PixelFormat::Bgrx,
        10,
        10,
        &[&src],
        &planes,
        &mut slot,
        &dst
    ));
    // An offset near the end of the address space.
    let planes = source_planes(PixelFormat::Bgrx, 1, 1, &[chunk(u32::MAX, 4)]).unwrap();
    assert!(!copy_frame(
        PixelFormat::Bgrx,
        1,
        1,
        &[&src],
        &planes,
        &mut slot,
        &dst
    ));
    // A stride shorter than a row, and a negative one.
    let planes = source_planes(PixelFormat::Bgrx, 4, 2, &[chunk(0, 8)]).unwrap();
    assert!(!copy_frame(
        PixelFormat::Bgrx,
        4,
        2,
        &[&src],
        &planes,
        &mut slot,
        &dst
    ));
    assert!(source_planes(PixelFormat::Bgrx, 4, 2, &[chunk(0, -16)]).is_none());
    // A slot too small for the picture.
    let planes = source_planes(PixelFormat::Bgrx, 4, 2, &[chunk(0, 16)]).unwrap();
    let mut tiny = vec![0u8; 70];
    assert!(!copy_frame(
        PixelFormat::Bgrx,
        4,
        2,
        &[&src],
        &planes,
        &mut tiny,
        &dst
    ));
    assert!(slot.iter().all(|&b| b == 0) && tiny.iter().all(|&b| b == 0));
}

#[test]
fn samples_decode_whole_frames_only() {
    let mut bytes = Vec::new();
    for v in [0.5f32, -0.25, 1.0, 0.0, 0.75] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut out = Vec::new();
    decode_samples(&bytes, 2, &mut out);
    assert_eq!(out, vec![0.5, -0.25, 1.0, 0.0]);
    decode_samples(&bytes[..3], 2, &mut out);
    assert!(out.is_empty());
}

#[test]
fn sample_clock_is_continuous_and_resyncs_after_a_gap() {
    let mut clock = SampleClock::default();
    let t0 = 1_000_000_000u64;
    // 480 frames = 10 ms per buffer; callbacks jitter by 3 ms.
    assert_eq!(clock.stamp(t0 + 10_000_000, 480), t0);
    assert_eq!(clock.stamp(t0 + 23_000_000, 480), t0 + 10_000_000);
    assert_eq!(clock.stamp(t0 + 28_000_000, 480), t0 + 20_000_000);
    // A 100 ms stall: the wall clock wins.
    assert_eq!(clock.stamp(t0 + 140_000_000, 480), t0 + 130_000_000);
    // A burst of buffers at once after a stall: continuous, never backwards.
    assert_eq!(clock.stamp(t0 + 141_000_000, 480), t0 + 140_000_000);
    assert_eq!(clock.stamp(t0 + 141_000_000, 480), t0 + 150_000_000);
    assert_eq!(clock.stamp(t0 + 141_000_000, 480), t0 + 160_000_000);
}

fn session(width: u32, height: u32, fps: u32) -> SessionParams {
    SessionParams {
        width,
        height,
        fps,
        bitrate_kbps: 5_000,
        codec: VideoCodec::H264,
        audio: AudioLayout::Stereo,
        audio_packet_ms: 5,
    }
}

/// Capture's sinks wired to an encode stand-in: a reader of the pool and the frame channel, and a
/// consumer of the PCM ring.
struct Pipeline {
    video: Arc<Mutex<VideoSink>>,
    audio: Arc<Mutex<AudioSink>>,
    encode_channel: Channel,
    reader: FramePool,
    pcm: Consumer,
    spec: FramePoolSpec,
}

fn pipeline(params: &SessionParams) -> Pipeline {
    let spec = FramePoolSpec {
        slots: 4,
        slot_bytes: 1 << 20,
    };
    let memfd = create_pool("pw-test-pool", &spec).unwrap();
    let ro = read_only_fd(std::os::fd::AsFd::as_fd(&memfd)).unwrap();
    let writer = FramePool::map(memfd, spec, true).unwrap();
    let reader = FramePool::map(ro, spec, false).unwrap();
    let (capture_end, encode_end) = Channel::pair().unwrap();
    let counters = Arc::new(Counters::default());
    let video = VideoSink::new(writer, capture_end, counters.clone());
    let ring = create_ring("pw-test-pcm", PCM_RING_BYTES, 1).unwrap();
    let producer = Producer::attach(
        ring.memfd.try_clone().unwrap(),
        ring.doorbell.try_clone().unwrap(),
        1,
    )
    .unwrap();
    let pcm = Consumer::attach(ring.memfd, ring.doorbell, 1).unwrap();
    let audio = AudioSink::new(
        producer,
        params.audio.channels(),
        params.audio_samples_per_packet(),
        counters,
    )
    .unwrap();
    Pipeline {
        video: Arc::new(Mutex::new(video)),
        audio: Arc::new(Mutex::new(audio)),
        encode_channel: encode_end,
        reader,
        pcm,
        spec,
    }
}

/// What the encode stand-in saw.
#[derive(Default)]
struct Seen {
    frames: Vec<(u64, u32, u32, PixelFormat, u64, [u8; 4])>,
    /// Every tenth frame's planes, rows packed without padding.
    pictures: Vec<Vec<Vec<u8>>>,
    /// (seq, capture time, bytes, peak amplitude) of each PCM record.
    audio_records: Vec<(u64, u64, usize, f32)>,
}

/// The planes of a frame in a slot, each row cut to its visible bytes.
fn packed_planes(pool: &FramePool, desc: &lumen_ipc::media::FrameDesc) -> Vec<Vec<u8>> {
    (0..desc.format.plane_count())
        .map(|i| {
            let row = desc.format.min_stride(i, desc.width) as usize;
            let rows = desc.format.plane_rows(i, desc.height) as usize;
            let mut out = vec![0u8; row * rows];
            for (r, dst) in out.chunks_exact_mut(row).enumerate() {
                let offset = desc.planes[i].offset as usize + r * desc.planes[i].stride as usize;
                assert!(pool.copy_out(desc.slot, offset, dst));
            }
            out
        })
        .collect()
}

/// Plays encode for `run`: checks and releases every frame, reads one pixel from the middle of
/// each, and drains the PCM ring.
fn play_encode(pipeline: &mut Pipeline, run: Duration) -> Seen {
    let mut seen = Seen::default();
    let start = Instant::now();
    while start.elapsed() < run {
        if let Ok(received) = pipeline
            .encode_channel
            .recv_timeout::<CaptureToEncode>(Duration::from_millis(5))
        {
            let CaptureToEncode::Frame(desc) = received.msg;
            desc.check(&pipeline.spec).expect("frame fits the pool");
            let plane = desc.planes[0];
            let middle = plane.offset
                + plane.stride * u64::from(desc.height / 2)
                + 4 * u64::from(desc.width / 2);
            let mut pixel = [0u8; 4];
            assert!(pipeline
                .reader
                .copy_out(desc.slot, middle as usize, &mut pixel));
            if seen.frames.len() % 10 == 0 {
                seen.pictures.push(packed_planes(&pipeline.reader, &desc));
            }
            seen.frames.push((
                desc.seq,
                desc.width,
                desc.height,
                desc.format,
                desc.captured_ns,
                pixel,
            ));
            pipeline
                .encode_channel
                .send(&EncodeToCapture::Release { slot: desc.slot }, &[])
                .unwrap();
        }
        while let Ok(Some(record)) = pipeline.pcm.next() {
            let peak = record
                .copy_to_vec()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).abs())
                .fold(0.0f32, f32::max);
            seen.audio_records.push((
                record.meta().seq,
                record.meta().timestamps[TS_CAPTURED],
                record.len(),
                peak,
            ));
            record.release();
        }
    }
    seen
}

fn reports() -> (Arc<Mutex<Vec<String>>>, impl Fn(String) + Send + 'static) {
    collector()
}

fn collector() -> (Arc<Mutex<Vec<String>>>, impl Fn(String) + Send + 'static) {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    (reports, move |message: String| {
        sink.lock().unwrap().push(message)
    })
}

/// A private PipeWire with a 320x240 BGRx source at 30 fps in a solid colour, a null sink as the
/// default sink and a sine playing into it. `None`: skipped (binaries missing, CI unset).
fn environment(video_name: &str) -> Option<PipeWireEnv> {
    let mut env = PipeWireEnv::start().expect("starting the private PipeWire")?;
    env.add_video_source(&VideoSource {
        name: video_name.to_string(),
        width: 320,
        height: 240,
        fps: 30,
        format: "BGRx".into(),
        // ARGB 0xFF336699: BGRx bytes 99 66 33 xx.
        solid_argb: Some(0xFF33_6699),
    })
    .expect("video source");
    env.add_null_sink("lumen-test-sink").expect("null sink");
    env.add_player("lumen-test-player", 440).expect("player");
    Some(env)
}

fn remote(env: &PipeWireEnv) -> OwnedFd {
    OwnedFd::from(env.connect().expect("connecting to the private PipeWire"))
}

/// Real PipeWire → real sinks: frames of the node's size and format at about its rate, the
/// picture's bytes intact, audio records of one packet each with rising timestamps; then a second
/// session on the same prepared loop, against a node that does not exist, is reported by name.
#[test]
fn captures_video_and_monitor_audio_from_a_real_pipewire() {
    let Some(env) = environment("lumen-test-video") else {
        return;
    };
    let prepared = preload().expect("preload");
    let params = session(1280, 720, 60);
    let mut pipeline = pipeline(&params);
    let (reported, report) = reports();
    let (described, describe) = collector();
    let capture = start(
        &prepared,
        remote(&env),
        "lumen-test-video",
        None,
        params,
        pipeline.video.clone(),
        pipeline.audio.clone(),
        report,
        describe,
    )
    .expect("start");
    // Let negotiation settle, then measure over three seconds.
    let _ = play_encode(&mut pipeline, Duration::from_secs(1));
    let seen = play_encode(&mut pipeline, Duration::from_secs(3));
    drop(capture);
    let reported = reported.lock().unwrap().clone();
    assert!(reported.is_empty(), "reports: {reported:?}");
    assert_eq!(
        described.lock().unwrap().as_slice(),
        ["pipewire BGRx 320x240@30/1 from video node \"lumen-test-video\""]
    );

    let frames = &seen.frames;
    assert!(
        frames.len() >= 45,
        "{} frames in 3 s from a 30 fps node",
        frames.len()
    );
    for (_, w, h, format, _, pixel) in frames {
        assert_eq!((*w, *h, *format), (320, 240, PixelFormat::Bgrx));
        assert_eq!(&pixel[..3], &[0x99, 0x66, 0x33], "BGR of 0x336699");
    }
    let first = frames.first().unwrap();
    let last = frames.last().unwrap();
    let secs = (last.4 - first.4) as f64 / 1e9;
    let fps = (frames.len() - 1) as f64 / secs;
    eprintln!(
        "pipewire capture: {} frames at {fps:.1} fps, {} PCM records in 3 s",
        frames.len(),
        seen.audio_records.len()
    );
    assert!(
        (22.0..=38.0).contains(&fps),
        "{fps:.1} fps from a 30 fps node"
    );
    assert!(frames
        .windows(2)
        .all(|w| w[1].0 > w[0].0 && w[1].4 > w[0].4));

    let audio = &seen.audio_records;
    // 5 ms packets: 600 in 3 s; the null sink's timer and scheduling leave some slack.
    assert!(
        audio.len() >= 300,
        "{} PCM records in 3 s (600 expected)",
        audio.len()
    );
    let record_bytes = params.audio_samples_per_packet() as usize * 2 * 4;
    assert!(audio.iter().all(|(_, _, len, _)| *len == record_bytes));
    // The player's sine (audiotestsrc, volume 0.8) is on the default sink's monitor.
    let loud = audio.iter().filter(|r| r.3 > 0.3).count();
    assert!(
        loud * 2 >= audio.len(),
        "{loud} of {} records carry the sine",
        audio.len()
    );
    assert!(audio.windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 > w[0].1));

    // The loop and context go back for the next session; a missing node is reported by name.
    let (reported, report) = reports();
    let mut pipeline = pipeline_for_failure(&params);
    let capture = start(
        &prepared,
        remote(&env),
        "no-such-node",
        None,
        params,
        pipeline.video.clone(),
        pipeline.audio.clone(),
        report,
        |_| {},
    )
    .expect("start against a missing node still connects");
    let waited = Instant::now();
    while reported.lock().unwrap().is_empty() && waited.elapsed() < Duration::from_secs(15) {
        let _ = play_encode(&mut pipeline, Duration::from_millis(100));
    }
    drop(capture);
    let reported = reported.lock().unwrap().clone();
    eprintln!("missing node reported as: {reported:?}");
    assert_eq!(reported.len(), 1, "reports: {reported:?}");
    assert!(reported[0].contains("no-such-node"), "{}", reported[0]);
}

fn pipeline_for_failure(params: &SessionParams) -> Pipeline {
    pipeline(params)
}

/// Lock-down unshares a user namespace, which the kernel refuses to a multi-threaded process:
/// preload must leave no thread behind. Threads inherit their creator's name, so any thread named
/// like this test's thread other than itself was started by preload.
#[test]
fn preload_leaves_no_thread_running() {
    // A name no other test thread has (they all start with the module path).
    rustix::thread::set_name(c"lumen-pw-preload").unwrap();
    let namesakes = || {
        let own = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| *name == own)
            .count()
    };
    assert_eq!(namesakes(), 1);
    let prepared = preload().expect("preload");
    assert_eq!(namesakes(), 1, "preload left a thread running");
    drop(prepared);
}

/// Syscalls trapped by the test filter (numbers), recorded by [`on_sigsys`].
static TRAPPED: [std::sync::atomic::AtomicI64; 32] =
    [const { std::sync::atomic::AtomicI64::new(-1) }; 32];
static TRAPPED_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    use std::sync::atomic::Ordering;
    if info.is_null() {
        return;
    }
    // SAFETY: the kernel hands SA_SIGINFO handlers a valid siginfo_t; for SIGSYS the int after
    // si_signo, si_errno, si_code (padded to 16) and si_call_addr is si_syscall.
    let nr = unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(24).cast::<i32>()) };
    let slot = TRAPPED_COUNT.fetch_add(1, Ordering::Relaxed);
    if let Some(entry) = TRAPPED.get(slot) {
        entry.store(i64::from(nr), Ordering::Relaxed);
    }
}

/// Installs lumen-capture's real seccomp allowlist (and its clone3 companion) on the calling
/// thread only — every thread it starts afterwards inherits it — with violations recorded by
/// [`on_sigsys`] (the trapped call fails with ENOSYS) instead of killing the test process.
fn lock_down_this_thread() {
    let policy = crate::seccomp::policy();
    let pid = u64::from(std::process::id());
    let allowlist = lumen_ipc::sandbox::seccomp::allowlist_program(&policy, pid).unwrap();
    let companions = lumen_ipc::sandbox::seccomp::companion_programs(&policy).unwrap();
    // SAFETY: a zeroed sigaction is a valid empty one; the handler only does atomic stores.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigsys;
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        assert_eq!(
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()),
            0
        );
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
    }
    for program in companions.iter().chain(std::iter::once(&allowlist)) {
        let fprog = libc::sock_fprog {
            len: u16::try_from(program.len()).unwrap(),
            filter: program.as_ptr().cast_mut().cast(),
        };
        // SAFETY: fprog points at a live BPF program; without TSYNC the filter applies to this
        // thread and its future children only.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }
}

/// The same capture as above, on a thread (and the PipeWire threads it starts) under
/// lumen-capture's seccomp allowlist after preload: frames and sound still arrive and nothing
/// outside the allowlist is called — no `openat` (plugins and config were loaded before), no
/// socket, only the rules in `seccomp_rules`.
#[test]
fn captures_under_the_capture_seccomp_allowlist() {
    let Some(env) = environment("lumen-test-video-seccomp") else {
        return;
    };
    let prepared = preload().expect("preload");
    let params = session(1280, 720, 60);
    let mut pipeline = pipeline(&params);
    let remote = remote(&env);
    let (video, audio) = (pipeline.video.clone(), pipeline.audio.clone());
    let (reported, report) = reports();
    let locked = std::thread::spawn(move || {
        lock_down_this_thread();
        let capture = start(
            &prepared,
            remote,
            "lumen-test-video-seccomp",
            None,
            params,
            video,
            audio,
            report,
            |_| {},
        );
        (capture, prepared)
    });
    let seen = play_encode(&mut pipeline, Duration::from_secs(3));
    let (capture, prepared) = locked.join().unwrap();
    let more = play_encode(&mut pipeline, Duration::from_secs(1));
    let started = capture.map(drop);
    drop(prepared);
    let count = TRAPPED_COUNT.load(std::sync::atomic::Ordering::Relaxed);
    let trapped: Vec<i64> = TRAPPED
        .iter()
        .take(count)
        .map(|t| t.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert!(
        trapped.is_empty(),
        "syscalls outside the allowlist ({count}; numbers from asm/unistd_64.h): {trapped:?}"
    );
    started.expect("start under seccomp");
    let reported = reported.lock().unwrap().clone();
    assert!(reported.is_empty(), "reports: {reported:?}");
    let frames = seen.frames.len() + more.frames.len();
    let records = seen.audio_records.len() + more.audio_records.len();
    eprintln!("under seccomp: {frames} frames, {records} PCM records in 4 s");
    assert!(frames >= 60, "{frames} frames in 4 s from a 30 fps node");
    assert!(records >= 300, "{records} PCM records in 4 s");
}

/// NV12 with rows narrower than the producer's stride (98 pixels), targeted by node id as the
/// ScreenCast portal names nodes; 5.1 sound from a named stereo source node (the adapter upmixes):
/// every row of both planes arrives, padding dropped, and records have six channels.
#[test]
fn captures_nv12_by_node_id_and_a_named_audio_node() {
    let Some(mut env) = PipeWireEnv::start().expect("starting the private PipeWire") else {
        return;
    };
    let video = env
        .add_video_source(&VideoSource {
            name: "lumen-test-nv12".into(),
            width: 98,
            height: 64,
            fps: 30,
            format: "NV12".into(),
            solid_argb: Some(0xFF80_4020),
        })
        .expect("video source");
    let id = video["id"].as_u64().expect("node id").to_string();
    env.add_audio_source(&lumen_tests::pipewire_env::AudioSource {
        name: "lumen-test-mic".into(),
        channels: 2,
        rate: 44_100,
        freq_hz: 1000,
    })
    .expect("audio source");
    let prepared = preload().expect("preload");
    let params = SessionParams {
        audio: AudioLayout::Surround51,
        ..session(640, 360, 30)
    };
    let mut pipeline = pipeline(&params);
    let (reported, report) = reports();
    let capture = start(
        &prepared,
        remote(&env),
        &id,
        Some("lumen-test-mic"),
        params,
        pipeline.video.clone(),
        pipeline.audio.clone(),
        report,
        |_| {},
    )
    .expect("start");
    let _ = play_encode(&mut pipeline, Duration::from_secs(1));
    let seen = play_encode(&mut pipeline, Duration::from_secs(2));
    drop(capture);
    let reported = reported.lock().unwrap().clone();
    assert!(reported.is_empty(), "reports: {reported:?}");
    eprintln!(
        "NV12 by id: {} frames, {} 5.1 PCM records in 2 s",
        seen.frames.len(),
        seen.audio_records.len()
    );
    assert!(seen.frames.len() >= 30, "{} frames", seen.frames.len());
    assert!(seen
        .frames
        .iter()
        .all(|f| (f.1, f.2, f.3) == (98, 64, PixelFormat::Nv12)));
    // A solid colour: every luma byte alike, every chroma pair alike; a stride mistake would
    // bring in the producer's row padding or shift the chroma plane.
    for planes in &seen.pictures {
        let y = &planes[0];
        assert_eq!(y.len(), 98 * 64);
        assert!(
            y.iter().all(|&b| b == y[0]),
            "luma not uniform: {:?}",
            &y[..300]
        );
        let uv = &planes[1];
        assert_eq!(uv.len(), 98 * 32);
        assert!(
            uv.chunks_exact(2).all(|p| p == &uv[..2]),
            "chroma not uniform"
        );
        assert!(
            y[0] > 16 && uv[0] != uv[1],
            "luma {} chroma {:?}",
            y[0],
            &uv[..2]
        );
    }
    // 5 ms of 5.1 per record: 400 in 2 s.
    assert!(
        seen.audio_records.len() >= 200,
        "{} records",
        seen.audio_records.len()
    );
    assert!(seen.audio_records.iter().all(|r| r.2 == 240 * 6 * 4));
}

/// What the session hears when things go wrong: a node whose only format the encoder cannot take
/// (YUY2) is reported by name and format or as never negotiating; a node that vanishes while
/// streaming is reported as gone. Neither panics nor hangs the stop.
#[test]
fn refused_formats_and_vanishing_nodes_are_reported() {
    let Some(mut env) = PipeWireEnv::start().expect("starting the private PipeWire") else {
        return;
    };
    env.add_video_source(&VideoSource {
        name: "lumen-test-yuy2".into(),
        width: 160,
        height: 120,
        fps: 30,
        format: "YUY2".into(),
        solid_argb: None,
    })
    .expect("YUY2 source");
    env.add_video_source(&VideoSource {
        name: "lumen-test-going".into(),
        width: 160,
        height: 120,
        fps: 30,
        format: "BGRx".into(),
        solid_argb: None,
    })
    .expect("BGRx source");
    env.add_null_sink("lumen-test-sink").expect("null sink");
    let prepared = preload().expect("preload");
    let params = session(640, 360, 30);

    let wait_for_report = |node: &str, pipeline: &mut Pipeline, env: &mut PipeWireEnv| {
        let (reported, report) = reports();
        let capture = start(
            &prepared,
            remote(env),
            node,
            None,
            params,
            pipeline.video.clone(),
            pipeline.audio.clone(),
            report,
            |_| {},
        )
        .expect("start");
        let begin = Instant::now();
        let mut frames = 0;
        let mut stopped_source = false;
        while reported.lock().unwrap().is_empty()
            && begin.elapsed() < FIRST_BUFFER_TIMEOUT + Duration::from_secs(5)
        {
            frames += play_encode(pipeline, Duration::from_millis(100))
                .frames
                .len();
            if node == "lumen-test-going" && frames >= 10 && !stopped_source {
                env.stop("lumen-test-going").expect("stopping the source");
                stopped_source = true;
            }
        }
        let stop = Instant::now();
        drop(capture);
        assert!(
            stop.elapsed() < Duration::from_secs(2),
            "stopping took {:?}",
            stop.elapsed()
        );
        let reported = reported.lock().unwrap().clone();
        (reported, frames)
    };

    let mut pipeline = pipeline(&params);
    let (reported, frames) = wait_for_report("lumen-test-yuy2", &mut pipeline, &mut env);
    eprintln!("YUY2 node reported as: {reported:?}");
    assert_eq!(frames, 0);
    assert_eq!(reported.len(), 1, "{reported:?}");
    // WirePlumber either unlinks the stream at once or leaves it unlinked (then the first-buffer
    // watchdog speaks); both messages name the node and the formats the encoder takes.
    assert!(
        reported[0].contains("lumen-test-yuy2") && reported[0].contains("BGRx, BGRA"),
        "{}",
        reported[0]
    );

    let mut pipeline = pipeline_for_failure(&params);
    let (reported, frames) = wait_for_report("lumen-test-going", &mut pipeline, &mut env);
    eprintln!("vanishing node reported as: {reported:?} after {frames} frames");
    assert!(frames >= 10);
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(
        reported[0].contains("lumen-test-going") && reported[0].contains("went away"),
        "{}",
        reported[0]
    );
}

/// A host without any audio sink (no default monitor to record) still streams its picture: the
/// missing sound is logged, not a session failure.
#[test]
fn a_host_without_an_audio_sink_still_streams_video() {
    let Some(mut env) = PipeWireEnv::start().expect("starting the private PipeWire") else {
        return;
    };
    env.add_video_source(&VideoSource {
        name: "lumen-test-silent".into(),
        width: 160,
        height: 120,
        fps: 30,
        format: "RGBx".into(),
        solid_argb: None,
    })
    .expect("video source");
    let prepared = preload().expect("preload");
    let params = session(640, 360, 30);
    let mut pipeline = pipeline(&params);
    let (reported, report) = reports();
    let capture = start(
        &prepared,
        remote(&env),
        "lumen-test-silent",
        None,
        params,
        pipeline.video.clone(),
        pipeline.audio.clone(),
        report,
        |_| {},
    )
    .expect("start");
    // Past the first-buffer watchdog.
    let seen = play_encode(&mut pipeline, FIRST_BUFFER_TIMEOUT + Duration::from_secs(1));
    drop(capture);
    let reported = reported.lock().unwrap().clone();
    assert!(reported.is_empty(), "reports: {reported:?}");
    assert!(seen.audio_records.is_empty());
    assert!(seen.frames.len() >= 200, "{} frames", seen.frames.len());
    assert!(seen
        .frames
        .iter()
        .all(|f| (f.1, f.2, f.3) == (160, 120, PixelFormat::Rgbx)));
}
