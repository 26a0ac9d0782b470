//! Client input as it crosses from `lumen-net` to `lumen-input`, and feedback back the other way.
//!
//! `lumen-net` decodes the client's input packets (GameStream control message 0x0206, protocol
//! notes §8) into [`InputEvent`]s and sends them on the direct net ↔ input channel the broker
//! made ([`NetToInput`]). `lumen-input` does not trust that side: it calls [`InputEvent::validate`]
//! again and drops, with a count, whatever is out of range. What `lumen-input` sends back
//! ([`InputToNet`]: rumble and other pad feedback) is validated by `lumen-net` the same way.
//!
//! The messages travel in the [`crate::codec`] envelope (so they are versioned with
//! [`crate::msg::PROTOCOL_VERSION`]). The types are small and fixed-size except for text, which
//! holds one code point as the client sends it.
//!
//! Coordinates: mouse positions keep the client's reference plane (`x` in `0..ref_width`);
//! touch, pen and touchpad positions are normalised to `0.0..=1.0`. `lumen-input` scales both to
//! the captured output.

use serde::{Deserialize, Serialize};

/// Pads a client may use at once (Moonlight allows 16 with a Sunshine host).
pub const MAX_GAMEPADS: u8 = 16;

/// Largest reference plane accepted for an absolute mouse position (both axes).
pub const MAX_REFERENCE_DIMENSION: u16 = 16384;

/// Keyboard modifier bits as the client sends them.
pub mod modifiers {
    pub const SHIFT: u8 = 0x01;
    pub const CTRL: u8 = 0x02;
    pub const ALT: u8 = 0x04;
    pub const META: u8 = 0x08;
    pub const ALL: u8 = SHIFT | CTRL | ALT | META;
}

/// Gamepad button bits (protocol notes §8; bits 16–21 are Sunshine extensions).
pub mod buttons {
    pub const UP: u32 = 0x0001;
    pub const DOWN: u32 = 0x0002;
    pub const LEFT: u32 = 0x0004;
    pub const RIGHT: u32 = 0x0008;
    pub const START: u32 = 0x0010;
    pub const BACK: u32 = 0x0020;
    pub const LS_CLICK: u32 = 0x0040;
    pub const RS_CLICK: u32 = 0x0080;
    pub const LB: u32 = 0x0100;
    pub const RB: u32 = 0x0200;
    pub const GUIDE: u32 = 0x0400;
    pub const A: u32 = 0x1000;
    pub const B: u32 = 0x2000;
    pub const X: u32 = 0x4000;
    pub const Y: u32 = 0x8000;
    pub const PADDLE1: u32 = 0x1_0000;
    pub const PADDLE2: u32 = 0x2_0000;
    pub const PADDLE3: u32 = 0x4_0000;
    pub const PADDLE4: u32 = 0x8_0000;
    pub const TOUCHPAD: u32 = 0x10_0000;
    pub const MISC: u32 = 0x20_0000;
    /// Every bit a pad may set.
    pub const ALL: u32 = 0x3F_F7FF;
}

/// A mouse button (wire values 1–5).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MouseButton {
    Left,
    Middle,
    Right,
    X1,
    X2,
}

/// Which way a scroll goes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScrollAxis {
    Vertical,
    Horizontal,
}

/// Touch and pen event kinds (wire values 0–7).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TouchKind {
    Hover,
    Down,
    Up,
    Move,
    Cancel,
    ButtonOnly,
    HoverLeave,
    CancelAll,
}

/// The tool a pen event comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PenTool {
    Unknown,
    Pen,
    Eraser,
}

/// The kind of pad a client reports at arrival.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PadKind {
    Unknown,
    Xbox,
    PlayStation,
    Nintendo,
    Steam,
}

/// A pad motion sensor.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MotionSensor {
    /// m/s².
    Accelerometer,
    /// degrees per second.
    Gyroscope,
}

/// A pad's battery state (wire values 0–5).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatteryState {
    Unknown,
    Absent,
    Discharging,
    Charging,
    NotCharging,
    Full,
}

/// One input event from the client, decoded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum InputEvent {
    /// A key went down or up. `vk` is the Windows virtual-key code (the low byte the client
    /// sends); `modifiers` uses [`modifiers`]; `no_normalize` is the client's "do not map to a US
    /// layout" flag.
    Key {
        down: bool,
        vk: u8,
        modifiers: u8,
        no_normalize: bool,
    },
    /// Relative mouse motion in client pixels.
    MouseMove {
        dx: i16,
        dy: i16,
    },
    /// Absolute mouse position on a `ref_width` × `ref_height` plane (the client's stream size).
    MousePosition {
        x: i16,
        y: i16,
        ref_width: u16,
        ref_height: u16,
    },
    MouseButton {
        button: MouseButton,
        down: bool,
    },
    /// Scroll in Windows wheel units (120 = one notch; smaller values are high-resolution).
    Scroll {
        axis: ScrollAxis,
        amount: i16,
    },
    /// One Unicode scalar value typed as text.
    Text(char),
    /// A touch contact; positions and sizes normalised to 0..=1, `rotation` in degrees.
    Touch {
        kind: TouchKind,
        pointer_id: u32,
        x: f32,
        y: f32,
        pressure_or_distance: f32,
        contact_major: f32,
        contact_minor: f32,
        rotation: Option<u16>,
    },
    /// A pen; `buttons` uses bits 0x01, 0x02, 0x04; `tilt` in degrees.
    Pen {
        kind: TouchKind,
        tool: PenTool,
        buttons: u8,
        x: f32,
        y: f32,
        pressure_or_distance: f32,
        contact_major: f32,
        contact_minor: f32,
        rotation: Option<u16>,
        tilt: Option<u8>,
    },
    /// A pad arrived (before its first state).
    GamepadArrival {
        pad: u8,
        kind: PadKind,
        capabilities: u16,
        supported_buttons: u32,
    },
    /// The full state of one pad. A pad whose bit is clear in `active_mask` has gone away.
    GamepadState {
        pad: u8,
        active_mask: u16,
        buttons: u32,
        left_trigger: u8,
        right_trigger: u8,
        left_stick: (i16, i16),
        right_stick: (i16, i16),
    },
    /// A finger on a pad's touchpad (normalised 0..=1).
    GamepadTouchpad {
        pad: u8,
        kind: TouchKind,
        touchpad: u8,
        pointer_id: u32,
        x: f32,
        y: f32,
        pressure: f32,
    },
    GamepadMotion {
        pad: u8,
        sensor: MotionSensor,
        x: f32,
        y: f32,
        z: f32,
    },
    GamepadBattery {
        pad: u8,
        state: BatteryState,
        /// `None` when the client does not know.
        percent: Option<u8>,
    },
    /// The client can take rumble (sent once at stream start).
    EnableHaptics,
}

/// Why an event is out of range (counted and dropped, never injected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("modifier bits {0:#04x} outside Shift/Ctrl/Alt/Meta")]
    Modifiers(u8),
    #[error("virtual-key code 0 names no key")]
    NoKey,
    #[error("reference plane {0}x{1} is empty or larger than {MAX_REFERENCE_DIMENSION}")]
    ReferencePlane(u16, u16),
    #[error("position ({0}, {1}) outside the reference plane")]
    Position(i16, i16),
    #[error("text character {0:?} is a control character")]
    ControlCharacter(char),
    #[error("{0} is not a finite value in 0..=1")]
    Normalised(&'static str),
    #[error("{0} is not a finite value")]
    NotFinite(&'static str),
    #[error("rotation {0} over 359 degrees")]
    Rotation(u16),
    #[error("tilt {0} over 90 degrees")]
    Tilt(u8),
    #[error("pen button bits {0:#04x} outside 0x07")]
    PenButtons(u8),
    #[error("pad {0} is not below {MAX_GAMEPADS}")]
    Pad(u8),
    #[error("button bits {0:#x} name no known button")]
    Buttons(u32),
    #[error("battery percent {0} over 100")]
    BatteryPercent(u8),
}

fn check_unit(name: &'static str, v: f32) -> Result<(), InputError> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(InputError::Normalised(name))
    }
}

fn check_finite(name: &'static str, v: f32) -> Result<(), InputError> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(InputError::NotFinite(name))
    }
}

fn check_pad(pad: u8) -> Result<(), InputError> {
    if pad < MAX_GAMEPADS {
        Ok(())
    } else {
        Err(InputError::Pad(pad))
    }
}

fn check_rotation(rotation: Option<u16>) -> Result<(), InputError> {
    match rotation {
        Some(r) if r > 359 => Err(InputError::Rotation(r)),
        _ => Ok(()),
    }
}

impl InputEvent {
    /// Checks every field against what a real client can send. Both workers call it: net before
    /// forwarding, input before injecting (it trusts no peer).
    pub fn validate(&self) -> Result<(), InputError> {
        match *self {
            InputEvent::Key { vk, modifiers, .. } => {
                if modifiers & !modifiers::ALL != 0 {
                    return Err(InputError::Modifiers(modifiers));
                }
                if vk == 0 {
                    return Err(InputError::NoKey);
                }
                Ok(())
            }
            InputEvent::MousePosition {
                x,
                y,
                ref_width,
                ref_height,
            } => {
                let plane_ok = (1..=MAX_REFERENCE_DIMENSION).contains(&ref_width)
                    && (1..=MAX_REFERENCE_DIMENSION).contains(&ref_height);
                if !plane_ok {
                    return Err(InputError::ReferencePlane(ref_width, ref_height));
                }
                let inside = x >= 0 && y >= 0 && (x as u16) < ref_width && (y as u16) < ref_height;
                if !inside {
                    return Err(InputError::Position(x, y));
                }
                Ok(())
            }
            InputEvent::Text(c) => {
                if c.is_control() {
                    Err(InputError::ControlCharacter(c))
                } else {
                    Ok(())
                }
            }
            InputEvent::Touch {
                x,
                y,
                pressure_or_distance,
                contact_major,
                contact_minor,
                rotation,
                ..
            } => {
                check_unit("x", x)?;
                check_unit("y", y)?;
                check_unit("pressure", pressure_or_distance)?;
                check_unit("contact major", contact_major)?;
                check_unit("contact minor", contact_minor)?;
                check_rotation(rotation)
            }
            InputEvent::Pen {
                buttons,
                x,
                y,
                pressure_or_distance,
                contact_major,
                contact_minor,
                rotation,
                tilt,
                ..
            } => {
                if buttons & !0x07 != 0 {
                    return Err(InputError::PenButtons(buttons));
                }
                check_unit("x", x)?;
                check_unit("y", y)?;
                check_unit("pressure", pressure_or_distance)?;
                check_unit("contact major", contact_major)?;
                check_unit("contact minor", contact_minor)?;
                check_rotation(rotation)?;
                match tilt {
                    Some(t) if t > 90 => Err(InputError::Tilt(t)),
                    _ => Ok(()),
                }
            }
            InputEvent::GamepadArrival {
                pad,
                supported_buttons,
                ..
            } => {
                check_pad(pad)?;
                if supported_buttons & !buttons::ALL != 0 {
                    return Err(InputError::Buttons(supported_buttons));
                }
                Ok(())
            }
            InputEvent::GamepadState {
                pad, buttons: b, ..
            } => {
                check_pad(pad)?;
                if b & !buttons::ALL != 0 {
                    return Err(InputError::Buttons(b));
                }
                Ok(())
            }
            InputEvent::GamepadTouchpad {
                pad,
                x,
                y,
                pressure,
                ..
            } => {
                check_pad(pad)?;
                check_unit("x", x)?;
                check_unit("y", y)?;
                check_unit("pressure", pressure)
            }
            InputEvent::GamepadMotion { pad, x, y, z, .. } => {
                check_pad(pad)?;
                check_finite("x", x)?;
                check_finite("y", y)?;
                check_finite("z", z)
            }
            InputEvent::GamepadBattery { pad, percent, .. } => {
                check_pad(pad)?;
                match percent {
                    Some(p) if p > 100 => Err(InputError::BatteryPercent(p)),
                    _ => Ok(()),
                }
            }
            InputEvent::MouseMove { .. }
            | InputEvent::MouseButton { .. }
            | InputEvent::Scroll { .. }
            | InputEvent::EnableHaptics => Ok(()),
        }
    }
}

/// What `lumen-net` sends `lumen-input` on their direct channel.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum NetToInput {
    /// A stream started: the client's stream size (the plane absolute positions are scaled
    /// from when the client sends no reference of its own).
    StreamStarted { width: u16, height: u16 },
    /// Events from the client, in the order it sent them (a batch keeps the channel's message
    /// rate down when a client sends many small events).
    Events(Vec<InputEvent>),
    /// The stream ended: release every key, button and pad the client holds.
    StreamEnded,
}

/// The most events one [`NetToInput::Events`] batch may carry.
pub const MAX_EVENTS_PER_BATCH: usize = 64;

/// What `lumen-input` sends back to `lumen-net`, to be forwarded to the client over control.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputToNet {
    /// Pad rumble: motor strengths 0..=0xFFFF (control message 0x010b).
    Rumble {
        pad: u8,
        low_frequency: u16,
        high_frequency: u16,
    },
    /// Trigger rumble (Sunshine extension 0x5500).
    TriggerRumble { pad: u8, left: u16, right: u16 },
}

/// Counters `lumen-input` reports about once a second (in `lumen-broker status`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputStats {
    /// Events injected into the compositor (EIS) or a virtual pad.
    pub injected: u64,
    /// Events dropped because [`InputEvent::validate`] refused them.
    pub dropped_invalid: u64,
    /// Events dropped because no device can take them (no EIS connection, no uinput, a pad
    /// that never arrived).
    pub dropped_no_device: u64,
    /// Events dropped because the client exceeded the rate limit.
    pub dropped_rate: u64,
    /// Keys and buttons released on the client's behalf (stream end, worker restart).
    pub released: u64,
    /// Virtual pads present now.
    pub pads: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_events_pass() {
        let ok = [
            InputEvent::Key {
                down: true,
                vk: 0x41,
                modifiers: modifiers::SHIFT | modifiers::CTRL,
                no_normalize: false,
            },
            InputEvent::MousePosition {
                x: 639,
                y: 359,
                ref_width: 640,
                ref_height: 360,
            },
            InputEvent::Text('é'),
            InputEvent::GamepadState {
                pad: 15,
                active_mask: 0x8000,
                buttons: buttons::A | buttons::PADDLE4 | buttons::MISC,
                left_trigger: 255,
                right_trigger: 0,
                left_stick: (i16::MIN, i16::MAX),
                right_stick: (0, 0),
            },
            InputEvent::GamepadBattery {
                pad: 0,
                state: BatteryState::Charging,
                percent: Some(100),
            },
        ];
        for event in ok {
            assert_eq!(event.validate(), Ok(()), "{event:?}");
        }
    }

    #[test]
    fn out_of_range_events_are_refused() {
        let bad = [
            (
                InputEvent::Key {
                    down: true,
                    vk: 0x41,
                    modifiers: 0x10,
                    no_normalize: false,
                },
                InputError::Modifiers(0x10),
            ),
            (
                InputEvent::MousePosition {
                    x: 640,
                    y: 0,
                    ref_width: 640,
                    ref_height: 360,
                },
                InputError::Position(640, 0),
            ),
            (
                InputEvent::MousePosition {
                    x: 0,
                    y: 0,
                    ref_width: 0,
                    ref_height: 360,
                },
                InputError::ReferencePlane(0, 360),
            ),
            (
                InputEvent::Text('\u{7}'),
                InputError::ControlCharacter('\u{7}'),
            ),
            (
                InputEvent::GamepadMotion {
                    pad: 1,
                    sensor: MotionSensor::Gyroscope,
                    x: f32::NAN,
                    y: 0.0,
                    z: 0.0,
                },
                InputError::NotFinite("x"),
            ),
            (
                InputEvent::GamepadState {
                    pad: 16,
                    active_mask: 1,
                    buttons: 0,
                    left_trigger: 0,
                    right_trigger: 0,
                    left_stick: (0, 0),
                    right_stick: (0, 0),
                },
                InputError::Pad(16),
            ),
            (
                InputEvent::GamepadState {
                    pad: 0,
                    active_mask: 1,
                    buttons: 0x0800,
                    left_trigger: 0,
                    right_trigger: 0,
                    left_stick: (0, 0),
                    right_stick: (0, 0),
                },
                InputError::Buttons(0x0800),
            ),
        ];
        for (event, want) in bad {
            assert_eq!(event.validate(), Err(want), "{event:?}");
        }
    }

    #[test]
    fn touch_outside_the_unit_square_is_refused() {
        let touch = |x: f32| InputEvent::Touch {
            kind: TouchKind::Down,
            pointer_id: 1,
            x,
            y: 0.5,
            pressure_or_distance: 0.5,
            contact_major: 0.0,
            contact_minor: 0.0,
            rotation: None,
        };
        assert_eq!(touch(1.0).validate(), Ok(()));
        assert_eq!(touch(1.01).validate(), Err(InputError::Normalised("x")));
        assert_eq!(
            touch(f32::INFINITY).validate(),
            Err(InputError::Normalised("x"))
        );
    }

    #[test]
    fn batches_round_trip_through_the_codec() {
        let msg = NetToInput::Events(vec![
            InputEvent::MouseMove { dx: -3, dy: 7 },
            InputEvent::Scroll {
                axis: ScrollAxis::Horizontal,
                amount: -120,
            },
        ]);
        let bytes = crate::codec::encode(&msg).expect("encodes");
        let back: NetToInput = crate::codec::decode(&bytes).expect("decodes");
        assert_eq!(back, msg);
    }
}
