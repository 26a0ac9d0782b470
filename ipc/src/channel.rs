//! Control channels: `SOCK_SEQPACKET` unix sockets carrying one [`crate::codec`] message per
//! record, with fds attached through `SCM_RIGHTS`.
//!
//! `SOCK_SEQPACKET` keeps record boundaries, so a message is never split or merged with the next,
//! and a record longer than the receive buffer is cut (`MSG_TRUNC`) rather than left half-read.
//!
//! The receiving side treats the peer as hostile:
//! - fds are received with `MSG_CMSG_CLOEXEC` (never leaked into a later exec) and become
//!   [`OwnedFd`]s at once, so every error path closes them;
//! - a control message cut short (`MSG_CTRUNC`, the peer sent more fds than there is room for)
//!   is an error, as is a message with more than [`MAX_FDS_PER_MESSAGE`] fds;
//! - a record longer than [`MAX_MESSAGE_BYTES`] is an error (the buffer holds one byte more than
//!   the limit, so an oversized record is seen, and `MSG_TRUNC` is checked as well);
//! - a record that does not decode is an error; the caller decides whether to close the channel.
//!
//! The kind of each received fd is not checked here (only the caller knows what each message
//! should carry): check them with [`crate::fdcheck`] before use.
//!
//! Receiving takes `&mut self` because each channel reuses one receive buffer of
//! [`MAX_MESSAGE_BYTES`] + 1 bytes; sending takes `&self`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, CodecError};
use crate::fdcheck::{self, FdCheckError};
use crate::msg::{MAX_FDS_PER_MESSAGE, MAX_MESSAGE_BYTES};

/// Room for the control message of one record: [`MAX_FDS_PER_MESSAGE`] fds (plus the alignment
/// slack rustix asks for, which may admit a couple more; those are refused by count).
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE));

/// Why a channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The peer closed its end (or, on receive, sent an empty record, which no lumen peer does).
    #[error("peer closed the channel")]
    Closed,
    /// A system call on the channel failed.
    #[error("{call} failed: {errno}")]
    Syscall { call: &'static str, errno: Errno },
    /// The fd given to [`Channel::from_fd`] is not an `AF_UNIX` `SOCK_SEQPACKET` socket.
    #[error("not a control channel socket: {0}")]
    NotAChannel(FdCheckError),
    /// A message to send or a received one carries more fds than allowed.
    #[error("message carries {count} fds, at most {max} are allowed")]
    TooManyFds { count: usize, max: usize },
    /// The peer's control message did not fit (`MSG_CTRUNC`); the fds that did arrive were closed.
    #[error("control message truncated: peer sent more fds than fit ({received} arrived and were closed)")]
    ControlTruncated { received: usize },
    /// The peer's record is longer than [`MAX_MESSAGE_BYTES`]; it was discarded.
    #[error("received record exceeds the limit of {max} bytes")]
    Oversized { max: usize },
    /// The message could not be encoded, or the received record did not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The socket took only part of the record (should not happen on `SOCK_SEQPACKET`).
    #[error("short send: {sent} of {len} bytes")]
    ShortSend { sent: usize, len: usize },
    /// Nothing arrived within the time given to [`Channel::recv_timeout`].
    #[error("no message within {0:?}")]
    Timeout(Duration),
}

fn syscall(call: &'static str) -> impl FnOnce(Errno) -> ChannelError {
    move |errno| ChannelError::Syscall { call, errno }
}

/// A received message and the fds that came with it, in the order the peer sent them.
#[derive(Debug)]
pub struct Received<M> {
    pub msg: M,
    pub fds: Vec<OwnedFd>,
}

/// One end of a control channel.
pub struct Channel {
    fd: OwnedFd,
    /// [`MAX_MESSAGE_BYTES`] + 1 bytes: a record that fills it is oversized.
    recv_buf: Box<[u8]>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("fd", &self.fd).finish()
    }
}

impl Channel {
    fn new(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            recv_buf: vec![0u8; MAX_MESSAGE_BYTES + 1].into_boxed_slice(),
        }
    }

    /// Creates a connected pair of channels (`socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`).
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(syscall("socketpair"))?;
        Ok((Channel::new(a), Channel::new(b)))
    }

    /// Takes over `fd` (e.g. the channel a worker finds at [`crate::msg::CHANNEL_FD`]) after
    /// checking that it is a connected-kind `AF_UNIX` `SOCK_SEQPACKET` socket.
    pub fn from_fd(fd: OwnedFd) -> Result<Channel, ChannelError> {
        fdcheck::expect_socket(
            fd.as_fd(),
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            Some(false),
        )
        .map_err(ChannelError::NotAChannel)?;
        Ok(Channel::new(fd))
    }

    /// A second handle on the same socket (`dup`), e.g. for a thread that only sends: each
    /// `SOCK_SEQPACKET` record is sent whole, so senders on several threads never interleave.
    pub fn try_clone(&self) -> Result<Channel, ChannelError> {
        let fd =
            rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(syscall("F_DUPFD_CLOEXEC"))?;
        Ok(Channel::new(fd))
    }

    /// Switches the socket between blocking and non-blocking mode (for use with a poller such as
    /// tokio's `AsyncFd`). In non-blocking mode [`Channel::recv`] fails with `EAGAIN` when empty;
    /// use [`Channel::try_recv`] there.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), ChannelError> {
        rustix::io::ioctl_fionbio(&self.fd, nonblocking).map_err(syscall("ioctl(FIONBIO)"))
    }

    /// Sends `msg` with `fds` attached as one record. The fds stay open on this side.
    ///
    /// Uses `MSG_NOSIGNAL`: a closed peer is [`ChannelError::Closed`], not a `SIGPIPE`. On a
    /// non-blocking socket whose buffer is full this fails with `EAGAIN`.
    pub fn send<M: Serialize>(&self, msg: &M, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(ChannelError::TooManyFds {
                count: fds.len(),
                max: MAX_FDS_PER_MESSAGE,
            });
        }
        let bytes = codec::encode(msg)?;
        let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            // CMSG_SPACE is sized for MAX_FDS_PER_MESSAGE, checked above.
            return Err(ChannelError::TooManyFds {
                count: fds.len(),
                max: MAX_FDS_PER_MESSAGE,
            });
        }
        let iov = [IoSlice::new(&bytes)];
        loop {
            match rustix::net::sendmsg(&self.fd, &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(sent) if sent == bytes.len() => return Ok(()),
                Ok(sent) => {
                    return Err(ChannelError::ShortSend {
                        sent,
                        len: bytes.len(),
                    })
                }
                Err(Errno::INTR) => continue,
                Err(Errno::PIPE | Errno::CONNRESET) => return Err(ChannelError::Closed),
                Err(errno) => {
                    return Err(ChannelError::Syscall {
                        call: "sendmsg",
                        errno,
                    })
                }
            }
        }
    }

    /// Receives one message, blocking until one arrives (on a blocking socket).
    pub fn recv<M: DeserializeOwned>(&mut self) -> Result<Received<M>, ChannelError> {
        match self.recv_record(RecvFlags::empty())? {
            Some(received) => Ok(received),
            // Only reachable on a socket the caller made non-blocking.
            None => Err(ChannelError::Syscall {
                call: "recvmsg",
                errno: Errno::AGAIN,
            }),
        }
    }

    /// Receives one message if one is waiting (`MSG_DONTWAIT`); `Ok(None)` when none is.
    pub fn try_recv<M: DeserializeOwned>(&mut self) -> Result<Option<Received<M>>, ChannelError> {
        self.recv_record(RecvFlags::DONTWAIT)
    }

    /// Waits up to `timeout` for a message, then receives it; [`ChannelError::Timeout`] if none
    /// came.
    pub fn recv_timeout<M: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<Received<M>, ChannelError> {
        // A timeout too long to add to now is as good as none.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .and_then(|left| Timespec::try_from(left).ok());
            let mut pollfds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut pollfds, left.as_ref()) {
                Ok(0) => return Err(ChannelError::Timeout(timeout)),
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(ChannelError::Syscall {
                        call: "poll",
                        errno,
                    })
                }
            }
            // Readable means a record or end of file is waiting (POLLHUP and POLLERR make the
            // receive below return them); a record another reader took leaves us to wait on.
            if let Some(received) = self.try_recv()? {
                return Ok(received);
            }
        }
    }

    /// One `recvmsg` with the checks in the module doc; `Ok(None)` on `EAGAIN`.
    fn recv_record<M: DeserializeOwned>(
        &mut self,
        extra: RecvFlags,
    ) -> Result<Option<Received<M>>, ChannelError> {
        let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let result = loop {
            let mut iov = [IoSliceMut::new(&mut self.recv_buf)];
            match rustix::net::recvmsg(
                &self.fd,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC | extra,
            ) {
                Ok(result) => break result,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(None),
                Err(errno) => {
                    return Err(ChannelError::Syscall {
                        call: "recvmsg",
                        errno,
                    })
                }
            }
        };

        // Own every fd that arrived before looking at anything else, so that each error below
        // closes them. The control buffer bounds how many there can be.
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }

        if result.flags.contains(ReturnFlags::CTRUNC) {
            return Err(ChannelError::ControlTruncated {
                received: fds.len(),
            });
        }
        if result.flags.contains(ReturnFlags::TRUNC) || result.bytes > MAX_MESSAGE_BYTES {
            return Err(ChannelError::Oversized {
                max: MAX_MESSAGE_BYTES,
            });
        }
        if result.bytes == 0 && fds.is_empty() {
            return Err(ChannelError::Closed);
        }
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(ChannelError::TooManyFds {
                count: fds.len(),
                max: MAX_FDS_PER_MESSAGE,
            });
        }
        let record = self
            .recv_buf
            .get(..result.bytes)
            .ok_or(ChannelError::Oversized {
                max: MAX_MESSAGE_BYTES,
            })?;
        let msg = codec::decode(record)?;
        Ok(Some(Received { msg, fds }))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Channel> for OwnedFd {
    fn from(channel: Channel) -> OwnedFd {
        channel.fd
    }
}
