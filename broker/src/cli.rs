//! The command line: `serve` (the default) runs the broker; the other commands talk to a running
//! broker over its control socket and print what it says.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::Value;

use lumen_ipc::media::{AudioLayout, SessionParams, VideoCodec};

use crate::control::{self, Request};
use crate::pairing::Pin;
use crate::paths::Paths;

/// lumen: a privilege-separated Moonlight streaming host.
#[derive(Debug, Parser)]
#[command(name = "lumen-broker", version, about)]
pub struct Cli {
    /// Keep config, state and the control socket under DIR (several brokers can run side by side).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host (the default command).
    Serve(ServeArgs),
    /// Show the workers, their sandbox layers, ports and sessions.
    Status {
        /// Print the broker's status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pair the Moonlight client that shows this PIN.
    Pair {
        /// The 4 digits Moonlight shows.
        pin: String,
    },
    /// List paired clients.
    Clients {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget a paired client (by id, or a unique prefix of it).
    Unpair { id: String },
    /// Run a media session without a client and write what the encoder makes to files in DIR
    /// (video, frames.csv with per-stage timestamps, audio.opus, audio.csv).
    Record(RecordArgs),
}

/// `record`: the session to run and where the files go.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Directory for the recording (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    #[arg(long, default_value_t = 1280)]
    pub width: u32,
    #[arg(long, default_value_t = 720)]
    pub height: u32,
    #[arg(long, default_value_t = 60)]
    pub fps: u32,
    /// Video bitrate in kbit/s.
    #[arg(long, default_value_t = 10_000)]
    pub bitrate: u32,
    #[arg(long, value_enum, default_value_t = CodecArg::H264)]
    pub codec: CodecArg,
    #[arg(long, value_enum, default_value_t = AudioArg::Stereo)]
    pub audio: AudioArg,
    /// Opus packet duration in ms (5, 10 or 20).
    #[arg(long, default_value_t = 5)]
    pub audio_packet_ms: u32,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CodecArg {
    H264,
    Hevc,
    Av1,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AudioArg {
    Stereo,
    #[value(name = "5.1")]
    Surround51,
    #[value(name = "7.1")]
    Surround71,
}

impl RecordArgs {
    fn params(&self) -> SessionParams {
        SessionParams {
            width: self.width,
            height: self.height,
            fps: self.fps,
            bitrate_kbps: self.bitrate,
            codec: match self.codec {
                CodecArg::H264 => VideoCodec::H264,
                CodecArg::Hevc => VideoCodec::Hevc,
                CodecArg::Av1 => VideoCodec::Av1,
            },
            audio: match self.audio {
                AudioArg::Stereo => AudioLayout::Stereo,
                AudioArg::Surround51 => AudioLayout::Surround51,
                AudioArg::Surround71 => AudioLayout::Surround71,
            },
            audio_packet_ms: self.audio_packet_ms,
        }
    }
}

#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Address the LAN sockets bind to (overrides `bind` in the config).
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Base port (overrides `port_base`; Sunshine's offsets apply).
    #[arg(long)]
    pub port_base: Option<u16>,
    /// Do not advertise the host over mDNS (overrides `mdns = true`).
    #[arg(long)]
    pub no_mdns: bool,
    /// Run workers without seccomp when the kernel lacks it (weakens the sandbox).
    #[arg(long)]
    pub insecure_allow_missing_seccomp: bool,
    /// Run workers without Landlock when the kernel lacks it (weakens the sandbox).
    #[arg(long)]
    pub insecure_allow_missing_landlock: bool,
}

const QUICK: Duration = Duration::from_secs(10);
/// The broker waits up to 60 s for a client; leave room for that.
const PAIR_REPLY: Duration = Duration::from_secs(90);

/// Runs one of the client commands against the broker's control socket.
pub fn run_client(paths: &Paths, command: &Command) -> anyhow::Result<()> {
    let socket = &paths.control_socket;
    match command {
        Command::Serve(_) => bail!("serve is not a client command"),
        Command::Status { json } => {
            let reply = control::request(socket, &Request::Status, QUICK)?;
            let status = &reply["status"];
            if *json {
                println!("{}", serde_json::to_string_pretty(status)?);
            } else {
                print!("{}", render_status(status));
            }
        }
        Command::Pair { pin } => {
            Pin::parse(pin)?;
            eprintln!("Waiting for a Moonlight client to start pairing…");
            let reply = control::request(socket, &Request::Pair { pin: pin.clone() }, PAIR_REPLY)?;
            println!(
                "paired {} (id {})",
                text(&reply["name"]),
                text(&reply["client_id"])
            );
        }
        Command::Clients { json } => {
            let reply = control::request(socket, &Request::Clients, QUICK)?;
            let clients = reply["clients"].as_array().context("reply lacks clients")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&reply["clients"])?);
            } else if clients.is_empty() {
                println!("no paired clients");
            } else {
                println!("{:<16}  {:<10}  NAME", "ID", "PAIRED AT");
                for c in clients {
                    println!(
                        "{:<16}  {:<10}  {}",
                        text(&c["id"]),
                        text(&c["paired_at"]),
                        text(&c["name"])
                    );
                }
            }
        }
        Command::Record(args) => {
            let params = args.params();
            params.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let dir = std::path::absolute(&args.out)
                .with_context(|| format!("resolving {}", args.out.display()))?;
            let request = Request::Record {
                params,
                seconds: args.seconds,
                dir,
            };
            let wait = QUICK + Duration::from_secs(u64::from(args.seconds));
            let reply = control::request(socket, &request, wait)?;
            println!("{}", serde_json::to_string_pretty(&reply)?);
        }
        Command::Unpair { id } => {
            let reply = control::request(socket, &Request::Unpair { id: id.clone() }, QUICK)?;
            let client = &reply["client"];
            println!(
                "unpaired {} ({})",
                text(&client["id"]),
                text(&client["name"])
            );
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// The human status table.
fn render_status(status: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(&mut out, format!("uniqueid: {}", text(&status["uniqueid"])));
    let ports: Vec<String> = status["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| format!("{} {}", text(&p["role"]).to_lowercase(), text(&p["port"])))
                .collect()
        })
        .unwrap_or_default();
    line(
        &mut out,
        format!(
            "listening on {}: {}",
            text(&status["bind"]),
            ports.join(", ")
        ),
    );
    line(
        &mut out,
        format!(
            "{:<8} {:>8} {:<9} {:>8}  SANDBOX (reported | verified from /proc)",
            "WORKER", "PID", "STATE", "RESTARTS"
        ),
    );
    for w in status["workers"].as_array().into_iter().flatten() {
        line(
            &mut out,
            format!(
                "{:<8} {:>8} {:<9} {:>8}  {} | {}",
                text(&w["kind"]),
                text(&w["pid"]),
                text(&w["state"]),
                text(&w["restarts"]),
                reported_layers(&w["sandbox"]),
                verified(&w["verified"]),
            ),
        );
        if !w["last_exit"].is_null() {
            line(
                &mut out,
                format!("         last exit: {}", text(&w["last_exit"])),
            );
        }
    }
    let sessions = status["sessions"].as_array().map_or(0, Vec::len);
    line(
        &mut out,
        format!(
            "sessions: {}",
            if sessions == 0 {
                "none".to_string()
            } else {
                sessions.to_string()
            }
        ),
    );
    render_net_stream(&mut out, &status["net_stream"]);
    render_input(&mut out, &status["input"]);
    let media = &status["media_session"];
    if media.is_null() {
        line(&mut out, "media session: none".to_string());
    } else {
        let p = &media["params"];
        line(
            &mut out,
            format!(
                "media session {}{}: {}x{}@{} {} {} kbit/s, {} audio, source {}",
                text(&media["generation"]),
                if media["active"] == false {
                    " (ended)"
                } else {
                    ""
                },
                text(&p["width"]),
                text(&p["height"]),
                text(&p["fps"]),
                text(&p["codec"]),
                text(&p["bitrate_kbps"]),
                text(&p["audio"]),
                text(&media["source"]),
            ),
        );
        for part in ["capture", "encode"] {
            let w = &media[part];
            let stats = &w["stats"];
            let mut shown = format!("  {part}: {}", text(&w["state"]));
            if !stats.is_null() {
                shown.push_str(&format!(
                    ", {} ({} frames, {} dropped, {} repeated, {} audio packets)",
                    text(&stats["component"]),
                    text(&stats["frames"]),
                    text(&stats["dropped"]),
                    text(&stats["repeated"]),
                    text(&stats["audio_packets"]),
                ));
            }
            if !w["error"].is_null() {
                shown.push_str(&format!(" — ERROR: {}", text(&w["error"])));
            }
            line(&mut out, shown);
        }
    }
    line(
        &mut out,
        format!("paired clients: {}", text(&status["paired_clients"])),
    );
    for p in status["problems"].as_array().into_iter().flatten() {
        line(&mut out, format!("PROBLEM: {}", text(p)));
    }
    out
}

/// lumen-input: where it injects, whether gamepads work, and its counters.
fn render_input(out: &mut String, input: &Value) {
    if input.is_null() {
        return;
    }
    out.push_str(&format!("input: EIS {}\n", text(&input["eis"])));
    if input["gamepads_unavailable"].is_null() {
        out.push_str(&format!(
            "  gamepads: {} virtual pad slot(s)\n",
            text(&input["uinput_slots"])
        ));
    } else {
        out.push_str(&format!(
            "  gamepads unavailable: {}\n",
            text(&input["gamepads_unavailable"])
        ));
    }
    let s = &input["stats"];
    if !s.is_null() {
        out.push_str(&format!(
            "  {} injected, dropped {} invalid / {} no device / {} over rate, {} released, {} pads\n",
            text(&s["injected"]),
            text(&s["dropped_invalid"]),
            text(&s["dropped_no_device"]),
            text(&s["dropped_rate"]),
            text(&s["released"]),
            text(&s["pads"]),
        ));
    }
}

/// lumen-net's stream statistics: what was sent, what the client's FEC did, what was dropped.
fn render_net_stream(out: &mut String, net: &Value) {
    if net.is_null() {
        out.push_str("stream statistics: none yet\n");
        return;
    }
    let t = &net["totals"];
    let lines = [
        format!(
            "stream {}{}: {} frames sent ({} skipped), {} video datagrams, {} bytes; {} audio packets",
            text(&net["stream"]),
            if net["active"] == false { " (ended)" } else { "" },
            text(&net["frames_sent"]),
            text(&net["frames_skipped"]),
            text(&net["video_datagrams"]),
            text(&net["video_bytes"]),
            text(&net["audio_packets"]),
        ),
        format!(
            "  client FEC: {} reports, {} frames recovered ({} shards), {} frames lost; {} IDR requests, {} RFI",
            text(&net["fec_reports"]),
            text(&net["fec_recovered_frames"]),
            text(&net["fec_repaired_shards"]),
            text(&net["frames_lost"]),
            text(&net["idr_requests"]),
            text(&net["rfi_requests"]),
        ),
        format!(
            "  dropped: {} control packets rejected, {} control peers refused, foreign datagrams \
             (video {}, audio {}, control {}), {} invalid input events, {} input undelivered, \
             {} send errors, {} ring drops (video {}, audio {}), {} RTSP connections",
            text(&net["rejected_control"]),
            text(&net["refused_control_peers"]),
            text(&net["video_foreign_datagrams"]),
            text(&net["audio_foreign_datagrams"]),
            text(&net["control_foreign_datagrams"]),
            text(&net["input_invalid"]),
            text(&net["input_dropped"]),
            text(&net["send_errors"]),
            net["video_ring_drops"].as_u64().unwrap_or(0)
                + net["audio_ring_drops"].as_u64().unwrap_or(0),
            text(&net["video_ring_drops"]),
            text(&net["audio_ring_drops"]),
            text(&net["rtsp"]["dropped_connections"]),
        ),
        format!(
            "  nvhttp: {} requests ({} refused, {} unauthorized); closed: {} malformed, \
             {} timed out, {} TLS failures; {} waited for a slot",
            text(&net["http"]["requests"]),
            text(&net["http"]["refused"]),
            text(&net["http"]["unauthorized"]),
            text(&net["http"]["malformed"]),
            text(&net["http"]["timeouts"]),
            text(&net["http"]["tls_failures"]),
            text(&net["http"]["waited_for_slot"]),
        ),
        format!(
            "  since start: {} streams, {} frames sent, {} frames recovered by FEC, {} lost, {} IDR requests",
            text(&t["streams"]),
            text(&t["frames_sent"]),
            text(&t["fec_recovered_frames"]),
            text(&t["frames_lost"]),
            text(&t["idr_requests"]),
        ),
    ];
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
}

/// The layers a worker reports as in force, e.g. "seccomp landlock-fs userns netns …".
fn reported_layers(report: &Value) -> String {
    let Some(map) = report.as_object() else {
        return "no report yet".to_string();
    };
    let on: Vec<&str> = map
        .iter()
        .filter(|(_, v)| *v == "On")
        .map(|(k, _)| k.as_str())
        .collect();
    let off: Vec<String> = map
        .iter()
        .filter(|(_, v)| *v == "Unavailable" || *v == "OptedOut")
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    if off.is_empty() {
        on.join(" ")
    } else {
        format!("{} MISSING: {}", on.join(" "), off.join(" "))
    }
}

fn verified(v: &Value) -> String {
    if v.is_null() {
        return "-".to_string();
    }
    format!(
        "seccomp={} nnp={} caps0={} uid={} own_netns={}",
        text(&v["seccomp_mode"]),
        text(&v["no_new_privs"]),
        text(&v["cap_eff_zero"]),
        text(&v["uid"]),
        text(&v["own_net_ns"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn state_dir_before_or_after_the_subcommand() {
        for args in [
            &["lumen-broker", "--state-dir", "/d", "status"][..],
            &["lumen-broker", "status", "--state-dir", "/d"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.state_dir, Some(PathBuf::from("/d")));
            assert!(matches!(cli.command, Some(Command::Status { json: false })));
        }
        assert!(Cli::try_parse_from(["lumen-broker"])
            .unwrap()
            .command
            .is_none());
    }

    #[test]
    fn serve_takes_no_mdns() {
        let cli = Cli::try_parse_from(["lumen-broker", "serve", "--no-mdns"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Serve(ServeArgs { no_mdns: true, .. }))
        ));
        let cli = Cli::try_parse_from(["lumen-broker", "serve"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Serve(ServeArgs { no_mdns: false, .. }))
        ));
    }

    #[test]
    fn status_table_mentions_every_field() {
        let status = serde_json::json!({
            "uniqueid": "0123456789ABCDEF", "bind": "127.0.0.1",
            "ports": [{"role": "Http", "port": 47989}],
            "workers": [{"kind": "Net", "pid": 42, "state": "running", "restarts": 1,
                         "last_exit": "killed by signal 9",
                         "sandbox": {"seccomp": "On", "user_ns": "Unavailable", "notes": []},
                         "verified": {"seccomp_mode": 2, "no_new_privs": true, "cap_eff_zero": true,
                                      "uid": 65534, "own_net_ns": false}}],
            "paired_clients": 0, "sessions": [], "streams": [], "problems": ["x was corrupt"]
        });
        let table = render_status(&status);
        for needle in [
            "0123456789ABCDEF",
            "http 47989",
            "Net",
            "42",
            "running",
            "killed by signal 9",
            "seccomp",
            "MISSING: user_ns=Unavailable",
            "seccomp=2",
            "sessions: none",
            "PROBLEM: x was corrupt",
            "media session: none",
        ] {
            assert!(table.contains(needle), "{needle:?} not in\n{table}");
        }
    }

    #[test]
    fn status_table_shows_the_media_session_and_its_errors() {
        let status = serde_json::json!({
            "workers": [], "ports": [],
            "media_session": {
                "generation": 3, "source": "test-pattern",
                "params": {"width": 640, "height": 360, "fps": 30, "codec": "H264",
                           "bitrate_kbps": 1000, "audio": "Stereo"},
                "capture": {"state": "running", "error": null,
                            "stats": {"component": "test-pattern NV12 640x360@30", "frames": 90,
                                      "dropped": 0, "repeated": 0, "audio_packets": 600}},
                "encode": {"state": "failed", "error": "no av1 encoder", "stats": null}
            }
        });
        let table = render_status(&status);
        for needle in [
            "media session 3: 640x360@30 H264 1000 kbit/s",
            "capture: running, test-pattern NV12 640x360@30 (90 frames",
            "encode: failed — ERROR: no av1 encoder",
        ] {
            assert!(table.contains(needle), "{needle:?} not in\n{table}");
        }
    }

    #[test]
    fn status_table_shows_input_and_unavailable_gamepads() {
        let status = serde_json::json!({
            "workers": [], "ports": [],
            "input": {
                "eis": "connected to /run/eis-0", "uinput_slots": 0,
                "gamepads_unavailable": "/dev/uinput missing",
                "stats": {"injected": 12, "dropped_invalid": 2, "dropped_no_device": 1,
                          "dropped_rate": 0, "released": 3, "pads": 0}
            }
        });
        let table = render_status(&status);
        for needle in [
            "input: EIS connected to /run/eis-0",
            "gamepads unavailable: /dev/uinput missing",
            "12 injected, dropped 2 invalid / 1 no device / 0 over rate, 3 released, 0 pads",
        ] {
            assert!(table.contains(needle), "{needle:?} not in\n{table}");
        }
    }

    #[test]
    fn status_table_shows_the_net_stream_and_its_drops() {
        let status = serde_json::json!({
            "workers": [], "ports": [],
            "net_stream": {
                "stream": 2, "active": false, "frames_sent": 900, "frames_skipped": 1,
                "video_datagrams": 5000, "video_bytes": 7000000, "audio_packets": 3000,
                "fec_reports": 40, "fec_recovered_frames": 37, "fec_repaired_shards": 45,
                "frames_lost": 3, "idr_requests": 2, "rfi_requests": 0,
                "rejected_control": 4, "refused_control_peers": 1,
                "video_foreign_datagrams": 6, "audio_foreign_datagrams": 5,
                "control_foreign_datagrams": 4, "input_invalid": 3, "input_dropped": 2,
                "send_errors": 0, "video_ring_drops": 7, "audio_ring_drops": 1,
                "rtsp": {"requests": 7, "refused": 0, "dropped_connections": 2},
                "http": {"requests": 20, "refused": 9, "unauthorized": 4, "malformed": 8,
                         "timeouts": 7, "tls_failures": 6, "waited_for_slot": 5},
                "totals": {"streams": 2, "frames_sent": 1500, "fec_recovered_frames": 50,
                           "frames_lost": 3, "idr_requests": 5}
            }
        });
        let table = render_status(&status);
        for needle in [
            "stream 2 (ended): 900 frames sent (1 skipped), 5000 video datagrams",
            "client FEC: 40 reports, 37 frames recovered (45 shards), 3 frames lost; 2 IDR",
            "4 control packets rejected, 1 control peers refused, foreign datagrams \
             (video 6, audio 5, control 4), 3 invalid input events, 2 input undelivered",
            "nvhttp: 20 requests (9 refused, 4 unauthorized); closed: 8 malformed, 7 timed out, \
             6 TLS failures; 5 waited for a slot",
            "8 ring drops (video 7, audio 1), 2 RTSP connections",
            "since start: 2 streams, 1500 frames sent, 50 frames recovered by FEC, 3 lost, 5 IDR",
        ] {
            assert!(table.contains(needle), "{needle:?} not in\n{table}");
        }
        let none = render_status(&serde_json::json!({"workers": [], "ports": []}));
        assert!(none.contains("stream statistics: none yet"), "{none}");
    }
}
