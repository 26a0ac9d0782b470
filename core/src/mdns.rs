//! The multicast DNS responder for `_nvstream._tcp.local.` (RFC 6762, DNS-SD RFC 6763): a query
//! datagram in, the answer datagrams out, with no I/O, so it can be unit-tested and fuzzed.
//!
//! Moonlight clients browse `_nvstream._tcp.local.` (moonlight-qt through qmdnsengine, Android
//! through jmdns, iOS through Bonjour) and take the host's IPv4 address and the SRV port (nvhttp
//! over HTTP) from the answer, as Sunshine publishes it through Avahi: instance name = host name,
//! port = the HTTP port, an empty TXT record.
//!
//! Why not the `mdns-sd` crate, which the tests use as the browser: its `ServiceDaemon` opens and
//! binds its own sockets, one per interface, and `lumen-net` may not create sockets after lock-down.
//! So the DNS wire format comes from `simple-dns`, and only the small responder is written here.
//!
//! The interface a query came from is told by its source address (the advertised interface whose
//! subnet holds it); the answer for an interface names that interface's address only, so a client
//! never learns an address it cannot reach. A query from no known subnet is answered on every
//! interface.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use simple_dns::rdata::{RData, A, PTR, SRV, TXT};
use simple_dns::{
    Label, Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE, TYPE,
};

/// The mDNS port and group (RFC 6762 §3).
pub const MDNS_PORT: u16 = 5353;
pub const MDNS_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);

/// The DNS-SD service type Moonlight browses.
pub const SERVICE_TYPE: &str = "_nvstream._tcp.local";

/// RFC 6763 §9: the meta-query that lists every service type on the link.
const SERVICE_TYPES_QUERY: &str = "_services._dns-sd._udp.local";

/// RFC 6762 §10: records naming the host (SRV, A) live 120 s, the others 75 minutes.
const HOST_RECORD_TTL: u32 = 120;
const OTHER_RECORD_TTL: u32 = 4500;

/// RFC 6762 §6.7: answers to legacy unicast queries carry TTLs of at most 10 s.
const LEGACY_TTL_CAP: u32 = 10;

/// The largest mDNS datagram (RFC 6762 §17); anything longer is not a query of ours.
pub const MAX_DATAGRAM: usize = 9000;

/// At most this many interfaces are advertised (each answer names one; the cap bounds the work per
/// query).
pub const MAX_INTERFACES: usize = 16;

/// DNS labels are at most 63 bytes.
const MAX_LABEL: usize = 63;

/// The fixed DNS header.
const HEADER_LEN: usize = 12;
/// The smallest question (root name, type, class) and resource record (root name, type, class,
/// TTL, rdata length): used to refuse counts a datagram of its length cannot hold.
const MIN_QUESTION_LEN: usize = 5;
const MIN_RECORD_LEN: usize = 11;

/// Why a datagram was not taken as a query: a counted drop, never a panic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MdnsError {
    #[error("datagram of {0} bytes is longer than mDNS allows ({MAX_DATAGRAM})")]
    TooLong(usize),
    #[error("datagram of {0} bytes is shorter than a DNS header")]
    TooShort(usize),
    #[error(
        "header counts {questions} questions and {records} records, more than {len} bytes hold"
    )]
    ImplausibleCounts {
        questions: usize,
        records: usize,
        len: usize,
    },
    #[error("malformed DNS message: {0}")]
    Malformed(String),
}

/// Why an advert cannot be built from what the broker sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdvertError {
    #[error("the instance name is empty or longer than {MAX_LABEL} bytes")]
    InstanceName,
    #[error("the host name has no usable DNS label")]
    HostName,
    #[error("port 0 cannot be advertised")]
    Port,
    #[error("no interface to advertise on (or more than {MAX_INTERFACES})")]
    Interfaces,
    #[error("interface {0}/{1}: the prefix length is over 32")]
    PrefixLength(Ipv4Addr, u8),
}

/// One IPv4 interface: its address, named in the A record of answers sent on it, and its subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

impl Interface {
    fn holds(&self, peer: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(peer) & mask == u32::from(self.address) & mask
    }
}

/// What is advertised: `<instance>._nvstream._tcp.local.` → SRV `<host>.local.:port`, an empty
/// TXT, and A `<host>.local.` → the interface's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    instance: String,
    host: String,
    port: u16,
    interfaces: Vec<Interface>,
}

/// One datagram to send: from which interface (its address, for `IP_MULTICAST_IF`) and to where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub interface: Ipv4Addr,
    pub to: SocketAddrV4,
    pub bytes: Vec<u8>,
}

impl Advert {
    /// Checks and keeps what to advertise. The host label is reduced to what a DNS host name
    /// may hold (letters, digits, `-`; the first label of a dotted name); the instance name may
    /// hold any UTF-8 but is at most one 63-byte label.
    pub fn new(
        instance: &str,
        host: &str,
        port: u16,
        interfaces: &[Interface],
    ) -> Result<Advert, AdvertError> {
        if instance.is_empty() || instance.len() > MAX_LABEL {
            return Err(AdvertError::InstanceName);
        }
        let host: String = host
            .split('.')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(MAX_LABEL)
            .collect();
        if host.is_empty() {
            return Err(AdvertError::HostName);
        }
        if port == 0 {
            return Err(AdvertError::Port);
        }
        if interfaces.is_empty() || interfaces.len() > MAX_INTERFACES {
            return Err(AdvertError::Interfaces);
        }
        if let Some(bad) = interfaces.iter().find(|i| i.prefix_len > 32) {
            return Err(AdvertError::PrefixLength(bad.address, bad.prefix_len));
        }
        Ok(Advert {
            instance: instance.to_owned(),
            host,
            port,
            interfaces: interfaces.to_vec(),
        })
    }

    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// `<host>.local`, the target of the SRV record.
    pub fn host_name(&self) -> String {
        format!("{}.local", self.host)
    }

    fn service_type(&self) -> Name<'static> {
        Name::new_unchecked(SERVICE_TYPE)
    }

    fn instance_name(&self) -> Name<'_> {
        let mut labels = vec![Label::new_unchecked(self.instance.as_bytes())];
        labels.extend(
            Name::new_unchecked(SERVICE_TYPE)
                .get_labels()
                .iter()
                .cloned(),
        );
        Name::new_with_labels(&labels)
    }

    fn host_dns_name(&self) -> Name<'_> {
        Name::new_with_labels(&[
            Label::new_unchecked(self.host.as_bytes()),
            Label::new_unchecked(&b"local"[..]),
        ])
    }

    /// Every record, by kind, for an answer on `interface`, with `ttl` (or the standard TTLs).
    fn records(&self, interface: Ipv4Addr, ttl: Option<u32>) -> Records<'_> {
        let host_ttl = ttl.unwrap_or(HOST_RECORD_TTL);
        let other_ttl = ttl.unwrap_or(OTHER_RECORD_TTL);
        let rr = |name, ttl, rdata| ResourceRecord::new(name, CLASS::IN, ttl, rdata);
        Records {
            // Shared: other hosts may advertise the same service type, so no cache-flush bit.
            ptr: rr(
                self.service_type(),
                other_ttl,
                RData::PTR(PTR(self.instance_name())),
            ),
            srv: rr(
                self.instance_name(),
                host_ttl,
                RData::SRV(SRV {
                    priority: 0,
                    weight: 0,
                    port: self.port,
                    target: self.host_dns_name(),
                }),
            )
            .with_cache_flush(true),
            txt: rr(self.instance_name(), other_ttl, RData::TXT(TXT::new())).with_cache_flush(true),
            a: rr(self.host_dns_name(), host_ttl, RData::A(A::from(interface)))
                .with_cache_flush(true),
            types: rr(
                Name::new_unchecked(SERVICE_TYPES_QUERY),
                other_ttl,
                RData::PTR(PTR(self.service_type())),
            ),
        }
    }

    /// The unsolicited announcement (RFC 6762 §8.3), one per interface; with `goodbye`, the same
    /// records with TTL 0, so browsers forget the host at once (§10.1).
    pub fn announcement(&self, goodbye: bool) -> Vec<Outgoing> {
        let ttl = goodbye.then_some(0);
        self.interfaces
            .iter()
            .filter_map(|iface| {
                let r = self.records(iface.address, ttl);
                let mut packet = Packet::new_reply(0);
                packet.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
                packet.answers = vec![r.ptr, r.srv, r.txt, r.a];
                let bytes = packet.build_bytes_vec_compressed().ok()?;
                Some(Outgoing {
                    interface: iface.address,
                    to: SocketAddrV4::new(MDNS_GROUP, MDNS_PORT),
                    bytes,
                })
            })
            .collect()
    }

    /// The answers to one received datagram from `source`: nothing for a response (another
    /// responder's, or our own looped back), a query for other names, or records the query
    /// already holds (known-answer suppression, RFC 6762 §7.1); an error for a malformed datagram.
    pub fn respond(
        &self,
        datagram: &[u8],
        source: SocketAddrV4,
    ) -> Result<Vec<Outgoing>, MdnsError> {
        let query = parse_query(datagram)?;
        if query.has_flags(PacketFlag::RESPONSE)
            || query.opcode() != simple_dns::OPCODE::StandardQuery
        {
            return Ok(Vec::new());
        }
        // §6.7: a query from a port other than 5353 is a legacy resolver's; it gets a unicast
        // DNS reply (same id, the questions echoed, short TTLs).
        let legacy = source.port() != MDNS_PORT;
        let unicast_asked = query.questions.iter().any(|q| q.unicast_response);
        let interfaces: Vec<&Interface> =
            match self.interfaces.iter().find(|i| i.holds(*source.ip())) {
                Some(one) => vec![one],
                None => self.interfaces.iter().collect(),
            };
        let mut out = Vec::new();
        for iface in interfaces {
            let records = self.records(iface.address, legacy.then_some(LEGACY_TTL_CAP));
            let (answers, additional) = records.select(&query.questions, &query.answers);
            if answers.is_empty() {
                continue;
            }
            let mut reply = Packet::new_reply(if legacy { query.id() } else { 0 });
            reply.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
            if legacy {
                reply.questions = query.questions.clone();
            }
            reply.answers = answers;
            reply.additional_records = additional;
            let bytes = reply
                .build_bytes_vec_compressed()
                .map_err(|e| MdnsError::Malformed(e.to_string()))?;
            // §5.4: a QU question may be answered by unicast to the asker.
            let to = if legacy || unicast_asked {
                source
            } else {
                SocketAddrV4::new(MDNS_GROUP, MDNS_PORT)
            };
            out.push(Outgoing {
                interface: iface.address,
                to,
                bytes,
            });
        }
        Ok(out)
    }
}

/// The records of one answer.
struct Records<'a> {
    ptr: ResourceRecord<'a>,
    srv: ResourceRecord<'a>,
    txt: ResourceRecord<'a>,
    a: ResourceRecord<'a>,
    types: ResourceRecord<'a>,
}

fn same_record(a: &ResourceRecord<'_>, b: &ResourceRecord<'_>) -> bool {
    a.name == b.name && a.rdata == b.rdata
}

impl<'a> Records<'a> {
    /// The answers the questions ask for and the additional records that spare a second query
    /// (RFC 6763 §12): after a PTR its SRV, TXT and A; after an SRV its A.
    fn select(
        self,
        questions: &[Question<'_>],
        known: &[ResourceRecord<'_>],
    ) -> (Vec<ResourceRecord<'a>>, Vec<ResourceRecord<'a>>) {
        let asks = |q: &Question<'_>, name: &Name<'_>, ty: TYPE| {
            q.qname == *name
                && matches!(q.qclass, QCLASS::CLASS(CLASS::IN) | QCLASS::ANY)
                && (q.qtype == QTYPE::ANY || q.qtype == QTYPE::TYPE(ty))
        };
        let wanted = |record: &ResourceRecord<'_>, ty: TYPE| {
            questions.iter().any(|q| asks(q, &record.name, ty))
        };
        let (ptr, srv, txt, a, types) = (
            wanted(&self.ptr, TYPE::PTR),
            wanted(&self.srv, TYPE::SRV),
            wanted(&self.txt, TYPE::TXT),
            wanted(&self.a, TYPE::A),
            wanted(&self.types, TYPE::PTR),
        );
        let mut answers = Vec::new();
        let mut additional = Vec::new();
        for (record, is_answer, is_additional) in [
            (self.types, types, false),
            (self.ptr, ptr, false),
            (self.srv, srv, ptr),
            (self.txt, txt, ptr),
            (self.a, a, ptr || srv),
        ] {
            // §7.1: a record the asker holds with at least half its TTL left is not repeated.
            let suppressed = known
                .iter()
                .any(|k| same_record(k, &record) && k.ttl >= record.ttl / 2);
            if is_answer && !suppressed {
                answers.push(record);
            } else if is_additional && !is_answer {
                additional.push(record);
            }
        }
        (answers, additional)
    }
}

/// Parses a datagram after refusing what cannot be a query: too long, too short, or header
/// counts more than its length could hold (the parser would reserve room for each).
fn parse_query(datagram: &[u8]) -> Result<Packet<'_>, MdnsError> {
    let len = datagram.len();
    if len > MAX_DATAGRAM {
        return Err(MdnsError::TooLong(len));
    }
    let Some(header) = datagram.get(..HEADER_LEN) else {
        return Err(MdnsError::TooShort(len));
    };
    let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let questions = count(4);
    let records = count(6) + count(8) + count(10);
    if questions * MIN_QUESTION_LEN + records * MIN_RECORD_LEN > len - HEADER_LEN {
        return Err(MdnsError::ImplausibleCounts {
            questions,
            records,
            len,
        });
    }
    Packet::parse(datagram).map_err(|e| MdnsError::Malformed(e.to_string()))
}

/// Caps the answer rate: a token bucket of `burst` answers, refilled at `per_second`. A query
/// past the cap is a counted drop; a flood of queries cannot make the host flood the link.
#[derive(Debug)]
pub struct ReplyBudget {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl ReplyBudget {
    pub fn new(burst: u32, per_second: u32, now: Instant) -> ReplyBudget {
        ReplyBudget {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: now,
        }
    }

    /// Takes one answer's token, if one is left at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// RFC 6762 §8.3: at least two announcements, one second apart.
pub const ANNOUNCE_GAP: Duration = Duration::from_secs(1);

/// Entry points of the cargo-fuzz targets (fuzz/fuzz_targets/mdns_query.rs), also replayed over
/// the committed corpus by core/tests/fuzz_corpus.rs.
pub mod fuzz {
    use super::*;

    /// The advert the fuzz target answers for.
    pub fn corpus_advert() -> Advert {
        let interfaces = [
            Interface {
                address: Ipv4Addr::new(10, 200, 0, 1),
                prefix_len: 24,
            },
            Interface {
                address: Ipv4Addr::new(192, 168, 1, 20),
                prefix_len: 24,
            },
        ];
        match Advert::new("lumen-host", "lumen-host", 47989, &interfaces) {
            Ok(advert) => advert,
            Err(e) => unreachable!("the corpus advert is valid: {e}"),
        }
    }

    /// One datagram through the responder, from an mDNS peer and from a legacy one: never a panic,
    /// and every answer parses back as a DNS response.
    pub fn mdns_query(data: &[u8]) {
        let advert = corpus_advert();
        for source in [
            SocketAddrV4::new(Ipv4Addr::new(10, 200, 0, 2), MDNS_PORT),
            SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 9), 40000),
        ] {
            if let Ok(out) = advert.respond(data, source) {
                for datagram in out {
                    let parsed = Packet::parse(&datagram.bytes);
                    assert!(
                        parsed.is_ok_and(|p| p.has_flags(PacketFlag::RESPONSE)),
                        "an answer does not parse back"
                    );
                }
            }
        }
    }

    /// A query as a browser sends it, for the seed corpus and the tests.
    pub fn query(questions: &[(&str, TYPE)], unicast: bool, id: u16) -> Vec<u8> {
        let mut packet = Packet::new_query(id);
        for (name, ty) in questions {
            packet.questions.push(Question::new(
                Name::new_unchecked(name),
                QTYPE::TYPE(*ty),
                QCLASS::CLASS(CLASS::IN),
                unicast,
            ));
        }
        packet.build_bytes_vec().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::fuzz::{corpus_advert, query};
    use super::*;

    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 200, 0, 2), MDNS_PORT);

    fn parse(out: &Outgoing) -> Packet<'_> {
        Packet::parse(&out.bytes).expect("answer parses")
    }

    fn a_records(packet: &Packet<'_>) -> Vec<Ipv4Addr> {
        packet
            .answers
            .iter()
            .chain(&packet.additional_records)
            .filter_map(|r| match &r.rdata {
                RData::A(a) => Some(Ipv4Addr::from(a.address)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_ptr_query_gets_the_instance_with_srv_txt_and_a_on_the_askers_interface() {
        let advert = corpus_advert();
        let out = advert
            .respond(&query(&[(SERVICE_TYPE, TYPE::PTR)], false, 7), CLIENT)
            .unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].interface, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(out[0].to, SocketAddrV4::new(MDNS_GROUP, MDNS_PORT));
        let reply = parse(&out[0]);
        assert!(reply.has_flags(PacketFlag::RESPONSE | PacketFlag::AUTHORITATIVE_ANSWER));
        assert_eq!(reply.id(), 0, "multicast answers carry id 0");
        assert!(reply.questions.is_empty());
        assert_eq!(reply.answers.len(), 1);
        let RData::PTR(PTR(instance)) = &reply.answers[0].rdata else {
            panic!("{:?}", reply.answers[0]);
        };
        assert_eq!(instance.to_string(), "lumen-host._nvstream._tcp.local");
        let srv = reply
            .additional_records
            .iter()
            .find_map(|r| match &r.rdata {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .expect("SRV in the additional records");
        assert_eq!(srv.port, 47989);
        assert_eq!(srv.target.to_string(), "lumen-host.local");
        assert!(reply
            .additional_records
            .iter()
            .any(|r| matches!(r.rdata, RData::TXT(_))));
        assert_eq!(a_records(&reply), vec![Ipv4Addr::new(10, 200, 0, 1)]);
    }

    #[test]
    fn a_query_from_an_unknown_subnet_is_answered_on_every_interface_with_its_own_address() {
        let advert = corpus_advert();
        let stranger = SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 9), MDNS_PORT);
        let out = advert
            .respond(&query(&[(SERVICE_TYPE, TYPE::PTR)], false, 0), stranger)
            .unwrap();
        let per_interface: Vec<(Ipv4Addr, Vec<Ipv4Addr>)> = out
            .iter()
            .map(|o| (o.interface, a_records(&parse(o))))
            .collect();
        assert_eq!(
            per_interface,
            vec![
                (
                    Ipv4Addr::new(10, 200, 0, 1),
                    vec![Ipv4Addr::new(10, 200, 0, 1)]
                ),
                (
                    Ipv4Addr::new(192, 168, 1, 20),
                    vec![Ipv4Addr::new(192, 168, 1, 20)]
                ),
            ]
        );
    }

    #[test]
    fn srv_txt_and_a_questions_are_answered_directly() {
        let advert = corpus_advert();
        let instance = "lumen-host._nvstream._tcp.local";
        let out = advert
            .respond(
                &query(
                    &[
                        (instance, TYPE::SRV),
                        (instance, TYPE::TXT),
                        ("LUMEN-HOST.local", TYPE::A),
                    ],
                    false,
                    0,
                ),
                CLIENT,
            )
            .unwrap();
        let reply = parse(&out[0]);
        let kinds: Vec<TYPE> = reply.answers.iter().map(|r| r.rdata.type_code()).collect();
        assert_eq!(kinds, vec![TYPE::SRV, TYPE::TXT, TYPE::A]);
        assert!(
            reply.additional_records.is_empty(),
            "A is already an answer"
        );
        assert!(
            reply.answers.iter().all(|r| r.cache_flush),
            "unique records flush caches"
        );
    }

    #[test]
    fn other_names_types_and_responses_get_no_answer() {
        let advert = corpus_advert();
        for datagram in [
            query(&[("_airplay._tcp.local", TYPE::PTR)], false, 0),
            query(&[(SERVICE_TYPE, TYPE::AAAA)], false, 0),
            query(&[("other-host.local", TYPE::A)], false, 0),
        ] {
            assert_eq!(advert.respond(&datagram, CLIENT), Ok(vec![]));
        }
        // Our own announcement, looped back to us, is a response: never answered.
        for announced in advert.announcement(false) {
            assert_eq!(advert.respond(&announced.bytes, CLIENT), Ok(vec![]));
        }
    }

    #[test]
    fn the_service_type_meta_query_lists_nvstream() {
        let advert = corpus_advert();
        let out = advert
            .respond(
                &query(&[(SERVICE_TYPES_QUERY, TYPE::PTR)], false, 0),
                CLIENT,
            )
            .unwrap();
        let reply = parse(&out[0]);
        let RData::PTR(PTR(name)) = &reply.answers[0].rdata else {
            panic!("{reply:?}");
        };
        assert_eq!(name.to_string(), SERVICE_TYPE);
    }

    #[test]
    fn known_answers_are_not_repeated_but_stale_ones_are() {
        let advert = corpus_advert();
        let answer_with_known = |ttl: u32| {
            let mut packet = Packet::new_query(0);
            packet.questions.push(Question::new(
                Name::new_unchecked(SERVICE_TYPE),
                QTYPE::TYPE(TYPE::PTR),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
            let mut known = advert.records(Ipv4Addr::new(10, 200, 0, 1), None).ptr;
            known.ttl = ttl;
            packet.answers.push(known);
            advert
                .respond(&packet.build_bytes_vec().unwrap(), CLIENT)
                .unwrap()
        };
        assert!(answer_with_known(OTHER_RECORD_TTL).is_empty());
        assert_eq!(answer_with_known(OTHER_RECORD_TTL / 4).len(), 1);
    }

    #[test]
    fn legacy_and_qu_queries_are_answered_by_unicast() {
        let advert = corpus_advert();
        let legacy = SocketAddrV4::new(Ipv4Addr::new(10, 200, 0, 2), 40000);
        let out = advert
            .respond(&query(&[(SERVICE_TYPE, TYPE::PTR)], false, 0x1234), legacy)
            .unwrap();
        assert_eq!(out[0].to, legacy);
        let reply = parse(&out[0]);
        assert_eq!(reply.id(), 0x1234, "a legacy reply echoes the id");
        assert_eq!(reply.questions.len(), 1, "and the question");
        assert!(reply
            .answers
            .iter()
            .chain(&reply.additional_records)
            .all(|r| r.ttl <= LEGACY_TTL_CAP));

        let out = advert
            .respond(&query(&[(SERVICE_TYPE, TYPE::PTR)], true, 0), CLIENT)
            .unwrap();
        assert_eq!(out[0].to, CLIENT, "QU asks for a unicast answer");
    }

    #[test]
    fn announcement_and_goodbye_carry_every_record() {
        let advert = corpus_advert();
        let hello = advert.announcement(false);
        let goodbye = advert.announcement(true);
        assert_eq!(hello.len(), 2);
        for (h, g) in hello.iter().zip(&goodbye) {
            let (h, g) = (parse(h), parse(g));
            let kinds: Vec<TYPE> = h.answers.iter().map(|r| r.rdata.type_code()).collect();
            assert_eq!(kinds, vec![TYPE::PTR, TYPE::SRV, TYPE::TXT, TYPE::A]);
            assert!(h.answers.iter().all(|r| r.ttl > 0));
            assert_eq!(g.answers.len(), 4);
            assert!(g.answers.iter().all(|r| r.ttl == 0), "goodbye has TTL 0");
        }
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        let advert = corpus_advert();
        assert_eq!(advert.respond(&[0; 5], CLIENT), Err(MdnsError::TooShort(5)));
        assert_eq!(
            advert.respond(&vec![0; MAX_DATAGRAM + 1], CLIENT),
            Err(MdnsError::TooLong(MAX_DATAGRAM + 1))
        );
        // 65535 questions claimed in a 12-byte datagram.
        let mut lying = vec![0u8; 12];
        lying[4] = 0xff;
        lying[5] = 0xff;
        assert!(matches!(
            advert.respond(&lying, CLIENT),
            Err(MdnsError::ImplausibleCounts { .. })
        ));
        // A question whose name points at itself.
        let mut looped = query(&[(SERVICE_TYPE, TYPE::PTR)], false, 0);
        looped.truncate(12);
        looped.extend([0xc0, 12, 0, 12, 0, 1]);
        assert!(matches!(
            advert.respond(&looped, CLIENT),
            Err(MdnsError::Malformed(_))
        ));
        // Every truncation of a good query is an error or no answer, never a panic.
        let good = query(&[(SERVICE_TYPE, TYPE::PTR)], false, 0);
        for cut in 0..good.len() {
            let _ = advert.respond(&good[..cut], CLIENT);
        }
    }

    #[test]
    fn adverts_refuse_what_cannot_be_advertised() {
        let one = [Interface {
            address: Ipv4Addr::new(10, 0, 0, 1),
            prefix_len: 8,
        }];
        assert!(Advert::new("", "h", 1, &one).is_err());
        assert!(Advert::new(&"x".repeat(64), "h", 1, &one).is_err());
        assert_eq!(Advert::new("i", "...", 1, &one), Err(AdvertError::HostName));
        assert_eq!(Advert::new("i", "h", 0, &one), Err(AdvertError::Port));
        assert_eq!(Advert::new("i", "h", 1, &[]), Err(AdvertError::Interfaces));
        let wide = [Interface {
            address: Ipv4Addr::new(10, 0, 0, 1),
            prefix_len: 33,
        }];
        assert!(Advert::new("i", "h", 1, &wide).is_err());
        let advert = Advert::new("Büro PC", "buero_pc.example.org", 1, &one).unwrap();
        assert_eq!(advert.host_name(), "bueropc.local");
    }

    #[test]
    fn subnets_match_by_prefix() {
        let iface = Interface {
            address: Ipv4Addr::new(192, 168, 1, 20),
            prefix_len: 24,
        };
        assert!(iface.holds(Ipv4Addr::new(192, 168, 1, 200)));
        assert!(!iface.holds(Ipv4Addr::new(192, 168, 2, 1)));
        let everything = Interface {
            address: Ipv4Addr::new(1, 2, 3, 4),
            prefix_len: 0,
        };
        assert!(everything.holds(Ipv4Addr::new(9, 9, 9, 9)));
    }

    #[test]
    fn the_reply_budget_caps_the_rate() {
        let start = Instant::now();
        let mut budget = ReplyBudget::new(3, 2, start);
        assert_eq!((0..5).filter(|_| budget.take(start)).count(), 3);
        assert!(!budget.take(start + Duration::from_millis(100)));
        assert!(budget.take(start + Duration::from_millis(600)));
        assert!(!budget.take(start + Duration::from_millis(600)));
        // Idle time refills up to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| budget.take(later)).count(), 3);
    }
}
