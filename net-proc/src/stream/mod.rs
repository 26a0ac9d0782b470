//! One streaming session from `/launch` to its end (protocol notes §2.5, §4, §5, §10): the launch
//! arms an RTSP session; RTSP ANNOUNCE starts the media senders, asks the broker to start capture
//! and encode (`StartStream`) and opens the control stream; the broker's rings (`StreamRings`) go
//! to the media senders; the control stream's IDR requests go to the encoder; `/cancel`, the
//! client's disconnect or a failure ends it all and tells the broker (`StopStream`).
//!
//! The handshake (RTSP state per launch) lives under a lock shared by the nvhttp and RTSP
//! threads; the running stream is owned by one supervisor thread that takes [`Command`]s, so
//! blocking broker requests and thread joins never run on the nvhttp runtime.

mod audio;
pub mod media;
mod report;
mod video;

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use lumen_core::audio_packetizer::{AudioEncryption, AudioStreamConfig};
use lumen_core::fec::FecConfig;
use lumen_core::rtsp::{
    self, DescribeParams, Event, Negotiated, RtspSession, SessionParams, StreamConfig,
    SurroundOffer, SurroundParams, VideoCodec,
};
use lumen_core::video_packetizer::{VideoEncryption, VideoStreamConfig};
use lumen_ipc::media::{self as ipc_media, AudioLayout, EncoderCapabilities, Generation};
use lumen_ipc::msg::WorkerMsg;
use lumen_ipc::net_msg::{HttpCounters, NetReply, NetRequest};

use crate::broker_link::BrokerLink;
use crate::control::{Control, ControlConfig, ControlEvent, TERMINATION_GRACEFUL};
use crate::input_forward::StreamInput;
use crate::nvhttp::HttpTally;
use crate::rtsp_server::RtspTally;
use media::{MediaConfig, MediaStreams};

/// `x-ss-general.featureFlags` bit: the host takes pen and touch events.
const SS_FF_PEN_TOUCH_EVENTS: u32 = 0x01;

/// How long the broker gets to start or stop capture and encode.
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);
/// The app every launch runs (the desktop).
pub const DESKTOP_ID: u32 = 1;

/// The UDP and TCP ports clients are told about.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub rtsp: u16,
    pub video: u16,
    pub audio: u16,
    pub control: u16,
}

/// The LAN sockets a stream uses (the originals stay here; each session gets duplicates).
pub struct StreamSockets {
    pub video: OwnedFd,
    pub audio: OwnedFd,
    pub control: OwnedFd,
}

/// What `/launch` and `/resume` carry (§2.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchRequest {
    pub rikey: [u8; 16],
    /// `rikeyid` reinterpreted as u32 (only the audio IV uses it).
    pub rikeyid: u32,
    /// `corever >= 1`: the client can speak `rtspenc://`.
    pub encrypted_rtsp: bool,
}

/// One launch: the keys and the RTSP handshake that spans the client's connections.
struct Launch {
    id: u64,
    rikey: [u8; 16],
    rikeyid: u32,
    rtsp: RtspSession,
}

/// What the supervisor thread is asked to do.
enum Command {
    /// RTSP ANNOUNCE was accepted for this launch.
    Start {
        launch: u64,
        negotiated: Box<Negotiated>,
        rikey: [u8; 16],
        rikeyid: u32,
    },
    Rings {
        generation: Generation,
        fds: Vec<OwnedFd>,
    },
    RequestIdr,
    /// The control stream of session `session` ended from the client's side.
    ControlEnded {
        session: u64,
        why: String,
    },
    /// End the stream (if any) and answer when done.
    Stop {
        done: Option<tokio::sync::oneshot::Sender<()>>,
    },
}

/// The streaming side of lumen-net, shared by nvhttp, the RTSP server and the worker loop.
pub struct Streams {
    ports: Ports,
    /// Insist on video encryption in DESCRIBE (the broker's `[stream] encrypt_video`).
    encrypt_video: std::sync::atomic::AtomicBool,
    /// What lumen-encode can produce (the broker's `NetIdentity.encoder`): what DESCRIBE offers.
    encoder: Mutex<EncoderCapabilities>,
    launch: Mutex<Option<Launch>>,
    next_launch: AtomicU64,
    commands: Mutex<mpsc::Sender<Command>>,
    /// The RTSP listener's counters (reported with every stream's statistics).
    rtsp: Arc<RtspTally>,
    /// nvhttp's counters, once nvhttp hands them over ([`Streams::report_http`]).
    http: Arc<OnceLock<Arc<HttpTally>>>,
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no randomness".to_string())?;
    Ok(bytes)
}

/// What DESCRIBE offers: exactly what lumen-encode reported it can produce (`encoder`; H.264 needs
/// no marker, the client always assumes it), the v2 control IV, audio encryption (which the client
/// turns on anyway, §4.3) and video encryption. With `encrypt_video` (the default: this host faces
/// untrusted networks) video encryption is requested, so every client that can encrypt does;
/// without it, only offered. Each surround layout is offered with the coding the encoder uses
/// ([`AudioLayout::opus_layout`]) and no high-quality line: the encoder has one coding per layout,
/// and a second line would let the client ask for a coding it does not produce.
fn describe_params(encrypt_video: bool, encoder: &EncoderCapabilities) -> DescribeParams {
    let video = if encrypt_video {
        rtsp::sdp::SS_ENC_VIDEO
    } else {
        0
    };
    let surround = [AudioLayout::Surround51, AudioLayout::Surround71]
        .into_iter()
        .filter(|layout| encoder.has_layout(*layout))
        .map(|layout| {
            let coding = layout.opus_layout();
            SurroundOffer {
                normal: SurroundParams {
                    channels: coding.channels,
                    streams: coding.streams,
                    coupled: coding.coupled,
                    mapping: coding.mapping,
                },
                high: None,
            }
        })
        .collect();
    DescribeParams {
        hevc: encoder.has_codec(ipc_media::VideoCodec::Hevc),
        av1: encoder.has_codec(ipc_media::VideoCodec::Av1),
        rfi: false,
        // Pen and touch (moonlight-common-c's LI_FF_PEN_TOUCH_EVENTS): lumen-input injects them,
        // and without the flag the client refuses LiSendTouchEvent/LiSendPenEvent. Controller
        // touchpads and motion (0x02) stay off: an Xbox-style pad has no place for them.
        ss_feature_flags: SS_FF_PEN_TOUCH_EVENTS,
        encryption_supported: rtsp::sdp::SS_ENC_CONTROL_V2
            | rtsp::sdp::SS_ENC_AUDIO
            | rtsp::sdp::SS_ENC_VIDEO,
        encryption_requested: rtsp::sdp::SS_ENC_CONTROL_V2 | video,
        surround,
    }
}

impl Streams {
    /// Starts the supervisor thread; `link` carries StartStream/StopStream to the broker.
    pub fn start(
        ports: Ports,
        sockets: StreamSockets,
        link: Arc<BrokerLink>,
    ) -> Result<Arc<Streams>, String> {
        let (tx, rx) = mpsc::channel();
        let rtsp = Arc::new(RtspTally::default());
        let http = Arc::new(OnceLock::new());
        let streams = Arc::new(Streams {
            ports,
            encrypt_video: std::sync::atomic::AtomicBool::new(true),
            encoder: Mutex::new(EncoderCapabilities::default()),
            launch: Mutex::new(None),
            next_launch: AtomicU64::new(1),
            commands: Mutex::new(tx.clone()),
            rtsp: rtsp.clone(),
            http: http.clone(),
        });
        std::thread::Builder::new()
            .name("lumen-net-stream".into())
            .spawn(move || {
                Supervisor {
                    link,
                    sockets,
                    commands: tx,
                    session: None,
                    next_session: 1,
                    rtsp,
                    http,
                }
                .run(rx)
            })
            .map_err(|e| format!("starting the stream thread: {e}"))?;
        Ok(streams)
    }

    /// Whether the next launches insist on video encryption.
    pub fn set_encrypt_video(&self, on: bool) {
        self.encrypt_video.store(on, Ordering::Relaxed);
    }

    /// What the next launches offer in DESCRIBE (a launch in progress keeps its offer).
    pub fn set_encoder_capabilities(&self, encoder: EncoderCapabilities) {
        *self.encoder.lock().unwrap_or_else(PoisonError::into_inner) = encoder;
    }

    fn send(&self, command: Command) {
        let _ = self
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(command);
    }

    /// The RTSP listener's counters.
    pub fn rtsp_tally(&self) -> &RtspTally {
        &self.rtsp
    }

    /// Reports nvhttp's counters with every stream's statistics from now on (the first stays).
    pub fn report_http(&self, tally: Arc<HttpTally>) {
        let _ = self.http.set(tally);
    }

    fn launch_slot(&self) -> std::sync::MutexGuard<'_, Option<Launch>> {
        self.launch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The app running for `/serverinfo` (`currentgame`): the desktop from `/launch` until
    /// `/cancel`, as on Sunshine, so a client that reconnects resumes.
    pub fn current_game(&self) -> u32 {
        if self.launch_slot().is_some() {
            DESKTOP_ID
        } else {
            0
        }
    }

    /// Arms a new RTSP session for `/launch` or `/resume` and returns `sessionUrl0`; a stream
    /// still running from an earlier launch is stopped.
    pub async fn launch(&self, request: LaunchRequest, local: IpAddr) -> Result<String, String> {
        let [c0, c1, c2, c3, session_bytes @ ..]: [u8; 12] = random()?;
        let ping: [u8; 8] = random()?;
        let params = SessionParams {
            rikey: request.rikey,
            encrypted: request.encrypted_rtsp,
            session_id: hex::encode(session_bytes),
            audio_port: self.ports.audio,
            video_port: self.ports.video,
            control_port: self.ports.control,
            ping_payload: hex::encode_upper(ping),
            connect_data: u32::from_be_bytes([c0, c1, c2, c3]),
            describe: describe_params(
                self.encrypt_video.load(Ordering::Relaxed),
                &self.encoder.lock().unwrap_or_else(PoisonError::into_inner),
            ),
            fec_percentage: 20,
        };
        let rtsp = RtspSession::new(params).map_err(|e| format!("RTSP session: {e}"))?;
        self.stop().await;
        let id = self.next_launch.fetch_add(1, Ordering::Relaxed);
        *self.launch_slot() = Some(Launch {
            id,
            rikey: request.rikey,
            rikeyid: request.rikeyid,
            rtsp,
        });
        let scheme = if request.encrypted_rtsp {
            "rtspenc"
        } else {
            "rtsp"
        };
        let host = match local {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        let url = format!("{scheme}://{host}:{}", self.ports.rtsp);
        eprintln!("lumen-net: launch {id}: {url}");
        Ok(url)
    }

    /// `/cancel`: forgets the launch and ends its stream (the client gets the termination code).
    pub async fn cancel(&self) {
        self.launch_slot().take();
        self.stop().await;
    }

    async fn stop(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Command::Stop { done: Some(tx) });
        let _ = tokio::time::timeout(BROKER_TIMEOUT + Duration::from_secs(5), rx).await;
    }

    /// How many bytes the RTSP request in `buf` needs (`None`: not known yet); `Err`: close.
    pub fn rtsp_frame_len(&self, buf: &[u8]) -> Result<Option<usize>, String> {
        match &*self.launch_slot() {
            Some(launch) => launch.rtsp.frame_len(buf).map_err(|e| e.to_string()),
            None => Err("RTSP without a launch".into()),
        }
    }

    /// Answers one RTSP request of the current launch; `None` when there is nothing to answer
    /// (no launch, or a frame that failed authentication): close the connection.
    pub fn rtsp_request(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let mut slot = self.launch_slot();
        let launch = slot.as_mut().ok_or("RTSP without a launch")?;
        let reply = launch.rtsp.handle(bytes).map_err(|e| e.to_string())?;
        self.rtsp.answered(reply.refusal.is_some());
        if let Some(refusal) = &reply.refusal {
            eprintln!("lumen-net: RTSP: {} ({refusal})", reply.response.status);
        }
        match reply.event {
            Some(Event::Announced(negotiated)) => {
                let c = &negotiated.config;
                eprintln!(
                    "lumen-net: RTSP ANNOUNCE: {}x{}@{} {:?} {} kbit/s, packet size {}, encryption: video {}, audio {}",
                    c.width,
                    c.height,
                    c.fps,
                    c.codec,
                    c.bitrate_kbps,
                    c.packet_size,
                    if c.encryption.video { "on" } else { "off" },
                    if c.encryption.audio { "on" } else { "off" },
                );
                self.send(Command::Start {
                    launch: launch.id,
                    negotiated,
                    rikey: launch.rikey,
                    rikeyid: launch.rikeyid,
                });
            }
            Some(Event::Play) => eprintln!("lumen-net: RTSP PLAY"),
            Some(Event::Setup(_)) | None => {}
        }
        Ok(reply.bytes)
    }

    /// The broker's rings for the running stream (`StreamRings`).
    pub fn rings(&self, generation: Generation, fds: Vec<OwnedFd>) {
        self.send(Command::Rings { generation, fds });
    }
}

/// The running stream.
struct Session {
    id: u64,
    media: MediaStreams,
    control: Control,
    /// When its statistics last went to the broker.
    reported: Instant,
}

struct Supervisor {
    link: Arc<BrokerLink>,
    sockets: StreamSockets,
    commands: mpsc::Sender<Command>,
    session: Option<Session>,
    next_session: u64,
    rtsp: Arc<RtspTally>,
    http: Arc<OnceLock<Arc<HttpTally>>>,
}

impl Supervisor {
    fn http_counters(&self) -> HttpCounters {
        self.http.get().map(|t| t.counters()).unwrap_or_default()
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            match rx.recv_timeout(report::INTERVAL) {
                Ok(command) => self.handle(command),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.report_if_due();
        }
    }

    /// Sends the running stream's statistics to the broker if a report is due.
    fn report_if_due(&mut self) {
        let Some(session) = &mut self.session else {
            return;
        };
        if session.reported.elapsed() < report::INTERVAL {
            return;
        }
        session.reported = Instant::now();
        let stats = report::net_stats(
            session.id,
            true,
            &session.control.stats(),
            &session.media.stats(),
            &self.rtsp,
            self.http_counters(),
        );
        // Best effort: a lost report is made good by the next one.
        let _ = self.link.notify(WorkerMsg::NetStats(Box::new(stats)));
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Start {
                launch,
                negotiated,
                rikey,
                rikeyid,
            } => {
                self.stop("a new stream starts");
                if let Err(e) = self.start(&negotiated, rikey, rikeyid) {
                    eprintln!("lumen-net: stream of launch {launch} failed to start: {e}");
                    self.stop("its start failed");
                }
            }
            Command::Rings { generation, fds } => match &self.session {
                Some(s) => {
                    if let Err(e) = s.media.attach_rings(generation, fds) {
                        eprintln!("lumen-net: rings of generation {generation}: {e}");
                    }
                }
                None => eprintln!("lumen-net: rings of generation {generation} for no stream"),
            },
            Command::RequestIdr => {
                if let Some(s) = &self.session {
                    if let Err(e) = s.media.request_idr() {
                        eprintln!("lumen-net: IDR request: {e}");
                    }
                }
            }
            Command::ControlEnded { session, why } => {
                if self.session.as_ref().is_some_and(|s| s.id == session) {
                    self.stop(&why);
                }
            }
            Command::Stop { done } => {
                self.stop("the client quit the app");
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }

    fn start(
        &mut self,
        negotiated: &Negotiated,
        rikey: [u8; 16],
        rikeyid: u32,
    ) -> Result<(), String> {
        let config = &negotiated.config;
        let params = session_params(config)?;
        let dup = |fd: &OwnedFd, what: &str| {
            fd.try_clone()
                .map_err(|e| format!("duplicating the {what} socket: {e}"))
        };
        let ping_payload: [u8; 16] = negotiated
            .ping_payload
            .as_bytes()
            .try_into()
            .map_err(|_| "the ping payload is not 16 bytes")?;
        let media = MediaStreams::start(MediaConfig {
            video_socket: dup(&self.sockets.video, "video")?,
            audio_socket: dup(&self.sockets.audio, "audio")?,
            ping_payload,
            video: VideoStreamConfig {
                packet_size: config.packet_size as usize,
                fec: FecConfig {
                    percent: negotiated.fec_percentage,
                    min_parity: u8::try_from(config.min_required_fec_packets).unwrap_or(u8::MAX),
                    ..FecConfig::default()
                },
                encryption: config.encryption.video.then_some(VideoEncryption {
                    key: rikey,
                    first_iv_counter: 0,
                }),
            },
            audio: AudioStreamConfig {
                packet_duration_ms: config.audio_packet_duration_ms,
                encryption: config.encryption.audio.then_some(AudioEncryption {
                    key: rikey,
                    rikeyid,
                }),
            },
            fps: config.fps,
        })
        .map_err(|e| format!("media senders: {e}"))?;
        let id = self.next_session;
        self.next_session += 1;
        let commands = self.commands.clone();
        let control = Control::start(
            ControlConfig {
                socket: dup(&self.sockets.control, "control")?,
                rikey,
                iv_mode: negotiated.control_iv,
                connect_data: negotiated.connect_data,
                input: Some(StreamInput::new(
                    crate::input_forward::process(),
                    config.width,
                    config.height,
                )),
            },
            move |event| {
                let command = match event {
                    ControlEvent::RequestIdr => Command::RequestIdr,
                    ControlEvent::Connected(addr) => {
                        eprintln!("lumen-net: control stream: client {addr} connected");
                        return;
                    }
                    ControlEvent::Ended(why) => Command::ControlEnded { session: id, why },
                };
                let _ = commands.send(command);
            },
        );
        let control = match control {
            Ok(control) => control,
            Err(e) => {
                media.stop();
                return Err(e);
            }
        };
        self.session = Some(Session {
            id,
            media,
            control,
            reported: Instant::now(),
        });
        match self
            .link
            .request_blocking(NetRequest::StartStream { params }, BROKER_TIMEOUT)
        {
            Ok(NetReply::StreamStarting { generation }) => {
                eprintln!("lumen-net: stream {id} starting (generation {generation})");
                Ok(())
            }
            Ok(NetReply::Refused(why)) => Err(format!("the broker refused the stream: {why}")),
            Ok(other) => Err(format!("the broker answered StartStream with {other:?}")),
            Err(e) => Err(format!("StartStream: {e}")),
        }
    }

    /// Ends the running stream, if any: termination to the client, senders joined, broker told.
    fn stop(&mut self, why: &str) {
        let Some(session) = self.session.take() else {
            return;
        };
        let control = session.control.stop(TERMINATION_GRACEFUL);
        let media = session.media.stats();
        session.media.stop();
        let last = report::net_stats(
            session.id,
            false,
            &control,
            &media,
            &self.rtsp,
            self.http_counters(),
        );
        if let Err(e) = self.link.notify(WorkerMsg::NetStats(Box::new(last))) {
            eprintln!(
                "lumen-net: the last statistics of stream {}: {e}",
                session.id
            );
        }
        eprintln!(
            "lumen-net: stream {} ended ({why}); control: {control:?}; media: {media:?}",
            session.id
        );
        match self
            .link
            .request_blocking(NetRequest::StopStream, BROKER_TIMEOUT)
        {
            Ok(NetReply::StreamStopped) => {}
            Ok(other) => eprintln!("lumen-net: the broker answered StopStream with {other:?}"),
            Err(e) => eprintln!("lumen-net: StopStream: {e}"),
        }
    }
}

/// The encoder's settings from what the client announced.
pub fn session_params(config: &StreamConfig) -> Result<ipc_media::SessionParams, String> {
    let codec = match config.codec {
        VideoCodec::H264 => ipc_media::VideoCodec::H264,
        VideoCodec::Hevc => ipc_media::VideoCodec::Hevc,
        VideoCodec::Av1 => ipc_media::VideoCodec::Av1,
    };
    let audio = match config.audio_channels {
        6 => AudioLayout::Surround51,
        8 => AudioLayout::Surround71,
        _ => AudioLayout::Stereo,
    };
    let params = ipc_media::SessionParams {
        width: config.width,
        height: config.height,
        fps: config.fps,
        bitrate_kbps: config.bitrate_kbps.clamp(100, 500_000),
        codec,
        audio,
        audio_packet_ms: config.audio_packet_duration_ms,
    };
    params.validate()?;
    Ok(params)
}

#[cfg(test)]
mod tests;
