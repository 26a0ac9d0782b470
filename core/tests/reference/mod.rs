//! The §6.4 formula, written independently of the crate (bitwise field arithmetic, inverses by
//! search), shared by the FEC tests so a wrong table or kernel in the crate cannot hide behind itself.

#![allow(dead_code, clippy::needless_range_loop)]

/// a·b in GF(2⁸) reduced by x⁸+x⁴+x³+x²+1, bit by bit.
pub fn gf_mul(a: u8, b: u8) -> u8 {
    let (mut a, mut b, mut p) = (u16::from(a), b, 0u16);
    while b != 0 {
        if b & 1 == 1 {
            p ^= a;
        }
        a <<= 1;
        if a & 0x100 != 0 {
            a ^= 0x11D;
        }
        b >>= 1;
    }
    p as u8
}

pub fn gf_inv(a: u8) -> u8 {
    (1..=255u8)
        .find(|&x| gf_mul(a, x) == 1)
        .expect("nonzero element")
}

/// `parity_j[k] = XOR_i inv((P+i) XOR j) · data_i[k]`, straight from protocol notes §6.4.
pub fn naive_parity(data: &[Vec<u8>], parity_shards: usize) -> Vec<Vec<u8>> {
    let len = data[0].len();
    (0..parity_shards)
        .map(|j| {
            let mut out = vec![0u8; len];
            for (i, shard) in data.iter().enumerate() {
                let c = gf_inv(((parity_shards + i) ^ j) as u8);
                for (o, &x) in out.iter_mut().zip(shard) {
                    *o ^= gf_mul(c, x);
                }
            }
            out
        })
        .collect()
}
