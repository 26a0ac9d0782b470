//! The host side of the RTSP handshake against the requests moonlight-common-c sends (rebuilt in
//! common/moonlight_client.rs) and the way it reads replies.

#[path = "common/moonlight_client.rs"]
mod moonlight_client;

use lumen_core::control::IvMode;
use lumen_core::rtsp::describe::{describe_body, DescribeError, SurroundOffer, SurroundParams};
use lumen_core::rtsp::encrypted::{self, EncryptedError, RtspCrypto};
use lumen_core::rtsp::message::{
    request_len, ParseError, Request, Response, SerializeError, MAX_HEADERS,
};
use lumen_core::rtsp::sdp::{Announce, Colorspace, SdpError, StreamConfig, VideoCodec};
use lumen_core::rtsp::session::{Event, Refusal, RtspSession, SessionParams, StreamKind};
use lumen_core::rtsp::DescribeParams;
use moonlight_client::{self as client, SESSION};
use proptest::prelude::*;

const KEY: [u8; 16] = [7; 16];

fn params(encrypted: bool) -> SessionParams {
    SessionParams {
        rikey: KEY,
        encrypted,
        session_id: SESSION.into(),
        audio_port: 48000,
        video_port: 47998,
        control_port: 47999,
        ping_payload: "0123456789abcdef".into(),
        connect_data: 0xC0FF_EE01,
        describe: DescribeParams {
            hevc: true,
            av1: false,
            rfi: false,
            ss_feature_flags: 0,
            encryption_supported: 5,
            encryption_requested: 1,
            surround: vec![SurroundOffer {
                normal: SurroundParams {
                    channels: 6,
                    streams: 4,
                    coupled: 2,
                    mapping: [0, 1, 2, 3, 4, 5, 0, 0],
                },
                high: Some(SurroundParams {
                    channels: 6,
                    streams: 6,
                    coupled: 0,
                    mapping: [0, 1, 2, 3, 4, 5, 0, 0],
                }),
            }],
        },
        fec_percentage: 20,
    }
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("replies are ASCII")
}

#[test]
fn parses_each_client_request_field_by_field() {
    let reqs = client::handshake(client::ANNOUNCE_HEVC_STEREO);
    let parsed: Vec<Request> = reqs
        .iter()
        .map(|r| Request::parse(r).expect("client request parses"))
        .collect();
    let methods: Vec<&str> = parsed.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        ["OPTIONS", "DESCRIBE", "SETUP", "SETUP", "SETUP", "ANNOUNCE", "PLAY"]
    );
    let targets: Vec<&str> = parsed.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            client::URL,
            client::URL,
            "streamid=audio/0/0",
            "streamid=video/0/0",
            "streamid=control/13/0",
            "streamid=control/13/0",
            "/"
        ]
    );
    for (i, r) in parsed.iter().enumerate() {
        assert_eq!(r.cseq(), Some(i as u32 + 1));
        assert_eq!(r.headers.get("x-gs-clientversion"), Some("14"));
        assert_eq!(r.headers.get("Host"), Some("0.0.0.0"));
    }
    assert_eq!(parsed[1].headers.get("Accept"), Some("application/sdp"));
    assert_eq!(
        parsed[2].headers.get("Transport"),
        Some("unicast;X-GS-ClientPort=50000-50001")
    );
    assert_eq!(parsed[2].headers.get("Session"), None);
    assert_eq!(parsed[3].headers.get("Session"), Some(SESSION));
    assert_eq!(
        parsed[5].headers.get("content-type"),
        Some("application/sdp")
    );
    assert_eq!(parsed[5].body, client::ANNOUNCE_HEVC_STEREO.as_bytes());
    assert!(parsed[6].body.is_empty());
    // The serializer writes them back byte for byte.
    for (r, raw) in parsed.iter().zip(&reqs) {
        assert_eq!(&r.serialize().unwrap(), raw);
    }
}

#[test]
fn request_len_finds_the_end_as_bytes_arrive() {
    let announce = &client::handshake(client::ANNOUNCE_HEVC_STEREO)[5];
    let head_end = announce.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    for cut in 0..announce.len() {
        let got = request_len(&announce[..cut]).unwrap();
        if cut < head_end {
            assert_eq!(got, None, "cut {cut}");
        } else {
            assert_eq!(got, Some(announce.len()), "cut {cut}");
        }
    }
    assert!(matches!(
        Request::parse(&announce[..announce.len() - 1]),
        Err(ParseError::Truncated { .. })
    ));
    let mut longer = announce.clone();
    longer.push(b'x');
    assert_eq!(Request::parse(&longer), Err(ParseError::TrailingBytes(1)));
}

#[test]
fn request_parser_enforces_its_limits() {
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
    let req = format!("OPTIONS / RTSP/1.0\r\n{many}\r\n");
    assert_eq!(
        Request::parse(req.as_bytes()),
        Err(ParseError::TooManyHeaders)
    );
    let long = format!("OPTIONS / RTSP/1.0\r\nX: {}\r\n\r\n", "a".repeat(2000));
    assert!(matches!(
        Request::parse(long.as_bytes()),
        Err(ParseError::LineTooLong { .. })
    ));
    let endless = vec![b'a'; 20_000];
    assert_eq!(request_len(&endless), Err(ParseError::HeadTooLong));
    for bad in [
        "OPTIONS / RTSP/2.0\r\nCSeq: 1\r\n\r\n",
        "OPTIONS  / RTSP/1.0\r\nCSeq: 1\r\n\r\n",
        "OPTIONS / RTSP/1.0\r\nCSeq 1\r\n\r\n",
        "OPTIONS / RTSP/1.0\r\nC Seq: 1\r\n\r\n",
        "OPTIONS / RTSP/1.0\r\nX: a\rb\r\n\r\n",
        "ANNOUNCE / RTSP/1.0\r\nContent-length: -1\r\n\r\n",
        "ANNOUNCE / RTSP/1.0\r\nContent-length: 1\r\ncontent-LENGTH: 1\r\n\r\nx",
        "ANNOUNCE / RTSP/1.0\r\nContent-length: 999999\r\n\r\n",
        "PLAY / RTSP/1.0\r\nSession: A\r\nsession: B\r\n\r\n",
    ] {
        assert!(Request::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
}

#[test]
fn replies_follow_the_client_parser_quirks() {
    let ok = Response::new(200, "3").serialize().unwrap();
    assert_eq!(ok, b"RTSP/1.0 200 OK\r\nCSeq: 3\r\n\r\n");
    let mut bare = Response::new(200, "1");
    bare.headers = Default::default();
    assert_eq!(bare.serialize(), Err(SerializeError::NoHeaders));
    for value in ["a\r\nb", " lead", "trail ", "nul\0"] {
        let r = Response::new(200, "1").header("X-SS-Ping-Payload", value);
        assert!(r.serialize().is_err(), "{value:?}");
    }
    let r = Response::new(200, "1").header("Bad Name", "x");
    assert!(matches!(
        r.serialize(),
        Err(SerializeError::BadHeaderName(_))
    ));
    let r = Response::new(200, "1").header("cseq", "2");
    assert!(matches!(
        r.serialize(),
        Err(SerializeError::DuplicateHeader(_))
    ));
    let r = Response::new(200, "1").body(b"a\0b".to_vec());
    assert_eq!(r.serialize(), Err(SerializeError::NulInBody));
}

fn run_plain(session: &mut RtspSession, raw: &[u8]) -> (Response, Option<Event>, Option<Refusal>) {
    let n = session.frame_len(raw).unwrap().expect("complete");
    assert_eq!(n, raw.len());
    let reply = session.handle(raw).unwrap();
    let parsed = Response::parse(&reply.bytes).expect("the client parses the reply");
    assert_eq!(parsed, reply.response);
    (parsed, reply.event, reply.refusal)
}

#[test]
fn full_handshake_replies_field_by_field() {
    let mut s = RtspSession::new(params(false)).unwrap();
    let reqs = client::handshake(client::ANNOUNCE_HEVC_STEREO);

    let (r, ev, _) = run_plain(&mut s, &reqs[0]);
    assert_eq!(
        Response::new(200, "1").serialize().unwrap(),
        r.serialize().unwrap()
    );
    assert_eq!(ev, None);

    let (r, _, _) = run_plain(&mut s, &reqs[1]);
    assert_eq!((r.status, r.headers.get_exact("CSeq")), (200, Some("2")));
    let body = text(&r.body);
    assert!(body.contains("sprop-parameter-sets=AAAAAU"), "HEVC offered");
    assert!(!body.contains("AV1/90000"), "AV1 not offered");
    assert!(!body.contains("x-nv-video[0].refPicInvalidation"));
    assert!(body.contains("a=x-ss-general.encryptionSupported:5\n"));
    assert!(body.contains("a=x-ss-general.encryptionRequested:1\n"));

    let (r, ev, _) = run_plain(&mut s, &reqs[2]);
    assert_eq!(
        text(&r.serialize().unwrap()),
        "RTSP/1.0 200 OK\r\nCSeq: 3\r\nSession: DEADBEEFCAFE;timeout = 90\r\n\
         Transport: server_port=48000\r\nX-SS-Ping-Payload: 0123456789abcdef\r\n\r\n"
    );
    assert_eq!(ev, Some(Event::Setup(StreamKind::Audio)));
    let session_hdr = r.headers.get_exact("Session").unwrap();
    assert_eq!(session_hdr.split(';').next(), Some(SESSION));
    assert_eq!(
        client::server_port(r.headers.get_exact("Transport").unwrap()),
        Some(48000)
    );
    assert_eq!(r.headers.get_exact("X-SS-Ping-Payload").unwrap().len(), 16);

    let (r, ev, _) = run_plain(&mut s, &reqs[3]);
    assert_eq!(
        client::server_port(r.headers.get_exact("Transport").unwrap()),
        Some(47998)
    );
    assert_eq!(ev, Some(Event::Setup(StreamKind::Video)));

    let (r, ev, _) = run_plain(&mut s, &reqs[4]);
    assert_eq!(
        client::server_port(r.headers.get_exact("Transport").unwrap()),
        Some(47999)
    );
    assert_eq!(r.headers.get_exact("X-SS-Connect-Data"), Some("3237998081"));
    assert_eq!(r.headers.get_exact("X-SS-Ping-Payload"), None);
    assert_eq!(ev, Some(Event::Setup(StreamKind::Control)));

    let (r, ev, refusal) = run_plain(&mut s, &reqs[5]);
    assert_eq!((r.status, refusal), (200, None));
    let Some(Event::Announced(n)) = ev else {
        panic!("ANNOUNCE gives the negotiated session, got {ev:?}");
    };
    let c = &n.config;
    assert_eq!((c.width, c.height, c.fps), (1920, 1080, 60));
    assert_eq!(c.packet_size, 1392);
    assert_eq!(c.bitrate_kbps, 16000);
    assert_eq!(c.configured_bitrate_kbps, Some(20000));
    assert_eq!(c.codec, VideoCodec::Hevc);
    assert!(!c.hdr && !c.yuv444);
    assert_eq!((c.colorspace, c.full_range), (Colorspace::Rec709, false));
    assert_eq!(c.max_ref_frames, 1);
    assert_eq!(c.slices_per_frame, 1);
    assert_eq!(c.min_required_fec_packets, 2);
    assert_eq!(c.requested_fec_percent, None);
    assert_eq!((c.audio_channels, c.audio_channel_mask), (2, 3));
    assert_eq!(c.audio_packet_duration_ms, 5);
    assert!(c.encryption.control_v2 && c.encryption.audio && !c.encryption.video);
    assert_eq!(c.control_protocol, 13);
    assert_eq!((c.video_qos_type, c.audio_qos_type), (5, 4));
    assert_eq!(c.video_port, Some(47998));
    assert_eq!(n.control_iv, IvMode::V2);
    assert_eq!(n.fec_percentage, 20);
    assert!(
        !n.audio_high_quality,
        "Host: 0.0.0.0 asks for normal stereo"
    );
    assert_eq!(n.connect_data, 0xC0FF_EE01);
    assert_eq!(s.negotiated(), Some(&*n));

    let (r, ev, _) = run_plain(&mut s, &reqs[6]);
    assert_eq!((r.status, ev), (200, Some(Event::Play)));
    assert!(s.is_playing());
}

#[test]
fn encrypted_handshake_seals_both_directions() {
    let mut s = RtspSession::new(params(true)).unwrap();
    let mut client_crypto = RtspCrypto::client(&KEY);
    let mut events = Vec::new();
    for (i, raw) in client::handshake(client::ANNOUNCE_HEVC_STEREO)
        .iter()
        .enumerate()
    {
        let frame = client_crypto.seal(raw).unwrap();
        // The client's counter starts at 1 and the header carries it big-endian.
        assert_eq!(frame[4..8], (i as u32 + 1).to_be_bytes());
        assert_eq!(s.frame_len(&frame[..3]).unwrap(), None);
        assert_eq!(s.frame_len(&frame[..4]).unwrap(), Some(frame.len()));
        let reply = s.handle(&frame).unwrap();
        assert_eq!(reply.refusal, None, "request {i}");
        // The host counts from 1 too.
        assert_eq!(reply.bytes[4..8], (i as u32 + 1).to_be_bytes());
        assert_eq!(reply.bytes[0] & 0x80, 0x80);
        let plain = client_crypto.open(&reply.bytes).unwrap();
        assert_eq!(Response::parse(&plain).unwrap(), reply.response);
        events.extend(reply.event);
    }
    assert_eq!(events.len(), 5);
    assert!(s.is_playing());
}

#[test]
fn encrypted_session_refuses_replays_plaintext_and_tampering() {
    let mut s = RtspSession::new(params(true)).unwrap();
    let mut c = RtspCrypto::client(&KEY);
    let reqs = client::handshake(client::ANNOUNCE_HEVC_STEREO);
    let first = c.seal(&reqs[0]).unwrap();
    s.handle(&first).unwrap();
    assert!(matches!(
        s.handle(&first),
        Err(lumen_core::rtsp::session::SessionError::Encrypted(
            EncryptedError::Replay { .. }
        ))
    ));
    assert!(
        s.frame_len(&reqs[1]).is_err(),
        "plaintext on an rtspenc session"
    );
    let mut tampered = c.seal(&reqs[1]).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(s.handle(&tampered).is_err());
}

#[test]
fn handshake_errors_get_the_right_status() {
    let reqs = client::handshake(client::ANNOUNCE_HEVC_STEREO);
    let status = |s: &mut RtspSession, raw: &[u8]| s.handle(raw).unwrap().response.status;

    let mut s = RtspSession::new(params(false)).unwrap();
    assert_eq!(status(&mut s, &reqs[2]), 455, "SETUP before DESCRIBE");
    assert_eq!(
        status(&mut s, &reqs[5]),
        454,
        "ANNOUNCE before any SETUP has no session yet"
    );
    status(&mut s, &reqs[1]);
    let other = String::from_utf8(reqs[2].clone())
        .unwrap()
        .replace("audio/0/0", "bogus/0/0");
    assert_eq!(status(&mut s, other.as_bytes()), 404);
    status(&mut s, &reqs[2]);
    let wrong = String::from_utf8(reqs[3].clone())
        .unwrap()
        .replace(SESSION, "OTHER");
    assert_eq!(status(&mut s, wrong.as_bytes()), 454);
    status(&mut s, &reqs[3]);
    assert_eq!(status(&mut s, &reqs[6]), 455, "PLAY before ANNOUNCE");
    assert_eq!(
        status(&mut s, &reqs[5]),
        455,
        "ANNOUNCE before SETUP control"
    );
    status(&mut s, &reqs[4]);
    assert_eq!(
        status(&mut s, b"TEARDOWN / RTSP/1.0\r\nCSeq: 9\r\n\r\n"),
        501
    );
    let garbage = s.handle(b"\x00\x01garbage\r\n\r\n").unwrap();
    assert_eq!(
        garbage.bytes,
        b"RTSP/1.0 400 Bad Request\r\nCSeq: 0\r\n\r\n"
    );

    let announce = |body: &str| {
        let raw = client::handshake(body).swap_remove(5);
        let mut s = RtspSession::new(params(false)).unwrap();
        for r in &reqs[1..5] {
            s.handle(r).unwrap();
        }
        s.handle(&raw).unwrap()
    };
    let av1 = announce(client::ANNOUNCE_AV1_SURROUND);
    assert_eq!(av1.response.status, 400);
    assert_eq!(av1.refusal, Some(Refusal::CodecNotOffered(VideoCodec::Av1)));
    let no_width =
        client::ANNOUNCE_HEVC_STEREO.replace("a=x-nv-video[0].clientViewportWd:1920 \r\n", "");
    assert!(matches!(
        announce(&no_width).refusal,
        Some(Refusal::Announce(SdpError::Missing(_)))
    ));
    let v1 = client::ANNOUNCE_HEVC_STEREO.replace("useReliableUdp:13", "useReliableUdp:1");
    assert_eq!(announce(&v1).refusal, Some(Refusal::UnencryptedControl(1)));
    let video_enc =
        client::ANNOUNCE_HEVC_STEREO.replace("encryptionEnabled:5", "encryptionEnabled:7");
    assert_eq!(
        announce(&video_enc).refusal,
        Some(Refusal::UnsupportedEncryption(2))
    );
}

#[test]
fn host_requested_encryption_is_enforced() {
    let mut p = params(false);
    p.describe.av1 = true;
    p.describe.encryption_supported = 7;
    p.describe.encryption_requested = 7;
    let reqs = client::handshake(client::ANNOUNCE_HEVC_STEREO);
    let mut s = RtspSession::new(p).unwrap();
    for r in &reqs[1..5] {
        s.handle(r).unwrap();
    }
    let reply = s.handle(&reqs[5]).unwrap();
    assert_eq!(
        (reply.response.status, reply.refusal),
        (403, Some(Refusal::EncryptionNotEnabled(2)))
    );
}

#[test]
fn stereo_quality_follows_the_host_header() {
    let reqs = client::handshake(client::ANNOUNCE_HEVC_STEREO);
    let mut s = RtspSession::new(params(false)).unwrap();
    for r in &reqs[1..5] {
        s.handle(r).unwrap();
    }
    let hq = String::from_utf8(reqs[5].clone())
        .unwrap()
        .replace("Host: 0.0.0.0", "Host: 192.168.1.10");
    let reply = s.handle(hq.as_bytes()).unwrap();
    let Some(Event::Announced(n)) = reply.event else {
        panic!("{reply:?}")
    };
    assert!(n.audio_high_quality);
}

#[test]
fn announce_bodies_parse_to_their_stream_configs() {
    let c = StreamConfig::parse(client::ANNOUNCE_AV1_SURROUND.as_bytes()).unwrap();
    assert_eq!((c.width, c.height, c.fps), (3840, 2160, 120));
    assert_eq!(c.codec, VideoCodec::Av1);
    assert!(c.hdr && c.yuv444);
    assert_eq!((c.colorspace, c.full_range), (Colorspace::Rec2020, true));
    assert_eq!(c.packet_size, 1360);
    assert_eq!(c.max_ref_frames, 0);
    assert_eq!(c.client_refresh_rate_x100, 11988);
    assert_eq!(
        (c.audio_channels, c.audio_channel_mask, c.audio_high_quality),
        (6, 63, true)
    );
    assert!(c.encryption.video && c.encryption.audio && c.encryption.control_v2);
    assert_eq!((c.video_qos_type, c.audio_qos_type), (0, 0));
    // lumen's writer reproduces the client's bodies byte for byte.
    assert_eq!(c.to_announce("192.168.1.10"), client::ANNOUNCE_AV1_SURROUND);
    let h = StreamConfig::parse(client::ANNOUNCE_HEVC_STEREO.as_bytes()).unwrap();
    assert_eq!(h.to_announce("192.168.1.10"), client::ANNOUNCE_HEVC_STEREO);
}

#[test]
fn announce_values_are_bounds_checked() {
    let base = client::ANNOUNCE_HEVC_STEREO;
    for (from, to) in [
        ("clientViewportWd:1920", "clientViewportWd:0"),
        ("clientViewportWd:1920", "clientViewportWd:99999"),
        ("maxFPS:60", "maxFPS:0"),
        ("packetSize:1392", "packetSize:100"),
        ("packetSize:1392", "packetSize:1392x"),
        ("bitStreamFormat:1", "bitStreamFormat:3"),
        ("numChannels:2", "numChannels:4"),
        ("packetDuration:5", "packetDuration:7"),
        ("encryptionEnabled:5", "encryptionEnabled:8"),
        ("encoderCscMode:2", "encoderCscMode:6"),
        ("initialBitrateKbps:16000", "initialBitrateKbps:99999999999"),
    ] {
        let body = base.replace(from, to);
        assert!(StreamConfig::parse(body.as_bytes()).is_err(), "{to}");
    }
    let dup = format!("{base}a=x-nv-video[0].maxFPS:30 \r\n");
    assert!(matches!(
        Announce::parse(dup.as_bytes()),
        Err(SdpError::Duplicate(_))
    ));
    let binary = base.replace("s=NVIDIA", "s=\u{1}NVIDIA");
    assert!(matches!(
        Announce::parse(binary.as_bytes()),
        Err(SdpError::BadByte { .. })
    ));
}

#[test]
fn describe_advertises_exactly_the_given_codecs() {
    let mut p = DescribeParams {
        encryption_supported: 5,
        encryption_requested: 1,
        ..Default::default()
    };
    let h264 = describe_body(&p).unwrap();
    assert_eq!(
        h264,
        "a=x-ss-general.featureFlags:0\na=x-ss-general.encryptionSupported:5\n\
         a=x-ss-general.encryptionRequested:1\n"
    );
    p.av1 = true;
    p.rfi = true;
    let av1 = describe_body(&p).unwrap();
    assert!(av1.contains("a=rtpmap:98 AV1/90000\n"));
    assert!(!av1.contains("AAAAAU"));
    assert!(av1.contains("a=x-nv-video[0].refPicInvalidation:1\n"));
    p.encryption_requested = 2;
    assert!(matches!(
        describe_body(&p),
        Err(DescribeError::RequestedNotSupported { .. })
    ));
}

#[test]
fn surround_lines_carry_the_gfe_quirk() {
    let identity = [0, 1, 2, 3, 4, 5, 6, 7];
    let offer = |c: u8, s: u8, k: u8, hs: u8, hk: u8| SurroundOffer {
        normal: SurroundParams {
            channels: c,
            streams: s,
            coupled: k,
            mapping: identity,
        },
        high: Some(SurroundParams {
            channels: c,
            streams: hs,
            coupled: hk,
            mapping: identity,
        }),
    };
    let p = DescribeParams {
        surround: vec![offer(6, 4, 2, 6, 0), offer(8, 5, 3, 8, 0)],
        ..Default::default()
    };
    let body = describe_body(&p).unwrap();
    // Sunshine's 5.1 lines; the identity-mapped 7.1 normal line by the rule of §7.1.
    assert!(body.contains("a=fmtp:97 surround-params=642012453\n"));
    assert!(body.contains("a=fmtp:97 surround-params=660012345\n"));
    assert!(body.contains("a=fmtp:97 surround-params=85301245673\n"));
    // Read back as the client reads it, the normal mapping is the encoder's again.
    for (c, (s, k), (hs, hk)) in [(6u8, (4, 2), (6, 0)), (8, (5, 3), (8, 0))] {
        let (normal, high) = client::surround_configs(&body, c).unwrap();
        assert_eq!(normal, (s, k, identity[..usize::from(c)].to_vec()));
        assert_eq!(high, Some((hs, hk, identity[..usize::from(c)].to_vec())));
    }
    // moonshine's 5.1 coding (FL/FR and BL/BR coupled) reads back the same way.
    let e = [0, 1, 4, 5, 2, 3, 0, 0];
    let p = DescribeParams {
        surround: vec![SurroundOffer {
            normal: SurroundParams {
                channels: 6,
                streams: 4,
                coupled: 2,
                mapping: e,
            },
            high: None,
        }],
        ..Default::default()
    };
    let body = describe_body(&p).unwrap();
    assert!(body.contains("surround-params=642014235\n"));
    let (normal, high) = client::surround_configs(&body, 6).unwrap();
    assert_eq!((normal, high), ((4, 2, e[..6].to_vec()), None));
    let bad = DescribeParams {
        surround: vec![SurroundOffer {
            normal: SurroundParams {
                channels: 6,
                streams: 4,
                coupled: 1,
                mapping: identity,
            },
            high: None,
        }],
        ..Default::default()
    };
    assert!(matches!(
        describe_body(&bad),
        Err(DescribeError::BadCoding { .. })
    ));
}

#[test]
fn rtspenc_frames_round_trip_and_refuse_damage() {
    let msg = b"OPTIONS rtsp://0.0.0.0:48010 RTSP/1.0\r\nCSeq: 1\r\n\r\n";
    let mut c = RtspCrypto::client(&KEY);
    let frame = c.seal(msg).unwrap();
    assert_eq!(frame.len(), encrypted::HEADER_LEN + msg.len());
    assert_eq!(
        frame[..4],
        (0x8000_0000u32 | msg.len() as u32).to_be_bytes()
    );
    let host = RtspCrypto::host(&KEY);
    assert_eq!(host.open_unordered(&frame).unwrap(), (1, msg.to_vec()));
    for bit in 0..frame.len() * 8 {
        let mut bad = frame.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(host.open_unordered(&bad).is_err(), "bit {bit}");
    }
    // A frame the host sealed does not open as one from the client (the IV's side letter differs).
    let mut h = RtspCrypto::host(&KEY);
    let reply = h.seal(msg).unwrap();
    assert_eq!(
        host.open_unordered(&reply),
        Err(EncryptedError::Authentication)
    );
    assert_eq!(
        encrypted::frame_len(&[0, 0, 0, 5]),
        Err(EncryptedError::NotEncrypted)
    );
    assert_eq!(
        encrypted::frame_len(&[0x80, 0, 0, 0]),
        Err(EncryptedError::Empty)
    );
    assert!(matches!(
        encrypted::frame_len(&[0x80, 0x10, 0, 0]),
        Err(EncryptedError::TooLong { .. })
    ));
}

fn header_value() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,40}[!-~])?|"
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,20}", header_value()), 1..10).prop_map(|hs| {
        let mut seen = std::collections::HashSet::new();
        hs.into_iter()
            .filter(|(n, _)| seen.insert(n.to_ascii_lowercase()))
            .collect()
    })
}

prop_compose! {
    fn request()(
        method in "[A-Z]{1,10}",
        target in "[!-~]{1,60}",
        hs in headers(),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) -> Request {
        let mut headers: lumen_core::rtsp::Headers = hs
            .into_iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("content-length"))
            .collect();
        if !body.is_empty() {
            headers.push("Content-length", body.len().to_string());
        }
        Request { method, target, headers, body }
    }
}

prop_compose! {
    fn response()(
        status in 100u16..1000,
        reason in "[!-~]([ -~]{0,20}[!-~])?",
        hs in headers(),
        body in prop::collection::vec(1u8..=255, 0..300),
    ) -> Response {
        Response { status, reason, headers: hs.into_iter().collect(), body }
    }
}

prop_compose! {
    fn stream_config()(
        width in 16u32..=8192, height in 16u32..=8192, fps in 1u32..=1000,
        refresh in 0u32..=100_000, packet_size in 200u32..=16384, bitrate in 1u32..=1_000_000,
        configured in prop::option::of(1u32..=1_000_000),
        codec in prop::sample::select(vec![VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Av1]),
        hdr: bool, yuv444: bool,
        colorspace in prop::sample::select(vec![Colorspace::Rec601, Colorspace::Rec709, Colorspace::Rec2020]),
        full_range: bool, max_ref_frames in 0u32..=16, slices in 1u32..=255, min_fec in 0u32..=255,
        fec_pct in prop::option::of(0u32..=255),
        channels in prop::sample::select(vec![2u8, 6, 8]), mask in 0u32..=0xFFFF, hq: bool,
        duration in prop::sample::select(vec![5u32, 10, 20, 40, 60]),
        ss in 0u32..=7, nv: u32, ml: u32, proto: u32, vq in 0u32..=255, aq in 0u32..=255,
        port: u16,
    ) -> StreamConfig {
        StreamConfig {
            width, height, fps, client_refresh_rate_x100: refresh, packet_size,
            bitrate_kbps: bitrate, configured_bitrate_kbps: configured, codec, hdr, yuv444,
            colorspace, full_range, max_ref_frames, slices_per_frame: slices,
            min_required_fec_packets: min_fec, requested_fec_percent: fec_pct,
            audio_channels: channels, audio_channel_mask: mask, audio_high_quality: hq,
            audio_packet_duration_ms: duration,
            encryption: lumen_core::rtsp::Encryption {
                control_v2: ss & 1 != 0,
                video: ss & 2 != 0,
                audio: ss & 4 != 0 || nv & 0x20 != 0,
            },
            ss_encryption_enabled: ss, nv_feature_flags: nv, ml_feature_flags: ml,
            control_protocol: proto, video_qos_type: vq, audio_qos_type: aq, video_port: Some(port),
        }
    }
}

proptest! {
    #[test]
    fn request_round_trips(req in request()) {
        let bytes = req.serialize().unwrap();
        prop_assert_eq!(request_len(&bytes), Ok(Some(bytes.len())));
        prop_assert_eq!(Request::parse(&bytes), Ok(req));
    }

    #[test]
    fn response_round_trips(resp in response()) {
        let bytes = resp.serialize().unwrap();
        prop_assert_eq!(Response::parse(&bytes), Ok(resp));
    }

    #[test]
    fn stream_config_round_trips(c in stream_config()) {
        prop_assert_eq!(StreamConfig::parse(c.to_announce("10.1.2.3").as_bytes()), Ok(c));
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        lumen_core::rtsp::fuzz::rtsp_message(&data);
        lumen_core::rtsp::fuzz::sdp_announce(&data);
        lumen_core::rtsp::fuzz::rtspenc_frame(&data);
    }

    #[test]
    fn mutated_client_requests_never_panic(
        which in 0usize..7,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut raw = client::handshake(client::ANNOUNCE_HEVC_STEREO).swap_remove(which);
        for (at, byte) in edits {
            let i = at.index(raw.len());
            raw[i] = byte;
        }
        lumen_core::rtsp::fuzz::rtsp_message(&raw);
        if which == 5 {
            let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
            lumen_core::rtsp::fuzz::sdp_announce(&raw[body_at..]);
        }
    }
}
