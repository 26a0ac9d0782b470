//! The client's input packets (protocol notes §8), carried inside control message 0x0206: the
//! decoder lumen-net runs on every packet ([`decode_into`]) and the encoder a client runs
//! ([`encode`]), which test clients and the fuzz corpus use.
//!
//! Every packet is `u32 BE size` (the bytes after this field), `u32 LE magic`, then a body whose
//! layout the magic names. Endianness is mixed on purpose, as moonlight-common-c writes it: mouse
//! fields are big-endian, keyboard, pen, touch and gamepad fields little-endian, and floats are
//! IEEE-754 little-endian. The decoder checks the size field against the payload and the body
//! against the kind's exact length, maps every enumerated value and refuses what names nothing;
//! range checks beyond that are [`InputEvent::validate`]'s, which both lumen-net and lumen-input
//! run.
//!
//! [`InputEvent::validate`]: lumen_ipc::input::InputEvent::validate

mod decode;
mod encode;
#[doc(hidden)]
pub mod fuzz;
mod reader;

pub use decode::decode_into;
pub use encode::{encode, EncodeError};

/// The magic numbers of the packets a Sunshine-era client (appversion ≥ 7) sends.
pub mod magic {
    pub const KEY_DOWN: u32 = 0x0000_0003;
    pub const KEY_UP: u32 = 0x0000_0004;
    pub const MOUSE_POSITION: u32 = 0x0000_0005;
    /// Relative motion (the "gen 5" number; older hosts got 0x06).
    pub const MOUSE_MOVE: u32 = 0x0000_0007;
    pub const MOUSE_BUTTON_DOWN: u32 = 0x0000_0008;
    pub const MOUSE_BUTTON_UP: u32 = 0x0000_0009;
    /// Vertical scroll (the "gen 5" number).
    pub const SCROLL: u32 = 0x0000_000A;
    /// Multi-controller state (the "gen 5" number).
    pub const GAMEPAD_STATE: u32 = 0x0000_000C;
    pub const ENABLE_HAPTICS: u32 = 0x0000_000D;
    pub const UTF8_TEXT: u32 = 0x0000_0017;
    pub const HSCROLL: u32 = 0x5500_0001;
    pub const TOUCH: u32 = 0x5500_0002;
    pub const PEN: u32 = 0x5500_0003;
    pub const GAMEPAD_ARRIVAL: u32 = 0x5500_0004;
    pub const GAMEPAD_TOUCHPAD: u32 = 0x5500_0005;
    pub const GAMEPAD_MOTION: u32 = 0x5500_0006;
    pub const GAMEPAD_BATTERY: u32 = 0x5500_0007;
}

/// Bytes before the body: the size field and the magic.
pub const HEADER_LEN: usize = 8;
/// Most UTF-8 bytes one text packet may carry (the client's buffer).
pub const MAX_TEXT_BYTES: usize = 32;
/// Most events one packet decodes into (a text packet of single-byte code points).
pub const MAX_EVENTS_PER_PACKET: usize = MAX_TEXT_BYTES;

/// Why an input packet was refused (the caller counts it and goes on).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input packet of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    ShortHeader(usize),
    #[error("input packet says {declared} bytes follow its size field, {actual} do")]
    SizeMismatch { declared: u32, actual: usize },
    #[error("unknown input packet magic {0:#010x}")]
    UnknownMagic(u32),
    #[error("input {kind}: body of {actual} bytes, expected {expected}")]
    BodyLength {
        kind: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("input text: body of {0} bytes, expected 1..={MAX_TEXT_BYTES}")]
    TextLength(usize),
    #[error("input text is not UTF-8")]
    TextNotUtf8,
    #[error("input {kind}: {field} {value} names nothing")]
    Undefined {
        kind: &'static str,
        field: &'static str,
        value: i64,
    },
}

#[cfg(test)]
mod tests;
