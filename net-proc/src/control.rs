//! The control stream (protocol notes §5): an ENet host on the Control socket the broker bound,
//! driven by one thread per stream. Every packet travels in the AES-GCM envelope of
//! `lumen_core::control`; IDR requests and reference-frame invalidations become
//! [`ControlEvent::RequestIdr`], the client's disconnect or silence ends the stream, and stopping
//! sends the termination message before the peer is let go.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fec_report::{self, FecOutcome};
use lumen_core::control::{ClientMessage, ControlCrypto, HostMessage, IvMode, Termination};
use lumen_core::input::decode_into;
use lumen_ipc::input::{InputEvent, MAX_EVENTS_PER_BATCH};

use crate::input_forward::{BadFeedback, StreamInput};
use rusty_enet::{
    Event, Host, HostSettings, Packet, PacketReceived, PeerID, Socket, SocketOptions, MTU_MAX,
};

/// The client connects with 48 channels (§5.1); fewer would fold its traffic onto channel 0.
const CHANNELS: usize = 0x30;
/// One client per stream; a second slot lets a reconnect arrive before the old peer timed out.
const PEERS: usize = 2;
/// The client must connect within this after the stream starts (its own limit is 10 s after PLAY).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the thread looks at the socket when nothing arrives.
const IDLE_POLL: Duration = Duration::from_millis(2);
/// `0x80030023`: the app exited, a graceful end (§5.5).
pub const TERMINATION_GRACEFUL: u32 = 0x8003_0023;

/// The control socket as ENet drives it: non-blocking but without the `SO_BROADCAST` that
/// rusty_enet's own `UdpSocket` binding turns on (a LAN-facing socket has no use for it), and
/// errors a peer can provoke from afar (ICMP-reported refusals and unreachables) read as "nothing
/// arrived" or "not sent" instead of ending the stream.
///
/// It also counts datagrams from anyone but the connected client (`foreign`), which ENet itself
/// drops without a word when they are not valid commands.
struct ControlSocket {
    socket: UdpSocket,
    /// The connected client's address; `None` before it connects (nothing is counted then).
    client: Option<SocketAddr>,
    /// Datagrams from another address while a client was connected, not yet added to the stats.
    foreign: u64,
}

impl ControlSocket {
    fn new(socket: UdpSocket) -> ControlSocket {
        ControlSocket {
            socket,
            client: None,
            foreign: 0,
        }
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

impl Socket for ControlSocket {
    type Address = SocketAddr;
    type Error = io::Error;

    fn init(&mut self, _options: SocketOptions) -> Result<(), io::Error> {
        self.socket.set_nonblocking(true)
    }

    fn send(&mut self, address: SocketAddr, buffer: &[u8]) -> Result<usize, io::Error> {
        match self.socket.send_to(buffer, address) {
            Ok(sent) => Ok(sent),
            Err(e) if transient(&e) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn receive(
        &mut self,
        buffer: &mut [u8; MTU_MAX],
    ) -> Result<Option<(SocketAddr, PacketReceived)>, io::Error> {
        match self.socket.recv_from(buffer) {
            Ok((len, from)) => {
                if self.client.is_some_and(|client| client != from) {
                    self.foreign += 1;
                }
                Ok(Some((from, PacketReceived::Complete(len))))
            }
            Err(e) if transient(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What the control stream reports to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// The client wants a fresh IDR (0x0302, or an RFI the host answers with an IDR).
    RequestIdr,
    /// The client connected from this address.
    Connected(SocketAddr),
    /// The stream is over from the client's side (disconnect, timeout, never connected).
    Ended(String),
}

/// What the control thread saw; read while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlStats {
    pub idr_requests: u64,
    pub rfi_requests: u64,
    pub pings: u64,
    pub loss_stats: u64,
    /// Frame FEC reports (0x5502), each about one FEC block ([`crate::fec_report`]).
    pub fec_status: u64,
    /// Reports of a block rebuilt from parity.
    pub fec_recovered: u64,
    /// Data shards rebuilt, summed over those reports.
    pub fec_repaired_shards: u64,
    /// Reports of a block the client could not rebuild.
    pub fec_lost: u64,
    /// Input packets (0x0206).
    pub input: u64,
    /// Input events decoded and valid.
    pub input_events: u64,
    /// Input packets that did not decode, and events that did but were out of range.
    pub input_invalid: u64,
    /// Valid input events not delivered to lumen-input (no channel, a full or closed one).
    pub input_dropped: u64,
    /// Rumble and trigger rumble from lumen-input sent to the client.
    pub rumble: u64,
    /// Feedback from lumen-input refused, or not sent (no client connected).
    pub rumble_dropped: u64,
    /// Packets that failed authentication or parsing.
    pub rejected: u64,
    /// ENet peers turned away: wrong connect data, or a second client.
    pub refused_peers: u64,
    /// Datagrams from any address but the connected client's, while it was connected.
    pub foreign_datagrams: u64,
}

/// The session settings the control stream needs.
pub struct ControlConfig {
    pub socket: OwnedFd,
    pub rikey: [u8; 16],
    pub iv_mode: IvMode,
    /// `X-SS-Connect-Data`: only a peer that presents it is the client of this launch.
    pub connect_data: u32,
    /// Where the client's input goes; without it, input is counted and dropped.
    pub input: Option<StreamInput>,
}

/// The running control stream.
pub struct Control {
    stop: Arc<AtomicBool>,
    termination: Arc<Mutex<Option<u32>>>,
    stats: Arc<Mutex<ControlStats>>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    /// Starts the ENet host on the control socket.
    pub fn start(
        config: ControlConfig,
        on_event: impl Fn(ControlEvent) + Send + 'static,
    ) -> Result<Control, String> {
        let socket = ControlSocket::new(UdpSocket::from(config.socket));
        let stop = Arc::new(AtomicBool::new(false));
        let termination = Arc::new(Mutex::new(None));
        let stats = Arc::new(Mutex::new(ControlStats::default()));
        let thread = std::thread::Builder::new()
            .name("lumen-net-ctrl".into())
            .spawn({
                let (stop, termination, stats) = (stop.clone(), termination.clone(), stats.clone());
                move || {
                    let crypto = ControlCrypto::host(&config.rikey, config.iv_mode);
                    let mut run = Run {
                        crypto,
                        connect_data: config.connect_data,
                        client: None,
                        client_addr: None,
                        stats,
                        on_event: &on_event,
                        input: config.input,
                        batch: Vec::with_capacity(MAX_EVENTS_PER_BATCH),
                        decoded: Vec::new(),
                    };
                    run.input_stream_started();
                    let result = run.serve(socket, &stop, &termination);
                    // Whatever ended the stream, lumen-input releases what the client held.
                    run.input_stream_ended();
                    if let Err(why) = result {
                        on_event(ControlEvent::Ended(why));
                    }
                }
            })
            .map_err(|e| format!("starting the control thread: {e}"))?;
        Ok(Control {
            stop,
            termination,
            stats,
            thread: Some(thread),
        })
    }

    pub fn stats(&self) -> ControlStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Ends the stream: the client gets `termination` (an HRESULT, §5.5) if it is connected, then
    /// the peer is disconnected and the thread joined.
    pub fn stop(mut self, termination: u32) -> ControlStats {
        *self
            .termination
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(termination);
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.stats()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Run<'a, F: Fn(ControlEvent)> {
    crypto: ControlCrypto,
    connect_data: u32,
    client: Option<PeerID>,
    /// The connected client's address, for counting everyone else's datagrams.
    client_addr: Option<SocketAddr>,
    stats: Arc<Mutex<ControlStats>>,
    on_event: &'a F,
    input: Option<StreamInput>,
    /// Valid events not yet sent to lumen-input (flushed after each burst of ENet events).
    batch: Vec<InputEvent>,
    /// One packet's decoded events, reused.
    decoded: Vec<InputEvent>,
}

impl<F: Fn(ControlEvent)> Run<'_, F> {
    fn count(&self, f: impl FnOnce(&mut ControlStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Moves the socket's count of other addresses' datagrams into the stats, and tells it who
    /// the client is now.
    fn count_foreign(&self, socket: &mut ControlSocket) {
        socket.client = self.client_addr;
        let foreign = std::mem::take(&mut socket.foreign);
        if foreign > 0 {
            self.count(|s| s.foreign_datagrams += foreign);
        }
    }

    fn serve(
        &mut self,
        socket: ControlSocket,
        stop: &AtomicBool,
        termination: &Mutex<Option<u32>>,
    ) -> Result<(), String> {
        let mut host = Host::new(
            socket,
            HostSettings {
                peer_limit: PEERS,
                channel_limit: CHANNELS,
                ..HostSettings::default()
            },
        )
        .map_err(|e| format!("control stream: ENet host: {e:?}"))?;
        let started = Instant::now();
        let mut ever_connected = false;
        while !stop.load(Ordering::Acquire) {
            let mut busy = false;
            loop {
                let event = host
                    .service()
                    .map_err(|e| format!("control stream: socket: {e}"))?;
                let Some(event) = event else { break };
                busy = true;
                if let Some(why) = self.event(event, &mut ever_connected) {
                    return Err(why);
                }
            }
            if !ever_connected && started.elapsed() > CONNECT_TIMEOUT {
                return Err(format!(
                    "the client did not connect to the control stream within {CONNECT_TIMEOUT:?}"
                ));
            }
            self.count_foreign(host.socket_mut());
            self.flush_input();
            self.forward_feedback(&mut host);
            if !busy {
                std::thread::sleep(IDLE_POLL);
            }
        }
        let code = termination
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or(TERMINATION_GRACEFUL);
        self.terminate(&mut host, code);
        Ok(())
    }

    /// Handles one ENet event; `Some(why)` ends the stream.
    fn event(
        &mut self,
        event: Event<'_, ControlSocket>,
        ever_connected: &mut bool,
    ) -> Option<String> {
        match event {
            Event::Connect { peer, data } => {
                if data != self.connect_data || self.client.is_some() {
                    // Not this launch's client (or a second one): it gets no control stream.
                    peer.disconnect_now(0);
                    self.count(|s| s.refused_peers += 1);
                    return None;
                }
                // The client itself gives up after 10 s without traffic (§5.1).
                peer.set_timeout(0, 10_000, 10_000);
                self.client = Some(peer.id());
                self.client_addr = peer.address();
                *ever_connected = true;
                if let Some(addr) = peer.address() {
                    (self.on_event)(ControlEvent::Connected(addr));
                }
                None
            }
            Event::Disconnect { peer, .. } => (self.client == Some(peer.id())).then(|| {
                self.client = None;
                self.client_addr = None;
                "the client left the control stream".to_string()
            }),
            Event::Receive { peer, packet, .. } => {
                if self.client != Some(peer.id()) {
                    return None;
                }
                self.message(packet.data());
                None
            }
        }
    }

    fn message(&mut self, packet: &[u8]) {
        let msg = match self.crypto.open_message(packet) {
            Ok((_, msg)) => msg,
            Err(_) => {
                self.count(|s| s.rejected += 1);
                return;
            }
        };
        match msg {
            ClientMessage::RequestIdr => {
                self.count(|s| s.idr_requests += 1);
                (self.on_event)(ControlEvent::RequestIdr);
            }
            // The encoder has no reference-picture control: a fresh IDR also repairs the loss.
            ClientMessage::InvalidateRefFrames { .. } => {
                self.count(|s| s.rfi_requests += 1);
                (self.on_event)(ControlEvent::RequestIdr);
            }
            // Keep-alives: the ENet acknowledgement is the answer the client waits for.
            ClientMessage::PeriodicPing { .. } => self.count(|s| s.pings += 1),
            ClientMessage::LossStats(_) => self.count(|s| s.loss_stats += 1),
            ClientMessage::FecStatus(status) => self.count(|s| {
                s.fec_status += 1;
                match fec_report::classify(&status) {
                    FecOutcome::Recovered { repaired } => {
                        s.fec_recovered += 1;
                        s.fec_repaired_shards += u64::from(repaired);
                    }
                    FecOutcome::Lost { .. } => s.fec_lost += 1,
                    FecOutcome::Complete => {}
                }
            }),
            ClientMessage::Input(packet) => self.input(&packet),
            ClientMessage::StartB | ClientMessage::LtrAck { .. } | ClientMessage::Other { .. } => {}
        }
    }

    /// Decodes one input packet (§8), validates its events and queues them for lumen-input;
    /// a full batch goes at once, the rest after the current burst of ENet events.
    fn input(&mut self, packet: &[u8]) {
        self.count(|s| s.input += 1);
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.clear();
        if decode_into(packet, &mut decoded).is_err() {
            self.count(|s| s.input_invalid += 1);
        }
        for event in decoded.drain(..) {
            if event.validate().is_err() {
                self.count(|s| s.input_invalid += 1);
                continue;
            }
            self.count(|s| s.input_events += 1);
            if self.batch.len() >= MAX_EVENTS_PER_BATCH {
                self.flush_input();
            }
            self.batch.push(event);
        }
        self.decoded = decoded;
    }

    /// Sends the queued events as one batch; what cannot go now is dropped and counted.
    fn flush_input(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let events = self.batch.len() as u64;
        let sent = match &self.input {
            Some(input) => input.forward.send_events(&mut self.batch).is_ok(),
            None => {
                self.batch.clear();
                false
            }
        };
        if !sent {
            self.count(|s| s.input_dropped += events);
        }
    }

    /// Passes rumble that lumen-input sent to the client (a bounded number per pass, so a
    /// flooding peer cannot starve the control stream).
    fn forward_feedback(&mut self, host: &mut Host<ControlSocket>) {
        const MAX_PER_PASS: usize = 64;
        for _ in 0..MAX_PER_PASS {
            let Some(input) = &self.input else { return };
            let feedback = match input.forward.feedback() {
                Ok(Some(feedback)) => feedback,
                Ok(None) => return,
                Err(BadFeedback::Closed) => {
                    self.count(|s| s.rumble_dropped += 1);
                    return;
                }
                Err(_) => {
                    self.count(|s| s.rumble_dropped += 1);
                    continue;
                }
            };
            let sent = self.send_to_client(host, &HostMessage::from(feedback));
            self.count(|s| {
                if sent {
                    s.rumble += 1;
                } else {
                    s.rumble_dropped += 1;
                }
            });
        }
    }

    /// Seals `msg` and queues it reliably on channel 0 (as Sunshine sends); false when no
    /// client is connected.
    fn send_to_client(&mut self, host: &mut Host<ControlSocket>, msg: &HostMessage) -> bool {
        let Some(peer) = self.client.and_then(|id| host.get_peer_mut(id)) else {
            return false;
        };
        match self.crypto.seal_message(msg) {
            Ok(bytes) => peer.send(0, &Packet::reliable(bytes.as_slice())).is_ok(),
            Err(_) => false,
        }
    }

    fn input_stream_started(&self) {
        if let Some(input) = &self.input {
            if let Err(e) = input.forward.stream_started(input.width, input.height) {
                eprintln!("lumen-net: telling lumen-input the stream started: {e}");
            }
        }
    }

    fn input_stream_ended(&mut self) {
        self.flush_input();
        if let Some(input) = &self.input {
            if let Err(e) = input.forward.stream_ended() {
                eprintln!("lumen-net: telling lumen-input the stream ended: {e}");
            }
        }
    }

    /// Sends the termination message and lets the client go, waiting briefly for ENet to deliver.
    fn terminate(&mut self, host: &mut Host<ControlSocket>, code: u32) {
        let Some(id) = self.client.take() else { return };
        let sealed = self
            .crypto
            .seal_message(&HostMessage::Termination(Termination::Extended(code)));
        if let (Ok(bytes), Some(peer)) = (sealed, host.get_peer_mut(id)) {
            let _ = peer.send(0, &Packet::reliable(bytes.as_slice()));
            peer.disconnect_later(0);
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match host.service() {
                Ok(Some(Event::Disconnect { .. })) | Err(_) => break,
                Ok(Some(_)) => {}
                Ok(None) => std::thread::sleep(IDLE_POLL),
            }
        }
        if let Some(peer) = host.get_peer_mut(id) {
            peer.disconnect_now(0);
        }
        host.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_core::control::FrameFecStatus;
    use std::sync::mpsc;

    const KEY: [u8; 16] = [9; 16];

    /// A real ENet client (rusty_enet) speaking the encrypted control protocol at our host.
    #[test]
    fn idr_requests_pings_and_termination_over_enet() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let view = server.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let control = Control::start(
            ControlConfig {
                socket: server.into(),
                rikey: KEY,
                iv_mode: IvMode::V2,
                connect_data: 0x1234_5678,
                input: None,
            },
            move |e| {
                let _ = tx.send(e);
            },
        )
        .unwrap();

        let client_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut client = Host::new(
            client_sock,
            HostSettings {
                peer_limit: 1,
                channel_limit: CHANNELS,
                ..HostSettings::default()
            },
        )
        .unwrap();
        let peer = client.connect(addr, CHANNELS, 0x1234_5678).unwrap().id();
        let mut crypto = ControlCrypto::client(&KEY, IvMode::V2);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut connected = false;
        while !connected && Instant::now() < deadline {
            if let Ok(Some(Event::Connect { .. })) = client.service() {
                connected = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(connected);
        // ENet runs the LAN socket without broadcast.
        assert!(!view.broadcast().unwrap());
        for msg in [
            ClientMessage::PeriodicPing {
                payload: vec![4, 0, 0, 0, 0, 0, 0, 0],
            },
            ClientMessage::InvalidateRefFrames { first: 3, last: 5 },
            // A block rebuilt (2 data shards from parity), one lost, one whole.
            ClientMessage::FecStatus(FrameFecStatus {
                total_data: 10,
                total_parity: 2,
                received_data: 8,
                received_parity: 2,
                ..FrameFecStatus::default()
            }),
            ClientMessage::FecStatus(FrameFecStatus {
                total_data: 10,
                total_parity: 2,
                received_data: 7,
                received_parity: 2,
                ..FrameFecStatus::default()
            }),
            ClientMessage::FecStatus(FrameFecStatus {
                total_data: 4,
                total_parity: 1,
                received_data: 4,
                ..FrameFecStatus::default()
            }),
            ClientMessage::RequestIdr,
        ] {
            let (t, p) = msg.encode();
            let bytes = crypto.seal(t, &p).unwrap();
            client
                .peer_mut(peer)
                .send(1, &Packet::reliable(bytes.as_slice()))
                .unwrap();
        }
        // Garbage is counted, never fatal.
        client
            .peer_mut(peer)
            .send(0, &Packet::reliable(&[1u8, 2, 3][..]))
            .unwrap();
        let mut events = Vec::new();
        let idrs = |events: &[ControlEvent]| {
            events
                .iter()
                .filter(|e| **e == ControlEvent::RequestIdr)
                .count()
        };
        while Instant::now() < deadline && idrs(&events) < 2 {
            let _ = client.service();
            events.extend(rx.try_iter());
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            matches!(events[0], ControlEvent::Connected(_)),
            "{events:?}"
        );
        // Both the IDR request and the reference-frame invalidation ask the encoder for an IDR.
        assert_eq!(idrs(&events), 2, "{events:?}");
        // Now that the host knows the client: datagrams from another address (junk, a
        // truncated ENet header, an oversized one) are counted as foreign, and the client's
        // stream goes on (its termination below still arrives).
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        for junk in [&[0xffu8; 1][..], &[0, 0, 0x82, 0xff][..], &[0x5a; 1400][..]] {
            stranger.send_to(junk, addr).unwrap();
        }
        while Instant::now() < deadline && control.stats().foreign_datagrams < 3 {
            let _ = client.service();
            std::thread::sleep(Duration::from_millis(1));
        }
        while Instant::now() < deadline && control.stats().rejected == 0 {
            let _ = client.service();
            std::thread::sleep(Duration::from_millis(1));
        }

        // Stopping sends the termination message, then disconnects.
        let stopper = std::thread::spawn(move || control.stop(TERMINATION_GRACEFUL));
        let mut termination = None;
        let mut disconnected = false;
        while Instant::now() < deadline && !disconnected {
            match client.service() {
                Ok(Some(Event::Receive { packet, .. })) => {
                    let o = crypto.open(packet.data()).unwrap();
                    termination = Some(HostMessage::parse(o.msg_type, &o.payload).unwrap());
                }
                Ok(Some(Event::Disconnect { .. })) => disconnected = true,
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        let stats = stopper.join().unwrap();
        assert_eq!(
            termination,
            Some(HostMessage::Termination(Termination::Extended(
                TERMINATION_GRACEFUL
            )))
        );
        assert!(disconnected);
        assert_eq!(stats.idr_requests, 1);
        assert_eq!(stats.rfi_requests, 1);
        assert_eq!(stats.pings, 1);
        assert_eq!(stats.rejected, 1);
        assert_eq!(stats.fec_status, 3);
        assert_eq!(stats.fec_recovered, 1);
        assert_eq!(stats.fec_repaired_shards, 2);
        assert_eq!(stats.fec_lost, 1);
        assert_eq!(stats.refused_peers, 0);
        assert_eq!(stats.foreign_datagrams, 3);
    }

    #[test]
    fn a_client_that_never_connects_ends_the_stream_and_strangers_are_refused() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let control = Control::start(
            ControlConfig {
                socket: server.into(),
                rikey: KEY,
                iv_mode: IvMode::V2,
                connect_data: 7,
                input: None,
            },
            move |e| {
                let _ = tx.send(e);
            },
        )
        .unwrap();
        let mut client = Host::new(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            HostSettings {
                peer_limit: 1,
                channel_limit: CHANNELS,
                ..HostSettings::default()
            },
        )
        .unwrap();
        client.connect(addr, CHANNELS, 8).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut refused = false;
        while Instant::now() < deadline && !refused {
            match client.service() {
                Ok(Some(Event::Disconnect { .. })) => refused = true,
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(refused, "a peer with the wrong connect data was kept");
        assert!(rx.try_iter().next().is_none());
        let stats = control.stop(TERMINATION_GRACEFUL);
        assert_eq!(
            stats,
            ControlStats {
                refused_peers: 1,
                ..ControlStats::default()
            }
        );
    }

    /// A real control session with an input channel: the client's keyboard and mouse packets
    /// arrive at "lumen-input" as events, garbage and out-of-range input is counted and dropped,
    /// and rumble that lumen-input sends back reaches the client.
    #[test]
    fn input_is_forwarded_to_the_input_channel_and_rumble_comes_back() {
        use crate::input_forward::InputForward;
        use lumen_ipc::channel::Channel;
        use lumen_ipc::input::{InputToNet, MouseButton, NetToInput};
        use std::os::fd::AsFd;

        let (ours, mut input) = Channel::pair().unwrap();
        let forward = Arc::new(InputForward::default());
        forward
            .replace_channel(ours.as_fd().try_clone_to_owned().unwrap())
            .unwrap();
        drop(ours);
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let control = Control::start(
            ControlConfig {
                socket: server.into(),
                rikey: KEY,
                iv_mode: IvMode::V2,
                connect_data: 42,
                input: Some(StreamInput::new(forward, 1280, 720)),
            },
            |_| {},
        )
        .unwrap();
        let wait = std::time::Duration::from_secs(5);
        assert_eq!(
            input.recv_timeout::<NetToInput>(wait).unwrap().msg,
            NetToInput::StreamStarted {
                width: 1280,
                height: 720
            }
        );

        let mut client = Host::new(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            HostSettings {
                peer_limit: 1,
                channel_limit: CHANNELS,
                ..HostSettings::default()
            },
        )
        .unwrap();
        let peer = client.connect(addr, CHANNELS, 42).unwrap().id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut connected = false;
        while !connected && Instant::now() < deadline {
            if let Ok(Some(Event::Connect { .. })) = client.service() {
                connected = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(connected);

        let key = InputEvent::Key {
            down: true,
            vk: 0x41,
            modifiers: 0,
            no_normalize: false,
        };
        let click = InputEvent::MouseButton {
            button: MouseButton::Left,
            down: true,
        };
        let outside = InputEvent::MousePosition {
            x: 1280,
            y: 0,
            ref_width: 1280,
            ref_height: 720,
        };
        let encode = |e: &InputEvent| lumen_core::input::encode(e).unwrap();
        let mut crypto = ControlCrypto::client(&KEY, IvMode::V2);
        // Keyboard on channel 2, mouse on 3 (§5.1); then a packet with an unknown magic and one
        // that decodes but lies outside its plane.
        for (channel, packet) in [
            (2, encode(&key)),
            (3, encode(&click)),
            (3, vec![0, 0, 0, 5, 0xEE, 0, 0, 0, 1]),
            (3, encode(&outside)),
        ] {
            let (t, p) = ClientMessage::Input(packet).encode();
            let sealed = crypto.seal(t, &p).unwrap();
            client
                .peer_mut(peer)
                .send(channel, &Packet::reliable(sealed.as_slice()))
                .unwrap();
        }
        let mut events = Vec::new();
        while events.len() < 2 && Instant::now() < deadline {
            let _ = client.service();
            if let Ok(Some(received)) = input.try_recv::<NetToInput>() {
                match received.msg {
                    NetToInput::Events(batch) => events.extend(batch),
                    other => panic!("unexpected {other:?}"),
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(events, [key, click]);

        // lumen-input rumbles pad 1; the client gets 0x010b.
        input
            .send(
                &InputToNet::Rumble {
                    pad: 1,
                    low_frequency: 0xFFFF,
                    high_frequency: 0x1000,
                },
                &[],
            )
            .unwrap();
        let mut rumble = None;
        while rumble.is_none() && Instant::now() < deadline {
            match client.service() {
                Ok(Some(Event::Receive { packet, .. })) => {
                    let o = crypto.open(packet.data()).unwrap();
                    rumble = Some(HostMessage::parse(o.msg_type, &o.payload).unwrap());
                }
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(
            rumble,
            Some(HostMessage::Rumble {
                controller: 1,
                low_freq: 0xFFFF,
                high_freq: 0x1000
            })
        );

        let stopper = std::thread::spawn(move || control.stop(TERMINATION_GRACEFUL));
        while !stopper.is_finished() {
            let _ = client.service();
            std::thread::sleep(Duration::from_millis(1));
        }
        let stats = stopper.join().unwrap();
        // Everything after the events: the stream's end, so lumen-input releases what is held.
        assert_eq!(
            input.recv_timeout::<NetToInput>(wait).unwrap().msg,
            NetToInput::StreamEnded
        );
        assert_eq!(stats.input, 4);
        assert_eq!(stats.input_events, 2);
        assert_eq!(stats.input_invalid, 2);
        assert_eq!(stats.input_dropped, 0);
        assert_eq!(stats.rumble, 1);
        assert_eq!(stats.rumble_dropped, 0);
    }

    /// Without an input channel the client's input is decoded, counted and dropped.
    #[test]
    fn input_without_a_channel_is_counted_and_dropped() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let control = Control::start(
            ControlConfig {
                socket: server.into(),
                rikey: KEY,
                iv_mode: IvMode::V2,
                connect_data: 1,
                input: None,
            },
            |_| {},
        )
        .unwrap();
        let mut client = Host::new(
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            HostSettings {
                peer_limit: 1,
                channel_limit: CHANNELS,
                ..HostSettings::default()
            },
        )
        .unwrap();
        let peer = client.connect(addr, CHANNELS, 1).unwrap().id();
        let mut crypto = ControlCrypto::client(&KEY, IvMode::V2);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sent = false;
        while control.stats().input_dropped == 0 && Instant::now() < deadline {
            if let Ok(Some(Event::Connect { .. })) = client.service() {
                let packet =
                    lumen_core::input::encode(&InputEvent::MouseMove { dx: 3, dy: -3 }).unwrap();
                let (t, p) = ClientMessage::Input(packet).encode();
                let sealed = crypto.seal(t, &p).unwrap();
                client
                    .peer_mut(peer)
                    .send(3, &Packet::reliable(sealed.as_slice()))
                    .unwrap();
                sent = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(sent);
        let stats = control.stop(TERMINATION_GRACEFUL);
        assert_eq!((stats.input, stats.input_events), (1, 1));
        assert_eq!(stats.input_dropped, 1);
    }
}
