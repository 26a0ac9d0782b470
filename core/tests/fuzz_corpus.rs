//! Replays every file of every cargo-fuzz corpus (fuzz/corpus/<target>/) through the same entry
//! points the fuzz targets call, as an ordinary test: no panics, bounded time.
//!
//! The seed files are generated here from the requests and messages moonlight-common-c sends
//! (tests/common/moonlight_client.rs); `seed_corpus_is_current` checks the committed seeds match, and
//! `LUMEN_WRITE_CORPUS=1 cargo test -p lumen-core --test fuzz_corpus` rewrites them.

#[path = "common/moonlight_client.rs"]
mod moonlight_client;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lumen_core::control::{
    self, ClientMessage, ControlCrypto, FrameFecStatus, HdrMetadata, HostMessage, IvMode,
    LossStats, Termination,
};
use lumen_core::input;
use lumen_core::nvhttp::{self, Listener, NvRequest, PairRequest};
use lumen_core::rtsp::{self, RtspCrypto, RtspSession};

type Entry = fn(&[u8]);

const TARGETS: &[(&str, Entry)] = &[
    ("rtsp_message", rtsp::fuzz::rtsp_message),
    ("sdp_announce", rtsp::fuzz::sdp_announce),
    ("rtspenc_frame", rtsp::fuzz::rtspenc_frame),
    ("control_message", control::fuzz::control_message),
    ("control_envelope", control::fuzz::control_envelope),
    ("http_request", nvhttp::fuzz::http_request),
    ("pairing_fields", nvhttp::fuzz::pairing_fields),
    ("input_packet", input::fuzz::input_packet),
    ("input_channel", input::fuzz::input_channel),
];

/// Per-input budget (debug build; release fuzzing is far faster).
const PER_INPUT: Duration = Duration::from_secs(2);

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_replays_cleanly() {
    for &(target, entry) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("readable corpus entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{target}: empty corpus");
        for file in files {
            let data = std::fs::read(&file).expect("readable corpus file");
            let start = Instant::now();
            entry(&data);
            let took = start.elapsed();
            assert!(took < PER_INPUT, "{}: {took:?}", file.display());
        }
    }
}

#[test]
fn seed_corpus_is_current() {
    let write = std::env::var_os("LUMEN_WRITE_CORPUS").is_some();
    for (target, seeds) in seeds() {
        let dir = corpus_dir(target);
        if write {
            std::fs::create_dir_all(&dir).expect("corpus dir");
        }
        for (name, bytes) in seeds {
            let path = dir.join(format!("seed-{name}"));
            if write {
                std::fs::write(&path, &bytes).expect("write seed");
            } else {
                let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!("{} ({e}): rerun with LUMEN_WRITE_CORPUS=1", path.display())
                });
                assert_eq!(
                    on_disk,
                    bytes,
                    "{} is stale: rerun with LUMEN_WRITE_CORPUS=1",
                    path.display()
                );
            }
        }
    }
}

/// Named seed files of one corpus.
type Seeds = Vec<(String, Vec<u8>)>;

fn seeds() -> Vec<(&'static str, Seeds)> {
    use moonlight_client as client;
    const NAMES: [&str; 7] = [
        "options",
        "describe",
        "setup-audio",
        "setup-video",
        "setup-control",
        "announce",
        "play",
    ];
    let stereo = client::handshake(client::ANNOUNCE_HEVC_STEREO);
    let surround = client::handshake(client::ANNOUNCE_AV1_SURROUND);

    // Requests, plus the host's replies to them (the message parser reads both).
    let mut rtsp_message: Seeds = NAMES
        .iter()
        .zip(&stereo)
        .map(|(n, r)| (format!("req-{n}"), r.clone()))
        .collect();
    rtsp_message.push(("req-announce-av1".into(), surround[5].clone()));
    let mut session = RtspSession::new(rtsp::fuzz::corpus_params(false)).expect("params");
    for (n, r) in NAMES.iter().zip(&stereo) {
        let reply = session.handle(r).expect("reply");
        rtsp_message.push((format!("reply-{n}"), reply.bytes));
    }

    let low_res = client::ANNOUNCE_HEVC_STEREO
        .replace("clientViewportWd:1920", "clientViewportWd:640")
        .replace("clientViewportHt:1080", "clientViewportHt:480")
        .replace(
            "drc.enable:0 \r\n",
            "drc.enable:1 \r\na=x-nv-vqos[0].drc.tableType:2 \r\n",
        );
    let seven_one = client::ANNOUNCE_HEVC_STEREO
        .replace("numChannels:2", "numChannels:8")
        .replace("channelMask:3", "channelMask:1599")
        .replace("surround.enable:0", "surround.enable:1")
        .replace("packetDuration:5", "packetDuration:10");
    let sdp_announce = vec![
        (
            "hevc-stereo".to_owned(),
            client::ANNOUNCE_HEVC_STEREO.as_bytes().to_vec(),
        ),
        (
            "av1-surround".to_owned(),
            client::ANNOUNCE_AV1_SURROUND.as_bytes().to_vec(),
        ),
        ("low-res-drc".to_owned(), low_res.into_bytes()),
        ("seven-one".to_owned(), seven_one.into_bytes()),
    ];

    let mut sealer = RtspCrypto::client(&rtsp::fuzz::CORPUS_KEY);
    let rtspenc_frame = NAMES
        .iter()
        .zip(&stereo)
        .map(|(n, r)| (n.to_string(), sealer.seal(r).expect("seal")))
        .collect();

    let client_messages = vec![
        ("idr", ClientMessage::RequestIdr),
        ("start-b", ClientMessage::StartB),
        (
            "rfi",
            ClientMessage::InvalidateRefFrames {
                first: 100,
                last: 103,
            },
        ),
        (
            "ping",
            ClientMessage::PeriodicPing {
                payload: vec![4, 0, 0, 0, 0, 0, 0, 0],
            },
        ),
        (
            "loss-stats",
            ClientMessage::LossStats(LossStats(loss_stats())),
        ),
        ("ltr-ack", ClientMessage::LtrAck { frame_index: 42 }),
        (
            "fec-status",
            ClientMessage::FecStatus(FrameFecStatus {
                frame_index: 256,
                highest_received_seq: 9,
                next_contiguous_seq: 5,
                missing_before_highest: 2,
                total_data: 12,
                total_parity: 3,
                received_data: 10,
                received_parity: 3,
                fec_percentage: 20,
                block_index: 0,
                block_count: 1,
            }),
        ),
        // Enable haptics, the first input packet (§8): opaque here.
        (
            "input",
            ClientMessage::Input(vec![0, 0, 0, 4, 0x0D, 0, 0, 0]),
        ),
    ];
    let host_messages = [
        (
            "termination",
            HostMessage::Termination(Termination::GRACEFUL),
        ),
        (
            "termination-short",
            HostMessage::Termination(Termination::SHORT_INTENDED),
        ),
        (
            "rumble",
            HostMessage::Rumble {
                controller: 0,
                low_freq: 0x8000,
                high_freq: 0x4000,
            },
        ),
        (
            "hdr",
            HostMessage::HdrMode {
                enabled: true,
                metadata: HdrMetadata {
                    display_primaries: [(34000, 16000), (13250, 34500), (7500, 3000)],
                    white_point: (15635, 16450),
                    max_display_luminance: 1000,
                    min_display_luminance: 50,
                    max_content_light_level: 1000,
                    max_frame_average_light_level: 400,
                    max_full_frame_luminance: 600,
                },
            },
        ),
        (
            "rumble-triggers",
            HostMessage::RumbleTriggers {
                controller: 1,
                left: 10,
                right: 20,
            },
        ),
        (
            "motion",
            HostMessage::SetMotionEvent {
                controller: 0,
                report_rate_hz: 100,
                motion_type: 1,
            },
        ),
        (
            "led",
            HostMessage::SetRgbLed {
                controller: 0,
                r: 255,
                g: 0,
                b: 128,
            },
        ),
        (
            "adaptive-triggers",
            HostMessage::AdaptiveTriggers {
                controller: 0,
                event_flags: 0x0C,
                type_left: 0x21,
                type_right: 0x26,
                left: [1; 10],
                right: [2; 10],
            },
        ),
    ];
    let with_type = |(t, p): (u16, Vec<u8>)| {
        let mut v = t.to_le_bytes().to_vec();
        v.extend(p);
        v
    };
    let mut control_message: Seeds = client_messages
        .iter()
        .map(|(n, m)| (format!("client-{n}"), with_type(m.encode())))
        .collect();
    control_message.extend(
        host_messages
            .iter()
            .map(|(n, m)| (format!("host-{n}"), with_type(m.encode()))),
    );

    let mut control_envelope = Vec::new();
    for (mode, tag) in [(IvMode::V2, "v2"), (IvMode::Legacy, "legacy")] {
        let mut c = ControlCrypto::client(&control::fuzz::CORPUS_KEY, mode);
        for (n, m) in &client_messages {
            let (t, p) = m.encode();
            control_envelope.push((format!("{tag}-{n}"), c.seal(t, &p).expect("seal")));
        }
    }

    vec![
        ("rtsp_message", rtsp_message),
        ("sdp_announce", sdp_announce),
        ("rtspenc_frame", rtspenc_frame),
        ("control_message", control_message),
        ("control_envelope", control_envelope),
        ("input_packet", input_packet_seeds()),
        ("input_channel", input_channel_seeds()),
    ]
}

/// One packet of every input kind, as the client encodes it (§8), and a text packet of several
/// code points (the decoder splits it).
fn input_packet_seeds() -> Seeds {
    let mut seeds: Seeds = input::fuzz::every_kind()
        .into_iter()
        .map(|(name, event)| {
            (
                name.to_owned(),
                input::encode(&event).expect("seed encodes"),
            )
        })
        .collect();
    let text = "hé🎮".as_bytes();
    let mut several = ((text.len() + 4) as u32).to_be_bytes().to_vec();
    several.extend_from_slice(&input::magic::UTF8_TEXT.to_le_bytes());
    several.extend_from_slice(text);
    seeds.push(("text-several".to_owned(), several));
    seeds
}

/// What lumen-net sends lumen-input (every `NetToInput`) and what comes back (`InputToNet`).
fn input_channel_seeds() -> Seeds {
    input::fuzz::channel_seeds()
        .into_iter()
        .map(|(name, bytes)| (name.to_owned(), bytes))
        .collect()
}

fn loss_stats() -> [u8; 32] {
    let mut b = [0u8; 32];
    b[4..8].copy_from_slice(&50u32.to_le_bytes());
    b[8..12].copy_from_slice(&1000u32.to_le_bytes());
    b[12..20].copy_from_slice(&1234u64.to_le_bytes());
    b[28..32].copy_from_slice(&0x14u32.to_le_bytes());
    b
}

/// The nvhttp seeds (`moonlight-python-NN-{http,https}-ENDPOINT`) are the request heads
/// moonlight-python 0.3.0 sent in one exchange with lumen (pairing, a wrong-PIN attempt ending in
/// `/unpair`, then serverinfo, stage 5, applist, appasset, launch, resume and cancel over TLS):
/// every one must be accepted as the endpoint it was sent to, and every pairing query must decode
/// to a stage.
#[test]
fn nvhttp_seeds_are_a_real_moonlight_exchange() {
    let mut endpoints = Vec::new();
    for (name, head) in read_corpus("http_request", "moonlight-python-") {
        let listener = if name.contains("-https-") {
            Listener::Https
        } else {
            Listener::Http
        };
        let endpoint = name.rsplit('-').next().expect("named seed");
        let mut headers = [httparse::EMPTY_HEADER; nvhttp::fuzz::MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let status = request.parse(&head).expect("an HTTP/1.1 head");
        assert_eq!(status, httparse::Status::Complete(head.len()), "{name}");
        let (method, target) = (
            request.method.expect("method"),
            request.path.expect("target"),
        );
        let (path, query) = nvhttp::split_target(target);
        assert_eq!(path, format!("/{endpoint}"), "{name}");
        let classified = nvhttp::classify(method, path, query, listener)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let matches = match (endpoint, &classified) {
            ("serverinfo", NvRequest::ServerInfo)
            | ("pair", NvRequest::Pair(_))
            | ("unpair", NvRequest::Unpair { uniqueid: Some(_) })
            | ("applist", NvRequest::AppList)
            | ("appasset", NvRequest::AppAsset { appid: 1 })
            | ("cancel", NvRequest::Cancel) => true,
            (
                "launch",
                NvRequest::Launch {
                    resume: false,
                    params: Ok(p),
                },
            )
            | (
                "resume",
                NvRequest::Launch {
                    resume: true,
                    params: Ok(p),
                },
            ) => p.encrypted_rtsp && p.rikeyid == 0xDEAD_BEEF,
            _ => false,
        };
        assert!(matches, "{name}: {classified:?}");
        endpoints.push(endpoint.to_owned());
    }
    for endpoint in [
        "serverinfo",
        "pair",
        "unpair",
        "applist",
        "appasset",
        "launch",
        "resume",
        "cancel",
    ] {
        assert!(
            endpoints.iter().any(|e| e == endpoint),
            "no {endpoint} seed"
        );
    }
    let mut stages = Vec::new();
    for (name, text) in read_corpus("pairing_fields", "moonlight-python-") {
        let text = std::str::from_utf8(&text).expect("ASCII query");
        let query = nvhttp::Query::parse(Some(text)).expect("query");
        match nvhttp::pairing::parse(&query).unwrap_or_else(|e| panic!("{name}: {e}")) {
            PairRequest::Stage { stage, .. } => stages.push(
                format!("{stage:?}")
                    .split([' ', '{'])
                    .next()
                    .map(str::to_owned),
            ),
            PairRequest::Challenge => stages.push(Some("Challenge".into())),
        }
    }
    for stage in [
        "GetServerCert",
        "ClientChallenge",
        "ServerChallengeResp",
        "ClientPairingSecret",
        "Challenge",
    ] {
        assert!(
            stages.iter().flatten().any(|s| s == stage),
            "no {stage} seed: {stages:?}"
        );
    }
}

/// The files of one corpus whose names start with `prefix`, sorted by name.
fn read_corpus(target: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable corpus entry").path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_owned();
            name.starts_with(prefix)
                .then(|| (name, std::fs::read(&p).expect("readable corpus file")))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{target}: no {prefix}* seeds");
    files
}
