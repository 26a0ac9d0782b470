//! Frame slot → encoder frame: swscale from the slot's format and size to the encoder's pixel format
//! at the session size, or plain plane copies when they already match.
//!
//! The slot is shared memory capture can still write (if it misbehaves), so it is only ever read
//! through raw pointers handed to FFmpeg, which takes any pixel values. Every pointer is derived
//! from a [`FrameDesc`] already checked against the pool.

use ffmpeg_next::ffi;
use ffmpeg_next::format::Pixel;
use ffmpeg_next::frame;
use lumen_ipc::frame_pool::FramePool;
use lumen_ipc::media::{FrameDesc, PixelFormat};

/// Bytes swscale's SIMD input readers may touch past the end of a row; a slot whose planes end
/// closer than this to the end of the mapping is copied out first.
const OVERREAD_SLACK: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("frame description does not fit the pool: {0}")]
    Desc(#[from] lumen_ipc::media::FrameDescError),
    #[error("plane {0} stride {1} is larger than a slot")]
    Stride(usize, u64),
    #[error("swscale cannot convert {from:?} {w}x{h} to {to:?}")]
    NoContext {
        from: PixelFormat,
        w: u32,
        h: u32,
        to: Pixel,
    },
    #[error("the encoder's frame could not be made writable")]
    NotWritable,
}

pub fn av_pixel(format: PixelFormat) -> Pixel {
    match format {
        PixelFormat::Bgrx => Pixel::BGRZ,
        PixelFormat::Rgbx => Pixel::RGBZ,
        PixelFormat::Nv12 => Pixel::NV12,
        PixelFormat::I420 => Pixel::YUV420P,
    }
}

/// A cached swscale context and a staging buffer for slots at the very end of the pool.
pub struct Converter {
    sws: *mut ffi::SwsContext,
    staging: Vec<u8>,
    /// How the last frame was converted, for the stats line.
    pub last_path: &'static str,
}

// SAFETY: the SwsContext is owned by this value alone and used only through `&mut self`.
unsafe impl Send for Converter {}

impl Default for Converter {
    fn default() -> Self {
        Self {
            sws: std::ptr::null_mut(),
            staging: Vec::new(),
            last_path: "",
        }
    }
}

impl Drop for Converter {
    fn drop(&mut self) {
        // SAFETY: `sws` is null or a context from sws_getCachedContext, freed once here.
        unsafe { ffi::sws_freeContext(self.sws) };
    }
}

impl Converter {
    /// Converts the frame `desc` describes into `dst` (the encoder's format and size).
    pub fn convert(
        &mut self,
        pool: &FramePool,
        desc: &FrameDesc,
        dst: &mut frame::Video,
    ) -> Result<(), ScaleError> {
        let spec = pool.spec();
        desc.check(&spec)?;
        let (slot_ptr, slot_len) =
            pool.slot_ptr(desc.slot)
                .ok_or(lumen_ipc::media::FrameDescError::BadSlot {
                    slot: desc.slot,
                    slots: spec.slots,
                })?;
        let mut ends = 0u64;
        for (i, plane) in desc.planes.iter().enumerate() {
            // check() bounds stride × (rows − 1), which says nothing about a one-row plane.
            if plane.stride > spec.slot_bytes || plane.stride > i32::MAX as u64 {
                return Err(ScaleError::Stride(i, plane.stride));
            }
            let rows = desc.format.plane_rows(i, desc.height);
            ends = ends.max(plane.offset + plane.stride * rows);
        }
        // SAFETY: the frame was allocated by FFmpeg; make_writable copies it first if the encoder
        // still holds a reference to its buffers.
        if unsafe { ffi::av_frame_make_writable(dst.as_mut_ptr()) } < 0 {
            return Err(ScaleError::NotWritable);
        }
        let last_slot = desc.slot + 1 == spec.slots;
        let base = if last_slot && ends + OVERREAD_SLACK > spec.slot_bytes {
            self.staging.resize(slot_len + OVERREAD_SLACK as usize, 0);
            // SAFETY: slot_ptr..slot_ptr+slot_len lies in the pool mapping (slot_ptr's contract);
            // the staging buffer is private and at least slot_len long.
            unsafe { std::ptr::copy_nonoverlapping(slot_ptr, self.staging.as_mut_ptr(), slot_len) };
            self.staging.as_ptr()
        } else {
            slot_ptr
        };
        let mut src = [std::ptr::null::<u8>(); 4];
        let mut strides = [0i32; 4];
        for (i, plane) in desc.planes.iter().enumerate() {
            // SAFETY: check() proved offset + stride × (rows − 1) + row ≤ slot_bytes, so the pointer
            // stays inside the slot (or the staging copy of it).
            src[i] = unsafe { base.add(plane.offset as usize) };
            strides[i] = plane.stride as i32;
        }
        let from = av_pixel(desc.format);
        if from == dst.format() && desc.width == dst.width() && desc.height == dst.height() {
            for (i, _) in desc.planes.iter().enumerate() {
                let bytes = desc.format.min_stride(i, desc.width) as i32;
                let rows = desc.format.plane_rows(i, desc.height) as i32;
                // SAFETY: the source rows are inside the slot (above); the destination plane has at
                // least `rows` rows of `bytes` bytes (same format and size); no row is overread.
                unsafe {
                    let raw = dst.as_mut_ptr();
                    ffi::av_image_copy_plane(
                        (*raw).data[i],
                        (*raw).linesize[i],
                        src[i],
                        strides[i],
                        bytes,
                        rows,
                    );
                }
            }
            self.last_path = "copy";
            return Ok(());
        }
        // Bilinear also at the same size: chroma is then averaged, not point-sampled, on the way to
        // 4:2:0 (measured at 1080p: no slower than SWS_POINT).
        let flags = ffi::SWS_BILINEAR;
        // SAFETY: sizes are non-zero (check) and formats valid; the cached context is ours.
        self.sws = unsafe {
            ffi::sws_getCachedContext(
                self.sws,
                desc.width as i32,
                desc.height as i32,
                from.into(),
                dst.width() as i32,
                dst.height() as i32,
                dst.format().into(),
                flags,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null(),
            )
        };
        if self.sws.is_null() {
            return Err(ScaleError::NoContext {
                from: desc.format,
                w: desc.width,
                h: desc.height,
                to: dst.format(),
            });
        }
        // SAFETY: src/strides describe desc.height rows inside the slot (or its staging copy, with
        // OVERREAD_SLACK spare bytes); dst is a writable frame of the context's output size.
        unsafe {
            let raw = dst.as_mut_ptr();
            ffi::sws_scale(
                self.sws,
                src.as_ptr(),
                strides.as_ptr(),
                0,
                desc.height as i32,
                (*raw).data.as_ptr(),
                (*raw).linesize.as_ptr(),
            );
        }
        self.last_path = "swscale";
        Ok(())
    }
}

/// Runs every conversion path once, so swscale sets up its tables before lock-down.
pub fn warm_up() -> Result<(), String> {
    use lumen_ipc::frame_pool::{create_pool, FramePool};
    use lumen_ipc::media::{FramePoolSpec, Plane};
    let spec = FramePoolSpec {
        slots: 2,
        slot_bytes: 64 * 64 * 4,
    };
    let memfd = create_pool("lumen-encode-warm-up", &spec).map_err(|e| e.to_string())?;
    let pool = FramePool::map(memfd, spec, true).map_err(|e| e.to_string())?;
    let mut converter = Converter::default();
    for from in [
        PixelFormat::Bgrx,
        PixelFormat::Rgbx,
        PixelFormat::Nv12,
        PixelFormat::I420,
    ] {
        let planes = match from {
            PixelFormat::Bgrx | PixelFormat::Rgbx => vec![Plane {
                offset: 0,
                stride: 256,
            }],
            PixelFormat::Nv12 => vec![
                Plane {
                    offset: 0,
                    stride: 64,
                },
                Plane {
                    offset: 4096,
                    stride: 64,
                },
            ],
            PixelFormat::I420 => vec![
                Plane {
                    offset: 0,
                    stride: 64,
                },
                Plane {
                    offset: 4096,
                    stride: 32,
                },
                Plane {
                    offset: 5120,
                    stride: 32,
                },
            ],
        };
        let desc = FrameDesc {
            slot: 0,
            seq: 0,
            captured_ns: 0,
            width: 64,
            height: 64,
            format: from,
            planes,
        };
        for (to, w) in [(Pixel::NV12, 64), (Pixel::YUV420P, 64), (Pixel::NV12, 32)] {
            let mut dst = frame::Video::new(to, w, w);
            converter
                .convert(&pool, &desc, &mut dst)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
