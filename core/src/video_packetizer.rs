//! Turns an encoded access unit into the exact video datagrams a stock Moonlight client decodes
//! (protocol notes §6.2–§6.4, §6.6), into one reused buffer with no allocation per packet or frame once
//! the buffer has grown to the largest frame seen.
//!
//! A frame's payload stream is the 8-byte frame header followed by the access unit, cut into
//! `packetSize − 16`-byte chunks. Each chunk is one data shard: a `packetSize + 16`-byte datagram with
//! the RTP header (16 bytes with the extension word) and the NV header (16 bytes) in front. The data
//! shards are split into FEC blocks by [`fec::plan_frame`]; each block is sent as its data shards, then
//! its parity shards, all with consecutive RTP sequence numbers. Parity is computed over the whole
//! zero-padded datagrams, so every datagram is full size.
//!
//! The datagrams lie back to back in the buffer, each `datagram_len` bytes (32 more when encrypted), in
//! send order: a UDP GSO sender can hand out the buffer in slices with no gathering.

use crate::fec::{self, EncoderCache, FecConfig, FecError, FramePlan, PlanError, ShardLayout};
use crate::stream_crypto::{CryptoError, VideoCipher, VIDEO_PREFIX_LEN};

/// RTP header as the client reads it: 12 fixed bytes and the 4-byte extension word (X bit set).
pub const RTP_HEADER_LEN: usize = 16;
/// The NV video header after the RTP header.
pub const NV_HEADER_LEN: usize = 16;
/// Bytes of the 8-byte short frame header at the start of a frame's payload stream.
pub const FRAME_HEADER_LEN: usize = 8;
/// The smallest `packetSize` accepted: room for the NV header and the frame header in one shard.
pub const MIN_PACKET_SIZE: usize = NV_HEADER_LEN + FRAME_HEADER_LEN;
/// The largest `packetSize` accepted: an encrypted datagram must still fit one UDP/IPv4 datagram.
pub const MAX_PACKET_SIZE: usize = 65_507 - RTP_HEADER_LEN - VIDEO_PREFIX_LEN;

/// NV header `flags`: the packet carries picture data.
pub const FLAG_CONTAINS_PIC_DATA: u8 = 0x01;
/// NV header `flags`: the last data shard of a block.
pub const FLAG_EOF: u8 = 0x02;
/// NV header `flags`: the first data shard of a block.
pub const FLAG_SOF: u8 = 0x04;
/// NV header `extraFlags`: the frame is a long-term reference (only with RFI).
pub const EXTRA_FLAG_LTR: u8 = 0x01;
/// NV header `multiFecFlags`, as Moonlight expects it.
pub const MULTI_FEC_FLAGS: u8 = 0x10;
/// RTP byte 0: version 2 with the extension bit.
pub const RTP_V2_EXTENSION: u8 = 0x90;

/// The frame type byte of the frame header (§6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// An ordinary P-frame.
    P = 1,
    /// An IDR frame (AV1 clients trust this; H.264/HEVC clients read the bitstream).
    Idr = 2,
    /// An intra-refresh frame.
    IntraRefresh = 4,
    /// The first P-frame after a reference frame invalidation.
    PAfterRfi = 5,
}

/// One frame to packetize.
#[derive(Clone, Copy, Debug)]
pub struct VideoFrame<'a> {
    /// The encoded access unit (Annex B for H.264/HEVC).
    pub access_unit: &'a [u8],
    /// `frameIndex`: 1 for the first frame of a stream, +1 per frame.
    pub frame_index: u32,
    /// The 90 kHz capture timestamp (RTP timestamp).
    pub timestamp_90khz: u32,
    /// The frame header's type byte.
    pub frame_type: FrameType,
    /// Host processing latency in 0.1 ms units (0 = unknown); clients read it from Sunshine hosts.
    pub host_latency_100us: u16,
    /// Whether this frame is a long-term reference frame (`extraFlags` 0x01; only with RFI).
    pub ltr: bool,
}

/// The settings of a video stream, fixed for the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoStreamConfig {
    /// ANNOUNCE `x-nv-video[0].packetSize`: bytes per datagram after the 16-byte RTP part (already
    /// reduced by 32 by the client when video encryption is on).
    pub packet_size: usize,
    /// FEC percentage, `minRequiredFecPackets` and block count (4 for appversion ≥ 7.1.431).
    pub fec: FecConfig,
    /// `rikey` and the first GCM IV counter when video encryption (`SS_ENC_VIDEO`) is on.
    pub encryption: Option<VideoEncryption>,
}

/// Video encryption settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoEncryption {
    /// The session's `rikey`.
    pub key: [u8; 16],
    /// The GCM IV counter of the first datagram; must not repeat an IV already used with `key`.
    pub first_iv_counter: u64,
}

/// What can go wrong packetizing a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VideoError {
    /// `packetSize` outside what the datagram layout allows.
    #[error("packetSize {0} is outside {MIN_PACKET_SIZE}..={MAX_PACKET_SIZE}")]
    PacketSize(usize),
    /// The frame cannot be cut into at most 4 blocks (too large for this packet size).
    #[error("the frame of {bytes} bytes cannot be sent: {source}")]
    Plan {
        bytes: usize,
        #[source]
        source: PlanError,
    },
    /// Parity computation failed.
    #[error("FEC: {0}")]
    Fec(#[from] FecError),
    /// Encryption failed.
    #[error("encryption: {0}")]
    Crypto(#[from] CryptoError),
}

/// Packetizes the frames of one video stream. Keeps the RTP sequence / `streamPacketIndex` counter,
/// the GCM IV counter, the FEC encoders and the datagram buffer between frames.
pub struct VideoPacketizer {
    packet_size: usize,
    fec: FecConfig,
    cipher: Option<VideoCipher>,
    /// Counts every datagram sent: its low 16 bits are the RTP seq, `<< 8` the `streamPacketIndex`
    /// (the client compares 24 bits, so the counter must not wrap at 16 like the seq does).
    next_packet: u32,
    encoders: EncoderCache,
    arena: Vec<u8>,
}

impl VideoPacketizer {
    /// A packetizer for one stream; the first datagram gets RTP seq 0.
    pub fn new(config: &VideoStreamConfig) -> Result<VideoPacketizer, VideoError> {
        if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&config.packet_size) {
            return Err(VideoError::PacketSize(config.packet_size));
        }
        let cipher = match &config.encryption {
            Some(e) => Some(VideoCipher::new(&e.key, e.first_iv_counter)?),
            None => None,
        };
        Ok(VideoPacketizer {
            packet_size: config.packet_size,
            fec: config.fec,
            cipher,
            next_packet: 0,
            encoders: EncoderCache::new(),
            arena: Vec::new(),
        })
    }

    /// Bytes of every datagram this stream sends: `packetSize + 16`, plus 32 when encrypted.
    pub fn datagram_len(&self) -> usize {
        self.shard_len() + self.prefix_len()
    }

    /// Frame payload bytes per data shard: `packetSize − 16`.
    pub fn payload_per_shard(&self) -> usize {
        self.packet_size - NV_HEADER_LEN
    }

    /// The largest access unit this stream can send at all (4 × 1023 data shards, less the header).
    pub fn max_access_unit(&self) -> usize {
        let blocks = usize::from(self.fec.max_blocks).clamp(1, fec::MAX_BLOCKS);
        blocks * fec::MAX_DATA_SHARDS_FIELD * self.payload_per_shard() - FRAME_HEADER_LEN
    }

    /// The largest access unit whose every block still gets parity (4 × 252 data shards at any
    /// non-zero percentage; above it `plan_frame` leaves some blocks unprotected); 0 with FEC off.
    pub fn max_protected_access_unit(&self) -> usize {
        if self.fec.percent == 0 {
            return 0;
        }
        let blocks = usize::from(self.fec.max_blocks).clamp(1, fec::MAX_BLOCKS);
        let per_block = fec::max_data_shards_per_block(1, self.fec.min_parity);
        (blocks * per_block * self.payload_per_shard()).saturating_sub(FRAME_HEADER_LEN)
    }

    /// The RTP seq counter of the next datagram (low 16 bits are the seq).
    pub fn next_packet_counter(&self) -> u32 {
        self.next_packet
    }

    /// Continues a stream's packet counter (the low 16 bits become the next RTP seq), for a sender
    /// that takes over a running stream. A client that has seen no packet yet expects 0: it rejects
    /// a first seq "before" 0 in 16 bits and a first `streamPacketIndex` "before" 0 in 24 bits.
    pub fn set_next_packet_counter(&mut self, counter: u32) {
        self.next_packet = counter;
    }

    /// The GCM IV counter of the next encrypted datagram, if encryption is on.
    pub fn next_iv_counter(&self) -> Option<u64> {
        self.cipher.as_ref().map(VideoCipher::next_counter)
    }

    /// Capacity reserved for frames of up to `access_unit_len` bytes, so the first large frame does not
    /// grow the buffer on the send path.
    pub fn reserve_for(&mut self, access_unit_len: usize) -> Result<(), VideoError> {
        let plan = self.plan(access_unit_len)?;
        let needed = (plan.data_shards() + plan.parity_shards()) * self.datagram_len();
        if self.arena.len() < needed {
            self.arena.resize(needed, 0);
        }
        Ok(())
    }

    /// Builds every datagram of `frame` and returns them in send order. The packet counter advances
    /// only when the whole frame was built (the GCM IV counter may move on after a failure: an IV is
    /// never reused).
    pub fn packetize(&mut self, frame: &VideoFrame<'_>) -> Result<Datagrams<'_>, VideoError> {
        let plan = self.plan(frame.access_unit.len())?;
        let datagram_len = self.datagram_len();
        let total = plan.data_shards() + plan.parity_shards();
        let needed = total * datagram_len;
        if self.arena.len() < needed {
            self.arena.resize(needed, 0);
        }

        let chunk = self.payload_per_shard();
        let header = frame_header(frame, chunk);
        let prefix = self.prefix_len();
        let shard_len = self.shard_len();
        let layout = ShardLayout {
            offset: prefix,
            stride: datagram_len,
            len: shard_len,
        };
        let extra_flags = if frame.ltr { EXTRA_FLAG_LTR } else { 0 };
        let mut packet = self.next_packet;
        let mut slot = 0;

        for (b, block) in plan.blocks().iter().enumerate() {
            let multi_fec_blocks = plan.multi_fec_blocks(b);
            let block_area =
                &mut self.arena[slot * datagram_len..][..block.total_shards() * datagram_len];
            for i in 0..block.data_shards {
                let shard = &mut block_area[i * datagram_len + prefix..][..shard_len];
                let mut flags = FLAG_CONTAINS_PIC_DATA;
                if i == 0 {
                    flags |= FLAG_SOF;
                }
                if i + 1 == block.data_shards {
                    flags |= FLAG_EOF;
                }
                let counter = packet.wrapping_add(i as u32);
                write_rtp(shard, counter as u16, frame.timestamp_90khz);
                shard[16..20].copy_from_slice(&(counter << 8).to_le_bytes());
                shard[20..24].copy_from_slice(&frame.frame_index.to_le_bytes());
                shard[24] = flags;
                shard[25] = extra_flags;
                shard[26] = MULTI_FEC_FLAGS;
                shard[27] = multi_fec_blocks;
                shard[28..32].copy_from_slice(&block.fec_info(i).to_le_bytes());
                fill_payload(
                    &mut shard[RTP_HEADER_LEN + NV_HEADER_LEN..],
                    block.first_data_shard + i,
                    &header,
                    frame.access_unit,
                );
            }
            if block.parity_shards > 0 {
                self.encoders
                    .get(block.data_shards, block.parity_shards)?
                    .encode_in_place(block_area, layout)?;
                // The client reads seq, timestamp, frameIndex, block numbers and fecInfo of a parity
                // packet from its header and overwrites them in what it recovers, so these fields
                // carry the parity packet's own values, not parity (§6.4).
                for j in 0..block.parity_shards {
                    let index = block.data_shards + j;
                    let shard = &mut block_area[index * datagram_len + prefix..][..shard_len];
                    write_rtp_fixed(
                        shard,
                        packet.wrapping_add(index as u32) as u16,
                        frame.timestamp_90khz,
                    );
                    shard[20..24].copy_from_slice(&frame.frame_index.to_le_bytes());
                    shard[27] = multi_fec_blocks;
                    shard[28..32].copy_from_slice(&block.fec_info(index).to_le_bytes());
                }
            }
            if let Some(cipher) = self.cipher.as_mut() {
                for datagram in block_area.chunks_exact_mut(datagram_len) {
                    cipher.seal(datagram, frame.frame_index)?;
                }
            }
            packet = packet.wrapping_add(block.total_shards() as u32);
            slot += block.total_shards();
        }

        self.next_packet = packet;
        Ok(Datagrams {
            bytes: &self.arena[..needed],
            datagram_len,
            plan,
        })
    }

    fn plan(&self, access_unit_len: usize) -> Result<FramePlan, VideoError> {
        let bytes = access_unit_len + FRAME_HEADER_LEN;
        fec::plan_frame(bytes.div_ceil(self.payload_per_shard()), &self.fec).map_err(|source| {
            VideoError::Plan {
                bytes: access_unit_len,
                source,
            }
        })
    }

    fn shard_len(&self) -> usize {
        self.packet_size + RTP_HEADER_LEN
    }

    fn prefix_len(&self) -> usize {
        if self.cipher.is_some() {
            VIDEO_PREFIX_LEN
        } else {
            0
        }
    }
}

/// A frame's datagrams, back to back in send order, all [`Datagrams::datagram_len`] bytes.
#[derive(Clone, Copy, Debug)]
pub struct Datagrams<'a> {
    bytes: &'a [u8],
    datagram_len: usize,
    plan: FramePlan,
}

impl<'a> Datagrams<'a> {
    /// Number of datagrams.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.datagram_len
    }

    /// Whether there are none (never, for a packetized frame).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes of each datagram.
    pub fn datagram_len(&self) -> usize {
        self.datagram_len
    }

    /// All datagrams as one buffer (`len() × datagram_len()` bytes), for UDP GSO.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Datagram `index` in send order.
    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        self.bytes
            .get(index * self.datagram_len..)?
            .get(..self.datagram_len)
    }

    /// The datagrams in send order.
    pub fn iter(&self) -> std::slice::ChunksExact<'a, u8> {
        self.bytes.chunks_exact(self.datagram_len)
    }

    /// The frame's FEC blocks (how many data and parity shards each, at what percentage).
    pub fn plan(&self) -> &FramePlan {
        &self.plan
    }
}

impl<'a> IntoIterator for Datagrams<'a> {
    type Item = &'a [u8];
    type IntoIter = std::slice::ChunksExact<'a, u8>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The 8-byte short frame header (§6.3).
fn frame_header(frame: &VideoFrame<'_>, chunk: usize) -> [u8; FRAME_HEADER_LEN] {
    let last = match (frame.access_unit.len() + FRAME_HEADER_LEN) % chunk {
        0 => chunk,
        n => n,
    };
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0] = 0x01;
    header[1..3].copy_from_slice(&frame.host_latency_100us.to_le_bytes());
    header[3] = frame.frame_type as u8;
    // packetSize ≤ MAX_PACKET_SIZE keeps the chunk below 65536.
    header[4..6].copy_from_slice(&(last as u16).to_le_bytes());
    header
}

/// RTP header of a data shard: V2 with extension, PT 0, seq, timestamp, SSRC 0, extension word 0.
fn write_rtp(shard: &mut [u8], seq: u16, timestamp: u32) {
    write_rtp_fixed(shard, seq, timestamp);
    shard[12..16].fill(0);
}

/// The 12 fixed RTP bytes.
fn write_rtp_fixed(shard: &mut [u8], seq: u16, timestamp: u32) {
    shard[0] = RTP_V2_EXTENSION;
    shard[1] = 0;
    shard[2..4].copy_from_slice(&seq.to_be_bytes());
    shard[4..8].copy_from_slice(&timestamp.to_be_bytes());
    shard[8..12].fill(0);
}

/// Copies data shard `index` of the payload stream (frame header, then access unit) into `out` and
/// zero-pads the rest (the buffer is reused, so padding must be written).
fn fill_payload(out: &mut [u8], index: usize, header: &[u8; FRAME_HEADER_LEN], au: &[u8]) {
    let chunk = out.len();
    let mut written = 0;
    let au_start = if index == 0 {
        out[..FRAME_HEADER_LEN].copy_from_slice(header);
        written = FRAME_HEADER_LEN;
        0
    } else {
        index * chunk - FRAME_HEADER_LEN
    };
    let rest = au.get(au_start..).unwrap_or_default();
    let take = rest.len().min(chunk - written);
    out[written..written + take].copy_from_slice(&rest[..take]);
    out[written + take..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_payload_len_is_the_remainder_or_a_full_chunk() {
        let frame = |au: &'static [u8]| VideoFrame {
            access_unit: au,
            frame_index: 1,
            timestamp_90khz: 0,
            frame_type: FrameType::Idr,
            host_latency_100us: 0x0203,
            ltr: false,
        };
        let h = frame_header(&frame(&[0; 2]), 8);
        assert_eq!(h, [0x01, 0x03, 0x02, 2, 2, 0, 0, 0]);
        let h = frame_header(&frame(&[0; 8]), 8);
        assert_eq!(&h[4..6], &[8, 0]);
    }

    #[test]
    fn packet_size_bounds_are_checked() {
        let config = |packet_size| VideoStreamConfig {
            packet_size,
            fec: FecConfig::default(),
            encryption: None,
        };
        assert!(VideoPacketizer::new(&config(MIN_PACKET_SIZE - 1)).is_err());
        assert!(VideoPacketizer::new(&config(MAX_PACKET_SIZE + 1)).is_err());
        assert!(VideoPacketizer::new(&config(1392)).is_ok());
    }

    #[test]
    fn protected_limit_matches_the_planner() {
        let p = VideoPacketizer::new(&VideoStreamConfig {
            packet_size: 1392,
            fec: FecConfig::default(),
            encryption: None,
        })
        .unwrap();
        assert_eq!(p.max_protected_access_unit(), 1008 * 1376 - 8);
        assert_eq!(p.max_access_unit(), 4092 * 1376 - 8);
        let off = VideoPacketizer::new(&VideoStreamConfig {
            packet_size: 1392,
            fec: FecConfig {
                percent: 0,
                ..FecConfig::default()
            },
            encryption: None,
        })
        .unwrap();
        assert_eq!(off.max_protected_access_unit(), 0);
    }
}
