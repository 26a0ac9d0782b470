//! The injection thread: one poll loop over the net ↔ input channel, the EIS connection, the
//! virtual pads' fds (force feedback) and a wake-up eventfd through which the control thread
//! hands over new devices and channels. It reports [`InputStats`] about once a second.
//!
//! Nothing held outlives what held it: stream end, loss of the net channel, new devices and
//! shutdown all release every key, button, touch and pad first.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lumen_ipc::channel::{Channel, ChannelError};
use lumen_ipc::input::{InputStats, InputToNet, NetToInput, MAX_EVENTS_PER_BATCH};
use lumen_ipc::msg::WorkerMsg;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};

use crate::ei_client::EiClient;
use crate::engine::{Action, Engine, Injector};
use crate::pads::Pads;
use crate::uinput::UinputOps;

/// How often the counters go to the broker.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// What the control thread hands the injection thread.
pub enum Command {
    /// New devices from the broker (replacing the old ones).
    Devices {
        eis: Option<OwnedFd>,
        uinput: Vec<OwnedFd>,
    },
    /// A new net ↔ input channel (replacing the old one).
    NetChannel(Channel),
    /// Release everything and stop.
    Shutdown,
}

/// The control thread's handle on the injection thread.
pub struct Handle {
    commands: mpsc::Sender<Command>,
    wake: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    /// Queues `command` and wakes the thread.
    pub fn send(&self, command: Command) -> Result<(), String> {
        self.commands
            .send(command)
            .map_err(|_| "the injection thread has stopped".to_string())?;
        rustix::io::write(&self.wake, &1u64.to_ne_bytes())
            .map_err(|e| format!("waking the injection thread: {e}"))?;
        Ok(())
    }

    /// Releases everything held and waits for the thread to end.
    pub fn shutdown(mut self) {
        let _ = self.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Stands in for the EIS side while there is no connection.
struct NoEis;

impl Injector for NoEis {
    fn inject(&mut self, _: Action) -> bool {
        false
    }
    fn has_text(&self) -> bool {
        false
    }
}

struct Service {
    engine: Engine,
    pads: Pads,
    ei: Option<EiClient>,
    net: Option<Channel>,
    reports: Channel,
    commands: mpsc::Receiver<Command>,
    wake: OwnedFd,
}

/// Starts the injection thread; `reports` is its handle on the broker channel.
pub fn spawn(reports: Channel, uinput: Box<dyn UinputOps>) -> Result<Handle, String> {
    let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| format!("eventfd: {e}"))?;
    let thread_wake = rustix::io::fcntl_dupfd_cloexec(&wake, 0)
        .map_err(|e| format!("duplicating the eventfd: {e}"))?;
    let (commands, rx) = mpsc::channel();
    // Built on the thread: the EIS client inside it is not `Send`.
    let thread = std::thread::Builder::new()
        .name("inject".into())
        .spawn(move || {
            Service {
                engine: Engine::new(),
                pads: Pads::new(uinput),
                ei: None,
                net: None,
                reports,
                commands: rx,
                wake: thread_wake,
            }
            .run()
        })
        .map_err(|e| format!("starting the injection thread: {e}"))?;
    Ok(Handle {
        commands,
        wake,
        thread: Some(thread),
    })
}

fn log(message: &str) {
    eprintln!("lumen-input: {message}");
}

impl Service {
    fn run(mut self) {
        let mut next_stats = Instant::now() + STATS_INTERVAL;
        loop {
            let timeout = next_stats.saturating_duration_since(Instant::now());
            let ready = match self.wait(timeout) {
                Ok(ready) => ready,
                Err(e) => {
                    log(&format!("poll: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    Ready::default()
                }
            };
            if ready.wake && !self.take_commands() {
                return;
            }
            if ready.ei {
                self.service_ei();
            }
            if ready.net {
                self.service_net();
            }
            for pad in ready.pads {
                for rumble in self.pads.service(pad) {
                    self.send_to_net(rumble);
                }
            }
            for error in self.pads.errors.drain(..) {
                log(&error);
            }
            if Instant::now() >= next_stats {
                self.report();
                next_stats = Instant::now() + STATS_INTERVAL;
            }
        }
    }

    fn wait(&self, timeout: Duration) -> rustix::io::Result<Ready> {
        let mut fds = vec![PollFd::new(&self.wake, PollFlags::IN)];
        let ei_at = self.ei.as_ref().map(|ei| {
            let mut flags = PollFlags::IN;
            if ei.wants_write {
                flags |= PollFlags::OUT;
            }
            fds.push(PollFd::from_borrowed_fd(ei.fd(), flags));
            fds.len() - 1
        });
        let net_at = self.net.as_ref().map(|net| {
            fds.push(PollFd::new(net, PollFlags::IN));
            fds.len() - 1
        });
        let pads = self.pads.pollable();
        let pads_from = fds.len();
        for (_, fd) in &pads {
            fds.push(PollFd::from_borrowed_fd(*fd, PollFlags::IN));
        }
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
        let woke = |i: usize| !fds[i].revents().is_empty();
        Ok(Ready {
            wake: woke(0),
            ei: ei_at.is_some_and(woke),
            net: net_at.is_some_and(woke),
            pads: pads
                .iter()
                .enumerate()
                .filter(|(i, _)| woke(pads_from + i))
                .map(|(_, (pad, _))| *pad)
                .collect(),
        })
    }

    /// Applies what the control thread sent; `false` on shutdown.
    fn take_commands(&mut self) -> bool {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut counter);
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Devices { eis, uinput } => {
                    self.release_all();
                    self.engine.forget_held();
                    self.ei = eis.and_then(|fd| match EiClient::new(fd) {
                        Ok(client) => Some(client),
                        Err(e) => {
                            log(&format!("{e}"));
                            None
                        }
                    });
                    let pads = uinput.len();
                    self.pads.set_pool(uinput);
                    log(&format!(
                        "devices: EIS {}, {pads} uinput pad slot(s)",
                        if self.ei.is_some() {
                            "connected"
                        } else {
                            "none"
                        }
                    ));
                }
                Command::NetChannel(channel) => {
                    // A new channel means a new net worker: whatever the old one's client held
                    // is let go.
                    self.release_all();
                    if let Err(e) = channel.set_nonblocking(true) {
                        log(&format!("net channel: {e}"));
                        continue;
                    }
                    self.net = Some(channel);
                }
                Command::Shutdown => {
                    self.release_all();
                    self.report();
                    return false;
                }
            }
        }
        true
    }

    fn service_ei(&mut self) {
        let Some(ei) = &mut self.ei else {
            return;
        };
        let result = ei.on_readable();
        if let Err(e) = result {
            log(&format!("{e}; keyboard, mouse and touch are unavailable until the broker hands over a new connection"));
            // The server dropped the devices with the connection; nothing is held there now.
            self.engine.forget_held();
            self.ei = None;
        }
    }

    fn service_net(&mut self) {
        loop {
            let Some(net) = &mut self.net else {
                return;
            };
            let received = match net.try_recv::<NetToInput>() {
                Ok(Some(received)) => received,
                Ok(None) => break,
                Err(ChannelError::Closed) => {
                    log("net channel closed; releasing what the client held");
                    self.net = None;
                    self.release_all();
                    break;
                }
                Err(e) => {
                    // A malformed message closes the channel (the broker makes a new one when
                    // net restarts).
                    log(&format!("refusing the net channel: {e}"));
                    self.net = None;
                    self.release_all();
                    break;
                }
            };
            if !received.fds.is_empty() {
                log("net sent fds on the input channel; closing it");
                self.net = None;
                self.release_all();
                break;
            }
            self.on_net(received.msg);
        }
        self.flush_ei();
    }

    fn on_net(&mut self, msg: NetToInput) {
        match msg {
            NetToInput::StreamStarted { width, height } => {
                if let Some(ei) = &mut self.ei {
                    ei.set_fallback_plane(width, height);
                }
            }
            NetToInput::StreamEnded => self.release_all(),
            NetToInput::Events(events) => {
                if events.len() > MAX_EVENTS_PER_BATCH {
                    self.engine.stats.dropped_invalid += events.len() as u64;
                    return;
                }
                let now = Instant::now();
                for event in &events {
                    let out: &mut dyn Injector = match &mut self.ei {
                        Some(ei) => ei,
                        None => &mut NoEis,
                    };
                    self.engine.handle(event, now, out, &mut self.pads);
                }
            }
        }
    }

    fn release_all(&mut self) {
        let out: &mut dyn Injector = match &mut self.ei {
            Some(ei) => ei,
            None => &mut NoEis,
        };
        self.engine.release_all(out, &mut self.pads);
        self.flush_ei();
    }

    fn flush_ei(&mut self) {
        if let Some(ei) = &mut self.ei {
            if let Err(e) = ei.flush() {
                log(&format!("{e}"));
                self.engine.forget_held();
                self.ei = None;
            }
        }
    }

    fn send_to_net(&self, msg: InputToNet) {
        if let Some(net) = &self.net {
            // A full channel drops the rumble; the next one carries the current strength.
            let _ = net.send(&msg, &[]);
        }
    }

    fn report(&self) {
        let stats: InputStats = self.engine.stats;
        if let Err(e) = self.reports.send(&WorkerMsg::InputStats(stats), &[]) {
            log(&format!("reporting statistics: {e}"));
        }
    }
}

#[derive(Default)]
struct Ready {
    wake: bool,
    ei: bool,
    net: bool,
    pads: Vec<u8>,
}

/// Checks that `fd` is what the broker should have sent as an EIS connection.
pub fn check_eis_fd(fd: &OwnedFd) -> Result<(), String> {
    lumen_ipc::fdcheck::expect_socket(
        fd.as_fd(),
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        Some(false),
    )
    .map_err(|e| format!("EIS fd: {e}"))
}

/// Checks that `fd` is a character device (`/dev/uinput`).
pub fn check_uinput_fd(fd: &OwnedFd) -> Result<(), String> {
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("uinput fd: fstat: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::CharacterDevice {
        return Err(format!(
            "uinput fd is {}, not a character device",
            lumen_ipc::fdcheck::describe(fd.as_fd())
        ));
    }
    Ok(())
}
