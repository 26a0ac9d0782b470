//! The video packetizer's datagrams, read back by a receiver written here from the protocol notes
//! (§6.2–§6.4, §6.6) the way moonlight-common-c reads them: every header field rule checked, up to P
//! shards per block dropped and recovered, the access unit compared byte for byte.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce, Tag};
use lumen_core::fec::{recover, FecConfig, Protection};
use lumen_core::video_packetizer::{
    FrameType, VideoEncryption, VideoError, VideoFrame, VideoPacketizer, VideoStreamConfig,
};
use proptest::prelude::*;

const KEY: [u8; 16] = *b"0123456789abcdef";

/// A small deterministic generator for loss patterns and frame bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// One received datagram after decryption, fields in host order.
#[derive(Clone, Debug)]
struct Packet {
    seq: u16,
    timestamp: u32,
    stream_packet_index: u32,
    frame_index: u32,
    flags: u8,
    multi_fec_blocks: u8,
    data_shards: usize,
    shard_index: usize,
    fec_percent: usize,
    /// The plaintext shard: RTP header, NV header and payload (`packetSize + 16` bytes).
    shard: Vec<u8>,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap())
}

/// What the receiver checks and keeps across frames.
struct Receiver {
    packet_size: usize,
    key: Option<[u8; 16]>,
    next_seq: Option<u16>,
    next_iv: Option<u64>,
    /// The last data packet's streamPacketIndex (24 bits), as the depacketizer keeps it.
    last_stream_index: Option<u32>,
}

impl Receiver {
    fn new(packet_size: usize, key: Option<[u8; 16]>) -> Receiver {
        Receiver {
            packet_size,
            key,
            next_seq: None,
            next_iv: None,
            last_stream_index: None,
        }
    }

    /// Decrypts (when a key is set) and parses one datagram, checking what holds for every datagram.
    fn parse(&mut self, datagram: &[u8], frame_index: u32) -> Packet {
        let shard_len = self.packet_size + 16;
        let shard = match self.key {
            Some(key) => {
                assert_eq!(datagram.len(), 32 + shard_len, "encrypted datagram size");
                let iv: [u8; 12] = datagram[..12].try_into().unwrap();
                assert_eq!(&iv[8..], &[0, 0, 0, b'V'], "IV fixed field");
                let counter = u64::from_le_bytes(iv[..8].try_into().unwrap());
                if let Some(expected) = self.next_iv {
                    assert_eq!(counter, expected, "IV counter +1 per datagram");
                }
                self.next_iv = Some(counter + 1);
                assert_eq!(le32(&datagram[12..16]), frame_index, "clear frameIndex");
                let tag = Tag::try_from(&datagram[16..32]).unwrap();
                let mut plain = datagram[32..].to_vec();
                Aes128Gcm::new(&key.into())
                    .decrypt_inout_detached(
                        &Nonce::from(iv),
                        &[],
                        plain.as_mut_slice().into(),
                        &tag,
                    )
                    .expect("GCM tag verifies");
                plain
            }
            None => {
                assert_eq!(datagram.len(), shard_len, "datagram is packetSize + 16");
                datagram.to_vec()
            }
        };
        assert_eq!(shard[0], 0x90, "RTP V2 + X");
        assert_eq!(&shard[8..12], &[0; 4], "SSRC");
        let seq = u16::from_be_bytes([shard[2], shard[3]]);
        if let Some(expected) = self.next_seq {
            assert_eq!(
                seq, expected,
                "RTP seq +1 per datagram, across blocks and frames"
            );
        }
        self.next_seq = Some(seq.wrapping_add(1));
        let fec_info = le32(&shard[28..]);
        assert_eq!(fec_info & 0xF, 0, "fecInfo bits 0-3");
        Packet {
            seq,
            timestamp: u32::from_be_bytes(shard[4..8].try_into().unwrap()),
            stream_packet_index: le32(&shard[16..]),
            frame_index: le32(&shard[20..]),
            flags: shard[24],
            multi_fec_blocks: shard[27],
            data_shards: (fec_info >> 22) as usize,
            shard_index: ((fec_info >> 12) & 0x3FF) as usize,
            fec_percent: ((fec_info >> 4) & 0xFF) as usize,
            shard,
        }
    }

    /// Receives a whole frame: checks every rule, drops up to P shards per block (as `rng` picks, none
    /// without it), recovers them as the client does and returns the frame's payload after the frame
    /// header, trimmed with `lastPayloadLen`, plus the frame header.
    fn frame(
        &mut self,
        datagrams: &[&[u8]],
        frame: &VideoFrame<'_>,
        min_parity: usize,
        mut rng: Option<&mut Rng>,
    ) -> (Vec<u8>, [u8; 8]) {
        let packets: Vec<Packet> = datagrams
            .iter()
            .map(|d| self.parse(d, frame.frame_index))
            .collect();
        let mut payload = Vec::new();
        let mut at = 0;
        let mut block_number = 0;
        let mut last_block = None;
        while at < packets.len() {
            let first = &packets[at];
            let d = first.data_shards;
            let pct = first.fec_percent;
            let p = (d * pct).div_ceil(100);
            assert!((1..=1023).contains(&d), "D in 1..=1023");
            if p > 0 {
                assert!(d + p <= 255, "a protected block has at most 255 shards");
                assert!(p >= min_parity, "P ≥ minRequiredFecPackets");
            }
            assert!(
                at + d + p <= packets.len(),
                "block {block_number} is complete"
            );
            let block = &packets[at..at + d + p];
            let base = first.seq;
            let this_last = first.multi_fec_blocks >> 6;
            assert_eq!(*last_block.get_or_insert(this_last), this_last);
            for (k, pk) in block.iter().enumerate() {
                assert_eq!(pk.shard_index, k, "shard index = position in block");
                assert_eq!(pk.data_shards, d, "D constant in a block");
                assert_eq!(pk.fec_percent, pct, "pct constant in a block");
                assert_eq!(
                    pk.seq.wrapping_sub(k as u16),
                    base,
                    "block base = seq - index"
                );
                assert_eq!(pk.frame_index, frame.frame_index);
                assert_eq!(pk.timestamp, frame.timestamp_90khz);
                assert_eq!(pk.multi_fec_blocks & 0x0F, 0);
                assert_eq!((pk.multi_fec_blocks >> 4) & 3, block_number, "block index");
                assert_eq!(pk.multi_fec_blocks >> 6, this_last);
                if k < d {
                    self.check_data_packet(pk, k, d);
                }
            }

            // Losses, then recovery over the zero-padded shards, then the client's header fix-ups.
            let mut shards: Vec<Vec<u8>> = block.iter().map(|pk| pk.shard.clone()).collect();
            let mut present = vec![true; d + p];
            if let Some(rng) = rng.as_deref_mut() {
                if p > 0 {
                    for _ in 0..rng.below(p + 1) {
                        let k = rng.below(d + p);
                        present[k] = false;
                        shards[k].fill(0);
                    }
                }
            }
            if present.iter().any(|&x| !x) {
                recover(d, p, &mut shards, &present).expect("≤ P losses are recoverable");
                let head = block.iter().zip(&present).find(|(_, &ok)| ok).unwrap().0;
                for i in (0..d).filter(|&i| !present[i]) {
                    let s = &mut shards[i];
                    s[0] = head.shard[0];
                    s[2..4].copy_from_slice(&base.wrapping_add(i as u16).to_be_bytes());
                    s[4..12].copy_from_slice(&head.shard[4..12]);
                    s[20..24].copy_from_slice(&frame.frame_index.to_le_bytes());
                    s[27] = head.multi_fec_blocks;
                    // The client drops recovered packets whose flags break the SOF/EOF rule.
                    let flags = s[24];
                    assert_eq!(flags, expected_flags(i, d), "recovered flags");
                    // Everything it uses equals what was sent (fecInfo is ignored in recovered data).
                    assert_eq!(&s[..28], &block[i].shard[..28], "recovered header");
                    assert_eq!(&s[32..], &block[i].shard[32..], "recovered payload");
                }
            }
            for s in &shards[..d] {
                payload.extend_from_slice(&s[32..]);
            }
            at += d + p;
            block_number += 1;
        }
        assert_eq!(
            Some(block_number - 1),
            last_block,
            "block count = last index + 1"
        );

        let header: [u8; 8] = payload[..8].try_into().unwrap();
        assert_eq!(header[0], 0x01, "short frame header");
        assert_eq!(header[3], frame.frame_type as u8);
        assert_eq!(
            u16::from_le_bytes([header[1], header[2]]),
            frame.host_latency_100us
        );
        assert_eq!(&header[6..8], &[0, 0]);
        let chunk = self.packet_size - 16;
        let last_len = u16::from_le_bytes([header[4], header[5]]) as usize;
        assert!(
            (1..=chunk).contains(&last_len),
            "lastPayloadLen in 1..=chunk"
        );
        let used = payload.len() - chunk + last_len;
        assert!(
            payload[used..].iter().all(|&b| b == 0),
            "the last shard is zero-padded"
        );
        (payload[8..used].to_vec(), header)
    }

    fn check_data_packet(&mut self, pk: &Packet, k: usize, d: usize) {
        assert_eq!(
            pk.flags,
            expected_flags(k, d),
            "flags of data shard {k}/{d}"
        );
        assert_eq!(pk.shard[25], 0, "extraFlags");
        assert_eq!(pk.shard[26], 0x10, "multiFecFlags");
        assert_eq!(&pk.shard[12..16], &[0; 4], "extension word");
        assert_eq!(
            pk.stream_packet_index & 0xFF,
            0,
            "streamPacketIndex low byte"
        );
        let index = pk.stream_packet_index >> 8;
        if let Some(last) = self.last_stream_index {
            let next = (last + 1) & 0xFF_FFFF;
            if pk.flags & 0x04 == 0 {
                assert_eq!(index, next, "non-SOF streamPacketIndex = previous + 1");
            } else {
                let ahead = index.wrapping_sub(next) & 0xFF_FFFF;
                assert!(ahead <= 0x7F_FFFF, "SOF streamPacketIndex never goes back");
            }
        }
        self.last_stream_index = Some(index);
    }
}

fn expected_flags(k: usize, d: usize) -> u8 {
    let mut flags = 0x01;
    if k == 0 {
        flags |= 0x04;
    }
    if k + 1 == d {
        flags |= 0x02;
    }
    flags
}

fn config(packet_size: usize, percent: u8, min_parity: u8, encrypted: bool) -> VideoStreamConfig {
    VideoStreamConfig {
        packet_size,
        fec: FecConfig {
            percent,
            min_parity,
            max_blocks: 4,
        },
        encryption: encrypted.then_some(VideoEncryption {
            key: KEY,
            first_iv_counter: 1000,
        }),
    }
}

fn frame(au: &[u8], index: u32, frame_type: FrameType) -> VideoFrame<'_> {
    VideoFrame {
        access_unit: au,
        frame_index: index,
        timestamp_90khz: index.wrapping_mul(1500).wrapping_add(7),
        frame_type,
        host_latency_100us: 42,
        ltr: false,
    }
}

/// Sends `sizes` as consecutive frames and receives them with losses; returns the block counts.
fn round_trip(config: &VideoStreamConfig, sizes: &[usize], seed: u64) -> Vec<usize> {
    let mut rng = Rng(seed);
    let mut packetizer = VideoPacketizer::new(config).unwrap();
    let mut receiver = Receiver::new(config.packet_size, config.encryption.map(|e| e.key));
    let mut blocks = Vec::new();
    for (n, &size) in sizes.iter().enumerate() {
        let au = rng.bytes(size);
        let f = frame(&au, n as u32 + 1, [FrameType::Idr, FrameType::P][n % 2]);
        let out = packetizer.packetize(&f).unwrap();
        blocks.push(out.plan().blocks().len());
        let datagrams: Vec<&[u8]> = out.iter().collect();
        assert_eq!(datagrams.len(), out.len());
        let lossy = n % 2 == 1 || sizes.len() == 1;
        let (got, _) = receiver.frame(
            &datagrams,
            &f,
            usize::from(config.fec.min_parity),
            lossy.then_some(&mut rng),
        );
        assert!(got == au, "frame {} of {size} bytes differs", n + 1);
    }
    blocks
}

#[test]
fn single_shard_frame_carries_sof_and_eof() {
    let blocks = round_trip(&config(1392, 20, 2, false), &[1, 0, 1368, 1369], 1);
    assert_eq!(blocks, vec![1, 1, 1, 1]);
}

#[test]
fn a_401_shard_idr_is_two_blocks_and_recovers_in_both() {
    // 401 data shards at packetSize 1392: 400 × 1376 + 1 bytes of stream.
    let size = 400 * 1376 + 1 - 8;
    let blocks = round_trip(&config(1392, 20, 2, true), &[size, size], 7);
    assert_eq!(blocks, vec![2, 2]);
}

#[test]
fn frames_past_four_full_blocks_keep_fec_and_decode() {
    let mut p = VideoPacketizer::new(&config(1392, 20, 2, false)).unwrap();
    let max = p.max_protected_access_unit();
    assert_eq!(max, 1008 * 1376 - 8);
    let au = vec![0x5A; max];
    let out = p.packetize(&frame(&au, 1, FrameType::Idr)).unwrap();
    assert_eq!(out.plan().protection(), Protection::Reduced);
    assert!(out.plan().blocks().iter().all(|b| b.parity_shards == 3));
    let au = vec![0x5A; max + 1];
    let out = p.packetize(&frame(&au, 2, FrameType::Idr)).unwrap();
    assert_eq!(out.plan().protection(), Protection::Partial);
    round_trip(
        &config(1392, 20, 2, true),
        &[848 * 1376 - 8, max, max + 1, 3_000_000],
        3,
    );
}

#[test]
fn frames_too_large_for_four_blocks_are_refused() {
    let mut p = VideoPacketizer::new(&config(512, 20, 2, false)).unwrap();
    let too_big = vec![0u8; p.max_access_unit() + 1];
    assert!(matches!(
        p.packetize(&frame(&too_big, 1, FrameType::Idr)),
        Err(VideoError::Plan { .. })
    ));
    let counter = p.next_packet_counter();
    assert_eq!(counter, 0, "a refused frame consumes no seqs");
    let fits = vec![0u8; p.max_access_unit()];
    assert_eq!(
        p.packetize(&frame(&fits, 1, FrameType::Idr)).unwrap().len(),
        4092
    );
}

#[test]
fn seq_wraps_at_16_bits_and_stream_index_continues_in_24() {
    let config = config(512, 20, 2, false);
    let mut p = VideoPacketizer::new(&config).unwrap();
    p.set_next_packet_counter(0xFFFF_FFF0);
    let mut receiver = Receiver::new(512, None);
    let mut rng = Rng(9);
    for n in 1..=4u32 {
        let au = rng.bytes(10_000);
        let f = frame(&au, n, FrameType::P);
        let out = p.packetize(&f).unwrap();
        let datagrams: Vec<&[u8]> = out.iter().collect();
        let (got, _) = receiver.frame(&datagrams, &f, 2, Some(&mut rng));
        assert_eq!(got, au);
    }
    assert!(p.next_packet_counter() < 0x100, "counter wrapped");
}

#[test]
fn the_buffer_is_reused_once_reserved() {
    let mut p = VideoPacketizer::new(&config(1392, 20, 2, true)).unwrap();
    p.reserve_for(600_000).unwrap();
    let big = vec![1u8; 600_000];
    let small = vec![2u8; 40_000];
    let first = p
        .packetize(&frame(&small, 1, FrameType::P))
        .unwrap()
        .as_bytes()
        .as_ptr();
    let second = p
        .packetize(&frame(&big, 2, FrameType::Idr))
        .unwrap()
        .as_bytes()
        .as_ptr();
    assert_eq!(first, second);
}

#[test]
fn iv_counter_and_datagram_size_follow_encryption() {
    let mut p = VideoPacketizer::new(&config(1360, 20, 2, true)).unwrap();
    assert_eq!(p.datagram_len(), 1360 + 16 + 32);
    let au = vec![3u8; 5000];
    let n = p.packetize(&frame(&au, 1, FrameType::Idr)).unwrap().len() as u64;
    assert_eq!(p.next_iv_counter(), Some(1000 + n));
    let plain = VideoPacketizer::new(&config(1360, 20, 2, false)).unwrap();
    assert_eq!(plain.datagram_len(), 1376);
    assert_eq!(plain.next_iv_counter(), None);
}

#[test]
fn ltr_sets_extra_flags_on_data_packets() {
    let mut p = VideoPacketizer::new(&config(512, 0, 2, false)).unwrap();
    let au = vec![9u8; 2000];
    let mut f = frame(&au, 1, FrameType::P);
    f.ltr = true;
    let out = p.packetize(&f).unwrap();
    assert!(out.iter().all(|d| d[25] == 0x01));
}

/// AU sizes from 1 byte to 4 MB, weighted towards the sizes frames have.
fn au_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 1usize..4_000,
        4 => 4_000usize..200_000,
        2 => 200_000usize..1_500_000,
        1 => 1_500_000usize..=4_000_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn any_frame_is_received_byte_exact_after_losses(
        sizes in proptest::collection::vec(au_size(), 1..3),
        packet_size in 512usize..=1392,
        percent in 0u8..=100,
        min_parity in 0u8..=3,
        max_blocks in prop_oneof![3 => Just(4u8), 1 => 1u8..=3],
        encrypted in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut config = config(packet_size, percent, min_parity, encrypted);
        // 1 block: clients below appversion 7.1.431 (no multi-FEC).
        config.fec.max_blocks = max_blocks;
        let p = VideoPacketizer::new(&config).unwrap();
        let max = p.max_access_unit();
        let sizes: Vec<usize> = sizes.into_iter().map(|s| s.min(max)).collect();
        round_trip(&config, &sizes, seed);
        if sizes.contains(&max) {
            let mut p = VideoPacketizer::new(&config).unwrap();
            let au = vec![0u8; max + 1];
            prop_assert!(p.packetize(&frame(&au, 1, FrameType::Idr)).is_err());
        }
    }
}

/// Counts heap allocations made by the current thread while `COUNTING` is set (other test threads
/// allocate freely).
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static COUNTING: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; the counter only reads and
    // writes const-initialized thread-locals, which never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note();
            // SAFETY: forwarded with the caller's layout, as GlobalAlloc requires.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note();
            // SAFETY: `ptr` came from `System.alloc` with `layout`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    fn note() {
        let _ = COUNTING.try_with(|on| {
            if on.get() {
                let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            }
        });
    }

    /// Allocations `f` makes on this thread.
    pub fn allocations(f: impl FnOnce()) -> usize {
        COUNT.with(|c| c.set(0));
        COUNTING.with(|on| on.set(true));
        f();
        COUNTING.with(|on| on.set(false));
        COUNT.with(|c| c.get())
    }
}

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;

#[test]
fn steady_state_packetizing_does_not_allocate() {
    let mut rng = Rng(5);
    let frames: Vec<Vec<u8>> = [150_000, 40_000, 600_000, 38_000, 1_500_000, 1]
        .iter()
        .map(|&n| rng.bytes(n))
        .collect();
    for encrypted in [false, true] {
        let mut p = VideoPacketizer::new(&config(1392, 20, 2, encrypted)).unwrap();
        // First pass: the buffer grows and an encoder is built per block shape (which also shows
        // that the counter counts).
        let first = alloc_count::allocations(|| {
            for (n, au) in frames.iter().enumerate() {
                p.packetize(&frame(au, n as u32 + 1, FrameType::P)).unwrap();
            }
        });
        assert!(first > 0);
        let count = alloc_count::allocations(|| {
            for (n, au) in frames.iter().enumerate() {
                let out = p
                    .packetize(&frame(au, n as u32 + 10, FrameType::P))
                    .unwrap();
                assert!(!out.is_empty());
            }
        });
        assert_eq!(
            count, 0,
            "allocations in steady state (encrypted: {encrypted})"
        );
    }
}
