//! Control channel behaviour against a well-behaved and a hostile peer (a raw socket end that
//! writes whatever it likes).

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::codec::CodecError;
use lumen_ipc::fdcheck;
use lumen_ipc::msg::{
    BrokerMsg, SocketRole, WorkerMsg, MAX_FDS_PER_MESSAGE, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::{Errno, FdFlags};
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

fn sealed_memfd(contents: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        "channel-test",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::io::write(&fd, contents).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .unwrap();
    fd
}

fn eventfd() -> OwnedFd {
    rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap()
}

/// Sends `bytes` as one record with `fds` attached, bypassing the codec and the fd limit.
fn raw_send(peer: &impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let sent = rustix::net::sendmsg(
        peer,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
    assert_eq!(sent, bytes.len());
}

fn pong(seq: u64) -> WorkerMsg {
    WorkerMsg::Pong { seq }
}

#[test]
fn message_with_memfd_and_eventfd_arrives_with_working_cloexec_fds() {
    let (broker, mut worker) = Channel::pair().unwrap();
    let memfd = sealed_memfd(b"ring header");
    let doorbell = eventfd();
    let msg = BrokerMsg::NetSockets {
        roles: vec![SocketRole::Video, SocketRole::Audio],
    };
    broker
        .send(&msg, &[memfd.as_fd(), doorbell.as_fd()])
        .unwrap();

    let got = worker.recv::<BrokerMsg>().unwrap();
    assert_eq!(got.msg, msg);
    assert_eq!(got.fds.len(), 2);
    for fd in &got.fds {
        let flags = rustix::io::fcntl_getfd(fd).unwrap();
        assert!(
            flags.contains(FdFlags::CLOEXEC),
            "received fd without FD_CLOEXEC"
        );
    }

    let size = fdcheck::expect_memfd(
        got.fds[0].as_fd(),
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    )
    .unwrap();
    assert_eq!(size, 11);
    let mut buf = [0u8; 11];
    assert_eq!(rustix::io::pread(&got.fds[0], &mut buf, 0).unwrap(), 11);
    assert_eq!(&buf, b"ring header");

    fdcheck::expect_eventfd(got.fds[1].as_fd()).unwrap();
    rustix::io::write(&doorbell, &3u64.to_ne_bytes()).unwrap();
    let mut count = [0u8; 8];
    assert_eq!(rustix::io::read(&got.fds[1], &mut count).unwrap(), 8);
    assert_eq!(
        u64::from_ne_bytes(count),
        3,
        "the received eventfd is the same counter"
    );
}

#[test]
fn records_keep_their_boundaries_both_ways() {
    let (mut a, mut b) = Channel::pair().unwrap();
    for seq in 0..5 {
        a.send(&BrokerMsg::Ping { seq }, &[]).unwrap();
    }
    for seq in 0..5 {
        let got = b.recv::<BrokerMsg>().unwrap();
        assert_eq!(got.msg, BrokerMsg::Ping { seq });
        assert!(got.fds.is_empty());
        b.send(&pong(seq), &[]).unwrap();
    }
    for seq in 0..5 {
        assert_eq!(a.recv::<WorkerMsg>().unwrap().msg, pong(seq));
    }
}

#[test]
fn largest_allowed_message_passes() {
    let (a, mut b) = Channel::pair().unwrap();
    // Find the longest Error message whose encoding is exactly the limit.
    let overhead = lumen_ipc::codec::encode(&WorkerMsg::Error {
        message: "x".repeat(1 << 15),
    })
    .unwrap()
    .len()
        - (1 << 15);
    let msg = WorkerMsg::Error {
        message: "x".repeat(MAX_MESSAGE_BYTES - overhead),
    };
    assert_eq!(
        lumen_ipc::codec::encode(&msg).unwrap().len(),
        MAX_MESSAGE_BYTES
    );
    a.send(&msg, &[]).unwrap();
    assert_eq!(b.recv::<WorkerMsg>().unwrap().msg, msg);
}

#[test]
fn oversized_record_is_refused_and_the_channel_stays_usable() {
    let (a, mut b) = Channel::pair().unwrap();
    for len in [MAX_MESSAGE_BYTES + 1, 2 * MAX_MESSAGE_BYTES] {
        raw_send(&a, &vec![0u8; len], &[]);
        assert!(matches!(
            b.recv::<BrokerMsg>(),
            Err(ChannelError::Oversized {
                max: MAX_MESSAGE_BYTES
            })
        ));
    }
    a.send(&BrokerMsg::Shutdown, &[]).unwrap();
    assert_eq!(b.recv::<BrokerMsg>().unwrap().msg, BrokerMsg::Shutdown);
}

#[test]
fn sending_a_message_over_the_limit_fails_before_the_socket() {
    let (a, mut b) = Channel::pair().unwrap();
    let big = WorkerMsg::Error {
        message: "x".repeat(MAX_MESSAGE_BYTES),
    };
    assert!(matches!(
        a.send(&big, &[]),
        Err(ChannelError::Codec(CodecError::TooLarge { .. }))
    ));
    assert!(b.try_recv::<WorkerMsg>().unwrap().is_none());
}

#[test]
fn garbage_and_foreign_versions_are_decode_errors_not_panics() {
    let (a, mut b) = Channel::pair().unwrap();
    raw_send(&a, &[0xff; 10], &[]);
    assert!(matches!(
        b.recv::<BrokerMsg>(),
        Err(ChannelError::Codec(CodecError::Malformed(_)))
    ));

    let foreign = postcard::to_stdvec(&(PROTOCOL_VERSION + 1, BrokerMsg::Shutdown)).unwrap();
    raw_send(&a, &foreign, &[]);
    match b.recv::<BrokerMsg>() {
        Err(ChannelError::Codec(CodecError::VersionMismatch { seen, .. })) => {
            assert_eq!(seen, PROTOCOL_VERSION + 1)
        }
        other => panic!("unexpected {other:?}"),
    }

    // A valid worker message read as a broker message: wrong variant or trailing bytes.
    a.send(
        &WorkerMsg::Error {
            message: "hi".into(),
        },
        &[],
    )
    .unwrap();
    assert!(matches!(b.recv::<BrokerMsg>(), Err(ChannelError::Codec(_))));

    a.send(&BrokerMsg::Ping { seq: 9 }, &[]).unwrap();
    assert_eq!(
        b.recv::<BrokerMsg>().unwrap().msg,
        BrokerMsg::Ping { seq: 9 }
    );
}

#[test]
fn random_records_never_panic_the_receiver() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6c75_6d65);
    let (a, mut b) = Channel::pair().unwrap();
    for _ in 0..500 {
        let len = rng.random_range(1..64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        raw_send(&a, &bytes, &[]);
        let _ = b.recv::<WorkerMsg>();
    }
    a.send(&pong(1), &[]).unwrap();
    assert_eq!(b.recv::<WorkerMsg>().unwrap().msg, pong(1));
}

#[test]
fn peer_closing_is_closed_on_both_recv_and_send() {
    let (a, mut b) = Channel::pair().unwrap();
    a.send(&BrokerMsg::Shutdown, &[]).unwrap();
    drop(a);
    // What was sent before the close is still delivered, then the end.
    assert_eq!(b.recv::<BrokerMsg>().unwrap().msg, BrokerMsg::Shutdown);
    assert!(matches!(b.recv::<BrokerMsg>(), Err(ChannelError::Closed)));
    assert!(matches!(
        b.try_recv::<BrokerMsg>(),
        Err(ChannelError::Closed)
    ));
    assert!(matches!(
        b.recv_timeout::<BrokerMsg>(Duration::from_secs(5)),
        Err(ChannelError::Closed)
    ));
    assert!(matches!(b.send(&pong(0), &[]), Err(ChannelError::Closed)));
}

#[test]
fn too_many_fds_are_refused_before_sending() {
    let (a, mut b) = Channel::pair().unwrap();
    let ev = eventfd();
    let fds = vec![ev.as_fd(); MAX_FDS_PER_MESSAGE + 1];
    assert!(matches!(
        a.send(&BrokerMsg::Shutdown, &fds),
        Err(ChannelError::TooManyFds { count, max: MAX_FDS_PER_MESSAGE })
            if count == MAX_FDS_PER_MESSAGE + 1
    ));
    assert!(b.try_recv::<BrokerMsg>().unwrap().is_none());

    // Exactly the limit passes.
    a.send(&BrokerMsg::Shutdown, &fds[..MAX_FDS_PER_MESSAGE])
        .unwrap();
    assert_eq!(
        b.recv::<BrokerMsg>().unwrap().fds.len(),
        MAX_FDS_PER_MESSAGE
    );
}

#[test]
fn more_fds_than_the_receiver_has_room_for_is_an_error() {
    let (a, mut b) = Channel::pair().unwrap();
    let ev = eventfd();
    let bytes = lumen_ipc::codec::encode(&BrokerMsg::Shutdown).unwrap();

    // Far over the room: the kernel cuts the control message (MSG_CTRUNC).
    raw_send(&a, &bytes, &[ev.as_fd(); MAX_FDS_PER_MESSAGE + 8]);
    assert!(matches!(
        b.recv::<BrokerMsg>(),
        Err(ChannelError::ControlTruncated { received }) if received <= MAX_FDS_PER_MESSAGE + 2
    ));

    // One over the limit: cut by the kernel or refused by count, depending on the alignment
    // slack of the receive buffer; an error either way.
    raw_send(&a, &bytes, &[ev.as_fd(); MAX_FDS_PER_MESSAGE + 1]);
    assert!(matches!(
        b.recv::<BrokerMsg>(),
        Err(ChannelError::ControlTruncated { .. } | ChannelError::TooManyFds { .. })
    ));

    a.send(&BrokerMsg::Shutdown, &[]).unwrap();
    assert_eq!(b.recv::<BrokerMsg>().unwrap().msg, BrokerMsg::Shutdown);
}

#[test]
fn try_recv_and_recv_timeout_when_nothing_is_waiting() {
    let (a, mut b) = Channel::pair().unwrap();
    assert!(b.try_recv::<BrokerMsg>().unwrap().is_none());

    let start = Instant::now();
    assert!(matches!(
        b.recv_timeout::<BrokerMsg>(Duration::from_millis(50)),
        Err(ChannelError::Timeout(_))
    ));
    assert!(start.elapsed() >= Duration::from_millis(50));

    a.send(&BrokerMsg::Ping { seq: 2 }, &[]).unwrap();
    assert_eq!(
        b.recv_timeout::<BrokerMsg>(Duration::from_secs(5))
            .unwrap()
            .msg,
        BrokerMsg::Ping { seq: 2 }
    );
    // A timeout too long to add to the clock waits without a deadline.
    a.send(&BrokerMsg::Ping { seq: 3 }, &[]).unwrap();
    assert_eq!(
        b.recv_timeout::<BrokerMsg>(Duration::MAX).unwrap().msg,
        BrokerMsg::Ping { seq: 3 }
    );
}

#[test]
fn nonblocking_recv_reports_eagain() {
    let (_a, mut b) = Channel::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    assert!(matches!(
        b.recv::<BrokerMsg>(),
        Err(ChannelError::Syscall {
            errno: Errno::AGAIN,
            ..
        })
    ));
    b.set_nonblocking(false).unwrap();
    assert!(b.try_recv::<BrokerMsg>().unwrap().is_none());
}

#[test]
fn from_fd_accepts_only_a_unix_seqpacket_socket() {
    let (a, b) = Channel::pair().unwrap();
    let mut a = Channel::from_fd(OwnedFd::from(a)).unwrap();
    b.send(&BrokerMsg::Shutdown, &[]).unwrap();
    assert_eq!(a.recv::<BrokerMsg>().unwrap().msg, BrokerMsg::Shutdown);

    let tcp = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let err = Channel::from_fd(tcp).unwrap_err();
    assert!(matches!(err, ChannelError::NotAChannel(_)));
    assert!(err.to_string().contains("AF_INET SOCK_STREAM"), "{err}");

    let (stream, _other) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    assert!(matches!(
        Channel::from_fd(stream),
        Err(ChannelError::NotAChannel(_))
    ));

    let (r, _w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    assert!(matches!(
        Channel::from_fd(r),
        Err(ChannelError::NotAChannel(_))
    ));
    assert!(matches!(
        Channel::from_fd(sealed_memfd(b"")),
        Err(ChannelError::NotAChannel(_))
    ));
}

#[test]
fn received_fd_kinds_are_checked_by_the_caller() {
    // What a lying peer can hand over in place of a ring memfd, and how the checks see it.
    let (a, mut b) = Channel::pair().unwrap();
    let (pipe_r, _pipe_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let unsealed =
        rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .unwrap();
    let tcp = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    a.send(
        &BrokerMsg::Shutdown,
        &[pipe_r.as_fd(), unsealed.as_fd(), tcp.as_fd()],
    )
    .unwrap();
    let got = b.recv::<BrokerMsg>().unwrap();
    let seals = SealFlags::SHRINK | SealFlags::GROW;
    assert!(matches!(
        fdcheck::expect_memfd(got.fds[0].as_fd(), seals),
        Err(fdcheck::FdCheckError::WrongKind { .. })
    ));
    assert!(matches!(
        fdcheck::expect_memfd(got.fds[1].as_fd(), seals),
        Err(fdcheck::FdCheckError::MissingSeals { .. })
    ));
    assert!(fdcheck::expect_socket(
        got.fds[2].as_fd(),
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        None
    )
    .is_err());
}
