//! Single-producer single-consumer record rings in sealed memfds, with an eventfd doorbell.
//!
//! The broker creates the ring ([`create_ring`]): a memfd of `HEADER_LEN + capacity` bytes, sealed
//! against shrinking, growing and further sealing (so a peer can neither make our mapping fault with
//! SIGBUS nor resize it), and an eventfd. It hands the two fds to one producer and one consumer, which
//! [`Producer::attach`] / [`Consumer::attach`] after checking the fd kind, seals, size and header.
//!
//! Layout: a header page-fragment (magic, version, generation, capacity, dropped count, then the write
//! index and the read index each on its own cache line), followed by the data area. Indices are
//! monotonically increasing `u64` byte offsets; position = index mod capacity. Records are contiguous
//! and 8-byte aligned: a 56-byte record header (length, kind, sequence, flags, four timestamps) and the
//! payload. A record that does not fit before the end of the data area is preceded by an 8-byte padding
//! marker that covers the rest of the area. A record's total size is at most half the capacity, so a
//! padded record always fits in an empty ring.
//!
//! The peer is untrusted. The consumer keeps its own read index, reads each shared field once into a
//! local, and checks every index, length, kind and flag before use; any violation is
//! [`RingError::Corrupt`] and the consumer stays failed (the caller asks the broker for a fresh ring).
//! Payload bytes are never exposed as a Rust `&[u8]` into shared memory (the producer could change them
//! under us): [`RecordView`] copies them out on request, in place from the ring. The producer likewise
//! keeps its own write index and checks the consumer's read index before trusting the free space.
//!
//! Wake-ups: the producer rings the doorbell only when it published into a ring it saw empty, so a
//! consumer draining a backlog makes no system calls. A Dekker-style fence pair (producer: publish
//! write index, fence, load read index; consumer: publish read index, fence, load write index) makes
//! sure a consumer about to block either sees the new record or gets the ring.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fs::{
    fcntl_add_seals, fcntl_get_seals, fstat, ftruncate, memfd_create, MemfdFlags, SealFlags,
};
use rustix::io::Errno;
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// Identifies a lumen ring ("LUMRING1").
pub const MAGIC: u64 = u64::from_le_bytes(*b"LUMRING1");
/// Layout version of the header and record format.
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes before the data area.
pub const HEADER_LEN: usize = 256;
/// Smallest capacity accepted.
pub const MIN_CAPACITY: usize = 4096;
/// Largest capacity accepted (1 GiB).
pub const MAX_CAPACITY: usize = 1 << 30;
/// Bytes of the record header in the data area.
pub const RECORD_HEADER_LEN: usize = 56;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_GENERATION: usize = 16;
const OFF_CAPACITY: usize = 24;
const OFF_DROPPED: usize = 32;
const OFF_WRITE: usize = 64;
const OFF_READ: usize = 128;

const KIND_RECORD: u32 = u32::from_le_bytes(*b"REC1");
const KIND_PAD: u32 = u32::from_le_bytes(*b"PAD1");

/// The record starts a frame that decodes on its own (an IDR / keyframe).
pub const FLAG_KEYFRAME: u32 = 1 << 0;
/// Records were dropped (ring full) just before this one; the consumer should ask for an IDR.
pub const FLAG_DISCONTINUITY: u32 = 1 << 1;
/// The record ends a frame (the last part of an access unit split over records).
pub const FLAG_END_OF_FRAME: u32 = 1 << 2;
/// The payload is codec configuration (parameter sets).
pub const FLAG_CONFIG: u32 = 1 << 3;
/// Every flag bit this layout version defines; any other bit makes a record corrupt.
pub const KNOWN_FLAGS: u32 = FLAG_KEYFRAME | FLAG_DISCONTINUITY | FLAG_END_OF_FRAME | FLAG_CONFIG;

/// Index into [`RecordMeta::timestamps`]: capture time.
pub const TS_CAPTURED: usize = 0;
/// Index into [`RecordMeta::timestamps`]: encode start.
pub const TS_ENCODE_START: usize = 1;
/// Index into [`RecordMeta::timestamps`]: encode end.
pub const TS_ENCODE_END: usize = 2;
/// Index into [`RecordMeta::timestamps`]: free for the producer (the benchmark stamps the commit).
pub const TS_SPARE: usize = 3;

/// What went wrong with a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The capacity is not a power of two within [`MIN_CAPACITY`]..=[`MAX_CAPACITY`].
    #[error("ring capacity {0} is not a power of two between 4 KiB and 1 GiB")]
    BadCapacity(usize),
    /// A system call failed.
    #[error("{op} failed: {errno}")]
    Sys {
        /// The call.
        op: &'static str,
        /// Its error.
        errno: Errno,
    },
    /// The fd handed over is not a memfd with the seals the broker sets, or has the wrong size.
    #[error("ring fd rejected: {what}")]
    BadFd {
        /// What was wrong.
        what: &'static str,
    },
    /// The ring belongs to another generation (a restarted producer, or a stale ring).
    #[error("ring generation {found}, expected {expected}")]
    GenerationMismatch {
        /// The generation the caller was told.
        expected: u64,
        /// The generation found in the header.
        found: u64,
    },
    /// A record larger than the ring can ever hold.
    #[error("record of {len} bytes exceeds this ring's maximum of {max}")]
    RecordTooLarge {
        /// Requested payload length.
        len: usize,
        /// Largest payload this ring takes.
        max: usize,
    },
    /// A write to a reserved slot past its length (a bug in the writer, not the peer).
    #[error("write of {len} bytes at {offset} past the end of a {slot}-byte slot")]
    SlotOverflow {
        /// Offset of the write.
        offset: usize,
        /// Length of the write.
        len: usize,
        /// Slot length.
        slot: usize,
    },
    /// The peer broke the ring protocol; the ring must be replaced.
    #[error("ring corrupt: {what}")]
    Corrupt {
        /// Which check failed.
        what: &'static str,
    },
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> RingError {
    move |errno| RingError::Sys { op, errno }
}

fn corrupt(what: &'static str) -> RingError {
    RingError::Corrupt { what }
}

/// Both fds of a fresh ring, as the broker hands them out.
#[derive(Debug)]
pub struct RingFds {
    /// The sealed memfd holding header and data.
    pub memfd: OwnedFd,
    /// The eventfd the producer rings on empty→non-empty.
    pub doorbell: OwnedFd,
}

/// Per-record metadata carried in the record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordMeta {
    /// Producer's sequence number.
    pub seq: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// CLOCK_MONOTONIC nanoseconds, see `TS_*`.
    pub timestamps: [u64; 4],
}

/// What became of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Published; `rang` says whether the doorbell was rung.
    Written {
        /// The doorbell was rung (the ring was empty).
        rang: bool,
    },
    /// The ring was full: the record was dropped and the next one will carry [`FLAG_DISCONTINUITY`].
    Dropped,
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock every `timestamps` entry uses).
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Largest payload a ring of `capacity` bytes takes (a record is at most half the ring).
pub fn max_payload(capacity: usize) -> usize {
    (capacity / 2).saturating_sub(RECORD_HEADER_LEN)
}

fn record_total(len: usize) -> usize {
    (RECORD_HEADER_LEN + len + 7) & !7
}

fn check_capacity(capacity: usize) -> Result<(), RingError> {
    if capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(RingError::BadCapacity(capacity))
    }
}

const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Broker side: creates, sizes, initialises and seals a ring and its doorbell.
pub fn create_ring(name: &str, capacity: usize, generation: u64) -> Result<RingFds, RingError> {
    check_capacity(capacity)?;
    let memfd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(sys("memfd_create"))?;
    ftruncate(&memfd, (HEADER_LEN + capacity) as u64).map_err(sys("ftruncate"))?;
    let map = Mapping::new(memfd.as_fd(), HEADER_LEN + capacity)?;
    map.atomic(OFF_MAGIC).store(MAGIC, Ordering::Relaxed);
    map.atomic(OFF_VERSION)
        .store(u64::from(LAYOUT_VERSION), Ordering::Relaxed);
    map.atomic(OFF_GENERATION)
        .store(generation, Ordering::Relaxed);
    map.atomic(OFF_CAPACITY)
        .store(capacity as u64, Ordering::Relaxed);
    map.atomic(OFF_DROPPED).store(0, Ordering::Relaxed);
    map.atomic(OFF_WRITE).store(0, Ordering::Relaxed);
    map.atomic(OFF_READ).store(0, Ordering::Release);
    drop(map);
    fcntl_add_seals(&memfd, REQUIRED_SEALS).map_err(sys("F_ADD_SEALS"))?;
    let doorbell = eventfd(0, EventfdFlags::CLOEXEC).map_err(sys("eventfd"))?;
    Ok(RingFds { memfd, doorbell })
}

/// A `MAP_SHARED` mapping of a ring memfd. Never hands out references into the data area.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through atomics or raw-pointer copies
// whose races with the peer are tolerated by design (validated copies), so moving it between threads
// is sound.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize) -> Result<Self, RingError> {
        // SAFETY: a fresh mapping chosen by the kernel (null hint) aliases no Rust object; the fd is
        // a sealed (or being-created) memfd of at least `len` bytes, so no access faults.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                // Populated up front: the whole ring is resident from the start, so no record on the
                // per-frame path pays a first-touch page fault.
                MapFlags::SHARED | MapFlags::POPULATE,
                fd,
                0,
            )
        }
        .map_err(sys("mmap"))?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(corrupt("mmap returned null"))?;
        Ok(Self { base, len })
    }

    /// The header atomic at `off` (a multiple of 8 below `HEADER_LEN`, a crate constant).
    fn atomic(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= HEADER_LEN);
        // SAFETY: `off` is one of the header constants, 8-aligned (the mapping is page-aligned) and
        // inside the mapping; AtomicU64 tolerates concurrent writes by the peer; the reference
        // lives no longer than `self`, which keeps the mapping alive.
        unsafe { &*self.base.as_ptr().add(off).cast::<AtomicU64>() }
    }

    /// Pointer to data-area byte `pos`; callers check `pos + n <= capacity` before touching `n` bytes.
    fn data(&self, pos: usize) -> *mut u8 {
        // SAFETY: callers guarantee `HEADER_LEN + pos <= len`, so the result stays in the mapping.
        unsafe { self.base.as_ptr().add(HEADER_LEN + pos) }
    }

    fn read_u64(&self, pos: usize) -> u64 {
        debug_assert!(HEADER_LEN + pos + 8 <= self.len);
        // SAFETY: the caller checked `pos + 8 <= capacity`; a volatile read of plain bytes the peer
        // may be writing yields some value, which we then validate.
        unsafe { std::ptr::read_volatile(self.data(pos).cast::<u64>()) }
    }

    fn write_u64(&self, pos: usize, value: u64) {
        debug_assert!(HEADER_LEN + pos + 8 <= self.len);
        // SAFETY: the producer checked `pos + 8 <= capacity` and owns this free region.
        unsafe { std::ptr::write_volatile(self.data(pos).cast::<u64>(), value) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` came from our own mmap and no reference into it outlives `self`.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Checks the fd kind, seals, size and header; returns the mapping and capacity.
/// Checks both fds a ring side receives and maps the ring; shared by producer and consumer.
fn attach_map(
    memfd: &OwnedFd,
    doorbell: &OwnedFd,
    expected_generation: u64,
) -> Result<(Mapping, usize), RingError> {
    crate::fdcheck::expect_eventfd(doorbell.as_fd()).map_err(|_| RingError::BadFd {
        what: "doorbell is not an eventfd",
    })?;
    let seals = fcntl_get_seals(memfd).map_err(|_| RingError::BadFd {
        what: "not a memfd (F_GET_SEALS failed)",
    })?;
    if !seals.contains(REQUIRED_SEALS) {
        return Err(RingError::BadFd {
            what: "memfd lacks F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL",
        });
    }
    if seals.contains(SealFlags::WRITE) || seals.contains(SealFlags::FUTURE_WRITE) {
        return Err(RingError::BadFd {
            what: "memfd is write-sealed",
        });
    }
    let size = usize::try_from(fstat(memfd).map_err(sys("fstat"))?.st_size).map_err(|_| {
        RingError::BadFd {
            what: "negative size",
        }
    })?;
    let capacity = size.checked_sub(HEADER_LEN).ok_or(RingError::BadFd {
        what: "memfd smaller than the ring header",
    })?;
    check_capacity(capacity).map_err(|_| RingError::BadFd {
        what: "memfd size is not header + power-of-two capacity",
    })?;
    let map = Mapping::new(memfd.as_fd(), size)?;
    if map.atomic(OFF_MAGIC).load(Ordering::Acquire) != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if map.atomic(OFF_VERSION).load(Ordering::Relaxed) != u64::from(LAYOUT_VERSION) {
        return Err(corrupt("unknown layout version"));
    }
    let found = map.atomic(OFF_GENERATION).load(Ordering::Relaxed);
    if found != expected_generation {
        return Err(RingError::GenerationMismatch {
            expected: expected_generation,
            found,
        });
    }
    if map.atomic(OFF_CAPACITY).load(Ordering::Relaxed) != capacity as u64 {
        return Err(corrupt("header capacity differs from the memfd size"));
    }
    // Every record position derives from these indices: misaligned ones would make record header
    // accesses unaligned on either side.
    for (off, what) in [
        (OFF_WRITE, "write index is not 8-byte aligned"),
        (OFF_READ, "read index is not 8-byte aligned"),
    ] {
        if map.atomic(off).load(Ordering::Acquire) % 8 != 0 {
            return Err(corrupt(what));
        }
    }
    Ok((map, capacity))
}

fn ring_doorbell(doorbell: &OwnedFd) -> Result<(), RingError> {
    match rustix::io::write(doorbell, &1u64.to_ne_bytes()) {
        // EAGAIN: the counter is saturated, the consumer is certainly going to wake.
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(errno) => Err(RingError::Sys {
            op: "eventfd write",
            errno,
        }),
    }
}

/// The writing end of a ring.
pub struct Producer {
    map: Mapping,
    doorbell: OwnedFd,
    _memfd: OwnedFd,
    capacity: usize,
    write: u64,
    dropped: u64,
    pending_discontinuity: bool,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity)
            .field("write", &self.write)
            .field("dropped", &self.dropped)
            .finish()
    }
}

/// Where a reserved record goes; see [`Producer::reserve`].
#[derive(Debug, Clone, Copy)]
struct Placement {
    pad_at: Option<usize>,
    pos: usize,
    end: u64,
}

impl Producer {
    /// Attaches to a ring the broker created; checks fd kind, seals, size, magic, version, generation.
    pub fn attach(
        memfd: OwnedFd,
        doorbell: OwnedFd,
        expected_generation: u64,
    ) -> Result<Self, RingError> {
        let (map, capacity) = attach_map(&memfd, &doorbell, expected_generation)?;
        let write = map.atomic(OFF_WRITE).load(Ordering::Acquire);
        let dropped = map.atomic(OFF_DROPPED).load(Ordering::Relaxed);
        let producer = Self {
            map,
            doorbell,
            _memfd: memfd,
            capacity,
            write,
            dropped,
            pending_discontinuity: false,
        };
        producer.used()?;
        Ok(producer)
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Largest payload one record may carry.
    pub fn max_payload(&self) -> usize {
        max_payload(self.capacity)
    }

    /// Records dropped because the ring was full, since the ring was made.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes in use, from the consumer's read index, which is checked, not trusted.
    fn used(&self) -> Result<u64, RingError> {
        let read = self.map.atomic(OFF_READ).load(Ordering::Acquire);
        let used = self
            .write
            .checked_sub(read)
            .ok_or(corrupt("read index ahead of write index"))?;
        if used > self.capacity as u64 {
            return Err(corrupt(
                "read index behind write index by more than the capacity",
            ));
        }
        Ok(used)
    }

    fn place(&self, len: usize) -> Result<Option<Placement>, RingError> {
        let max = self.max_payload();
        if len > max {
            return Err(RingError::RecordTooLarge { len, max });
        }
        let total = record_total(len);
        let free = self.capacity as u64 - self.used()?;
        let pos = (self.write & (self.capacity as u64 - 1)) as usize;
        let to_end = self.capacity - pos;
        let (pad_at, pos, needed) = if to_end < total {
            (Some(pos), 0, to_end + total)
        } else {
            (None, pos, total)
        };
        if needed as u64 > free {
            return Ok(None);
        }
        Ok(Some(Placement {
            pad_at,
            pos,
            end: self.write + needed as u64,
        }))
    }

    /// Whether a record of `len` payload bytes would fit now (for producers that prefer to wait).
    pub fn would_fit(&self, len: usize) -> Result<bool, RingError> {
        Ok(self.place(len)?.is_some())
    }

    /// Reserves a record of `len` payload bytes to fill in place; `None` (and a drop counted) when
    /// the ring is full. Nothing is visible to the consumer until [`WriteSlot::commit`].
    pub fn reserve(&mut self, len: usize) -> Result<Option<WriteSlot<'_>>, RingError> {
        match self.place(len)? {
            Some(placement) => Ok(Some(WriteSlot {
                producer: self,
                placement,
                len,
            })),
            None => {
                self.note_drop();
                Ok(None)
            }
        }
    }

    fn note_drop(&mut self) {
        self.dropped = self.dropped.saturating_add(1);
        self.pending_discontinuity = true;
        self.map
            .atomic(OFF_DROPPED)
            .store(self.dropped, Ordering::Relaxed);
    }

    /// Copies `payload` into the ring as one record, or drops it when the ring is full.
    pub fn push(&mut self, meta: &RecordMeta, payload: &[u8]) -> Result<PushOutcome, RingError> {
        match self.reserve(payload.len())? {
            Some(mut slot) => {
                slot.write_at(0, payload)?;
                slot.commit(meta)
            }
            None => Ok(PushOutcome::Dropped),
        }
    }

    fn publish(
        &mut self,
        placement: Placement,
        meta: &RecordMeta,
        len: usize,
    ) -> Result<PushOutcome, RingError> {
        if let Some(pad) = placement.pad_at {
            self.map.write_u64(pad, u64::from(KIND_PAD) << 32);
        }
        let mut flags = meta.flags & KNOWN_FLAGS;
        if self.pending_discontinuity {
            flags |= FLAG_DISCONTINUITY;
        }
        let pos = placement.pos;
        // len < capacity/2 ≤ 2^29, so it fits in u32.
        self.map
            .write_u64(pos, (u64::from(KIND_RECORD) << 32) | len as u64);
        self.map.write_u64(pos + 8, meta.seq);
        self.map.write_u64(pos + 16, u64::from(flags));
        for (i, ts) in meta.timestamps.iter().enumerate() {
            self.map.write_u64(pos + 24 + 8 * i, *ts);
        }
        let was = self.write;
        self.write = placement.end;
        self.pending_discontinuity = false;
        self.map
            .atomic(OFF_WRITE)
            .store(self.write, Ordering::Release);
        // Pairs with the consumer's fence in `wait`: either it sees our write index or we see its
        // read index caught up with `was` and ring.
        fence(Ordering::SeqCst);
        let read = self.map.atomic(OFF_READ).load(Ordering::Relaxed);
        let rang = read == was;
        if rang {
            ring_doorbell(&self.doorbell)?;
        }
        Ok(PushOutcome::Written { rang })
    }
}

/// A reserved, unpublished record; fill it with [`WriteSlot::write_at`], then [`WriteSlot::commit`].
/// Dropping it publishes nothing.
pub struct WriteSlot<'a> {
    producer: &'a mut Producer,
    placement: Placement,
    len: usize,
}

impl WriteSlot<'_> {
    /// Payload length of this slot.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` to payload offset `offset`.
    pub fn write_at(&mut self, offset: usize, src: &[u8]) -> Result<(), RingError> {
        let overflow = RingError::SlotOverflow {
            offset,
            len: src.len(),
            slot: self.len,
        };
        let end = offset.checked_add(src.len()).ok_or(overflow.clone())?;
        if end > self.len {
            return Err(overflow);
        }
        let dst = self
            .producer
            .map
            .data(self.placement.pos + RECORD_HEADER_LEN + offset);
        // SAFETY: the placement lies within the data area (pos + total ≤ capacity, checked in
        // `place`) and `offset + src.len() ≤ len`; the region is free space only the producer
        // writes, and `src` is private memory, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Publishes the record with `meta` (plus [`FLAG_DISCONTINUITY`] if records were dropped).
    pub fn commit(self, meta: &RecordMeta) -> Result<PushOutcome, RingError> {
        self.producer.publish(self.placement, meta, self.len)
    }
}

/// The reading end of a ring.
pub struct Consumer {
    map: Mapping,
    doorbell: OwnedFd,
    _memfd: OwnedFd,
    capacity: usize,
    generation: u64,
    read: u64,
    failed: Option<RingError>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity)
            .field("generation", &self.generation)
            .field("read", &self.read)
            .field("failed", &self.failed)
            .finish()
    }
}

/// A validated record, readable in place until released.
pub struct RecordView<'a> {
    consumer: &'a mut Consumer,
    meta: RecordMeta,
    pos: usize,
    len: usize,
    end: u64,
}

impl Consumer {
    /// Attaches to a ring the broker created; checks fd kind, seals, size, magic, version, generation.
    pub fn attach(
        memfd: OwnedFd,
        doorbell: OwnedFd,
        expected_generation: u64,
    ) -> Result<Self, RingError> {
        let (map, capacity) = attach_map(&memfd, &doorbell, expected_generation)?;
        let read = map.atomic(OFF_READ).load(Ordering::Acquire);
        let consumer = Self {
            map,
            doorbell,
            _memfd: memfd,
            capacity,
            generation: expected_generation,
            read,
            failed: None,
        };
        let write = consumer.map.atomic(OFF_WRITE).load(Ordering::Acquire);
        match write.checked_sub(read) {
            Some(used) if used <= capacity as u64 => Ok(consumer),
            _ => Err(corrupt("indices inconsistent at attach")),
        }
    }

    /// Ring capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The producer's dropped-record count (informational: the producer writes it).
    pub fn dropped(&self) -> u64 {
        self.map.atomic(OFF_DROPPED).load(Ordering::Relaxed)
    }

    /// The error that failed this consumer, if any (it then returns that error forever).
    pub fn failure(&self) -> Option<&RingError> {
        self.failed.as_ref()
    }

    /// The doorbell, for callers that poll it with other fds.
    pub fn doorbell(&self) -> BorrowedFd<'_> {
        self.doorbell.as_fd()
    }

    fn fail(&mut self, err: RingError) -> RingError {
        self.failed = Some(err.clone());
        err
    }

    /// Validated write index minus our read index.
    fn available(&self) -> Result<u64, RingError> {
        if self.map.atomic(OFF_GENERATION).load(Ordering::Relaxed) != self.generation {
            return Err(corrupt("generation changed"));
        }
        let write = self.map.atomic(OFF_WRITE).load(Ordering::Acquire);
        let avail = write
            .checked_sub(self.read)
            .ok_or(corrupt("write index behind read index"))?;
        if avail > self.capacity as u64 {
            return Err(corrupt("write index ahead by more than the capacity"));
        }
        if avail % 8 != 0 {
            return Err(corrupt("write index not 8-byte aligned"));
        }
        Ok(avail)
    }

    /// Whether a record (or padding) is waiting.
    pub fn has_data(&mut self) -> Result<bool, RingError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.available() {
            Ok(avail) => Ok(avail > 0),
            Err(err) => Err(self.fail(err)),
        }
    }

    /// The next record, without blocking; `None` when the ring is empty.
    // Not an Iterator: the view borrows the consumer mutably and the result is fallible.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<RecordView<'_>>, RingError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.locate() {
            Ok(Some((meta, pos, len, end))) => Ok(Some(RecordView {
                consumer: self,
                meta,
                pos,
                len,
                end,
            })),
            Ok(None) => Ok(None),
            Err(err) => Err(self.fail(err)),
        }
    }

    /// Finds and validates the record at the read index, skipping at most one padding marker.
    fn locate(&mut self) -> Result<Option<(RecordMeta, usize, usize, u64)>, RingError> {
        let cap = self.capacity;
        // Two rounds: a padding marker, then the record after it. A second marker in a row is
        // impossible (it would start at position 0) and is rejected there.
        for _ in 0..2 {
            let avail = self.available()?;
            if avail == 0 {
                return Ok(None);
            }
            let pos = (self.read & (cap as u64 - 1)) as usize;
            let to_end = cap - pos;
            // avail ≥ 8 (aligned, non-zero) and to_end ≥ 8 (pos is 8-aligned below cap).
            let word = self.map.read_u64(pos);
            let kind = (word >> 32) as u32;
            let len = (word & 0xffff_ffff) as usize;
            if kind == KIND_PAD {
                if avail < to_end as u64 {
                    return Err(corrupt("padding marker past the write index"));
                }
                if to_end >= cap / 2 {
                    // Every record (at most cap/2) fits here, position 0 included.
                    return Err(corrupt("padding marker where a record fits"));
                }
                self.read += to_end as u64;
                self.map
                    .atomic(OFF_READ)
                    .store(self.read, Ordering::Release);
                continue;
            }
            if kind != KIND_RECORD {
                return Err(corrupt("unknown record kind"));
            }
            if len > max_payload(cap) {
                return Err(corrupt("record length above the ring maximum"));
            }
            let total = record_total(len);
            if total > to_end {
                return Err(corrupt("record crosses the end of the ring"));
            }
            if total as u64 > avail {
                return Err(corrupt("record extends past the write index"));
            }
            let seq = self.map.read_u64(pos + 8);
            let flags_word = self.map.read_u64(pos + 16);
            if flags_word > u64::from(KNOWN_FLAGS) {
                return Err(corrupt("unknown record flags"));
            }
            let mut timestamps = [0u64; 4];
            for (i, ts) in timestamps.iter_mut().enumerate() {
                *ts = self.map.read_u64(pos + 24 + 8 * i);
            }
            let meta = RecordMeta {
                seq,
                flags: flags_word as u32,
                timestamps,
            };
            return Ok(Some((
                meta,
                pos + RECORD_HEADER_LEN,
                len,
                self.read + total as u64,
            )));
        }
        Err(corrupt("padding marker follows padding marker"))
    }

    /// Blocks until the ring has data or the doorbell rings, at most `timeout` (`None`: forever).
    /// Returns whether there may be data (a spurious `true` is possible; call [`Consumer::next`]).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, RingError> {
        // Pairs with the producer's fence in `publish`.
        fence(Ordering::SeqCst);
        if self.has_data()? {
            return Ok(true);
        }
        if timeout.is_none() {
            // One system call instead of poll + read when the doorbell is blocking (as the broker
            // makes it); a non-blocking doorbell answers EAGAIN and takes the poll path below.
            let mut buf = [0u8; 8];
            match rustix::io::read(&self.doorbell, &mut buf) {
                Ok(_) => return Ok(true),
                Err(Errno::AGAIN) => {}
                Err(Errno::INTR) => return self.has_data(),
                Err(errno) => {
                    return Err(RingError::Sys {
                        op: "eventfd read",
                        errno,
                    })
                }
            }
        }
        let timespec = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let mut fds = [PollFd::new(&self.doorbell, PollFlags::IN)];
        let ready = match poll(&mut fds, timespec.as_ref()) {
            Ok(n) => n > 0,
            // A signal: report "maybe" and let the caller re-check.
            Err(Errno::INTR) => false,
            Err(errno) => return Err(RingError::Sys { op: "poll", errno }),
        };
        if ready {
            let mut buf = [0u8; 8];
            match rustix::io::read(&self.doorbell, &mut buf) {
                Ok(_) | Err(Errno::AGAIN) => {}
                Err(errno) => {
                    return Err(RingError::Sys {
                        op: "eventfd read",
                        errno,
                    })
                }
            }
        }
        Ok(ready || self.has_data()?)
    }

    /// Spins on the write index for at most `spin`, then falls back to [`Consumer::wait`] with
    /// `timeout`. Worth it only when the caller expects a record within `spin` (known cadence).
    pub fn wait_spin(
        &mut self,
        spin: Duration,
        timeout: Option<Duration>,
    ) -> Result<bool, RingError> {
        let start = Instant::now();
        loop {
            if self.has_data()? {
                return Ok(true);
            }
            if start.elapsed() >= spin {
                return self.wait(timeout);
            }
            std::hint::spin_loop();
        }
    }
}

impl RecordView<'_> {
    /// The record's validated metadata.
    pub fn meta(&self) -> &RecordMeta {
        &self.meta
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies payload bytes starting at `offset` into `dst`, straight from the ring; returns how many
    /// were copied (fewer than `dst.len()` at the end of the payload, 0 past it).
    pub fn copy_to(&self, offset: usize, dst: &mut [u8]) -> usize {
        let n = self.len.saturating_sub(offset).min(dst.len());
        if n == 0 {
            return 0;
        }
        let src = self.consumer.map.data(self.pos + offset);
        // SAFETY: `pos + len ≤ capacity` was validated in `locate` and `offset + n ≤ len`, so the
        // source is inside the data area; `dst` is private memory (no overlap). The producer may
        // write the bytes concurrently (a protocol violation): we then copy garbage, which is
        // harmless for plain bytes and never a Rust reference into shared memory.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), n) };
        n
    }

    /// The whole payload copied into a fresh vector (at most half the ring: bounded by our capacity).
    pub fn copy_to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        self.copy_to(0, &mut out);
        out
    }

    /// Marks the record consumed, giving its space back to the producer.
    pub fn release(self) {
        self.consumer.read = self.end;
        self.consumer
            .map
            .atomic(OFF_READ)
            .store(self.end, Ordering::Release);
    }
}

impl std::fmt::Debug for RecordView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordView")
            .field("meta", &self.meta)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(capacity: usize) -> (Producer, Consumer) {
        let fds = create_ring("test", capacity, 7).unwrap();
        let memfd2 = fds.memfd.try_clone().unwrap();
        let bell2 = fds.doorbell.try_clone().unwrap();
        let p = Producer::attach(fds.memfd, fds.doorbell, 7).unwrap();
        let c = Consumer::attach(memfd2, bell2, 7).unwrap();
        (p, c)
    }

    fn meta(seq: u64) -> RecordMeta {
        RecordMeta {
            seq,
            flags: 0,
            timestamps: [seq, 1, 2, 3],
        }
    }

    #[test]
    fn ring_round_trips_a_record() {
        let (mut p, mut c) = pair(4096);
        assert!(c.next().unwrap().is_none());
        assert_eq!(
            p.push(&meta(1), b"hello").unwrap(),
            PushOutcome::Written { rang: true }
        );
        assert_eq!(
            p.push(&meta(2), b"").unwrap(),
            PushOutcome::Written { rang: false }
        );
        let r = c.next().unwrap().unwrap();
        assert_eq!(r.meta(), &meta(1));
        assert_eq!(r.copy_to_vec(), b"hello");
        let mut two = [0u8; 2];
        assert_eq!(r.copy_to(3, &mut two), 2);
        assert_eq!(&two, b"lo");
        assert_eq!(r.copy_to(9, &mut two), 0);
        r.release();
        let r = c.next().unwrap().unwrap();
        assert_eq!(r.len(), 0);
        r.release();
        assert!(c.next().unwrap().is_none());
    }

    #[test]
    fn ring_rejects_bad_capacity_and_generation() {
        assert_eq!(
            create_ring("x", 5000, 0).unwrap_err(),
            RingError::BadCapacity(5000)
        );
        let fds = create_ring("x", 4096, 3).unwrap();
        assert!(matches!(
            Consumer::attach(fds.memfd, fds.doorbell, 4),
            Err(RingError::GenerationMismatch {
                expected: 4,
                found: 3
            })
        ));
    }

    #[test]
    fn ring_rejects_unsealed_memfd_and_other_fds() {
        let fd = memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        ftruncate(&fd, (HEADER_LEN + 4096) as u64).unwrap();
        let bell = eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        assert!(matches!(
            Consumer::attach(fd, bell.try_clone().unwrap(), 0),
            Err(RingError::BadFd { .. })
        ));
        assert!(matches!(
            Producer::attach(bell.try_clone().unwrap(), bell, 0),
            Err(RingError::BadFd { .. })
        ));
    }

    #[test]
    fn ring_drops_when_full_and_marks_discontinuity() {
        let (mut p, mut c) = pair(4096);
        let payload = [9u8; 1000];
        let mut written = 0;
        while let PushOutcome::Written { .. } = p.push(&meta(written), &payload).unwrap() {
            written += 1;
        }
        assert_eq!(p.dropped(), 1);
        assert_eq!(c.dropped(), 1);
        for seq in 0..written {
            let r = c.next().unwrap().unwrap();
            assert_eq!(r.meta().seq, seq);
            assert_eq!(r.meta().flags & FLAG_DISCONTINUITY, 0);
            r.release();
        }
        p.push(&meta(99), &payload).unwrap();
        let r = c.next().unwrap().unwrap();
        assert_eq!(r.meta().seq, 99);
        assert_ne!(r.meta().flags & FLAG_DISCONTINUITY, 0);
    }

    #[test]
    fn ring_rejects_oversized_record() {
        let (mut p, _c) = pair(4096);
        let big = vec![0u8; max_payload(4096) + 1];
        assert!(matches!(
            p.push(&meta(0), &big),
            Err(RingError::RecordTooLarge { .. })
        ));
        let max = vec![0u8; max_payload(4096)];
        assert!(matches!(
            p.push(&meta(0), &max),
            Ok(PushOutcome::Written { .. })
        ));
    }

    #[test]
    fn ring_rejects_length_past_write_index_and_stays_failed() {
        let (mut p, mut c) = pair(4096);
        p.push(&meta(0), &[1u8; 16]).unwrap();
        // Hostile producer: claim a longer record than was published.
        p.map.write_u64(0, (u64::from(KIND_RECORD) << 32) | 1000);
        assert!(matches!(c.next(), Err(RingError::Corrupt { .. })));
        p.map.write_u64(0, (u64::from(KIND_RECORD) << 32) | 16);
        assert!(
            matches!(c.next(), Err(RingError::Corrupt { .. })),
            "stays failed"
        );
    }

    #[test]
    fn ring_rejects_write_index_beyond_capacity() {
        let (p, mut c) = pair(4096);
        p.map.atomic(OFF_WRITE).store(8192, Ordering::Release);
        assert!(matches!(c.next(), Err(RingError::Corrupt { .. })));
    }

    #[test]
    fn producer_rejects_hostile_read_index() {
        let (mut p, c) = pair(4096);
        c.map.atomic(OFF_READ).store(64, Ordering::Release);
        assert!(matches!(
            p.push(&meta(0), b"x"),
            Err(RingError::Corrupt { .. })
        ));
    }

    #[test]
    fn attach_refuses_misaligned_indices() {
        let fds = create_ring("test", 4096, 7).unwrap();
        let memfd2 = fds.memfd.try_clone().unwrap();
        let c = Consumer::attach(memfd2, fds.doorbell.try_clone().unwrap(), 7).unwrap();
        c.map.atomic(OFF_WRITE).store(3, Ordering::Release);
        c.map.atomic(OFF_READ).store(3, Ordering::Release);
        let memfd3 = fds.memfd.try_clone().unwrap();
        let bell3 = fds.doorbell.try_clone().unwrap();
        assert!(matches!(
            Producer::attach(fds.memfd, fds.doorbell, 7),
            Err(RingError::Corrupt { .. })
        ));
        assert!(matches!(
            Consumer::attach(memfd3, bell3, 7),
            Err(RingError::Corrupt { .. })
        ));
    }

    #[test]
    fn attach_refuses_a_doorbell_that_is_not_an_eventfd() {
        let fds = create_ring("test", 4096, 7).unwrap();
        let not_a_bell = fds.memfd.try_clone().unwrap();
        assert!(matches!(
            Consumer::attach(fds.memfd, not_a_bell, 7),
            Err(RingError::BadFd { .. })
        ));
    }

    #[test]
    fn ring_pads_at_wrap_and_consumer_skips_padding() {
        let (mut p, mut c) = pair(4096);
        let payload: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        for seq in 0..20 {
            assert!(matches!(
                p.push(&meta(seq), &payload).unwrap(),
                PushOutcome::Written { .. }
            ));
            let r = c.next().unwrap().unwrap();
            assert_eq!(r.meta().seq, seq);
            assert_eq!(r.copy_to_vec(), payload);
            r.release();
        }
    }

    #[test]
    fn wait_times_out_then_sees_doorbell() {
        let (mut p, mut c) = pair(4096);
        assert!(!c.wait(Some(Duration::from_millis(5))).unwrap());
        p.push(&meta(0), b"x").unwrap();
        assert!(c.wait(Some(Duration::from_millis(5))).unwrap());
        assert!(c
            .wait_spin(Duration::from_micros(10), Some(Duration::ZERO))
            .unwrap());
    }
}
