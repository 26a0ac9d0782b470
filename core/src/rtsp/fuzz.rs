//! Entry points shared by the cargo-fuzz targets (fuzz/) and the corpus replay test
//! (core/tests/fuzz_corpus.rs). Each takes arbitrary bytes; parsing must never panic. A panic here is
//! an invariant violation (a bug), never an input error.

use super::describe::DescribeParams;
use super::encrypted::{self, RtspCrypto};
use super::message::{request_len, Request, Response};
use super::sdp::{Announce, StreamConfig, SS_ENC_ALL, SS_ENC_CONTROL_V2};
use super::session::{RtspSession, SessionParams};

/// The key the `rtspenc` corpus is sealed with.
pub const CORPUS_KEY: [u8; 16] = *b"lumen-fuzz-rikey";

/// Session parameters the fuzz targets drive (HEVC and AV1 offered, everything encryptable).
pub fn corpus_params(encrypted: bool) -> SessionParams {
    SessionParams {
        rikey: CORPUS_KEY,
        encrypted,
        session_id: "DEADBEEFCAFE".into(),
        audio_port: 48000,
        video_port: 47998,
        control_port: 47999,
        ping_payload: "0123456789abcdef".into(),
        connect_data: 0x1234_5678,
        describe: DescribeParams {
            hevc: true,
            av1: true,
            rfi: true,
            ss_feature_flags: 3,
            encryption_supported: SS_ENC_ALL,
            encryption_requested: SS_ENC_CONTROL_V2,
            surround: Vec::new(),
        },
        fec_percentage: 20,
    }
}

/// `rtsp_message`: the bytes as a request and as a reply; what parses must re-serialize to an equal
/// message, and the framing must agree with the parser. Then a fresh session answers it.
pub fn rtsp_message(data: &[u8]) {
    let framed = request_len(data);
    if let Ok(req) = Request::parse(data) {
        assert_eq!(framed, Ok(Some(data.len())));
        if let Ok(bytes) = req.serialize() {
            assert_eq!(Request::parse(&bytes).as_ref(), Ok(&req));
        }
    }
    if let Ok(resp) = Response::parse(data) {
        if let Ok(bytes) = resp.serialize() {
            assert_eq!(Response::parse(&bytes).as_ref(), Ok(&resp));
        }
    }
    if let Ok(mut session) = RtspSession::new(corpus_params(false)) {
        if let Ok(reply) = session.handle(data) {
            assert!(Response::parse(&reply.bytes).is_ok(), "{reply:?}");
        }
    }
}

/// `sdp_announce`: the bytes as an ANNOUNCE body; a parsed configuration must survive
/// [`StreamConfig::to_announce`] and back.
pub fn sdp_announce(data: &[u8]) {
    let _ = Announce::parse(data);
    if let Ok(config) = StreamConfig::parse(data) {
        let again = StreamConfig::parse(config.to_announce("192.0.2.1").as_bytes());
        assert_eq!(again.as_ref(), Ok(&config));
    }
}

/// `rtspenc_frame`: the bytes as a client frame under [`CORPUS_KEY`]; an opened frame must re-seal to
/// the same bytes, and an encrypted session must answer with a frame the client can open.
pub fn rtspenc_frame(data: &[u8]) {
    let framed = encrypted::frame_len(data);
    let host = RtspCrypto::host(&CORPUS_KEY);
    if let Ok((seq, plain)) = host.open_unordered(data) {
        assert_eq!(framed, Ok(Some(data.len())));
        let client = RtspCrypto::client(&CORPUS_KEY);
        assert_eq!(client.seal_with_seq(seq, &plain).as_deref(), Ok(data));
    }
    if let Ok(mut session) = RtspSession::new(corpus_params(true)) {
        if let Ok(reply) = session.handle(data) {
            let client = RtspCrypto::client(&CORPUS_KEY);
            let plain = client.open_unordered(&reply.bytes).map(|(_, p)| p);
            assert!(plain.is_ok_and(|p| Response::parse(&p).is_ok()));
        }
    }
}
