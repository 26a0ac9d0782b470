//! `lumen-input`: injects validated client input into the compositor through libei (an EI
//! client on the EIS connection the broker hands over) and gamepads through uinput (fds of
//! `/dev/uinput` the broker opened). It trusts neither the broker's fds nor `lumen-net`'s
//! events: fd kinds are checked, every event is validated again and rate-limited, and whatever
//! the client holds is released at stream end, on channel loss and at shutdown.
//!
//! The control thread (this one) serves the broker; the injection thread ([`service`]) runs
//! the poll loop over the net channel, the EIS socket and the pads.

mod ei_client;
mod engine;
mod pads;
mod seccomp;
mod service;
mod uinput;
mod vk;

use std::os::fd::OwnedFd;
use std::rc::Rc;

use lumen_ipc::channel::Channel;
use lumen_ipc::msg::BrokerMsg;

use service::{Command, Handle};

fn handle_message(injector: &Handle, msg: BrokerMsg, mut fds: Vec<OwnedFd>) -> Result<(), String> {
    match msg {
        BrokerMsg::InputDevices { eis, uinput } => {
            let expected = usize::from(eis) + usize::from(uinput);
            if fds.len() != expected {
                return Err(format!(
                    "InputDevices announces {expected} fds but carries {}",
                    fds.len()
                ));
            }
            let uinput_fds = fds.split_off(usize::from(eis));
            let eis_fd = fds.pop();
            if let Some(fd) = &eis_fd {
                service::check_eis_fd(fd)?;
            }
            for fd in &uinput_fds {
                service::check_uinput_fd(fd)?;
            }
            injector.send(Command::Devices {
                eis: eis_fd,
                uinput: uinput_fds,
            })
        }
        BrokerMsg::InputChannel => {
            let [fd] = <[OwnedFd; 1]>::try_from(fds)
                .map_err(|fds| format!("InputChannel carries {} fds, not 1", fds.len()))?;
            let channel = Channel::from_fd(fd).map_err(|e| format!("input channel: {e}"))?;
            injector.send(Command::NetChannel(channel))
        }
        // No media session runs here.
        BrokerMsg::StopSession if fds.is_empty() => Ok(()),
        other => Err(format!("unexpected message {other:?}")),
    }
}

fn main() -> std::process::ExitCode {
    // Shared between the message handler (inside `run_prepared`) and the shutdown below, which
    // runs once the broker said Shutdown or went away: held input is released then.
    let mut injector: Option<Rc<Handle>> = None;
    let status = lumen_ipc::worker::run_prepared(
        &seccomp::policy(),
        || Ok(()),
        |(), reports: Channel| {
            let spawned = service::spawn(reports, Box::new(uinput::KernelUinput)).map(Rc::new);
            if let Ok(handle) = &spawned {
                injector = Some(handle.clone());
            }
            move |msg: BrokerMsg, fds: Vec<OwnedFd>| match &spawned {
                Ok(handle) => handle_message(handle, msg, fds),
                Err(e) => Err(e.clone()),
            }
        },
    );
    if let Some(handle) = injector.and_then(|rc| Rc::try_unwrap(rc).ok()) {
        handle.shutdown();
    }
    status
}
