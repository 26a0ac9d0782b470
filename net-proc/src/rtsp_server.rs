//! The RTSP listener (protocol notes §4.1): one request per TCP connection, answered and then
//! closed. The handshake state lives in the launch ([`Streams`]), so it carries across the client's
//! connections. Connections are served one at a time on one thread: the client never opens two at
//! once, and a slow or silent one is cut off by the read timeout.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lumen_ipc::net_msg::RtspCounters;

use crate::stream::Streams;

/// A whole request must arrive within this (the client's own reply timeout is 15 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request read (ANNOUNCE bodies are about 2 KiB; the core parser bounds bodies at 16 KiB).
const MAX_REQUEST: usize = 32 * 1024;

/// What the RTSP listener did since lumen-net started (reported with each stream's statistics).
#[derive(Debug, Default)]
pub struct RtspTally {
    requests: AtomicU64,
    refused: AtomicU64,
    dropped_connections: AtomicU64,
}

impl RtspTally {
    /// A request was answered; `refused`: with an error status.
    pub fn answered(&self, refused: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection ended on an error, unanswered.
    pub fn dropped(&self) {
        self.dropped_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counters(&self) -> RtspCounters {
        RtspCounters {
            requests: self.requests.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            dropped_connections: self.dropped_connections.load(Ordering::Relaxed),
        }
    }
}

/// Serves RTSP on `listener` from a thread of its own, for the life of the process.
pub fn start(listener: OwnedFd, streams: Arc<Streams>) -> Result<(), String> {
    let listener = TcpListener::from(listener);
    listener
        .set_nonblocking(false)
        .map_err(|e| format!("RTSP listener: {e}"))?;
    std::thread::Builder::new()
        .name("lumen-net-rtsp".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(e) = serve(stream, &streams) {
                        streams.rtsp_tally().dropped();
                        eprintln!("lumen-net: RTSP connection from {peer}: {e}");
                    }
                }
                Err(e) => {
                    eprintln!("lumen-net: RTSP accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map_err(|e| format!("starting the RTSP thread: {e}"))?;
    Ok(())
}

/// Reads one request, answers it and closes.
pub fn serve(mut stream: TcpStream, streams: &Streams) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let len = loop {
        if let Some(len) = streams.rtsp_frame_len(&buf)? {
            if len > MAX_REQUEST {
                return Err(format!("a request of {len} bytes"));
            }
            if buf.len() >= len {
                break len;
            }
        }
        if buf.len() >= MAX_REQUEST {
            return Err("the request head does not end".into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the request did not arrive in time".into());
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a whole request".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let reply = streams.rtsp_request(&buf[..len])?;
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&reply)
        .map_err(|e| format!("write: {e}"))?;
    // The client reads the reply until the host closes (§4.1).
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}
