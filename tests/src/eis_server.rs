//! An EIS server written with `reis::eis`, playing the compositor for `lumen-input`: it accepts
//! connections on a socket path (as a compositor's EIS socket) or on handed-in streams (as the
//! portal's `ConnectToEIS` fd), offers one seat with every capability, makes a device per
//! capability group when the client binds, resumes them, and records every event it receives,
//! in order, per connection.
//!
//! The absolute pointer and touchscreen cover the region [`REGION`] (an offset output), so a
//! test sees that positions were scaled to the region the device reports.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reis::eis;
use reis::enumflags2::BitFlags;
use reis::handshake::EisHandshaker;
use reis::request::{DeviceCapability, EisRequest, EisRequestConverter};
use reis::PendingRequestResult;

/// The region (x, y, width, height in logical pixels) of the absolute devices.
pub const REGION: (u32, u32, u32, u32) = (100, 50, 1280, 720);

/// One thing the server saw, in the order it saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A client finished the handshake under this name.
    Connected {
        name: String,
    },
    /// It bound these capabilities (libei names: "ei_keyboard", ...).
    Bound {
        capabilities: Vec<String>,
    },
    Key {
        key: u32,
        down: bool,
    },
    Button {
        button: u32,
        down: bool,
    },
    Motion {
        dx: f32,
        dy: f32,
    },
    Absolute {
        x: f32,
        y: f32,
    },
    Scroll {
        dx: f32,
        dy: f32,
    },
    ScrollDiscrete {
        dx: i32,
        dy: i32,
    },
    TouchDown {
        id: u32,
        x: f32,
        y: f32,
    },
    TouchMotion {
        id: u32,
        x: f32,
        y: f32,
    },
    TouchUp {
        id: u32,
    },
    Text(String),
    /// The connection ended (EOF, error or disconnect request).
    Closed,
}

/// What one connection did.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub seen: Vec<Seen>,
    pub open: bool,
}

impl Connection {
    /// The input events only (no connection bookkeeping).
    pub fn input(&self) -> Vec<Seen> {
        self.seen
            .iter()
            .filter(|s| {
                !matches!(
                    s,
                    Seen::Connected { .. } | Seen::Bound { .. } | Seen::Closed
                )
            })
            .cloned()
            .collect()
    }

    /// Keys this connection's devices hold now. A closed connection holds nothing: its devices
    /// are gone with it, as a compositor removes them.
    pub fn held_keys(&self) -> Vec<u32> {
        if !self.open {
            return Vec::new();
        }
        self.unreleased_keys()
    }

    /// Buttons this connection's devices hold now (nothing once the connection is closed).
    pub fn held_buttons(&self) -> Vec<u32> {
        if !self.open {
            return Vec::new();
        }
        self.unreleased_buttons()
    }

    /// Keys the client pressed and never released, open or not: for a closed connection, what
    /// its client still held when it went (and the compositor let go of with its devices).
    pub fn unreleased_keys(&self) -> Vec<u32> {
        pressed(&self.seen, |s| match *s {
            Seen::Key { key, down } => Some((key, down)),
            _ => None,
        })
    }

    /// Buttons the client pressed and never released, open or not.
    pub fn unreleased_buttons(&self) -> Vec<u32> {
        pressed(&self.seen, |s| match *s {
            Seen::Button { button, down } => Some((button, down)),
            _ => None,
        })
    }

    /// Touch contacts this connection's devices hold now (nothing once it is closed).
    pub fn held_touches(&self) -> Vec<u32> {
        if !self.open {
            return Vec::new();
        }
        let mut held = Vec::new();
        for s in &self.seen {
            match *s {
                Seen::TouchDown { id, .. } if !held.contains(&id) => held.push(id),
                Seen::TouchUp { id } => held.retain(|t| *t != id),
                _ => {}
            }
        }
        held
    }
}

/// What is down after `seen`, in the order it went down: `event` names the (code, down) of an
/// event of the kind asked for.
fn pressed(seen: &[Seen], event: impl Fn(&Seen) -> Option<(u32, bool)>) -> Vec<u32> {
    let mut held = Vec::new();
    for (code, down) in seen.iter().filter_map(event) {
        if !down {
            held.retain(|c| *c != code);
        } else if !held.contains(&code) {
            held.push(code);
        }
    }
    held
}

type Shared = Arc<Mutex<Vec<Connection>>>;

/// When one connection was accepted, bound and closed, in CLOCK_MONOTONIC µs (the clock of
/// [`crate::restarts::monotonic_us`]), taken on the server thread as it saw each: for tests that
/// time a client's reconnect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    pub accepted_us: u64,
    pub bound_us: Option<u64>,
    pub closed_us: Option<u64>,
}

type SharedTimes = Arc<Mutex<Vec<Times>>>;

/// A running EIS server; stops on drop.
pub struct EisServer {
    connections: Shared,
    times: SharedTimes,
    streams: mpsc::Sender<UnixStream>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: Option<PathBuf>,
}

impl EisServer {
    /// A server that takes connections only through [`EisServer::connect_pair`].
    pub fn start() -> Result<EisServer> {
        EisServer::start_inner(None)
    }

    /// A server listening on `path` (removed on drop), like a compositor's EIS socket.
    pub fn listen(path: &Path) -> Result<EisServer> {
        let listener =
            eis::Listener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        let mut server = EisServer::start_inner(Some(listener))?;
        server.path = Some(path.to_path_buf());
        Ok(server)
    }

    fn start_inner(listener: Option<eis::Listener>) -> Result<EisServer> {
        let connections: Shared = Arc::default();
        let times: SharedTimes = Arc::default();
        let (streams, incoming) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("eis-server".into())
            .spawn({
                let (connections, times, stop) = (connections.clone(), times.clone(), stop.clone());
                move || serve(listener, incoming, connections, times, stop)
            })?;
        Ok(EisServer {
            connections,
            times,
            streams,
            stop,
            thread: Some(thread),
            path: None,
        })
    }

    /// A connected socket pair: the server serves one end; the other is for the client.
    pub fn connect_pair(&self) -> Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        self.streams
            .send(ours)
            .map_err(|_| anyhow::anyhow!("the EIS server thread has stopped"))?;
        Ok(theirs)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A snapshot of every connection so far, in the order they came.
    pub fn connections(&self) -> Vec<Connection> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// When each connection so far was accepted, bound and closed, in the order they came.
    pub fn times(&self) -> Vec<Times> {
        self.times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until `check` holds for the connections, or fails after `timeout` with what was seen.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Connection]) -> bool,
    ) -> Result<Vec<Connection>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.connections();
            if check(&now) {
                return Ok(now);
            }
            if Instant::now() > deadline {
                bail!("EIS server: no {what} within {timeout:?}; saw {now:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EisServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One live connection on the server thread.
struct Client {
    index: usize,
    context: eis::Context,
    handshake: Option<EisHandshaker>,
    converter: Option<EisRequestConverter>,
    devices: Vec<reis::request::Device>,
    sequence: u32,
}

fn serve(
    listener: Option<eis::Listener>,
    incoming: mpsc::Receiver<UnixStream>,
    connections: Shared,
    times: SharedTimes,
    stop: Arc<AtomicBool>,
) {
    let mut clients: Vec<Client> = Vec::new();
    let lock_times = || {
        times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let record = |index: usize, seen: Seen| {
        if let Some(t) = lock_times().get_mut(index) {
            let now = Some(crate::restarts::monotonic_us());
            match seen {
                Seen::Bound { .. } if t.bound_us.is_none() => t.bound_us = now,
                Seen::Closed => t.closed_us = now,
                _ => {}
            }
        }
        let mut all = connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = all.get_mut(index) {
            if seen == Seen::Closed {
                c.open = false;
            }
            c.seen.push(seen);
        }
    };
    let add = |context: eis::Context, clients: &mut Vec<Client>| {
        let index = {
            let mut all = connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.push(Connection {
                seen: Vec::new(),
                open: true,
            });
            all.len() - 1
        };
        // Only this thread adds connections: the two lists stay index for index.
        lock_times().push(Times {
            accepted_us: crate::restarts::monotonic_us(),
            ..Times::default()
        });
        let handshake = EisHandshaker::new(&context, 1);
        clients.push(Client {
            index,
            context,
            handshake: Some(handshake),
            converter: None,
            devices: Vec::new(),
            sequence: 0,
        });
    };
    while !stop.load(Ordering::Relaxed) {
        while let Ok(stream) = incoming.try_recv() {
            if let Ok(context) = eis::Context::new(stream) {
                add(context, &mut clients);
            }
        }
        if let Some(listener) = &listener {
            while let Ok(Some(context)) = listener.accept() {
                add(context, &mut clients);
            }
        }
        let mut fds: Vec<rustix::event::PollFd<'_>> = clients
            .iter()
            .map(|c| rustix::event::PollFd::new(&c.context, rustix::event::PollFlags::IN))
            .collect();
        if let Some(listener) = &listener {
            fds.push(rustix::event::PollFd::from_borrowed_fd(
                listener.as_fd(),
                rustix::event::PollFlags::IN,
            ));
        }
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        let readable: Vec<bool> = fds
            .iter()
            .take(clients.len())
            .map(|f| !f.revents().is_empty())
            .collect();
        drop(fds);
        let mut closed = Vec::new();
        for (i, client) in clients.iter_mut().enumerate() {
            if readable[i] && !client.service(&record) {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            let client = clients.remove(i);
            record(client.index, Seen::Closed);
        }
    }
}

impl Client {
    /// Reads and handles what the client sent; `false` once the connection is over.
    fn service(&mut self, record: &dyn Fn(usize, Seen)) -> bool {
        if self.context.read().is_err() {
            return false;
        }
        while let Some(result) = self.context.pending_request() {
            let request = match result {
                PendingRequestResult::Request(r) => r,
                PendingRequestResult::ParseError(_) => return false,
                PendingRequestResult::InvalidObject(_) => continue,
            };
            if let Some(handshake) = &mut self.handshake {
                match handshake.handle_request(request) {
                    Ok(Some(resp)) => {
                        record(
                            self.index,
                            Seen::Connected {
                                name: resp.name.clone().unwrap_or_default(),
                            },
                        );
                        let converter = EisRequestConverter::new(&self.context, resp, 1);
                        let _seat = converter.handle().add_seat(
                            Some("default"),
                            DeviceCapability::Pointer
                                | DeviceCapability::PointerAbsolute
                                | DeviceCapability::Keyboard
                                | DeviceCapability::Touch
                                | DeviceCapability::Scroll
                                | DeviceCapability::Button
                                | DeviceCapability::Text,
                        );
                        self.converter = Some(converter);
                        self.handshake = None;
                    }
                    Ok(None) => {}
                    Err(_) => return false,
                }
                continue;
            }
            let Some(converter) = &mut self.converter else {
                return false;
            };
            if converter.handle_request(request).is_err() {
                return false;
            }
            let connection = converter.handle().clone();
            let requests: Vec<EisRequest> =
                std::iter::from_fn(|| converter.next_request()).collect();
            for request in requests {
                if !self.on_request(&connection, request, record) {
                    return false;
                }
            }
        }
        if let Some(converter) = &self.converter {
            let _ = converter.handle().flush();
        } else {
            let _ = self.context.flush();
        }
        true
    }

    fn on_request(
        &mut self,
        connection: &reis::request::Connection,
        request: EisRequest,
        record: &dyn Fn(usize, Seen),
    ) -> bool {
        let seen = match request {
            EisRequest::Disconnect => return false,
            EisRequest::Bind(bind) => {
                record(
                    self.index,
                    Seen::Bound {
                        capabilities: bind.capabilities.iter().map(|c| format!("{c:?}")).collect(),
                    },
                );
                self.add_devices(connection, &bind.seat, bind.capabilities);
                return true;
            }
            EisRequest::KeyboardKey(k) => Seen::Key {
                key: k.key,
                down: k.state == eis::keyboard::KeyState::Press,
            },
            EisRequest::Button(b) => Seen::Button {
                button: b.button,
                down: b.state == eis::button::ButtonState::Press,
            },
            EisRequest::PointerMotion(m) => Seen::Motion { dx: m.dx, dy: m.dy },
            EisRequest::PointerMotionAbsolute(m) => Seen::Absolute {
                x: m.dx_absolute,
                y: m.dy_absolute,
            },
            EisRequest::ScrollDelta(s) => Seen::Scroll { dx: s.dx, dy: s.dy },
            EisRequest::ScrollDiscrete(s) => Seen::ScrollDiscrete {
                dx: s.discrete_dx,
                dy: s.discrete_dy,
            },
            EisRequest::TouchDown(t) => Seen::TouchDown {
                id: t.touch_id,
                x: t.x,
                y: t.y,
            },
            EisRequest::TouchMotion(t) => Seen::TouchMotion {
                id: t.touch_id,
                x: t.x,
                y: t.y,
            },
            EisRequest::TouchUp(t) => Seen::TouchUp { id: t.touch_id },
            EisRequest::TextUtf8(t) => Seen::Text(t.text),
            _ => return true,
        };
        record(self.index, seen);
        true
    }

    /// One device per capability group, as a compositor would offer them.
    fn add_devices(
        &mut self,
        connection: &reis::request::Connection,
        seat: &reis::request::Seat,
        bound: BitFlags<DeviceCapability>,
    ) {
        let groups: [(&str, BitFlags<DeviceCapability>, bool); 5] = [
            ("keyboard", DeviceCapability::Keyboard.into(), false),
            (
                "pointer",
                DeviceCapability::Pointer | DeviceCapability::Button | DeviceCapability::Scroll,
                false,
            ),
            ("absolute", DeviceCapability::PointerAbsolute.into(), true),
            ("touch", DeviceCapability::Touch.into(), true),
            ("text", DeviceCapability::Text.into(), false),
        ];
        for (name, capabilities, region) in groups {
            let wanted = capabilities & bound;
            if wanted.is_empty() {
                continue;
            }
            let device =
                seat.add_device(Some(name), eis::device::DeviceType::Virtual, wanted, |d| {
                    if region {
                        let (x, y, w, h) = REGION;
                        d.device().region(x, y, w, h, 1.0);
                    }
                });
            device.resumed();
            if connection.context_type() == eis::handshake::ContextType::Receiver {
                self.sequence += 1;
                device.start_emulating(self.sequence);
            }
            self.devices.push(device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_times_a_connection_s_accept_and_close() -> Result<()> {
        let server = EisServer::start()?;
        let before = crate::restarts::monotonic_us();
        let client = server.connect_pair()?;
        server.wait_for("the connection", Duration::from_secs(5), |c| c.len() == 1)?;
        let times = server.times();
        assert_eq!(times.len(), 1);
        assert!(times[0].accepted_us >= before);
        assert_eq!((times[0].bound_us, times[0].closed_us), (None, None));
        drop(client);
        server.wait_for("the close", Duration::from_secs(5), |c| !c[0].open)?;
        let closed = server.times()[0].closed_us.expect("a close time");
        assert!(closed >= times[0].accepted_us);
        Ok(())
    }

    #[test]
    fn a_closed_connection_holds_nothing_but_remembers_what_it_left_pressed() {
        let mut c = Connection {
            seen: vec![
                Seen::Key {
                    key: 30,
                    down: true,
                },
                Seen::Key {
                    key: 42,
                    down: true,
                },
                Seen::Button {
                    button: 0x111,
                    down: true,
                },
                Seen::Key {
                    key: 30,
                    down: false,
                },
                // A spare release changes nothing.
                Seen::Button {
                    button: 0x110,
                    down: false,
                },
            ],
            open: true,
        };
        assert_eq!((c.held_keys(), c.held_buttons()), (vec![42], vec![0x111]));
        c.seen.push(Seen::Closed);
        c.open = false;
        assert!(c.held_keys().is_empty() && c.held_buttons().is_empty());
        assert_eq!(
            (c.unreleased_keys(), c.unreleased_buttons()),
            (vec![42], vec![0x111])
        );
    }
}
