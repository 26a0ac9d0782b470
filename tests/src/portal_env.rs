//! The real `xdg-desktop-portal` frontend on a [`PipeWireEnv`]'s session bus, with a small
//! ScreenCast backend (`org.freedesktop.impl.portal.ScreenCast`) served from the test process:
//! the backend "shares" one PipeWire node of that environment, so an app asking the portal gets
//! the real frontend's real PipeWire remote for it.
//!
//! The frontend finds the backend through a `*.portal` file in `XDG_DESKTOP_PORTAL_DIR` whose
//! `UseIn` names the test's `XDG_CURRENT_DESKTOP`. It keeps restore data in its permission store
//! (`xdg-permission-store`, started here with a private `XDG_DATA_HOME`). The backend counts what
//! it was asked, and can refuse or answer with no streams, for the error paths.
//!
//! Without the portal binaries (`dist/install-deps.sh` installs them) [`PortalEnv::start`] returns
//! `Ok(None)` after printing why, unless `CI` is set, like [`PipeWireEnv::start`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pipewire as pw;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use crate::pipewire_env::PipeWireEnv;

/// The backend's bus name (what the `*.portal` file points the frontend at).
pub const BACKEND_NAME: &str = "org.freedesktop.impl.portal.desktop.lumentest";
/// `XDG_CURRENT_DESKTOP` of the frontend, matched by the `*.portal` file's `UseIn`.
pub const DESKTOP: &str = "lumentest";
const PORTAL_PATH: &str = "/org/freedesktop/portal/desktop";
const APPEAR_TIMEOUT: Duration = Duration::from_secs(20);

/// Where Debian (and most distributions) keep the portal daemons.
const LIBEXEC_DIRS: &[&str] = &["/usr/libexec", "/usr/lib/xdg-desktop-portal", "/usr/lib"];

fn find_daemon(name: &str) -> Option<PathBuf> {
    LIBEXEC_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .chain(
            std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|dir| dir.join(name)),
        )
        .find(|candidate| candidate.is_file())
}

/// How the backend answers `Start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Shares the node (as a user picking the screen would).
    Share,
    /// Response 1: the user cancelled the dialog.
    Cancel,
    /// Success with an empty stream list (the frontend turns this into a failure).
    NoStreams,
}

/// What the backend was asked so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub create_session: u32,
    pub select_sources: u32,
    pub start: u32,
    /// Starts without restore data: a real backend would have shown the user a picker.
    pub prompts: u32,
    /// Starts the frontend passed restore data for (a saved token): no picker.
    pub restored: u32,
    /// `Close` calls on the backend's session objects.
    pub closed: u32,
}

struct Shared {
    node_id: u32,
    size: (i32, i32),
    answer: Answer,
    counts: Counts,
    /// Per session handle: the persist mode and whether restore data came with SelectSources.
    selected: HashMap<String, (u32, bool)>,
    /// The cursor mode each SelectSources asked for.
    cursor_modes: Vec<u32>,
    /// Object paths of the sessions not closed yet.
    open_sessions: Vec<String>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

type Results = HashMap<String, OwnedValue>;

fn owned(value: Value<'_>) -> OwnedValue {
    // Only plain values are built here (no fds), which always convert.
    OwnedValue::try_from(value).unwrap_or_else(|_| OwnedValue::from(0u32))
}

struct ScreenCastBackend {
    shared: Arc<Mutex<Shared>>,
}

#[zbus::interface(name = "org.freedesktop.impl.portal.ScreenCast")]
impl ScreenCastBackend {
    async fn create_session(
        &self,
        _handle: OwnedObjectPath,
        session_handle: OwnedObjectPath,
        _app_id: String,
        _options: HashMap<String, OwnedValue>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
    ) -> (u32, Results) {
        {
            let mut shared = lock(&self.shared);
            shared.counts.create_session += 1;
            shared.open_sessions.push(session_handle.to_string());
        }
        let session = SessionBackend {
            shared: self.shared.clone(),
        };
        if server.at(session_handle, session).await.is_err() {
            return (2, Results::new());
        }
        (0, Results::new())
    }

    async fn select_sources(
        &self,
        _handle: OwnedObjectPath,
        session_handle: OwnedObjectPath,
        _app_id: String,
        options: HashMap<String, OwnedValue>,
    ) -> (u32, Results) {
        let persist = options
            .get("persist_mode")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0);
        let cursor = options
            .get("cursor_mode")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0);
        let restored = options.contains_key("restore_data");
        let mut shared = lock(&self.shared);
        shared.counts.select_sources += 1;
        shared.cursor_modes.push(cursor);
        shared
            .selected
            .insert(session_handle.to_string(), (persist, restored));
        (0, Results::new())
    }

    async fn start(
        &self,
        _handle: OwnedObjectPath,
        session_handle: OwnedObjectPath,
        _app_id: String,
        _parent_window: String,
        _options: HashMap<String, OwnedValue>,
    ) -> (u32, Results) {
        let mut shared = lock(&self.shared);
        shared.counts.start += 1;
        let (persist, restored) = shared
            .selected
            .get(session_handle.as_str())
            .copied()
            .unwrap_or((0, false));
        if restored {
            shared.counts.restored += 1;
        } else {
            shared.counts.prompts += 1;
        }
        let mut results = Results::new();
        match shared.answer {
            Answer::Cancel => return (1, results),
            Answer::NoStreams => {
                let none: Vec<(u32, HashMap<String, Value<'_>>)> = Vec::new();
                results.insert("streams".into(), owned(Value::from(none)));
                return (0, results);
            }
            Answer::Share => {}
        }
        let mut props: HashMap<String, Value<'_>> = HashMap::new();
        props.insert("size".into(), Value::from(shared.size));
        // 1: a monitor.
        props.insert("source_type".into(), Value::from(1u32));
        let streams = vec![(shared.node_id, props)];
        results.insert("streams".into(), owned(Value::from(streams)));
        if persist != 0 {
            results.insert("persist_mode".into(), owned(Value::from(persist)));
            // What a real backend would need to find the same monitor again.
            let data = ("lumen-test".to_string(), 1u32, Value::from(shared.node_id));
            results.insert("restore_data".into(), owned(Value::from(data)));
        }
        (0, results)
    }

    #[zbus(property)]
    fn available_source_types(&self) -> u32 {
        // Monitor | Window.
        3
    }

    #[zbus(property)]
    fn available_cursor_modes(&self) -> u32 {
        // Hidden | Embedded | Metadata.
        7
    }

    #[zbus(property, name = "version")]
    fn version(&self) -> u32 {
        4
    }
}

/// The backend's side of one session (`org.freedesktop.impl.portal.Session`): the frontend
/// closes it here when the app closes its session.
struct SessionBackend {
    shared: Arc<Mutex<Shared>>,
}

#[zbus::interface(name = "org.freedesktop.impl.portal.Session")]
impl SessionBackend {
    async fn close(
        &self,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) {
        let path = header.path().map(|p| p.to_owned());
        {
            let mut shared = lock(&self.shared);
            shared.counts.closed += 1;
            if let Some(path) = &path {
                shared.open_sessions.retain(|open| open != path.as_str());
            }
        }
        if let Some(path) = path {
            let _ = server.remove::<SessionBackend, _>(path).await;
        }
    }

    #[zbus(property, name = "version")]
    fn version(&self) -> u32 {
        1
    }
}

/// The node the backend shares.
#[derive(Clone, Copy, Debug)]
pub struct SharedNode {
    /// The PipeWire node id (`pw-dump`'s `id`).
    pub node_id: u32,
    pub width: i32,
    pub height: i32,
}

/// A running portal frontend with the test backend, on a [`PipeWireEnv`]'s bus.
pub struct PortalEnv {
    dir: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    connection: zbus::Connection,
    shared: Arc<Mutex<Shared>>,
    children: Vec<(String, Child)>,
}

impl PortalEnv {
    /// Starts the backend, the permission store and `xdg-desktop-portal` on `pipewire`'s bus,
    /// sharing `node`. `Ok(None)`: the portal is not installed and `CI` is not set.
    pub fn start(pipewire: &PipeWireEnv, node: SharedNode) -> Result<Option<PortalEnv>> {
        let (Some(portal), Some(store)) = (
            find_daemon("xdg-desktop-portal"),
            find_daemon("xdg-permission-store"),
        ) else {
            let why = "ScreenCast portal test environment unavailable: xdg-desktop-portal or \
                       xdg-permission-store not found (dist/install-deps.sh installs xdg-desktop-portal)";
            if std::env::var_os("CI").is_some() {
                bail!("{why}; CI is set, so this is a failure, not a skip");
            }
            eprintln!("SKIPPED: {why}");
            return Ok(None);
        };
        let dir = pipewire.runtime_dir().join("portal");
        let portals = dir.join("portals");
        std::fs::create_dir_all(&portals).context("creating the portal directory")?;
        std::fs::create_dir_all(dir.join("data")).context("creating the portal data home")?;
        std::fs::write(
            portals.join("lumentest.portal"),
            format!(
                "[portal]\nDBusName={BACKEND_NAME}\nInterfaces=org.freedesktop.impl.portal.ScreenCast;\nUseIn={DESKTOP}\n"
            ),
        )
        .context("writing the .portal file")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the backend's runtime")?;
        let shared = Arc::new(Mutex::new(Shared {
            node_id: node.node_id,
            size: (node.width, node.height),
            answer: Answer::Share,
            counts: Counts::default(),
            selected: HashMap::new(),
            cursor_modes: Vec::new(),
            open_sessions: Vec::new(),
        }));
        let address = format!("unix:path={}", pipewire.runtime_dir().join("bus").display());
        let connection = runtime
            .block_on(async {
                zbus::connection::Builder::address(address.as_str())?
                    .serve_at(
                        PORTAL_PATH,
                        ScreenCastBackend {
                            shared: shared.clone(),
                        },
                    )?
                    .name(BACKEND_NAME)?
                    .build()
                    .await
            })
            .context("serving the ScreenCast backend on the session bus")?;
        let mut env = PortalEnv {
            dir,
            runtime: Some(runtime),
            connection,
            shared,
            children: Vec::new(),
        };
        let mut store_cmd = env.command(pipewire, &store);
        store_cmd.arg("--replace");
        env.spawn("xdg-permission-store", store_cmd)?;
        env.wait_for_name("org.freedesktop.impl.portal.PermissionStore")?;
        let mut portal_cmd = env.command(pipewire, &portal);
        portal_cmd.args(["--replace", "--verbose"]);
        env.spawn("xdg-desktop-portal", portal_cmd)?;
        env.wait_for_name("org.freedesktop.portal.Desktop")?;
        env.wait_for_screencast()?;
        Ok(Some(env))
    }

    fn command(&self, pipewire: &PipeWireEnv, program: &Path) -> Command {
        let mut command = pipewire.command(&program.to_string_lossy());
        command
            .env("XDG_DESKTOP_PORTAL_DIR", self.dir.join("portals"))
            .env("XDG_CURRENT_DESKTOP", DESKTOP)
            .env("XDG_DATA_HOME", self.dir.join("data"))
            // No gvfs daemons here: plain local files.
            .env("GIO_USE_VFS", "local")
            .env("GSETTINGS_BACKEND", "memory");
        command
    }

    fn spawn(&mut self, label: &str, mut command: Command) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{label}.log")))
            .with_context(|| format!("creating the log of {label}"))?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        self.children.push((label.to_string(), child));
        Ok(())
    }

    fn block_on<T>(&self, future: impl std::future::Future<Output = T>) -> Result<T> {
        let runtime = self
            .runtime
            .as_ref()
            .context("the backend's runtime is gone")?;
        Ok(runtime.block_on(future))
    }

    fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (label, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                out.push(format!("{label} exited with {status}"));
            }
        }
        out
    }

    fn wait_for_name(&mut self, name: &str) -> Result<()> {
        let start = Instant::now();
        let bus_name = zbus::names::BusName::try_from(name.to_string())?;
        while start.elapsed() < APPEAR_TIMEOUT {
            let connection = self.connection.clone();
            let owned = self.block_on(async {
                let dbus = zbus::fdo::DBusProxy::new(&connection).await?;
                dbus.name_has_owner(bus_name.clone()).await
            })?;
            if owned.unwrap_or(false) {
                return Ok(());
            }
            let exited = self.exited();
            if !exited.is_empty() {
                bail!(
                    "waiting for {name}: {}; logs:\n{}",
                    exited.join(", "),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{name} did not appear within {APPEAR_TIMEOUT:?}; logs:\n{}",
            self.logs()
        )
    }

    /// The frontend exports ScreenCast only when it found the backend: check it did.
    fn wait_for_screencast(&mut self) -> Result<()> {
        let connection = self.connection.clone();
        let version = self.block_on(async {
            let proxy = zbus::Proxy::new(
                &connection,
                "org.freedesktop.portal.Desktop",
                PORTAL_PATH,
                "org.freedesktop.portal.ScreenCast",
            )
            .await?;
            proxy.get_property::<u32>("version").await
        })?;
        match version {
            Ok(_) => Ok(()),
            Err(e) => bail!(
                "xdg-desktop-portal runs but offers no ScreenCast portal ({e}); logs:\n{}",
                self.logs()
            ),
        }
    }

    /// The address of the session bus the portal is on.
    pub fn bus_address(&self) -> String {
        let bus = self.dir.parent().unwrap_or(&self.dir).join("bus");
        format!("unix:path={}", bus.display())
    }

    /// What the backend was asked so far.
    pub fn counts(&self) -> Counts {
        lock(&self.shared).counts.clone()
    }

    /// The cursor mode of every SelectSources so far (1 hidden, 2 embedded, 4 metadata).
    pub fn cursor_modes(&self) -> Vec<u32> {
        lock(&self.shared).cursor_modes.clone()
    }

    /// Ends every open session from the desktop's side (`Session.Closed`), as a user who stops
    /// sharing or a restarted compositor does; returns how many were closed.
    pub fn close_sessions(&self) -> Result<usize> {
        let paths = std::mem::take(&mut lock(&self.shared).open_sessions);
        let connection = self.connection.clone();
        let count = paths.len();
        self.block_on(async move {
            for path in paths {
                connection
                    .emit_signal(
                        None::<&str>,
                        path.as_str(),
                        "org.freedesktop.impl.portal.Session",
                        "Closed",
                        &(),
                    )
                    .await?;
            }
            zbus::Result::Ok(())
        })??;
        Ok(count)
    }

    /// How the backend answers the next `Start`s.
    pub fn set_answer(&self, answer: Answer) {
        lock(&self.shared).answer = answer;
    }

    /// The logs of the frontend and the permission store.
    pub fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(label, _)| {
                let log = std::fs::read_to_string(self.dir.join(format!("{label}.log")))
                    .unwrap_or_default();
                format!("--- {label}\n{log}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for PortalEnv {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) with plain integers; the pid is our own unreaped child, so it
                // cannot name another process.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// A PipeWire `Video/Source` node of one flat colour (BGRx), driven by a thread of the test
/// process: the screen the test backend shares.
///
/// GStreamer's `pipewiresink` (what [`PipeWireEnv::add_video_source`] uses) stops producing for
/// good once a consumer of it is SIGKILLed (checked with a killed `gst-launch-1.0 pipewiresrc`
/// too), and the portal test kills lumen-capture on purpose; this node keeps producing, as a
/// compositor's screen-cast stream does.
pub struct TestScreen {
    /// The node's id, as the portal hands it out.
    pub node_id: u32,
    stop: Option<pw::channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a [`TestScreen`] shows.
#[derive(Clone, Debug)]
pub struct ScreenSpec {
    /// `node.name` of the node.
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// 0xAARRGGBB.
    pub argb: u32,
}

impl TestScreen {
    /// Publishes the node on `pipewire` and waits until it is in the graph.
    pub fn start(pipewire: &mut PipeWireEnv, spec: &ScreenSpec) -> Result<TestScreen> {
        let fd = OwnedFd::from(pipewire.connect()?);
        let (stop, stop_rx) = pw::channel::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread_spec = spec.clone();
        let thread = std::thread::Builder::new()
            .name("test-screen".into())
            .spawn(move || {
                if let Err(e) = run_screen(fd, &thread_spec, stop_rx, &ready_tx) {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .context("starting the test screen's thread")?;
        let mut screen = TestScreen {
            node_id: 0,
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(APPEAR_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the test screen failed: {e}"),
            Err(e) => bail!("the test screen did not start: {e}"),
        }
        let node = pipewire.wait_for_node(&spec.name)?;
        screen.node_id = node["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .context("the screen node has no id")?;
        Ok(screen)
    }
}

impl Drop for TestScreen {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serialize(object: pw::spa::pod::Object) -> Result<Vec<u8>, String> {
    pw::spa::pod::serialize::PodSerializer::serialize(
        std::io::Cursor::new(Vec::new()),
        &pw::spa::pod::Value::Object(object),
    )
    .map(|(cursor, _)| cursor.into_inner())
    .map_err(|e| format!("building a pod: {e:?}"))
}

fn screen_format(spec: &ScreenSpec) -> pw::spa::pod::Object {
    use pw::spa::param::format::{FormatProperties, MediaSubtype, MediaType};
    use pw::spa::param::video::VideoFormat;
    use pw::spa::param::ParamType;
    use pw::spa::pod::{Object, Property, Value};
    use pw::spa::utils::{Fraction, Id, Rectangle, SpaTypes};
    Object {
        type_: SpaTypes::ObjectParamFormat.as_raw(),
        id: ParamType::EnumFormat.as_raw(),
        properties: vec![
            Property::new(
                FormatProperties::MediaType.as_raw(),
                Value::Id(Id(MediaType::Video.as_raw())),
            ),
            Property::new(
                FormatProperties::MediaSubtype.as_raw(),
                Value::Id(Id(MediaSubtype::Raw.as_raw())),
            ),
            Property::new(
                FormatProperties::VideoFormat.as_raw(),
                Value::Id(Id(VideoFormat::BGRx.as_raw())),
            ),
            Property::new(
                FormatProperties::VideoSize.as_raw(),
                Value::Rectangle(Rectangle {
                    width: spec.width,
                    height: spec.height,
                }),
            ),
            Property::new(
                FormatProperties::VideoFramerate.as_raw(),
                Value::Fraction(Fraction {
                    num: spec.fps,
                    denom: 1,
                }),
            ),
        ],
    }
}

fn screen_buffers(stride: u32, height: u32) -> pw::spa::pod::Object {
    use pw::spa::param::ParamType;
    use pw::spa::pod::{Object, Property, Value};
    use pw::spa::utils::SpaTypes;
    let int = |key: u32, value: i32| Property::new(key, Value::Int(value));
    let size = i32::try_from(stride * height).unwrap_or(i32::MAX);
    Object {
        type_: SpaTypes::ObjectParamBuffers.as_raw(),
        id: ParamType::Buffers.as_raw(),
        properties: vec![
            int(pw::spa::sys::SPA_PARAM_BUFFERS_buffers, 4),
            int(pw::spa::sys::SPA_PARAM_BUFFERS_blocks, 1),
            int(pw::spa::sys::SPA_PARAM_BUFFERS_size, size),
            int(
                pw::spa::sys::SPA_PARAM_BUFFERS_stride,
                i32::try_from(stride).unwrap_or(i32::MAX),
            ),
            int(
                pw::spa::sys::SPA_PARAM_BUFFERS_dataType,
                1 << pw::spa::sys::SPA_DATA_MemFd,
            ),
        ],
    }
}

/// The screen's thread: a driver stream that fills every buffer with the colour, woken by a
/// timer at the frame rate.
fn run_screen(
    fd: OwnedFd,
    spec: &ScreenSpec,
    stop: pw::channel::Receiver<()>,
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    use pw::properties::properties;
    pw::init();
    let err = |what: &str| {
        let what = what.to_string();
        move |e: pw::Error| format!("{what}: {e}")
    };
    let main_loop = pw::main_loop::MainLoopRc::new(None).map_err(err("main loop"))?;
    let context = pw::context::ContextRc::new(&main_loop, None).map_err(err("context"))?;
    let core = context.connect_fd_rc(fd, None).map_err(err("connecting"))?;
    let stream = pw::stream::StreamRc::new(
        core,
        &spec.name,
        properties! {
            *pw::keys::MEDIA_TYPE => "Video",
            *pw::keys::MEDIA_CLASS => "Video/Source",
            *pw::keys::NODE_NAME => spec.name.as_str(),
        },
    )
    .map_err(err("stream"))?;
    let stride = spec.width * 4;
    let height = spec.height;
    let [a, r, g, b] = spec.argb.to_be_bytes();
    let _ = a;
    let frame: Vec<u8> = [b, g, r, 0xff]
        .iter()
        .copied()
        .cycle()
        .take((stride * height) as usize)
        .collect();
    let buffers = serialize(screen_buffers(stride, height))?;
    let _listener = stream
        .add_local_listener_with_user_data(frame)
        .param_changed(move |stream, _, id, param| {
            if id != pw::spa::param::ParamType::Format.as_raw() || param.is_none() {
                return;
            }
            if let Some(pod) = pw::spa::pod::Pod::from_bytes(&buffers) {
                let _ = stream.update_params(&mut [pod]);
            }
        })
        .process(move |stream, frame| {
            let Some(mut buffer) = stream.dequeue_buffer() else {
                return;
            };
            if let Some(data) = buffer.datas_mut().first_mut() {
                let written = match data.data() {
                    Some(slice) => {
                        let n = slice.len().min(frame.len());
                        slice[..n].copy_from_slice(&frame[..n]);
                        n
                    }
                    None => 0,
                };
                let chunk = data.chunk_mut();
                *chunk.offset_mut() = 0;
                *chunk.stride_mut() = i32::try_from(stride).unwrap_or(i32::MAX);
                *chunk.size_mut() = u32::try_from(written).unwrap_or(0);
            }
        })
        .register()
        .map_err(err("stream listener"))?;
    let format = serialize(screen_format(spec))?;
    let format = pw::spa::pod::Pod::from_bytes(&format).ok_or("the format pod is malformed")?;
    stream
        .connect(
            pw::spa::utils::Direction::Output,
            None,
            pw::stream::StreamFlags::DRIVER | pw::stream::StreamFlags::MAP_BUFFERS,
            &mut [format],
        )
        .map_err(err("connecting the stream"))?;
    let timer = main_loop.loop_().add_timer({
        let stream = stream.clone();
        move |_| {
            // Fails harmlessly until the stream is linked and driving. (The safe wrapper needs
            // a pipewire feature the workspace does not enable.)
            // SAFETY: the stream pointer is live for as long as `stream` (moved into this
            // closure) is, and this runs on the loop's own thread, where PipeWire expects it.
            let _ = unsafe { pw::sys::pw_stream_trigger_process(stream.as_raw_ptr()) };
        }
    });
    let interval = Duration::from_nanos(1_000_000_000 / u64::from(spec.fps.max(1)));
    let _ = timer.update_timer(Some(interval), Some(interval));
    let _stop = stop.attach(main_loop.loop_(), {
        let main_loop = main_loop.clone();
        move |()| main_loop.quit()
    });
    let _ = ready.send(Ok(()));
    main_loop.run();
    Ok(())
}
