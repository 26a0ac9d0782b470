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

/// The next start code at or after `from`: (start code offset, header offset).
fn next_start_code(au: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            let start = if i > from && au[i - 1] == 0 { i - 1 } else { i };
            return Some((start, i + 3));
        }
        i += 1;
    }
    None
}

/// The NAL units of an Annex B access unit, split at its 3- and 4-byte start codes, without
/// allocating (it runs on every encoded frame). Bytes before the first start code (none in what
/// encoders write) belong to no unit.
pub fn nals(au: &[u8]) -> impl Iterator<Item = Nal> + '_ {
    let mut next = next_start_code(au, 0);
    std::iter::from_fn(move || {
        let (start, header) = next?;
        next = next_start_code(au, header);
        Some(Nal {
            start,
            header,
            end: next.map_or(au.len(), |(following, _)| following),
        })
    })
}

/// [`nals`], collected.
#[cfg(test)]
pub fn split(au: &[u8]) -> Vec<Nal> {
    nals(au).collect()
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
    nals(au)
        .filter_map(|nal| nal_type(codec, au, nal.header))
        .any(|kind| is_idr_slice(codec, kind))
}

/// Copies `au` into `out` (replacing its contents) without the SEI units in front of the first
/// slice; everything else is kept byte for byte. AV1 temporal units are copied unchanged. `out` is
/// reused from frame to frame, so once it has grown nothing is allocated.
pub fn copy_without_leading_sei(codec: VideoCodec, au: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut from = 0;
    if codec != VideoCodec::Av1 {
        for nal in nals(au) {
            match nal_type(codec, au, nal.header) {
                Some(kind) if is_slice(codec, kind) => break,
                Some(kind) if is_sei(codec, kind) => {
                    out.extend_from_slice(&au[from..nal.start]);
                    from = nal.end;
                }
                _ => {}
            }
        }
    }
    out.extend_from_slice(&au[from..]);
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
        let mut out = vec![0xff; 3];
        copy_without_leading_sei(VideoCodec::H264, &au, &mut out);
        assert_eq!(
            out,
            vec![0, 0, 0, 1, 0x67, 9, 0, 0, 0, 1, 0x68, 9, 0, 0, 0, 1, 0x65, 7, 0, 0, 1, 0x06, 8]
        );
        // HEVC: VPS(32) SPS(33) PPS(34) prefix SEI(39) IDR_W_RADL(19).
        let au = vec![
            0, 0, 0, 1, 0x40, 1, 0, 0, 0, 1, 0x42, 1, 0, 0, 0, 1, 0x44, 1, 0, 0, 0, 1, 0x4e, 1, 3,
            0, 0, 0, 1, 0x26, 1, 6,
        ];
        copy_without_leading_sei(VideoCodec::Hevc, &au, &mut out);
        let kinds: Vec<u8> = split(&out)
            .iter()
            .filter_map(|n| nal_type(VideoCodec::Hevc, &out, n.header))
            .collect();
        assert_eq!(kinds, vec![32, 33, 34, 19]);
    }
}
