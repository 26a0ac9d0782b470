//! A real PipeWire node captured by the real, sandboxed lumen-capture: a private PipeWire +
//! WirePlumber with a GStreamer `videotestsrc` screen and an `audiotestsrc` sine, the broker
//! configured for PipeWire, and `lumen-broker record` checked by decoding the result.

use anyhow::{ensure, Context, Result};
use lumen_tests::media::{
    decode_audio, decode_luma, frame_times, record_session, tone_frequency, Session,
};
use lumen_tests::pipewire_env::{AudioSource, PipeWireEnv, VideoSource};
use lumen_tests::{Broker, ScratchDir};

#[test]
fn a_real_pipewire_node_is_captured_encoded_and_decodes() -> Result<()> {
    let Some(mut pipewire) = PipeWireEnv::start()? else {
        return Ok(());
    };
    pipewire.add_video_source(&VideoSource {
        name: "lumen-test-screen".into(),
        width: 1280,
        height: 720,
        fps: 30,
        format: "BGRx".into(),
        solid_argb: None,
    })?;
    pipewire.add_audio_source(&AudioSource {
        name: "lumen-test-sound".into(),
        channels: 2,
        rate: 48_000,
        freq_hz: 880,
    })?;
    let config = format!(
        "[capture]\nsource = \"pipewire\"\nvideo_node = \"lumen-test-screen\"\naudio_node = \"lumen-test-sound\"\npipewire_socket = \"{}\"\n",
        pipewire.socket().display()
    );
    let broker = Broker::start_with_config("media-pipewire", &config)?;
    let out = ScratchDir::new("rec-pipewire")?;
    let rec = record_session(
        &broker,
        out.path(),
        &Session {
            seconds: 3,
            width: 640,
            height: 360,
            fps: 30,
            bitrate_kbps: 2000,
            codec: "h264",
            ..Session::default()
        },
    )
    .with_context(|| pipewire.log("pipewire"))?;
    let session = &rec.reply["session"];
    ensure!(
        session["capture"]["state"] == "running" && session["encode"]["state"] == "running",
        "both workers ran the PipeWire session: {session}"
    );
    let component = session["capture"]["stats"]["component"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    ensure!(
        component.contains("pipewire"),
        "capture reports its source: {component:?}"
    );
    // The 1280x720 BGRx node was scaled to the session's 640x360 and decodes cleanly.
    let frames = decode_luma(&rec.video_file(), "h264", 640, 360)?;
    let times = frame_times(&rec.dir)?;
    ensure!(frames.len() == times.len(), "every access unit decodes");
    ensure!(times[0].keyframe, "the stream starts with an IDR");
    let fresh = times.iter().filter(|t| !t.repeat).count();
    ensure!(
        fresh >= 45,
        "{fresh} captured frames in 3 s from a 30 fps node"
    );
    // Capture times follow the node's rate (median interval one frame ± 20 %).
    let mut intervals: Vec<i64> = times
        .windows(2)
        .filter(|w| !w[1].repeat)
        .map(|w| w[1].captured_ns as i64 - w[0].captured_ns as i64)
        .collect();
    intervals.sort_unstable();
    let median = intervals[intervals.len() / 2];
    ensure!(
        (median - 33_333_333).abs() < 6_666_666,
        "median capture interval {median} ns"
    );
    // The picture moves: videotestsrc's default pattern is not flat, so frames differ from black.
    let mean: f64 = frames[frames.len() / 2]
        .iter()
        .map(|&v| f64::from(v))
        .sum::<f64>()
        / frames[0].len() as f64;
    ensure!(mean > 40.0, "the picture has content (mean luma {mean:.0})");
    // The sine of the audio node arrives as Opus.
    let samples = decode_audio(&rec.dir.join("audio.opus"), 2)?;
    ensure!(
        samples.len() >= 2 * 48_000,
        "only {} samples of audio",
        samples.len()
    );
    let freq = tone_frequency(&samples, 2, 0);
    ensure!((freq - 880.0).abs() < 20.0, "audio at {freq:.0} Hz");
    Ok(())
}

#[test]
fn a_missing_pipewire_node_is_a_clear_error_not_a_crash_loop() -> Result<()> {
    let Some(pipewire) = PipeWireEnv::start()? else {
        return Ok(());
    };
    let config = format!(
        "[capture]\nsource = \"pipewire\"\nvideo_node = \"no-such-node\"\npipewire_socket = \"{}\"\n",
        pipewire.socket().display()
    );
    let broker = Broker::start_with_config("media-pipewire-missing", &config)?;
    let out = ScratchDir::new("rec-pipewire-missing")?;
    // Capture gives a node 10 s to deliver a first buffer (capture-proc/src/pipewire).
    let rec = record_session(
        &broker,
        out.path(),
        &Session {
            seconds: 12,
            ..Session::default()
        },
    )?;
    let capture = &rec.reply["session"]["capture"];
    ensure!(
        capture["state"] == "failed",
        "capture must report the missing node: {capture}"
    );
    let error = capture["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("no-such-node"),
        "the error names the node: {error:?}"
    );
    ensure!(
        rec.summary()["frames"] == 0,
        "nothing was encoded: {}",
        rec.summary()
    );
    // The worker reported and stayed up: no restart, no crash loop.
    let status = broker.status()?;
    let worker = lumen_tests::worker(&status, "Capture").context("capture in status")?;
    ensure!(
        worker["state"] == "running" && worker["restarts"] == 0,
        "capture stays up: {worker}"
    );
    Ok(())
}
