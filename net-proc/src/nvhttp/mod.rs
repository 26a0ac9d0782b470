//! nvhttp: the GameStream HTTP (port base) and HTTPS (base − 5) servers on the listeners the
//! broker handed over. hyper (HTTP/1 only) on a small tokio runtime; TLS by rustls with the
//! host key kept in the broker (see `tls.rs`). Requests, headers and connections are bounded, and
//! slow clients time out.

mod launch;
mod pairing;
pub mod server;
mod tally;
#[cfg(test)]
mod tests;
mod tls;
mod xml;

pub use tally::HttpTally;

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use lumen_ipc::net_msg::NetIdentity;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::broker_link::BrokerLink;
use server::{Conn, Transport};
use tally::ConnectionEnd;

/// Runtime worker threads: the TLS signer blocks one while the broker signs, so more than one.
/// (lumen-net's seccomp policy allows 16 threads in all.)
const WORKER_THREADS: usize = 3;
/// Connections served at once per listener; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Longest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 32 * 1024;
const MAX_HEADERS: usize = 32;

/// How long slow clients are given.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A client must send a whole request head within this.
    pub head_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// The longest a connection lives (pairing stage 1 waits up to a minute for the PIN).
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(120),
        }
    }
}

/// The host's public identity as lumen-net serves it.
pub struct HostIdentity {
    pub uniqueid: String,
    paired: HashSet<[u8; 32]>,
    /// What lumen-encode can produce (serverinfo's codec bits follow it, as DESCRIBE does).
    pub encoder: lumen_ipc::media::EncoderCapabilities,
}

/// What every request handler reads.
pub struct Host {
    pub hostname: String,
    pub http_port: u16,
    pub https_port: u16,
    pub link: Arc<BrokerLink>,
    identity: RwLock<Option<Arc<HostIdentity>>>,
    /// The certificate the TLS server presents (the one Moonlight pinned at pairing).
    cert: Arc<RwLock<Option<CertificateDer<'static>>>>,
    /// The streaming side (`/launch`, `/resume`, `/cancel`, `currentgame`), once it runs.
    streams: std::sync::OnceLock<Arc<crate::stream::Streams>>,
    /// What both listeners answered and refused (reported with the stream statistics).
    pub tally: Arc<HttpTally>,
}

impl Host {
    pub fn new(link: Arc<BrokerLink>, hostname: String, http_port: u16, https_port: u16) -> Host {
        Host {
            hostname,
            http_port,
            https_port,
            link,
            identity: RwLock::new(None),
            cert: Arc::new(RwLock::new(None)),
            streams: std::sync::OnceLock::new(),
            tally: Arc::new(HttpTally::default()),
        }
    }

    /// Hands over the streaming side (which reports our counters); the first one stays.
    pub fn set_streams(&self, streams: Arc<crate::stream::Streams>) {
        streams.report_http(self.tally.clone());
        let _ = self.streams.set(streams);
    }

    pub fn streams(&self) -> Option<&Arc<crate::stream::Streams>> {
        self.streams.get()
    }

    pub fn identity(&self) -> Option<Arc<HostIdentity>> {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes the broker's identity update (a new pinned set after pairing or `unpair`).
    pub fn set_identity(&self, update: &NetIdentity) -> Result<(), String> {
        let cert = pem::parse(&update.cert_pem)
            .map_err(|e| format!("NetIdentity: host certificate: {e}"))?;
        if cert.tag() != "CERTIFICATE" {
            return Err(format!(
                "NetIdentity: host certificate PEM is {:?}",
                cert.tag()
            ));
        }
        let identity = HostIdentity {
            uniqueid: update.uniqueid.clone(),
            paired: update.paired_sha256.iter().copied().collect(),
            encoder: update.encoder.clone(),
        };
        *self.cert.write().unwrap_or_else(PoisonError::into_inner) =
            Some(CertificateDer::from(cert.into_contents()));
        *self
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(identity));
        Ok(())
    }

    /// Whether the client certificate with this DER SHA-256 is paired now.
    pub fn is_paired(&self, sha256: &[u8; 32]) -> bool {
        self.identity().is_some_and(|id| id.paired.contains(sha256))
    }
}

/// The running servers; dropping it stops them.
pub struct Nvhttp {
    runtime: Option<tokio::runtime::Runtime>,
    pub host: Arc<Host>,
}

impl Drop for Nvhttp {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_millis(500));
        }
    }
}

fn listener(fd: OwnedFd) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: non-blocking: {e}"))?;
    Ok(listener)
}

fn port(listener: &std::net::TcpListener) -> Result<u16, String> {
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("listener address: {e}"))
}

impl Nvhttp {
    /// Serves HTTP on `http` and HTTPS on `https` (listening TCP sockets).
    pub fn start(
        http: OwnedFd,
        https: OwnedFd,
        link: Arc<BrokerLink>,
        identity: &NetIdentity,
        hostname: String,
    ) -> Result<Nvhttp, String> {
        Nvhttp::start_with_limits(http, https, link, identity, hostname, Limits::default())
    }

    /// [`start`](Self::start) with other time limits (tests).
    pub fn start_with_limits(
        http: OwnedFd,
        https: OwnedFd,
        link: Arc<BrokerLink>,
        identity: &NetIdentity,
        hostname: String,
        limits: Limits,
    ) -> Result<Nvhttp, String> {
        let (http, https) = (listener(http)?, listener(https)?);
        let host = Arc::new(Host::new(
            link.clone(),
            hostname,
            port(&http)?,
            port(&https)?,
        ));
        host.set_identity(identity)?;
        let tls = tls::server_config(host.cert.clone(), link).map_err(|e| format!("TLS: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .max_blocking_threads(1)
            .thread_name("lumen-net-http")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("starting the nvhttp runtime: {e}"))?;
        let (http, https) = runtime.block_on(async {
            Ok::<_, String>((
                TcpListener::from_std(http).map_err(|e| format!("HTTP listener: {e}"))?,
                TcpListener::from_std(https).map_err(|e| format!("HTTPS listener: {e}"))?,
            ))
        })?;
        runtime.spawn(accept_loop(http, host.clone(), None, limits));
        runtime.spawn(accept_loop(
            https,
            host.clone(),
            Some(TlsAcceptor::from(tls)),
            limits,
        ));
        Ok(Nvhttp {
            runtime: Some(runtime),
            host,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    host: Arc<Host>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let name = if tls.is_some() { "HTTPS" } else { "HTTP" };
    loop {
        // Wait for a free slot first, so excess clients queue in the backlog.
        if slots.available_permits() == 0 {
            host.tally.waited_for_slot();
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of fds and similar: back off rather than spin.
                eprintln!("lumen-net: {name} accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (host, tls) = (host.clone(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tally = host.tally.clone();
            let served = tokio::time::timeout(
                limits.connection_lifetime,
                connection(stream, host, tls, limits),
            );
            let (end, why) = match served.await {
                Ok(Ok(())) => return tally.ended(ConnectionEnd::Served),
                Ok(Err(failed)) => failed,
                Err(_) => (
                    ConnectionEnd::TimedOut,
                    "the connection outlived its lifetime".to_string(),
                ),
            };
            tally.ended(end);
            if let Some(permit) = tally.log_line(std::time::Instant::now()) {
                if permit.held_back > 0 {
                    eprintln!(
                        "lumen-net: {} nvhttp connection errors were not logged (counted in status)",
                        permit.held_back
                    );
                }
                eprintln!("lumen-net: {name} connection: {why}");
            }
        });
    }
}

/// How a hyper connection error ends up in the counters.
fn hyper_end(e: &hyper::Error) -> ConnectionEnd {
    if e.is_timeout() {
        ConnectionEnd::TimedOut
    } else if e.is_parse() || e.is_parse_too_large() {
        ConnectionEnd::Malformed
    } else {
        ConnectionEnd::Other
    }
}

fn hyper_failed(e: hyper::Error) -> (ConnectionEnd, String) {
    (hyper_end(&e), e.to_string())
}

/// Serves one connection; an error says how it ended and why.
async fn connection(
    stream: TcpStream,
    host: Arc<Host>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
) -> Result<(), (ConnectionEnd, String)> {
    let local = stream.local_addr().ok();
    let _ = stream.set_nodelay(true);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    match tls {
        None => {
            let conn = Conn {
                transport: Transport::Http,
                local,
            };
            let service = service_fn(move |req| server::serve(host.clone(), conn, req));
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
                .map_err(hyper_failed)
        }
        Some(acceptor) => {
            let stream =
                tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream))
                    .await
                    .map_err(|_| {
                        (
                            ConnectionEnd::TimedOut,
                            "TLS handshake timed out".to_string(),
                        )
                    })?
                    .map_err(|e| (ConnectionEnd::TlsFailed, format!("TLS handshake: {e}")))?;
            let client = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|cert| Sha256::digest(cert.as_ref()).into());
            let conn = Conn {
                transport: Transport::Https { client },
                local,
            };
            let service = service_fn(move |req| server::serve(host.clone(), conn, req));
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
                .map_err(hyper_failed)
        }
    }
}
