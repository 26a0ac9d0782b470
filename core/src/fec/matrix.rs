//! The Cauchy parity matrix Moonlight decodes with (protocol notes §6.4): for a block of D data and P
//! parity shards, parity shard j is `XOR over i of inv((P + i) XOR j) · data_i`. The coefficients depend
//! on both D and P, so they are computed once per shape and kept by [`super::Encoder`].
//!
//! `(P + i)` runs over P..P+D−1 and `j` over 0..P−1: two disjoint sets inside 0..=254 when D + P ≤ 255, so
//! `(P + i) XOR j` is never 0 and every square submatrix is invertible (the Cauchy property that makes
//! the code MDS: any D of the D + P shards recover the block).

use super::gf256;
use super::FecError;

/// The most shards (data + parity) one Reed-Solomon block may hold: nanors' limit, and GF(2⁸)'s.
pub const MAX_BLOCK_SHARDS: usize = 255;

/// Checks a block shape: at least one data and one parity shard, and at most 255 in all.
pub fn check_shape(data_shards: usize, parity_shards: usize) -> Result<(), FecError> {
    if data_shards == 0 || parity_shards == 0 || data_shards + parity_shards > MAX_BLOCK_SHARDS {
        return Err(FecError::BadShape {
            data_shards,
            parity_shards,
        });
    }
    Ok(())
}

/// The coefficient that multiplies data shard `data_index` into parity shard `parity_index`.
pub fn coefficient(
    data_shards: usize,
    parity_shards: usize,
    data_index: usize,
    parity_index: usize,
) -> Result<u8, FecError> {
    check_shape(data_shards, parity_shards)?;
    if data_index >= data_shards || parity_index >= parity_shards {
        return Err(FecError::IndexOutOfRange {
            data_index,
            parity_index,
            data_shards,
            parity_shards,
        });
    }
    // Both fit in a byte: the shape check bounds P + i by 254 and j by 253.
    let row = (parity_shards + data_index) as u8;
    let column = parity_index as u8;
    gf256::inv(row ^ column).ok_or(FecError::BadShape {
        data_shards,
        parity_shards,
    })
}

/// All D·P coefficients, laid out by data shard (`[i · P + j]`) so that a kernel reading one data shard
/// finds the coefficients for consecutive parity shards next to each other.
pub fn coefficients_by_data_shard(
    data_shards: usize,
    parity_shards: usize,
) -> Result<Vec<u8>, FecError> {
    check_shape(data_shards, parity_shards)?;
    let mut out = Vec::with_capacity(data_shards * parity_shards);
    for i in 0..data_shards {
        for j in 0..parity_shards {
            out.push(coefficient(data_shards, parity_shards, i, j)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_outside_one_block_are_rejected() {
        assert!(check_shape(0, 1).is_err());
        assert!(check_shape(1, 0).is_err());
        assert!(check_shape(200, 56).is_err());
        assert!(check_shape(212, 43).is_ok());
        assert!(check_shape(50, 205).is_ok());
        assert!(check_shape(1, 254).is_ok());
    }

    #[test]
    fn coefficient_follows_the_formula_and_checks_its_indices() {
        // D=1, P=2: data row 2, so parity 0 uses inv(2) and parity 1 uses inv(3).
        assert_eq!(coefficient(1, 2, 0, 0).unwrap(), gf256::inv(2).unwrap());
        assert_eq!(coefficient(1, 2, 0, 1).unwrap(), gf256::inv(3).unwrap());
        assert!(coefficient(1, 2, 1, 0).is_err());
        assert!(coefficient(1, 2, 0, 2).is_err());
    }

    #[test]
    fn coefficients_are_laid_out_by_data_shard() {
        let all = coefficients_by_data_shard(3, 2).unwrap();
        assert_eq!(all.len(), 6);
        for i in 0..3 {
            for j in 0..2 {
                assert_eq!(all[i * 2 + j], coefficient(3, 2, i, j).unwrap());
            }
        }
    }
}
