//! Turns Opus packets into the audio datagrams a stock Moonlight client plays (protocol notes §7.2–§7.4):
//! RTP with payload type 97, the payload optionally AES-128-CBC encrypted, and after every 4th packet
//! of a block (seqs `4k .. 4k+3`) two FEC datagrams with the fixed audio parity matrix. All buffers are
//! owned by the packetizer and reused; nothing is allocated per packet.

use crate::fec::{encode_audio_parity, FecError, AUDIO_DATA_SHARDS, AUDIO_PARITY_SHARDS};
use crate::stream_crypto::{cbc_padded_len, AudioCipher, CryptoError};

/// RTP header length of audio data and FEC packets (no extension).
pub const AUDIO_RTP_HEADER_LEN: usize = 12;
/// The audio FEC header after the FEC packet's RTP header.
pub const AUDIO_FEC_HEADER_LEN: usize = 12;
/// RTP payload type of Opus data packets.
pub const AUDIO_PAYLOAD_TYPE: u8 = 97;
/// RTP payload type of audio FEC packets.
pub const AUDIO_FEC_PAYLOAD_TYPE: u8 = 127;
/// The largest Opus packet accepted: above the 2560 bytes a 10 ms packet of the highest surround
/// bitrate (2048 kbps) needs, with the CBC ciphertext still a round 4096 bytes.
pub const MAX_OPUS_PACKET: usize = 4080;

const MAX_PAYLOAD: usize = MAX_OPUS_PACKET + 16;
const SLOT: usize = AUDIO_RTP_HEADER_LEN + AUDIO_FEC_HEADER_LEN + MAX_PAYLOAD;

/// The settings of an audio stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioStreamConfig {
    /// ANNOUNCE `x-nv-aqos.packetDuration` in ms (5 or 10): the RTP timestamp step per packet.
    pub packet_duration_ms: u32,
    /// `rikey` and `rikeyid` when audio encryption is on (§7.3).
    pub encryption: Option<AudioEncryption>,
}

/// Audio encryption settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioEncryption {
    /// The session's `rikey`.
    pub key: [u8; 16],
    /// The session's `rikeyid` (its low 32 bits), from which each packet's IV derives.
    pub rikeyid: u32,
}

/// What can go wrong packetizing an audio packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    /// The Opus packet is empty or larger than [`MAX_OPUS_PACKET`].
    #[error("an Opus packet of {0} bytes is outside 1..={MAX_OPUS_PACKET}")]
    PacketSize(usize),
    /// Encryption failed.
    #[error("encryption: {0}")]
    Crypto(#[from] CryptoError),
    /// Parity computation failed.
    #[error("FEC: {0}")]
    Fec(#[from] FecError),
}

/// Packetizes one audio stream: keeps seq, timestamp and the current FEC block.
pub struct AudioPacketizer {
    duration: u32,
    cipher: Option<AudioCipher>,
    seq: u16,
    timestamp: u32,
    /// Six slots of `SLOT` bytes: the block's 4 data datagrams, then its 2 FEC datagrams.
    slots: Vec<u8>,
    /// Payload length of each data slot of the current block, 0 when that packet was not built.
    payload_lens: [usize; AUDIO_DATA_SHARDS],
    block_timestamp: u32,
    blocks_without_fec: u64,
}

impl AudioPacketizer {
    /// A packetizer whose first packet gets seq 0 and timestamp 0, like Sunshine's.
    pub fn new(config: &AudioStreamConfig) -> AudioPacketizer {
        AudioPacketizer {
            duration: config.packet_duration_ms,
            cipher: config
                .encryption
                .map(|e| AudioCipher::new(&e.key, e.rikeyid)),
            seq: 0,
            timestamp: 0,
            slots: vec![0; SLOT * (AUDIO_DATA_SHARDS + AUDIO_PARITY_SHARDS)],
            payload_lens: [0; AUDIO_DATA_SHARDS],
            block_timestamp: 0,
            blocks_without_fec: 0,
        }
    }

    /// The seq the next data packet gets.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// Blocks sent without FEC because their payloads differed in length (VBR Opus without encryption
    /// padding it away). The client would disable audio FEC for good on a size mismatch, so such a
    /// block gets no FEC packets at all.
    pub fn blocks_without_fec(&self) -> u64 {
        self.blocks_without_fec
    }

    /// Builds the data datagram of `opus`, and after the block's 4th packet its 2 FEC datagrams.
    pub fn packetize(&mut self, opus: &[u8]) -> Result<AudioDatagrams<'_>, AudioError> {
        if opus.is_empty() || opus.len() > MAX_OPUS_PACKET {
            return Err(AudioError::PacketSize(opus.len()));
        }
        let seq = self.seq;
        let timestamp = self.timestamp;
        let index = usize::from(seq) % AUDIO_DATA_SHARDS;
        if index == 0 {
            self.payload_lens = [0; AUDIO_DATA_SHARDS];
            self.block_timestamp = timestamp;
        }

        let slot = &mut self.slots[index * SLOT..][..SLOT];
        let (header, payload) = slot.split_at_mut(AUDIO_RTP_HEADER_LEN);
        let payload_len = match &self.cipher {
            Some(cipher) => cipher.encrypt(seq, opus, payload)?,
            None => {
                payload[..opus.len()].copy_from_slice(opus);
                opus.len()
            }
        };
        write_rtp(header, AUDIO_PAYLOAD_TYPE, seq, timestamp);
        self.payload_lens[index] = payload_len;
        self.seq = seq.wrapping_add(1);
        self.timestamp = timestamp.wrapping_add(self.duration);

        let data_len = AUDIO_RTP_HEADER_LEN + payload_len;
        let mut fec_len = 0;
        if index == AUDIO_DATA_SHARDS - 1 {
            if self.payload_lens.iter().all(|&n| n == payload_len) {
                self.build_fec(seq, payload_len)?;
                fec_len = AUDIO_RTP_HEADER_LEN + AUDIO_FEC_HEADER_LEN + payload_len;
            } else {
                self.blocks_without_fec += 1;
            }
        }

        let data = &self.slots[index * SLOT..][..data_len];
        let fec = (fec_len > 0).then(|| {
            let first = AUDIO_DATA_SHARDS * SLOT;
            [
                &self.slots[first..][..fec_len],
                &self.slots[first + SLOT..][..fec_len],
            ]
        });
        Ok(AudioDatagrams { data, fec })
    }

    /// Computes the block's parity and writes both FEC datagrams; `last_seq` is the block's 4th seq.
    fn build_fec(&mut self, last_seq: u16, payload_len: usize) -> Result<(), AudioError> {
        let base_seq = last_seq.wrapping_sub(AUDIO_DATA_SHARDS as u16 - 1);
        let (data_area, fec_area) = self.slots.split_at_mut(AUDIO_DATA_SHARDS * SLOT);
        let data: [&[u8]; AUDIO_DATA_SHARDS] =
            std::array::from_fn(|k| &data_area[k * SLOT + AUDIO_RTP_HEADER_LEN..][..payload_len]);
        let (first, second) = fec_area.split_at_mut(SLOT);
        let fec_offset = AUDIO_RTP_HEADER_LEN + AUDIO_FEC_HEADER_LEN;
        let (first_header, first_parity) = first.split_at_mut(fec_offset);
        let (second_header, second_parity) = second.split_at_mut(fec_offset);
        encode_audio_parity(
            &data,
            &mut [
                &mut first_parity[..payload_len],
                &mut second_parity[..payload_len],
            ],
        )?;
        for (j, header) in [first_header, second_header].into_iter().enumerate() {
            // Sunshine numbers FEC packets after the block's last seq; the client ignores it.
            let seq = last_seq.wrapping_add(1 + j as u16);
            write_rtp(header, AUDIO_FEC_PAYLOAD_TYPE, seq, 0);
            header[12] = j as u8;
            header[13] = AUDIO_PAYLOAD_TYPE;
            header[14..16].copy_from_slice(&base_seq.to_be_bytes());
            header[16..20].copy_from_slice(&self.block_timestamp.to_be_bytes());
            header[20..24].fill(0);
        }
        Ok(())
    }
}

/// The datagrams of one audio packet: its data datagram, then (after a block's 4th packet) the block's
/// two FEC datagrams.
#[derive(Clone, Copy, Debug)]
pub struct AudioDatagrams<'a> {
    data: &'a [u8],
    fec: Option<[&'a [u8]; AUDIO_PARITY_SHARDS]>,
}

impl<'a> AudioDatagrams<'a> {
    /// The data datagram.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The two FEC datagrams, when this packet completed a block.
    pub fn fec(&self) -> Option<[&'a [u8]; AUDIO_PARITY_SHARDS]> {
        self.fec
    }

    /// All datagrams in send order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> {
        std::iter::once(self.data).chain(self.fec.into_iter().flatten())
    }
}

/// Plain RTP header: V2, no extension, `payload_type`, seq and timestamp BE, SSRC 0.
fn write_rtp(header: &mut [u8], payload_type: u8, seq: u16, timestamp: u32) {
    header[0] = 0x80;
    header[1] = payload_type;
    header[2..4].copy_from_slice(&seq.to_be_bytes());
    header[4..8].copy_from_slice(&timestamp.to_be_bytes());
    header[8..12].fill(0);
}

/// The ciphertext length of an `n`-byte Opus packet when audio encryption is on (for sizing CBR).
pub fn encrypted_payload_len(n: usize) -> usize {
    cbc_padded_len(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_empty_packets_are_refused() {
        let mut p = AudioPacketizer::new(&AudioStreamConfig {
            packet_duration_ms: 5,
            encryption: None,
        });
        assert_eq!(p.packetize(&[]).unwrap_err(), AudioError::PacketSize(0));
        assert!(p.packetize(&[0; MAX_OPUS_PACKET + 1]).is_err());
        assert_eq!(p.next_seq(), 0);
        assert!(p.packetize(&[0; MAX_OPUS_PACKET]).is_ok());
    }

    #[test]
    fn unequal_block_gets_no_fec() {
        let mut p = AudioPacketizer::new(&AudioStreamConfig {
            packet_duration_ms: 5,
            encryption: None,
        });
        for n in [10, 10, 11, 10] {
            assert!(p.packetize(&vec![1; n]).unwrap().fec().is_none());
        }
        assert_eq!(p.blocks_without_fec(), 1);
    }
}
