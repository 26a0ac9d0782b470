//! The broker's state survives SIGKILL at any moment: the real `lumen-broker serve` is killed again
//! and again while it writes the paired-client store (driven by `lumen-broker unpair`, the CLI path
//! that rewrites `clients.json`) and while it creates or loads the host identity. After every kill
//! each state file parses and holds either the old or the new contents, and the broker starts again.
//!
//! Kill moments are random; the seed is printed, and `LUMEN_TEST_SEED=<seed>` repeats a run.

#[allow(dead_code)]
#[path = "common/reliability.rs"]
mod reliability;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lumen_tests::{bin_dir, ScratchDir};
use reliability::{seed, tail, Rng, Serve};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Kills per test.
const ROUNDS: usize = 30;

/// Where `--state-dir DIR` keeps the state files.
fn files_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("state")
}

/// A paired client as `clients.json` stores it: (id, json entry).
fn fake_client(n: u32) -> (String, Value) {
    // The store checks that each entry's id and hash belong to its certificate's DER; the DER
    // itself is opaque to it (lumen-net only ever sees the hashes), so any bytes serve.
    let mut der = n.to_be_bytes().to_vec();
    der.extend((0..92u32).map(|i| (i * 7 + n * 13) as u8));
    let sha = Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let id = sha[..16].to_string();
    let entry = json!({
        "id": id,
        "name": format!("client {n}"),
        "cert_pem": pem::encode(&pem::Pem::new("CERTIFICATE", der)),
        "cert_sha256": sha,
        "paired_at": 1_700_000_000u64 + u64::from(n),
    });
    (id, entry)
}

/// The ids in `clients.json`, in order; an error if it does not parse as the store.
fn stored_ids(state: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(state.join("clients.json")).context("reading clients.json")?;
    let doc: Value = serde_json::from_str(&text)
        .with_context(|| format!("clients.json does not parse ({} bytes)", text.len()))?;
    if doc["version"] != 1 {
        bail!("clients.json has version {}", doc["version"]);
    }
    doc["clients"]
        .as_array()
        .context("clients.json has no clients array")?
        .iter()
        .map(|c| {
            c["id"]
                .as_str()
                .map(str::to_string)
                .context("a client without id")
        })
        .collect()
}

/// Leftover temp files of interrupted writes (`.NAME.tmp-…`).
fn temp_files(state: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(state)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".tmp-"))
        .collect())
}

/// What the unpair driver knows: ids the broker confirmed removing, and the one in flight.
#[derive(Default)]
struct Driven {
    confirmed: Vec<String>,
    in_flight: Option<String>,
}

#[test]
fn sigkill_while_writing_the_client_store_leaves_old_or_new() -> Result<()> {
    let seed = seed();
    println!("seed {seed} (LUMEN_TEST_SEED={seed} repeats this run)");
    let mut rng = Rng::new(seed);
    let bins = bin_dir()?;
    let state = ScratchDir::new("store-kill")?;
    let log = state.path().join("broker.log");

    let clients: Vec<(String, Value)> = (0..1000).map(fake_client).collect();
    let store = json!({
        "version": 1,
        "clients": clients.iter().map(|(_, entry)| entry.clone()).collect::<Vec<_>>(),
    });
    std::fs::create_dir_all(files_dir(state.path()))?;
    std::fs::write(
        files_dir(state.path()).join("clients.json"),
        serde_json::to_vec_pretty(&store)?,
    )?;
    let mut expected: Vec<String> = clients.iter().map(|(id, _)| id.clone()).collect();

    let mut mid_write = std::collections::BTreeSet::new();
    let mut writes = 0;
    let mut kill_times = Vec::new();
    for round in 0..ROUNDS {
        let mut serve = Serve::spawn(&bins, state.path(), &log)?;
        let stop = Arc::new(AtomicBool::new(false));
        let driven = Arc::new(Mutex::new(Driven::default()));
        let driver = {
            let stop = stop.clone();
            let driven = driven.clone();
            let ids = expected.clone();
            let cli = serve.cli_command();
            std::thread::spawn(move || {
                for id in ids {
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        driven
                            .lock()
                            .map(|mut d| d.in_flight = Some(id.clone()))
                            .ok();
                        let ok = cli(&["unpair", &id]).is_ok_and(|o| o.status.success());
                        if ok {
                            if let Ok(mut d) = driven.lock() {
                                d.confirmed.push(id.clone());
                                d.in_flight = None;
                            }
                            break;
                        }
                        // Not started yet, or killed: try the same id again.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        };
        // Random moments from spawn on: some during start-up (identity and store load), most while
        // unpair rewrites the store.
        let kill_at = Duration::from_millis(rng.below(1_500));
        std::thread::sleep(kill_at);
        serve.sigkill()?;
        kill_times.push(kill_at.as_millis());
        stop.store(true, Ordering::Relaxed);
        driver
            .join()
            .map_err(|_| anyhow::anyhow!("driver panicked"))?;
        let driven = std::mem::take(&mut *driven.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);

        // Old or new: every confirmed removal is on disk; the one in flight may or may not be.
        let stored =
            stored_ids(&files_dir(state.path())).with_context(|| format!("round {round}"))?;
        expected.retain(|id| !driven.confirmed.contains(id));
        let without_in_flight: Vec<String> = match &driven.in_flight {
            Some(id) => expected.iter().filter(|e| *e != id).cloned().collect(),
            None => expected.clone(),
        };
        if stored != expected && stored != without_in_flight {
            bail!(
                "round {round}: clients.json holds {} clients, expected {} or {}",
                stored.len(),
                expected.len(),
                without_in_flight.len()
            );
        }
        writes +=
            driven.confirmed.len() + usize::from(stored == without_in_flight && stored != expected);
        expected = stored;
        let leftovers = temp_files(&files_dir(state.path()))?;
        for leftover in leftovers {
            if mid_write.insert(leftover.clone()) {
                println!("round {round}: killed mid-write at {kill_at:?}, left {leftover}");
            }
        }
    }
    println!(
        "{ROUNDS} kills; {writes} store writes completed; {} kills left a temp file (killed between create and rename); {} clients left",
        mid_write.len(),
        expected.len()
    );

    // The broker starts on what the kills left, with the store intact and no problem reported.
    let mut serve = Serve::spawn(&bins, state.path(), &log)?;
    let status = serve.wait_until(Duration::from_secs(30), "the broker to answer", |_| true)?;
    assert_eq!(
        status["paired_clients"].as_u64(),
        Some(expected.len() as u64),
        "{status}"
    );
    assert_eq!(status["problems"], json!([]), "{status}");
    // What killed writers left behind is cleaned up at start, not kept forever.
    let leftovers = temp_files(&files_dir(state.path()))?;
    assert!(
        leftovers.is_empty(),
        "temp files left after a restart: {leftovers:?}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log_text.contains("panicked"),
        "a panic:\n{}",
        tail(&log_text, 40)
    );
    Ok(())
}

/// The identity files as they are on disk: (key, cert, uniqueid), each `None` when absent.
type IdentityFiles = (Option<String>, Option<String>, Option<String>);

fn identity_files(state: &Path) -> IdentityFiles {
    let read = |name: &str| std::fs::read_to_string(state.join(name)).ok();
    (read("host.key"), read("host.crt"), read("uniqueid"))
}

/// Every identity file that exists must parse on its own.
fn check_parts(files: &IdentityFiles) -> Result<()> {
    if let Some(key) = &files.0 {
        let pem = pem::parse(key).context("host.key is not PEM")?;
        if pem.tag() != "PRIVATE KEY" || pem.contents().len() < 1000 {
            bail!("host.key: {} of {} bytes", pem.tag(), pem.contents().len());
        }
    }
    if let Some(cert) = &files.1 {
        let pem = pem::parse(cert).context("host.crt is not PEM")?;
        if pem.tag() != "CERTIFICATE" {
            bail!("host.crt is a {}", pem.tag());
        }
    }
    if let Some(id) = &files.2 {
        let id = id.trim();
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("uniqueid is {id:?}");
        }
    }
    Ok(())
}

#[test]
fn sigkill_while_creating_or_loading_the_identity_leaves_old_or_new() -> Result<()> {
    let seed = seed();
    println!("seed {seed} (LUMEN_TEST_SEED={seed} repeats this run)");
    let mut rng = Rng::new(seed);
    let bins = bin_dir()?;
    let state = ScratchDir::new("identity-kill")?;
    let log = state.path().join("broker.log");
    let mut complete: Option<IdentityFiles> = None;
    let mut partial_rounds = 0;
    let mut created = 0;
    for round in 0..ROUNDS {
        // Every third round starts from nothing, so the kill can land while the identity is made.
        if round % 3 == 0 {
            for name in ["host.key", "host.crt", "uniqueid"] {
                let _ = std::fs::remove_file(files_dir(state.path()).join(name));
            }
            complete = None;
        }
        let mut serve = Serve::spawn(&bins, state.path(), &log)?;
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        serve.sigkill()?;
        let files = identity_files(&files_dir(state.path()));
        check_parts(&files).with_context(|| format!("round {round}"))?;
        let whole = files.0.is_some() && files.1.is_some() && files.2.is_some();
        match &complete {
            Some(before) => assert!(
                &files == before,
                "round {round}: a complete identity changed under a kill"
            ),
            None if whole => {
                created += 1;
                complete = Some(files.clone());
            }
            None if files != (None, None, None) => partial_rounds += 1,
            None => {}
        }
    }
    println!(
        "{ROUNDS} kills; {created} identities completed; {partial_rounds} kills left a partial identity (some files written, not all)"
    );

    // The broker starts again on what the last kill left, and its identity is whole.
    let mut serve = Serve::spawn(&bins, state.path(), &log)?;
    let status = serve.wait_until(Duration::from_secs(30), "the broker to answer", |_| true)?;
    let files = identity_files(&files_dir(state.path()));
    check_parts(&files)?;
    assert!(files.0.is_some() && files.1.is_some() && files.2.is_some());
    assert_eq!(
        status["uniqueid"].as_str(),
        files.2.as_deref().map(str::trim),
        "{status}"
    );
    if let Some(before) = complete {
        assert!(
            files == before,
            "a complete identity was replaced on restart"
        );
    }
    Ok(())
}
