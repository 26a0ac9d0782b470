//! Opus for GameStream (§7.1): 48 kHz, restricted low-delay, CBR, one packet per PCM record.
//! Stereo is one coupled stream; 5.1 and 7.1 are multistream with the identity mapping Sunshine
//! uses, so the consumer advertises the matching `surround-params` (see [`Layout::surround_params`]).

use audiopus_sys as opus;
use lumen_ipc::media::{AudioLayout, AUDIO_SAMPLE_RATE};

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("libopus: {what}: {code}")]
    Opus { what: &'static str, code: i32 },
    #[error("PCM of {got} samples, expected {expected}")]
    WrongSize { got: usize, expected: usize },
}

/// Stream layout of one channel layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub channels: u8,
    pub streams: u8,
    pub coupled: u8,
    pub mapping: &'static [u8],
    /// Normal-quality bitrate (§7.1, Sunshine's table).
    pub bitrate: i32,
}

impl Layout {
    pub fn of(layout: AudioLayout) -> Layout {
        match layout {
            AudioLayout::Stereo => Layout {
                channels: 2,
                streams: 1,
                coupled: 1,
                mapping: &[0, 1],
                bitrate: 96_000,
            },
            AudioLayout::Surround51 => Layout {
                channels: 6,
                streams: 4,
                coupled: 2,
                mapping: &[0, 1, 2, 3, 4, 5],
                bitrate: 256_000,
            },
            AudioLayout::Surround71 => Layout {
                channels: 8,
                streams: 5,
                coupled: 3,
                mapping: &[0, 1, 2, 3, 4, 5, 6, 7],
                bitrate: 450_000,
            },
        }
    }

    /// The normal-quality `surround-params` value the consumer puts in DESCRIBE for this encoding:
    /// channels, streams, coupled, then the mapping with its entry 3 moved to the end (§7.1, GFE
    /// quirk). Stereo needs none but follows the same rule.
    pub fn surround_params(&self) -> String {
        let mut mapping = self.mapping.to_vec();
        if mapping.len() > 3 {
            let entry = mapping.remove(3);
            mapping.push(entry);
        }
        let mut out = format!("{}{}{}", self.channels, self.streams, self.coupled);
        for m in mapping {
            out.push_str(&m.to_string());
        }
        out
    }
}

/// Largest Opus packet we ask libopus for (its own recommended maximum).
const MAX_PACKET: usize = 4000;

/// A libopus multistream encoder.
pub struct OpusEncoder {
    st: *mut opus::OpusMSEncoder,
    layout: Layout,
    samples_per_packet: usize,
    out: Vec<u8>,
}

// SAFETY: the encoder state is owned by this value alone and used only through `&mut self`.
unsafe impl Send for OpusEncoder {}

impl Drop for OpusEncoder {
    fn drop(&mut self) {
        // SAFETY: `st` came from opus_multistream_encoder_create and is destroyed once, here.
        unsafe { opus::opus_multistream_encoder_destroy(self.st) };
    }
}

fn check(what: &'static str, code: i32) -> Result<i32, AudioError> {
    if code < 0 {
        Err(AudioError::Opus { what, code })
    } else {
        Ok(code)
    }
}

impl OpusEncoder {
    pub fn new(layout: AudioLayout, packet_ms: u32) -> Result<Self, AudioError> {
        let layout = Layout::of(layout);
        let mut err = 0i32;
        // SAFETY: mapping has `channels` entries, each below streams + coupled; err is a valid
        // out-pointer.
        let st = unsafe {
            opus::opus_multistream_encoder_create(
                AUDIO_SAMPLE_RATE as i32,
                i32::from(layout.channels),
                i32::from(layout.streams),
                i32::from(layout.coupled),
                layout.mapping.as_ptr(),
                opus::OPUS_APPLICATION_RESTRICTED_LOWDELAY,
                &mut err,
            )
        };
        if st.is_null() || err != opus::OPUS_OK {
            return Err(AudioError::Opus {
                what: "creating the encoder",
                code: err,
            });
        }
        let enc = Self {
            st,
            layout,
            samples_per_packet: (AUDIO_SAMPLE_RATE / 1000 * packet_ms) as usize,
            out: vec![0; MAX_PACKET],
        };
        // SAFETY: `st` is a live encoder; these requests take one opus_int32 argument.
        unsafe {
            check(
                "OPUS_SET_BITRATE",
                opus::opus_multistream_encoder_ctl(
                    st,
                    opus::OPUS_SET_BITRATE_REQUEST,
                    layout.bitrate,
                ),
            )?;
            // CBR: every packet of an FEC block must have the same size (§7.1).
            check(
                "OPUS_SET_VBR",
                opus::opus_multistream_encoder_ctl(st, opus::OPUS_SET_VBR_REQUEST, 0i32),
            )?;
        }
        Ok(enc)
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Samples per channel in one packet.
    pub fn samples_per_packet(&self) -> usize {
        self.samples_per_packet
    }

    /// Encodes one packet of interleaved samples (`samples_per_packet × channels`).
    pub fn encode(&mut self, pcm: &[f32]) -> Result<&[u8], AudioError> {
        let expected = self.samples_per_packet * usize::from(self.layout.channels);
        if pcm.len() != expected {
            return Err(AudioError::WrongSize {
                got: pcm.len(),
                expected,
            });
        }
        // SAFETY: pcm holds frame_size × channels samples (checked); out has MAX_PACKET bytes.
        let n = unsafe {
            opus::opus_multistream_encode_float(
                self.st,
                pcm.as_ptr(),
                self.samples_per_packet as i32,
                self.out.as_mut_ptr(),
                MAX_PACKET as i32,
            )
        };
        let n = check("encoding", n)? as usize;
        Ok(&self.out[..n])
    }
}

#[cfg(test)]
pub mod testing {
    //! A libopus decoder for the tests.
    use super::*;

    pub struct OpusDecoder {
        st: *mut opus::OpusMSDecoder,
        channels: usize,
    }

    impl OpusDecoder {
        pub fn new(layout: Layout) -> Self {
            let mut err = 0;
            // SAFETY: as in OpusEncoder::new.
            let st = unsafe {
                opus::opus_multistream_decoder_create(
                    AUDIO_SAMPLE_RATE as i32,
                    i32::from(layout.channels),
                    i32::from(layout.streams),
                    i32::from(layout.coupled),
                    layout.mapping.as_ptr(),
                    &mut err,
                )
            };
            assert!(!st.is_null() && err == 0, "decoder: {err}");
            Self {
                st,
                channels: usize::from(layout.channels),
            }
        }

        pub fn decode(&mut self, packet: &[u8]) -> Vec<f32> {
            let mut pcm = vec![0f32; 5760 * self.channels];
            // SAFETY: pcm has room for 5760 samples per channel, the largest Opus frame.
            let n = unsafe {
                opus::opus_multistream_decode_float(
                    self.st,
                    packet.as_ptr(),
                    packet.len() as i32,
                    pcm.as_mut_ptr(),
                    5760,
                    0,
                )
            };
            assert!(n > 0, "decode: {n}");
            pcm.truncate(n as usize * self.channels);
            pcm
        }
    }

    impl Drop for OpusDecoder {
        fn drop(&mut self) {
            // SAFETY: created in new, destroyed once.
            unsafe { opus::opus_multistream_decoder_destroy(self.st) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surround_params_follow_the_gfe_rule() {
        assert_eq!(
            Layout::of(AudioLayout::Surround51).surround_params(),
            "642012453"
        );
        assert_eq!(
            Layout::of(AudioLayout::Surround71).surround_params(),
            "85301245673"
        );
    }

    #[test]
    fn wrong_sized_pcm_is_refused() {
        let mut enc = OpusEncoder::new(AudioLayout::Stereo, 5).unwrap();
        assert!(matches!(
            enc.encode(&[0.0; 100]),
            Err(AudioError::WrongSize { .. })
        ));
        assert!(!enc.encode(&[0.0; 480]).unwrap().is_empty());
    }
}
