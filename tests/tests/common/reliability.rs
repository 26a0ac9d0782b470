//! Helpers of the crash and hostile-worker tests (`reliability_*.rs`, `security_net_memory.rs`): a
//! copy of the binary directory in which one worker can be swapped for another program (the broker
//! runs the workers it finds next to itself), and a `lumen-broker serve` on a state dir the test
//! keeps, whose log is kept in a file and which the test may SIGKILL.
//!
//! Included by the tests that use it (`#[path = "common/reliability.rs"] mod reliability;`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use lumen_tests::{bin, signal, unique_port_base, ScratchDir};

/// The broker and worker binaries, linked (or copied) into a scratch directory.
pub struct BinCopy {
    dir: ScratchDir,
}

impl BinCopy {
    /// Links `lumen-broker` and the four workers into a new directory; each `(worker binary name,
    /// program)` in `swap` is linked under that name instead of the real worker.
    pub fn new(tag: &str, swap: &[(&str, &Path)]) -> Result<BinCopy> {
        let dir = ScratchDir::new(tag)?;
        for name in [
            "lumen-broker",
            "lumen-net",
            "lumen-capture",
            "lumen-encode",
            "lumen-input",
        ] {
            let source = match swap.iter().find(|(swapped, _)| *swapped == name) {
                Some((_, program)) => program.to_path_buf(),
                None => bin(name)?,
            };
            let target = dir.path().join(name);
            // A hard link is instant and keeps /proc/self/exe inside this directory (a symlink
            // would resolve back to target/); copy when the link crosses file systems.
            if std::fs::hard_link(&source, &target).is_err() {
                std::fs::copy(&source, &target).with_context(|| {
                    format!("copying {} to {}", source.display(), target.display())
                })?;
            }
        }
        // Workers run as an unprivileged uid when the broker is root: let them read the directory.
        set_mode(dir.path(), 0o755)?;
        Ok(BinCopy { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates `name` in the directory, writable by every uid (a hostile worker's log).
    pub fn world_writable_file(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        set_mode(&path, 0o666)?;
        Ok(path)
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// A `lumen-broker serve` run from a given binary directory on a given state dir.
pub struct Serve {
    child: Option<Child>,
    broker: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    pub port_base: u16,
}

impl Serve {
    /// Starts `<bin_dir>/lumen-broker --state-dir STATE serve` on loopback, its output appended to
    /// `log`. Returns at once; wait with [`Serve::wait_until`] or [`Serve::wait_for_control`].
    pub fn spawn(bin_dir: &Path, state_dir: &Path, log: &Path) -> Result<Serve> {
        let broker = bin_dir.join("lumen-broker");
        let port_base = unique_port_base();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().context("dup of the log file")?;
        let child = Command::new(&broker)
            .env("RUST_LOG", "info")
            .arg("--state-dir")
            .arg(state_dir)
            .args(["serve", "--bind", "127.0.0.1", "--port-base"])
            .arg(port_base.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", broker.display()))?;
        Ok(Serve {
            child: Some(child),
            broker,
            state_dir: state_dir.to_path_buf(),
            log: log.to_path_buf(),
            port_base,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `lumen-broker --state-dir DIR <args>`.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(&self.broker)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .output()
            .context("running the lumen-broker CLI")
    }

    /// The CLI of this broker as a closure another thread can run (see [`Serve::cli`]).
    pub fn cli_command(&self) -> impl Fn(&[&str]) -> Result<std::process::Output> + Send + 'static {
        let broker = self.broker.clone();
        let state_dir = self.state_dir.clone();
        move |args| {
            Command::new(&broker)
                .arg("--state-dir")
                .arg(&state_dir)
                .args(args)
                .output()
                .context("running the lumen-broker CLI")
        }
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> Result<Value> {
        lumen_tests::status_json(&self.cli(&["status", "--json"])?)
    }

    /// Polls `status --json` until `ready` holds; fails early if the broker exits.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let start = Instant::now();
        let mut last = Err(anyhow::anyhow!("no status read yet"));
        while start.elapsed() < timeout {
            if let Some(child) = self.child.as_mut() {
                if let Some(exit) = child.try_wait()? {
                    bail!(
                        "the broker exited ({exit}) while waiting for {what}; log:\n{}",
                        tail(&self.log(), 40)
                    );
                }
            }
            last = self.status();
            if let Ok(status) = &last {
                if ready(status) {
                    return Ok(status.clone());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "timed out after {timeout:?} waiting for {what}; last status: {last:?}; log:\n{}",
            tail(&self.log(), 40)
        )
    }

    /// Kills the broker with SIGKILL and reaps it.
    pub fn sigkill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("broker already stopped")
        };
        signal(child.id(), libc::SIGKILL)?;
        child.wait().context("reaping the broker")?;
        Ok(())
    }

    /// Whether the broker process has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for Serve {
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

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A small deterministic random source (xorshift64*), seeded by the caller, for kill timings and
/// scribbles that a failing run can repeat.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A seed from the environment (`LUMEN_TEST_SEED`) or the clock; tests print it.
pub fn seed() -> u64 {
    std::env::var("LUMEN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}
