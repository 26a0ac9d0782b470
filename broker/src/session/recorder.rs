//! The broker as a session's consumer: `lumen-broker record` writes what the encoder put into the
//! rings to files, so a user (and the tests) can check the embedded pipeline without a client.
//!
//! Output, in the directory the user names:
//! - `video.h264` / `video.hevc` (Annex B) or `video.obu` (AV1 low-overhead OBUs): the access units
//!   in ring order;
//! - `frames.csv`: one line per access unit: seq, keyframe, repeat, bytes, and the CLOCK_MONOTONIC
//!   ns at capture, encode start, encode end and when the recorder read it (the latency benchmark
//!   reads this file);
//! - `audio.opus`: the Opus packets in an Ogg Opus file (RFC 7845), decodable by any player;
//! - `audio.csv`: one line per packet: seq, bytes, captured, encode start, encode end, read.
//!
//! The broker reads the rings through the same validating [`Consumer`] lumen-net uses; a corrupt
//! ring ends the recording with an error, never a panic.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lumen_ipc::media::{SessionParams, VideoCodec, AUDIO_SAMPLE_RATE};
use lumen_ipc::ring::{
    monotonic_ns, Consumer, FLAG_KEYFRAME, TS_CAPTURED, TS_ENCODE_END, TS_ENCODE_START, TS_SPARE,
};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use serde::Serialize;

use super::plumbing::ConsumerEnds;

/// What a finished recording holds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RecordSummary {
    pub dir: PathBuf,
    pub video_file: PathBuf,
    pub frames: u64,
    pub keyframes: u64,
    pub repeats: u64,
    pub video_bytes: u64,
    pub audio_packets: u64,
    /// Records the ring dropped because the recorder fell behind (the ring counts them).
    pub ring_dropped: u64,
    /// Ring rebuilds seen (a capture or encode restart).
    pub generations: u32,
}

struct Outputs {
    video: BufWriter<File>,
    frames_csv: BufWriter<File>,
    audio: PacketWriter<'static, BufWriter<File>>,
    audio_csv: BufWriter<File>,
    /// Granule position: 48 kHz samples so far (RFC 7845 counts at 48 kHz always).
    granule: u64,
    /// The newest packet, written once the next arrives (or as the stream's last at the end:
    /// Ogg marks the end on a real packet, and an empty Opus packet would not decode).
    pending_audio: Option<(Vec<u8>, u64)>,
    /// Lacing segments in the Ogg page being filled. Pages are ended well before the 255-segment
    /// limit: the ogg crate (0.9) writes a stray empty packet when a page fills up exactly.
    page_segments: usize,
    samples_per_packet: u64,
    summary: RecordSummary,
}

const OGG_SERIAL: u32 = 0x6c756d65;

/// Segments after which an Ogg page is ended (an Opus packet of 5–20 ms takes 1–9 segments).
const MAX_PAGE_SEGMENTS: usize = 200;

fn create(dir: &Path, name: &str) -> anyhow::Result<BufWriter<File>> {
    let path = dir.join(name);
    Ok(BufWriter::new(
        File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    ))
}

/// RFC 7845 identification header for the session's layout.
fn opus_head(params: &SessionParams) -> Vec<u8> {
    let layout = params.audio.opus_layout();
    let mut head = b"OpusHead".to_vec();
    head.push(1); // version
    head.push(layout.channels);
    head.extend_from_slice(&312u16.to_le_bytes()); // pre-skip: libopus' usual look-ahead at 48 kHz
    head.extend_from_slice(&AUDIO_SAMPLE_RATE.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes()); // output gain
    if layout.channels <= 2 {
        head.push(0); // mapping family 0: mono/stereo, one stream
    } else {
        head.push(1); // mapping family 1: Vorbis channel order
        head.push(layout.streams);
        head.push(layout.coupled);
        head.extend_from_slice(&layout.mapping[..usize::from(layout.channels)]);
    }
    head
}

fn opus_tags() -> Vec<u8> {
    let mut tags = b"OpusTags".to_vec();
    let vendor = b"lumen";
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor);
    tags.extend_from_slice(&0u32.to_le_bytes());
    tags
}

impl Outputs {
    fn open(dir: &Path, params: &SessionParams) -> anyhow::Result<Outputs> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let video_name = match params.codec {
            VideoCodec::H264 => "video.h264",
            VideoCodec::Hevc => "video.hevc",
            VideoCodec::Av1 => "video.obu",
        };
        let mut frames_csv = create(dir, "frames.csv")?;
        writeln!(
            frames_csv,
            "seq,keyframe,repeat,bytes,captured_ns,encode_start_ns,encode_end_ns,read_ns"
        )?;
        let mut audio_csv = create(dir, "audio.csv")?;
        writeln!(
            audio_csv,
            "seq,bytes,captured_ns,encode_start_ns,encode_end_ns,read_ns"
        )?;
        let mut audio = PacketWriter::new(create(dir, "audio.opus")?);
        audio
            .write_packet(
                opus_head(params),
                OGG_SERIAL,
                PacketWriteEndInfo::EndPage,
                0,
            )
            .context("writing the Ogg Opus header")?;
        audio
            .write_packet(opus_tags(), OGG_SERIAL, PacketWriteEndInfo::EndPage, 0)
            .context("writing the Ogg Opus tags")?;
        Ok(Outputs {
            video: create(dir, video_name)?,
            frames_csv,
            audio,
            audio_csv,
            granule: 0,
            pending_audio: None,
            page_segments: 0,
            samples_per_packet: u64::from(params.audio_samples_per_packet()),
            summary: RecordSummary {
                dir: dir.to_path_buf(),
                video_file: dir.join(video_name),
                ..RecordSummary::default()
            },
        })
    }

    /// Moves every waiting video record to the files.
    fn drain_video(&mut self, ring: &mut Consumer, buf: &mut Vec<u8>) -> anyhow::Result<()> {
        while let Some(record) = ring.next().context("video ring")? {
            let meta = *record.meta();
            buf.resize(record.len(), 0);
            record.copy_to(0, buf);
            record.release();
            let read = monotonic_ns();
            self.video.write_all(buf)?;
            let key = meta.flags & FLAG_KEYFRAME != 0;
            let repeat = meta.timestamps[TS_SPARE] == 1;
            writeln!(
                self.frames_csv,
                "{},{},{},{},{},{},{},{}",
                meta.seq,
                u8::from(key),
                u8::from(repeat),
                buf.len(),
                meta.timestamps[TS_CAPTURED],
                meta.timestamps[TS_ENCODE_START],
                meta.timestamps[TS_ENCODE_END],
                read
            )?;
            let s = &mut self.summary;
            s.frames += 1;
            s.keyframes += u64::from(key);
            s.repeats += u64::from(repeat);
            s.video_bytes += buf.len() as u64;
        }
        Ok(())
    }

    fn drain_audio(&mut self, ring: &mut Consumer, buf: &mut Vec<u8>) -> anyhow::Result<()> {
        while let Some(record) = ring.next().context("audio ring")? {
            let meta = *record.meta();
            buf.resize(record.len(), 0);
            record.copy_to(0, buf);
            record.release();
            let read = monotonic_ns();
            self.granule += self.samples_per_packet;
            if let Some((packet, granule)) = self.pending_audio.replace((buf.clone(), self.granule))
            {
                self.page_segments += packet.len() / 255 + 1;
                let end = if self.page_segments >= MAX_PAGE_SEGMENTS {
                    self.page_segments = 0;
                    PacketWriteEndInfo::EndPage
                } else {
                    PacketWriteEndInfo::NormalPacket
                };
                self.audio
                    .write_packet(packet, OGG_SERIAL, end, granule)
                    .context("writing an Opus packet")?;
            }
            writeln!(
                self.audio_csv,
                "{},{},{},{},{},{}",
                meta.seq,
                buf.len(),
                meta.timestamps[TS_CAPTURED],
                meta.timestamps[TS_ENCODE_START],
                meta.timestamps[TS_ENCODE_END],
                read
            )?;
            self.summary.audio_packets += 1;
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<RecordSummary> {
        // The last packet ends the logical stream (an empty one would not decode).
        if let Some((packet, granule)) = self.pending_audio.take() {
            self.audio
                .write_packet(packet, OGG_SERIAL, PacketWriteEndInfo::EndStream, granule)
                .context("ending the Ogg stream")?;
        }
        self.audio.inner_mut().flush()?;
        self.video.flush()?;
        self.frames_csv.flush()?;
        self.audio_csv.flush()?;
        Ok(self.summary)
    }
}

struct Rings {
    video: Consumer,
    audio: Consumer,
    _control: lumen_ipc::channel::Channel,
}

fn attach(ends: ConsumerEnds) -> anyhow::Result<Rings> {
    Ok(Rings {
        video: Consumer::attach(ends.video.memfd, ends.video.doorbell, ends.generation)
            .context("attaching the video ring")?,
        audio: Consumer::attach(ends.audio.memfd, ends.audio.doorbell, ends.generation)
            .context("attaching the audio ring")?,
        _control: ends.control,
    })
}

/// Sleeps until either doorbell rings or 10 ms pass (the bound on how late a rebuild or the end of
/// the recording is noticed), and resets the doorbells that rang.
fn wait_for_either(rings: &Rings) -> anyhow::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let doorbells = [rings.video.doorbell(), rings.audio.doorbell()];
    let mut fds = doorbells.map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN));
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    match poll(&mut fds, Some(&timeout)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e).context("polling the ring doorbells"),
    }
    for (fd, polled) in doorbells.into_iter().zip(fds.iter()) {
        // Only a doorbell that rang is read: the broker makes them blocking.
        if polled.revents().contains(PollFlags::IN) {
            let mut counter = [0u8; 8];
            let _ = rustix::io::read(fd, &mut counter);
        }
    }
    Ok(())
}

/// Records for `duration` from the first ends, switching to each new set `rebuilt` delivers (a
/// capture or encode restart). Blocking: run it on its own thread.
pub fn record(
    dir: &Path,
    params: &SessionParams,
    first: ConsumerEnds,
    rebuilt: mpsc::Receiver<ConsumerEnds>,
    duration: Duration,
) -> anyhow::Result<RecordSummary> {
    let mut out = Outputs::open(dir, params)?;
    let mut rings = attach(first)?;
    out.summary.generations = 1;
    let mut buf = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        match rebuilt.try_recv() {
            Ok(ends) => {
                // Whatever the old rings still hold belongs to the dead pipeline: take it first.
                out.drain_video(&mut rings.video, &mut buf)?;
                out.drain_audio(&mut rings.audio, &mut buf)?;
                out.summary.ring_dropped += rings.video.dropped() + rings.audio.dropped();
                rings = attach(ends)?;
                out.summary.generations += 1;
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
        wait_for_either(&rings)?;
        out.drain_video(&mut rings.video, &mut buf)?;
        out.drain_audio(&mut rings.audio, &mut buf)?;
    }
    out.summary.ring_dropped += rings.video.dropped() + rings.audio.dropped();
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_ipc::media::{AudioLayout, CaptureSource};
    use lumen_ipc::ring::{Producer, RecordMeta, FLAG_END_OF_FRAME};

    fn params() -> SessionParams {
        SessionParams {
            width: 640,
            height: 360,
            fps: 30,
            bitrate_kbps: 2000,
            codec: VideoCodec::H264,
            audio: AudioLayout::Surround51,
            audio_packet_ms: 5,
        }
    }

    #[test]
    fn records_rings_into_files_and_follows_a_rebuild() {
        let dir = std::env::temp_dir().join(format!("lumen-rec-{}", std::process::id()));
        let first = super::super::plumbing::build(
            params(),
            CaptureSource::TestPattern,
            None,
            (640, 360),
            1,
        )
        .unwrap();
        let second = super::super::plumbing::build(
            params(),
            CaptureSource::TestPattern,
            None,
            (640, 360),
            2,
        )
        .unwrap();
        let producer_for = |p: &super::super::plumbing::Plumbing, gen| {
            let fds = &p.encode.1;
            (
                Producer::attach(
                    fds[4].try_clone().unwrap(),
                    fds[5].try_clone().unwrap(),
                    gen,
                )
                .unwrap(),
                Producer::attach(
                    fds[6].try_clone().unwrap(),
                    fds[7].try_clone().unwrap(),
                    gen,
                )
                .unwrap(),
            )
        };
        let (mut video1, mut audio1) = producer_for(&first, 1);
        let (mut video2, _audio2) = producer_for(&second, 2);
        let (tx, rx) = mpsc::channel();
        let key = RecordMeta {
            seq: 0,
            flags: FLAG_KEYFRAME | FLAG_END_OF_FRAME,
            timestamps: [1, 2, 3, 0],
        };
        video1.push(&key, b"\0\0\0\x01\x67idr").unwrap();
        audio1.push(&RecordMeta::default(), b"opus").unwrap();
        let handle = std::thread::spawn({
            let dir = dir.clone();
            move || {
                record(
                    &dir,
                    &params(),
                    first.consumer,
                    rx,
                    Duration::from_millis(300),
                )
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        tx.send(second.consumer).unwrap();
        let repeat = RecordMeta {
            seq: 0,
            flags: FLAG_END_OF_FRAME,
            timestamps: [1, 2, 3, 1],
        };
        video2.push(&repeat, b"\0\0\0\x01\x41p").unwrap();
        let summary = handle.join().unwrap().unwrap();
        assert_eq!(summary.frames, 2);
        assert_eq!(summary.keyframes, 1);
        assert_eq!(summary.repeats, 1);
        assert_eq!(summary.audio_packets, 1);
        assert_eq!(summary.generations, 2);
        let video = std::fs::read(dir.join("video.h264")).unwrap();
        assert_eq!(video, b"\0\0\0\x01\x67idr\0\0\0\x01\x41p");
        let csv = std::fs::read_to_string(dir.join("frames.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.lines().nth(1).unwrap().starts_with("0,1,0,8,1,2,3,"));
        let ogg = std::fs::read(dir.join("audio.opus")).unwrap();
        assert!(ogg.starts_with(b"OggS"));
        // 5.1 needs mapping family 1 with 4 streams, 2 coupled.
        let head = opus_head(&params());
        assert_eq!(&head[18..21], &[1, 4, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
