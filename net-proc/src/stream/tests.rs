//! A launch driven through the RTSP listener with a stand-in broker: the handshake spans one TCP
//! connection per request, ANNOUNCE turns into `StartStream` with the announced settings, and
//! `/cancel` into `StopStream`. (The real client and broker: tests/tests/gamestream_stream.rs.)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use lumen_ipc::msg::WorkerMsg;

use super::*;

const ANNOUNCE_H264_640: &str = "v=0\r\n\
o=android 0 14 IN IPv4 127.0.0.1\r\n\
s=NVIDIA Streaming Client\r\n\
a=x-ml-general.featureFlags:3 \r\n\
a=x-ss-general.encryptionEnabled:5 \r\n\
a=x-ss-video[0].chromaSamplingType:0 \r\n\
a=x-nv-video[0].clientViewportWd:640 \r\n\
a=x-nv-video[0].clientViewportHt:360 \r\n\
a=x-nv-video[0].maxFPS:30 \r\n\
a=x-nv-video[0].packetSize:1392 \r\n\
a=x-nv-video[0].rateControlMode:4 \r\n\
a=x-nv-video[0].timeoutLengthMs:7000 \r\n\
a=x-nv-video[0].framesWithInvalidRefThreshold:0 \r\n\
a=x-nv-video[0].initialBitrateKbps:1200 \r\n\
a=x-nv-video[0].initialPeakBitrateKbps:1200 \r\n\
a=x-nv-vqos[0].bw.minimumBitrateKbps:1200 \r\n\
a=x-nv-vqos[0].bw.maximumBitrateKbps:1200 \r\n\
a=x-ml-video.configuredBitrateKbps:1500 \r\n\
a=x-nv-vqos[0].fec.enable:1 \r\n\
a=x-nv-vqos[0].videoQualityScoreUpdateTime:5000 \r\n\
a=x-nv-vqos[0].qosTrafficType:5 \r\n\
a=x-nv-aqos.qosTrafficType:4 \r\n\
a=x-nv-general.featureFlags:167 \r\n\
a=x-nv-general.useReliableUdp:13 \r\n\
a=x-nv-vqos[0].fec.minRequiredFecPackets:2 \r\n\
a=x-nv-vqos[0].bllFec.enable:0 \r\n\
a=x-nv-vqos[0].drc.enable:0 \r\n\
a=x-nv-general.enableRecoveryMode:0 \r\n\
a=x-nv-video[0].videoEncoderSlicesPerFrame:1 \r\n\
a=x-nv-clientSupportHevc:0 \r\n\
a=x-nv-vqos[0].bitStreamFormat:0 \r\n\
a=x-nv-video[0].dynamicRangeMode:0 \r\n\
a=x-nv-video[0].maxNumReferenceFrames:1 \r\n\
a=x-nv-video[0].clientRefreshRateX100:0 \r\n\
a=x-nv-audio.surround.numChannels:2 \r\n\
a=x-nv-audio.surround.channelMask:3 \r\n\
a=x-nv-audio.surround.enable:0 \r\n\
a=x-nv-audio.surround.AudioQuality:0 \r\n\
a=x-nv-aqos.packetDuration:5 \r\n\
a=x-nv-video[0].encoderCscMode:2 \r\n\
t=0 0\r\n\
m=video 47998  \r\n";

/// A broker that answers StartStream and StopStream and reports each request, and each
/// statistics report.
fn broker() -> (
    Arc<BrokerLink>,
    mpsc::Receiver<NetRequest>,
    mpsc::Receiver<lumen_ipc::net_msg::NetStats>,
) {
    let (seen_tx, seen) = mpsc::channel();
    let (stats_tx, stats) = mpsc::channel();
    let slot: Arc<Mutex<Option<Arc<BrokerLink>>>> = Arc::default();
    let link = BrokerLink::with_sender({
        let slot = slot.clone();
        move |msg| {
            let request = match msg {
                WorkerMsg::NetRequest { id, request } => (id, request),
                WorkerMsg::NetStats(report) => {
                    let _ = stats_tx.send(*report);
                    return Ok(());
                }
                _ => return Err("not a request".into()),
            };
            let (id, request) = request;
            let reply = match &request {
                NetRequest::StartStream { .. } => NetReply::StreamStarting { generation: 1 },
                NetRequest::StopStream => NetReply::StreamStopped,
                _ => NetReply::Refused("unexpected".into()),
            };
            let _ = seen_tx.send(request);
            let link = slot.lock().unwrap().clone().unwrap();
            std::thread::spawn(move || link.complete(id, reply));
            Ok(())
        }
    });
    *slot.lock().unwrap() = Some(link.clone());
    (link, seen, stats)
}

/// One request on its own connection; the reply is whatever arrives until the host closes.
fn rtsp(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    match stream.read_to_string(&mut reply) {
        Ok(_) => reply,
        // A refused request is closed unanswered; if the host closes before reading all of it,
        // the kernel resets the connection instead of a plain end of stream.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reply,
        Err(e) => panic!("reading the RTSP reply: {e}"),
    }
}

fn header<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    reply
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_runs_the_rtsp_handshake_starts_the_stream_and_cancel_stops_it() {
    let udp = || UdpSocket::bind("127.0.0.1:0").unwrap();
    let (video, audio, control) = (udp(), udp(), udp());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = Ports {
        rtsp: listener.local_addr().unwrap().port(),
        video: video.local_addr().unwrap().port(),
        audio: audio.local_addr().unwrap().port(),
        control: control.local_addr().unwrap().port(),
    };
    let (link, seen, stats) = broker();
    let streams = Streams::start(
        ports,
        StreamSockets {
            video: video.into(),
            audio: audio.into(),
            control: control.into(),
        },
        link,
    )
    .unwrap();
    // The recorded client ANNOUNCE below leaves video encryption off, which the default (video
    // encryption requested) refuses with 403; this test is about the handshake.
    streams.set_encrypt_video(false);
    streams.set_encoder_capabilities(EncoderCapabilities {
        codecs: vec![ipc_media::VideoCodec::H264, ipc_media::VideoCodec::Hevc],
        audio_layouts: vec![AudioLayout::Stereo],
    });
    crate::rtsp_server::start(listener.into(), streams.clone()).unwrap();
    assert_eq!(streams.current_game(), 0);

    let url = streams
        .launch(
            LaunchRequest {
                rikey: [3; 16],
                rikeyid: 7,
                encrypted_rtsp: false,
            },
            IpAddr::from([127, 0, 0, 1]),
        )
        .await
        .unwrap();
    assert_eq!(url, format!("rtsp://127.0.0.1:{}", ports.rtsp));
    assert_eq!(streams.current_game(), DESKTOP_ID);

    let port = ports.rtsp;
    let seen = tokio::task::spawn_blocking(move || {
        let common =
            |cseq: u32| format!("CSeq: {cseq}\r\nX-GS-ClientVersion: 14\r\nHost: 0.0.0.0\r\n");
        let transport = "Transport: unicast;X-GS-ClientPort=50000-50001\r\n";
        let options = rtsp(
            port,
            &format!("OPTIONS {url} RTSP/1.0\r\n{}\r\n", common(1)),
        );
        assert!(options.starts_with("RTSP/1.0 200"), "{options}");
        let describe = rtsp(
            port,
            &format!("DESCRIBE {url} RTSP/1.0\r\n{}\r\n", common(2)),
        );
        assert!(
            describe.contains("sprop-parameter-sets=AAAAAU"),
            "HEVC offered: {describe}"
        );
        let audio = rtsp(
            port,
            &format!(
                "SETUP streamid=audio/0/0 RTSP/1.0\r\n{}{transport}\r\n",
                common(3)
            ),
        );
        let session = header(&audio, "Session")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(
            header(&audio, "Transport"),
            Some(format!("server_port={}", ports.audio).as_str())
        );
        assert_eq!(header(&audio, "X-SS-Ping-Payload").map(str::len), Some(16));
        let video = rtsp(
            port,
            &format!(
                "SETUP streamid=video/0/0 RTSP/1.0\r\n{}Session: {session}\r\n{transport}\r\n",
                common(4)
            ),
        );
        assert!(video.starts_with("RTSP/1.0 200"), "{video}");
        let control = rtsp(
            port,
            &format!(
                "SETUP streamid=control/13/0 RTSP/1.0\r\n{}Session: {session}\r\n{transport}\r\n",
                common(5)
            ),
        );
        assert!(header(&control, "X-SS-Connect-Data").is_some(), "{control}");
        let announce = rtsp(
            port,
            &format!(
                "ANNOUNCE streamid=control/13/0 RTSP/1.0\r\n{}Session: {session}\r\n\
                 Content-type: application/sdp\r\nContent-length: {}\r\n\r\n{ANNOUNCE_H264_640}",
                common(6),
                ANNOUNCE_H264_640.len()
            ),
        );
        assert!(announce.starts_with("RTSP/1.0 200"), "{announce}");
        let play = rtsp(
            port,
            &format!("PLAY / RTSP/1.0\r\n{}Session: {session}\r\n\r\n", common(7)),
        );
        assert!(play.starts_with("RTSP/1.0 200"), "{play}");
        // A request on a connection that never completes is dropped without harm.
        let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
        idle.write_all(b"OPTIONS rtsp://x RTSP/1.0\r\n").unwrap();
        drop(idle);
        seen
    })
    .await
    .unwrap();

    let start = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    let NetRequest::StartStream { params } = start else {
        panic!("expected StartStream, got {start:?}");
    };
    assert_eq!((params.width, params.height, params.fps), (640, 360, 30));
    assert_eq!(params.codec, ipc_media::VideoCodec::H264);
    assert_eq!(params.bitrate_kbps, 1200);
    assert_eq!(params.audio, AudioLayout::Stereo);
    assert_eq!(params.audio_packet_ms, 5);

    // The running stream reports about once a second: the seven requests answered, none refused.
    let report = stats.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((report.stream, report.active), (1, true), "{report:?}");
    assert_eq!((report.rtsp.requests, report.rtsp.refused), (7, 0));

    streams.cancel().await;
    assert_eq!(streams.current_game(), 0);
    assert_eq!(
        seen.recv_timeout(Duration::from_secs(5)).unwrap(),
        NetRequest::StopStream
    );
    // RTSP without a launch is refused (the connection is closed unanswered).
    let refused = tokio::task::spawn_blocking(move || {
        rtsp(port, "OPTIONS rtsp://127.0.0.1 RTSP/1.0\r\nCSeq: 1\r\n\r\n")
    })
    .await
    .unwrap();
    assert_eq!(refused, "");
    // The stream's last report comes when it ends.
    let last = loop {
        let report = stats
            .recv_timeout(Duration::from_secs(5))
            .expect("a last report");
        if !report.active {
            break report;
        }
    };
    assert_eq!(last.stream, 1);
    // The connection that never completed a request and the one without a launch.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while streams.rtsp_tally().counters().dropped_connections < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(streams.rtsp_tally().counters().dropped_connections, 2);
}

#[test]
fn announced_settings_map_onto_the_encoder_and_bad_ones_are_refused() {
    let config = StreamConfig::parse(ANNOUNCE_H264_640.as_bytes()).unwrap();
    let params = session_params(&config).unwrap();
    assert_eq!((params.width, params.height), (640, 360));
    let mut odd = config.clone();
    odd.width = 641;
    assert!(session_params(&odd).is_err());
    let mut hevc = config;
    hevc.codec = VideoCodec::Hevc;
    hevc.audio_channels = 6;
    let params = session_params(&hevc).unwrap();
    assert_eq!(params.codec, ipc_media::VideoCodec::Hevc);
    assert_eq!(params.audio, AudioLayout::Surround51);
}

fn capabilities(codecs: &[ipc_media::VideoCodec], layouts: &[AudioLayout]) -> EncoderCapabilities {
    EncoderCapabilities {
        codecs: codecs.to_vec(),
        audio_layouts: layouts.to_vec(),
    }
}

#[test]
fn video_encryption_is_requested_by_default_and_only_offered_when_turned_off() {
    let h264 = capabilities(&[ipc_media::VideoCodec::H264], &[AudioLayout::Stereo]);
    let on = super::describe_params(true, &h264);
    assert_ne!(
        on.encryption_requested & lumen_core::rtsp::sdp::SS_ENC_VIDEO,
        0
    );
    let off = super::describe_params(false, &h264);
    assert_eq!(
        off.encryption_requested & lumen_core::rtsp::sdp::SS_ENC_VIDEO,
        0
    );
    assert_ne!(
        off.encryption_supported & lumen_core::rtsp::sdp::SS_ENC_VIDEO,
        0
    );
}

/// The DESCRIBE body lumen-net sends for what the encoder reported.
fn describe_for(encoder: &EncoderCapabilities) -> String {
    lumen_core::rtsp::describe_body(&super::describe_params(true, encoder)).unwrap()
}

/// The mapping moonlight-common-c derives from the first `surround-params=<channels>` line
/// (RtspConnection.c, parseOpusConfigurations): streams, coupled, then the mapping with its last
/// entry moved to index 3 (the GFE order FL FR C BL BR SL SR LFE back to FL FR C LFE BL BR SL SR).
fn client_reads(body: &str, channels: u8) -> Option<(u8, u8, Vec<u8>)> {
    let prefix = format!("a=fmtp:97 surround-params={channels}");
    let digits: Vec<u8> = body[body.find(&prefix)? + prefix.len()..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    let (&streams, rest) = digits.split_first()?;
    let (&coupled, rest) = rest.split_first()?;
    let mut mapping = rest.get(..usize::from(channels))?.to_vec();
    let lfe = mapping.pop()?;
    mapping.insert(3, lfe);
    Some((streams, coupled, mapping))
}

#[test]
fn describe_offers_only_the_codecs_the_encoder_reported() {
    use ipc_media::VideoCodec::{Av1, Hevc, H264};
    let h264 = describe_for(&capabilities(&[H264], &[AudioLayout::Stereo]));
    assert!(!h264.contains("sprop-parameter-sets=AAAAAU"), "{h264}");
    assert!(!h264.contains("AV1/90000"), "{h264}");
    assert!(!h264.contains("surround-params"), "{h264}");
    let hevc = describe_for(&capabilities(&[H264, Hevc], &[AudioLayout::Stereo]));
    assert!(hevc.contains("\nsprop-parameter-sets=AAAAAU\n"), "{hevc}");
    assert!(!hevc.contains("AV1/90000"), "{hevc}");
    // AV1 without HEVC (a host whose x265 is missing): only the AV1 marker.
    let av1 = describe_for(&capabilities(&[H264, Av1], &[AudioLayout::Stereo]));
    assert!(av1.contains("\na=rtpmap:98 AV1/90000\n"), "{av1}");
    assert!(!av1.contains("AAAAAU"), "{av1}");
    // Nothing reported yet: the client falls back to H.264, which the broker then refuses
    // until the encoder is up.
    let nothing = describe_for(&EncoderCapabilities::default());
    assert!(!nothing.contains("AAAAAU") && !nothing.contains("AV1/90000"));
}

#[test]
fn describe_offers_the_surround_layouts_the_encoder_reported_with_its_mapping() {
    use ipc_media::VideoCodec::H264;
    let only51 = describe_for(&capabilities(
        &[H264],
        &[AudioLayout::Stereo, AudioLayout::Surround51],
    ));
    // Sunshine's normal 5.1 line: identity coding, entry 3 (LFE) moved to the end.
    assert!(
        only51.contains("\na=fmtp:97 surround-params=642012453\n"),
        "{only51}"
    );
    assert!(!only51.contains("surround-params=8"), "{only51}");
    // One line per layout: a second one would offer a high-quality coding the encoder lacks.
    assert_eq!(only51.matches("surround-params=6").count(), 1, "{only51}");
    let both = describe_for(&capabilities(
        &[H264],
        &[
            AudioLayout::Stereo,
            AudioLayout::Surround51,
            AudioLayout::Surround71,
        ],
    ));
    assert!(
        both.contains("\na=fmtp:97 surround-params=85301245673\n"),
        "{both}"
    );
    // Read as the client reads it, each line gives back the coding the encoder uses.
    for layout in [AudioLayout::Surround51, AudioLayout::Surround71] {
        let coding = layout.opus_layout();
        let channels = usize::from(coding.channels);
        assert_eq!(
            client_reads(&both, coding.channels),
            Some((
                coding.streams,
                coding.coupled,
                coding.mapping[..channels].to_vec()
            )),
            "{layout:?}: {both}"
        );
    }
    let stereo = describe_for(&capabilities(&[H264], &[AudioLayout::Stereo]));
    assert_eq!(client_reads(&stereo, 6), None);
}
