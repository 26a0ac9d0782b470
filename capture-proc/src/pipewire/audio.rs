//! The audio stream: 48 kHz interleaved f32 in the session's channel count, from a named node or
//! from the monitor of the default sink. PipeWire's adapter (audioconvert, kept loaded by
//! `preload`) resamples and remixes whatever the node produces into that format.
//!
//! Channel order of the PCM records: FL FR (stereo); FL FR FC LFE RL RR (5.1);
//! FL FR FC LFE RL RR SL SR (7.1) — the order GameStream's Opus multistream mapping starts from.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use lumen_ipc::media::{SessionParams, AUDIO_SAMPLE_RATE};
use lumen_ipc::ring::monotonic_ns;
use pipewire as pw;
use pw::properties::properties;
use pw::spa;
use pw::stream::{StreamBox, StreamFlags, StreamListener, StreamState};
use spa::param::audio::{AudioFormat, AudioInfoRaw};
use spa::param::format::{MediaSubtype, MediaType};
use spa::param::ParamType;
use spa::pod::{Object, Pod};
use spa::utils::SpaTypes;

use super::video::serialize;
use super::{explain, PcmSink, PipeWireError, Reporter, Target};

/// The channel positions for a session's channel count.
pub(crate) fn positions(channels: u32) -> &'static [u32] {
    use spa::sys::*;
    match channels {
        6 => &[
            SPA_AUDIO_CHANNEL_FL,
            SPA_AUDIO_CHANNEL_FR,
            SPA_AUDIO_CHANNEL_FC,
            SPA_AUDIO_CHANNEL_LFE,
            SPA_AUDIO_CHANNEL_RL,
            SPA_AUDIO_CHANNEL_RR,
        ],
        8 => &[
            SPA_AUDIO_CHANNEL_FL,
            SPA_AUDIO_CHANNEL_FR,
            SPA_AUDIO_CHANNEL_FC,
            SPA_AUDIO_CHANNEL_LFE,
            SPA_AUDIO_CHANNEL_RL,
            SPA_AUDIO_CHANNEL_RR,
            SPA_AUDIO_CHANNEL_SL,
            SPA_AUDIO_CHANNEL_SR,
        ],
        _ => &[SPA_AUDIO_CHANNEL_FL, SPA_AUDIO_CHANNEL_FR],
    }
}

/// The one format the stream accepts: F32LE, 48 kHz, `channels` positioned channels.
pub(crate) fn enum_format(channels: u32) -> Object {
    let mut info = AudioInfoRaw::new();
    info.set_format(AudioFormat::F32LE);
    info.set_rate(AUDIO_SAMPLE_RATE);
    info.set_channels(channels);
    let mut position = [0u32; spa::sys::SPA_AUDIO_MAX_CHANNELS as usize];
    for (slot, channel) in position.iter_mut().zip(positions(channels)) {
        *slot = *channel;
    }
    info.set_position(position);
    Object {
        type_: SpaTypes::ObjectParamFormat.as_raw(),
        id: ParamType::EnumFormat.as_raw(),
        properties: info.into(),
    }
}

/// Little-endian f32 samples of `bytes` (whole frames of `channels` only) into `out`.
pub(crate) fn decode_samples(bytes: &[u8], channels: usize, out: &mut Vec<f32>) {
    out.clear();
    let frame = 4 * channels.max(1);
    let whole = bytes.len() / frame * frame;
    out.extend(
        bytes[..whole]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
}

/// Nanoseconds of `frames` sample frames at 48 kHz.
fn frames_ns(frames: usize) -> u64 {
    (frames as u64).saturating_mul(1_000_000_000) / u64::from(AUDIO_SAMPLE_RATE)
}

/// The sample clock restarts from the wall clock when the wall clock runs ahead of it by more
/// than this (samples were lost: the source skipped, or the graph stalled).
const RESYNC_NS: u64 = 20_000_000;

/// Longest the sample clock may run ahead of the wall clock.
const MAX_AHEAD_NS: u64 = 1_000_000_000;

/// Capture times of consecutive buffers: the wall clock at the process callback jitters by
/// milliseconds, so each buffer's first sample is stamped where the previous buffer ended. The
/// clock only jumps forward (to the wall clock, after a gap); when buffers come in a burst after a
/// stall it stays continuous rather than stepping back, so capture times never decrease.
#[derive(Debug, Default)]
pub(crate) struct SampleClock {
    next_ns: Option<u64>,
}

impl SampleClock {
    /// The capture time of the first of `frames` sample frames that ended at `now_ns`.
    pub(crate) fn stamp(&mut self, now_ns: u64, frames: usize) -> u64 {
        let span = frames_ns(frames);
        let wall = now_ns.saturating_sub(span);
        let stamp = match self.next_ns {
            // Ahead of the wall clock by more than a second is no burst but a source clock running
            // fast for hours: step back once rather than drift on.
            Some(next)
                if wall <= next.saturating_add(RESYNC_NS)
                    && next <= wall.saturating_add(MAX_AHEAD_NS) =>
            {
                next
            }
            _ => wall,
        };
        self.next_ns = Some(stamp + span);
        stamp
    }
}

struct AudioState<A> {
    sink: Arc<Mutex<A>>,
    reporter: Rc<Reporter>,
    what: String,
    channels: u32,
    /// Captures a named node (failures end the session) rather than the default monitor.
    named: bool,
    format_ok: bool,
    /// A format was accepted at some point (so a disconnect means the node went away).
    format_ok_once: bool,
    started: Rc<Cell<bool>>,
    samples: Vec<f32>,
    clock: SampleClock,
}

impl<A: PcmSink> AudioState<A> {
    /// A stream failure: fatal for a named node; for the default sink's monitor only logged,
    /// since a host without any audio sink should still stream its picture.
    fn fail(&self, message: String) {
        if self.named {
            self.reporter.fail(message);
        } else {
            eprintln!("lumen-capture: pipewire: {message}; the session goes on without sound");
        }
    }

    fn on_format(&mut self, param: &Pod) {
        let (media_type, media_subtype) = match spa::param::format_utils::parse_format(param) {
            Ok(kind) => kind,
            Err(e) => {
                self.reporter
                    .fail(format!("{}: unreadable audio format ({e:?})", self.what));
                return;
            }
        };
        let mut info = AudioInfoRaw::new();
        let parsed = info.parse(param);
        if media_type != MediaType::Audio
            || media_subtype != MediaSubtype::Raw
            || parsed.is_err()
            || info.format() != AudioFormat::F32LE
            || info.rate() != AUDIO_SAMPLE_RATE
            || info.channels() != self.channels
        {
            self.reporter.fail(format!(
                "{} negotiated {:?} {} Hz × {} channels; the encoder takes only F32LE 48000 Hz × {}",
                self.what,
                info.format(),
                info.rate(),
                info.channels(),
                self.channels
            ));
            return;
        }
        self.format_ok = true;
        self.format_ok_once = true;
    }

    fn on_process(&mut self, stream: &pw::stream::Stream) {
        let Some(mut buffer) = stream.dequeue_buffer() else {
            return;
        };
        if !self.format_ok {
            return;
        }
        let now = monotonic_ns();
        let datas = buffer.datas_mut();
        let Some(data) = datas.first_mut() else {
            return;
        };
        let (offset, size) = {
            let chunk = data.chunk();
            (chunk.offset() as usize, chunk.size() as usize)
        };
        let Some(bytes) = data.data() else {
            return;
        };
        // The chunk is the peer's word: clamp it to the mapped block.
        let start = offset.min(bytes.len());
        let end = start.saturating_add(size).min(bytes.len());
        let channels = self.channels as usize;
        decode_samples(&bytes[start..end], channels, &mut self.samples);
        if self.samples.is_empty() {
            return;
        }
        self.started.set(true);
        let frames = self.samples.len() / channels.max(1);
        let captured_ns = self.clock.stamp(now, frames);
        let result = match self.sink.lock() {
            Ok(mut sink) => sink.push_pcm(captured_ns, &self.samples),
            Err(_) => Err("the audio sink is poisoned".to_string()),
        };
        if let Err(e) = result {
            self.reporter.fail(format!("{}: {e}", self.what));
        }
    }

    fn on_state(&mut self, new: StreamState) {
        match new {
            StreamState::Error(message) => {
                self.fail(format!("{}: {message}", self.what));
            }
            // The session manager disconnects a stream whose target does not exist (or
            // vanished) instead of linking it elsewhere (DONT_RECONNECT); our own teardown
            // removes this listener before the stream, so this is never our doing.
            StreamState::Unconnected if self.format_ok_once => {
                self.fail(format!("{} went away", self.what));
            }
            StreamState::Unconnected => {
                self.fail(format!(
                    "{} could not be linked: it does not exist or offers no raw audio",
                    self.what
                ));
            }
            _ => {}
        }
    }
}

/// A connected audio stream.
pub(crate) struct AudioCapture<'c, A> {
    _listener: StreamListener<AudioState<A>>,
    _stream: StreamBox<'c>,
    started: Rc<Cell<bool>>,
    what: String,
}

impl<'c, A: PcmSink> AudioCapture<'c, A> {
    pub(crate) fn connect(
        core: &'c pw::core::Core,
        target: Option<&Target>,
        params: &SessionParams,
        sink: Arc<Mutex<A>>,
        reporter: Rc<Reporter>,
    ) -> Result<Self, PipeWireError> {
        let channels = params.audio.channels();
        let mut props = properties! {
            *pw::keys::MEDIA_TYPE => "Audio",
            *pw::keys::MEDIA_CATEGORY => "Capture",
            *pw::keys::MEDIA_ROLE => "Game",
            *pw::keys::NODE_NAME => "lumen-capture-audio",
        };
        let (target_id, what, flags) = match target {
            None => {
                // The default sink's monitor; follows the default when it changes.
                props.insert("stream.capture.sink", "true");
                (
                    None,
                    "the monitor of the default audio sink".to_string(),
                    StreamFlags::empty(),
                )
            }
            Some(target) => {
                let (id, object) = target.connect_args();
                if let Some(name) = object {
                    props.insert("target.object", name);
                }
                let what = match target {
                    Target::Id(id) => format!("audio node {id}"),
                    Target::Name(name) => format!("audio node {name:?}"),
                };
                (id, what, StreamFlags::DONT_RECONNECT)
            }
        };
        let stream = StreamBox::new(core, "lumen-capture-audio", props)
            .map_err(|e| PipeWireError::Stream(format!("creating the audio stream: {e}")))?;
        let started = Rc::new(Cell::new(false));
        let state = AudioState {
            sink,
            reporter,
            what: what.clone(),
            channels,
            named: target.is_some(),
            format_ok: false,
            format_ok_once: false,
            started: started.clone(),
            samples: Vec::new(),
            clock: SampleClock::default(),
        };
        let listener = stream
            .add_local_listener_with_user_data(state)
            .state_changed(|_, state, _, new| state.on_state(new))
            .param_changed(|_, state, id, param| {
                if id != ParamType::Format.as_raw() {
                    return;
                }
                match param {
                    Some(param) => state.on_format(param),
                    None => state.format_ok = false,
                }
            })
            .process(|stream, state| state.on_process(stream))
            .register()
            .map_err(|e| PipeWireError::Stream(format!("listening on the audio stream: {e}")))?;
        let format = serialize(enum_format(channels))?;
        let pod = Pod::from_bytes(&format)
            .ok_or_else(|| PipeWireError::Stream("the audio format pod is malformed".into()))?;
        stream
            .connect(
                spa::utils::Direction::Input,
                target_id,
                StreamFlags::AUTOCONNECT | StreamFlags::MAP_BUFFERS | flags,
                &mut [pod],
            )
            .map_err(|e| PipeWireError::Stream(format!("connecting to {what}: {}", explain(&e))))?;
        Ok(AudioCapture {
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
