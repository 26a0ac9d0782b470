//! The video send path's CPU cost per frame: packetize (headers, payload copy, zero padding), FEC parity
//! and AES-128-GCM per datagram, on 1080p- and 4K-sized IDR and P frames, beside a plain memcpy of the
//! same access unit measured in the same run.
//!
//! `cargo bench -p lumen-core --bench send_path [-- OUTPUT.txt]` (default `target/send-path-bench.txt`).
//! Rounds are interleaved (every variant once per round) and medians reported, so background load
//! spreads over all variants alike; times are the thread's CPU time, so a shared machine's other
//! processes do not count (they still share caches and frequency). Throughput is access-unit bytes per second (what the encoder
//! produced); the wire carries more (headers, padding, parity, the encryption prefix).

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce};
use lumen_core::fec::FecConfig;
use lumen_core::stream_crypto::{video_iv, VideoCipher, VIDEO_PREFIX_LEN};
use lumen_core::video_packetizer::{
    FrameType, VideoEncryption, VideoFrame, VideoPacketizer, VideoStreamConfig,
};

const PACKET_SIZE: usize = 1392;
const ROUNDS: usize = 9;
const SLICE: Duration = Duration::from_millis(40);

/// (name, access unit bytes, frame type)
const FRAMES: [(&str, usize, FrameType); 4] = [
    ("1080p IDR", 150_000, FrameType::Idr),
    ("1080p P", 40_000, FrameType::P),
    ("4K IDR", 600_000, FrameType::Idr),
    ("4K P", 160_000, FrameType::P),
];

#[derive(Clone, Copy)]
enum Variant {
    Memcpy,
    Packetize,
    PacketizeFec,
    PacketizeFecGcm,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Memcpy,
        Variant::Packetize,
        Variant::PacketizeFec,
        Variant::PacketizeFecGcm,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Memcpy => "memcpy of the AU",
            Variant::Packetize => "packetize, no FEC",
            Variant::PacketizeFec => "packetize + FEC 20 %",
            Variant::PacketizeFecGcm => "packetize + FEC 20 % + AES-GCM",
        }
    }

    fn config(self) -> Option<VideoStreamConfig> {
        let percent = match self {
            Variant::Memcpy => return None,
            Variant::Packetize => 0,
            _ => 20,
        };
        Some(VideoStreamConfig {
            packet_size: PACKET_SIZE,
            fec: FecConfig {
                percent,
                min_parity: 2,
                max_blocks: 4,
            },
            encryption: matches!(self, Variant::PacketizeFecGcm).then_some(VideoEncryption {
                key: [0x42; 16],
                first_iv_counter: 0,
            }),
        })
    }
}

/// This thread's CPU time in seconds: time on a core, not counting the time other builders on a shared
/// machine hold it.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always available on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Runs `f` repeatedly for about `SLICE` of wall time and returns CPU seconds per call.
fn time_per_call(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let cpu_start = thread_cpu_seconds();
    let mut calls = 0u64;
    while start.elapsed() < SLICE {
        f();
        calls += 1;
    }
    (thread_cpu_seconds() - cpu_start) / calls as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let out_path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/send-path-bench.txt").to_string()
        });

    // Pseudo-random bytes: an encoder's output is incompressible, and nothing here depends on it.
    let mut state = 0x1234_5678_9ABC_DEF0u64;
    let source: Vec<u8> = (0..FRAMES.iter().map(|f| f.1).max().unwrap_or(0))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();

    let mut packetizers: Vec<Option<VideoPacketizer>> = Variant::ALL
        .iter()
        .map(|v| {
            v.config().map(|c| {
                let mut p = VideoPacketizer::new(&c).expect("valid config");
                p.reserve_for(source.len()).expect("frame fits");
                p
            })
        })
        .collect();
    let mut copy_target = vec![0u8; source.len()];

    // seconds[frame][variant] per round.
    let mut seconds = vec![vec![Vec::new(); Variant::ALL.len()]; FRAMES.len()];
    let mut wire = vec![[0usize; 2]; FRAMES.len()]; // datagrams, bytes (last variant)
    let mut frame_index = 1u32;
    for _ in 0..ROUNDS {
        for (fi, &(_, size, frame_type)) in FRAMES.iter().enumerate() {
            let au = &source[..size];
            for (vi, variant) in Variant::ALL.iter().enumerate() {
                let s = match (variant, packetizers[vi].as_mut()) {
                    (Variant::Memcpy, _) | (_, None) => time_per_call(|| {
                        copy_target[..size].copy_from_slice(black_box(au));
                        black_box(&copy_target);
                    }),
                    (_, Some(p)) => time_per_call(|| {
                        let frame = VideoFrame {
                            access_unit: black_box(au),
                            frame_index,
                            timestamp_90khz: frame_index.wrapping_mul(1500),
                            frame_type,
                            host_latency_100us: 0,
                            ltr: false,
                        };
                        frame_index = frame_index.wrapping_add(1);
                        let out = p.packetize(&frame).expect("frame fits");
                        wire[fi] = [out.len(), out.as_bytes().len()];
                        black_box(out.as_bytes());
                    }),
                };
                seconds[fi][vi].push(s);
            }
        }
    }

    let mut report = String::new();
    let _ = writeln!(
        report,
        "send path, packetSize {PACKET_SIZE}, one core (thread CPU time), median of {ROUNDS} \
         interleaved rounds ({} ms each); Gbit/s of access-unit bytes",
        SLICE.as_millis()
    );
    let _ = write!(
        report,
        "{:<12} {:>9} {:>11}",
        "frame", "AU bytes", "datagrams"
    );
    for v in Variant::ALL {
        let _ = write!(report, " | {:>30}", v.name());
    }
    let _ = writeln!(report, " | {:>10}", "µs/frame");
    for (fi, &(name, size, _)) in FRAMES.iter().enumerate() {
        let _ = write!(report, "{name:<12} {size:>9} {:>11}", wire[fi][0]);
        let mut full = 0.0;
        for variant_seconds in &seconds[fi] {
            let s = median(variant_seconds.clone());
            full = s;
            let _ = write!(report, " | {:>30.2}", size as f64 * 8.0 / s / 1e9);
        }
        let _ = writeln!(report, " | {:>10.1}", full * 1e6);
    }
    let _ = writeln!(
        report,
        "(µs/frame is the full path; its wire bytes per frame are datagrams × {} B)",
        PACKET_SIZE + 16 + 32
    );
    report.push_str(&gcm_comparison());
    print!("{report}");
    if let Some(dir) = std::path::Path::new(&out_path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out_path, &report) {
        Ok(()) => println!("written to {out_path}"),
        Err(e) => eprintln!("could not write {out_path}: {e}"),
    }
}

/// AES-128-GCM alone over one 4K IDR's worth of datagrams (1408-byte shards, 32-byte prefix): the
/// cipher the send path uses (AWS-LC through `VideoCipher`) beside RustCrypto's aes-gcm 0.11.
fn gcm_comparison() -> String {
    const SHARD: usize = PACKET_SIZE + 16;
    const DATAGRAMS: usize = 526;
    let stride = VIDEO_PREFIX_LEN + SHARD;
    let mut buffer = vec![0x5Au8; DATAGRAMS * stride];
    let mut lumen = VideoCipher::new(&[0x42; 16], 0).expect("16-byte key");
    let rust_crypto = Aes128Gcm::new(&[0x42; 16].into());
    let mut counter = 0u64;
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        times[0].push(time_per_call(|| {
            for d in buffer.chunks_exact_mut(stride) {
                lumen.seal(d, 1).expect("sealed");
            }
        }));
        times[1].push(time_per_call(|| {
            for d in buffer.chunks_exact_mut(stride) {
                counter += 1;
                let (prefix, shard) = d.split_at_mut(VIDEO_PREFIX_LEN);
                let tag = rust_crypto
                    .encrypt_inout_detached(&Nonce::from(video_iv(counter)), &[], shard.into())
                    .expect("sealed");
                prefix[16..].copy_from_slice(&tag);
            }
        }));
    }
    let mut out = format!(
        "\nAES-128-GCM alone, {DATAGRAMS} datagrams of {SHARD} B, median of {ROUNDS} rounds, thread CPU time\n"
    );
    for (name, t) in [
        ("aws-lc-rs (VideoCipher)", &times[0]),
        ("aes-gcm 0.11", &times[1]),
    ] {
        let s = median(t.clone());
        let _ = writeln!(
            out,
            "{name:<24} {:>8.0} ns/datagram {:>6.2} GB/s",
            s / DATAGRAMS as f64 * 1e9,
            (DATAGRAMS * SHARD) as f64 / s / 1e9
        );
    }
    out
}
