//! The encrypted control-stream envelope (protocol notes §5.2) that wraps every ENet packet of the
//! control stream in both directions once the client's appversion is 7.1.431 or later:
//!
//! ```text
//! u16le 0x0001 | u16le L | u32le seq | tag[16] | AES-128-GCM( u16le type | u16le payloadLength | payload )
//! ```
//!
//! `L` counts everything after itself (seq, tag, ciphertext), so a packet is `L + 4` bytes. The IV
//! depends on what the client enabled in ANNOUNCE (`x-ss-general.encryptionEnabled` bit 0x01):
//! [`IvMode::V2`] is `seq` LE, six zero bytes, the sender's side letter and `'C'` (12 bytes);
//! [`IvMode::Legacy`] is GFE's 16-byte IV holding only `seq & 0xFF` (advertise control v2 to avoid it).

use super::gcm::{Gcm, Iv, TAG_LEN};

/// Outer type of every encrypted control packet.
pub const ENCRYPTED_TYPE: u16 = 0x0001;
/// Bytes before the ciphertext: type, length, sequence number, tag.
pub const HEADER_LEN: usize = 2 + 2 + 4 + TAG_LEN;
/// Bytes of the inner (encrypted) header: message type and payload length.
pub const INNER_HEADER_LEN: usize = 4;
/// Smallest `L` the client accepts (seq + tag + inner header); shorter packets are runts.
pub const MIN_LENGTH_FIELD: usize = 4 + TAG_LEN + INNER_HEADER_LEN;
/// Largest payload whose `L` still fits the u16 length field.
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize - MIN_LENGTH_FIELD;

/// Which IV construction the session uses (fixed at ANNOUNCE for the whole session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvMode {
    /// 12-byte IV: seq LE, zeros, side letter, `'C'`. Chosen when `encryptionEnabled` has 0x01.
    V2,
    /// GFE's 16-byte IV: byte 0 is `seq & 0xFF`, the rest zero.
    Legacy,
}

impl IvMode {
    /// The mode the client picked, from ANNOUNCE's `x-ss-general.encryptionEnabled`.
    pub fn from_encryption_enabled(ss_encryption_enabled: u32) -> Self {
        if ss_encryption_enabled & crate::rtsp::sdp::SS_ENC_CONTROL_V2 != 0 {
            IvMode::V2
        } else {
            IvMode::Legacy
        }
    }
}

/// Which end of the control stream sealed a packet (it picks the IV's side letter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// lumen, `'H'`.
    Host,
    /// The Moonlight client, `'C'`.
    Client,
}

impl Side {
    fn letter(self) -> u8 {
        match self {
            Side::Host => b'H',
            Side::Client => b'C',
        }
    }

    fn peer(self) -> Side {
        match self {
            Side::Host => Side::Client,
            Side::Client => Side::Host,
        }
    }
}

/// One opened control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The sender's sequence number (informational: neither side enforces order, and the client sends
    /// FEC status unsequenced).
    pub seq: u32,
    /// Inner message type (§5.3 / §5.4).
    pub msg_type: u16,
    /// Inner payload, exactly `payloadLength` bytes.
    pub payload: Vec<u8>,
}

/// Why a control packet was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than the fixed header, or `L` below the 24-byte minimum.
    #[error("runt control packet: {len} bytes")]
    Runt { len: usize },
    /// The outer type is not 0x0001 (the stream is encrypted; plaintext messages are dropped).
    #[error("unencrypted control packet of type {msg_type:#06x} on an encrypted stream")]
    NotEncrypted { msg_type: u16 },
    /// `L + 4` disagrees with the packet's size.
    #[error("control packet length field says {declared} bytes, packet has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    /// The inner `payloadLength` disagrees with the decrypted size.
    #[error("inner payload length says {declared} bytes, {actual} decrypted")]
    InnerLengthMismatch { declared: usize, actual: usize },
    /// A payload too long for the u16 length field.
    #[error("control payload of {len} bytes exceeds {MAX_PAYLOAD_LEN}")]
    PayloadTooLong { len: usize },
    /// The GCM tag did not verify (wrong key, wrong IV mode, or tampered bytes).
    #[error("control packet failed authentication")]
    Authentication,
    /// The send counter would wrap and reuse an IV under the same key.
    #[error("control sequence numbers exhausted")]
    SequenceExhausted,
}

/// Seals and opens control packets for one end of one session.
#[derive(Clone)]
pub struct ControlCrypto {
    gcm: Gcm,
    mode: IvMode,
    local: Side,
    next_seq: Option<u32>,
}

impl std::fmt::Debug for ControlCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key schedule stays out of logs.
        f.debug_struct("ControlCrypto")
            .field("mode", &self.mode)
            .field("local", &self.local)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl ControlCrypto {
    /// The host's end: seals as `'H'`, opens what the client sealed. The send counter starts at 0.
    pub fn host(rikey: &[u8; 16], mode: IvMode) -> Self {
        Self::new(rikey, mode, Side::Host)
    }

    /// The client's end (tests, fuzzing and test clients).
    pub fn client(rikey: &[u8; 16], mode: IvMode) -> Self {
        Self::new(rikey, mode, Side::Client)
    }

    fn new(rikey: &[u8; 16], mode: IvMode, local: Side) -> Self {
        Self {
            gcm: Gcm::new(rikey),
            mode,
            local,
            next_seq: Some(0),
        }
    }

    /// The IV mode in force.
    pub fn mode(&self) -> IvMode {
        self.mode
    }

    /// Seals one message with the next sequence number.
    pub fn seal(&mut self, msg_type: u16, payload: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let seq = self.next_seq.ok_or(EnvelopeError::SequenceExhausted)?;
        let packet = self.seal_with_seq(seq, msg_type, payload)?;
        self.next_seq = seq.checked_add(1);
        Ok(packet)
    }

    /// Seals one message with an explicit sequence number (the caller owns IV uniqueness).
    pub fn seal_with_seq(
        &self,
        seq: u32,
        msg_type: u16,
        payload: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(EnvelopeError::PayloadTooLong { len: payload.len() });
        }
        let length_field = MIN_LENGTH_FIELD + payload.len();
        let mut packet = Vec::with_capacity(HEADER_LEN + INNER_HEADER_LEN + payload.len());
        packet.extend_from_slice(&ENCRYPTED_TYPE.to_le_bytes());
        packet.extend_from_slice(&u16_of(length_field)?.to_le_bytes());
        packet.extend_from_slice(&seq.to_le_bytes());
        packet.extend_from_slice(&[0; TAG_LEN]);
        packet.extend_from_slice(&msg_type.to_le_bytes());
        packet.extend_from_slice(&u16_of(payload.len())?.to_le_bytes());
        packet.extend_from_slice(payload);
        let (head, body) = packet.split_at_mut(HEADER_LEN);
        let tag = self
            .gcm
            .seal(&iv(self.mode, self.local, seq), body)
            .map_err(|_| EnvelopeError::PayloadTooLong { len: payload.len() })?;
        head[8..HEADER_LEN].copy_from_slice(&tag);
        Ok(packet)
    }

    /// Opens one packet the peer sealed.
    pub fn open(&self, packet: &[u8]) -> Result<Opened, EnvelopeError> {
        let header: &[u8; HEADER_LEN] = packet
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(EnvelopeError::Runt { len: packet.len() })?;
        let outer_type = u16::from_le_bytes([header[0], header[1]]);
        if outer_type != ENCRYPTED_TYPE {
            return Err(EnvelopeError::NotEncrypted {
                msg_type: outer_type,
            });
        }
        let length_field = usize::from(u16::from_le_bytes([header[2], header[3]]));
        if length_field < MIN_LENGTH_FIELD {
            return Err(EnvelopeError::Runt { len: packet.len() });
        }
        if length_field + 4 != packet.len() {
            return Err(EnvelopeError::LengthMismatch {
                declared: length_field + 4,
                actual: packet.len(),
            });
        }
        let seq = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&header[8..HEADER_LEN]);
        let mut plain = packet[HEADER_LEN..].to_vec();
        self.gcm
            .open(&iv(self.mode, self.local.peer(), seq), &mut plain, &tag)
            .map_err(|_| EnvelopeError::Authentication)?;
        // length_field >= MIN_LENGTH_FIELD guarantees the inner header is there.
        let msg_type = u16::from_le_bytes([plain[0], plain[1]]);
        let declared = usize::from(u16::from_le_bytes([plain[2], plain[3]]));
        let actual = plain.len() - INNER_HEADER_LEN;
        if declared != actual {
            return Err(EnvelopeError::InnerLengthMismatch { declared, actual });
        }
        plain.drain(..INNER_HEADER_LEN);
        Ok(Opened {
            seq,
            msg_type,
            payload: plain,
        })
    }
}

fn u16_of(len: usize) -> Result<u16, EnvelopeError> {
    u16::try_from(len).map_err(|_| EnvelopeError::PayloadTooLong { len })
}

fn iv(mode: IvMode, sender: Side, seq: u32) -> Iv {
    match mode {
        IvMode::V2 => {
            let mut iv = [0; 12];
            iv[..4].copy_from_slice(&seq.to_le_bytes());
            iv[10] = sender.letter();
            iv[11] = b'C';
            Iv::Twelve(iv)
        }
        IvMode::Legacy => {
            let mut iv = [0; 16];
            // GFE truncates the sequence number to its low byte; the client mimics it.
            iv[0] = seq.to_le_bytes()[0];
            Iv::Sixteen(iv)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_iv_layout_matches_the_client() {
        assert_eq!(
            iv(IvMode::V2, Side::Client, 0x0403_0201),
            Iv::Twelve([1, 2, 3, 4, 0, 0, 0, 0, 0, 0, b'C', b'C'])
        );
        assert_eq!(
            iv(IvMode::V2, Side::Host, 7),
            Iv::Twelve([7, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'H', b'C'])
        );
    }

    #[test]
    fn legacy_iv_keeps_only_the_low_byte() {
        assert_eq!(
            iv(IvMode::Legacy, Side::Host, 0x1234),
            Iv::Sixteen([0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        );
    }

    #[test]
    fn seal_refuses_to_wrap_the_counter() {
        let mut c = ControlCrypto::host(&[0; 16], IvMode::V2);
        c.next_seq = Some(u32::MAX);
        assert!(c.seal(0x0109, &[]).is_ok());
        assert_eq!(c.seal(0x0109, &[]), Err(EnvelopeError::SequenceExhausted));
    }
}
