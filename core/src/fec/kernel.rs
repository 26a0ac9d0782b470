//! Which multiply-accumulate kernel computes parity, the per-shape tables each one reads, and the
//! portable kernel that every platform has.
//!
//! Every kernel computes exactly the same bytes (the tests compare each against the §6.4 formula); they
//! differ only in speed. [`Kernel::best`] picks the fastest the CPU supports at run time.

use std::fmt;

use super::gf256;
use super::FecError;

/// A way of computing parity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Plain Rust, one 256-byte product-table row per coefficient: runs everywhere.
    Portable,
    /// AVX2 split-nibble `vpshufb` tables, 32 bytes per coefficient (x86-64).
    Avx2,
    /// GFNI affine transform on 256-bit registers (x86-64 with GFNI and AVX2).
    Gfni256,
    /// GFNI affine transform on 512-bit registers (x86-64 with GFNI, AVX-512F and AVX-512BW).
    Gfni512,
}

impl Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::Portable,
        Kernel::Avx2,
        Kernel::Gfni256,
        Kernel::Gfni512,
    ];

    /// A short stable name (used in benchmark output).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Gfni256 => "gfni256",
            Kernel::Gfni512 => "gfni512",
        }
    }

    /// Whether this CPU can run the kernel (checked at run time).
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::kernel_x86::avx2_supported(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Gfni256 => super::kernel_x86::gfni256_supported(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Gfni512 => super::kernel_x86::gfni512_supported(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel this CPU supports. 512-bit GFNI comes first: on the Xeons measured it beat the
    /// 256-bit form (see docs/fec.md).
    pub fn best() -> Kernel {
        [Kernel::Gfni512, Kernel::Gfni256, Kernel::Avx2]
            .into_iter()
            .find(|k| k.is_supported())
            .unwrap_or(Kernel::Portable)
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The per-shape coefficient tables in the form a kernel reads, laid out like the coefficients
/// (`[i · P + j]`).
pub(super) enum Tables {
    /// Coefficient bytes: the portable kernel indexes the global product table with them.
    Portable(Box<[u8]>),
    /// For each coefficient c: `c·x` for x in 0..16, then `c·(x << 4)` for x in 0..16.
    Nibble(Box<[[u8; 32]]>),
    /// For each coefficient c: the 8×8 bit matrix of "multiply by c" in GFNI's affine layout.
    Affine(Box<[u64]>),
}

impl Tables {
    pub(super) fn new(kernel: Kernel, coefficients: &[u8]) -> Tables {
        match kernel {
            Kernel::Portable => Tables::Portable(coefficients.into()),
            Kernel::Avx2 => Tables::Nibble(coefficients.iter().map(|&c| nibble_table(c)).collect()),
            Kernel::Gfni256 | Kernel::Gfni512 => {
                Tables::Affine(coefficients.iter().map(|&c| affine_matrix(c)).collect())
            }
        }
    }
}

/// Low- and high-nibble product tables of `c`: `c·x = lo[x & 15] ^ hi[x >> 4]` because multiplication
/// by a constant is linear over XOR.
pub(super) fn nibble_table(c: u8) -> [u8; 32] {
    let mut table = [0u8; 32];
    for x in 0..16u8 {
        table[usize::from(x)] = gf256::mul(c, x);
        table[16 + usize::from(x)] = gf256::mul(c, x << 4);
    }
    table
}

/// The bit matrix A for which GFNI's `gf2p8affine(x, A, 0)` equals `c·x` in GF(2⁸)/0x11D.
///
/// GFNI's own multiply instruction reduces by 0x11B (the AES polynomial), so it cannot be used; but
/// multiplying by a constant is a linear map over GF(2), which the affine instruction applies to each
/// byte: output bit r is the parity of `x AND A.byte[7 − r]`. So byte 7 − r of A holds, for each input
/// bit k, bit r of `c · 2^k`.
pub(super) fn affine_matrix(c: u8) -> u64 {
    let mut matrix = 0u64;
    for r in 0..8 {
        let mut row = 0u8;
        for k in 0..8 {
            if (gf256::mul(c, 1 << k) >> r) & 1 != 0 {
                row |= 1 << k;
            }
        }
        matrix |= u64::from(row) << (8 * (7 - r));
    }
    matrix
}

/// Runs the chosen kernel. Shapes and lengths have been checked by the caller: `data` holds D shards and
/// `parity` P, all of the same length, and `tables` was built for this kernel and shape.
pub(super) fn run(
    kernel: Kernel,
    tables: &Tables,
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
) -> Result<(), FecError> {
    match (kernel, tables) {
        (Kernel::Portable, Tables::Portable(coefficients)) => {
            encode_portable(coefficients, data, parity);
            Ok(())
        }
        #[cfg(target_arch = "x86_64")]
        (Kernel::Avx2, Tables::Nibble(tables)) => {
            super::kernel_x86::encode_avx2(tables, data, parity)
        }
        #[cfg(target_arch = "x86_64")]
        (Kernel::Gfni256, Tables::Affine(tables)) => {
            super::kernel_x86::encode_gfni256(tables, data, parity)
        }
        #[cfg(target_arch = "x86_64")]
        (Kernel::Gfni512, Tables::Affine(tables)) => {
            super::kernel_x86::encode_gfni512(tables, data, parity)
        }
        _ => Err(FecError::KernelUnavailable(kernel)),
    }
}

/// Portable kernel: for each parity shard, the first data shard's product is written and each further
/// one XORed in, a product-table row per coefficient. Bytes are handled eight at a time so that the
/// output is read and written once per eight lookups.
pub(super) fn encode_portable(coefficients: &[u8], data: &[&[u8]], parity: &mut [&mut [u8]]) {
    let parity_count = parity.len();
    for (j, out) in parity.iter_mut().enumerate() {
        for (i, shard) in data.iter().enumerate() {
            let row = &gf256::MUL_TABLE[usize::from(coefficients[i * parity_count + j])];
            if i == 0 {
                for (o, &x) in out.iter_mut().zip(shard.iter()) {
                    *o = row[usize::from(x)];
                }
            } else {
                let mut out_words = out.chunks_exact_mut(8);
                let mut in_words = shard.chunks_exact(8);
                for (o, x) in (&mut out_words).zip(&mut in_words) {
                    let mut product = [0u8; 8];
                    for (p, &b) in product.iter_mut().zip(x) {
                        *p = row[usize::from(b)];
                    }
                    let word = u64::from_ne_bytes(product)
                        ^ u64::from_ne_bytes([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]);
                    o.copy_from_slice(&word.to_ne_bytes());
                }
                for (o, &x) in out_words
                    .into_remainder()
                    .iter_mut()
                    .zip(in_words.remainder())
                {
                    *o ^= row[usize::from(x)];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies an affine matrix to one byte the way the instruction defines it.
    fn apply_affine(matrix: u64, x: u8) -> u8 {
        let mut out = 0u8;
        for r in 0..8 {
            let row = (matrix >> (8 * (7 - r))) as u8;
            if (row & x).count_ones() % 2 == 1 {
                out |= 1 << r;
            }
        }
        out
    }

    #[test]
    fn affine_matrix_multiplies_by_its_coefficient_for_every_byte() {
        for c in 0..=255u8 {
            let matrix = affine_matrix(c);
            for x in 0..=255u8 {
                assert_eq!(apply_affine(matrix, x), gf256::mul(c, x), "c={c} x={x}");
            }
        }
    }

    #[test]
    fn nibble_tables_multiply_by_their_coefficient_for_every_byte() {
        for c in 0..=255u8 {
            let t = nibble_table(c);
            for x in 0..=255u8 {
                let split = t[usize::from(x & 15)] ^ t[16 + usize::from(x >> 4)];
                assert_eq!(split, gf256::mul(c, x), "c={c} x={x}");
            }
        }
    }

    #[test]
    fn best_kernel_is_supported_and_portable_always_is() {
        assert!(Kernel::Portable.is_supported());
        assert!(Kernel::best().is_supported());
    }

    #[test]
    fn tables_of_the_wrong_form_are_refused() {
        let tables = Tables::new(Kernel::Portable, &[1]);
        let data: [&[u8]; 1] = [&[1, 2, 3]];
        let mut out = [0u8; 3];
        let mut parity: [&mut [u8]; 1] = [&mut out];
        assert!(run(Kernel::Gfni512, &tables, &data, &mut parity).is_err());
        assert!(run(Kernel::Portable, &tables, &data, &mut parity).is_ok());
        assert_eq!(out, [1, 2, 3]);
    }
}
