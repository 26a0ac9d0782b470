//! Entry points shared by the cargo-fuzz targets (fuzz/) and the corpus replay test
//! (core/tests/fuzz_corpus.rs). Each takes arbitrary bytes and must never panic; a panic here is
//! a bug, never an input error.

use lumen_ipc::codec;
use lumen_ipc::input::{
    buttons, modifiers, BatteryState, InputEvent, InputToNet, MotionSensor, MouseButton,
    NetToInput, PadKind, PenTool, ScrollAxis, TouchKind, MAX_EVENTS_PER_BATCH,
};

use super::{decode_into, encode, MAX_EVENTS_PER_PACKET};

/// `input_packet`: one 0x0206 payload through the decoder; whatever decodes is validated, and
/// re-encodes to a packet that decodes to the same bytes again (byte comparison, so NaN floats
/// compare too).
pub fn input_packet(data: &[u8]) {
    let mut events = Vec::new();
    let Ok(count) = decode_into(data, &mut events) else {
        assert!(events.is_empty(), "a refused packet appended events");
        return;
    };
    assert_eq!(count, events.len());
    assert!((1..=MAX_EVENTS_PER_PACKET).contains(&count));
    for event in &events {
        let _ = event.validate();
        // Only an absolute position with a reference plane the wire cannot carry fails, and
        // the decoder never produces one.
        let bytes = encode(event).expect("a decoded event re-encodes");
        let mut again = Vec::new();
        decode_into(&bytes, &mut again).expect("a re-encoded event decodes");
        assert_eq!(again.len(), 1);
        assert_eq!(encode(&again[0]).as_deref(), Ok(bytes.as_slice()));
    }
}

/// `input_channel`: the bytes as a record on the net ↔ input channel, decoded as what lumen-input
/// reads ([`NetToInput`], every event validated) and as what lumen-net reads ([`InputToNet`]).
/// Whatever decodes must encode and decode to the same encoding.
pub fn input_channel(data: &[u8]) {
    if let Ok(msg) = codec::decode::<NetToInput>(data) {
        if let NetToInput::Events(events) = &msg {
            for event in events {
                let _ = event.validate();
            }
        }
        let bytes = codec::encode(&msg).expect("a decoded message re-encodes");
        let again: NetToInput = codec::decode(&bytes).expect("a re-encoded message decodes");
        assert_eq!(codec::encode(&again).ok(), Some(bytes));
    }
    if let Ok(msg) = codec::decode::<InputToNet>(data) {
        let bytes = codec::encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(codec::decode::<InputToNet>(&bytes).ok(), Some(msg));
    }
}

/// One real event of every kind, named (seed corpora and tests).
pub fn every_kind() -> Vec<(&'static str, InputEvent)> {
    vec![
        ("enable-haptics", InputEvent::EnableHaptics),
        (
            "key-down",
            InputEvent::Key {
                down: true,
                vk: 0x41,
                modifiers: modifiers::SHIFT,
                no_normalize: false,
            },
        ),
        (
            "key-up",
            InputEvent::Key {
                down: false,
                vk: 0xA2,
                modifiers: modifiers::CTRL,
                no_normalize: true,
            },
        ),
        ("mouse-move", InputEvent::MouseMove { dx: -5, dy: 12 }),
        (
            "mouse-position",
            InputEvent::MousePosition {
                x: 960,
                y: 540,
                ref_width: 1920,
                ref_height: 1080,
            },
        ),
        (
            "mouse-button-down",
            InputEvent::MouseButton {
                button: MouseButton::Left,
                down: true,
            },
        ),
        (
            "mouse-button-up",
            InputEvent::MouseButton {
                button: MouseButton::X2,
                down: false,
            },
        ),
        (
            "scroll",
            InputEvent::Scroll {
                axis: ScrollAxis::Vertical,
                amount: -120,
            },
        ),
        (
            "hscroll",
            InputEvent::Scroll {
                axis: ScrollAxis::Horizontal,
                amount: 30,
            },
        ),
        ("text", InputEvent::Text('é')),
        ("text-4-bytes", InputEvent::Text('🎮')),
        (
            "touch",
            InputEvent::Touch {
                kind: TouchKind::Down,
                pointer_id: 7,
                x: 0.25,
                y: 0.75,
                pressure_or_distance: 0.5,
                contact_major: 0.01,
                contact_minor: 0.005,
                rotation: Some(90),
            },
        ),
        (
            "pen",
            InputEvent::Pen {
                kind: TouchKind::Move,
                tool: PenTool::Pen,
                buttons: 0x01,
                x: 0.5,
                y: 0.5,
                pressure_or_distance: 0.8,
                contact_major: 0.0,
                contact_minor: 0.0,
                rotation: None,
                tilt: Some(45),
            },
        ),
        (
            "gamepad-arrival",
            InputEvent::GamepadArrival {
                pad: 0,
                kind: PadKind::PlayStation,
                capabilities: 0x7F,
                supported_buttons: buttons::ALL,
            },
        ),
        (
            "gamepad-state",
            InputEvent::GamepadState {
                pad: 1,
                active_mask: 0x0003,
                buttons: buttons::A | buttons::LB | buttons::PADDLE1,
                left_trigger: 200,
                right_trigger: 0,
                left_stick: (-32768, 1000),
                right_stick: (32767, -1),
            },
        ),
        (
            "gamepad-touchpad",
            InputEvent::GamepadTouchpad {
                pad: 0,
                kind: TouchKind::Down,
                touchpad: 0,
                pointer_id: 1,
                x: 0.1,
                y: 0.9,
                pressure: 1.0,
            },
        ),
        (
            "gamepad-motion",
            InputEvent::GamepadMotion {
                pad: 0,
                sensor: MotionSensor::Gyroscope,
                x: 1.5,
                y: -90.0,
                z: 0.0,
            },
        ),
        (
            "gamepad-battery",
            InputEvent::GamepadBattery {
                pad: 0,
                state: BatteryState::Discharging,
                percent: Some(55),
            },
        ),
    ]
}

/// One channel message of every kind (seed corpus of `input_channel`).
pub fn channel_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let events: Vec<InputEvent> = every_kind()
        .into_iter()
        .map(|(_, e)| e)
        .take(MAX_EVENTS_PER_BATCH)
        .collect();
    let to_input = [
        (
            "stream-started",
            NetToInput::StreamStarted {
                width: 1920,
                height: 1080,
            },
        ),
        ("events", NetToInput::Events(events)),
        ("stream-ended", NetToInput::StreamEnded),
    ];
    let to_net = [
        (
            "rumble",
            InputToNet::Rumble {
                pad: 0,
                low_frequency: 0xFFFF,
                high_frequency: 0x4000,
            },
        ),
        (
            "trigger-rumble",
            InputToNet::TriggerRumble {
                pad: 1,
                left: 0x100,
                right: 0,
            },
        ),
    ];
    let mut seeds = Vec::new();
    for (name, msg) in to_input {
        seeds.push((name, codec::encode(&msg).expect("seed encodes")));
    }
    for (name, msg) in to_net {
        seeds.push((name, codec::encode(&msg).expect("seed encodes")));
    }
    seeds
}
