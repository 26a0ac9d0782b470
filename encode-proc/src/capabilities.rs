//! What this encoder can produce: found once before lock-down (every video encoder opened and fed
//! a frame by [`Probe::run`], every Opus layout opened and fed a packet here) and reported to the
//! broker right after `Ready`, so DESCRIBE offers exactly what a session here can encode.

use lumen_ipc::media::{AudioLayout, EncoderCapabilities, VideoCodec};

use crate::audio::{AudioError, Layout, OpusEncoder};
use crate::video::Probe;

/// Every layout GameStream negotiates, in the order they are reported.
const LAYOUTS: [AudioLayout; 3] = [
    AudioLayout::Stereo,
    AudioLayout::Surround51,
    AudioLayout::Surround71,
];

/// Opens an Opus encoder for `layout` and encodes one packet of silence with it.
fn try_layout(layout: AudioLayout) -> Result<(), AudioError> {
    let mut enc = OpusEncoder::new(layout, 5)?;
    let silence = vec![0f32; enc.samples_per_packet() * usize::from(enc.layout().channels)];
    enc.encode(&silence).map(|_| ())
}

/// The audio layouts libopus encodes here; a layout that fails is logged and left out. Stereo is
/// what every client can take, so without it the worker cannot serve: an error.
pub fn probe_audio() -> Result<Vec<AudioLayout>, String> {
    let mut usable = Vec::new();
    for layout in LAYOUTS {
        if !coding_matches_advertised(layout) {
            // lumen-net would advertise another coding than this encoder produces: the client
            // would decode garbage, so the layout is not offered at all.
            eprintln!(
                "lumen-encode: Opus {} channels left out: the encoder's coding differs from \
                 the advertised one",
                layout.channels()
            );
            continue;
        }
        match try_layout(layout) {
            Ok(()) => usable.push(layout),
            Err(e) if layout == AudioLayout::Stereo => return Err(format!("Opus stereo: {e}")),
            Err(e) => eprintln!(
                "lumen-encode: Opus {} channels unavailable: {e}",
                layout.channels()
            ),
        }
    }
    Ok(usable)
}

/// What to report: each codec with at least one usable encoder (H.264, HEVC, AV1 order), and the
/// audio layouts that opened.
pub fn report(video: &Probe, audio: &[AudioLayout]) -> EncoderCapabilities {
    let codecs = [VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Av1]
        .into_iter()
        .filter(|codec| video.usable.iter().any(|b| b.codec() == *codec))
        .collect();
    EncoderCapabilities {
        codecs,
        audio_layouts: audio.to_vec(),
    }
}

/// The coding the encoder uses for `layout` agrees with the one lumen-net advertises
/// ([`AudioLayout::opus_layout`]): the client decodes with what DESCRIBE said.
pub fn coding_matches_advertised(layout: AudioLayout) -> bool {
    let encoder = Layout::of(layout);
    let advertised = layout.opus_layout();
    let channels = usize::from(advertised.channels);
    encoder.channels == advertised.channels
        && encoder.streams == advertised.streams
        && encoder.coupled == advertised.coupled
        && encoder.mapping == &advertised.mapping[..channels]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::Backend;

    #[test]
    fn codecs_are_those_with_a_usable_encoder_each_once() {
        let probe = Probe {
            usable: vec![
                Backend::X265,
                Backend::Nvenc(VideoCodec::H264),
                Backend::X264,
            ],
            unusable: vec![(Backend::SvtAv1, "missing".into())],
        };
        let caps = report(&probe, &[AudioLayout::Stereo]);
        assert_eq!(caps.codecs, vec![VideoCodec::H264, VideoCodec::Hevc]);
        assert_eq!(caps.audio_layouts, vec![AudioLayout::Stereo]);
        assert!(caps.validate().is_ok());
        let av1_only = Probe {
            usable: vec![Backend::SvtAv1],
            unusable: Vec::new(),
        };
        assert_eq!(report(&av1_only, &[]).codecs, vec![VideoCodec::Av1]);
    }

    #[test]
    fn every_layout_encodes_here_and_is_reported() {
        // libopus (bundled through audiopus_sys) takes every GameStream layout.
        assert_eq!(probe_audio().unwrap(), LAYOUTS.to_vec());
    }

    #[test]
    fn encoder_codings_match_what_net_advertises() {
        for layout in LAYOUTS {
            assert!(coding_matches_advertised(layout), "{layout:?}");
        }
    }
}
