//! Hostile traffic for `tests/tests/reliability_flood.rs`: threads that, for a bounded time and
//! at a bounded rate, send the host what a hostile LAN peer could — junk datagrams to the media
//! and control ports, ENet packets with bad lengths and commands, ENet peers with the wrong
//! connect data, and garbage, truncated, oversized and slow requests to HTTP, HTTPS and RTSP.
//! Only ever aimed at 127.0.0.1. Each flooder returns what it sent, for the published figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What one flooder did.
#[derive(Debug, Default, Clone)]
pub struct Sent {
    pub name: String,
    /// Datagrams, connections or requests sent (by kind, as the flooder counts them).
    pub items: u64,
    /// Items the kernel or the host refused outright (a reset, a refused connect).
    pub refused: u64,
}

/// A small deterministic generator (xorshift64*): the flood needs variety, not secrecy, and a
/// seed printed in the figures makes a run repeatable.
pub struct Junk(u64);

impl Junk {
    pub fn new(seed: u64) -> Junk {
        Junk(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// `min` bytes and up to `extra` − 1 more.
    pub fn some_bytes(&mut self, min: usize, extra: u64) -> Vec<u8> {
        let len = min + self.below(extra) as usize;
        self.bytes(len)
    }
}

/// Paces a loop to `per_second` iterations until `until`.
struct Pace {
    start: Instant,
    until: Instant,
    per_second: u64,
    done: u64,
}

impl Pace {
    fn new(duration: Duration, per_second: u64) -> Pace {
        let start = Instant::now();
        Pace {
            start,
            until: start + duration,
            per_second: per_second.max(1),
            done: 0,
        }
    }

    /// Waits for the next slot; false once the time is up.
    fn next(&mut self) -> bool {
        let due = self.start + Duration::from_secs_f64(self.done as f64 / self.per_second as f64);
        let now = Instant::now();
        if now >= self.until {
            return false;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        self.done += 1;
        Instant::now() < self.until
    }
}

/// One junk datagram: empty, truncated, ping-shaped with a wrong payload, a bare "PING" (the
/// client's legacy ping, from a port that is not the client's), random, or oversized.
fn junk_datagram(junk: &mut Junk) -> Vec<u8> {
    match junk.below(7) {
        0 => Vec::new(),
        1 => junk.some_bytes(1, 3),
        2 => junk.bytes(20),
        3 => b"PING".to_vec(),
        4 => junk.some_bytes(1, 1400),
        5 => junk.some_bytes(1500, 8000),
        _ => junk.bytes(60_000),
    }
}

/// Junk datagrams to `target` at `per_second`, from a new source port every 64 datagrams.
pub fn udp_junk(
    name: &str,
    target: SocketAddr,
    duration: Duration,
    per_second: u64,
    seed: u64,
) -> Result<Sent> {
    let mut junk = Junk::new(seed);
    let mut pace = Pace::new(duration, per_second);
    let mut sent = Sent {
        name: name.into(),
        ..Sent::default()
    };
    let mut socket = UdpSocket::bind("127.0.0.1:0").context("binding a flood socket")?;
    while pace.next() {
        if sent.items % 64 == 63 {
            socket = UdpSocket::bind("127.0.0.1:0").context("binding a flood socket")?;
        }
        match socket.send_to(&junk_datagram(&mut junk), target) {
            Ok(_) => sent.items += 1,
            Err(_) => sent.refused += 1,
        }
    }
    Ok(sent)
}

/// ENet-shaped datagrams with bad lengths and commands (the ENet 1.3 wire format rusty_enet and
/// moonlight-common-c's ENet speak): a protocol header with the sent-time flag, then a command
/// whose declared length lies, or that is truncated, or unknown, or aimed at a peer that does not
/// exist.
fn enet_junk(junk: &mut Junk) -> Vec<u8> {
    const SENT_TIME: u16 = 0x8000;
    const NO_PEER: u16 = 0x0FFF;
    let sent_time = junk.next_u64() as u16;
    let peer = match junk.below(3) {
        0 => NO_PEER,
        _ => junk.below(4) as u16,
    };
    let mut d = Vec::new();
    d.extend_from_slice(&(peer | SENT_TIME).to_be_bytes());
    d.extend_from_slice(&sent_time.to_be_bytes());
    match junk.below(6) {
        // CONNECT (2, acknowledge flag) cut short: 48 bytes are due.
        0 => {
            d.extend_from_slice(&[0x82, 0xFF, 0, 1]);
            d.extend(junk.some_bytes(0, 40));
        }
        // SEND_RELIABLE (6) declaring 65535 bytes of data and carrying 4.
        1 => {
            d.extend_from_slice(&[0x86, 0, 0, 1, 0xFF, 0xFF]);
            d.extend(junk.bytes(4));
        }
        // SEND_FRAGMENT (8) with a fragment offset past the total length.
        2 => {
            d.extend_from_slice(&[0x88, 0, 0, 1, 0, 1, 0, 16, 0, 0, 0, 2]);
            d.extend_from_slice(&[0, 0, 0, 9, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 16]);
            d.extend(junk.bytes(16));
        }
        // Commands ENet does not have (13..=15), then random.
        3 => {
            d.push(0x8D + junk.below(3) as u8);
            d.extend(junk.some_bytes(3, 60));
        }
        // A header alone, or a header cut in half.
        4 => d.truncate(1 + junk.below(4) as usize),
        // Many commands, each a bare header (an acknowledge storm without anything to ack).
        _ => {
            for _ in 0..(1 + junk.below(32)) {
                d.extend_from_slice(&[0x01, 0xFF]);
                d.extend_from_slice(&(junk.next_u64() as u16).to_be_bytes());
                d.extend_from_slice(&(junk.next_u64() as u32).to_be_bytes());
            }
        }
    }
    d
}

/// ENet-shaped junk to the control port at `per_second`.
pub fn enet_bad_packets(
    target: SocketAddr,
    duration: Duration,
    per_second: u64,
    seed: u64,
) -> Result<Sent> {
    let mut junk = Junk::new(seed);
    let mut pace = Pace::new(duration, per_second);
    let mut sent = Sent {
        name: "control: ENet packets with bad lengths/commands".into(),
        ..Sent::default()
    };
    let socket = UdpSocket::bind("127.0.0.1:0").context("binding a flood socket")?;
    while pace.next() {
        match socket.send_to(&enet_junk(&mut junk), target) {
            Ok(_) => sent.items += 1,
            Err(_) => sent.refused += 1,
        }
    }
    Ok(sent)
}

/// Real ENet peers (rusty_enet) that connect with the wrong connect data, one after another:
/// the host must turn each away. `items` counts connects tried, `refused` the ones the host
/// disconnected.
pub fn enet_wrong_peers(target: SocketAddr, duration: Duration, per_second: u64) -> Result<Sent> {
    use rusty_enet::{Event, Host, HostSettings};
    let mut pace = Pace::new(duration, per_second);
    let mut sent = Sent {
        name: "control: ENet peers with wrong connect data".into(),
        ..Sent::default()
    };
    while pace.next() {
        let socket = UdpSocket::bind("127.0.0.1:0").context("binding a flood socket")?;
        let mut host = Host::new(
            socket,
            HostSettings {
                peer_limit: 1,
                channel_limit: 2,
                ..HostSettings::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("ENet host: {e:?}"))?;
        host.connect(target, 2, 0xBAD0_0000 | sent.items as u32)
            .map_err(|e| anyhow::anyhow!("ENet connect: {e:?}"))?;
        sent.items += 1;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match host.service() {
                Ok(Some(Event::Disconnect { .. })) => {
                    sent.refused += 1;
                    break;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => break,
            }
        }
    }
    Ok(sent)
}

/// One bad request over a fresh TCP connection: garbage, a truncated head, an oversized head,
/// a request line with a path or method the server does not know, binary junk.
fn bad_request(junk: &mut Junk, rtsp: bool) -> Vec<u8> {
    match junk.below(6) {
        0 => junk.some_bytes(1, 512),
        1 if rtsp => b"OPTIONS rtsp://127.0.0.1 RTSP/1.0\r\nCSeq: 1\r\n".to_vec(),
        1 => b"GET /serverinfo?uniqueid=0123456789ABCDEF HTTP/1.1\r\nHost: x\r\n".to_vec(),
        2 => {
            let mut head = if rtsp {
                b"DESCRIBE rtsp://127.0.0.1 RTSP/1.0\r\nCSeq: 2\r\nX-Junk: ".to_vec()
            } else {
                b"GET /serverinfo HTTP/1.1\r\nX-Junk: ".to_vec()
            };
            head.extend(std::iter::repeat_n(b'a', 70_000));
            head.extend_from_slice(b"\r\n\r\n");
            head
        }
        3 if rtsp => {
            b"ANNOUNCE rtsp://127.0.0.1 RTSP/1.0\r\nCSeq: 3\r\nContent-length: 99999999\r\n\r\nv=0"
                .to_vec()
        }
        3 => b"GET /launch?appid=1&rikey=zz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        4 if rtsp => b"PLAY rtsp://127.0.0.1 RTSP/1.0\r\nCSeq: x\r\n\r\n".to_vec(),
        4 => b"GET /pair?uniqueid=a&phrase=getservercert&salt=00 HTTP/1.1\r\n\r\n".to_vec(),
        _ if rtsp => b"GARBAGE \x00\x01\x02 RTSP/9.9\r\n\r\n".to_vec(),
        _ => b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    }
}

/// Bad requests to a TCP listener at `per_second`, each on its own connection; reads what the
/// host answers (briefly) so the host is not stalled on a full socket buffer.
pub fn tcp_bad_requests(
    name: &str,
    target: SocketAddr,
    rtsp: bool,
    duration: Duration,
    per_second: u64,
    seed: u64,
) -> Result<Sent> {
    let mut junk = Junk::new(seed);
    let mut pace = Pace::new(duration, per_second);
    let mut sent = Sent {
        name: name.into(),
        ..Sent::default()
    };
    while pace.next() {
        let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            sent.refused += 1;
            continue;
        };
        sent.items += 1;
        let _ = stream.set_write_timeout(Some(Duration::from_millis(300)));
        let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
        if stream.write_all(&bad_request(&mut junk, rtsp)).is_err() {
            sent.refused += 1;
            continue;
        }
        let mut answer = [0u8; 4096];
        let _ = stream.read(&mut answer);
    }
    Ok(sent)
}

/// Slowloris: keeps `connections` connections to `target` open, each sending one byte of a
/// request head per second and never finishing it, until `duration` is up; a connection the host
/// closes is replaced. `items` counts connections opened, `refused` those the host closed.
pub fn slowloris(
    name: &str,
    target: SocketAddr,
    connections: usize,
    duration: Duration,
) -> Result<Sent> {
    let until = Instant::now() + duration;
    let mut sent = Sent {
        name: name.into(),
        ..Sent::default()
    };
    let head = b"GET /serverinfo?uniqueid=0123456789ABCDEF HTTP/1.1\r\nX-Slow: ";
    let mut open: Vec<(TcpStream, usize)> = Vec::new();
    while Instant::now() < until {
        while open.len() < connections {
            match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
                Ok(stream) => {
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                    sent.items += 1;
                    open.push((stream, 0));
                }
                Err(_) => {
                    sent.refused += 1;
                    break;
                }
            }
        }
        let mut kept = Vec::with_capacity(open.len());
        for (mut stream, at) in open {
            let byte = head.get(at).copied().unwrap_or(b'a');
            match stream.write(&[byte]) {
                Ok(1) => kept.push((stream, at + 1)),
                _ => sent.refused += 1,
            }
        }
        open = kept;
        std::thread::sleep(
            Duration::from_secs(1).min(until.saturating_duration_since(Instant::now())),
        );
    }
    Ok(sent)
}

/// A TLS client that accepts any server certificate and presents none (the flood's "handshake
/// without a client certificate").
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS abuse of the HTTPS port at `per_second`: alternately raw garbage where a ClientHello
/// belongs, and a full handshake without a client certificate followed by `GET /applist` (which
/// the host must answer 401). `items` counts connections; `refused` handshakes that failed on
/// our side.
pub fn tls_abuse(
    target: SocketAddr,
    duration: Duration,
    per_second: u64,
    seed: u64,
) -> Result<Sent> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_no_client_auth(),
    );
    let mut junk = Junk::new(seed);
    let mut pace = Pace::new(duration, per_second);
    let mut sent = Sent {
        name: "HTTPS: TLS garbage and handshakes without a client certificate".into(),
        ..Sent::default()
    };
    while pace.next() {
        let Ok(mut tcp) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            sent.refused += 1;
            continue;
        };
        sent.items += 1;
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(1)));
        if sent.items.is_multiple_of(2) {
            // A TLS record header (handshake, TLS 1.2) with a lying length, then junk.
            let mut garbage = vec![0x16, 0x03, 0x03, 0xFF, 0xFF];
            garbage.extend(junk.some_bytes(0, 300));
            let _ = tcp.write_all(&garbage);
            let mut answer = [0u8; 512];
            let _ = tcp.read(&mut answer);
            continue;
        }
        let name = rustls::pki_types::ServerName::try_from("lumen").context("server name")?;
        let Ok(mut conn) = rustls::ClientConnection::new(config.clone(), name) else {
            sent.refused += 1;
            continue;
        };
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        if tls
            .write_all(b"GET /applist?uniqueid=0123456789ABCDEF HTTP/1.1\r\nHost: x\r\n\r\n")
            .is_err()
        {
            sent.refused += 1;
            continue;
        }
        let mut answer = [0u8; 4096];
        if tls.read(&mut answer).is_err() {
            sent.refused += 1;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_varies_and_repeats_from_a_seed() {
        let (mut a, mut b) = (Junk::new(7), Junk::new(7));
        let first: Vec<Vec<u8>> = (0..50).map(|_| junk_datagram(&mut a)).collect();
        let again: Vec<Vec<u8>> = (0..50).map(|_| junk_datagram(&mut b)).collect();
        assert_eq!(first, again);
        let lengths: std::collections::BTreeSet<usize> = first.iter().map(Vec::len).collect();
        assert!(lengths.len() > 10, "{lengths:?}");
        let enet: Vec<Vec<u8>> = (0..50).map(|_| enet_junk(&mut a)).collect();
        assert!(enet.iter().any(|d| d.len() < 4) && enet.iter().any(|d| d.len() > 20));
    }
}
