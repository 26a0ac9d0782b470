//! The one AES-128-GCM primitive the control stream and encrypted RTSP share: detached 16-byte tag, no
//! AAD, key = the session's `rikey`. Both IV lengths GameStream uses are here: 12 bytes (control v2,
//! `rtspenc`) and 16 bytes (the legacy control IV that GFE hashes through GHASH).

use aes_gcm::aead::AeadInOut;
use aes_gcm::aes::cipher::consts::U16;
use aes_gcm::aes::Aes128;
use aes_gcm::{Aes128Gcm, AesGcm, KeyInit, Nonce, Tag};

/// Length of every GCM tag on the wire.
pub(crate) const TAG_LEN: usize = 16;

/// GCM with the 16-byte nonce of the legacy control IV.
type Aes128Gcm16 = AesGcm<Aes128, U16>;

/// An expanded `rikey`, ready for both IV lengths (expanding the key schedule once per session, not per
/// packet).
#[derive(Clone)]
pub(crate) struct Gcm {
    iv12: Aes128Gcm,
    iv16: Aes128Gcm16,
}

/// A GCM nonce of one of the two lengths in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Iv {
    Twelve([u8; 12]),
    Sixteen([u8; 16]),
}

/// GCM refused: on open, the tag did not match (wrong key, wrong IV, tampered bytes); on seal, the
/// input was over GCM's 2^36-byte limit (no caller here can reach it: every length is bounded by a
/// wire field far below that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GcmError;

impl Gcm {
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        Self {
            iv12: Aes128Gcm::new(key.into()),
            iv16: Aes128Gcm16::new(key.into()),
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal(&self, iv: &Iv, buf: &mut [u8]) -> Result<[u8; TAG_LEN], GcmError> {
        let tag = match iv {
            Iv::Twelve(n) => self
                .iv12
                .encrypt_inout_detached(&Nonce::from(*n), &[], buf.into()),
            Iv::Sixteen(n) => self
                .iv16
                .encrypt_inout_detached(&Nonce::from(*n), &[], buf.into()),
        };
        tag.map(Into::into).map_err(|_| GcmError)
    }

    /// Decrypts `buf` in place after checking `tag`; on a mismatch `buf` is left unspecified.
    pub(crate) fn open(
        &self,
        iv: &Iv,
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), GcmError> {
        let tag = Tag::from(*tag);
        match iv {
            Iv::Twelve(n) => {
                self.iv12
                    .decrypt_inout_detached(&Nonce::from(*n), &[], buf.into(), &tag)
            }
            Iv::Sixteen(n) => {
                self.iv16
                    .decrypt_inout_detached(&Nonce::from(*n), &[], buf.into(), &tag)
            }
        }
        .map_err(|_| GcmError)
    }
}
