//! Every worker binary's `--sandbox-selftest` passes on this machine: the production lock-down refuses
//! everything the worker's profile forbids, and still lets it run.

use std::process::Command;

use anyhow::{ensure, Context, Result};

fn selftest(worker: &str) -> Result<()> {
    let out = Command::new(lumen_tests::bin(worker)?)
        .arg("--sandbox-selftest")
        .output()
        .with_context(|| format!("running {worker} --sandbox-selftest"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    ensure!(
        out.status.success(),
        "{worker} --sandbox-selftest failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The run really tried things: one allowed control attempt, and many denials.
    ensure!(
        stdout.contains("PASS allowed"),
        "{worker}: no allowed control attempt ran"
    );
    let denied = stdout
        .lines()
        .filter(|l| l.starts_with("PASS denied"))
        .count();
    ensure!(denied >= 20, "{worker}: only {denied} denials reported");
    ensure!(!stdout.contains("FAIL"), "{worker}: a FAIL line:\n{stdout}");
    for must in [
        "read /etc/passwd",
        "execve /bin/sh",
        "fork a process",
        "socket(AF_INET)",
        "ptrace the broker",
        "kill the broker",
        "io_uring_setup",
    ] {
        ensure!(
            stdout
                .lines()
                .any(|l| l.starts_with("PASS denied") && l.contains(must)),
            "{worker}: no denial of {must:?}"
        );
    }
    Ok(())
}

#[test]
fn lumen_net_selftest_passes() -> Result<()> {
    selftest("lumen-net")?;
    // lumen-net also proves that sockets it was handed cannot connect or bind anew.
    let out = Command::new(lumen_tests::bin("lumen-net")?)
        .arg("--sandbox-selftest")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(stdout.contains("PASS denied  connect to 127.0.0.1 with a handed TCP socket"));
    ensure!(stdout.contains("PASS denied  bind a handed UDP socket"));
    Ok(())
}

#[test]
fn lumen_capture_selftest_passes() -> Result<()> {
    selftest("lumen-capture")
}

#[test]
fn lumen_encode_selftest_passes() -> Result<()> {
    selftest("lumen-encode")
}

#[test]
fn lumen_input_selftest_passes() -> Result<()> {
    selftest("lumen-input")
}

#[test]
fn a_worker_started_by_hand_says_it_needs_the_broker() -> Result<()> {
    let out = Command::new(lumen_tests::bin("lumen-net")?)
        .arg("--worker")
        .output()?;
    ensure!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("no control channel at fd 3"), "{stderr}");
    let out = Command::new(lumen_tests::bin("lumen-net")?).output()?;
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    Ok(())
}
