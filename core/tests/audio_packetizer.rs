//! The audio packetizer's datagrams, read back by a receiver written here from the protocol notes
//! (§7.2–§7.4): RTP fields, CBC decryption with the seq-derived IV, FEC headers, and any 2 of a block's
//! 6 packets lost and rebuilt with the fixed parity matrix, solved here independently.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use lumen_core::audio_packetizer::{
    AudioEncryption, AudioPacketizer, AudioStreamConfig, MAX_OPUS_PACKET,
};
use proptest::prelude::*;

const KEY: [u8; 16] = *b"fedcba9876543210";

/// Multiplication in GF(2⁸) with x⁸+x⁴+x³+x²+1, bit by bit.
fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1D;
        }
        b >>= 1;
    }
    product
}

fn gf_inv(a: u8) -> u8 {
    (1..=255u8).find(|&x| gf_mul(a, x) == 1).unwrap()
}

/// The generator rows of the audio code (§7.4): data i is row i of the identity, parity j the fixed
/// NVIDIA/OpenFEC row.
fn generator_row(k: usize) -> [u8; 4] {
    const PARITY: [[u8; 4]; 2] = [[0x77, 0x40, 0x38, 0x0E], [0xC7, 0xA7, 0x0D, 0x6C]];
    if k < 4 {
        let mut row = [0; 4];
        row[k] = 1;
        row
    } else {
        PARITY[k - 4]
    }
}

/// Rebuilds the 4 data payloads from any 4 of the 6 shards (`None` = lost).
fn solve(shards: &[Option<Vec<u8>>; 6]) -> [Vec<u8>; 4] {
    let rows: Vec<usize> = (0..6).filter(|&k| shards[k].is_some()).take(4).collect();
    assert_eq!(rows.len(), 4, "at most 2 losses");
    let len = shards[rows[0]].as_ref().unwrap().len();
    // Gauss-Jordan on [G_rows | I].
    let mut m: Vec<[u8; 8]> = rows
        .iter()
        .enumerate()
        .map(|(r, &k)| {
            let mut row = [0u8; 8];
            row[..4].copy_from_slice(&generator_row(k));
            row[4 + r] = 1;
            row
        })
        .collect();
    for col in 0..4 {
        let pivot = (col..4).find(|&r| m[r][col] != 0).expect("invertible");
        m.swap(col, pivot);
        let scale = gf_inv(m[col][col]);
        for x in m[col].iter_mut() {
            *x = gf_mul(*x, scale);
        }
        for r in 0..4 {
            if r != col && m[r][col] != 0 {
                let f = m[r][col];
                let pivot_row = m[col];
                for (x, p) in m[r].iter_mut().zip(pivot_row) {
                    *x ^= gf_mul(f, p);
                }
            }
        }
    }
    std::array::from_fn(|i| {
        let mut out = vec![0u8; len];
        for (r, &k) in rows.iter().enumerate() {
            let c = m[i][4 + r];
            for (o, &x) in out.iter_mut().zip(shards[k].as_ref().unwrap()) {
                *o ^= gf_mul(c, x);
            }
        }
        out
    })
}

fn decrypt(key: &[u8; 16], rikeyid: u32, seq: u16, ciphertext: &[u8]) -> Vec<u8> {
    let mut iv = [0u8; 16];
    iv[..4].copy_from_slice(&rikeyid.wrapping_add(u32::from(seq)).to_be_bytes());
    let mut buf = ciphertext.to_vec();
    let plain = cbc::Decryptor::<aes::Aes128>::new(key.into(), &iv.into())
        .decrypt_padded_mut::<Pkcs7>(&mut buf)
        .expect("PKCS#7 padding");
    plain.to_vec()
}

/// Sends `packets` and receives them, losing up to 2 of each block's 6 datagrams (chosen by
/// `loss_seed`); every Opus packet must come back byte-exact.
fn round_trip(config: &AudioStreamConfig, packets: &[Vec<u8>], loss_seed: u64) {
    let mut p = AudioPacketizer::new(config);
    let mut block: [Option<Vec<u8>>; 6] = Default::default();
    let mut block_seqs = [0u16; 4];
    let mut seed = loss_seed;
    for (n, opus) in packets.iter().enumerate() {
        let seq = n as u16;
        let out = p.packetize(opus).unwrap();
        let data = out.data();
        assert_eq!(&data[..2], &[0x80, 97], "RTP V2, PT 97");
        assert_eq!(
            u16::from_be_bytes([data[2], data[3]]),
            seq,
            "seq from 0, +1"
        );
        let ts = u32::from_be_bytes(data[4..8].try_into().unwrap());
        assert_eq!(ts, n as u32 * config.packet_duration_ms, "ms timestamp");
        assert_eq!(&data[8..12], &[0; 4], "SSRC");
        let payload = &data[12..];
        let plain = match config.encryption {
            Some(e) => {
                assert_eq!(payload.len(), (opus.len() / 16 + 1) * 16, "PKCS#7 length");
                decrypt(&e.key, e.rikeyid, seq, payload)
            }
            None => payload.to_vec(),
        };
        assert_eq!(&plain, opus, "packet {n}");

        let index = n % 4;
        block[index] = Some(payload.to_vec());
        block_seqs[index] = seq;
        match out.fec() {
            None => assert!(index != 3, "FEC after every CBR block"),
            Some(fec) => {
                assert_eq!(index, 3, "FEC only after a block's 4th packet");
                assert_eq!(out.iter().count(), 3);
                let base = seq - 3;
                assert_eq!(base % 4, 0, "block base is a multiple of 4");
                for (j, f) in fec.iter().enumerate() {
                    assert_eq!(&f[..2], &[0x80, 127], "FEC RTP PT 127");
                    assert_eq!(&f[4..12], &[0; 8], "FEC RTP timestamp and SSRC 0");
                    assert_eq!(f[12], j as u8, "FEC shard index");
                    assert_eq!(f[13], 97, "protected payload type");
                    assert_eq!(u16::from_be_bytes([f[14], f[15]]), base);
                    let base_ts = u32::from_be_bytes(f[16..20].try_into().unwrap());
                    assert_eq!(base_ts, u32::from(base) * config.packet_duration_ms);
                    assert_eq!(&f[20..24], &[0; 4], "FEC SSRC");
                    assert_eq!(
                        f.len() - 24,
                        payload.len(),
                        "parity as long as the payloads"
                    );
                    block[4 + j] = Some(f[24..].to_vec());
                }
                let originals: Vec<Vec<u8>> =
                    block[..4].iter().map(|s| s.clone().unwrap()).collect();
                // Lose up to 2 of the 6.
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let losses = (seed >> 33) as usize % 3;
                for l in 0..losses {
                    let k = ((seed >> (40 + 8 * l)) as usize) % 6;
                    block[k] = None;
                }
                let rebuilt = solve(&block);
                for i in 0..4 {
                    assert_eq!(rebuilt[i], originals[i], "recovered payload {i}");
                    if let Some(e) = config.encryption {
                        let opus = &packets[n - 3 + i];
                        assert_eq!(
                            &decrypt(&e.key, e.rikeyid, block_seqs[i], &rebuilt[i]),
                            opus
                        );
                    }
                }
                block = Default::default();
            }
        }
    }
}

#[test]
fn cbr_blocks_round_trip_encrypted_and_plain() {
    let packets: Vec<Vec<u8>> = (0..40u8).map(|n| vec![n.wrapping_mul(37); 57]).collect();
    for encryption in [
        None,
        Some(AudioEncryption {
            key: KEY,
            rikeyid: 0xFFFF_FFF0,
        }),
    ] {
        let config = AudioStreamConfig {
            packet_duration_ms: 5,
            encryption,
        };
        for seed in 0..8 {
            round_trip(&config, &packets, seed);
        }
    }
}

#[test]
fn encryption_pads_away_small_vbr_differences() {
    // 49..=63 bytes all become 64 bytes of ciphertext, so the block keeps its FEC.
    let packets: Vec<Vec<u8>> = (0..8u8).map(|n| vec![n; 49 + usize::from(n)]).collect();
    let config = AudioStreamConfig {
        packet_duration_ms: 10,
        encryption: Some(AudioEncryption {
            key: KEY,
            rikeyid: 77,
        }),
    };
    round_trip(&config, &packets, 3);
    let mut p = AudioPacketizer::new(&config);
    for opus in &packets {
        p.packetize(opus).unwrap();
    }
    assert_eq!(p.blocks_without_fec(), 0);
}

#[test]
fn seq_and_timestamp_wrap() {
    let config = AudioStreamConfig {
        packet_duration_ms: 5,
        encryption: None,
    };
    let mut p = AudioPacketizer::new(&config);
    for _ in 0..65_536 + 4 {
        p.packetize(&[1; 20]).unwrap();
    }
    let out = p.packetize(&[1; 20]).unwrap();
    assert_eq!(&out.data()[2..4], &4u16.to_be_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_cbr_stream_survives_two_losses_per_block(
        size in 1usize..=MAX_OPUS_PACKET,
        count in 1usize..24,
        duration in prop_oneof![Just(5u32), Just(10u32)],
        rikeyid in any::<u32>(),
        encrypted in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let packets: Vec<Vec<u8>> = (0..count)
            .map(|n| (0..size).map(|i| (i * 31 + n * 7) as u8 ^ (seed as u8)).collect())
            .collect();
        let config = AudioStreamConfig {
            packet_duration_ms: duration,
            encryption: encrypted.then_some(AudioEncryption { key: KEY, rikeyid }),
        };
        round_trip(&config, &packets, seed);
    }
}

#[test]
fn audio_packetizing_does_not_allocate() {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static COUNTING: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }
    struct Counting;
    // SAFETY: forwards every call unchanged to the system allocator; the counter touches only
    // const-initialized thread-locals, which never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = COUNTING.try_with(|on| {
                if on.get() {
                    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
                }
            });
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    let config = AudioStreamConfig {
        packet_duration_ms: 5,
        encryption: Some(AudioEncryption {
            key: KEY,
            rikeyid: 1,
        }),
    };
    COUNTING.with(|on| on.set(true));
    let mut p = AudioPacketizer::new(&config);
    assert!(COUNT.with(|c| c.replace(0)) > 0, "the counter counts");
    let opus = [0x33u8; 120];
    let mut datagrams = 0;
    for _ in 0..64 {
        datagrams += p.packetize(&opus).unwrap().iter().count();
    }
    COUNTING.with(|on| on.set(false));
    assert_eq!(datagrams, 64 + 32);
    assert_eq!(COUNT.with(|c| c.get()), 0, "allocations while packetizing");
}
