//! What moonlight-common-c (snapshot 874ac954) sends and how it reads replies, rebuilt by hand from
//! its `RtspConnection.c`, `RtspParser.c` and `SdpGenerator.c` for appversion 7.1.431.-1 (a Sunshine
//! host) over TCP. These literals are independent of lumen's serializers on purpose: they are what
//! the tests hold lumen's parsers to.
#![allow(dead_code)]

/// The session id Sunshine uses (and the tests' host).
pub const SESSION: &str = "DEADBEEFCAFE";
/// `rtspTargetUrl` when the client does not ask for high-quality audio.
pub const URL: &str = "rtsp://0.0.0.0:48010";

/// ANNOUNCE body of a 1080p60 HEVC stereo stream at a user bitrate of 20 Mbps on the LAN: the host
/// supported control v2 and audio encryption (`encryptionSupported:5`), the client opted into audio
/// encryption, its decoder has no RFI. Attribute order and values follow `getAttributesList`.
pub const ANNOUNCE_HEVC_STEREO: &str = "v=0\r\n\
o=android 0 14 IN IPv4 192.168.1.10\r\n\
s=NVIDIA Streaming Client\r\n\
a=x-ml-general.featureFlags:3 \r\n\
a=x-ss-general.encryptionEnabled:5 \r\n\
a=x-ss-video[0].chromaSamplingType:0 \r\n\
a=x-nv-video[0].clientViewportWd:1920 \r\n\
a=x-nv-video[0].clientViewportHt:1080 \r\n\
a=x-nv-video[0].maxFPS:60 \r\n\
a=x-nv-video[0].packetSize:1392 \r\n\
a=x-nv-video[0].rateControlMode:4 \r\n\
a=x-nv-video[0].timeoutLengthMs:7000 \r\n\
a=x-nv-video[0].framesWithInvalidRefThreshold:0 \r\n\
a=x-nv-video[0].initialBitrateKbps:16000 \r\n\
a=x-nv-video[0].initialPeakBitrateKbps:16000 \r\n\
a=x-nv-vqos[0].bw.minimumBitrateKbps:16000 \r\n\
a=x-nv-vqos[0].bw.maximumBitrateKbps:16000 \r\n\
a=x-ml-video.configuredBitrateKbps:20000 \r\n\
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
a=x-nv-clientSupportHevc:1 \r\n\
a=x-nv-vqos[0].bitStreamFormat:1 \r\n\
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

/// ANNOUNCE body of a 4K120 AV1 HDR 4:4:4 stream with 5.1 high-quality audio, video encryption on
/// (so `packetSize` is 1392 − 32), a decoder with RFI, remote QoS off, 10 ms audio packets not
/// possible here (high quality forces 5 ms).
pub const ANNOUNCE_AV1_SURROUND: &str = "v=0\r\n\
o=android 0 14 IN IPv4 192.168.1.10\r\n\
s=NVIDIA Streaming Client\r\n\
a=x-ml-general.featureFlags:3 \r\n\
a=x-ss-general.encryptionEnabled:7 \r\n\
a=x-ss-video[0].chromaSamplingType:1 \r\n\
a=x-nv-video[0].clientViewportWd:3840 \r\n\
a=x-nv-video[0].clientViewportHt:2160 \r\n\
a=x-nv-video[0].maxFPS:120 \r\n\
a=x-nv-video[0].packetSize:1360 \r\n\
a=x-nv-video[0].rateControlMode:4 \r\n\
a=x-nv-video[0].timeoutLengthMs:7000 \r\n\
a=x-nv-video[0].framesWithInvalidRefThreshold:0 \r\n\
a=x-nv-video[0].initialBitrateKbps:100000 \r\n\
a=x-nv-video[0].initialPeakBitrateKbps:100000 \r\n\
a=x-nv-vqos[0].bw.minimumBitrateKbps:100000 \r\n\
a=x-nv-vqos[0].bw.maximumBitrateKbps:100000 \r\n\
a=x-ml-video.configuredBitrateKbps:150000 \r\n\
a=x-nv-vqos[0].fec.enable:1 \r\n\
a=x-nv-vqos[0].videoQualityScoreUpdateTime:5000 \r\n\
a=x-nv-vqos[0].qosTrafficType:0 \r\n\
a=x-nv-aqos.qosTrafficType:0 \r\n\
a=x-nv-general.featureFlags:167 \r\n\
a=x-nv-general.useReliableUdp:13 \r\n\
a=x-nv-vqos[0].fec.minRequiredFecPackets:2 \r\n\
a=x-nv-vqos[0].bllFec.enable:0 \r\n\
a=x-nv-vqos[0].drc.enable:0 \r\n\
a=x-nv-general.enableRecoveryMode:0 \r\n\
a=x-nv-video[0].videoEncoderSlicesPerFrame:1 \r\n\
a=x-nv-vqos[0].bitStreamFormat:2 \r\n\
a=x-nv-video[0].dynamicRangeMode:1 \r\n\
a=x-nv-video[0].maxNumReferenceFrames:0 \r\n\
a=x-nv-video[0].clientRefreshRateX100:11988 \r\n\
a=x-nv-audio.surround.numChannels:6 \r\n\
a=x-nv-audio.surround.channelMask:63 \r\n\
a=x-nv-audio.surround.enable:1 \r\n\
a=x-nv-audio.surround.AudioQuality:1 \r\n\
a=x-nv-aqos.packetDuration:5 \r\n\
a=x-nv-video[0].encoderCscMode:5 \r\n\
t=0 0\r\n\
m=video 47998  \r\n";

/// The seven requests of a handshake, in order, as `serializeRtspMessage` writes them: options in
/// insertion order (CSeq, X-GS-ClientVersion, Host first), `Name: value\r\n`, a blank line, the body.
pub fn handshake(announce_body: &str) -> Vec<Vec<u8>> {
    let common = |cseq: u32| format!("CSeq: {cseq}\r\nX-GS-ClientVersion: 14\r\nHost: 0.0.0.0\r\n");
    let ims = "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n";
    let transport = "Transport: unicast;X-GS-ClientPort=50000-50001\r\n";
    vec![
        format!("OPTIONS {URL} RTSP/1.0\r\n{}\r\n", common(1)),
        format!(
            "DESCRIBE {URL} RTSP/1.0\r\n{}Accept: application/sdp\r\n{ims}\r\n",
            common(2)
        ),
        format!(
            "SETUP streamid=audio/0/0 RTSP/1.0\r\n{}{transport}{ims}\r\n",
            common(3)
        ),
        format!(
            "SETUP streamid=video/0/0 RTSP/1.0\r\n{}Session: {SESSION}\r\n{transport}{ims}\r\n",
            common(4)
        ),
        format!(
            "SETUP streamid=control/13/0 RTSP/1.0\r\n{}Session: {SESSION}\r\n{transport}{ims}\r\n",
            common(5)
        ),
        format!(
            "ANNOUNCE streamid=control/13/0 RTSP/1.0\r\n{}Session: {SESSION}\r\n\
             Content-type: application/sdp\r\nContent-length: {}\r\n\r\n{announce_body}",
            common(6),
            announce_body.len()
        ),
        format!("PLAY / RTSP/1.0\r\n{}Session: {SESSION}\r\n\r\n", common(7)),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// `parseServerPortFromTransport`: the number after `server_port=`, 1..=65535.
pub fn server_port(transport: &str) -> Option<u16> {
    let at = transport.find("server_port=")? + "server_port=".len();
    let digits: String = transport[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|&p| p != 0)
}

/// One Opus coding as the client reads it: (streams, coupled streams, mapping).
pub type OpusCoding = (u8, u8, Vec<u8>);

/// `parseOpusConfigurations` for `channels` 6 or 8: the (streams, coupled, mapping) of the normal and
/// (if a second line exists) high-quality codings, after the client's GFE shift of the normal one.
pub fn surround_configs(body: &str, channels: u8) -> Option<(OpusCoding, Option<OpusCoding>)> {
    let prefix = format!("a=fmtp:97 surround-params={channels}");
    let parse = |s: &str| -> Option<OpusCoding> {
        let d: Vec<u8> = s
            .bytes()
            .take(2 + usize::from(channels))
            .map(|b| b.wrapping_sub(b'0'))
            .collect();
        if d.len() != 2 + usize::from(channels) || d.iter().any(|&x| x > 9) {
            return None;
        }
        Some((d[0], d[1], d[2..].to_vec()))
    };
    let first = body.find(&prefix)? + prefix.len();
    let (s, k, mut mapping) = parse(&body[first..])?;
    // "LFE comes after C": the last entry moves to index 3, the rest slide up.
    let last = mapping.pop()?;
    mapping.insert(3, last);
    let high = body[first..]
        .find(&prefix)
        .and_then(|at| parse(&body[first + at + prefix.len()..]));
    Some(((s, k, mapping), high))
}
