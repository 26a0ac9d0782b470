//! Ring benchmark: record handoff latency and throughput between two processes, beside baselines
//! measured in the same run (bare eventfd one-way wake-up between two processes, plain memcpy).
//!
//! The parent is the consumer; it re-executes this binary as the producer child (fork+exec), handing
//! it the ring's memfd and eventfd as inherited fds. Latency = consumer's CLOCK_MONOTONIC after it has
//! read the whole payload in place (in 1408-byte packet-sized copies, as the net worker would) minus
//! the producer's stamp taken just before it published the record (the payload is filled in place
//! before the stamp, as an encoder writing into the ring would).
//!
//! Usage: `ring-bench [--out PATH] [--samples N]` (default `target/bench/ring.json`, 10000 samples).

use std::error::Error;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use lumen_ipc::ring::{create_ring, monotonic_ns, Consumer, Producer, RecordMeta, TS_SPARE};

type Res<T> = Result<T, Box<dyn Error>>;

const SIZES: [usize; 3] = [1024, 64 * 1024, 1024 * 1024];
const CAPACITY: usize = 8 << 20;
const PERIOD_US: u64 = 500;
const WARMUP: usize = 100;
const PACKET: usize = 1408;
/// Adaptive spin: wake this long before the expected arrival, then spin at most `SPIN_BUDGET`.
const SPIN_MARGIN: Duration = Duration::from_micros(150);
const SPIN_BUDGET: Duration = Duration::from_micros(400);

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2..]);
    }
    let mut out = String::from("target/bench/ring.json");
    let mut samples = 10_000usize;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = it.next().ok_or("--out needs a path")?.clone(),
            "--samples" => samples = it.next().ok_or("--samples needs N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    run(&out, samples)
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn stats(mut ns: Vec<u64>) -> Stats {
    ns.sort_unstable();
    let at = |q: f64| {
        let i = ((ns.len() as f64 - 1.0) * q).round() as usize;
        ns.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    Stats {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn inherit(fd: &OwnedFd) -> Res<OwnedFd> {
    // `dup` leaves the new fd without CLOEXEC, so the exec'd child inherits it.
    Ok(rustix::io::dup(fd)?)
}

fn spawn_child(args: &[String], passed: &[OwnedFd]) -> Res<Child> {
    let mut all: Vec<String> = vec!["--child".into()];
    all.extend(passed.iter().map(|fd| fd.as_raw_fd().to_string()));
    all.extend(args.iter().cloned());
    Ok(Command::new(std::env::current_exe()?).args(all).spawn()?)
}

fn take_fd(arg: Option<&String>) -> Res<OwnedFd> {
    let raw: RawFd = arg.ok_or("missing fd")?.parse()?;
    if raw < 3 {
        return Err("bad fd".into());
    }
    // SAFETY: the parent passed this inherited fd number for us alone; it is wrapped once.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

fn sleep_until_ns(t: u64) {
    let ts = rustix::time::Timespec {
        tv_sec: (t / 1_000_000_000) as i64,
        tv_nsec: (t % 1_000_000_000) as i64,
    };
    let _ = rustix::thread::clock_nanosleep_absolute(rustix::time::ClockId::Monotonic, &ts);
}

/// Producer child: `eventfd BELL COUNT PERIOD_US` or `ring MEMFD BELL SIZE COUNT PERIOD_US`
/// (fds first). PERIOD_US 0 means as fast as the ring allows.
fn child(args: &[String]) -> Res<()> {
    let kind = args.last().ok_or("no child kind")?.clone();
    let num = |i: usize| -> Res<u64> { Ok(args.get(i).ok_or("missing arg")?.parse()?) };
    if kind == "eventfd" {
        let bell = take_fd(args.first())?;
        let (count, period) = (num(1)?, num(2)? * 1000);
        let start = monotonic_ns() + 20_000_000;
        for k in 0..count {
            sleep_until_ns(start + k * period);
            // The stamp is the counter value itself: the consumer reads it back (counter was 0).
            rustix::io::write(&bell, &monotonic_ns().to_ne_bytes())?;
        }
        return Ok(());
    }
    let memfd = take_fd(args.first())?;
    let bell = take_fd(args.get(1))?;
    let (size, count, period) = (num(2)? as usize, num(3)?, num(4)? * 1000);
    let mut producer = Producer::attach(memfd, bell, 1)?;
    let fill = vec![0u8; size];
    let start = monotonic_ns() + 20_000_000;
    sleep_until_ns(start);
    for k in 0..count {
        if period > 0 {
            sleep_until_ns(start + k * period);
        }
        let spin_deadline = Instant::now() + Duration::from_secs(10);
        while !producer.would_fit(size)? {
            if Instant::now() > spin_deadline {
                return Err("consumer stopped draining".into());
            }
            std::thread::yield_now();
        }
        let mut slot = producer.reserve(size)?.ok_or("no room after would_fit")?;
        if period > 0 {
            // Fill in place, then stamp: latency covers the handoff, not the encoder's writing.
            let chunk = [k as u8; 4096];
            let mut off = 0;
            while off < size {
                let n = (size - off).min(chunk.len());
                slot.write_at(off, &chunk[..n])?;
                off += n;
            }
        } else {
            slot.write_at(0, &fill)?;
        }
        let mut meta = RecordMeta {
            seq: k,
            ..RecordMeta::default()
        };
        meta.timestamps[TS_SPARE] = monotonic_ns();
        slot.commit(&meta)?;
    }
    Ok(())
}

/// Reads the payload in place in packet-sized copies; returns a byte so the reads are not elided.
fn read_in_place(rec: &lumen_ipc::ring::RecordView<'_>, packet: &mut [u8; PACKET]) -> u8 {
    let mut acc = 0u8;
    let mut off = 0;
    while off < rec.len() {
        let n = rec.copy_to(off, packet);
        acc ^= packet[0] ^ packet[n.saturating_sub(1)];
        std::hint::black_box(&packet);
        off += n;
    }
    acc
}

fn new_ring() -> Res<(Consumer, [OwnedFd; 2])> {
    let fds = create_ring("ring-bench", CAPACITY, 1)?;
    let passed = [inherit(&fds.memfd)?, inherit(&fds.doorbell)?];
    Ok((Consumer::attach(fds.memfd, fds.doorbell, 1)?, passed))
}

struct Latency {
    stats: Stats,
    cpu_us_per_record: f64,
    cpu_share: f64,
}

fn eventfd_baseline(samples: usize) -> Res<Latency> {
    let bell = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
    let passed = [inherit(&bell)?];
    let total = samples + WARMUP;
    let mut child = spawn_child(
        &[total.to_string(), PERIOD_US.to_string(), "eventfd".into()],
        &passed,
    )?;
    drop(passed);
    let mut lat = Vec::with_capacity(total);
    eprintln!("eventfd baseline...");
    let (cpu0, wall0) = (cpu_ns(), monotonic_ns());
    let mut buf = [0u8; 8];
    let mut seen = 0u64;
    while seen < total as u64 {
        let mut fds = [rustix::event::PollFd::new(
            &bell,
            rustix::event::PollFlags::IN,
        )];
        let limit = rustix::time::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        if rustix::event::poll(&mut fds, Some(&limit))? == 0 {
            return Err("eventfd baseline: the producer child went quiet".into());
        }
        rustix::io::read(&bell, &mut buf)?;
        let now = monotonic_ns();
        let value = u64::from_ne_bytes(buf);
        if value > now {
            // Two stamps added up in the counter (we were late): count them, keep no sample.
            seen += (value as f64 / now as f64).round() as u64;
            continue;
        }
        seen += 1;
        lat.push(now - value);
    }
    let (cpu, wall) = (cpu_ns() - cpu0, monotonic_ns() - wall0);
    child.wait()?;
    Ok(Latency {
        stats: stats(lat.split_off(WARMUP.min(lat.len()))),
        cpu_us_per_record: cpu as f64 / total as f64 / 1000.0,
        cpu_share: cpu as f64 / wall as f64,
    })
}

fn ring_latency(size: usize, samples: usize, spin: bool) -> Res<Latency> {
    let (mut consumer, passed) = new_ring()?;
    let total = samples + WARMUP;
    let mut child = spawn_child(
        &[
            size.to_string(),
            total.to_string(),
            PERIOD_US.to_string(),
            "ring".into(),
        ],
        &passed,
    )?;
    drop(passed);
    let period = Duration::from_micros(PERIOD_US);
    let mut packet = [0u8; PACKET];
    let mut lat = Vec::with_capacity(total);
    let (cpu0, wall0) = (cpu_ns(), monotonic_ns());
    let mut last_arrival: Option<Instant> = None;
    let mut bad = 0u64;
    while lat.len() < total {
        if let Some(rec) = consumer.next()? {
            let acc = read_in_place(&rec, &mut packet);
            let now = monotonic_ns();
            let meta = *rec.meta();
            rec.release();
            if size > 0 && acc != 0 {
                bad += 1; // first and last bytes of each packet are equal: xor must cancel
            }
            lat.push(now.saturating_sub(meta.timestamps[TS_SPARE]));
            last_arrival = Some(Instant::now());
            continue;
        }
        match (spin, last_arrival) {
            (true, Some(last)) => {
                let wake = last + period - SPIN_MARGIN;
                let now = Instant::now();
                if now < wake {
                    consumer.wait(Some(wake - now))?;
                } else {
                    consumer.wait_spin(SPIN_BUDGET, None)?;
                }
            }
            _ => {
                consumer.wait(None)?;
            }
        }
    }
    let (cpu, wall) = (cpu_ns() - cpu0, monotonic_ns() - wall0);
    child.wait()?;
    if bad > 0 {
        return Err(format!("{bad} records read back wrong").into());
    }
    Ok(Latency {
        stats: stats(lat.split_off(WARMUP)),
        cpu_us_per_record: cpu as f64 / total as f64 / 1000.0,
        cpu_share: cpu as f64 / wall as f64,
    })
}

/// GB/s of records pushed as fast as the ring allows and read in place by the consumer.
fn ring_throughput(size: usize) -> Res<f64> {
    let count = ((1usize << 30) / size).clamp(1024, 200_000);
    let (mut consumer, passed) = new_ring()?;
    let mut child = spawn_child(
        &[
            size.to_string(),
            count.to_string(),
            "0".into(),
            "ring".into(),
        ],
        &passed,
    )?;
    drop(passed);
    let mut packet = [0u8; PACKET];
    let mut got = 0usize;
    let mut first: Option<Instant> = None;
    while got < count {
        if let Some(rec) = consumer.next()? {
            first.get_or_insert_with(Instant::now);
            std::hint::black_box(read_in_place(&rec, &mut packet));
            rec.release();
            got += 1;
        } else {
            consumer.wait(Some(Duration::from_secs(5)))?;
        }
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    child.wait()?;
    // The first record's bytes are not timed.
    Ok(((count - 1) * size) as f64 / secs / 1e9)
}

/// Median ns of one memcpy of `size` bytes between two private buffers (hot cache).
fn memcpy_ns(size: usize) -> f64 {
    let src = vec![1u8; size];
    let mut dst = vec![0u8; size];
    let reps = ((64usize << 20) / size).clamp(16, 20_000);
    let mut per = Vec::with_capacity(9);
    for _ in 0..9 {
        let t = Instant::now();
        for _ in 0..reps {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        per.push(t.elapsed().as_nanos() as f64 / reps as f64);
    }
    per.sort_by(f64::total_cmp);
    per[4]
}

fn kib(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

fn run(out: &str, samples: usize) -> Res<()> {
    let started = Instant::now();
    let memcpy: Vec<f64> = SIZES.iter().map(|&s| memcpy_ns(s)).collect();
    let bare = eventfd_baseline(samples)?;
    let mut blocking = Vec::new();
    let mut spinning = Vec::new();
    let mut throughput = Vec::new();
    for &size in &SIZES {
        let n = if size >= 1 << 20 {
            samples / 2
        } else {
            samples
        };
        eprintln!("ring {} ...", kib(size));
        blocking.push(ring_latency(size, n, false)?);
        spinning.push(ring_latency(size, n, true)?);
        throughput.push(ring_throughput(size)?);
    }

    let mut table = String::new();
    let s = &bare.stats;
    writeln!(
        table,
        "period {PERIOD_US} µs, {samples} samples ({} for 1 MiB), all latencies one-way µs",
        samples / 2
    )?;
    writeln!(
        table,
        "bare eventfd one-way      p50 {:7.1}  p99 {:7.1}  p99.9 {:7.1}  max {:8.1}",
        s.p50, s.p99, s.p999, s.max
    )?;
    writeln!(table, "| size | mode | p50 | p99 | p99.9 | p99 − eventfd p99 | consumer CPU µs/record (share of a core) | memcpy µs | floor+memcpy p99 | ring GB/s | memcpy GB/s |")?;
    writeln!(table, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    let mut json = String::from("{\n");
    writeln!(
        json,
        "  \"period_us\": {PERIOD_US}, \"samples\": {samples}, \"capacity\": {CAPACITY},"
    )?;
    writeln!(json, "  \"eventfd_one_way_us\": {{\"p50\": {:.2}, \"p99\": {:.2}, \"p999\": {:.2}, \"max\": {:.2}}},", s.p50, s.p99, s.p999, s.max)?;
    writeln!(json, "  \"sizes\": [")?;
    for (i, &size) in SIZES.iter().enumerate() {
        let mc_us = memcpy[i] / 1000.0;
        let mc_gbs = size as f64 / memcpy[i];
        for (mode, l) in [("blocking", &blocking[i]), ("adaptive spin", &spinning[i])] {
            let t = &l.stats;
            writeln!(
                table,
                "| {} | {mode} | {:.1} | {:.1} | {:.1} | {:+.1} | {:.1} ({:.1} %) | {:.1} | {:.1} | {:.2} | {:.1} |",
                kib(size), t.p50, t.p99, t.p999, t.p99 - s.p99, l.cpu_us_per_record, l.cpu_share * 100.0,
                mc_us, s.p99 + mc_us, throughput[i], mc_gbs
            )?;
        }
        let b = &blocking[i].stats;
        let sp = &spinning[i];
        writeln!(
            json,
            "    {{\"size\": {size}, \"blocking_us\": {{\"p50\": {:.2}, \"p99\": {:.2}, \"p999\": {:.2}, \"max\": {:.2}, \"cpu_us_per_record\": {:.2}}}, \"spin_us\": {{\"p50\": {:.2}, \"p99\": {:.2}, \"p999\": {:.2}, \"max\": {:.2}, \"cpu_us_per_record\": {:.2}, \"cpu_share\": {:.4}}}, \"p99_minus_eventfd_p99_us\": {:.2}, \"memcpy_us\": {:.3}, \"memcpy_gbs\": {:.2}, \"ring_gbs\": {:.2}}}{}",
            b.p50, b.p99, b.p999, b.max, blocking[i].cpu_us_per_record,
            sp.stats.p50, sp.stats.p99, sp.stats.p999, sp.stats.max, sp.cpu_us_per_record, sp.cpu_share,
            b.p99 - s.p99, mc_us, mc_gbs, throughput[i],
            if i + 1 < SIZES.len() { "," } else { "" }
        )?;
    }
    writeln!(
        json,
        "  ],\n  \"wall_s\": {:.1}\n}}",
        started.elapsed().as_secs_f64()
    )?;
    print!("{table}");
    println!(
        "total {:.1} s; written to {out}",
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, json)?;
    Ok(())
}
