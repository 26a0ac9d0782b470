//! The nvhttp endpoints (gamestream-protocol.md §2): routing by transport and path, every reply
//! an XML document (or the box-art PNG). Plain HTTP serves `/serverinfo`, `/pair` stages 1-4 and
//! `/unpair`; HTTPS serves everything, but only to a paired client certificate: any other gets
//! `status_code="401"` on every endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use lumen_core::nvhttp::{classify, LaunchError, LaunchParams, Listener, NvRequest, PairRequest};
use lumen_ipc::media::{EncoderCapabilities, VideoCodec};
use lumen_ipc::net_msg::{NetReply, NetRequest, PairReply, PairStage};

use super::launch;
use super::pairing;
use super::xml::Xml;
use super::Host;

/// Moonlight reads the protocol generation from this (7.x: SHA-256 pairing; 431: encrypted
/// control stream; a negative last field: a Sunshine host).
pub const APP_VERSION: &str = "7.1.431.-1";
/// What Sunshine reports; moonlight-qt checks the prefix (2.x blocks 4K).
const GFE_VERSION: &str = "3.23.0.74";
/// Largest HEVC picture the host encodes (Sunshine's value; 0 hides HEVC in moonlight-qt, which is
/// what the host reports when its encoder has no HEVC).
const MAX_LUMA_PIXELS_HEVC: u64 = 1_869_449_984;
/// `ServerCodecModeSupport` bits (`SCM_*` in moonlight-common-c's Limelight.h, protocol notes §2.3).
const SCM_H264: u32 = 0x1;
const SCM_HEVC: u32 = 0x100;
const SCM_AV1_MAIN8: u32 = 0x1_0000;

/// The `ServerCodecModeSupport` bitmask for the codecs lumen-encode reported (8-bit 4:2:0 only:
/// that is all it encodes). moonlight-qt offers a codec only if its bit is set, so this must follow
/// the same report DESCRIBE does. Never 0: moonlight-common-c refuses to start with 0, and before
/// the encoder has reported, H.264 (the software default) is the honest floor — a launch the
/// encoder cannot serve is still refused by the broker.
pub fn codec_mode_support(encoder: &EncoderCapabilities) -> u32 {
    encoder
        .codecs
        .iter()
        .fold(SCM_H264, |mask, codec| match codec {
            VideoCodec::H264 => mask | SCM_H264,
            VideoCodec::Hevc => mask | SCM_HEVC,
            VideoCodec::Av1 => mask | SCM_AV1_MAIN8,
        })
}

/// `MaxLumaPixelsHEVC`: Sunshine's limit when the encoder has HEVC, else 0.
fn max_luma_pixels_hevc(encoder: &EncoderCapabilities) -> u64 {
    if encoder.codecs.contains(&VideoCodec::Hevc) {
        MAX_LUMA_PIXELS_HEVC
    } else {
        0
    }
}
/// The one app: the desktop (moonlight-python picks apps by name and defaults to "Desktop").
pub const DESKTOP_ID: u32 = 1;
const DESKTOP_TITLE: &str = "Desktop";
/// The box art of every app.
const BOX_ART: &[u8] = include_bytes!("../../assets/box-art.png");
/// Stage 1 waits for `lumen-broker pair PIN` (the broker gives up after 60 s).
const PIN_STAGE_TIMEOUT: Duration = Duration::from_secs(75);
/// Any other broker request.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
const NOT_STREAMING: &str = "streaming has not started on this host yet (no LAN sockets for it)";

/// Which listener a request came in on, and for HTTPS who the client is.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Http,
    /// SHA-256 of the client certificate's DER, if it sent one.
    Https {
        client: Option<[u8; 32]>,
    },
}

/// Where the connection arrived (for `LocalIP`).
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub transport: Transport,
    pub local: Option<SocketAddr>,
}

/// A reply before it becomes an HTTP response.
pub enum Reply {
    Xml(Xml),
    /// An unknown path over plain HTTP: Sunshine's 404 handler is the one place with a non-200
    /// HTTP status.
    NotFound,
    Png(&'static [u8]),
}

/// hyper's entry point: never fails, never panics on a request.
pub async fn serve(
    host: Arc<Host>,
    conn: Conn,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = route(
        &host,
        conn,
        request.method(),
        request.uri().path(),
        request.uri().query(),
    )
    .await;
    host.tally.answered(match &reply {
        Reply::Xml(xml) => xml.status(),
        Reply::NotFound => 404,
        Reply::Png(_) => 200,
    });
    Ok(response(reply))
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let (status, body, kind) = match reply {
        Reply::Xml(xml) => (StatusCode::OK, xml.render().into_bytes(), "application/xml"),
        Reply::NotFound => (
            StatusCode::NOT_FOUND,
            Xml::error(404, "not found").render().into_bytes(),
            "application/xml",
        ),
        Reply::Png(png) => (StatusCode::OK, png.to_vec(), "image/png"),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// Decides the reply to one request: an HTTPS client must be paired, then lumen-core classifies
/// the request (a malformed one is a 400) and each endpoint answers.
pub async fn route(
    host: &Host,
    conn: Conn,
    method: &Method,
    path: &str,
    raw_query: Option<&str>,
) -> Reply {
    let listener = match conn.transport {
        Transport::Http => Listener::Http,
        Transport::Https { client } => {
            if !client.is_some_and(|sha| host.is_paired(&sha)) {
                return Reply::Xml(Xml::error(
                    401,
                    "The client is not authorized. Certificate verification failed.",
                ));
            }
            Listener::Https
        }
    };
    let request = match classify(method.as_str(), path, raw_query, listener) {
        Ok(request) => request,
        Err(e) => return Reply::Xml(Xml::error(400, &e.to_string())),
    };
    let https = listener == Listener::Https;
    let xml = match request {
        NvRequest::ServerInfo => serverinfo(host, conn),
        NvRequest::Pair(request) => pair(host, request, https).await,
        NvRequest::Unpair { uniqueid } => unpair(host, uniqueid).await,
        NvRequest::AppList => applist(),
        NvRequest::AppAsset { appid } => return appasset(appid),
        NvRequest::Launch { resume, params } => launch(host, conn, params, resume).await,
        NvRequest::Cancel => cancel(host).await,
        NvRequest::NotFound if https => Xml::error(404, "not found"),
        NvRequest::NotFound => return Reply::NotFound,
    };
    Reply::Xml(xml)
}

fn serverinfo(host: &Host, conn: Conn) -> Xml {
    let Some(identity) = host.identity() else {
        return Xml::error(
            503,
            "the host identity has not arrived from lumen-broker yet",
        );
    };
    let paired = matches!(conn.transport, Transport::Https { client: Some(_) });
    let current_game = host.streams().map_or(0, |s| s.current_game());
    let state = if current_game == 0 {
        "SUNSHINE_SERVER_FREE"
    } else {
        "SUNSHINE_SERVER_BUSY"
    };
    // Moonlight ignores 127.x; Sunshine reports 127.0.0.1 to IPv6 requests too.
    let local_ip = match conn.local {
        Some(SocketAddr::V4(addr)) => addr.ip().to_string(),
        _ => "127.0.0.1".to_string(),
    };
    Xml::ok()
        .field("hostname", &host.hostname)
        .field("appversion", APP_VERSION)
        .field("GfeVersion", GFE_VERSION)
        .field("uniqueid", &identity.uniqueid)
        .field("HttpsPort", host.https_port)
        .field("ExternalPort", host.http_port)
        .field("MaxLumaPixelsHEVC", max_luma_pixels_hevc(&identity.encoder))
        // lumen-net cannot read interface addresses; the all-zero MAC means "unknown" (no WoL).
        .field("mac", "00:00:00:00:00:00")
        .field("LocalIP", local_ip)
        .field(
            "ServerCodecModeSupport",
            codec_mode_support(&identity.encoder),
        )
        .field("PairStatus", u8::from(paired))
        .field("currentgame", current_game)
        .field("state", state)
}

/// `/launch` and `/resume` (§2.5): both arm a fresh RTSP session with the client's keys (a
/// resumed stream restarts capture and encode, which costs one IDR).
async fn launch(
    host: &Host,
    conn: Conn,
    params: Result<LaunchParams, LaunchError>,
    resume: bool,
) -> Xml {
    let Some(streams) = host.streams() else {
        return Xml::error(503, NOT_STREAMING);
    };
    let request = match params
        .map_err(|e| e.to_string())
        .and_then(|params| launch::request(&params))
    {
        Ok(request) => request,
        Err(why) => return Xml::error(400, &why),
    };
    if resume && streams.current_game() == 0 {
        return Xml::error(503, "nothing is running to resume");
    }
    // The client dials the address it reached us on (Sunshine does the same); an IPv4 client of
    // a dual-stack listener is given its IPv4 form.
    let local = conn
        .local
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| {
            a.ip().to_canonical()
        });
    match streams.launch(request, local).await {
        Ok(url) => {
            let xml = Xml::ok().field("sessionUrl0", url);
            if resume {
                xml.field("resume", 1)
            } else {
                xml.field("gamesession", 1)
            }
        }
        Err(e) => {
            eprintln!("lumen-net: launch: {e}");
            Xml::error(500, "the stream could not be prepared")
        }
    }
}

async fn cancel(host: &Host) -> Xml {
    if let Some(streams) = host.streams() {
        streams.cancel().await;
    }
    Xml::ok().field("cancel", 1)
}

async fn pair(host: &Host, request: PairRequest, https: bool) -> Xml {
    let (uniqueid, stage) = match request {
        // Stage 5 reaches here only through the 401 check: the certificate is paired.
        PairRequest::Challenge => return Xml::ok().field("paired", u8::from(https)),
        PairRequest::Stage { uniqueid, stage } => (uniqueid, stage),
    };
    let timeout = if matches!(stage, PairStage::GetServerCert { .. }) {
        PIN_STAGE_TIMEOUT
    } else {
        BROKER_TIMEOUT
    };
    broker_pair(host, uniqueid, stage, timeout).await
}

async fn unpair(host: &Host, uniqueid: Option<String>) -> Xml {
    // Clients call /unpair when pairing failed on their side (a wrong PIN): the broker ends that
    // attempt. Paired clients are forgotten only by `lumen-broker unpair`, never from the LAN.
    match uniqueid {
        Some(uniqueid) => broker_pair(host, uniqueid, PairStage::Abort, BROKER_TIMEOUT).await,
        None => Xml::ok(),
    }
}

async fn broker_pair(host: &Host, uniqueid: String, stage: PairStage, timeout: Duration) -> Xml {
    let request = NetRequest::Pair {
        client_uniqueid: uniqueid,
        stage,
    };
    match host.link.request(request, timeout).await {
        Ok(NetReply::Pair(reply)) => {
            if let PairReply::Failed(why) | PairReply::OutOfOrder(why) = &reply {
                eprintln!("lumen-net: pairing: {why}");
            }
            pairing::reply_xml(&reply)
        }
        Ok(NetReply::Refused(why)) => {
            eprintln!("lumen-net: the broker refused a pairing request: {why}");
            Xml::error(400, "pairing request refused")
        }
        Ok(other) => {
            eprintln!("lumen-net: the broker answered a pairing request with {other:?}");
            Xml::error(500, "unexpected answer from the host")
        }
        Err(e) => {
            eprintln!("lumen-net: pairing: {e}");
            Xml::error(503, "the host did not answer")
        }
    }
}

fn applist() -> Xml {
    Xml::ok().element(
        "App",
        &[
            ("IsHdrSupported", "0".into()),
            ("AppTitle", DESKTOP_TITLE.into()),
            ("ID", DESKTOP_ID.to_string()),
        ],
    )
}

fn appasset(appid: u32) -> Reply {
    if appid == DESKTOP_ID {
        Reply::Png(BOX_ART)
    } else {
        Reply::Xml(Xml::error(404, "no such app"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker_link::BrokerLink;
    use lumen_ipc::msg::WorkerMsg;
    use lumen_ipc::net_msg::NetIdentity;

    const PAIRED: [u8; 32] = [7; 32];

    /// A host whose "broker" answers every pairing stage with `answer`.
    fn host(answer: PairReply) -> Arc<Host> {
        let link_slot: Arc<std::sync::Mutex<Option<Arc<BrokerLink>>>> = Default::default();
        let link = BrokerLink::with_sender({
            let link_slot = link_slot.clone();
            move |msg| {
                let WorkerMsg::NetRequest { id, .. } = msg else {
                    return Err("not a request".into());
                };
                let link = link_slot.lock().unwrap().clone().unwrap();
                let answer = answer.clone();
                std::thread::spawn(move || link.complete(id, NetReply::Pair(answer)));
                Ok(())
            }
        });
        *link_slot.lock().unwrap() = Some(link.clone());
        let host = Host::new(link, "box".into(), 47989, 47984);
        host.set_identity(&NetIdentity {
            uniqueid: "00112233AABBCCDD".into(),
            cert_pem: pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2, 3])),
            paired_sha256: vec![PAIRED],
            encrypt_video: true,
            encoder: EncoderCapabilities {
                codecs: vec![VideoCodec::H264, VideoCodec::Hevc],
                audio_layouts: Vec::new(),
            },
        })
        .unwrap();
        Arc::new(host)
    }

    fn http() -> Conn {
        Conn {
            transport: Transport::Http,
            local: Some("192.168.1.5:47989".parse().unwrap()),
        }
    }

    fn https(client: Option<[u8; 32]>) -> Conn {
        Conn {
            transport: Transport::Https { client },
            local: None,
        }
    }

    async fn xml(host: &Host, conn: Conn, path: &str, query: &str) -> String {
        match route(host, conn, &Method::GET, path, Some(query)).await {
            Reply::Xml(xml) => xml.render(),
            Reply::NotFound => "404".into(),
            Reply::Png(_) => "png".into(),
        }
    }

    #[tokio::test]
    async fn serverinfo_has_every_field_moonlight_reads() {
        let host = host(PairReply::Paired);
        let info = xml(
            &host,
            http(),
            "/serverinfo",
            "uniqueid=0123456789ABCDEF&uuid=1&&corever=1",
        )
        .await;
        for field in [
            "<hostname>box</hostname>",
            "<appversion>7.1.431.-1</appversion>",
            "<GfeVersion>3.23.0.74</GfeVersion>",
            "<uniqueid>00112233AABBCCDD</uniqueid>",
            "<HttpsPort>47984</HttpsPort>",
            "<ExternalPort>47989</ExternalPort>",
            "<MaxLumaPixelsHEVC>1869449984</MaxLumaPixelsHEVC>",
            "<mac>00:00:00:00:00:00</mac>",
            "<LocalIP>192.168.1.5</LocalIP>",
            "<ServerCodecModeSupport>257</ServerCodecModeSupport>",
            "<PairStatus>0</PairStatus>",
            "<currentgame>0</currentgame>",
            "<state>SUNSHINE_SERVER_FREE</state>",
        ] {
            assert!(info.contains(field), "{field} missing from {info}");
        }
        assert!(info.contains("status_code=\"200\""));
        let paired = xml(&host, https(Some(PAIRED)), "/serverinfo", "").await;
        assert!(paired.contains("<PairStatus>1</PairStatus>"), "{paired}");
        assert!(paired.contains("<LocalIP>127.0.0.1</LocalIP>"), "{paired}");
    }

    #[test]
    fn codec_bits_follow_the_encoder_report() {
        let report = |codecs: &[VideoCodec]| EncoderCapabilities {
            codecs: codecs.to_vec(),
            audio_layouts: Vec::new(),
        };
        assert_eq!(codec_mode_support(&report(&[VideoCodec::H264])), 0x1);
        assert_eq!(
            codec_mode_support(&report(&[
                VideoCodec::H264,
                VideoCodec::Hevc,
                VideoCodec::Av1
            ])),
            0x1_0101
        );
        // Never 0, even before the encoder has reported.
        assert_eq!(codec_mode_support(&report(&[])), 0x1);
        assert_eq!(max_luma_pixels_hevc(&report(&[VideoCodec::Av1])), 0);
        assert_eq!(
            max_luma_pixels_hevc(&report(&[VideoCodec::Hevc])),
            MAX_LUMA_PIXELS_HEVC
        );
    }

    #[tokio::test]
    async fn unpaired_certificates_get_401_everywhere_over_https() {
        let host = host(PairReply::Paired);
        for path in [
            "/serverinfo",
            "/applist",
            "/appasset",
            "/launch",
            "/resume",
            "/cancel",
            "/pair",
            "/unpair",
            "/nonsense",
        ] {
            for client in [None, Some([8; 32])] {
                let reply = xml(&host, https(client), path, "phrase=pairchallenge&appid=1").await;
                assert!(reply.contains("status_code=\"401\""), "{path}: {reply}");
            }
        }
    }

    #[tokio::test]
    async fn paired_clients_get_apps_box_art_and_stage_5() {
        let host = host(PairReply::Paired);
        let apps = xml(&host, https(Some(PAIRED)), "/applist", "uniqueid=x").await;
        assert!(
            apps.contains("<App><IsHdrSupported>0</IsHdrSupported><AppTitle>Desktop</AppTitle><ID>1</ID></App>"),
            "{apps}"
        );
        assert_eq!(
            xml(
                &host,
                https(Some(PAIRED)),
                "/appasset",
                "appid=1&AssetType=2&AssetIdx=0"
            )
            .await,
            "png"
        );
        assert!(BOX_ART.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(xml(&host, https(Some(PAIRED)), "/appasset", "appid=2")
            .await
            .contains("\"404\""));
        assert!(xml(&host, https(Some(PAIRED)), "/appasset", "appid=x")
            .await
            .contains("\"400\""));
        let stage5 = xml(
            &host,
            https(Some(PAIRED)),
            "/pair",
            "uniqueid=a&phrase=pairchallenge",
        )
        .await;
        assert!(stage5.contains("<paired>1</paired>"), "{stage5}");
        // Over plain HTTP stage 5 proves nothing.
        let plain = xml(&host, http(), "/pair", "uniqueid=a&phrase=pairchallenge").await;
        assert!(plain.contains("<paired>0</paired>"), "{plain}");
        // Without the streaming sockets a launch is refused by name; there is nothing to cancel.
        for path in ["/launch", "/resume"] {
            let reply = xml(&host, https(Some(PAIRED)), path, "appid=1").await;
            assert!(
                reply.contains("status_code=\"503\"")
                    && reply.contains("streaming has not started"),
                "{reply}"
            );
        }
        let cancel = xml(&host, https(Some(PAIRED)), "/cancel", "").await;
        assert!(cancel.contains("<cancel>1</cancel>"), "{cancel}");
    }

    #[tokio::test]
    async fn http_serves_pairing_only_and_refuses_malformed_requests() {
        let host = host(PairReply::ChallengeResponse(vec![0xab; 48]));
        let stage2 = xml(
            &host,
            http(),
            "/pair",
            &format!("uniqueid=a&clientchallenge={}", "00".repeat(16)),
        )
        .await;
        assert!(
            stage2.contains(&format!(
                "<challengeresponse>{}</challengeresponse>",
                "ab".repeat(48)
            )),
            "{stage2}"
        );
        assert_eq!(xml(&host, http(), "/applist", "").await, "404");
        assert_eq!(xml(&host, http(), "/launch", "").await, "404");
        assert!(
            xml(&host, http(), "/pair", "uniqueid=a&clientchallenge=%zz")
                .await
                .contains("\"400\"")
        );
        assert!(xml(&host, http(), "/pair", "clientchallenge=00")
            .await
            .contains("\"400\""));
        let post = route(&host, http(), &Method::POST, "/serverinfo", None).await;
        assert!(matches!(post, Reply::Xml(ref x) if x.status() == 400));
        let unpair = xml(&host, http(), "/unpair", "uniqueid=a").await;
        assert!(unpair.contains("status_code=\"200\""), "{unpair}");
    }

    /// A host whose streaming side runs on loopback sockets (the broker is never asked: no
    /// stream starts without RTSP).
    fn streaming_host() -> (Arc<Host>, u16) {
        use crate::stream::{Ports, StreamSockets, Streams};
        let host = host(PairReply::Paired);
        let udp = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (video, audio, control) = (udp(), udp(), udp());
        let ports = Ports {
            rtsp: 48010,
            video: video.local_addr().unwrap().port(),
            audio: audio.local_addr().unwrap().port(),
            control: control.local_addr().unwrap().port(),
        };
        let streams = Streams::start(
            ports,
            StreamSockets {
                video: video.into(),
                audio: audio.into(),
                control: control.into(),
            },
            BrokerLink::with_sender(|_| Ok(())),
        )
        .unwrap();
        host.set_streams(streams);
        (host, ports.rtsp)
    }

    #[tokio::test]
    async fn launch_resume_and_cancel_drive_currentgame_and_answer_session_urls() {
        let (host, rtsp) = streaming_host();
        let local = Conn {
            transport: Transport::Https {
                client: Some(PAIRED),
            },
            local: Some("192.168.1.5:47984".parse().unwrap()),
        };
        let key = "00112233445566778899aabbccddeeff";
        let resume = xml(&host, local, "/resume", &format!("rikey={key}&rikeyid=1")).await;
        assert!(
            resume.contains("status_code=\"503\""),
            "nothing to resume: {resume}"
        );
        for bad in ["appid=1&rikeyid=1", "appid=9&rikey=00&rikeyid=1"] {
            let reply = xml(&host, local, "/launch", bad).await;
            assert!(reply.contains("status_code=\"400\""), "{bad}: {reply}");
        }
        let launch = xml(
            &host,
            local,
            "/launch",
            &format!("appid=1&mode=640x360x30&rikey={key}&rikeyid=-559038737&corever=1"),
        )
        .await;
        assert!(
            launch.contains(&format!(
                "<sessionUrl0>rtspenc://192.168.1.5:{rtsp}</sessionUrl0>"
            )) && launch.contains("<gamesession>1</gamesession>"),
            "{launch}"
        );
        let info = xml(&host, local, "/serverinfo", "").await;
        assert!(
            info.contains("<currentgame>1</currentgame>")
                && info.contains("<state>SUNSHINE_SERVER_BUSY</state>"),
            "{info}"
        );
        // Without corever the client speaks plaintext RTSP.
        let resume = xml(&host, local, "/resume", &format!("rikey={key}&rikeyid=1")).await;
        assert!(
            resume.contains(&format!(
                "<sessionUrl0>rtsp://192.168.1.5:{rtsp}</sessionUrl0>"
            )) && resume.contains("<resume>1</resume>"),
            "{resume}"
        );
        let mapped = Conn {
            local: Some("[::ffff:10.0.0.2]:47984".parse().unwrap()),
            ..local
        };
        let resume = xml(&host, mapped, "/resume", &format!("rikey={key}&rikeyid=1")).await;
        assert!(
            resume.contains(&format!(
                "<sessionUrl0>rtsp://10.0.0.2:{rtsp}</sessionUrl0>"
            )),
            "{resume}"
        );
        let cancel = xml(&host, local, "/cancel", "").await;
        assert!(cancel.contains("<cancel>1</cancel>"), "{cancel}");
        let info = xml(&host, local, "/serverinfo", "").await;
        assert!(
            info.contains("<currentgame>0</currentgame>")
                && info.contains("<state>SUNSHINE_SERVER_FREE</state>"),
            "{info}"
        );
    }
}
