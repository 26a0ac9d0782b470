//! Entry points shared by the cargo-fuzz targets (fuzz/) and the corpus replay test
//! (core/tests/fuzz_corpus.rs), so that both drive exactly the same code. Each takes arbitrary bytes;
//! parsing must never panic. A panic here is an invariant violation (a bug), never an input error.

use super::{ClientMessage, ControlCrypto, HostMessage, IvMode};

/// The key the envelope corpus is sealed with.
pub const CORPUS_KEY: [u8; 16] = *b"lumen-fuzz-rikey";

/// `control_message`: the first two bytes pick the message type (LE), the rest is the payload; both
/// directions' parsers run, and whatever parses must survive an encode/parse round trip.
pub fn control_message(data: &[u8]) {
    let Some((ty, payload)) = data.split_first_chunk::<2>() else {
        return;
    };
    let msg_type = u16::from_le_bytes(*ty);
    if let Ok(msg) = ClientMessage::parse(msg_type, payload) {
        let (t, p) = msg.encode();
        assert_eq!(ClientMessage::parse(t, &p).as_ref(), Ok(&msg));
    }
    if let Ok(msg) = HostMessage::parse(msg_type, payload) {
        let (t, p) = msg.encode();
        assert_eq!(HostMessage::parse(t, &p).as_ref(), Ok(&msg));
    }
}

/// `control_envelope`: opens the bytes as a client packet under [`CORPUS_KEY`] in both IV modes; an
/// opened packet must re-seal to the same bytes.
pub fn control_envelope(data: &[u8]) {
    for mode in [IvMode::V2, IvMode::Legacy] {
        let host = ControlCrypto::host(&CORPUS_KEY, mode);
        if let Ok(opened) = host.open(data) {
            let client = ControlCrypto::client(&CORPUS_KEY, mode);
            let resealed = client.seal_with_seq(opened.seq, opened.msg_type, &opened.payload);
            assert_eq!(resealed.as_deref(), Ok(data));
            let _ = host.open_message(data);
        }
    }
}
