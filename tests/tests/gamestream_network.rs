//! Issue 4 over a network: the broker in one network namespace, the real Moonlight client
//! (moonlight-python 0.3.0, tests/python/stream_frames.py) in another, joined by a veth pair —
//! the LAN path, with the broker bound to 10.200.0.1 only. Then the same under loss, made by an
//! nftables input rule in the client's namespace that drops a random share of the host's video
//! and audio datagrams: with Moonlight's 20 % FEC nearly every frame must still decode, and
//! after a heavy burst the stream must recover (the client asks for an IDR) without ending.
//!
//! Frames are counted by the test pattern's frame code in each decoded picture: gaps between
//! the codes are the frames the client never showed. The host's side of the same story is in
//! `lumen-broker status` (`net_stream`): the client's FEC reports (frames it rebuilt from parity)
//! and its IDR requests, as lumen-net counted them. These tests need root (namespaces,
//! nftables); without it they skip with a message, unless `CI` is set.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lumen_tests::moonlight::{
    finish_client, pattern_codes, python, script_args, spawn_client, DecodedFrame, FrameStream, PIN,
};
use lumen_tests::netns::{self, Datagrams, LanPair, HOST_ADDR};
use lumen_tests::{Broker, ScratchDir};
use serde_json::Value;

const MODE: (u32, u32, u32) = (640, 360, 30);

/// A client script run inside the client's namespace.
fn start_client(lan: &LanPair, python: &Path, script: &str, args: &[&str]) -> Result<Child> {
    spawn_client(LanPair::command(&lan.client, python).args(script_args(script, args)))
        .context("in the client namespace")
}

/// Pairs the identity in `dir`, from the client namespace, while `lumen-broker pair PIN` runs.
fn pair(lan: &LanPair, broker: &Broker, python: &Path, dir: &str) -> Result<()> {
    let port = broker.port_base.to_string();
    let client = start_client(
        lan,
        python,
        "pair_and_applist.py",
        &["pair", HOST_ADDR, &port, dir, PIN],
    )?;
    let cli = broker.cli(&["pair", PIN])?;
    let client = finish_client(client, Duration::from_secs(150), "pair", || Ok(()))?;
    ensure!(
        cli.status.success() && client["paired"] == true,
        "pairing over the veth pair failed: client {client}; lumen-broker pair: {} {}",
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr)
    );
    Ok(())
}

/// What one stream delivered, by the pattern's frame codes.
struct Delivery {
    decoded: usize,
    codes: Vec<u32>,
    /// Pattern frames between the first and last code.
    span: u32,
    /// Of those, frames never shown.
    lost: u32,
    /// Keyframes after the first decoded frame: the repairs the client asked for.
    later_idrs: usize,
}

impl Delivery {
    fn of(decoded: &[DecodedFrame]) -> Result<Delivery> {
        let codes = pattern_codes(decoded)?;
        let span = codes[codes.len() - 1] - codes[0] + 1;
        Ok(Delivery {
            decoded: decoded.len(),
            span,
            lost: span - codes.len() as u32,
            later_idrs: decoded.iter().skip(1).filter(|d| d.is_idr()).count(),
            codes,
        })
    }

    fn percent_shown(&self) -> f64 {
        100.0 * f64::from(self.span - self.lost) / f64::from(self.span)
    }
}

/// Streams H.264 at [`MODE`] from the client namespace until `frames` frames are decoded,
/// calling `tick` with the number of frames written so far while it runs; the client then
/// stops the stream. Returns the client's summary and the decoded frames.
fn stream(
    lan: &LanPair,
    broker: &Broker,
    python: &Path,
    dir: &str,
    frames: u32,
    mut tick: impl FnMut(u64) -> Result<()>,
) -> Result<(Value, Vec<DecodedFrame>)> {
    let scratch = ScratchDir::new("moonlight-net-frames")?;
    let out = scratch.path().join("h264.frames");
    let spec = FrameStream {
        host: HOST_ADDR,
        port: broker.port_base,
        identity: dir,
        codec: "h264",
        mode: MODE,
        frames,
        out: &out,
        end: "stop",
        audio_channels: None,
    };
    let args = spec.args()?;
    let client = start_client(
        lan,
        python,
        "stream_frames.py",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let result = finish_client(client, Duration::from_secs(60), "h264", || {
        tick(spec.frames_written())
    })?;
    eprintln!("h264: client says {result}");
    ensure!(
        result.get("error").is_none(),
        "h264: the client failed: {result}"
    );
    let decoded = spec.decoded()?;
    ensure!(
        decoded.len() >= frames as usize,
        "h264: the client decoded {} frames, wanted {frames}",
        decoded.len()
    );
    Ok((result, decoded))
}

/// lumen-net's figures (`status` → `net_stream`) once the last report of the stream that just
/// ended has reached the broker.
fn host_figures(broker: &Broker) -> Result<Value> {
    let status = broker.wait_until(
        Duration::from_secs(15),
        "lumen-net's last statistics of the stream",
        |s| s["net_stream"]["active"] == false,
    )?;
    Ok(status["net_stream"].clone())
}

fn figure(net: &Value, name: &str) -> u64 {
    net[name].as_u64().unwrap_or(0)
}

/// The client's requests for a fresh keyframe: IDR requests, and reference-frame invalidations
/// (which the host answers with an IDR).
fn keyframe_requests(net: &Value) -> u64 {
    figure(net, "idr_requests") + figure(net, "rfi_requests")
}

/// A broker in the host namespace with a client identity paired from the client namespace.
struct Lan {
    // Dropped in this order: the broker stops before its namespace goes away.
    broker: Broker,
    lan: LanPair,
    python: PathBuf,
    _identities: ScratchDir,
    dir: String,
}

impl Lan {
    fn start(tag: &str) -> Result<Lan> {
        let python = python()?;
        let lan = LanPair::new()?;
        let broker = Broker::start_in_netns(tag, &lan)?;
        let identities = ScratchDir::new(&format!("{tag}-identity"))?;
        let dir = identities.path().join("paired").display().to_string();
        pair(&lan, &broker, &python, &dir)?;
        Ok(Lan {
            broker,
            lan,
            python,
            _identities: identities,
            dir,
        })
    }

    /// The host's video and audio ports (Sunshine's offsets from the base).
    fn media_ports(&self) -> [u16; 2] {
        [self.broker.port_base + 9, self.broker.port_base + 11]
    }

    fn stream(
        &self,
        frames: u32,
        tick: impl FnMut(u64) -> Result<()>,
    ) -> Result<(Value, Vec<DecodedFrame>)> {
        stream(
            &self.lan,
            &self.broker,
            &self.python,
            &self.dir,
            frames,
            tick,
        )
    }
}

/// The broker's LAN sockets are bound to the veth address only; the client in the other
/// namespace pairs and streams over the veth pair.
#[test]
fn moonlight_streams_across_a_veth_pair() -> Result<()> {
    if !netns::root_or_skip("moonlight_streams_across_a_veth_pair")? {
        return Ok(());
    }
    let started = Instant::now();
    let lan = Lan::start("gamestream-lan")?;
    // `--bind 10.200.0.1`: the host's own loopback does not reach the broker, the client does.
    let http = lan.broker.port_base;
    ensure!(
        !LanPair::tcp_reaches(&lan.lan.host, "127.0.0.1", http)?,
        "the broker answers on the host's loopback although it was bound to {HOST_ADDR}"
    );
    ensure!(
        LanPair::tcp_reaches(&lan.lan.client, HOST_ADDR, http)?,
        "the client namespace cannot reach the broker's HTTP port {HOST_ADDR}:{http}"
    );
    let mut session = Value::Null;
    let (result, decoded) = lan.stream(60, |_| {
        if session.is_null() {
            if let Ok(status) = lan.broker.status() {
                session = status["media_session"].clone();
            }
        }
        Ok(())
    })?;
    let params = &session["params"];
    let (width, height, fps) = MODE;
    ensure!(
        params["width"] == width
            && params["height"] == height
            && params["fps"] == fps
            && params["codec"].as_str().map(str::to_lowercase).as_deref() == Some("h264"),
        "lan: the broker reported {session}, not a {width}x{height}@{fps} H.264 session"
    );
    let delivery = Delivery::of(&decoded)?;
    eprintln!(
        "lan: {} frames decoded over the veth pair, pattern frames {}..={}: {} of {} not seen \
         (ready after {} s; {:.1} s in all)",
        delivery.decoded,
        delivery.codes[0],
        delivery.codes[delivery.codes.len() - 1],
        delivery.lost,
        delivery.span,
        result["ready_s"],
        started.elapsed().as_secs_f64()
    );
    ensure!(
        delivery.lost * 10 <= delivery.span,
        "lan: {} of {} pattern frames were lost on a lossless link",
        delivery.lost,
        delivery.span
    );
    Ok(())
}

/// About 3 % of the video and audio datagrams dropped at the client: Moonlight's 20 % FEC must
/// repair nearly all of it.
#[test]
fn moonlight_decodes_through_three_percent_loss() -> Result<()> {
    if !netns::root_or_skip("moonlight_decodes_through_three_percent_loss")? {
        return Ok(());
    }
    let lan = Lan::start("gamestream-loss")?;
    let ports = lan.media_ports();
    lan.lan.set_loss(&ports, 3)?;
    let (_, decoded) = lan.stream(180, |_| Ok(()))?;
    let (video, audio) = (
        lan.lan.loss_counters(ports[0])?,
        lan.lan.loss_counters(ports[1])?,
    );
    let delivery = Delivery::of(&decoded)?;
    let host = host_figures(&lan.broker)?;
    eprintln!(
        "loss 3 %: the host saw {} FEC reports from the client: {} frames recovered ({} data \
         shards rebuilt), {} lost; {} frames sent in {} datagrams; {} keyframe requests",
        figure(&host, "fec_reports"),
        figure(&host, "fec_recovered_frames"),
        figure(&host, "fec_repaired_shards"),
        figure(&host, "frames_lost"),
        figure(&host, "frames_sent"),
        figure(&host, "video_datagrams"),
        keyframe_requests(&host),
    );
    eprintln!(
        "loss 3 %: dropped {} of {} video datagrams ({:.1} %) and {} of {} audio ({:.1} %); {} frames \
         decoded, pattern frames {}..={}: {} of {} not seen ({:.1} % shown), {} keyframes after \
         the first",
        video.dropped,
        video.arrived,
        video.percent_dropped(),
        audio.dropped,
        audio.arrived,
        audio.percent_dropped(),
        delivery.decoded,
        delivery.codes[0],
        delivery.codes[delivery.codes.len() - 1],
        delivery.lost,
        delivery.span,
        delivery.percent_shown(),
        delivery.later_idrs
    );
    ensure!(
        video.dropped > 0,
        "the loss rule dropped no video datagrams: the test proved nothing"
    );
    ensure!(
        delivery.percent_shown() >= 98.0,
        "loss 3 %: only {:.1} % of the frames were shown ({} of {} lost)",
        delivery.percent_shown(),
        delivery.lost,
        delivery.span
    );
    // The client told the host about the frames it rebuilt from parity.
    ensure!(
        figure(&host, "fec_recovered_frames") > 0,
        "loss 3 %: the host's statistics show no FEC recovery: {host}"
    );
    ensure!(
        host["totals"]["fec_recovered_frames"].as_u64() >= host["fec_recovered_frames"].as_u64(),
        "loss 3 %: the totals since start lag the stream's own figures: {host}"
    );
    Ok(())
}

/// What one phase of loss did.
struct Phase {
    percent: u32,
    length: Duration,
    /// Frames the client had written when the phase began.
    from_frame: u64,
    video: Datagrams,
    audio: Datagrams,
}

/// 30 % loss for about 2 s, then a 0.5 s blackout, then none. The test pattern's P-frames fit one
/// data shard, and the client asks for at least two parity shards (minRequiredFecPackets), so FEC
/// absorbs most of the 30 %; the blackout surely loses frames, the client asks for a keyframe,
/// and the stream must go on without ending and show every frame again once the link is clean.
#[test]
fn moonlight_recovers_after_a_loss_burst() -> Result<()> {
    if !netns::root_or_skip("moonlight_recovers_after_a_loss_burst")? {
        return Ok(());
    }
    const BURST_AT: u64 = 60;
    const PLAN: [(u32, Duration); 2] = [
        (30, Duration::from_secs(2)),
        (100, Duration::from_millis(500)),
    ];
    let lan = Lan::start("gamestream-burst")?;
    let ports = lan.media_ports();
    let mut phases: Vec<Phase> = Vec::new();
    let mut phase_started = Instant::now();
    // The host's count of keyframe requests when the burst began (the client asks for one at
    // the start of every stream).
    let mut requests_before = None;
    // Frames the client had written when the link was clean again.
    let mut clean_from = None;
    let (result, decoded) = lan.stream(240, |written| {
        if clean_from.is_some() || written < BURST_AT {
            return Ok(());
        }
        let next = match phases.last_mut() {
            None => Some(0),
            Some(phase) if phase_started.elapsed() >= phase.length => {
                phase.video = lan.lan.loss_counters(ports[0])?;
                phase.audio = lan.lan.loss_counters(ports[1])?;
                Some(phases.len())
            }
            Some(_) => None,
        };
        if next == Some(0) {
            requests_before = Some(keyframe_requests(&lan.broker.status()?["net_stream"]));
        }
        match next.map(|i| PLAN.get(i)) {
            Some(Some(&(percent, length))) => {
                lan.lan.set_loss(&ports, percent)?;
                phase_started = Instant::now();
                phases.push(Phase {
                    percent,
                    length,
                    from_frame: written,
                    video: Datagrams::default(),
                    audio: Datagrams::default(),
                });
            }
            Some(None) => {
                lan.lan.set_loss(&ports, 0)?;
                clean_from = Some(written);
            }
            None => {}
        }
        Ok(())
    })?;
    let Some(clean_from) = clean_from else {
        bail!("the stream ended before the loss was over: {result}");
    };
    let host = host_figures(&lan.broker)?;
    let requests_before = requests_before.unwrap_or(0);
    eprintln!(
        "burst: the host saw {} keyframe requests ({requests_before} before the burst), {} FEC \
         reports: {} frames recovered, {} lost",
        keyframe_requests(&host),
        figure(&host, "fec_reports"),
        figure(&host, "fec_recovered_frames"),
        figure(&host, "frames_lost"),
    );
    let delivery = Delivery::of(&decoded)?;
    for phase in &phases {
        eprintln!(
            "burst: {} % loss for {:?} from decoded frame {}: dropped {} of {} video datagrams \
             ({:.1} %) and {} of {} audio ({:.1} %)",
            phase.percent,
            phase.length,
            phase.from_frame,
            phase.video.dropped,
            phase.video.arrived,
            phase.video.percent_dropped(),
            phase.audio.dropped,
            phase.audio.arrived,
            phase.audio.percent_dropped(),
        );
    }
    let burst_from = phases.first().map_or(0, |p| p.from_frame) as usize;
    let burst_idrs = decoded
        .iter()
        .skip(burst_from)
        .filter(|d| d.is_idr())
        .count();
    let after = decoded.len() as u64 - clean_from;
    eprintln!(
        "burst: {} frames decoded, pattern frames {}..={}: {} of {} not seen ({:.1} % shown); \
         {burst_idrs} keyframes from the burst on; clean again from decoded frame {clean_from}, \
         {after} frames decoded after that",
        delivery.decoded,
        delivery.codes[0],
        delivery.codes[delivery.codes.len() - 1],
        delivery.lost,
        delivery.span,
        delivery.percent_shown(),
    );
    ensure!(
        phases.iter().all(|p| p.video.dropped > 0),
        "a loss phase dropped no video datagrams: the test proved nothing"
    );
    ensure!(
        delivery.lost > 0,
        "a 0.5 s blackout lost no frame: the loss did not reach the client"
    );
    // A lost frame breaks the reference chain; the client shows nothing more until the host
    // answers its request with a keyframe.
    ensure!(
        burst_idrs > 0,
        "{} frames were lost but no keyframe followed",
        delivery.lost
    );
    // The host saw the client ask for the keyframe.
    ensure!(
        keyframe_requests(&host) > requests_before,
        "burst: the host's statistics show no IDR request after the loss \
         ({requests_before} before it): {host}"
    );
    ensure!(
        after >= 60,
        "only {after} frames were decoded after the loss: the stream did not recover"
    );
    // Half a second after the loss the link is clean: every frame must show.
    let settled = Delivery::of(&decoded[(clean_from as usize + 15).min(decoded.len())..])?;
    ensure!(
        settled.lost == 0,
        "{} of {} frames were still lost well after the loss",
        settled.lost,
        settled.span
    );
    Ok(())
}
