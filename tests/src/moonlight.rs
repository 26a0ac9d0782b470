//! Driving the real Moonlight client (moonlight-python 0.3.0, which bundles moonlight-common-c)
//! from the whole-system tests: its venv, its driver scripts in `tests/python/`, their JSON
//! results, and the frames the streaming script writes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lumen_core::pattern::{self, FrameCode};
use serde_json::Value;

/// The PIN the tests pair with.
pub const PIN: &str = "1234";

/// The checkout's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The venv's python, made (or reused) by `tests/python/setup-venv.sh` (`LUMEN_TEST_VENV` picks
/// its place).
pub fn python() -> Result<PathBuf> {
    let script = repo_root().join("tests/python/setup-venv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): moonlight-python 0.3.0 is needed for this test",
        script.display(),
        out.status
    );
    let venv = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(str::trim)
        .unwrap_or("")
        .to_string();
    let python = Path::new(&venv).join("bin/python");
    ensure!(
        python.is_file(),
        "setup-venv.sh printed {venv:?}, which has no bin/python"
    );
    Ok(python)
}

/// Arguments for `program` that run driver `script` of `tests/python/` with `args`, for a
/// `Command` the caller builds (directly, or inside a network namespace).
pub fn script_args(script: &str, args: &[&str]) -> Vec<std::ffi::OsString> {
    let mut all = vec![repo_root()
        .join("tests/python")
        .join(script)
        .into_os_string()];
    all.extend(args.iter().map(Into::into));
    all
}

/// Starts `command` (a driver script) with piped output.
pub fn spawn_client(command: &mut Command) -> Result<Child> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the Moonlight client")
}

/// Starts driver `script` with `args` under `python`.
pub fn start_script(python: &Path, script: &str, args: &[&str]) -> Result<Child> {
    spawn_client(Command::new(python).args(script_args(script, args)))
}

/// Waits for a client step, calling `tick` meanwhile (an error from it ends the client and the
/// step), and returns the JSON of its last stdout line.
pub fn finish_client(
    mut child: Child,
    timeout: Duration,
    what: &str,
    mut tick: impl FnMut() -> Result<()>,
) -> Result<Value> {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let failed = tick().err();
        if failed.is_some() || start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            match failed {
                Some(e) => bail!("{what}: {e:#}; client stderr: {stderr}"),
                None => bail!(
                    "{what}: the Moonlight client did not finish within {timeout:?}; stderr: {stderr}"
                ),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr)?;
    }
    ensure!(
        status.success(),
        "{what}: the Moonlight client failed ({status}); stdout: {stdout}; stderr: {stderr}"
    );
    let last = stdout.lines().last().unwrap_or("");
    serde_json::from_str(last)
        .with_context(|| format!("{what}: client output is not JSON: {stdout}; stderr: {stderr}"))
}

/// Pairs the client identity in `dir` with `broker` on loopback: the real client asks while
/// `lumen-broker pair PIN` offers the PIN. Fails with both sides' words if either refuses.
pub fn pair_on_loopback(broker: &crate::Broker, python: &Path, dir: &str) -> Result<()> {
    let port = broker.port_base.to_string();
    let client = start_script(
        python,
        "pair_and_applist.py",
        &["pair", "127.0.0.1", &port, dir, PIN],
    )?;
    let cli = broker.cli(&["pair", PIN])?;
    let client = finish_client(client, Duration::from_secs(150), "pair", || Ok(()))?;
    ensure!(
        cli.status.success() && client["paired"] == true,
        "pairing failed: client {client}; lumen-broker pair: {} {}",
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr)
    );
    Ok(())
}

/// One run of `stream_frames.py`: what it streams and where it writes the frames.
pub struct FrameStream<'a> {
    pub host: &'a str,
    pub port: u16,
    /// The paired client identity's directory.
    pub identity: &'a str,
    pub codec: &'a str,
    /// Width, height, fps.
    pub mode: (u32, u32, u32),
    /// Frames to decode before the stream ends.
    pub frames: u32,
    pub out: &'a Path,
    /// "stop" (the client leaves) or "quit" (/cancel while streaming).
    pub end: &'a str,
    /// With a layout (2, 6 or 8 channels), the client asks for it and records audio.
    pub audio_channels: Option<u32>,
}

impl FrameStream<'_> {
    /// The script's arguments. The client keeps only the test pattern's code area of each frame
    /// (`pattern::code_area`): the whole luma plane is six times larger and a suite run writes
    /// hundreds of frames, on machines whose disk may be nearly full.
    pub fn args(&self) -> Result<Vec<String>> {
        let (width, height, fps) = self.mode;
        let (area_w, area_h) = pattern::code_area(width, height)
            .with_context(|| format!("{width}x{height} has no room for the pattern's code"))?;
        let mut args: Vec<String> = vec![
            "stream".into(),
            self.host.into(),
            self.port.to_string(),
            self.identity.into(),
            self.codec.into(),
            width.to_string(),
            height.to_string(),
            fps.to_string(),
            self.frames.to_string(),
            self.out.display().to_string(),
            area_w.to_string(),
            area_h.to_string(),
            self.end.into(),
        ];
        args.extend(self.audio_channels.map(|c| c.to_string()));
        Ok(args)
    }

    /// Starts `stream_frames.py` under `python` on this host.
    pub fn start(&self, python: &Path) -> Result<Child> {
        let args = self.args()?;
        start_script(
            python,
            "stream_frames.py",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    }

    /// Runs the client on this host to its end while watching `broker`'s status for the media
    /// session the client starts (a newer generation than the last one, which the status keeps
    /// showing). Returns the client's summary and that session; a client that reports an error,
    /// or a stream the broker never showed, fails.
    pub fn run_watching(
        &self,
        python: &Path,
        broker: &crate::Broker,
        timeout: Duration,
    ) -> Result<(Value, Value)> {
        let codec = self.codec;
        let client = self.start(python)?;
        let generation = |status: &Value| status["media_session"]["generation"].as_u64();
        let before = generation(&broker.status()?).unwrap_or(0);
        let mut session = None;
        let result = finish_client(client, timeout, codec, || {
            if session.is_none() {
                if let Ok(status) = broker.status() {
                    if generation(&status).unwrap_or(0) > before {
                        session = Some(status["media_session"].clone());
                    }
                }
            }
            Ok(())
        })?;
        eprintln!("{codec}: client says {result}");
        ensure!(
            result.get("error").is_none(),
            "{codec}: the client failed: {result}"
        );
        let session = session
            .with_context(|| format!("{codec}: the broker never reported a media session"))?;
        Ok((result, session))
    }

    /// Frames written so far.
    pub fn frames_written(&self) -> u64 {
        let (width, height, _) = self.mode;
        let len = std::fs::metadata(self.out).map(|m| m.len()).unwrap_or(0);
        frame_record_len(width, height).map_or(0, |record| len / record)
    }

    /// The frames the client wrote.
    pub fn decoded(&self) -> Result<Vec<DecodedFrame>> {
        let (width, height, _) = self.mode;
        read_frames(self.out, width, height)
    }
}

/// One frame the client decoded, as `stream_frames.py` wrote it.
#[derive(Debug, Clone, Copy)]
pub struct DecodedFrame {
    /// The client's own frame number.
    pub client_frame: u32,
    /// The client's frame type (1: IDR).
    pub frame_type: u32,
    /// The test pattern's code read from the picture.
    pub code: Option<FrameCode>,
}

impl DecodedFrame {
    pub fn is_idr(&self) -> bool {
        self.frame_type == 1
    }
}

/// The test pattern's frame codes of `decoded`, checked: decoding is lossy, so a few unreadable
/// codes are tolerated, but nine in ten must read, at least two, and they must increase (frames
/// are the capture's, in order, none repeated).
pub fn pattern_codes(decoded: &[DecodedFrame]) -> Result<Vec<u32>> {
    let codes: Vec<u32> = decoded
        .iter()
        .filter_map(|d| d.code.map(|c| c.frame))
        .collect();
    ensure!(
        codes.len() * 10 >= decoded.len() * 9 && codes.len() >= 2,
        "only {} of {} frames carried a readable pattern code",
        codes.len(),
        decoded.len()
    );
    if let Some(pair) = codes.windows(2).find(|p| p[1] <= p[0]) {
        bail!(
            "pattern frame {} came after {} (out of order or repeated)",
            pair[1],
            pair[0]
        );
    }
    Ok(codes)
}

/// Bytes of one record in the client's frame file: a 16-byte header (width, height, frame
/// number, frame type; u32 little-endian) and the luma of the code area at the top-left.
pub fn frame_record_len(width: u32, height: u32) -> Option<u64> {
    let (area_w, area_h) = pattern::code_area(width, height)?;
    Some(16 + u64::from(area_w) * u64::from(area_h))
}

/// Reads the frames `stream_frames.py` wrote and the pattern code of each.
pub fn read_frames(path: &Path, width: u32, height: u32) -> Result<Vec<DecodedFrame>> {
    let (area_w, area_h) = pattern::code_area(width, height)
        .with_context(|| format!("{width}x{height} has no room for the pattern's code"))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut frames = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        ensure!(rest.len() >= 16, "a truncated frame header");
        let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let (w, h, client_frame, frame_type) = (word(0), word(4), word(8), word(12));
        ensure!(
            (w, h) == (width, height),
            "the client decoded {w}x{h}, not {width}x{height}"
        );
        let len = (area_w * area_h) as usize;
        ensure!(rest.len() >= 16 + len, "a truncated frame");
        let luma = &rest[16..16 + len];
        frames.push(DecodedFrame {
            client_frame,
            frame_type,
            code: pattern::read_code(luma, area_w as usize, w, h),
        });
        rest = &rest[16 + len..];
    }
    Ok(frames)
}
