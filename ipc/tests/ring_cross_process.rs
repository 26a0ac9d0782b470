//! Rings across a real process boundary: the test re-executes its own binary (fork+exec) in a child
//! mode, handing it two rings' memfds and eventfds as inherited fds. The parent writes records into
//! ring A; the child reads them in place and echoes them into ring B; the parent checks every echo.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::{Duration, Instant};

use lumen_ipc::ring::{
    create_ring, Consumer, Producer, PushOutcome, RecordMeta, FLAG_END_OF_FRAME,
};

const CHILD_ENV: &str = "LUMEN_RING_CHILD_FDS";
const RECORDS: u64 = 3000;
const END: u64 = u64::MAX;

fn payload_for(seq: u64) -> Vec<u8> {
    let len = (seq as usize * 97) % 30_000;
    (0..len).map(|i| (i as u8) ^ (seq as u8)).collect()
}

/// Pushes, waiting (bounded) for room instead of dropping.
fn push_waiting(p: &mut Producer, meta: &RecordMeta, payload: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.would_fit(payload.len()).unwrap() {
        assert!(Instant::now() < deadline, "peer stopped draining");
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(matches!(
        p.push(meta, payload).unwrap(),
        PushOutcome::Written { .. }
    ));
}

fn inherit(fd: &OwnedFd) -> OwnedFd {
    // `dup` leaves the new fd without CLOEXEC, so the exec'd child inherits it.
    rustix::io::dup(fd).unwrap()
}

/// Child mode: only does something when the parent test re-executes this binary.
#[test]
fn ring_cross_process_child_mode() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let fds: Vec<OwnedFd> = spec
        .split(',')
        .map(|n| {
            let raw: RawFd = n.parse().unwrap();
            // SAFETY: the parent passed these fd numbers, inherited across exec and owned by
            // nobody else in this process; each is wrapped exactly once.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).unwrap();
            fd
        })
        .collect();
    let mut fds = fds.into_iter();
    let (a_mem, a_bell, b_mem, b_bell) = (
        fds.next().unwrap(),
        fds.next().unwrap(),
        fds.next().unwrap(),
        fds.next().unwrap(),
    );
    let mut input = Consumer::attach(a_mem, a_bell, 10).unwrap();
    let mut output = Producer::attach(b_mem, b_bell, 11).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "child timed out");
        let Some(rec) = input.next().unwrap() else {
            input.wait(Some(Duration::from_millis(100))).unwrap();
            continue;
        };
        let meta = *rec.meta();
        let data = rec.copy_to_vec();
        rec.release();
        push_waiting(&mut output, &meta, &data);
        if meta.seq == END {
            return;
        }
    }
}

#[test]
fn ring_records_flow_both_ways_across_processes() {
    let a = create_ring("cross-a", 1 << 16, 10).unwrap();
    let b = create_ring("cross-b", 1 << 16, 11).unwrap();
    let passed = [
        inherit(&a.memfd),
        inherit(&a.doorbell),
        inherit(&b.memfd),
        inherit(&b.doorbell),
    ];
    let spec = passed
        .iter()
        .map(|fd| fd.as_raw_fd().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ring_cross_process_child_mode",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .spawn()
        .unwrap();
    drop(passed);

    let mut to_child = Producer::attach(a.memfd, a.doorbell, 10).unwrap();
    let mut from_child = Consumer::attach(b.memfd, b.doorbell, 11).unwrap();
    let checker = std::thread::spawn(move || {
        let mut expect = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "echoes stopped");
            let Some(rec) = from_child.next().unwrap() else {
                from_child.wait(Some(Duration::from_millis(100))).unwrap();
                continue;
            };
            let meta = *rec.meta();
            let data = rec.copy_to_vec();
            rec.release();
            if meta.seq == END {
                return expect;
            }
            assert_eq!(meta.seq, expect);
            assert_eq!(
                meta.timestamps,
                [expect, expect + 1, expect + 2, expect + 3]
            );
            assert_eq!(meta.flags, FLAG_END_OF_FRAME);
            assert_eq!(data, payload_for(expect), "record {expect} damaged");
            expect += 1;
        }
    });
    for seq in 0..RECORDS {
        let meta = RecordMeta {
            seq,
            flags: FLAG_END_OF_FRAME,
            timestamps: [seq, seq + 1, seq + 2, seq + 3],
        };
        push_waiting(&mut to_child, &meta, &payload_for(seq));
    }
    push_waiting(
        &mut to_child,
        &RecordMeta {
            seq: END,
            ..RecordMeta::default()
        },
        b"",
    );
    let echoed = checker.join().unwrap();
    assert_eq!(echoed, RECORDS);
    assert!(child.wait().unwrap().success());
    assert_eq!(to_child.dropped(), 0);
}
