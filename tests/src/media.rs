//! Checking what the media pipeline produced: `lumen-broker record` runs, decoding the recorded
//! video with the FFmpeg command-line tool, and reading the test pattern's frame codes back.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use lumen_core::pattern::{read_code, FrameCode};
use serde_json::Value;

use crate::Broker;

/// A finished recording: its directory and the broker's reply.
pub struct Recording {
    pub dir: PathBuf,
    pub reply: Value,
}

impl Recording {
    pub fn summary(&self) -> &Value {
        &self.reply["summary"]
    }

    pub fn video_file(&self) -> PathBuf {
        PathBuf::from(self.summary()["video_file"].as_str().unwrap_or_default())
    }
}

/// The session a test records.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub seconds: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    /// `h264`, `hevc` or `av1`.
    pub codec: &'static str,
    /// `stereo`, `5.1` or `7.1`.
    pub audio: &'static str,
}

impl Default for Session {
    /// Three seconds of 640x360@30 H.264 at 2 Mbit/s with stereo sound: small enough to stay
    /// real-time on two shared cores.
    fn default() -> Session {
        Session {
            seconds: 3,
            width: 640,
            height: 360,
            fps: 30,
            bitrate_kbps: 2000,
            codec: "h264",
            audio: "stereo",
        }
    }
}

/// Runs `lumen-broker record` for `session` into `dir`.
pub fn record_session(broker: &Broker, dir: &Path, session: &Session) -> Result<Recording> {
    let numbers = [
        ("--seconds", session.seconds),
        ("--width", session.width),
        ("--height", session.height),
        ("--fps", session.fps),
        ("--bitrate", session.bitrate_kbps),
    ]
    .map(|(flag, value)| (flag, value.to_string()));
    let mut args: Vec<&str> = Vec::new();
    for (flag, value) in &numbers {
        args.push(flag);
        args.push(value);
    }
    args.extend(["--codec", session.codec, "--audio", session.audio]);
    record(broker, dir, &args)
}

/// Runs `lumen-broker record` against `broker` and returns the broker's reply.
pub fn record(broker: &Broker, dir: &Path, args: &[&str]) -> Result<Recording> {
    let mut full = vec!["record", "--out"];
    let dir_str = dir.to_str().context("recording dir is not UTF-8")?;
    full.push(dir_str);
    full.extend_from_slice(args);
    let out = broker.cli(&full)?;
    if !out.status.success() {
        bail!(
            "lumen-broker record failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reply: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "record output is not JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok(Recording {
        dir: dir.to_path_buf(),
        reply,
    })
}

/// Decodes `video` with `ffmpeg` into 8-bit luma frames of `width`×`height`; fails on any decode
/// error (`-xerror`), so a broken bitstream cannot pass.
pub fn decode_luma(video: &Path, format: &str, width: u32, height: u32) -> Result<Vec<Vec<u8>>> {
    let out = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-xerror",
            "-f",
            format,
            "-i",
        ])
        .arg(video)
        .args([
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-vsync",
            "passthrough",
            "-",
        ])
        .output()
        .context("running ffmpeg (install it with dist/install-deps.sh)")?;
    if !out.status.success() || !out.stderr.is_empty() {
        bail!(
            "ffmpeg could not decode {}: {}",
            video.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let size = (width * height) as usize;
    if out.stdout.is_empty() || out.stdout.len() % size != 0 {
        bail!(
            "ffmpeg gave {} bytes, not whole {width}x{height} frames",
            out.stdout.len()
        );
    }
    Ok(out.stdout.chunks(size).map(<[u8]>::to_vec).collect())
}

/// The frame code of every decoded frame (`None` where it could not be read).
pub fn frame_codes(frames: &[Vec<u8>], width: u32, height: u32) -> Vec<Option<FrameCode>> {
    frames
        .iter()
        .map(|luma| read_code(luma, width as usize, width, height))
        .collect()
}

/// One line of `frames.csv`.
#[derive(Debug, Clone, Copy)]
pub struct FrameTimes {
    pub seq: u64,
    pub keyframe: bool,
    pub repeat: bool,
    pub bytes: u64,
    pub captured_ns: u64,
    pub encode_start_ns: u64,
    pub encode_end_ns: u64,
    pub read_ns: u64,
}

/// Reads `frames.csv` of a recording.
pub fn frame_times(dir: &Path) -> Result<Vec<FrameTimes>> {
    let text = std::fs::read_to_string(dir.join("frames.csv")).context("reading frames.csv")?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let v: Vec<u64> = line
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("frames.csv line {line:?}"))?;
        if v.len() != 8 {
            bail!("frames.csv line {line:?} has {} fields", v.len());
        }
        out.push(FrameTimes {
            seq: v[0],
            keyframe: v[1] == 1,
            repeat: v[2] == 1,
            bytes: v[3],
            captured_ns: v[4],
            encode_start_ns: v[5],
            encode_end_ns: v[6],
            read_ns: v[7],
        });
    }
    Ok(out)
}

/// Decodes an Ogg Opus file with `ffmpeg` into interleaved 16-bit samples at 48 kHz.
pub fn decode_audio(file: &Path, channels: u32) -> Result<Vec<i16>> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-xerror", "-i"])
        .arg(file)
        .args(["-f", "s16le", "-ar", "48000", "-ac"])
        .arg(channels.to_string())
        .arg("-")
        .output()
        .context("running ffmpeg")?;
    if !out.status.success() || !out.stderr.is_empty() {
        bail!(
            "ffmpeg could not decode {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect())
}

/// The dominant frequency of channel `channel` of interleaved `samples`, by counting rising zero
/// crossings (enough for a pure test tone).
pub fn tone_frequency(samples: &[i16], channels: usize, channel: usize) -> f64 {
    let mono: Vec<i16> = samples
        .iter()
        .skip(channel)
        .step_by(channels)
        .copied()
        .collect();
    let crossings = mono.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    crossings as f64 * 48_000.0 / mono.len().max(1) as f64
}
