//! The ANNOUNCE body (protocol notes §4.5): the client's stream settings as SDP-like `a=name:value `
//! lines, turned into a bounds-checked [`StreamConfig`].
//!
//! [`Announce::parse`] splits the body into lines (at most [`MAX_BODY_LEN`] bytes, [`MAX_LINE_LEN`] per
//! line, [`MAX_ATTRIBUTES`] attributes, no duplicates). [`StreamConfig::from_announce`] reads the
//! attributes the host needs, with defaults (Sunshine's, where it has one) for what may be omitted, and refuses
//! values out of range. [`StreamConfig::to_announce`] writes the body the way moonlight-common-c's
//! `SdpGenerator.c` does (appversion 7.1.431, Sunshine host), for tests and test clients.

use std::fmt::Write as _;

/// `x-ss-general.encryption*` bit: control stream v2 IVs.
pub const SS_ENC_CONTROL_V2: u32 = 0x01;
/// `x-ss-general.encryption*` bit: video encryption.
pub const SS_ENC_VIDEO: u32 = 0x02;
/// `x-ss-general.encryption*` bit: audio encryption.
pub const SS_ENC_AUDIO: u32 = 0x04;
/// Every `SS_ENC_*` bit defined.
pub const SS_ENC_ALL: u32 = SS_ENC_CONTROL_V2 | SS_ENC_VIDEO | SS_ENC_AUDIO;
/// `x-nv-general.featureFlags` bit: the client encrypts audio (set whenever it opted in).
pub const NVFF_AUDIO_ENCRYPTION: u32 = 0x20;
/// `x-nv-general.featureFlags` bit: remote-input encryption (always set from 7.1.431).
pub const NVFF_RI_ENCRYPTION: u32 = 0x80;
/// `x-ml-general.featureFlags` bit: the client sends per-frame FEC status (0x5502).
pub const ML_FF_FEC_STATUS: u32 = 0x01;
/// `x-ml-general.featureFlags` bit: the client uses `X-SS-Ping-Payload` and `X-SS-Connect-Data`.
pub const ML_FF_SESSION_ID_V1: u32 = 0x02;
/// `x-nv-general.useReliableUdp` value of the encrypted control protocol.
pub const CONTROL_PROTOCOL_ENCRYPTED: u32 = 13;

/// Largest ANNOUNCE body (a real one is about 1.5 KiB).
pub const MAX_BODY_LEN: usize = 16 * 1024;
/// Longest line.
pub const MAX_LINE_LEN: usize = 512;
/// Most `a=` attributes.
pub const MAX_ATTRIBUTES: usize = 128;

/// Accepted stream width and height.
pub const DIMENSION_RANGE: std::ops::RangeInclusive<u32> = 16..=8192;
/// Accepted frame rates.
pub const FPS_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;
/// Accepted `packetSize` (Sunshine's lowest accepted size up to a 16 KiB datagram).
pub const PACKET_SIZE_RANGE: std::ops::RangeInclusive<u32> = 200..=16384;
/// Accepted bitrates in kbps.
pub const BITRATE_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000_000;
/// Opus frame durations (ms) a packet may hold.
pub const PACKET_DURATIONS_MS: [u32; 5] = [5, 10, 20, 40, 60];

/// Why an ANNOUNCE body was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("ANNOUNCE body of {len} bytes exceeds {MAX_BODY_LEN}")]
    TooLong { len: usize },
    #[error("ANNOUNCE line {line} is too long")]
    LineTooLong { line: usize },
    #[error("ANNOUNCE line {line} is not printable ASCII")]
    BadByte { line: usize },
    #[error("malformed ANNOUNCE line {line}")]
    BadLine { line: usize },
    #[error("more than {MAX_ATTRIBUTES} ANNOUNCE attributes")]
    TooManyAttributes,
    #[error("ANNOUNCE attribute {0} appears twice")]
    Duplicate(String),
    /// A required attribute is missing (Sunshine answers 400 here too).
    #[error("ANNOUNCE lacks {0}")]
    Missing(&'static str),
    #[error("ANNOUNCE {name} is not a number: {value:?}")]
    NotANumber { name: &'static str, value: String },
    #[error("ANNOUNCE {name} = {value} is out of range")]
    OutOfRange { name: &'static str, value: u64 },
}

/// The ANNOUNCE body, split but not interpreted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announce {
    /// The `o=` line's value (`android 0 14 IN IPv4 <host addr>`).
    pub origin: Option<String>,
    /// The `s=` line's value.
    pub session_name: Option<String>,
    /// The port of the `m=video <port>` line.
    pub video_port: Option<u16>,
    /// `a=` attributes in order, values without their trailing space.
    pub attributes: Vec<(String, String)>,
}

impl Announce {
    /// Splits a body into its lines; accepts `\r\n` or `\n` line ends.
    pub fn parse(body: &[u8]) -> Result<Self, SdpError> {
        if body.len() > MAX_BODY_LEN {
            return Err(SdpError::TooLong { len: body.len() });
        }
        let mut out = Announce::default();
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.len() > MAX_LINE_LEN {
                return Err(SdpError::LineTooLong { line: i });
            }
            if !raw.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
                return Err(SdpError::BadByte { line: i });
            }
            let line = std::str::from_utf8(raw).map_err(|_| SdpError::BadByte { line: i })?;
            if line.trim().is_empty() {
                continue;
            }
            let (kind, value) = line
                .split_once('=')
                .filter(|(k, _)| k.len() == 1 && k.bytes().all(|b| b.is_ascii_lowercase()))
                .ok_or(SdpError::BadLine { line: i })?;
            match kind {
                "a" => {
                    let (name, value) = value
                        .split_once(':')
                        .filter(|(n, _)| !n.is_empty())
                        .ok_or(SdpError::BadLine { line: i })?;
                    if out.attributes.iter().any(|(n, _)| n == name) {
                        return Err(SdpError::Duplicate(name.to_owned()));
                    }
                    if out.attributes.len() == MAX_ATTRIBUTES {
                        return Err(SdpError::TooManyAttributes);
                    }
                    out.attributes
                        .push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
                }
                "o" => out.origin = Some(value.trim_end().to_owned()),
                "s" => out.session_name = Some(value.trim_end().to_owned()),
                "m" => {
                    let mut words = value.split_ascii_whitespace();
                    if words.next() == Some("video") {
                        out.video_port = words.next().and_then(|p| p.parse().ok());
                    }
                }
                // v=, t= and anything else carry nothing for the host.
                _ => {}
            }
        }
        Ok(out)
    }

    /// The value of attribute `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &'static str) -> Result<Option<u64>, SdpError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let digits_ok =
            !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit());
        digits_ok
            .then(|| value.parse::<u64>().ok())
            .flatten()
            .map(Some)
            .ok_or_else(|| SdpError::NotANumber {
                name,
                value: value.to_owned(),
            })
    }

    /// A numeric attribute within `range`, or `default` when absent (`None`: required).
    fn u32_in(
        &self,
        name: &'static str,
        range: std::ops::RangeInclusive<u32>,
        default: Option<u32>,
    ) -> Result<u32, SdpError> {
        match self.number(name)? {
            Some(v) => u32::try_from(v)
                .ok()
                .filter(|v| range.contains(v))
                .ok_or(SdpError::OutOfRange { name, value: v }),
            None => default.ok_or(SdpError::Missing(name)),
        }
    }

    fn flag(&self, name: &'static str) -> Result<bool, SdpError> {
        Ok(self.u32_in(name, 0..=1, Some(0))? == 1)
    }
}

/// Video codec the client picked (`x-nv-vqos[0].bitStreamFormat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    Hevc,
    Av1,
}

impl VideoCodec {
    fn from_format(v: u32) -> Option<Self> {
        match v {
            0 => Some(VideoCodec::H264),
            1 => Some(VideoCodec::Hevc),
            2 => Some(VideoCodec::Av1),
            _ => None,
        }
    }

    /// The `bitStreamFormat` value.
    pub fn format(self) -> u32 {
        match self {
            VideoCodec::H264 => 0,
            VideoCodec::Hevc => 1,
            VideoCodec::Av1 => 2,
        }
    }
}

/// Colour space of `encoderCscMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Colorspace {
    Rec601,
    Rec709,
    Rec2020,
}

/// The stream encryption the client put in force, from `x-ss-general.encryptionEnabled` and the
/// audio bit of `x-nv-general.featureFlags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Encryption {
    /// Control stream with v2 IVs (otherwise GFE's legacy IV).
    pub control_v2: bool,
    pub video: bool,
    pub audio: bool,
}

/// Everything the host needs from ANNOUNCE, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Client display refresh rate ×100; 0 when unknown.
    pub client_refresh_rate_x100: u32,
    /// Bytes per video datagram after the 16-byte RTP header (already reduced when video is
    /// encrypted).
    pub packet_size: u32,
    /// Video bitrate to target (`initialBitrateKbps`, else `bw.maximumBitrateKbps`).
    pub bitrate_kbps: u32,
    /// The user's raw bitrate (`x-ml-video.configuredBitrateKbps`), absent or 0 → `None`.
    pub configured_bitrate_kbps: Option<u32>,
    pub codec: VideoCodec,
    /// 10-bit HDR stream (`dynamicRangeMode` 1).
    pub hdr: bool,
    /// YUV 4:4:4 (`x-ss-video[0].chromaSamplingType` 1).
    pub yuv444: bool,
    pub colorspace: Colorspace,
    pub full_range: bool,
    /// 0: encoder's choice (the client's decoder handles RFI); otherwise at most this many.
    pub max_ref_frames: u32,
    pub slices_per_frame: u32,
    /// Minimum parity shards per FEC block.
    pub min_required_fec_packets: u32,
    /// `x-nv-vqos[0].fec.repairPercent`, sent only by pre-7.1.431 clients; newer ones leave the FEC
    /// percentage to the host.
    pub requested_fec_percent: Option<u32>,
    pub audio_channels: u8,
    pub audio_channel_mask: u32,
    /// `x-nv-audio.surround.AudioQuality` (surround only; for stereo the Host header decides).
    pub audio_high_quality: bool,
    pub audio_packet_duration_ms: u32,
    pub encryption: Encryption,
    /// Raw `x-ss-general.encryptionEnabled`.
    pub ss_encryption_enabled: u32,
    /// Raw `x-nv-general.featureFlags`.
    pub nv_feature_flags: u32,
    /// Raw `x-ml-general.featureFlags`.
    pub ml_feature_flags: u32,
    /// `x-nv-general.useReliableUdp`: 13 is the encrypted control stream.
    pub control_protocol: u32,
    /// DSCP hints.
    pub video_qos_type: u32,
    pub audio_qos_type: u32,
    /// `m=video <port>`.
    pub video_port: Option<u16>,
}

impl StreamConfig {
    /// Parses an ANNOUNCE body.
    pub fn parse(body: &[u8]) -> Result<Self, SdpError> {
        Self::from_announce(&Announce::parse(body)?)
    }

    /// Reads and checks the attributes the host needs.
    pub fn from_announce(a: &Announce) -> Result<Self, SdpError> {
        let width = a.u32_in("x-nv-video[0].clientViewportWd", DIMENSION_RANGE, None)?;
        let height = a.u32_in("x-nv-video[0].clientViewportHt", DIMENSION_RANGE, None)?;
        let fps = a.u32_in("x-nv-video[0].maxFPS", FPS_RANGE, None)?;
        let client_refresh_rate_x100 =
            a.u32_in("x-nv-video[0].clientRefreshRateX100", 0..=100_000, Some(0))?;
        let packet_size = a.u32_in("x-nv-video[0].packetSize", PACKET_SIZE_RANGE, None)?;
        let bitrate_kbps = match a.number("x-nv-video[0].initialBitrateKbps")? {
            Some(_) => a.u32_in("x-nv-video[0].initialBitrateKbps", BITRATE_RANGE, None)?,
            None => a.u32_in("x-nv-vqos[0].bw.maximumBitrateKbps", BITRATE_RANGE, None)?,
        };
        let configured = a.u32_in(
            "x-ml-video.configuredBitrateKbps",
            0..=*BITRATE_RANGE.end(),
            Some(0),
        )?;
        let format = a.u32_in("x-nv-vqos[0].bitStreamFormat", 0..=2, Some(0))?;
        let codec = VideoCodec::from_format(format).ok_or(SdpError::OutOfRange {
            name: "x-nv-vqos[0].bitStreamFormat",
            value: u64::from(format),
        })?;
        let csc = a.u32_in("x-nv-video[0].encoderCscMode", 0..=5, Some(0))?;
        let colorspace = match csc >> 1 {
            0 => Colorspace::Rec601,
            1 => Colorspace::Rec709,
            _ => Colorspace::Rec2020,
        };
        let audio_channels = a.u32_in("x-nv-audio.surround.numChannels", 2..=8, None)?;
        if ![2, 6, 8].contains(&audio_channels) {
            return Err(SdpError::OutOfRange {
                name: "x-nv-audio.surround.numChannels",
                value: u64::from(audio_channels),
            });
        }
        let default_mask = match audio_channels {
            2 => 0x3,
            6 => 0x3F,
            _ => 0x63F,
        };
        let audio_packet_duration_ms = a.u32_in("x-nv-aqos.packetDuration", 1..=60, Some(5))?;
        if !PACKET_DURATIONS_MS.contains(&audio_packet_duration_ms) {
            return Err(SdpError::OutOfRange {
                name: "x-nv-aqos.packetDuration",
                value: u64::from(audio_packet_duration_ms),
            });
        }
        let ss = a.u32_in("x-ss-general.encryptionEnabled", 0..=SS_ENC_ALL, Some(0))?;
        let nv = a.u32_in("x-nv-general.featureFlags", 0..=u32::MAX, Some(0))?;
        let requested_fec_percent = match a.number("x-nv-vqos[0].fec.repairPercent")? {
            Some(_) => Some(a.u32_in("x-nv-vqos[0].fec.repairPercent", 0..=255, None)?),
            None => None,
        };
        Ok(StreamConfig {
            width,
            height,
            fps,
            client_refresh_rate_x100,
            packet_size,
            bitrate_kbps,
            configured_bitrate_kbps: (configured != 0).then_some(configured),
            codec,
            hdr: a.flag("x-nv-video[0].dynamicRangeMode")?,
            yuv444: a.flag("x-ss-video[0].chromaSamplingType")?,
            colorspace,
            full_range: csc & 1 == 1,
            max_ref_frames: a.u32_in("x-nv-video[0].maxNumReferenceFrames", 0..=16, Some(1))?,
            slices_per_frame: a.u32_in(
                "x-nv-video[0].videoEncoderSlicesPerFrame",
                1..=255,
                Some(1),
            )?,
            min_required_fec_packets: a.u32_in(
                "x-nv-vqos[0].fec.minRequiredFecPackets",
                0..=255,
                Some(0),
            )?,
            requested_fec_percent,
            audio_channels: u8::try_from(audio_channels).unwrap_or(2),
            audio_channel_mask: a.u32_in(
                "x-nv-audio.surround.channelMask",
                0..=0xFFFF,
                Some(default_mask),
            )?,
            audio_high_quality: a.flag("x-nv-audio.surround.AudioQuality")?,
            audio_packet_duration_ms,
            encryption: Encryption {
                control_v2: ss & SS_ENC_CONTROL_V2 != 0,
                video: ss & SS_ENC_VIDEO != 0,
                audio: ss & SS_ENC_AUDIO != 0 || nv & NVFF_AUDIO_ENCRYPTION != 0,
            },
            ss_encryption_enabled: ss,
            nv_feature_flags: nv,
            ml_feature_flags: a.u32_in("x-ml-general.featureFlags", 0..=u32::MAX, Some(0))?,
            control_protocol: a.u32_in("x-nv-general.useReliableUdp", 0..=u32::MAX, Some(1))?,
            video_qos_type: a.u32_in("x-nv-vqos[0].qosTrafficType", 0..=255, Some(5))?,
            audio_qos_type: a.u32_in("x-nv-aqos.qosTrafficType", 0..=255, Some(4))?,
            video_port: a.video_port,
        })
    }

    /// Writes the ANNOUNCE body moonlight-common-c would send for this configuration (appversion
    /// 7.1.431, Sunshine host, attribute order of `SdpGenerator.c`); `host_addr` goes in the `o=` line.
    /// Parsing it gives this configuration back.
    pub fn to_announce(&self, host_addr: &str) -> String {
        let mut attrs: Vec<(&str, String)> = Vec::new();
        let mut put = |name: &'static str, value: String| attrs.push((name, value));
        put(
            "x-ml-general.featureFlags",
            self.ml_feature_flags.to_string(),
        );
        put(
            "x-ss-general.encryptionEnabled",
            self.ss_encryption_enabled.to_string(),
        );
        put(
            "x-ss-video[0].chromaSamplingType",
            u8::from(self.yuv444).to_string(),
        );
        put("x-nv-video[0].clientViewportWd", self.width.to_string());
        put("x-nv-video[0].clientViewportHt", self.height.to_string());
        put("x-nv-video[0].maxFPS", self.fps.to_string());
        put("x-nv-video[0].packetSize", self.packet_size.to_string());
        put("x-nv-video[0].rateControlMode", "4".into());
        put("x-nv-video[0].timeoutLengthMs", "7000".into());
        put("x-nv-video[0].framesWithInvalidRefThreshold", "0".into());
        let bitrate = self.bitrate_kbps.to_string();
        put("x-nv-video[0].initialBitrateKbps", bitrate.clone());
        put("x-nv-video[0].initialPeakBitrateKbps", bitrate.clone());
        put("x-nv-vqos[0].bw.minimumBitrateKbps", bitrate.clone());
        put("x-nv-vqos[0].bw.maximumBitrateKbps", bitrate);
        if let Some(c) = self.configured_bitrate_kbps {
            put("x-ml-video.configuredBitrateKbps", c.to_string());
        }
        put("x-nv-vqos[0].fec.enable", "1".into());
        put("x-nv-vqos[0].videoQualityScoreUpdateTime", "5000".into());
        put(
            "x-nv-vqos[0].qosTrafficType",
            self.video_qos_type.to_string(),
        );
        put("x-nv-aqos.qosTrafficType", self.audio_qos_type.to_string());
        put(
            "x-nv-general.featureFlags",
            self.nv_feature_flags.to_string(),
        );
        put(
            "x-nv-general.useReliableUdp",
            self.control_protocol.to_string(),
        );
        if let Some(p) = self.requested_fec_percent {
            put("x-nv-vqos[0].fec.repairPercent", p.to_string());
        }
        put(
            "x-nv-vqos[0].fec.minRequiredFecPackets",
            self.min_required_fec_packets.to_string(),
        );
        put("x-nv-vqos[0].bllFec.enable", "0".into());
        if self.width < 720 || self.height < 540 {
            put("x-nv-vqos[0].drc.enable", "1".into());
            put("x-nv-vqos[0].drc.tableType", "2".into());
        } else {
            put("x-nv-vqos[0].drc.enable", "0".into());
        }
        put("x-nv-general.enableRecoveryMode", "0".into());
        put(
            "x-nv-video[0].videoEncoderSlicesPerFrame",
            self.slices_per_frame.to_string(),
        );
        match self.codec {
            VideoCodec::Av1 => {}
            VideoCodec::Hevc => put("x-nv-clientSupportHevc", "1".into()),
            VideoCodec::H264 => put("x-nv-clientSupportHevc", "0".into()),
        }
        put(
            "x-nv-vqos[0].bitStreamFormat",
            self.codec.format().to_string(),
        );
        put(
            "x-nv-video[0].dynamicRangeMode",
            u8::from(self.hdr).to_string(),
        );
        put(
            "x-nv-video[0].maxNumReferenceFrames",
            self.max_ref_frames.to_string(),
        );
        put(
            "x-nv-video[0].clientRefreshRateX100",
            self.client_refresh_rate_x100.to_string(),
        );
        put(
            "x-nv-audio.surround.numChannels",
            self.audio_channels.to_string(),
        );
        put(
            "x-nv-audio.surround.channelMask",
            self.audio_channel_mask.to_string(),
        );
        put(
            "x-nv-audio.surround.enable",
            u8::from(self.audio_channels > 2).to_string(),
        );
        put(
            "x-nv-audio.surround.AudioQuality",
            u8::from(self.audio_high_quality).to_string(),
        );
        put(
            "x-nv-aqos.packetDuration",
            self.audio_packet_duration_ms.to_string(),
        );
        let csc = match self.colorspace {
            Colorspace::Rec601 => 0,
            Colorspace::Rec709 => 2,
            Colorspace::Rec2020 => 4,
        } | u32::from(self.full_range);
        put("x-nv-video[0].encoderCscMode", csc.to_string());

        let mut body =
            format!("v=0\r\no=android 0 14 IN IPv4 {host_addr}\r\ns=NVIDIA Streaming Client\r\n");
        for (name, value) in attrs {
            // Writing to a String cannot fail.
            let _ = write!(body, "a={name}:{value} \r\n");
        }
        body.push_str("t=0 0\r\n");
        // The client always writes the m= line; a config without a port has nothing to put there.
        if let Some(port) = self.video_port {
            let _ = write!(body, "m=video {port}  \r\n");
        }
        body
    }
}
