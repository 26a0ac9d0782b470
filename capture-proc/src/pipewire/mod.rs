//! Real PipeWire capture: video from a screen-cast (or any `Video/Source`) node, sound from an audio
//! node or the monitor of the default sink, both into the session's sinks.
//!
//! Two steps, split by the sandbox:
//! - [`preload`], before lock-down: `pw_init`, the main loop and the context (which reads
//!   `client.conf` and loads the protocol, client-node and adapter modules from disk), and kept
//!   handles of the SPA plugins streams load on demand (audioconvert for every audio stream's
//!   adapter, audiomixer for input ports), which could not be `dlopen`ed later (empty mount
//!   namespace, no `openat`). The context's data-loop thread is stopped again, so lock-down finds
//!   the process single-threaded, and memory locking is off (no `mlock` in the sandbox).
//! - [`start`], after lock-down: connects over the fd the broker opened (`pw_context_connect_fd`), so
//!   the worker never needs a socket or a path, starts the data loop, creates the streams and runs
//!   the main loop on its own thread until the [`PipeWireCapture`] is dropped. The loop and context
//!   go back into [`Prepared`] when the session ends, ready for the next one.
//!
//! What the client still needs from the kernel after lock-down is in [`seccomp_rules()`]; the
//! worker's RLIMIT_FSIZE must allow PipeWire to size its memfd pool (a too-small limit fails the
//! session with a message naming it rather than killing the worker with SIGXFSZ).
//!
//! Failures that happen while running (missing node, a format the encoder cannot take, a stream
//! error, the server going away) are handed to the session's report callback once, with a message
//! that names the node and the cause; this module neither panics nor exits on them.

mod audio;
mod seccomp_rules;
mod video;

use std::cell::Cell;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lumen_ipc::media::{PixelFormat, Plane, SessionParams};
use pipewire as pw;
use pw::context::ContextRc;
use pw::main_loop::MainLoopRc;

pub use seccomp_rules::seccomp_rules;

/// How long the video stream may take from connecting to its first buffer before the session is
/// reported as failed (the node exists but never negotiates, or no session manager links it).
const FIRST_BUFFER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where captured pictures go: the capture core's `sink::VideoSink`.
pub trait FrameSink: Send + 'static {
    /// Offers a `format` frame of `width`×`height`; `fill` gets a free slot and the plane layout the
    /// sink chose for it and returns whether it filled them. `Ok(false)`: no free slot, or `fill`
    /// refused (the frame is dropped and counted). `Err`: the session cannot go on.
    fn submit_frame(
        &mut self,
        format: PixelFormat,
        width: u32,
        height: u32,
        captured_ns: u64,
        fill: &mut dyn FnMut(&mut [u8], &[Plane]) -> bool,
    ) -> Result<bool, String>;
}

/// Where captured sound goes: the capture core's `sink::AudioSink` (48 kHz interleaved f32 in the
/// session's channel count; it cuts the stream into Opus-packet records).
pub trait PcmSink: Send + 'static {
    /// `captured_ns`: CLOCK_MONOTONIC time of the first sample in `interleaved`.
    fn push_pcm(&mut self, captured_ns: u64, interleaved: &[f32]) -> Result<(), String>;
}

/// Why PipeWire capture could not be prepared or started.
#[derive(Debug)]
pub enum PipeWireError {
    /// `preload` failed: no loop, no context, or a plugin missing on disk.
    Init(String),
    /// `preload` did not run, or its loop was lost with a failed session thread.
    NotPrepared,
    /// The previous session's loop still runs (drop its `PipeWireCapture` first).
    Busy,
    /// Connecting to the remote the broker handed over failed.
    Connect(String),
    /// A stream could not be created or connected.
    Stream(String),
    /// The loop thread could not be started or ended before it was ready.
    Thread(String),
}

impl std::fmt::Display for PipeWireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PipeWireError::Init(why) => write!(f, "PipeWire could not be prepared: {why}"),
            PipeWireError::NotPrepared => write!(
                f,
                "PipeWire was not prepared before lock-down (its loop is gone)"
            ),
            PipeWireError::Busy => write!(f, "the previous PipeWire capture is still running"),
            PipeWireError::Connect(why) => {
                write!(f, "connecting to the PipeWire remote failed: {why}")
            }
            PipeWireError::Stream(why) => write!(f, "PipeWire stream: {why}"),
            PipeWireError::Thread(why) => write!(f, "PipeWire loop thread: {why}"),
        }
    }
}

impl std::error::Error for PipeWireError {}

/// A PipeWire error as a message, with the cause spelled out where the sandbox is the reason.
pub(crate) fn explain(e: &pw::Error) -> String {
    let text = e.to_string();
    if text == std::io::Error::from_raw_os_error(libc::EFBIG).to_string() {
        format!(
            "{text}: PipeWire sizes its shared-memory pool (memfds) with ftruncate, and this \
             worker's RLIMIT_FSIZE forbids it"
        )
    } else {
        text
    }
}

/// A loaded SPA plugin handle, unloaded on drop. Holding it keeps its library mapped, so later
/// handles from the same library are found in PipeWire's plugin registry without touching disk.
struct SpaHandle(NonNull<pw::spa::sys::spa_handle>);

impl Drop for SpaHandle {
    fn drop(&mut self) {
        // SAFETY: the handle came from pw_context_load_spa_handle and is unloaded exactly once.
        unsafe { pw::sys::pw_unload_spa_handle(self.0.as_ptr()) };
    }
}

/// The main loop, its context and the plugins kept loaded; used by one thread at a time.
struct LoopState {
    main_loop: MainLoopRc,
    context: ContextRc,
    _plugins: Vec<SpaHandle>,
}

// SAFETY: PipeWire's main loop and context have no thread affinity; what forbids sending them is the
// non-atomic reference count of the Rc wrappers. Every clone of `main_loop` and `context` lives
// inside this value or is made and dropped on the thread that currently owns it (the session thread
// drops all its streams, listeners and its core before handing the state back through the mutex),
// so the counts are never touched from two threads at once.
unsafe impl Send for LoopState {}

/// What [`preload`] made before lock-down; keep it for the worker's lifetime.
pub struct Prepared {
    state: Arc<Mutex<Option<LoopState>>>,
}

/// Loads SPA factory `factory` from `library` (relative to the SPA plugin directory) through the
/// context, the way PipeWire itself asks for it later, so its plugin registry finds the library.
fn load_spa_handle(
    context: &ContextRc,
    library: &str,
    factory: &str,
) -> Result<SpaHandle, PipeWireError> {
    let name = CString::new(factory).map_err(|_| PipeWireError::Init(factory.to_string()))?;
    let info = pw::properties::properties! { "library.name" => library };
    // SAFETY: the context pointer is live (borrowed from `context`); name is a valid C string;
    // `info` outlives the call, which copies what it keeps.
    let handle = unsafe {
        pw::sys::pw_context_load_spa_handle(
            context.as_raw_ptr(),
            name.as_ptr(),
            info.dict().as_raw_ptr(),
        )
    };
    NonNull::new(handle).map(SpaHandle).ok_or_else(|| {
        PipeWireError::Init(format!(
            "SPA factory {factory} from {library} could not be loaded ({}); is PipeWire's SPA \
             plugin package installed?",
            std::io::Error::last_os_error()
        ))
    })
}

/// The SPA plugins a capture stream loads on demand (library, one factory in it). One live
/// handle per library keeps it mapped for the process's lifetime.
const PLUGINS: &[(&str, &str)] = &[
    // Audio streams run through module-adapter's audio.adapt, next to audio.convert.
    ("audioconvert/libspa-audioconvert", "audio.convert"),
    // Input ports of a client node mix their links with audio.mixer.dsp / control.mixer.
    ("audiomixer/libspa-audiomixer", "audio.mixer.dsp"),
];

/// The context's data loop (the thread that runs the stream's real-time side).
fn data_loop(context: &ContextRc) -> *mut pw::sys::pw_data_loop {
    // SAFETY: the context pointer is live; the data loop lives as long as the context.
    unsafe { pw::sys::pw_context_get_data_loop(context.as_raw_ptr()) }
}

/// Before lock-down: initialises PipeWire, creates the loop and context, and loads every plugin a
/// later video or audio stream needs. Starts no thread.
pub fn preload() -> Result<Prepared, PipeWireError> {
    // PipeWire sizes its shared-memory pool with ftruncate; where the sandbox's RLIMIT_FSIZE
    // forbids that, the call must fail (and the session with a message), not kill the worker
    // with SIGXFSZ.
    // SAFETY: SIG_IGN installs no handler code; ignoring SIGXFSZ only turns an over-limit write
    // into an EFBIG error.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(PipeWireError::Init(format!(
            "ignoring SIGXFSZ: {}",
            std::io::Error::last_os_error()
        )));
    }
    pw::init();
    let main_loop =
        MainLoopRc::new(None).map_err(|e| PipeWireError::Init(format!("main loop: {e}")))?;
    // No mlock of stream buffers: locking memory buys nothing for a capture client, and the
    // sandbox does not allow it.
    let properties = pw::properties::properties! { "mem.allow-mlock" => "false" };
    let context = ContextRc::new(&main_loop, Some(properties))
        .map_err(|e| PipeWireError::Init(format!("context: {e}")))?;
    let plugins = PLUGINS
        .iter()
        .map(|(library, factory)| load_spa_handle(&context, library, factory))
        .collect::<Result<Vec<_>, _>>()?;
    // pw_context_new starts the data-loop thread, but lock-down must find the process
    // single-threaded (the kernel refuses a new user namespace to a multi-threaded process).
    // Stop it here; each session starts it again (pw_data_loop_start is a no-op when running).
    // SAFETY: the data loop belongs to the live context; stopping joins its thread, and nothing
    // has been queued on it yet.
    let stopped = unsafe { pw::sys::pw_data_loop_stop(data_loop(&context)) };
    if stopped < 0 {
        return Err(PipeWireError::Init(format!(
            "stopping the data-loop thread until lock-down: {}",
            std::io::Error::from_raw_os_error(-stopped)
        )));
    }
    Ok(Prepared {
        state: Arc::new(Mutex::new(Some(LoopState {
            main_loop,
            context,
            _plugins: plugins,
        }))),
    })
}

/// What to capture, as the broker named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// All digits: a node id, as the ScreenCast portal hands it out (`pw_stream_connect` target).
    Id(u32),
    /// Anything else: a `node.name` (matched through `target.object`).
    Name(String),
}

impl Target {
    pub(crate) fn parse(node: &str) -> Target {
        match node.parse::<u32>() {
            Ok(id) if !node.starts_with('+') => Target::Id(id),
            _ => Target::Name(node.to_string()),
        }
    }

    /// The stream-connect target id and the `target.object` property for it.
    pub(crate) fn connect_args(&self) -> (Option<u32>, Option<&str>) {
        match self {
            Target::Id(id) => (Some(*id), None),
            Target::Name(name) => (None, Some(name)),
        }
    }
}

/// Reports the first failure of a session to the session's callback; later ones only to stderr
/// (one `SessionFailed` says enough, and a failing stream can repeat itself every cycle).
pub(crate) struct Reporter {
    report: Box<dyn Fn(String)>,
    describe: Box<dyn Fn(String)>,
    failed: Cell<bool>,
}

impl Reporter {
    /// Names what now produces the pictures (for `MediaStats::component`).
    pub(crate) fn describe(&self, component: String) {
        (self.describe)(component);
    }

    pub(crate) fn fail(&self, message: String) {
        if self.failed.replace(true) {
            eprintln!("lumen-capture: pipewire: {message}");
        } else {
            (self.report)(message);
        }
    }
}

/// A running PipeWire capture; dropping it stops the loop and joins its thread.
pub struct PipeWireCapture {
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl PipeWireCapture {
    fn request_stop(&self) {
        // An eventfd write cannot block (the counter is far from overflow) and wakes the loop.
        let _ = rustix::io::write(self.stop.as_fd(), &1u64.to_ne_bytes());
    }
}

impl Drop for PipeWireCapture {
    fn drop(&mut self) {
        self.request_stop();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("lumen-capture: pipewire: the loop thread panicked");
            }
        }
    }
}

/// What the session thread needs, moved to it in one piece.
struct SessionSetup<V, A> {
    remote: OwnedFd,
    video_node: Target,
    audio_node: Option<Target>,
    params: SessionParams,
    video: Arc<Mutex<V>>,
    audio: Arc<Mutex<A>>,
    stop: Arc<OwnedFd>,
}

/// After lock-down: connects to the PipeWire remote `remote` (opened by the broker), captures video
/// from `video_node` (a node name; all digits: a node id from the ScreenCast portal) and audio from
/// `audio_node` (`None`: the monitor of the default sink), and runs until the returned value is
/// dropped. Errors after this returns go to `report` (once per session); `describe` hears what
/// produces the pictures once the video format is negotiated (e.g. "pipewire BGRx 1920x1080").
#[allow(clippy::too_many_arguments)]
pub fn start<V: FrameSink, A: PcmSink>(
    prepared: &Prepared,
    remote: OwnedFd,
    video_node: &str,
    audio_node: Option<&str>,
    params: SessionParams,
    video: Arc<Mutex<V>>,
    audio: Arc<Mutex<A>>,
    report: impl Fn(String) + Send + 'static,
    describe: impl Fn(String) + Send + 'static,
) -> Result<PipeWireCapture, PipeWireError> {
    params.validate().map_err(PipeWireError::Stream)?;
    let state = {
        let mut slot = prepared
            .state
            .lock()
            .map_err(|_| PipeWireError::NotPrepared)?;
        slot.take()
    };
    let Some(state) = state else {
        return Err(PipeWireError::Busy);
    };
    let stop = match rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    ) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            put_back(&prepared.state, state);
            return Err(PipeWireError::Thread(format!("eventfd: {e}")));
        }
    };
    let setup = SessionSetup {
        remote,
        video_node: Target::parse(video_node),
        audio_node: audio_node.map(Target::parse),
        params,
        video,
        audio,
        stop: stop.clone(),
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let lease = Lease {
        home: prepared.state.clone(),
        state: Some(state),
    };
    let thread = std::thread::Builder::new()
        .name("pipewire".into())
        .spawn(move || {
            let lease = lease;
            let reporter = Rc::new(Reporter {
                report: Box::new(report),
                describe: Box::new(describe),
                failed: Cell::new(false),
            });
            if let Some(state) = &lease.state {
                run_session(state, setup, reporter, ready_tx);
            }
        })
        .map_err(|e| PipeWireError::Thread(format!("spawning: {e}")))?;
    let capture = PipeWireCapture {
        stop,
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(capture),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(PipeWireError::Thread(
            "ended before the streams were connected".into(),
        )),
    }
}

/// The loop, lent to one session thread; it goes back to [`Prepared`] when the lease drops,
/// however the thread ends (or, if the thread could not be spawned, with the unstarted closure).
struct Lease {
    home: Arc<Mutex<Option<LoopState>>>,
    state: Option<LoopState>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            put_back(&self.home, state);
        }
    }
}

fn put_back(home: &Mutex<Option<LoopState>>, state: LoopState) {
    match home.lock() {
        Ok(mut slot) => *slot = Some(state),
        Err(poisoned) => *poisoned.into_inner() = Some(state),
    }
}

/// The session thread: connect, create both streams, tell `start` how that went, run the loop.
fn run_session<V: FrameSink, A: PcmSink>(
    state: &LoopState,
    setup: SessionSetup<V, A>,
    reporter: Rc<Reporter>,
    ready: mpsc::Sender<Result<(), PipeWireError>>,
) {
    let SessionSetup {
        remote,
        video_node,
        audio_node,
        params,
        video,
        audio,
        stop,
    } = setup;
    // SAFETY: the data loop belongs to the live context owned by `state`; starting it spawns one
    // thread (or does nothing when it already runs from a previous session).
    let started = unsafe { pw::sys::pw_data_loop_start(data_loop(&state.context)) };
    if started < 0 {
        let _ = ready.send(Err(PipeWireError::Thread(format!(
            "starting the data loop: {}",
            std::io::Error::from_raw_os_error(-started)
        ))));
        return;
    }
    let core = match state.context.connect_fd(remote, None) {
        Ok(core) => core,
        Err(e) => {
            let _ = ready.send(Err(PipeWireError::Connect(explain(&e))));
            return;
        }
    };
    let _core_listener = core
        .add_listener_local()
        .error({
            let reporter = reporter.clone();
            let weak_loop = state.main_loop.downgrade();
            move |id, _seq, res, message| {
                let cause = std::io::Error::from_raw_os_error(-res);
                // A broken connection ends the session. Other errors (a late reply about an
                // object already destroyed, a refused link) are logged: what they break shows
                // up in the streams' own state callbacks, with the node named.
                if id == pw::core::PW_ID_CORE && res == -libc::EPIPE {
                    reporter.fail(format!("PipeWire connection failed: {message} ({cause})"));
                    if let Some(main_loop) = weak_loop.upgrade() {
                        main_loop.quit();
                    }
                } else {
                    eprintln!("lumen-capture: pipewire: error on object {id}: {message} ({cause})");
                }
            }
        })
        .register();
    let video_stream =
        match video::VideoCapture::connect(&core, &video_node, &params, video, reporter.clone()) {
            Ok(stream) => stream,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
    let audio_stream = match audio::AudioCapture::connect(
        &core,
        audio_node.as_ref(),
        &params,
        audio,
        reporter.clone(),
    ) {
        Ok(stream) => stream,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let loop_ = state.main_loop.loop_();
    let _stop_source = loop_.add_io(stop, pw::spa::support::system::IoFlags::IN, {
        let weak_loop = state.main_loop.downgrade();
        move |fd: &mut Arc<OwnedFd>| {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(fd.as_fd(), &mut buf);
            if let Some(main_loop) = weak_loop.upgrade() {
                main_loop.quit();
            }
        }
    });
    let watchdog = loop_.add_timer({
        let reporter = reporter.clone();
        let video_started = video_stream.started();
        let audio_started = audio_stream.started();
        let video_what = video_stream.describe();
        let audio_what = audio_stream.describe();
        move |_| {
            let secs = FIRST_BUFFER_TIMEOUT.as_secs();
            if !video_started.get() {
                reporter.fail(format!(
                    "no video from {video_what} within {secs} s: it does not exist, is not \
                     linked, or offers no format the encoder takes ({})",
                    video::OFFERED_NAMES
                ));
            }
            // A host without any audio sink has no default monitor: stream silence rather
            // than fail the picture (a named node that is missing fails in its state callback).
            if !audio_started.get() {
                eprintln!(
                    "lumen-capture: pipewire: no audio from {audio_what} within {secs} s; the \
                     session goes on without sound"
                );
            }
        }
    });
    let _ = watchdog.update_timer(Some(FIRST_BUFFER_TIMEOUT), None);
    let _ = ready.send(Ok(()));
    state.main_loop.run();
    // Streams before the core they belong to; the core disconnects when dropped.
    drop(watchdog);
    drop(audio_stream);
    drop(video_stream);
}

impl FrameSink for crate::sink::VideoSink {
    fn submit_frame(
        &mut self,
        format: PixelFormat,
        width: u32,
        height: u32,
        captured_ns: u64,
        fill: &mut dyn FnMut(&mut [u8], &[Plane]) -> bool,
    ) -> Result<bool, String> {
        self.submit(format, width, height, captured_ns, |slot, planes| {
            fill(slot, planes)
        })
        .map_err(|e| e.to_string())
    }
}

impl PcmSink for crate::sink::AudioSink {
    fn push_pcm(&mut self, captured_ns: u64, interleaved: &[f32]) -> Result<(), String> {
        self.push(captured_ns, interleaved)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests;
