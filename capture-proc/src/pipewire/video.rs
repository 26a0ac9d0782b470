//! The video stream: negotiates raw video the encoder takes (BGRx, RGBx, BGRA/RGBA with alpha
//! ignored, NV12) at the node's own size (encode scales to the session size), maps shared-memory
//! buffers and copies each frame once into a frame slot, row by row, honouring the source stride.
//!
//! DMA-BUF is not offered: the EnumFormat carries no `VideoModifier`, which by PipeWire's convention
//! means shared memory only, and the Buffers param allows MemFd and MemPtr only. There is no DRM
//! device here to import a DMA-BUF into, and mapping one with the CPU needs its modifier to be linear;
//! a compositor that only offers DMA-BUF therefore fails negotiation with a clear report.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use lumen_ipc::media::{PixelFormat, Plane, SessionParams, MAX_FPS};
use lumen_ipc::ring::monotonic_ns;
use pipewire as pw;
use pw::properties::properties;
use pw::spa;
use pw::stream::{StreamBox, StreamFlags, StreamListener, StreamState};
use spa::param::format::{FormatProperties, MediaSubtype, MediaType};
use spa::param::video::{VideoFormat, VideoInfoRaw};
use spa::param::ParamType;
use spa::pod::ChoiceValue;
use spa::pod::{Object, Pod, Property, PropertyFlags, Value};
use spa::utils::{Choice, ChoiceEnum, ChoiceFlags, Fraction, Rectangle, SpaTypes};

use super::{explain, FrameSink, PipeWireError, Reporter, Target};

/// Largest side a PipeWire picture may have (what frame descriptions accept).
const MAX_SIDE: u32 = 16384;

/// The pixel formats offered, in order of preference, and what a slot holds for each.
const OFFERED: &[(VideoFormat, PixelFormat, &str)] = &[
    (VideoFormat::BGRx, PixelFormat::Bgrx, "BGRx"),
    (VideoFormat::BGRA, PixelFormat::Bgrx, "BGRA"),
    (VideoFormat::RGBx, PixelFormat::Rgbx, "RGBx"),
    (VideoFormat::RGBA, PixelFormat::Rgbx, "RGBA"),
    (VideoFormat::NV12, PixelFormat::Nv12, "NV12"),
];

/// The offered formats' names, for messages.
pub(crate) const OFFERED_NAMES: &str = "BGRx, BGRA, RGBx, RGBA, NV12";

/// What a slot holds for a negotiated PipeWire format, and its name, if the encoder takes it.
pub(crate) fn slot_format(format: VideoFormat) -> Option<(PixelFormat, &'static str)> {
    OFFERED
        .iter()
        .find(|(offered, _, _)| *offered == format)
        .map(|(_, slot, name)| (*slot, *name))
}

pub(crate) fn serialize(object: Object) -> Result<Vec<u8>, PipeWireError> {
    spa::pod::serialize::PodSerializer::serialize(
        std::io::Cursor::new(Vec::new()),
        &Value::Object(object),
    )
    .map(|(cursor, _)| cursor.into_inner())
    .map_err(|e| PipeWireError::Stream(format!("building a format: {e:?}")))
}

/// The EnumFormat the stream offers: raw video in [`OFFERED`] formats, any size (the node's own is
/// taken), the session's frame rate preferred.
pub(crate) fn enum_format(params: &SessionParams) -> Object {
    let formats: Vec<spa::utils::Id> = OFFERED
        .iter()
        .map(|(format, _, _)| spa::utils::Id(format.as_raw()))
        .collect();
    Object {
        type_: SpaTypes::ObjectParamFormat.as_raw(),
        id: ParamType::EnumFormat.as_raw(),
        properties: vec![
            Property::new(
                FormatProperties::MediaType.as_raw(),
                Value::Id(spa::utils::Id(MediaType::Video.as_raw())),
            ),
            Property::new(
                FormatProperties::MediaSubtype.as_raw(),
                Value::Id(spa::utils::Id(MediaSubtype::Raw.as_raw())),
            ),
            Property::new(
                FormatProperties::VideoFormat.as_raw(),
                Value::Choice(ChoiceValue::Id(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Enum {
                        default: formats[0],
                        alternatives: formats.clone(),
                    },
                ))),
            ),
            Property::new(
                FormatProperties::VideoSize.as_raw(),
                Value::Choice(ChoiceValue::Rectangle(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Range {
                        default: Rectangle {
                            width: params.width,
                            height: params.height,
                        },
                        min: Rectangle {
                            width: 1,
                            height: 1,
                        },
                        max: Rectangle {
                            width: MAX_SIDE,
                            height: MAX_SIDE,
                        },
                    },
                ))),
            ),
            Property::new(
                FormatProperties::VideoFramerate.as_raw(),
                Value::Choice(ChoiceValue::Fraction(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Range {
                        default: Fraction {
                            num: params.fps,
                            denom: 1,
                        },
                        min: Fraction { num: 0, denom: 1 },
                        max: Fraction {
                            num: MAX_FPS,
                            denom: 1,
                        },
                    },
                ))),
            ),
        ],
    }
}

/// The Buffers param: shared memory only (MemFd or MemPtr), never DMA-BUF.
pub(crate) fn buffers_param() -> Object {
    let mask = (1i32 << spa::sys::SPA_DATA_MemFd) | (1i32 << spa::sys::SPA_DATA_MemPtr);
    Object {
        type_: SpaTypes::ObjectParamBuffers.as_raw(),
        id: ParamType::Buffers.as_raw(),
        properties: vec![Property {
            key: spa::sys::SPA_PARAM_BUFFERS_dataType,
            flags: PropertyFlags::empty(),
            value: Value::Choice(ChoiceValue::Int(Choice(
                ChoiceFlags::empty(),
                ChoiceEnum::Flags {
                    default: mask,
                    flags: vec![],
                },
            ))),
        }],
    }
}

/// Where one plane of a source frame lies in a mapped buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourcePlane {
    /// Which buffer data block (`datas[i]`) holds it.
    pub data: usize,
    pub offset: usize,
    pub stride: usize,
}

/// One data block's chunk as the producer filled it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourceChunk {
    pub offset: u32,
    pub size: u32,
    /// Bytes per row; 0 when the producer leaves it out (GStreamer's pipewiresink does).
    pub stride: i32,
}

/// The stride of a block holding `rows` rows whose chunk says `chunk`: the producer's when given;
/// otherwise the size divided by the rows when that divides evenly into at least `row` bytes
/// (producers pad rows, e.g. to 4 bytes), else unpadded rows. `None`: a negative stride.
fn block_stride(chunk: SourceChunk, rows: u64, row: u64) -> Option<usize> {
    let stride = match chunk.stride {
        s if s < 0 => return None,
        0 => {
            let size = u64::from(chunk.size);
            if rows > 0 && size % rows == 0 && size / rows >= row {
                size / rows
            } else {
                row
            }
        }
        s => u64::try_from(s).ok()?,
    };
    usize::try_from(stride).ok()
}

/// Where each plane of a `format` frame lies, given the chunks of the buffer's data blocks. A
/// format with more planes than blocks has them back to back in the first block, all with the
/// luma stride (NV12 from most producers: the UV plane right after `height` Y rows). `None`: a
/// negative stride, or no block.
pub(crate) fn source_planes(
    format: PixelFormat,
    width: u32,
    height: u32,
    chunks: &[SourceChunk],
) -> Option<Vec<SourcePlane>> {
    let planes = format.plane_count();
    if chunks.len() >= planes {
        return (0..planes)
            .map(|plane| {
                let chunk = chunks[plane];
                let stride = block_stride(
                    chunk,
                    format.plane_rows(plane, height),
                    format.min_stride(plane, width),
                )?;
                Some(SourcePlane {
                    data: plane,
                    offset: chunk.offset as usize,
                    stride,
                })
            })
            .collect();
    }
    let chunk = *chunks.first()?;
    let all_rows = (0..planes).map(|p| format.plane_rows(p, height)).sum();
    let widest_row = (0..planes).map(|p| format.min_stride(p, width)).max()?;
    let stride = block_stride(chunk, all_rows, widest_row)?;
    let mut out = Vec::with_capacity(planes);
    let mut offset = chunk.offset as usize;
    for plane in 0..planes {
        out.push(SourcePlane {
            data: 0,
            offset,
            stride,
        });
        let rows = usize::try_from(format.plane_rows(plane, height)).ok()?;
        offset = offset.checked_add(stride.checked_mul(rows)?)?;
    }
    Some(out)
}

/// Copies a `format` frame of `width`×`height` from `sources` (mapped data blocks, indexed by
/// [`SourcePlane::data`]) into `dst` at the plane layout `dst_planes`. Every range is checked first;
/// `false` (nothing trusted copied) if any plane does not fit its source block or the slot.
pub(crate) fn copy_frame(
    format: PixelFormat,
    width: u32,
    height: u32,
    sources: &[&[u8]],
    src_planes: &[SourcePlane],
    dst: &mut [u8],
    dst_planes: &[Plane],
) -> bool {
    let planes = format.plane_count();
    if src_planes.len() != planes || dst_planes.len() != planes {
        return false;
    }
    // Check every plane before writing any, so a bad frame leaves the slot untouched.
    let mut jobs = Vec::with_capacity(planes);
    for plane in 0..planes {
        let (Ok(row), Ok(rows)) = (
            usize::try_from(format.min_stride(plane, width)),
            usize::try_from(format.plane_rows(plane, height)),
        ) else {
            return false;
        };
        let src = src_planes[plane];
        let Some(block) = sources.get(src.data) else {
            return false;
        };
        let (Ok(dst_offset), Ok(dst_stride)) = (
            usize::try_from(dst_planes[plane].offset),
            usize::try_from(dst_planes[plane].stride),
        ) else {
            return false;
        };
        if rows == 0 || src.stride < row || dst_stride < row {
            return false;
        }
        let fits = |offset: usize, stride: usize, len: usize| {
            stride
                .checked_mul(rows - 1)
                .and_then(|v| v.checked_add(row))
                .and_then(|v| v.checked_add(offset))
                .is_some_and(|end| end <= len)
        };
        if !fits(src.offset, src.stride, block.len()) || !fits(dst_offset, dst_stride, dst.len()) {
            return false;
        }
        jobs.push((block, src, dst_offset, dst_stride, row, rows));
    }
    for (block, src, dst_offset, dst_stride, row, rows) in jobs {
        if src.stride == row && dst_stride == row {
            let len = row * rows;
            dst[dst_offset..dst_offset + len].copy_from_slice(&block[src.offset..src.offset + len]);
            continue;
        }
        for r in 0..rows {
            let s = src.offset + r * src.stride;
            let d = dst_offset + r * dst_stride;
            dst[d..d + row].copy_from_slice(&block[s..s + row]);
        }
    }
    true
}

/// The negotiated picture.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    format: PixelFormat,
    width: u32,
    height: u32,
}

struct VideoState<V> {
    sink: Arc<Mutex<V>>,
    reporter: Rc<Reporter>,
    what: String,
    negotiated: Option<Negotiated>,
    /// A format was negotiated at some point (so a disconnect means the node went away).
    negotiated_once: bool,
    started: Rc<Cell<bool>>,
}

impl<V: FrameSink> VideoState<V> {
    fn on_format(&mut self, stream: &pw::stream::Stream, param: &Pod) {
        let mut info = VideoInfoRaw::new();
        if let Err(e) = info.parse(param) {
            self.reporter
                .fail(format!("{}: unreadable video format ({e:?})", self.what));
            return;
        }
        let Some((format, name)) = slot_format(info.format()) else {
            self.reporter.fail(format!(
                "{} offers video format {:?}, which the encoder cannot take (it takes {OFFERED_NAMES})",
                self.what,
                info.format()
            ));
            return;
        };
        let size = info.size();
        if size.width == 0 || size.height == 0 || size.width > MAX_SIDE || size.height > MAX_SIDE {
            self.reporter.fail(format!(
                "{} offers a {}x{} picture, outside 1..={MAX_SIDE} pixels a side",
                self.what, size.width, size.height
            ));
            return;
        }
        self.negotiated_once = true;
        self.negotiated = Some(Negotiated {
            format,
            width: size.width,
            height: size.height,
        });
        let rate = info.framerate();
        self.reporter.describe(format!(
            "pipewire {name} {}x{}@{}/{} from {}",
            size.width, size.height, rate.num, rate.denom, self.what
        ));
        let buffers = match serialize(buffers_param()) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.reporter.fail(e.to_string());
                return;
            }
        };
        if let Some(pod) = Pod::from_bytes(&buffers) {
            if let Err(e) = stream.update_params(&mut [pod]) {
                self.reporter
                    .fail(format!("{}: setting buffer types: {e}", self.what));
            }
        }
    }

    fn on_process(&mut self, stream: &pw::stream::Stream) {
        // Only the newest frame matters: older queued buffers go straight back (on drop).
        let mut newest = None;
        while let Some(buffer) = stream.dequeue_buffer() {
            newest = Some(buffer);
        }
        let Some(mut buffer) = newest else {
            return;
        };
        let Some(negotiated) = self.negotiated else {
            return;
        };
        let captured_ns = monotonic_ns();
        let datas = buffer.datas_mut();
        let mut chunks = Vec::with_capacity(datas.len());
        let mut blocks: Vec<&[u8]> = Vec::with_capacity(datas.len());
        for data in datas.iter_mut() {
            let kind = data.type_();
            if kind == spa::buffer::DataType::DmaBuf {
                self.reporter.fail(format!(
                    "{} sent a DMA-BUF buffer; only shared-memory buffers are supported",
                    self.what
                ));
                return;
            }
            let chunk = data.chunk();
            if chunk.size() == 0 || chunk.flags().contains(spa::buffer::ChunkFlags::CORRUPTED) {
                // An empty chunk: the producer has no new picture (cursor-only update); skip.
                return;
            }
            chunks.push(SourceChunk {
                offset: chunk.offset(),
                size: chunk.size(),
                stride: chunk.stride(),
            });
            match data.data() {
                Some(bytes) => blocks.push(bytes),
                None => {
                    self.reporter.fail(format!(
                        "{} sent a buffer that could not be mapped ({:?})",
                        self.what, kind
                    ));
                    return;
                }
            }
        }
        let Some(src_planes) = source_planes(
            negotiated.format,
            negotiated.width,
            negotiated.height,
            &chunks,
        ) else {
            return;
        };
        self.started.set(true);
        let mut fill = |slot: &mut [u8], planes: &[Plane]| {
            copy_frame(
                negotiated.format,
                negotiated.width,
                negotiated.height,
                &blocks,
                &src_planes,
                slot,
                planes,
            )
        };
        let result = match self.sink.lock() {
            Ok(mut sink) => sink.submit_frame(
                negotiated.format,
                negotiated.width,
                negotiated.height,
                captured_ns,
                &mut fill,
            ),
            Err(_) => Err("the video sink is poisoned".to_string()),
        };
        if let Err(e) = result {
            self.reporter.fail(format!("{}: {e}", self.what));
        }
    }

    fn on_state(&mut self, new: StreamState) {
        match new {
            StreamState::Error(message) => {
                self.reporter.fail(format!("{}: {message}", self.what));
            }
            // The session manager disconnects a stream whose target does not exist (or
            // vanished) instead of linking it elsewhere (DONT_RECONNECT); our own teardown
            // removes this listener before the stream, so this is never our doing.
            StreamState::Unconnected if self.negotiated_once => {
                self.reporter.fail(format!("{} went away", self.what));
            }
            StreamState::Unconnected => {
                self.reporter.fail(format!(
                    "{} could not be linked: it does not exist, or it offers no format the \
                     encoder takes ({})",
                    self.what, OFFERED_NAMES
                ));
            }
            _ => {}
        }
    }
}

/// A connected video stream.
pub(crate) struct VideoCapture<'c, V> {
    // Field order: the listener goes before the stream it listens to.
    _listener: StreamListener<VideoState<V>>,
    _stream: StreamBox<'c>,
    started: Rc<Cell<bool>>,
    what: String,
}

impl<'c, V: FrameSink> VideoCapture<'c, V> {
    pub(crate) fn connect(
        core: &'c pw::core::Core,
        target: &Target,
        params: &SessionParams,
        sink: Arc<Mutex<V>>,
        reporter: Rc<Reporter>,
    ) -> Result<Self, PipeWireError> {
        let (target_id, target_object) = target.connect_args();
        let what = match target {
            Target::Id(id) => format!("video node {id}"),
            Target::Name(name) => format!("video node {name:?}"),
        };
        let mut props = properties! {
            *pw::keys::MEDIA_TYPE => "Video",
            *pw::keys::MEDIA_CATEGORY => "Capture",
            *pw::keys::MEDIA_ROLE => "Screen",
            *pw::keys::NODE_NAME => "lumen-capture-video",
        };
        if let Some(name) = target_object {
            props.insert("target.object", name);
        }
        let stream = StreamBox::new(core, "lumen-capture-video", props)
            .map_err(|e| PipeWireError::Stream(format!("creating the video stream: {e}")))?;
        let started = Rc::new(Cell::new(false));
        let state = VideoState {
            sink,
            reporter,
            what: what.clone(),
            negotiated: None,
            negotiated_once: false,
            started: started.clone(),
        };
        let listener = stream
            .add_local_listener_with_user_data(state)
            .state_changed(|_, state, _, new| state.on_state(new))
            .param_changed(|stream, state, id, param| {
                if id != ParamType::Format.as_raw() {
                    return;
                }
                match param {
                    Some(param) => state.on_format(stream, param),
                    None => state.negotiated = None,
                }
            })
            .process(|stream, state| state.on_process(stream))
            .register()
            .map_err(|e| PipeWireError::Stream(format!("listening on the video stream: {e}")))?;
        let format = serialize(enum_format(params))?;
        let pod = Pod::from_bytes(&format)
            .ok_or_else(|| PipeWireError::Stream("the video format pod is malformed".into()))?;
        stream
            .connect(
                spa::utils::Direction::Input,
                target_id,
                // Never fall back to another video node when ours goes away or does not exist.
                StreamFlags::AUTOCONNECT | StreamFlags::MAP_BUFFERS | StreamFlags::DONT_RECONNECT,
                &mut [pod],
            )
            .map_err(|e| PipeWireError::Stream(format!("connecting to {what}: {}", explain(&e))))?;
        Ok(VideoCapture {
            _listener: listener,
            _stream: stream,
            started,
            what,
        })
    }

    pub(crate) fn started(&self) -> Rc<Cell<bool>> {
        self.started.clone()
    }

    pub(crate) fn describe(&self) -> String {
        self.what.clone()
    }
}
