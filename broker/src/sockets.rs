//! The LAN sockets: bound by the broker, handed to `lumen-net`, never read by the broker.
//!
//! The broker binds every socket a Moonlight client talks to (Sunshine's port layout around
//! `port_base`) and keeps them for its whole life. `lumen-net` gets fresh dups each time it starts,
//! so a restarted `lumen-net` serves the very same sockets: no port is ever released, so nothing
//! else can take it in between, and `lumen-net` needs no right to bind or connect.
//!
//! The broker itself never reads a byte from these sockets: it only binds, dups and hands them over.
//!
//! With mDNS on, one more: UDP 5353 joined to 224.0.0.251 on the bind address's interface (or on
//! every IPv4 interface that is up when binding to all), on which `lumen-net` advertises
//! `_nvstream._tcp`. `lumen-net` cannot list interfaces after lock-down, so the broker lists them
//! here and tells it what to advertise ([`LanSockets::mdns_advert`]). mDNS is a convenience:
//! when it cannot be set up, the broker says why ([`LanSockets::mdns_problem`]) and serves on.
//! Bound to all addresses, the broker looks at the interfaces again every few seconds
//! ([`LanSockets::refresh_mdns`]): a laptop that joins another network, or an address a DHCP
//! lease changed, is advertised without a restart.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context};
use lumen_ipc::msg::{MdnsAdvert, MdnsInterface, SocketRole};
use rustix::net::sockopt;

/// RFC 6762 §3: the mDNS group and port.
const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const MDNS_PORT: u16 = 5353;
/// DNS labels (the instance name is one) are at most 63 bytes.
const MAX_LABEL: usize = 63;
/// lumen-net advertises at most this many interfaces (lumen_core::mdns::MAX_INTERFACES).
const MAX_MDNS_INTERFACES: usize = 16;

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

/// The bound listening TCP sockets (HTTP, HTTPS, RTSP) and UDP sockets (video, control, audio,
/// and mDNS when on).
pub struct LanSockets {
    bind: IpAddr,
    sockets: Vec<LanSocket>,
    /// What is advertised now; the interfaces follow the host's (see [`LanSockets::refresh_mdns`]).
    mdns: Option<Mutex<MdnsState>>,
    mdns_problem: Option<String>,
}

/// The advert, and the interfaces as last listed (some may not have been joined: a listing that
/// has not changed is not tried, nor warned about, again).
struct MdnsState {
    advert: MdnsAdvert,
    listed: Vec<MdnsInterface>,
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
    ///
    /// With `mdns`, also the mDNS socket (see the module comment); failing that is no error.
    pub fn bind(bind: IpAddr, port_base: u16, mdns: bool) -> anyhow::Result<LanSockets> {
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
        let (mut advert, mut mdns_problem) = (None, None);
        if mdns {
            match bind_mdns(bind, port_base) {
                Ok((fd, found)) => {
                    sockets.push(LanSocket {
                        role: SocketRole::Mdns,
                        port: MDNS_PORT,
                        fd,
                    });
                    advert = Some(found);
                }
                Err(e) => mdns_problem = Some(format!("mDNS advertisement is off: {e:#}")),
            }
        }
        Ok(LanSockets {
            bind,
            sockets,
            mdns: advert.map(|advert: MdnsAdvert| {
                Mutex::new(MdnsState {
                    listed: advert.interfaces.clone(),
                    advert,
                })
            }),
            mdns_problem,
        })
    }

    /// What `lumen-net` advertises on the mDNS socket, when there is one.
    pub fn mdns_advert(&self) -> Option<MdnsAdvert> {
        let state = self.mdns.as_ref()?;
        Some(
            state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .advert
                .clone(),
        )
    }

    /// Lists the interfaces again and, when they changed, joins the mDNS group on the new ones,
    /// leaves it on those gone, and returns the advert to send `lumen-net`. Only when bound to
    /// all addresses: a bind address is one interface for good. With no interface up, the last
    /// advert stays (there is nobody to tell).
    pub fn refresh_mdns(&self) -> Option<MdnsAdvert> {
        if self.mdns.is_none() || !self.bind.is_unspecified() {
            return None;
        }
        match mdns_interfaces(self.bind) {
            Ok(listed) => self.follow_mdns_interfaces(listed),
            Err(e) => {
                tracing::debug!("mDNS: {e:#}; advertising on the last interfaces");
                None
            }
        }
    }

    /// [`LanSockets::refresh_mdns`] for the interfaces `listed`.
    fn follow_mdns_interfaces(&self, listed: Vec<MdnsInterface>) -> Option<MdnsAdvert> {
        let (state, socket) = (self.mdns.as_ref()?, self.fd(SocketRole::Mdns)?);
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let same =
            listed.len() == state.listed.len() && listed.iter().all(|i| state.listed.contains(i));
        if listed.is_empty() || same {
            return None;
        }
        state.listed = listed.clone();
        let advert = &mut state.advert;
        for gone in advert.interfaces.iter().filter(|i| !listed.contains(i)) {
            // The address may be gone already; the kernel keeps a membership per interface
            // (named by the address it was joined with), and leaving may take it away even
            // from another address of the same interface: every listed one joins again below.
            let _ = sockopt::set_ip_drop_membership(socket, &MDNS_GROUP, &gone.address);
        }
        let mut joined = Vec::with_capacity(listed.len());
        for iface in listed {
            match sockopt::set_ip_add_membership(socket, &MDNS_GROUP, &iface.address) {
                // EADDRINUSE: the interface is a member already.
                Ok(()) | Err(rustix::io::Errno::ADDRINUSE) => joined.push(iface),
                Err(e) => tracing::warn!("mDNS: not advertising on {}: {e}", iface.address),
            }
        }
        if joined.is_empty() || joined == advert.interfaces {
            return None;
        }
        advert.interfaces = joined;
        Some(advert.clone())
    }

    fn fd(&self, role: SocketRole) -> Option<&OwnedFd> {
        self.sockets.iter().find(|s| s.role == role).map(|s| &s.fd)
    }

    /// Why mDNS was wanted but could not be set up.
    pub fn mdns_problem(&self) -> Option<&str> {
        self.mdns_problem.as_deref()
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

/// The IPv4 interfaces mDNS runs on: the bind address's own, or every IPv4 interface that is up
/// (loopback only when binding to loopback) when binding to all addresses.
fn mdns_interfaces(bind: IpAddr) -> anyhow::Result<Vec<MdnsInterface>> {
    let all = if_addrs::get_if_addrs().context("listing the network interfaces")?;
    let v4 = all.iter().filter_map(|i| match &i.addr {
        if_addrs::IfAddr::V4(a) => Some((i, a)),
        if_addrs::IfAddr::V6(_) => None,
    });
    let found: Vec<MdnsInterface> = match bind {
        IpAddr::V4(addr) if !addr.is_unspecified() => {
            let prefix_len = v4
                .clone()
                .find(|(_, a)| a.ip == addr)
                .map_or(32, |(_, a)| a.prefixlen);
            vec![MdnsInterface {
                address: addr,
                prefix_len,
            }]
        }
        IpAddr::V6(addr) if !addr.is_unspecified() => {
            bail!("it answers over IPv4 and the LAN sockets are bound to the IPv6 address {addr}")
        }
        _ => v4
            .filter(|(i, _)| !i.is_loopback() && i.is_oper_up())
            .map(|(_, a)| MdnsInterface {
                address: a.ip,
                prefix_len: a.prefixlen,
            })
            .take(MAX_MDNS_INTERFACES)
            .collect(),
    };
    if found.is_empty() {
        bail!("no IPv4 interface is up to advertise on");
    }
    Ok(found)
}

/// The host name, as Sunshine names its instance: the kernel's node name, without control
/// characters, cut to one DNS label.
fn host_name() -> String {
    let uname = rustix::system::uname();
    let mut name: String = uname
        .nodename()
        .to_string_lossy()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    while name.len() > MAX_LABEL {
        name.pop();
    }
    if name.is_empty() {
        "lumen".to_string()
    } else {
        name
    }
}

/// Binds UDP 5353 with `SO_REUSEADDR` and `SO_REUSEPORT` (so it shares the port with Avahi and
/// other responders), joins 224.0.0.251 on each interface mDNS runs on, with multicast loop on
/// (browsers on this host see the answers) and TTL 255 (RFC 6762 §11: receivers check it).
fn bind_mdns(bind: IpAddr, port_base: u16) -> anyhow::Result<(OwnedFd, MdnsAdvert)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let interfaces = mdns_interfaces(bind)?;
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .context("making the mDNS socket")?;
    sockopt::set_socket_reuseaddr(&fd, true).context("SO_REUSEADDR on the mDNS socket")?;
    sockopt::set_socket_reuseport(&fd, true).context("SO_REUSEPORT on the mDNS socket")?;
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), MDNS_PORT);
    rustix::net::bind(&fd, &any).with_context(|| format!("binding the mDNS socket on {any}"))?;
    let mut joined = Vec::with_capacity(interfaces.len());
    let mut refusals = Vec::new();
    for iface in interfaces {
        match sockopt::set_ip_add_membership(&fd, &MDNS_GROUP, &iface.address) {
            Ok(()) => joined.push(iface),
            Err(e) => refusals.push(format!("{}: {e}", iface.address)),
        }
    }
    if joined.is_empty() {
        bail!(
            "joining {MDNS_GROUP} refused on every interface ({})",
            refusals.join(", ")
        );
    }
    for refused in &refusals {
        tracing::warn!("mDNS: not advertising on {refused}");
    }
    sockopt::set_ip_multicast_loop(&fd, true).context("IP_MULTICAST_LOOP on the mDNS socket")?;
    sockopt::set_ip_multicast_ttl(&fd, 255).context("IP_MULTICAST_TTL on the mDNS socket")?;
    let name = host_name();
    Ok((
        fd,
        MdnsAdvert {
            instance: name.clone(),
            host: name,
            port: port_base,
            interfaces: joined,
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::net::{AddressFamily, SocketType};

    use super::*;

    /// Binds on loopback at some free port base (tests run in parallel, other programs hold ports).
    fn bind_somewhere() -> (LanSockets, u16) {
        bind_somewhere_with(false)
    }

    fn bind_somewhere_with(mdns: bool) -> (LanSockets, u16) {
        let mut last = None;
        for attempt in 0..50u16 {
            let base = 30_000
                + (u16::try_from(std::process::id() % 500).unwrap_or(0)) * 40
                + attempt * 40
                + 5;
            match LanSockets::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), base, mdns) {
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
    fn the_mdns_socket_shares_5353_joined_on_the_bind_interface() {
        let (sockets, base) = bind_somewhere_with(true);
        assert_eq!(sockets.mdns_problem(), None);
        assert_eq!(sockets.ports().last(), Some(&(SocketRole::Mdns, MDNS_PORT)));
        let advert = sockets.mdns_advert().expect("an advert");
        assert_eq!(advert.port, base, "the SRV port is nvhttp's HTTP port");
        assert_eq!(
            advert.interfaces,
            vec![MdnsInterface {
                address: Ipv4Addr::LOCALHOST,
                prefix_len: 8
            }]
        );
        assert!(!advert.instance.is_empty() && advert.instance.len() <= MAX_LABEL);
        let dups = sockets.dup_all().expect("dup");
        let (role, fd) = dups.last().expect("the mDNS socket");
        assert_eq!(*role, SocketRole::Mdns);
        lumen_ipc::fdcheck::expect_socket(fd.as_fd(), AddressFamily::INET, SocketType::DGRAM, None)
            .expect("a UDP socket");
        assert!(sockopt::socket_reuseaddr(fd).expect("SO_REUSEADDR"));
        assert!(sockopt::socket_reuseport(fd).expect("SO_REUSEPORT"));
        assert!(sockopt::ip_multicast_loop(fd).expect("IP_MULTICAST_LOOP"));
        assert_eq!(
            sockopt::ip_multicast_ttl(fd).expect("IP_MULTICAST_TTL"),
            255
        );
        let local = SocketAddr::try_from(rustix::net::getsockname(fd).expect("getsockname"))
            .expect("inet address");
        assert_eq!(
            local,
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), MDNS_PORT)
        );
        // A second broker (or Avahi) shares the port.
        let (second, _) = bind_somewhere_with(true);
        assert_eq!(second.mdns_problem(), None);
    }

    #[test]
    fn changed_interfaces_are_followed_and_the_same_ones_are_no_news() {
        let (sockets, _) = bind_somewhere_with(true);
        let lo = |prefix_len| MdnsInterface {
            address: Ipv4Addr::LOCALHOST,
            prefix_len,
        };
        let unassigned = MdnsInterface {
            address: Ipv4Addr::new(192, 0, 2, 1),
            prefix_len: 24,
        };
        // Bound to one address, there is nothing to follow.
        assert_eq!(sockets.refresh_mdns(), None);
        assert_eq!(
            sockets.follow_mdns_interfaces(vec![lo(8)]),
            None,
            "unchanged"
        );
        assert_eq!(sockets.follow_mdns_interfaces(Vec::new()), None, "none up");
        // A new subnet on the same address: the group is left and joined again, the advert
        // names the new subnet.
        let moved = sockets
            .follow_mdns_interfaces(vec![lo(16)])
            .expect("a changed advert");
        assert_eq!(moved.interfaces, vec![lo(16)]);
        assert_eq!(
            sockets.mdns_advert().map(|a| a.interfaces),
            Some(vec![lo(16)])
        );
        // An address no interface has cannot be joined: left out, so nothing changed.
        assert_eq!(
            sockets.follow_mdns_interfaces(vec![lo(16), unassigned]),
            None
        );
        // Still a member: a datagram to the group on loopback reaches the socket (with
        // IP_MULTICAST_ALL, as here, another socket's membership on lo would deliver it too;
        // none at all would not).
        let dups = sockets.dup_all().expect("dup");
        let (_, mdns) = dups.last().expect("the mDNS socket");
        let mdns = UdpSocket::from(mdns.try_clone().expect("dup"));
        mdns.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("sender");
        sockopt::set_ip_multicast_if(&sender, &Ipv4Addr::LOCALHOST).expect("multicast if");
        sockopt::set_ip_multicast_loop(&sender, true).expect("loop");
        let marker = b"lumen-mdns-membership-check";
        let mut buf = [0u8; 64];
        let mut seen = false;
        for _ in 0..20 {
            sender
                .send_to(marker, (MDNS_GROUP, MDNS_PORT))
                .expect("send to the group");
            // Other responders on this host may send to the group too.
            while let Ok(len) = mdns.recv(&mut buf) {
                if &buf[..len] == marker {
                    seen = true;
                    break;
                }
            }
            if seen {
                break;
            }
        }
        assert!(seen, "the mDNS socket left the group");
    }

    #[test]
    fn without_mdns_there_is_no_mdns_socket_and_an_ipv6_bind_says_why_not() {
        let (sockets, _) = bind_somewhere();
        assert!(sockets.mdns_advert().is_none() && sockets.mdns_problem().is_none());
        assert!(!sockets.ports().iter().any(|(r, _)| *r == SocketRole::Mdns));
        let v6 = (0..50u16)
            .find_map(|attempt| {
                let base = 30_000 + (std::process::id() % 500) as u16 * 40 + attempt * 40 + 25;
                LanSockets::bind(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), base, true).ok()
            })
            .expect("a free port base on ::1");
        assert!(v6.mdns_advert().is_none());
        let problem = v6.mdns_problem().expect("a reason");
        assert!(problem.contains("IPv6 address ::1"), "{problem}");
    }

    #[test]
    fn a_taken_port_is_named_in_the_error() {
        let (sockets, base) = bind_somewhere();
        let err = LanSockets::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), base, false)
            .expect_err("ports are taken");
        assert!(format!("{err:#}").contains(&format!(":{base}")), "{err:#}");
        drop(sockets);
    }

    #[test]
    fn port_bases_whose_ports_leave_the_range_are_refused() {
        for base in [0, 4, 5, 65_515, u16::MAX] {
            assert!(
                LanSockets::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), base, false).is_err(),
                "port_base {base}"
            );
        }
        assert_eq!(port_for(47_989, -5), Some(47_984));
        assert_eq!(port_for(47_989, 21), Some(48_010));
    }
}
