//! [`InputEvent`] → §8 packet, the way moonlight-common-c builds it (test clients, fuzz seeds and
//! round-trip checks; lumen itself only decodes).

use lumen_ipc::input::{
    BatteryState, InputEvent, MotionSensor, MouseButton, PadKind, PenTool, ScrollAxis, TouchKind,
};

use super::magic;

/// An event the wire cannot carry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "reference plane {0}x{1}: each side must be 1..=32768 (the wire carries side - 1 as i16)"
    )]
    ReferencePlane(u16, u16),
}

/// Moonlight-qt sets this bit on every virtual-key code it sends; hosts read only the low byte.
const QT_KEY_BIT: u16 = 0x8000;

/// The bytes a client sends for `event` (the whole 0x0206 payload).
pub fn encode(event: &InputEvent) -> Result<Vec<u8>, EncodeError> {
    let mut body = Vec::with_capacity(28);
    let magic = match *event {
        InputEvent::EnableHaptics => {
            body.extend_from_slice(&1u16.to_le_bytes());
            magic::ENABLE_HAPTICS
        }
        InputEvent::Key {
            down,
            vk,
            modifiers,
            no_normalize,
        } => {
            body.push(u8::from(no_normalize));
            body.extend_from_slice(&(QT_KEY_BIT | u16::from(vk)).to_le_bytes());
            body.push(modifiers);
            body.extend_from_slice(&[0, 0]);
            if down {
                magic::KEY_DOWN
            } else {
                magic::KEY_UP
            }
        }
        InputEvent::MouseMove { dx, dy } => {
            body.extend_from_slice(&dx.to_be_bytes());
            body.extend_from_slice(&dy.to_be_bytes());
            magic::MOUSE_MOVE
        }
        InputEvent::MousePosition {
            x,
            y,
            ref_width,
            ref_height,
        } => {
            let minus_one = |side: u16| {
                side.checked_sub(1)
                    .and_then(|s| i16::try_from(s).ok())
                    .ok_or(EncodeError::ReferencePlane(ref_width, ref_height))
            };
            let (w, h) = (minus_one(ref_width)?, minus_one(ref_height)?);
            for v in [x, y, 0, w, h] {
                body.extend_from_slice(&v.to_be_bytes());
            }
            magic::MOUSE_POSITION
        }
        InputEvent::MouseButton { button, down } => {
            body.push(match button {
                MouseButton::Left => 1,
                MouseButton::Middle => 2,
                MouseButton::Right => 3,
                MouseButton::X1 => 4,
                MouseButton::X2 => 5,
            });
            if down {
                magic::MOUSE_BUTTON_DOWN
            } else {
                magic::MOUSE_BUTTON_UP
            }
        }
        InputEvent::Scroll {
            axis: ScrollAxis::Vertical,
            amount,
        } => {
            for v in [amount, amount, 0] {
                body.extend_from_slice(&v.to_be_bytes());
            }
            magic::SCROLL
        }
        InputEvent::Scroll {
            axis: ScrollAxis::Horizontal,
            amount,
        } => {
            body.extend_from_slice(&amount.to_be_bytes());
            magic::HSCROLL
        }
        InputEvent::Text(c) => {
            let mut utf8 = [0; 4];
            body.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            magic::UTF8_TEXT
        }
        InputEvent::Touch {
            kind,
            pointer_id,
            x,
            y,
            pressure_or_distance,
            contact_major,
            contact_minor,
            rotation,
        } => {
            body.extend_from_slice(&[touch_kind(kind), 0]);
            body.extend_from_slice(&rotation.unwrap_or(0xFFFF).to_le_bytes());
            body.extend_from_slice(&pointer_id.to_le_bytes());
            for f in [x, y, pressure_or_distance, contact_major, contact_minor] {
                body.extend_from_slice(&f.to_le_bytes());
            }
            magic::TOUCH
        }
        InputEvent::Pen {
            kind,
            tool,
            buttons,
            x,
            y,
            pressure_or_distance,
            contact_major,
            contact_minor,
            rotation,
            tilt,
        } => {
            let tool = match tool {
                PenTool::Unknown => 0,
                PenTool::Pen => 1,
                PenTool::Eraser => 2,
            };
            body.extend_from_slice(&[touch_kind(kind), tool, buttons, 0]);
            for f in [x, y, pressure_or_distance] {
                body.extend_from_slice(&f.to_le_bytes());
            }
            body.extend_from_slice(&rotation.unwrap_or(0xFFFF).to_le_bytes());
            body.extend_from_slice(&[tilt.unwrap_or(0xFF), 0]);
            for f in [contact_major, contact_minor] {
                body.extend_from_slice(&f.to_le_bytes());
            }
            magic::PEN
        }
        InputEvent::GamepadArrival {
            pad,
            kind,
            capabilities,
            supported_buttons,
        } => {
            let kind = match kind {
                PadKind::Unknown => 0,
                PadKind::Xbox => 1,
                PadKind::PlayStation => 2,
                PadKind::Nintendo => 3,
                PadKind::Steam => 4,
            };
            body.extend_from_slice(&[pad, kind]);
            body.extend_from_slice(&capabilities.to_le_bytes());
            body.extend_from_slice(&supported_buttons.to_le_bytes());
            magic::GAMEPAD_ARRIVAL
        }
        InputEvent::GamepadState {
            pad,
            active_mask,
            buttons,
            left_trigger,
            right_trigger,
            left_stick,
            right_stick,
        } => {
            let [b0, b1, b2, b3] = buttons.to_le_bytes();
            for v in [0x001A, u16::from(pad), active_mask, 0x0014] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            body.extend_from_slice(&[b0, b1, left_trigger, right_trigger]);
            for v in [left_stick.0, left_stick.1, right_stick.0, right_stick.1] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            body.extend_from_slice(&0x009Cu16.to_le_bytes());
            body.extend_from_slice(&[b2, b3]);
            body.extend_from_slice(&0x0055u16.to_le_bytes());
            magic::GAMEPAD_STATE
        }
        InputEvent::GamepadTouchpad {
            pad,
            kind,
            touchpad,
            pointer_id,
            x,
            y,
            pressure,
        } => {
            body.extend_from_slice(&[pad, touch_kind(kind), 0, touchpad]);
            body.extend_from_slice(&pointer_id.to_le_bytes());
            for f in [x, y, pressure] {
                body.extend_from_slice(&f.to_le_bytes());
            }
            magic::GAMEPAD_TOUCHPAD
        }
        InputEvent::GamepadMotion {
            pad,
            sensor,
            x,
            y,
            z,
        } => {
            let sensor = match sensor {
                MotionSensor::Accelerometer => 1,
                MotionSensor::Gyroscope => 2,
            };
            body.extend_from_slice(&[pad, sensor, 0, 0]);
            for f in [x, y, z] {
                body.extend_from_slice(&f.to_le_bytes());
            }
            magic::GAMEPAD_MOTION
        }
        InputEvent::GamepadBattery {
            pad,
            state,
            percent,
        } => {
            let state = match state {
                BatteryState::Unknown => 0,
                BatteryState::Absent => 1,
                BatteryState::Discharging => 2,
                BatteryState::Charging => 3,
                BatteryState::NotCharging => 4,
                BatteryState::Full => 5,
            };
            body.extend_from_slice(&[pad, state, percent.unwrap_or(0xFF), 0]);
            magic::GAMEPAD_BATTERY
        }
    };
    // Bodies are at most 28 bytes.
    let size = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut packet = Vec::with_capacity(8 + body.len());
    packet.extend_from_slice(&size.to_be_bytes());
    packet.extend_from_slice(&magic.to_le_bytes());
    packet.extend_from_slice(&body);
    Ok(packet)
}

fn touch_kind(kind: TouchKind) -> u8 {
    match kind {
        TouchKind::Hover => 0,
        TouchKind::Down => 1,
        TouchKind::Up => 2,
        TouchKind::Move => 3,
        TouchKind::Cancel => 4,
        TouchKind::ButtonOnly => 5,
        TouchKind::HoverLeave => 6,
        TouchKind::CancelAll => 7,
    }
}
