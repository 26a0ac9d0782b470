//! One encode session: the fds of `StartEncode` taken apart and checked, then three threads — video
//! (frames → encoder → video ring), audio (PCM ring → Opus → audio ring) and control (consumer's
//! IDR / bitrate requests) — until `StopSession`, the next `StartEncode`, or a failure, which is
//! reported as `SessionFailed` while the worker itself stays up.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ffmpeg_next::frame;
use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::frame_pool::FramePool;
use lumen_ipc::media::{
    CaptureToEncode, EncodeToCapture, FrameDesc, FramePoolSpec, Generation, MediaStats,
    SessionParams,
};
use lumen_ipc::msg::{BrokerMsg, WorkerMsg};
use lumen_ipc::ring::{
    self, Consumer, Producer, PushOutcome, RecordMeta, RingError, FLAG_END_OF_FRAME, FLAG_KEYFRAME,
    TS_CAPTURED, TS_ENCODE_END, TS_ENCODE_START, TS_SPARE,
};
use lumen_ipc::worker::HandlerResult;

use crate::audio::OpusEncoder;
use crate::control::{self, ControlEnd, Requests};
use crate::scale::Converter;
use crate::video::{Backend, Probe, VideoConfig, VideoEncoder};

/// Number of fds `StartEncode` carries (media-interfaces.md).
pub const START_ENCODE_FDS: usize = 9;

/// Longest a thread sleeps before looking at the stop flag.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Most frames waiting in an encoder for their access unit (SVT-AV1 holds two or three).
const MAX_PENDING: usize = 16;

/// How often the video thread reports `SessionStats`.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// What every thread of a session shares.
pub struct Shared {
    generation: Generation,
    reports: Arc<Channel>,
    stop: AtomicBool,
    failed: AtomicBool,
    requests: Requests,
    audio_packets: AtomicU64,
    audio_dropped: AtomicU64,
}

impl Shared {
    /// Ends the session: the first failure is reported, every thread stops.
    fn fail(&self, message: String) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            eprintln!(
                "lumen-encode: session {} failed: {message}",
                self.generation
            );
            let _ = self.reports.send(
                &WorkerMsg::SessionFailed {
                    generation: self.generation,
                    message,
                },
                &[],
            );
        }
        self.stop.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A running session; dropping it stops and joins its threads.
pub struct Session {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Session {
    /// Whether the session has failed (it stays until replaced or stopped).
    #[cfg(test)]
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Everything a session runs on, checked and attached.
pub struct Parts {
    pub params: SessionParams,
    pub generation: Generation,
    pub pool: FramePool,
    pub capture: Channel,
    pub pcm: Consumer,
    pub video_ring: Producer,
    pub audio_ring: Producer,
    pub control: Channel,
}

impl Parts {
    /// Takes the fds of `StartEncode` apart, in the order media-interfaces.md fixes.
    pub fn from_fds(
        params: SessionParams,
        pool: FramePoolSpec,
        generation: Generation,
        fds: Vec<OwnedFd>,
    ) -> Result<Parts, String> {
        if fds.len() != START_ENCODE_FDS {
            return Err(format!(
                "StartEncode carries {} fds, expected {START_ENCODE_FDS}",
                fds.len()
            ));
        }
        params.validate()?;
        let mut fds = fds.into_iter();
        let mut next = || fds.next().ok_or("fd list ran short".to_string());
        let pool = FramePool::map(next()?, pool, false).map_err(|e| format!("frame pool: {e}"))?;
        let capture =
            Channel::from_fd(next()?).map_err(|e| format!("capture channel (fd 1): {e}"))?;
        let pcm = Consumer::attach(next()?, next()?, generation)
            .map_err(|e| format!("PCM ring (fds 2, 3): {e}"))?;
        let video_ring = Producer::attach(next()?, next()?, generation)
            .map_err(|e| format!("video ring (fds 4, 5): {e}"))?;
        let audio_ring = Producer::attach(next()?, next()?, generation)
            .map_err(|e| format!("audio ring (fds 6, 7): {e}"))?;
        let control =
            Channel::from_fd(next()?).map_err(|e| format!("control channel (fd 8): {e}"))?;
        Ok(Parts {
            params,
            generation,
            pool,
            capture,
            pcm,
            video_ring,
            audio_ring,
            control,
        })
    }
}

/// Opens the best encoder the probe found for the session's codec; a GPU encoder that fails now
/// (after lock-down) gives way to the software one.
fn open_video(probe: &Probe, params: &SessionParams) -> Result<VideoEncoder, String> {
    let config = VideoConfig {
        width: params.width,
        height: params.height,
        fps: params.fps,
        bitrate_kbps: params.bitrate_kbps,
    };
    probe.pick(params.codec)?;
    let mut errors = Vec::new();
    for &backend in Backend::candidates(params.codec) {
        if !probe.usable.contains(&backend) {
            continue;
        }
        match VideoEncoder::open(backend, config) {
            Ok(enc) => return Ok(enc),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(format!(
        "no {} encoder opened for {}x{}@{}: {}",
        params.codec.name(),
        params.width,
        params.height,
        params.fps,
        errors.join("; ")
    ))
}

/// Starts a session on `parts`. On error nothing runs and the message says why.
pub fn start(parts: Parts, probe: &Probe, reports: Arc<Channel>) -> Result<Session, String> {
    let params = parts.params;
    // Releases must never block the video thread on a capture that stopped reading (the session
    // then fails instead, and StopSession still joins at once); receives poll anyway.
    parts
        .capture
        .set_nonblocking(true)
        .map_err(|e| format!("capture channel: {e}"))?;
    let encoder = open_video(probe, &params)?;
    let opus = OpusEncoder::new(params.audio, params.audio_packet_ms)
        .map_err(|e| format!("Opus {:?}: {e}", params.audio))?;
    let shared = Arc::new(Shared {
        generation: parts.generation,
        reports,
        stop: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        requests: Requests::default(),
        audio_packets: AtomicU64::new(0),
        audio_dropped: AtomicU64::new(0),
    });
    let _ = shared.reports.send(
        &WorkerMsg::SessionStarted {
            generation: parts.generation,
        },
        &[],
    );
    let mut session = Session {
        shared: shared.clone(),
        threads: Vec::new(),
    };
    let component = format!(
        "{} {}x{}@{} {} kbit/s, opus {:?} {} ms surround-params {}",
        encoder.backend().name(),
        params.width,
        params.height,
        params.fps,
        params.bitrate_kbps,
        params.audio,
        params.audio_packet_ms,
        opus.layout().surround_params()
    );
    let video = VideoLoop {
        shared: shared.clone(),
        capture: parts.capture,
        pool: parts.pool,
        ring: parts.video_ring,
        encoder,
        converter: Converter::default(),
        current: None,
        pending: VecDeque::new(),
        first: true,
        stats: MediaStats {
            component,
            ..MediaStats::default()
        },
    };
    let audio = AudioLoop {
        shared: shared.clone(),
        pcm: parts.pcm,
        ring: parts.audio_ring,
        opus,
        seq: 0,
    };
    let control = parts.control;
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .map_err(|e| format!("starting the {name} thread: {e}"))
    };
    let control_shared = shared.clone();
    let started = [
        spawn("video", Box::new(move || video.run())),
        spawn("audio", Box::new(move || audio.run())),
        spawn(
            "control",
            Box::new(move || {
                let s = control_shared;
                match control::serve(control, &s.requests, &s.stop) {
                    ControlEnd::Stopped | ControlEnd::Closed => {}
                    ControlEnd::Malformed(why) => s.fail(format!("control channel: {why}")),
                }
            }),
        ),
    ];
    for thread in started {
        match thread {
            Ok(handle) => session.threads.push(handle),
            Err(e) => shared.fail(e),
        }
    }
    Ok(session)
}

/// The frame being shown: the encoder's copy of the newest frame, kept for repeats.
struct Current {
    frame: frame::Video,
    seq: u64,
    captured_ns: u64,
}

/// What the ring record of a frame in the encoder will say.
struct Pending {
    pts: i64,
    seq: u64,
    captured_ns: u64,
    repeat: bool,
    start_ns: u64,
}

struct VideoLoop {
    shared: Arc<Shared>,
    capture: Channel,
    pool: FramePool,
    ring: Producer,
    encoder: VideoEncoder,
    converter: Converter,
    current: Option<Current>,
    pending: VecDeque<Pending>,
    first: bool,
    stats: MediaStats,
}

impl VideoLoop {
    fn run(mut self) {
        match self.serve() {
            Ok(()) => {}
            // Capture went away: the session is being torn down (or capture died, which the
            // broker sees and answers with a new session); nothing here failed.
            Err(e) if e == CAPTURE_CLOSED => {
                eprintln!(
                    "lumen-encode: session {}: {CAPTURE_CLOSED}; video stops",
                    self.shared.generation
                );
            }
            Err(e) => self.shared.fail(e),
        }
    }

    fn serve(&mut self) -> Result<(), String> {
        let interval = Duration::from_secs(1) / self.encoder.config().fps.max(1);
        // A live source's frames arrive a frame interval apart give or take scheduling jitter: the
        // first repeat waits half an interval longer, so a slightly late frame is not doubled by a
        // repeat; once the source is static, repeats keep the exact cadence.
        let first_repeat_after = interval * 3 / 2;
        let mut repeating = false;
        let mut last_encode = Instant::now();
        let mut next_stats = Instant::now() + STATS_INTERVAL;
        while !self.shared.stopped() {
            let now = Instant::now();
            let deadline = last_encode
                + if repeating {
                    interval
                } else {
                    first_repeat_after
                };
            let wait = if self.current.is_some() {
                deadline.saturating_duration_since(now).min(POLL_SLICE)
            } else {
                POLL_SLICE
            };
            if let Some(desc) = self.newest_frame(wait)? {
                self.take_frame(desc)?;
                last_encode = Instant::now();
                repeating = false;
                self.encode(false)?;
            } else if self.current.is_some() && Instant::now() >= deadline {
                // Nothing new within a frame interval (static desktop): the stream keeps its rate.
                // Keep the cadence unless we fell more than a frame behind it.
                let now = Instant::now();
                last_encode = if now.duration_since(deadline) < interval {
                    deadline
                } else {
                    now
                };
                repeating = true;
                self.stats.repeated += 1;
                self.encode(true)?;
            }
            if Instant::now() >= next_stats {
                next_stats += STATS_INTERVAL;
                self.report_stats();
            }
        }
        Ok(())
    }

    fn report_stats(&self) {
        let mut stats = self.stats.clone();
        stats.dropped += self.ring.dropped() + self.shared.audio_dropped.load(Ordering::Relaxed);
        stats.audio_packets = self.shared.audio_packets.load(Ordering::Relaxed);
        let _ = self.shared.reports.send(
            &WorkerMsg::SessionStats {
                generation: self.shared.generation,
                stats,
            },
            &[],
        );
    }

    fn release(&self, slot: u32) -> Result<(), String> {
        match self.capture.send(&EncodeToCapture::Release { slot }, &[]) {
            Ok(()) => Ok(()),
            Err(ChannelError::Syscall {
                errno: rustix::io::Errno::AGAIN,
                ..
            }) => Err(format!(
                "capture does not read its frame channel (releasing slot {slot}: channel full)"
            )),
            Err(ChannelError::Closed) => Err(CAPTURE_CLOSED.to_string()),
            Err(e) => Err(format!("releasing slot {slot} to capture: {e}")),
        }
    }

    /// Waits up to `wait` for a frame, then drains what else is queued: the newest frame wins, the
    /// older ones go straight back to capture (counted as dropped).
    fn newest_frame(&mut self, wait: Duration) -> Result<Option<FrameDesc>, String> {
        let mut newest: Option<FrameDesc> = None;
        let mut first = Some(wait);
        loop {
            let received = match first.take() {
                Some(wait) => match self.capture.recv_timeout::<CaptureToEncode>(wait) {
                    Ok(received) => Some(received),
                    Err(ChannelError::Timeout(_)) => None,
                    Err(e) => return Err(capture_error(e)),
                },
                None => self
                    .capture
                    .try_recv::<CaptureToEncode>()
                    .map_err(capture_error)?,
            };
            let Some(received) = received else {
                return Ok(newest);
            };
            if !received.fds.is_empty() {
                return Err(format!(
                    "capture sent {} fds with a frame",
                    received.fds.len()
                ));
            }
            let CaptureToEncode::Frame(desc) = received.msg;
            desc.check(&self.pool.spec())
                .map_err(|e| format!("capture sent a frame that does not fit the pool: {e}"))?;
            if let Some(stale) = newest.replace(desc) {
                self.release(stale.slot)?;
                self.stats.dropped += 1;
            }
        }
    }

    /// Copies (and converts) the frame into the encoder's own picture and hands the slot back.
    fn take_frame(&mut self, desc: FrameDesc) -> Result<(), String> {
        let mut current = match self.current.take() {
            Some(current) => current,
            None => Current {
                frame: self.encoder.new_frame(),
                seq: 0,
                captured_ns: 0,
            },
        };
        let converted = self
            .converter
            .convert(&self.pool, &desc, &mut current.frame);
        // The picture is ours now (or the frame is refused): capture gets the slot back either way.
        self.release(desc.slot)?;
        converted.map_err(|e| format!("frame {}: {e}", desc.seq))?;
        current.seq = desc.seq;
        current.captured_ns = desc.captured_ns;
        self.current = Some(current);
        Ok(())
    }

    fn encode(&mut self, repeat: bool) -> Result<(), String> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        let mut idr = std::mem::take(&mut self.first) | self.shared.requests.take_idr();
        if let Some(kbps) = self.shared.requests.take_bitrate() {
            if self
                .encoder
                .set_bitrate(kbps)
                .map_err(|e| format!("changing the bitrate to {kbps} kbit/s: {e}"))?
            {
                idr = true;
            }
            self.stats.component = format!(
                "{} {}x{}@{} {} kbit/s",
                self.encoder.backend().name(),
                self.encoder.config().width,
                self.encoder.config().height,
                self.encoder.config().fps,
                kbps
            );
        }
        let start_ns = ring::monotonic_ns();
        let (pts, aus) = self
            .encoder
            .encode(&mut current.frame, idr)
            .map_err(|e| e.to_string())?;
        // Entries of frames an encoder never hands back (SVT-AV1's in-flight frames at a reopen)
        // leave when a later AU arrives; the cap only guards against an encoder that stops.
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            pts,
            seq: current.seq,
            captured_ns: current.captured_ns,
            repeat,
            start_ns,
        });
        for au in aus {
            // Frames the encoder never handed back leave their entries behind.
            while self.pending.front().is_some_and(|p| p.pts < au.pts) {
                self.pending.pop_front();
            }
            let Some(pending) = self.pending.pop_front() else {
                continue;
            };
            let meta = RecordMeta {
                seq: pending.seq,
                flags: FLAG_END_OF_FRAME | if au.keyframe { FLAG_KEYFRAME } else { 0 },
                timestamps: {
                    let mut ts = [0; 4];
                    ts[TS_CAPTURED] = pending.captured_ns;
                    ts[TS_ENCODE_START] = pending.start_ns;
                    ts[TS_ENCODE_END] = ring::monotonic_ns();
                    ts[TS_SPARE] = u64::from(pending.repeat);
                    ts
                },
            };
            match self.ring.push(&meta, &au.data) {
                Ok(PushOutcome::Written { .. }) => self.stats.frames += 1,
                // The ring drop is counted by the ring; the consumer lost a reference frame, so
                // the next frame restarts the picture.
                Ok(PushOutcome::Dropped) => self.shared.requests.request_idr(),
                Err(RingError::RecordTooLarge { len, max }) => {
                    eprintln!(
                        "lumen-encode: dropping an access unit of {len} bytes (ring takes {max})"
                    );
                    self.stats.dropped += 1;
                    self.shared.requests.request_idr();
                }
                Err(e) => return Err(format!("video ring: {e}")),
            }
        }
        Ok(())
    }
}

const CAPTURE_CLOSED: &str = "capture closed the frame channel";

fn capture_error(e: ChannelError) -> String {
    match e {
        ChannelError::Closed
        | ChannelError::Syscall {
            errno: rustix::io::Errno::CONNRESET,
            ..
        } => CAPTURE_CLOSED.to_string(),
        e => format!("frame channel: {e}"),
    }
}

struct AudioLoop {
    shared: Arc<Shared>,
    pcm: Consumer,
    ring: Producer,
    opus: OpusEncoder,
    seq: u64,
}

impl AudioLoop {
    fn run(mut self) {
        if let Err(e) = self.serve() {
            self.shared.fail(e);
        }
    }

    fn serve(&mut self) -> Result<(), String> {
        let channels = usize::from(self.opus.layout().channels);
        let samples = self.opus.samples_per_packet() * channels;
        let bytes = samples * 4;
        let mut raw = vec![0u8; bytes];
        let mut pcm = vec![0f32; samples];
        while !self.shared.stopped() {
            self.pcm
                .wait(Some(POLL_SLICE))
                .map_err(|e| format!("PCM ring: {e}"))?;
            while let Some(record) = self.pcm.next().map_err(|e| format!("PCM ring: {e}"))? {
                let meta = *record.meta();
                if record.len() != bytes {
                    record.release();
                    self.shared.audio_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                record.copy_to(0, &mut raw);
                record.release();
                for (sample, le) in pcm.iter_mut().zip(raw.chunks_exact(4)) {
                    *sample = f32::from_le_bytes([le[0], le[1], le[2], le[3]]);
                }
                let start_ns = ring::monotonic_ns();
                let packet = self.opus.encode(&pcm).map_err(|e| e.to_string())?;
                let out = RecordMeta {
                    seq: self.seq,
                    flags: 0,
                    timestamps: [
                        meta.timestamps[TS_CAPTURED],
                        start_ns,
                        ring::monotonic_ns(),
                        0,
                    ],
                };
                self.seq += 1;
                match self.ring.push(&out, packet) {
                    Ok(PushOutcome::Written { .. }) => {
                        self.shared.audio_packets.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(PushOutcome::Dropped) => {
                        self.shared.audio_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => return Err(format!("audio ring: {e}")),
                }
            }
        }
        Ok(())
    }
}

/// The worker's handler for broker messages.
pub struct Handler {
    probe: Probe,
    reports: Arc<Channel>,
    session: Option<Session>,
}

impl Handler {
    pub fn new(probe: Probe, reports: Channel) -> Self {
        Self {
            probe,
            reports: Arc::new(reports),
            session: None,
        }
    }

    pub fn handle(&mut self, msg: BrokerMsg, fds: Vec<OwnedFd>) -> HandlerResult {
        match msg {
            BrokerMsg::StartEncode {
                params,
                pool,
                generation,
            } => {
                // The old session's threads end (and its fds close) before the new one starts.
                self.session = None;
                let started = Parts::from_fds(params, pool, generation, fds)
                    .and_then(|parts| start(parts, &self.probe, self.reports.clone()));
                match started {
                    Ok(session) => self.session = Some(session),
                    Err(message) => {
                        eprintln!("lumen-encode: session {generation} cannot start: {message}");
                        self.reports
                            .send(
                                &WorkerMsg::SessionFailed {
                                    generation,
                                    message,
                                },
                                &[],
                            )
                            .map_err(|e| format!("reporting to the broker: {e}"))?;
                    }
                }
                Ok(())
            }
            BrokerMsg::StopSession if fds.is_empty() => {
                self.session = None;
                Ok(())
            }
            BrokerMsg::StopSession => Err(format!("{} unexpected fds with StopSession", fds.len())),
            other => Err(format!("unexpected message {other:?}")),
        }
    }

    #[cfg(test)]
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }
}
