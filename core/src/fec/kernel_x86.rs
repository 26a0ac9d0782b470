//! x86-64 SIMD kernels for Cauchy parity: GFNI affine (512- and 256-bit) and AVX2 split-nibble.
//!
//! This is the one module of `lumen-core` allowed `unsafe` (the crate root denies it everywhere else).
//! Why the exception: parity runs for every video datagram, and only SIMD reaches nanors' speed (the
//! portable kernel is about 40× slower, more than a core at 1 Gbit/s). The unsafe surface is kept to two
//! kinds of one-line blocks:
//! - unaligned loads/stores of whole registers from/to fixed-size byte arrays (`&[u8; 64]`, `&[u8; 32]`,
//!   `&[u8; 16]`), whose length is exactly the register width, so they never reach outside the array;
//! - the call into a `#[target_feature]` function, made only after `is_x86_feature_detected!` has
//!   confirmed every feature that function enables.
//!
//! Everything else (the arithmetic intrinsics) is safe Rust inside the `#[target_feature]` functions.
//!
//! Shape: register tiling. For one 64-byte column (two with AVX-512) the kernel keeps the accumulators
//! of up to T parity shards in registers, reads each data shard once per tile, multiplies it by the T
//! coefficients and XORs into the accumulators; parity is written once per column. A shard length that
//! is not a multiple of 64 ends with one column read through a zero-padded copy.

use std::arch::x86_64::*;

use super::kernel::Kernel;
use super::FecError;

/// Bytes per column: one 512-bit register, two 256-bit ones.
const COLUMN: usize = 64;

pub(super) fn avx2_supported() -> bool {
    is_x86_feature_detected!("avx2")
}

pub(super) fn gfni256_supported() -> bool {
    is_x86_feature_detected!("gfni") && is_x86_feature_detected!("avx2")
}

pub(super) fn gfni512_supported() -> bool {
    is_x86_feature_detected!("gfni")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
}

/// Computes parity with the 512-bit GFNI kernel. `matrices` holds one affine matrix per coefficient,
/// `[i · P + j]`; all shards have the same length.
pub(super) fn encode_gfni512(
    matrices: &[u64],
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
) -> Result<(), FecError> {
    if !gfni512_supported() {
        return Err(FecError::KernelUnavailable(Kernel::Gfni512));
    }
    // SAFETY: gfni, avx512f and avx512bw were detected just above; they are all `gfni512` enables.
    unsafe { gfni512(matrices, data, parity) };
    Ok(())
}

/// Computes parity with the 256-bit GFNI kernel (same tables as [`encode_gfni512`]).
pub(super) fn encode_gfni256(
    matrices: &[u64],
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
) -> Result<(), FecError> {
    if !gfni256_supported() {
        return Err(FecError::KernelUnavailable(Kernel::Gfni256));
    }
    // SAFETY: gfni and avx2 (which implies avx) were detected just above; they are all `gfni256` enables.
    unsafe { gfni256(matrices, data, parity) };
    Ok(())
}

/// Computes parity with the AVX2 split-nibble kernel. `tables` holds one 32-byte nibble table per
/// coefficient, `[i · P + j]`.
pub(super) fn encode_avx2(
    tables: &[[u8; 32]],
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
) -> Result<(), FecError> {
    if !avx2_supported() {
        return Err(FecError::KernelUnavailable(Kernel::Avx2));
    }
    // SAFETY: avx2 was detected just above; it is all `avx2` enables.
    unsafe { avx2(tables, data, parity) };
    Ok(())
}

// ---- byte columns ----------------------------------------------------------------------------------

/// The 64 bytes of `shard` at `at`. Callers keep `at + 64 <= shard.len()`.
#[inline]
fn column(shard: &[u8], at: usize) -> &[u8; COLUMN] {
    shard[at..at + COLUMN].try_into().unwrap_or(&[0; COLUMN])
}

/// The bytes of `shard` from `at` (fewer than 64), zero-padded to a column.
#[inline]
fn padded_column(shard: &[u8], at: usize) -> [u8; COLUMN] {
    let mut padded = [0u8; COLUMN];
    let rest = shard.get(at..).unwrap_or(&[]);
    let n = rest.len().min(COLUMN);
    padded[..n].copy_from_slice(&rest[..n]);
    padded
}

/// Writes `bytes` to `shard` at `at`, stopping at the shard's end (for the padded last column).
#[inline]
fn store_column(shard: &mut [u8], at: usize, bytes: &[u8; COLUMN]) {
    let rest = shard.get_mut(at..).unwrap_or(&mut []);
    let n = rest.len().min(COLUMN);
    rest[..n].copy_from_slice(&bytes[..n]);
}

#[inline]
#[target_feature(enable = "avx512f")]
fn read512(bytes: &[u8; 64]) -> __m512i {
    // SAFETY: `bytes` is exactly 64 readable bytes, the register's width; `loadu` needs no alignment.
    unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn write512(bytes: &mut [u8; 64], value: __m512i) {
    // SAFETY: `bytes` is exactly 64 writable bytes, the register's width; `storeu` needs no alignment.
    unsafe { _mm512_storeu_si512(bytes.as_mut_ptr().cast(), value) }
}

#[inline]
#[target_feature(enable = "avx")]
fn read256(bytes: &[u8; 32]) -> __m256i {
    // SAFETY: `bytes` is exactly 32 readable bytes, the register's width; `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx")]
fn write256(bytes: &mut [u8; 32], value: __m256i) {
    // SAFETY: `bytes` is exactly 32 writable bytes, the register's width; `storeu` needs no alignment.
    unsafe { _mm256_storeu_si256(bytes.as_mut_ptr().cast(), value) }
}

#[inline]
#[target_feature(enable = "avx")]
fn read256_pair(bytes: &[u8; 64]) -> [__m256i; 2] {
    let (low, high) = bytes.split_at(32);
    [
        read256(low.try_into().unwrap_or(&[0; 32])),
        read256(high.try_into().unwrap_or(&[0; 32])),
    ]
}

#[inline]
#[target_feature(enable = "avx")]
fn write256_pair(bytes: &mut [u8; 64], value: [__m256i; 2]) {
    let (low, high) = bytes.split_at_mut(32);
    if let (Ok(low), Ok(high)) = (
        <&mut [u8; 32]>::try_from(low),
        <&mut [u8; 32]>::try_from(high),
    ) {
        write256(low, value[0]);
        write256(high, value[1]);
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn read_nibble_table(table: &[u8; 32]) -> (__m256i, __m256i) {
    let (low, high) = table.split_at(16);
    let low: &[u8; 16] = low.try_into().unwrap_or(&[0; 16]);
    let high: &[u8; 16] = high.try_into().unwrap_or(&[0; 16]);
    // SAFETY: each array is exactly 16 readable bytes, one 128-bit register; `loadu` needs no alignment.
    let (low, high) = unsafe {
        (
            _mm_loadu_si128(low.as_ptr().cast()),
            _mm_loadu_si128(high.as_ptr().cast()),
        )
    };
    (
        _mm256_broadcastsi128_si256(low),
        _mm256_broadcastsi128_si256(high),
    )
}

// ---- GFNI, 512-bit ---------------------------------------------------------------------------------

#[target_feature(enable = "gfni,avx512f,avx512bw")]
fn gfni512(matrices: &[u64], data: &[&[u8]], parity: &mut [&mut [u8]]) {
    let len = data.first().map_or(0, |s| s.len());
    let mut col = 0;
    while col + 2 * COLUMN <= len {
        gfni512_tiles::<2, false>(matrices, data, parity, col);
        col += 2 * COLUMN;
    }
    if col + COLUMN <= len {
        gfni512_tiles::<1, false>(matrices, data, parity, col);
        col += COLUMN;
    }
    if col < len {
        gfni512_tiles::<1, true>(matrices, data, parity, col);
    }
}

#[target_feature(enable = "gfni,avx512f,avx512bw")]
fn gfni512_tiles<const C: usize, const TAIL: bool>(
    matrices: &[u64],
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
    col: usize,
) {
    let p = parity.len();
    let mut j0 = 0;
    while p - j0 >= 8 {
        gfni512_tile::<8, C, TAIL>(matrices, data, parity, j0, col);
        j0 += 8;
    }
    match p - j0 {
        1 => gfni512_tile::<1, C, TAIL>(matrices, data, parity, j0, col),
        2 => gfni512_tile::<2, C, TAIL>(matrices, data, parity, j0, col),
        3 => gfni512_tile::<3, C, TAIL>(matrices, data, parity, j0, col),
        4 => gfni512_tile::<4, C, TAIL>(matrices, data, parity, j0, col),
        5 => gfni512_tile::<5, C, TAIL>(matrices, data, parity, j0, col),
        6 => gfni512_tile::<6, C, TAIL>(matrices, data, parity, j0, col),
        7 => gfni512_tile::<7, C, TAIL>(matrices, data, parity, j0, col),
        _ => {}
    }
}

/// Parity shards `j0..j0 + T` over columns `col..col + 64·C`.
#[inline]
#[target_feature(enable = "gfni,avx512f,avx512bw")]
fn gfni512_tile<const T: usize, const C: usize, const TAIL: bool>(
    matrices: &[u64],
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
    j0: usize,
    col: usize,
) {
    let p = parity.len();
    let mut acc = [[_mm512_setzero_si512(); C]; T];
    for (i, shard) in data.iter().enumerate() {
        let mut x = [_mm512_setzero_si512(); C];
        for (c, v) in x.iter_mut().enumerate() {
            let at = col + c * COLUMN;
            *v = if TAIL {
                read512(&padded_column(shard, at))
            } else {
                read512(column(shard, at))
            };
        }
        let row = &matrices[i * p + j0..i * p + j0 + T];
        for (a, &m) in acc.iter_mut().zip(row) {
            let m = _mm512_set1_epi64(m as i64);
            for (a, &v) in a.iter_mut().zip(&x) {
                *a = _mm512_xor_si512(*a, _mm512_gf2p8affine_epi64_epi8::<0>(v, m));
            }
        }
    }
    for (a, out) in acc.iter().zip(&mut parity[j0..j0 + T]) {
        for (c, &v) in a.iter().enumerate() {
            let at = col + c * COLUMN;
            let mut bytes = [0u8; COLUMN];
            if TAIL {
                write512(&mut bytes, v);
                store_column(out, at, &bytes);
            } else {
                let dst: &mut [u8; COLUMN] =
                    (&mut out[at..at + COLUMN]).try_into().unwrap_or(&mut bytes);
                write512(dst, v);
            }
        }
    }
}

// ---- GFNI, 256-bit ---------------------------------------------------------------------------------

#[target_feature(enable = "gfni,avx,avx2")]
fn gfni256(matrices: &[u64], data: &[&[u8]], parity: &mut [&mut [u8]]) {
    let len = data.first().map_or(0, |s| s.len());
    let mut col = 0;
    while col + COLUMN <= len {
        gfni256_tiles::<false>(matrices, data, parity, col);
        col += COLUMN;
    }
    if col < len {
        gfni256_tiles::<true>(matrices, data, parity, col);
    }
}

#[target_feature(enable = "gfni,avx,avx2")]
fn gfni256_tiles<const TAIL: bool>(
    matrices: &[u64],
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
    col: usize,
) {
    let p = parity.len();
    let mut j0 = 0;
    while p - j0 >= 6 {
        gfni256_tile::<6, TAIL>(matrices, data, parity, j0, col);
        j0 += 6;
    }
    match p - j0 {
        1 => gfni256_tile::<1, TAIL>(matrices, data, parity, j0, col),
        2 => gfni256_tile::<2, TAIL>(matrices, data, parity, j0, col),
        3 => gfni256_tile::<3, TAIL>(matrices, data, parity, j0, col),
        4 => gfni256_tile::<4, TAIL>(matrices, data, parity, j0, col),
        5 => gfni256_tile::<5, TAIL>(matrices, data, parity, j0, col),
        _ => {}
    }
}

#[inline]
#[target_feature(enable = "gfni,avx,avx2")]
fn gfni256_tile<const T: usize, const TAIL: bool>(
    matrices: &[u64],
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
    j0: usize,
    col: usize,
) {
    let p = parity.len();
    let mut acc = [[_mm256_setzero_si256(); 2]; T];
    for (i, shard) in data.iter().enumerate() {
        let x = if TAIL {
            read256_pair(&padded_column(shard, col))
        } else {
            read256_pair(column(shard, col))
        };
        let row = &matrices[i * p + j0..i * p + j0 + T];
        for (a, &m) in acc.iter_mut().zip(row) {
            let m = _mm256_set1_epi64x(m as i64);
            for (a, &v) in a.iter_mut().zip(&x) {
                *a = _mm256_xor_si256(*a, _mm256_gf2p8affine_epi64_epi8::<0>(v, m));
            }
        }
    }
    for (a, out) in acc.iter().zip(&mut parity[j0..j0 + T]) {
        let mut bytes = [0u8; COLUMN];
        if TAIL {
            write256_pair(&mut bytes, *a);
            store_column(out, col, &bytes);
        } else {
            let dst: &mut [u8; COLUMN] = (&mut out[col..col + COLUMN])
                .try_into()
                .unwrap_or(&mut bytes);
            write256_pair(dst, *a);
        }
    }
}

// ---- AVX2 split nibble -----------------------------------------------------------------------------

#[target_feature(enable = "avx,avx2")]
fn avx2(tables: &[[u8; 32]], data: &[&[u8]], parity: &mut [&mut [u8]]) {
    let len = data.first().map_or(0, |s| s.len());
    let mut col = 0;
    while col + COLUMN <= len {
        avx2_tiles::<false>(tables, data, parity, col);
        col += COLUMN;
    }
    if col < len {
        avx2_tiles::<true>(tables, data, parity, col);
    }
}

#[target_feature(enable = "avx,avx2")]
fn avx2_tiles<const TAIL: bool>(
    tables: &[[u8; 32]],
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
    col: usize,
) {
    let p = parity.len();
    let mut j0 = 0;
    while p - j0 >= 4 {
        avx2_tile::<4, TAIL>(tables, data, parity, j0, col);
        j0 += 4;
    }
    match p - j0 {
        1 => avx2_tile::<1, TAIL>(tables, data, parity, j0, col),
        2 => avx2_tile::<2, TAIL>(tables, data, parity, j0, col),
        3 => avx2_tile::<3, TAIL>(tables, data, parity, j0, col),
        _ => {}
    }
}

#[inline]
#[target_feature(enable = "avx,avx2")]
fn avx2_tile<const T: usize, const TAIL: bool>(
    tables: &[[u8; 32]],
    data: &[&[u8]],
    parity: &mut [&mut [u8]],
    j0: usize,
    col: usize,
) {
    let p = parity.len();
    let nibble = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_si256(); 2]; T];
    for (i, shard) in data.iter().enumerate() {
        let x = if TAIL {
            read256_pair(&padded_column(shard, col))
        } else {
            read256_pair(column(shard, col))
        };
        let low = [
            _mm256_and_si256(x[0], nibble),
            _mm256_and_si256(x[1], nibble),
        ];
        let high = [
            _mm256_and_si256(_mm256_srli_epi16::<4>(x[0]), nibble),
            _mm256_and_si256(_mm256_srli_epi16::<4>(x[1]), nibble),
        ];
        let row = &tables[i * p + j0..i * p + j0 + T];
        for (a, table) in acc.iter_mut().zip(row) {
            let (table_low, table_high) = read_nibble_table(table);
            for ((a, &l), &h) in a.iter_mut().zip(&low).zip(&high) {
                let product = _mm256_xor_si256(
                    _mm256_shuffle_epi8(table_low, l),
                    _mm256_shuffle_epi8(table_high, h),
                );
                *a = _mm256_xor_si256(*a, product);
            }
        }
    }
    for (a, out) in acc.iter().zip(&mut parity[j0..j0 + T]) {
        let mut bytes = [0u8; COLUMN];
        if TAIL {
            write256_pair(&mut bytes, *a);
            store_column(out, col, &bytes);
        } else {
            let dst: &mut [u8; COLUMN] = (&mut out[col..col + COLUMN])
                .try_into()
                .unwrap_or(&mut bytes);
            write256_pair(dst, *a);
        }
    }
}
