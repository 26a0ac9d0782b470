//! The LAN sockets the broker bound and handed over: each checked for the kind its role needs before
//! it is kept, since even the broker's messages are checked rather than assumed.

use std::os::fd::{AsFd, OwnedFd};

use lumen_ipc::fdcheck;
use lumen_ipc::msg::SocketRole;
use rustix::net::{AddressFamily, SocketType};

/// The sockets `lumen-net` serves on, by role.
pub struct LanSockets {
    sockets: Vec<(SocketRole, OwnedFd)>,
}

fn expected_type(role: SocketRole) -> (SocketType, Option<bool>) {
    match role {
        SocketRole::Http | SocketRole::Https | SocketRole::Rtsp => (SocketType::STREAM, Some(true)),
        SocketRole::Video | SocketRole::Control | SocketRole::Audio | SocketRole::Mdns => {
            (SocketType::DGRAM, None)
        }
    }
}

impl LanSockets {
    /// Takes one fd per role, in order, refusing a count mismatch, a repeated role or a wrong kind.
    pub fn take(roles: &[SocketRole], fds: Vec<OwnedFd>) -> Result<LanSockets, String> {
        if roles.len() != fds.len() {
            return Err(format!(
                "NetSockets names {} roles but carries {} fds",
                roles.len(),
                fds.len()
            ));
        }
        let mut sockets: Vec<(SocketRole, OwnedFd)> = Vec::with_capacity(roles.len());
        for (&role, fd) in roles.iter().zip(fds) {
            if sockets.iter().any(|(r, _)| *r == role) {
                return Err(format!("NetSockets repeats the role {role:?}"));
            }
            let (ty, listening) = expected_type(role);
            let inet = fdcheck::expect_socket(fd.as_fd(), AddressFamily::INET, ty, listening);
            let inet6 = fdcheck::expect_socket(fd.as_fd(), AddressFamily::INET6, ty, listening);
            if let (Err(e), Err(_)) = (inet, inet6) {
                return Err(format!("{role:?} socket: {e}"));
            }
            sockets.push((role, fd));
        }
        Ok(LanSockets { sockets })
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// A duplicate of the socket of `role` (the original stays held here), if one was handed over.
    pub fn dup(&self, role: SocketRole) -> Result<Option<OwnedFd>, String> {
        self.sockets
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, fd)| {
                fd.try_clone()
                    .map_err(|e| format!("duplicating the {role:?} socket: {e}"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_listener() -> OwnedFd {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().into()
    }

    fn udp() -> OwnedFd {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().into()
    }

    #[test]
    fn takes_sockets_of_the_right_kind() {
        let sockets = LanSockets::take(
            &[SocketRole::Http, SocketRole::Video],
            vec![tcp_listener(), udp()],
        )
        .unwrap();
        assert_eq!(sockets.len(), 2);
    }

    #[test]
    fn refuses_a_udp_socket_for_a_tcp_role() {
        let err = LanSockets::take(&[SocketRole::Https], vec![udp()])
            .err()
            .unwrap();
        assert!(err.contains("Https"), "{err}");
    }

    #[test]
    fn refuses_a_count_mismatch_and_repeated_roles() {
        assert!(LanSockets::take(&[SocketRole::Http], vec![]).is_err());
        assert!(
            LanSockets::take(&[SocketRole::Video, SocketRole::Video], vec![udp(), udp()]).is_err()
        );
    }
}
