//! The RTSP listener (protocol notes §4.1): one request per TCP connection, answered and then
//! closed. The handshake state lives in the launch ([`Streams`]), so it carries across the client's
//! connections.
//!
//! Each connection is served on a thread of its own, at most [`MAX_CONNECTIONS`] at once and
//! [`MAX_CONNECTIONS_PER_ADDRESS`] from one address; a connection over either cap is closed at once
//! and counted. A Moonlight client opens one connection at a time, so the caps never touch it, but
//! without them (the listener used to serve one connection at a time) a few slow or silent
//! connections (slowloris), each cut off only by the read timeout, held the listener and kept the
//! real client from launching for as long as they lasted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lumen_ipc::net_msg::RtspCounters;

use crate::stream::Streams;

/// A whole request must arrive within this (the client's own reply timeout is 15 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request read (ANNOUNCE bodies are about 2 KiB; the core parser bounds bodies at 16 KiB).
const MAX_REQUEST: usize = 32 * 1024;
/// Connections served at once, from all addresses together.
const MAX_CONNECTIONS: usize = 32;
/// Connections served at once from one address.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 4;

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
    let served = streams.clone();
    spawn_accept_loop(
        listener,
        Arc::new(move |stream| serve(stream, &served)),
        Arc::new(move || streams.rtsp_tally().dropped()),
    )
}

/// What serves one accepted connection.
type Handler = Arc<dyn Fn(TcpStream) -> Result<(), String> + Send + Sync>;
/// Counts a connection that ended unanswered.
type OnDrop = Arc<dyn Fn() + Send + Sync>;

fn spawn_accept_loop(
    listener: TcpListener,
    handler: Handler,
    on_drop: OnDrop,
) -> Result<(), String> {
    let admission = Arc::new(Admission::default());
    let mut over_cap: u64 = 0;
    std::thread::Builder::new()
        .name("lumen-net-rtsp".into())
        .spawn(move || loop {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("lumen-net: RTSP accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Some(ticket) = Admission::admit(&admission, peer.ip()) else {
                on_drop();
                over_cap += 1;
                // Logged on the 1st, 2nd, 4th, 8th … time: a flood must not become a log flood.
                if over_cap.is_power_of_two() {
                    eprintln!(
                        "lumen-net: RTSP connection from {peer} closed: too many at once \
                         ({over_cap} so far)"
                    );
                }
                continue;
            };
            let (handler, on_drop_here) = (handler.clone(), on_drop.clone());
            let spawned = std::thread::Builder::new()
                .name("lumen-net-rtsp-conn".into())
                .spawn(move || {
                    let _ticket = ticket;
                    if let Err(e) = handler(stream) {
                        on_drop_here();
                        eprintln!("lumen-net: RTSP connection from {peer}: {e}");
                    }
                });
            if let Err(e) = spawned {
                // The closure, with the connection and its ticket, is dropped: closed and released.
                on_drop();
                eprintln!("lumen-net: RTSP connection from {peer}: no thread for it: {e}");
            }
        })
        .map_err(|e| format!("starting the RTSP thread: {e}"))?;
    Ok(())
}

/// The connections being served, by source address.
#[derive(Default)]
struct Admission {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it frees its place.
struct Ticket {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Admission {
    /// A place for a connection from `address`, unless a cap is reached.
    fn admit(admission: &Arc<Admission>, address: IpAddr) -> Option<Ticket> {
        let mut open = admission
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let total: usize = open.values().sum();
        let from_address = open.get(&address).copied().unwrap_or(0);
        if total >= MAX_CONNECTIONS || from_address >= MAX_CONNECTIONS_PER_ADDRESS {
            return None;
        }
        open.insert(address, from_address + 1);
        Some(Ticket {
            admission: admission.clone(),
            address,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpStream};
    use std::sync::atomic::AtomicUsize;

    /// A connection from `source` (a loopback address other than 127.0.0.1 stands for another host).
    fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
        socket.connect(&to.into()).unwrap();
        socket.into()
    }

    /// The reply to one line, or what the host did instead (closed: empty).
    fn ask(mut stream: TcpStream) -> String {
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let _ = stream.write_all(b"hello\n");
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply
    }

    #[test]
    fn silent_connections_from_one_address_cannot_shut_out_another() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let counted = dropped.clone();
        // Answers a line, the way serve() answers one request (and, like it, waits for it).
        let handler: Handler = Arc::new(|mut stream: TcpStream| {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let mut byte = [0u8; 6];
            stream.read_exact(&mut byte).map_err(|e| e.to_string())?;
            stream.write_all(b"answered").map_err(|e| e.to_string())
        });
        spawn_accept_loop(
            listener,
            handler,
            Arc::new(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            }),
        )
        .unwrap();

        // Another host holds its whole share with connections that never send a byte.
        let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS_PER_ADDRESS)
            .map(|_| connect_from([127, 0, 0, 2], to))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // Its next one is closed at once and counted ...
        let started = Instant::now();
        assert_eq!(ask(connect_from([127, 0, 0, 2], to)), "");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        // ... while the real client is served at once (one at a time it used to wait 5 s per
        // silent connection ahead of it).
        let started = Instant::now();
        assert_eq!(ask(connect_from([127, 0, 0, 1], to)), "answered");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(silent);
    }

    #[test]
    fn places_are_freed_when_connections_end() {
        let admission = Arc::new(Admission::default());
        let address = IpAddr::from([10, 0, 0, 1]);
        let tickets: Vec<Ticket> = (0..MAX_CONNECTIONS_PER_ADDRESS)
            .map(|_| Admission::admit(&admission, address).unwrap())
            .collect();
        assert!(Admission::admit(&admission, address).is_none());
        drop(tickets);
        let kept = Admission::admit(&admission, address);
        assert!(kept.is_some());
        // The total cap holds across addresses.
        let many: Vec<Ticket> = (0..MAX_CONNECTIONS)
            .filter_map(|i| {
                Admission::admit(
                    &admission,
                    IpAddr::from([10, 1, (i / 200) as u8, (i % 200) as u8]),
                )
            })
            .collect();
        assert_eq!(many.len(), MAX_CONNECTIONS - 1);
        assert!(Admission::admit(&admission, IpAddr::from([10, 2, 0, 1])).is_none());
    }
}
