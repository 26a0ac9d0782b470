//! The capture session: what the worker does with `StartCapture` and `StopSession`, the threads
//! of a running session, and what it reports to the broker (`SessionStarted`, `SessionStats` about
//! once a second, `SessionFailed`).
//!
//! A session that cannot start or fails while running is reported with `SessionFailed` and the
//! worker stays up for the next one; only a message the capture worker never takes (or a control
//! message with fds attached) ends the worker, as [`lumen_ipc::worker::serve`] does for any worker.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use lumen_ipc::channel::Channel;
use lumen_ipc::fdcheck;
use lumen_ipc::frame_pool::FramePool;
use lumen_ipc::media::{
    CaptureSource, FramePoolSpec, Generation, MediaStats, PixelFormat, SessionParams,
};
use lumen_ipc::msg::{BrokerMsg, WorkerMsg};
use lumen_ipc::ring::{monotonic_ns, Producer};
use lumen_ipc::worker::HandlerResult;
use rustix::fs::SealFlags;

use crate::sink::{plane_layout, AudioSink, Counters, VideoSink};

/// What the worker loads before lock-down and keeps for its lifetime.
pub struct Prepared {
    /// PipeWire's loop, context and plugins; why not, when they could not be loaded (the test
    /// pattern still works then, and a PipeWire session fails with this message).
    pipewire: Result<crate::pipewire::Prepared, String>,
}

/// Runs before lock-down, while files can still be opened.
pub fn prepare() -> Result<Prepared, String> {
    // rustix finds the vDSO's clock_gettime through the aux vector, read once on the first clock
    // read with prctl(PR_GET_AUXV) (or /proc/self/auxv): both are closed after lock-down, so the
    // first read happens here and the session threads' reads later are plain vDSO calls.
    let _ = monotonic_ns();
    let pipewire = crate::pipewire::preload().map_err(|e| e.to_string());
    if let Err(why) = &pipewire {
        eprintln!("lumen-capture: {why}");
    }
    Ok(Prepared { pipewire })
}

/// Longest a session thread sleeps before looking at the stop flag again (bounds how long a stop
/// waits for a thread at a low frame rate).
const STOP_POLL_NS: u64 = 50_000_000;

/// How often the session reports its counters.
const STATS_INTERVAL_NS: u64 = 1_000_000_000;

/// What every thread of one session shares: its generation, the stop flag, the report channel
/// and the counters.
pub struct Shared {
    generation: Generation,
    stop: AtomicBool,
    reports: Arc<Channel>,
    /// Held while sending `SessionStarted` or `SessionFailed`, so a thread failing at once cannot
    /// report before the start is announced, nor the start be announced after a failure.
    report_order: Mutex<()>,
    pub counters: Arc<Counters>,
    /// What produces the pictures, for `MediaStats::component`; a source may refine it once it
    /// knows the negotiated format.
    pub component: Mutex<String>,
}

impl Shared {
    fn new(generation: Generation, reports: Arc<Channel>) -> Shared {
        Shared {
            generation,
            stop: AtomicBool::new(false),
            reports,
            report_order: Mutex::new(()),
            counters: Arc::new(Counters::default()),
            component: Mutex::new(String::new()),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Ends the session because of `message`: the first failure is reported as `SessionFailed`
    /// and stops every thread of the session; a failure while the session is already stopping
    /// (after a stop or an earlier failure) goes to stderr only.
    pub fn fail(&self, message: String) {
        let _order = self.report_order.lock();
        if self.stop.swap(true, Ordering::AcqRel) {
            eprintln!("lumen-capture: session {}: {message}", self.generation);
            return;
        }
        eprintln!(
            "lumen-capture: session {} failed: {message}",
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

    /// Reports `SessionStarted`, unless a thread of the session failed already (then its
    /// `SessionFailed` is the only word about it).
    fn announce_started(&self) {
        let _order = self.report_order.lock();
        if self.stopping() {
            return;
        }
        let started = WorkerMsg::SessionStarted {
            generation: self.generation,
        };
        if let Err(e) = self.reports.send(&started, &[]) {
            eprintln!("lumen-capture: reporting session {}: {e}", self.generation);
        }
    }

    fn stats(&self) -> MediaStats {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        MediaStats {
            frames: load(&self.counters.frames),
            dropped: load(&self.counters.dropped),
            repeated: 0,
            audio_packets: load(&self.counters.audio_packets),
            component: self.component.lock().map(|c| c.clone()).unwrap_or_default(),
        }
    }
}

/// Sleeps until CLOCK_MONOTONIC reaches `deadline_ns` (absolute, so no drift accumulates), looking
/// at the stop flag at least every [`STOP_POLL_NS`]. Returns false when the session is stopping.
pub fn sleep_until(deadline_ns: u64, shared: &Shared) -> bool {
    loop {
        if shared.stopping() {
            return false;
        }
        let now = monotonic_ns();
        if now >= deadline_ns {
            return true;
        }
        let wake = deadline_ns.min(now + STOP_POLL_NS);
        let request = rustix::time::Timespec {
            tv_sec: (wake / 1_000_000_000) as i64,
            tv_nsec: (wake % 1_000_000_000) as i64,
        };
        // EINTR (or any error) just loops: the deadline is absolute.
        let _ =
            rustix::thread::clock_nanosleep_absolute(rustix::time::ClockId::Monotonic, &request);
    }
}

/// Absolute deadlines `start + n × num / den` nanoseconds (`num / den`: the period, kept as a
/// fraction so 60 fps does not drift by the rounding of 16 666 666.67 ns).
pub struct Pacer {
    start: u64,
    num: u64,
    den: u64,
    n: u64,
}

impl Pacer {
    pub fn new(start: u64, num: u64, den: u64) -> Pacer {
        Pacer {
            start,
            num,
            den: den.max(1),
            n: 0,
        }
    }

    fn at(&self, n: u64) -> u64 {
        let offset = u128::from(n) * u128::from(self.num) / u128::from(self.den);
        self.start
            .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// The current deadline.
    pub fn deadline(&self) -> u64 {
        self.at(self.n)
    }

    /// How many periods after the start the current deadline is.
    pub fn index(&self) -> u64 {
        self.n
    }

    /// Moves to the next deadline, however late `now` is (for sources that must catch up).
    pub fn step(&mut self) {
        self.n += 1;
    }

    /// Moves to the next deadline; when `now` is already past it, skips to the first deadline not
    /// yet passed rather than catching up in a burst.
    pub fn advance(&mut self, now: u64) {
        self.n += 1;
        if self.deadline() < now && self.num > 0 {
            let elapsed = u128::from(now - self.start) * u128::from(self.den);
            let k = elapsed.div_ceil(u128::from(self.num));
            self.n = u64::try_from(k).unwrap_or(u64::MAX).max(self.n);
        }
    }
}

/// A running session: its threads, and values whose drop stops a source (e.g. a PipeWire loop).
struct Session {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    guards: Vec<Box<dyn Send>>,
}

impl Session {
    /// Stops every thread of the session and waits for them.
    fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.guards.clear();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!(
                    "lumen-capture: a thread of session {} panicked",
                    self.shared.generation
                );
            }
        }
    }
}

/// What a started source leaves running.
#[derive(Default)]
struct Running {
    threads: Vec<JoinHandle<()>>,
    guards: Vec<Box<dyn Send>>,
}

/// The fds of a `StartCapture`, checked and turned into the session's ends.
struct Ends {
    video: VideoSink,
    audio: AudioSink,
    /// The PipeWire remote (for [`CaptureSource::PipeWire`] only).
    remote: Option<OwnedFd>,
}

/// Number of fds `StartCapture` carries for `source`.
fn expected_fds(source: &CaptureSource) -> usize {
    match source {
        CaptureSource::TestPattern => 4,
        CaptureSource::PipeWire { .. } => 5,
    }
}

fn take_ends(
    params: &SessionParams,
    pool: FramePoolSpec,
    source: &CaptureSource,
    generation: Generation,
    fds: Vec<OwnedFd>,
    counters: &Arc<Counters>,
) -> Result<Ends, String> {
    let expected = expected_fds(source);
    if fds.len() != expected {
        return Err(format!(
            "StartCapture carries {} fds, {expected} expected (frame pool, frame channel, PCM ring, PCM doorbell{})",
            fds.len(),
            if expected == 5 { ", PipeWire remote" } else { "" }
        ));
    }
    let mut fds = fds.into_iter();
    let mut next = || fds.next().ok_or_else(|| "an fd went missing".to_string());
    let (pool_fd, channel_fd, pcm_fd, doorbell_fd) = (next()?, next()?, next()?, next()?);
    let remote = match source {
        CaptureSource::PipeWire { .. } => Some(next()?),
        CaptureSource::TestPattern => None,
    };

    fdcheck::expect_memfd(
        pool_fd.as_fd(),
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .map_err(|e| format!("frame pool fd: {e}"))?;
    let pool = FramePool::map(pool_fd, pool, true).map_err(|e| format!("frame pool: {e}"))?;
    let channel =
        Channel::from_fd(channel_fd).map_err(|e| format!("frame channel to encode: {e}"))?;
    let ring =
        Producer::attach(pcm_fd, doorbell_fd, generation).map_err(|e| format!("PCM ring: {e}"))?;
    if let Some(remote) = &remote {
        fdcheck::expect_socket(
            remote.as_fd(),
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            Some(false),
        )
        .map_err(|e| format!("PipeWire remote fd: {e}"))?;
    }
    let audio = AudioSink::new(
        ring,
        params.audio.channels(),
        params.audio_samples_per_packet(),
        counters.clone(),
    )
    .map_err(|e| e.to_string())?;
    Ok(Ends {
        video: VideoSink::new(pool, channel, counters.clone()),
        audio,
        remote,
    })
}

/// The worker's state between messages.
pub struct Worker {
    prepared: Prepared,
    reports: Arc<Channel>,
    session: Option<Session>,
}

impl Worker {
    pub fn new(prepared: Prepared, reports: Channel) -> Worker {
        Worker {
            prepared,
            reports: Arc::new(reports),
            session: None,
        }
    }

    /// The broker's messages other than `Ping` and `Shutdown` (see [`lumen_ipc::worker::serve`]).
    pub fn handle(&mut self, msg: BrokerMsg, fds: Vec<OwnedFd>) -> HandlerResult {
        match msg {
            BrokerMsg::StartCapture {
                params,
                pool,
                source,
                generation,
            } => {
                self.stop_session();
                let shared = Arc::new(Shared::new(generation, self.reports.clone()));
                match self.start(&params, pool, &source, generation, fds, &shared) {
                    Ok(session) => self.session = Some(session),
                    Err(message) => shared.fail(message),
                }
                Ok(())
            }
            BrokerMsg::StopSession if fds.is_empty() => {
                self.stop_session();
                Ok(())
            }
            BrokerMsg::StopSession => Err(format!("{} unexpected fds with StopSession", fds.len())),
            other => Err(format!("unexpected message {other:?}")),
        }
    }

    fn stop_session(&mut self) {
        if let Some(session) = self.session.take() {
            session.stop();
        }
    }

    fn start(
        &self,
        params: &SessionParams,
        pool: FramePoolSpec,
        source: &CaptureSource,
        generation: Generation,
        fds: Vec<OwnedFd>,
        shared: &Arc<Shared>,
    ) -> Result<Session, String> {
        params
            .validate()
            .map_err(|e| format!("session parameters: {e}"))?;
        let ends = take_ends(params, pool, source, generation, fds, &shared.counters)?;
        let running = self.start_source(params, source, ends, shared)?;
        let mut session = Session {
            shared: shared.clone(),
            threads: running.threads,
            guards: running.guards,
        };
        shared.announce_started();
        match spawn_stats(shared.clone()) {
            Ok(thread) => session.threads.push(thread),
            Err(e) => shared.fail(format!("starting the stats thread: {e}")),
        }
        Ok(session)
    }

    fn start_source(
        &self,
        params: &SessionParams,
        source: &CaptureSource,
        ends: Ends,
        shared: &Arc<Shared>,
    ) -> Result<Running, String> {
        match source {
            CaptureSource::TestPattern => start_test_source(params, ends, shared),
            CaptureSource::PipeWire {
                video_node,
                audio_node,
            } => {
                let prepared = self.prepared.pipewire.as_ref().map_err(Clone::clone)?;
                let remote = ends
                    .remote
                    .ok_or("a PipeWire session without a PipeWire remote fd")?;
                if let Ok(mut component) = shared.component.lock() {
                    *component = format!("pipewire {video_node} (negotiating)");
                }
                let (failing, describing) = (shared.clone(), shared.clone());
                let capture = crate::pipewire::start(
                    prepared,
                    remote,
                    video_node,
                    audio_node.as_deref(),
                    *params,
                    Arc::new(Mutex::new(ends.video)),
                    Arc::new(Mutex::new(ends.audio)),
                    move |message| failing.fail(message),
                    move |component| {
                        if let Ok(mut slot) = describing.component.lock() {
                            *slot = component;
                        }
                    },
                )
                .map_err(|e| e.to_string())?;
                Ok(Running {
                    threads: Vec::new(),
                    guards: vec![Box::new(capture)],
                })
            }
        }
    }
}

/// The test pattern and the test tone, each on its own thread.
fn start_test_source(
    params: &SessionParams,
    ends: Ends,
    shared: &Arc<Shared>,
) -> Result<Running, String> {
    let (w, h) = (params.width, params.height);
    plane_layout(PixelFormat::Nv12, w, h, ends.video.spec().slot_bytes)
        .map_err(|e| format!("test pattern: {e}"))?;
    if let Ok(mut component) = shared.component.lock() {
        *component = format!("test-pattern NV12 {w}x{h}@{}", params.fps);
    }
    let mut running = Running::default();
    let video = crate::test_pattern::spawn(ends.video, w, h, params.fps, shared.clone())
        .map_err(|e| format!("starting the test pattern thread: {e}"))?;
    running.threads.push(video);
    match crate::tone::spawn(
        ends.audio,
        params.audio_samples_per_packet(),
        params.audio_packet_ms,
        shared.clone(),
    ) {
        Ok(audio) => running.threads.push(audio),
        Err(e) => {
            Session {
                shared: shared.clone(),
                threads: running.threads,
                guards: Vec::new(),
            }
            .stop();
            return Err(format!("starting the test tone thread: {e}"));
        }
    }
    Ok(running)
}

/// Sends `SessionStats` every [`STATS_INTERVAL_NS`] until the session stops.
fn spawn_stats(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("capture-stats".into())
        .spawn(move || {
            let mut pacer = Pacer::new(monotonic_ns(), STATS_INTERVAL_NS, 1);
            pacer.advance(monotonic_ns());
            while sleep_until(pacer.deadline(), &shared) {
                let msg = WorkerMsg::SessionStats {
                    generation: shared.generation,
                    stats: shared.stats(),
                };
                if shared.reports.send(&msg, &[]).is_err() {
                    // The broker is gone; the worker ends when its control channel closes.
                    return;
                }
                pacer.advance(monotonic_ns());
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use lumen_core::pattern::read_code;
    use lumen_ipc::frame_pool::{create_pool, read_only_fd, round_slot_bytes};
    use lumen_ipc::media::{
        AudioLayout, CaptureToEncode, EncodeToCapture, FrameDesc, VideoCodec, PCM_RING_BYTES,
    };
    use lumen_ipc::ring::{create_ring, Consumer, TS_CAPTURED};

    fn params() -> SessionParams {
        SessionParams {
            width: 640,
            height: 360,
            fps: 60,
            bitrate_kbps: 1000,
            codec: VideoCodec::H264,
            audio: AudioLayout::Stereo,
            audio_packet_ms: 5,
        }
    }

    fn pool_spec(p: &SessionParams) -> FramePoolSpec {
        FramePoolSpec {
            slots: 4,
            slot_bytes: round_slot_bytes(u64::from(p.width * p.height) * 2),
        }
    }

    /// The broker's and encode's side of one session: what `StartCapture` carries, and the ends
    /// the test reads.
    struct Peer {
        fds: Vec<OwnedFd>,
        pool: FramePool,
        encode: Channel,
        pcm: Consumer,
    }

    fn peer(spec: FramePoolSpec, generation: Generation) -> Peer {
        let memfd = create_pool("test-pool", &spec).unwrap();
        let pool = FramePool::map(read_only_fd(memfd.as_fd()).unwrap(), spec, false).unwrap();
        let (capture_end, encode_end) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let ring = create_ring("pcm", PCM_RING_BYTES, generation).unwrap();
        let pcm = Consumer::attach(
            ring.memfd.try_clone().unwrap(),
            ring.doorbell.try_clone().unwrap(),
            generation,
        )
        .unwrap();
        Peer {
            fds: vec![memfd, capture_end, ring.memfd, ring.doorbell],
            pool,
            encode: Channel::from_fd(encode_end).unwrap(),
            pcm,
        }
    }

    fn worker() -> (Worker, Channel) {
        let (ours, theirs) = Channel::pair().unwrap();
        (Worker::new(prepare().unwrap(), ours), theirs)
    }

    fn start(
        worker: &mut Worker,
        p: SessionParams,
        source: CaptureSource,
        gen: u64,
        fds: Vec<OwnedFd>,
    ) {
        let msg = BrokerMsg::StartCapture {
            params: p,
            pool: pool_spec(&p),
            source,
            generation: gen,
        };
        worker
            .handle(msg, fds)
            .expect("a session error never ends the worker");
    }

    /// The next report that is not `SessionStats`.
    fn report(reports: &mut Channel) -> WorkerMsg {
        loop {
            match reports
                .recv_timeout::<WorkerMsg>(Duration::from_secs(5))
                .unwrap()
                .msg
            {
                WorkerMsg::SessionStats { .. } => continue,
                other => return other,
            }
        }
    }

    fn failure(reports: &mut Channel, gen: u64) -> String {
        match report(reports) {
            WorkerMsg::SessionFailed {
                generation,
                message,
            } if generation == gen => message,
            other => panic!("expected SessionFailed for {gen}, got {other:?}"),
        }
    }

    fn next_frame(encode: &mut Channel) -> FrameDesc {
        let CaptureToEncode::Frame(desc) = encode.recv_timeout(Duration::from_secs(2)).unwrap().msg;
        desc
    }

    #[test]
    fn test_pattern_session_sends_coded_frames_pcm_and_stats_then_stops() {
        let p = params();
        let (mut worker, mut reports) = worker();
        let mut peer = peer(pool_spec(&p), 7);
        start(
            &mut worker,
            p,
            CaptureSource::TestPattern,
            7,
            std::mem::take(&mut peer.fds),
        );
        assert_eq!(
            report(&mut reports),
            WorkerMsg::SessionStarted { generation: 7 }
        );

        let started = Instant::now();
        let mut last_seq = None;
        let mut frames = 0;
        while started.elapsed() < Duration::from_millis(500) {
            let desc = next_frame(&mut peer.encode);
            desc.check(&pool_spec(&p)).unwrap();
            assert_eq!(
                (desc.width, desc.height, desc.format),
                (640, 360, PixelFormat::Nv12)
            );
            let stride = desc.planes[0].stride as usize;
            let mut luma = vec![0u8; stride * 360];
            assert!(peer
                .pool
                .copy_out(desc.slot, desc.planes[0].offset as usize, &mut luma));
            let code = read_code(&luma, stride, 640, 360).expect("frame code");
            assert_eq!(u64::from(code.frame), desc.seq);
            assert_eq!(code.captured_us, (desc.captured_ns / 1000) as u32);
            if let Some(last) = last_seq {
                assert!(desc.seq > last);
            }
            last_seq = Some(desc.seq);
            frames += 1;
            peer.encode
                .send(&EncodeToCapture::Release { slot: desc.slot }, &[])
                .unwrap();
        }
        // 60 fps for half a second; generous for a loaded machine.
        assert!((15..=40).contains(&frames), "{frames} frames in 500 ms");

        // PCM: 5 ms packets of 240 stereo frames, numbered and timed back to back.
        let mut packets = Vec::new();
        while let Some(view) = peer.pcm.next().unwrap() {
            packets.push((
                view.meta().seq,
                view.meta().timestamps[TS_CAPTURED],
                view.len(),
            ));
            view.release();
        }
        assert!(
            packets.len() >= 40,
            "{} PCM packets in 500 ms",
            packets.len()
        );
        for pair in packets.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 1);
            assert_eq!(pair[1].1 - pair[0].1, 5_000_000);
        }
        assert!(packets.iter().all(|p| p.2 == 240 * 2 * 4));

        let stats = match reports
            .recv_timeout::<WorkerMsg>(Duration::from_secs(3))
            .unwrap()
            .msg
        {
            WorkerMsg::SessionStats {
                generation: 7,
                stats,
            } => stats,
            other => panic!("unexpected {other:?}"),
        };
        assert!(stats.frames > 0 && stats.audio_packets > 0, "{stats:?}");
        assert_eq!(stats.component, "test-pattern NV12 640x360@60");

        let stopping = Instant::now();
        worker.handle(BrokerMsg::StopSession, Vec::new()).unwrap();
        assert!(stopping.elapsed() < Duration::from_millis(500));
        // Capture's end is closed once the session's threads are gone.
        loop {
            match peer
                .encode
                .recv_timeout::<CaptureToEncode>(Duration::from_secs(1))
            {
                Ok(_) => continue,
                Err(lumen_ipc::channel::ChannelError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_new_start_replaces_the_running_session() {
        let p = params();
        let (mut worker, mut reports) = worker();
        let mut first = peer(pool_spec(&p), 1);
        start(
            &mut worker,
            p,
            CaptureSource::TestPattern,
            1,
            std::mem::take(&mut first.fds),
        );
        assert_eq!(
            report(&mut reports),
            WorkerMsg::SessionStarted { generation: 1 }
        );
        next_frame(&mut first.encode);

        let p2 = SessionParams {
            width: 1280,
            height: 720,
            fps: 30,
            audio: AudioLayout::Surround71,
            audio_packet_ms: 10,
            ..p
        };
        let mut second = peer(pool_spec(&p2), 2);
        start(
            &mut worker,
            p2,
            CaptureSource::TestPattern,
            2,
            std::mem::take(&mut second.fds),
        );
        assert_eq!(
            report(&mut reports),
            WorkerMsg::SessionStarted { generation: 2 }
        );
        let desc = next_frame(&mut second.encode);
        assert_eq!((desc.seq, desc.width, desc.height), (0, 1280, 720));
        loop {
            match first.encode.try_recv::<CaptureToEncode>() {
                Ok(Some(_)) => continue,
                Err(lumen_ipc::channel::ChannelError::Closed) => break,
                other => panic!("the first session still runs: {other:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        let view = second.pcm.next().unwrap().expect("PCM of the new session");
        assert_eq!(view.len(), 480 * 8 * 4);
    }

    #[test]
    fn bad_starts_fail_the_session_not_the_worker() {
        let p = params();
        let (mut worker, mut reports) = worker();

        let mut short = peer(pool_spec(&p), 3);
        short.fds.pop();
        start(&mut worker, p, CaptureSource::TestPattern, 3, short.fds);
        assert!(failure(&mut reports, 3).contains("3 fds, 4 expected"));

        let bad = SessionParams { width: 641, ..p };
        let mut odd = peer(pool_spec(&p), 4);
        start(
            &mut worker,
            bad,
            CaptureSource::TestPattern,
            4,
            std::mem::take(&mut odd.fds),
        );
        assert!(failure(&mut reports, 4).contains("session parameters"));

        // A pipe where the frame pool belongs.
        let mut swapped = peer(pool_spec(&p), 5);
        let (pipe, _) = rustix::pipe::pipe().unwrap();
        swapped.fds[0] = pipe;
        start(&mut worker, p, CaptureSource::TestPattern, 5, swapped.fds);
        assert!(failure(&mut reports, 5).contains("frame pool fd"));

        // A ring of another generation.
        let mut stale = peer(pool_spec(&p), 5);
        start(
            &mut worker,
            p,
            CaptureSource::TestPattern,
            6,
            std::mem::take(&mut stale.fds),
        );
        assert!(failure(&mut reports, 6).contains("PCM ring"));

        // A pool too small for the picture.
        let tiny = FramePoolSpec {
            slots: 2,
            slot_bytes: 4096,
        };
        let mut small = peer(tiny, 8);
        let msg = BrokerMsg::StartCapture {
            params: p,
            pool: tiny,
            source: CaptureSource::TestPattern,
            generation: 8,
        };
        worker.handle(msg, std::mem::take(&mut small.fds)).unwrap();
        assert!(failure(&mut reports, 8).contains("does not fit"));

        // And the worker still runs a good session afterwards.
        let mut good = peer(pool_spec(&p), 9);
        start(
            &mut worker,
            p,
            CaptureSource::TestPattern,
            9,
            std::mem::take(&mut good.fds),
        );
        assert_eq!(
            report(&mut reports),
            WorkerMsg::SessionStarted { generation: 9 }
        );
        next_frame(&mut good.encode);
    }

    /// A PipeWire remote whose server hangs up fails the session with a message naming PipeWire
    /// (the capture's own tests, in `pipewire/tests.rs`, run a real PipeWire).
    #[test]
    fn a_pipewire_remote_that_hangs_up_fails_the_session() {
        let p = params();
        let (mut worker, mut reports) = worker();
        let mut pw = peer(pool_spec(&p), 1);
        let (remote, server) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        drop(server);
        pw.fds.push(remote);
        let source = CaptureSource::PipeWire {
            video_node: "42".into(),
            audio_node: None,
        };
        start(&mut worker, p, source, 1, std::mem::take(&mut pw.fds));
        let message = match report(&mut reports) {
            WorkerMsg::SessionStarted { generation: 1 } => failure(&mut reports, 1),
            WorkerMsg::SessionFailed {
                generation: 1,
                message,
            } => message,
            other => panic!("expected the session to fail, got {other:?}"),
        };
        assert!(message.contains("PipeWire"), "{message}");
    }

    #[test]
    fn a_misbehaving_encoder_fails_the_session() {
        let p = params();
        let (mut worker, mut reports) = worker();
        let mut peer = peer(pool_spec(&p), 2);
        start(
            &mut worker,
            p,
            CaptureSource::TestPattern,
            2,
            std::mem::take(&mut peer.fds),
        );
        assert_eq!(
            report(&mut reports),
            WorkerMsg::SessionStarted { generation: 2 }
        );
        let desc = next_frame(&mut peer.encode);
        let bogus = (desc.slot + 1) % 4;
        // Only `desc.slot` and maybe later ones are encode's; release one capture never sent.
        peer.encode
            .send(&EncodeToCapture::Release { slot: 15 }, &[])
            .unwrap();
        let _ = bogus;
        assert!(failure(&mut reports, 2).contains("slot 15"));
        worker.handle(BrokerMsg::StopSession, Vec::new()).unwrap();
    }

    #[test]
    fn messages_for_other_workers_are_refused() {
        let (mut worker, _reports) = worker();
        let p = params();
        assert!(worker
            .handle(
                BrokerMsg::StartEncode {
                    params: p,
                    pool: pool_spec(&p),
                    generation: 1
                },
                Vec::new()
            )
            .is_err());
        let (pipe, _) = rustix::pipe::pipe().unwrap();
        assert!(worker.handle(BrokerMsg::StopSession, vec![pipe]).is_err());
        assert!(worker.handle(BrokerMsg::StopSession, Vec::new()).is_ok());
    }

    #[test]
    fn pacer_keeps_exact_time_and_skips_when_late() {
        let mut pacer = Pacer::new(1_000, 1_000_000_000, 60);
        for _ in 0..60 {
            pacer.advance(0);
        }
        assert_eq!(pacer.deadline(), 1_000 + 1_000_000_000);
        // Woken 3.5 periods late: the next deadline is the first still ahead, not a burst.
        let mut pacer = Pacer::new(0, 10, 1);
        pacer.advance(0);
        assert_eq!(pacer.deadline(), 10);
        pacer.advance(45);
        assert_eq!((pacer.index(), pacer.deadline()), (5, 50));
        pacer.advance(50);
        assert_eq!(pacer.deadline(), 60);
    }
}
