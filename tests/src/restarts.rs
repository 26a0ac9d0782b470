//! Restart gaps as the real client sees them: reading what `tests/python/stream_timed.py` wrote
//! (arrival time, client frame number and type, and the test pattern's code area of every decoded
//! frame) and measuring, for each worker kill, how long until the client decoded the first frame
//! CAPTURED after the kill. Frames the encoder repeats while capture is silent carry an older
//! capture time, so they never count as recovery. [`FrameTail`] follows the file while the client
//! writes it; [`ClientInput`] sends the script its input commands.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lumen_core::pattern::{self, FrameCode};

/// CLOCK_MONOTONIC now in microseconds: the clock of the pattern's capture times and of the
/// client's arrival times (`time.monotonic_ns()`), all on this machine.
pub fn monotonic_us() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // CLOCK_MONOTONIC is never negative.
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

/// One frame the client decoded, as `stream_timed.py` wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedFrame {
    /// CLOCK_MONOTONIC µs when the frame left the client's decoder.
    pub arrival_us: u64,
    /// 0: the first stream; 1: the stream after a reconnect.
    pub stream: u32,
    /// The client's frame number.
    pub client_frame: u32,
    /// The client's frame type (1: IDR).
    pub frame_type: u32,
    /// The pattern's code, when it read.
    pub code: Option<FrameCode>,
}

impl TimedFrame {
    pub fn is_idr(&self) -> bool {
        self.frame_type == 1
    }

    /// Whether the pattern says this frame was captured after `at_us` (CLOCK_MONOTONIC µs). The
    /// code keeps the capture time modulo 2^32 µs (71 minutes): compared by wrapping difference,
    /// right for any two times less than 35 minutes apart.
    pub fn captured_after(&self, at_us: u64) -> bool {
        // The truncation is the code's own wrap-around.
        let at = at_us as u32;
        self.code
            .is_some_and(|c| (c.captured_us.wrapping_sub(at) as i32) > 0)
    }
}

/// What the client decoded: the picture size and the frames in arrival order.
#[derive(Debug)]
pub struct TimedStream {
    pub width: u32,
    pub height: u32,
    pub frames: Vec<TimedFrame>,
}

/// Bytes of one record's header (arrival u64, stream, frame number, frame type: u32).
const RECORD_HEADER: usize = 20;

/// Reads a `stream_timed.py` file and the pattern code of each frame.
pub fn read_timed_frames(path: &Path) -> Result<TimedStream> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_timed_frames(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Parses the bytes of a `stream_timed.py` file.
pub fn parse_timed_frames(bytes: &[u8]) -> Result<TimedStream> {
    let header = FileHeader::parse(bytes)?;
    let mut frames = Vec::new();
    let mut rest = &bytes[FILE_HEADER..];
    // The client may be killed mid-write; a torn last record is not a frame.
    while let Some(frame) = header.parse_record(rest) {
        frames.push(frame);
        rest = &rest[header.record_len()..];
    }
    Ok(TimedStream {
        width: header.width,
        height: header.height,
        frames,
    })
}

/// Bytes of the file header (width, height, code area width and height: u32).
const FILE_HEADER: usize = 16;

/// Waits until `stream_timed.py` (a `width`×`height` stream) has written `frames` whole records to
/// `out`; fails if the client ends first or nothing comes within 60 s.
pub fn wait_for_frames(
    out: &Path,
    frames: u64,
    (width, height): (u32, u32),
    client: &mut Child,
) -> Result<()> {
    let (aw, ah) = pattern::code_area(width, height).context("code area")?;
    let record = RECORD_HEADER as u64 + u64::from(aw) * u64::from(ah);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len = std::fs::metadata(out).map_or(0, |m| m.len());
        if len >= FILE_HEADER as u64 + frames * record {
            return Ok(());
        }
        if let Some(status) = client.try_wait()? {
            anyhow::bail!("the client ended ({status}) before streaming");
        }
        if Instant::now() > deadline {
            anyhow::bail!("the client wrote {len} bytes in 60 s, not {frames} frames");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The picture size and code area a `stream_timed.py` file declares.
#[derive(Debug, Clone, Copy)]
struct FileHeader {
    width: u32,
    height: u32,
    area_w: u32,
    area_h: u32,
}

impl FileHeader {
    fn parse(bytes: &[u8]) -> Result<FileHeader> {
        ensure!(bytes.len() >= FILE_HEADER, "no file header");
        let header = FileHeader {
            width: u32_at(bytes, 0),
            height: u32_at(bytes, 4),
            area_w: u32_at(bytes, 8),
            area_h: u32_at(bytes, 12),
        };
        let FileHeader {
            width,
            height,
            area_w,
            area_h,
        } = header;
        ensure!(
            pattern::code_area(width, height) == Some((area_w, area_h)),
            "a {area_w}x{area_h} code area is not the pattern's at {width}x{height}"
        );
        Ok(header)
    }

    fn record_len(&self) -> usize {
        RECORD_HEADER + self.area_w as usize * self.area_h as usize
    }

    /// The frame at the start of `rest`, or `None` when `rest` holds no whole record.
    fn parse_record(&self, rest: &[u8]) -> Option<TimedFrame> {
        if rest.len() < self.record_len() {
            return None;
        }
        let mut arrival = [0u8; 8];
        arrival.copy_from_slice(&rest[..8]);
        let area = &rest[RECORD_HEADER..self.record_len()];
        Some(TimedFrame {
            arrival_us: u64::from_le_bytes(arrival) / 1000,
            stream: u32_at(rest, 8),
            client_frame: u32_at(rest, 12),
            frame_type: u32_at(rest, 16),
            code: pattern::read_code(area, self.area_w as usize, self.width, self.height),
        })
    }
}

/// Follows a `stream_timed.py` file while the client writes it: each call returns the frames
/// whose records were completed since the last, so a test can wait for a recovery as it happens
/// without re-reading the whole file.
#[derive(Debug)]
pub struct FrameTail {
    path: PathBuf,
    header: Option<FileHeader>,
    /// File offset of the first record not yet returned.
    offset: u64,
}

impl FrameTail {
    pub fn new(path: &Path) -> FrameTail {
        FrameTail {
            path: path.to_path_buf(),
            header: None,
            offset: 0,
        }
    }

    /// The frames completed since the last call (none while the header is not written yet).
    pub fn read_new(&mut self) -> Result<Vec<TimedFrame>> {
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        let header = match self.header {
            Some(header) => header,
            None => {
                let mut bytes = [0u8; FILE_HEADER];
                if file.read_exact(&mut bytes).is_err() {
                    return Ok(Vec::new());
                }
                let header = FileHeader::parse(&bytes)
                    .with_context(|| format!("parsing {}", self.path.display()))?;
                self.header = Some(header);
                self.offset = FILE_HEADER as u64;
                header
            }
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut frames = Vec::new();
        let mut rest = bytes.as_slice();
        while let Some(frame) = header.parse_record(rest) {
            frames.push(frame);
            rest = &rest[header.record_len()..];
            self.offset += header.record_len() as u64;
        }
        Ok(frames)
    }

    /// Waits until a frame captured after `at_us` has been decoded; returns it, or `None` after
    /// `timeout` (the caller's gap checks report a missing recovery).
    pub fn wait_for_captured_after(
        &mut self,
        at_us: u64,
        timeout: Duration,
    ) -> Result<Option<TimedFrame>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self
                .read_new()?
                .into_iter()
                .find(|f| f.captured_after(at_us))
            {
                return Ok(Some(frame));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The input commands of a running `stream_timed.py` ("hold", "release", "tap"), one a line on
/// its stdin: the client calls the matching LiSend* functions at once.
pub struct ClientInput(ChildStdin);

impl ClientInput {
    /// Takes the stdin of a `stream_timed.py` started with a piped stdin.
    pub fn take(client: &mut Child) -> Result<ClientInput> {
        client
            .stdin
            .take()
            .map(ClientInput)
            .context("the client was started without a piped stdin")
    }

    pub fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.0, "{command}")
            .and_then(|()| self.0.flush())
            .with_context(|| format!("sending {command:?} to the client (has it ended?)"))
    }
}

/// How the stream came back after one kill.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// CLOCK_MONOTONIC µs of the kill.
    pub killed_us: u64,
    /// The first frame, in arrival order, captured after the kill.
    pub first: TimedFrame,
    /// Its arrival minus the kill.
    pub gap_us: u64,
}

/// The first frame of `stream` that arrived after `killed_us` and was captured after it, if one
/// arrived before `until_us`.
pub fn recovery_after(
    frames: &[TimedFrame],
    stream: u32,
    killed_us: u64,
    until_us: u64,
) -> Option<Recovery> {
    frames
        .iter()
        .filter(|f| f.stream == stream && f.arrival_us > killed_us && f.arrival_us < until_us)
        .find(|f| f.captured_after(killed_us))
        .map(|f| Recovery {
            killed_us,
            first: *f,
            gap_us: f.arrival_us - killed_us,
        })
}

/// Min, median, 95th percentile and max of a set of gaps (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Distribution {
    pub count: usize,
    pub min_us: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub max_us: u64,
}

impl Distribution {
    /// `None` for no samples.
    pub fn of(samples: &[u64]) -> Option<Distribution> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |p: usize| {
            // Nearest rank: the smallest sample with at least p % of the samples at or below it.
            let r = (p * sorted.len()).div_ceil(100).max(1);
            sorted[r - 1]
        };
        Some(Distribution {
            count: sorted.len(),
            min_us: *sorted.first()?,
            p50_us: rank(50),
            p95_us: rank(95),
            max_us: *sorted.last()?,
        })
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        write!(
            f,
            "n={} min {:.1} ms, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            self.count,
            ms(self.min_us),
            ms(self.p50_us),
            ms(self.p95_us),
            ms(self.max_us)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(arrival_us: u64, captured_us: Option<u32>, frame_type: u32) -> TimedFrame {
        TimedFrame {
            arrival_us,
            stream: 0,
            client_frame: 0,
            frame_type,
            code: captured_us.map(|captured_us| FrameCode {
                frame: 0,
                captured_us,
            }),
        }
    }

    #[test]
    fn repeated_frames_captured_before_the_kill_are_not_recovery() {
        let frames = [
            frame(1_000, Some(900), 0),
            // The encoder repeating the last picture while capture is gone.
            frame(1_200, Some(900), 0),
            frame(1_300, None, 0),
            frame(1_500, Some(1_150), 1),
        ];
        let r = recovery_after(&frames, 0, 1_100, u64::MAX).expect("recovered");
        assert_eq!(r.first, frames[3]);
        assert_eq!(r.gap_us, 400);
        assert!(recovery_after(&frames, 0, 1_100, 1_500).is_none());
        assert!(recovery_after(&frames, 1, 1_100, u64::MAX).is_none());
    }

    #[test]
    fn capture_times_compare_across_the_codes_wrap_around() {
        let kill = (1u64 << 32) - 10;
        assert!(frame(kill + 100, Some(5), 0).captured_after(kill));
        assert!(!frame(kill + 100, Some(u32::MAX - 20), 0).captured_after(kill));
    }

    #[test]
    fn distribution_uses_nearest_ranks() {
        let samples: Vec<u64> = (1..=20).rev().collect();
        let d = Distribution::of(&samples).expect("samples");
        assert_eq!(
            (d.count, d.min_us, d.p50_us, d.p95_us, d.max_us),
            (20, 1, 10, 19, 20)
        );
        assert_eq!(Distribution::of(&[7]).map(|d| d.p95_us), Some(7));
        assert!(Distribution::of(&[]).is_none());
    }

    /// A file header for `w` x `h`.
    fn file_header(w: u32, h: u32) -> Vec<u8> {
        let (aw, ah) = pattern::code_area(w, h).expect("area");
        [w, h, aw, ah]
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect()
    }

    /// One record as stream_timed.py writes it: a rendered pattern frame's code area.
    fn record(w: u32, h: u32, code: FrameCode, arrival_ns: u64, words: [u32; 3]) -> Vec<u8> {
        let (aw, ah) = pattern::code_area(w, h).expect("area");
        let (y, uv) = (w as usize * h as usize, w as usize * h as usize / 2);
        let mut nv12 = vec![0u8; y + uv];
        let (luma, chroma) = nv12.split_at_mut(y);
        pattern::render_nv12(
            code.frame,
            code.captured_us,
            w,
            h,
            luma,
            w as usize,
            chroma,
            w as usize,
        )
        .expect("render");
        let mut bytes = arrival_ns.to_le_bytes().to_vec();
        for word in words {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        for row in 0..ah as usize {
            let start = row * w as usize;
            bytes.extend_from_slice(&luma[start..start + aw as usize]);
        }
        bytes
    }

    #[test]
    fn a_file_round_trips_through_the_pattern_code() {
        let (w, h) = (640u32, 360u32);
        let code = FrameCode {
            frame: 42,
            captured_us: 123_456,
        };
        let mut file = file_header(w, h);
        file.extend(record(w, h, code, 7_000_000, [1, 9, 1]));
        // A torn record at the end is ignored.
        file.extend_from_slice(&[0u8; 30]);
        let stream = parse_timed_frames(&file).expect("parse");
        assert_eq!(
            stream.frames,
            [TimedFrame {
                arrival_us: 7_000,
                stream: 1,
                client_frame: 9,
                frame_type: 1,
                code: Some(code),
            }]
        );
        file[8] ^= 1;
        assert!(parse_timed_frames(&file).is_err());
    }

    #[test]
    fn the_tail_returns_each_record_once_it_is_whole() -> Result<()> {
        use std::io::Write;
        let (w, h) = (640u32, 360u32);
        let dir = std::env::temp_dir().join(format!("lumen-frame-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("timed.frames");
        let mut file = std::fs::File::create(&path)?;
        let mut tail = FrameTail::new(&path);
        // Nothing written yet, then half the header.
        assert!(tail.read_new()?.is_empty());
        let header = file_header(w, h);
        file.write_all(&header[..8])?;
        assert!(tail.read_new()?.is_empty());
        file.write_all(&header[8..])?;
        let code = |captured_us| FrameCode {
            frame: 1,
            captured_us,
        };
        let first = record(w, h, code(1_000), 2_000_000, [0, 1, 1]);
        let second = record(w, h, code(5_000), 6_000_000, [0, 2, 0]);
        // A torn record is not returned until its end is written.
        file.write_all(&first[..first.len() / 2])?;
        assert!(tail.read_new()?.is_empty());
        file.write_all(&first[first.len() / 2..])?;
        file.write_all(&second[..10])?;
        let got = tail.read_new()?;
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].arrival_us, got[0].code), (2_000, Some(code(1_000))));
        file.write_all(&second[10..])?;
        // Only the frame captured after 3 ms counts, and it is returned once.
        let found = tail.wait_for_captured_after(3_000, Duration::from_millis(100))?;
        assert_eq!(found.map(|f| f.client_frame), Some(2));
        assert!(tail.read_new()?.is_empty());
        assert!(tail
            .wait_for_captured_after(3_000, Duration::from_millis(30))?
            .is_none());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
