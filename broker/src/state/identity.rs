//! The host identity Moonlight pins on pairing: an RSA-2048 key, a self-signed certificate and a
//! `uniqueid`. Made on first start, kept in the state dir (`host.key` 0600, `host.crt`,
//! `uniqueid`) and reused after; if any part is unreadable or the parts do not belong together,
//! all of them are set aside, the problem is reported and a new identity is made (every paired
//! client must then pair again, which is why the caller logs it as an error and shows it in status).
//!
//! `uniqueid` is written last, so it marks a finished identity: intact key and certificate files
//! without it are what a broker killed during its first start leaves. They are set aside all the
//! same (nothing stored is ever deleted), but reported as an interrupted first start, not as a lost
//! identity: no client can have paired with an identity that was never complete.

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use rcgen::{
    date_time_ymd, CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData,
    RsaKeySize, SerialNumber, PKCS_RSA_SHA256,
};

use super::atomic::{self, Loaded, SetAside, StateError};

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("generating the host key and certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The host's key, certificate and uniqueid.
#[derive(Clone)]
pub struct Identity {
    /// PKCS#8 PEM of the private key. Never logged: `Debug` leaves it out.
    key_pem: String,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub uniqueid: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("key_pem", &"<hidden>")
            .field("cert_der_len", &self.cert_der.len())
            .field("uniqueid", &self.uniqueid)
            .finish()
    }
}

/// The identity, and what was wrong with the stored one if it had to be replaced.
#[derive(Debug)]
pub struct LoadedIdentity {
    pub identity: Identity,
    pub created: bool,
    pub set_aside: Vec<SetAside>,
    /// The parts set aside were an unfinished first start (no `uniqueid` yet, nothing corrupt):
    /// nothing was lost.
    pub interrupted_first_start: bool,
}

const KEY_FILE: &str = "host.key";
const CERT_FILE: &str = "host.crt";
const UNIQUEID_FILE: &str = "uniqueid";

impl Identity {
    /// The private key in PEM, for the TLS server of a later issue.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Loads the identity from `state_dir`, or makes and stores a new one.
    pub fn load_or_create(state_dir: &Path) -> Result<LoadedIdentity, IdentityError> {
        let key = atomic::read_or_set_aside(&state_dir.join(KEY_FILE), parse_key)?;
        let cert = atomic::read_or_set_aside(&state_dir.join(CERT_FILE), parse_cert)?;
        let uniqueid = atomic::read_or_set_aside(&state_dir.join(UNIQUEID_FILE), parse_uniqueid)?;
        let mut set_aside = Vec::new();
        let interrupted_first_start = matches!(uniqueid, Loaded::Missing)
            && !matches!(key, Loaded::Corrupt(_))
            && !matches!(cert, Loaded::Corrupt(_));
        match (key, cert, uniqueid) {
            (
                Loaded::Parsed((key_pair, key_pem)),
                Loaded::Parsed((cert_pem, cert_der)),
                Loaded::Parsed(uniqueid),
            ) => {
                // The certificate must carry this key's public half, or TLS would fail on every
                // connection; a mismatch is corruption like any other.
                if contains(&cert_der, key_pair.der_bytes()) {
                    return Ok(LoadedIdentity {
                        identity: Identity {
                            key_pem,
                            cert_pem,
                            cert_der,
                            uniqueid,
                        },
                        created: false,
                        set_aside,
                        interrupted_first_start: false,
                    });
                }
                set_aside.push(atomic::set_aside(
                    &state_dir.join(CERT_FILE),
                    "certificate does not match host.key".into(),
                )?);
            }
            (Loaded::Missing, Loaded::Missing, Loaded::Missing) => {}
            (key, cert, uniqueid) => {
                // A partial identity cannot be completed: move every surviving part aside too.
                for (loaded, file) in [
                    (matches!(key, Loaded::Parsed(_)), KEY_FILE),
                    (matches!(cert, Loaded::Parsed(_)), CERT_FILE),
                    (matches!(uniqueid, Loaded::Parsed(_)), UNIQUEID_FILE),
                ] {
                    if loaded {
                        set_aside.push(atomic::set_aside(
                            &state_dir.join(file),
                            "the rest of the host identity is missing or corrupt".into(),
                        )?);
                    }
                }
                for loaded in [corrupt_of(key), corrupt_of(cert), corrupt_of(uniqueid)] {
                    set_aside.extend(loaded);
                }
            }
        }
        let identity = Identity::generate()?;
        identity.store(state_dir)?;
        Ok(LoadedIdentity {
            identity,
            created: true,
            interrupted_first_start: interrupted_first_start && !set_aside.is_empty(),
            set_aside,
        })
    }

    /// A fresh key, certificate and uniqueid.
    pub fn generate() -> Result<Identity, rcgen::Error> {
        let key_pair = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "lumen GameStream host");
        params.distinguished_name = name;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let year = 1970 + i32::try_from(now / 31_556_952).unwrap_or(0);
        params.not_before = date_time_ymd(year - 1, 1, 1);
        // Moonlight pins this certificate, so it should outlive the host.
        params.not_after = date_time_ymd(year + 20, 1, 1);
        // Positive 127-bit serial (high bit clear keeps the DER INTEGER positive).
        let mut serial = rand::random::<[u8; 16]>();
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.self_signed(&key_pair)?;
        Ok(Identity {
            key_pem: key_pair.serialize_pem(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            uniqueid: format!("{:016X}", rand::random::<u64>()),
        })
    }

    fn store(&self, state_dir: &Path) -> Result<(), StateError> {
        atomic::write_atomic(&state_dir.join(KEY_FILE), self.key_pem.as_bytes())?;
        atomic::write_atomic(&state_dir.join(CERT_FILE), self.cert_pem.as_bytes())?;
        atomic::write_atomic(
            &state_dir.join(UNIQUEID_FILE),
            format!("{}\n", self.uniqueid).as_bytes(),
        )
    }
}

fn corrupt_of<T>(loaded: Loaded<T>) -> Option<SetAside> {
    match loaded {
        Loaded::Corrupt(aside) => Some(aside),
        _ => None,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn parse_key(text: &str) -> Result<(KeyPair, String), String> {
    let key = KeyPair::from_pem(text).map_err(|e| format!("private key: {e}"))?;
    if !key.is_compatible(&PKCS_RSA_SHA256) {
        return Err("private key is not RSA".into());
    }
    Ok((key, text.to_string()))
}

fn parse_cert(text: &str) -> Result<(String, Vec<u8>), String> {
    let pem = pem::parse(text).map_err(|e| format!("certificate: {e}"))?;
    if pem.tag() != "CERTIFICATE" {
        return Err(format!("certificate: PEM block is {:?}", pem.tag()));
    }
    Ok((text.to_string(), pem.contents().to_vec()))
}

fn parse_uniqueid(text: &str) -> Result<String, String> {
    let id = text.trim();
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id.to_string())
    } else {
        Err("uniqueid is not 16 hex digits".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lumen-identity-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn made_once_then_loaded_and_corruption_is_set_aside() {
        let dir = scratch();
        let first = Identity::load_or_create(&dir).unwrap();
        assert!(first.created);
        assert!(first.set_aside.is_empty());
        assert_eq!(first.identity.uniqueid.len(), 16);
        assert!(first.identity.key_pem().contains("PRIVATE KEY"));
        assert!(!format!("{:?}", first.identity).contains("PRIVATE"));
        // RSA-2048: the modulus is 256 bytes, so the certificate is well over that.
        assert!(first.identity.cert_der.len() > 600);

        let again = Identity::load_or_create(&dir).unwrap();
        assert!(!again.created);
        assert_eq!(again.identity.uniqueid, first.identity.uniqueid);
        assert_eq!(again.identity.cert_der, first.identity.cert_der);

        std::fs::write(dir.join(CERT_FILE), "-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
        let replaced = Identity::load_or_create(&dir).unwrap();
        assert!(replaced.created);
        assert!(!replaced.interrupted_first_start);
        assert_ne!(replaced.identity.cert_der, first.identity.cert_der);
        // The corrupt cert and the surviving key and uniqueid are all kept for inspection.
        assert_eq!(replaced.set_aside.len(), 3, "{:?}", replaced.set_aside);
        for aside in &replaced.set_aside {
            assert!(aside.moved_to.exists());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_certificate_for_another_key_is_rejected() {
        let dir = scratch();
        Identity::load_or_create(&dir).unwrap();
        let other = Identity::generate().unwrap();
        std::fs::write(dir.join(CERT_FILE), &other.cert_pem).unwrap();
        let loaded = Identity::load_or_create(&dir).unwrap();
        assert!(loaded.created);
        assert_eq!(loaded.set_aside.len(), 1);
        assert!(!loaded.interrupted_first_start);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn key_and_certificate_without_uniqueid_are_an_interrupted_first_start() {
        let dir = scratch();
        let first = Identity::load_or_create(&dir).unwrap();
        assert!(!first.interrupted_first_start);
        // What a kill after host.crt and before uniqueid leaves behind.
        std::fs::remove_file(dir.join(UNIQUEID_FILE)).unwrap();
        let loaded = Identity::load_or_create(&dir).unwrap();
        assert!(loaded.created);
        assert!(loaded.interrupted_first_start);
        // Still nothing deleted: both parts are kept aside.
        assert_eq!(loaded.set_aside.len(), 2, "{:?}", loaded.set_aside);
        for aside in &loaded.set_aside {
            assert!(aside.moved_to.exists());
        }
        // A lost uniqueid next to a corrupt certificate is corruption, not an interrupted start.
        std::fs::remove_file(dir.join(UNIQUEID_FILE)).unwrap();
        std::fs::write(dir.join(CERT_FILE), "garbage").unwrap();
        let corrupt = Identity::load_or_create(&dir).unwrap();
        assert!(!corrupt.interrupted_first_start);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
