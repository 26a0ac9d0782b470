//! Parity from every kernel against the §6.4 formula, computed here from scratch (bitwise field
//! arithmetic, inverses by search), so a wrong table or kernel in the crate cannot hide behind itself.

// Index loops read like the matrix formulas they check.
#![allow(clippy::needless_range_loop)]

use lumen_core::fec::{
    encode_audio_parity, recover, Encoder, EncoderCache, FecError, Kernel, ShardLayout,
};

mod reference;

use reference::{gf_inv, gf_mul, naive_parity};

/// Deterministic test bytes (xorshift64*).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn data_block(d: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..d)
        .map(|i| bytes(seed ^ (i as u64 + 1) << 20, len))
        .collect()
}

fn supported_kernels() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|k| k.is_supported())
        .collect()
}

fn encode_with(kernel: Kernel, data: &[Vec<u8>], p: usize) -> Vec<Vec<u8>> {
    let encoder = Encoder::with_kernel(data.len(), p, kernel).unwrap();
    // Garbage in the outputs proves every byte is overwritten.
    let mut parity = vec![vec![0xA5u8; data[0].len()]; p];
    encoder.encode(data, &mut parity).unwrap();
    parity
}

#[test]
fn one_data_two_parity_is_the_data_times_inverse_rows() {
    // D=1, P=2: parity 0 = inv(2)·d, parity 1 = inv(3)·d. inv(2) = 0x8E, inv(3) = 0xF4 in 0x11D.
    assert_eq!(gf_inv(2), 0x8E);
    assert_eq!(gf_inv(3), 0xF4);
    let data = vec![vec![0x01, 0x02, 0x00, 0xFF]];
    let expected = vec![
        vec![0x8E, 0x01, 0x00, gf_mul(0x8E, 0xFF)],
        vec![0xF4, gf_mul(0xF4, 2), 0x00, gf_mul(0xF4, 0xFF)],
    ];
    assert_eq!(naive_parity(&data, 2), expected);
    for kernel in supported_kernels() {
        assert_eq!(encode_with(kernel, &data, 2), expected, "{kernel}");
    }
}

#[test]
fn four_data_two_parity_matches_hand_computed_bytes() {
    // Unit data vectors pick out single coefficients: data_i = e_0 gives parity_j[0] = inv((2+i)^j).
    let mut data = vec![vec![0u8; 3]; 4];
    data[0][0] = 1; // coefficient inv(2), inv(3)
    data[3][1] = 1; // i=3: inv(5), inv(4)
    data[1][2] = 0x80;
    let parity = naive_parity(&data, 2);
    assert_eq!(parity[0][0], gf_inv(2));
    assert_eq!(parity[1][0], gf_inv(3));
    assert_eq!(parity[0][1], gf_inv(5));
    assert_eq!(parity[1][1], gf_inv(4));
    assert_eq!(parity[0][2], gf_mul(gf_inv(3), 0x80));
    assert_eq!(parity[1][2], gf_mul(gf_inv(2), 0x80));
    for kernel in supported_kernels() {
        assert_eq!(encode_with(kernel, &data, 2), parity, "{kernel}");
    }
}

#[test]
fn every_kernel_matches_the_formula_on_stream_shapes() {
    let shapes = [
        (1, 2),
        (4, 2),
        (50, 10),
        (100, 20),
        (212, 43),
        (200, 55),
        (50, 205),
        (254, 1),
    ];
    // 1408 is the usual datagram; 1040 and 77 end in a partial column; 1 and 64 are edges.
    let lengths = [1408, 1040, 77, 64, 1];
    for (n, &(d, p)) in shapes.iter().enumerate() {
        let len = lengths[n % lengths.len()];
        let data = data_block(d, len, n as u64);
        let expected = naive_parity(&data, p);
        for kernel in supported_kernels() {
            assert_eq!(
                encode_with(kernel, &data, p),
                expected,
                "{kernel} {d}+{p} len {len}"
            );
        }
    }
}

#[test]
fn every_kernel_handles_every_column_remainder() {
    let data = data_block(9, 64 * 3 + 63, 7);
    let expected = naive_parity(&data, 11);
    for len in [
        0usize, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 191, 192, 255,
    ] {
        let cut: Vec<Vec<u8>> = data.iter().map(|s| s[..len].to_vec()).collect();
        for kernel in supported_kernels() {
            let got = encode_with(kernel, &cut, 11);
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!(g[..], e[..len], "{kernel} len {len}");
            }
        }
    }
}

#[test]
fn in_place_layout_gives_the_same_parity_as_separate_shards() {
    let (d, p, len, stride, offset) = (13, 5, 200, 232, 32);
    let data = data_block(d, len, 99);
    let expected = naive_parity(&data, p);
    for kernel in supported_kernels() {
        let encoder = Encoder::with_kernel(d, p, kernel).unwrap();
        let mut buffer = vec![0xEEu8; offset + (d + p) * stride];
        for (i, shard) in data.iter().enumerate() {
            buffer[offset + i * stride..][..len].copy_from_slice(shard);
        }
        let before = buffer.clone();
        encoder
            .encode_in_place(
                &mut buffer,
                ShardLayout {
                    offset,
                    stride,
                    len,
                },
            )
            .unwrap();
        for (j, e) in expected.iter().enumerate() {
            assert_eq!(
                &buffer[offset + (d + j) * stride..][..len],
                &e[..],
                "{kernel} parity {j}"
            );
        }
        // Nothing outside the parity shards changed (prefixes, gaps, data).
        for (k, (a, b)) in buffer.iter().zip(&before).enumerate() {
            let in_parity = k >= offset + d * stride && (k - offset) % stride < len;
            if !in_parity {
                assert_eq!(a, b, "{kernel} byte {k} outside parity changed");
            }
        }
    }
}

#[test]
fn in_place_rejects_layouts_that_do_not_fit() {
    let encoder = Encoder::new(2, 2).unwrap();
    let mut buffer = vec![0u8; 100];
    let layout = |offset, stride, len| ShardLayout {
        offset,
        stride,
        len,
    };
    assert!(matches!(
        encoder.encode_in_place(&mut buffer, layout(0, 10, 11)),
        Err(FecError::BadStride { .. })
    ));
    assert!(matches!(
        encoder.encode_in_place(&mut buffer, layout(0, 0, 0)),
        Err(FecError::BadStride { .. })
    ));
    assert!(matches!(
        encoder.encode_in_place(&mut buffer, layout(21, 20, 20)),
        Err(FecError::BufferTooSmall { .. })
    ));
    assert!(matches!(
        encoder.encode_in_place(&mut buffer, layout(usize::MAX - 5, 20, 20)),
        Err(FecError::BufferTooSmall { .. })
    ));
    // The last shard may end exactly at the buffer's end.
    assert!(encoder
        .encode_in_place(&mut buffer, layout(20, 20, 20))
        .is_ok());
}

#[test]
fn encode_rejects_wrong_counts_and_lengths() {
    let encoder = Encoder::new(3, 2).unwrap();
    let data = vec![vec![0u8; 8]; 3];
    let mut parity = vec![vec![0u8; 8]; 2];
    assert_eq!(
        encoder.encode(&data[..2], &mut parity),
        Err(FecError::DataShardCount {
            expected: 3,
            got: 2
        })
    );
    assert_eq!(
        encoder.encode(&data, &mut parity[..1]),
        Err(FecError::ParityShardCount {
            expected: 2,
            got: 1
        })
    );
    let mut short = data.clone();
    short[2].pop();
    assert_eq!(
        encoder.encode(&short, &mut parity),
        Err(FecError::ShardLength {
            index: 2,
            len: 7,
            expected: 8
        })
    );
    let mut long_parity = parity.clone();
    long_parity[1].push(0);
    assert_eq!(
        encoder.encode(&data, &mut long_parity),
        Err(FecError::ShardLength {
            index: 4,
            len: 9,
            expected: 8
        })
    );
    assert!(matches!(Encoder::new(0, 2), Err(FecError::BadShape { .. })));
    assert!(matches!(Encoder::new(2, 0), Err(FecError::BadShape { .. })));
    assert!(matches!(
        Encoder::new(200, 56),
        Err(FecError::BadShape { .. })
    ));
}

#[test]
fn encoder_coefficients_are_the_cauchy_entries() {
    let encoder = Encoder::new(212, 43).unwrap();
    for (i, j) in [(0, 0), (211, 42), (100, 7)] {
        assert_eq!(
            encoder.coefficient(i, j),
            Some(gf_inv(((43 + i) ^ j) as u8))
        );
    }
    assert_eq!(encoder.coefficient(212, 0), None);
    assert_eq!(encoder.coefficient(0, 43), None);
}

#[test]
fn cache_builds_each_shape_once_and_checks_shapes() {
    let mut cache = EncoderCache::new();
    assert!(cache.is_empty());
    assert_eq!(cache.get(10, 2).unwrap().data_shards(), 10);
    assert_eq!(cache.get(10, 2).unwrap().parity_shards(), 2);
    assert_eq!(cache.get(212, 43).unwrap().parity_shards(), 43);
    assert_eq!(cache.len(), 2);
    assert!(cache.get(250, 10).is_err());
    assert_eq!(cache.len(), 2);
    for kernel in supported_kernels() {
        assert_eq!(
            EncoderCache::with_kernel(kernel)
                .unwrap()
                .get(3, 3)
                .unwrap()
                .kernel(),
            kernel
        );
    }
}

#[test]
fn unsupported_kernels_are_refused_not_faked() {
    for kernel in Kernel::ALL.into_iter().filter(|k| !k.is_supported()) {
        assert_eq!(
            Encoder::with_kernel(2, 2, kernel).err(),
            Some(FecError::KernelUnavailable(kernel))
        );
    }
}

#[test]
fn any_p_lost_shards_are_recovered() {
    for &(d, p) in &[(1, 2), (4, 2), (10, 4), (50, 10), (212, 43), (50, 205)] {
        let len = 100;
        let data = data_block(d, len, (d * 1000 + p) as u64);
        let parity = encode_with(Kernel::best(), &data, p);
        let original: Vec<Vec<u8>> = data.iter().chain(&parity).cloned().collect();
        // Lose P shards spread over data and parity, in three patterns.
        for pattern in 0..3u64 {
            let mut lost: Vec<usize> = (0..d + p).collect();
            let mut order = bytes(pattern + 11, (d + p) * 2);
            lost.sort_by_key(|&k| (order[k * 2], order[k * 2 + 1]));
            order.clear();
            let lost: Vec<usize> = match pattern {
                0 => (0..p.min(d)).chain(d..d + p.saturating_sub(d)).collect(), // leading data first
                _ => lost[..p].to_vec(),
            };
            let mut shards = original.clone();
            let mut present = vec![true; d + p];
            for &k in &lost {
                shards[k].fill(0x5A);
                present[k] = false;
            }
            recover(d, p, &mut shards, &present).unwrap();
            assert_eq!(shards, original, "{d}+{p} lost {lost:?}");
        }
        // One more loss than parity cannot be recovered.
        let mut shards = original.clone();
        let mut present = vec![true; d + p];
        present[..=p.min(d + p - 1)]
            .iter_mut()
            .for_each(|x| *x = false);
        if present.iter().filter(|&&x| x).count() < d {
            assert!(matches!(
                recover(d, p, &mut shards, &present),
                Err(FecError::TooFewShards { .. })
            ));
        }
    }
}

#[test]
fn every_erasure_pattern_of_a_small_block_is_recovered() {
    let (d, p) = (5, 3);
    let data = data_block(d, 16, 3);
    let parity = naive_parity(&data, p);
    let original: Vec<Vec<u8>> = data.iter().chain(&parity).cloned().collect();
    for mask in 0u32..(1 << (d + p)) {
        if mask.count_ones() as usize > p {
            continue;
        }
        let present: Vec<bool> = (0..d + p).map(|k| mask & (1 << k) == 0).collect();
        let mut shards = original.clone();
        for (k, s) in shards.iter_mut().enumerate() {
            if !present[k] {
                s.fill(0);
            }
        }
        recover(d, p, &mut shards, &present).unwrap();
        assert_eq!(shards, original, "mask {mask:08b}");
    }
}

/// §7.4: `p0 = 77·d0 ⊕ 40·d1 ⊕ 38·d2 ⊕ 0E·d3`, `p1 = C7·d0 ⊕ A7·d1 ⊕ 0D·d2 ⊕ 6C·d3`.
fn naive_audio(data: &[Vec<u8>; 4]) -> [Vec<u8>; 2] {
    let rows = [[0x77, 0x40, 0x38, 0x0E], [0xC7, 0xA7, 0x0D, 0x6C]];
    rows.map(|row| {
        (0..data[0].len())
            .map(|k| (0..4).fold(0u8, |acc, i| acc ^ gf_mul(row[i], data[i][k])))
            .collect()
    })
}

#[test]
fn audio_parity_uses_the_fixed_matrix_not_the_cauchy_one() {
    // Unit inputs read the matrix back column by column.
    let mut data: [Vec<u8>; 4] = std::array::from_fn(|_| vec![0u8; 4]);
    for i in 0..4 {
        data[i][i] = 1;
    }
    let mut parity = [vec![0xFFu8; 4], vec![0xFFu8; 4]];
    encode_audio_parity(&data, &mut parity).unwrap();
    assert_eq!(
        parity,
        [vec![0x77, 0x40, 0x38, 0x0E], vec![0xC7, 0xA7, 0x0D, 0x6C]]
    );
    // A 4+2 video block would use inv(2..5) instead: the two codes differ.
    let video = naive_parity(data.as_ref(), 2);
    assert_ne!(video[0], parity[0]);

    let data: [Vec<u8>; 4] = std::array::from_fn(|i| bytes(i as u64 + 40, 57));
    let mut parity = [vec![0u8; 57], vec![0u8; 57]];
    encode_audio_parity(&data, &mut parity).unwrap();
    assert_eq!(parity, naive_audio(&data));
}

#[test]
fn audio_parity_rejects_uneven_payloads() {
    let data: [Vec<u8>; 4] = [vec![0; 8], vec![0; 8], vec![0; 9], vec![0; 8]];
    let mut parity = [vec![0u8; 8], vec![0u8; 8]];
    assert!(matches!(
        encode_audio_parity(&data, &mut parity),
        Err(FecError::ShardLength {
            index: 2,
            len: 9,
            expected: 8
        })
    ));
}

/// Solves the audio block from any 4 of its 6 payloads, as the client's decoder does, to show the fixed
/// matrix recovers every pair of losses.
#[test]
fn audio_parity_recovers_any_two_lost_payloads() {
    let data: [Vec<u8>; 4] = std::array::from_fn(|i| bytes(i as u64 + 70, 24));
    let mut parity = [vec![0u8; 24], vec![0u8; 24]];
    encode_audio_parity(&data, &mut parity).unwrap();
    let rows = [[0x77u8, 0x40, 0x38, 0x0E], [0xC7, 0xA7, 0x0D, 0x6C]];
    let all: Vec<Vec<u8>> = data.iter().chain(&parity).cloned().collect();
    for a in 0..6 {
        for b in a + 1..6 {
            let kept: Vec<usize> = (0..6).filter(|&k| k != a && k != b).collect();
            // Rows of the kept shards over (d0..d3); solve by brute force per byte position would be
            // 2^32; instead invert the 4×4 system with Gauss-Jordan here.
            let mut m: Vec<Vec<u8>> = kept
                .iter()
                .map(|&k| {
                    if k < 4 {
                        (0..4).map(|i| u8::from(i == k)).collect()
                    } else {
                        rows[k - 4].to_vec()
                    }
                })
                .collect();
            let mut rhs: Vec<Vec<u8>> = kept.iter().map(|&k| all[k].clone()).collect();
            for col in 0..4 {
                let pivot = (col..4).find(|&r| m[r][col] != 0).expect("invertible");
                m.swap(col, pivot);
                rhs.swap(col, pivot);
                let s = gf_inv(m[col][col]);
                m[col].iter_mut().for_each(|x| *x = gf_mul(*x, s));
                rhs[col].iter_mut().for_each(|x| *x = gf_mul(*x, s));
                for r in (0..4).filter(|&r| r != col) {
                    let f = m[r][col];
                    for c in 0..4 {
                        m[r][c] ^= gf_mul(f, m[col][c]);
                    }
                    for k in 0..24 {
                        rhs[r][k] ^= gf_mul(f, rhs[col][k]);
                    }
                }
            }
            assert_eq!(rhs, data.to_vec(), "lost {a} and {b}");
        }
    }
}

/// FNV-1a-style digests of the parity that nanors (the library Moonlight and Sunshine use, at the commit
/// moonlight-common-c pins, b1e3c22c) computed with `reed_solomon_encode` for 1408-byte shards filled
/// with `data_i[k] = i·31 + k·7 + 1 + (k >> 8)·13 (mod 256)`; measured on 2026-11-23 with gcc 12 -O3
/// -march=native (GFNI path). An external check next to the formula written above.
#[test]
fn parity_matches_digests_of_nanors_output() {
    let digests: [(usize, usize, u64); 7] = [
        (50, 10, 0xa346b5039ef128ac),
        (100, 20, 0x07814326407fefdf),
        (212, 43, 0x19b75706fd3de153),
        (200, 55, 0x2c8d5fe309af6457),
        (1, 2, 0x7dab5b32503e3d2e),
        (4, 2, 0xcda5b6771e4878ad),
        (50, 205, 0xe679246481ca34d8),
    ];
    for (d, p, digest) in digests {
        let data: Vec<Vec<u8>> = (0..d)
            .map(|i| {
                (0..1408)
                    .map(|k| (i * 31 + k * 7 + 1 + (k >> 8) * 13) as u8)
                    .collect()
            })
            .collect();
        for kernel in supported_kernels() {
            let parity = encode_with(kernel, &data, p);
            // FNV-1a prime; the offset basis is the one the C driver used (FNV's, missing its last digit).
            let mut h: u64 = 1_469_598_103_934_665_603;
            for b in parity.iter().flatten() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x100000001b3);
            }
            assert_eq!(h, digest, "{kernel} {d}+{p}");
        }
    }
}
