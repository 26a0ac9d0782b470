//! Every refused record closes the fds that came with it, at once.
//!
//! This counts the process's open fds, so it is the only test in its binary (tests in one binary
//! run on parallel threads and would disturb the count).

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::msg::{BrokerMsg, MAX_FDS_PER_MESSAGE, MAX_MESSAGE_BYTES};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn raw_send(peer: &impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    let sent = rustix::net::sendmsg(
        peer,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .unwrap();
    assert_eq!(sent, bytes.len());
}

#[test]
fn refused_records_leak_no_fds() {
    let (a, mut b) = Channel::pair().unwrap();
    let ev: OwnedFd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let valid = lumen_ipc::codec::encode(&BrokerMsg::Shutdown).unwrap();
    let baseline = open_fds();

    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("control truncated", valid.clone(), MAX_FDS_PER_MESSAGE + 8),
        (
            "one fd over the limit",
            valid.clone(),
            MAX_FDS_PER_MESSAGE + 1,
        ),
        ("oversized record", vec![0u8; MAX_MESSAGE_BYTES + 1], 3),
        ("garbage", vec![0xff; 12], 3),
        ("empty record with fds", vec![], 2),
        ("trailing bytes", [valid.as_slice(), &[0, 0]].concat(), 1),
    ];
    for (name, bytes, nfds) in cases {
        raw_send(&a, &bytes, &vec![ev.as_fd(); nfds]);
        let result = b.recv::<BrokerMsg>();
        assert!(result.is_err(), "{name}: accepted");
        assert!(
            !matches!(result, Err(ChannelError::Closed)),
            "{name}: taken for end of file"
        );
        assert_eq!(open_fds(), baseline, "{name}: fds left open");
    }

    // And the count does see a received fd: a good message with two fds raises it by two.
    raw_send(&a, &valid, &[ev.as_fd(), ev.as_fd()]);
    let got = b.recv::<BrokerMsg>().unwrap();
    assert_eq!(open_fds(), baseline + 2);
    drop(got);
    assert_eq!(open_fds(), baseline);
}
