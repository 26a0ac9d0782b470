//! Record ring properties: random record sizes and wrap-around against a model, full/empty races
//! between threads, and a hostile peer scribbling over the shared memory while the consumer reads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lumen_ipc::ring::{
    create_ring, max_payload, Consumer, Producer, PushOutcome, RecordMeta, RingError, RingFds,
    FLAG_DISCONTINUITY, FLAG_KEYFRAME, HEADER_LEN,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

fn attach_pair(fds: &RingFds, generation: u64) -> (Producer, Consumer) {
    let p = Producer::attach(
        fds.memfd.try_clone().unwrap(),
        fds.doorbell.try_clone().unwrap(),
        generation,
    )
    .unwrap();
    let c = Consumer::attach(
        fds.memfd.try_clone().unwrap(),
        fds.doorbell.try_clone().unwrap(),
        generation,
    )
    .unwrap();
    (p, c)
}

fn payload_for(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Pop(usize),
}

fn op(max: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop_oneof![Just(0usize), Just(max), 0..=max, 0..64usize].prop_map(Op::Push),
        2 => (1..6usize).prop_map(Op::Pop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ring_matches_model(ops in proptest::collection::vec(op(max_payload(4096)), 1..300)) {
        let fds = create_ring("prop", 4096, 1).unwrap();
        let (mut p, mut c) = attach_pair(&fds, 1);
        let mut expected: VecDeque<(u64, usize, bool)> = VecDeque::new();
        let mut seq = 0u64;
        let mut dropped_since = false;
        let mut drops = 0;
        for op in ops {
            match op {
                Op::Push(len) => {
                    let meta = RecordMeta { seq, flags: FLAG_KEYFRAME, timestamps: [seq; 4] };
                    match p.push(&meta, &payload_for(seq, len)).unwrap() {
                        PushOutcome::Written { .. } => {
                            expected.push_back((seq, len, dropped_since));
                            dropped_since = false;
                        }
                        PushOutcome::Dropped => {
                            // A drop only happens when the ring holds something.
                            prop_assert!(!expected.is_empty());
                            dropped_since = true;
                            drops += 1;
                        }
                    }
                    seq += 1;
                }
                Op::Pop(n) => {
                    for _ in 0..n {
                        let want = expected.pop_front();
                        let got = c.next().unwrap();
                        match (want, got) {
                            (None, None) => {}
                            (Some((s, len, disc)), Some(r)) => {
                                prop_assert_eq!(r.meta().seq, s);
                                prop_assert_eq!(r.meta().timestamps, [s; 4]);
                                prop_assert_eq!(r.meta().flags & FLAG_KEYFRAME, FLAG_KEYFRAME);
                                prop_assert_eq!(r.meta().flags & FLAG_DISCONTINUITY != 0, disc);
                                prop_assert_eq!(r.copy_to_vec(), payload_for(s, len));
                                r.release();
                            }
                            (want, got) => prop_assert!(false, "model {:?} ring {:?}", want, got.map(|r| r.meta().seq)),
                        }
                    }
                }
            }
        }
        prop_assert_eq!(p.dropped(), drops);
        prop_assert_eq!(c.dropped(), drops);
    }
}

#[test]
fn ring_threads_race_full_and_empty() {
    const N: u64 = 20_000;
    let fds = create_ring("race", 16384, 2).unwrap();
    let (mut p, mut c) = attach_pair(&fds, 2);
    let producer = std::thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for seq in 0..N {
            let len = rng.random_range(0..=max_payload(16384).min(3000));
            let meta = RecordMeta {
                seq,
                flags: 0,
                timestamps: [seq, 0, 0, 0],
            };
            p.push(&meta, &payload_for(seq, len)).unwrap();
            if seq % 64 == 0 {
                std::thread::yield_now();
            }
        }
        p.dropped()
    });
    let mut received = 0u64;
    let mut next_seq = 0u64;
    let mut idle_waits = 0;
    loop {
        match c.next().unwrap() {
            Some(r) => {
                let m = *r.meta();
                assert!(m.seq >= next_seq, "sequence went backwards");
                if m.seq != next_seq {
                    assert_ne!(m.flags & FLAG_DISCONTINUITY, 0, "gap without discontinuity");
                }
                let data = r.copy_to_vec();
                assert_eq!(
                    data,
                    payload_for(m.seq, data.len()),
                    "record {} damaged",
                    m.seq
                );
                r.release();
                received += 1;
                next_seq = m.seq + 1;
                idle_waits = 0;
                if next_seq == N {
                    break;
                }
            }
            None => {
                if producer.is_finished() && !c.has_data().unwrap() {
                    idle_waits += 1;
                    if idle_waits > 2 {
                        break;
                    }
                }
                c.wait(Some(Duration::from_millis(20))).unwrap();
            }
        }
    }
    let dropped = producer.join().unwrap();
    assert!(received > 0);
    assert_eq!(
        received + dropped,
        N,
        "every record arrives or is counted dropped"
    );
}

#[test]
fn ring_survives_hostile_peer_scribbling() {
    let capacity = 8192;
    let fds = create_ring("hostile", capacity, 3).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let memfd = fds.memfd.try_clone().unwrap();
    let stop_w = stop.clone();
    // The hostile peer: writes random bytes over header and records through the memfd itself
    // (the same pages our mapping shows), and legitimate records in between.
    let scribbler = std::thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut good_header = [0u8; HEADER_LEN];
        rustix::io::pread(&memfd, &mut good_header, 0).unwrap();
        let mut producer = None;
        let mut n = 0u32;
        while !stop_w.load(Ordering::Relaxed) && n < 200_000 {
            n += 1;
            if n.is_multiple_of(500) {
                // A new honest phase: restore the header (indices reset) so valid records flow
                // again and the consumer's re-attach succeeds.
                rustix::io::pwrite(&memfd, &good_header, 0).unwrap();
                producer = None;
            }
            if rng.random_bool(0.9) {
                let p = producer.get_or_insert_with(|| {
                    Producer::attach(
                        memfd.try_clone().unwrap(),
                        rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap(),
                        3,
                    )
                });
                match p {
                    Ok(p) => {
                        let len = rng.random_range(0..2000);
                        if p.push(&RecordMeta::default(), &vec![7u8; len]).is_err() {
                            producer = None;
                        }
                    }
                    Err(_) => producer = None,
                }
            } else {
                let off = if rng.random_bool(0.3) {
                    // Mostly the indices and dropped count; rarely magic, generation, capacity.
                    let low = if rng.random_bool(0.05) { 0 } else { 32 };
                    rng.random_range(low..HEADER_LEN as u64)
                } else {
                    rng.random_range(0..(HEADER_LEN + capacity) as u64)
                };
                let mut bytes = [0u8; 8];
                rng.fill(&mut bytes[..]);
                let len = rng.random_range(1..=8);
                let _ = rustix::io::pwrite(&memfd, &bytes[..len], off);
            }
        }
    });
    let mut records = 0u64;
    let mut errors = 0u64;
    let mut buf = vec![0u8; capacity];
    for _ in 0..100_000 {
        let consumer = Consumer::attach(
            fds.memfd.try_clone().unwrap(),
            fds.doorbell.try_clone().unwrap(),
            3,
        );
        let Ok(mut consumer) = consumer else {
            errors += 1;
            continue;
        };
        for _ in 0..64 {
            match consumer.next() {
                Ok(Some(r)) => {
                    assert!(r.len() <= max_payload(capacity));
                    let n = r.copy_to(0, &mut buf);
                    assert_eq!(n, r.len());
                    r.release();
                    records += 1;
                }
                Ok(None) => std::thread::yield_now(),
                Err(e) => {
                    assert!(matches!(e, RingError::Corrupt { .. }), "{e}");
                    assert_eq!(consumer.next().unwrap_err(), e, "consumer stays failed");
                    errors += 1;
                    break;
                }
            }
        }
        if scribbler.is_finished() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    scribbler.join().unwrap();
    assert!(errors > 0, "the scribbler should have been noticed");
    assert!(records > 0, "honest phases should deliver records");
    eprintln!("hostile peer: {records} valid records, {errors} errors");
}
