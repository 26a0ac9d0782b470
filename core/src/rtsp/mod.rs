//! The host side of Moonlight's RTSP dialect (protocol notes §4), as pure code: message parsing and
//! writing with the client's quirks ([`message`]), `rtspenc` framing ([`encrypted`]), the DESCRIBE
//! body ([`describe`]), the ANNOUNCE body ([`sdp`]) and the handshake state machine ([`session`]).

pub mod describe;
pub mod encrypted;
#[doc(hidden)]
pub mod fuzz;
pub mod message;
pub mod sdp;
pub mod session;

pub use describe::{describe_body, DescribeParams, SurroundOffer, SurroundParams};
pub use encrypted::RtspCrypto;
pub use message::{Headers, Request, Response};
pub use sdp::{Colorspace, Encryption, StreamConfig, VideoCodec};
pub use session::{Event, Negotiated, Refusal, Reply, RtspSession, SessionParams, StreamKind};
