//! The audio sender: Opus packets from the audio ring, packetized with FEC (§7.2–7.4) and sent one
//! datagram at a time to the client's audio ping address.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use lumen_core::audio_packetizer::{AudioPacketizer, MAX_OPUS_PACKET};
use lumen_ipc::ring::{Consumer, RingError};

use super::media::{add, DropTracker, Kind, Shared, Sink};
use crate::udp_send::{Pacing, UdpSender};

pub(super) struct AudioSink<'s> {
    packetizer: AudioPacketizer,
    sender: Option<UdpSender<BorrowedFd<'s>>>,
    /// One Opus packet, copied out of the ring.
    packet: Box<[u8; MAX_OPUS_PACKET]>,
    drops: DropTracker,
    logged_errors: u64,
}

impl AudioSink<'_> {
    pub fn new(packetizer: AudioPacketizer) -> Self {
        AudioSink {
            packetizer,
            sender: None,
            packet: Box::new([0; MAX_OPUS_PACKET]),
            drops: DropTracker::default(),
            logged_errors: 0,
        }
    }

    fn log(&mut self, what: std::fmt::Arguments<'_>) {
        self.logged_errors += 1;
        // The first and then every power of two: audio runs at 200 packets a second.
        if self.logged_errors.is_power_of_two() {
            eprintln!("lumen-net: audio: {what} ({} errors)", self.logged_errors);
        }
    }
}

impl<'s> Sink<'s> for AudioSink<'s> {
    fn client_changed(&mut self, socket: BorrowedFd<'s>, addr: SocketAddr, _shared: &Shared) {
        match UdpSender::new(socket, Some(addr), Pacing::default()) {
            Ok(sender) => self.sender = Some(sender),
            Err(e) => {
                eprintln!("lumen-net: audio to {addr}: {e}");
                self.sender = None;
            }
        }
    }

    fn ring_replaced(&mut self, _shared: &Shared) {
        self.drops.reset();
    }

    fn drain(&mut self, ring: &mut Consumer, shared: &Shared) -> Result<(), RingError> {
        let counters = &shared.counters;
        // A replaced ring is left as it is: its encoder is gone, the new one starts afresh.
        while !shared.stopping() && !shared.ring_waiting(Kind::Audio) {
            let Some(record) = ring.next()? else {
                return Ok(());
            };
            let len = record.len();
            if self.sender.is_none() || len == 0 || len > MAX_OPUS_PACKET {
                record.release();
                add(&counters.audio_packets_skipped, 1);
                self.drops.update(ring, &counters.audio_ring_drops);
                continue;
            }
            record.copy_to(0, &mut self.packet[..len]);
            record.release();
            self.drops.update(ring, &counters.audio_ring_drops);
            let Some(sender) = self.sender.as_mut() else {
                continue;
            };
            let datagrams = match self.packetizer.packetize(&self.packet[..len]) {
                Ok(datagrams) => datagrams,
                Err(e) => {
                    add(&counters.audio_packets_skipped, 1);
                    self.log(format_args!("an Opus packet of {len} bytes not sent: {e}"));
                    continue;
                }
            };
            let mut failed = None;
            for datagram in datagrams.iter() {
                match sender.send_one(datagram) {
                    Ok(()) => {
                        add(&counters.audio_datagrams, 1);
                        add(&counters.audio_bytes, datagram.len() as u64);
                    }
                    Err(e) => {
                        add(&counters.send_errors, 1);
                        failed = Some(e);
                    }
                }
            }
            add(&counters.audio_packets, 1);
            if let Some(e) = failed {
                self.log(format_args!("{e}"));
            }
        }
        Ok(())
    }
}
