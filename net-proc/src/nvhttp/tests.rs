//! nvhttp over real loopback sockets: TLS 1.2 and 1.3 handshakes signed by a stand-in broker,
//! the host certificate presented, paired certificates served, every other client answered 401,
//! and malformed HTTP refused without harm.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rsa::KeyPair as RsaKeyPair;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256};
use lumen_ipc::msg::WorkerMsg;
use lumen_ipc::net_msg::{NetIdentity, NetReply, NetRequest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use sha2::{Digest, Sha256};

use super::{Limits, Nvhttp};
use crate::broker_link::BrokerLink;

struct Identity {
    cert_der: Vec<u8>,
    cert_pem: String,
    key_der: Vec<u8>,
}

fn identity(name: &str) -> Identity {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Identity {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_der: key.serialize_der(),
    }
}

/// A "broker" that signs TLS handshakes with `host`'s key, as the real one does.
fn signing_link(host: &Identity) -> Arc<BrokerLink> {
    let key = Arc::new(RsaKeyPair::from_pkcs8(&host.key_der).unwrap());
    let slot: Arc<Mutex<Option<Arc<BrokerLink>>>> = Arc::default();
    let link = BrokerLink::with_sender({
        let slot = slot.clone();
        move |msg| {
            let WorkerMsg::NetRequest {
                id,
                request: NetRequest::TlsSign { scheme, message },
            } = msg
            else {
                return Err("only TLS signatures are expected".into());
            };
            let link = slot.lock().unwrap().clone().unwrap();
            let key = key.clone();
            std::thread::spawn(move || {
                let encoding: &'static dyn aws_lc_rs::signature::RsaEncoding = match scheme {
                    0x0804 => &RSA_PSS_SHA256,
                    0x0401 => &RSA_PKCS1_SHA256,
                    other => {
                        link.complete(id, NetReply::Refused(format!("scheme {other:#x}")));
                        return;
                    }
                };
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(
                    encoding,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    &message,
                    &mut signature,
                )
                .unwrap();
                link.complete(id, NetReply::Signature(signature));
            });
            Ok(())
        }
    });
    *slot.lock().unwrap() = Some(link.clone());
    link
}

struct Server {
    nvhttp: Nvhttp,
    host_cert: Vec<u8>,
}

fn server(paired: &[&Identity]) -> Server {
    server_with(paired, Limits::default())
}

fn server_with(paired: &[&Identity], limits: Limits) -> Server {
    let host = identity("lumen test host");
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let https = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nvhttp = Nvhttp::start_with_limits(
        http.into(),
        https.into(),
        signing_link(&host),
        &NetIdentity {
            uniqueid: "0011223344556677".into(),
            cert_pem: host.cert_pem.clone(),
            paired_sha256: paired
                .iter()
                .map(|id| Sha256::digest(&id.cert_der).into())
                .collect(),
            encrypt_video: true,
            encoder: Default::default(),
        },
        "testbox".into(),
        limits,
    )
    .unwrap();
    Server {
        nvhttp,
        host_cert: host.cert_der,
    }
}

/// Accepts any server certificate (remembering it) but checks the handshake signature, so a bad
/// signature from the broker path would fail the test.
#[derive(Debug)]
struct PinRecorder {
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for PinRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
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

/// One HTTPS GET with an optional client identity; returns the body and the server certificate.
fn https_get(
    server: &Server,
    version: &'static SupportedProtocolVersion,
    client: Option<&Identity>,
    path: &str,
) -> (String, Vec<u8>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let recorder = Arc::new(PinRecorder {
        provider: provider.clone(),
        seen: Mutex::new(None),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone());
    let config = match client {
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(id.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("lumen").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", server.nvhttp.host.https_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: lumen\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let body = read_all(&mut tls);
    let seen = recorder.seen.lock().unwrap().clone().unwrap();
    (body, seen)
}

/// Reads until the server closes (a close without close_notify still ends the response).
fn read_all(stream: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the reply: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn http_raw(server: &Server, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", server.nvhttp.host.http_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer (and close) before it has read all of an oversized request.
    let _ = tcp.write_all(request);
    read_all(&mut tcp)
}

const VERSIONS: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];

#[test]
fn paired_clients_are_served_over_tls_12_and_13_with_the_host_certificate() {
    let paired = identity("NVIDIA GameStream Client");
    let server = server(&[&paired]);
    for version in VERSIONS {
        let (body, cert) = https_get(&server, version, Some(&paired), "/applist?uniqueid=x");
        assert!(body.starts_with("HTTP/1.1 200"), "{version:?}: {body}");
        assert!(
            body.contains("<AppTitle>Desktop</AppTitle>"),
            "{version:?}: {body}"
        );
        assert_eq!(
            cert, server.host_cert,
            "{version:?}: the pinned certificate"
        );
        let (info, _) = https_get(&server, version, Some(&paired), "/serverinfo?uniqueid=x");
        assert!(info.contains("<PairStatus>1</PairStatus>"), "{info}");
    }
}

#[test]
fn unknown_missing_and_unpaired_certificates_get_401() {
    let paired = identity("NVIDIA GameStream Client");
    let stranger = identity("NVIDIA GameStream Client");
    let server = server(&[&paired]);
    for version in VERSIONS {
        for client in [Some(&stranger), None] {
            for path in [
                "/applist",
                "/serverinfo",
                "/launch?appid=1",
                "/pair?phrase=pairchallenge",
            ] {
                let (body, _) = https_get(&server, version, client, path);
                assert!(body.starts_with("HTTP/1.1 200"), "{body}");
                assert!(
                    body.contains("status_code=\"401\""),
                    "{version:?} {path}: {body}"
                );
            }
        }
    }
    // `unpair`: the broker's next identity no longer pins the client.
    let host = server.nvhttp.host.identity().unwrap();
    server
        .nvhttp
        .host
        .set_identity(&NetIdentity {
            uniqueid: host.uniqueid.clone(),
            cert_pem: pem::encode(&pem::Pem::new("CERTIFICATE", server.host_cert.clone())),
            paired_sha256: Vec::new(),
            encrypt_video: true,
            encoder: Default::default(),
        })
        .unwrap();
    let (body, _) = https_get(&server, &rustls::version::TLS13, Some(&paired), "/applist");
    assert!(body.contains("status_code=\"401\""), "{body}");
}

#[test]
fn plain_http_serves_serverinfo_and_refuses_malformed_requests() {
    let server = server(&[]);
    let info = http_raw(
        &server,
        b"GET /serverinfo?uniqueid=0123456789ABCDEF&uuid=1&&corever=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(info.starts_with("HTTP/1.1 200"), "{info}");
    assert!(
        info.contains(&format!(
            "<HttpsPort>{}</HttpsPort>",
            server.nvhttp.host.https_port
        )),
        "{info}"
    );
    assert!(info.contains("<hostname>testbox</hostname>"), "{info}");
    let missing = http_raw(
        &server,
        b"GET /applist HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    // A head larger than the limit, and too many headers: refused, the server lives on.
    let huge = format!(
        "GET /serverinfo?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let reply = http_raw(&server, huge.as_bytes());
    assert!(!reply.contains("status_code=\"200\""), "{reply}");
    let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
    let reply = http_raw(
        &server,
        format!("GET /serverinfo HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    );
    assert!(!reply.contains("status_code=\"200\""), "{reply}");
    let garbage = http_raw(&server, b"\x16\x03\x01 not http at all\r\n\r\n");
    assert!(!garbage.contains("status_code"), "{garbage}");
    let again = http_raw(
        &server,
        b"GET /serverinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}

#[test]
fn slow_clients_are_cut_off() {
    let limits = Limits {
        head_timeout: Duration::from_millis(300),
        tls_handshake_timeout: Duration::from_millis(300),
        // Long: only the head and handshake limits may end these connections in time.
        connection_lifetime: Duration::from_secs(30),
    };
    let server = server_with(&[], limits);
    for port in [server.nvhttp.host.http_port, server.nvhttp.host.https_port] {
        // Connects, then sends half a request head (or nothing of a TLS handshake) and waits.
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if port == server.nvhttp.host.http_port {
            tcp.write_all(b"GET /serverinfo HTTP/1.1\r\nHost:").unwrap();
        }
        let start = std::time::Instant::now();
        let reply = read_all(&mut tcp);
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "port {port}: the server held a silent client for {took:?}"
        );
        assert!(!reply.contains("status_code=\"200\""), "{reply}");
    }
}
