//! How much decoding a hostile record may allocate, measured with a counting allocator.
//!
//! A length prefix is the one thing in a record that could make the decoder allocate far more
//! than the record holds. These tests record the largest single allocation made on the decoding
//! thread and hold it to bounds derived from the record's size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lumen_ipc::codec::{self, CodecError};
use lumen_ipc::msg::{
    BrokerMsg, Layer, SandboxReport, WorkerKind, WorkerMsg, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};

struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations during thread teardown find the slot gone; they are not ours.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every method forwards to the system allocator unchanged; the bookkeeping touches only
// a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `alloc`; `ptr` and `layout` come from this allocator, i.e. from System.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by System with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Decodes `bytes` as `M` and returns the result with the largest allocation it made.
fn largest_allocation_decoding<M: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> (Result<M, CodecError>, usize) {
    LARGEST.with(|l| l.set(0));
    let result = codec::decode::<M>(bytes);
    (result, LARGEST.with(|l| l.get()))
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// `WorkerMsg::Ready` up to, but not including, the length of its last field (`notes`).
fn ready_without_notes() -> Vec<u8> {
    let mut bytes = codec::encode(&WorkerMsg::Ready {
        kind: WorkerKind::Input,
        sandbox: SandboxReport {
            no_new_privs: Layer::On,
            capabilities_dropped: Layer::On,
            rlimits: Layer::On,
            not_dumpable: Layer::On,
            user_ns: Layer::On,
            mount_ns: Layer::On,
            pid_ns: Layer::On,
            ipc_ns: Layer::On,
            net_ns: Layer::On,
            landlock_fs: Layer::On,
            landlock_net: Layer::On,
            landlock_scope: Layer::On,
            landlock_abi: 7,
            seccomp: Layer::On,
            seccomp_allowed_syscalls: 80,
            notes: vec![],
        },
    })
    .unwrap();
    assert_eq!(
        bytes.pop(),
        Some(0),
        "notes is the last field, encoded empty"
    );
    bytes
}

#[test]
fn lying_length_prefixes_allocate_nothing_large() {
    let mut records = Vec::new();
    for claimed in [u64::MAX, 1 << 40, 1 << 20, MAX_MESSAGE_BYTES as u64] {
        // A string that claims `claimed` bytes (WorkerMsg::Error is variant 2).
        let mut string = postcard::to_stdvec(&(PROTOCOL_VERSION, 2u32)).unwrap();
        string.extend(varint(claimed));
        string.extend_from_slice(b"short");
        records.push(string);

        // A list of strings that claims `claimed` entries.
        let mut list = ready_without_notes();
        list.extend(varint(claimed));
        list.extend_from_slice(&[1, b'a']);
        records.push(list);
    }
    for record in records {
        let (result, largest) = largest_allocation_decoding::<WorkerMsg>(&record);
        assert!(result.is_err(), "a lying record decoded: {record:?}");
        assert!(
            largest <= 4096,
            "decoding a {}-byte record allocated {largest} bytes at once",
            record.len()
        );
    }

    // The same for the broker's list of socket roles (BrokerMsg::NetSockets is variant 1).
    let mut roles = postcard::to_stdvec(&(PROTOCOL_VERSION, 1u32)).unwrap();
    roles.extend(varint(u64::MAX >> 1));
    let (result, largest) = largest_allocation_decoding::<BrokerMsg>(&roles);
    assert!(result.is_err());
    assert!(largest <= 4096, "allocated {largest} bytes at once");
}

#[test]
fn longest_possible_list_stays_within_a_fixed_multiple_of_the_limit() {
    // The most elements one record can hold: empty strings of one byte each, filling the limit.
    let mut record = ready_without_notes();
    let count = MAX_MESSAGE_BYTES - record.len() - 3;
    record.extend(varint(count as u64));
    record.resize(MAX_MESSAGE_BYTES, 0);
    let (result, largest) = largest_allocation_decoding::<WorkerMsg>(&record);
    match result {
        Ok(WorkerMsg::Ready { sandbox, .. }) => assert_eq!(sandbox.notes.len(), count),
        other => panic!("unexpected {other:?}"),
    }
    // Each one-byte entry costs a `String` (24 bytes) in the list, and the list may grow to
    // twice its length: the bound is 64 bytes per input byte, 4 MiB for the 64 KiB limit.
    assert!(
        largest <= 64 * MAX_MESSAGE_BYTES,
        "allocated {largest} bytes at once for a {}-byte record",
        record.len()
    );
    eprintln!(
        "largest single allocation decoding {} one-byte list entries: {largest} bytes",
        count
    );
}
