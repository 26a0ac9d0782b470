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

/// A broker that answers StartStream and StopStream and reports each request.
fn broker() -> (Arc<BrokerLink>, mpsc::Receiver<NetRequest>) {
    let (seen_tx, seen) = mpsc::channel();
    let slot: Arc<Mutex<Option<Arc<BrokerLink>>>> = Arc::default();
    let link = BrokerLink::with_sender({
        let slot = slot.clone();
        move |msg| {
            let WorkerMsg::NetRequest { id, request } = msg else {
                return Err("not a request".into());
            };
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
    (link, seen)
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
    let (link, seen) = broker();
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

#[test]
fn video_encryption_is_requested_by_default_and_only_offered_when_turned_off() {
    let on = super::describe_params(true);
    assert_ne!(
        on.encryption_requested & lumen_core::rtsp::sdp::SS_ENC_VIDEO,
        0
    );
    let off = super::describe_params(false);
    assert_eq!(
        off.encryption_requested & lumen_core::rtsp::sdp::SS_ENC_VIDEO,
        0
    );
    assert_ne!(
        off.encryption_supported & lumen_core::rtsp::sdp::SS_ENC_VIDEO,
        0
    );
}
