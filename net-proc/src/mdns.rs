//! mDNS advertisement of `_nvstream._tcp` on the UDP 5353 socket the broker bound and joined to
//! 224.0.0.251 (`SocketRole::Mdns`): announces at start, answers queries, says goodbye (TTL 0)
//! when dropped on a clean shutdown. When the host's interfaces change, the broker sends the new
//! advert ([`MdnsResponder::update`]): it is announced at once and answers use it from then on. The answers come from [`lumen_core::mdns`]; this module only
//! moves datagrams, at a capped rate, and counts what it drops.
//!
//! No new syscalls: recvfrom/sendto on the handed socket, and setsockopt(IPPROTO_IP,
//! IP_MULTICAST_IF) to pick the interface an answer leaves by.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use lumen_core::mdns::{Advert, Interface, Outgoing, ReplyBudget, ANNOUNCE_GAP, MAX_DATAGRAM};
use lumen_ipc::msg::MdnsAdvert;

/// At most this many answers in a burst, refilled at [`REPLIES_PER_SECOND`]: browsers ask a few
/// times a minute, so this only ever bites a flood.
const REPLY_BURST: u32 = 20;
const REPLIES_PER_SECOND: u32 = 10;

/// What the responder has seen, for logs.
#[derive(Debug, Default)]
pub struct MdnsCounters {
    pub received: AtomicU64,
    pub answered: AtomicU64,
    /// Datagrams that are not a DNS message we can read.
    pub malformed: AtomicU64,
    /// Queries past the rate cap.
    pub rate_limited: AtomicU64,
    pub send_errors: AtomicU64,
}

/// The advert in use, shared by the answering thread and [`MdnsResponder::update`].
#[derive(Clone)]
struct CurrentAdvert(Arc<Mutex<Arc<Advert>>>);

impl CurrentAdvert {
    fn get(&self) -> Arc<Advert> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, advert: Advert) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(advert);
    }
}

/// The running responder; dropping it sends the goodbye.
pub struct MdnsResponder {
    socket: UdpSocket,
    advert: CurrentAdvert,
    counters: Arc<MdnsCounters>,
}

/// Builds the advert from the broker's message (checked like anything received).
pub fn advert(msg: &MdnsAdvert) -> Result<Advert, String> {
    let interfaces: Vec<Interface> = msg
        .interfaces
        .iter()
        .map(|i| Interface {
            address: i.address,
            prefix_len: i.prefix_len,
        })
        .collect();
    Advert::new(&msg.instance, &msg.host, msg.port, &interfaces)
        .map_err(|e| format!("NetMdns: {e}"))
}

impl MdnsResponder {
    /// Starts answering on `socket` in a thread of its own, after the first announcement.
    pub fn start(socket: OwnedFd, advert: Advert) -> Result<MdnsResponder, String> {
        let socket = UdpSocket::from(socket);
        let reader = socket
            .try_clone()
            .map_err(|e| format!("duplicating the mDNS socket: {e}"))?;
        let advert = CurrentAdvert(Arc::new(Mutex::new(Arc::new(advert))));
        let counters = Arc::new(MdnsCounters::default());
        let (thread_advert, thread_counters) = (advert.clone(), counters.clone());
        std::thread::Builder::new()
            .name("lumen-mdns".into())
            .spawn(move || serve(&reader, &thread_advert, &thread_counters))
            .map_err(|e| format!("starting the mDNS thread: {e}"))?;
        Ok(MdnsResponder {
            socket,
            advert,
            counters,
        })
    }

    /// Advertises `advert` from now on (the interfaces changed): announced at once on each of its
    /// interfaces. Interfaces that are gone get no goodbye: nothing can be sent on them.
    pub fn update(&self, advert: Advert) {
        for datagram in advert.announcement(false) {
            send(&self.socket, &datagram, &self.counters);
        }
        self.advert.set(advert);
    }

    #[cfg(test)]
    pub fn counters(&self) -> &MdnsCounters {
        &self.counters
    }
}

impl Drop for MdnsResponder {
    fn drop(&mut self) {
        for datagram in self.advert.get().announcement(true) {
            send(&self.socket, &datagram, &self.counters);
        }
    }
}

/// Sends one datagram out of its interface. A failure (an interface gone down) is counted and
/// logged once; the responder carries on.
fn send(socket: &UdpSocket, datagram: &Outgoing, counters: &MdnsCounters) {
    let result = rustix::net::sockopt::set_ip_multicast_if(socket, &datagram.interface)
        .map_err(std::io::Error::from)
        .and_then(|()| socket.send_to(&datagram.bytes, SocketAddr::V4(datagram.to)));
    if let Err(e) = result {
        if counters.send_errors.fetch_add(1, Ordering::Relaxed) == 0 {
            eprintln!(
                "lumen-net: mDNS: sending to {} from {}: {e} (further failures only counted)",
                datagram.to, datagram.interface
            );
        }
    }
}

/// Announces twice, a second apart (the second after the first queries were served), then
/// answers queries until the process ends.
fn serve(socket: &UdpSocket, advert: &CurrentAdvert, counters: &MdnsCounters) {
    for datagram in advert.get().announcement(false) {
        send(socket, &datagram, counters);
    }
    let mut second_announcement = Some(Instant::now() + ANNOUNCE_GAP);
    let mut budget = ReplyBudget::new(REPLY_BURST, REPLIES_PER_SECOND, Instant::now());
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let timeout = second_announcement.map(|at| at.saturating_duration_since(Instant::now()));
        // A zero timeout means "block forever" to the kernel; a due announcement is sent below.
        let timeout = timeout.filter(|t| !t.is_zero());
        if socket.set_read_timeout(timeout).is_err() {
            return;
        }
        let received = socket.recv_from(&mut buf);
        if second_announcement.is_some_and(|at| Instant::now() >= at) {
            second_announcement = None;
            for datagram in advert.get().announcement(false) {
                send(socket, &datagram, counters);
            }
        }
        let (len, source) = match received {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                eprintln!("lumen-net: mDNS: reading: {e}; no more answers");
                return;
            }
        };
        counters.received.fetch_add(1, Ordering::Relaxed);
        let SocketAddr::V4(source) = source else {
            continue;
        };
        handle(
            socket,
            &advert.get(),
            counters,
            &mut budget,
            &buf[..len.min(buf.len())],
            source,
        );
    }
}

fn handle(
    socket: &UdpSocket,
    advert: &Advert,
    counters: &MdnsCounters,
    budget: &mut ReplyBudget,
    datagram: &[u8],
    source: std::net::SocketAddrV4,
) {
    let answers = match advert.respond(datagram, source) {
        Ok(answers) => answers,
        Err(e) => {
            let seen = counters.malformed.fetch_add(1, Ordering::Relaxed);
            if seen.is_power_of_two() || seen == 0 {
                eprintln!(
                    "lumen-net: mDNS: dropped a datagram from {source}: {e} ({} so far)",
                    seen + 1
                );
            }
            return;
        }
    };
    if answers.is_empty() {
        return;
    }
    if !budget.take(Instant::now()) {
        counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        return;
    }
    counters.answered.fetch_add(1, Ordering::Relaxed);
    for datagram in &answers {
        send(socket, datagram, counters);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use lumen_core::mdns::fuzz::query;
    use simple_dns::{Packet, TYPE};

    use super::*;

    /// A responder on a loopback socket standing in for the broker's 5353 one; answers are
    /// sent as unicast (the test's queries come from a port other than 5353: legacy unicast).
    fn responder() -> (MdnsResponder, UdpSocket) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let advert = Advert::new(
            "test-host",
            "test-host",
            47989,
            &[Interface {
                address: Ipv4Addr::LOCALHOST,
                prefix_len: 8,
            }],
        )
        .unwrap();
        let asker = UdpSocket::bind("127.0.0.1:0").unwrap();
        asker
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        asker.connect(socket.local_addr().unwrap()).unwrap();
        (MdnsResponder::start(socket.into(), advert).unwrap(), asker)
    }

    #[test]
    fn answers_a_query_and_counts_malformed_datagrams() {
        let (responder, asker) = responder();
        asker.send(&[1, 2, 3]).unwrap();
        asker
            .send(&query(
                &[(lumen_core::mdns::SERVICE_TYPE, TYPE::PTR)],
                false,
                9,
            ))
            .unwrap();
        let mut buf = [0u8; 2048];
        let len = asker.recv(&mut buf).expect("an answer");
        let reply = Packet::parse(&buf[..len]).unwrap();
        assert_eq!(reply.id(), 9);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(responder.counters().malformed.load(Ordering::Relaxed), 1);
        assert_eq!(responder.counters().answered.load(Ordering::Relaxed), 1);
    }

    /// The port the SRV record of the answer to an SRV query names.
    fn srv_port(asker: &UdpSocket, id: u16) -> u16 {
        let instance = format!("test-host.{}", lumen_core::mdns::SERVICE_TYPE);
        asker
            .send(&query(&[(instance.as_str(), TYPE::SRV)], false, id))
            .unwrap();
        let mut buf = [0u8; 2048];
        loop {
            let len = asker.recv(&mut buf).expect("an answer");
            let reply = Packet::parse(&buf[..len]).unwrap();
            if reply.id() != id {
                continue;
            }
            return reply
                .answers
                .iter()
                .find_map(|rr| match &rr.rdata {
                    simple_dns::rdata::RData::SRV(srv) => Some(srv.port),
                    _ => None,
                })
                .expect("an SRV answer");
        }
    }

    #[test]
    fn an_updated_advert_is_answered_from_then_on() {
        let (responder, asker) = responder();
        assert_eq!(srv_port(&asker, 1), 47989);
        let moved = Advert::new(
            "test-host",
            "test-host",
            50000,
            &[Interface {
                address: Ipv4Addr::LOCALHOST,
                prefix_len: 8,
            }],
        )
        .unwrap();
        responder.update(moved);
        assert_eq!(srv_port(&asker, 2), 50000);
    }

    #[test]
    fn a_flood_of_queries_is_capped() {
        let (responder, asker) = responder();
        let q = query(&[(lumen_core::mdns::SERVICE_TYPE, TYPE::PTR)], false, 1);
        for _ in 0..100 {
            asker.send(&q).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let c = responder.counters();
        while c.received.load(Ordering::Relaxed) < 100 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let answered = c.answered.load(Ordering::Relaxed);
        let limited = c.rate_limited.load(Ordering::Relaxed);
        assert_eq!(answered + limited, 100);
        // The burst, plus what refilled while the flood was read (well under a second).
        assert!((20..40).contains(&answered), "{answered} answered");
    }
}
