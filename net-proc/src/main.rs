//! `lumen-net`: the only lumen process that faces the LAN. It takes the LAN sockets the broker
//! bound and serves nvhttp (pairing, server info, the app list) on the HTTP and HTTPS ones; the
//! streaming protocols (RTSP, control, video, audio) build on this in later steps.
//!
//! Everything that needs a secret (TLS signatures with the host key, pairing with the PIN) is a
//! request to the broker through [`broker_link`].

mod broker_link;
mod nvhttp;
mod seccomp;
mod sockets;
// Wired into the video and audio senders by the protocol work (issue 4).
#[allow(dead_code)]
mod udp_send;

use std::sync::Arc;

use lumen_ipc::msg::{BrokerMsg, SocketRole};
use lumen_ipc::net_msg::NetIdentity;

use broker_link::BrokerLink;
use nvhttp::Nvhttp;
use sockets::LanSockets;

/// What the worker has been handed so far.
struct Worker {
    link: Arc<BrokerLink>,
    hostname: String,
    lan: Option<LanSockets>,
    identity: Option<NetIdentity>,
    nvhttp: Option<Nvhttp>,
}

impl Worker {
    /// nvhttp starts once both the sockets and the identity have arrived.
    fn start_when_ready(&mut self) -> Result<(), String> {
        if self.nvhttp.is_some() {
            return Ok(());
        }
        let (Some(lan), Some(identity)) = (&self.lan, &self.identity) else {
            return Ok(());
        };
        let (Some(http), Some(https)) = (lan.dup(SocketRole::Http)?, lan.dup(SocketRole::Https)?)
        else {
            return Err("NetSockets carries no HTTP or no HTTPS listener".into());
        };
        let nvhttp = Nvhttp::start(
            http,
            https,
            self.link.clone(),
            identity,
            self.hostname.clone(),
        )?;
        eprintln!(
            "lumen-net: serving nvhttp on HTTP {} and HTTPS {}",
            nvhttp.host.http_port, nvhttp.host.https_port
        );
        self.nvhttp = Some(nvhttp);
        Ok(())
    }

    fn handle(&mut self, msg: BrokerMsg, fds: Vec<std::os::fd::OwnedFd>) -> Result<(), String> {
        match msg {
            BrokerMsg::NetSockets { roles } => {
                if self.lan.is_some() {
                    return Err("NetSockets sent twice".into());
                }
                let sockets = LanSockets::take(&roles, fds)?;
                eprintln!("lumen-net: holding {} LAN sockets", sockets.len());
                self.lan = Some(sockets);
                self.start_when_ready()
            }
            BrokerMsg::NetIdentity(update) if fds.is_empty() => {
                if let Some(nvhttp) = &self.nvhttp {
                    nvhttp.host.set_identity(&update)?;
                }
                self.identity = Some(update);
                self.start_when_ready()
            }
            BrokerMsg::NetReply { id, reply } if fds.is_empty() => {
                if !self.link.complete(id, reply) {
                    // Its request timed out here already; the broker answers every request.
                    eprintln!("lumen-net: dropping a late broker reply (request {id})");
                }
                Ok(())
            }
            other => Err(format!("unexpected message {other:?}")),
        }
    }
}

/// The host name for `/serverinfo`, read before lock-down (uname is not allowed after it).
fn hostname() -> String {
    let uname = rustix::system::uname();
    let name: String = uname
        .nodename()
        .to_string_lossy()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    if name.is_empty() {
        "lumen".to_string()
    } else {
        name
    }
}

/// Done before lock-down: what needs files or system calls the sandbox forbids afterwards.
fn prepare() -> Result<String, String> {
    // AWS-LC initialises its randomness once per process and, on that first draw, looks for a VM
    // generation counter file (/dev/sysgenid) to detect snapshot clones. Drawing here keeps that
    // probe out of the first TLS handshake, where seccomp would kill the worker for it.
    let mut warm = [0u8; 16];
    aws_lc_rs::rand::fill(&mut warm).map_err(|_| "AWS-LC has no randomness".to_string())?;
    Ok(hostname())
}

fn main() -> std::process::ExitCode {
    lumen_ipc::worker::run_prepared(&seccomp::policy(), prepare, |hostname, reports| {
        let mut worker = Worker {
            link: BrokerLink::new(reports),
            hostname,
            lan: None,
            identity: None,
            nvhttp: None,
        };
        move |msg, fds| worker.handle(msg, fds)
    })
}
