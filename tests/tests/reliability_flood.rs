//! Issue 6, a hostile network during a live stream: while the real Moonlight client
//! (moonlight-python 0.3.0, driven by tests/python/flood_client.py) streams 640x360@30 H.264,
//! threads of this test flood the host on loopback for `LUMEN_FLOOD_SECONDS` (default 15; 60 for
//! the full run), each at a bounded rate (`lumen_tests::flood`): junk datagrams to the video,
//! audio and control ports (bare "PING"s from other source ports among them), ENet packets with
//! bad lengths and commands, ENet peers with the wrong connect data, garbage, truncated and
//! oversized requests to HTTP and RTSP, slowloris connections to HTTP, HTTPS and RTSP, TLS garbage
//! and handshakes without a client certificate; the client itself sends input out of range.
//!
//! It must hold: no worker dies or restarts (same pids), the stream keeps at least 95 % of the
//! frames captured during the flood (read from the test pattern's frame codes at the client),
//! and lumen-broker status counts the drops of each kind. After the flood, plain HTTP answers
//! again. The figures go to `target/flood-figures.txt` (docs/reliability.md quotes them).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lumen_core::pattern;
use lumen_tests::flood::{self, Sent};
use lumen_tests::moonlight::{finish_client, python, start_script};
use lumen_tests::restarts::{monotonic_us, read_timed_frames};
use lumen_tests::{bin_dir, worker, Broker, ScratchDir};
use serde_json::Value;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;
const FPS: u32 = 30;
/// The bound: the stream keeps at least this share of its frames during the flood.
const KEPT_BOUND: f64 = 0.95;
const WORKERS: [&str; 4] = ["Net", "Capture", "Encode", "Input"];

/// How long the flood lasts: `LUMEN_FLOOD_SECONDS`, default 15 (the full run is 60).
fn flood_seconds() -> Result<u64> {
    match std::env::var("LUMEN_FLOOD_SECONDS") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("LUMEN_FLOOD_SECONDS={v:?} is not a number")),
        Err(_) => Ok(15),
    }
}

/// The loopback address of the LAN socket with `role` in status.
fn port(status: &Value, role: &str) -> Result<SocketAddr> {
    let port = status["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["role"] == role)
        .and_then(|p| p["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("no {role} port in status: {}", status["ports"]))?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Each worker's pid and restart count.
fn worker_pids(status: &Value) -> Result<BTreeMap<&'static str, (u64, u64)>> {
    WORKERS
        .iter()
        .map(|&kind| {
            let w = worker(status, kind).with_context(|| format!("no {kind} in status"))?;
            ensure!(w["state"] == "running", "{kind} is not running: {w}");
            let pid = w["pid"]
                .as_u64()
                .with_context(|| format!("{kind}: no pid"))?;
            Ok((kind, (pid, w["restarts"].as_u64().unwrap_or(0))))
        })
        .collect()
}

/// Whether plain HTTP answers `/serverinfo` within `within` (after the slowloris connections
/// are gone, the connection slots must come back).
fn http_answers(addr: SocketAddr, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let attempt = (|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /serverinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            Ok(String::from_utf8_lossy(&answer).contains("status_code=\"200\""))
        })();
        if attempt.unwrap_or(false) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("plain HTTP did not answer /serverinfo within {within:?} after the flood");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where the figures go: `target/flood-figures.txt` beside the build.
fn figures_path() -> PathBuf {
    bin_dir()
        .ok()
        .and_then(|d| d.parent().map(|p| p.join("flood-figures.txt")))
        .unwrap_or_else(|| "flood-figures.txt".into())
}

/// Starts every flooder for `duration`; returns their handles.
fn start_flood(
    status: &Value,
    duration: Duration,
) -> Result<Vec<std::thread::JoinHandle<Result<Sent>>>> {
    let (video, audio, control) = (
        port(status, "Video")?,
        port(status, "Audio")?,
        port(status, "Control")?,
    );
    let (http, https, rtsp) = (
        port(status, "Http")?,
        port(status, "Https")?,
        port(status, "Rtsp")?,
    );
    type Flooder = Box<dyn FnOnce() -> Result<Sent> + Send>;
    let flooders: Vec<Flooder> = vec![
        Box::new(move || flood::udp_junk("video: junk datagrams", video, duration, 1500, 1)),
        Box::new(move || flood::udp_junk("audio: junk datagrams", audio, duration, 1500, 2)),
        Box::new(move || flood::udp_junk("control: junk datagrams", control, duration, 1000, 3)),
        Box::new(move || flood::enet_bad_packets(control, duration, 1000, 4)),
        Box::new(move || flood::enet_wrong_peers(control, duration, 5)),
        Box::new(move || {
            flood::tcp_bad_requests("HTTP: bad requests", http, false, duration, 40, 5)
        }),
        Box::new(move || {
            flood::tcp_bad_requests("RTSP: bad requests", rtsp, true, duration, 10, 6)
        }),
        // More than the 64 connection slots of a listener.
        Box::new(move || flood::slowloris("HTTP: slowloris", http, 80, duration)),
        Box::new(move || flood::slowloris("HTTPS: slowloris", https, 16, duration)),
        Box::new(move || flood::slowloris("RTSP: slowloris", rtsp, 2, duration)),
        Box::new(move || flood::tls_abuse(https, duration, 8, 7)),
    ];
    flooders
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            std::thread::Builder::new()
                .name(format!("flood-{i}"))
                .spawn(f)
                .context("starting a flooder")
        })
        .collect()
}

/// The counter at `path` (a JSON pointer into `net_stream`).
fn counter(net: &Value, path: &str) -> u64 {
    net.pointer(path).and_then(Value::as_u64).unwrap_or(0)
}

#[test]
fn the_stream_survives_a_hostile_network_and_every_drop_is_counted() -> Result<()> {
    let seconds = flood_seconds()?;
    let duration = Duration::from_secs(seconds);
    let python = python()?;
    let broker = Broker::start("reliability-flood")?;
    let identities = ScratchDir::new("flood-identity")?;
    let dir = identities.path().join("paired").display().to_string();
    lumen_tests::moonlight::pair_on_loopback(&broker, &python, &dir)?;

    let before = broker.status()?;
    let pids = worker_pids(&before)?;
    let scratch = ScratchDir::new("flood-frames")?;
    let out = scratch.path().join("flood.frames");
    let (aw, ah) = pattern::code_area(WIDTH, HEIGHT).context("code area")?;
    // A few seconds of stream before and after the flood.
    let stream_seconds = seconds + 12;
    let args = [
        "flood".to_string(),
        "127.0.0.1".into(),
        broker.port_base.to_string(),
        dir,
        "h264".into(),
        WIDTH.to_string(),
        HEIGHT.to_string(),
        FPS.to_string(),
        stream_seconds.to_string(),
        out.display().to_string(),
        aw.to_string(),
        ah.to_string(),
        seconds.to_string(),
    ];
    let mut client = start_script(
        &python,
        "flood_client.py",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    lumen_tests::restarts::wait_for_frames(&out, u64::from(FPS), (WIDTH, HEIGHT), &mut client)?;

    let flood_from = monotonic_us();
    let flooders = start_flood(&before, duration)?;
    let mut sent = Vec::new();
    for handle in flooders {
        match handle.join() {
            Ok(result) => sent.push(result?),
            Err(_) => bail!("a flooder panicked"),
        }
    }
    let flood_to = monotonic_us();
    ensure!(
        client.try_wait()?.is_none(),
        "the client ended during the flood"
    );
    let http_back = http_answers(port(&before, "Http")?, Duration::from_secs(20))?;

    let result = finish_client(
        client,
        Duration::from_secs(stream_seconds + 60),
        "flood",
        || Ok(()),
    )?;
    eprintln!("client says {result}");
    ensure!(result.get("error").is_none(), "the client failed: {result}");
    ensure!(
        result["ended"] == "deadline",
        "the stream ended early: {result}"
    );

    // Frames captured during the flood: which of them reached the client's decoder.
    let stream = read_timed_frames(&out)?;
    let during: Vec<u32> = stream
        .frames
        .iter()
        .filter(|f| f.captured_after(flood_from) && !f.captured_after(flood_to))
        .filter_map(|f| f.code.map(|c| c.frame))
        .collect();
    let (first, last) = match (during.iter().min(), during.iter().max()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => bail!("no frame captured during the flood reached the client"),
    };
    let distinct: std::collections::BTreeSet<u32> = during.iter().copied().collect();
    let span = last - first + 1;
    let kept = distinct.len() as f64 / f64::from(span);

    // The stream's last report (sent when the client left) carries every counter.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let status = broker.status()?;
        if status["net_stream"]["active"] == false || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let net = &after["net_stream"];
    let pids_after = worker_pids(&after)?;

    let seconds_f = (flood_to - flood_from) as f64 / 1e6;
    let mut text = format!(
        "flood of {seconds_f:.1} s during a 640x360@30 H.264 stream to moonlight-python\n\
         frames captured during the flood: {span} (codes {first}..={last}); reached the client: {} \
         ({:.2} %)\nworker pids before {pids:?}\n             after  {pids_after:?}\n\
         plain HTTP answered again {:.0} ms after the flood\n\nsent (per flooder):\n",
        distinct.len(),
        kept * 100.0,
        http_back.as_secs_f64() * 1000.0
    );
    for s in &sent {
        text += &format!(
            "  {:<62} {:>8} ({:>7.0}/s), {} refused/closed by the host\n",
            s.name,
            s.items,
            s.items as f64 / seconds_f,
            s.refused
        );
    }
    text += "\nhost counters (lumen-broker status --json, net_stream):\n";
    let counters = [
        "/video_foreign_datagrams",
        "/audio_foreign_datagrams",
        "/control_foreign_datagrams",
        "/rejected_control",
        "/refused_control_peers",
        "/input_packets",
        "/input_invalid",
        "/input_dropped",
        "/http/requests",
        "/http/refused",
        "/http/unauthorized",
        "/http/malformed",
        "/http/timeouts",
        "/http/tls_failures",
        "/http/waited_for_slot",
        "/rtsp/requests",
        "/rtsp/refused",
        "/rtsp/dropped_connections",
        "/frames_sent",
        "/frames_skipped",
        "/send_errors",
    ];
    for path in counters {
        let n = counter(net, path);
        text += &format!(
            "  {:<30} {:>9} ({:>7.1}/s of flood)\n",
            &path[1..],
            n,
            n as f64 / seconds_f
        );
    }
    text += &format!(
        "\nclient input calls (name: return code → calls): {}\n",
        result["input_calls"]
    );
    eprintln!("{text}");
    let path = figures_path();
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;

    ensure!(
        pids == pids_after,
        "workers died or restarted during the flood: {pids:?} → {pids_after:?}"
    );
    ensure!(
        kept >= KEPT_BOUND,
        "the stream kept {:.2} % of its frames during the flood (bound {:.0} %)",
        kept * 100.0,
        KEPT_BOUND * 100.0
    );
    // Every kind of drop shows in status.
    for path in [
        "/video_foreign_datagrams",
        "/audio_foreign_datagrams",
        "/control_foreign_datagrams",
        "/refused_control_peers",
        "/input_invalid",
        "/http/refused",
        "/http/unauthorized",
        "/http/malformed",
        "/http/timeouts",
        "/http/tls_failures",
        "/http/waited_for_slot",
        "/rtsp/dropped_connections",
    ] {
        ensure!(
            counter(net, path) > 0,
            "status does not count {path} after the flood: {net}"
        );
    }
    Ok(())
}
