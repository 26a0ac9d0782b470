//! The media pipeline end to end, on the embedded default: the real broker runs the sandboxed
//! capture (test pattern + tone) and encode (FFmpeg) workers, `lumen-broker record` consumes the
//! rings, FFmpeg decodes the result again, and the test pattern's frame codes are read back from
//! the decoded pictures.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lumen_tests::media::{
    decode_audio, decode_luma, frame_codes, frame_times, record_session, tone_frequency, Session,
};
use lumen_tests::{signal, worker, Broker, ScratchDir};

/// Frames at the start of a stream where a skip is tolerated (the encoder's first frames).
const WARM_UP_FRAMES: usize = 10;

/// Checks a recording of the test pattern: decodable, every frame's code readable, frame numbers
/// rising without gaps, captured at the requested rate; returns the number of frames.
fn check_video(
    rec: &lumen_tests::media::Recording,
    format: &str,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<usize> {
    let frames = decode_luma(&rec.video_file(), format, width, height)?;
    let times = frame_times(&rec.dir)?;
    ensure!(
        frames.len() == times.len(),
        "{} decoded frames, {} access units recorded",
        frames.len(),
        times.len()
    );
    ensure!(times[0].keyframe, "the stream starts with an IDR");
    let codes = frame_codes(&frames, width, height);
    let unreadable = codes.iter().filter(|c| c.is_none()).count();
    ensure!(
        unreadable == 0,
        "{unreadable} of {} frame codes unreadable",
        codes.len()
    );
    let codes: Vec<_> = codes.into_iter().flatten().collect();
    for (i, (code, t)) in codes.iter().zip(&times).enumerate() {
        ensure!(
            u64::from(code.frame) == t.seq,
            "frame {i}: the picture says {} but the ring record says {}",
            code.frame,
            t.seq
        );
    }
    // A repeat (the encoder re-sends the last picture when a frame is late) carries the previous
    // number and is marked in frames.csv; on a loaded machine a few happen. Every new frame must
    // be the next number: capture dropped none and encode skipped none.
    let repeats = times.iter().filter(|t| t.repeat).count();
    ensure!(
        repeats * 10 <= times.len(),
        "{repeats} of {} access units are repeats",
        times.len()
    );
    let codes: Vec<_> = codes
        .into_iter()
        .zip(&times)
        .filter(|(_, t)| !t.repeat)
        .map(|(c, _)| c)
        .collect();
    // The first frames may be skipped while the encoder warms up (it encodes only the newest
    // frame, so a slow first encode skips the stale ones); after that none may be.
    let codes = &codes[WARM_UP_FRAMES.min(codes.len())..];
    let steps: Vec<i64> = codes
        .windows(2)
        .map(|w| i64::from(w[1].frame) - i64::from(w[0].frame))
        .collect();
    ensure!(
        steps.iter().all(|&s| s >= 1),
        "frame numbers must rise: {steps:?}"
    );
    // A step of n > 1 is n − 1 frames the encoder skipped because it fell behind (it always
    // encodes the newest frame). On an idle machine there are none; the suite shares two cores
    // with other tests, so a few are tolerated and reported.
    let skipped: i64 = steps.iter().map(|s| s - 1).sum();
    eprintln!(
        "{format} {width}x{height}@{fps}: {} frames, {skipped} skipped after warm-up, {repeats} repeats",
        times.len()
    );
    ensure!(
        skipped * 50 <= steps.len() as i64,
        "{skipped} frames skipped in {} (more than 2 %): {steps:?}",
        steps.len()
    );
    // The capture clock in the picture: the median interval is one frame time (±15 %).
    let mut intervals: Vec<i64> = codes
        .windows(2)
        .map(|w| i64::from(w[1].captured_us.wrapping_sub(w[0].captured_us)))
        .collect();
    intervals.sort_unstable();
    let median = intervals[intervals.len() / 2];
    let expected = 1_000_000 / i64::from(fps);
    ensure!(
        (median - expected).abs() * 100 <= expected * 15,
        "median capture interval {median} µs, expected {expected} µs"
    );
    Ok(codes.len())
}

#[test]
fn the_test_pattern_streams_as_h264_with_every_frame_accounted_for() -> Result<()> {
    let broker = Broker::start("media-h264")?;
    let out = ScratchDir::new("rec-h264")?;
    let rec = record_session(
        &broker,
        out.path(),
        &Session {
            bitrate_kbps: 1000,
            ..Session::default()
        },
    )?;
    let frames = check_video(&rec, "h264", 640, 360, 30)?;
    // Three seconds at 30 fps, less the session's start-up.
    ensure!(
        (60..=95).contains(&frames),
        "{frames} frames in 3 s at 30 fps"
    );
    // Stereo test tone: 440 Hz left, 660 Hz right (capture-proc/src/tone.rs).
    let samples = decode_audio(&rec.dir.join("audio.opus"), 2)?;
    ensure!(
        samples.len() >= 2 * 48_000 * 2,
        "only {} samples of audio",
        samples.len()
    );
    let left = tone_frequency(&samples, 2, 0);
    let right = tone_frequency(&samples, 2, 1);
    ensure!((left - 440.0).abs() < 15.0, "left channel at {left:.0} Hz");
    ensure!(
        (right - 660.0).abs() < 15.0,
        "right channel at {right:.0} Hz"
    );
    let session = &rec.reply["session"];
    ensure!(
        session["encode"]["state"] == "running" && session["capture"]["state"] == "running",
        "both workers ran the session: {session}"
    );
    let component = session["encode"]["stats"]["component"]
        .as_str()
        .unwrap_or_default();
    ensure!(component.contains("x264"), "encoder: {component:?}");
    // The session stays visible in status after it ended.
    let status = broker.status()?;
    ensure!(
        status["media_session"]["params"]["width"] == 640,
        "{}",
        status["media_session"]
    );
    Ok(())
}

#[test]
fn the_test_pattern_streams_as_hevc_with_surround_audio() -> Result<()> {
    let broker = Broker::start("media-hevc")?;
    let out = ScratchDir::new("rec-hevc")?;
    let rec = record_session(
        &broker,
        out.path(),
        &Session {
            codec: "hevc",
            audio: "5.1",
            ..Session::default()
        },
    )?;
    // x265 is the slowest encoder here: 640x360 keeps it real-time on two shared cores.
    let frames = check_video(&rec, "hevc", 640, 360, 30)?;
    ensure!(frames >= 45, "{frames} frames of HEVC in 3 s at 30 fps");
    let samples = decode_audio(&rec.dir.join("audio.opus"), 6)?;
    ensure!(
        samples.len() >= 6 * 48_000 * 2,
        "only {} samples of 5.1 audio",
        samples.len()
    );
    let front_left = tone_frequency(&samples, 6, 0);
    ensure!(
        (front_left - 440.0).abs() < 15.0,
        "front left at {front_left:.0} Hz"
    );
    Ok(())
}

#[test]
fn a_killed_encoder_is_replaced_mid_session_and_restarts_with_an_idr() -> Result<()> {
    let broker = Broker::start("media-restart")?;
    let out = ScratchDir::new("rec-restart")?;
    let killer = {
        let status = broker.status()?;
        let pid = worker(&status, "Encode")
            .and_then(|w| w["pid"].as_u64())
            .context("encode pid")?;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            signal(pid as u32, libc::SIGKILL)
        })
    };
    let rec = record_session(
        &broker,
        out.path(),
        &Session {
            seconds: 4,
            ..Session::default()
        },
    )?;
    killer.join().expect("killer thread")?;
    let summary = rec.summary();
    ensure!(
        summary["generations"].as_u64() >= Some(2),
        "the recorder followed the rebuilt session: {summary}"
    );
    let times = frame_times(&rec.dir)?;
    let keyframes: Vec<usize> = times
        .iter()
        .enumerate()
        .filter(|(_, t)| t.keyframe)
        .map(|(i, _)| i)
        .collect();
    ensure!(
        keyframes.len() >= 2,
        "a fresh encoder starts with an IDR: keyframes at {keyframes:?}"
    );
    // Frames came after the restart too (the new pipeline streams).
    let last_key = *keyframes.last().unwrap_or(&0);
    ensure!(
        times.len() - last_key >= 20,
        "{} frames after the restart",
        times.len() - last_key
    );
    // The whole file decodes: the new IDR repeats the parameter sets.
    decode_luma(&rec.video_file(), "h264", 640, 360)?;
    Ok(())
}
