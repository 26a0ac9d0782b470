//! The built-in sound source: a steady test tone per channel (440 Hz left, 660 Hz right at
//! -12 dBFS; every other channel its own quieter tone), one Opus packet's worth at a time on
//! absolute CLOCK_MONOTONIC deadlines, as a capture device would deliver it: packet times are
//! back to back, a short stall is caught up, a long one (over 100 ms) leaves a gap.

use std::f64::consts::TAU;
use std::sync::Arc;
use std::thread::JoinHandle;

use lumen_ipc::media::AUDIO_SAMPLE_RATE;
use lumen_ipc::ring::monotonic_ns;

use crate::session::{sleep_until, Pacer, Shared};
use crate::sink::AudioSink;

/// -12 dBFS.
const LOUD: f64 = 0.251_188_643;
/// -24 dBFS.
const QUIET: f64 = 0.063_095_734;

/// Longest stall the tone makes up for with a burst of packets; past it, it skips ahead.
const MAX_CATCH_UP_NS: u64 = 100_000_000;

/// Frequency (Hz) and amplitude of channel `channel`: 440 Hz and 660 Hz on the front pair, then
/// 220, 330, 550, ... Hz, quieter, on the rest, so each channel can be told apart.
pub fn channel_tone(channel: u32) -> (u64, f64) {
    match channel {
        0 => (440, LOUD),
        1 => (660, LOUD),
        n => (110 * u64::from(n), QUIET),
    }
}

/// Fills `out` (interleaved, `channels` per frame) with the tone from sample frame `first` on.
/// Phases come from the absolute sample index, so skipped packets leave no phase jump behind.
pub fn render(first: u64, channels: u32, out: &mut [f32]) {
    let rate = u64::from(AUDIO_SAMPLE_RATE);
    for (i, frame) in out.chunks_exact_mut(channels as usize).enumerate() {
        let index = first + i as u64;
        for (ch, sample) in frame.iter_mut().enumerate() {
            let (freq, amplitude) = channel_tone(ch as u32);
            // Whole cycles drop out exactly in integers; only the fraction reaches the float.
            let phase = (index * freq % rate) as f64 / rate as f64;
            *sample = (amplitude * (TAU * phase).sin()) as f32;
        }
    }
}

/// Starts the tone thread: packet `n` covers the `n`-th packet interval after the start and is
/// pushed when that interval has passed, stamped with the time of its first sample.
pub fn spawn(
    mut sink: AudioSink,
    samples_per_packet: u32,
    packet_ms: u32,
    shared: Arc<Shared>,
) -> std::io::Result<JoinHandle<()>> {
    let channels = sink.channels();
    std::thread::Builder::new()
        .name("test-tone".into())
        .spawn(move || {
            let start = monotonic_ns();
            let period_ns = u64::from(packet_ms) * 1_000_000;
            let mut pacer = Pacer::new(start, period_ns, 1);
            pacer.advance(start);
            let mut buffer = vec![0f32; samples_per_packet as usize * channels as usize];
            loop {
                if !sleep_until(pacer.deadline(), &shared) {
                    return;
                }
                let packet = pacer.index() - 1;
                render(
                    packet * u64::from(samples_per_packet),
                    channels,
                    &mut buffer,
                );
                if let Err(e) = sink.push(start + packet * period_ns, &buffer) {
                    shared.fail(format!("test tone: {e}"));
                    return;
                }
                // A device delivers every sample: a short stall is caught up packet by packet
                // (consecutive times, no gap); only a long one is skipped.
                let now = monotonic_ns();
                if now.saturating_sub(pacer.deadline()) > MAX_CATCH_UP_NS {
                    pacer.advance(now);
                } else {
                    pacer.step();
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_channels_carry_440_and_660_hz_at_minus_12_dbfs() {
        let mut out = vec![0f32; 48_000 * 2];
        render(0, 2, &mut out);
        let left: Vec<f32> = out.iter().step_by(2).copied().collect();
        let right: Vec<f32> = out.iter().skip(1).step_by(2).copied().collect();
        let crossings = |s: &[f32]| s.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        // One upward zero crossing per cycle over one second (give or take the edges).
        assert!(
            (439..=441).contains(&crossings(&left)),
            "{}",
            crossings(&left)
        );
        assert!((659..=661).contains(&crossings(&right)));
        let peak = left.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((peak - LOUD as f32).abs() < 1e-3, "{peak}");
    }

    #[test]
    fn packets_join_without_a_phase_jump() {
        let mut whole = vec![0f32; 480 * 6];
        render(1000, 6, &mut whole);
        let mut first = vec![0f32; 240 * 6];
        let mut second = vec![0f32; 240 * 6];
        render(1000, 6, &mut first);
        render(1240, 6, &mut second);
        assert_eq!(&whole[..240 * 6], &first[..]);
        assert_eq!(&whole[240 * 6..], &second[..]);
        // Surround channels are quieter and distinct.
        assert!(whole
            .chunks_exact(6)
            .all(|f| f[4].abs() <= QUIET as f32 + 1e-6));
    }
}
