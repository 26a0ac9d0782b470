//! §8 packet → [`InputEvent`]s. Layouts follow moonlight-common-c's `Input.h` (packed structs) and
//! what `InputStream.c` writes into them.

use lumen_ipc::input::{
    BatteryState, InputEvent, MotionSensor, MouseButton, PadKind, PenTool, ScrollAxis, TouchKind,
};

use super::reader::Body;
use super::{magic, DecodeError, HEADER_LEN, MAX_TEXT_BYTES};

/// The client's "unknown" rotation.
const ROTATION_UNKNOWN: u16 = 0xFFFF;
/// The client's "unknown" pen tilt.
const TILT_UNKNOWN: u8 = 0xFF;
/// The client's "unknown" battery percentage.
const PERCENT_UNKNOWN: u8 = 0xFF;
/// Keyboard flag (Sunshine extension): do not map the key to a US layout.
const KEY_FLAG_NON_NORMALIZED: u8 = 0x01;

/// Decodes one input packet (the whole 0x0206 payload) and appends its events to `out`: one event,
/// or one per code point for text. On an error nothing is appended. Returns how many were.
pub fn decode_into(payload: &[u8], out: &mut Vec<InputEvent>) -> Result<usize, DecodeError> {
    let Some((header, body)) = payload.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::ShortHeader(payload.len()));
    };
    let [s0, s1, s2, s3, m0, m1, m2, m3] = *header;
    let declared = u32::from_be_bytes([s0, s1, s2, s3]);
    let magic = u32::from_le_bytes([m0, m1, m2, m3]);
    // The size field counts the magic and the body.
    let actual = body.len().saturating_add(4);
    if usize::try_from(declared).ok() != Some(actual) {
        return Err(DecodeError::SizeMismatch { declared, actual });
    }
    if magic == magic::UTF8_TEXT {
        return text(body, out);
    }
    out.push(fixed(magic, body)?);
    Ok(1)
}

/// UTF-8 text: the client sends one code point per packet, but nothing here relies on it.
fn text(body: &[u8], out: &mut Vec<InputEvent>) -> Result<usize, DecodeError> {
    if body.is_empty() || body.len() > MAX_TEXT_BYTES {
        return Err(DecodeError::TextLength(body.len()));
    }
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::TextNotUtf8)?;
    let before = out.len();
    out.extend(text.chars().map(InputEvent::Text));
    Ok(out.len() - before)
}

fn undefined(kind: &'static str, field: &'static str, value: impl Into<i64>) -> DecodeError {
    DecodeError::Undefined {
        kind,
        field,
        value: value.into(),
    }
}

/// Every kind whose body has a fixed size.
fn fixed(magic: u32, body: &[u8]) -> Result<InputEvent, DecodeError> {
    Ok(match magic {
        magic::ENABLE_HAPTICS => {
            // u16le 1; the value carries nothing more.
            Body::exact("enable haptics", body, 2)?;
            InputEvent::EnableHaptics
        }
        magic::KEY_DOWN | magic::KEY_UP => {
            let mut b = Body::exact("key", body, 6)?;
            let flags = b.u8()?;
            // The Win32 virtual-key code is the low byte; moonlight-qt sets 0x8000 on top.
            let [vk, _] = b.u16le()?.to_le_bytes();
            let modifiers = b.u8()?;
            InputEvent::Key {
                down: magic == magic::KEY_DOWN,
                vk,
                modifiers,
                no_normalize: flags & KEY_FLAG_NON_NORMALIZED != 0,
            }
        }
        magic::MOUSE_MOVE => {
            let mut b = Body::exact("mouse move", body, 4)?;
            InputEvent::MouseMove {
                dx: b.i16be()?,
                dy: b.i16be()?,
            }
        }
        magic::MOUSE_POSITION => mouse_position(Body::exact("mouse position", body, 10)?)?,
        magic::MOUSE_BUTTON_DOWN | magic::MOUSE_BUTTON_UP => {
            let mut b = Body::exact("mouse button", body, 1)?;
            let button = match b.u8()? {
                1 => MouseButton::Left,
                2 => MouseButton::Middle,
                3 => MouseButton::Right,
                4 => MouseButton::X1,
                5 => MouseButton::X2,
                other => return Err(undefined(b.kind(), "button", other)),
            };
            InputEvent::MouseButton {
                button,
                down: magic == magic::MOUSE_BUTTON_DOWN,
            }
        }
        magic::SCROLL => {
            // The amount, the same again, then zero; the first is the one hosts read.
            let mut b = Body::exact("scroll", body, 6)?;
            InputEvent::Scroll {
                axis: ScrollAxis::Vertical,
                amount: b.i16be()?,
            }
        }
        magic::HSCROLL => {
            let mut b = Body::exact("horizontal scroll", body, 2)?;
            InputEvent::Scroll {
                axis: ScrollAxis::Horizontal,
                amount: b.i16be()?,
            }
        }
        magic::GAMEPAD_STATE => gamepad_state(Body::exact("gamepad state", body, 26)?)?,
        magic::TOUCH => touch(Body::exact("touch", body, 28)?)?,
        magic::PEN => pen(Body::exact("pen", body, 28)?)?,
        magic::GAMEPAD_ARRIVAL => {
            let mut b = Body::exact("gamepad arrival", body, 8)?;
            let pad = b.u8()?;
            let kind = match b.u8()? {
                0 => PadKind::Unknown,
                1 => PadKind::Xbox,
                2 => PadKind::PlayStation,
                3 => PadKind::Nintendo,
                4 => PadKind::Steam,
                other => return Err(undefined(b.kind(), "type", other)),
            };
            InputEvent::GamepadArrival {
                pad,
                kind,
                capabilities: b.u16le()?,
                supported_buttons: b.u32le()?,
            }
        }
        magic::GAMEPAD_TOUCHPAD => {
            let mut b = Body::exact("gamepad touchpad", body, 20)?;
            let pad = b.u8()?;
            let kind = touch_kind(&mut b)?;
            b.skip(1)?;
            InputEvent::GamepadTouchpad {
                pad,
                kind,
                touchpad: b.u8()?,
                pointer_id: b.u32le()?,
                x: b.f32le()?,
                y: b.f32le()?,
                pressure: b.f32le()?,
            }
        }
        magic::GAMEPAD_MOTION => {
            let mut b = Body::exact("gamepad motion", body, 16)?;
            let pad = b.u8()?;
            let sensor = match b.u8()? {
                1 => MotionSensor::Accelerometer,
                2 => MotionSensor::Gyroscope,
                other => return Err(undefined(b.kind(), "motion type", other)),
            };
            b.skip(2)?;
            InputEvent::GamepadMotion {
                pad,
                sensor,
                x: b.f32le()?,
                y: b.f32le()?,
                z: b.f32le()?,
            }
        }
        magic::GAMEPAD_BATTERY => {
            let mut b = Body::exact("gamepad battery", body, 4)?;
            let pad = b.u8()?;
            let state = match b.u8()? {
                0 => BatteryState::Unknown,
                1 => BatteryState::Absent,
                2 => BatteryState::Discharging,
                3 => BatteryState::Charging,
                4 => BatteryState::NotCharging,
                5 => BatteryState::Full,
                other => return Err(undefined(b.kind(), "battery state", other)),
            };
            let percent = b.u8()?;
            InputEvent::GamepadBattery {
                pad,
                state,
                percent: (percent != PERCENT_UNKNOWN).then_some(percent),
            }
        }
        other => return Err(DecodeError::UnknownMagic(other)),
    })
}

/// i16 BE x, y, 0, then the reference plane's width − 1 and height − 1 (the client subtracts one
/// to work around a rounding error in GFE's scaling; the plane itself is the stream size).
fn mouse_position(mut b: Body<'_>) -> Result<InputEvent, DecodeError> {
    let x = b.i16be()?;
    let y = b.i16be()?;
    b.skip(2)?;
    let mut dimension = |field| -> Result<u16, DecodeError> {
        let sent = b.i16be()?;
        u16::try_from(sent)
            .ok()
            .and_then(|d| d.checked_add(1))
            .ok_or_else(|| undefined("mouse position", field, sent))
    };
    let ref_width = dimension("reference width - 1")?;
    let ref_height = dimension("reference height - 1")?;
    Ok(InputEvent::MousePosition {
        x,
        y,
        ref_width,
        ref_height,
    })
}

/// The multi-controller packet: fixed filler around the state, and the Sunshine extension's
/// button bits 16-31 in a field older hosts saw as filler. The filler values are not checked
/// (hosts never did).
fn gamepad_state(mut b: Body<'_>) -> Result<InputEvent, DecodeError> {
    b.skip(2)?; // 0x001A
    let number = b.u16le()?;
    let pad = u8::try_from(number).map_err(|_| undefined(b.kind(), "controller", number))?;
    let active_mask = b.u16le()?;
    b.skip(2)?; // 0x0014
    let low_buttons = b.u16le()?;
    let left_trigger = b.u8()?;
    let right_trigger = b.u8()?;
    let left_stick = (b.i16le()?, b.i16le()?);
    let right_stick = (b.i16le()?, b.i16le()?);
    b.skip(2)?; // 0x009C
    let high_buttons = b.u16le()?;
    b.skip(2)?; // 0x0055
    Ok(InputEvent::GamepadState {
        pad,
        active_mask,
        buttons: u32::from(high_buttons) << 16 | u32::from(low_buttons),
        left_trigger,
        right_trigger,
        left_stick,
        right_stick,
    })
}

fn touch(mut b: Body<'_>) -> Result<InputEvent, DecodeError> {
    let kind = touch_kind(&mut b)?;
    b.skip(1)?;
    let rotation = rotation(b.u16le()?);
    Ok(InputEvent::Touch {
        kind,
        pointer_id: b.u32le()?,
        x: b.f32le()?,
        y: b.f32le()?,
        pressure_or_distance: b.f32le()?,
        contact_major: b.f32le()?,
        contact_minor: b.f32le()?,
        rotation,
    })
}

fn pen(mut b: Body<'_>) -> Result<InputEvent, DecodeError> {
    let kind = touch_kind(&mut b)?;
    let tool = match b.u8()? {
        0 => PenTool::Unknown,
        1 => PenTool::Pen,
        2 => PenTool::Eraser,
        other => return Err(undefined(b.kind(), "tool", other)),
    };
    let buttons = b.u8()?;
    b.skip(1)?;
    let x = b.f32le()?;
    let y = b.f32le()?;
    let pressure_or_distance = b.f32le()?;
    let rotation = rotation(b.u16le()?);
    let tilt = b.u8()?;
    b.skip(1)?;
    Ok(InputEvent::Pen {
        kind,
        tool,
        buttons,
        x,
        y,
        pressure_or_distance,
        contact_major: b.f32le()?,
        contact_minor: b.f32le()?,
        rotation,
        tilt: (tilt != TILT_UNKNOWN).then_some(tilt),
    })
}

fn touch_kind(b: &mut Body<'_>) -> Result<TouchKind, DecodeError> {
    Ok(match b.u8()? {
        0 => TouchKind::Hover,
        1 => TouchKind::Down,
        2 => TouchKind::Up,
        3 => TouchKind::Move,
        4 => TouchKind::Cancel,
        5 => TouchKind::ButtonOnly,
        6 => TouchKind::HoverLeave,
        7 => TouchKind::CancelAll,
        other => return Err(undefined(b.kind(), "event type", other)),
    })
}

fn rotation(wire: u16) -> Option<u16> {
    (wire != ROTATION_UNKNOWN).then_some(wire)
}
