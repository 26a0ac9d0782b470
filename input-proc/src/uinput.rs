//! The uinput device interface (`linux/uinput.h`): the `UI_*` ioctls behind a small trait, so
//! the pad code runs against the kernel in production and against a recording fake in tests,
//! and `input_event` writes and reads on the fd (the same for both: a test hands a socketpair).
//!
//! One `/dev/uinput` open file makes one virtual device; the broker opens one per pad.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Event types and codes from `linux/input-event-codes.h` and `linux/uinput.h`.
pub mod codes {
    pub const EV_SYN: u16 = 0x00;
    pub const EV_KEY: u16 = 0x01;
    pub const EV_ABS: u16 = 0x03;
    pub const EV_FF: u16 = 0x15;
    pub const EV_UINPUT: u16 = 0x0101;
    pub const SYN_REPORT: u16 = 0;
    pub const UI_FF_UPLOAD: u16 = 1;
    pub const UI_FF_ERASE: u16 = 2;
    pub const FF_RUMBLE: u16 = 0x50;
    pub const BUS_USB: u16 = 0x03;
}

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// `_IOC(dir, 'U', nr, size)` for the uinput ioctls.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((b'U' as u64) << 8) | nr
}

pub const UI_DEV_CREATE: u64 = ioc(0, 1, 0);
pub const UI_DEV_DESTROY: u64 = ioc(0, 2, 0);
pub const UI_DEV_SETUP: u64 = ioc(IOC_WRITE, 3, size_of::<libc::uinput_setup>());
pub const UI_ABS_SETUP: u64 = ioc(IOC_WRITE, 4, size_of::<libc::uinput_abs_setup>());
pub const UI_SET_EVBIT: u64 = ioc(IOC_WRITE, 100, size_of::<libc::c_int>());
pub const UI_SET_KEYBIT: u64 = ioc(IOC_WRITE, 101, size_of::<libc::c_int>());
pub const UI_SET_ABSBIT: u64 = ioc(IOC_WRITE, 103, size_of::<libc::c_int>());
pub const UI_SET_FFBIT: u64 = ioc(IOC_WRITE, 107, size_of::<libc::c_int>());
pub const UI_BEGIN_FF_UPLOAD: u64 = ioc(
    IOC_READ | IOC_WRITE,
    200,
    size_of::<libc::uinput_ff_upload>(),
);
pub const UI_END_FF_UPLOAD: u64 = ioc(IOC_WRITE, 201, size_of::<libc::uinput_ff_upload>());
pub const UI_BEGIN_FF_ERASE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    202,
    size_of::<libc::uinput_ff_erase>(),
);
pub const UI_END_FF_ERASE: u64 = ioc(IOC_WRITE, 203, size_of::<libc::uinput_ff_erase>());

/// Every uinput ioctl the worker issues (its seccomp allowlist admits exactly these).
pub const ALL_IOCTLS: [u64; 12] = [
    UI_DEV_CREATE,
    UI_DEV_DESTROY,
    UI_DEV_SETUP,
    UI_ABS_SETUP,
    UI_SET_EVBIT,
    UI_SET_KEYBIT,
    UI_SET_ABSBIT,
    UI_SET_FFBIT,
    UI_BEGIN_FF_UPLOAD,
    UI_END_FF_UPLOAD,
    UI_BEGIN_FF_ERASE,
    UI_END_FF_ERASE,
];

/// The device a pad is built as, before `UI_DEV_CREATE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSetup {
    pub name: String,
    pub vendor: u16,
    pub product: u16,
    pub version: u16,
    pub ff_effects_max: u32,
}

/// An absolute axis' range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbsAxis {
    pub code: u16,
    pub min: i32,
    pub max: i32,
    pub fuzz: i32,
    pub flat: i32,
}

/// A force-feedback upload the kernel asks the device to accept (`UI_BEGIN_FF_UPLOAD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FfUpload {
    pub effect_id: i16,
    pub effect_type: u16,
    /// `FF_RUMBLE` magnitudes (strong, weak); zero for other effects.
    pub rumble: (u16, u16),
}

/// The `UI_*` ioctls, one method each.
pub trait UinputOps: Send {
    fn set_evbit(&self, fd: BorrowedFd<'_>, ev: u16) -> io::Result<()>;
    fn set_keybit(&self, fd: BorrowedFd<'_>, key: u16) -> io::Result<()>;
    fn set_absbit(&self, fd: BorrowedFd<'_>, abs: u16) -> io::Result<()>;
    fn set_ffbit(&self, fd: BorrowedFd<'_>, ff: u16) -> io::Result<()>;
    fn abs_setup(&self, fd: BorrowedFd<'_>, axis: AbsAxis) -> io::Result<()>;
    fn dev_setup(&self, fd: BorrowedFd<'_>, setup: &DeviceSetup) -> io::Result<()>;
    fn dev_create(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    fn dev_destroy(&self, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// Fetches upload `request_id` and accepts it (`UI_BEGIN_FF_UPLOAD` + `UI_END_FF_UPLOAD`).
    fn ff_upload(&self, fd: BorrowedFd<'_>, request_id: u32) -> io::Result<FfUpload>;
    /// Fetches erase `request_id` and accepts it; returns the erased effect id.
    fn ff_erase(&self, fd: BorrowedFd<'_>, request_id: u32) -> io::Result<u32>;
}

/// The kernel's uinput, through `ioctl(2)`.
pub struct KernelUinput;

/// `ioctl(fd, request, arg)` with the result as an `io::Result`.
///
/// # Safety
/// `arg` must be what `request` expects: an integer for the `UI_SET_*BIT` calls, or a pointer to
/// a live value of the request's type and size (encoded in `request`).
unsafe fn ioctl(fd: BorrowedFd<'_>, request: u64, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the caller guarantees `arg` matches `request`; `fd` is a live borrowed fd.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_bit(fd: BorrowedFd<'_>, request: u64, bit: u16) -> io::Result<()> {
    // SAFETY: the UI_SET_*BIT ioctls take the bit number as an integer argument.
    unsafe { ioctl(fd, request, libc::c_ulong::from(bit)) }
}

impl UinputOps for KernelUinput {
    fn set_evbit(&self, fd: BorrowedFd<'_>, ev: u16) -> io::Result<()> {
        set_bit(fd, UI_SET_EVBIT, ev)
    }
    fn set_keybit(&self, fd: BorrowedFd<'_>, key: u16) -> io::Result<()> {
        set_bit(fd, UI_SET_KEYBIT, key)
    }
    fn set_absbit(&self, fd: BorrowedFd<'_>, abs: u16) -> io::Result<()> {
        set_bit(fd, UI_SET_ABSBIT, abs)
    }
    fn set_ffbit(&self, fd: BorrowedFd<'_>, ff: u16) -> io::Result<()> {
        set_bit(fd, UI_SET_FFBIT, ff)
    }
    fn abs_setup(&self, fd: BorrowedFd<'_>, axis: AbsAxis) -> io::Result<()> {
        let setup = libc::uinput_abs_setup {
            code: axis.code,
            absinfo: libc::input_absinfo {
                value: 0,
                minimum: axis.min,
                maximum: axis.max,
                fuzz: axis.fuzz,
                flat: axis.flat,
                resolution: 0,
            },
        };
        // SAFETY: UI_ABS_SETUP reads one uinput_abs_setup, which lives across the call.
        unsafe { ioctl(fd, UI_ABS_SETUP, &setup as *const _ as libc::c_ulong) }
    }
    fn dev_setup(&self, fd: BorrowedFd<'_>, setup: &DeviceSetup) -> io::Result<()> {
        let mut name = [0 as libc::c_char; libc::UINPUT_MAX_NAME_SIZE];
        // Leave at least one NUL at the end.
        for (dst, src) in name
            .iter_mut()
            .zip(setup.name.bytes().take(libc::UINPUT_MAX_NAME_SIZE - 1))
        {
            *dst = src as libc::c_char;
        }
        let raw = libc::uinput_setup {
            id: libc::input_id {
                bustype: codes::BUS_USB,
                vendor: setup.vendor,
                product: setup.product,
                version: setup.version,
            },
            name,
            ff_effects_max: setup.ff_effects_max,
        };
        // SAFETY: UI_DEV_SETUP reads one uinput_setup, which lives across the call.
        unsafe { ioctl(fd, UI_DEV_SETUP, &raw as *const _ as libc::c_ulong) }
    }
    fn dev_create(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: UI_DEV_CREATE takes no argument.
        unsafe { ioctl(fd, UI_DEV_CREATE, 0) }
    }
    fn dev_destroy(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: UI_DEV_DESTROY takes no argument.
        unsafe { ioctl(fd, UI_DEV_DESTROY, 0) }
    }
    fn ff_upload(&self, fd: BorrowedFd<'_>, request_id: u32) -> io::Result<FfUpload> {
        // SAFETY: uinput_ff_upload is plain old data; all-zero is a valid value.
        let mut upload: libc::uinput_ff_upload = unsafe { std::mem::zeroed() };
        upload.request_id = request_id;
        // SAFETY: UI_BEGIN_FF_UPLOAD fills one uinput_ff_upload, which lives across the call.
        unsafe {
            ioctl(
                fd,
                UI_BEGIN_FF_UPLOAD,
                &mut upload as *mut _ as libc::c_ulong,
            )?
        };
        let effect = &upload.effect;
        let rumble = if effect.type_ == codes::FF_RUMBLE {
            // The union's first member for FF_RUMBLE is ff_rumble_effect { strong, weak }.
            let bytes = effect.u[0].to_ne_bytes();
            (
                u16::from_ne_bytes([bytes[0], bytes[1]]),
                u16::from_ne_bytes([bytes[2], bytes[3]]),
            )
        } else {
            (0, 0)
        };
        let result = FfUpload {
            effect_id: effect.id,
            effect_type: effect.type_,
            rumble,
        };
        upload.retval = 0;
        // SAFETY: UI_END_FF_UPLOAD reads one uinput_ff_upload, which lives across the call.
        unsafe { ioctl(fd, UI_END_FF_UPLOAD, &upload as *const _ as libc::c_ulong)? };
        Ok(result)
    }
    fn ff_erase(&self, fd: BorrowedFd<'_>, request_id: u32) -> io::Result<u32> {
        let mut erase = libc::uinput_ff_erase {
            request_id,
            retval: 0,
            effect_id: 0,
        };
        // SAFETY: UI_BEGIN_FF_ERASE fills one uinput_ff_erase, which lives across the call.
        unsafe { ioctl(fd, UI_BEGIN_FF_ERASE, &mut erase as *mut _ as libc::c_ulong)? };
        erase.retval = 0;
        // SAFETY: UI_END_FF_ERASE reads one uinput_ff_erase, which lives across the call.
        unsafe { ioctl(fd, UI_END_FF_ERASE, &erase as *const _ as libc::c_ulong)? };
        Ok(erase.effect_id)
    }
}

/// One `input_event` as uinput reads and writes it (the timestamp is left to the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl Event {
    pub const fn new(kind: u16, code: u16, value: i32) -> Event {
        Event { kind, code, value }
    }

    /// The kernel's `struct input_event` bytes of this event.
    pub fn to_bytes(self) -> [u8; size_of::<libc::input_event>()] {
        let raw = libc::input_event {
            time: libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            type_: self.kind,
            code: self.code,
            value: self.value,
        };
        let mut out = [0u8; size_of::<libc::input_event>()];
        // SAFETY: input_event is plain old data without padding between its fields on Linux
        // (timeval, then u16, u16, i32), and `out` is exactly its size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &raw as *const libc::input_event as *const u8,
                out.as_mut_ptr(),
                out.len(),
            )
        };
        out
    }

    /// Parses one `struct input_event` (type, code and value; the time is ignored).
    pub fn from_bytes(bytes: &[u8]) -> Option<Event> {
        const SIZE: usize = size_of::<libc::input_event>();
        const TYPE_AT: usize = size_of::<libc::timeval>();
        if bytes.len() != SIZE {
            return None;
        }
        let u16_at = |at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
        let value = i32::from_ne_bytes([
            bytes[TYPE_AT + 4],
            bytes[TYPE_AT + 5],
            bytes[TYPE_AT + 6],
            bytes[TYPE_AT + 7],
        ]);
        Some(Event {
            kind: u16_at(TYPE_AT),
            code: u16_at(TYPE_AT + 2),
            value,
        })
    }
}

/// Size of one `struct input_event` on this platform.
pub const EVENT_SIZE: usize = size_of::<libc::input_event>();

/// Writes `events` as one `write(2)` (uinput takes several events per write).
pub fn write_events(fd: BorrowedFd<'_>, events: &[Event]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(events.len() * EVENT_SIZE);
    for event in events {
        buf.extend_from_slice(&event.to_bytes());
    }
    let written = rustix::io::write(fd, &buf)?;
    if written != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("uinput took {written} of {} bytes", buf.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values as the C macros expand on x86_64 and aarch64 (64-bit pointers).
        assert_eq!(UI_DEV_CREATE, 0x5501);
        assert_eq!(UI_DEV_DESTROY, 0x5502);
        assert_eq!(UI_DEV_SETUP, 0x405c_5503);
        assert_eq!(UI_ABS_SETUP, 0x401c_5504);
        assert_eq!(UI_SET_EVBIT, 0x4004_5564);
        assert_eq!(UI_SET_KEYBIT, 0x4004_5565);
        assert_eq!(UI_SET_ABSBIT, 0x4004_5567);
        assert_eq!(UI_SET_FFBIT, 0x4004_556b);
        assert_eq!(UI_BEGIN_FF_UPLOAD, 0xc068_55c8);
        assert_eq!(UI_END_FF_UPLOAD, 0x4068_55c9);
        assert_eq!(UI_BEGIN_FF_ERASE, 0xc00c_55ca);
        assert_eq!(UI_END_FF_ERASE, 0x400c_55cb);
    }

    #[test]
    fn events_round_trip_through_their_bytes() {
        let e = Event::new(codes::EV_ABS, 1, -32768);
        assert_eq!(Event::from_bytes(&e.to_bytes()), Some(e));
        assert_eq!(Event::from_bytes(&[0; 3]), None);
    }
}
