//! GameStream issue 4 end to end: DESCRIBE offers what lumen-encode reported it can produce, and
//! the real client (moonlight-python 0.3.0 with the real moonlight-common-c, driven by
//! tests/python/stream_frames.py) takes it:
//!
//! 1. AV1: the client asks for AV1 (it picks AV1 only when DESCRIBE carries `AV1/90000`), the
//!    broker encodes AV1 (SVT-AV1 here) and the client decodes at least 60 frames of the test
//!    pattern, whose frame codes must increase.
//! 2. 5.1 audio: the client asks for six channels (moonlight-python has no audio parameter; the
//!    driver sets the layout in its StreamConfig), takes the Opus coding from DESCRIBE's
//!    `surround-params` line, and decodes the (encrypted: the client always opts into audio
//!    encryption) packets as six channels. Each channel must carry the capture's own test tone
//!    for that channel, which proves the advertised mapping is the one the encoder uses.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lumen_tests::moonlight::{pattern_codes, python, read_frames, FrameStream};
use lumen_tests::{Broker, ScratchDir};
use serde_json::Value;

/// One stream with the real client: `frames` frames of `codec` at 640x360@30 written to `out`,
/// and, with `audio_channels`, that audio layout recorded. Returns the client's summary and the
/// media session the broker reported meanwhile.
fn stream(
    broker: &Broker,
    python: &Path,
    dir: &str,
    codec: &str,
    frames: u32,
    out: &Path,
    audio_channels: Option<u32>,
) -> Result<(Value, Value)> {
    FrameStream {
        host: "127.0.0.1",
        port: broker.port_base,
        identity: dir,
        codec,
        mode: (640, 360, 30),
        frames,
        out,
        end: "stop",
        audio_channels,
    }
    .run_watching(python, broker, Duration::from_secs(150))
}

/// The capture's test tone on channel `ch` (capture-proc/src/tone.rs): 440 Hz and 660 Hz at
/// -12 dBFS on the front pair, then 110·ch Hz at -24 dBFS.
fn capture_tone(ch: usize) -> (f64, f64) {
    let rms = |dbfs: f64| 10f64.powf(dbfs / 20.0) / 2f64.sqrt();
    match ch {
        0 => (440.0, rms(-12.0)),
        1 => (660.0, rms(-12.0)),
        n => (110.0 * n as f64, rms(-24.0)),
    }
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

#[test]
fn moonlight_streams_av1_video_and_51_audio_as_describe_offers() -> Result<()> {
    let python = python()?;
    let broker = Broker::start("gamestream-codecs")?;
    let identities = ScratchDir::new("moonlight-codecs-identity")?;
    let dir = identities.path().join("paired").display().to_string();
    lumen_tests::moonlight::pair_on_loopback(&broker, &python, &dir)?;
    let scratch = ScratchDir::new("moonlight-codecs-frames")?;

    // 1. AV1 video.
    let out = scratch.path().join("av1.frames");
    let (_, session) = stream(&broker, &python, &dir, "av1", 60, &out, None)?;
    ensure!(
        session["params"]["codec"].as_str() == Some("Av1"),
        "av1: the broker encoded {}, so the client did not pick AV1 from DESCRIBE",
        session["params"]
    );
    let decoded = read_frames(&out, 640, 360)?;
    ensure!(
        decoded.len() >= 60,
        "av1: the client decoded {} frames, wanted 60",
        decoded.len()
    );
    let codes = pattern_codes(&decoded).context("av1")?;
    eprintln!(
        "av1: {} frames decoded, pattern frames {}..={}",
        decoded.len(),
        codes[0],
        codes[codes.len() - 1]
    );

    // 2. 5.1 audio (H.264 video, which only carries the stream along).
    let out = scratch.path().join("surround.frames");
    let (result, session) = stream(&broker, &python, &dir, "h264", 30, &out, Some(6))?;
    ensure!(
        session["params"]["audio"].as_str() == Some("Surround51"),
        "5.1: the broker encoded {} audio",
        session["params"]
    );
    let audio = &result["audio"];
    let opus = &audio["opus"];
    // What moonlight-common-c took from DESCRIBE (after its GFE shift) is the encoder's coding:
    // 4 streams, 2 coupled, the identity mapping (encode-proc/src/audio.rs).
    ensure!(
        opus["channel_count"] == 6
            && opus["streams"] == 4
            && opus["coupled_streams"] == 2
            && numbers(&opus["mapping"]) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        "5.1: the client configured Opus as {opus}"
    );
    ensure!(
        audio["chunk_channels"] == serde_json::json!([6])
            && audio["pcm_channels"] == serde_json::json!([6]),
        "5.1: the client decoded {audio}"
    );
    // 2 s of audio at 5 ms a packet: at least 1.5 s must have been decoded.
    let samples = audio["samples"].as_u64().unwrap_or(0);
    ensure!(
        samples >= 72_000,
        "5.1: only {samples} samples decoded: {audio}"
    );
    let hz = numbers(&audio["channel_hz"]);
    let rms = numbers(&audio["channel_rms"]);
    ensure!(
        hz.len() == 6 && rms.len() == 6,
        "5.1: no per-channel analysis: {audio}"
    );
    for ch in 0..6 {
        let (want_hz, want_rms) = capture_tone(ch);
        ensure!(
            (hz[ch] - want_hz).abs() <= 3.0 && (rms[ch] / want_rms - 1.0).abs() <= 0.3,
            "5.1: channel {ch} carries {:.0} Hz at RMS {:.4}, the capture put {want_hz} Hz at \
             {want_rms:.4} there (a mapping the client and the encoder disagree on?): {audio}",
            hz[ch],
            rms[ch]
        );
    }
    eprintln!(
        "5.1: {} chunks, {samples} samples, channels at {hz:?} Hz, RMS {rms:?}; loss {}",
        audio["chunks"], audio["loss"]
    );
    Ok(())
}
