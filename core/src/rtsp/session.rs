//! The host's side of one launch's RTSP handshake (protocol notes §4.2): OPTIONS, DESCRIBE, SETUP of
//! audio, video and control, ANNOUNCE, PLAY, possibly over several TCP connections (one request
//! each). lumen-net owns the sockets; per connection it reads until [`RtspSession::frame_len`] says a
//! request is complete, passes those bytes to [`RtspSession::handle`], writes the reply bytes and
//! closes. Keep one `RtspSession` per launch: the `rtspenc` counters and the handshake state span the
//! connections.

use super::describe::{describe_body, DescribeError, DescribeParams};
use super::encrypted::{self, EncryptedError, RtspCrypto};
use super::message::{self, Request, Response};
use super::sdp::{self, SdpError, StreamConfig, VideoCodec};
use crate::control::IvMode;

/// Length of the `X-SS-Ping-Payload` value the client accepts.
pub const PING_PAYLOAD_LEN: usize = 16;

/// The host's side of the negotiation, fixed at launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// The launch's AES key (`rikey`).
    pub rikey: [u8; 16],
    /// The launch URL was `rtspenc://`: every message is sealed (§4.7).
    pub encrypted: bool,
    /// The RTSP session id (printable ASCII, no `;` or blanks).
    pub session_id: String,
    pub audio_port: u16,
    pub video_port: u16,
    pub control_port: u16,
    /// `X-SS-Ping-Payload`, exactly 16 printable characters (Sunshine: 8 random bytes in hex).
    pub ping_payload: String,
    /// `X-SS-Connect-Data`: the client puts it in ENet CONNECT's `data`.
    pub connect_data: u32,
    /// What DESCRIBE advertises.
    pub describe: DescribeParams,
    /// FEC percentage the host applies (7.1.431+ clients leave it to the host; Sunshine uses 20).
    pub fec_percentage: u8,
}

/// What the handshake settled, handed on at ANNOUNCE and PLAY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The client's stream settings.
    pub config: StreamConfig,
    /// FEC percentage in force (the host's policy).
    pub fec_percentage: u8,
    /// IV construction of the control stream.
    pub control_iv: IvMode,
    /// High-quality audio: the surround flag, or for stereo a `Host` header other than `0.0.0.0`
    /// (how the client asks for it, §7.1).
    pub audio_high_quality: bool,
    /// The host advertised RFI, so the client may send 0x0301.
    pub rfi: bool,
    pub audio_port: u16,
    pub video_port: u16,
    pub control_port: u16,
    pub ping_payload: String,
    pub connect_data: u32,
}

/// A stream the client set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Audio,
    Video,
    Control,
}

/// What a request changed, for lumen-net to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// SETUP of a stream (the client pings the audio port right after its SETUP).
    Setup(StreamKind),
    /// ANNOUNCE accepted: start the session's media (Sunshine starts here).
    Announced(Box<Negotiated>),
    /// PLAY answered: the client connects ENet to the control port next.
    Play,
}

/// Why a request was answered with an error status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request: {0}")]
    Malformed(#[from] message::ParseError),
    #[error("unsupported method {0:?}")]
    UnknownMethod(String),
    #[error("unknown stream in target {0:?}")]
    UnknownStream(String),
    #[error("{0} before its prerequisites")]
    OutOfOrder(&'static str),
    #[error("wrong or missing Session header")]
    WrongSession,
    #[error("bad ANNOUNCE: {0}")]
    Announce(#[from] SdpError),
    #[error("the client asked for a codec the host did not offer: {0:?}")]
    CodecNotOffered(VideoCodec),
    #[error("the client did not ask for the encrypted control stream (useReliableUdp = {0})")]
    UnencryptedControl(u32),
    #[error("the client enabled encryption the host does not support ({0:#x})")]
    UnsupportedEncryption(u32),
    #[error("the client did not enable the encryption the host requires ({0:#x})")]
    EncryptionNotEnabled(u32),
}

impl Refusal {
    /// The status answered.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) | Refusal::Announce(_) => 400,
            Refusal::CodecNotOffered(_)
            | Refusal::UnencryptedControl(_)
            | Refusal::UnsupportedEncryption(_) => 400,
            Refusal::EncryptionNotEnabled(_) => 403,
            Refusal::UnknownStream(_) => 404,
            Refusal::WrongSession => 454,
            Refusal::OutOfOrder(_) => 455,
            Refusal::UnknownMethod(_) => 501,
        }
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Bytes to write before closing (sealed on `rtspenc` sessions).
    pub bytes: Vec<u8>,
    /// The reply in the clear (for logging).
    pub response: Response,
    pub event: Option<Event>,
    /// Why the status is not 200.
    pub refusal: Option<Refusal>,
}

/// Errors that leave no reply to send: close the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("invalid session parameters: {0}")]
    Params(&'static str),
    #[error(transparent)]
    Describe(#[from] DescribeError),
    #[error(transparent)]
    Encrypted(#[from] EncryptedError),
    #[error("cannot write reply: {0}")]
    Serialize(#[from] message::SerializeError),
    #[error("malformed request framing: {0}")]
    Framing(#[from] message::ParseError),
}

/// One launch's RTSP state machine.
#[derive(Debug)]
pub struct RtspSession {
    params: SessionParams,
    describe_body: String,
    crypto: Option<RtspCrypto>,
    described: bool,
    audio: bool,
    video: bool,
    control: bool,
    negotiated: Option<Negotiated>,
    playing: bool,
}

impl RtspSession {
    /// Checks the parameters and builds the DESCRIBE body once.
    pub fn new(params: SessionParams) -> Result<Self, SessionError> {
        let id = &params.session_id;
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic() && b != b';')
        {
            return Err(SessionError::Params(
                "session id must be 1-64 printable characters, no ';'",
            ));
        }
        if params.ping_payload.len() != PING_PAYLOAD_LEN
            || !params.ping_payload.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(SessionError::Params(
                "ping payload must be 16 printable characters",
            ));
        }
        if params.audio_port == 0 || params.video_port == 0 || params.control_port == 0 {
            return Err(SessionError::Params("stream ports must be non-zero"));
        }
        let describe_body = describe_body(&params.describe)?;
        let crypto = params.encrypted.then(|| RtspCrypto::host(&params.rikey));
        Ok(Self {
            params,
            describe_body,
            crypto,
            described: false,
            audio: false,
            video: false,
            control: false,
            negotiated: None,
            playing: false,
        })
    }

    /// How many bytes the request being read needs: `Ok(None)` until that is known, then the full
    /// length (which may exceed what `buf` holds yet). Errors mean: close the connection.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, SessionError> {
        Ok(match self.crypto {
            Some(_) => encrypted::frame_len(buf)?,
            None => message::request_len(buf)?,
        })
    }

    /// Answers one complete request (as delimited by [`frame_len`](Self::frame_len)). `Err` means
    /// there is nothing the client could read back (a frame that failed authentication): close.
    pub fn handle(&mut self, bytes: &[u8]) -> Result<Reply, SessionError> {
        let plain = match &mut self.crypto {
            Some(c) => c.open(bytes)?,
            None => bytes.to_vec(),
        };
        let (response, event, refusal) = match Request::parse(&plain) {
            Ok(req) => self.handle_request(&req),
            Err(e) => {
                let refusal = Refusal::Malformed(e);
                (Response::new(refusal.status(), "0"), None, Some(refusal))
            }
        };
        let serialized = response.serialize()?;
        let bytes = match &mut self.crypto {
            Some(c) => c.seal(&serialized)?,
            None => serialized,
        };
        Ok(Reply {
            bytes,
            response,
            event,
            refusal,
        })
    }

    /// Answers one parsed request.
    pub fn handle_request(&mut self, req: &Request) -> (Response, Option<Event>, Option<Refusal>) {
        // The client does not check CSeq; echo it when it is a number.
        let cseq = req.cseq().map_or_else(|| "0".to_owned(), |n| n.to_string());
        match self.dispatch(req, &cseq) {
            Ok((response, event)) => (response, event, None),
            Err(refusal) => (Response::new(refusal.status(), &cseq), None, Some(refusal)),
        }
    }

    /// The negotiated settings, once ANNOUNCE was accepted.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// PLAY was answered.
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    fn dispatch(
        &mut self,
        req: &Request,
        cseq: &str,
    ) -> Result<(Response, Option<Event>), Refusal> {
        match req.method.as_str() {
            "OPTIONS" => Ok((Response::new(200, cseq), None)),
            "DESCRIBE" => {
                if self.playing {
                    return Err(Refusal::OutOfOrder("DESCRIBE"));
                }
                self.described = true;
                let body = self.describe_body.clone();
                Ok((Response::new(200, cseq).body(body), None))
            }
            "SETUP" => self.setup(req, cseq),
            "ANNOUNCE" => self.announce(req, cseq),
            "PLAY" => {
                self.check_session(req, true)?;
                if self.negotiated.is_none() || self.playing {
                    return Err(Refusal::OutOfOrder("PLAY"));
                }
                self.playing = true;
                Ok((Response::new(200, cseq), Some(Event::Play)))
            }
            other => Err(Refusal::UnknownMethod(other.to_owned())),
        }
    }

    fn setup(&mut self, req: &Request, cseq: &str) -> Result<(Response, Option<Event>), Refusal> {
        let kind =
            stream_kind(&req.target).ok_or_else(|| Refusal::UnknownStream(req.target.clone()))?;
        if !self.described || self.negotiated.is_some() {
            return Err(Refusal::OutOfOrder("SETUP"));
        }
        // The first SETUP creates the session; the client echoes its id from then on.
        let first = !(self.audio || self.video || self.control);
        self.check_session(req, !first)?;
        let p = &self.params;
        let (port, extra) = match kind {
            StreamKind::Audio => (p.audio_port, ("X-SS-Ping-Payload", p.ping_payload.clone())),
            StreamKind::Video => (p.video_port, ("X-SS-Ping-Payload", p.ping_payload.clone())),
            StreamKind::Control => (
                p.control_port,
                ("X-SS-Connect-Data", p.connect_data.to_string()),
            ),
        };
        let response = Response::new(200, cseq)
            .header("Session", format!("{};timeout = 90", p.session_id))
            .header("Transport", format!("server_port={port}"))
            .header(extra.0, extra.1);
        match kind {
            StreamKind::Audio => self.audio = true,
            StreamKind::Video => self.video = true,
            StreamKind::Control => self.control = true,
        }
        Ok((response, Some(Event::Setup(kind))))
    }

    fn announce(
        &mut self,
        req: &Request,
        cseq: &str,
    ) -> Result<(Response, Option<Event>), Refusal> {
        self.check_session(req, true)?;
        if !(self.audio && self.video && self.control) || self.negotiated.is_some() {
            return Err(Refusal::OutOfOrder("ANNOUNCE"));
        }
        let config = StreamConfig::parse(&req.body)?;
        let d = &self.params.describe;
        match config.codec {
            VideoCodec::Hevc if !d.hevc => return Err(Refusal::CodecNotOffered(config.codec)),
            VideoCodec::Av1 if !d.av1 => return Err(Refusal::CodecNotOffered(config.codec)),
            _ => {}
        }
        if config.control_protocol != sdp::CONTROL_PROTOCOL_ENCRYPTED {
            return Err(Refusal::UnencryptedControl(config.control_protocol));
        }
        // Audio is the exception: the client encrypts it whenever it opted in, advertised or not
        // (§4.3), so a host must always be able to.
        let unsupported =
            config.ss_encryption_enabled & !d.encryption_supported & !sdp::SS_ENC_AUDIO;
        if unsupported != 0 {
            return Err(Refusal::UnsupportedEncryption(unsupported));
        }
        let e = config.encryption;
        let enabled =
            u32::from(e.video) * sdp::SS_ENC_VIDEO + u32::from(e.audio) * sdp::SS_ENC_AUDIO;
        let missing = d.encryption_requested & (sdp::SS_ENC_VIDEO | sdp::SS_ENC_AUDIO) & !enabled;
        if missing != 0 {
            return Err(Refusal::EncryptionNotEnabled(missing));
        }
        let audio_high_quality = if config.audio_channels > 2 {
            config.audio_high_quality
        } else {
            req.headers
                .get("Host")
                .is_some_and(|h| !h.contains("0.0.0.0"))
        };
        let p = &self.params;
        let negotiated = Negotiated {
            control_iv: IvMode::from_encryption_enabled(config.ss_encryption_enabled),
            fec_percentage: p.fec_percentage,
            audio_high_quality,
            rfi: d.rfi,
            audio_port: p.audio_port,
            video_port: p.video_port,
            control_port: p.control_port,
            ping_payload: p.ping_payload.clone(),
            connect_data: p.connect_data,
            config,
        };
        self.negotiated = Some(negotiated.clone());
        Ok((
            Response::new(200, cseq),
            Some(Event::Announced(Box::new(negotiated))),
        ))
    }

    fn check_session(&self, req: &Request, required: bool) -> Result<(), Refusal> {
        // The session exists from the first SETUP on; naming it earlier is naming no session.
        if required && !(self.audio || self.video || self.control) {
            return Err(Refusal::WrongSession);
        }
        match req.headers.get("Session") {
            // Tolerate the `;timeout` suffix in case a client echoes the whole header.
            Some(s)
                if s.split(';').next().map(str::trim) == Some(self.params.session_id.as_str()) =>
            {
                Ok(())
            }
            Some(_) => Err(Refusal::WrongSession),
            None if required => Err(Refusal::WrongSession),
            None => Ok(()),
        }
    }
}

/// `streamid=audio/0/0` → audio, and so on (Sunshine matches the word between `=` and `/`).
pub fn stream_kind(target: &str) -> Option<StreamKind> {
    let rest = target.strip_prefix("streamid=")?;
    let word = rest.split('/').next()?;
    match word {
        "audio" => Some(StreamKind::Audio),
        "video" => Some(StreamKind::Video),
        "control" => Some(StreamKind::Control),
        _ => None,
    }
}
