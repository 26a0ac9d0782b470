//! Issue 4 end to end: a stock Moonlight client (moonlight-python 0.3.0 with the real
//! moonlight-common-c, driven by tests/python/stream_frames.py) pairs with the real broker using
//! the PIN given to `lumen-broker pair`, launches "Desktop", and decodes the test pattern through
//! lumen-net's RTSP, ENet control and video streams. Each decoded frame's luma plane comes back
//! to this test, which reads the pattern's frame code from it: the codes must increase (frames
//! are the capture's, in order) and the losses are reported. Quitting the app (`/cancel`) must
//! leave the broker with no media session.
//!
//! The client lives in the virtual environment made by tests/python/setup-venv.sh (see
//! gamestream_pairing.rs).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lumen_tests::moonlight::{pattern_codes, python, FrameStream};
use lumen_tests::{Broker, ScratchDir};
use serde_json::Value;

/// Streams `frames` frames of `codec` at `width`×`height`@`fps`, ends as `end` says (see
/// stream_frames.py), checks the pattern's codes and returns what the client reported.
fn stream_and_check(
    broker: &Broker,
    python: &Path,
    dir: &str,
    codec: &str,
    (width, height, fps): (u32, u32, u32),
    frames: u32,
    end: &str,
) -> Result<Value> {
    let scratch = ScratchDir::new("moonlight-frames")?;
    let out = scratch.path().join(format!("{codec}.frames"));
    let spec = FrameStream {
        host: "127.0.0.1",
        port: broker.port_base,
        identity: dir,
        codec,
        mode: (width, height, fps),
        frames,
        out: &out,
        end,
        audio_channels: None,
    };
    // While the client streams, the broker must report the session the client announced.
    let (result, session) = spec.run_watching(python, broker, Duration::from_secs(120))?;
    let params = &session["params"];
    ensure!(
        params["width"] == width && params["height"] == height && params["fps"] == fps,
        "{codec}: the broker streamed {params}, not {width}x{height}@{fps}"
    );
    ensure!(
        params["codec"].as_str().map(str::to_lowercase) == Some(codec.to_lowercase()),
        "{codec}: the broker encoded {params}"
    );

    let decoded = spec.decoded()?;
    ensure!(
        decoded.len() >= frames as usize,
        "{codec}: the client decoded {} frames, wanted {frames}",
        decoded.len()
    );
    let codes = pattern_codes(&decoded).with_context(|| codec.to_string())?;
    let client_frames: Vec<u32> = decoded.iter().map(|d| d.client_frame).collect();
    ensure!(
        client_frames.windows(2).all(|p| p[1] > p[0]),
        "{codec}: the client's frame numbers do not increase: {client_frames:?}"
    );
    let (first, last) = (codes[0], codes[codes.len() - 1]);
    let span = last - first + 1;
    let lost = span - codes.len() as u32;
    // Frames the client numbered but did not hand over (its queue or decoder) versus pattern
    // frames the host never sent (capture or encode skipped them).
    let client_span = client_frames[client_frames.len() - 1] - client_frames[0] + 1;
    let client_skipped = client_span - client_frames.len() as u32;
    eprintln!(
        "{codec}: {} frames decoded, pattern frames {first}..={last}: {lost} of {span} not seen \
         ({client_skipped} of them numbered by the client but not delivered)",
        decoded.len()
    );
    // Loopback does not lose datagrams: the client delivering less than nine tenths of what it
    // numbered means the stream is broken.
    ensure!(
        client_skipped * 10 <= client_span,
        "{codec}: the client numbered {client_span} frames but delivered {}",
        client_frames.len()
    );
    // Pattern frames the host never sent: the encoder encodes the newest frame and skips what it
    // fell behind on. x264 keeps up here; x265 at 960x540 may not when the two cores are shared
    // with other tests, so for HEVC the count is reported above, not held to a bound.
    if codec == "h264" {
        ensure!(
            lost * 10 <= span,
            "{codec}: {lost} of {span} pattern frames were lost"
        );
    }
    Ok(result)
}

/// The broker's status keeps the last media session after it ends, so "stopped" is observed as:
/// no session, or one whose capture no longer counts frames.
fn wait_for_no_session(broker: &Broker, what: &str) -> Result<()> {
    let frames = |status: &Value| status["media_session"]["capture"]["stats"]["frames"].as_u64();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut before = broker.status()?;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = broker.status()?;
        if now["media_session"].is_null()
            || (now["media_session"]["generation"] == before["media_session"]["generation"]
                && frames(&now) == frames(&before))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: the media session still captures after /cancel: {now}");
        }
        before = now;
    }
}

#[test]
fn moonlight_streams_the_test_pattern_in_h264_and_hevc() -> Result<()> {
    let python = python()?;
    let broker = Broker::start("gamestream-stream")?;
    let identities = ScratchDir::new("moonlight-stream-identity")?;
    let dir = identities.path().join("paired").display().to_string();
    lumen_tests::moonlight::pair_on_loopback(&broker, &python, &dir)?;

    // 1. H.264: a launch; the client then leaves, which ends the stream but not the app.
    let h264 = stream_and_check(&broker, &python, &dir, "h264", (640, 360, 30), 60, "stop")?;
    ensure!(
        h264["current_game_before"] == 0 && h264["current_game_after"] == 1,
        "h264: currentgame before and after: {h264}"
    );
    wait_for_no_session(&broker, "h264")?;

    // 2. HEVC (DESCRIBE offers it): the running app is resumed; quitting it (/cancel) while
    // streaming ends the stream from the host with the graceful termination code.
    let hevc = stream_and_check(&broker, &python, &dir, "hevc", (960, 540, 30), 60, "quit")?;
    ensure!(
        hevc["current_game_before"] == 1 && hevc["current_game_after"] == 0,
        "hevc: currentgame before and after: {hevc}"
    );
    ensure!(
        hevc["quit"] == true && hevc["terminated"] == true && hevc["termination_error"] == 0,
        "hevc: /cancel did not end the stream gracefully: {hevc}"
    );
    wait_for_no_session(&broker, "hevc")?;
    Ok(())
}
