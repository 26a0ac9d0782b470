//! `lumen-net`: the only lumen process that faces the LAN. It takes the LAN sockets the broker
//! bound and serves nvhttp (pairing, server info, the app list, launch) on the HTTP and HTTPS
//! ones, RTSP on the RTSP one, and streams: the ENet control stream, video and audio on the UDP
//! ones (see [`stream`]).
//!
//! Everything that needs a secret (TLS signatures with the host key, pairing with the PIN) is a
//! request to the broker through [`broker_link`].

mod broker_link;
mod control;
mod fec_report;
mod input_forward;
mod mdns;
mod nvhttp;
mod rtsp_server;
mod seccomp;
mod sockets;
mod stream;
mod udp_send;

use std::sync::Arc;

use lumen_ipc::msg::{BrokerMsg, SocketRole};
use lumen_ipc::net_msg::NetIdentity;

use broker_link::BrokerLink;
use nvhttp::Nvhttp;
use sockets::LanSockets;
use stream::{Ports, StreamSockets, Streams};

/// What the worker has been handed so far.
struct Worker {
    link: Arc<BrokerLink>,
    hostname: String,
    lan: Option<LanSockets>,
    identity: Option<NetIdentity>,
    nvhttp: Option<Nvhttp>,
    streams: Option<Arc<Streams>>,
    /// Dropped on a clean shutdown, which sends the mDNS goodbye.
    mdns: Option<mdns::MdnsResponder>,
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
        match self.start_streams(lan) {
            Ok(streams) => {
                nvhttp.host.set_streams(streams.clone());
                self.streams = Some(streams);
            }
            // Pairing still works without the streaming sockets; launches are answered 503.
            Err(e) => eprintln!("lumen-net: no streaming: {e}"),
        }
        self.nvhttp = Some(nvhttp);
        Ok(())
    }

    /// RTSP and the stream sockets, when the broker handed them all over.
    fn start_streams(&self, lan: &LanSockets) -> Result<Arc<Streams>, String> {
        let take = |role: SocketRole| {
            lan.dup(role)?
                .ok_or_else(|| format!("NetSockets carries no {role:?} socket"))
        };
        let (rtsp, video, audio, control) = (
            take(SocketRole::Rtsp)?,
            take(SocketRole::Video)?,
            take(SocketRole::Audio)?,
            take(SocketRole::Control)?,
        );
        let port = |fd: &std::os::fd::OwnedFd, role: SocketRole| {
            // Any socket's bound address reads the same through a UdpSocket view of a duplicate.
            fd.try_clone()
                .map(std::net::UdpSocket::from)
                .and_then(|s| s.local_addr())
                .map(|a| a.port())
                .map_err(|e| format!("the {role:?} socket's address: {e}"))
        };
        let ports = Ports {
            rtsp: port(&rtsp, SocketRole::Rtsp)?,
            video: port(&video, SocketRole::Video)?,
            audio: port(&audio, SocketRole::Audio)?,
            control: port(&control, SocketRole::Control)?,
        };
        let streams = Streams::start(
            ports,
            StreamSockets {
                video,
                audio,
                control,
            },
            self.link.clone(),
        )?;
        if let Some(identity) = &self.identity {
            streams.set_encrypt_video(identity.encrypt_video);
            streams.set_encoder_capabilities(identity.encoder.clone());
        }
        rtsp_server::start(rtsp, streams.clone())?;
        eprintln!(
            "lumen-net: serving RTSP on {}, video {}, audio {}, control {}",
            ports.rtsp, ports.video, ports.audio, ports.control
        );
        Ok(streams)
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
                if let Some(streams) = &self.streams {
                    streams.set_encrypt_video(update.encrypt_video);
                    streams.set_encoder_capabilities(update.encoder.clone());
                }
                self.identity = Some(update);
                self.start_when_ready()
            }
            BrokerMsg::NetMdns(advert) if fds.is_empty() => {
                let advert = mdns::advert(&advert)?;
                // Again while advertising: the host's interfaces changed.
                if let Some(responder) = &self.mdns {
                    let addresses: Vec<String> = advert
                        .interfaces()
                        .iter()
                        .map(|i| i.address.to_string())
                        .collect();
                    responder.update(advert);
                    eprintln!("lumen-net: mDNS now on {}", addresses.join(", "));
                    return Ok(());
                }
                let socket = match &self.lan {
                    Some(lan) => lan.dup(SocketRole::Mdns)?,
                    None => None,
                };
                let socket = socket.ok_or("NetMdns without an mDNS socket")?;
                self.mdns = Some(mdns::MdnsResponder::start(socket, advert)?);
                eprintln!("lumen-net: advertising _nvstream._tcp over mDNS");
                Ok(())
            }
            BrokerMsg::InputChannel => {
                let [fd] = <[std::os::fd::OwnedFd; 1]>::try_from(fds)
                    .map_err(|fds| format!("InputChannel carries {} fds, not 1", fds.len()))?;
                input_forward::process()
                    .replace_channel(fd)
                    .map_err(|e| format!("InputChannel: {e}"))?;
                eprintln!("lumen-net: input channel to lumen-input connected");
                Ok(())
            }
            BrokerMsg::StreamRings { generation } => match &self.streams {
                Some(streams) => {
                    streams.rings(generation, fds);
                    Ok(())
                }
                None => Err("StreamRings without streaming".into()),
            },
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
            streams: None,
            mdns: None,
        };
        move |msg, fds| worker.handle(msg, fds)
    })
}
