//! Per-stage latency of the media pipeline on the embedded default (test pattern → libx264 →
//! ring → consumer), through the real broker and sandboxed workers.
//!
//! Build everything in release first, then run this binary from the same target directory:
//!
//! ```text
//! cargo build --release --workspace --bins && ./target/release/media-latency [--seconds 10]
//! ```
//!
//! For each size it records `--seconds` of 60 fps H.264 with `lumen-broker record`, drops the first
//! second (encoder warm-up), and reports p50/p99 of: capture → encode start (the capture→encode hop:
//! frame-slot message plus any wait for the encoder), encode (libx264), encode end → consumer read
//! (the ring hop), and the total. As a baseline measured in the same run it times an eventfd
//! wake-up between two threads, the floor of any hop. Results are printed and written to
//! `target/media-latency.txt` (or `--out FILE`).

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lumen_tests::media::{frame_times, record_session, Session};
use lumen_tests::{Broker, ScratchDir};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

struct Stage {
    name: &'static str,
    values_us: Vec<f64>,
}

impl Stage {
    fn p(&self, p: f64) -> f64 {
        percentile(&self.values_us, p)
    }
}

/// Median eventfd wake-up between two threads, in µs: the cheapest possible hop.
fn eventfd_wake_baseline(samples: usize) -> Result<f64> {
    use rustix::event::{eventfd, EventfdFlags};
    let ping = std::sync::Arc::new(eventfd(0, EventfdFlags::empty())?);
    let pong = std::sync::Arc::new(eventfd(0, EventfdFlags::empty())?);
    let (ping2, pong2) = (ping.clone(), pong.clone());
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        for _ in 0..samples {
            if rustix::io::read(&*ping2, &mut buf).is_err() {
                return;
            }
            let _ = rustix::io::write(&*pong2, &1u64.to_ne_bytes());
        }
    });
    let mut round_trips = Vec::with_capacity(samples);
    let mut buf = [0u8; 8];
    for _ in 0..samples {
        let start = Instant::now();
        rustix::io::write(&*ping, &1u64.to_ne_bytes())?;
        rustix::io::read(&*pong, &mut buf)?;
        round_trips.push(start.elapsed().as_secs_f64() * 1e6 / 2.0);
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    echo.join().ok();
    round_trips.sort_by(f64::total_cmp);
    Ok(percentile(&round_trips, 0.5))
}

fn main() -> Result<()> {
    let mut seconds = 10u32;
    let mut out_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().context("--seconds N")?.parse()?,
            "--out" => out_file = Some(args.next().context("--out FILE")?),
            other => bail!("unknown argument {other:?} (use --seconds N, --out FILE)"),
        }
    }
    let broker = Broker::start("media-latency")?;
    let mut report = String::new();
    let baseline = eventfd_wake_baseline(2000)?;
    writeln!(
        report,
        "media pipeline latency, test pattern → libx264 → ring → consumer, {seconds} s per size, 60 fps"
    )?;
    writeln!(
        report,
        "baseline (same run): eventfd wake-up between two threads, median {baseline:.1} µs"
    )?;
    for (width, height, bitrate) in [(1280u32, 720u32, 10_000u32), (1920, 1080, 20_000)] {
        let dir = ScratchDir::new("latency")?;
        let rec = record_session(
            &broker,
            dir.path(),
            &Session {
                seconds,
                width,
                height,
                fps: 60,
                bitrate_kbps: bitrate,
                codec: "h264",
                audio: "stereo",
            },
        )?;
        let times: Vec<_> = frame_times(&rec.dir)?
            .into_iter()
            .skip(60)
            .filter(|t| !t.repeat)
            .collect();
        if times.len() < 60 {
            bail!("only {} frames recorded at {width}x{height}", times.len());
        }
        let us = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1000.0;
        let mut stages = [
            Stage {
                name: "capture → encode start",
                values_us: times
                    .iter()
                    .map(|t| us(t.captured_ns, t.encode_start_ns))
                    .collect(),
            },
            Stage {
                name: "encode (libx264)",
                values_us: times
                    .iter()
                    .map(|t| us(t.encode_start_ns, t.encode_end_ns))
                    .collect(),
            },
            Stage {
                name: "encode end → consumer read",
                values_us: times
                    .iter()
                    .map(|t| us(t.encode_end_ns, t.read_ns))
                    .collect(),
            },
            Stage {
                name: "total",
                values_us: times.iter().map(|t| us(t.captured_ns, t.read_ns)).collect(),
            },
        ];
        for stage in &mut stages {
            stage.values_us.sort_by(f64::total_cmp);
        }
        let dropped = rec.summary()["ring_dropped"].as_u64().unwrap_or(0);
        writeln!(
            report,
            "\n{width}x{height}@60 {bitrate} kbit/s: {} frames measured, {} recorded, {} repeats, {dropped} ring drops",
            times.len(),
            rec.summary()["frames"],
            rec.summary()["repeats"],
        )?;
        writeln!(
            report,
            "  {:<28} {:>10} {:>10}",
            "stage", "p50 µs", "p99 µs"
        )?;
        for stage in &stages {
            writeln!(
                report,
                "  {:<28} {:>10.0} {:>10.0}",
                stage.name,
                stage.p(0.5),
                stage.p(0.99)
            )?;
        }
        let hops = stages[0].p(0.5) + stages[2].p(0.5);
        writeln!(
            report,
            "  process hops (capture→encode + ring→consumer) at p50: {:.0} µs = {:.1} % of the total, {:.0}× the eventfd floor",
            hops,
            100.0 * hops / stages[3].p(0.5),
            hops / baseline
        )?;
    }
    print!("{report}");
    let path = out_file.unwrap_or_else(|| {
        lumen_tests::bin_dir()
            .ok()
            .and_then(|d| d.parent().map(|p| p.join("media-latency.txt")))
            .unwrap_or_else(|| "media-latency.txt".into())
            .display()
            .to_string()
    });
    std::fs::write(&path, &report).with_context(|| format!("writing {path}"))?;
    eprintln!("written to {path}");
    Ok(())
}
