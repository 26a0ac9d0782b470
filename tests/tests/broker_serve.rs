//! Whole-system tests of `lumen-broker serve`: the real broker starts the four real workers, each visibly
//! sandboxed; a worker killed with SIGKILL comes back; SIGTERM stops everything within 2 s.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lumen_tests::{
    net_namespace, proc_status_field, process_alive, signal, worker, workers, Broker,
};

const KINDS: [&str; 4] = ["Net", "Capture", "Encode", "Input"];

fn pid_of(status: &serde_json::Value, kind: &str) -> Result<u32> {
    let pid = worker(status, kind)
        .with_context(|| format!("no {kind} worker in status: {status}"))?["pid"]
        .as_u64()
        .with_context(|| format!("{kind} worker has no pid: {status}"))?;
    u32::try_from(pid).context("pid out of range")
}

#[test]
fn serve_runs_all_four_workers_each_sandboxed() -> Result<()> {
    let broker = Broker::start("sandboxed")?;
    let status = broker.status()?;
    assert_eq!(workers(&status).len(), 4, "status: {status}");
    let broker_netns = net_namespace(&broker.pid().to_string())?;

    for kind in KINDS {
        let pid = pid_of(&status, kind)?;
        // What the kernel says, not what the worker claims.
        assert_eq!(
            proc_status_field(pid, "Seccomp")?,
            "2",
            "{kind}: seccomp filter mode"
        );
        assert_eq!(
            proc_status_field(pid, "NoNewPrivs")?,
            "1",
            "{kind}: no_new_privs"
        );
        assert_eq!(
            proc_status_field(pid, "CapEff")?,
            "0000000000000000",
            "{kind}: effective capabilities"
        );
        assert_eq!(
            proc_status_field(pid, "CapBnd")?,
            "0000000000000000",
            "{kind}: bounding set"
        );
        let uid_line = proc_status_field(pid, "Uid")?;
        assert!(
            uid_line.split_whitespace().all(|uid| uid != "0"),
            "{kind} runs with uid 0 on the host: Uid: {uid_line}"
        );
        let netns = net_namespace(&pid.to_string())?;
        if kind == "Net" {
            assert_eq!(
                netns, broker_netns,
                "lumen-net must share the broker's network namespace"
            );
        } else {
            assert_ne!(
                netns, broker_netns,
                "{kind} must have its own network namespace"
            );
        }

        // The broker's view agrees with the kernel's.
        let entry = worker(&status, kind).context("worker entry")?;
        assert_eq!(entry["verified"]["seccomp_mode"], 2, "{kind}: {entry}");
        assert_eq!(entry["verified"]["no_new_privs"], true, "{kind}: {entry}");
        assert_eq!(entry["verified"]["cap_eff_zero"], true, "{kind}: {entry}");
        assert_eq!(entry["sandbox"]["seccomp"], "On", "{kind}: {entry}");
        assert_eq!(entry["sandbox"]["landlock_fs"], "On", "{kind}: {entry}");
    }
    Ok(())
}

#[test]
fn a_worker_killed_with_sigkill_comes_back() -> Result<()> {
    let broker = Broker::start("restart")?;
    for kind in KINDS {
        let before = broker.status()?;
        let old_pid = pid_of(&before, kind)?;
        let old_restarts = worker(&before, kind).context("entry")?["restarts"]
            .as_u64()
            .context("restarts")?;
        signal(old_pid, libc::SIGKILL)?;
        let after = broker.wait_until(
            Duration::from_secs(15),
            &format!("{kind} to come back after SIGKILL"),
            |s| {
                worker(s, kind).is_some_and(|w| {
                    w["state"] == "running"
                        && w["pid"].as_u64().is_some_and(|p| p != u64::from(old_pid))
                        && !w["sandbox"].is_null()
                })
            },
        )?;
        let entry = worker(&after, kind).context("entry")?;
        assert!(
            entry["restarts"].as_u64().context("restarts")? > old_restarts,
            "{kind}: restart not counted: {entry}"
        );
        // The old process was reaped by the broker: no zombie left behind.
        assert!(
            !process_alive(old_pid),
            "{kind}: old pid {old_pid} still present"
        );
        let new_pid = pid_of(&after, kind)?;
        assert_eq!(
            proc_status_field(new_pid, "Seccomp")?,
            "2",
            "{kind} came back unsandboxed"
        );
    }
    Ok(())
}

#[test]
fn sigterm_stops_broker_and_workers_within_two_seconds() -> Result<()> {
    let mut broker = Broker::start("sigterm")?;
    let status = broker.status()?;
    let pids: Vec<u32> = KINDS
        .iter()
        .map(|k| pid_of(&status, k))
        .collect::<Result<_>>()?;
    let took = broker.terminate()?;
    assert!(
        took < Duration::from_secs(2),
        "broker took {took:?} to stop"
    );
    let start = Instant::now();
    // Workers are children of the broker: once it has exited they are reaped (by it, or by init).
    while pids.iter().any(|&p| process_alive(p)) {
        if start.elapsed() > Duration::from_millis(500) {
            bail!("workers still alive after the broker stopped: {pids:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
