//! The DESCRIBE reply body (protocol notes §4.3, §7.1). The client does not parse SDP: it searches the
//! body for substrings, so the body holds exactly the markers of what the host can do and nothing that
//! could match by accident. Lines end in `\n`, as Sunshine writes them.
//!
//! - `sprop-parameter-sets=AAAAAU` only if the host encodes HEVC, `a=rtpmap:98 AV1/90000` only if it
//!   encodes AV1 (H.264 is always assumed);
//! - `a=x-nv-video[0].refPicInvalidation:1` only if it honours RFI (its mere presence turns RFI on);
//! - the Sunshine feature and encryption flags;
//! - for each surround layout, `a=fmtp:97 surround-params=<C><S><K><mapping>`: first the
//!   normal-quality line, then (optionally) the high-quality one. The client moves the last mapping
//!   entry of the normal line to index 3 (GFE's channel order), so the normal line carries the
//!   encoder's mapping with entry 3 moved to the end.

use std::fmt::Write as _;

use super::sdp::SS_ENC_ALL;

/// The HEVC marker the client looks for.
pub const HEVC_MARKER: &str = "sprop-parameter-sets=AAAAAU";
/// The AV1 marker the client looks for.
pub const AV1_MARKER: &str = "AV1/90000";
/// The RFI marker the client looks for.
pub const RFI_MARKER: &str = "x-nv-video[0].refPicInvalidation";
/// Prefix of each surround line (followed by the channel count digit).
pub const SURROUND_PREFIX: &str = "a=fmtp:97 surround-params=";

/// One Opus multistream coding as the encoder uses it: `streams` streams, the first `coupled` of them
/// stereo, and `mapping[i]` the coded channel of output channel `i` in the client's order
/// FL FR C LFE BL BR SL SR (only the first `channels` entries count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SurroundParams {
    pub channels: u8,
    pub streams: u8,
    pub coupled: u8,
    pub mapping: [u8; 8],
}

/// A surround layout the host offers: its normal coding and, optionally, a high-quality one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SurroundOffer {
    pub normal: SurroundParams,
    pub high: Option<SurroundParams>,
}

/// What the host advertises.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DescribeParams {
    /// The host encodes HEVC.
    pub hevc: bool,
    /// The host encodes AV1.
    pub av1: bool,
    /// The host honours reference frame invalidation.
    pub rfi: bool,
    /// `x-ss-general.featureFlags` (0x01 pen/touch, 0x02 controller touchpad and motion).
    pub ss_feature_flags: u32,
    /// `SS_ENC_*` bits the host can do.
    pub encryption_supported: u32,
    /// `SS_ENC_*` bits the host insists on (a subset of the supported ones).
    pub encryption_requested: u32,
    /// 5.1 and/or 7.1 codings (stereo needs no line).
    pub surround: Vec<SurroundOffer>,
}

/// Why a DESCRIBE body cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DescribeError {
    #[error("unknown SS_ENC bits in {0:#x}")]
    UnknownEncryptionBits(u32),
    #[error("encryption requested ({requested:#x}) but not supported ({supported:#x})")]
    RequestedNotSupported { requested: u32, supported: u32 },
    /// Only 6 and 8 channels have surround lines (the client applies the GFE shift to those).
    #[error("surround layout of {0} channels cannot be advertised")]
    BadChannelCount(u8),
    #[error("invalid Opus coding for {channels} channels: {reason}")]
    BadCoding { channels: u8, reason: &'static str },
    #[error("two surround offers for {0} channels")]
    DuplicateLayout(u8),
}

/// Builds the DESCRIBE body.
pub fn describe_body(p: &DescribeParams) -> Result<String, DescribeError> {
    for bits in [p.encryption_supported, p.encryption_requested] {
        if bits & !SS_ENC_ALL != 0 {
            return Err(DescribeError::UnknownEncryptionBits(bits));
        }
    }
    if p.encryption_requested & !p.encryption_supported != 0 {
        return Err(DescribeError::RequestedNotSupported {
            requested: p.encryption_requested,
            supported: p.encryption_supported,
        });
    }
    let mut body = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(body, "a=x-ss-general.featureFlags:{}", p.ss_feature_flags);
    let _ = writeln!(
        body,
        "a=x-ss-general.encryptionSupported:{}",
        p.encryption_supported
    );
    let _ = writeln!(
        body,
        "a=x-ss-general.encryptionRequested:{}",
        p.encryption_requested
    );
    if p.rfi {
        let _ = writeln!(body, "a={RFI_MARKER}:1");
    }
    if p.hevc {
        let _ = writeln!(body, "{HEVC_MARKER}");
    }
    if p.av1 {
        let _ = writeln!(body, "a=rtpmap:98 {AV1_MARKER}");
    }
    let mut seen = Vec::new();
    for offer in &p.surround {
        let c = offer.normal.channels;
        if seen.contains(&c) {
            return Err(DescribeError::DuplicateLayout(c));
        }
        seen.push(c);
        check(&offer.normal)?;
        let _ = writeln!(body, "{}", surround_line(&offer.normal, true));
        if let Some(high) = &offer.high {
            check(high)?;
            if high.channels != c {
                return Err(DescribeError::BadCoding {
                    channels: high.channels,
                    reason: "high-quality coding has another channel count",
                });
            }
            let _ = writeln!(body, "{}", surround_line(high, false));
        }
    }
    Ok(body)
}

/// One surround line; `normal` applies the GFE shift (entry 3 moved to the end).
pub fn surround_line(s: &SurroundParams, normal: bool) -> String {
    let n = usize::from(s.channels).min(s.mapping.len());
    let mut mapping = s.mapping[..n].to_vec();
    if normal && n > 3 {
        let lfe = mapping.remove(3);
        mapping.push(lfe);
    }
    let mut line = format!("{SURROUND_PREFIX}{}{}{}", s.channels, s.streams, s.coupled);
    for m in mapping {
        let _ = write!(line, "{m}");
    }
    line
}

fn check(s: &SurroundParams) -> Result<(), DescribeError> {
    let bad = |reason| DescribeError::BadCoding {
        channels: s.channels,
        reason,
    };
    if s.channels != 6 && s.channels != 8 {
        return Err(DescribeError::BadChannelCount(s.channels));
    }
    if s.streams == 0 || s.coupled > s.streams {
        return Err(bad("needs 1+ streams, at most all coupled"));
    }
    let coded = u16::from(s.streams) + u16::from(s.coupled);
    if coded != u16::from(s.channels) {
        return Err(bad("streams + coupled must equal the channel count"));
    }
    let mapping = &s.mapping[..usize::from(s.channels)];
    if mapping.iter().any(|&m| u16::from(m) >= coded) {
        return Err(bad("mapping entry beyond the coded channels"));
    }
    Ok(())
}
