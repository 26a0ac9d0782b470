//! The video sender: access units from the video ring, packetized (§6.2–6.6) and paced over the
//! frame interval to the client's video ping address.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use lumen_core::video_packetizer::{FrameType, VideoFrame, VideoPacketizer};
use lumen_ipc::ring::{
    monotonic_ns, Consumer, RecordMeta, RingError, FLAG_DISCONTINUITY, FLAG_KEYFRAME, TS_CAPTURED,
};

use super::media::{add, DropTracker, Kind, Shared, Sink};
use crate::udp_send::{Pacing, UdpSender};

/// While frames are skipped for want of a keyframe, the encoder is reminded at most this often.
const IDR_REMINDER: Duration = Duration::from_millis(250);

/// The 90 kHz RTP timestamp of a CLOCK_MONOTONIC time (it wraps, as RTP timestamps do).
pub(super) fn rtp_90khz(ns: u64) -> u32 {
    (u128::from(ns) * 90_000 / 1_000_000_000) as u32
}

/// Host processing latency in 0.1 ms units, from capture until now (saturated).
fn latency_100us(captured_ns: u64, now_ns: u64) -> u16 {
    u16::try_from(now_ns.saturating_sub(captured_ns) / 100_000).unwrap_or(u16::MAX)
}

pub(super) struct VideoSink<'s> {
    packetizer: VideoPacketizer,
    interval: Duration,
    sender: Option<UdpSender<BorrowedFd<'s>>>,
    /// The access unit, copied out of the ring; grows to the largest one seen, then stays.
    au: Vec<u8>,
    /// `frameIndex` of the last frame sent (0: none yet).
    frame_index: u32,
    /// Frames are skipped until a keyframe: at the start, after a discontinuity, a new ring or a
    /// frame that could not be sent whole.
    need_keyframe: bool,
    last_idr_request: Option<Instant>,
    drops: DropTracker,
    logged_send_errors: u64,
}

impl VideoSink<'_> {
    pub fn new(packetizer: VideoPacketizer, interval: Duration) -> Self {
        VideoSink {
            packetizer,
            interval,
            sender: None,
            au: Vec::new(),
            frame_index: 0,
            need_keyframe: true,
            last_idr_request: None,
            drops: DropTracker::default(),
            logged_send_errors: 0,
        }
    }

    /// Asks for an IDR now (`force`) or, while still waiting for one, every [`IDR_REMINDER`].
    fn ask_idr(&mut self, shared: &Shared, force: bool) {
        let now = Instant::now();
        let due = self
            .last_idr_request
            .is_none_or(|last| now.duration_since(last) >= IDR_REMINDER);
        if force || due {
            self.last_idr_request = Some(now);
            shared.request_idr_quietly();
        }
    }

    /// Packetizes and sends the access unit in `self.au[..len]`.
    fn send(&mut self, meta: &RecordMeta, len: usize, backlog: bool, shared: &Shared) {
        let counters = &shared.counters;
        let Some(sender) = self.sender.as_mut() else {
            return;
        };
        let keyframe = meta.flags & FLAG_KEYFRAME != 0;
        // frameIndex 0 is never used: the client counts from 1.
        let frame_index = self.frame_index.checked_add(1).unwrap_or(1);
        let captured = meta.timestamps[TS_CAPTURED];
        let frame = VideoFrame {
            access_unit: &self.au[..len],
            frame_index,
            timestamp_90khz: rtp_90khz(captured),
            frame_type: if keyframe {
                FrameType::Idr
            } else {
                FrameType::P
            },
            host_latency_100us: latency_100us(captured, monotonic_ns()),
            ltr: false,
        };
        let out = match self.packetizer.packetize(&frame) {
            Ok(out) => out,
            Err(e) => {
                add(&counters.video_packetize_errors, 1);
                add(&counters.video_frames_skipped, 1);
                eprintln!("lumen-net: video frame of {len} bytes not sent: {e}");
                self.need_keyframe = true;
                self.ask_idr(shared, true);
                return;
            }
        };
        self.frame_index = frame_index;
        if keyframe {
            self.need_keyframe = false;
        }
        // Behind the encoder: send at once and catch up rather than pace into a growing queue.
        let interval = if backlog {
            Duration::ZERO
        } else {
            self.interval
        };
        match sender.send_frame(out.as_bytes(), out.datagram_len(), interval) {
            Ok(sent) => {
                add(&counters.video_frames, 1);
                add(&counters.video_datagrams, sent.datagrams as u64);
                add(&counters.video_bytes, out.as_bytes().len() as u64);
            }
            Err(e) => {
                add(&counters.send_errors, 1);
                self.logged_send_errors += 1;
                // Log the first and then every power of two, not one line per frame.
                if self.logged_send_errors.is_power_of_two() {
                    eprintln!(
                        "lumen-net: video frame {frame_index}: {e} ({} send errors)",
                        self.logged_send_errors
                    );
                }
            }
        }
    }
}

impl<'s> Sink<'s> for VideoSink<'s> {
    fn client_changed(&mut self, socket: BorrowedFd<'s>, addr: SocketAddr, shared: &Shared) {
        let first = self.sender.is_none();
        match UdpSender::new(socket, Some(addr), Pacing::default()) {
            Ok(sender) => self.sender = Some(sender),
            Err(e) => {
                eprintln!("lumen-net: video to {addr}: {e}");
                self.sender = None;
                return;
            }
        }
        if first {
            // The client waits for an IDR before it shows anything.
            self.need_keyframe = true;
            self.ask_idr(shared, true);
        }
    }

    fn ring_replaced(&mut self, _shared: &Shared) {
        // attach_rings asked for the IDR; the new encoder starts with one anyway.
        self.need_keyframe = true;
        self.last_idr_request = Some(Instant::now());
        self.drops.reset();
    }

    fn drain(&mut self, ring: &mut Consumer, shared: &Shared) -> Result<(), RingError> {
        let counters = &shared.counters;
        // A replaced ring is left as it is: its encoder is gone, the new one starts afresh.
        while !shared.stopping() && !shared.ring_waiting(Kind::Video) {
            let Some(record) = ring.next()? else {
                return Ok(());
            };
            let meta = *record.meta();
            let len = record.len();
            if meta.flags & FLAG_DISCONTINUITY != 0 {
                // The encoder dropped frames: the next P-frames reference pictures the client
                // never got.
                add(&counters.video_discontinuities, 1);
                self.need_keyframe = true;
                self.ask_idr(shared, true);
            }
            let keyframe = meta.flags & FLAG_KEYFRAME != 0;
            if self.sender.is_none() || len == 0 || (self.need_keyframe && !keyframe) {
                record.release();
                add(&counters.video_frames_skipped, 1);
                if self.sender.is_some() {
                    self.ask_idr(shared, false);
                }
                self.drops.update(ring, &counters.video_ring_drops);
                continue;
            }
            if self.au.len() < len {
                self.au.resize(len, 0);
            }
            record.copy_to(0, &mut self.au[..len]);
            record.release();
            self.drops.update(ring, &counters.video_ring_drops);
            let backlog = ring.has_data()?;
            self.send(&meta, len, backlog, shared);
        }
        Ok(())
    }
}
