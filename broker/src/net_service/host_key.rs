//! The host's RSA key, used only inside the broker: TLS handshake signatures for `lumen-net`
//! and the pairing signature over the server secret.
//!
//! A TLS signature is made only over what a TLS server signs (a TLS 1.3 server CertificateVerify
//! input, or a TLS 1.2 ECDHE ServerKeyExchange), so a compromised lumen-net cannot turn the
//! broker into a general signing oracle for the host key (for instance to forge the pairing
//! signature over a 16-byte secret).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::{RsaEncoding, RSA_PKCS1_SHA256, RSA_PSS_SHA256};

/// TLS SignatureScheme code points the host key serves.
pub const RSA_PSS_RSAE_SHA256: u16 = 0x0804;
pub const RSA_PKCS1_SHA256_SCHEME: u16 = 0x0401;

/// What TLS 1.3 prefixes to the transcript hash a server signs (RFC 8446 §4.4.3).
const TLS13_SERVER_CONTEXT: &[u8] = b"TLS 1.3, server CertificateVerify\0";

/// Why a signature was not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("the host key is not an RSA PKCS#8 key: {0}")]
    BadKey(String),
    #[error("signature scheme {0:#06x} is not served (rsa_pss_rsae_sha256 or rsa_pkcs1_sha256)")]
    Scheme(u16),
    #[error("the input is not a TLS server handshake signature input")]
    NotTls,
    #[error("signing failed")]
    Failed,
}

pub struct HostKey {
    key: KeyPair,
    rng: SystemRandom,
}

impl HostKey {
    /// From the PKCS#8 PEM the identity keeps.
    pub fn from_pem(key_pem: &str) -> Result<HostKey, SignError> {
        let block = pem::parse(key_pem).map_err(|e| SignError::BadKey(e.to_string()))?;
        let key =
            KeyPair::from_pkcs8(block.contents()).map_err(|e| SignError::BadKey(e.to_string()))?;
        Ok(HostKey {
            key,
            rng: SystemRandom::new(),
        })
    }

    fn sign(
        &self,
        encoding: &'static dyn RsaEncoding,
        message: &[u8],
    ) -> Result<Vec<u8>, SignError> {
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(encoding, &self.rng, message, &mut signature)
            .map_err(|_| SignError::Failed)?;
        Ok(signature)
    }

    /// A TLS handshake signature.
    pub fn sign_tls(&self, scheme: u16, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let kind = tls_input_kind(message).ok_or(SignError::NotTls)?;
        match scheme {
            RSA_PSS_RSAE_SHA256 => self.sign(&RSA_PSS_SHA256, message),
            // TLS 1.3 allows only RSA-PSS with RSA keys.
            RSA_PKCS1_SHA256_SCHEME if kind == TlsInput::Tls12KeyExchange => {
                self.sign(&RSA_PKCS1_SHA256, message)
            }
            other => Err(SignError::Scheme(other)),
        }
    }

    /// RSA-PKCS#1 v1.5 SHA-256 over the pairing server secret (stage 3).
    pub fn sign_pairing_secret(&self, secret: &[u8; 16]) -> Result<Vec<u8>, SignError> {
        self.sign(&RSA_PKCS1_SHA256, secret)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum TlsInput {
    Tls13CertificateVerify,
    Tls12KeyExchange,
}

/// Which TLS server signature input `message` is, if any.
fn tls_input_kind(message: &[u8]) -> Option<TlsInput> {
    // TLS 1.3: 64 spaces, the server context string, then a SHA-256 or SHA-384 transcript hash.
    if let Some(rest) = message.strip_prefix(&[b' '; 64]) {
        if let Some(hash) = rest.strip_prefix(TLS13_SERVER_CONTEXT) {
            if hash.len() == 32 || hash.len() == 48 {
                return Some(TlsInput::Tls13CertificateVerify);
            }
        }
    }
    // TLS 1.2: client_random ‖ server_random ‖ ServerECDHParams (curve_type named_curve (3),
    // NamedGroup, a length-prefixed public point), and nothing after it.
    let params = message.get(64..)?;
    match params {
        [3, _, _, len, point @ ..] if !point.is_empty() && point.len() == usize::from(*len) => {
            Some(TlsInput::Tls12KeyExchange)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{
        UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    };

    fn host() -> (HostKey, Vec<u8>) {
        let identity = crate::state::identity::Identity::generate().unwrap();
        let (_, public) = super::super::pair_crypto::signature_and_key(&identity.cert_der).unwrap();
        (HostKey::from_pem(identity.key_pem()).unwrap(), public)
    }

    fn tls13_input() -> Vec<u8> {
        let mut m = vec![b' '; 64];
        m.extend_from_slice(TLS13_SERVER_CONTEXT);
        m.extend_from_slice(&[9; 32]);
        m
    }

    fn tls12_input() -> Vec<u8> {
        let mut m = vec![1; 64];
        m.extend_from_slice(&[3, 0x00, 0x1d, 32]);
        m.extend_from_slice(&[5; 32]);
        m
    }

    #[test]
    fn signs_tls_inputs_verifiably() {
        let (key, public) = host();
        let pss = key.sign_tls(RSA_PSS_RSAE_SHA256, &tls13_input()).unwrap();
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, &public)
            .verify(&tls13_input(), &pss)
            .unwrap();
        let pkcs1 = key
            .sign_tls(RSA_PKCS1_SHA256_SCHEME, &tls12_input())
            .unwrap();
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public)
            .verify(&tls12_input(), &pkcs1)
            .unwrap();
        assert!(key.sign_tls(RSA_PSS_RSAE_SHA256, &tls12_input()).is_ok());
    }

    #[test]
    fn refuses_anything_but_a_tls_server_signature_input() {
        let (key, _) = host();
        // The pairing secret's shape: 16 raw bytes.
        assert_eq!(
            key.sign_tls(RSA_PKCS1_SHA256_SCHEME, &[1; 16]),
            Err(SignError::NotTls)
        );
        let mut client_cv = vec![b' '; 64];
        client_cv.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
        client_cv.extend_from_slice(&[9; 32]);
        assert_eq!(
            key.sign_tls(RSA_PSS_RSAE_SHA256, &client_cv),
            Err(SignError::NotTls)
        );
        let mut trailing = tls12_input();
        trailing.push(0);
        assert_eq!(
            key.sign_tls(RSA_PSS_RSAE_SHA256, &trailing),
            Err(SignError::NotTls)
        );
        // PKCS#1 is not a TLS 1.3 scheme; other schemes are not served.
        assert_eq!(
            key.sign_tls(RSA_PKCS1_SHA256_SCHEME, &tls13_input()),
            Err(SignError::Scheme(RSA_PKCS1_SHA256_SCHEME))
        );
        assert_eq!(
            key.sign_tls(0x0403, &tls13_input()),
            Err(SignError::Scheme(0x0403))
        );
    }
}
