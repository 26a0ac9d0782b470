//! Helpers shared by the whole-system tests in `tests/tests/`: finding the built binaries, a scratch
//! directory, and a running `lumen-broker serve` that is stopped (and checked for leftovers) on drop.

pub mod eis_server;
pub mod flood;
pub mod media;
pub mod moonlight;
pub mod netns;
pub mod pipewire_env;
pub mod portal_env;
pub mod restarts;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Directory holding `lumen-broker` and the worker binaries of this build (`target/<profile>`).
pub fn bin_dir() -> Result<PathBuf> {
    // Test executables live in target/<profile>/deps/, the binaries one level up; a benchmark
    // binary of this crate lives beside them.
    let exe = std::env::current_exe().context("current_exe")?;
    let parent = exe.parent().context("executable has no directory")?;
    let dir = if parent.join("lumen-broker").is_file() {
        parent.to_path_buf()
    } else {
        parent
            .parent()
            .context("test executable has no grandparent directory")?
            .to_path_buf()
    };
    for name in [
        "lumen-broker",
        "lumen-net",
        "lumen-capture",
        "lumen-encode",
        "lumen-input",
    ] {
        if !dir.join(name).is_file() {
            bail!(
                "{} is missing: build the binaries first (`cargo build --workspace --bins`, as tests/run.sh does)",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

/// Path of one built binary.
pub fn bin(name: &str) -> Result<PathBuf> {
    Ok(bin_dir()?.join(name))
}

/// A scratch directory removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Result<ScratchDir> {
        let base = std::env::temp_dir();
        for attempt in 0..100u32 {
            let path = base.join(format!("lumen-test-{tag}-{}-{attempt}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(ScratchDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).context("creating scratch dir"),
            }
        }
        bail!(
            "could not create a scratch directory under {}",
            base.display()
        )
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port base no other test of this run uses: tests in one binary run in parallel threads, and test
/// binaries run one after another, so the pid and a per-process counter keep them apart. Every port
/// (base − 5 ..= base + 21) stays below 32768, where the kernel's ephemeral ports begin: a client
/// connection of an earlier test can hold any port above it for a while.
pub fn unique_port_base() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) % 8;
    // Slots are 40 apart: 36 × 8 slots end at 20 005 + 287 × 40 + 21 = 31 506.
    let per_process = (std::process::id() % 36) as u16;
    20_000 + (per_process * 8 + slot) * 40 + 5
}

/// A `lumen-broker serve` started for one test, on loopback, with its own state dir.
pub struct Broker {
    child: Option<Child>,
    pub state_dir: ScratchDir,
    pub port_base: u16,
}

impl Broker {
    /// Starts a broker and waits until every worker reports running.
    pub fn start(tag: &str) -> Result<Broker> {
        Broker::start_with_config(tag, "")
    }

    /// Starts a broker whose state dir holds `config` as `config.toml`, with `env` added to its
    /// environment, and waits until every worker reports running.
    pub fn start_with_config(tag: &str, config: &str) -> Result<Broker> {
        Broker::start_with(tag, config, &[])
    }

    /// [`Broker::start_with_config`] with extra environment variables.
    pub fn start_with(tag: &str, config: &str, env: &[(&str, &str)]) -> Result<Broker> {
        // A port of the chosen base may be held by something outside this run (another
        // program, a lingering connection): a broker that exits at start is tried again on the
        // next base, with a fresh state dir.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let state_dir = ScratchDir::new(tag)?;
            std::fs::write(state_dir.path().join("config.toml"), config)
                .context("writing config.toml")?;
            let port_base = unique_port_base();
            let child = Command::new(bin("lumen-broker")?)
                .envs(env.iter().copied())
                .arg("--state-dir")
                .arg(state_dir.path())
                .args(["serve", "--bind", "127.0.0.1", "--port-base"])
                .arg(port_base.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting lumen-broker serve")?;
            let child = forward_output(child, "lumen-broker");
            let mut broker = Broker {
                child: Some(child),
                state_dir,
                port_base,
            };
            let started = broker.wait_until_or_exit(Duration::from_secs(30), |status| {
                all_workers_running(status)
            })?;
            match started {
                Some(_) => return Ok(broker),
                None if attempts < 4 => eprintln!(
                    "lumen-tests: the broker on port base {port_base} exited at start; trying \
                     another port base"
                ),
                None => bail!("lumen-broker serve exited at start {attempts} times"),
            }
        }
    }

    /// Like [`Broker::wait_until`] for "all workers running", but `None` as soon as the broker
    /// process has exited (e.g. it could not bind its ports).
    fn wait_until_or_exit(
        &mut self,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Result<Option<Value>> {
        let start = Instant::now();
        let mut last = Err(anyhow::anyhow!("no status read yet"));
        while start.elapsed() < timeout {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait()?.is_some() {
                    self.child = None;
                    return Ok(None);
                }
            }
            last = self.status();
            if let Ok(status) = &last {
                if ready(status) {
                    return Ok(Some(status.clone()));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("timed out after {timeout:?} waiting for all workers running; last status: {last:?}")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Runs `lumen-broker --state-dir DIR <args>` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(bin("lumen-broker")?)
            .arg("--state-dir")
            .arg(self.state_dir.path())
            .args(args)
            .output()
            .context("running lumen-broker CLI")
    }

    /// `lumen-broker status --json`, parsed.
    pub fn status(&self) -> Result<Value> {
        status_json(&self.cli(&["status", "--json"])?)
    }

    /// Polls `status --json` until `ready` holds or `timeout` passes.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let start = Instant::now();
        let mut last = Err(anyhow::anyhow!("no status read yet"));
        while start.elapsed() < timeout {
            last = self.status();
            if let Ok(status) = &last {
                if ready(status) {
                    return Ok(status.clone());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("timed out after {timeout:?} waiting for {what}; last status: {last:?}")
    }

    /// Sends SIGTERM and waits for the broker to exit; returns how long it took.
    pub fn terminate(&mut self) -> Result<Duration> {
        let Some(mut child) = self.child.take() else {
            bail!("broker already stopped")
        };
        let start = Instant::now();
        signal(child.id(), libc::SIGTERM)?;
        loop {
            if let Some(status) = child.try_wait()? {
                let took = start.elapsed();
                if !status.success() {
                    bail!("broker exited with {status} after SIGTERM");
                }
                return Ok(took);
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("broker did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), libc::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `workers` array of a status document.
pub fn workers(status: &Value) -> Vec<&Value> {
    status["workers"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The status entry of one worker kind ("Net", "Capture", "Encode", "Input").
pub fn worker<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    workers(status).into_iter().find(|w| w["kind"] == kind)
}

/// True when all four workers are running with a pid and a sandbox report.
pub fn all_workers_running(status: &Value) -> bool {
    ["Net", "Capture", "Encode", "Input"].iter().all(|kind| {
        worker(status, kind).is_some_and(|w| {
            w["state"] == "running" && w["pid"].as_u64().is_some() && !w["sandbox"].is_null()
        })
    })
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) -> Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// True while `/proc/PID` exists and the process is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && (l.contains("zombie") || l.contains("dead"))),
        Err(_) => false,
    }
}

/// One field of `/proc/PID/status` (e.g. "Seccomp", "NoNewPrivs", "CapEff", "Uid").
pub fn proc_status_field(pid: u32, field: &str) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let prefix = format!("{field}:");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
        .with_context(|| format!("/proc/{pid}/status has no {field} line"))
}

/// The network namespace of a process, as the `/proc/PID/ns/net` link target.
pub fn net_namespace(pid: &str) -> Result<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("reading /proc/{pid}/ns/net"))?;
    Ok(link.display().to_string())
}

/// Makes `command` start its child with `channel` on fd 3 ([`lumen_ipc::msg::CHANNEL_FD`]), where
/// a worker looks for its control channel, as the broker's spawn does. `dup2` clears
/// close-on-exec on the copy, but when `channel` already is fd 3 (it is whenever fd 3 was free
/// when the test made the pair, as under `tests/run.sh`) `dup2` does nothing: close-on-exec must
/// then be cleared by hand, or the worker starts without its channel.
pub fn pass_channel_as_fd3(command: &mut Command, channel: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    let target = lumen_ipc::msg::CHANNEL_FD;
    // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
    // calls (fcntl, dup2) on fd numbers.
    unsafe {
        command.pre_exec(move || {
            let failed = if channel == target {
                libc::fcntl(channel, libc::F_SETFD, 0) < 0
            } else {
                libc::dup2(channel, target) < 0
            };
            if failed {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The output of `lumen-broker status --json`, parsed (a failed command's stderr is the error).
pub fn status_json(out: &std::process::Output) -> Result<Value> {
    if !out.status.success() {
        bail!(
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("status --json is not JSON")
}

/// Forwards `child`'s piped stdout and stderr with [`forward_lines`]: what a broker logs then shows
/// with the test that started it, when it fails, instead of flooding the run's output (CI's log
/// keeps only part of it, which should be the failures).
pub fn forward_output(mut child: Child, name: &'static str) -> Child {
    if let Some(out) = child.stdout.take() {
        forward_lines(out, name);
    }
    if let Some(err) = child.stderr.take() {
        forward_lines(err, name);
    }
    child
}

/// Copies a child's output to this test's stderr, line by line, from a thread of its own (the
/// test harness shows it with a failing test). Use it instead of inheriting stderr for a sandboxed
/// worker: workers may not grow files (RLIMIT_FSIZE 0), so writing to an inherited stderr that is
/// a regular file, as in CI's log, kills them with SIGXFSZ.
pub fn forward_lines(output: impl std::io::Read + Send + 'static, name: &'static str) {
    use std::io::BufRead;
    std::thread::spawn(move || {
        // Bytes, not `lines()`: a line that is not UTF-8 must not stop the copying, or the child
        // would block on a full pipe.
        let mut reader = std::io::BufReader::new(output);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&line);
            eprintln!("[{name}] {}", text.trim_end_matches('\n'));
            line.clear();
        }
    });
}
