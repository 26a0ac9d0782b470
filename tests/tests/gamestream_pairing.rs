//! Issue 4's first slice, end to end with a stock Moonlight client: moonlight-python 0.3.0 (a
//! subprocess driven by tests/python/pair_and_applist.py) pairs with the real broker and its
//! sandboxed lumen-net using the PIN given to `lumen-broker pair 1234`, then lists the apps over
//! mutual TLS. A second identity that never paired, a client with the wrong PIN and a client
//! removed with `lumen-broker unpair` all get the XML 401 over HTTPS; a killed lumen-net comes back
//! still trusting the paired client.
//!
//! The client lives in a virtual environment made by tests/python/setup-venv.sh (at
//! `$LUMEN_TEST_VENV`, else target/lumen-test-venv); the first run needs the package index.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use lumen_tests::moonlight::{finish_client, python, start_script, PIN};
use lumen_tests::{signal, worker, Broker, ScratchDir};
use serde_json::Value;

const WRONG_PIN: &str = "9999";

/// One step of the Python driver, started (not yet waited for).
fn start_client(python: &Path, args: &[&str]) -> Result<Child> {
    start_script(python, "pair_and_applist.py", args)
}

fn run_client(python: &Path, args: &[&str], what: &str) -> Result<Value> {
    finish_client(
        start_client(python, args)?,
        Duration::from_secs(60),
        what,
        || Ok(()),
    )
}

/// Pairs the identity in `dir` with `client_pin` while `lumen-broker pair PIN` runs; returns
/// what the client and the CLI said.
fn pair(
    broker: &Broker,
    python: &Path,
    port: &str,
    dir: &str,
    client_pin: &str,
) -> Result<(Value, std::process::Output)> {
    let client = start_client(python, &["pair", "127.0.0.1", port, dir, client_pin])?;
    let cli = broker.cli(&["pair", PIN]);
    let client = finish_client(client, Duration::from_secs(150), "pair", || Ok(()))?;
    Ok((client, cli?))
}

fn applist(python: &Path, port: &str, dir: &str) -> Result<Value> {
    run_client(python, &["applist", "127.0.0.1", port, dir], "applist")
}

#[test]
fn moonlight_pairs_with_a_pin_lists_apps_and_unpaired_clients_get_401() -> Result<()> {
    let python = python()?;
    let broker = Broker::start("gamestream-pairing")?;
    let port = broker.port_base.to_string();
    let identities = ScratchDir::new("moonlight-identities")?;
    let dir = |name: &str| identities.path().join(name).display().to_string();
    let (paired_dir, stranger_dir, wrong_pin_dir) =
        (dir("paired"), dir("stranger"), dir("wrong-pin"));

    // 1. Pairing with the PIN given to `lumen-broker pair`.
    let (client, cli) = pair(&broker, &python, &port, &paired_dir, PIN)?;
    let cli_out = String::from_utf8_lossy(&cli.stdout);
    ensure!(
        cli.status.success() && cli_out.contains("paired"),
        "lumen-broker pair: {cli_out} {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    ensure!(
        client["paired"] == true,
        "the client did not pair: {client}"
    );
    ensure!(
        // H.264 | HEVC | AV1 Main8 (0x1 | 0x100 | 0x10000): what lumen-encode reports here.
        client["app_version"] == "7.1.431.-1" && client["codecs"] == 0x1_0101,
        "serverinfo as the client saw it: {client}"
    );
    ensure!(
        client["https_port"].as_u64() == Some(u64::from(broker.port_base) - 5),
        "HttpsPort: {client}"
    );

    // 2. The paired client lists the apps over mutual TLS and is reported paired there.
    let apps = applist(&python, &port, &paired_dir)?;
    ensure!(apps["status_code"] == 200, "paired applist: {apps}");
    ensure!(
        apps["https_pair_status"] == "1",
        "PairStatus over HTTPS: {apps}"
    );
    ensure!(
        apps["http_pair_status"] == false,
        "PairStatus over HTTP: {apps}"
    );
    let desktop = apps["apps"]
        .as_array()
        .and_then(|list| list.iter().find(|app| app["name"] == "Desktop"))
        .with_context(|| format!("no Desktop app: {apps}"))?;
    ensure!(
        desktop["id"].as_u64().unwrap_or(0) != 0,
        "Desktop id: {apps}"
    );

    // 3. A fresh identity that never paired: 401 on the HTTPS endpoints.
    let stranger = applist(&python, &port, &stranger_dir)?;
    ensure!(
        stranger["status_code"] == 401
            && stranger["applist_status_code"] == 401
            && stranger["launch_status_code"] == 401,
        "unpaired serverinfo, applist and launch: {stranger}"
    );

    // 4. A wrong PIN: the client says so, `pair` fails, the certificate is not trusted.
    let (client, cli) = pair(&broker, &python, &port, &wrong_pin_dir, WRONG_PIN)?;
    ensure!(
        client["paired"] == false && client["error"] == "wrong_pin",
        "wrong PIN, as the client saw it: {client}"
    );
    let cli_err = String::from_utf8_lossy(&cli.stderr);
    ensure!(
        !cli.status.success() && cli_err.contains("pairing failed"),
        "lumen-broker pair with a wrong PIN: {cli_err}"
    );
    let refused = applist(&python, &port, &wrong_pin_dir)?;
    ensure!(
        refused["status_code"] == 401,
        "wrong-PIN applist: {refused}"
    );

    // 5. A crash of lumen-net loses no pairing (it lives in the broker): the respawned worker
    // gets the sockets and the pinned set again and serves the paired client at once.
    let status = broker.status()?;
    let net_pid = worker(&status, "Net")
        .and_then(|w| w["pid"].as_u64())
        .with_context(|| format!("no lumen-net pid: {status}"))?;
    signal(u32::try_from(net_pid)?, libc::SIGKILL)?;
    broker.wait_until(Duration::from_secs(15), "lumen-net respawned", |status| {
        worker(status, "Net").is_some_and(|w| {
            w["state"] == "running" && w["pid"].as_u64().is_some_and(|pid| pid != net_pid)
        })
    })?;
    let apps = applist(&python, &port, &paired_dir)?;
    ensure!(
        apps["status_code"] == 200,
        "applist after a lumen-net restart: {apps}"
    );

    // 6. `lumen-broker unpair`: the client is refused from then on.
    let out = broker.cli(&["clients", "--json"])?;
    let clients: Value = serde_json::from_slice(&out.stdout).context("clients --json")?;
    let listed = clients.as_array().context("clients --json is not a list")?;
    ensure!(listed.len() == 1, "exactly one paired client: {clients}");
    let sha = run_client(&python, &["cert_sha256", &paired_dir], "cert_sha256")?;
    ensure!(
        listed[0]["cert_sha256"] == sha["sha256"],
        "the stored certificate is the client's: {clients} vs {sha}"
    );
    let id = listed[0]["id"].as_str().context("client id")?;
    let out = broker.cli(&["unpair", id])?;
    ensure!(
        out.status.success(),
        "unpair: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The broker pushes the new pinned set to lumen-net; give it a moment.
    let start = Instant::now();
    loop {
        let after = applist(&python, &port, &paired_dir)?;
        if after["status_code"] == 401 {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(5),
            "an unpaired client is still served: {after}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // lumen-net served all of it under its seccomp filter: the only restart is the one above.
    let status = broker.status()?;
    let net = worker(&status, "Net").context("no Net worker")?;
    ensure!(
        net["state"] == "running" && net["restarts"].as_u64() == Some(1),
        "lumen-net: {net}"
    );
    Ok(())
}
