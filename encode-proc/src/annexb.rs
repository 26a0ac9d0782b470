//! Annex B byte streams as the encoders write them: splitting into NAL units, and removing the SEI
//! units that would sit in front of the first slice (§6.5: the client looks for the IDR slice in the
//! first datagram only, and x264 writes a ~600-byte version SEI into its first IDR).

use lumen_ipc::media::VideoCodec;

/// One NAL unit inside an access unit: the byte range of the unit including its start code, and
/// where its header begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nal {
    /// Offset of the start code.
    pub start: usize,
    /// Offset of the NAL header (just past the start code).
    pub header: usize,
    /// One past the last byte of the unit.
    pub end: usize,
}

/// Splits an Annex B access unit at its 3- and 4-byte start codes. Bytes before the first start code
/// (none in what encoders write) belong to no unit.
pub fn split(au: &[u8]) -> Vec<Nal> {
    // (start code offset, header offset) of every unit.
    let mut marks = Vec::new();
    let mut i = 0;
    while i + 3 <= au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            let start = if i > 0 && au[i - 1] == 0 { i - 1 } else { i };
            marks.push((start, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    marks
        .iter()
        .enumerate()
        .map(|(n, &(start, header))| Nal {
            start,
            header,
            end: marks.get(n + 1).map_or(au.len(), |next| next.0),
        })
        .collect()
}

/// The NAL unit type of the unit whose header starts at `au[header]`.
pub fn nal_type(codec: VideoCodec, au: &[u8], header: usize) -> Option<u8> {
    let byte = *au.get(header)?;
    match codec {
        VideoCodec::H264 => Some(byte & 0x1f),
        VideoCodec::Hevc => Some((byte >> 1) & 0x3f),
        VideoCodec::Av1 => None,
    }
}

/// Whether a NAL type is a coded slice (VCL).
pub fn is_slice(codec: VideoCodec, kind: u8) -> bool {
    match codec {
        VideoCodec::H264 => (1..=5).contains(&kind),
        VideoCodec::Hevc => kind < 32,
        VideoCodec::Av1 => false,
    }
}

/// Whether a NAL type is SEI.
pub fn is_sei(codec: VideoCodec, kind: u8) -> bool {
    match codec {
        VideoCodec::H264 => kind == 6,
        // Prefix and suffix SEI.
        VideoCodec::Hevc => kind == 39 || kind == 40,
        VideoCodec::Av1 => false,
    }
}

/// Whether a NAL type is an IDR / IRAP slice.
pub fn is_idr_slice(codec: VideoCodec, kind: u8) -> bool {
    match codec {
        VideoCodec::H264 => kind == 5,
        VideoCodec::Hevc => (16..=21).contains(&kind),
        VideoCodec::Av1 => false,
    }
}

/// Whether the access unit holds an IDR / IRAP slice.
pub fn has_idr_slice(codec: VideoCodec, au: &[u8]) -> bool {
    split(au)
        .iter()
        .filter_map(|nal| nal_type(codec, au, nal.header))
        .any(|kind| is_idr_slice(codec, kind))
}

/// Removes every SEI unit in front of the first slice; everything else is kept byte for byte. AV1
/// temporal units pass through unchanged.
pub fn strip_leading_sei(codec: VideoCodec, au: Vec<u8>) -> Vec<u8> {
    if codec == VideoCodec::Av1 {
        return au;
    }
    let nals = split(&au);
    let mut drop = Vec::new();
    for nal in &nals {
        let Some(kind) = nal_type(codec, &au, nal.header) else {
            continue;
        };
        if is_slice(codec, kind) {
            break;
        }
        if is_sei(codec, kind) {
            drop.push(nal.start..nal.end);
        }
    }
    if drop.is_empty() {
        return au;
    }
    let mut out = Vec::with_capacity(au.len());
    let mut from = 0;
    for range in drop {
        out.extend_from_slice(&au[from..range.start]);
        from = range.end;
    }
    out.extend_from_slice(&au[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let au = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4,
        ];
        let nals = split(&au);
        assert_eq!(nals.len(), 3);
        assert_eq!(
            nals[0],
            Nal {
                start: 0,
                header: 4,
                end: 7
            }
        );
        assert_eq!(nal_type(VideoCodec::H264, &au, nals[1].header), Some(8));
        assert_eq!(nals[2].start, 12);
        assert_eq!(nals[2].end, au.len());
    }

    #[test]
    fn sei_before_the_first_slice_goes_and_nothing_else() {
        // SPS, PPS, SEI, IDR slice, SEI after the slice (kept: it is not in front of the slice).
        let au = vec![
            0, 0, 0, 1, 0x67, 9, 0, 0, 0, 1, 0x68, 9, 0, 0, 1, 0x06, 5, 5, 5, 0, 0, 0, 1, 0x65, 7,
            0, 0, 1, 0x06, 8,
        ];
        let out = strip_leading_sei(VideoCodec::H264, au);
        assert_eq!(
            out,
            vec![0, 0, 0, 1, 0x67, 9, 0, 0, 0, 1, 0x68, 9, 0, 0, 0, 1, 0x65, 7, 0, 0, 1, 0x06, 8]
        );
        // HEVC: VPS(32) SPS(33) PPS(34) prefix SEI(39) IDR_W_RADL(19).
        let au = vec![
            0, 0, 0, 1, 0x40, 1, 0, 0, 0, 1, 0x42, 1, 0, 0, 0, 1, 0x44, 1, 0, 0, 0, 1, 0x4e, 1, 3,
            0, 0, 0, 1, 0x26, 1, 6,
        ];
        let out = strip_leading_sei(VideoCodec::Hevc, au);
        let kinds: Vec<u8> = split(&out)
            .iter()
            .filter_map(|n| nal_type(VideoCodec::Hevc, &out, n.header))
            .collect();
        assert_eq!(kinds, vec![32, 33, 34, 19]);
    }
}
