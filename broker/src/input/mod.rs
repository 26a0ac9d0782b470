//! Input plumbing: what `lumen-input` needs to inject into, and its direct channel to
//! `lumen-net`.
//!
//! On each `Ready` of lumen-input the broker connects to the configured EIS socket (a
//! compositor's, e.g. gamescope's) and opens `/dev/uinput` once per pad (the kernel makes one
//! virtual device per open file), and hands them over in `BrokerMsg::InputDevices`: a restarted
//! worker always gets a fresh EIS connection, whose devices start with nothing pressed. On each
//! `Ready` of either lumen-input or lumen-net it makes a fresh net ↔ input socketpair and sends
//! each side its end (`BrokerMsg::InputChannel`). lumen-input's counters (`InputStats`) are kept
//! for `lumen-broker status`, with why gamepads or the EIS connection are unavailable.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use lumen_ipc::channel::Channel;
use lumen_ipc::input::{InputStats, MAX_GAMEPADS};
use lumen_ipc::msg::{BrokerMsg, WorkerKind, MAX_FDS_PER_MESSAGE};
use serde::{Deserialize, Serialize};

use crate::supervisor::Supervisor;

/// Where `/dev/uinput` is.
const UINPUT_PATH: &str = "/dev/uinput";

/// Virtual pads at once: one uinput fd each, and the EIS fd, in one message.
const UINPUT_FDS: usize = {
    let room = MAX_FDS_PER_MESSAGE - 1;
    if (MAX_GAMEPADS as usize) < room {
        MAX_GAMEPADS as usize
    } else {
        room
    }
};

/// Why `eis_socket = "portal"` gives no EIS connection. The portal's `ConnectToEIS` (with
/// `persist_mode`/`restore_token` in `SelectDevices`) is RemoteDesktop version 2, first in
/// xdg-desktop-portal 1.17; the 1.16 frontend the tests run has neither, so a client of it
/// could not be tested here and none is written.
const PORTAL_UNAVAILABLE: &str =
    "[input] eis_socket = \"portal\" needs the RemoteDesktop portal's \
ConnectToEIS (RemoteDesktop version 2, xdg-desktop-portal 1.17 or newer), which lumen does not \
implement yet; set [input] eis_socket to a compositor's EIS socket path";

/// Where the EIS connection comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EisSource {
    /// No keyboard, mouse or touch injection.
    None,
    /// A compositor's EIS socket at this path.
    Socket(PathBuf),
    /// The RemoteDesktop portal's `ConnectToEIS`.
    Portal,
}

/// `[input]` in the config file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// The path of a compositor's EIS socket, or `"portal"` for the RemoteDesktop portal;
    /// unset: no keyboard, mouse or touch injection.
    pub eis_socket: Option<String>,
    /// Open `/dev/uinput` for virtual gamepads.
    pub uinput: bool,
}

impl Default for InputConfig {
    fn default() -> InputConfig {
        InputConfig {
            eis_socket: None,
            uinput: true,
        }
    }
}

impl InputConfig {
    pub fn eis_source(&self) -> EisSource {
        match self.eis_socket.as_deref() {
            None | Some("") => EisSource::None,
            Some("portal") => EisSource::Portal,
            Some(path) => EisSource::Socket(PathBuf::from(path)),
        }
    }
}

/// What `status` shows about input.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct InputStatus {
    /// "connected to PATH", "not configured", or why it is unavailable.
    pub eis: String,
    /// Virtual pad slots handed to lumen-input (0: gamepads unavailable).
    pub uinput_slots: usize,
    /// Why gamepads are unavailable, when they are.
    pub gamepads_unavailable: Option<String>,
    /// lumen-input's latest counters.
    pub stats: Option<InputStats>,
}

/// The broker's input plumbing; shared by the dispatcher and `status`.
pub struct InputPlumbing {
    supervisor: Supervisor,
    config: InputConfig,
    status: Mutex<InputStatus>,
}

impl InputPlumbing {
    pub fn new(supervisor: Supervisor, config: InputConfig) -> InputPlumbing {
        InputPlumbing {
            supervisor,
            config,
            status: Mutex::new(InputStatus::default()),
        }
    }

    pub fn status(&self) -> InputStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A worker is ready: lumen-input gets its devices, and both sides a fresh channel once the
    /// other side is ready too (a worker not yet ready would drop its end, and the other side
    /// would see the channel close at once). Whichever of the two is ready last hands it out:
    /// each is marked running before its Ready event is passed on.
    pub fn on_ready(&self, kind: WorkerKind) {
        if kind == WorkerKind::Input {
            self.send_devices();
        }
        let other = match kind {
            WorkerKind::Input => WorkerKind::Net,
            WorkerKind::Net => WorkerKind::Input,
            _ => return,
        };
        if !self.supervisor.is_running(other) {
            tracing::debug!(
                "the net ↔ input channel waits for lumen-{} to be ready",
                other.name()
            );
            return;
        }
        if let Err(e) = self.send_channel() {
            tracing::warn!("handing out the net ↔ input channel: {e:#}");
        }
    }

    /// lumen-input's counters.
    pub fn on_stats(&self, stats: InputStats) {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats = Some(stats);
    }

    fn send_channel(&self) -> anyhow::Result<()> {
        let (net_end, input_end) = Channel::pair()?;
        self.supervisor.send(
            WorkerKind::Net,
            BrokerMsg::InputChannel,
            vec![OwnedFd::from(net_end)],
        )?;
        self.supervisor.send(
            WorkerKind::Input,
            BrokerMsg::InputChannel,
            vec![OwnedFd::from(input_end)],
        )
    }

    fn send_devices(&self) {
        let (eis, eis_status) = match connect_eis(&self.config.eis_source()) {
            Ok(Some((fd, shown))) => (Some(fd), shown),
            Ok(None) => (None, "not configured (no [input] eis_socket)".to_string()),
            Err(why) => {
                tracing::warn!("input: {why}; keyboard, mouse and touch are unavailable");
                (None, format!("unavailable: {why}"))
            }
        };
        let (uinput, gamepads_unavailable) = if self.config.uinput {
            match open_uinput(UINPUT_PATH, UINPUT_FDS) {
                Ok(fds) => (fds, None),
                Err(why) => {
                    tracing::warn!("input: gamepads unavailable: {why}");
                    (Vec::new(), Some(why))
                }
            }
        } else {
            (
                Vec::new(),
                Some("turned off ([input] uinput = false)".into()),
            )
        };
        {
            let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            status.eis = eis_status;
            status.uinput_slots = uinput.len();
            status.gamepads_unavailable = gamepads_unavailable;
        }
        let msg = BrokerMsg::InputDevices {
            eis: eis.is_some(),
            uinput: uinput.len() as u8,
        };
        let fds: Vec<OwnedFd> = eis.into_iter().chain(uinput).collect();
        if let Err(e) = self.supervisor.send(WorkerKind::Input, msg, fds) {
            tracing::warn!("handing lumen-input its devices: {e:#}");
        }
    }
}

/// A fresh EIS connection, and how `status` names it.
fn connect_eis(source: &EisSource) -> Result<Option<(OwnedFd, String)>, String> {
    match source {
        EisSource::None => Ok(None),
        EisSource::Socket(path) => {
            let stream = UnixStream::connect(path)
                .map_err(|e| format!("connecting to the EIS socket {}: {e}", path.display()))?;
            Ok(Some((
                OwnedFd::from(stream),
                format!("connected to {}", path.display()),
            )))
        }
        EisSource::Portal => Err(PORTAL_UNAVAILABLE.into()),
    }
}

/// Opens `path` `count` times (one virtual pad per open file).
fn open_uinput(path: &str, count: usize) -> Result<Vec<OwnedFd>, String> {
    use rustix::fs::{open, Mode, OFlags};
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        let fd = open(
            path,
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOENT => format!("{path} missing"),
            rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => {
                format!(
                    "{path}: permission denied (add the user to the input group or a udev rule)"
                )
            }
            other => format!("{path}: {other}"),
        })?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| format!("{path}: fstat: {e}"))?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode)
            != rustix::fs::FileType::CharacterDevice
        {
            return Err(format!("{path} is not a character device"));
        }
        fds.push(fd);
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eis_source_is_read_from_the_config_value() {
        let cfg = |v: Option<&str>| InputConfig {
            eis_socket: v.map(str::to_string),
            uinput: true,
        };
        assert_eq!(cfg(None).eis_source(), EisSource::None);
        assert_eq!(cfg(Some("portal")).eis_source(), EisSource::Portal);
        assert_eq!(
            cfg(Some("/run/user/1000/gamescope-0-ei")).eis_source(),
            EisSource::Socket("/run/user/1000/gamescope-0-ei".into())
        );
    }

    #[test]
    fn a_missing_uinput_says_so() {
        let err = open_uinput("/nonexistent/uinput", 2).unwrap_err();
        assert_eq!(err, "/nonexistent/uinput missing");
    }

    #[test]
    fn a_file_is_not_taken_for_uinput() {
        let dir = std::env::temp_dir().join(format!("lumen-uinput-{}", std::process::id()));
        std::fs::write(&dir, b"").unwrap();
        let err = open_uinput(dir.to_str().unwrap(), 1).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(err.ends_with("is not a character device"), "{err}");
    }

    #[test]
    fn a_character_device_opens_once_per_pad() {
        // /dev/null stands in for /dev/uinput: a character device that opens read-write.
        let fds = open_uinput("/dev/null", 3).unwrap();
        assert_eq!(fds.len(), 3);
        assert_eq!(UINPUT_FDS, 15);
    }

    #[test]
    fn an_unreachable_eis_socket_is_an_error_naming_it() {
        let err = connect_eis(&EisSource::Socket("/nonexistent/eis-0".into())).unwrap_err();
        assert!(err.contains("/nonexistent/eis-0"), "{err}");
        let portal = connect_eis(&EisSource::Portal).unwrap_err();
        assert!(
            portal.contains("ConnectToEIS") && portal.contains("xdg-desktop-portal 1.17"),
            "{portal}"
        );
        assert!(connect_eis(&EisSource::None).unwrap().is_none());
    }
}
