//! The host's side of one GameStream pairing attempt (gamestream-protocol.md §3.2), as a state
//! machine over already-decoded stage inputs: no I/O, no clock, so every step is unit-tested
//! against a client written from the same formulas.
//!
//! A stage that arrives out of order, or a proof that does not check out, ends the attempt: the
//! caller drops it and tells the waiting `pair` why.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use sha2::{Digest, Sha256};

/// Why a stage was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairError {
    #[error("the client certificate is not a PEM X.509 certificate: {0}")]
    BadCertificate(String),
    #[error("stage {got} arrived while stage {expected} was due")]
    OutOfOrder { got: u8, expected: u8 },
    #[error("the client's proof does not match (wrong PIN)")]
    WrongPin,
    #[error("the client's signature over its pairing secret does not verify")]
    BadSignature,
    #[error("signing the server secret failed: {0}")]
    Sign(String),
}

/// What a client certificate contributes to pairing.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub pem: String,
    /// The certificate's signatureValue contents ("sig(client cert)").
    pub signature: Vec<u8>,
    /// The subjectPublicKey contents (for RSA: the RSAPublicKey DER).
    pub public_key: Vec<u8>,
}

impl ClientCert {
    pub fn parse(pem_text: &str) -> Result<ClientCert, PairError> {
        let bad = |e: String| PairError::BadCertificate(e);
        let block = pem::parse(pem_text).map_err(|e| bad(e.to_string()))?;
        if block.tag() != "CERTIFICATE" {
            return Err(bad(format!("PEM block is {:?}", block.tag())));
        }
        let (signature, public_key) = signature_and_key(block.contents()).map_err(bad)?;
        Ok(ClientCert {
            pem: pem_text.to_string(),
            signature,
            public_key,
        })
    }
}

/// The signatureValue and subjectPublicKey contents of a DER certificate.
pub fn signature_and_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    Ok((
        cert.signature_value.data.to_vec(),
        cert.tbs_certificate
            .subject_pki
            .subject_public_key
            .data
            .to_vec(),
    ))
}

/// `first16(SHA-256(salt ‖ PIN))`: the AES key of an attempt.
pub fn pin_key(salt: &[u8; 16], pin: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(pin.as_bytes())
        .finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// AES-128-ECB over whole blocks, no padding (what the clients use).
pub fn ecb_encrypt(key: &[u8; 16], data: &mut [u8]) {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    for block in data.chunks_exact_mut(16) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
}

pub fn ecb_decrypt(key: &[u8; 16], data: &mut [u8]) {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    for block in data.chunks_exact_mut(16) {
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
    }
}

enum Due {
    ClientChallenge,
    ServerChallengeResp {
        server_secret: [u8; 16],
        server_challenge: [u8; 16],
    },
    ClientPairingSecret {
        server_challenge: [u8; 16],
        client_hash: [u8; 32],
    },
    Done,
}

impl Due {
    fn stage(&self) -> u8 {
        match self {
            Due::ClientChallenge => 2,
            Due::ServerChallengeResp { .. } => 3,
            Due::ClientPairingSecret { .. } => 4,
            Due::Done => 5,
        }
    }
}

/// One attempt, from stage 1 (PIN known) to stage 4.
pub struct Attempt {
    client: ClientCert,
    key: [u8; 16],
    due: Due,
}

impl Attempt {
    /// Stage 1: the client's salt and certificate, with the PIN the user offered.
    pub fn start(salt: &[u8; 16], pin: &str, client: ClientCert) -> Attempt {
        Attempt {
            client,
            key: pin_key(salt, pin),
            due: Due::ClientChallenge,
        }
    }

    pub fn client(&self) -> &ClientCert {
        &self.client
    }

    fn out_of_order(&self, stage: u8) -> PairError {
        PairError::OutOfOrder {
            got: stage,
            expected: self.due.stage(),
        }
    }

    /// Stage 2: decrypts the client's challenge and answers
    /// `ECB(K, SHA-256(challenge ‖ sig(server cert) ‖ serversecret) ‖ serverchallenge)`.
    /// `random` supplies serversecret then serverchallenge.
    pub fn client_challenge(
        &mut self,
        encrypted: &[u8; 16],
        server_cert_signature: &[u8],
        random: [[u8; 16]; 2],
    ) -> Result<Vec<u8>, PairError> {
        if !matches!(self.due, Due::ClientChallenge) {
            return Err(self.out_of_order(2));
        }
        let [server_secret, server_challenge] = random;
        let mut challenge = *encrypted;
        ecb_decrypt(&self.key, &mut challenge);
        let hash = Sha256::new()
            .chain_update(challenge)
            .chain_update(server_cert_signature)
            .chain_update(server_secret)
            .finalize();
        let mut reply = Vec::with_capacity(48);
        reply.extend_from_slice(&hash);
        reply.extend_from_slice(&server_challenge);
        ecb_encrypt(&self.key, &mut reply);
        self.due = Due::ServerChallengeResp {
            server_secret,
            server_challenge,
        };
        Ok(reply)
    }

    /// Stage 3: keeps the client's hash and answers `serversecret ‖ sign(serversecret)`.
    pub fn server_challenge_resp(
        &mut self,
        encrypted: &[u8; 32],
        sign: impl FnOnce(&[u8; 16]) -> Result<Vec<u8>, String>,
    ) -> Result<Vec<u8>, PairError> {
        let Due::ServerChallengeResp {
            server_secret,
            server_challenge,
        } = self.due
        else {
            return Err(self.out_of_order(3));
        };
        let mut client_hash = *encrypted;
        ecb_decrypt(&self.key, &mut client_hash);
        let signature = sign(&server_secret).map_err(PairError::Sign)?;
        let mut reply = Vec::with_capacity(16 + signature.len());
        reply.extend_from_slice(&server_secret);
        reply.extend_from_slice(&signature);
        self.due = Due::ClientPairingSecret {
            server_challenge,
            client_hash,
        };
        Ok(reply)
    }

    /// Stage 4: the client's secret must hash to what it committed to in stage 3 (which only a
    /// client that knew the PIN could), and carry its certificate key's signature.
    pub fn client_pairing_secret(
        &mut self,
        client_secret: &[u8; 16],
        signature: &[u8],
    ) -> Result<(), PairError> {
        let Due::ClientPairingSecret {
            server_challenge,
            client_hash,
        } = self.due
        else {
            return Err(self.out_of_order(4));
        };
        self.due = Due::Done;
        let expected = Sha256::new()
            .chain_update(server_challenge)
            .chain_update(&self.client.signature)
            .chain_update(client_secret)
            .finalize();
        // The client zero-pads the hash to 32 bytes; with SHA-256 there is no padding.
        if expected.as_slice() != client_hash {
            return Err(PairError::WrongPin);
        }
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.client.public_key)
            .verify(client_secret, signature)
            .map_err(|_| PairError::BadSignature)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use aws_lc_rs::rsa::KeyPair;
    use aws_lc_rs::signature::RSA_PKCS1_SHA256;

    /// A Moonlight client written from §3.2 (the moonlight-python side of each formula).
    pub struct TestClient {
        pub cert_pem: String,
        key: KeyPair,
        cert_signature: Vec<u8>,
        pub salt: [u8; 16],
        aes: [u8; 16],
        challenge: [u8; 16],
        secret: [u8; 16],
    }

    impl TestClient {
        pub fn new(pin: &str) -> TestClient {
            let key =
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                    .unwrap();
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "NVIDIA GameStream Client");
            let cert = params.self_signed(&key).unwrap();
            let (cert_signature, _) = signature_and_key(cert.der()).unwrap();
            let salt = rand::random();
            TestClient {
                cert_pem: cert.pem(),
                key: KeyPair::from_pkcs8(&key.serialize_der()).unwrap(),
                cert_signature,
                salt,
                aes: pin_key(&salt, pin),
                challenge: rand::random(),
                secret: rand::random(),
            }
        }

        pub fn stage2_input(&self) -> [u8; 16] {
            let mut c = self.challenge;
            ecb_encrypt(&self.aes, &mut c);
            c
        }

        /// Checks stage 2's answer as the client does (the wrong-PIN check needs stage 3's
        /// server secret) and builds stage 3's input.
        pub fn stage3_input(&self, stage2_reply: &[u8]) -> ([u8; 32], Vec<u8>) {
            let mut plain = stage2_reply.to_vec();
            ecb_decrypt(&self.aes, &mut plain);
            let server_challenge = &plain[32..48];
            let hash = Sha256::new()
                .chain_update(server_challenge)
                .chain_update(&self.cert_signature)
                .chain_update(self.secret)
                .finalize();
            let mut out: [u8; 32] = hash.into();
            ecb_encrypt(&self.aes, &mut out);
            (out, plain)
        }

        /// The client's checks at stage 3: the host's signature, then the PIN proof.
        pub fn check_stage3(
            &self,
            stage2_plain: &[u8],
            pairing_secret: &[u8],
            server_cert_der: &[u8],
        ) -> Result<(), &'static str> {
            let (server_cert_sig, server_key) = signature_and_key(server_cert_der).unwrap();
            let (server_secret, signature) = pairing_secret.split_at(16);
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &server_key)
                .verify(server_secret, signature)
                .map_err(|_| "MITM")?;
            let expected = Sha256::new()
                .chain_update(self.challenge)
                .chain_update(&server_cert_sig)
                .chain_update(server_secret)
                .finalize();
            if expected.as_slice() == &stage2_plain[..32] {
                Ok(())
            } else {
                Err("wrong PIN")
            }
        }

        pub fn stage4_input(&self) -> ([u8; 16], Vec<u8>) {
            let mut signature = vec![0; self.key.public_modulus_len()];
            self.key
                .sign(
                    &RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    &self.secret,
                    &mut signature,
                )
                .unwrap();
            (self.secret, signature)
        }
    }

    pub struct TestHost {
        pub key: KeyPair,
        pub cert_der: Vec<u8>,
        pub cert_signature: Vec<u8>,
    }

    impl TestHost {
        pub fn new() -> TestHost {
            let identity = crate::state::identity::Identity::generate().unwrap();
            let der = pem::parse(identity.key_pem()).unwrap().contents().to_vec();
            let (cert_signature, _) = signature_and_key(&identity.cert_der).unwrap();
            TestHost {
                key: KeyPair::from_pkcs8(&der).unwrap(),
                cert_der: identity.cert_der,
                cert_signature,
            }
        }

        pub fn sign(&self, data: &[u8; 16]) -> Result<Vec<u8>, String> {
            let mut signature = vec![0; self.key.public_modulus_len()];
            self.key
                .sign(
                    &RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    data,
                    &mut signature,
                )
                .map_err(|e| e.to_string())?;
            Ok(signature)
        }
    }

    fn run(host_pin: &str, client_pin: &str) -> (Result<(), &'static str>, Result<(), PairError>) {
        let host = TestHost::new();
        let client = TestClient::new(client_pin);
        let cert = ClientCert::parse(&client.cert_pem).unwrap();
        let mut attempt = Attempt::start(&client.salt, host_pin, cert);
        let reply2 = attempt
            .client_challenge(&client.stage2_input(), &host.cert_signature, rand::random())
            .unwrap();
        assert_eq!(reply2.len(), 48);
        let (input3, plain2) = client.stage3_input(&reply2);
        let reply3 = attempt
            .server_challenge_resp(&input3, |s| host.sign(s))
            .unwrap();
        assert_eq!(reply3.len(), 16 + 256);
        let client_view = client.check_stage3(&plain2, &reply3, &host.cert_der);
        let (secret, signature) = client.stage4_input();
        (
            client_view,
            attempt.client_pairing_secret(&secret, &signature),
        )
    }

    #[test]
    fn the_right_pin_pairs_on_both_sides() {
        let (client, host) = run("1234", "1234");
        assert_eq!(client, Ok(()));
        assert_eq!(host, Ok(()));
    }

    #[test]
    fn a_wrong_pin_is_seen_by_both_sides() {
        let (client, host) = run("1234", "4321");
        assert_eq!(client, Err("wrong PIN"));
        assert_eq!(host, Err(PairError::WrongPin));
    }

    #[test]
    fn stages_out_of_order_or_replayed_are_refused() {
        let host = TestHost::new();
        let client = TestClient::new("1111");
        let cert = ClientCert::parse(&client.cert_pem).unwrap();
        let mut attempt = Attempt::start(&client.salt, "1111", cert);
        assert_eq!(
            attempt.server_challenge_resp(&[0; 32], |s| host.sign(s)),
            Err(PairError::OutOfOrder {
                got: 3,
                expected: 2
            })
        );
        let (secret, signature) = client.stage4_input();
        assert_eq!(
            attempt.client_pairing_secret(&secret, &signature),
            Err(PairError::OutOfOrder {
                got: 4,
                expected: 2
            })
        );
        attempt
            .client_challenge(&client.stage2_input(), &host.cert_signature, rand::random())
            .unwrap();
        // Replaying stage 2 is refused.
        assert!(matches!(
            attempt.client_challenge(&client.stage2_input(), &host.cert_signature, rand::random()),
            Err(PairError::OutOfOrder {
                got: 2,
                expected: 3
            })
        ));
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let host = TestHost::new();
        let client = TestClient::new("2222");
        let impostor = TestClient::new("2222");
        let mut attempt = Attempt::start(
            &client.salt,
            "2222",
            ClientCert::parse(&client.cert_pem).unwrap(),
        );
        let reply2 = attempt
            .client_challenge(&client.stage2_input(), &host.cert_signature, rand::random())
            .unwrap();
        let (input3, _) = client.stage3_input(&reply2);
        attempt
            .server_challenge_resp(&input3, |s| host.sign(s))
            .unwrap();
        let (secret, _) = client.stage4_input();
        let mut signature = vec![0; 256];
        impostor
            .key
            .sign(
                &RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                &secret,
                &mut signature,
            )
            .unwrap();
        assert_eq!(
            attempt.client_pairing_secret(&secret, &signature),
            Err(PairError::BadSignature)
        );
    }

    #[test]
    fn malformed_certificates_are_refused() {
        assert!(ClientCert::parse("junk").is_err());
        let not_a_cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0x03, 1, 2, 3]));
        assert!(ClientCert::parse(&not_a_cert).is_err());
        let key = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1; 8]));
        assert!(ClientCert::parse(&key).is_err());
    }

    #[test]
    fn key_derivation_matches_the_formula() {
        // SHA-256("0123456789abcdef" ‖ "1234"), first 16 bytes, computed independently.
        let salt = *b"0123456789abcdef";
        let full = Sha256::digest(b"0123456789abcdef1234");
        assert_eq!(pin_key(&salt, "1234"), full[..16]);
        let mut block = [7u8; 32];
        ecb_encrypt(&[1; 16], &mut block);
        assert_eq!(
            block[..16],
            block[16..],
            "ECB: equal blocks encrypt equally"
        );
        ecb_decrypt(&[1; 16], &mut block);
        assert_eq!(block, [7u8; 32]);
    }
}
