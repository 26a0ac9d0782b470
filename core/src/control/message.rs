//! The messages inside the control envelope: what the client sends (protocol notes §5.3) and what the
//! host sends (§5.4), as typed values. Parsing takes untrusted payloads: every read is bounds-checked and
//! fields past the ones a message defines are ignored (the client ignores extra bytes the same way).
//! Input (0x0206) stays an opaque payload here; it is decoded elsewhere (§8).

/// Message type numbers. The same number can mean different things per direction (0x5502).
pub mod types {
    /// Client: request an IDR frame (also the client's "start A" on encrypted streams).
    pub const REQUEST_IDR: u16 = 0x0302;
    /// Client: "start B", sent once after start A.
    pub const START_B: u16 = 0x0307;
    /// Client: invalidate reference frames (RFI).
    pub const INVALIDATE_REF_FRAMES: u16 = 0x0301;
    /// Client: periodic ping (appversion ≥ 7.1.415), every 100 ms.
    pub const PERIODIC_PING: u16 = 0x0200;
    /// Client: loss statistics (older GFE only).
    pub const LOSS_STATS: u16 = 0x0201;
    /// Client: frame statistics (older GFE only).
    pub const FRAME_STATS: u16 = 0x0204;
    /// Client: input packet (§8).
    pub const INPUT: u16 = 0x0206;
    /// Client: long-term reference frame acknowledgement (Sunshine extension).
    pub const LTR_ACK: u16 = 0x0350;
    /// Client: per-frame FEC status (Sunshine extension, big-endian fields).
    pub const FEC_STATUS: u16 = 0x5502;

    /// Host: termination with a reason.
    pub const TERMINATION: u16 = 0x0109;
    /// Host: controller rumble.
    pub const RUMBLE: u16 = 0x010b;
    /// Host: HDR mode and metadata.
    pub const HDR_MODE: u16 = 0x010e;
    /// Host: trigger rumble (Sunshine extension).
    pub const RUMBLE_TRIGGERS: u16 = 0x5500;
    /// Host: set the motion-event report rate (Sunshine extension).
    pub const SET_MOTION_EVENT: u16 = 0x5501;
    /// Host: set a controller's RGB LED (Sunshine extension).
    pub const SET_RGB_LED: u16 = 0x5502;
    /// Host: DualSense adaptive triggers (Sunshine extension).
    pub const ADAPTIVE_TRIGGERS: u16 = 0x5503;
}

/// Bytes of one side's adaptive-trigger effect.
pub const ADAPTIVE_TRIGGER_EFFECT_LEN: usize = 10;
/// Largest periodic-ping payload kept (the client sends 8 bytes).
pub const MAX_PING_LEN: usize = 64;

/// Why a control payload was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The payload is shorter than the message's fields.
    #[error("control message {msg_type:#06x}: payload of {actual} bytes, needs {needed}")]
    Short {
        msg_type: u16,
        needed: usize,
        actual: usize,
    },
    /// The payload is longer than the message may be.
    #[error("control message {msg_type:#06x}: payload of {actual} bytes, at most {max}")]
    Long {
        msg_type: u16,
        max: usize,
        actual: usize,
    },
    /// A host message type this codec does not know.
    #[error("unknown host control message type {msg_type:#06x}")]
    UnknownHostType { msg_type: u16 },
}

/// The client's per-frame FEC report (Sunshine extension 0x5502; big-endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameFecStatus {
    pub frame_index: u32,
    pub highest_received_seq: u16,
    pub next_contiguous_seq: u16,
    pub missing_before_highest: u16,
    pub total_data: u16,
    pub total_parity: u16,
    pub received_data: u16,
    pub received_parity: u16,
    pub fec_percentage: u8,
    pub block_index: u8,
    pub block_count: u8,
}

/// Bytes of a [`FrameFecStatus`] on the wire.
pub const FEC_STATUS_LEN: usize = 21;

/// The 32-byte loss report older GFE clients send every 50 ms (kept raw; the fields that mean
/// something have accessors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossStats(pub [u8; 32]);

impl LossStats {
    /// The report interval the client claims, in ms.
    pub fn interval_ms(&self) -> u32 {
        u32::from_le_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }

    /// The last frame the client decoded completely.
    pub fn last_good_frame(&self) -> u64 {
        let mut b = [0; 8];
        b.copy_from_slice(&self.0[12..20]);
        u64::from_le_bytes(b)
    }
}

/// A message from the client (§5.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// 0x0302: the next frame must be an IDR frame. The client's first message.
    RequestIdr,
    /// 0x0307: start B; nothing to do.
    StartB,
    /// 0x0301: encode the next frame without referencing frames `first..=last`.
    InvalidateRefFrames { first: u64, last: u64 },
    /// 0x0200: keep-alive (its payload carries nothing the host needs).
    PeriodicPing { payload: Vec<u8> },
    /// 0x0201: older GFE loss report.
    LossStats(LossStats),
    /// 0x0350: the client holds frame `frame_index` as a long-term reference.
    LtrAck { frame_index: u32 },
    /// 0x5502: what the client saw of one frame's FEC.
    FecStatus(FrameFecStatus),
    /// 0x0206: an input packet, handed on undecoded.
    Input(Vec<u8>),
    /// Any other type (0x0204 frame stats included), kept for logging.
    Other { msg_type: u16, payload: Vec<u8> },
}

impl ClientMessage {
    /// Parses the payload of a message of type `msg_type` sent by the client.
    pub fn parse(msg_type: u16, payload: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(msg_type, payload);
        Ok(match msg_type {
            // The client sends fixed filler here; its content means nothing.
            types::REQUEST_IDR => ClientMessage::RequestIdr,
            types::START_B => ClientMessage::StartB,
            types::INVALIDATE_REF_FRAMES => {
                // u32 first, u32 0, u32 last, then zeros: Sunshine reads the two halves as 64-bit
                // values, and so does the legacy IDR-by-RFI form the client uses on older hosts.
                let first = r.u64le()?;
                let last = r.u64le()?;
                ClientMessage::InvalidateRefFrames { first, last }
            }
            types::PERIODIC_PING => {
                if payload.len() > MAX_PING_LEN {
                    return Err(MessageError::Long {
                        msg_type,
                        max: MAX_PING_LEN,
                        actual: payload.len(),
                    });
                }
                ClientMessage::PeriodicPing {
                    payload: payload.to_vec(),
                }
            }
            types::LOSS_STATS => ClientMessage::LossStats(LossStats(r.array()?)),
            types::LTR_ACK => ClientMessage::LtrAck {
                frame_index: r.u32le()?,
            },
            types::FEC_STATUS => ClientMessage::FecStatus(FrameFecStatus {
                frame_index: r.u32be()?,
                highest_received_seq: r.u16be()?,
                next_contiguous_seq: r.u16be()?,
                missing_before_highest: r.u16be()?,
                total_data: r.u16be()?,
                total_parity: r.u16be()?,
                received_data: r.u16be()?,
                received_parity: r.u16be()?,
                fec_percentage: r.u8()?,
                block_index: r.u8()?,
                block_count: r.u8()?,
            }),
            types::INPUT => ClientMessage::Input(payload.to_vec()),
            _ => ClientMessage::Other {
                msg_type,
                payload: payload.to_vec(),
            },
        })
    }

    /// The type and payload the client would send (test clients and round-trip checks).
    pub fn encode(&self) -> (u16, Vec<u8>) {
        match self {
            ClientMessage::RequestIdr => (types::REQUEST_IDR, vec![0, 0]),
            ClientMessage::StartB => (types::START_B, vec![0]),
            ClientMessage::InvalidateRefFrames { first, last } => {
                let mut p = Vec::with_capacity(24);
                p.extend_from_slice(&first.to_le_bytes());
                p.extend_from_slice(&last.to_le_bytes());
                p.extend_from_slice(&[0; 8]);
                (types::INVALIDATE_REF_FRAMES, p)
            }
            ClientMessage::PeriodicPing { payload } => (types::PERIODIC_PING, payload.clone()),
            ClientMessage::LossStats(s) => (types::LOSS_STATS, s.0.to_vec()),
            ClientMessage::LtrAck { frame_index } => {
                let mut p = frame_index.to_le_bytes().to_vec();
                p.extend_from_slice(&[0; 4]);
                (types::LTR_ACK, p)
            }
            ClientMessage::FecStatus(s) => {
                let mut p = Vec::with_capacity(FEC_STATUS_LEN);
                p.extend_from_slice(&s.frame_index.to_be_bytes());
                for v in [
                    s.highest_received_seq,
                    s.next_contiguous_seq,
                    s.missing_before_highest,
                    s.total_data,
                    s.total_parity,
                    s.received_data,
                    s.received_parity,
                ] {
                    p.extend_from_slice(&v.to_be_bytes());
                }
                p.extend_from_slice(&[s.fec_percentage, s.block_index, s.block_count]);
                (types::FEC_STATUS, p)
            }
            ClientMessage::Input(p) => (types::INPUT, p.clone()),
            ClientMessage::Other { msg_type, payload } => (*msg_type, payload.clone()),
        }
    }
}

/// The reason in a termination message (§5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// 4-byte big-endian HRESULT (what Sunshine sends).
    Extended(u32),
    /// 2-byte little-endian reason of older hosts.
    Short(u16),
}

impl Termination {
    /// The app exited: the client reports a graceful end (0) if it saw a frame.
    pub const GRACEFUL: Termination = Termination::Extended(0x8003_0023);
    /// Protected content on the host's display (client error −103).
    pub const PROTECTED_CONTENT: Termination = Termination::Extended(0x800E_9302);
    /// The host could not convert a frame for the encoder (client error −104).
    pub const FRAME_CONVERSION_FAILED: Termination = Termination::Extended(0x800E_9403);
    /// Short form meaning "intended".
    pub const SHORT_INTENDED: Termination = Termination::Short(0x0100);
}

/// HDR metadata the host sends with the HDR mode (Sunshine layout, all u16 LE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HdrMetadata {
    /// R, G, B primaries as (x, y) in units of 1/50000.
    pub display_primaries: [(u16, u16); 3],
    /// White point (x, y) in units of 1/50000.
    pub white_point: (u16, u16),
    /// Nits.
    pub max_display_luminance: u16,
    /// 1/10000 nit.
    pub min_display_luminance: u16,
    /// MaxCLL, nits.
    pub max_content_light_level: u16,
    /// MaxFALL, nits.
    pub max_frame_average_light_level: u16,
    /// Nits.
    pub max_full_frame_luminance: u16,
}

/// A message from the host (§5.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMessage {
    /// 0x0109: the stream ends; the client tears down at once.
    Termination(Termination),
    /// 0x010b: rumble one controller.
    Rumble {
        controller: u16,
        low_freq: u16,
        high_freq: u16,
    },
    /// 0x010e: HDR on or off, with the display's metadata.
    HdrMode {
        enabled: bool,
        metadata: HdrMetadata,
    },
    /// 0x5500: trigger rumble.
    RumbleTriggers {
        controller: u16,
        left: u16,
        right: u16,
    },
    /// 0x5501: ask for motion events at `report_rate_hz` (0 stops); `motion_type` 1 accel, 2 gyro.
    SetMotionEvent {
        controller: u16,
        report_rate_hz: u16,
        motion_type: u8,
    },
    /// 0x5502: controller LED colour.
    SetRgbLed {
        controller: u16,
        r: u8,
        g: u8,
        b: u8,
    },
    /// 0x5503: DualSense adaptive triggers; `event_flags` 0x04 right, 0x08 left.
    AdaptiveTriggers {
        controller: u16,
        event_flags: u8,
        type_left: u8,
        type_right: u8,
        left: [u8; ADAPTIVE_TRIGGER_EFFECT_LEN],
        right: [u8; ADAPTIVE_TRIGGER_EFFECT_LEN],
    },
}

impl HostMessage {
    /// The type and payload to seal.
    pub fn encode(&self) -> (u16, Vec<u8>) {
        let mut p = Vec::new();
        let t = match self {
            HostMessage::Termination(Termination::Extended(code)) => {
                p.extend_from_slice(&code.to_be_bytes());
                types::TERMINATION
            }
            HostMessage::Termination(Termination::Short(reason)) => {
                p.extend_from_slice(&reason.to_le_bytes());
                types::TERMINATION
            }
            HostMessage::Rumble {
                controller,
                low_freq,
                high_freq,
            } => {
                // The first u32 is skipped by the client.
                p.extend_from_slice(&[0; 4]);
                put16(&mut p, &[*controller, *low_freq, *high_freq]);
                types::RUMBLE
            }
            HostMessage::HdrMode { enabled, metadata } => {
                p.push(u8::from(*enabled));
                let m = metadata;
                for (x, y) in m.display_primaries {
                    put16(&mut p, &[x, y]);
                }
                put16(
                    &mut p,
                    &[
                        m.white_point.0,
                        m.white_point.1,
                        m.max_display_luminance,
                        m.min_display_luminance,
                        m.max_content_light_level,
                        m.max_frame_average_light_level,
                        m.max_full_frame_luminance,
                    ],
                );
                types::HDR_MODE
            }
            HostMessage::RumbleTriggers {
                controller,
                left,
                right,
            } => {
                put16(&mut p, &[*controller, *left, *right]);
                types::RUMBLE_TRIGGERS
            }
            HostMessage::SetMotionEvent {
                controller,
                report_rate_hz,
                motion_type,
            } => {
                put16(&mut p, &[*controller, *report_rate_hz]);
                p.push(*motion_type);
                types::SET_MOTION_EVENT
            }
            HostMessage::SetRgbLed {
                controller,
                r,
                g,
                b,
            } => {
                put16(&mut p, &[*controller]);
                p.extend_from_slice(&[*r, *g, *b]);
                types::SET_RGB_LED
            }
            HostMessage::AdaptiveTriggers {
                controller,
                event_flags,
                type_left,
                type_right,
                left,
                right,
            } => {
                put16(&mut p, &[*controller]);
                p.extend_from_slice(&[*event_flags, *type_left, *type_right]);
                p.extend_from_slice(left);
                p.extend_from_slice(right);
                types::ADAPTIVE_TRIGGERS
            }
        };
        (t, p)
    }

    /// Parses a host message the way the client reads it (test clients and round-trip checks). Like
    /// the client, HDR metadata missing from a short payload reads as zero.
    pub fn parse(msg_type: u16, payload: &[u8]) -> Result<Self, MessageError> {
        let mut r = Reader::new(msg_type, payload);
        Ok(match msg_type {
            types::TERMINATION => {
                // The client switches on size: 4+ bytes is the extended form.
                if payload.len() >= 4 {
                    HostMessage::Termination(Termination::Extended(r.u32be()?))
                } else {
                    HostMessage::Termination(Termination::Short(r.u16le()?))
                }
            }
            types::RUMBLE => {
                r.skip(4)?;
                HostMessage::Rumble {
                    controller: r.u16le()?,
                    low_freq: r.u16le()?,
                    high_freq: r.u16le()?,
                }
            }
            types::HDR_MODE => {
                let enabled = r.u8()? != 0;
                let mut v = [0u16; 13];
                for slot in &mut v {
                    *slot = r.u16le().unwrap_or(0);
                }
                HostMessage::HdrMode {
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
                }
            }
            types::RUMBLE_TRIGGERS => HostMessage::RumbleTriggers {
                controller: r.u16le()?,
                left: r.u16le()?,
                right: r.u16le()?,
            },
            types::SET_MOTION_EVENT => HostMessage::SetMotionEvent {
                controller: r.u16le()?,
                report_rate_hz: r.u16le()?,
                motion_type: r.u8()?,
            },
            types::SET_RGB_LED => HostMessage::SetRgbLed {
                controller: r.u16le()?,
                r: r.u8()?,
                g: r.u8()?,
                b: r.u8()?,
            },
            types::ADAPTIVE_TRIGGERS => HostMessage::AdaptiveTriggers {
                controller: r.u16le()?,
                event_flags: r.u8()?,
                type_left: r.u8()?,
                type_right: r.u8()?,
                left: r.array()?,
                right: r.array()?,
            },
            _ => return Err(MessageError::UnknownHostType { msg_type }),
        })
    }
}

/// Pad feedback from lumen-input, as the message that carries it to the client (rumble 0x010b,
/// trigger rumble 0x5500).
impl From<lumen_ipc::input::InputToNet> for HostMessage {
    fn from(feedback: lumen_ipc::input::InputToNet) -> Self {
        use lumen_ipc::input::InputToNet;
        match feedback {
            InputToNet::Rumble {
                pad,
                low_frequency,
                high_frequency,
            } => HostMessage::Rumble {
                controller: u16::from(pad),
                low_freq: low_frequency,
                high_freq: high_frequency,
            },
            InputToNet::TriggerRumble { pad, left, right } => HostMessage::RumbleTriggers {
                controller: u16::from(pad),
                left,
                right,
            },
        }
    }
}

fn put16(p: &mut Vec<u8>, values: &[u16]) {
    for v in values {
        p.extend_from_slice(&v.to_le_bytes());
    }
}

/// Bounds-checked cursor over a payload.
struct Reader<'a> {
    msg_type: u16,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(msg_type: u16, buf: &'a [u8]) -> Self {
        Self {
            msg_type,
            buf,
            pos: 0,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(MessageError::Short {
                msg_type: self.msg_type,
                needed: self.pos.saturating_add(n),
                actual: self.buf.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn skip(&mut self, n: usize) -> Result<(), MessageError> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16le(&mut self) -> Result<u16, MessageError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u16be(&mut self) -> Result<u16, MessageError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32le(&mut self) -> Result<u32, MessageError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u32be(&mut self) -> Result<u32, MessageError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64le(&mut self) -> Result<u64, MessageError> {
        self.array().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_ipc::input::InputToNet;

    #[test]
    fn pad_feedback_becomes_the_rumble_messages_the_client_reads() {
        let rumble = HostMessage::from(InputToNet::Rumble {
            pad: 3,
            low_frequency: 0x1234,
            high_frequency: 0xFFFF,
        });
        assert_eq!(
            rumble.encode(),
            (
                types::RUMBLE,
                vec![0, 0, 0, 0, 3, 0, 0x34, 0x12, 0xFF, 0xFF]
            )
        );
        let triggers = HostMessage::from(InputToNet::TriggerRumble {
            pad: 15,
            left: 0x0100,
            right: 2,
        });
        assert_eq!(
            triggers.encode(),
            (types::RUMBLE_TRIGGERS, vec![15, 0, 0x00, 0x01, 2, 0])
        );
    }
}
