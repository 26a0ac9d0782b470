//! The NVIDIA path's frame memory: a CUDA context created before lock-down (the driver opens
//! `/dev/nvidia*` when it initialises, which lock-down forbids later) and a pool of device buffers
//! that encode allocates once per session and exports as POSIX-fd shareable handles, so capture
//! can import them and write frames into them; per frame only a slot index has to cross.
//!
//! The same buffers back FFmpeg frames of an `AVHWFramesContext` of type CUDA, so NVENC sees a
//! small fixed set of device pointers (it registers each one once) instead of a fresh one per
//! frame.
//!
//! libcuda is loaded at run time: on a machine without the NVIDIA driver [`CudaDevice::open`]
//! answers [`CudaError::NoDriver`] and encode keeps its software encoders.

// Only `prepare` runs in the worker so far: sessions take the pool once capture can send a CUDA
// slot descriptor (an ipc change still to come); the tests use the rest.
#![allow(dead_code)]

use std::ffi::{c_void, CStr};
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr;
use std::sync::{Arc, OnceLock};

use cudarc::driver::sys::{
    self, CUcontext, CUdevice, CUdeviceptr, CUmemAccessDesc, CUmemAllocationProp,
    CUmemGenericAllocationHandle, CUresult,
};
use ffmpeg_next::ffi;

/// Row alignment FFmpeg's CUDA frames use (`CUDA_FRAME_ALIGNMENT` in hwcontext_cuda.c); pitches
/// follow it so a frame described by FFmpeg's own rules lands exactly on a slot's rows.
pub const ROW_ALIGN: usize = 256;

/// Upper bound on slots: NVENC caches at most 64 registered input buffers.
pub const MAX_SLOTS: usize = 64;

/// Largest picture side NVENC accepts on any current GPU.
const MAX_SIDE: u32 = 8192;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CudaError {
    #[error("{0}")]
    NoDriver(String),
    #[error("{call} failed: {result}")]
    Call { call: &'static str, result: String },
    #[error("FFmpeg {call} failed: {message}")]
    Ffmpeg { call: &'static str, message: String },
    #[error("invalid CUDA pool: {0}")]
    Invalid(String),
}

/// The message a machine without the NVIDIA driver gets.
pub const NO_DRIVER: &str = "libcuda.so.1 not found: the NVIDIA path needs the NVIDIA driver";

/// Turns a `CUresult` into `Ok` or an error naming the call and the driver's error name.
fn check(call: &'static str, result: CUresult) -> Result<(), CudaError> {
    if result == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Call {
            call,
            result: format!("{result:?}"),
        })
    }
}

fn ff_check(call: &'static str, ret: i32) -> Result<(), CudaError> {
    if ret >= 0 {
        Ok(())
    } else {
        Err(CudaError::Ffmpeg {
            call,
            message: ffmpeg_next::Error::from(ret).to_string(),
        })
    }
}

/// Pixel layout of a pool's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFormat {
    /// Y plane then interleaved UV at half height, same pitch (what NVENC encodes natively).
    Nv12,
    /// One plane, bytes B, G, R, x per pixel (`AV_PIX_FMT_BGR0`; NVENC converts it itself).
    Bgrx,
}

impl PoolFormat {
    fn sw_format(self) -> ffi::AVPixelFormat {
        match self {
            PoolFormat::Nv12 => ffi::AVPixelFormat::AV_PIX_FMT_NV12,
            PoolFormat::Bgrx => ffi::AVPixelFormat::AV_PIX_FMT_BGR0,
        }
    }
}

/// Where the planes of one slot lie, in bytes from the slot's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    /// Bytes per row of every plane (both NV12 planes share it, as in FFmpeg's CUDA frames).
    pub pitch: usize,
    /// Offset of each plane; `planes` of them are meaningful.
    pub offsets: [usize; 2],
    pub planes: usize,
    /// Bytes the picture occupies (the allocation is this rounded up to the granularity).
    pub size: usize,
}

fn align_up(value: usize, align: usize) -> Option<usize> {
    value.checked_add(align - 1).map(|v| v / align * align)
}

/// The layout FFmpeg's `av_image_fill_arrays(.., ROW_ALIGN)` gives a CUDA frame of this size.
pub fn slot_layout(format: PoolFormat, width: u32, height: u32) -> Result<SlotLayout, CudaError> {
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(CudaError::Invalid(format!(
            "{width}x{height} is outside 1..={MAX_SIDE} per side"
        )));
    }
    if format == PoolFormat::Nv12 && (!width.is_multiple_of(2) || !height.is_multiple_of(2)) {
        return Err(CudaError::Invalid(format!(
            "NV12 needs an even width and height, not {width}x{height}"
        )));
    }
    let (w, h) = (width as usize, height as usize);
    // Sides are bounded above, so none of this can overflow.
    let layout = match format {
        PoolFormat::Nv12 => {
            let pitch = align_up(w, ROW_ALIGN).unwrap_or(usize::MAX);
            SlotLayout {
                pitch,
                offsets: [0, pitch * h],
                planes: 2,
                size: pitch * h + pitch * h / 2,
            }
        }
        PoolFormat::Bgrx => {
            let pitch = align_up(w * 4, ROW_ALIGN).unwrap_or(usize::MAX);
            SlotLayout {
                pitch,
                offsets: [0, 0],
                planes: 1,
                size: pitch * h,
            }
        }
    };
    Ok(layout)
}

/// Bytes to allocate per slot: the picture rounded up to the driver's allocation granularity.
pub fn allocation_size(layout: &SlotLayout, granularity: usize) -> Result<usize, CudaError> {
    if granularity == 0 || !granularity.is_power_of_two() {
        return Err(CudaError::Invalid(format!(
            "allocation granularity {granularity} is not a power of two"
        )));
    }
    align_up(layout.size, granularity)
        .ok_or_else(|| CudaError::Invalid("slot size overflows".into()))
}

/// A retained primary context of one device; released when the last owner goes.
struct Context {
    device: CUdevice,
    ctx: CUcontext,
}

// SAFETY: a CUcontext is a handle the driver lets any thread make current; nothing here is
// thread-local.
unsafe impl Send for Context {}
// SAFETY: as above; the struct is never mutated after creation.
unsafe impl Sync for Context {}

impl Context {
    /// Makes the context current on this thread for the guard's lifetime.
    fn push(&self) -> Result<CurrentGuard, CudaError> {
        // SAFETY: `ctx` is a live retained context (released only in Drop, after all users).
        check("cuCtxPushCurrent", unsafe {
            sys::cuCtxPushCurrent_v2(self.ctx)
        })?;
        Ok(CurrentGuard)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: retained once in `CudaDevice::open`; released exactly once here.
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) };
    }
}

struct CurrentGuard;

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let mut popped: CUcontext = ptr::null_mut();
        // SAFETY: paired with the push that created this guard, on the same thread (the guard is
        // neither Send nor stored).
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
    }
}

/// An `AVBufferRef` this code holds one reference to.
struct AvRef(*mut ffi::AVBufferRef);

// SAFETY: FFmpeg buffer references are reference counted atomically; the contexts they point
// to are not mutated after init.
unsafe impl Send for AvRef {}
// SAFETY: as above.
unsafe impl Sync for AvRef {}

impl Drop for AvRef {
    fn drop(&mut self) {
        // SAFETY: this struct owns one reference, given up once here.
        unsafe { ffi::av_buffer_unref(&mut self.0) };
    }
}

/// The CUDA device encode uses: a context created before lock-down and an FFmpeg CUDA device
/// context wrapping it (for NVENC).
pub struct CudaDevice {
    ctx: Arc<Context>,
    hw_device: AvRef,
    name: String,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("device", &self.ctx.device)
            .field("name", &self.name)
            .finish()
    }
}

impl CudaDevice {
    /// Loads libcuda, initialises the driver and retains device 0's primary context. Call it
    /// before lock-down.
    pub fn open() -> Result<CudaDevice, CudaError> {
        // cudarc's loader panics when libcuda is missing; ask first.
        // SAFETY: only tries to dlopen the library names and closes them again.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::NoDriver(NO_DRIVER.into()));
        }
        // SAFETY: libcuda is present (checked above); cuInit takes flags 0.
        check("cuInit", unsafe { sys::cuInit(0) })?;
        let mut device: CUdevice = 0;
        // SAFETY: `device` is a valid out-pointer.
        check("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut device, 0) })?;
        let mut name = [0 as std::ffi::c_char; 128];
        // SAFETY: the buffer's length is passed; the driver NUL-terminates within it.
        check("cuDeviceGetName", unsafe {
            sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, device)
        })?;
        // SAFETY: NUL-terminated by the call above (and the buffer was zeroed).
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let mut raw: CUcontext = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; `device` came from cuDeviceGet.
        check("cuDevicePrimaryCtxRetain", unsafe {
            sys::cuDevicePrimaryCtxRetain(&mut raw, device)
        })?;
        let ctx = Arc::new(Context { device, ctx: raw });
        let hw_device = hw_device(&ctx)?;
        Ok(CudaDevice {
            ctx,
            hw_device,
            name,
        })
    }

    /// The GPU's name, for logs and stats.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The FFmpeg `AVHWDeviceContext` (type CUDA) wrapping this context, for an encoder's
    /// `hw_device_ctx`; still owned by this device.
    pub fn hw_device_ref(&self) -> *mut ffi::AVBufferRef {
        self.hw_device.0
    }
}

/// Wraps `ctx` in an FFmpeg CUDA device context (FFmpeg does not destroy a context it was given).
fn hw_device(ctx: &Context) -> Result<AvRef, CudaError> {
    // SAFETY: plain allocation; null on failure.
    let raw = unsafe { ffi::av_hwdevice_ctx_alloc(ffi::AVHWDeviceType::AV_HWDEVICE_TYPE_CUDA) };
    if raw.is_null() {
        return Err(CudaError::Ffmpeg {
            call: "av_hwdevice_ctx_alloc(CUDA)",
            message: "out of memory or FFmpeg built without CUDA".into(),
        });
    }
    let owned = AvRef(raw);
    // SAFETY: `raw` is a fresh AVHWDeviceContext of type CUDA, whose `hwctx` FFmpeg allocated as
    // an AVCUDADeviceContext; the caller fills it in before av_hwdevice_ctx_init.
    unsafe {
        let dev = (*raw).data as *mut ffi::AVHWDeviceContext;
        let cuda = (*dev).hwctx as *mut ffi::AVCUDADeviceContext;
        (*cuda).cuda_ctx = ctx.ctx as ffi::CUcontext;
    }
    // SAFETY: the context is filled in; init loads FFmpeg's own CUDA entry points (dlopen, so
    // this must run before lock-down).
    ff_check("av_hwdevice_ctx_init", unsafe {
        ffi::av_hwdevice_ctx_init(raw)
    })?;
    Ok(owned)
}

static DEVICE: OnceLock<Result<CudaDevice, CudaError>> = OnceLock::new();

/// Opens the device once, before lock-down, and keeps it for the worker's lifetime; logs why
/// not when it cannot (the software encoders still serve then).
pub fn prepare() -> &'static Result<CudaDevice, CudaError> {
    DEVICE.get_or_init(|| {
        let device = CudaDevice::open();
        match &device {
            Ok(d) => eprintln!("lumen-encode: CUDA device 0: {}", d.name()),
            Err(e) => eprintln!("lumen-encode: NVIDIA path unavailable: {e}"),
        }
        device
    })
}

/// The device [`prepare`] opened, if it could.
pub fn device() -> Option<&'static CudaDevice> {
    DEVICE.get().and_then(|d| d.as_ref().ok())
}

/// One exported slot, for capture: the fd of the allocation's shareable handle and how big it is
/// (the importer maps exactly `alloc_size` bytes).
#[derive(Debug)]
pub struct SlotExport {
    pub fd: OwnedFd,
    pub alloc_size: usize,
}

/// One mapped allocation.
struct Slot {
    handle: CUmemGenericAllocationHandle,
    ptr: CUdeviceptr,
    size: usize,
}

/// The device memory of a pool; freed when the pool and every FFmpeg frame that points into it
/// are gone.
struct Memory {
    ctx: Arc<Context>,
    slots: Vec<Slot>,
}

impl Drop for Memory {
    fn drop(&mut self) {
        let _current = self.ctx.push();
        for slot in self.slots.drain(..) {
            release_slot(&slot);
        }
    }
}

fn release_slot(slot: &Slot) {
    // SAFETY: ptr/size were reserved and mapped with `handle` by `map_slot`; nothing refers to
    // them any more (Memory is dropped only when the last frame reference is).
    unsafe {
        let _ = sys::cuMemUnmap(slot.ptr, slot.size);
        let _ = sys::cuMemAddressFree(slot.ptr, slot.size);
        let _ = sys::cuMemRelease(slot.handle);
    }
}

fn allocation_prop(device: CUdevice) -> CUmemAllocationProp {
    // SAFETY: a plain C struct for which all-zero is the documented default.
    let mut prop: CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.requestedHandleTypes =
        sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    prop
}

/// Granularity the driver wants for allocations with `prop`.
fn granularity(prop: &CUmemAllocationProp) -> Result<usize, CudaError> {
    let mut granularity = 0usize;
    // SAFETY: valid out-pointer and property struct.
    check("cuMemGetAllocationGranularity", unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut granularity,
            prop,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
        )
    })?;
    Ok(granularity)
}

/// Reserves an address range for `handle` and maps it read-write for `device`.
fn map_slot(
    handle: CUmemGenericAllocationHandle,
    size: usize,
    device: CUdevice,
) -> Result<Slot, CudaError> {
    let mut ptr: CUdeviceptr = 0;
    // SAFETY: valid out-pointer; size is a multiple of the granularity.
    check("cuMemAddressReserve", unsafe {
        sys::cuMemAddressReserve(&mut ptr, size, 0, 0, 0)
    })?;
    // SAFETY: the range was just reserved with this size; `handle` is a live allocation of it.
    if let Err(e) = check("cuMemMap", unsafe {
        sys::cuMemMap(ptr, size, 0, handle, 0)
    }) {
        // SAFETY: reserved above, not mapped.
        let _ = unsafe { sys::cuMemAddressFree(ptr, size) };
        return Err(e);
    }
    let slot = Slot { handle, ptr, size };
    // SAFETY: a plain C struct; all fields set below.
    let mut access: CUmemAccessDesc = unsafe { std::mem::zeroed() };
    access.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = device;
    access.flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    // SAFETY: the range is mapped; one descriptor is passed.
    if let Err(e) = check("cuMemSetAccess", unsafe {
        sys::cuMemSetAccess(ptr, size, &access, 1)
    }) {
        // SAFETY: mapped above; unmap and free the range but keep the handle (caller's).
        unsafe {
            let _ = sys::cuMemUnmap(ptr, size);
            let _ = sys::cuMemAddressFree(ptr, size);
        }
        return Err(e);
    }
    Ok(slot)
}

/// A session's pool of CUDA frame buffers: device memory, one exported fd per slot for capture,
/// and the FFmpeg frames context NVENC encodes from.
pub struct CudaPool {
    memory: Arc<Memory>,
    frames: AvRef,
    format: PoolFormat,
    width: u32,
    height: u32,
    layout: SlotLayout,
    exports: Vec<SlotExport>,
}

impl std::fmt::Debug for CudaPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaPool")
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("layout", &self.layout)
            .field("slots", &self.memory.slots.len())
            .finish()
    }
}

impl CudaPool {
    /// Allocates `slots` buffers of `width`×`height` in `format` on `device`, exports each as a
    /// POSIX fd, and builds the FFmpeg frames context over them.
    pub fn allocate(
        device: &CudaDevice,
        slots: usize,
        width: u32,
        height: u32,
        format: PoolFormat,
    ) -> Result<CudaPool, CudaError> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(CudaError::Invalid(format!(
                "{slots} slots (1..={MAX_SLOTS})"
            )));
        }
        let layout = slot_layout(format, width, height)?;
        let ctx = &device.ctx;
        let _current = ctx.push()?;
        let prop = allocation_prop(ctx.device);
        let size = allocation_size(&layout, granularity(&prop)?)?;
        let mut memory = Memory {
            ctx: Arc::clone(ctx),
            slots: Vec::with_capacity(slots),
        };
        let mut exports = Vec::with_capacity(slots);
        for _ in 0..slots {
            let mut handle: CUmemGenericAllocationHandle = 0;
            // SAFETY: valid out-pointer and properties; size is granularity-aligned.
            check("cuMemCreate", unsafe {
                sys::cuMemCreate(&mut handle, size, &prop, 0)
            })?;
            let slot = match map_slot(handle, size, ctx.device) {
                Ok(slot) => slot,
                Err(e) => {
                    // SAFETY: created above and not mapped.
                    let _ = unsafe { sys::cuMemRelease(handle) };
                    return Err(e);
                }
            };
            memory.slots.push(slot);
            let mut fd: std::ffi::c_int = -1;
            // SAFETY: for POSIX_FILE_DESCRIPTOR the out-parameter is an int.
            check("cuMemExportToShareableHandle", unsafe {
                sys::cuMemExportToShareableHandle(
                    (&mut fd as *mut std::ffi::c_int).cast::<c_void>(),
                    handle,
                    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                    0,
                )
            })?;
            if fd < 0 {
                return Err(CudaError::Invalid(format!(
                    "cuMemExportToShareableHandle returned fd {fd}"
                )));
            }
            // SAFETY: the driver just created this fd for us; nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            exports.push(SlotExport {
                fd,
                alloc_size: size,
            });
        }
        let frames = frames_context(device, format, width, height)?;
        Ok(CudaPool {
            memory: Arc::new(memory),
            frames,
            format,
            width,
            height,
            layout,
            exports,
        })
    }

    pub fn layout(&self) -> SlotLayout {
        self.layout
    }

    pub fn slots(&self) -> usize {
        self.memory.slots.len()
    }

    /// The exported fds, one per slot in slot order, for the message that hands them to capture.
    pub fn exports(&self) -> &[SlotExport] {
        &self.exports
    }

    /// The device address of `slot` (for copies into it and for tests).
    pub fn device_ptr(&self, slot: usize) -> Option<CUdeviceptr> {
        self.memory.slots.get(slot).map(|s| s.ptr)
    }

    /// An FFmpeg frame (`AV_PIX_FMT_CUDA`, this pool's frames context) whose planes are `slot`'s
    /// memory. The frame keeps the pool's memory alive; capture must not write the slot until
    /// the encoder is done with the frame (the slot protocol's Release).
    pub fn frame(&self, slot: usize) -> Result<ffmpeg_next::frame::Video, CudaError> {
        let Some(mem) = self.memory.slots.get(slot) else {
            return Err(CudaError::Invalid(format!(
                "slot {slot} of {}",
                self.memory.slots.len()
            )));
        };
        // SAFETY: plain allocation; null on failure.
        let raw = unsafe { ffi::av_frame_alloc() };
        if raw.is_null() {
            return Err(CudaError::Ffmpeg {
                call: "av_frame_alloc",
                message: "out of memory".into(),
            });
        }
        // SAFETY: `raw` is a fresh frame this function owns (handed to `Video::wrap`, which frees
        // it on drop, right away so every error path below frees it too).
        let frame = unsafe { ffmpeg_next::frame::Video::wrap(raw) };
        let opaque = Arc::into_raw(Arc::clone(&self.memory)) as *mut c_void;
        // SAFETY: `mem.ptr` is a device address FFmpeg never dereferences on the host (CUDA
        // frames carry device pointers in data[]); the free callback gives back the Arc reference
        // taken just above.
        let buf = unsafe {
            ffi::av_buffer_create(
                mem.ptr as usize as *mut u8,
                self.layout.size,
                Some(release_memory),
                opaque,
                0,
            )
        };
        if buf.is_null() {
            // SAFETY: the reference was not handed to FFmpeg; take it back.
            drop(unsafe { Arc::from_raw(opaque as *const Memory) });
            return Err(CudaError::Ffmpeg {
                call: "av_buffer_create",
                message: "out of memory".into(),
            });
        }
        // SAFETY: `raw` is owned by `frame`; the fields are set as av_hwframe_get_buffer would
        // (format CUDA, frames context reference, planes at FFmpeg's aligned layout).
        unsafe {
            (*raw).buf[0] = buf;
            (*raw).hw_frames_ctx = ffi::av_buffer_ref(self.frames.0);
            if (*raw).hw_frames_ctx.is_null() {
                return Err(CudaError::Ffmpeg {
                    call: "av_buffer_ref",
                    message: "out of memory".into(),
                });
            }
            (*raw).format = ffi::AVPixelFormat::AV_PIX_FMT_CUDA as i32;
            (*raw).width = self.width as i32;
            (*raw).height = self.height as i32;
            for plane in 0..self.layout.planes {
                (*raw).data[plane] = (mem.ptr as usize + self.layout.offsets[plane]) as *mut u8;
                (*raw).linesize[plane] = self.layout.pitch as i32;
            }
        }
        Ok(frame)
    }

    /// The frames context reference for the encoder's `hw_frames_ctx` (still owned by the pool).
    pub fn frames_ref(&self) -> *mut ffi::AVBufferRef {
        self.frames.0
    }
}

unsafe extern "C" fn release_memory(opaque: *mut c_void, _data: *mut u8) {
    // SAFETY: `opaque` is the Arc reference `CudaPool::frame` leaked for this buffer; FFmpeg
    // calls this exactly once, when the buffer's last reference goes.
    drop(unsafe { Arc::from_raw(opaque as *const Memory) });
}

/// An `AVHWFramesContext` (CUDA, `format`) on `device`. Its own buffer pool stays empty: frames
/// are built by [`CudaPool::frame`] over the pool's memory.
fn frames_context(
    device: &CudaDevice,
    format: PoolFormat,
    width: u32,
    height: u32,
) -> Result<AvRef, CudaError> {
    // SAFETY: the device reference is a live, initialised CUDA device context.
    let raw = unsafe { ffi::av_hwframe_ctx_alloc(device.hw_device.0) };
    if raw.is_null() {
        return Err(CudaError::Ffmpeg {
            call: "av_hwframe_ctx_alloc",
            message: "out of memory".into(),
        });
    }
    let owned = AvRef(raw);
    // SAFETY: `raw` holds a fresh AVHWFramesContext that is configured before init, as the API
    // requires; initial_pool_size 0 means FFmpeg allocates nothing up front.
    unsafe {
        let frames = (*raw).data as *mut ffi::AVHWFramesContext;
        (*frames).format = ffi::AVPixelFormat::AV_PIX_FMT_CUDA;
        (*frames).sw_format = format.sw_format();
        (*frames).width = width as i32;
        (*frames).height = height as i32;
        (*frames).initial_pool_size = 0;
    }
    // SAFETY: configured above.
    ff_check("av_hwframe_ctx_init", unsafe {
        ffi::av_hwframe_ctx_init(raw)
    })?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_libcuda_the_probe_names_the_driver() {
        // SAFETY: only dlopen attempts.
        if unsafe { sys::is_culib_present() } {
            eprintln!("libcuda present: the no-driver answer cannot be checked here");
            return;
        }
        let err = CudaDevice::open().unwrap_err();
        assert_eq!(err, CudaError::NoDriver(NO_DRIVER.into()));
        assert_eq!(
            err.to_string(),
            "libcuda.so.1 not found: the NVIDIA path needs the NVIDIA driver"
        );
    }

    #[test]
    fn nv12_layout_follows_ffmpeg_cuda_frames() {
        let l = slot_layout(PoolFormat::Nv12, 1920, 1080).unwrap();
        assert_eq!(l.pitch, 2048);
        assert_eq!(l.planes, 2);
        assert_eq!(l.offsets, [0, 2048 * 1080]);
        assert_eq!(l.size, 2048 * 1080 * 3 / 2);
        let l = slot_layout(PoolFormat::Nv12, 256, 144).unwrap();
        assert_eq!((l.pitch, l.offsets[1], l.size), (256, 256 * 144, 256 * 216));
    }

    #[test]
    fn bgrx_layout_is_one_aligned_plane() {
        let l = slot_layout(PoolFormat::Bgrx, 1280, 720).unwrap();
        assert_eq!((l.pitch, l.planes, l.size), (5120, 1, 5120 * 720));
        let l = slot_layout(PoolFormat::Bgrx, 100, 10).unwrap();
        assert_eq!(l.pitch, 512); // 400 bytes rounded up to 256
        assert_eq!(l.size, 5120);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(slot_layout(PoolFormat::Nv12, 1921, 1080).is_err());
        assert!(slot_layout(PoolFormat::Nv12, 0, 1080).is_err());
        assert!(slot_layout(PoolFormat::Bgrx, 8193, 16).is_err());
        assert!(slot_layout(PoolFormat::Bgrx, 1921, 1081).is_ok());
    }

    #[test]
    fn allocations_round_up_to_the_granularity() {
        let l = slot_layout(PoolFormat::Nv12, 1920, 1080).unwrap();
        let size = allocation_size(&l, 2 << 20).unwrap();
        assert_eq!(size, 4 << 20); // 3.16 MiB → 4 MiB
        assert_eq!(allocation_size(&l, 1).unwrap(), l.size);
        assert!(allocation_size(&l, 0).is_err());
        assert!(allocation_size(&l, 3).is_err());
    }

    fn gpu_device() -> CudaDevice {
        CudaDevice::open().expect("needs an NVIDIA GPU and driver")
    }

    /// Needs an NVIDIA GPU: allocates, exports, imports the fd back into this process and checks
    /// the import sees what was written.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn allocate_export_import_round_trip() {
        let device = gpu_device();
        let pool = CudaPool::allocate(&device, 3, 640, 360, PoolFormat::Nv12).unwrap();
        assert_eq!(pool.slots(), 3);
        assert_eq!(pool.exports().len(), 3);
        let _current = device.ctx.push().unwrap();
        let export = &pool.exports()[1];
        let mut handle: CUmemGenericAllocationHandle = 0;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&export.fd);
        // SAFETY: POSIX-fd import takes the fd value itself as the handle pointer.
        check("cuMemImportFromShareableHandle", unsafe {
            sys::cuMemImportFromShareableHandle(
                &mut handle,
                raw as usize as *mut c_void,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            )
        })
        .unwrap();
        let imported = map_slot(handle, export.alloc_size, device.ctx.device).unwrap();
        let pattern = [0x5au8; 256];
        // SAFETY: both ranges are mapped and at least 256 bytes long.
        unsafe {
            check(
                "cuMemcpyHtoD",
                sys::cuMemcpyHtoD_v2(pool.device_ptr(1).unwrap(), pattern.as_ptr().cast(), 256),
            )
            .unwrap();
            let mut back = [0u8; 256];
            check(
                "cuMemcpyDtoH",
                sys::cuMemcpyDtoH_v2(back.as_mut_ptr().cast(), imported.ptr, 256),
            )
            .unwrap();
            assert_eq!(back, pattern);
        }
        release_slot(&imported);
    }

    /// Needs an NVIDIA GPU: h264_nvenc opens on the pool's frames context and encodes a pool
    /// frame.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn pool_frames_reach_nvenc() {
        use ffmpeg_next::{codec, encoder, format::Pixel, Packet, Rational};
        ffmpeg_next::init().unwrap();
        let device = gpu_device();
        let pool = CudaPool::allocate(&device, 2, 640, 360, PoolFormat::Nv12).unwrap();
        let mut frame = pool.frame(1).unwrap();
        assert_eq!(frame.format(), Pixel::CUDA);
        assert_eq!(frame.stride(0), pool.layout().pitch);
        let nvenc = encoder::find_by_name("h264_nvenc").expect("FFmpeg with h264_nvenc");
        let mut video = codec::context::Context::new_with_codec(nvenc)
            .encoder()
            .video()
            .unwrap();
        video.set_width(640);
        video.set_height(360);
        video.set_format(Pixel::CUDA);
        video.set_time_base(Rational::new(1, 30));
        // SAFETY: the encoder context is not open yet; it takes its own frames-context reference.
        unsafe {
            (*video.as_mut_ptr()).hw_frames_ctx = ffi::av_buffer_ref(pool.frames_ref());
        }
        let mut enc = video
            .open()
            .expect("h264_nvenc opens on the pool's context");
        frame.set_pts(Some(0));
        enc.send_frame(&frame).unwrap();
        enc.send_eof().unwrap();
        let mut packet = Packet::empty();
        enc.receive_packet(&mut packet).unwrap();
        assert!(packet.size() > 0);
        drop(pool); // the frame keeps the memory alive
        drop(frame);
    }
}
