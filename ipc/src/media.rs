//! The media session: what the broker tells capture and encode when a stream starts, and what
//! capture, encode and the stream's consumer (lumen-net, or the broker when it records) say to each
//! other on the direct channels the broker created for them.
//!
//! Layout of one session (all memfds, eventfds and socketpairs are created by the broker):
//!
//! ```text
//! capture ──frame pool memfd (N slots) + FrameReady/Release on a direct channel──▶ encode
//! capture ──PCM ring (48 kHz interleaved f32)──────────────────────────────────────▶ encode
//! encode  ──video ring (one access unit per record) + audio ring (one Opus packet per record)──▶ consumer
//! consumer ──EncoderControl on a direct channel (IDR request, bitrate)─────────────▶ encode
//! ```
//!
//! Frame slots are named by the index the broker's pool defines, never by an fd or a size the peer
//! sends; every index, size and stride is checked against the pool before a byte is read.

use serde::{Deserialize, Serialize};

/// Video codecs a session may ask for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    Hevc,
    Av1,
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Hevc => "hevc",
            VideoCodec::Av1 => "av1",
        }
    }
}

/// Audio channel layouts GameStream negotiates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AudioLayout {
    Stereo,
    Surround51,
    Surround71,
}

impl AudioLayout {
    pub fn channels(self) -> u32 {
        match self {
            AudioLayout::Stereo => 2,
            AudioLayout::Surround51 => 6,
            AudioLayout::Surround71 => 8,
        }
    }
}

/// How a layout is coded as Opus multistream (protocol notes §7.1): `streams` Opus streams, the
/// first `coupled` of them stereo, and `mapping[i]` = the decoded channel of input channel `i`, in
/// the client's channel order FL FR C LFE BL BR SL SR. lumen encodes with the identity mapping, as
/// Sunshine does (net advertises it in DESCRIBE with the GFE quirk applied there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusLayout {
    pub channels: u8,
    pub streams: u8,
    pub coupled: u8,
    pub mapping: [u8; 8],
}

impl AudioLayout {
    /// The normal-quality multistream coding of this layout.
    pub fn opus_layout(self) -> OpusLayout {
        let identity = [0, 1, 2, 3, 4, 5, 6, 7];
        match self {
            AudioLayout::Stereo => OpusLayout {
                channels: 2,
                streams: 1,
                coupled: 1,
                mapping: identity,
            },
            AudioLayout::Surround51 => OpusLayout {
                channels: 6,
                streams: 4,
                coupled: 2,
                mapping: identity,
            },
            AudioLayout::Surround71 => OpusLayout {
                channels: 8,
                streams: 5,
                coupled: 3,
                mapping: identity,
            },
        }
    }

    /// Sunshine's normal-quality Opus bitrate for the layout, in bit/s (protocol notes §7.1).
    pub fn opus_bitrate(self) -> u32 {
        match self {
            AudioLayout::Stereo => 96_000,
            AudioLayout::Surround51 => 256_000,
            AudioLayout::Surround71 => 450_000,
        }
    }
}

/// Audio sample rate of every session (GameStream audio is always 48 kHz).
pub const AUDIO_SAMPLE_RATE: u32 = 48_000;

/// Largest picture a session may ask for (8K).
pub const MAX_DIMENSION: u32 = 7680;

/// Highest frame rate a session may ask for.
pub const MAX_FPS: u32 = 240;

/// What a stream is, as the client negotiated it (the broker checks it before anyone sees it).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionParams {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    pub codec: VideoCodec,
    pub audio: AudioLayout,
    /// Opus packet duration in milliseconds (5 by default; 10 or 20 on slow links).
    pub audio_packet_ms: u32,
}

impl SessionParams {
    /// Refuses what no encoder should be asked for; every receiver calls it again.
    pub fn validate(&self) -> Result<(), String> {
        if self.width < 64 || self.height < 64 {
            return Err(format!("{}x{} is too small", self.width, self.height));
        }
        if self.width > MAX_DIMENSION || self.height > MAX_DIMENSION {
            return Err(format!(
                "{}x{} is larger than {MAX_DIMENSION} pixels on a side",
                self.width, self.height
            ));
        }
        if !self.width.is_multiple_of(2) || !self.height.is_multiple_of(2) {
            return Err(format!(
                "{}x{}: both sides must be even (4:2:0 video)",
                self.width, self.height
            ));
        }
        if self.fps == 0 || self.fps > MAX_FPS {
            return Err(format!("{} fps is outside 1..={MAX_FPS}", self.fps));
        }
        if !(100..=500_000).contains(&self.bitrate_kbps) {
            return Err(format!(
                "{} kbit/s is outside 100..=500000",
                self.bitrate_kbps
            ));
        }
        if ![5, 10, 20].contains(&self.audio_packet_ms) {
            return Err(format!(
                "an Opus packet of {} ms is not one GameStream uses (5, 10, 20)",
                self.audio_packet_ms
            ));
        }
        Ok(())
    }

    /// Samples per channel in one audio packet.
    pub fn audio_samples_per_packet(&self) -> u32 {
        AUDIO_SAMPLE_RATE / 1000 * self.audio_packet_ms
    }
}

/// What `lumen-encode` can produce here, found once at its start (it opens every encoder it knows
/// before lock-down) and reported to the broker after each `Ready`. The broker passes it to
/// lumen-net, whose DESCRIBE offers exactly this, and refuses a stream that asks for anything else.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EncoderCapabilities {
    /// Video codecs at least one encoder opened for, each once.
    pub codecs: Vec<VideoCodec>,
    /// Audio layouts the Opus encoder took, each once.
    pub audio_layouts: Vec<AudioLayout>,
}

impl EncoderCapabilities {
    /// Refuses repeated entries (so neither list can outgrow its enum).
    pub fn validate(&self) -> Result<(), String> {
        for (i, codec) in self.codecs.iter().enumerate() {
            if self.codecs[..i].contains(codec) {
                return Err(format!("codec {} listed twice", codec.name()));
            }
        }
        for (i, layout) in self.audio_layouts.iter().enumerate() {
            if self.audio_layouts[..i].contains(layout) {
                return Err(format!(
                    "audio layout of {} channels listed twice",
                    layout.channels()
                ));
            }
        }
        Ok(())
    }

    pub fn has_codec(&self, codec: VideoCodec) -> bool {
        self.codecs.contains(&codec)
    }

    pub fn has_layout(&self, layout: AudioLayout) -> bool {
        self.audio_layouts.contains(&layout)
    }

    /// Whether a session with `params` can be encoded here; why not, naming what the encoder has.
    pub fn check(&self, params: &SessionParams) -> Result<(), String> {
        if !self.has_codec(params.codec) {
            let have: Vec<&str> = self.codecs.iter().map(|c| c.name()).collect();
            return Err(format!(
                "the encoder cannot produce {} (it reported: {})",
                params.codec.name(),
                if have.is_empty() {
                    "nothing yet".to_string()
                } else {
                    have.join(", ")
                }
            ));
        }
        if !self.has_layout(params.audio) {
            let have: Vec<String> = self
                .audio_layouts
                .iter()
                .map(|l| format!("{} channels", l.channels()))
                .collect();
            return Err(format!(
                "the encoder cannot produce {}-channel audio (it reported: {})",
                params.audio.channels(),
                if have.is_empty() {
                    "nothing yet".to_string()
                } else {
                    have.join(", ")
                }
            ));
        }
        Ok(())
    }
}

/// Pixel layouts a frame slot may hold.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 32-bit B, G, R, unused (PipeWire BGRx; also BGRA with alpha ignored).
    Bgrx,
    /// 32-bit R, G, B, unused.
    Rgbx,
    /// 8-bit Y plane, then interleaved 8-bit U/V at half resolution.
    Nv12,
    /// 8-bit Y, U, V planes (U and V at half resolution).
    I420,
}

impl PixelFormat {
    /// Number of planes and, per plane, (bytes per pixel group, width divisor, height divisor).
    fn planes(self) -> &'static [(u32, u32, u32)] {
        match self {
            PixelFormat::Bgrx | PixelFormat::Rgbx => &[(4, 1, 1)],
            PixelFormat::Nv12 => &[(1, 1, 1), (2, 2, 2)],
            PixelFormat::I420 => &[(1, 1, 1), (1, 2, 2), (1, 2, 2)],
        }
    }

    pub fn plane_count(self) -> usize {
        self.planes().len()
    }

    /// Smallest stride of plane `plane` for a picture `width` wide.
    pub fn min_stride(self, plane: usize, width: u32) -> u64 {
        let (bytes, wdiv, _) = self.planes()[plane];
        u64::from(width.div_ceil(wdiv)) * u64::from(bytes)
    }

    /// Rows of plane `plane` for a picture `height` high.
    pub fn plane_rows(self, plane: usize, height: u32) -> u64 {
        let (_, _, hdiv) = self.planes()[plane];
        u64::from(height.div_ceil(hdiv))
    }
}

/// One plane of a frame in a slot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Plane {
    /// Byte offset from the start of the slot.
    pub offset: u64,
    /// Bytes from one row to the next.
    pub stride: u64,
}

/// The frame pool the broker created: `slots` slots of `slot_bytes` each, back to back in one sealed
/// memfd of exactly `slots * slot_bytes` bytes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePoolSpec {
    pub slots: u32,
    pub slot_bytes: u64,
}

/// Most slots a pool may have.
pub const MAX_POOL_SLOTS: u32 = 16;

/// A frame that capture wrote into a slot and hands to encode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FrameDesc {
    pub slot: u32,
    /// Capture's frame counter (the test pattern draws the same number into the picture).
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds when the frame was captured.
    pub captured_ns: u64,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// One entry per plane of `format`.
    pub planes: Vec<Plane>,
}

/// Why a frame description does not fit the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameDescError {
    #[error("slot {slot} is outside the pool of {slots}")]
    BadSlot { slot: u32, slots: u32 },
    #[error("{width}x{height} is not a frame size this pool takes")]
    BadSize { width: u32, height: u32 },
    #[error("{format:?} has {expected} planes, the description gives {given}")]
    PlaneCount {
        format: PixelFormat,
        expected: usize,
        given: usize,
    },
    #[error("plane {plane}: stride {stride} is shorter than a row")]
    ShortStride { plane: usize, stride: u64 },
    #[error("plane {plane} ends past the slot of {slot_bytes} bytes")]
    PastSlot { plane: usize, slot_bytes: u64 },
}

impl FrameDesc {
    /// Checks the description against the pool: slot index, size, planes inside the slot.
    /// Returns the byte range of the slot inside the pool memfd.
    pub fn check(&self, pool: &FramePoolSpec) -> Result<std::ops::Range<u64>, FrameDescError> {
        if self.slot >= pool.slots {
            return Err(FrameDescError::BadSlot {
                slot: self.slot,
                slots: pool.slots,
            });
        }
        if self.width == 0 || self.height == 0 || self.width > 16384 || self.height > 16384 {
            return Err(FrameDescError::BadSize {
                width: self.width,
                height: self.height,
            });
        }
        let expected = self.format.plane_count();
        if self.planes.len() != expected {
            return Err(FrameDescError::PlaneCount {
                format: self.format,
                expected,
                given: self.planes.len(),
            });
        }
        for (i, plane) in self.planes.iter().enumerate() {
            let row = self.format.min_stride(i, self.width);
            // A stride is never longer than the slot: it bounds a one-row plane too, where only
            // the row itself would otherwise be checked against the slot.
            if plane.stride > pool.slot_bytes {
                return Err(FrameDescError::PastSlot {
                    plane: i,
                    slot_bytes: pool.slot_bytes,
                });
            }
            if plane.stride < row {
                return Err(FrameDescError::ShortStride {
                    plane: i,
                    stride: plane.stride,
                });
            }
            let rows = self.format.plane_rows(i, self.height);
            // Last row only needs `row` bytes, earlier ones a full stride.
            let end = plane
                .stride
                .checked_mul(rows - 1)
                .and_then(|v| v.checked_add(row))
                .and_then(|v| v.checked_add(plane.offset));
            match end {
                Some(end) if end <= pool.slot_bytes => {}
                _ => {
                    return Err(FrameDescError::PastSlot {
                        plane: i,
                        slot_bytes: pool.slot_bytes,
                    })
                }
            }
        }
        let start = u64::from(self.slot) * pool.slot_bytes;
        Ok(start..start + pool.slot_bytes)
    }
}

/// Capture → encode, on the direct channel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CaptureToEncode {
    /// A frame is ready in a slot; capture will not touch that slot until encode releases it.
    Frame(FrameDesc),
}

/// Encode → capture, on the direct channel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum EncodeToCapture {
    /// Encode is done with the slot (encoded, or dropped as stale); capture may reuse it.
    Release { slot: u32 },
}

/// The stream's consumer (lumen-net, or the broker when recording) → encode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum EncoderControl {
    /// The next frame is an IDR (client asked, or reference frames were invalidated).
    RequestIdr,
    /// Takes effect on the next frame.
    SetBitrate { kbps: u32 },
}

/// Where capture takes pictures and sound from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CaptureSource {
    /// The built-in moving test pattern with the frame code, and a test tone.
    TestPattern,
    /// A PipeWire remote (the message carries its fd): video from `video_node` (a node name or
    /// serial; the portal's node id when it came from the ScreenCast portal), audio from
    /// `audio_node` (none: the monitor of the default sink).
    PipeWire {
        video_node: String,
        audio_node: Option<String>,
    },
}

/// The ring generation every ring of a session starts with; the broker bumps it on every rebuild.
pub type Generation = u64;

/// Ring sizes the broker uses (bytes, powers of two).
pub const VIDEO_RING_BYTES: usize = 16 << 20;
pub const AUDIO_RING_BYTES: usize = 256 << 10;
pub const PCM_RING_BYTES: usize = 1 << 20;

/// What a capture or encode worker reports about the running session (sent about once a second).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct MediaStats {
    /// Frames produced (capture) or access units written (encode).
    pub frames: u64,
    /// Frames dropped: no free slot (capture), or stale / ring full (encode).
    pub dropped: u64,
    /// Frames encode repeated because capture sent nothing new in time (static desktop).
    pub repeated: u64,
    /// Audio packets produced (PCM packets by capture, Opus packets by encode).
    pub audio_packets: u64,
    /// The component in use, e.g. "test-pattern", "pipewire BGRx 1280x720", "libx264".
    pub component: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SessionParams {
        SessionParams {
            width: 1280,
            height: 720,
            fps: 60,
            bitrate_kbps: 10_000,
            codec: VideoCodec::H264,
            audio: AudioLayout::Stereo,
            audio_packet_ms: 5,
        }
    }

    #[test]
    fn encoder_capabilities_refuse_what_was_not_reported() {
        let caps = EncoderCapabilities {
            codecs: vec![VideoCodec::H264, VideoCodec::Av1],
            audio_layouts: vec![AudioLayout::Stereo, AudioLayout::Surround51],
        };
        assert!(caps.validate().is_ok());
        assert!(caps.check(&params()).is_ok());
        let av1_51 = SessionParams {
            codec: VideoCodec::Av1,
            audio: AudioLayout::Surround51,
            ..params()
        };
        assert!(caps.check(&av1_51).is_ok());
        let hevc = SessionParams {
            codec: VideoCodec::Hevc,
            ..params()
        };
        let why = caps.check(&hevc).unwrap_err();
        assert!(why.contains("hevc") && why.contains("h264, av1"), "{why}");
        let surround71 = SessionParams {
            audio: AudioLayout::Surround71,
            ..params()
        };
        let why = caps.check(&surround71).unwrap_err();
        assert!(why.contains("8-channel"), "{why}");
        // Nothing reported yet (the encoder is not up): every stream is refused.
        let why = EncoderCapabilities::default().check(&params()).unwrap_err();
        assert!(why.contains("nothing yet"), "{why}");
    }

    #[test]
    fn encoder_capabilities_refuse_repeats() {
        let twice = EncoderCapabilities {
            codecs: vec![VideoCodec::H264, VideoCodec::H264],
            audio_layouts: vec![AudioLayout::Stereo],
        };
        assert!(twice.validate().is_err());
        let twice = EncoderCapabilities {
            codecs: vec![VideoCodec::H264],
            audio_layouts: vec![AudioLayout::Stereo, AudioLayout::Stereo],
        };
        assert!(twice.validate().is_err());
    }

    #[test]
    fn session_params_bounds() {
        assert!(params().validate().is_ok());
        assert!(SessionParams {
            width: 0,
            ..params()
        }
        .validate()
        .is_err());
        assert!(SessionParams {
            width: 641,
            ..params()
        }
        .validate()
        .is_err());
        assert!(SessionParams {
            height: 8000,
            ..params()
        }
        .validate()
        .is_err());
        assert!(SessionParams { fps: 0, ..params() }.validate().is_err());
        assert!(SessionParams {
            fps: 1000,
            ..params()
        }
        .validate()
        .is_err());
        assert!(SessionParams {
            bitrate_kbps: 1,
            ..params()
        }
        .validate()
        .is_err());
        assert!(SessionParams {
            audio_packet_ms: 7,
            ..params()
        }
        .validate()
        .is_err());
        assert_eq!(params().audio_samples_per_packet(), 240);
    }

    fn nv12(slot: u32, w: u32, h: u32) -> FrameDesc {
        FrameDesc {
            slot,
            seq: 1,
            captured_ns: 0,
            width: w,
            height: h,
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
        }
    }

    #[test]
    fn frame_desc_checked_against_pool() {
        let pool = FramePoolSpec {
            slots: 2,
            slot_bytes: 640 * 360 * 3 / 2,
        };
        assert_eq!(
            nv12(1, 640, 360).check(&pool),
            Ok(pool.slot_bytes..2 * pool.slot_bytes)
        );
        assert!(matches!(
            nv12(2, 640, 360).check(&pool),
            Err(FrameDescError::BadSlot { .. })
        ));
        let mut wider = nv12(0, 640, 360);
        wider.width = 642;
        assert!(matches!(
            wider.check(&pool),
            Err(FrameDescError::ShortStride { .. })
        ));
        assert!(matches!(
            nv12(0, 640, 362).check(&pool),
            Err(FrameDescError::PastSlot { .. })
        ));
        let mut lying = nv12(0, 640, 360);
        lying.planes[1].offset = u64::MAX - 10;
        assert!(matches!(
            lying.check(&pool),
            Err(FrameDescError::PastSlot { .. })
        ));
        lying.planes.pop();
        assert!(matches!(
            lying.check(&pool),
            Err(FrameDescError::PlaneCount { .. })
        ));
        let mut huge = nv12(0, 640, 360);
        huge.planes[0].stride = u64::MAX / 2;
        assert!(matches!(
            huge.check(&pool),
            Err(FrameDescError::PastSlot { .. })
        ));
    }
}
