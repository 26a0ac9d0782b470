//! A crash-looping worker and a compromised worker, against the real broker: the test links the
//! binaries into a scratch directory with one worker replaced by `hostile-worker`
//! (`tests/src/bin/hostile-worker.rs`), which the broker then starts as that worker.
//!
//! - A worker that dies at every start is backed off (the gaps between starts grow), shown as
//!   `failing` in `lumen-broker status`, and never restarted hot; the broker answers status
//!   quickly and the other workers keep their pids.
//! - A worker that speaks the protocol badly (wrong version, garbage, oversized and empty records,
//!   fds where none belong, a Ready of another kind, a NetRequest from capture/encode, a session
//!   report before Ready, a second Ready, a flood) is refused: the broker logs why, kills it and
//!   starts a fresh one; nothing panics and the other workers keep running.

#[allow(dead_code)]
#[path = "common/reliability.rs"]
mod reliability;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lumen_tests::{bin_dir, process_alive, worker, ScratchDir};
use reliability::{tail, BinCopy, Serve};
use serde_json::Value;

fn pid_of(status: &Value, kind: &str) -> Option<u64> {
    worker(status, kind).and_then(|w| w["pid"].as_u64())
}

fn state_of(status: &Value, kind: &str) -> String {
    worker(status, kind)
        .and_then(|w| w["state"].as_str())
        .unwrap_or("?")
        .to_string()
}

fn restarts_of(status: &Value, kind: &str) -> u64 {
    worker(status, kind)
        .and_then(|w| w["restarts"].as_u64())
        .unwrap_or(0)
}

/// `(pid, mode, unix ms)` of every start the hostile worker logged.
fn hostile_starts(log: &std::path::Path) -> Result<Vec<(u32, String, u64)>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    text.lines()
        .map(|line| {
            let mut parts = line.split_whitespace();
            let (Some(pid), Some(mode), Some(ms)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("bad hostile log line {line:?}");
            };
            Ok((pid.parse()?, mode.to_string(), ms.parse()?))
        })
        .collect()
}

/// Times `status --json`.
fn timed_status(serve: &Serve) -> Result<(Value, Duration)> {
    let start = Instant::now();
    let status = serve.status()?;
    Ok((status, start.elapsed()))
}

fn hostile_worker() -> Result<std::path::PathBuf> {
    let path = bin_dir()?.join("hostile-worker");
    if !path.is_file() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

#[test]
fn a_worker_that_dies_at_every_start_is_backed_off_and_shown_failing() -> Result<()> {
    let hostile = hostile_worker()?;
    let bins = BinCopy::new("crashloop-bin", &[("lumen-input", &hostile)])?;
    std::fs::write(bins.path().join("hostile-input.plan"), "exit\n")?;
    let starts_log = bins.world_writable_file("hostile-input.log", "")?;
    let state = ScratchDir::new("crashloop-state")?;
    let mut serve = Serve::spawn(bins.path(), state.path(), &state.path().join("broker.log"))?;

    let first = serve.wait_until(
        Duration::from_secs(60),
        "net, capture, encode running",
        |s| {
            ["Net", "Capture", "Encode"]
                .iter()
                .all(|k| state_of(s, k) == "running" && pid_of(s, k).is_some())
        },
    )?;
    let pids: Vec<(String, u64)> = ["Net", "Capture", "Encode"]
        .iter()
        .map(|k| (k.to_string(), pid_of(&first, k).unwrap_or(0)))
        .collect();

    let failing = serve.wait_until(Duration::from_secs(30), "input to be failing", |s| {
        state_of(s, "Input") == "failing"
    })?;
    let entry = worker(&failing, "Input").context("input entry")?;
    assert!(restarts_of(&failing, "Input") >= 5, "{entry}");
    assert!(
        entry["last_exit"].as_str().is_some_and(|e| e.contains('1')),
        "last exit should name the exit code 1: {entry}"
    );
    assert!(
        entry["pid"].is_null(),
        "a failing worker has no pid: {entry}"
    );

    // While it keeps failing: status stays quick, the others keep their pids, and the restarts
    // come ever more slowly (no hot loop).
    let mut worst = Duration::ZERO;
    let watch_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < watch_until {
        let (status, took) = timed_status(&serve)?;
        worst = worst.max(took);
        for (kind, pid) in &pids {
            assert_eq!(
                pid_of(&status, kind),
                Some(*pid),
                "{kind} was restarted while input crash-looped: {status}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("status --json took at most {worst:?} while input crash-looped");
    assert!(
        worst < Duration::from_secs(2),
        "status took {worst:?} while a worker crash-looped"
    );

    let starts = hostile_starts(&starts_log)?;
    let gaps: Vec<u64> = starts
        .windows(2)
        .map(|w| w[1].2.saturating_sub(w[0].2))
        .collect();
    println!(
        "input starts: {}; gaps between starts (ms): {gaps:?}",
        starts.len()
    );
    // The default policy: 100 ms doubling per failure; the fifth failure within a minute is a
    // crash loop, retried only every 30 s. So five starts, gaps of at least 100, 200, 400, 800 ms
    // (less a little for timer slack), and none during the 8 s watched after `failing`.
    assert_eq!(
        starts.len(),
        5,
        "a crash-looping worker must wait 30 s for its next start: starts {starts:?}"
    );
    for (i, gap) in gaps.iter().enumerate() {
        let floor = 100u64 << i;
        assert!(
            *gap + 20 >= floor,
            "restart {} came after {gap} ms, before its {floor} ms backoff: gaps {gaps:?}",
            i + 1
        );
    }
    let log = serve.log();
    assert!(
        log.contains("crash loop"),
        "no crash loop reported:\n{}",
        tail(&log, 40)
    );
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    assert!(!serve.has_exited(), "the broker exited");
    Ok(())
}

/// What the broker must say (in `worker ended: …`) about each misbehaviour.
const EXPECTED: &[(&str, &str)] = &[
    ("wrong-version", "protocol version 99"),
    ("garbage", "malformed message"),
    ("oversized", "exceeds the limit"),
    ("empty-record", "closed its control channel"),
    ("stats-before-ready", "session report before Ready"),
    ("fds", "fds the broker did not ask for"),
    ("wrong-kind", "claimed to be Net"),
    ("net-request", "net request"),
    ("second-ready", "second Ready"),
];

/// The broker's `worker ended` line for `pid`.
fn ended_line(log: &str, pid: u32) -> Option<&str> {
    let token = format!("pid={pid}");
    log.lines().find(|line| {
        line.contains("worker ended") && line.split_whitespace().any(|word| word == token)
    })
}

#[test]
fn a_compromised_worker_is_refused_killed_and_replaced() -> Result<()> {
    let hostile = hostile_worker()?;
    let bins = BinCopy::new(
        "hostile-bin",
        &[("lumen-capture", &hostile), ("lumen-encode", &hostile)],
    )?;
    // Two slots share the modes so that each backs off for a few seconds only.
    let capture_plan = "wrong-version\ngarbage\noversized\nempty-record\nstats-before-ready\n";
    let encode_plan = "fds\nwrong-kind\nnet-request\nsecond-ready\nflood\n";
    std::fs::write(bins.path().join("hostile-capture.plan"), capture_plan)?;
    std::fs::write(bins.path().join("hostile-encode.plan"), encode_plan)?;
    let capture_log = bins.world_writable_file("hostile-capture.log", "")?;
    let encode_log = bins.world_writable_file("hostile-encode.log", "")?;
    let state = ScratchDir::new("hostile-state")?;
    let mut serve = Serve::spawn(bins.path(), state.path(), &state.path().join("broker.log"))?;

    let first = serve.wait_until(Duration::from_secs(60), "net and input running", |s| {
        ["Net", "Input"]
            .iter()
            .all(|k| state_of(s, k) == "running" && pid_of(s, k).is_some())
    })?;
    let others: Vec<(&str, u64)> = ["Net", "Input"]
        .iter()
        .map(|k| (*k, pid_of(&first, k).unwrap_or(0)))
        .collect();

    // Every mode is played, then the fresh worker behaves and stays: the slot ends up running.
    let mut worst = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(90);
    let settled = loop {
        let (status, took) = timed_status(&serve)?;
        worst = worst.max(took);
        for (kind, pid) in &others {
            assert_eq!(
                pid_of(&status, kind),
                Some(*pid),
                "{kind} was disturbed by a hostile capture/encode: {status}"
            );
        }
        let played =
            hostile_starts(&capture_log)?.len() > 5 && hostile_starts(&encode_log)?.len() >= 5;
        if played
            && state_of(&status, "Capture") == "running"
            && state_of(&status, "Encode") == "running"
        {
            break status;
        }
        if Instant::now() > deadline {
            bail!(
                "hostile workers not all played and replaced in time; status {status}; log:\n{}",
                tail(&serve.log(), 60)
            );
        }
        std::thread::sleep(Duration::from_millis(150));
    };
    println!("status --json took at most {worst:?} while capture and encode misbehaved");
    assert!(
        worst < Duration::from_secs(2),
        "status took {worst:?} while workers misbehaved"
    );
    assert!(restarts_of(&settled, "Capture") >= 5, "{settled}");
    assert!(restarts_of(&settled, "Encode") >= 4, "{settled}");

    // Each misbehaving instance was killed by the broker for what it did, and logged.
    let log = serve.log();
    let mut starts = hostile_starts(&capture_log)?;
    starts.extend(hostile_starts(&encode_log)?);
    for (pid, mode, _) in &starts {
        let Some((_, reason)) = EXPECTED.iter().find(|(m, _)| m == mode) else {
            continue;
        };
        let line = ended_line(&log, *pid).with_context(|| {
            format!(
                "no `worker ended` line for {mode} (pid {pid}); log:\n{}",
                tail(&log, 80)
            )
        })?;
        assert!(
            line.contains(reason) && line.contains("SIGKILL"),
            "{mode} (pid {pid}): expected a kill for {reason:?}, got: {line}"
        );
        assert!(!process_alive(*pid), "{mode}: pid {pid} still alive");
        println!(
            "{mode:>20}: {}",
            line.split("worker ended: ").nth(1).unwrap_or(line)
        );
    }

    // The flooding worker was not killed for flooding (stray Pongs are legal, just useless) and
    // is the one running now; the broker read its flood in bounded batches.
    let flood = starts
        .iter()
        .find(|(_, mode, _)| mode == "flood")
        .context("no flood start")?;
    assert_eq!(
        pid_of(&settled, "Encode"),
        Some(u64::from(flood.0)),
        "the flooding encode worker should still be running: {settled}"
    );
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    assert!(!serve.has_exited(), "the broker exited");
    let status = serve.status()?;
    assert!(
        ["Net", "Input"]
            .iter()
            .all(|k| state_of(&status, k) == "running"),
        "{status}"
    );
    Ok(())
}

/// The count in the broker's `<N> error messages suppressed` lines about `pid`.
fn suppressed_errors(log: &str, pid: u32) -> u64 {
    let token = format!("pid={pid}");
    log.lines()
        .filter(|line| line.split_whitespace().any(|word| word == token))
        .filter_map(|line| line.split_once(" error messages suppressed"))
        .filter_map(|(before, _)| before.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_worker_that_floods_costly_messages_is_rate_limited_and_killed() -> Result<()> {
    let hostile = hostile_worker()?;
    let bins = BinCopy::new("errorflood-bin", &[("lumen-encode", &hostile)])?;
    std::fs::write(bins.path().join("hostile-encode.plan"), "error-flood\n")?;
    let encode_log = bins.world_writable_file("hostile-encode.log", "")?;
    let state = ScratchDir::new("errorflood-state")?;
    let mut serve = Serve::spawn(bins.path(), state.path(), &state.path().join("broker.log"))?;
    serve.wait_until(
        Duration::from_secs(60),
        "net, capture, input running",
        |s| {
            ["Net", "Capture", "Input"]
                .iter()
                .all(|k| state_of(s, k) == "running")
        },
    )?;

    // The flooding worker is killed and a fresh one (the plan is used up: it behaves) runs.
    let mut worst = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let (status, took) = timed_status(&serve)?;
        worst = worst.max(took);
        let starts = hostile_starts(&encode_log)?;
        if starts.len() >= 2
            && state_of(&status, "Encode") == "running"
            && pid_of(&status, "Encode") == Some(u64::from(starts[1].0))
        {
            break status;
        }
        if Instant::now() > deadline {
            bail!(
                "the error flood was not cut off in time; status {status}; log:\n{}",
                tail(&serve.log(), 60)
            );
        }
        std::thread::sleep(Duration::from_millis(150));
    };
    println!("status --json took at most {worst:?} while encode flooded");
    assert!(
        worst < Duration::from_secs(2),
        "status took {worst:?} during the flood"
    );

    let starts = hostile_starts(&encode_log)?;
    let (flood_pid, mode, flood_ms) = starts.first().context("no start")?.clone();
    assert_eq!(mode, "error-flood");
    let log = serve.log();
    let line = ended_line(&log, flood_pid).with_context(|| {
        format!(
            "no `worker ended` line for the flood; log:\n{}",
            tail(&log, 60)
        )
    })?;
    assert!(
        line.contains("flooded the broker") && line.contains("SIGKILL"),
        "the flood should be killed for flooding: {line}"
    );
    assert!(
        !process_alive(flood_pid),
        "the flooding pid {flood_pid} is alive"
    );
    // From its start to its successor's start: its life (it ran ≥ 3 s, so the restart is at once).
    let lived_ms = starts[1].2.saturating_sub(flood_ms);
    let lived_s = lived_ms.div_ceil(1000);
    assert!(
        lived_ms < 15_000,
        "the flood ran {lived_ms} ms before the broker cut it off"
    );

    // Its errors: at most 20 a second logged, the rest counted in the summaries; together they
    // are every Error the broker read, more than the kill bound (1000 a second for 3 s).
    let token = format!("pid={flood_pid}");
    let logged = log
        .lines()
        .filter(|l| {
            l.contains("worker reports an error") && l.split_whitespace().any(|w| w == token)
        })
        .count() as u64;
    let suppressed = suppressed_errors(&log, flood_pid);
    println!(
        "error-flood: lived {lived_ms} ms, {logged} errors logged, {suppressed} suppressed; {}",
        line.split("worker ended: ").nth(1).unwrap_or(line)
    );
    assert!(
        logged <= 20 * (lived_s + 1),
        "{logged} errors logged in {lived_ms} ms: the rate limit did not hold"
    );
    assert!(
        logged + suppressed > 3000,
        "only {logged} + {suppressed} errors read: no flood was cut off"
    );
    // Its stderr lines went through the same limit, with a summary line.
    let stderr_lines = log
        .lines()
        .filter(|l| l.contains("hostile error-flood stderr line"))
        .count() as u64;
    assert!(
        stderr_lines <= 20 * (lived_s + 1),
        "{stderr_lines} stderr lines logged in {lived_ms} ms"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("lines suppressed") && l.contains("encode")),
        "no summary of suppressed stderr lines:\n{}",
        tail(&log, 40)
    );
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    assert!(!serve.has_exited(), "the broker exited");
    assert!(
        ["Net", "Capture", "Input"]
            .iter()
            .all(|k| state_of(&settled, k) == "running"),
        "{settled}"
    );
    Ok(())
}
