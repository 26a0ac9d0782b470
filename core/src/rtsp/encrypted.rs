//! `rtspenc://` framing (protocol notes §4.7): when the launch URL says `rtspenc`, each whole RTSP
//! message (head and body) travels AES-128-GCM sealed under the session's `rikey`:
//!
//! ```text
//! u32be 0x80000000 | N | u32be seq | tag[16] | ciphertext[N]
//! ```
//!
//! The IV is `seq` LE, six zero bytes, the sender's side letter (`'C'` or `'H'`) and `'R'`. The client's
//! counter starts at 1 when its process starts and keeps rising across sessions, so the host only
//! demands that it rises within a session (refusing replays); the host's own counter starts at 1.

use crate::control::{Gcm, Iv, Side, TAG_LEN};

use super::message::MAX_MESSAGE_LEN;

/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 4 + 4 + TAG_LEN;
/// Top bit of the first word: set on every encrypted message.
pub const ENCRYPTED_BIT: u32 = 0x8000_0000;
/// Largest plaintext accepted or produced (the RTSP message limit).
pub const MAX_PLAINTEXT_LEN: usize = MAX_MESSAGE_LEN;

/// Why an `rtspenc` frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncryptedError {
    /// The top bit is clear: a plaintext message on an encrypted session.
    #[error("unencrypted RTSP message on an rtspenc session")]
    NotEncrypted,
    /// A zero-length message (the client refuses those too).
    #[error("empty encrypted RTSP message")]
    Empty,
    /// The length field is over [`MAX_PLAINTEXT_LEN`].
    #[error("encrypted RTSP message of {len} bytes exceeds {MAX_PLAINTEXT_LEN}")]
    TooLong { len: usize },
    /// The frame is shorter or longer than its header says.
    #[error("encrypted RTSP frame of {actual} bytes, header says {declared}")]
    LengthMismatch { declared: usize, actual: usize },
    /// The GCM tag did not verify.
    #[error("encrypted RTSP message failed authentication")]
    Authentication,
    /// The peer's sequence number did not rise (a replayed or reordered message).
    #[error("encrypted RTSP sequence number {seq} does not follow {last}")]
    Replay { seq: u32, last: u32 },
    /// The send counter would wrap and reuse an IV.
    #[error("encrypted RTSP sequence numbers exhausted")]
    SequenceExhausted,
}

/// How long a frame is, from its first 4 bytes: `Ok(None)` until they have arrived, then the whole
/// frame's length (header and ciphertext). Errors early on a plaintext, empty or oversized message.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, EncryptedError> {
    let Some(word) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    declared_len(u32::from_be_bytes(*word)).map(|n| Some(HEADER_LEN + n))
}

fn declared_len(word: u32) -> Result<usize, EncryptedError> {
    if word & ENCRYPTED_BIT == 0 {
        return Err(EncryptedError::NotEncrypted);
    }
    let len = usize::try_from(word & !ENCRYPTED_BIT).unwrap_or(usize::MAX);
    if len == 0 {
        return Err(EncryptedError::Empty);
    }
    if len > MAX_PLAINTEXT_LEN {
        return Err(EncryptedError::TooLong { len });
    }
    Ok(len)
}

/// Seals and opens `rtspenc` frames for one end of one session (keep it for the session's lifetime:
/// its counters span the session's TCP connections).
#[derive(Clone)]
pub struct RtspCrypto {
    gcm: Gcm,
    local: Side,
    next_seq: Option<u32>,
    last_peer_seq: Option<u32>,
}

impl std::fmt::Debug for RtspCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtspCrypto")
            .field("local", &self.local)
            .field("next_seq", &self.next_seq)
            .field("last_peer_seq", &self.last_peer_seq)
            .finish_non_exhaustive()
    }
}

impl RtspCrypto {
    /// The host's end: seals as `'H'` from sequence number 1, opens the client's `'C'` frames.
    pub fn host(rikey: &[u8; 16]) -> Self {
        Self::new(rikey, Side::Host)
    }

    /// The client's end (tests and test clients).
    pub fn client(rikey: &[u8; 16]) -> Self {
        Self::new(rikey, Side::Client)
    }

    fn new(rikey: &[u8; 16], local: Side) -> Self {
        Self {
            gcm: Gcm::new(rikey),
            local,
            next_seq: Some(1),
            last_peer_seq: None,
        }
    }

    /// Seals one message with the next sequence number.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, EncryptedError> {
        let seq = self.next_seq.ok_or(EncryptedError::SequenceExhausted)?;
        let frame = self.seal_with_seq(seq, plaintext)?;
        self.next_seq = seq.checked_add(1);
        Ok(frame)
    }

    /// Seals one message with an explicit sequence number (the caller owns IV uniqueness).
    pub fn seal_with_seq(&self, seq: u32, plaintext: &[u8]) -> Result<Vec<u8>, EncryptedError> {
        let n = u32::try_from(plaintext.len())
            .ok()
            .filter(|&n| n & ENCRYPTED_BIT == 0)
            .ok_or(EncryptedError::TooLong {
                len: plaintext.len(),
            })?;
        declared_len(ENCRYPTED_BIT | n)?;
        let mut frame = Vec::with_capacity(HEADER_LEN + plaintext.len());
        frame.extend_from_slice(&(ENCRYPTED_BIT | n).to_be_bytes());
        frame.extend_from_slice(&seq.to_be_bytes());
        frame.extend_from_slice(&[0; TAG_LEN]);
        frame.extend_from_slice(plaintext);
        let (head, body) = frame.split_at_mut(HEADER_LEN);
        let tag =
            self.gcm
                .seal(&iv(self.local, seq), body)
                .map_err(|_| EncryptedError::TooLong {
                    len: plaintext.len(),
                })?;
        head[8..].copy_from_slice(&tag);
        Ok(frame)
    }

    /// Opens one frame from the peer and checks that its sequence number rose.
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, EncryptedError> {
        let (seq, plain) = self.open_unordered(frame)?;
        if let Some(last) = self.last_peer_seq {
            if seq <= last {
                return Err(EncryptedError::Replay { seq, last });
            }
        }
        self.last_peer_seq = Some(seq);
        Ok(plain)
    }

    /// Opens one frame from the peer without the ordering check; returns its sequence number.
    pub fn open_unordered(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), EncryptedError> {
        let header: &[u8; HEADER_LEN] =
            frame.first_chunk().ok_or(EncryptedError::LengthMismatch {
                declared: HEADER_LEN,
                actual: frame.len(),
            })?;
        let word = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let declared = HEADER_LEN + declared_len(word)?;
        if declared != frame.len() {
            return Err(EncryptedError::LengthMismatch {
                declared,
                actual: frame.len(),
            });
        }
        let seq = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&header[8..]);
        let mut plain = frame[HEADER_LEN..].to_vec();
        let peer = match self.local {
            Side::Host => Side::Client,
            Side::Client => Side::Host,
        };
        self.gcm
            .open(&iv(peer, seq), &mut plain, &tag)
            .map_err(|_| EncryptedError::Authentication)?;
        Ok((seq, plain))
    }
}

fn iv(sender: Side, seq: u32) -> Iv {
    let mut iv = [0; 12];
    iv[..4].copy_from_slice(&seq.to_le_bytes());
    iv[10] = match sender {
        Side::Host => b'H',
        Side::Client => b'C',
    };
    iv[11] = b'R';
    Iv::Twelve(iv)
}
