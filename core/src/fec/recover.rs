//! Rebuilding lost shards of a video FEC block, as the client does: take any D surviving shards, invert
//! the D×D matrix of their rows (identity rows for data, Cauchy rows for parity) and multiply.
//!
//! lumen's host only encodes; this exists so that tests (and test clients) can prove the parity is a
//! working MDS code with Moonlight's matrix. It allocates, and is not meant for a per-packet path.

use super::gf256;
use super::matrix;
use super::{Encoder, FecError};

/// Restores the missing shards of a D + P block in place. `shards` holds all D + P shards (data first),
/// of one length; `present[k]` says whether shard k arrived. Missing data shards are solved for, then
/// missing parity shards recomputed. Fails if fewer than D shards are present.
pub fn recover<S: AsMut<[u8]>>(
    data_shards: usize,
    parity_shards: usize,
    shards: &mut [S],
    present: &[bool],
) -> Result<(), FecError> {
    matrix::check_shape(data_shards, parity_shards)?;
    let total = data_shards + parity_shards;
    if shards.len() != total {
        return Err(FecError::ShardCount {
            expected: total,
            got: shards.len(),
        });
    }
    if present.len() != total {
        return Err(FecError::PresenceCount {
            expected: total,
            got: present.len(),
        });
    }
    let len = shards[0].as_mut().len();
    if let Some((index, l)) = shards
        .iter_mut()
        .map(|s| s.as_mut().len())
        .enumerate()
        .find(|&(_, l)| l != len)
    {
        return Err(FecError::ShardLength {
            index,
            len: l,
            expected: len,
        });
    }
    let rows: Vec<usize> = (0..total)
        .filter(|&k| present[k])
        .take(data_shards)
        .collect();
    if rows.len() < data_shards {
        return Err(FecError::TooFewShards {
            present: rows.len(),
            needed: data_shards,
        });
    }

    if present[..data_shards].iter().any(|&p| !p) {
        let mut system = vec![vec![0u8; data_shards]; data_shards];
        for (row, &k) in system.iter_mut().zip(&rows) {
            if k < data_shards {
                row[k] = 1;
            } else {
                for (i, cell) in row.iter_mut().enumerate() {
                    *cell = matrix::coefficient(data_shards, parity_shards, i, k - data_shards)?;
                }
            }
        }
        let inverse = invert(system).ok_or(FecError::SingularMatrix)?;
        for missing in (0..data_shards).filter(|&i| !present[i]) {
            let mut rebuilt = vec![0u8; len];
            for (&c, &k) in inverse[missing].iter().zip(&rows) {
                let table = &gf256::MUL_TABLE[usize::from(c)];
                for (o, &x) in rebuilt.iter_mut().zip(shards[k].as_mut().iter()) {
                    *o ^= table[usize::from(x)];
                }
            }
            shards[missing].as_mut().copy_from_slice(&rebuilt);
        }
    }

    if present[data_shards..].iter().any(|&p| !p) {
        let encoder = Encoder::new(data_shards, parity_shards)?;
        let data: Vec<Vec<u8>> = shards[..data_shards]
            .iter_mut()
            .map(|s| s.as_mut().to_vec())
            .collect();
        let mut parity = vec![vec![0u8; len]; parity_shards];
        encoder.encode(&data, &mut parity)?;
        for (j, computed) in parity.iter().enumerate() {
            if !present[data_shards + j] {
                shards[data_shards + j].as_mut().copy_from_slice(computed);
            }
        }
    }
    Ok(())
}

/// Gauss-Jordan inversion over GF(2⁸); `None` if the matrix is singular.
fn invert(mut m: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
    let n = m.len();
    let mut inv: Vec<Vec<u8>> = (0..n)
        .map(|r| {
            let mut row = vec![0u8; n];
            row[r] = 1;
            row
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n).find(|&r| m[r][col] != 0)?;
        m.swap(col, pivot);
        inv.swap(col, pivot);
        let scale = gf256::inv(m[col][col])?;
        for x in m[col].iter_mut().chain(inv[col].iter_mut()) {
            *x = gf256::mul(*x, scale);
        }
        for r in 0..n {
            let factor = m[r][col];
            if r == col || factor == 0 {
                continue;
            }
            for c in 0..n {
                let (a, b) = (m[col][c], inv[col][c]);
                m[r][c] ^= gf256::mul(factor, a);
                inv[r][c] ^= gf256::mul(factor, b);
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverting_a_singular_matrix_fails() {
        assert!(invert(vec![vec![1, 2], vec![1, 2]]).is_none());
        let inv = invert(vec![vec![0, 1], vec![1, 0]]).unwrap();
        assert_eq!(inv, vec![vec![0, 1], vec![1, 0]]);
    }

    #[test]
    fn recover_rejects_bad_arguments() {
        let mut shards = vec![vec![0u8; 4]; 3];
        assert_eq!(
            recover(2, 1, &mut shards, &[true, true]),
            Err(FecError::PresenceCount {
                expected: 3,
                got: 2
            })
        );
        assert_eq!(
            recover(2, 1, &mut shards, &[true, false, false]),
            Err(FecError::TooFewShards {
                present: 1,
                needed: 2
            })
        );
        assert_eq!(
            recover(2, 2, &mut shards, &[true, true, true]),
            Err(FecError::ShardCount {
                expected: 4,
                got: 3
            })
        );
        shards[1].push(0);
        assert!(matches!(
            recover(2, 1, &mut shards, &[true, true, false]),
            Err(FecError::ShardLength { index: 1, .. })
        ));
    }
}
