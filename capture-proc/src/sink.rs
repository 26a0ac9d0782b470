//! Where every capture source delivers: [`VideoSink`] puts frames into the broker's frame pool and
//! hands them to encode on the direct channel; [`AudioSink`] cuts PCM into one record per Opus
//! packet on the PCM ring. Both are `Send`, so a source may drive them from its own thread.
//!
//! Encode is a peer, not trusted: a `Release` for a slot capture did not hand out, or anything else
//! malformed on the direct channel, is a [`SinkError`] that ends the session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::frame_pool::FramePool;
use lumen_ipc::media::{
    CaptureToEncode, EncodeToCapture, FrameDesc, FrameDescError, FramePoolSpec, PixelFormat, Plane,
    AUDIO_SAMPLE_RATE,
};
use lumen_ipc::ring::{Producer, PushOutcome, RecordMeta, RingError, TS_CAPTURED};

/// Why a sink cannot go on; the session ends with this message.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("encode released slot {slot}, which capture had not handed to it")]
    ReleaseNotHandedOut { slot: u32 },
    #[error("encode sent {0} fds with a message on the frame channel")]
    UnexpectedFds(usize),
    #[error("frame channel to encode: {0}")]
    Channel(#[from] ChannelError),
    #[error("a {format:?} frame of {width}x{height} ({needed} bytes) does not fit a slot of {slot_bytes} bytes")]
    FrameTooLarge {
        format: PixelFormat,
        width: u32,
        height: u32,
        needed: u64,
        slot_bytes: u64,
    },
    #[error("frame description: {0}")]
    FrameDesc(#[from] FrameDescError),
    #[error("PCM ring: {0}")]
    Ring(#[from] RingError),
    #[error("one PCM packet ({bytes} bytes) is larger than the PCM ring takes ({max})")]
    PacketTooLarge { bytes: usize, max: usize },
    #[error("{samples} samples do not divide into frames of {channels} channels")]
    PartialAudioFrame { samples: usize, channels: u32 },
}

/// Counters of a session, shared with the thread that reports them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames handed to encode.
    pub frames: AtomicU64,
    /// Frames dropped for want of a free slot.
    pub dropped: AtomicU64,
    /// PCM packets written to the ring.
    pub audio_packets: AtomicU64,
    /// PCM packets dropped because the ring was full.
    pub audio_dropped: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Row alignment of every plane capture writes (what SIMD colour converters like).
pub const STRIDE_ALIGN: u64 = 64;

/// Planes of a `format` frame of `width`×`height` as capture lays them out in a slot: strides
/// rounded up to [`STRIDE_ALIGN`], planes back to back from offset 0. Errors when it does not fit
/// `slot_bytes`.
pub fn plane_layout(
    format: PixelFormat,
    width: u32,
    height: u32,
    slot_bytes: u64,
) -> Result<Vec<Plane>, SinkError> {
    let mut planes = Vec::with_capacity(format.plane_count());
    let mut offset = 0u64;
    for i in 0..format.plane_count() {
        let stride = format.min_stride(i, width).next_multiple_of(STRIDE_ALIGN);
        planes.push(Plane { offset, stride });
        offset += stride * format.plane_rows(i, height);
    }
    if offset > slot_bytes {
        return Err(SinkError::FrameTooLarge {
            format,
            width,
            height,
            needed: offset,
            slot_bytes,
        });
    }
    Ok(planes)
}

/// Capture's side of the frame pool and the frame channel.
pub struct VideoSink {
    pool: FramePool,
    spec: FramePoolSpec,
    channel: Channel,
    /// `handed_out[slot]`: the slot is encode's until it releases it.
    handed_out: Vec<bool>,
    seq: u64,
    counters: Arc<Counters>,
}

impl VideoSink {
    pub fn new(pool: FramePool, channel: Channel, counters: Arc<Counters>) -> VideoSink {
        let spec = pool.spec();
        VideoSink {
            pool,
            spec,
            channel,
            handed_out: vec![false; spec.slots as usize],
            seq: 0,
            counters,
        }
    }

    pub fn spec(&self) -> FramePoolSpec {
        self.spec
    }

    /// The `seq` the next captured frame gets (what the test pattern draws into it).
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Takes every `Release` encode has sent so far, without waiting.
    fn drain_releases(&mut self) -> Result<(), SinkError> {
        while let Some(received) = self.channel.try_recv::<EncodeToCapture>()? {
            if !received.fds.is_empty() {
                return Err(SinkError::UnexpectedFds(received.fds.len()));
            }
            let EncodeToCapture::Release { slot } = received.msg;
            match self.handed_out.get_mut(slot as usize) {
                Some(held) if *held => *held = false,
                _ => return Err(SinkError::ReleaseNotHandedOut { slot }),
            }
        }
        Ok(())
    }

    /// Delivers one captured frame: takes a free slot, lets `fill` write the picture into it (the
    /// whole slot and the plane layout; `fill` returns false when it has no picture after all),
    /// and hands it to encode. `Ok(true)`: sent. `Ok(false)`: not sent, either dropped because
    /// encode holds every slot (counted, and the frame's `seq` is skipped, so drops show as gaps)
    /// or declined by `fill` (neither counted nor numbered).
    pub fn submit(
        &mut self,
        format: PixelFormat,
        width: u32,
        height: u32,
        captured_ns: u64,
        fill: impl FnOnce(&mut [u8], &[Plane]) -> bool,
    ) -> Result<bool, SinkError> {
        self.drain_releases()?;
        let planes = plane_layout(format, width, height, self.spec.slot_bytes)?;
        let Some(slot) = self.handed_out.iter().position(|held| !held) else {
            self.seq += 1;
            Counters::bump(&self.counters.dropped);
            return Ok(false);
        };
        let slot = slot as u32;
        let desc = FrameDesc {
            slot,
            seq: self.seq,
            captured_ns,
            width,
            height,
            format,
            planes,
        };
        desc.check(&self.spec)?;
        let Some(bytes) = self.pool.slot_mut(slot) else {
            // The pool was mapped writable and the slot index is in range (checked above).
            return Err(SinkError::FrameDesc(FrameDescError::BadSlot {
                slot,
                slots: self.spec.slots,
            }));
        };
        if !fill(bytes, &desc.planes) {
            return Ok(false);
        }
        self.handed_out[slot as usize] = true;
        self.seq += 1;
        self.channel.send(&CaptureToEncode::Frame(desc), &[])?;
        Counters::bump(&self.counters.frames);
        Ok(true)
    }
}

/// Capture's side of the PCM ring: one record per Opus packet.
pub struct AudioSink {
    ring: Producer,
    channels: u32,
    /// Interleaved samples per record (samples per packet × channels).
    record_samples: usize,
    /// Samples of the record being gathered.
    pending: Vec<f32>,
    /// Capture time of `pending[0]`.
    pending_start_ns: u64,
    /// The record as bytes, reused.
    bytes: Vec<u8>,
    seq: u64,
    counters: Arc<Counters>,
}

/// Nanoseconds of `frames` sample frames at 48 kHz.
fn frames_ns(frames: u64) -> u64 {
    frames * 1_000_000_000 / u64::from(AUDIO_SAMPLE_RATE)
}

/// A gap or overlap between what arrives and what the pending record expects larger than this
/// means the source skipped: the partial record is thrown away so every timestamp stays true.
const MAX_JITTER_NS: u64 = 2_000_000;

impl AudioSink {
    /// `samples_per_packet` per channel (`SessionParams::audio_samples_per_packet`).
    pub fn new(
        ring: Producer,
        channels: u32,
        samples_per_packet: u32,
        counters: Arc<Counters>,
    ) -> Result<AudioSink, SinkError> {
        let record_samples = samples_per_packet as usize * channels as usize;
        let bytes = record_samples * 4;
        if bytes > ring.max_payload() {
            return Err(SinkError::PacketTooLarge {
                bytes,
                max: ring.max_payload(),
            });
        }
        Ok(AudioSink {
            ring,
            channels,
            record_samples,
            pending: Vec::with_capacity(record_samples),
            pending_start_ns: 0,
            bytes: vec![0; bytes],
            seq: 0,
            counters,
        })
    }

    pub fn channels(&self) -> u32 {
        self.channels
    }

    /// Takes interleaved samples whose first sample frame was captured at `captured_ns`
    /// (CLOCK_MONOTONIC) and writes every complete packet to the ring; the rest waits for the
    /// next push. A full ring drops the packet (its `seq` is skipped; the ring flags the gap).
    pub fn push(&mut self, captured_ns: u64, interleaved: &[f32]) -> Result<(), SinkError> {
        let channels = self.channels as usize;
        if !interleaved.len().is_multiple_of(channels) {
            return Err(SinkError::PartialAudioFrame {
                samples: interleaved.len(),
                channels: self.channels,
            });
        }
        if !self.pending.is_empty() {
            let expected =
                self.pending_start_ns + frames_ns((self.pending.len() / channels) as u64);
            if expected.abs_diff(captured_ns) > MAX_JITTER_NS {
                self.pending.clear();
            }
        }
        let mut rest = interleaved;
        let mut consumed_frames = 0u64;
        while !rest.is_empty() {
            if self.pending.is_empty() {
                self.pending_start_ns = captured_ns + frames_ns(consumed_frames);
            }
            let take = (self.record_samples - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            consumed_frames += (take / channels) as u64;
            if self.pending.len() == self.record_samples {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        for (out, sample) in self.bytes.chunks_exact_mut(4).zip(&self.pending) {
            out.copy_from_slice(&sample.to_le_bytes());
        }
        let mut meta = RecordMeta {
            seq: self.seq,
            ..RecordMeta::default()
        };
        meta.timestamps[TS_CAPTURED] = self.pending_start_ns;
        self.seq += 1;
        self.pending.clear();
        match self.ring.push(&meta, &self.bytes)? {
            PushOutcome::Written { .. } => Counters::bump(&self.counters.audio_packets),
            PushOutcome::Dropped => Counters::bump(&self.counters.audio_dropped),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_ipc::frame_pool::create_pool;
    use lumen_ipc::ring::{create_ring, Consumer};

    const SPEC: FramePoolSpec = FramePoolSpec {
        slots: 2,
        slot_bytes: 64 * 1024,
    };

    /// A sink and encode's end of the channel, over a real pool.
    fn video() -> (VideoSink, Channel, Arc<Counters>) {
        let memfd = create_pool("test-pool", &SPEC).unwrap();
        let pool = FramePool::map(memfd, SPEC, true).unwrap();
        let (capture, encode) = Channel::pair().unwrap();
        let counters = Arc::new(Counters::default());
        (
            VideoSink::new(pool, capture, counters.clone()),
            encode,
            counters,
        )
    }

    fn frame(sink: &mut VideoSink, value: u8) -> Result<bool, SinkError> {
        sink.submit(PixelFormat::Nv12, 100, 100, 42, |bytes, planes| {
            assert_eq!(planes.len(), 2);
            bytes[..planes[1].offset as usize].fill(value);
            true
        })
    }

    fn received(encode: &mut Channel) -> FrameDesc {
        let CaptureToEncode::Frame(desc) = encode.try_recv().unwrap().unwrap().msg;
        desc
    }

    fn release(encode: &Channel, slot: u32) {
        encode
            .send(&EncodeToCapture::Release { slot }, &[])
            .unwrap();
    }

    #[test]
    fn layout_aligns_strides_and_packs_planes() {
        let planes = plane_layout(PixelFormat::Nv12, 100, 51, 1 << 20).unwrap();
        assert_eq!(
            planes,
            vec![
                Plane {
                    offset: 0,
                    stride: 128
                },
                Plane {
                    offset: 128 * 51,
                    stride: 128
                }
            ]
        );
        let i420 = plane_layout(PixelFormat::I420, 1920, 1080, 1 << 22).unwrap();
        assert_eq!(i420[2].offset, 1920 * 1080 + 960 * 540);
        assert!(matches!(
            plane_layout(PixelFormat::Bgrx, 1920, 1080, 1 << 20),
            Err(SinkError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn frames_go_out_in_slots_and_come_back() {
        let (mut sink, mut encode, counters) = video();
        assert!(frame(&mut sink, 1).unwrap());
        assert!(frame(&mut sink, 2).unwrap());
        let a = received(&mut encode);
        let b = received(&mut encode);
        assert_eq!((a.seq, b.seq), (0, 1));
        assert_ne!(a.slot, b.slot);
        assert_eq!(a.captured_ns, 42);
        a.check(&SPEC).unwrap();
        // Encode reads what capture wrote through its own (read-only) view.
        let mut byte = [0u8; 1];
        let memfd_view = &sink.pool;
        assert!(memfd_view.copy_out(b.slot, 0, &mut byte));
        assert_eq!(byte[0], 2);

        // Both slots are encode's: the next frame is dropped and its seq skipped.
        assert!(!frame(&mut sink, 3).unwrap());
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 1);
        release(&encode, a.slot);
        assert!(frame(&mut sink, 4).unwrap());
        let c = received(&mut encode);
        assert_eq!((c.slot, c.seq), (a.slot, 3));
        assert_eq!(counters.frames.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_declined_fill_sends_nothing_and_keeps_the_slot() {
        let (mut sink, mut encode, counters) = video();
        let declined = sink
            .submit(PixelFormat::Nv12, 100, 100, 0, |_, _| false)
            .unwrap();
        assert!(!declined);
        assert!(encode.try_recv::<CaptureToEncode>().unwrap().is_none());
        assert_eq!(sink.next_seq(), 0);
        assert!(frame(&mut sink, 1).unwrap());
        assert!(frame(&mut sink, 1).unwrap());
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn releasing_a_slot_not_handed_out_is_an_error() {
        let (mut sink, encode, _) = video();
        release(&encode, 0);
        assert!(matches!(
            frame(&mut sink, 1),
            Err(SinkError::ReleaseNotHandedOut { slot: 0 })
        ));
        let (mut sink, encode, _) = video();
        release(&encode, 7);
        assert!(matches!(
            frame(&mut sink, 1),
            Err(SinkError::ReleaseNotHandedOut { slot: 7 })
        ));
        // A double release: the second one finds the slot already free.
        let (mut sink, mut encode, _) = video();
        assert!(frame(&mut sink, 1).unwrap());
        let slot = received(&mut encode).slot;
        release(&encode, slot);
        release(&encode, slot);
        assert!(matches!(
            frame(&mut sink, 1),
            Err(SinkError::ReleaseNotHandedOut { .. })
        ));
    }

    #[test]
    fn garbage_or_fds_on_the_channel_are_errors() {
        let (mut sink, encode, _) = video();
        encode.send(&"not a release", &[]).unwrap();
        assert!(matches!(frame(&mut sink, 1), Err(SinkError::Channel(_))));

        let (mut sink, mut encode, _) = video();
        assert!(frame(&mut sink, 1).unwrap());
        let slot = received(&mut encode).slot;
        let stray = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        use std::os::fd::AsFd;
        encode
            .send(&EncodeToCapture::Release { slot }, &[stray.as_fd()])
            .unwrap();
        assert!(matches!(
            frame(&mut sink, 1),
            Err(SinkError::UnexpectedFds(1))
        ));

        let (mut sink, encode, _) = video();
        drop(encode);
        assert!(matches!(
            frame(&mut sink, 1),
            Err(SinkError::Channel(ChannelError::Closed))
        ));
    }

    #[test]
    fn an_oversized_frame_is_an_error_not_a_write() {
        let (mut sink, mut encode, _) = video();
        let result = sink.submit(PixelFormat::Bgrx, 640, 480, 0, |_, _| {
            panic!("fill called for a frame that does not fit")
        });
        assert!(matches!(result, Err(SinkError::FrameTooLarge { .. })));
        assert!(encode.try_recv::<CaptureToEncode>().unwrap().is_none());
    }

    fn audio(channels: u32, spp: u32) -> (AudioSink, Consumer, Arc<Counters>) {
        let fds = create_ring("pcm", 1 << 16, 7).unwrap();
        let producer = Producer::attach(
            fds.memfd.try_clone().unwrap(),
            fds.doorbell.try_clone().unwrap(),
            7,
        )
        .unwrap();
        let consumer = Consumer::attach(fds.memfd, fds.doorbell, 7).unwrap();
        let counters = Arc::new(Counters::default());
        let sink = AudioSink::new(producer, channels, spp, counters.clone()).unwrap();
        (sink, consumer, counters)
    }

    fn records(consumer: &mut Consumer) -> Vec<(RecordMeta, Vec<f32>)> {
        let mut out = Vec::new();
        while let Some(view) = consumer.next().unwrap() {
            let meta = *view.meta();
            let bytes = view.copy_to_vec();
            view.release();
            let samples = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            out.push((meta, samples));
        }
        out
    }

    #[test]
    fn pcm_is_cut_into_packets_with_first_sample_times() {
        let (mut sink, mut consumer, counters) = audio(2, 240);
        // 100 frames, then 500 frames (completes record 0, fills record 1, leaves 120 pending).
        let first: Vec<f32> = (0..200).map(|i| i as f32).collect();
        let second: Vec<f32> = (200..1200).map(|i| i as f32).collect();
        let t0 = 1_000_000_000u64;
        sink.push(t0, &first).unwrap();
        assert!(records(&mut consumer).is_empty());
        sink.push(t0 + frames_ns(100), &second).unwrap();
        let got = records(&mut consumer);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.seq, 0);
        assert_eq!(got[1].0.seq, 1);
        assert_eq!(got[0].0.timestamps[TS_CAPTURED], t0);
        // Within a nanosecond: each push's time is rounded to whole nanoseconds.
        let second_start = got[1].0.timestamps[TS_CAPTURED];
        assert!(
            second_start.abs_diff(t0 + frames_ns(240)) <= 1,
            "{second_start}"
        );
        assert_eq!(got[0].1.len(), 480);
        assert_eq!(got[0].1[0], 0.0);
        assert_eq!(got[1].1[0], 480.0);
        assert_eq!(got[1].1[479], 959.0);
        assert_eq!(counters.audio_packets.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_jump_in_capture_time_discards_the_partial_packet() {
        let (mut sink, mut consumer, _) = audio(1, 240);
        sink.push(0, &[0.5; 100]).unwrap();
        let later = 1_000_000_000;
        sink.push(later, &[0.25; 240]).unwrap();
        let got = records(&mut consumer);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.timestamps[TS_CAPTURED], later);
        assert!(got[0].1.iter().all(|&s| s == 0.25));
    }

    #[test]
    fn audio_input_errors() {
        let (mut sink, _, _) = audio(2, 240);
        assert!(matches!(
            sink.push(0, &[0.0; 3]),
            Err(SinkError::PartialAudioFrame { .. })
        ));
        let fds = create_ring("pcm", 4096, 1).unwrap();
        let small = Producer::attach(fds.memfd, fds.doorbell, 1).unwrap();
        assert!(matches!(
            AudioSink::new(small, 8, 960, Arc::new(Counters::default())),
            Err(SinkError::PacketTooLarge { .. })
        ));
    }

    #[test]
    fn a_full_ring_drops_and_skips_seq() {
        let (mut sink, mut consumer, counters) = audio(8, 960);
        // Records of 30 KiB in a 64 KiB ring: two fit, the third waits for the consumer.
        for i in 0..3 {
            sink.push(frames_ns(960 * i), &vec![0.0; 960 * 8]).unwrap();
        }
        assert!(counters.audio_dropped.load(Ordering::Relaxed) >= 1);
        let seqs: Vec<u64> = records(&mut consumer).iter().map(|r| r.0.seq).collect();
        assert_eq!(seqs, vec![0, 1]);
        sink.push(frames_ns(960 * 3), &vec![0.0; 960 * 8]).unwrap();
        let next = records(&mut consumer);
        assert_eq!(next[0].0.seq, 3);
    }

    #[test]
    fn sinks_can_move_to_a_source_thread() {
        fn is_send<T: Send>() {}
        is_send::<VideoSink>();
        is_send::<AudioSink>();
    }
}
