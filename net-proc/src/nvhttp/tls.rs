//! The HTTPS side's TLS: the host certificate with a signing key that lives in the broker, and
//! a client-certificate verifier that accepts any well-formed certificate (checking only that
//! the client holds its key). Whether a certificate is *paired* is decided per request against
//! the broker's pinned set (`NetIdentity.paired_sha256`), so an unpaired client completes the
//! handshake and is answered 401, as Sunshine does (moonlight-qt falls back to HTTP on a 401).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lumen_ipc::net_msg::{NetReply, NetRequest};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{
    DigitallySignedStruct, DistinguishedName, Error, PeerMisbehaved, ServerConfig,
    SignatureAlgorithm, SignatureScheme,
};

use crate::broker_link::BrokerLink;

/// How long a handshake waits for the broker's signature.
const SIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS server configuration: TLS 1.2 and 1.3 (Sunshine refuses 1.0/1.1), the host
/// certificate from `host_cert`, signatures from the broker, any client certificate.
pub fn server_config(
    host_cert: Arc<RwLock<Option<CertificateDer<'static>>>>,
    link: Arc<BrokerLink>,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(AnyClientCert { provider }))
        .with_cert_resolver(Arc::new(HostCert {
            cert: host_cert,
            key: Arc::new(BrokerKey { link }),
        }));
    // Moonlight never resumes sessions; no ticket key or cache to hold.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Presents the host certificate (the one pinned at pairing) with the broker's key.
#[derive(Debug)]
struct HostCert {
    cert: Arc<RwLock<Option<CertificateDer<'static>>>>,
    key: Arc<BrokerKey>,
}

impl ResolvesServerCert for HostCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = self
            .cert
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        Some(Arc::new(CertifiedKey::new(vec![cert], self.key.clone())))
    }
}

/// The host's RSA key, held by the broker: each signature is a `TlsSign` request.
#[derive(Debug)]
struct BrokerKey {
    link: Arc<BrokerLink>,
}

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerLink")
    }
}

/// The schemes the broker signs with, most preferred first (TLS 1.3 needs PSS).
const SCHEMES: [SignatureScheme; 2] = [
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
];

impl SigningKey for BrokerKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = SCHEMES.into_iter().find(|s| offered.contains(s))?;
        Some(Box::new(BrokerSigner {
            link: self.link.clone(),
            scheme,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::RSA
    }
}

#[derive(Debug)]
struct BrokerSigner {
    link: Arc<BrokerLink>,
    scheme: SignatureScheme,
}

impl Signer for BrokerSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let request = NetRequest::TlsSign {
            scheme: u16::from(self.scheme),
            message: message.to_vec(),
        };
        // rustls signs synchronously inside the handshake: this blocks the handshake's task
        // (on one runtime worker) for at most SIGN_TIMEOUT.
        match self.link.request_blocking(request, SIGN_TIMEOUT) {
            Ok(NetReply::Signature(signature)) => Ok(signature),
            Ok(NetReply::Refused(why)) => Err(Error::General(format!(
                "the broker refused the TLS signature: {why}"
            ))),
            Ok(other) => Err(Error::General(format!(
                "the broker answered a TLS signature with {other:?}"
            ))),
            Err(e) => Err(Error::General(format!("TLS signature: {e}"))),
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// Accepts any parseable client certificate; checks the handshake signature with its key.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
}

/// The SubjectPublicKeyInfo DER and the subjectPublicKey bits of a certificate.
fn public_key(cert: &CertificateDer<'_>) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    if !rest.is_empty() {
        return Err(Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ));
    }
    let spki = &parsed.tbs_certificate.subject_pki;
    Ok((spki.raw.to_vec(), spki.subject_public_key.data.to_vec()))
}

impl ClientCertVerifier for AnyClientCert {
    // Optional: a client without a certificate is answered 401, not cut off in the handshake.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    // Moonlight's certificates are self-signed and validity dates are ignored (as Sunshine
    // does); pairing, not a CA, decides trust.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        public_key(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let (_, key) = public_key(cert)?;
        let algorithms = self
            .provider
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algorithms)| *algorithms)
            .ok_or(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
        // A TLS 1.2 scheme may map to several algorithms; one made for another key type
        // cannot verify, so the first that verifies decides.
        if algorithms
            .iter()
            .any(|alg| alg.verify_signature(&key, message, dss.signature()).is_ok())
        {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(Error::InvalidCertificate(
                rustls::CertificateError::BadSignature,
            ))
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let (spki, _) = public_key(cert)?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(spki),
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
