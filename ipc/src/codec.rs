//! The wire encoding of control messages: a versioned envelope in postcard, with a hard size limit.
//!
//! An encoded message is the postcard encoding of the pair `(PROTOCOL_VERSION: u16, payload)`.
//! The version comes first so that a peer speaking another version is told apart from a peer
//! sending garbage ([`CodecError::VersionMismatch`] carries the version seen) before the payload
//! is looked at.
//!
//! Decoding treats the bytes as hostile:
//! - input longer than [`MAX_MESSAGE_BYTES`] is refused before any parsing;
//! - trailing bytes after the payload are refused (one record, one message);
//! - truncated or malformed input is an error value, never a panic;
//! - allocation is bounded by the input: postcard reads strings and byte buffers out of the
//!   input slice only after checking the slice holds them, and for sequences it withholds the
//!   length hint when the input is shorter than the claimed length, so serde preallocates nothing
//!   for a lying length prefix (and never more than 1 MiB in any case). A sequence then grows
//!   only by elements actually decoded, each of which consumes at least one input byte, as long
//!   as no message type holds a sequence of zero-sized elements (none in [`crate::msg`] does;
//!   keep it so).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::msg::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION};

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The encoded message, or the input offered to decode, is larger than the limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The caller's buffer for [`encode_into`] cannot hold the encoded message.
    #[error("message does not fit the {capacity}-byte encode buffer")]
    BufferTooSmall { capacity: usize },
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {seen}, this side speaks {expected}")]
    VersionMismatch { seen: u16, expected: u16 },
    /// The payload decoded, but bytes were left over after it.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes { count: usize },
    /// The input is truncated or does not decode as the expected message type.
    #[error("malformed message: {0}")]
    Malformed(postcard::Error),
    /// The message could not be serialized (a type that postcard cannot encode).
    #[error("cannot encode message: {0}")]
    Encode(postcard::Error),
}

/// Encodes `msg` in the versioned envelope, into a new buffer.
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let bytes = postcard::to_stdvec(&(PROTOCOL_VERSION, msg)).map_err(CodecError::Encode)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(bytes)
}

/// Encodes `msg` in the versioned envelope into `buf` without allocating; returns the length
/// written at the start of `buf`.
pub fn encode_into<M: Serialize>(msg: &M, buf: &mut [u8]) -> Result<usize, CodecError> {
    let capacity = buf.len();
    let written = match postcard::to_slice(&(PROTOCOL_VERSION, msg), buf) {
        Ok(written) => written.len(),
        Err(postcard::Error::SerializeBufferFull) => {
            return Err(CodecError::BufferTooSmall { capacity })
        }
        Err(e) => return Err(CodecError::Encode(e)),
    };
    if written > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge {
            len: written,
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(written)
}

/// Decodes one message from exactly `bytes` (see the module doc for what is refused).
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<M, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let (seen, payload) = postcard::take_from_bytes::<u16>(bytes).map_err(CodecError::Malformed)?;
    if seen != PROTOCOL_VERSION {
        return Err(CodecError::VersionMismatch {
            seen,
            expected: PROTOCOL_VERSION,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<M>(payload).map_err(CodecError::Malformed)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes { count: rest.len() });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{
        AudioLayout, CaptureSource, FramePoolSpec, MediaStats, SessionParams, VideoCodec,
    };
    use crate::msg::{BrokerMsg, Layer, SandboxReport, SocketRole, WorkerKind, WorkerMsg};
    use proptest::prelude::*;

    fn report() -> SandboxReport {
        SandboxReport {
            no_new_privs: Layer::On,
            capabilities_dropped: Layer::On,
            rlimits: Layer::On,
            not_dumpable: Layer::On,
            user_ns: Layer::Unavailable,
            mount_ns: Layer::OptedOut,
            pid_ns: Layer::On,
            ipc_ns: Layer::On,
            net_ns: Layer::NotInProfile,
            landlock_fs: Layer::On,
            landlock_net: Layer::On,
            landlock_scope: Layer::On,
            landlock_abi: 7,
            seccomp: Layer::On,
            seccomp_allowed_syscalls: 93,
            notes: vec!["user namespaces refused: EPERM".into(), "ü€".into()],
        }
    }

    fn session() -> SessionParams {
        SessionParams {
            width: 1920,
            height: 1080,
            fps: 60,
            bitrate_kbps: 20_000,
            codec: VideoCodec::Hevc,
            audio: AudioLayout::Surround51,
            audio_packet_ms: 5,
        }
    }

    fn pool() -> FramePoolSpec {
        FramePoolSpec {
            slots: 4,
            slot_bytes: 8 << 20,
        }
    }

    /// One value of every message variant, so a new variant shows up here as a compile error
    /// in the exhaustive matches below.
    fn broker_msgs() -> Vec<BrokerMsg> {
        let all = vec![
            BrokerMsg::Ping { seq: u64::MAX },
            BrokerMsg::NetSockets {
                roles: vec![
                    SocketRole::Http,
                    SocketRole::Https,
                    SocketRole::Rtsp,
                    SocketRole::Video,
                    SocketRole::Control,
                    SocketRole::Audio,
                    SocketRole::Mdns,
                ],
            },
            BrokerMsg::NetMdns(crate::msg::MdnsAdvert {
                instance: "Büro PC".into(),
                host: "buero-pc".into(),
                port: 47989,
                interfaces: vec![crate::msg::MdnsInterface {
                    address: std::net::Ipv4Addr::new(192, 168, 1, 20),
                    prefix_len: 24,
                }],
            }),
            BrokerMsg::Shutdown,
            BrokerMsg::StartCapture {
                params: session(),
                pool: pool(),
                source: CaptureSource::PipeWire {
                    video_node: "test-src".into(),
                    audio_node: None,
                },
                generation: 3,
            },
            BrokerMsg::StartCapture {
                params: session(),
                pool: pool(),
                source: CaptureSource::TestPattern,
                generation: 4,
            },
            BrokerMsg::StartEncode {
                params: session(),
                pool: pool(),
                generation: 5,
            },
            BrokerMsg::StopSession,
            BrokerMsg::NetIdentity(crate::net_msg::NetIdentity {
                uniqueid: "0123456789ABCDEF".into(),
                cert_pem: "-----BEGIN CERTIFICATE-----".into(),
                paired_sha256: vec![[7; 32]],
                encrypt_video: true,
                encoder: crate::media::EncoderCapabilities {
                    codecs: vec![VideoCodec::H264, VideoCodec::Av1],
                    audio_layouts: vec![AudioLayout::Stereo, AudioLayout::Surround71],
                },
            }),
            BrokerMsg::NetReply {
                id: 3,
                reply: crate::net_msg::NetReply::Signature(vec![1; 256]),
            },
            BrokerMsg::StreamRings { generation: 4 },
            BrokerMsg::InputChannel,
            BrokerMsg::InputDevices {
                eis: true,
                uinput: 15,
            },
        ];
        for m in &all {
            match m {
                BrokerMsg::Ping { .. }
                | BrokerMsg::NetSockets { .. }
                | BrokerMsg::NetMdns(_)
                | BrokerMsg::Shutdown
                | BrokerMsg::StartCapture { .. }
                | BrokerMsg::StartEncode { .. }
                | BrokerMsg::StopSession
                | BrokerMsg::NetIdentity(_)
                | BrokerMsg::NetReply { .. }
                | BrokerMsg::StreamRings { .. }
                | BrokerMsg::InputChannel
                | BrokerMsg::InputDevices { .. } => {}
            }
        }
        all
    }

    fn worker_msgs() -> Vec<WorkerMsg> {
        let mut all = Vec::new();
        for kind in WorkerKind::ALL {
            all.push(WorkerMsg::Ready {
                kind,
                sandbox: report(),
            });
        }
        all.push(WorkerMsg::Pong { seq: 7 });
        all.push(WorkerMsg::Error {
            message: "refused a malformed message".into(),
        });
        all.push(WorkerMsg::SessionStarted { generation: 9 });
        all.push(WorkerMsg::SessionFailed {
            generation: 9,
            message: "no hevc encoder".into(),
        });
        all.push(WorkerMsg::SessionStats {
            generation: 9,
            stats: MediaStats {
                frames: 600,
                dropped: 1,
                repeated: 2,
                audio_packets: 2000,
                component: "libx264".into(),
            },
        });
        all.push(WorkerMsg::NetRequest {
            id: 3,
            request: crate::net_msg::NetRequest::TlsSign {
                scheme: 0x0804,
                message: vec![9; 130],
            },
        });
        all.push(WorkerMsg::InputStats(crate::input::InputStats {
            injected: 1 << 40,
            dropped_invalid: 2,
            dropped_no_device: 3,
            dropped_rate: 4,
            released: 5,
            pads: 16,
        }));
        all.push(WorkerMsg::NetStats(Box::new(crate::net_msg::NetStats {
            stream: 2,
            active: false,
            counters: crate::net_msg::NetCounters {
                fec_recovered_frames: 17,
                frames_lost: 3,
                video_bytes: 1 << 40,
                ..Default::default()
            },
            rtsp: crate::net_msg::RtspCounters {
                requests: 6,
                refused: 1,
                dropped_connections: 2,
            },
            http: crate::net_msg::HttpCounters {
                requests: 9,
                timeouts: 4,
                ..Default::default()
            },
        })));
        all.push(WorkerMsg::EncoderCapabilities(
            crate::media::EncoderCapabilities {
                codecs: vec![VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Av1],
                audio_layouts: vec![
                    AudioLayout::Stereo,
                    AudioLayout::Surround51,
                    AudioLayout::Surround71,
                ],
            },
        ));
        for m in &all {
            match m {
                WorkerMsg::Ready { .. }
                | WorkerMsg::Pong { .. }
                | WorkerMsg::Error { .. }
                | WorkerMsg::SessionStarted { .. }
                | WorkerMsg::SessionFailed { .. }
                | WorkerMsg::SessionStats { .. }
                | WorkerMsg::NetRequest { .. }
                | WorkerMsg::EncoderCapabilities(_)
                | WorkerMsg::NetStats(_)
                | WorkerMsg::InputStats(_) => {}
            }
        }
        all
    }

    fn all_encoded() -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = broker_msgs().iter().map(|m| encode(m).unwrap()).collect();
        out.extend(worker_msgs().iter().map(|m| encode(m).unwrap()));
        out
    }

    #[test]
    fn every_broker_msg_roundtrips() {
        for m in broker_msgs() {
            let bytes = encode(&m).unwrap();
            assert_eq!(decode::<BrokerMsg>(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn every_worker_msg_roundtrips() {
        for m in worker_msgs() {
            let bytes = encode(&m).unwrap();
            assert_eq!(decode::<WorkerMsg>(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn encode_into_matches_encode_and_reports_small_buffer() {
        for m in worker_msgs() {
            let expected = encode(&m).unwrap();
            let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
            let n = encode_into(&m, &mut buf).unwrap();
            assert_eq!(&buf[..n], &expected[..]);
            let mut small = vec![0u8; expected.len() - 1];
            assert!(matches!(
                encode_into(&m, &mut small),
                Err(CodecError::BufferTooSmall { capacity }) if capacity == expected.len() - 1
            ));
        }
    }

    #[test]
    fn encode_refuses_message_over_limit() {
        let big = WorkerMsg::Error {
            message: "x".repeat(MAX_MESSAGE_BYTES),
        };
        assert!(matches!(
            encode(&big),
            Err(CodecError::TooLarge {
                max: MAX_MESSAGE_BYTES,
                ..
            })
        ));
        let mut buf = vec![0u8; 2 * MAX_MESSAGE_BYTES];
        assert!(matches!(
            encode_into(&big, &mut buf),
            Err(CodecError::TooLarge {
                max: MAX_MESSAGE_BYTES,
                ..
            })
        ));
    }

    #[test]
    fn decode_refuses_input_over_limit_before_parsing() {
        // A valid message followed by padding: it is the length alone that is refused.
        let mut bytes = encode(&BrokerMsg::Shutdown).unwrap();
        bytes.resize(MAX_MESSAGE_BYTES + 1, 0);
        assert!(matches!(
            decode::<BrokerMsg>(&bytes),
            Err(CodecError::TooLarge { len, max: MAX_MESSAGE_BYTES }) if len == MAX_MESSAGE_BYTES + 1
        ));
    }

    #[test]
    fn decode_refuses_other_version_and_names_it() {
        let other = PROTOCOL_VERSION.wrapping_add(1);
        let bytes = postcard::to_stdvec(&(other, BrokerMsg::Shutdown)).unwrap();
        assert!(matches!(
            decode::<BrokerMsg>(&bytes),
            Err(CodecError::VersionMismatch { seen, expected: PROTOCOL_VERSION }) if seen == other
        ));
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut bytes = encode(&WorkerMsg::Pong { seq: 1 }).unwrap();
        bytes.extend_from_slice(&[0, 0]);
        assert!(matches!(
            decode::<WorkerMsg>(&bytes),
            Err(CodecError::TrailingBytes { count: 2 })
        ));
    }

    #[test]
    fn decode_refuses_unknown_variant() {
        let bytes = postcard::to_stdvec(&(PROTOCOL_VERSION, 200u32)).unwrap();
        assert!(matches!(
            decode::<BrokerMsg>(&bytes),
            Err(CodecError::Malformed(_))
        ));
    }

    fn assert_every_strict_prefix_fails<M: DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) {
        for cut in 0..bytes.len() {
            let result = decode::<M>(&bytes[..cut]);
            assert!(result.is_err(), "prefix of {cut} bytes decoded: {result:?}");
        }
    }

    #[test]
    fn decode_errors_on_truncation_at_every_offset() {
        for m in broker_msgs() {
            assert_every_strict_prefix_fails::<BrokerMsg>(&encode(&m).unwrap());
        }
        for m in worker_msgs() {
            assert_every_strict_prefix_fails::<WorkerMsg>(&encode(&m).unwrap());
        }
    }

    /// Allocation itself is measured in `tests/channel_codec_alloc.rs`.
    #[test]
    fn huge_length_prefix_fails_fast() {
        // WorkerMsg::Error { message } with a string length of u64::MAX and nothing after it;
        // and WorkerMsg::Ready whose notes claim 2^62 entries.
        let mut huge_string = postcard::to_stdvec(&(PROTOCOL_VERSION, 2u32)).unwrap();
        huge_string
            .extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let start = std::time::Instant::now();
        assert!(matches!(
            decode::<WorkerMsg>(&huge_string),
            Err(CodecError::Malformed(_))
        ));

        let mut ready = encode(&WorkerMsg::Ready {
            kind: WorkerKind::Net,
            sandbox: SandboxReport {
                notes: vec![],
                ..report()
            },
        })
        .unwrap();
        // The empty `notes` is the last field: its length prefix is the final byte (0).
        assert_eq!(ready.pop(), Some(0));
        ready.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        assert!(matches!(
            decode::<WorkerMsg>(&ready),
            Err(CodecError::Malformed(_))
        ));
        assert!(start.elapsed() < std::time::Duration::from_millis(100));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<BrokerMsg>(&bytes);
            let _ = decode::<WorkerMsg>(&bytes);
        }

        #[test]
        fn flipped_bytes_of_valid_messages_never_panic(
            pick in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let all = all_encoded();
            let mut bytes = pick.get(&all).clone();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let _ = decode::<BrokerMsg>(&bytes);
            let _ = decode::<WorkerMsg>(&bytes);
        }
    }
}
