//! Byte vectors built by hand from moonlight-common-c's packed structs (`Input.h`) and the byte
//! orders `InputStream.c` writes, one per kind, then the refusals.

use lumen_ipc::input::{
    buttons, modifiers, BatteryState, InputEvent, MotionSensor, MouseButton, PadKind, PenTool,
    ScrollAxis, TouchKind,
};
use proptest::prelude::*;

use super::*;

/// The header: u32 BE size (magic + body), u32 LE magic.
fn packet(magic: u32, body: &[u8]) -> Vec<u8> {
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&magic.to_le_bytes());
    p.extend_from_slice(body);
    p
}

fn decode(payload: &[u8]) -> Result<Vec<InputEvent>, DecodeError> {
    let mut out = Vec::new();
    let n = decode_into(payload, &mut out)?;
    assert_eq!(n, out.len());
    Ok(out)
}

/// Little-endian IEEE-754 bytes of the floats the vectors use, spelled out.
const F_0: [u8; 4] = [0, 0, 0, 0];
const F_0_25: [u8; 4] = [0x00, 0x00, 0x80, 0x3E];
const F_0_5: [u8; 4] = [0x00, 0x00, 0x00, 0x3F];
const F_0_75: [u8; 4] = [0x00, 0x00, 0x40, 0x3F];
const F_1: [u8; 4] = [0x00, 0x00, 0x80, 0x3F];
const F_1_5: [u8; 4] = [0x00, 0x00, 0xC0, 0x3F];
const F_MINUS_90: [u8; 4] = [0x00, 0x00, 0xB4, 0xC2];

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// (client bytes, the event they mean) for every kind.
fn vectors() -> Vec<(Vec<u8>, InputEvent)> {
    vec![
        (
            // The exact bytes the client sends first.
            vec![0, 0, 0, 6, 0x0D, 0, 0, 0, 0x01, 0x00],
            InputEvent::EnableHaptics,
        ),
        (
            // flags 0, keyCode 0x8041 LE (moonlight-qt's high bit), Shift, u16 0.
            packet(0x03, &[0x00, 0x41, 0x80, 0x01, 0x00, 0x00]),
            InputEvent::Key {
                down: true,
                vk: 0x41,
                modifiers: modifiers::SHIFT,
                no_normalize: false,
            },
        ),
        (
            // Sunshine's "do not normalise" flag, left Ctrl up.
            packet(0x04, &[0x01, 0xA2, 0x80, 0x02, 0x00, 0x00]),
            InputEvent::Key {
                down: false,
                vk: 0xA2,
                modifiers: modifiers::CTRL,
                no_normalize: true,
            },
        ),
        (
            // dx -5, dy 12, big-endian.
            packet(0x07, &[0xFF, 0xFB, 0x00, 0x0C]),
            InputEvent::MouseMove { dx: -5, dy: 12 },
        ),
        (
            // x 960, y 540, 0, 1919 (= 1920 - 1), 1079, big-endian.
            packet(
                0x05,
                &[0x03, 0xC0, 0x02, 0x1C, 0, 0, 0x07, 0x7F, 0x04, 0x37],
            ),
            InputEvent::MousePosition {
                x: 960,
                y: 540,
                ref_width: 1920,
                ref_height: 1080,
            },
        ),
        (
            packet(0x08, &[1]),
            InputEvent::MouseButton {
                button: MouseButton::Left,
                down: true,
            },
        ),
        (
            packet(0x09, &[5]),
            InputEvent::MouseButton {
                button: MouseButton::X2,
                down: false,
            },
        ),
        (
            // -120 twice, then 0, big-endian.
            packet(0x0A, &[0xFF, 0x88, 0xFF, 0x88, 0, 0]),
            InputEvent::Scroll {
                axis: ScrollAxis::Vertical,
                amount: -120,
            },
        ),
        (
            packet(0x5500_0001, &[0x00, 0x1E]),
            InputEvent::Scroll {
                axis: ScrollAxis::Horizontal,
                amount: 30,
            },
        ),
        (packet(0x17, "é".as_bytes()), InputEvent::Text('é')),
        (
            // Down, 0, rotation 90 LE, pointer 7 LE, x, y, pressure, major, minor.
            packet(
                0x5500_0002,
                &cat(&[
                    &[1, 0, 0x5A, 0x00, 7, 0, 0, 0],
                    &F_0_25,
                    &F_0_75,
                    &F_0_5,
                    &F_1,
                    &F_0,
                ]),
            ),
            InputEvent::Touch {
                kind: TouchKind::Down,
                pointer_id: 7,
                x: 0.25,
                y: 0.75,
                pressure_or_distance: 0.5,
                contact_major: 1.0,
                contact_minor: 0.0,
                rotation: Some(90),
            },
        ),
        (
            // Move, pen, primary button, 0, x, y, pressure, rotation unknown, tilt 45, 0,
            // major, minor.
            packet(
                0x5500_0003,
                &cat(&[
                    &[3, 1, 0x01, 0],
                    &F_0_5,
                    &F_0_5,
                    &F_1,
                    &[0xFF, 0xFF, 45, 0],
                    &F_0,
                    &F_0,
                ]),
            ),
            InputEvent::Pen {
                kind: TouchKind::Move,
                tool: PenTool::Pen,
                buttons: 0x01,
                x: 0.5,
                y: 0.5,
                pressure_or_distance: 1.0,
                contact_major: 0.0,
                contact_minor: 0.0,
                rotation: None,
                tilt: Some(45),
            },
        ),
        (
            // Pad 0, PlayStation, capabilities 0x7F LE, supported buttons 0x3FF7FF LE.
            packet(0x5500_0004, &[0, 2, 0x7F, 0x00, 0xFF, 0xF7, 0x3F, 0x00]),
            InputEvent::GamepadArrival {
                pad: 0,
                kind: PadKind::PlayStation,
                capabilities: 0x7F,
                supported_buttons: buttons::ALL,
            },
        ),
        (
            // 0x001A, pad 1, mask 3, 0x0014, buttons 0x1100 (A, LB), LT 200, RT 0, sticks
            // (-32768, 1000) (32767, -1), 0x009C, buttons2 1 (paddle 1), 0x0055; all LE.
            packet(
                0x0C,
                &[
                    0x1A, 0x00, 0x01, 0x00, 0x03, 0x00, 0x14, 0x00, 0x00, 0x11, 200, 0, 0x00, 0x80,
                    0xE8, 0x03, 0xFF, 0x7F, 0xFF, 0xFF, 0x9C, 0x00, 0x01, 0x00, 0x55, 0x00,
                ],
            ),
            InputEvent::GamepadState {
                pad: 1,
                active_mask: 3,
                buttons: buttons::A | buttons::LB | buttons::PADDLE1,
                left_trigger: 200,
                right_trigger: 0,
                left_stick: (-32768, 1000),
                right_stick: (32767, -1),
            },
        ),
        (
            // Pad 0, down, 0, touchpad 0, pointer 1, x, y, pressure.
            packet(
                0x5500_0005,
                &cat(&[&[0, 1, 0, 0, 1, 0, 0, 0], &F_0_25, &F_0_75, &F_1]),
            ),
            InputEvent::GamepadTouchpad {
                pad: 0,
                kind: TouchKind::Down,
                touchpad: 0,
                pointer_id: 1,
                x: 0.25,
                y: 0.75,
                pressure: 1.0,
            },
        ),
        (
            // Pad 2, gyro, 0 0, x, y, z.
            packet(
                0x5500_0006,
                &cat(&[&[2, 2, 0, 0], &F_1_5, &F_MINUS_90, &F_0]),
            ),
            InputEvent::GamepadMotion {
                pad: 2,
                sensor: MotionSensor::Gyroscope,
                x: 1.5,
                y: -90.0,
                z: 0.0,
            },
        ),
        (
            packet(0x5500_0007, &[0, 2, 55, 0]),
            InputEvent::GamepadBattery {
                pad: 0,
                state: BatteryState::Discharging,
                percent: Some(55),
            },
        ),
        (
            packet(0x5500_0007, &[3, 5, 0xFF, 0]),
            InputEvent::GamepadBattery {
                pad: 3,
                state: BatteryState::Full,
                percent: None,
            },
        ),
    ]
}

#[test]
fn every_kind_decodes_from_the_clients_bytes() {
    for (bytes, want) in vectors() {
        assert_eq!(decode(&bytes), Ok(vec![want.clone()]), "{want:?}");
        assert_eq!(want.validate(), Ok(()), "{want:?}");
    }
}

#[test]
fn the_encoder_writes_the_clients_bytes() {
    for (bytes, event) in vectors() {
        assert_eq!(encode(&event), Ok(bytes), "{event:?}");
    }
    // And the shared seed list covers every kind with bytes that decode back.
    for (name, event) in fuzz::every_kind() {
        let bytes = encode(&event).expect(name);
        assert_eq!(decode(&bytes), Ok(vec![event]), "{name}");
    }
}

#[test]
fn text_of_several_code_points_becomes_one_event_each() {
    let mut out = vec![InputEvent::EnableHaptics];
    assert_eq!(
        decode_into(&packet(0x17, "aé🎮".as_bytes()), &mut out),
        Ok(3)
    );
    assert_eq!(
        out,
        [
            InputEvent::EnableHaptics,
            InputEvent::Text('a'),
            InputEvent::Text('é'),
            InputEvent::Text('🎮'),
        ]
    );
    let full = [b'x'; MAX_TEXT_BYTES];
    assert_eq!(decode(&packet(0x17, &full)).map(|e| e.len()), Ok(32));
}

#[test]
fn framing_errors_are_refused_and_append_nothing() {
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (vec![0, 0, 0, 4, 0x0D, 0, 0], DecodeError::ShortHeader(7)),
        (vec![], DecodeError::ShortHeader(0)),
        (
            // Size says 6, the packet carries 5 after it.
            vec![0, 0, 0, 6, 0x0D, 0, 0, 0, 0x01],
            DecodeError::SizeMismatch {
                declared: 6,
                actual: 5,
            },
        ),
        (
            // A little-endian size (the classic endianness slip).
            vec![6, 0, 0, 0, 0x0D, 0, 0, 0, 0x01, 0x00],
            DecodeError::SizeMismatch {
                declared: 0x0600_0000,
                actual: 6,
            },
        ),
        // 0x06 is the relative mouse magic of pre-gen-5 hosts, never sent to Sunshine-era hosts.
        (packet(0x06, &[0, 1, 0, 1]), DecodeError::UnknownMagic(0x06)),
        (
            packet(0x5500_0008, &[]),
            DecodeError::UnknownMagic(0x5500_0008),
        ),
        (
            packet(0x07, &[0, 1, 0, 1, 0]),
            DecodeError::BodyLength {
                kind: "mouse move",
                expected: 4,
                actual: 5,
            },
        ),
        (
            packet(0x0C, &[0; 24]),
            DecodeError::BodyLength {
                kind: "gamepad state",
                expected: 26,
                actual: 24,
            },
        ),
        (
            packet(0x5500_0002, &[0; 29]),
            DecodeError::BodyLength {
                kind: "touch",
                expected: 28,
                actual: 29,
            },
        ),
        (packet(0x17, &[]), DecodeError::TextLength(0)),
        (packet(0x17, &[b'a'; 33]), DecodeError::TextLength(33)),
        (packet(0x17, &[0xC3]), DecodeError::TextNotUtf8),
        (packet(0x17, &[b'a', 0xFF]), DecodeError::TextNotUtf8),
    ];
    for (bytes, want) in cases {
        let mut out = vec![InputEvent::EnableHaptics];
        assert_eq!(
            decode_into(&bytes, &mut out),
            Err(want.clone()),
            "{bytes:02x?}"
        );
        assert_eq!(out, [InputEvent::EnableHaptics], "{want:?} appended");
    }
}

#[test]
fn values_that_name_nothing_are_refused() {
    let undefined = |kind, field, value| DecodeError::Undefined { kind, field, value };
    let cases = vec![
        (packet(0x08, &[0]), undefined("mouse button", "button", 0)),
        (packet(0x09, &[6]), undefined("mouse button", "button", 6)),
        (
            packet(0x05, &[0, 1, 0, 1, 0, 0, 0xFF, 0xFF, 0x04, 0x37]),
            undefined("mouse position", "reference width - 1", -1),
        ),
        (
            packet(0x5500_0002, &cat(&[&[8], &[0; 27]])),
            undefined("touch", "event type", 8),
        ),
        (
            packet(0x5500_0003, &cat(&[&[1, 3], &[0; 26]])),
            undefined("pen", "tool", 3),
        ),
        (
            packet(0x5500_0004, &[0, 5, 0, 0, 0, 0, 0, 0]),
            undefined("gamepad arrival", "type", 5),
        ),
        (
            packet(0x5500_0006, &cat(&[&[0, 0, 0, 0], &[0; 12]])),
            undefined("gamepad motion", "motion type", 0),
        ),
        (
            packet(0x5500_0007, &[0, 6, 0, 0]),
            undefined("gamepad battery", "battery state", 6),
        ),
        (
            // Controller number 256 (LE) fits no pad index.
            packet(0x0C, &cat(&[&[0x1A, 0, 0x00, 0x01], &[0; 22]])),
            undefined("gamepad state", "controller", 256),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(decode(&bytes), Err(want.clone()), "{bytes:02x?}");
    }
}

#[test]
fn decodable_but_out_of_range_values_are_left_to_validate() {
    // Pad 16 and a position outside its plane decode (the wire carries them) and validate refuses.
    let pad16 = decode(&packet(0x5500_0007, &[16, 2, 55, 0])).unwrap();
    assert!(pad16[0].validate().is_err());
    let outside = decode(&packet(
        0x05,
        &[0x07, 0x80, 0, 0, 0, 0, 0x07, 0x7F, 0x04, 0x37],
    ))
    .unwrap();
    assert_eq!(
        outside,
        [InputEvent::MousePosition {
            x: 1920,
            y: 0,
            ref_width: 1920,
            ref_height: 1080
        }]
    );
    assert!(outside[0].validate().is_err());
    // A control character as text.
    let bell = decode(&packet(0x17, &[0x07])).unwrap();
    assert!(bell[0].validate().is_err());
}

#[test]
fn an_unrepresentable_reference_plane_is_not_encoded() {
    let event = |w| InputEvent::MousePosition {
        x: 0,
        y: 0,
        ref_width: w,
        ref_height: 10,
    };
    assert_eq!(encode(&event(0)), Err(EncodeError::ReferencePlane(0, 10)));
    assert_eq!(
        encode(&event(32769)),
        Err(EncodeError::ReferencePlane(32769, 10))
    );
    assert!(encode(&event(32768)).is_ok());
}

const KNOWN_MAGICS: [u32; 17] = [
    magic::KEY_DOWN,
    magic::KEY_UP,
    magic::MOUSE_POSITION,
    magic::MOUSE_MOVE,
    magic::MOUSE_BUTTON_DOWN,
    magic::MOUSE_BUTTON_UP,
    magic::SCROLL,
    magic::GAMEPAD_STATE,
    magic::ENABLE_HAPTICS,
    magic::UTF8_TEXT,
    magic::HSCROLL,
    magic::TOUCH,
    magic::PEN,
    magic::GAMEPAD_ARRIVAL,
    magic::GAMEPAD_TOUCHPAD,
    magic::GAMEPAD_MOTION,
    magic::GAMEPAD_BATTERY,
];

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        fuzz::input_packet(&bytes);
    }

    /// Well-framed packets of every known kind with arbitrary bodies reach the body decoders.
    #[test]
    fn decode_never_panics_on_framed_packets(
        magic in proptest::sample::select(KNOWN_MAGICS.to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        fuzz::input_packet(&packet(magic, &body));
    }

    /// Bodies of exactly the right size: most decode, and each re-encodes to itself.
    #[test]
    fn right_sized_bodies_round_trip(index in 0usize..64, seed in proptest::collection::vec(any::<u8>(), 28)) {
        let all = vectors();
        let (bytes, _) = &all[index % all.len()];
        let mut body = bytes[HEADER_LEN..].to_vec();
        for (b, s) in body.iter_mut().zip(&seed) {
            *b = *s;
        }
        let framed = packet(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), &body);
        fuzz::input_packet(&framed);
    }
}
