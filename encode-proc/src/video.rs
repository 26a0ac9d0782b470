//! The video encoder: one FFmpeg encoder (libx264, libx265, libsvtav1, or NVENC where a driver is
//! present) set up for streaming: no B-frames, one reference frame, an IDR only at the start or on
//! request, parameter sets in front of every IDR, CBR with a VBV of about one frame.
//!
//! Both x264 and x265 run with `tune=zerolatency` (no lookahead, no frame threads), so every frame
//! sent comes back as one access unit before the next is sent. SVT-AV1 (1.4, low-delay CBR) hands
//! each frame's temporal unit out two frames later, and cannot force a key frame in that mode: an
//! IDR request reopens it. The caller matches packets to frames by pts.

use ffmpeg_next as ffmpeg;
use ffmpeg_next::{codec, encoder, format::Pixel, frame, picture, Dictionary, Packet};
use lumen_ipc::media::VideoCodec;

use crate::annexb;

/// Why an encoder could not be opened or fed.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("no encoder in this FFmpeg build can encode {0} (tried {1})")]
    NoEncoder(&'static str, String),
    #[error("{encoder}: {what}: {source}")]
    Ffmpeg {
        encoder: &'static str,
        what: &'static str,
        source: ffmpeg::Error,
    },
}

/// The FFmpeg encoders lumen knows, best first per codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Nvenc(VideoCodec),
    X264,
    X265,
    SvtAv1,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nvenc(VideoCodec::H264) => "h264_nvenc",
            Backend::Nvenc(VideoCodec::Hevc) => "hevc_nvenc",
            Backend::Nvenc(VideoCodec::Av1) => "av1_nvenc",
            Backend::X264 => "libx264",
            Backend::X265 => "libx265",
            Backend::SvtAv1 => "libsvtav1",
        }
    }

    pub fn codec(self) -> VideoCodec {
        match self {
            Backend::Nvenc(codec) => codec,
            Backend::X264 => VideoCodec::H264,
            Backend::X265 => VideoCodec::Hevc,
            Backend::SvtAv1 => VideoCodec::Av1,
        }
    }

    /// Candidates for `codec`, best first.
    pub fn candidates(codec: VideoCodec) -> &'static [Backend] {
        match codec {
            VideoCodec::H264 => &[Backend::Nvenc(VideoCodec::H264), Backend::X264],
            VideoCodec::Hevc => &[Backend::Nvenc(VideoCodec::Hevc), Backend::X265],
            VideoCodec::Av1 => &[Backend::Nvenc(VideoCodec::Av1), Backend::SvtAv1],
        }
    }

    /// The pixel format the encoder takes (the one frames are converted to).
    pub fn pixel(self) -> Pixel {
        match self {
            // Capture's NV12 goes in without conversion.
            Backend::X264 | Backend::Nvenc(_) => Pixel::NV12,
            Backend::X265 | Backend::SvtAv1 => Pixel::YUV420P,
        }
    }

    /// Whether a frame marked I comes out as a key frame (else an IDR request reopens).
    fn forces_key_frames(self) -> bool {
        self != Backend::SvtAv1
    }

    /// Whether a bitrate change can be applied to the open encoder (else it is reopened, which
    /// starts with an IDR).
    fn reconfigures_bitrate(self) -> bool {
        // FFmpeg's libx264 wrapper compares the context's bit_rate / rc_max_rate / rc_buffer_size with
        // x264's before every frame and calls x264_encoder_reconfig; nvenc does the same
        // (reconfig_encoder in nvenc.c). libx265 and libsvtav1 have no such path in FFmpeg 5.1.
        matches!(self, Backend::X264 | Backend::Nvenc(_))
    }
}

/// Worker threads a codec may use: the sandbox caps the whole worker at 32 threads, and lumen-encode
/// itself runs four.
pub fn codec_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8)
}

/// What the session wants from the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

/// One access unit out of the encoder.
#[derive(Debug, Clone)]
pub struct EncodedAu {
    /// Annex B with parameter sets in front of every IDR and no SEI before the first slice (H.264,
    /// HEVC); a temporal unit of OBUs (AV1).
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// The pts of the frame it encodes.
    pub pts: i64,
}

/// An open encoder.
pub struct VideoEncoder {
    backend: Backend,
    config: VideoConfig,
    enc: encoder::video::Encoder,
    packet: Packet,
    next_pts: i64,
    /// Frames sent to this encoder since it was opened.
    sent: u64,
    /// The access units of the last `encode`, reused frame after frame (their buffers keep their
    /// capacity), so encoding allocates nothing once warm.
    aus: Vec<EncodedAu>,
}

fn ff(encoder: &'static str, what: &'static str) -> impl FnOnce(ffmpeg::Error) -> VideoError {
    move |source| VideoError::Ffmpeg {
        encoder,
        what,
        source,
    }
}

fn options(backend: Backend, threads: usize) -> Dictionary<'static> {
    let mut opts = Dictionary::new();
    match backend {
        Backend::X264 => {
            opts.set("preset", "superfast");
            opts.set("tune", "zerolatency");
            // A frame the caller marks I becomes an IDR (the wrapper's default is a plain I frame
            // for open GOP).
            opts.set("forced-idr", "1");
            opts.set(
                "x264-params",
                &format!(
                    // keyint=infinite: IDRs only at the start and on request; scenecut=0: no
                    // encoder-chosen I frames; repeat-headers: SPS/PPS before every IDR;
                    // sliced-threads: zerolatency's threading, no frame delay.
                    "keyint=infinite:min-keyint=1:scenecut=0:bframes=0:ref=1:repeat-headers=1:\
                     annexb=1:aud=0:sliced-threads=1:threads={threads}"
                ),
            );
        }
        Backend::X265 => {
            opts.set("preset", "ultrafast");
            opts.set("tune", "zerolatency");
            opts.set("forced-idr", "1");
            opts.set(
                "x265-params",
                &format!(
                    // keyint=-1: one IDR at the start, more only on request; info=0: no version SEI;
                    // pools/frame-threads: stay inside the worker's thread budget.
                    "keyint=-1:scenecut=0:bframes=0:ref=1:repeat-headers=1:annexb=1:aud=0:\
                     info=0:hash=0:open-gop=0:frame-threads=1:pools={threads}:log-level=error"
                ),
            );
        }
        Backend::SvtAv1 => {
            // 12: fast enough for real time on a few cores.
            opts.set("preset", "12");
            // Low-delay prediction (no reordering) and CBR, which SVT-AV1 only offers low-delay.
            opts.set(
                "svtav1-params",
                // lp=1: SVT-AV1 sizes its thread pools from this (lp=2 starts ~130 threads on two
                // cores, lp=1 about 16), and the worker may run 32. keyint=0: no periodic key
                // frames. SVT-AV1 1.4 honours a forced key frame only in random-access CRF/CQP, so
                // an IDR on request reopens the encoder instead.
                "pred-struct=1:rc=2:lp=1:keyint=0:scd=0:lookahead=0",
            );
        }
        Backend::Nvenc(_) => {
            opts.set("preset", "p1");
            opts.set("tune", "ull");
            opts.set("zerolatency", "1");
            opts.set("rc", "cbr");
            opts.set("forced-idr", "1");
            opts.set("delay", "0");
        }
    }
    opts
}

impl VideoEncoder {
    /// Opens `backend` for `config`.
    pub fn open(backend: Backend, config: VideoConfig) -> Result<Self, VideoError> {
        let name = backend.name();
        let codec = encoder::find_by_name(name)
            .ok_or_else(|| VideoError::NoEncoder(backend.codec().name(), name.to_string()))?;
        let mut video = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(ff(name, "not a video encoder"))?;
        let threads = codec_threads();
        video.set_width(config.width);
        video.set_height(config.height);
        video.set_format(backend.pixel());
        video.set_time_base(ffmpeg::Rational::new(1, config.fps as i32));
        video.set_frame_rate(Some(ffmpeg::Rational::new(config.fps as i32, 1)));
        video.set_max_b_frames(0);
        // What swscale produces from RGB (BT.601, limited range), and Moonlight's default CSC mode.
        video.set_colorspace(ffmpeg::color::Space::SMPTE170M);
        video.set_color_primaries(ffmpeg::color::Primaries::SMPTE170M);
        video.set_color_transfer_characteristic(ffmpeg::color::TransferCharacteristic::SMPTE170M);
        video.set_color_range(ffmpeg::color::Range::MPEG);
        video.set_threading(codec::threading::Config {
            kind: codec::threading::Type::Slice,
            count: threads,
            safe: false,
        });
        apply_bitrate(&mut video, backend, config);
        let enc = video
            .open_with(options(backend, threads))
            .map_err(ff(name, "opening the encoder"))?;
        Ok(Self {
            backend,
            config,
            enc,
            packet: Packet::empty(),
            next_pts: 0,
            sent: 0,
            aus: Vec::new(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn config(&self) -> VideoConfig {
        self.config
    }

    /// A new frame in the encoder's format at the session size.
    pub fn new_frame(&self) -> frame::Video {
        frame::Video::new(self.backend.pixel(), self.config.width, self.config.height)
    }

    /// Encodes `frame` (an IDR when `idr`); returns the pts it was given and the access units the
    /// encoder had ready (with zerolatency: this frame's), valid until the next call.
    pub fn encode(
        &mut self,
        frame: &mut frame::Video,
        idr: bool,
    ) -> Result<(i64, &[EncodedAu]), VideoError> {
        // A fresh encoder's first frame is a key frame anyway.
        if idr && self.sent > 0 && !self.backend.forces_key_frames() {
            self.reopen(self.config)?;
        }
        let name = self.backend.name();
        let pts = self.next_pts;
        self.next_pts += 1;
        frame.set_pts(Some(pts));
        frame.set_kind(if idr {
            picture::Type::I
        } else {
            picture::Type::None
        });
        // SAFETY: the frame is a valid AVFrame owned by `frame`; key_frame is a plain int field.
        unsafe { (*frame.as_mut_ptr()).key_frame = i32::from(idr) };
        self.enc
            .send_frame(frame)
            .map_err(ff(name, "sending a frame"))?;
        self.sent += 1;
        let mut ready = 0;
        loop {
            match self.enc.receive_packet(&mut self.packet) {
                Ok(()) => {
                    if ready == self.aus.len() {
                        self.aus.push(EncodedAu {
                            data: Vec::new(),
                            keyframe: false,
                            pts: 0,
                        });
                    }
                    let codec = self.backend.codec();
                    let au = &mut self.aus[ready];
                    annexb::copy_without_leading_sei(
                        codec,
                        self.packet.data().unwrap_or_default(),
                        &mut au.data,
                    );
                    // The bitstream says what the client will see; the packet flag covers AV1.
                    au.keyframe = self.packet.is_key() || annexb::has_idr_slice(codec, &au.data);
                    au.pts = self.packet.pts().unwrap_or(pts);
                    ready += 1;
                }
                Err(ffmpeg::Error::Other { errno }) if errno == libc::EAGAIN => break,
                Err(e) => return Err(ff(name, "receiving a packet")(e)),
            }
        }
        Ok((pts, &self.aus[..ready]))
    }

    /// Changes the bitrate from the next frame on. Returns true when the encoder had to be reopened
    /// (its next frame is then an IDR anyway).
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<bool, VideoError> {
        if kbps == self.config.bitrate_kbps {
            return Ok(false);
        }
        let config = VideoConfig {
            bitrate_kbps: kbps,
            ..self.config
        };
        if self.backend.reconfigures_bitrate() {
            apply_bitrate(&mut self.enc, self.backend, config);
            self.config = config;
            return Ok(false);
        }
        self.reopen(config)?;
        Ok(true)
    }

    /// A fresh encoder (its first frame is a key frame) that carries on the pts sequence. Frames
    /// the old one still held (SVT-AV1 keeps two) are lost; their ring records never appear.
    fn reopen(&mut self, config: VideoConfig) -> Result<(), VideoError> {
        let next_pts = self.next_pts;
        self.finish();
        // The old encoder goes first: two SVT-AV1 instances side by side would pass the worker's
        // thread cap (and SVT-AV1 hangs when it cannot start its threads).
        let closed = codec::context::Context::new()
            .encoder()
            .video()
            .map_err(ff(self.backend.name(), "closing the encoder"))?;
        self.enc = encoder::video::Encoder(closed);
        *self = Self::open(self.backend, config)?;
        self.next_pts = next_pts;
        Ok(())
    }
}

impl VideoEncoder {
    /// Ends the stream before the encoder is torn down: SVT-AV1 can hang in deinit with frames in
    /// flight (and waits forever for the end of a stream it got no frame of). What comes out now
    /// belongs to a stream nobody continues, and is dropped.
    fn finish(&mut self) {
        if self.sent > 0 && self.enc.send_eof().is_ok() {
            while self.enc.receive_packet(&mut self.packet).is_ok() {}
        }
        self.sent = 0;
    }
}

impl Drop for VideoEncoder {
    fn drop(&mut self) {
        self.finish();
    }
}

/// CBR at `config.bitrate_kbps` with a VBV of one frame (bitrate / fps), as low-latency streaming
/// wants: no frame may take much longer than a frame interval to send.
fn apply_bitrate(ctx: &mut codec::context::Context, backend: Backend, config: VideoConfig) {
    let bits = i64::from(config.bitrate_kbps) * 1000;
    // SVT-AV1's CBR refuses a maximum equal to the target; its buffer settings do the capping.
    let max = if backend == Backend::SvtAv1 { 0 } else { bits };
    let mut buffer = bits / i64::from(config.fps.max(1));
    if backend == Backend::SvtAv1 {
        // SVT-AV1 takes buffers of 20 ms and more (one frame at 60 fps is 16.7 ms).
        buffer = buffer.max(bits * 21 / 1000);
    }
    // SAFETY: `ctx` wraps a valid AVCodecContext; these are plain integer fields the wrapper reads
    // (at open, and for x264 before every frame).
    unsafe {
        let raw = ctx.as_mut_ptr();
        (*raw).bit_rate = bits;
        (*raw).rc_max_rate = max;
        (*raw).rc_min_rate = 0;
        (*raw).rc_buffer_size = buffer.clamp(1, i64::from(i32::MAX)) as i32;
    }
}

/// Which encoders open on this machine (tried once at a small size before lock-down, which also
/// loads everything the codec libraries read from disk).
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub usable: Vec<Backend>,
    /// Why each unusable candidate failed.
    pub unusable: Vec<(Backend, String)>,
}

impl Probe {
    pub fn run() -> Probe {
        let mut probe = Probe::default();
        let config = VideoConfig {
            width: 256,
            height: 144,
            fps: 30,
            bitrate_kbps: 500,
        };
        for codec in [VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Av1] {
            for &backend in Backend::candidates(codec) {
                match VideoEncoder::open(backend, config).and_then(|mut enc| {
                    // One frame through it: some libraries load their kernels lazily.
                    let mut frame = enc.new_frame();
                    blank(&mut frame);
                    enc.encode(&mut frame, true).map(|_| ())
                }) {
                    Ok(()) => probe.usable.push(backend),
                    Err(e @ VideoError::Ffmpeg { .. }) if matches!(backend, Backend::Nvenc(_)) => {
                        probe.unusable.push((
                            backend,
                            format!(
                                "{e} (NVENC needs the NVIDIA driver's libcuda.so.1 and a GPU \
                                 with NVENC)"
                            ),
                        ))
                    }
                    Err(e) => probe.unusable.push((backend, e.to_string())),
                }
            }
        }
        probe
    }

    /// The best usable encoder for `codec`, or a message naming what was tried and why it failed.
    pub fn pick(&self, codec: VideoCodec) -> Result<Backend, String> {
        if let Some(backend) = Backend::candidates(codec)
            .iter()
            .find(|b| self.usable.contains(b))
        {
            return Ok(*backend);
        }
        let tried: Vec<String> = self
            .unusable
            .iter()
            .filter(|(b, _)| b.codec() == codec)
            .map(|(b, why)| format!("{}: {why}", b.name()))
            .collect();
        Err(format!(
            "no encoder for {} works here ({})",
            codec.name(),
            if tried.is_empty() {
                "none known".to_string()
            } else {
                tried.join("; ")
            }
        ))
    }
}

/// Fills a frame with mid-grey.
pub fn blank(frame: &mut frame::Video) {
    for plane in 0..frame.planes() {
        let value = if plane == 0 { 16 } else { 128 };
        frame.data_mut(plane).fill(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the Rust heap allocations of the thread that enabled counting (the codecs' own C
    /// threads and allocations are not Rust's, and other test threads do not count).
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        pub struct Counting;

        thread_local! {
            static COUNTING: Cell<bool> = const { Cell::new(false) };
            static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
        }

        // SAFETY: every call is forwarded to the system allocator unchanged; the thread-locals
        // are const-initialised Cells, which never allocate.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                if COUNTING.with(Cell::get) {
                    ALLOCATIONS.with(|n| n.set(n.get() + 1));
                }
                // SAFETY: the caller's contract for `alloc` is passed on as is.
                unsafe { System.alloc(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        /// Runs `f` and returns how many Rust allocations this thread made in it.
        pub fn allocations_in(f: impl FnOnce()) -> u64 {
            ALLOCATIONS.with(|n| n.set(0));
            COUNTING.with(|c| c.set(true));
            f();
            COUNTING.with(|c| c.set(false));
            ALLOCATIONS.with(Cell::get)
        }
    }

    #[global_allocator]
    static ALLOCATOR: counting::Counting = counting::Counting;

    /// Once warm, encoding a frame allocates nothing on the Rust side: the access units and their
    /// buffers are reused (the per-frame path).
    #[test]
    fn encoding_allocates_nothing_once_warm() {
        ffmpeg::init().unwrap();
        let mut enc = VideoEncoder::open(Backend::X264, config()).unwrap();
        let mut frame = enc.new_frame();
        let paint = |frame: &mut frame::Video, n: u8| {
            for plane in 0..frame.planes() {
                frame.data_mut(plane).fill(n.wrapping_mul(37));
            }
        };
        for n in 0..5u8 {
            paint(&mut frame, n);
            enc.encode(&mut frame, n == 0).unwrap();
        }
        let mut bytes = 0;
        let allocations = counting::allocations_in(|| {
            for n in 5..15u8 {
                paint(&mut frame, n);
                let (_, aus) = enc.encode(&mut frame, false).unwrap();
                bytes += aus.iter().map(|au| au.data.len()).sum::<usize>();
            }
        });
        assert!(bytes > 0, "the encoder produced nothing");
        assert_eq!(
            allocations, 0,
            "Rust allocations while encoding 10 warm frames"
        );
    }

    fn config() -> VideoConfig {
        VideoConfig {
            width: 320,
            height: 180,
            fps: 30,
            bitrate_kbps: 800,
        }
    }

    /// x264 and x265 hand every frame out as its own access unit before the next goes in; SVT-AV1
    /// a few frames later. A requested IDR lands on the frame that asked for it.
    #[test]
    fn access_units_follow_frames_and_idr_requests() {
        ffmpeg::init().unwrap();
        for (backend, delay) in [(Backend::X264, 0), (Backend::X265, 0), (Backend::SvtAv1, 2)] {
            let mut enc = match VideoEncoder::open(backend, config()) {
                Ok(enc) => enc,
                Err(e) => panic!("{}: {e}", backend.name()),
            };
            let mut frame = enc.new_frame();
            let mut out = Vec::new();
            for n in 0..12i64 {
                for plane in 0..frame.planes() {
                    frame.data_mut(plane).fill((n as u8).wrapping_mul(29));
                }
                let (pts, aus) = enc.encode(&mut frame, n == 0 || n == 6).unwrap();
                assert_eq!(pts, n);
                out.extend(aus.iter().map(|au| (n, au.pts, au.keyframe)));
            }
            let name = backend.name();
            if delay == 0 {
                let expected: Vec<(i64, i64, bool)> =
                    (0..12).map(|n| (n, n, n == 0 || n == 6)).collect();
                assert_eq!(out, expected, "{name}");
                continue;
            }
            // SVT-AV1's delay depends on its threads (two or three frames here); the frames it held
            // when the IDR reopened it are gone.
            assert!(out.windows(2).all(|w| w[0].1 < w[1].1), "{name}: {out:?}");
            assert!(
                out.iter().all(|&(n, pts, _)| n - pts <= 4),
                "{name}: {out:?}"
            );
            assert!(
                out.iter()
                    .all(|&(_, pts, key)| key == (pts == 0 || pts == 6)),
                "{out:?}"
            );
            assert!(out.iter().any(|&(_, pts, _)| pts == 6), "{name}: {out:?}");
        }
    }
}
