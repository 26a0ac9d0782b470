//! What `lumen-net` asks of the broker, and what the broker tells it: the secrets stay in the
//! broker (DESIGN: "net asks the broker for TLS handshake signatures and for each pairing step's
//! crypto"), so every operation that needs the host key or the PIN is a request here.
//!
//! Requests travel as `WorkerMsg::NetRequest { id, request }` and are answered by
//! `BrokerMsg::NetReply { id, reply }` with the same `id`; the broker answers every request it
//! accepts exactly once, in any order. Only `lumen-net` may send them, and the broker checks every
//! request with [`NetRequest::validate`] before acting on it (a worker is never trusted).

use serde::{Deserialize, Serialize};

/// The largest message a TLS signature request may carry (a TLS 1.3 CertificateVerify input is
/// ~130 bytes, a TLS 1.2 ServerKeyExchange a few hundred).
pub const MAX_SIGN_INPUT: usize = 4096;
/// Longest client `uniqueid` accepted (Moonlight sends 16 hex digits).
pub const MAX_UNIQUEID: usize = 64;
/// Longest client certificate PEM accepted at pairing (an RSA-4096 certificate is ~2 KiB).
pub const MAX_CLIENT_CERT_PEM: usize = 8192;
/// Longest device name kept from a pairing request.
pub const MAX_DEVICE_NAME: usize = 64;
/// Longest client signature over its pairing secret (RSA-4096 is 512 bytes).
pub const MAX_CLIENT_SIGNATURE: usize = 512;

/// A request from `lumen-net`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NetRequest {
    /// Sign `message` with the host key for a TLS handshake. `scheme` is the TLS
    /// SignatureScheme code point (0x0804 rsa_pss_rsae_sha256 or 0x0401 rsa_pkcs1_sha256).
    TlsSign { scheme: u16, message: Vec<u8> },
    /// One stage of GameStream pairing (`/pair` over HTTP) for the client that calls itself
    /// `client_uniqueid`. The broker keeps the pairing state per uniqueid.
    Pair {
        client_uniqueid: String,
        stage: PairStage,
    },
    /// A paired client's stream was negotiated (RTSP ANNOUNCE): start capture and encode for it.
    /// The broker answers `StreamStarting` and then sends `BrokerMsg::StreamRings` with the
    /// consumer's ends (again after every capture/encode restart, with a new generation).
    StartStream { params: crate::media::SessionParams },
    /// The stream ended (client quit, `/cancel`, or the connection died): stop capture and
    /// encode. Answered `StreamStopped`.
    StopStream,
}

/// The inputs of one pairing stage, already hex-decoded by `lumen-net`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PairStage {
    /// Stage 1, `phrase=getservercert`: the client's salt and certificate. Waits until the user
    /// offers a PIN (`lumen-broker pair PIN`).
    GetServerCert {
        salt: [u8; 16],
        client_cert_pem: String,
        device_name: String,
    },
    /// Stage 2, `clientchallenge`: the client's challenge, AES-ECB encrypted.
    ClientChallenge { challenge: [u8; 16] },
    /// Stage 3, `serverchallengeresp`: the client's hash, AES-ECB encrypted.
    ServerChallengeResp { response: [u8; 32] },
    /// Stage 4, `clientpairingsecret`: the client's secret and its signature over it.
    ClientPairingSecret {
        secret: [u8; 16],
        signature: Vec<u8>,
    },
    /// `/unpair` (clients call it when pairing fails on their side, e.g. a wrong PIN): ends any
    /// attempt of this uniqueid.
    Abort,
}

/// The broker's answer to a pairing stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PairReply {
    /// Stage 1: the host certificate (PEM), sent to the client as `plaincert`.
    ServerCert { cert_pem: String },
    /// Stage 1: another attempt of this uniqueid is in progress (the reply carries no
    /// `plaincert`, which clients read as "already pairing").
    AlreadyPairing,
    /// Stage 2: `challengeresponse` (48 bytes with SHA-256).
    ChallengeResponse(Vec<u8>),
    /// Stage 3: `pairingsecret` (server secret followed by the host's signature over it).
    PairingSecret(Vec<u8>),
    /// Stage 4 succeeded: the client is paired. The broker pushes the new `NetIdentity` before
    /// this reply, so the client's certificate is pinned when net sees it.
    Paired,
    /// `Abort` was taken.
    Aborted,
    /// The stage failed and the attempt is over (`<paired>0</paired>`); why, for logs.
    Failed(String),
    /// A stage with no attempt in progress, or not the one due: the attempt (if any) is over.
    /// Answered like Sunshine: `status_code="400"` with `<paired>0</paired>`.
    OutOfOrder(String),
}

/// The broker's answer to a [`NetRequest`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NetReply {
    /// The signature asked for by `TlsSign`.
    Signature(Vec<u8>),
    /// The answer to a `Pair` stage.
    Pair(PairReply),
    /// The stream is starting under `generation`; its rings follow in `BrokerMsg::StreamRings`.
    StreamStarting { generation: u64 },
    /// The stream was stopped (or none was running).
    StreamStopped,
    /// The request was refused, and why (shown in logs; never a secret).
    Refused(String),
}

/// What the broker tells `lumen-net` after each `Ready` and whenever it changes: the host's public
/// identity, which client certificates are paired (net pins them in the TLS handshake), and what
/// the encoder can produce.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetIdentity {
    /// The host's uniqueid (`/serverinfo`).
    pub uniqueid: String,
    /// The host certificate, PEM (public).
    pub cert_pem: String,
    /// SHA-256 of the DER of every paired client certificate.
    pub paired_sha256: Vec<[u8; 32]>,
    /// Insist on video encryption (`SS_ENC_VIDEO` requested in DESCRIBE): the default, since the
    /// host faces untrusted networks; the user may turn it off on a trusted LAN
    /// (`[stream] encrypt_video = false`).
    pub encrypt_video: bool,
    /// What lumen-encode reported it can produce (empty until it has): DESCRIBE offers HEVC, AV1
    /// and the surround layouts only when they are here. Sent again whenever a (restarted)
    /// encoder reports.
    pub encoder: crate::media::EncoderCapabilities,
}

/// Whether `id` is a client uniqueid the broker keeps state under: 1..=[`MAX_UNIQUEID`] ASCII
/// letters, digits, `-` or `_`.
pub fn valid_uniqueid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_UNIQUEID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl NetRequest {
    /// Checks every length and string of the request; the broker refuses what fails.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            NetRequest::StartStream { params } => params.validate(),
            NetRequest::StopStream => Ok(()),
            NetRequest::TlsSign { message, .. } => {
                if message.len() > MAX_SIGN_INPUT {
                    return Err(format!(
                        "TLS signature input of {} bytes (at most {MAX_SIGN_INPUT})",
                        message.len()
                    ));
                }
                Ok(())
            }
            NetRequest::Pair {
                client_uniqueid,
                stage,
            } => {
                if !valid_uniqueid(client_uniqueid) {
                    return Err("pairing request with a malformed client uniqueid".into());
                }
                match stage {
                    PairStage::GetServerCert {
                        client_cert_pem,
                        device_name,
                        ..
                    } => {
                        if client_cert_pem.len() > MAX_CLIENT_CERT_PEM {
                            return Err(format!(
                                "client certificate of {} bytes (at most {MAX_CLIENT_CERT_PEM})",
                                client_cert_pem.len()
                            ));
                        }
                        if device_name.len() > MAX_DEVICE_NAME
                            || device_name.chars().any(char::is_control)
                        {
                            return Err("malformed device name".into());
                        }
                        Ok(())
                    }
                    PairStage::ClientPairingSecret { signature, .. } => {
                        if signature.is_empty() || signature.len() > MAX_CLIENT_SIGNATURE {
                            return Err(format!(
                                "client signature of {} bytes (1..={MAX_CLIENT_SIGNATURE})",
                                signature.len()
                            ));
                        }
                        Ok(())
                    }
                    PairStage::ClientChallenge { .. }
                    | PairStage::ServerChallengeResp { .. }
                    | PairStage::Abort => Ok(()),
                }
            }
        }
    }
}

/// `lumen-net`'s statistics of one stream (`WorkerMsg::NetStats`): sent about once a second while
/// the stream runs and once more, with `active: false`, when it ends. Plain counters: the broker
/// shows them and adds them up, and decides nothing on them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// lumen-net's number of the stream (1, 2, … within one lumen-net process).
    pub stream: u64,
    /// False in the last report of the stream.
    pub active: bool,
    /// What this stream saw, since it started.
    pub counters: NetCounters,
    /// The RTSP listener, since this lumen-net started (it serves every launch).
    pub rtsp: RtspCounters,
    /// The HTTP and HTTPS (nvhttp) listeners, since this lumen-net started.
    pub http: HttpCounters,
}

/// The counters of one stream: the control stream, the client's FEC reports, the senders.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Control: IDR requests from the client (0x0302).
    pub idr_requests: u64,
    /// Control: reference-frame invalidations (0x0301), answered with an IDR.
    pub rfi_requests: u64,
    /// Control: periodic pings.
    pub pings: u64,
    /// Control: loss reports (0x0201).
    pub loss_reports: u64,
    /// Control: input packets (0x0206).
    pub input_packets: u64,
    /// Control: packets that failed authentication or parsing (dropped).
    pub rejected_control: u64,
    /// Control: ENet peers turned away (wrong connect data, or a second client).
    pub refused_control_peers: u64,
    /// Control: datagrams on the control port from any address but the connected client's
    /// (ENet drops what is not a valid command; none of them reach the stream).
    pub control_foreign_datagrams: u64,
    /// Input events that did not decode or were out of range (dropped).
    pub input_invalid: u64,
    /// Valid input events not delivered to lumen-input (no channel, or a full one).
    pub input_dropped: u64,
    /// The client's frame FEC reports (0x5502), each about one FEC block.
    pub fec_reports: u64,
    /// Reports of a block the client rebuilt from parity (data shards were missing).
    pub fec_recovered_frames: u64,
    /// Data shards the client rebuilt from parity, summed over those reports.
    pub fec_repaired_shards: u64,
    /// Reports of a block the client gave up on (too few shards arrived).
    pub frames_lost: u64,
    /// Video frames sent.
    pub frames_sent: u64,
    /// Video datagrams sent (data and parity).
    pub video_datagrams: u64,
    /// Video bytes sent (UDP payload).
    pub video_bytes: u64,
    /// Video frames read but not sent (no client yet, or waiting for a keyframe).
    pub frames_skipped: u64,
    /// Video records the encoder dropped because the ring was full.
    pub video_ring_drops: u64,
    /// Video records marked as a discontinuity.
    pub video_discontinuities: u64,
    /// Video frames the packetizer refused.
    pub packetize_errors: u64,
    /// Opus packets sent.
    pub audio_packets: u64,
    /// Audio datagrams sent (data and FEC).
    pub audio_datagrams: u64,
    /// Audio bytes sent (UDP payload).
    pub audio_bytes: u64,
    /// Opus packets read but not sent.
    pub audio_packets_skipped: u64,
    /// Audio records the encoder dropped because the ring was full.
    pub audio_ring_drops: u64,
    /// Rings dropped for breaking the ring protocol.
    pub ring_errors: u64,
    /// Sends the kernel refused (video and audio).
    pub send_errors: u64,
    /// IDR requests passed on to the encoder.
    pub encoder_idr_requests: u64,
    /// IDR requests that could not reach the encoder.
    pub encoder_idr_errors: u64,
    /// Client pings accepted on the video port.
    pub video_pings: u64,
    /// Client pings accepted on the audio port.
    pub audio_pings: u64,
    /// Datagrams on the video port that were no ping of this stream (dropped).
    pub video_foreign_datagrams: u64,
    /// Datagrams on the audio port that were no ping of this stream (dropped).
    pub audio_foreign_datagrams: u64,
}

impl NetCounters {
    /// Adds `other` to these counters (saturating: they only ever grow).
    pub fn add(&mut self, other: &NetCounters) {
        // Destructured so that a new field cannot be forgotten here.
        let NetCounters {
            idr_requests,
            rfi_requests,
            pings,
            loss_reports,
            input_packets,
            rejected_control,
            refused_control_peers,
            control_foreign_datagrams,
            input_invalid,
            input_dropped,
            fec_reports,
            fec_recovered_frames,
            fec_repaired_shards,
            frames_lost,
            frames_sent,
            video_datagrams,
            video_bytes,
            frames_skipped,
            video_ring_drops,
            video_discontinuities,
            packetize_errors,
            audio_packets,
            audio_datagrams,
            audio_bytes,
            audio_packets_skipped,
            audio_ring_drops,
            ring_errors,
            send_errors,
            encoder_idr_requests,
            encoder_idr_errors,
            video_pings,
            audio_pings,
            video_foreign_datagrams,
            audio_foreign_datagrams,
        } = *other;
        let sum = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        sum(&mut self.idr_requests, idr_requests);
        sum(&mut self.rfi_requests, rfi_requests);
        sum(&mut self.pings, pings);
        sum(&mut self.loss_reports, loss_reports);
        sum(&mut self.input_packets, input_packets);
        sum(&mut self.rejected_control, rejected_control);
        sum(&mut self.refused_control_peers, refused_control_peers);
        sum(
            &mut self.control_foreign_datagrams,
            control_foreign_datagrams,
        );
        sum(&mut self.input_invalid, input_invalid);
        sum(&mut self.input_dropped, input_dropped);
        sum(&mut self.fec_reports, fec_reports);
        sum(&mut self.fec_recovered_frames, fec_recovered_frames);
        sum(&mut self.fec_repaired_shards, fec_repaired_shards);
        sum(&mut self.frames_lost, frames_lost);
        sum(&mut self.frames_sent, frames_sent);
        sum(&mut self.video_datagrams, video_datagrams);
        sum(&mut self.video_bytes, video_bytes);
        sum(&mut self.frames_skipped, frames_skipped);
        sum(&mut self.video_ring_drops, video_ring_drops);
        sum(&mut self.video_discontinuities, video_discontinuities);
        sum(&mut self.packetize_errors, packetize_errors);
        sum(&mut self.audio_packets, audio_packets);
        sum(&mut self.audio_datagrams, audio_datagrams);
        sum(&mut self.audio_bytes, audio_bytes);
        sum(&mut self.audio_packets_skipped, audio_packets_skipped);
        sum(&mut self.audio_ring_drops, audio_ring_drops);
        sum(&mut self.ring_errors, ring_errors);
        sum(&mut self.send_errors, send_errors);
        sum(&mut self.encoder_idr_requests, encoder_idr_requests);
        sum(&mut self.encoder_idr_errors, encoder_idr_errors);
        sum(&mut self.video_pings, video_pings);
        sum(&mut self.audio_pings, audio_pings);
        sum(&mut self.video_foreign_datagrams, video_foreign_datagrams);
        sum(&mut self.audio_foreign_datagrams, audio_foreign_datagrams);
    }
}

/// The RTSP listener's counters.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtspCounters {
    /// Requests answered.
    pub requests: u64,
    /// Of those, requests refused with an error status.
    pub refused: u64,
    /// Connections closed without an answer (no launch, malformed or oversized framing, a frame
    /// that failed authentication, a timeout).
    pub dropped_connections: u64,
}

impl RtspCounters {
    /// Adds `other` to these counters (saturating).
    pub fn add(&mut self, other: &RtspCounters) {
        let RtspCounters {
            requests,
            refused,
            dropped_connections,
        } = *other;
        self.requests = self.requests.saturating_add(requests);
        self.refused = self.refused.saturating_add(refused);
        self.dropped_connections = self.dropped_connections.saturating_add(dropped_connections);
    }
}

/// The nvhttp listeners' counters (HTTP and HTTPS together): what was answered, and every
/// connection or request turned away.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpCounters {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered with an error status (malformed, unknown path, not paired, …).
    pub refused: u64,
    /// Of the refused, HTTPS requests from a client certificate that is not paired (401).
    pub unauthorized: u64,
    /// Connections closed on a malformed or oversized request head.
    pub malformed: u64,
    /// Connections closed because a request head, a TLS handshake or the connection's lifetime
    /// ran out of time (slow clients).
    pub timeouts: u64,
    /// TLS handshakes that failed (not TLS, no acceptable version or cipher, a bad certificate).
    pub tls_failures: u64,
    /// Connections accepted only after waiting for a free connection slot (all were taken).
    pub waited_for_slot: u64,
}

impl HttpCounters {
    /// Adds `other` to these counters (saturating).
    pub fn add(&mut self, other: &HttpCounters) {
        let HttpCounters {
            requests,
            refused,
            unauthorized,
            malformed,
            timeouts,
            tls_failures,
            waited_for_slot,
        } = *other;
        let sum = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        sum(&mut self.requests, requests);
        sum(&mut self.refused, refused);
        sum(&mut self.unauthorized, unauthorized);
        sum(&mut self.malformed, malformed);
        sum(&mut self.timeouts, timeouts);
        sum(&mut self.tls_failures, tls_failures);
        sum(&mut self.waited_for_slot, waited_for_slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(id: &str, stage: PairStage) -> NetRequest {
        NetRequest::Pair {
            client_uniqueid: id.into(),
            stage,
        }
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(NetRequest::TlsSign {
            scheme: 0x0804,
            message: vec![0; MAX_SIGN_INPUT]
        }
        .validate()
        .is_ok());
        assert!(NetRequest::TlsSign {
            scheme: 0x0804,
            message: vec![0; MAX_SIGN_INPUT + 1]
        }
        .validate()
        .is_err());
        assert!(pair("0123456789ABCDEF", PairStage::Abort)
            .validate()
            .is_ok());
        for bad in ["", "a b", "x/y", &"a".repeat(MAX_UNIQUEID + 1)] {
            assert!(pair(bad, PairStage::Abort).validate().is_err(), "{bad:?}");
        }
        let stage1 = |pem: String, name: &str| PairStage::GetServerCert {
            salt: [0; 16],
            client_cert_pem: pem,
            device_name: name.into(),
        };
        assert!(pair("id", stage1("x".repeat(100), "roth"))
            .validate()
            .is_ok());
        assert!(
            pair("id", stage1("x".repeat(MAX_CLIENT_CERT_PEM + 1), "roth"))
                .validate()
                .is_err()
        );
        assert!(pair("id", stage1(String::new(), "a\nb"))
            .validate()
            .is_err());
        let stage4 = |len| PairStage::ClientPairingSecret {
            secret: [0; 16],
            signature: vec![1; len],
        };
        assert!(pair("id", stage4(256)).validate().is_ok());
        assert!(pair("id", stage4(0)).validate().is_err());
        assert!(pair("id", stage4(MAX_CLIENT_SIGNATURE + 1))
            .validate()
            .is_err());
    }

    #[test]
    fn counters_add_up_every_field_and_saturate() {
        // Every field distinct, so a field summed into the wrong place shows.
        let bytes = postcard::to_stdvec(&NetCounters::default()).unwrap();
        let fields = bytes.len();
        let numbered: Vec<u8> = (1..=fields as u8).collect();
        let one: NetCounters = postcard::from_bytes(&numbered).unwrap();
        let mut sum = one;
        sum.add(&one);
        let doubled: Vec<u8> = numbered.iter().map(|n| n * 2).collect();
        assert_eq!(sum, postcard::from_bytes::<NetCounters>(&doubled).unwrap());
        let mut full = NetCounters {
            frames_sent: u64::MAX - 1,
            ..NetCounters::default()
        };
        full.add(&one);
        assert_eq!(full.frames_sent, u64::MAX);

        let mut rtsp = RtspCounters {
            requests: 4,
            refused: 1,
            dropped_connections: 2,
        };
        rtsp.add(&RtspCounters {
            requests: 1,
            refused: 2,
            dropped_connections: u64::MAX,
        });
        assert_eq!(
            rtsp,
            RtspCounters {
                requests: 5,
                refused: 3,
                dropped_connections: u64::MAX,
            }
        );
    }

    #[test]
    fn http_counters_add_up_every_field_and_saturate() {
        let fields = postcard::to_stdvec(&HttpCounters::default()).unwrap().len();
        let numbered: Vec<u8> = (1..=fields as u8).collect();
        let one: HttpCounters = postcard::from_bytes(&numbered).unwrap();
        let mut sum = one;
        sum.add(&one);
        let doubled: Vec<u8> = numbered.iter().map(|n| n * 2).collect();
        assert_eq!(sum, postcard::from_bytes::<HttpCounters>(&doubled).unwrap());
        let mut full = HttpCounters {
            timeouts: u64::MAX,
            ..HttpCounters::default()
        };
        full.add(&one);
        assert_eq!(full.timeouts, u64::MAX);
    }
}
