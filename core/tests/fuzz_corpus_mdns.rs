//! Replays the mDNS responder's cargo-fuzz corpus (fuzz/corpus/mdns_query/) through the entry
//! point the fuzz target calls, as an ordinary test, and checks the committed seeds are current
//! (`LUMEN_WRITE_CORPUS=1 cargo test -p lumen-core --test fuzz_corpus_mdns` rewrites them).
//!
//! The seeds are the queries browsers send (mdns-sd, qmdnsengine and jmdns ask for the PTR of
//! `_nvstream._tcp.local.`, then SRV/TXT of the instance and A of the host), a QU and a legacy
//! query, one carrying a known answer, and lumen's own announcement (a response, never answered).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lumen_core::mdns::fuzz::{corpus_advert, mdns_query, query};
use lumen_core::mdns::SERVICE_TYPE;
use simple_dns::TYPE;

const TARGET: &str = "mdns_query";
const PER_INPUT: Duration = Duration::from_secs(2);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(TARGET)
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let instance = "lumen-host._nvstream._tcp.local";
    let mut with_known_answer = query(&[(SERVICE_TYPE, TYPE::PTR)], false, 0);
    // The answer count and a PTR record pointing at the instance (its name compressed to the
    // question's at offset 12).
    with_known_answer[7] = 1;
    with_known_answer.extend([0xc0, 12, 0, 12, 0, 1, 0, 0, 0x11, 0x94]);
    let target = b"lumen-host";
    with_known_answer.extend(u16::try_from(target.len() + 3).unwrap_or(0).to_be_bytes());
    with_known_answer.push(u8::try_from(target.len()).unwrap_or(0));
    with_known_answer.extend(target);
    with_known_answer.extend([0xc0, 12]);
    let announcement = corpus_advert()
        .announcement(false)
        .into_iter()
        .next()
        .map(|o| o.bytes)
        .unwrap_or_default();
    vec![
        ("ptr", query(&[(SERVICE_TYPE, TYPE::PTR)], false, 0)),
        ("ptr-qu", query(&[(SERVICE_TYPE, TYPE::PTR)], true, 0)),
        (
            "ptr-legacy",
            query(&[(SERVICE_TYPE, TYPE::PTR)], false, 0x4242),
        ),
        (
            "srv-txt-a",
            query(
                &[
                    (instance, TYPE::SRV),
                    (instance, TYPE::TXT),
                    ("lumen-host.local", TYPE::A),
                ],
                false,
                0,
            ),
        ),
        (
            "service-types",
            query(&[("_services._dns-sd._udp.local", TYPE::PTR)], false, 0),
        ),
        ("ptr-known-answer", with_known_answer),
        ("announcement", announcement),
    ]
}

#[test]
fn seed_corpus_is_current() {
    let write = std::env::var_os("LUMEN_WRITE_CORPUS").is_some();
    let dir = corpus_dir();
    if write {
        std::fs::create_dir_all(&dir).expect("corpus dir");
    }
    for (name, bytes) in seeds() {
        let path = dir.join(format!("seed-{name}"));
        if write {
            std::fs::write(&path, &bytes).expect("write seed");
        } else {
            let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{} ({e}): rerun with LUMEN_WRITE_CORPUS=1", path.display())
            });
            assert_eq!(on_disk, bytes, "{} is stale", path.display());
        }
    }
}

#[test]
fn every_corpus_file_replays_cleanly() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("the mdns_query corpus")
        .map(|e| e.expect("readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus");
    for file in files {
        let data = std::fs::read(&file).expect("readable corpus file");
        let start = Instant::now();
        mdns_query(&data);
        assert!(start.elapsed() < PER_INPUT, "{}", file.display());
    }
}

#[test]
fn the_seed_queries_are_answered_and_the_announcement_is_not() {
    let advert = corpus_advert();
    let peer = std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 200, 0, 2), 5353);
    for (name, bytes) in seeds() {
        let answers = advert.respond(&bytes, peer).expect(name);
        match name {
            "announcement" | "ptr-known-answer" => assert!(answers.is_empty(), "{name}"),
            _ => assert_eq!(answers.len(), 1, "{name}"),
        }
    }
}
