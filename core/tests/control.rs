//! The control-stream codec against the byte layouts of moonlight-common-c's `ControlStream.c` and
//! `Video.h` (protocol notes §5), with the envelope rebuilt independently from aes-gcm here.

use aes_gcm::aead::AeadInOut;
use aes_gcm::aes::cipher::consts::U16;
use aes_gcm::aes::Aes128;
use aes_gcm::{Aes128Gcm, AesGcm, KeyInit, Nonce, Tag};
use lumen_core::control::envelope::{EnvelopeError, MAX_PAYLOAD_LEN};
use lumen_core::control::message::{types, MessageError};
use lumen_core::control::{
    ClientMessage, ControlCrypto, ControlError, FrameFecStatus, HdrMetadata, HostMessage, IvMode,
    LossStats, Termination,
};
use proptest::prelude::*;

const KEY: [u8; 16] = *b"0123456789abcdef";

/// Builds a packet the way `sendMessageEnet` + `encryptControlMessage` do, with aes-gcm directly.
fn client_packet(mode: IvMode, seq: u32, msg_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut plain = msg_type.to_le_bytes().to_vec();
    plain.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    plain.extend_from_slice(payload);
    let tag = gcm_seal(mode, seq, b'C', &mut plain);
    let mut p = 1u16.to_le_bytes().to_vec();
    p.extend_from_slice(&((4 + 16 + plain.len()) as u16).to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&tag);
    p.extend_from_slice(&plain);
    p
}

fn gcm_seal(mode: IvMode, seq: u32, side: u8, buf: &mut [u8]) -> [u8; 16] {
    let tag = match mode {
        IvMode::V2 => {
            let mut iv = [0u8; 12];
            iv[..4].copy_from_slice(&seq.to_le_bytes());
            iv[10] = side;
            iv[11] = b'C';
            Aes128Gcm::new(&KEY.into()).encrypt_inout_detached(&Nonce::from(iv), &[], buf.into())
        }
        IvMode::Legacy => {
            let mut iv = [0u8; 16];
            iv[0] = seq as u8;
            AesGcm::<Aes128, U16>::new(&KEY.into()).encrypt_inout_detached(
                &Nonce::from(iv),
                &[],
                buf.into(),
            )
        }
    };
    tag.unwrap().into()
}

/// Opens a host packet the way `decryptControlMessageToV1` does; returns (type, payload).
fn client_open(mode: IvMode, packet: &[u8]) -> (u32, u16, Vec<u8>) {
    assert_eq!(packet[..2], [1, 0]);
    let len = u16::from_le_bytes([packet[2], packet[3]]) as usize;
    assert_eq!(len + 4, packet.len());
    let seq = u32::from_le_bytes(packet[4..8].try_into().unwrap());
    let tag = Tag::from(<[u8; 16]>::try_from(&packet[8..24]).unwrap());
    let mut plain = packet[24..].to_vec();
    match mode {
        IvMode::V2 => {
            let mut iv = [0u8; 12];
            iv[..4].copy_from_slice(&seq.to_le_bytes());
            iv[10] = b'H';
            iv[11] = b'C';
            Aes128Gcm::new(&KEY.into())
                .decrypt_inout_detached(&Nonce::from(iv), &[], plain.as_mut_slice().into(), &tag)
                .unwrap();
        }
        IvMode::Legacy => {
            let mut iv = [0u8; 16];
            iv[0] = seq as u8;
            AesGcm::<Aes128, U16>::new(&KEY.into())
                .decrypt_inout_detached(&Nonce::from(iv), &[], plain.as_mut_slice().into(), &tag)
                .unwrap();
        }
    }
    let ty = u16::from_le_bytes([plain[0], plain[1]]);
    assert_eq!(
        u16::from_le_bytes([plain[2], plain[3]]) as usize,
        plain.len() - 4
    );
    (seq, ty, plain[4..].to_vec())
}

#[test]
fn opens_the_clients_first_messages() {
    let host = ControlCrypto::host(&KEY, IvMode::V2);
    // Start A on an encrypted stream is the IDR request: 0x0302 with two zero bytes, seq 0.
    let start_a = client_packet(IvMode::V2, 0, 0x0302, &[0, 0]);
    assert_eq!(start_a.len(), 24 + 4 + 2);
    assert_eq!(
        host.open_message(&start_a),
        Ok((0, ClientMessage::RequestIdr))
    );
    let start_b = client_packet(IvMode::V2, 1, 0x0307, &[0]);
    assert_eq!(host.open_message(&start_b), Ok((1, ClientMessage::StartB)));
    // The periodic ping: u16 4, u32 0 (LE) = 8 bytes.
    let ping = client_packet(IvMode::V2, 2, 0x0200, &[4, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        host.open_message(&ping),
        Ok((
            2,
            ClientMessage::PeriodicPing {
                payload: vec![4, 0, 0, 0, 0, 0, 0, 0]
            }
        ))
    );
    // Input stays opaque.
    let input = client_packet(IvMode::V2, 3, 0x0206, &[0, 0, 0, 8, 1, 2, 3]);
    assert_eq!(
        host.open_message(&input),
        Ok((3, ClientMessage::Input(vec![0, 0, 0, 8, 1, 2, 3])))
    );
}

#[test]
fn legacy_iv_mode_opens_and_seals_like_gfe() {
    let mut host = ControlCrypto::host(&KEY, IvMode::Legacy);
    let p = client_packet(IvMode::Legacy, 0x1_0005, 0x0302, &[0, 0]);
    assert_eq!(
        host.open_message(&p),
        Ok((0x1_0005, ClientMessage::RequestIdr))
    );
    assert!(ControlCrypto::host(&KEY, IvMode::V2).open(&p).is_err());
    let sealed = host
        .seal_message(&HostMessage::Termination(Termination::GRACEFUL))
        .unwrap();
    assert_eq!(
        client_open(IvMode::Legacy, &sealed),
        (0, 0x0109, vec![0x80, 0x03, 0x00, 0x23])
    );
}

#[test]
fn parses_client_payload_layouts() {
    // SS_RFI_REQUEST: u32 first, u32 0, u32 last, 3×u32 0 (LE).
    let mut rfi = vec![];
    for v in [10u32, 0, 12, 0, 0, 0] {
        rfi.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(
        ClientMessage::parse(types::INVALIDATE_REF_FRAMES, &rfi),
        Ok(ClientMessage::InvalidateRefFrames {
            first: 10,
            last: 12
        })
    );
    // SS_LTR_FRAME_ACK: u32 frame, u32 0.
    assert_eq!(
        ClientMessage::parse(types::LTR_ACK, &[7, 1, 0, 0, 0, 0, 0, 0]),
        Ok(ClientMessage::LtrAck { frame_index: 263 })
    );
    // SS_FRAME_FEC_STATUS: big-endian, packed, 21 bytes.
    let fec = [
        0, 0, 1, 0, // frame 256
        0, 9, 0, 5, 0, 2, 0, 12, 0, 3, 0, 10, 0, 3, // seqs and counts
        20, 1, 2, // fec %, block index, block count
    ];
    assert_eq!(
        ClientMessage::parse(types::FEC_STATUS, &fec),
        Ok(ClientMessage::FecStatus(FrameFecStatus {
            frame_index: 256,
            highest_received_seq: 9,
            next_contiguous_seq: 5,
            missing_before_highest: 2,
            total_data: 12,
            total_parity: 3,
            received_data: 10,
            received_parity: 3,
            fec_percentage: 20,
            block_index: 1,
            block_count: 2,
        }))
    );
    assert!(matches!(
        ClientMessage::parse(types::FEC_STATUS, &fec[..20]),
        Err(MessageError::Short { .. })
    ));
    // Loss stats: u32 0, u32 50, u32 1000, u64 lastGoodFrame, u32 0, u32 0, u32 0x14.
    let mut loss = vec![];
    for v in [0u32, 50, 1000] {
        loss.extend_from_slice(&v.to_le_bytes());
    }
    loss.extend_from_slice(&77u64.to_le_bytes());
    for v in [0u32, 0, 0x14] {
        loss.extend_from_slice(&v.to_le_bytes());
    }
    let Ok(ClientMessage::LossStats(s)) = ClientMessage::parse(types::LOSS_STATS, &loss) else {
        panic!("loss stats parse");
    };
    assert_eq!((s.interval_ms(), s.last_good_frame()), (50, 77));
    assert!(ClientMessage::parse(types::PERIODIC_PING, &[0; 65]).is_err());
}

#[test]
fn host_messages_have_the_client_layouts() {
    let enc = |m: HostMessage| m.encode();
    assert_eq!(
        enc(HostMessage::Termination(Termination::GRACEFUL)),
        (0x0109, vec![0x80, 0x03, 0x00, 0x23])
    );
    assert_eq!(
        enc(HostMessage::Termination(Termination::SHORT_INTENDED)),
        (0x0109, vec![0x00, 0x01])
    );
    assert_eq!(
        enc(HostMessage::Rumble {
            controller: 1,
            low_freq: 0x1234,
            high_freq: 0xABCD
        }),
        (0x010b, vec![0, 0, 0, 0, 1, 0, 0x34, 0x12, 0xCD, 0xAB])
    );
    let hdr = HostMessage::HdrMode {
        enabled: true,
        metadata: HdrMetadata {
            display_primaries: [(1, 2), (3, 4), (5, 6)],
            white_point: (7, 8),
            max_display_luminance: 9,
            min_display_luminance: 10,
            max_content_light_level: 11,
            max_frame_average_light_level: 12,
            max_full_frame_luminance: 13,
        },
    };
    let (t, p) = enc(hdr.clone());
    assert_eq!(t, 0x010e);
    assert_eq!(p.len(), 27);
    assert_eq!(p[0], 1);
    let words: Vec<u16> = p[1..]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(words, (1..=13).collect::<Vec<u16>>());
    // A short HDR message (non-Sunshine form) reads with zero metadata, as the client does.
    assert_eq!(
        HostMessage::parse(0x010e, &[0]),
        Ok(HostMessage::HdrMode {
            enabled: false,
            metadata: HdrMetadata::default()
        })
    );
    assert_eq!(
        enc(HostMessage::RumbleTriggers {
            controller: 2,
            left: 3,
            right: 4
        }),
        (0x5500, vec![2, 0, 3, 0, 4, 0])
    );
    assert_eq!(
        enc(HostMessage::SetMotionEvent {
            controller: 0,
            report_rate_hz: 100,
            motion_type: 2
        }),
        (0x5501, vec![0, 0, 100, 0, 2])
    );
    assert_eq!(
        enc(HostMessage::SetRgbLed {
            controller: 3,
            r: 1,
            g: 2,
            b: 3
        }),
        (0x5502, vec![3, 0, 1, 2, 3])
    );
    let (t, p) = enc(HostMessage::AdaptiveTriggers {
        controller: 1,
        event_flags: 0x0C,
        type_left: 5,
        type_right: 6,
        left: [1; 10],
        right: [2; 10],
    });
    assert_eq!((t, p.len(), &p[..5]), (0x5503, 25, &[1, 0, 0x0C, 5, 6][..]));
}

#[test]
fn host_messages_open_on_the_client_side() {
    let mut host = ControlCrypto::host(&KEY, IvMode::V2);
    for (seq, m) in [
        HostMessage::Termination(Termination::PROTECTED_CONTENT),
        HostMessage::Rumble {
            controller: 0,
            low_freq: 1,
            high_freq: 2,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let packet = host.seal_message(&m).unwrap();
        let (t, p) = m.encode();
        assert_eq!(client_open(IvMode::V2, &packet), (seq as u32, t, p));
    }
}

#[test]
fn envelope_refuses_malformed_packets() {
    let host = ControlCrypto::host(&KEY, IvMode::V2);
    let good = client_packet(IvMode::V2, 5, 0x0302, &[0, 0]);
    assert!(matches!(
        host.open(&good[..20]),
        Err(EnvelopeError::Runt { .. })
    ));
    let mut plain_type = good.clone();
    plain_type[0] = 2;
    assert_eq!(
        host.open(&plain_type),
        Err(EnvelopeError::NotEncrypted { msg_type: 2 })
    );
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        host.open(&longer),
        Err(EnvelopeError::LengthMismatch { .. })
    ));
    let mut runt = good.clone();
    runt[2..4].copy_from_slice(&23u16.to_le_bytes());
    runt.truncate(27);
    assert!(matches!(host.open(&runt), Err(EnvelopeError::Runt { .. })));
    // A host-sealed packet does not open as a client one (IV side letter).
    let mut h = ControlCrypto::host(&KEY, IvMode::V2);
    let reply = h.seal(0x0302, &[0, 0]).unwrap();
    assert_eq!(host.open(&reply), Err(EnvelopeError::Authentication));
    // Authentic, but the inner length lies.
    let mut plain = vec![0x02, 0x03, 9, 0, 0, 0];
    let tag = gcm_seal(IvMode::V2, 0, b'C', &mut plain);
    let mut lying = vec![1, 0, 26, 0, 0, 0, 0, 0];
    lying.extend_from_slice(&tag);
    lying.extend_from_slice(&plain);
    assert_eq!(
        host.open(&lying),
        Err(EnvelopeError::InnerLengthMismatch {
            declared: 9,
            actual: 2
        })
    );
    assert!(matches!(
        h.seal(0x0206, &vec![0; MAX_PAYLOAD_LEN + 1]),
        Err(EnvelopeError::PayloadTooLong { .. })
    ));
    assert!(h.seal(0x0206, &vec![0; MAX_PAYLOAD_LEN]).is_ok());
    assert!(matches!(
        host.open_message(&client_packet(IvMode::V2, 0, 0x5502, &[1])),
        Err(ControlError::Message(MessageError::Short { .. }))
    ));
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        Just(ClientMessage::RequestIdr),
        Just(ClientMessage::StartB),
        (any::<u64>(), any::<u64>())
            .prop_map(|(first, last)| ClientMessage::InvalidateRefFrames { first, last }),
        prop::collection::vec(any::<u8>(), 0..=64)
            .prop_map(|payload| ClientMessage::PeriodicPing { payload }),
        any::<[u8; 32]>().prop_map(|b| ClientMessage::LossStats(LossStats(b))),
        any::<u32>().prop_map(|frame_index| ClientMessage::LtrAck { frame_index }),
        (any::<u32>(), any::<[u16; 7]>(), any::<[u8; 3]>()).prop_map(|(f, s, b)| {
            ClientMessage::FecStatus(FrameFecStatus {
                frame_index: f,
                highest_received_seq: s[0],
                next_contiguous_seq: s[1],
                missing_before_highest: s[2],
                total_data: s[3],
                total_parity: s[4],
                received_data: s[5],
                received_parity: s[6],
                fec_percentage: b[0],
                block_index: b[1],
                block_count: b[2],
            })
        }),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(ClientMessage::Input),
        (0x6000u16.., prop::collection::vec(any::<u8>(), 0..50))
            .prop_map(|(msg_type, payload)| ClientMessage::Other { msg_type, payload }),
    ]
}

fn host_message() -> impl Strategy<Value = HostMessage> {
    prop_oneof![
        any::<u32>().prop_map(|c| HostMessage::Termination(Termination::Extended(c))),
        any::<u16>().prop_map(|c| HostMessage::Termination(Termination::Short(c))),
        any::<[u16; 3]>().prop_map(|v| HostMessage::Rumble {
            controller: v[0],
            low_freq: v[1],
            high_freq: v[2]
        }),
        (any::<bool>(), any::<[u16; 13]>()).prop_map(|(enabled, v)| HostMessage::HdrMode {
            enabled,
            metadata: HdrMetadata {
                display_primaries: [(v[0], v[1]), (v[2], v[3]), (v[4], v[5])],
                white_point: (v[6], v[7]),
                max_display_luminance: v[8],
                min_display_luminance: v[9],
                max_content_light_level: v[10],
                max_frame_average_light_level: v[11],
                max_full_frame_luminance: v[12],
            },
        }),
        any::<[u16; 3]>().prop_map(|v| HostMessage::RumbleTriggers {
            controller: v[0],
            left: v[1],
            right: v[2]
        }),
        (any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(c, r, t)| {
            HostMessage::SetMotionEvent {
                controller: c,
                report_rate_hz: r,
                motion_type: t,
            }
        }),
        (any::<u16>(), any::<[u8; 3]>()).prop_map(|(c, v)| HostMessage::SetRgbLed {
            controller: c,
            r: v[0],
            g: v[1],
            b: v[2]
        }),
        (
            any::<u16>(),
            any::<[u8; 3]>(),
            any::<[u8; 10]>(),
            any::<[u8; 10]>()
        )
            .prop_map(|(c, f, left, right)| HostMessage::AdaptiveTriggers {
                controller: c,
                event_flags: f[0],
                type_left: f[1],
                type_right: f[2],
                left,
                right,
            }),
    ]
}

proptest! {
    #[test]
    fn client_messages_round_trip_through_the_envelope(
        m in client_message(),
        seq: u32,
        legacy: bool,
    ) {
        let mode = if legacy { IvMode::Legacy } else { IvMode::V2 };
        let (t, p) = m.encode();
        let packet = ControlCrypto::client(&KEY, mode).seal_with_seq(seq, t, &p).unwrap();
        prop_assert_eq!(&packet, &client_packet(mode, seq, t, &p));
        prop_assert_eq!(ControlCrypto::host(&KEY, mode).open_message(&packet), Ok((seq, m)));
    }

    #[test]
    fn host_messages_round_trip(m in host_message()) {
        let (t, p) = m.encode();
        prop_assert_eq!(HostMessage::parse(t, &p), Ok(m));
    }

    #[test]
    fn any_flipped_bit_is_refused(m in client_message(), bit in any::<prop::sample::Index>()) {
        let (t, p) = m.encode();
        let mut packet = ControlCrypto::client(&KEY, IvMode::V2).seal_with_seq(9, t, &p).unwrap();
        let i = bit.index(packet.len() * 8);
        packet[i / 8] ^= 1 << (i % 8);
        prop_assert!(ControlCrypto::host(&KEY, IvMode::V2).open(&packet).is_err());
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        lumen_core::control::fuzz::control_message(&data);
        lumen_core::control::fuzz::control_envelope(&data);
    }
}
