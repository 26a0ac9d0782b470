//! `lumen-net`: the only lumen process that faces the LAN. For now it takes the LAN sockets the
//! broker bound and holds them; the GameStream protocol (nvhttp, RTSP, control, video, audio) is
//! served from them in the protocol work that builds on this foundation.

mod seccomp;
mod sockets;

use std::process::ExitCode;

use lumen_ipc::msg::BrokerMsg;
use lumen_ipc::worker;

fn main() -> ExitCode {
    let started = match worker::start(&seccomp::policy()) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("lumen-net: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut lan = None;
    let status = worker::serve(started.channel, "lumen-net", |msg, fds| match msg {
        BrokerMsg::NetSockets { roles } => {
            let sockets = sockets::LanSockets::take(&roles, fds)?;
            eprintln!("lumen-net: holding {} LAN sockets", sockets.len());
            lan = Some(sockets);
            Ok(())
        }
        other => Err(format!("unexpected message {other:?}")),
    });
    // The sockets are held until the worker ends; the broker keeps its own dups for the next one.
    drop(lan);
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}
