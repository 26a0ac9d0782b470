//! The LAN sockets: bound by the broker, handed to `lumen-net`, never read by the broker.
//!
//! The broker binds every socket a Moonlight client talks to (Sunshine's port layout around
//! `port_base`) and keeps them for its whole life. `lumen-net` gets fresh dups each time it starts,
//! so a restarted `lumen-net` serves the very same sockets: no port is ever released, so nothing
//! else can take it in between, and `lumen-net` needs no right to bind or connect.
//!
//! The broker itself never reads a byte from these sockets: it only binds, dups and hands them over.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;

use anyhow::{bail, Context};
use lumen_ipc::msg::SocketRole;

/// Whether a role is served over TCP (listening) or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

/// Every role, its offset from `port_base` (Sunshine's layout) and its transport, in the order
/// the sockets are bound and handed over.
const LAYOUT: [(SocketRole, i32, Transport); 6] = [
    (SocketRole::Http, 0, Transport::Tcp),
    (SocketRole::Https, -5, Transport::Tcp),
    (SocketRole::Rtsp, 21, Transport::Tcp),
    (SocketRole::Video, 9, Transport::Udp),
    (SocketRole::Control, 10, Transport::Udp),
    (SocketRole::Audio, 11, Transport::Udp),
];

struct LanSocket {
    role: SocketRole,
    port: u16,
    fd: OwnedFd,
}

/// The bound listening TCP sockets (HTTP, HTTPS, RTSP) and UDP sockets (video, control, audio).
pub struct LanSockets {
    sockets: Vec<LanSocket>,
}

impl std::fmt::Debug for LanSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ports()).finish()
    }
}

/// The port of `role` for `port_base`, or `None` if it falls outside 1..=65535.
fn port_for(port_base: u16, offset: i32) -> Option<u16> {
    u16::try_from(i32::from(port_base) + offset)
        .ok()
        .filter(|port| *port != 0)
}

impl LanSockets {
    /// Binds every LAN socket: ports from `port_base` with Sunshine's offsets (HTTPS −5, video +9,
    /// control +10, audio +11, RTSP +21, HTTP +0) on `bind`. The sockets are close-on-exec (std
    /// opens them so), and the TCP ones have `SO_REUSEADDR` (std sets it before bind), so a broker
    /// restarted while old connections linger in TIME_WAIT can bind again. An error names the
    /// role and port that failed.
    pub fn bind(bind: IpAddr, port_base: u16) -> anyhow::Result<LanSockets> {
        let mut sockets = Vec::with_capacity(LAYOUT.len());
        for (role, offset, transport) in LAYOUT {
            let Some(port) = port_for(port_base, offset) else {
                bail!(
                    "port_base {port_base}: the {role:?} port ({port_base}{offset:+}) is outside 1..=65535"
                );
            };
            let addr = SocketAddr::new(bind, port);
            let fd: OwnedFd = match transport {
                Transport::Tcp => TcpListener::bind(addr)
                    .with_context(|| format!("binding the {role:?} TCP socket on {addr}"))?
                    .into(),
                Transport::Udp => UdpSocket::bind(addr)
                    .with_context(|| format!("binding the {role:?} UDP socket on {addr}"))?
                    .into(),
            };
            sockets.push(LanSocket { role, port, fd });
        }
        Ok(LanSockets { sockets })
    }

    /// Fresh dups for handing to a (re)started `lumen-net`, in the order of [`LanSockets::ports`].
    /// The dups are close-on-exec; the broker's own copies stay open.
    pub fn dup_all(&self) -> anyhow::Result<Vec<(SocketRole, OwnedFd)>> {
        self.sockets
            .iter()
            .map(|socket| {
                let dup = socket
                    .fd
                    .try_clone()
                    .with_context(|| format!("duplicating the {:?} socket", socket.role))?;
                Ok((socket.role, dup))
            })
            .collect()
    }

    /// The port of each role, for status and logs.
    pub fn ports(&self) -> Vec<(SocketRole, u16)> {
        self.sockets.iter().map(|s| (s.role, s.port)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::os::fd::AsFd;

    use rustix::net::{AddressFamily, SocketType};

    use super::*;

    /// Binds on loopback at some free port base (tests run in parallel, other programs hold ports).
    fn bind_somewhere() -> (LanSockets, u16) {
        let mut last = None;
        for attempt in 0..50u16 {
            let base = 30_000
                + (u16::try_from(std::process::id() % 500).unwrap_or(0)) * 40
                + attempt * 40
                + 5;
            match LanSockets::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), base) {
                Ok(sockets) => return (sockets, base),
                Err(e) => last = Some(e),
            }
        }
        panic!("no free port base: {last:?}");
    }

    #[test]
    fn binds_sunshines_port_layout() {
        let (sockets, base) = bind_somewhere();
        assert_eq!(
            sockets.ports(),
            vec![
                (SocketRole::Http, base),
                (SocketRole::Https, base - 5),
                (SocketRole::Rtsp, base + 21),
                (SocketRole::Video, base + 9),
                (SocketRole::Control, base + 10),
                (SocketRole::Audio, base + 11),
            ]
        );
    }

    #[test]
    fn dups_are_the_same_bound_sockets_of_the_right_kind() {
        let (sockets, _) = bind_somewhere();
        let dups = sockets.dup_all().expect("dup");
        let ports = sockets.ports();
        assert_eq!(dups.len(), ports.len());
        for ((role, fd), (port_role, port)) in dups.iter().zip(ports) {
            assert_eq!(*role, port_role);
            let (ty, listening) = match role {
                SocketRole::Http | SocketRole::Https | SocketRole::Rtsp => {
                    (SocketType::STREAM, Some(true))
                }
                _ => (SocketType::DGRAM, None),
            };
            lumen_ipc::fdcheck::expect_socket(fd.as_fd(), AddressFamily::INET, ty, listening)
                .unwrap_or_else(|e| panic!("{role:?}: {e}"));
            let local = rustix::net::getsockname(fd).expect("getsockname");
            let local = SocketAddr::try_from(local).expect("inet address");
            assert_eq!(local.port(), port, "{role:?}");
            assert_eq!(
                rustix::io::fcntl_getfd(fd).expect("getfd"),
                rustix::io::FdFlags::CLOEXEC,
                "{role:?} dup must be close-on-exec"
            );
            if ty == SocketType::STREAM {
                assert!(rustix::net::sockopt::socket_reuseaddr(fd).expect("getsockopt"));
            }
        }
        // A second round of dups works just as well (a restarted lumen-net gets the same sockets).
        assert_eq!(sockets.dup_all().expect("dup again").len(), 6);
    }

    #[test]
    fn a_taken_port_is_named_in_the_error() {
        let (sockets, base) = bind_somewhere();
        let err =
            LanSockets::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), base).expect_err("ports are taken");
        assert!(format!("{err:#}").contains(&format!(":{base}")), "{err:#}");
        drop(sockets);
    }

    #[test]
    fn port_bases_whose_ports_leave_the_range_are_refused() {
        for base in [0, 4, 5, 65_515, u16::MAX] {
            assert!(
                LanSockets::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), base).is_err(),
                "port_base {base}"
            );
        }
        assert_eq!(port_for(47_989, -5), Some(47_984));
        assert_eq!(port_for(47_989, 21), Some(48_010));
    }
}
