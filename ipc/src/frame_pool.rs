//! The frame pool: a broker-created memfd of `slots × slot_bytes` bytes where capture writes frames
//! and encode reads them (the software path; see [`crate::media`]).
//!
//! The broker sizes and seals the memfd (no shrink, no grow, no further seals) and hands capture a
//! read-write fd and encode a read-only one (reopened through `/proc/self/fd`), so a compromised
//! encoder cannot scribble over frames capture owns. Which slot belongs to whom is decided by the
//! `Frame`/`Release` messages; the peer can still write a slot it handed over (capture) while the
//! other side reads it, so readers treat slot bytes as untrusted input: encode hands raw pointers to
//! the codec (which tolerates any pixel values) and never forms a Rust reference into a slot the peer
//! can write.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{fcntl_add_seals, fstat, ftruncate, memfd_create, MemfdFlags, SealFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

use crate::media::{FramePoolSpec, MAX_POOL_SLOTS};

/// Why a pool could not be created or mapped.
#[derive(Debug, thiserror::Error)]
pub enum FramePoolError {
    #[error("frame pool of {slots} slots × {slot_bytes} bytes is not allowed")]
    BadSpec { slots: u32, slot_bytes: u64 },
    #[error("frame pool fd: {0}")]
    BadFd(&'static str),
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: rustix::io::Errno,
    },
}

fn sys(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> FramePoolError {
    move |source| FramePoolError::Sys { op, source }
}

/// Largest pool (all slots together) the broker creates or a worker maps: 1 GiB.
pub const MAX_POOL_BYTES: u64 = 1 << 30;

const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

fn total_bytes(spec: &FramePoolSpec) -> Result<u64, FramePoolError> {
    let bad = || FramePoolError::BadSpec {
        slots: spec.slots,
        slot_bytes: spec.slot_bytes,
    };
    if spec.slots == 0 || spec.slots > MAX_POOL_SLOTS || spec.slot_bytes == 0 {
        return Err(bad());
    }
    // Slots start on page boundaries, so a plane offset of 0 is page aligned for every slot.
    if !spec.slot_bytes.is_multiple_of(4096) {
        return Err(bad());
    }
    match spec.slot_bytes.checked_mul(u64::from(spec.slots)) {
        Some(total) if total <= MAX_POOL_BYTES => Ok(total),
        _ => Err(bad()),
    }
}

/// Rounds `bytes` up to whole pages, the slot size unit.
pub fn round_slot_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(4096) * 4096
}

/// Broker side: a sealed memfd for `spec` (its pages are allocated only when written).
pub fn create_pool(name: &str, spec: &FramePoolSpec) -> Result<OwnedFd, FramePoolError> {
    let total = total_bytes(spec)?;
    let memfd = memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(sys("memfd_create"))?;
    ftruncate(&memfd, total).map_err(sys("ftruncate"))?;
    fcntl_add_seals(&memfd, REQUIRED_SEALS).map_err(sys("F_ADD_SEALS"))?;
    Ok(memfd)
}

/// Broker side: a read-only fd of the same pool, for the reader.
pub fn read_only_fd(pool: BorrowedFd<'_>) -> Result<OwnedFd, FramePoolError> {
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&pool));
    rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(sys("reopening the frame pool read-only"))
}

/// A mapped frame pool (capture: read-write; encode: read-only).
pub struct FramePool {
    base: NonNull<u8>,
    len: usize,
    spec: FramePoolSpec,
    writable: bool,
    _memfd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this value; access goes through raw pointers
// whose use is governed by the slot hand-over protocol, so moving it to another thread is sound.
unsafe impl Send for FramePool {}

impl FramePool {
    /// Maps the pool the broker handed over after checking the fd is a memfd with the broker's seals
    /// and exactly the size `spec` implies. `writable` maps it read-write (capture).
    pub fn map(
        memfd: OwnedFd,
        spec: FramePoolSpec,
        writable: bool,
    ) -> Result<Self, FramePoolError> {
        let total = total_bytes(&spec)?;
        let seals = rustix::fs::fcntl_get_seals(&memfd)
            .map_err(|_| FramePoolError::BadFd("not a memfd (F_GET_SEALS failed)"))?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(FramePoolError::BadFd(
                "memfd lacks F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL",
            ));
        }
        let size = fstat(&memfd).map_err(sys("fstat"))?.st_size;
        if u64::try_from(size).ok() != Some(total) {
            return Err(FramePoolError::BadFd(
                "memfd size differs from the pool spec",
            ));
        }
        let len = usize::try_from(total).map_err(|_| FramePoolError::BadFd("pool too large"))?;
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping chosen by the kernel (null hint) aliases no Rust object; the memfd
        // is sealed against shrinking at exactly `len` bytes, so no access within it faults.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                memfd.as_fd(),
                0,
            )
        }
        .map_err(sys("mmap"))?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(FramePoolError::BadFd("mmap gave null"))?;
        Ok(Self {
            base,
            len,
            spec,
            writable,
            _memfd: memfd,
        })
    }

    pub fn spec(&self) -> FramePoolSpec {
        self.spec
    }

    /// Start of slot `slot` and its length, for handing to FFI readers (encode). `None` for a slot
    /// outside the pool. The bytes may change under the reader if the peer misbehaves; readers treat
    /// them as untrusted pixels.
    pub fn slot_ptr(&self, slot: u32) -> Option<(*const u8, usize)> {
        if slot >= self.spec.slots {
            return None;
        }
        let slot_len = self.spec.slot_bytes as usize;
        let offset = slot as usize * slot_len;
        // SAFETY: slot < slots, so offset + slot_len <= len: the pointer stays inside the mapping.
        let ptr = unsafe { self.base.as_ptr().add(offset) };
        Some((ptr.cast_const(), slot_len))
    }

    /// Capture side: the slot as a mutable byte slice while capture owns it (after `Release`, before
    /// `Frame`). `None` for a slot outside the pool or a read-only mapping.
    ///
    /// Capture only writes a slot it owns; the encoder's fd is read-only, so nobody else can write
    /// these bytes while the slice lives.
    pub fn slot_mut(&mut self, slot: u32) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        let (ptr, len) = self.slot_ptr(slot)?;
        // SAFETY: the range lies inside a live read-write mapping owned by `self`; `&mut self`
        // prevents a second slice from this process, and the only other mapper (encode) has a
        // read-only fd, so nothing else writes the bytes while the slice lives.
        Some(unsafe { std::slice::from_raw_parts_mut(ptr.cast_mut(), len) })
    }

    /// Copies `dst.len()` bytes from `offset` in slot `slot` (bounds-checked). For tests and checks.
    pub fn copy_out(&self, slot: u32, offset: usize, dst: &mut [u8]) -> bool {
        let Some((ptr, len)) = self.slot_ptr(slot) else {
            return false;
        };
        match offset.checked_add(dst.len()) {
            Some(end) if end <= len => {
                // SAFETY: [offset, end) lies inside the slot inside the mapping; `dst` is a distinct
                // Rust buffer, so the regions do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(ptr.add(offset), dst.as_mut_ptr(), dst.len())
                };
                true
            }
            _ => false,
        }
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        // SAFETY: base/len describe the mapping made in `map`, unmapped exactly once here; no slice
        // into it outlives `self` (slot_mut borrows self).
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FramePoolSpec {
        FramePoolSpec {
            slots: 3,
            slot_bytes: 8192,
        }
    }

    #[test]
    fn writer_and_read_only_reader_share_slots() {
        let memfd = create_pool("test-pool", &spec()).unwrap();
        let ro = read_only_fd(memfd.as_fd()).unwrap();
        let mut writer = FramePool::map(memfd, spec(), true).unwrap();
        let reader = FramePool::map(ro, spec(), false).unwrap();
        writer.slot_mut(2).unwrap()[100..104].copy_from_slice(b"lume");
        let mut out = [0u8; 4];
        assert!(reader.copy_out(2, 100, &mut out));
        assert_eq!(&out, b"lume");
        assert!(!reader.copy_out(2, 8190, &mut out));
        assert!(writer.slot_mut(3).is_none());
    }

    #[test]
    fn read_only_fd_cannot_be_mapped_writable() {
        let memfd = create_pool("test-pool", &spec()).unwrap();
        let ro = read_only_fd(memfd.as_fd()).unwrap();
        assert!(FramePool::map(ro, spec(), true).is_err());
        let mut reader_view =
            FramePool::map(read_only_fd(memfd.as_fd()).unwrap(), spec(), false).unwrap();
        assert!(reader_view.slot_mut(0).is_none());
    }

    #[test]
    fn lying_specs_and_fds_are_refused() {
        assert!(create_pool(
            "p",
            &FramePoolSpec {
                slots: 0,
                slot_bytes: 4096
            }
        )
        .is_err());
        assert!(create_pool(
            "p",
            &FramePoolSpec {
                slots: 99,
                slot_bytes: 4096
            }
        )
        .is_err());
        assert!(create_pool(
            "p",
            &FramePoolSpec {
                slots: 2,
                slot_bytes: 100
            }
        )
        .is_err());
        assert!(create_pool(
            "p",
            &FramePoolSpec {
                slots: 16,
                slot_bytes: 1 << 40
            }
        )
        .is_err());
        let memfd = create_pool("p", &spec()).unwrap();
        let bigger = FramePoolSpec { slots: 4, ..spec() };
        assert!(matches!(
            FramePool::map(memfd, bigger, true),
            Err(FramePoolError::BadFd(_))
        ));
        let unsealed = memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        ftruncate(&unsealed, 3 * 8192).unwrap();
        assert!(matches!(
            FramePool::map(unsealed, spec(), true),
            Err(FramePoolError::BadFd(_))
        ));
    }
}
