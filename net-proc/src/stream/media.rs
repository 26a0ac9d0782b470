//! The video and audio senders of a stream: one thread each, reading the encoder's rings and
//! sending to the address the client's pings came from (protocol notes §6.1, §7).
//!
//! Each thread waits on its LAN socket (client pings) and its ring's doorbell at once, with a short
//! timeout so a stop or a new ring generation is noticed without a wake-up fd. Rings arrive with
//! [`MediaStreams::attach_rings`] (the fds of `BrokerMsg::StreamRings`); a newer generation
//! replaces the old rings for both threads, and every attach asks the encoder for an IDR. A ring
//! that breaks its protocol (`RingError`) is dropped with a counted error; the thread then waits
//! for the next generation.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use lumen_core::audio_packetizer::{AudioPacketizer, AudioStreamConfig};
use lumen_core::video_packetizer::{VideoError, VideoPacketizer, VideoStreamConfig};
use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::fdcheck;
use lumen_ipc::media::EncoderControl;
use lumen_ipc::ring::{Consumer, RingError};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SocketType};

use super::{audio, video};

/// How long a sender thread blocks before it looks at the stop flag and for new rings again.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Number of fds in `BrokerMsg::StreamRings`.
pub const STREAM_RING_FDS: usize = 5;

/// What a stream's senders are given when the stream starts.
pub struct MediaConfig {
    /// The broker's video UDP socket (unconnected; the client pings it).
    pub video_socket: OwnedFd,
    /// The broker's audio UDP socket (unconnected; the client pings it).
    pub audio_socket: OwnedFd,
    /// The `X-SS-Ping-Payload` sent in the SETUP replies.
    pub ping_payload: [u8; 16],
    /// Packet size, FEC and encryption of the video stream (from ANNOUNCE and /launch).
    pub video: VideoStreamConfig,
    /// Packet duration and encryption of the audio stream.
    pub audio: AudioStreamConfig,
    /// Frames per second: each frame's datagrams are paced over 1/fps.
    pub fps: u32,
}

/// Without the keys: a config may end up in a log line.
impl std::fmt::Debug for MediaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaConfig")
            .field("video_socket", &self.video_socket)
            .field("audio_socket", &self.audio_socket)
            .field("packet_size", &self.video.packet_size)
            .field("fec", &self.video.fec)
            .field("video_encrypted", &self.video.encryption.is_some())
            .field("audio_packet_ms", &self.audio.packet_duration_ms)
            .field("audio_encrypted", &self.audio.encryption.is_some())
            .field("fps", &self.fps)
            .finish_non_exhaustive()
    }
}

/// Why the senders could not start or take rings.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A socket handed over is not a UDP socket.
    #[error("{which} socket: {source}")]
    Socket {
        which: &'static str,
        #[source]
        source: fdcheck::FdCheckError,
    },
    /// The video settings are unusable.
    #[error("video settings: {0}")]
    Video(#[from] VideoError),
    /// `fps` is 0.
    #[error("a stream of 0 fps")]
    Fps,
    /// A sender thread could not be started.
    #[error("spawning the {which} thread: {source}")]
    Spawn {
        which: &'static str,
        #[source]
        source: io::Error,
    },
    /// `StreamRings` carried the wrong number of fds.
    #[error("StreamRings carries {0} fds, expected {STREAM_RING_FDS}")]
    FdCount(usize),
    /// A ring fd was refused (wrong kind, seals, size, header or generation).
    #[error("{which} ring: {source}")]
    Ring {
        which: &'static str,
        #[source]
        source: RingError,
    },
    /// The control channel fd was refused, or a send on it failed.
    #[error("encoder control channel: {0}")]
    Control(#[from] ChannelError),
    /// Rings of a generation not newer than the ones attached.
    #[error("rings of generation {generation} are not newer than generation {current}")]
    StaleGeneration { generation: u64, current: u64 },
}

/// Counters of a stream's senders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// The ring generation in use (the newest attached).
    pub generation: Option<u64>,
    /// Video frames sent.
    pub video_frames: u64,
    /// Video datagrams sent (data and parity).
    pub video_datagrams: u64,
    /// Video bytes sent (UDP payload).
    pub video_bytes: u64,
    /// Frames read but not sent: before the client's first ping, or while waiting for a keyframe
    /// (after a discontinuity, a new ring or a frame that could not be packetized).
    pub video_frames_skipped: u64,
    /// Records the encoder dropped because the video ring was full (the producer's count, summed
    /// over ring generations).
    pub video_ring_drops: u64,
    /// Records that arrived with `FLAG_DISCONTINUITY`.
    pub video_discontinuities: u64,
    /// Frames the packetizer refused (e.g. larger than 4 FEC blocks hold).
    pub video_packetize_errors: u64,
    /// Opus packets sent.
    pub audio_packets: u64,
    /// Audio datagrams sent (data and FEC).
    pub audio_datagrams: u64,
    /// Audio bytes sent (UDP payload).
    pub audio_bytes: u64,
    /// Opus packets read but not sent (no client yet, or refused by the packetizer).
    pub audio_packets_skipped: u64,
    /// Records the encoder dropped because the audio ring was full (summed over generations).
    pub audio_ring_drops: u64,
    /// Rings dropped because they broke the ring protocol (video and audio).
    pub ring_errors: u64,
    /// Send calls the kernel refused (video and audio).
    pub send_errors: u64,
    /// IDR requests sent to the encoder.
    pub idr_requests: u64,
    /// IDR requests that could not be sent (channel full or closed).
    pub idr_request_errors: u64,
    /// Pings accepted on the video socket.
    pub video_pings: u64,
    /// Pings accepted on the audio socket.
    pub audio_pings: u64,
    /// Datagrams on the video socket that were no ping of this session.
    pub video_foreign_datagrams: u64,
    /// Datagrams on the audio socket that were no ping of this session.
    pub audio_foreign_datagrams: u64,
    /// Where video goes (the source of the client's video pings).
    pub video_client: Option<SocketAddr>,
    /// Where audio goes (the source of the client's audio pings).
    pub audio_client: Option<SocketAddr>,
}

/// Counters the threads update; [`MediaStreams::stats`] reads them.
#[derive(Default)]
pub(super) struct Counters {
    pub video_frames: AtomicU64,
    pub video_datagrams: AtomicU64,
    pub video_bytes: AtomicU64,
    pub video_frames_skipped: AtomicU64,
    pub video_ring_drops: AtomicU64,
    pub video_discontinuities: AtomicU64,
    pub video_packetize_errors: AtomicU64,
    pub audio_packets: AtomicU64,
    pub audio_datagrams: AtomicU64,
    pub audio_bytes: AtomicU64,
    pub audio_packets_skipped: AtomicU64,
    pub audio_ring_drops: AtomicU64,
    pub ring_errors: AtomicU64,
    pub send_errors: AtomicU64,
    pub idr_requests: AtomicU64,
    pub idr_request_errors: AtomicU64,
    pub video_pings: AtomicU64,
    pub audio_pings: AtomicU64,
    pub video_foreign_datagrams: AtomicU64,
    pub audio_foreign_datagrams: AtomicU64,
}

/// Adds `n` to a counter.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Rings attached but not yet taken by their thread.
#[derive(Default)]
struct Pending {
    video: Option<(u64, Consumer)>,
    audio: Option<(u64, Consumer)>,
}

/// What the handle and both threads share.
pub(super) struct Shared {
    stop: AtomicBool,
    /// Set when `pending` holds rings for the video / audio thread (checked without the lock).
    video_pending: AtomicBool,
    audio_pending: AtomicBool,
    pending: Mutex<Pending>,
    generation: Mutex<Option<u64>>,
    control: Mutex<Option<Channel>>,
    pub counters: Counters,
    video_client: Mutex<Option<SocketAddr>>,
    audio_client: Mutex<Option<SocketAddr>>,
}

/// A poisoned lock only means another thread panicked while holding it; the data is still
/// consistent (plain values), so go on rather than panic as well.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            video_pending: AtomicBool::new(false),
            audio_pending: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            generation: Mutex::new(None),
            control: Mutex::new(None),
            counters: Counters::default(),
            video_client: Mutex::new(None),
            audio_client: Mutex::new(None),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Asks the encoder for an IDR. Without a control channel yet there is nothing to do: every
    /// attach asks for one.
    pub fn request_idr(&self) -> Result<(), StreamError> {
        let control = lock(&self.control);
        let Some(channel) = control.as_ref() else {
            return Ok(());
        };
        match channel.send(&EncoderControl::RequestIdr, &[]) {
            Ok(()) => {
                add(&self.counters.idr_requests, 1);
                Ok(())
            }
            Err(e) => {
                add(&self.counters.idr_request_errors, 1);
                Err(e.into())
            }
        }
    }

    /// [`Shared::request_idr`] for the threads, which can only count a failure.
    pub fn request_idr_quietly(&self) {
        let _ = self.request_idr();
    }

    /// Whether newer rings wait for `kind`'s thread: it stops reading the old ones.
    pub fn ring_waiting(&self, kind: Kind) -> bool {
        match kind {
            Kind::Video => &self.video_pending,
            Kind::Audio => &self.audio_pending,
        }
        .load(Ordering::Relaxed)
    }

    /// The rings attached for `kind` since the thread last looked, if any.
    fn take_ring(&self, kind: Kind) -> Option<(u64, Consumer)> {
        let flag = match kind {
            Kind::Video => &self.video_pending,
            Kind::Audio => &self.audio_pending,
        };
        if !flag.swap(false, Ordering::Acquire) {
            return None;
        }
        let mut pending = lock(&self.pending);
        match kind {
            Kind::Video => pending.video.take(),
            Kind::Audio => pending.audio.take(),
        }
    }

    fn set_client(&self, kind: Kind, addr: SocketAddr) {
        let slot = match kind {
            Kind::Video => &self.video_client,
            Kind::Audio => &self.audio_client,
        };
        *lock(slot) = Some(addr);
    }
}

/// Which of the two streams a thread serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Video,
    Audio,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Audio => "audio",
        }
    }
}

/// What a sender thread does with its client and its ring.
pub(super) trait Sink<'s> {
    /// Pings now come from `addr`: send there from now on (on `socket`).
    fn client_changed(&mut self, socket: BorrowedFd<'s>, addr: SocketAddr, shared: &Shared);
    /// A new ring generation replaced the old ring (or came first).
    fn ring_replaced(&mut self, shared: &Shared);
    /// Reads and sends what `ring` holds; returns when it is empty or the stream stops.
    fn drain(&mut self, ring: &mut Consumer, shared: &Shared) -> Result<(), RingError>;
}

/// The sender threads of one stream.
pub struct MediaStreams {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for MediaStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaStreams")
            .field("stats", &self.stats())
            .finish()
    }
}

fn check_udp(fd: BorrowedFd<'_>, which: &'static str) -> Result<(), StreamError> {
    let v4 = fdcheck::expect_socket(fd, AddressFamily::INET, SocketType::DGRAM, None);
    let v6 = fdcheck::expect_socket(fd, AddressFamily::INET6, SocketType::DGRAM, None);
    match (v4, v6) {
        (Err(source), Err(_)) => Err(StreamError::Socket { which, source }),
        _ => Ok(()),
    }
}

impl MediaStreams {
    /// Starts the video and audio threads; they wait for the client's pings and for rings.
    pub fn start(config: MediaConfig) -> Result<MediaStreams, StreamError> {
        check_udp(config.video_socket.as_fd(), "video")?;
        check_udp(config.audio_socket.as_fd(), "audio")?;
        if config.fps == 0 {
            return Err(StreamError::Fps);
        }
        // Built here, before any thread: settings errors reach the caller, and AWS-LC's first use
        // happens on the caller's thread.
        let packetizer = VideoPacketizer::new(&config.video)?;
        let audio_packetizer = AudioPacketizer::new(&config.audio);
        let frame_interval = Duration::from_secs(1) / config.fps;
        let shared = Arc::new(Shared::new());
        let mut streams = MediaStreams {
            shared: shared.clone(),
            threads: Vec::with_capacity(2),
        };
        let payload = config.ping_payload;
        let video_socket = config.video_socket;
        let thread_shared = shared.clone();
        let video = std::thread::Builder::new()
            .name("lumen-net-video".into())
            .spawn(move || {
                let sink = video::VideoSink::new(packetizer, frame_interval);
                run(Kind::Video, &video_socket, payload, sink, &thread_shared);
            })
            .map_err(|source| StreamError::Spawn {
                which: "video",
                source,
            })?;
        streams.threads.push(video);
        let audio_socket = config.audio_socket;
        let thread_shared = shared;
        // On failure `streams` drops here, which stops and joins the video thread.
        let audio = std::thread::Builder::new()
            .name("lumen-net-audio".into())
            .spawn(move || {
                let sink = audio::AudioSink::new(audio_packetizer);
                run(Kind::Audio, &audio_socket, payload, sink, &thread_shared);
            })
            .map_err(|source| StreamError::Spawn {
                which: "audio",
                source,
            })?;
        streams.threads.push(audio);
        Ok(streams)
    }

    /// Takes the fds of `BrokerMsg::StreamRings` (video memfd and doorbell, audio memfd and
    /// doorbell, the encoder control channel) for `generation`, which must be newer than the
    /// rings in use. Both threads switch to the new rings, and the encoder is asked for an IDR.
    pub fn attach_rings(&self, generation: u64, fds: Vec<OwnedFd>) -> Result<(), StreamError> {
        let count = fds.len();
        let Ok::<[OwnedFd; STREAM_RING_FDS], _>(
            [video_mem, video_bell, audio_mem, audio_bell, control],
        ) = fds.try_into()
        else {
            return Err(StreamError::FdCount(count));
        };
        let mut current = lock(&self.shared.generation);
        if let Some(current) = *current {
            if generation <= current {
                return Err(StreamError::StaleGeneration {
                    generation,
                    current,
                });
            }
        }
        let ring = |which, memfd, bell| {
            Consumer::attach(memfd, bell, generation)
                .map_err(|source| StreamError::Ring { which, source })
        };
        let video = ring("video", video_mem, video_bell)?;
        let audio = ring("audio", audio_mem, audio_bell)?;
        let control = Channel::from_fd(control)?;
        // Never block a sender thread (or the caller) on an encoder that stopped reading: a full
        // channel is a failed request, counted, and the next one tries again.
        control.set_nonblocking(true)?;
        *current = Some(generation);
        *lock(&self.shared.control) = Some(control);
        {
            let mut pending = lock(&self.shared.pending);
            pending.video = Some((generation, video));
            pending.audio = Some((generation, audio));
            self.shared.video_pending.store(true, Ordering::Release);
            self.shared.audio_pending.store(true, Ordering::Release);
        }
        drop(current);
        if let Err(e) = self.shared.request_idr() {
            // The rings are in use; a new encoder starts with an IDR anyway.
            eprintln!("lumen-net: IDR request after attaching rings {generation}: {e}");
        }
        Ok(())
    }

    /// Asks the encoder for an IDR (`EncoderControl::RequestIdr`). Before any rings are attached
    /// this does nothing: attaching asks for one.
    pub fn request_idr(&self) -> Result<(), StreamError> {
        self.shared.request_idr()
    }

    /// The senders' counters and the clients' addresses.
    pub fn stats(&self) -> StreamStats {
        let c = &self.shared.counters;
        StreamStats {
            generation: *lock(&self.shared.generation),
            video_frames: read(&c.video_frames),
            video_datagrams: read(&c.video_datagrams),
            video_bytes: read(&c.video_bytes),
            video_frames_skipped: read(&c.video_frames_skipped),
            video_ring_drops: read(&c.video_ring_drops),
            video_discontinuities: read(&c.video_discontinuities),
            video_packetize_errors: read(&c.video_packetize_errors),
            audio_packets: read(&c.audio_packets),
            audio_datagrams: read(&c.audio_datagrams),
            audio_bytes: read(&c.audio_bytes),
            audio_packets_skipped: read(&c.audio_packets_skipped),
            audio_ring_drops: read(&c.audio_ring_drops),
            ring_errors: read(&c.ring_errors),
            send_errors: read(&c.send_errors),
            idr_requests: read(&c.idr_requests),
            idr_request_errors: read(&c.idr_request_errors),
            video_pings: read(&c.video_pings),
            audio_pings: read(&c.audio_pings),
            video_foreign_datagrams: read(&c.video_foreign_datagrams),
            audio_foreign_datagrams: read(&c.audio_foreign_datagrams),
            video_client: *lock(&self.shared.video_client),
            audio_client: *lock(&self.shared.audio_client),
        }
    }

    /// Stops both threads and waits for them (at most about one poll interval plus one frame's
    /// pacing).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for MediaStreams {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("lumen-net: a media sender thread panicked");
            }
        }
    }
}

/// A client ping (§6.1): the session's 16-byte payload and a BE counter, or the legacy `PING`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ping {
    Payload(u32),
    Legacy,
}

/// Reads a datagram of `len` bytes (the full length, even if `buf` got fewer) as a ping.
pub(super) fn parse_ping(buf: &[u8], len: usize, payload: &[u8; 16]) -> Option<Ping> {
    match (len, buf) {
        (20, [head @ .., a, b, c, d]) if head == payload => {
            Some(Ping::Payload(u32::from_be_bytes([*a, *b, *c, *d])))
        }
        (4, b"PING") => Some(Ping::Legacy),
        _ => None,
    }
}

/// The client's address as the pings show it. A new address takes over only with a ping counter
/// above the last one seen (a roaming client keeps counting; a replayed ping does not). Legacy
/// `PING`s carry nothing to match, so they count only until a payload ping has been seen.
pub(super) struct ClientTracker {
    payload: [u8; 16],
    client: Option<SocketAddr>,
    last_counter: Option<u32>,
    payload_seen: bool,
}

impl ClientTracker {
    pub fn new(payload: [u8; 16]) -> ClientTracker {
        ClientTracker {
            payload,
            client: None,
            last_counter: None,
            payload_seen: false,
        }
    }

    /// Takes one datagram; returns whether it was a ping of this session and, if the client's
    /// address changed, the new address.
    pub fn offer(
        &mut self,
        buf: &[u8],
        len: usize,
        from: SocketAddr,
    ) -> (bool, Option<SocketAddr>) {
        let from = canonical(from);
        let accept = match parse_ping(buf, len, &self.payload) {
            None => return (false, None),
            Some(Ping::Payload(counter)) => {
                self.payload_seen = true;
                let newer = self.last_counter.is_none_or(|last| counter > last);
                if self.client == Some(from) || newer {
                    self.last_counter = Some(self.last_counter.map_or(counter, |l| l.max(counter)));
                }
                self.client.is_none() || (self.client != Some(from) && newer)
            }
            // Once the client pings with the payload, a bare "PING" is its only from its own
            // address; from anywhere else it is no ping of this session.
            Some(Ping::Legacy) if self.payload_seen => {
                return (self.client == Some(from), None);
            }
            Some(Ping::Legacy) => self.client != Some(from),
        };
        if accept && self.client != Some(from) {
            self.client = Some(from);
            return (true, Some(from));
        }
        (true, None)
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket) shown as the IPv4 address they are.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Most datagrams read from a socket per wake-up, so a flood cannot starve the sending.
const MAX_DATAGRAMS_PER_WAKE: usize = 64;

/// Reads waiting datagrams (without blocking) and feeds them to `tracker`; returns the client's
/// new address if it changed.
fn read_pings(
    socket: BorrowedFd<'_>,
    tracker: &mut ClientTracker,
    kind: Kind,
    shared: &Shared,
) -> Option<SocketAddr> {
    let mut changed = None;
    let mut buf = [0u8; 32];
    let foreign = match kind {
        Kind::Video => &shared.counters.video_foreign_datagrams,
        Kind::Audio => &shared.counters.audio_foreign_datagrams,
    };
    for _ in 0..MAX_DATAGRAMS_PER_WAKE {
        match rustix::net::recvfrom(socket, &mut buf, RecvFlags::DONTWAIT | RecvFlags::TRUNC) {
            Ok((got, len, from)) => {
                let from = from.and_then(|a| SocketAddr::try_from(a).ok());
                let Some(from) = from else {
                    add(foreign, 1);
                    continue;
                };
                let (ping, new) = tracker.offer(&buf[..got], len, from);
                if !ping {
                    add(foreign, 1);
                    continue;
                }
                add(
                    match kind {
                        Kind::Video => &shared.counters.video_pings,
                        Kind::Audio => &shared.counters.audio_pings,
                    },
                    1,
                );
                if new.is_some() {
                    changed = new;
                }
            }
            Err(Errno::AGAIN) => break,
            Err(Errno::INTR) => continue,
            // ICMP errors from earlier sends and the like: nothing to read now.
            Err(_) => break,
        }
    }
    changed
}

/// Blocks until the socket or the ring's doorbell is readable, at most [`POLL_INTERVAL`]; clears
/// the doorbell. Returns whether the ring may have data.
fn wait(socket: BorrowedFd<'_>, ring: Option<&mut Consumer>) -> Result<bool, RingError> {
    let timeout = Timespec::try_from(POLL_INTERVAL).ok();
    let Some(ring) = ring else {
        let mut fds = [PollFd::new(&socket, PollFlags::IN)];
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
        return Ok(false);
    };
    // Pairs with the producer's fence: either we see its record now, or it sees our read index
    // and rings the doorbell.
    fence(Ordering::SeqCst);
    if ring.has_data()? {
        return Ok(true);
    }
    let bell = ring.doorbell();
    let mut fds = [
        PollFd::new(&socket, PollFlags::IN),
        PollFd::new(&bell, PollFlags::IN),
    ];
    let bell_ready = match rustix::event::poll(&mut fds, timeout.as_ref()) {
        Ok(_) => fds[1].revents().contains(PollFlags::IN),
        Err(_) => false,
    };
    if bell_ready {
        let mut count = [0u8; 8];
        // Readable, and only this thread reads it: the read returns at once.
        let _ = rustix::io::read(bell, &mut count);
    }
    Ok(bell_ready || ring.has_data()?)
}

/// A sender thread: pings, rings, records, until the stream stops.
fn run<'s, S: Sink<'s>>(
    kind: Kind,
    socket: &'s OwnedFd,
    payload: [u8; 16],
    mut sink: S,
    shared: &Shared,
) {
    let socket = socket.as_fd();
    let mut tracker = ClientTracker::new(payload);
    let mut ring: Option<Consumer> = None;
    while !shared.stopping() {
        if let Some((generation, consumer)) = shared.take_ring(kind) {
            // The replaced ring's drops were counted as they were seen.
            ring = Some(consumer);
            eprintln!("lumen-net: {} sender reads rings {generation}", kind.name());
            sink.ring_replaced(shared);
        }
        let ready = match wait(socket, ring.as_mut()) {
            Ok(ready) => ready,
            Err(e) => {
                ring_failed(kind, &e, shared);
                ring = None;
                continue;
            }
        };
        if let Some(addr) = read_pings(socket, &mut tracker, kind, shared) {
            eprintln!("lumen-net: {} goes to {addr}", kind.name());
            shared.set_client(kind, addr);
            sink.client_changed(socket, addr, shared);
        }
        if let (true, Some(consumer)) = (ready, ring.as_mut()) {
            if let Err(e) = sink.drain(consumer, shared) {
                ring_failed(kind, &e, shared);
                ring = None;
            }
        }
    }
}

fn ring_failed(kind: Kind, error: &RingError, shared: &Shared) {
    add(&shared.counters.ring_errors, 1);
    eprintln!(
        "lumen-net: {} ring dropped ({error}); waiting for new rings",
        kind.name()
    );
}

/// Keeps a ring's producer-side drop count summed into a counter across generations.
#[derive(Default)]
pub(super) struct DropTracker {
    seen: u64,
}

impl DropTracker {
    /// A new ring starts counting from 0.
    pub fn reset(&mut self) {
        self.seen = 0;
    }

    /// Adds what `ring` dropped since the last look to `counter`.
    pub fn update(&mut self, ring: &Consumer, counter: &AtomicU64) {
        // The producer writes this number: a smaller one is not believed (it never goes back).
        let now = ring.dropped();
        if now > self.seen {
            add(counter, now - self.seen);
            self.seen = now;
        }
    }
}

#[cfg(test)]
#[path = "media_tests.rs"]
mod tests;
