//! The EI client: `lumen-input`'s side of the EIS connection the broker handed over, written
//! with `reis`.
//!
//! It handshakes as a sender context named `lumen-input`, binds every capability each seat
//! offers (keyboard, pointer, absolute pointer, scroll, button, touch, text), and injects
//! [`Action`]s through the first resumed device that has the capability, each followed by a
//! frame. It never blocks: the worker's poll loop calls [`EiClient::on_readable`] when the socket
//! has data and [`EiClient::flush`] after each batch (and again when the socket takes more).
//!
//! Absolute positions and touches arrive as fractions of the output and are scaled to the
//! first region the device reports (its logical pixels), or to the stream size when it
//! reports none. Keys are sent as evdev codes, which is what `ei_keyboard.key` takes whatever
//! the keymap; the keymap the server sends is therefore not needed and not read.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use reis::ei;
use reis::event::{DeviceCapability, EiEvent, EiEventConverter};
use reis::handshake::EiHandshaker;
use reis::PendingRequestResult;

use crate::engine::{Action, Injector};

/// The name lumen-input gives itself to the EIS server.
pub const CLIENT_NAME: &str = "lumen-input";

/// Why the EIS connection is unusable.
#[derive(Debug, thiserror::Error)]
pub enum EiError {
    #[error("EIS connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("EIS server closed the connection")]
    Closed,
    #[error("EIS server sent a malformed message: {0}")]
    Protocol(String),
    #[error("EIS server disconnected us: {0}")]
    Disconnected(String),
}

enum Phase {
    Handshake(EiHandshaker<'static>),
    Connected(Box<EiEventConverter>),
}

/// One EIS connection.
pub struct EiClient {
    context: ei::Context,
    phase: Phase,
    /// Devices the server has resumed, in the order it added them; only these take events.
    resumed: Vec<reis::event::Device>,
    /// Devices we started emulating on (a resumed device is started once).
    emulating: HashSet<reis::event::Device>,
    sequence: u32,
    /// The plane absolute positions scale to when a device reports no region.
    fallback_plane: (f32, f32),
    /// Whether buffered requests still wait for the socket to take them.
    pub wants_write: bool,
}

fn now_micros() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000)
        .saturating_add(ts.tv_nsec as u64 / 1000)
}

impl EiClient {
    /// Starts the handshake on `fd` (a connected `AF_UNIX` stream socket).
    pub fn new(fd: OwnedFd) -> Result<EiClient, EiError> {
        let context = ei::Context::new(UnixStream::from(fd))?;
        Ok(EiClient {
            context,
            phase: Phase::Handshake(EiHandshaker::new(
                CLIENT_NAME,
                ei::handshake::ContextType::Sender,
            )),
            resumed: Vec::new(),
            emulating: HashSet::new(),
            sequence: 0,
            fallback_plane: (1920.0, 1080.0),
            wants_write: false,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.context.as_fd()
    }

    /// The stream size, used to scale absolute positions for devices without a region.
    pub fn set_fallback_plane(&mut self, width: u16, height: u16) {
        self.fallback_plane = (f32::from(width.max(1)), f32::from(height.max(1)));
    }

    /// Reads what the server sent and acts on it.
    pub fn on_readable(&mut self) -> Result<(), EiError> {
        match self.context.read() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(EiError::Closed),
            Err(e) => return Err(e.into()),
        }
        while let Some(result) = self.context.pending_event() {
            let event = match result {
                PendingRequestResult::Request(event) => event,
                PendingRequestResult::ParseError(e) => {
                    return Err(EiError::Protocol(e.to_string()))
                }
                // An event for an object we already released: harmless.
                PendingRequestResult::InvalidObject(_) => continue,
            };
            match &mut self.phase {
                Phase::Handshake(handshaker) => {
                    let done = handshaker
                        .handle_event(event)
                        .map_err(|e| EiError::Protocol(e.to_string()))?;
                    if let Some(resp) = done {
                        self.phase =
                            Phase::Connected(Box::new(EiEventConverter::new(&self.context, resp)));
                    }
                }
                Phase::Connected(converter) => converter
                    .handle_event(event)
                    .map_err(|e| EiError::Protocol(e.to_string()))?,
            }
            self.drain_events()?;
        }
        self.flush()
    }

    fn drain_events(&mut self) -> Result<(), EiError> {
        let Phase::Connected(converter) = &mut self.phase else {
            return Ok(());
        };
        while let Some(event) = converter.next_event() {
            match event {
                EiEvent::SeatAdded(added) => {
                    // Capabilities the seat does not offer bind to nothing.
                    added.seat.bind_capabilities(
                        DeviceCapability::Keyboard
                            | DeviceCapability::Pointer
                            | DeviceCapability::PointerAbsolute
                            | DeviceCapability::Scroll
                            | DeviceCapability::Button
                            | DeviceCapability::Touch
                            | DeviceCapability::Text,
                    );
                }
                EiEvent::DeviceResumed(resumed) => {
                    let device = resumed.device;
                    if !self.emulating.contains(&device) {
                        self.sequence = self.sequence.wrapping_add(1);
                        device
                            .device()
                            .start_emulating(resumed.serial, self.sequence);
                        self.emulating.insert(device.clone());
                    }
                    if !self.resumed.contains(&device) {
                        self.resumed.push(device);
                    }
                }
                EiEvent::DevicePaused(paused) => {
                    self.resumed.retain(|d| d != &paused.device);
                    // A paused device stops emulating; it starts again when resumed.
                    self.emulating.remove(&paused.device);
                }
                EiEvent::DeviceRemoved(removed) => {
                    self.resumed.retain(|d| d != &removed.device);
                    self.emulating.remove(&removed.device);
                }
                EiEvent::Disconnected(d) => {
                    return Err(EiError::Disconnected(format!(
                        "{:?} {}",
                        d.reason,
                        d.explanation.unwrap_or_default()
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sends what is buffered; `wants_write` says whether some is left for later.
    pub fn flush(&mut self) -> Result<(), EiError> {
        match self.context.flush() {
            Ok(()) => {
                self.wants_write = false;
                Ok(())
            }
            Err(rustix::io::Errno::AGAIN) => {
                self.wants_write = true;
                Ok(())
            }
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => Err(EiError::Closed),
            Err(e) => Err(EiError::Io(e.into())),
        }
    }

    fn serial(&self) -> u32 {
        match &self.phase {
            Phase::Connected(converter) => converter.connection().serial(),
            Phase::Handshake(_) => 0,
        }
    }

    fn device_with(&self, capability: DeviceCapability) -> Option<&reis::event::Device> {
        self.resumed.iter().find(|d| d.has_capability(capability))
    }

    /// Scales a fraction of the output to the device's first region (logical pixels).
    fn scale(&self, device: &reis::event::Device, x: f32, y: f32) -> (f32, f32) {
        match device.regions().first() {
            Some(r) => (
                r.x as f32 + x * r.width as f32,
                r.y as f32 + y * r.height as f32,
            ),
            None => (x * self.fallback_plane.0, y * self.fallback_plane.1),
        }
    }

    fn send(&self, capability: DeviceCapability, emit: impl FnOnce(&reis::event::Device)) -> bool {
        let Some(device) = self.device_with(capability) else {
            return false;
        };
        emit(device);
        device.device().frame(self.serial(), now_micros());
        true
    }
}

fn interface<T: ei::Interface>(device: &reis::event::Device) -> Option<T> {
    device.interface::<T>()
}

impl Injector for EiClient {
    fn inject(&mut self, action: Action) -> bool {
        use ei::button::ButtonState;
        use ei::keyboard::KeyState;
        match action {
            Action::Key { code, down } => self.send(DeviceCapability::Keyboard, |d| {
                if let Some(k) = interface::<ei::Keyboard>(d) {
                    let state = if down {
                        KeyState::Press
                    } else {
                        KeyState::Released
                    };
                    k.key(code, state);
                }
            }),
            Action::Button { code, down } => self.send(DeviceCapability::Button, |d| {
                if let Some(b) = interface::<ei::Button>(d) {
                    let state = if down {
                        ButtonState::Press
                    } else {
                        ButtonState::Released
                    };
                    b.button(code, state);
                }
            }),
            Action::Motion { dx, dy } => self.send(DeviceCapability::Pointer, |d| {
                if let Some(p) = interface::<ei::Pointer>(d) {
                    p.motion_relative(dx, dy);
                }
            }),
            Action::Absolute { x, y } => {
                let Some(device) = self.device_with(DeviceCapability::PointerAbsolute) else {
                    return false;
                };
                let (x, y) = self.scale(device, x, y);
                self.send(DeviceCapability::PointerAbsolute, |d| {
                    if let Some(p) = interface::<ei::PointerAbsolute>(d) {
                        p.motion_absolute(x, y);
                    }
                })
            }
            Action::Scroll { dx, dy } => self.send(DeviceCapability::Scroll, |d| {
                if let Some(s) = interface::<ei::Scroll>(d) {
                    s.scroll_discrete(dx, dy);
                }
            }),
            Action::TouchDown { id, x, y } | Action::TouchMotion { id, x, y } => {
                let Some(device) = self.device_with(DeviceCapability::Touch) else {
                    return false;
                };
                let (x, y) = self.scale(device, x, y);
                let down = matches!(action, Action::TouchDown { .. });
                self.send(DeviceCapability::Touch, |d| {
                    if let Some(t) = interface::<ei::Touchscreen>(d) {
                        if down {
                            t.down(id, x, y);
                        } else {
                            t.motion(id, x, y);
                        }
                    }
                })
            }
            Action::TouchUp { id } => self.send(DeviceCapability::Touch, |d| {
                if let Some(t) = interface::<ei::Touchscreen>(d) {
                    t.up(id);
                }
            }),
            Action::Text(c) => self.send(DeviceCapability::Text, |d| {
                if let Some(t) = interface::<ei::Text>(d) {
                    let mut buf = [0u8; 4];
                    t.utf8(c.encode_utf8(&mut buf));
                }
            }),
        }
    }

    fn has_text(&self) -> bool {
        self.device_with(DeviceCapability::Text).is_some()
    }
}
