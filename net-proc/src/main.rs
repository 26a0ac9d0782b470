//! `lumen-net`: the only lumen process that faces the LAN. For now it takes the LAN sockets the
//! broker bound and holds them; the GameStream protocol (nvhttp, RTSP, control, video, audio) is
//! served from them in the protocol work that builds on this foundation.

mod seccomp;
mod sockets;
// Wired into the video and audio senders by the protocol work (issue 4).
#[allow(dead_code)]
mod udp_send;

use lumen_ipc::msg::BrokerMsg;

fn main() -> std::process::ExitCode {
    // The LAN sockets are held until the worker ends; the broker keeps its own dups for the next one.
    let mut lan = None;
    // The host's public identity and the pinned clients, for the TLS server (issue 4).
    let mut identity = None;
    lumen_ipc::worker::run(&seccomp::policy(), |msg, fds| match msg {
        BrokerMsg::NetSockets { roles } => {
            let sockets = sockets::LanSockets::take(&roles, fds)?;
            eprintln!("lumen-net: holding {} LAN sockets", sockets.len());
            lan = Some(sockets);
            Ok(())
        }
        BrokerMsg::NetIdentity(update) if fds.is_empty() => {
            identity = Some(update);
            Ok(())
        }
        other => Err(format!("unexpected message {other:?}")),
    })
}
