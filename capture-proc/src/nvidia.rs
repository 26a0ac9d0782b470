//! The NVIDIA path of capture: a DMA-BUF from the compositor is imported through EGL into a GL
//! texture, blitted into a linear texture that CUDA has registered, and copied with the CUDA
//! driver into a slot of encode's CUDA pool (imported once from the POSIX fds encode exported).
//! No pixel crosses the CPU.
//!
//! libEGL and libcuda are loaded at run time, in [`prepare`], before lock-down (both open device
//! files when they initialise). Where either is missing, or no NVIDIA EGL device exists, the
//! answer is [`NvidiaError::Unavailable`] naming what is missing; the test pattern and the
//! PipeWire shared-memory path keep working.
//!
//! Colour order: DRM `XRGB8888` is bytes B, G, R, x. Imported as `XBGR8888` (same layout, red
//! and blue named the other way round), GL's red channel holds the source's blue byte, so the
//! blit into an `RGBA8` texture stores B, G, R, x: the pool's BGRx, with no shader.

// Nothing calls this yet: sessions take it once capture can send a CUDA slot descriptor (an ipc
// change still to come); the tests use it.
#![allow(dead_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr;
use std::sync::OnceLock;

use cudarc::driver::sys::{self, CUcontext, CUdevice, CUdeviceptr, CUresult};
use khronos_egl as egl;

/// The library [`prepare`] loads.
pub const LIB_EGL: &str = "libEGL.so.1";

/// Why the path is off on a machine without the NVIDIA driver.
pub const NO_DRIVER: &str = "libcuda.so.1 not found: the NVIDIA path needs the NVIDIA driver";

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NvidiaError {
    /// Something the path needs is not on this machine (library, device, extension).
    #[error("NVIDIA capture unavailable: {0}")]
    Unavailable(String),
    #[error("{call} failed: {error}")]
    Egl { call: &'static str, error: String },
    #[error("{call} failed: GL error {error:#06x}")]
    Gl { call: &'static str, error: u32 },
    #[error("{call} failed: {result}")]
    Cuda { call: &'static str, result: String },
    #[error(
        "DMA-BUF modifier {modifier:#018x} of format {fourcc} cannot be imported here \
         (the EGL driver offers {offered})"
    )]
    Modifier {
        fourcc: String,
        modifier: u64,
        offered: String,
    },
    #[error("invalid frame: {0}")]
    Invalid(String),
}

fn cuda_check(call: &'static str, result: CUresult) -> Result<(), NvidiaError> {
    if result == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(NvidiaError::Cuda {
            call,
            result: format!("{result:?}"),
        })
    }
}

fn egl_error(egl: &Egl, call: &'static str) -> NvidiaError {
    NvidiaError::Egl {
        call,
        error: egl
            .instance
            .get_error()
            .map_or_else(|| "no error recorded".into(), |e| e.to_string()),
    }
}

/// DRM fourcc codes (drm_fourcc.h).
pub mod fourcc {
    const fn code(s: &[u8; 4]) -> u32 {
        (s[0] as u32) | (s[1] as u32) << 8 | (s[2] as u32) << 16 | (s[3] as u32) << 24
    }
    pub const XRGB8888: u32 = code(b"XR24");
    pub const ARGB8888: u32 = code(b"AR24");
    pub const XBGR8888: u32 = code(b"XB24");
    pub const ABGR8888: u32 = code(b"AB24");

    pub fn name(fourcc: u32) -> String {
        fourcc
            .to_le_bytes()
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect()
    }
}

/// `DRM_FORMAT_MOD_INVALID`: the buffer has an implicit, driver-chosen layout.
pub const MOD_INVALID: u64 = 0x00ff_ffff_ffff_ffff;

/// The fourcc to import a single-plane 32-bit source as, so that the blit leaves B, G, R, x in
/// memory (see the module comment); `None` for formats this path does not take.
pub fn import_fourcc(source: u32) -> Option<u32> {
    match source {
        fourcc::XRGB8888 => Some(fourcc::XBGR8888),
        fourcc::ARGB8888 => Some(fourcc::ABGR8888),
        fourcc::XBGR8888 => Some(fourcc::XRGB8888),
        fourcc::ABGR8888 => Some(fourcc::ARGB8888),
        _ => None,
    }
}

/// One modifier the EGL driver can import for a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedModifier {
    pub modifier: u64,
    /// Only usable as `GL_TEXTURE_EXTERNAL_OES`, which cannot be a blit source.
    pub external_only: bool,
}

/// Whether a buffer with `modifier` can go through this path, given what the driver offers for
/// its (import) format. An implicit modifier is left to the driver.
pub fn check_modifier(
    import_fourcc: u32,
    modifier: u64,
    offered: &[OfferedModifier],
) -> Result<(), NvidiaError> {
    if modifier == MOD_INVALID {
        return Ok(());
    }
    if offered
        .iter()
        .any(|m| m.modifier == modifier && !m.external_only)
    {
        return Ok(());
    }
    let list: Vec<String> = offered
        .iter()
        .map(|m| {
            format!(
                "{:#x}{}",
                m.modifier,
                if m.external_only {
                    " (external only)"
                } else {
                    ""
                }
            )
        })
        .collect();
    Err(NvidiaError::Modifier {
        fourcc: fourcc::name(import_fourcc),
        modifier,
        offered: if list.is_empty() {
            "no modifiers".into()
        } else {
            list.join(", ")
        },
    })
}

/// Bytes per row and per slot of a BGRx pool slot: FFmpeg's CUDA frame layout (rows aligned to
/// 256 bytes), which encode's pool uses; must stay equal to encode's `cuda_pool::slot_layout`.
pub fn bgrx_slot_layout(width: u32, height: u32) -> Result<(usize, usize), NvidiaError> {
    if width == 0 || height == 0 || width > 8192 || height > 8192 {
        return Err(NvidiaError::Invalid(format!(
            "{width}x{height} is outside 1..=8192 per side"
        )));
    }
    let pitch = (width as usize * 4).div_ceil(256) * 256;
    Ok((pitch, pitch * height as usize))
}

// EGL extension constants (EGL_EXT_platform_device, EGL_MESA_platform_surfaceless,
// EGL_EXT_image_dma_buf_import(_modifiers)).
const EGL_PLATFORM_DEVICE_EXT: egl::Enum = 0x313F;
const EGL_PLATFORM_SURFACELESS_MESA: egl::Enum = 0x31DD;
const EGL_LINUX_DMA_BUF_EXT: egl::Enum = 0x3270;
const EGL_LINUX_DRM_FOURCC_EXT: egl::Int = 0x3271;
const EGL_DMA_BUF_PLANE0_FD_EXT: egl::Int = 0x3272;
const EGL_DMA_BUF_PLANE0_OFFSET_EXT: egl::Int = 0x3273;
const EGL_DMA_BUF_PLANE0_PITCH_EXT: egl::Int = 0x3274;
const EGL_DMA_BUF_PLANE0_MODIFIER_LO_EXT: egl::Int = 0x3443;
const EGL_DMA_BUF_PLANE0_MODIFIER_HI_EXT: egl::Int = 0x3444;

type EglDevice = *mut c_void;
type EglImage = *mut c_void;
type QueryDevices = unsafe extern "system" fn(c_int, *mut EglDevice, *mut c_int) -> c_uint;
type QueryDeviceString = unsafe extern "system" fn(EglDevice, c_int) -> *const c_char;
type GetPlatformDisplay =
    unsafe extern "system" fn(c_uint, *mut c_void, *const c_int) -> *mut c_void;
type QueryModifiers = unsafe extern "system" fn(
    *mut c_void,
    c_int,
    c_int,
    *mut u64,
    *mut c_uint,
    *mut c_int,
) -> c_uint;
type CreateImage = unsafe extern "system" fn(
    *mut c_void,
    *mut c_void,
    c_uint,
    *mut c_void,
    *const c_int,
) -> EglImage;
type DestroyImage = unsafe extern "system" fn(*mut c_void, EglImage) -> c_uint;

/// Looks up an EGL or GL entry point and gives it its C type.
///
/// # Safety
/// `F` must be the `extern "system" fn` type of the function named `name`.
unsafe fn proc_address<F: Copy>(
    instance: &egl::DynamicInstance<egl::EGL1_4>,
    name: &'static str,
) -> Result<F, NvidiaError> {
    let f = instance
        .get_proc_address(name)
        .ok_or_else(|| NvidiaError::Unavailable(format!("{name} is not provided by {LIB_EGL}")))?;
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of_val(&f));
    // SAFETY: the caller names the right function type; both are plain function pointers.
    Ok(unsafe { std::mem::transmute_copy(&f) })
}

/// libEGL, a display on the NVIDIA device (or Mesa's surfaceless platform where no NVIDIA device
/// exists, which can import DMA-BUFs but never share with CUDA) and a GLES 3 context.
pub struct Egl {
    instance: egl::DynamicInstance<egl::EGL1_4>,
    display: egl::Display,
    context: egl::Context,
    /// Which platform the display is on, for logs.
    pub platform: &'static str,
    /// Whether the display's device is the NVIDIA driver's (EGL_NV_device_cuda).
    pub nvidia: bool,
    query_modifiers: QueryModifiers,
    create_image: CreateImage,
    destroy_image: DestroyImage,
}

// SAFETY: the display and context are handles EGL lets any thread use (the context is made
// current on one thread at a time, by `Importer`, which is not Send); the function pointers are
// process-wide.
unsafe impl Send for Egl {}
// SAFETY: as above; nothing here is mutated after `load`.
unsafe impl Sync for Egl {}

impl Egl {
    /// Loads `library`, opens a display and creates a GLES 3 context (not yet current anywhere).
    /// With `require_nvidia`, a machine without an NVIDIA EGL device is refused before any
    /// display is initialised (Mesa's drivers are then never started in the worker).
    pub fn load(library: &str, require_nvidia: bool) -> Result<Egl, NvidiaError> {
        // SAFETY: loading a library runs its initialisers; libEGL is the system's EGL, whose ABI
        // the crate's declarations follow.
        let instance =
            unsafe { egl::DynamicInstance::<egl::EGL1_4>::load_required_from_filename(library) }
                .map_err(|e| {
                    NvidiaError::Unavailable(format!("{library} could not be loaded: {e}"))
                })?;
        let client = instance
            .query_string(None, egl::EXTENSIONS)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let has = |ext: &str| client.split_ascii_whitespace().any(|e| e == ext);
        // SAFETY: the type is eglGetPlatformDisplayEXT's (EGL_EXT_platform_base).
        let get_display: GetPlatformDisplay =
            unsafe { proc_address(&instance, "eglGetPlatformDisplayEXT")? };
        let mut chosen = None;
        // EGL_EXT_device_base is the older name for enumeration + query together.
        let enumerates = has("EGL_EXT_device_enumeration") || has("EGL_EXT_device_base");
        if has("EGL_EXT_platform_device") && enumerates {
            if let Some(device) = nvidia_device(&instance)? {
                chosen = Some((EGL_PLATFORM_DEVICE_EXT, device, "device (NVIDIA)", true));
            }
        }
        if chosen.is_none() && require_nvidia {
            return Err(NvidiaError::Unavailable(format!(
                "{library} lists no NVIDIA EGL device (EGL_NV_device_cuda): the NVIDIA path \
                 needs the NVIDIA driver's EGL"
            )));
        }
        if chosen.is_none() && has("EGL_MESA_platform_surfaceless") {
            chosen = Some((
                EGL_PLATFORM_SURFACELESS_MESA,
                ptr::null_mut(),
                "surfaceless (Mesa)",
                false,
            ));
        }
        let Some((platform_enum, native, platform, nvidia)) = chosen else {
            return Err(NvidiaError::Unavailable(format!(
                "{library} offers neither an NVIDIA EGL device (EGL_EXT_platform_device with \
                 EGL_NV_device_cuda) nor EGL_MESA_platform_surfaceless"
            )));
        };
        let attribs = [egl::NONE];
        // SAFETY: `native` is an EGLDeviceEXT from eglQueryDevicesEXT for the device platform,
        // or EGL_DEFAULT_DISPLAY (null) for the surfaceless one; the list is NONE-terminated.
        let raw = unsafe { get_display(platform_enum, native, attribs.as_ptr()) };
        if raw.is_null() {
            return Err(NvidiaError::Unavailable(format!(
                "eglGetPlatformDisplayEXT({platform}) returned no display"
            )));
        }
        // SAFETY: a display EGL just returned.
        let display = unsafe { egl::Display::from_ptr(raw) };
        instance
            .initialize(display)
            .map_err(|e| NvidiaError::Unavailable(format!("eglInitialize({platform}): {e}")))?;
        let extensions = instance
            .query_string(Some(display), egl::EXTENSIONS)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for needed in [
            "EGL_EXT_image_dma_buf_import",
            "EGL_EXT_image_dma_buf_import_modifiers",
            "EGL_KHR_surfaceless_context",
        ] {
            if !extensions.split_ascii_whitespace().any(|e| e == needed) {
                let _ = instance.terminate(display);
                return Err(NvidiaError::Unavailable(format!(
                    "the EGL display ({platform}) lacks {needed}"
                )));
            }
        }
        let context = match gles3_context(&instance, display) {
            Ok(c) => c,
            Err(e) => {
                let _ = instance.terminate(display);
                return Err(e);
            }
        };
        let mut this = Egl {
            query_modifiers: dummy_query,
            create_image: dummy_create,
            destroy_image: dummy_destroy,
            instance,
            display,
            context,
            platform,
            nvidia,
        };
        // SAFETY: each type is that extension function's C signature.
        unsafe {
            this.query_modifiers = proc_address(&this.instance, "eglQueryDmaBufModifiersEXT")?;
            this.create_image = proc_address(&this.instance, "eglCreateImageKHR")?;
            this.destroy_image = proc_address(&this.instance, "eglDestroyImageKHR")?;
        }
        Ok(this)
    }

    /// The modifiers the driver imports `fourcc` with (eglQueryDmaBufModifiersEXT).
    pub fn modifiers(&self, fourcc: u32) -> Result<Vec<OfferedModifier>, NvidiaError> {
        let mut count: c_int = 0;
        // SAFETY: a size query: no arrays, count written.
        let ok = unsafe {
            (self.query_modifiers)(
                self.display.as_ptr(),
                fourcc as c_int,
                0,
                ptr::null_mut(),
                ptr::null_mut(),
                &mut count,
            )
        };
        if ok != egl::TRUE {
            return Err(egl_error(self, "eglQueryDmaBufModifiersEXT"));
        }
        let n = usize::try_from(count).unwrap_or(0);
        let mut modifiers = vec![0u64; n];
        let mut external = vec![0 as c_uint; n];
        // SAFETY: both arrays hold `count` elements, which is passed as the maximum.
        let ok = unsafe {
            (self.query_modifiers)(
                self.display.as_ptr(),
                fourcc as c_int,
                count,
                modifiers.as_mut_ptr(),
                external.as_mut_ptr(),
                &mut count,
            )
        };
        if ok != egl::TRUE {
            return Err(egl_error(self, "eglQueryDmaBufModifiersEXT"));
        }
        let n = usize::try_from(count).unwrap_or(0).min(modifiers.len());
        Ok(modifiers[..n]
            .iter()
            .zip(&external)
            .map(|(&modifier, &ext)| OfferedModifier {
                modifier,
                external_only: ext != 0,
            })
            .collect())
    }

    fn make_current(&self) -> Result<(), NvidiaError> {
        self.instance
            .make_current(self.display, None, None, Some(self.context))
            .map_err(|e| NvidiaError::Egl {
                call: "eglMakeCurrent",
                error: e.to_string(),
            })
    }
}

impl Drop for Egl {
    fn drop(&mut self) {
        let _ = self.instance.make_current(self.display, None, None, None);
        let _ = self.instance.destroy_context(self.display, self.context);
        let _ = self.instance.terminate(self.display);
    }
}

// Placeholders replaced in `Egl::load` before any use (fn pointers cannot be null).
unsafe extern "system" fn dummy_query(
    _: *mut c_void,
    _: c_int,
    _: c_int,
    _: *mut u64,
    _: *mut c_uint,
    _: *mut c_int,
) -> c_uint {
    0
}
unsafe extern "system" fn dummy_create(
    _: *mut c_void,
    _: *mut c_void,
    _: c_uint,
    _: *mut c_void,
    _: *const c_int,
) -> EglImage {
    ptr::null_mut()
}
unsafe extern "system" fn dummy_destroy(_: *mut c_void, _: EglImage) -> c_uint {
    0
}

/// The first EGL device of the NVIDIA driver (it advertises EGL_NV_device_cuda), if any.
fn nvidia_device(
    instance: &egl::DynamicInstance<egl::EGL1_4>,
) -> Result<Option<EglDevice>, NvidiaError> {
    // SAFETY: the types are those of eglQueryDevicesEXT and eglQueryDeviceStringEXT.
    let (query_devices, query_string): (QueryDevices, QueryDeviceString) = unsafe {
        (
            proc_address(instance, "eglQueryDevicesEXT")?,
            proc_address(instance, "eglQueryDeviceStringEXT")?,
        )
    };
    let mut devices = [ptr::null_mut(); 16];
    let mut count: c_int = 0;
    // SAFETY: the array's length is passed as the maximum.
    if unsafe { query_devices(devices.len() as c_int, devices.as_mut_ptr(), &mut count) }
        != egl::TRUE
    {
        return Ok(None);
    }
    let count = usize::try_from(count).unwrap_or(0).min(devices.len());
    for &device in &devices[..count] {
        // SAFETY: a device EGL just listed; the string is NUL-terminated and static.
        let ext = unsafe { query_string(device, egl::EXTENSIONS) };
        if ext.is_null() {
            continue;
        }
        // SAFETY: non-null, NUL-terminated, owned by EGL.
        let ext = unsafe { CStr::from_ptr(ext) }.to_string_lossy();
        if ext
            .split_ascii_whitespace()
            .any(|e| e == "EGL_NV_device_cuda")
        {
            return Ok(Some(device));
        }
    }
    Ok(None)
}

fn gles3_context(
    instance: &egl::DynamicInstance<egl::EGL1_4>,
    display: egl::Display,
) -> Result<egl::Context, NvidiaError> {
    instance
        .bind_api(egl::OPENGL_ES_API)
        .map_err(|e| NvidiaError::Egl {
            call: "eglBindAPI(OPENGL_ES)",
            error: e.to_string(),
        })?;
    let config = instance
        .choose_first_config(
            display,
            &[egl::RENDERABLE_TYPE, egl::OPENGL_ES3_BIT, egl::NONE],
        )
        .map_err(|e| NvidiaError::Egl {
            call: "eglChooseConfig",
            error: e.to_string(),
        })?
        .ok_or_else(|| NvidiaError::Unavailable("no EGL config renders GLES 3".into()))?;
    instance
        .create_context(
            display,
            config,
            None,
            &[egl::CONTEXT_MAJOR_VERSION, 3, egl::NONE],
        )
        .map_err(|e| NvidiaError::Egl {
            call: "eglCreateContext(GLES 3)",
            error: e.to_string(),
        })
}

// GL ES 3 constants.
const GL_TEXTURE_2D: u32 = 0x0DE1;
const GL_TEXTURE_MIN_FILTER: u32 = 0x2801;
const GL_TEXTURE_MAG_FILTER: u32 = 0x2800;
const GL_NEAREST: i32 = 0x2600;
const GL_RGBA8: u32 = 0x8058;
const GL_READ_FRAMEBUFFER: u32 = 0x8CA8;
const GL_DRAW_FRAMEBUFFER: u32 = 0x8CA9;
const GL_COLOR_ATTACHMENT0: u32 = 0x8CE0;
const GL_FRAMEBUFFER_COMPLETE: u32 = 0x8CD5;
const GL_COLOR_BUFFER_BIT: u32 = 0x4000;

/// The GL entry points the blit needs, looked up through eglGetProcAddress.
#[derive(Clone, Copy)]
struct Gl {
    get_error: unsafe extern "system" fn() -> u32,
    gen_textures: unsafe extern "system" fn(i32, *mut u32),
    delete_textures: unsafe extern "system" fn(i32, *const u32),
    bind_texture: unsafe extern "system" fn(u32, u32),
    tex_parameteri: unsafe extern "system" fn(u32, u32, i32),
    tex_storage_2d: unsafe extern "system" fn(u32, i32, u32, i32, i32),
    image_target_texture: unsafe extern "system" fn(u32, *mut c_void),
    gen_framebuffers: unsafe extern "system" fn(i32, *mut u32),
    delete_framebuffers: unsafe extern "system" fn(i32, *const u32),
    bind_framebuffer: unsafe extern "system" fn(u32, u32),
    framebuffer_texture_2d: unsafe extern "system" fn(u32, u32, u32, u32, i32),
    check_framebuffer_status: unsafe extern "system" fn(u32) -> u32,
    blit_framebuffer: unsafe extern "system" fn(i32, i32, i32, i32, i32, i32, i32, i32, u32, u32),
}

impl Gl {
    fn load(egl: &Egl) -> Result<Gl, NvidiaError> {
        let i = &egl.instance;
        // SAFETY: each type is the named GLES 3 / OES_EGL_image function's C signature.
        unsafe {
            Ok(Gl {
                get_error: proc_address(i, "glGetError")?,
                gen_textures: proc_address(i, "glGenTextures")?,
                delete_textures: proc_address(i, "glDeleteTextures")?,
                bind_texture: proc_address(i, "glBindTexture")?,
                tex_parameteri: proc_address(i, "glTexParameteri")?,
                tex_storage_2d: proc_address(i, "glTexStorage2D")?,
                image_target_texture: proc_address(i, "glEGLImageTargetTexture2DOES")?,
                gen_framebuffers: proc_address(i, "glGenFramebuffers")?,
                delete_framebuffers: proc_address(i, "glDeleteFramebuffers")?,
                bind_framebuffer: proc_address(i, "glBindFramebuffer")?,
                framebuffer_texture_2d: proc_address(i, "glFramebufferTexture2D")?,
                check_framebuffer_status: proc_address(i, "glCheckFramebufferStatus")?,
                blit_framebuffer: proc_address(i, "glBlitFramebuffer")?,
            })
        }
    }

    /// `Err` naming `call` if GL recorded an error since the last check.
    fn check(&self, call: &'static str) -> Result<(), NvidiaError> {
        // SAFETY: called only with this module's context current (see `Importer`).
        let error = unsafe { (self.get_error)() };
        if error == 0 {
            Ok(())
        } else {
            Err(NvidiaError::Gl { call, error })
        }
    }
}

/// The CUDA context capture copies with: device 0's primary context, retained before lock-down.
pub struct Cuda {
    device: CUdevice,
    ctx: CUcontext,
    register_gl_image: RegisterGlImage,
}

type RegisterGlImage =
    unsafe extern "C" fn(*mut sys::CUgraphicsResource, c_uint, c_uint, c_uint) -> CUresult;

// SAFETY: a CUcontext can be made current on any thread; the struct is immutable.
unsafe impl Send for Cuda {}
// SAFETY: as above.
unsafe impl Sync for Cuda {}

impl Cuda {
    pub fn open() -> Result<Cuda, NvidiaError> {
        // cudarc's loader panics when libcuda is missing; ask first.
        // SAFETY: only tries to dlopen the library names.
        if !unsafe { sys::is_culib_present() } {
            return Err(NvidiaError::Unavailable(NO_DRIVER.into()));
        }
        // SAFETY: libcuda is present; flags 0.
        cuda_check("cuInit", unsafe { sys::cuInit(0) })?;
        let mut device: CUdevice = 0;
        // SAFETY: valid out-pointer.
        cuda_check("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut device, 0) })?;
        // cudarc binds no GL interop; the symbol is looked up in the same libcuda.
        // SAFETY: libcuda is loaded (cuInit went through it); the type is
        // cuGraphicsGLRegisterImage's C signature (cudaGL.h).
        let register_gl_image = unsafe {
            sys::culib()
                .get::<RegisterGlImage>(b"cuGraphicsGLRegisterImage\0")
                .map(|s| *s)
        }
        .map_err(|e| {
            NvidiaError::Unavailable(format!("libcuda has no cuGraphicsGLRegisterImage: {e}"))
        })?;
        let mut ctx: CUcontext = ptr::null_mut();
        // SAFETY: valid out-pointer; device from cuDeviceGet.
        cuda_check("cuDevicePrimaryCtxRetain", unsafe {
            sys::cuDevicePrimaryCtxRetain(&mut ctx, device)
        })?;
        Ok(Cuda {
            device,
            ctx,
            register_gl_image,
        })
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        // SAFETY: retained once in `open`.
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) };
    }
}

/// Everything the NVIDIA path loads before lock-down.
pub struct Prepared {
    pub egl: Egl,
    gl: Gl,
    pub cuda: Cuda,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("nvidia::Prepared")
            .field("platform", &self.egl.platform)
            .finish()
    }
}

/// Loads libcuda and libEGL, opens the NVIDIA EGL device and a GLES 3 context, and retains the
/// CUDA context. Runs before lock-down.
pub fn prepare() -> Result<Prepared, NvidiaError> {
    prepare_with(LIB_EGL)
}

/// [`prepare`] with another EGL library (tests name one that does not exist).
pub fn prepare_with(library: &str) -> Result<Prepared, NvidiaError> {
    // Cheapest first, and it spares non-NVIDIA machines loading EGL at all.
    // SAFETY: only tries to dlopen the library names.
    if !unsafe { sys::is_culib_present() } {
        return Err(NvidiaError::Unavailable(NO_DRIVER.into()));
    }
    let egl = Egl::load(library, true)?;
    let cuda = Cuda::open()?;
    let gl = Gl::load(&egl)?;
    Ok(Prepared { egl, gl, cuda })
}

static PREPARED: OnceLock<Result<Prepared, NvidiaError>> = OnceLock::new();

/// Runs [`prepare`] once, before lock-down, keeps the result for the worker's lifetime and logs
/// why the path is unavailable when it is.
pub fn prepare_once() -> &'static Result<Prepared, NvidiaError> {
    PREPARED.get_or_init(|| {
        let prepared = prepare();
        match &prepared {
            Ok(p) => eprintln!("lumen-capture: NVIDIA capture ready ({})", p.egl.platform),
            Err(e) => eprintln!("lumen-capture: {e}"),
        }
        prepared
    })
}

/// One slot of encode's pool, imported from its exported fd and mapped into this process.
pub struct ImportedSlot {
    handle: sys::CUmemGenericAllocationHandle,
    ptr: CUdeviceptr,
    size: usize,
}

/// Encode's pool as capture sees it: the slots, and the BGRx layout both sides derive from the
/// session's width and height (no size is taken from the peer).
pub struct ImportedPool {
    slots: Vec<ImportedSlot>,
    width: u32,
    height: u32,
    pitch: usize,
    ctx: CUcontext,
}

impl ImportedPool {
    /// Imports each fd (one per slot, in slot order) as `width`×`height` BGRx slots. The size
    /// mapped is this side's own computation; a smaller allocation fails in cuMemMap.
    pub fn import(
        cuda: &Cuda,
        fds: &[OwnedFd],
        width: u32,
        height: u32,
    ) -> Result<ImportedPool, NvidiaError> {
        let (pitch, bytes) = bgrx_slot_layout(width, height)?;
        // SAFETY: the context was retained in `Cuda::open` and lives as long as `cuda`.
        cuda_check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(cuda.ctx) })?;
        // SAFETY: a plain C struct; all-zero is the documented default.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.requestedHandleTypes =
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = cuda.device;
        let mut granularity = 0usize;
        // SAFETY: valid out-pointer and properties.
        cuda_check("cuMemGetAllocationGranularity", unsafe {
            sys::cuMemGetAllocationGranularity(
                &mut granularity,
                &prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
            )
        })?;
        if granularity == 0 || !granularity.is_power_of_two() {
            return Err(NvidiaError::Invalid(format!(
                "allocation granularity {granularity}"
            )));
        }
        let size = bytes.div_ceil(granularity) * granularity;
        let mut pool = ImportedPool {
            slots: Vec::with_capacity(fds.len()),
            width,
            height,
            pitch,
            ctx: cuda.ctx,
        };
        for fd in fds {
            let mut handle: sys::CUmemGenericAllocationHandle = 0;
            // SAFETY: for POSIX fds the "handle pointer" is the fd value itself; the driver dups
            // what it needs, the fd stays ours.
            cuda_check("cuMemImportFromShareableHandle", unsafe {
                sys::cuMemImportFromShareableHandle(
                    &mut handle,
                    fd.as_raw_fd() as usize as *mut c_void,
                    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                )
            })?;
            match map(handle, size, cuda.device) {
                Ok(ptr) => pool.slots.push(ImportedSlot { handle, ptr, size }),
                Err(e) => {
                    // SAFETY: imported above, not mapped.
                    let _ = unsafe { sys::cuMemRelease(handle) };
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl Drop for ImportedPool {
    fn drop(&mut self) {
        // SAFETY: the context outlives the pool (both belong to the session's Prepared).
        let _ = unsafe { sys::cuCtxSetCurrent(self.ctx) };
        for slot in &self.slots {
            // SAFETY: mapped by `import`; nothing refers to the range any more.
            unsafe {
                let _ = sys::cuMemUnmap(slot.ptr, slot.size);
                let _ = sys::cuMemAddressFree(slot.ptr, slot.size);
                let _ = sys::cuMemRelease(slot.handle);
            }
        }
    }
}

/// Reserves a range, maps `handle` into it and makes it read-write for `device`.
fn map(
    handle: sys::CUmemGenericAllocationHandle,
    size: usize,
    device: CUdevice,
) -> Result<CUdeviceptr, NvidiaError> {
    let mut ptr: CUdeviceptr = 0;
    // SAFETY: valid out-pointer; size is granularity-aligned.
    cuda_check("cuMemAddressReserve", unsafe {
        sys::cuMemAddressReserve(&mut ptr, size, 0, 0, 0)
    })?;
    // SAFETY: the range was just reserved with this size.
    if let Err(e) = cuda_check("cuMemMap", unsafe {
        sys::cuMemMap(ptr, size, 0, handle, 0)
    }) {
        // SAFETY: reserved above, not mapped.
        let _ = unsafe { sys::cuMemAddressFree(ptr, size) };
        return Err(e);
    }
    // SAFETY: a plain C struct; fields set below.
    let mut access: sys::CUmemAccessDesc = unsafe { std::mem::zeroed() };
    access.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = device;
    access.flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    // SAFETY: the range is mapped; one descriptor.
    if let Err(e) = cuda_check("cuMemSetAccess", unsafe {
        sys::cuMemSetAccess(ptr, size, &access, 1)
    }) {
        // SAFETY: mapped above.
        unsafe {
            let _ = sys::cuMemUnmap(ptr, size);
            let _ = sys::cuMemAddressFree(ptr, size);
        }
        return Err(e);
    }
    Ok(ptr)
}

/// A DMA-BUF frame as PipeWire describes it (single plane).
#[derive(Debug)]
pub struct DmaBuf<'a> {
    pub fd: &'a OwnedFd,
    pub fourcc: u32,
    pub modifier: u64,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub offset: u32,
}

/// The linear texture the blit writes and CUDA reads, registered with CUDA once per size.
struct Target {
    width: u32,
    height: u32,
    texture: u32,
    framebuffer: u32,
    resource: sys::CUgraphicsResource,
}

/// Copies DMA-BUFs into pool slots on the thread that created it (the GL and CUDA contexts are
/// current there; not Send).
pub struct Importer<'p> {
    prepared: &'p Prepared,
    source_texture: u32,
    read_framebuffer: u32,
    target: Option<Target>,
    /// Modifiers offered per import fourcc, asked once.
    offered: Vec<(u32, Vec<OfferedModifier>)>,
    _not_send: PhantomData<*const ()>,
}

impl<'p> Importer<'p> {
    /// Makes the GL and CUDA contexts current on this thread.
    pub fn new(prepared: &'p Prepared) -> Result<Importer<'p>, NvidiaError> {
        prepared.egl.make_current()?;
        // SAFETY: the context is retained by `prepared`, which outlives the importer.
        cuda_check("cuCtxSetCurrent", unsafe {
            sys::cuCtxSetCurrent(prepared.cuda.ctx)
        })?;
        let gl = &prepared.gl;
        let (mut texture, mut framebuffer) = (0u32, 0u32);
        // SAFETY: the GL context is current; out-pointers to one name each.
        unsafe {
            (gl.gen_textures)(1, &mut texture);
            (gl.gen_framebuffers)(1, &mut framebuffer);
        }
        gl.check("glGenTextures/glGenFramebuffers")?;
        Ok(Importer {
            prepared,
            source_texture: texture,
            read_framebuffer: framebuffer,
            target: None,
            offered: Vec::new(),
            _not_send: PhantomData,
        })
    }

    fn offered(&mut self, fourcc: u32) -> Result<&[OfferedModifier], NvidiaError> {
        let at = match self.offered.iter().position(|(f, _)| *f == fourcc) {
            Some(at) => at,
            None => {
                let list = self.prepared.egl.modifiers(fourcc)?;
                self.offered.push((fourcc, list));
                self.offered.len() - 1
            }
        };
        Ok(&self.offered[at].1)
    }

    /// Creates (or keeps) the linear target texture of this size and its CUDA registration.
    fn target(&mut self, width: u32, height: u32) -> Result<&Target, NvidiaError> {
        if self
            .target
            .as_ref()
            .is_some_and(|t| t.width != width || t.height != height)
        {
            if let Some(old) = self.target.take() {
                self.drop_target(old);
            }
        }
        if self.target.is_none() {
            let target = self.new_target(width, height)?;
            self.target = Some(target);
        }
        Ok(self.target.as_ref().expect("set just above"))
    }

    fn new_target(&self, width: u32, height: u32) -> Result<Target, NvidiaError> {
        let gl = &self.prepared.gl;
        let (mut texture, mut framebuffer) = (0u32, 0u32);
        // SAFETY: the GL context is current on this thread (Importer is not Send); sizes are
        // bounded by `bgrx_slot_layout`.
        let status = unsafe {
            (gl.gen_textures)(1, &mut texture);
            (gl.bind_texture)(GL_TEXTURE_2D, texture);
            (gl.tex_storage_2d)(GL_TEXTURE_2D, 1, GL_RGBA8, width as i32, height as i32);
            (gl.gen_framebuffers)(1, &mut framebuffer);
            (gl.bind_framebuffer)(GL_DRAW_FRAMEBUFFER, framebuffer);
            (gl.framebuffer_texture_2d)(
                GL_DRAW_FRAMEBUFFER,
                GL_COLOR_ATTACHMENT0,
                GL_TEXTURE_2D,
                texture,
                0,
            );
            (gl.check_framebuffer_status)(GL_DRAW_FRAMEBUFFER)
        };
        let mut target = Target {
            width,
            height,
            texture,
            framebuffer,
            resource: ptr::null_mut(),
        };
        let ready = (|| {
            gl.check("glTexStorage2D(RGBA8)")?;
            if status != GL_FRAMEBUFFER_COMPLETE {
                return Err(NvidiaError::Gl {
                    call: "glCheckFramebufferStatus(target)",
                    error: status,
                });
            }
            // SAFETY: the texture is a complete GL_TEXTURE_2D of this context; the CUDA context
            // is current; flag 1 = CU_GRAPHICS_REGISTER_FLAGS_READ_ONLY.
            let registered = unsafe {
                (self.prepared.cuda.register_gl_image)(
                    &mut target.resource,
                    texture,
                    GL_TEXTURE_2D,
                    1,
                )
            };
            cuda_check("cuGraphicsGLRegisterImage", registered)
        })();
        match ready {
            Ok(()) => Ok(target),
            Err(e) => {
                self.drop_target(target);
                Err(e)
            }
        }
    }

    fn drop_target(&self, target: Target) {
        let gl = &self.prepared.gl;
        // SAFETY: names and resource created by `new_target` in this context.
        unsafe {
            if !target.resource.is_null() {
                let _ = sys::cuGraphicsUnregisterResource(target.resource);
            }
            (gl.delete_framebuffers)(1, &target.framebuffer);
            (gl.delete_textures)(1, &target.texture);
        }
    }

    /// Copies `frame` into `slot` of `pool` as BGRx. Refuses formats other than 32-bit RGB,
    /// modifiers the driver cannot import, and frames whose size is not the pool's.
    pub fn copy(
        &mut self,
        frame: &DmaBuf<'_>,
        pool: &ImportedPool,
        slot: usize,
    ) -> Result<(), NvidiaError> {
        let Some(dst) = pool.slots.get(slot) else {
            return Err(NvidiaError::Invalid(format!(
                "slot {slot} of {}",
                pool.slots.len()
            )));
        };
        if (frame.width, frame.height) != (pool.width, pool.height) {
            return Err(NvidiaError::Invalid(format!(
                "frame {}x{} in a {}x{} pool",
                frame.width, frame.height, pool.width, pool.height
            )));
        }
        let import = import_fourcc(frame.fourcc).ok_or_else(|| {
            NvidiaError::Invalid(format!(
                "format {} (the NVIDIA path takes XR24, AR24, XB24, AB24)",
                fourcc::name(frame.fourcc)
            ))
        })?;
        let offered = self.offered(import)?;
        check_modifier(import, frame.modifier, offered)?;
        let image = self.create_image(frame, import)?;
        let copied = self.blit_and_copy(image, frame, pool, dst);
        // SAFETY: the image was created above on this display; GL has finished with it (the
        // CUDA map/copy/unmap in between synchronises with GL).
        unsafe { (self.prepared.egl.destroy_image)(self.prepared.egl.display.as_ptr(), image) };
        copied
    }

    fn create_image(&self, frame: &DmaBuf<'_>, import: u32) -> Result<EglImage, NvidiaError> {
        let mut attribs: Vec<c_int> = vec![
            egl::WIDTH,
            frame.width as c_int,
            egl::HEIGHT,
            frame.height as c_int,
            EGL_LINUX_DRM_FOURCC_EXT,
            import as c_int,
            EGL_DMA_BUF_PLANE0_FD_EXT,
            frame.fd.as_raw_fd(),
            EGL_DMA_BUF_PLANE0_OFFSET_EXT,
            frame.offset as c_int,
            EGL_DMA_BUF_PLANE0_PITCH_EXT,
            frame.stride as c_int,
        ];
        if frame.modifier != MOD_INVALID {
            attribs.extend_from_slice(&[
                EGL_DMA_BUF_PLANE0_MODIFIER_LO_EXT,
                (frame.modifier & 0xffff_ffff) as u32 as c_int,
                EGL_DMA_BUF_PLANE0_MODIFIER_HI_EXT,
                (frame.modifier >> 32) as u32 as c_int,
            ]);
        }
        attribs.push(egl::NONE);
        let egl = &self.prepared.egl;
        // SAFETY: the list is NONE-terminated and names a DMA-BUF fd this process holds open
        // for the call; EGL dups what it keeps. Context must be EGL_NO_CONTEXT for this target.
        let image = unsafe {
            (egl.create_image)(
                egl.display.as_ptr(),
                ptr::null_mut(),
                EGL_LINUX_DMA_BUF_EXT,
                ptr::null_mut(),
                attribs.as_ptr(),
            )
        };
        if image.is_null() {
            return Err(egl_error(egl, "eglCreateImageKHR(EGL_LINUX_DMA_BUF_EXT)"));
        }
        Ok(image)
    }

    fn blit_and_copy(
        &mut self,
        image: EglImage,
        frame: &DmaBuf<'_>,
        pool: &ImportedPool,
        dst: &ImportedSlot,
    ) -> Result<(), NvidiaError> {
        let (source, read_fb) = (self.source_texture, self.read_framebuffer);
        let target = self.target(frame.width, frame.height)?;
        let (draw_fb, resource) = (target.framebuffer, target.resource);
        let gl = &self.prepared.gl;
        let (w, h) = (frame.width as i32, frame.height as i32);
        // SAFETY: the GL context is current; `image` is a live EGLImage; the framebuffers and
        // textures are this importer's.
        let status = unsafe {
            (gl.bind_texture)(GL_TEXTURE_2D, source);
            (gl.image_target_texture)(GL_TEXTURE_2D, image);
            (gl.tex_parameteri)(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_NEAREST);
            (gl.tex_parameteri)(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, GL_NEAREST);
            (gl.bind_framebuffer)(GL_READ_FRAMEBUFFER, read_fb);
            (gl.framebuffer_texture_2d)(
                GL_READ_FRAMEBUFFER,
                GL_COLOR_ATTACHMENT0,
                GL_TEXTURE_2D,
                source,
                0,
            );
            (gl.check_framebuffer_status)(GL_READ_FRAMEBUFFER)
        };
        gl.check("glEGLImageTargetTexture2DOES")?;
        if status != GL_FRAMEBUFFER_COMPLETE {
            return Err(NvidiaError::Gl {
                call: "glCheckFramebufferStatus(imported DMA-BUF)",
                error: status,
            });
        }
        // SAFETY: both framebuffers are complete and of this size.
        unsafe {
            (gl.bind_framebuffer)(GL_DRAW_FRAMEBUFFER, draw_fb);
            (gl.blit_framebuffer)(
                0,
                0,
                w,
                h,
                0,
                0,
                w,
                h,
                GL_COLOR_BUFFER_BIT,
                GL_NEAREST as u32,
            );
        }
        gl.check("glBlitFramebuffer")?;
        copy_resource(resource, dst, pool.pitch, frame.width, frame.height)
    }
}

/// Maps the registered target, copies its array into the slot row by row, and unmaps.
fn copy_resource(
    mut resource: sys::CUgraphicsResource,
    dst: &ImportedSlot,
    pitch: usize,
    width: u32,
    height: u32,
) -> Result<(), NvidiaError> {
    // SAFETY: `resource` was registered by `new_target`; the null stream is the default one.
    cuda_check("cuGraphicsMapResources", unsafe {
        sys::cuGraphicsMapResources(1, &mut resource, ptr::null_mut())
    })?;
    let mut array: sys::CUarray = ptr::null_mut();
    // SAFETY: the resource is mapped; level 0 of a 2D texture.
    let copied = cuda_check("cuGraphicsSubResourceGetMappedArray", unsafe {
        sys::cuGraphicsSubResourceGetMappedArray(&mut array, resource, 0, 0)
    })
    .and_then(|()| {
        // SAFETY: a plain C struct; the fields used are set below.
        let mut copy: sys::CUDA_MEMCPY2D = unsafe { std::mem::zeroed() };
        copy.srcMemoryType = sys::CUmemorytype::CU_MEMORYTYPE_ARRAY;
        copy.srcArray = array;
        copy.dstMemoryType = sys::CUmemorytype::CU_MEMORYTYPE_DEVICE;
        copy.dstDevice = dst.ptr;
        copy.dstPitch = pitch;
        copy.WidthInBytes = width as usize * 4;
        copy.Height = height as usize;
        // SAFETY: the array is width×height RGBA8; the slot holds `pitch`×height bytes (its
        // mapping is at least that, see `ImportedPool::import`).
        cuda_check("cuMemcpy2D", unsafe { sys::cuMemcpy2D_v2(&copy) })
    });
    // SAFETY: mapped above.
    let unmapped = cuda_check("cuGraphicsUnmapResources", unsafe {
        sys::cuGraphicsUnmapResources(1, &mut resource, ptr::null_mut())
    });
    copied.and(unmapped)
}

impl Drop for Importer<'_> {
    fn drop(&mut self) {
        if let Some(target) = self.target.take() {
            self.drop_target(target);
        }
        let gl = &self.prepared.gl;
        // SAFETY: names created in `new`, in this context, on this thread.
        unsafe {
            (gl.delete_framebuffers)(1, &self.read_framebuffer);
            (gl.delete_textures)(1, &self.source_texture);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_egl_the_probe_is_unavailable_and_names_the_library() {
        let Err(err) = Egl::load("libEGL-not-here.so.1", true) else {
            panic!("a missing libEGL loaded");
        };
        assert!(matches!(err, NvidiaError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("libEGL-not-here.so.1"), "{err}");
    }

    #[test]
    fn without_an_nvidia_gpu_the_probe_is_unavailable() {
        // SAFETY: only dlopen attempts.
        let driver = unsafe { sys::is_culib_present() };
        match prepare() {
            Err(NvidiaError::Unavailable(why)) if !driver => assert_eq!(why, NO_DRIVER),
            Err(NvidiaError::Unavailable(why)) => {
                assert!(why.contains("EGL") || why.contains("NVIDIA"), "{why}")
            }
            Err(other) => panic!("not Unavailable: {other}"),
            Ok(p) => eprintln!("NVIDIA path available here ({p:?})"),
        }
    }

    #[test]
    fn without_an_nvidia_egl_device_the_egl_probe_is_unavailable() {
        match Egl::load(LIB_EGL, true) {
            Err(NvidiaError::Unavailable(why)) => eprintln!("{why}"),
            Err(other) => panic!("not Unavailable: {other}"),
            Ok(egl) => assert!(egl.nvidia),
        }
    }

    #[test]
    fn unknown_modifiers_are_refused_with_what_is_offered() {
        let offered = [
            OfferedModifier {
                modifier: 0,
                external_only: false,
            },
            OfferedModifier {
                modifier: 0x0300_0000_0060_6014,
                external_only: false,
            },
            OfferedModifier {
                modifier: 0x0300_0000_0060_6015,
                external_only: true,
            },
        ];
        assert!(check_modifier(fourcc::XBGR8888, 0, &offered).is_ok());
        assert!(check_modifier(fourcc::XBGR8888, 0x0300_0000_0060_6014, &offered).is_ok());
        assert!(check_modifier(fourcc::XBGR8888, MOD_INVALID, &[]).is_ok());
        let err = check_modifier(fourcc::XBGR8888, 0x0100_0000_0000_0002, &offered).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("0x0100000000000002"), "{text}");
        assert!(text.contains("XB24"), "{text}");
        assert!(text.contains("0x300000000606014"), "{text}");
        // External-only modifiers cannot be blitted from.
        assert!(check_modifier(fourcc::XBGR8888, 0x0300_0000_0060_6015, &offered).is_err());
        let err = check_modifier(fourcc::XRGB8888, 0, &[]).unwrap_err();
        assert!(err.to_string().contains("no modifiers"), "{err}");
    }

    #[test]
    fn formats_are_imported_with_red_and_blue_swapped() {
        assert_eq!(import_fourcc(fourcc::XRGB8888), Some(fourcc::XBGR8888));
        assert_eq!(import_fourcc(fourcc::ARGB8888), Some(fourcc::ABGR8888));
        assert_eq!(import_fourcc(fourcc::XBGR8888), Some(fourcc::XRGB8888));
        assert_eq!(import_fourcc(u32::from_le_bytes(*b"NV12")), None);
        assert_eq!(fourcc::name(fourcc::XRGB8888), "XR24");
    }

    #[test]
    fn bgrx_slots_match_ffmpeg_cuda_frames() {
        assert_eq!(bgrx_slot_layout(1920, 1080).unwrap(), (7680, 7680 * 1080));
        assert_eq!(bgrx_slot_layout(100, 10).unwrap(), (512, 5120));
        assert!(bgrx_slot_layout(0, 10).is_err());
        assert!(bgrx_slot_layout(8193, 10).is_err());
    }

    /// Where libEGL and Mesa's surfaceless platform work (no GPU needed), the EGL half loads, a
    /// GLES 3 context exists and the modifier query answers.
    #[test]
    fn egl_loads_where_the_library_is() {
        let egl = match Egl::load(LIB_EGL, false) {
            Ok(egl) => egl,
            Err(NvidiaError::Unavailable(why)) => {
                eprintln!("EGL unavailable here: {why}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        egl.make_current().unwrap();
        let gl = Gl::load(&egl).unwrap();
        gl.check("nothing yet").unwrap();
        let offered = egl.modifiers(fourcc::XBGR8888).unwrap();
        eprintln!("{}: XB24 modifiers {offered:?}", egl.platform);
    }

    /// Needs an NVIDIA GPU: imports a pool exported by this process (as encode does) and copies
    /// a blitted texture into a slot.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn import_pool_and_copy_needs_an_nvidia_gpu() {
        let prepared = prepare().expect("needs an NVIDIA GPU, driver and EGL device");
        let importer = Importer::new(&prepared).unwrap();
        // Export one BGRx slot the way encode does.
        let (_, bytes) = bgrx_slot_layout(640, 360).unwrap();
        // SAFETY: test-only FFI as in `ImportedPool::import`.
        let fd = unsafe {
            let mut prop: sys::CUmemAllocationProp = std::mem::zeroed();
            prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
            prop.requestedHandleTypes =
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
            prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
            prop.location.id = prepared.cuda.device;
            let mut g = 0usize;
            cuda_check(
                "granularity",
                sys::cuMemGetAllocationGranularity(
                    &mut g,
                    &prop,
                    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
                ),
            )
            .unwrap();
            let mut handle = 0;
            cuda_check(
                "cuMemCreate",
                sys::cuMemCreate(&mut handle, bytes.div_ceil(g) * g, &prop, 0),
            )
            .unwrap();
            let mut fd: c_int = -1;
            cuda_check(
                "export",
                sys::cuMemExportToShareableHandle(
                    (&mut fd as *mut c_int).cast(),
                    handle,
                    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                    0,
                ),
            )
            .unwrap();
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        };
        let pool = ImportedPool::import(&prepared.cuda, &[fd], 640, 360).unwrap();
        assert_eq!(pool.len(), 1);
        let mut importer = importer;
        let target = importer.target(640, 360).unwrap();
        let resource = target.resource;
        copy_resource(resource, &pool.slots[0], pool.pitch, 640, 360).unwrap();
    }
}
