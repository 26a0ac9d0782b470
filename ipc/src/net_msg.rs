//! What `lumen-net` asks of the broker, and what the broker tells it: the secrets stay in the
//! broker (DESIGN: "net asks the broker for TLS handshake signatures and for each pairing step's
//! crypto"), so every operation that needs the host key or the PIN is a request here.
//!
//! Requests travel as `WorkerMsg::NetRequest { id, request }` and are answered by
//! `BrokerMsg::NetReply { id, reply }` with the same `id`; the broker answers every request it
//! accepts exactly once, in any order. Only `lumen-net` may send them.

use serde::{Deserialize, Serialize};

/// The largest message a TLS signature request may carry (a TLS 1.3 CertificateVerify input is
/// ~130 bytes, a TLS 1.2 ServerKeyExchange a few hundred).
pub const MAX_SIGN_INPUT: usize = 4096;

/// A request from `lumen-net`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NetRequest {
    /// Sign `message` with the host key for a TLS handshake. `scheme` is the TLS
    /// SignatureScheme code point (e.g. 0x0804 rsa_pss_rsae_sha256, 0x0401 rsa_pkcs1_sha256).
    TlsSign { scheme: u16, message: Vec<u8> },
}

/// The broker's answer to a [`NetRequest`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NetReply {
    /// The signature asked for by `TlsSign`.
    Signature(Vec<u8>),
    /// The request was refused, and why (shown in logs; never a secret).
    Refused(String),
}

/// What the broker tells `lumen-net` after each `Ready` and whenever it changes: the host's public
/// identity and which client certificates are paired (net pins them in the TLS handshake).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetIdentity {
    /// The host's uniqueid (`/serverinfo`).
    pub uniqueid: String,
    /// The host certificate, PEM (public).
    pub cert_pem: String,
    /// SHA-256 of the DER of every paired client certificate.
    pub paired_sha256: Vec<[u8; 32]>,
}
