//! Sends a video frame's datagrams: UDP GSO batches (one `sendmsg` with a `UDP_SEGMENT` control message
//! carries up to 64 equal datagrams), `sendmmsg` where the kernel or the route refuses GSO, and pacing
//! that spreads one frame's burst over most of the frame interval so a switch or Wi-Fi queue does not
//! drop the tail of an IDR.
//!
//! The datagrams come as one buffer of equal-size datagrams back to back, as
//! `lumen_core::video_packetizer::Datagrams::as_bytes` lays them out; a batch is then a plain slice.
//! Works on a connected socket (`peer: None`) or an unconnected one (each call addressed), since the
//! net worker's seccomp forbids `connect` on the broker's sockets.
//!
//! Syscalls: `sendmsg`, `sendmmsg`, `poll` (a non-blocking socket with a full buffer), `getsockname`
//! (once, for the socket's family) and `clock_nanosleep` (pacing); all in the net worker's allowlist.

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

/// Most segments the kernel takes in one GSO send (`UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const MAX_SEGMENTS: usize = 64;
/// Most payload bytes one GSO send may carry: the largest UDP payload over IPv4 (65535 − 20 − 8).
pub const MAX_BATCH_BYTES: usize = 65_507;

/// How a frame's datagrams are spread over the frame interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pacing {
    /// Fraction of the frame interval the frame's sends are spread over (0 = send at once).
    pub spread: f64,
    /// Datagrams per send call and per pacing slice, at most [`MAX_SEGMENTS`].
    pub max_segments: usize,
}

impl Default for Pacing {
    /// 80 % of the interval, 64 datagrams per call (as far as 64 KiB allow).
    fn default() -> Self {
        Pacing {
            spread: 0.8,
            max_segments: MAX_SEGMENTS,
        }
    }
}

/// Which send call the sender uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// GSO not tried yet: the first batch finds out.
    Probing,
    /// GSO works on this socket and route.
    Gso,
    /// GSO refused (or turned off): `sendmmsg`.
    Sendmmsg,
}

/// What one `send_frame` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSent {
    /// Datagrams sent.
    pub datagrams: usize,
    /// Send system calls made.
    pub calls: usize,
    /// Time from the first to the last send call's return.
    pub elapsed: Duration,
}

/// One batch of a frame: which bytes of the frame buffer, and when it is due after the frame's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Byte range in the frame buffer (whole datagrams).
    pub bytes: std::ops::Range<usize>,
    /// Earliest send time, as an offset from the frame's start.
    pub due: Duration,
}

/// A frame's batches in send order (see [`UdpSender::schedule`]).
#[derive(Clone, Debug)]
pub struct Schedule {
    len: usize,
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the tests inspect it; net's sender does not need it"
        )
    )]
    datagram_len: usize,
    batch_bytes: usize,
    batches: usize,
    span: Duration,
    next: usize,
}

impl Schedule {
    /// Number of batches.
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the tests inspect it; net's sender does not need it"
        )
    )]
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// Datagrams per full batch.
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the tests inspect it; net's sender does not need it"
        )
    )]
    pub fn datagrams_per_batch(&self) -> usize {
        self.batch_bytes / self.datagram_len
    }
}

impl Iterator for Schedule {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.batches {
            return None;
        }
        let k = self.next;
        self.next += 1;
        let start = k * self.batch_bytes;
        Some(Batch {
            bytes: start..(start + self.batch_bytes).min(self.len),
            due: self.span.mul_f64(k as f64 / self.batches as f64),
        })
    }
}

/// Why a frame could not be sent.
#[derive(Debug)]
pub enum SendError {
    /// The buffer is not a whole number of datagrams of the given size.
    Layout { len: usize, datagram_len: usize },
    /// The datagram size cannot be sent in one UDP datagram.
    DatagramTooLarge(usize),
    /// The kernel refused a send after `sent` datagrams of the frame had gone out.
    Io {
        call: &'static str,
        sent: usize,
        source: io::Error,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Layout { len, datagram_len } => {
                write!(
                    f,
                    "{len} bytes are not whole datagrams of {datagram_len} bytes"
                )
            }
            SendError::DatagramTooLarge(n) => {
                write!(f, "a datagram of {n} bytes exceeds {MAX_BATCH_BYTES}")
            }
            SendError::Io { call, sent, source } => {
                write!(f, "{call} failed after {sent} datagrams: {source}")
            }
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A socket address in the form `sendmsg` takes, matched to the socket's family.
#[derive(Clone, Copy)]
enum RawAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl RawAddr {
    /// `addr` for a socket of family `family` (an IPv4 peer on an IPv6 socket becomes `::ffff:a.b.c.d`).
    fn new(addr: SocketAddr, socket_is_v6: bool) -> RawAddr {
        let ip = match addr.ip() {
            IpAddr::V4(v4) if socket_is_v6 => IpAddr::V6(v4.to_ipv6_mapped()),
            ip => ip,
        };
        match ip {
            IpAddr::V4(v4) => RawAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            }),
            IpAddr::V6(v6) => RawAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: addr.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: match addr {
                    SocketAddr::V6(a) => a.scope_id(),
                    SocketAddr::V4(_) => 0,
                },
            }),
        }
    }

    /// Pointer and length for `msg_name`; valid while `self` is.
    fn as_name(&self) -> (*mut libc::c_void, libc::socklen_t) {
        match self {
            RawAddr::V4(a) => (
                a as *const libc::sockaddr_in as *mut libc::c_void,
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            RawAddr::V6(a) => (
                a as *const libc::sockaddr_in6 as *mut libc::c_void,
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

/// Room for one `cmsghdr` carrying a u16 (CMSG_SPACE(2) is 24 bytes on 64-bit Linux), aligned for it.
#[repr(C, align(8))]
struct SegmentCmsg([u8; 32]);

/// Sends frames of equal-size datagrams on one UDP socket.
pub struct UdpSender<S: AsFd> {
    socket: S,
    peer: Option<RawAddr>,
    pacing: Pacing,
    mode: SendMode,
}

impl<S: AsFd> UdpSender<S> {
    /// A sender on `socket` to `peer` (`None` for a connected socket).
    pub fn new(socket: S, peer: Option<SocketAddr>, pacing: Pacing) -> io::Result<UdpSender<S>> {
        let socket_is_v6 = rustix::net::getsockname(socket.as_fd())?.address_family()
            == rustix::net::AddressFamily::INET6;
        Ok(UdpSender {
            peer: peer.map(|p| RawAddr::new(p, socket_is_v6)),
            socket,
            pacing: Pacing {
                // NaN would make the deadline arithmetic panic; it means "no pacing".
                spread: if pacing.spread.is_nan() {
                    0.0
                } else {
                    pacing.spread.clamp(0.0, 1.0)
                },
                max_segments: pacing.max_segments.clamp(1, MAX_SEGMENTS),
            },
            mode: SendMode::Probing,
        })
    }

    /// The send call in use.
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the tests inspect it; net's sender does not need it"
        )
    )]
    pub fn mode(&self) -> SendMode {
        self.mode
    }

    /// Uses `sendmmsg` from now on (a configuration switch, and how tests force the fallback).
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the tests inspect it; net's sender does not need it"
        )
    )]
    pub fn disable_gso(&mut self) {
        self.mode = SendMode::Sendmmsg;
    }

    /// Sends one datagram on its own (audio, control replies).
    pub fn send_one(&mut self, datagram: &[u8]) -> Result<(), SendError> {
        if datagram.is_empty() {
            return Err(SendError::Layout {
                len: 0,
                datagram_len: 0,
            });
        }
        self.sendmmsg(datagram, datagram.len())
            .map(|_| ())
            .map_err(|source| SendError::Io {
                call: "sendmmsg",
                sent: 0,
                source,
            })
    }

    /// Sends `datagrams` (`datagram_len` bytes each, back to back) in batches, spread over
    /// `spread × frame_interval` from now: batch k of n starts no earlier than k/n of that span.
    /// Returns once the last batch is sent, so it sleeps: run it on the video send thread. An event
    /// loop can instead walk [`UdpSender::schedule`] and call [`UdpSender::send_batch_at`] when due.
    pub fn send_frame(
        &mut self,
        datagrams: &[u8],
        datagram_len: usize,
        frame_interval: Duration,
    ) -> Result<FrameSent, SendError> {
        let schedule = self.schedule(datagrams.len(), datagram_len, frame_interval)?;
        let start = Instant::now();
        let mut calls = 0;
        for batch in schedule {
            // Deadlines from the frame's start, so a late wake-up is made up, not accumulated.
            let due = start + batch.due;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            calls += self.send_batch_at(datagrams, datagram_len, &batch)?;
        }
        Ok(FrameSent {
            datagrams: datagrams.len() / datagram_len,
            calls,
            elapsed: start.elapsed(),
        })
    }

    /// How a frame of `len` bytes of `datagram_len`-byte datagrams is cut into batches, and when each
    /// is due after the frame's start (the pacing of [`UdpSender::send_frame`], without the waiting).
    pub fn schedule(
        &self,
        len: usize,
        datagram_len: usize,
        frame_interval: Duration,
    ) -> Result<Schedule, SendError> {
        if datagram_len == 0 || !len.is_multiple_of(datagram_len) {
            return Err(SendError::Layout { len, datagram_len });
        }
        if datagram_len > MAX_BATCH_BYTES {
            return Err(SendError::DatagramTooLarge(datagram_len));
        }
        let per_batch = (MAX_BATCH_BYTES / datagram_len).min(self.pacing.max_segments);
        let batch_bytes = per_batch * datagram_len;
        Ok(Schedule {
            len,
            datagram_len,
            batch_bytes,
            batches: len.div_ceil(batch_bytes),
            span: frame_interval.mul_f64(self.pacing.spread),
            next: 0,
        })
    }

    /// Sends one batch of a [`Schedule`] now; returns the send calls made.
    pub fn send_batch_at(
        &mut self,
        datagrams: &[u8],
        datagram_len: usize,
        batch: &Batch,
    ) -> Result<usize, SendError> {
        let bytes = datagrams
            .get(batch.bytes.clone())
            .filter(|b| !b.is_empty() && b.len().is_multiple_of(datagram_len))
            .ok_or(SendError::Layout {
                len: datagrams.len(),
                datagram_len,
            })?;
        self.send_batch(bytes, datagram_len, batch.bytes.start / datagram_len)
    }

    /// Sends one batch (≤ 64 datagrams, ≤ 64 KiB) by GSO or `sendmmsg`; returns the calls made.
    fn send_batch(
        &mut self,
        batch: &[u8],
        datagram_len: usize,
        sent_before: usize,
    ) -> Result<usize, SendError> {
        if self.mode != SendMode::Sendmmsg {
            match self.send_gso(batch, datagram_len) {
                Ok(()) => {
                    self.mode = SendMode::Gso;
                    return Ok(1);
                }
                // EIO: the device cannot checksum-offload (or the route is IPsec); EINVAL: a segment
                // over the path MTU, or UDP checksums off; ENOPROTOOPT/EOPNOTSUPP: no UDP GSO at all.
                // The kernel drops the whole batch on these, so it is resent below.
                Err(e) if gso_refused(&e, self.mode) => self.mode = SendMode::Sendmmsg,
                Err(source) => {
                    return Err(SendError::Io {
                        call: "sendmsg(UDP_SEGMENT)",
                        sent: sent_before,
                        source,
                    })
                }
            }
        }
        self.sendmmsg(batch, datagram_len)
            .map_err(|source| SendError::Io {
                call: "sendmmsg",
                sent: sent_before,
                source,
            })
    }

    /// One `sendmsg` carrying `batch` as segments of `datagram_len`.
    fn send_gso(&self, batch: &[u8], datagram_len: usize) -> io::Result<()> {
        let mut iov = libc::iovec {
            iov_base: batch.as_ptr() as *mut libc::c_void,
            iov_len: batch.len(),
        };
        let mut control = SegmentCmsg([0; 32]);
        // SAFETY: msghdr is a plain C struct for which all-zero is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        if let Some(peer) = &self.peer {
            (msg.msg_name, msg.msg_namelen) = peer.as_name();
        }
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as _;
        // The sizes fit: datagram_len ≤ MAX_BATCH_BYTES < 65536.
        let segment = datagram_len as u16;
        // SAFETY: msg_control points to `control`, 32 bytes aligned to 8, at least CMSG_SPACE(2) = 24
        // bytes, so CMSG_FIRSTHDR returns a non-null, aligned header inside it and CMSG_DATA a pointer
        // with room for the u16 (written unaligned to make no alignment claim).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
        }
        loop {
            // SAFETY: `msg` points to `iov` (describing `batch`, alive and unmodified for the call),
            // to `control`, and to the peer address in `self`; the kernel only reads them.
            let n = unsafe { libc::sendmsg(self.socket.as_fd().as_raw_fd(), &msg, 0) };
            if n >= 0 {
                // A datagram send is all or nothing; a GSO send is one datagram to the socket layer.
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if !self.wait_writable(&e)? {
                return Err(e);
            }
        }
    }

    /// `sendmmsg` of `batch` as separate datagrams, retried until all are out; returns the calls made.
    fn sendmmsg(&self, batch: &[u8], datagram_len: usize) -> io::Result<usize> {
        let count = batch.len() / datagram_len;
        let mut iovs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_SEGMENTS];
        // SAFETY: mmsghdr is a plain C struct for which all-zero is a valid (empty) value.
        let mut msgs: [libc::mmsghdr; MAX_SEGMENTS] = unsafe { mem::zeroed() };
        let mut done = 0;
        let mut calls = 0;
        while done < count {
            let n = (count - done).min(MAX_SEGMENTS);
            for (i, (iov, msg)) in iovs.iter_mut().zip(msgs.iter_mut()).take(n).enumerate() {
                let datagram = &batch[(done + i) * datagram_len..][..datagram_len];
                *iov = libc::iovec {
                    iov_base: datagram.as_ptr() as *mut libc::c_void,
                    iov_len: datagram_len,
                };
                msg.msg_hdr.msg_iov = iov;
                msg.msg_hdr.msg_iovlen = 1;
                if let Some(peer) = &self.peer {
                    (msg.msg_hdr.msg_name, msg.msg_hdr.msg_namelen) = peer.as_name();
                }
            }
            // SAFETY: the first `n` entries of `msgs` point to iovecs in `iovs` that describe slices of
            // `batch` (alive and unmodified for the call) and to the peer address in `self`; the kernel
            // reads those and writes only `msg_len` of each entry.
            let r = unsafe {
                libc::sendmmsg(
                    self.socket.as_fd().as_raw_fd(),
                    msgs.as_mut_ptr(),
                    n as libc::c_uint,
                    0,
                )
            };
            calls += 1;
            if r < 0 {
                let e = io::Error::last_os_error();
                if !self.wait_writable(&e)? {
                    return Err(e);
                }
                continue;
            }
            done += r as usize;
        }
        Ok(calls)
    }

    /// For EAGAIN on a non-blocking socket (or EINTR), waits until it can take more and returns true;
    /// false for any other error.
    fn wait_writable(&self, e: &io::Error) -> io::Result<bool> {
        match e.kind() {
            io::ErrorKind::Interrupted => Ok(true),
            io::ErrorKind::WouldBlock => {
                let mut fds = [rustix::event::PollFd::new(
                    &self.socket,
                    rustix::event::PollFlags::OUT,
                )];
                let timeout = rustix::event::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                };
                match rustix::event::poll(&mut fds, Some(&timeout))? {
                    0 => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the socket stayed full for 1 s",
                    )),
                    _ => Ok(true),
                }
            }
            _ => Ok(false),
        }
    }
}

/// Whether `e` from a GSO send means "use sendmmsg instead". EIO means the device or route cannot
/// do it at any time; the others only while GSO has not worked yet on this socket.
fn gso_refused(e: &io::Error, mode: SendMode) -> bool {
    match e.raw_os_error() {
        Some(libc::EIO) => true,
        Some(libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP) => mode == SendMode::Probing,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;

    /// A frame of `count` datagrams, each distinct (index in the first bytes, pattern after).
    fn frame(count: usize, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; count * len];
        for (i, d) in buf.chunks_exact_mut(len).enumerate() {
            d[..4].copy_from_slice(&(i as u32).to_le_bytes());
            for (j, b) in d[4..].iter_mut().enumerate() {
                *b = (i * 31 + j * 7) as u8;
            }
        }
        buf
    }

    fn try_int_opt(sock: &UdpSocket, level: i32, name: i32, value: i32) -> bool {
        // SAFETY: `value` is a valid c_int for the duration of the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_fd().as_raw_fd(),
                level,
                name,
                &value as *const i32 as *const libc::c_void,
                mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        rc == 0
    }

    fn set_int_opt(sock: &UdpSocket, level: i32, name: i32, value: i32) {
        assert!(
            try_int_opt(sock, level, name, value),
            "setsockopt {level}/{name}"
        );
    }

    /// Receives `count` datagrams on `rx` in a thread (so the receive buffer never overflows).
    fn receive(rx: UdpSocket, count: usize) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::thread::spawn(move || {
            let mut got = Vec::with_capacity(count);
            let mut buf = vec![0u8; 70_000];
            while got.len() < count {
                match rx.recv(&mut buf) {
                    Ok(n) => got.push(buf[..n].to_vec()),
                    Err(_) => break,
                }
            }
            got
        })
    }

    /// A receiving socket with a large buffer, so a frame's burst is not dropped while the receiving
    /// thread waits for a core.
    fn sink() -> UdpSocket {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_int_opt(&rx, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20);
        // Above rmem_max only with CAP_NET_ADMIN; without it pacing and the receiving thread keep
        // the capped buffer from overflowing.
        let _ = try_int_opt(&rx, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        rx
    }

    fn pair() -> (UdpSocket, UdpSocket) {
        (UdpSocket::bind("127.0.0.1:0").unwrap(), sink())
    }

    fn check_round_trip(
        tx: UdpSocket,
        rx: UdpSocket,
        peer: Option<SocketAddr>,
        force_mmsg: bool,
        expect: SendMode,
    ) {
        let (count, len) = (530, 1440);
        let buf = frame(count, len);
        let receiver = receive(rx, count);
        let mut sender = UdpSender::new(tx, peer, Pacing::default()).unwrap();
        if force_mmsg {
            sender.disable_gso();
        }
        let report = sender
            .send_frame(&buf, len, Duration::from_millis(200))
            .unwrap();
        assert_eq!(report.datagrams, count);
        assert_eq!(sender.mode(), expect);
        let got = receiver.join().unwrap();
        assert_eq!(got.len(), count, "every datagram arrives");
        for (i, (g, want)) in got.iter().zip(buf.chunks_exact(len)).enumerate() {
            assert!(g == want, "datagram {i} differs or is out of order");
        }
    }

    #[test]
    fn gso_sends_every_datagram_in_order() {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        check_round_trip(tx, rx, Some(to), false, SendMode::Gso);
    }

    #[test]
    fn gso_on_a_connected_socket() {
        let (tx, rx) = pair();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        check_round_trip(tx, rx, None, false, SendMode::Gso);
    }

    #[test]
    fn forced_sendmmsg_sends_every_datagram_in_order() {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        check_round_trip(tx, rx, Some(to), true, SendMode::Sendmmsg);
    }

    #[test]
    fn a_refused_gso_falls_back_to_sendmmsg() {
        let (tx, rx) = pair();
        // The kernel refuses GSO (EINVAL) on a socket with UDP checksums off.
        set_int_opt(&tx, libc::SOL_SOCKET, libc::SO_NO_CHECK, 1);
        let to = rx.local_addr().unwrap();
        check_round_trip(tx, rx, Some(to), false, SendMode::Sendmmsg);
    }

    #[test]
    fn an_ipv4_peer_is_reached_from_a_dual_stack_socket() {
        let rx = sink();
        let tx = match UdpSocket::bind("[::]:0") {
            Ok(s) => s,
            Err(_) => return, // no IPv6 here: nothing to test
        };
        let to = rx.local_addr().unwrap();
        check_round_trip(tx, rx, Some(to), false, SendMode::Gso);
    }

    #[test]
    fn a_frame_is_spread_over_the_interval() {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let (count, len) = (10 * 45, 1440); // 10 batches of 45 (64 KiB each)
        let buf = frame(count, len);
        let receiver = receive(rx, count);
        let mut sender = UdpSender::new(tx, Some(to), Pacing::default()).unwrap();
        let report = sender
            .send_frame(&buf, len, Duration::from_millis(100))
            .unwrap();
        assert_eq!(report.calls, 10);
        // The last batch is due at 9/10 of 80 ms.
        assert!(report.elapsed >= Duration::from_millis(72), "{report:?}");
        assert!(report.elapsed < Duration::from_millis(300), "{report:?}");
        assert_eq!(receiver.join().unwrap().len(), count);
        let unpaced = Pacing {
            spread: 0.0,
            ..Pacing::default()
        };
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let receiver = receive(rx, count);
        let mut sender = UdpSender::new(tx, Some(to), unpaced).unwrap();
        let report = sender
            .send_frame(&buf, len, Duration::from_millis(100))
            .unwrap();
        assert!(report.elapsed < Duration::from_millis(60), "{report:?}");
        assert_eq!(receiver.join().unwrap().len(), count);
    }

    #[test]
    fn the_schedule_cuts_64k_batches_due_evenly() {
        let (tx, _rx) = pair();
        let sender = UdpSender::new(tx, None, Pacing::default()).unwrap();
        let schedule = sender
            .schedule(100 * 1440, 1440, Duration::from_millis(10))
            .unwrap();
        assert_eq!(schedule.batches(), 3);
        assert_eq!(schedule.datagrams_per_batch(), 45);
        let batches: Vec<Batch> = schedule.collect();
        assert_eq!(batches[0].bytes, 0..45 * 1440);
        assert_eq!(batches[2].bytes, 90 * 1440..100 * 1440);
        assert_eq!(batches[0].due, Duration::ZERO);
        let third = Duration::from_millis(8) / 3;
        assert!(batches[1].due.abs_diff(third) < Duration::from_micros(1));
        let small = sender.schedule(10 * 200, 200, Duration::ZERO).unwrap();
        assert_eq!(small.datagrams_per_batch(), 64, "at most 64 segments");
    }

    /// The sender's syscalls pass the net worker's seccomp allowlist: a forked child under the real
    /// filters sends a frame by GSO, then by sendmmsg, then one datagram, all paced.
    #[test]
    fn the_send_path_runs_under_the_net_workers_seccomp_filter() {
        use lumen_ipc::sandbox::seccomp::{allowlist_program, companion_programs};

        let policy = crate::seccomp::policy();
        // SAFETY: getpid takes no arguments.
        let pid = unsafe { libc::getpid() } as u64;
        let allowlist = allowlist_program(&policy, pid).unwrap();
        let companions = companion_programs(&policy).unwrap();
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let (count, len) = (100, 1440);
        let buf = frame(count, len);
        let receiver = receive(rx, 2 * count + 1);
        // Built before the fork: the child allocates nothing (another test thread may hold the
        // allocator's lock at fork time).
        let mut gso = UdpSender::new(tx.try_clone().unwrap(), Some(to), Pacing::default()).unwrap();
        let mut mmsg = UdpSender::new(tx, Some(to), Pacing::default()).unwrap();
        mmsg.disable_gso();
        // SAFETY: the child installs the filters with raw syscalls and then runs only the sender's
        // allocation-free send path on data prepared before the fork, ending in _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            // SAFETY: prctl/seccomp on valid pointers to programs built before the fork.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for program in companions.iter().chain(std::iter::once(&allowlist)) {
                    let prog = libc::sock_fprog {
                        len: program.len() as u16,
                        filter: program.as_ptr() as *mut libc::sock_filter,
                    };
                    if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog)
                        != 0
                    {
                        libc::_exit(10);
                    }
                }
            }
            let interval = Duration::from_millis(20);
            let code = match (
                gso.send_frame(&buf, len, interval),
                mmsg.send_frame(&buf, len, interval),
                gso.send_one(b"audio"),
            ) {
                (Ok(_), Ok(_), Ok(())) if gso.mode() == SendMode::Gso => 42,
                _ => 11,
            };
            // SAFETY: ends the child without running the parent's destructors or test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child; status is a valid out-pointer.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(waited, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 42,
            "the child must send under the filter and exit 42: status {status:#x}"
        );
        assert_eq!(receiver.join().unwrap().len(), 2 * count + 1);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let (tx, _rx) = pair();
        let mut sender = UdpSender::new(tx, None, Pacing::default()).unwrap();
        assert!(matches!(
            sender.send_frame(&[0; 10], 3, Duration::ZERO),
            Err(SendError::Layout { .. })
        ));
        assert!(matches!(
            sender.send_frame(&[0; 70_000], 70_000, Duration::ZERO),
            Err(SendError::DatagramTooLarge(70_000))
        ));
        assert!(matches!(
            sender.send_one(&[]),
            Err(SendError::Layout { .. })
        ));
        let (tx, _rx) = pair();
        let nan = Pacing {
            spread: f64::NAN,
            ..Pacing::default()
        };
        let sender = UdpSender::new(tx, None, nan).unwrap();
        let schedule = sender
            .schedule(200 * 100, 100, Duration::from_secs(1))
            .unwrap();
        assert!(schedule.map(|b| b.due).all(|d| d == Duration::ZERO));
    }

    #[test]
    fn single_datagrams_go_out_alone() {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let receiver = receive(rx, 2);
        let mut sender = UdpSender::new(tx, Some(to), Pacing::default()).unwrap();
        sender.send_one(b"first").unwrap();
        sender.send_one(b"second datagram").unwrap();
        assert_eq!(
            receiver.join().unwrap(),
            vec![b"first".to_vec(), b"second datagram".to_vec()]
        );
    }
    /// Send-side throughput on loopback, GSO against sendmmsg, unpaced 4K-IDR-sized frames into a
    /// sink that is not read (the kernel drops at the full socket, after the whole send path).
    /// `cargo test -p lumen-net --release -- --ignored --nocapture loopback_throughput`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn loopback_throughput() {
        let (count, len) = (526, 1440);
        let buf = frame(count, len);
        let unpaced = Pacing {
            spread: 0.0,
            ..Pacing::default()
        };
        for force_mmsg in [false, true, false, true] {
            let (tx, rx) = pair();
            let to = rx.local_addr().unwrap();
            let mut sender = UdpSender::new(tx, Some(to), unpaced).unwrap();
            if force_mmsg {
                sender.disable_gso();
            }
            let start = Instant::now();
            let mut frames = 0u64;
            let mut calls = 0;
            while start.elapsed() < Duration::from_millis(500) {
                calls += sender.send_frame(&buf, len, Duration::ZERO).unwrap().calls;
                frames += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            let datagrams = frames as f64 * count as f64;
            println!(
                "{:?}: {:.2} Mpps, {:.1} Gbit/s, {:.1} datagrams per call",
                sender.mode(),
                datagrams / secs / 1e6,
                datagrams * len as f64 * 8.0 / secs / 1e9,
                datagrams / calls as f64
            );
        }
    }
}
