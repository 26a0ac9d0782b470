//! A private, headless PipeWire for one test: its own `XDG_RUNTIME_DIR` (mode 0700), a session
//! D-Bus, `pipewire`, `wireplumber`, GStreamer test sources published as PipeWire nodes (video
//! from `videotestsrc`, sound from `audiotestsrc` played into the default sink) and null audio
//! nodes. Every
//! process it starts is killed and reaped on drop, and the directory removed.
//!
//! Without the binaries (`dist/install-deps.sh` installs them) [`PipeWireEnv::start`] returns
//! `Ok(None)` after printing why, so a developer machine without PipeWire skips; when the `CI`
//! variable is set a missing binary is an error instead, so CI can never pass by skipping.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Programs the environment runs.
pub const BINARIES: &[&str] = &[
    "dbus-daemon",
    "pipewire",
    "wireplumber",
    "gst-launch-1.0",
    "pw-dump",
    "pw-cli",
];

/// How long to wait for a daemon's socket or a node to appear.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(20);

/// A video test source (GStreamer `videotestsrc is-live=true`).
#[derive(Debug, Clone)]
pub struct VideoSource {
    /// `node.name` of the node.
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// GStreamer / PipeWire format name: "BGRx", "RGBx", "BGRA", "NV12", ...
    pub format: String,
    /// A solid colour (0xAARRGGBB) instead of the moving test pattern, for checking pixels.
    pub solid_argb: Option<u32>,
}

/// A named audio source node carrying a sine: a virtual source with an `audiotestsrc` playing
/// into it (see [`PipeWireEnv::add_audio_source`]).
#[derive(Debug, Clone)]
pub struct AudioSource {
    /// `node.name` of the source node.
    pub name: String,
    /// 1 or 2.
    pub channels: u32,
    /// Rate of the sine's player (PipeWire resamples it to the graph's rate).
    pub rate: u32,
    pub freq_hz: u32,
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The binaries of [`BINARIES`] that are not on `PATH`.
pub fn missing_binaries() -> Vec<&'static str> {
    BINARIES
        .iter()
        .copied()
        .filter(|b| find_in_path(b).is_none())
        .collect()
}

/// A running private PipeWire.
pub struct PipeWireEnv {
    dir: PathBuf,
    /// Started processes, in start order (stopped in reverse).
    children: Vec<(String, Child)>,
}

impl PipeWireEnv {
    /// Starts D-Bus, PipeWire and WirePlumber in a fresh runtime directory. `Ok(None)`: the
    /// binaries are missing and `CI` is not set (the reason is printed).
    pub fn start() -> Result<Option<PipeWireEnv>> {
        let missing = missing_binaries();
        if !missing.is_empty() {
            let why = format!(
                "PipeWire test environment unavailable: {} not found (dist/install-deps.sh installs them)",
                missing.join(", ")
            );
            if std::env::var_os("CI").is_some() {
                bail!("{why}; CI is set, so this is a failure, not a skip");
            }
            eprintln!("SKIPPED: {why}");
            return Ok(None);
        }
        let dir = make_runtime_dir()?;
        let mut env = PipeWireEnv {
            dir,
            children: Vec::new(),
        };
        let bus = env.dir.join("bus");
        env.spawn(
            "dbus-daemon",
            Command::new("dbus-daemon").args([
                "--session",
                "--nofork",
                "--nopidfile",
                &format!("--address=unix:path={}", bus.display()),
            ]),
        )?;
        env.wait_for_path(&bus)?;
        env.spawn("pipewire", &mut Command::new("pipewire"))?;
        env.wait_for_path(&env.socket())?;
        env.spawn("wireplumber", &mut Command::new("wireplumber"))?;
        // WirePlumber has loaded its policy once its export client is connected.
        env.wait_until("wireplumber", |objects| {
            objects.iter().any(|o| {
                o["type"] == "PipeWire:Interface:Client"
                    && o["info"]["props"]["application.name"] == "WirePlumber [export]"
            })
        })?;
        Ok(Some(env))
    }

    /// The runtime directory (`XDG_RUNTIME_DIR` of every process started here).
    pub fn runtime_dir(&self) -> &Path {
        &self.dir
    }

    /// The PipeWire socket, `$XDG_RUNTIME_DIR/pipewire-0`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("pipewire-0")
    }

    /// A fresh connection to the PipeWire socket (what the broker hands a capture worker).
    pub fn connect(&self) -> Result<UnixStream> {
        UnixStream::connect(self.socket())
            .with_context(|| format!("connecting to {}", self.socket().display()))
    }

    /// A command with this environment's variables (for pw-cli, pw-dump, gst-launch-1.0, ...).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("XDG_RUNTIME_DIR", &self.dir)
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                format!("unix:path={}", self.dir.join("bus").display()),
            )
            .env("XDG_STATE_HOME", self.dir.join("state"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env_remove("PIPEWIRE_REMOTE")
            .env_remove("PIPEWIRE_RUNTIME_DIR")
            .stdin(Stdio::null());
        command
    }

    fn spawn(&mut self, label: &str, command: &mut Command) -> Result<()> {
        let program = command.get_program().to_owned();
        let mut full = self.command(&program.to_string_lossy());
        full.args(command.get_args());
        let log = std::fs::File::create(self.dir.join(format!("{label}.log")))
            .with_context(|| format!("creating the log of {label}"))?;
        full.stdout(log.try_clone()?).stderr(log);
        let child = full
            .spawn()
            .with_context(|| format!("starting {}", program.to_string_lossy()))?;
        self.children.push((label.to_string(), child));
        Ok(())
    }

    /// Stops the process started under `label` (a source's node name, "pipewire", ...): its
    /// nodes disappear from the graph. Errors when no such process runs.
    pub fn stop(&mut self, label: &str) -> Result<()> {
        let index = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .with_context(|| format!("no process {label:?} runs here"))?;
        let (_, child) = self.children.remove(index);
        stop_child(child);
        Ok(())
    }

    /// The log a started process wrote (stdout and stderr), for failure messages.
    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{label}.log"))).unwrap_or_default()
    }

    /// Every started process that has already exited, with its status.
    fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (label, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                out.push(format!("{label} exited with {status}"));
            }
        }
        out
    }

    fn wait_for_path(&mut self, path: &Path) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < APPEAR_TIMEOUT {
            if path.exists() {
                return Ok(());
            }
            let exited = self.exited();
            if !exited.is_empty() {
                bail!(
                    "waiting for {}: {}; logs:\n{}",
                    path.display(),
                    exited.join(", "),
                    self.all_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} did not appear within {APPEAR_TIMEOUT:?}; logs:\n{}",
            path.display(),
            self.all_logs()
        )
    }

    fn all_logs(&self) -> String {
        self.children
            .iter()
            .map(|(label, _)| format!("--- {label}\n{}", self.log(label)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `pw-dump` of the whole graph.
    pub fn dump(&self) -> Result<Vec<Value>> {
        let out = self
            .command("pw-dump")
            .output()
            .context("running pw-dump")?;
        if !out.status.success() {
            bail!(
                "pw-dump failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let value: Value = serde_json::from_slice(&out.stdout).context("pw-dump is not JSON")?;
        Ok(value.as_array().cloned().unwrap_or_default())
    }

    /// Polls `pw-dump` until `ready` holds for the graph.
    pub fn wait_until(&mut self, what: &str, ready: impl Fn(&[Value]) -> bool) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < APPEAR_TIMEOUT {
            match self.dump() {
                Ok(objects) if ready(&objects) => return Ok(()),
                Ok(_) => {}
                Err(e) => last = e.to_string(),
            }
            let exited = self.exited();
            if !exited.is_empty() {
                bail!(
                    "waiting for {what}: {}; logs:\n{}",
                    exited.join(", "),
                    self.all_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{what} did not appear within {APPEAR_TIMEOUT:?} ({last}); logs:\n{}",
            self.all_logs()
        )
    }

    /// Waits until a node named `name` exists; returns its `pw-dump` object.
    pub fn wait_for_node(&mut self, name: &str) -> Result<Value> {
        self.wait_until(&format!("node {name:?}"), |objects| {
            find_node(objects, name).is_some()
        })?;
        find_node(&self.dump()?, name).with_context(|| format!("node {name:?} vanished"))
    }

    /// Publishes a live `videotestsrc` as a `Video/Source` node and waits for it.
    pub fn add_video_source(&mut self, source: &VideoSource) -> Result<Value> {
        let pattern = match source.solid_argb {
            Some(argb) => format!("pattern=solid-color foreground-color={argb}"),
            None => "pattern=smpte".to_string(),
        };
        let pipeline = format!(
            "videotestsrc is-live=true {pattern} ! video/x-raw,format={},width={},height={},framerate={}/1 ! \
             pipewiresink mode=provide stream-properties=\"p,media.class=Video/Source,media.type=Video,node.name={}\"",
            source.format, source.width, source.height, source.fps, source.name
        );
        self.spawn_gst(&source.name, &pipeline)?;
        self.wait_for_node(&source.name)
    }

    /// Publishes a source node named `source.name` that carries an `audiotestsrc` sine: a virtual
    /// source with the sine's player linked into it. (GStreamer's `pipewiresink mode=provide`
    /// would be simpler, but as an audio source it delivers one quantum and stalls.)
    pub fn add_audio_source(&mut self, source: &AudioSource) -> Result<Value> {
        let positions: &[&str] = match source.channels {
            1 => &["MONO"],
            2 => &["FL", "FR"],
            n => bail!("an audio test source has 1 or 2 channels, not {n}"),
        };
        let node = self.create_null_node_at(&source.name, "Audio/Source/Virtual", positions)?;
        let player = format!("{}-player", source.name);
        let pipeline = format!(
            "audiotestsrc is-live=true wave=sine freq={} ! audio/x-raw,format=F32LE,rate={},channels={} ! \
             pipewiresink stream-properties=\"p,node.name={player},node.autoconnect=false\"",
            source.freq_hz, source.rate, source.channels
        );
        self.spawn_gst(&player, &pipeline)?;
        let player_node = self.wait_for_node(&player)?;
        let (from, to) = (player_node["id"].clone(), node["id"].clone());
        for position in positions {
            // WirePlumber may have linked them already; the wait below is what counts.
            let _ = self
                .command("pw-link")
                .args([
                    format!("{player}:output_{position}"),
                    format!("{}:input_{position}", source.name),
                ])
                .output();
        }
        let wanted = positions.len();
        self.wait_until(
            &format!("{player} linked into {}", source.name),
            |objects| {
                objects
                    .iter()
                    .filter(|o| {
                        o["type"] == "PipeWire:Interface:Link"
                            && o["info"]["output-node-id"] == from
                            && o["info"]["input-node-id"] == to
                    })
                    .count()
                    >= wanted
            },
        )?;
        Ok(node)
    }

    /// Creates a virtual audio source named `name` (a null node of class `Audio/Source/Virtual`,
    /// driven by its own timer; it carries silence). GStreamer's `pipewiresink mode=provide` is no
    /// use for audio here: as a source it delivers one quantum and stalls.
    pub fn add_virtual_source(&mut self, name: &str) -> Result<Value> {
        self.create_null_node(name, "Audio/Source/Virtual")
    }

    /// Creates a null audio sink (which becomes the default sink when it is the only one).
    pub fn add_null_sink(&mut self, name: &str) -> Result<Value> {
        self.create_null_node(name, "Audio/Sink")
    }

    fn create_null_node(&mut self, name: &str, class: &str) -> Result<Value> {
        self.create_null_node_at(name, class, &["FL", "FR"])
    }

    fn create_null_node_at(
        &mut self,
        name: &str,
        class: &str,
        positions: &[&str],
    ) -> Result<Value> {
        let positions = positions.join(" ");
        let out = self
            .command("pw-cli")
            .args([
                "create-node",
                "adapter",
                &format!(
                    "{{ factory.name=support.null-audio-sink node.name={name} media.class={class} \
                     object.linger=true audio.position=[ {positions} ] }}"
                ),
            ])
            .output()
            .context("running pw-cli create-node")?;
        if !out.status.success() {
            bail!(
                "pw-cli create-node failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.wait_for_node(name)
    }

    /// Plays a sine into the default sink (a playback stream named `name`), so the sink's monitor
    /// carries sound.
    pub fn add_player(&mut self, name: &str, freq_hz: u32) -> Result<Value> {
        let pipeline = format!(
            "audiotestsrc is-live=true wave=sine freq={freq_hz} ! audio/x-raw,format=F32LE,rate=48000,channels=2 ! \
             pipewiresink stream-properties=\"p,node.name={name},media.role=Music\""
        );
        self.spawn_gst(name, &pipeline)?;
        self.wait_for_node(name)
    }

    fn spawn_gst(&mut self, label: &str, pipeline: &str) -> Result<()> {
        let mut command = Command::new("gst-launch-1.0");
        command.arg("-q");
        // gst-launch parses its own argument list; split on whitespace outside quotes.
        command.args(split_pipeline(pipeline));
        self.spawn(label, &mut command)
    }
}

/// Splits a gst-launch description into arguments, keeping double-quoted parts whole (quotes
/// removed), as a shell would.
fn split_pipeline(pipeline: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in pipeline.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    args.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        args.push(current);
    }
    args
}

/// The `pw-dump` object of the node named `name`.
pub fn find_node(objects: &[Value], name: &str) -> Option<Value> {
    objects
        .iter()
        .find(|o| o["type"] == "PipeWire:Interface:Node" && o["info"]["props"]["node.name"] == name)
        .cloned()
}

fn make_runtime_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let path = base.join(format!("lumen-pw-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                    .context("chmod 0700 of the runtime directory")?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("creating the runtime directory"),
        }
    }
    bail!(
        "could not create a runtime directory under {}",
        base.display()
    )
}

/// Asks a child to stop (SIGTERM), kills it after 3 s, and reaps it.
fn stop_child(mut child: Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with plain integers; the pid is our own unreaped child, so it cannot
        // name another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PipeWireEnv {
    fn drop(&mut self) {
        // Sources first, daemons last.
        while let Some((_, child)) = self.children.pop() {
            stop_child(child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_split_like_a_shell() {
        assert_eq!(
            split_pipeline("a b=1 ! c p=\"x,y=z w\" !  d"),
            vec!["a", "b=1", "!", "c", "p=x,y=z w", "!", "d"]
        );
    }
}
