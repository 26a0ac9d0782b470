//! The fds of one media session, created and sized by the broker (DESIGN: the broker creates every
//! memfd, eventfd and socketpair and hands each end to the side that needs it).
//!
//! A fresh set is built for every session and after every capture or encode restart (with a new
//! generation), so no worker ever attaches to memory a dead peer may have left half-written.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::Context;
use lumen_ipc::channel::Channel;
use lumen_ipc::frame_pool::{self, round_slot_bytes};
use lumen_ipc::media::{
    CaptureSource, FramePoolSpec, Generation, SessionParams, AUDIO_RING_BYTES, PCM_RING_BYTES,
    VIDEO_RING_BYTES,
};
use lumen_ipc::msg::BrokerMsg;
use lumen_ipc::ring::{create_ring, RingFds};

/// Frame slots per session: one being written by capture, one being encoded, one held for repeats,
/// one spare so capture rarely finds none free.
pub const POOL_SLOTS: u32 = 4;

/// The consumer's ends: the stream's reader (lumen-net, or the broker's recorder).
pub struct ConsumerEnds {
    pub generation: Generation,
    pub video: RingFds,
    pub audio: RingFds,
    /// The consumer → encode control channel (IDR requests, bitrate).
    pub control: Channel,
}

/// Everything one session start sends.
pub struct Plumbing {
    pub capture: (BrokerMsg, Vec<OwnedFd>),
    pub encode: (BrokerMsg, Vec<OwnedFd>),
    pub consumer: ConsumerEnds,
}

/// The pool for a session: every slot holds the larger of the session picture and the largest
/// source picture, in the widest format (4 bytes a pixel).
pub fn pool_spec(params: &SessionParams, max_source: (u32, u32)) -> FramePoolSpec {
    let session = u64::from(params.width) * u64::from(params.height) * 4;
    let source = u64::from(max_source.0) * u64::from(max_source.1) * 4;
    FramePoolSpec {
        slots: POOL_SLOTS,
        // Row padding (strides rounded to 64 bytes) fits in the extra page per 64 rows.
        slot_bytes: round_slot_bytes(
            session.max(source) + 64 * u64::from(params.height.max(max_source.1)),
        ),
    }
}

fn dup(fd: &OwnedFd) -> anyhow::Result<OwnedFd> {
    fd.try_clone().context("duplicating a session fd")
}

/// Builds a session's memfds, rings and channels for `generation`.
pub fn build(
    params: SessionParams,
    source: CaptureSource,
    pipewire_remote: Option<OwnedFd>,
    max_source: (u32, u32),
    generation: Generation,
) -> anyhow::Result<Plumbing> {
    params
        .validate()
        .map_err(|e| anyhow::anyhow!("session parameters: {e}"))?;
    let pool = pool_spec(&params, max_source);
    let pool_rw = frame_pool::create_pool("lumen-frames", &pool).context("frame pool")?;
    let pool_ro = frame_pool::read_only_fd(pool_rw.as_fd()).context("frame pool (read-only)")?;
    let (capture_end, encode_end) = Channel::pair().context("capture↔encode channel")?;
    let pcm = create_ring("lumen-pcm", PCM_RING_BYTES, generation).context("PCM ring")?;
    let video = create_ring("lumen-video", VIDEO_RING_BYTES, generation).context("video ring")?;
    let audio = create_ring("lumen-audio", AUDIO_RING_BYTES, generation).context("audio ring")?;
    let (control_consumer, control_encode) = Channel::pair().context("control channel")?;

    let mut capture_fds = vec![
        pool_rw,
        OwnedFd::from(capture_end),
        dup(&pcm.memfd)?,
        dup(&pcm.doorbell)?,
    ];
    match (&source, pipewire_remote) {
        (CaptureSource::PipeWire { .. }, Some(remote)) => capture_fds.push(remote),
        (CaptureSource::PipeWire { .. }, None) => {
            anyhow::bail!("a PipeWire session needs a PipeWire remote")
        }
        (CaptureSource::TestPattern, _) => {}
    }
    let encode_fds = vec![
        pool_ro,
        OwnedFd::from(encode_end),
        pcm.memfd,
        pcm.doorbell,
        dup(&video.memfd)?,
        dup(&video.doorbell)?,
        dup(&audio.memfd)?,
        dup(&audio.doorbell)?,
        OwnedFd::from(control_encode),
    ];
    Ok(Plumbing {
        capture: (
            BrokerMsg::StartCapture {
                params,
                pool,
                source,
                generation,
            },
            capture_fds,
        ),
        encode: (
            BrokerMsg::StartEncode {
                params,
                pool,
                generation,
            },
            encode_fds,
        ),
        consumer: ConsumerEnds {
            generation,
            video,
            audio,
            control: control_consumer,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_ipc::frame_pool::FramePool;
    use lumen_ipc::media::{AudioLayout, VideoCodec};
    use lumen_ipc::ring::{Consumer, Producer, RecordMeta};

    fn params() -> SessionParams {
        SessionParams {
            width: 640,
            height: 360,
            fps: 30,
            bitrate_kbps: 2000,
            codec: VideoCodec::H264,
            audio: AudioLayout::Stereo,
            audio_packet_ms: 5,
        }
    }

    #[test]
    fn each_side_gets_working_ends_of_the_same_session() {
        let plumbing = build(params(), CaptureSource::TestPattern, None, (1280, 720), 7).unwrap();
        let (_, capture_fds) = plumbing.capture;
        let (msg, encode_fds) = plumbing.encode;
        assert_eq!(capture_fds.len(), 4);
        assert_eq!(encode_fds.len(), 9);
        let BrokerMsg::StartEncode {
            pool, generation, ..
        } = msg
        else {
            panic!("not StartEncode");
        };
        assert_eq!(generation, 7);
        let mut capture_fds = capture_fds.into_iter();
        let mut encode_fds = encode_fds.into_iter();
        let mut writer = FramePool::map(capture_fds.next().unwrap(), pool, true).unwrap();
        let reader = FramePool::map(encode_fds.next().unwrap(), pool, false).unwrap();
        writer.slot_mut(3).unwrap()[0] = 42;
        let mut byte = [0u8];
        assert!(reader.copy_out(3, 0, &mut byte));
        assert_eq!(byte[0], 42);
        // The encoder's pool fd is read-only.
        let capture_channel = Channel::from_fd(capture_fds.next().unwrap()).unwrap();
        let mut encode_channel = Channel::from_fd(encode_fds.next().unwrap()).unwrap();
        capture_channel.send(&1u32, &[]).unwrap();
        assert_eq!(encode_channel.recv::<u32>().unwrap().msg, 1);
        // PCM: capture produces, encode consumes.
        let mut pcm_producer =
            Producer::attach(capture_fds.next().unwrap(), capture_fds.next().unwrap(), 7).unwrap();
        let mut pcm_consumer =
            Consumer::attach(encode_fds.next().unwrap(), encode_fds.next().unwrap(), 7).unwrap();
        pcm_producer.push(&RecordMeta::default(), b"pcm").unwrap();
        assert_eq!(pcm_consumer.next().unwrap().unwrap().copy_to_vec(), b"pcm");
        // Video: encode produces, the consumer reads.
        let mut video_producer =
            Producer::attach(encode_fds.next().unwrap(), encode_fds.next().unwrap(), 7).unwrap();
        let ends = plumbing.consumer;
        let mut video_consumer =
            Consumer::attach(ends.video.memfd, ends.video.doorbell, 7).unwrap();
        video_producer.push(&RecordMeta::default(), b"au").unwrap();
        assert_eq!(video_consumer.next().unwrap().unwrap().copy_to_vec(), b"au");
    }

    #[test]
    fn pipewire_sessions_need_a_remote_and_bad_params_are_refused() {
        let pipewire = CaptureSource::PipeWire {
            video_node: "x".into(),
            audio_node: None,
        };
        assert!(build(params(), pipewire, None, (1280, 720), 1).is_err());
        let bad = SessionParams { fps: 0, ..params() };
        assert!(build(bad, CaptureSource::TestPattern, None, (1280, 720), 1).is_err());
    }

    #[test]
    fn pool_slots_fit_the_larger_picture() {
        let spec = pool_spec(&params(), (3840, 2160));
        assert!(spec.slot_bytes >= 3840 * 2160 * 4);
        let spec = pool_spec(
            &SessionParams {
                width: 7680,
                height: 4320,
                ..params()
            },
            (1920, 1080),
        );
        assert!(spec.slot_bytes >= 7680 * 4320 * 4);
        assert_eq!(spec.slot_bytes % 4096, 0);
    }
}
