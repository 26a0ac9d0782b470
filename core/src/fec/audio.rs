//! Audio FEC (protocol notes §7.4): every 4 consecutive audio payloads get 2 parity payloads from a
//! fixed matrix (the OpenFEC values NVIDIA used, which the client loads into its decoder), not from
//! the video code's Cauchy matrix.

use super::gf256;
use super::FecError;

/// Data payloads per audio FEC block.
pub const AUDIO_DATA_SHARDS: usize = 4;
/// Parity payloads per audio FEC block.
pub const AUDIO_PARITY_SHARDS: usize = 2;

/// `AUDIO_PARITY_MATRIX[j][i]` multiplies data payload i into parity payload j, in GF(2⁸)/0x11D.
pub const AUDIO_PARITY_MATRIX: [[u8; AUDIO_DATA_SHARDS]; AUDIO_PARITY_SHARDS] =
    [[0x77, 0x40, 0x38, 0x0E], [0xC7, 0xA7, 0x0D, 0x6C]];

/// Computes the two parity payloads of an audio block. All six payloads must have the same length
/// (the client disables audio FEC otherwise, which is why audio is sent CBR).
pub fn encode_audio_parity<D: AsRef<[u8]>, P: AsMut<[u8]>>(
    data: &[D; AUDIO_DATA_SHARDS],
    parity: &mut [P; AUDIO_PARITY_SHARDS],
) -> Result<(), FecError> {
    let expected = data[0].as_ref().len();
    let lengths = data
        .iter()
        .map(|d| d.as_ref().len())
        .chain(parity.iter_mut().map(|p| p.as_mut().len()));
    if let Some((index, len)) = lengths.enumerate().find(|&(_, len)| len != expected) {
        return Err(FecError::ShardLength {
            index,
            len,
            expected,
        });
    }
    for (out, coefficients) in parity.iter_mut().zip(&AUDIO_PARITY_MATRIX) {
        let out = out.as_mut();
        out.fill(0);
        for (shard, &c) in data.iter().zip(coefficients) {
            let row = &gf256::MUL_TABLE[usize::from(c)];
            for (o, &x) in out.iter_mut().zip(shard.as_ref()) {
                *o ^= row[usize::from(x)];
            }
        }
    }
    Ok(())
}
