//! The `lumen-broker` binary as a user runs it: CLI errors, config errors, `--state-dir`, the
//! control socket, the host identity across restarts, the client store, `pair` and `unpair`.
//! The tests that run `serve` need the worker binaries next to `lumen-broker`
//! (`cargo build --workspace --bins`); without them `serve` fails and says which one is missing.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const BROKER: &str = env!("CARGO_BIN_EXE_lumen-broker");

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "lumen-cli-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(BROKER)
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port base of its own for each test (same layout idea as the whole-system tests, another range).
fn port_base(slot: u16) -> u16 {
    let per_process = (std::process::id() % 100) as u16;
    10_000 + (per_process * 16 + slot) * 30 + 5
}

/// A running `serve`, stopped with SIGTERM on drop.
struct Served {
    child: Option<Child>,
}

impl Served {
    fn start(dir: &Path, slot: u16, env: &[(&str, &str)]) -> Served {
        let child = Command::new(BROKER)
            .arg("--state-dir")
            .arg(dir)
            .args(["serve", "--bind", "127.0.0.1", "--port-base"])
            .arg(port_base(slot).to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut served = Served { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if cli(dir, &["status", "--json"]).status.success() {
                return served;
            }
            if let Some(status) = served.child.as_mut().unwrap().try_wait().unwrap() {
                served.child = None;
                panic!("serve exited early with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "broker did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the time it took to exit and its status.
    fn stop(&mut self) -> (Duration, std::process::ExitStatus) {
        let mut child = self.child.take().expect("running");
        let pid = i32::try_from(child.id()).unwrap();
        // SAFETY: kill(2) takes plain integers; the pid is our own unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (start.elapsed(), status);
            }
            if start.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("broker still running 5 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

fn status_json(dir: &Path) -> serde_json::Value {
    let out = cli(dir, &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_without_a_broker_is_one_clear_line_and_fails() {
    let dir = Scratch::new("nobroker");
    let out = cli(&dir.0, &["status"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(
        err,
        format!(
            "lumen-broker: no broker is running (no control socket at {})\n",
            dir.0.join("control.sock").display()
        )
    );
}

#[test]
fn a_bad_pin_is_refused_before_anything_else() {
    let dir = Scratch::new("badpin");
    for pin in ["123", "12345", "abcd"] {
        let out = cli(&dir.0, &["pair", pin]);
        assert!(!out.status.success());
        assert_eq!(
            stderr(&out),
            "lumen-broker: the PIN must be the 4 digits Moonlight shows\n"
        );
    }
}

#[test]
fn a_malformed_config_names_the_file_and_line() {
    let dir = Scratch::new("config");
    std::fs::write(
        dir.0.join("config.toml"),
        "port_base = 40000\nbnd = \"x\"\n",
    )
    .unwrap();
    let out = cli(&dir.0, &["serve"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let want = format!("{} line 2:", dir.0.join("config.toml").display());
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("bnd"), "{err}");
    // Nothing was left listening.
    assert!(!dir.0.join("control.sock").exists());
}

#[test]
fn state_dir_before_or_after_the_subcommand_socket_mode_and_one_broker_per_dir() {
    let dir = Scratch::new("statedir");
    let mut served = Served::start(&dir.0, 0, &[]);
    let socket = dir.0.join("control.sock");
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let state_mode = std::fs::metadata(dir.0.join("state"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o777, 0o700);

    let before = cli(&dir.0, &["status", "--json"]);
    let after = Command::new(BROKER)
        .args(["status", "--json", "--state-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(before.status.success() && after.status.success());
    let a: serde_json::Value = serde_json::from_slice(&before.stdout).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(a["uniqueid"], b["uniqueid"]);
    for field in ["workers", "ports", "sessions", "streams", "problems"] {
        assert!(a[field].is_array(), "{field} missing: {a}");
    }
    // The six GameStream sockets plus mDNS (on by default).
    assert_eq!(a["ports"].as_array().unwrap().len(), 7, "{a}");

    let table = stdout(&cli(&dir.0, &["status"]));
    assert!(table.contains("sessions: none"), "{table}");
    assert!(table.contains(a["uniqueid"].as_str().unwrap()), "{table}");

    // A second broker on the same state dir refuses and leaves the first one's socket alone.
    let second = Command::new(BROKER)
        .arg("--state-dir")
        .arg(&dir.0)
        .args(["serve", "--bind", "127.0.0.1", "--port-base"])
        .arg(port_base(1).to_string())
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("another broker is already running"),
        "{}",
        stderr(&second)
    );
    assert!(cli(&dir.0, &["status"]).status.success());

    let (took, status) = served.stop();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
    assert!(!socket.exists(), "socket left behind");
}

#[test]
fn identity_is_made_once_and_survives_restarts_and_a_stale_socket() {
    let dir = Scratch::new("identity");
    let first = {
        let _served = Served::start(&dir.0, 2, &[]);
        status_json(&dir.0)["uniqueid"].clone()
    };
    let cert = std::fs::read(dir.0.join("state/host.crt")).unwrap();
    let key_mode = std::fs::metadata(dir.0.join("state/host.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    // A socket file nobody listens on (a broker that was SIGKILLed) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(dir.0.join("control.sock")).unwrap();
    drop(stale);
    let _served = Served::start(&dir.0, 2, &[]);
    assert_eq!(status_json(&dir.0)["uniqueid"], first);
    assert_eq!(std::fs::read(dir.0.join("state/host.crt")).unwrap(), cert);
    assert_eq!(status_json(&dir.0)["problems"], serde_json::json!([]));
}

#[test]
fn a_corrupt_store_and_identity_are_set_aside_and_reported() {
    let dir = Scratch::new("corrupt");
    std::fs::create_dir_all(dir.0.join("state")).unwrap();
    std::fs::write(dir.0.join("state/clients.json"), "{\"version\": 1, \"clie").unwrap();
    std::fs::write(dir.0.join("state/uniqueid"), "not hex\n").unwrap();
    let _served = Served::start(&dir.0, 3, &[]);
    let status = status_json(&dir.0);
    let problems = status["problems"].to_string();
    assert!(problems.contains("paired-client store"), "{problems}");
    assert!(problems.contains("host identity"), "{problems}");
    let names: Vec<String> = std::fs::read_dir(dir.0.join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("clients.json.corrupt-")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("uniqueid.corrupt-")),
        "{names:?}"
    );
    let aside = names
        .iter()
        .find(|n| n.starts_with("clients.json.corrupt-"))
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.0.join("state").join(aside)).unwrap(),
        "{\"version\": 1, \"clie"
    );
    let table = stdout(&cli(&dir.0, &["status"]));
    assert!(table.contains("PROBLEM: paired-client store"), "{table}");
}

#[test]
fn pair_waits_then_says_honestly_that_no_client_came() {
    let dir = Scratch::new("pair");
    // LUMEN_PAIR_WAIT_MS shortens the 60 s wait so this test takes a moment, not a minute.
    let _served = Served::start(&dir.0, 4, &[("LUMEN_PAIR_WAIT_MS", "300")]);
    let start = Instant::now();
    let out = cli(&dir.0, &["pair", "1234"]);
    assert!(!out.status.success());
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(
        stderr(&out).ends_with("lumen-broker: no Moonlight client started pairing within 0.3 s\n"),
        "{}",
        stderr(&out)
    );
}

fn client_entry(seed: u8, name: &str) -> (serde_json::Value, String) {
    let der = vec![seed; 80];
    let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.clone()));
    let sha = hex::encode(Sha256::digest(&der));
    let id = sha[..16].to_string();
    (
        serde_json::json!({"id": id, "name": name, "cert_pem": cert_pem,
                           "cert_sha256": sha, "paired_at": 1_700_000_000u64}),
        id,
    )
}

#[test]
fn clients_and_unpair_on_a_seeded_store() {
    let dir = Scratch::new("clients");
    std::fs::create_dir_all(dir.0.join("state")).unwrap();
    let (deck, deck_id) = client_entry(1, "deck");
    let (phone, phone_id) = client_entry(2, "phone");
    let store = serde_json::json!({"version": 1, "clients": [deck, phone]});
    std::fs::write(dir.0.join("state/clients.json"), store.to_string()).unwrap();
    let _served = Served::start(&dir.0, 5, &[]);

    let out = cli(&dir.0, &["clients", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let table = stdout(&cli(&dir.0, &["clients"]));
    assert!(
        table.contains(&deck_id) && table.contains("phone"),
        "{table}"
    );
    assert_eq!(status_json(&dir.0)["paired_clients"], 2);

    let out = cli(&dir.0, &["unpair", &phone_id[..8]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&phone_id));

    let out = cli(&dir.0, &["unpair", &phone_id]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        format!("lumen-broker: no paired client has id {phone_id:?}\n")
    );

    // The change is on disk, not just in memory.
    let saved = std::fs::read_to_string(dir.0.join("state/clients.json")).unwrap();
    assert!(
        saved.contains(&deck_id) && !saved.contains(&phone_id),
        "{saved}"
    );
}
