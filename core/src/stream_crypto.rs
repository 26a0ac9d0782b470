//! Stream encryption as Moonlight clients decrypt it: AES-128-GCM per video datagram (protocol notes
//! §6.6, a Sunshine extension) and AES-128-CBC per audio payload (§7.3). Both use the session's `rikey`
//! from `/launch`; audio derives its IV from `rikeyid`.
//!
//! Everything works in place or into caller-owned buffers, so the send path allocates nothing.

use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

/// Bytes in front of every encrypted video datagram: IV (12), frame index (4), GCM tag (16).
pub const VIDEO_PREFIX_LEN: usize = 32;
/// The GCM tag length.
pub const GCM_TAG_LEN: usize = 16;
/// The GCM IV length.
pub const GCM_IV_LEN: usize = 12;
/// AES block size; CBC ciphertext is a whole number of blocks.
pub const AES_BLOCK: usize = 16;

/// What can go wrong encrypting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The buffer cannot hold the prefix or the ciphertext.
    #[error("a buffer of {got} bytes is too small: {needed} are needed")]
    BufferTooSmall { needed: usize, got: usize },
    /// The AEAD refused the message (longer than GCM allows).
    #[error("AES-GCM refused a {0}-byte message")]
    Aead(usize),
    /// The AEAD refused the key.
    #[error("AES-128-GCM refused the key")]
    Key,
}

/// The 12-byte GCM IV of video datagram number `counter`: the counter as u64le in bytes 0–7, bytes 8–10
/// zero and `'V'` in byte 11 (Sunshine's NIST SP 800-38D §8.2.1 deterministic construction: the
/// counter is the invocation field, `'V'` the fixed field that keeps video IVs apart from control's).
pub fn video_iv(counter: u64) -> [u8; GCM_IV_LEN] {
    let mut iv = [0u8; GCM_IV_LEN];
    iv[..8].copy_from_slice(&counter.to_le_bytes());
    iv[11] = b'V';
    iv
}

/// Seals video datagrams in place (§6.6). Each call uses the next IV; an IV must never repeat under one
/// key, so a sender that restarts with the same `rikey` must resume from [`VideoCipher::next_counter`]
/// (or a counter never used before), not from 0.
///
/// AWS-LC does the sealing: its stitched AES + CLMUL assembly is 1.3–1.4× RustCrypto's aes-gcm per
/// datagram on the development machine, and video is the one bulk cipher of the stream
/// (docs/send-path.md).
pub struct VideoCipher {
    key: LessSafeKey,
    next_counter: u64,
}

impl VideoCipher {
    /// A cipher for `key` (the session's `rikey`) whose first datagram uses IV counter `first_counter`.
    pub fn new(key: &[u8; 16], first_counter: u64) -> Result<VideoCipher, CryptoError> {
        let key = UnboundKey::new(&AES_128_GCM, key).map_err(|_| CryptoError::Key)?;
        Ok(VideoCipher {
            key: LessSafeKey::new(key),
            next_counter: first_counter,
        })
    }

    /// The IV counter the next sealed datagram will use.
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// Encrypts `datagram[VIDEO_PREFIX_LEN..]` (the complete plaintext shard) in place and writes the
    /// prefix: IV, `frame_index` (u32le, in clear so the client can drop stale packets before
    /// decrypting) and the tag.
    pub fn seal(&mut self, datagram: &mut [u8], frame_index: u32) -> Result<(), CryptoError> {
        if datagram.len() < VIDEO_PREFIX_LEN {
            return Err(CryptoError::BufferTooSmall {
                needed: VIDEO_PREFIX_LEN,
                got: datagram.len(),
            });
        }
        let iv = video_iv(self.next_counter);
        let (prefix, shard) = datagram.split_at_mut(VIDEO_PREFIX_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), shard)
            .map_err(|_| CryptoError::Aead(shard.len()))?;
        // Only advance once the IV has really been used, so that a failure cannot skip or reuse one.
        self.next_counter = self.next_counter.wrapping_add(1);
        prefix[..GCM_IV_LEN].copy_from_slice(&iv);
        prefix[GCM_IV_LEN..16].copy_from_slice(&frame_index.to_le_bytes());
        prefix[16..].copy_from_slice(tag.as_ref());
        Ok(())
    }
}

/// Length of the CBC ciphertext (PKCS#7 always adds 1..=16 bytes) of an `n`-byte plaintext.
pub fn cbc_padded_len(n: usize) -> usize {
    (n / AES_BLOCK + 1) * AES_BLOCK
}

/// The 16-byte CBC IV of the audio packet with RTP sequence number `seq`: BE32 of
/// `(rikeyid + seq) mod 2³²` in bytes 0–3, zero elsewhere (§7.3).
pub fn audio_iv(rikeyid: u32, seq: u16) -> [u8; AES_BLOCK] {
    let mut iv = [0u8; AES_BLOCK];
    iv[..4].copy_from_slice(&rikeyid.wrapping_add(u32::from(seq)).to_be_bytes());
    iv
}

/// Encrypts audio payloads (§7.3): AES-128-CBC, PKCS#7, a fresh IV per packet from `rikeyid` + seq.
#[derive(Clone)]
pub struct AudioCipher {
    key: [u8; 16],
    rikeyid: u32,
}

impl AudioCipher {
    /// A cipher for `key` (`rikey`) and `rikeyid`, both from `/launch`.
    pub fn new(key: &[u8; 16], rikeyid: u32) -> AudioCipher {
        AudioCipher { key: *key, rikeyid }
    }

    /// Encrypts `plaintext` for sequence number `seq` into `out` and returns the ciphertext length,
    /// [`cbc_padded_len`]`(plaintext.len())`.
    pub fn encrypt(
        &self,
        seq: u16,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let needed = cbc_padded_len(plaintext.len());
        if out.len() < needed {
            return Err(CryptoError::BufferTooSmall {
                needed,
                got: out.len(),
            });
        }
        let iv = audio_iv(self.rikeyid, seq);
        // Audio is a few hundred packets a second: building the key schedule per packet costs
        // nothing measurable and keeps the type free of cipher state between packets.
        let encryptor = cbc::Encryptor::<aes::Aes128>::new(&self.key.into(), &iv.into());
        let got = out.len();
        let written = encryptor
            .encrypt_padded_b2b_mut::<Pkcs7>(plaintext, &mut out[..needed])
            .map_err(|_| CryptoError::BufferTooSmall { needed, got })?;
        Ok(written.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_iv_is_counter_le_then_v() {
        let iv = video_iv(0x0102_0304_0506_0708);
        assert_eq!(iv, [8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, b'V']);
    }

    #[test]
    fn audio_iv_wraps_and_is_big_endian() {
        assert_eq!(audio_iv(0xFFFF_FFFF, 2)[..4], [0, 0, 0, 1]);
        assert_eq!(audio_iv(0x1000, 0x0234)[..], {
            let mut iv = [0u8; 16];
            iv[2] = 0x12;
            iv[3] = 0x34;
            iv
        });
    }

    #[test]
    fn seal_advances_the_counter_and_refuses_short_buffers() {
        let mut cipher = VideoCipher::new(&[7; 16], 5).unwrap();
        let mut short = [0u8; 31];
        assert!(cipher.seal(&mut short, 1).is_err());
        assert_eq!(cipher.next_counter(), 5);
        let mut datagram = [0u8; 64];
        cipher.seal(&mut datagram, 9).unwrap();
        assert_eq!(cipher.next_counter(), 6);
        assert_eq!(&datagram[..12], &video_iv(5));
        assert_eq!(&datagram[12..16], &9u32.to_le_bytes());
    }

    #[test]
    fn cbc_output_is_padded_length() {
        let cipher = AudioCipher::new(&[1; 16], 3);
        let mut out = [0u8; 64];
        assert_eq!(cipher.encrypt(0, &[0u8; 57], &mut out), Ok(64));
        assert_eq!(cipher.encrypt(0, &[0u8; 48], &mut out), Ok(64));
        assert!(cipher.encrypt(0, &[0u8; 64], &mut out).is_err());
    }
}
