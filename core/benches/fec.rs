//! Reed-Solomon parity speed per kernel, on the stream's block shapes at 1408-byte shards, with
//! reed-solomon-erasure's SIMD slice multiply (`galois_8::mul_slice_xor`, simd-accel) driven with the
//! same Cauchy coefficients as the in-run baseline.
//!
//! `cargo bench -p lumen-core --bench fec [-- OUTPUT.json]` (default `target/bench/fec.json`). Rounds are
//! interleaved (every implementation once per round) and medians reported, so background load spreads
//! over all of them alike. Every implementation's parity is checked equal before timing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use lumen_core::fec::{Encoder, Kernel};
use reed_solomon_erasure::galois_8;

const SHARD: usize = 1408;
const SHAPES: [(usize, usize); 4] = [(50, 10), (100, 20), (212, 43), (200, 55)];
const ROUNDS: usize = 7;
/// Time spent per measurement (one implementation, one shape, one round).
const SLICE: Duration = Duration::from_millis(40);
/// nanors -O3 (GFNI path) on this kind of machine, µs per block, from the performance baselines.
const NANORS_US: [f64; 4] = [9.4, 37.9, 173.0, 203.0];

enum Implementation {
    Lumen(Encoder),
    ReedSolomonErasure {
        coefficients: Vec<u8>,
        parity_shards: usize,
    },
}

impl Implementation {
    fn name(&self) -> String {
        match self {
            Implementation::Lumen(e) => e.kernel().name().to_string(),
            Implementation::ReedSolomonErasure { .. } => "rse_mul_slice_xor".to_string(),
        }
    }

    fn encode(&self, data: &[Vec<u8>], parity: &mut [Vec<u8>]) {
        match self {
            Implementation::Lumen(e) => e.encode(data, parity).expect("valid shape"),
            Implementation::ReedSolomonErasure {
                coefficients,
                parity_shards,
            } => {
                for (j, out) in parity.iter_mut().enumerate() {
                    for (i, shard) in data.iter().enumerate() {
                        let c = coefficients[i * parity_shards + j];
                        if i == 0 {
                            galois_8::mul_slice(c, shard, out);
                        } else {
                            galois_8::mul_slice_xor(c, shard, out);
                        }
                    }
                }
            }
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let out_path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/fec.json").to_string()
        });

    let kernels: Vec<Kernel> = Kernel::ALL
        .into_iter()
        .filter(|k| k.is_supported())
        .collect();
    let mut seed = 0x1234_5678_9ABC_DEF1u64;
    let mut rows = Vec::new(); // (shape index, implementation name, samples)
    let mut setups = Vec::new();
    for &(d, p) in &SHAPES {
        let data: Vec<Vec<u8>> = (0..d)
            .map(|_| {
                (0..SHARD)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect()
            })
            .collect();
        let mut impls: Vec<Implementation> = kernels
            .iter()
            .map(|&k| {
                Implementation::Lumen(Encoder::with_kernel(d, p, k).expect("supported kernel"))
            })
            .collect();
        let reference = Encoder::with_kernel(d, p, Kernel::Portable).expect("portable");
        let coefficients = (0..d)
            .flat_map(|i| (0..p).map(move |j| (i, j)))
            .map(|(i, j)| reference.coefficient(i, j).expect("in range"))
            .collect();
        impls.push(Implementation::ReedSolomonErasure {
            coefficients,
            parity_shards: p,
        });

        let mut expected = vec![vec![0u8; SHARD]; p];
        reference.encode(&data, &mut expected).expect("encode");
        for imp in &impls {
            let mut parity = vec![vec![0xFFu8; SHARD]; p];
            imp.encode(&data, &mut parity);
            assert!(
                parity == expected,
                "{} parity differs at {d}+{p}",
                imp.name()
            );
        }
        setups.push((data, impls));
    }

    for round in 0..ROUNDS {
        for (s, (data, impls)) in setups.iter().enumerate() {
            let p = SHAPES[s].1;
            let mut parity = vec![vec![0u8; SHARD]; p];
            for (n, imp) in impls.iter().enumerate() {
                let start = Instant::now();
                let mut iterations = 0u32;
                while start.elapsed() < SLICE || iterations < 3 {
                    imp.encode(black_box(data), black_box(&mut parity));
                    iterations += 1;
                }
                let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
                if round == 0 {
                    rows.push((s, imp.name(), Vec::new()));
                }
                let index = rows
                    .iter()
                    .position(|r| r.0 == s && r.1 == imp.name())
                    .unwrap_or(n);
                rows[index].2.push(us);
            }
        }
    }

    println!("Reed-Solomon parity, {SHARD}-byte shards, median of {ROUNDS} interleaved rounds");
    println!(
        "{:<18} {:>6} {:>11} {:>9} {:>10} {:>10}",
        "kernel", "shape", "us/block", "GB/s", "x rse", "x nanors"
    );
    let mut json =
        String::from("{\n  \"shard_bytes\": 1408,\n  \"rounds\": 7,\n  \"results\": [\n");
    let mut first = true;
    for (s, &(d, p)) in SHAPES.iter().enumerate() {
        let mut medians: Vec<(String, f64)> = rows
            .iter_mut()
            .filter(|r| r.0 == s)
            .map(|r| (r.1.clone(), median(&mut r.2)))
            .collect();
        let rse = medians
            .iter()
            .find(|m| m.0 == "rse_mul_slice_xor")
            .map_or(f64::NAN, |m| m.1);
        medians.sort_by(|a, b| a.1.total_cmp(&b.1));
        for (name, us) in &medians {
            let gbps = (d * SHARD) as f64 / (us * 1e-6) / 1e9;
            let vs_rse = rse / us;
            let vs_nanors = NANORS_US[s] / us;
            println!(
                "{name:<18} {:>6} {us:>11.1} {gbps:>9.2} {vs_rse:>10.2} {vs_nanors:>10.2}",
                format!("{d}+{p}")
            );
            if !first {
                json.push_str(",\n");
            }
            first = false;
            json.push_str(&format!(
                "    {{\"implementation\": \"{name}\", \"data_shards\": {d}, \"parity_shards\": {p}, \
                 \"us_per_block\": {us:.2}, \"data_gb_per_s\": {gbps:.3}, \"speedup_vs_rse\": {vs_rse:.2}, \
                 \"speedup_vs_quoted_nanors\": {vs_nanors:.2}}}"
            ));
        }
    }
    json.push_str("\n  ],\n  \"quoted_nanors_us_per_block\": [9.4, 37.9, 173.0, 203.0]\n}\n");
    if let Some(dir) = std::path::Path::new(&out_path).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&out_path, json) {
        Ok(()) => println!("written to {out_path}"),
        Err(e) => eprintln!("could not write {out_path}: {e}"),
    }
}
