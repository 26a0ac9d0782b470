//! What the broker does for `lumen-net`: the operations that need the host key, the PIN or the
//! paired-client store (see `ipc/src/net_msg.rs`). lumen-net holds none of these secrets: it
//! forwards TLS signature inputs and decoded pairing stages, and gets back signatures and replies.
//!
//! Pairing state lives here, per client uniqueid, so a restarted lumen-net loses nothing. At most
//! [`MAX_ATTEMPTS_PER_MINUTE`] attempts start per minute, a PIN serves one attempt, and any failed
//! stage ends its attempt and tells the waiting `lumen-broker pair` why.

mod host_key;
mod pair_crypto;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use lumen_ipc::media::EncoderCapabilities;
use lumen_ipc::net_msg::{NetIdentity, NetReply, NetRequest, PairReply, PairStage};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use crate::pairing::{Outcome, Paired, PairingSlot};
use crate::state::clients::ClientStore;
use crate::state::identity::Identity;
use host_key::HostKey;
use pair_crypto::{Attempt, ClientCert, PairError};

/// How many pairing attempts (stage 1 requests) may start in [`ATTEMPT_WINDOW`].
pub const MAX_ATTEMPTS_PER_MINUTE: usize = 5;
const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);
/// How long stage 1 waits for `lumen-broker pair PIN` (moonlight-python gives up after 90 s).
const PIN_WAIT: Duration = Duration::from_secs(60);
/// An attempt whose next stage does not come within this is over.
const STAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The name a paired client gets when its request names none.
const DEFAULT_CLIENT_NAME: &str = "Moonlight client";

/// Counts attempt starts over a sliding window.
struct RateLimit {
    starts: VecDeque<Instant>,
    max: usize,
    window: Duration,
}

impl RateLimit {
    fn new(max: usize, window: Duration) -> RateLimit {
        RateLimit {
            starts: VecDeque::with_capacity(max),
            max,
            window,
        }
    }

    /// Records a start at `now` if the window has room.
    fn allow(&mut self, now: Instant) -> bool {
        while self
            .starts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.starts.pop_front();
        }
        if self.starts.len() >= self.max {
            return false;
        }
        self.starts.push_back(now);
        true
    }
}

/// An attempt past stage 1: its crypto state and the `pair` waiting for its outcome.
struct Live {
    attempt: Attempt,
    outcome: oneshot::Sender<Outcome>,
    name: String,
    last_stage: Instant,
}

impl Live {
    fn fail(self, why: String) -> PairReply {
        tracing::warn!("pairing failed: {why}");
        let _ = self.outcome.send(Err(why.clone()));
        PairReply::Failed(why)
    }

    /// Ends the attempt over a `PairError`: an out-of-order stage is answered as one.
    fn fail_with(self, error: PairError) -> PairReply {
        let out_of_order = matches!(error, PairError::OutOfOrder { .. });
        match self.fail(error.to_string()) {
            PairReply::Failed(why) if out_of_order => PairReply::OutOfOrder(why),
            reply => reply,
        }
    }
}

struct Attempts {
    live: HashMap<String, Live>,
    starts: RateLimit,
}

impl Attempts {
    /// Ends attempts whose client went quiet, and forgets those whose `pair` stopped waiting
    /// (they could not pair anyone, and would hold the client's uniqueid until they expire).
    fn expire(&mut self, now: Instant) {
        self.live.retain(|_, live| !live.outcome.is_closed());
        let stale: Vec<String> = self
            .live
            .iter()
            .filter(|(_, live)| now.saturating_duration_since(live.last_stage) >= STAGE_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(live) = self.live.remove(&id) {
                live.fail(format!(
                    "the client stopped pairing (no next stage within {} s)",
                    STAGE_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

/// The broker's side of every `NetRequest`.
pub struct NetService {
    identity: Identity,
    clients: Arc<Mutex<ClientStore>>,
    pin_slot: PairingSlot,
    host_key: HostKey,
    /// The host certificate's signatureValue (pairing stage 2 hashes it).
    cert_signature: Vec<u8>,
    attempts: Mutex<Attempts>,
    /// How long stage 1 waits for a PIN ([`PIN_WAIT`]; shorter in tests).
    pin_wait: Duration,
    /// Whether net insists on video encryption (see `NetIdentity::encrypt_video`).
    encrypt_video: bool,
    /// What lumen-encode last reported it can produce (empty until it has).
    encoder: Mutex<EncoderCapabilities>,
}

impl NetService {
    pub fn new(
        identity: Identity,
        clients: Arc<Mutex<ClientStore>>,
        pin_slot: PairingSlot,
    ) -> anyhow::Result<NetService> {
        let host_key = HostKey::from_pem(identity.key_pem()).context("the host key")?;
        let (cert_signature, _) = pair_crypto::signature_and_key(&identity.cert_der)
            .map_err(anyhow::Error::msg)
            .context("the host certificate")?;
        Ok(NetService {
            identity,
            clients,
            pin_slot,
            host_key,
            cert_signature,
            attempts: Mutex::new(Attempts {
                live: HashMap::new(),
                starts: RateLimit::new(MAX_ATTEMPTS_PER_MINUTE, ATTEMPT_WINDOW),
            }),
            pin_wait: PIN_WAIT,
            encrypt_video: true,
            encoder: Mutex::new(EncoderCapabilities::default()),
        })
    }

    fn clients(&self) -> MutexGuard<'_, ClientStore> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn attempts(&self) -> MutexGuard<'_, Attempts> {
        self.attempts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The public identity and the pinned client certificates, for `BrokerMsg::NetIdentity`.
    pub fn identity(&self) -> NetIdentity {
        let clients = self.clients();
        let paired_sha256 = clients
            .list()
            .iter()
            .filter_map(|client| pem::parse(&client.cert_pem).ok())
            .map(|cert| Sha256::digest(cert.contents()).into())
            .collect();
        NetIdentity {
            uniqueid: self.identity.uniqueid.clone(),
            cert_pem: self.identity.cert_pem.clone(),
            paired_sha256,
            encrypt_video: self.encrypt_video,
            encoder: self.encoder_capabilities(),
        }
    }

    /// What lumen-encode last reported.
    pub fn encoder_capabilities(&self) -> EncoderCapabilities {
        self.encoder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes lumen-encode's report (after each of its starts); a malformed one is refused and the
    /// last good one kept. Returns whether what net offers changed.
    pub fn set_encoder_capabilities(&self, reported: EncoderCapabilities) -> Result<bool, String> {
        reported.validate()?;
        let mut current = self.encoder.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = *current != reported;
        *current = reported;
        Ok(changed)
    }

    /// Sets whether streams insist on video encryption (on by default).
    pub fn with_video_encryption(mut self, on: bool) -> NetService {
        self.encrypt_video = on;
        self
    }

    /// Wakes whenever the paired set changes (pairing, `lumen-broker unpair`).
    pub fn client_changes(&self) -> watch::Receiver<u64> {
        self.clients().subscribe()
    }

    /// Answers one request.
    pub async fn handle(&self, request: NetRequest) -> NetReply {
        if let Err(why) = request.validate() {
            tracing::warn!("lumen-net sent a malformed request: {why}");
            return NetReply::Refused(why);
        }
        match request {
            NetRequest::TlsSign { scheme, message } => {
                match self.host_key.sign_tls(scheme, &message) {
                    Ok(signature) => NetReply::Signature(signature),
                    Err(e) => {
                        tracing::warn!("refused a TLS signature for lumen-net: {e}");
                        NetReply::Refused(e.to_string())
                    }
                }
            }
            NetRequest::Pair {
                client_uniqueid,
                stage,
            } => NetReply::Pair(self.pair(client_uniqueid, stage).await),
            // Streams belong to the media sessions; `crate::dispatch` routes these there and
            // never here.
            NetRequest::StartStream { .. } | NetRequest::StopStream => {
                NetReply::Refused("stream requests are not handled by the pairing service".into())
            }
        }
    }

    async fn pair(&self, uniqueid: String, stage: PairStage) -> PairReply {
        let now = Instant::now();
        self.attempts().expire(now);
        match stage {
            PairStage::GetServerCert {
                salt,
                client_cert_pem,
                device_name,
            } => {
                self.get_server_cert(uniqueid, salt, &client_cert_pem, device_name)
                    .await
            }
            PairStage::Abort => match self.attempts().live.remove(&uniqueid) {
                Some(live) => {
                    live.fail("the client ended pairing (a wrong PIN, or it gave up)".into());
                    PairReply::Aborted
                }
                None => PairReply::Aborted,
            },
            stage => self.next_stage(&uniqueid, stage, now),
        }
    }

    async fn get_server_cert(
        &self,
        uniqueid: String,
        salt: [u8; 16],
        client_cert_pem: &str,
        device_name: String,
    ) -> PairReply {
        let client = {
            let mut attempts = self.attempts();
            if attempts.live.contains_key(&uniqueid) {
                return PairReply::AlreadyPairing;
            }
            if !attempts.starts.allow(Instant::now()) {
                return PairReply::Failed(format!(
                    "more than {MAX_ATTEMPTS_PER_MINUTE} pairing attempts in a minute; try again later"
                ));
            }
            match ClientCert::parse(client_cert_pem) {
                Ok(client) => client,
                Err(e) => return PairReply::Failed(e.to_string()),
            }
        };
        tracing::info!(
            uniqueid,
            "a client started pairing; waiting for `lumen-broker pair PIN`"
        );
        let Some((pin, outcome)) = self.pin_slot.wait_for_pin(self.pin_wait).await else {
            return PairReply::Failed(format!(
                "no PIN was offered within {} s (run `lumen-broker pair PIN`)",
                self.pin_wait.as_secs()
            ));
        };
        let mut attempts = self.attempts();
        if attempts.live.contains_key(&uniqueid) {
            // Another request of this uniqueid started while this one waited.
            let _ = outcome.send(Err("another pairing of this client is in progress".into()));
            return PairReply::AlreadyPairing;
        }
        let name = if device_name.is_empty() {
            DEFAULT_CLIENT_NAME.to_string()
        } else {
            device_name
        };
        attempts.live.insert(
            uniqueid,
            Live {
                attempt: Attempt::start(&salt, pin.digits(), client),
                outcome,
                name,
                last_stage: Instant::now(),
            },
        );
        PairReply::ServerCert {
            cert_pem: self.identity.cert_pem.clone(),
        }
    }

    /// Stages 2 to 4.
    fn next_stage(&self, uniqueid: &str, stage: PairStage, now: Instant) -> PairReply {
        let mut attempts = self.attempts();
        let Some(mut live) = attempts.live.remove(uniqueid) else {
            return PairReply::OutOfOrder("no pairing of this client is in progress".into());
        };
        live.last_stage = now;
        let result = match stage {
            PairStage::ClientChallenge { challenge } => live
                .attempt
                .client_challenge(
                    &challenge,
                    &self.cert_signature,
                    [rand::random(), rand::random()],
                )
                .map(PairReply::ChallengeResponse),
            PairStage::ServerChallengeResp { response } => live
                .attempt
                .server_challenge_resp(&response, |secret| {
                    self.host_key
                        .sign_pairing_secret(secret)
                        .map_err(|e| e.to_string())
                })
                .map(PairReply::PairingSecret),
            PairStage::ClientPairingSecret { secret, signature } => {
                match live.attempt.client_pairing_secret(&secret, &signature) {
                    Ok(()) => {
                        drop(attempts);
                        return self.store(live);
                    }
                    Err(e) => Err(e),
                }
            }
            PairStage::GetServerCert { .. } | PairStage::Abort => {
                return live.fail_with(PairError::OutOfOrder {
                    got: 1,
                    expected: 2,
                });
            }
        };
        match result {
            Ok(reply) => {
                attempts.live.insert(uniqueid.to_string(), live);
                reply
            }
            Err(e) => live.fail_with(e),
        }
    }

    /// The client proved the PIN and its key: remember its certificate.
    fn store(&self, live: Live) -> PairReply {
        // The user's consent is the running `pair`: once it gave up (timed out, interrupted),
        // nobody is there to be told, so the client is not trusted either.
        if live.outcome.is_closed() {
            return live.fail("`lumen-broker pair` stopped waiting before pairing finished".into());
        }
        let paired_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let added = self
            .clients()
            .add(&live.name, &live.attempt.client().pem, paired_at);
        match added {
            Ok(client) => {
                tracing::info!(id = %client.id, name = %client.name, "client paired");
                let _ = live.outcome.send(Ok(Paired {
                    client_id: client.id,
                    name: client.name,
                }));
                PairReply::Paired
            }
            Err(e) => live.fail(format!("storing the paired client: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pair_crypto::tests::TestClient;
    use super::*;
    use crate::pairing::Pin;

    fn service() -> (NetService, PairingSlot, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "lumen-net-service-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let identity = Identity::generate().unwrap();
        let (clients, _) = ClientStore::load(&dir).unwrap();
        let slot = PairingSlot::new(Duration::from_secs(10));
        let service =
            NetService::new(identity, Arc::new(Mutex::new(clients)), slot.clone()).unwrap();
        (service, slot, dir)
    }

    #[test]
    fn encoder_capabilities_reach_the_identity_and_malformed_ones_are_refused() {
        use lumen_ipc::media::{AudioLayout, VideoCodec};
        let (service, _, dir) = service();
        assert_eq!(service.identity().encoder, EncoderCapabilities::default());
        let reported = EncoderCapabilities {
            codecs: vec![VideoCodec::H264, VideoCodec::Av1],
            audio_layouts: vec![AudioLayout::Stereo, AudioLayout::Surround51],
        };
        assert_eq!(service.set_encoder_capabilities(reported.clone()), Ok(true));
        assert_eq!(service.identity().encoder, reported);
        // The same report again (a restarted encoder on the same machine) changes nothing.
        assert_eq!(
            service.set_encoder_capabilities(reported.clone()),
            Ok(false)
        );
        let malformed = EncoderCapabilities {
            codecs: vec![VideoCodec::Hevc, VideoCodec::Hevc],
            audio_layouts: Vec::new(),
        };
        assert!(service.set_encoder_capabilities(malformed).is_err());
        assert_eq!(service.encoder_capabilities(), reported);
        let _ = std::fs::remove_dir_all(dir);
    }

    async fn stage(service: &NetService, id: &str, stage: PairStage) -> PairReply {
        match service
            .handle(NetRequest::Pair {
                client_uniqueid: id.into(),
                stage,
            })
            .await
        {
            NetReply::Pair(reply) => reply,
            other => panic!("not a pairing reply: {other:?}"),
        }
    }

    fn stage1(client: &TestClient) -> PairStage {
        PairStage::GetServerCert {
            salt: client.salt,
            client_cert_pem: client.cert_pem.clone(),
            device_name: "roth".into(),
        }
    }

    /// Runs stages 1-4 with a PIN offered through the slot; returns stage 4's reply and what
    /// `pair` got.
    async fn pair_once(
        service: &Arc<NetService>,
        slot: &PairingSlot,
        offered: &str,
        client: &TestClient,
    ) -> (PairReply, Result<Paired, crate::pairing::PairingError>) {
        let offer = tokio::spawn({
            let slot = slot.clone();
            let pin = Pin::parse(offered).unwrap();
            async move { slot.offer(pin).await }
        });
        let reply = stage(service, "0123456789ABCDEF", stage1(client)).await;
        let PairReply::ServerCert { cert_pem } = reply else {
            panic!("stage 1: {reply:?}");
        };
        assert_eq!(cert_pem, service.identity.cert_pem);
        let PairReply::ChallengeResponse(reply2) = stage(
            service,
            "0123456789ABCDEF",
            PairStage::ClientChallenge {
                challenge: client.stage2_input(),
            },
        )
        .await
        else {
            panic!("stage 2");
        };
        let (response, _) = client.stage3_input(&reply2);
        let reply3 = stage(
            service,
            "0123456789ABCDEF",
            PairStage::ServerChallengeResp { response },
        )
        .await;
        assert!(matches!(reply3, PairReply::PairingSecret(_)), "{reply3:?}");
        let (secret, signature) = client.stage4_input();
        let reply4 = stage(
            service,
            "0123456789ABCDEF",
            PairStage::ClientPairingSecret { secret, signature },
        )
        .await;
        (reply4, offer.await.unwrap())
    }

    #[tokio::test]
    async fn pairs_a_client_and_pins_its_certificate() {
        let (service, slot, dir) = service();
        let service = Arc::new(service);
        let mut changes = service.client_changes();
        let client = TestClient::new("1234");
        let (reply, outcome) = pair_once(&service, &slot, "1234", &client).await;
        assert_eq!(reply, PairReply::Paired);
        let paired = outcome.unwrap();
        assert_eq!(paired.name, "roth");
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let der = pem::parse(&client.cert_pem).unwrap().contents().to_vec();
        let want: [u8; 32] = Sha256::digest(&der).into();
        assert_eq!(service.identity().paired_sha256, vec![want]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_pair_command_that_gave_up_pairs_nobody() {
        let (service, slot, dir) = service();
        let client = TestClient::new("1234");
        let offer = tokio::spawn({
            let slot = slot.clone();
            async move { slot.offer(Pin::parse("1234").unwrap()).await }
        });
        let reply = stage(&service, "abc", stage1(&client)).await;
        assert!(matches!(reply, PairReply::ServerCert { .. }), "{reply:?}");
        let PairReply::ChallengeResponse(reply2) = stage(
            &service,
            "abc",
            PairStage::ClientChallenge {
                challenge: client.stage2_input(),
            },
        )
        .await
        else {
            panic!("stage 2");
        };
        let (response, _) = client.stage3_input(&reply2);
        stage(&service, "abc", PairStage::ServerChallengeResp { response }).await;
        // The user interrupts `pair` before the client's last stage.
        offer.abort();
        let _ = offer.await;
        let (secret, signature) = client.stage4_input();
        let reply = stage(
            &service,
            "abc",
            PairStage::ClientPairingSecret { secret, signature },
        )
        .await;
        assert!(matches!(reply, PairReply::OutOfOrder(_)), "{reply:?}");
        assert!(service.identity().paired_sha256.is_empty());
        // The abandoned attempt does not hold the uniqueid: the next `pair` can serve it.
        let offer = tokio::spawn({
            let slot = slot.clone();
            async move { slot.offer(Pin::parse("1234").unwrap()).await }
        });
        let reply = stage(&service, "abc", stage1(&client)).await;
        assert!(matches!(reply, PairReply::ServerCert { .. }), "{reply:?}");
        offer.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_wrong_pin_is_refused_and_reported() {
        let (service, slot, dir) = service();
        let service = Arc::new(service);
        let client = TestClient::new("9999");
        let (reply, outcome) = pair_once(&service, &slot, "1234", &client).await;
        assert!(
            matches!(reply, PairReply::Failed(ref why) if why.contains("wrong PIN")),
            "{reply:?}"
        );
        assert!(matches!(
            outcome,
            Err(crate::pairing::PairingError::Failed(_))
        ));
        assert!(service.identity().paired_sha256.is_empty());
        // The attempt is over: a late stage finds none.
        assert!(matches!(
            stage(
                &service,
                "0123456789ABCDEF",
                PairStage::ClientChallenge { challenge: [0; 16] }
            )
            .await,
            PairReply::OutOfOrder(_)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn out_of_order_stages_end_the_attempt_and_abort_reports() {
        let (service, slot, dir) = service();
        let client = TestClient::new("1234");
        let offer = tokio::spawn({
            let slot = slot.clone();
            async move { slot.offer(Pin::parse("1234").unwrap()).await }
        });
        assert!(matches!(
            stage(&service, "abc", stage1(&client)).await,
            PairReply::ServerCert { .. }
        ));
        // A second stage 1 of the same uniqueid while the first is live.
        assert_eq!(
            stage(&service, "abc", stage1(&client)).await,
            PairReply::AlreadyPairing
        );
        let reply = stage(
            &service,
            "abc",
            PairStage::ServerChallengeResp { response: [0; 32] },
        )
        .await;
        assert!(
            matches!(reply, PairReply::OutOfOrder(ref why) if why.contains("stage 3")),
            "{reply:?}"
        );
        assert!(offer.await.unwrap().is_err());

        // /unpair during an attempt ends it and tells `pair`.
        let offer = tokio::spawn({
            let slot = slot.clone();
            async move { slot.offer(Pin::parse("1234").unwrap()).await }
        });
        assert!(matches!(
            stage(&service, "abc", stage1(&client)).await,
            PairReply::ServerCert { .. }
        ));
        assert_eq!(
            stage(&service, "abc", PairStage::Abort).await,
            PairReply::Aborted
        );
        let err = offer.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("ended pairing"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn stage_one_waits_for_a_pin_and_attempts_are_limited() {
        let (mut service, _slot, dir) = service();
        service.pin_wait = Duration::from_millis(20);
        let client = TestClient::new("1234");
        for _ in 0..MAX_ATTEMPTS_PER_MINUTE {
            // No PIN is offered: each waits and fails.
            let reply = stage(&service, "abc", stage1(&client)).await;
            assert!(
                matches!(reply, PairReply::Failed(ref why) if why.contains("no PIN")),
                "{reply:?}"
            );
        }
        // All within a minute: the sixth is refused before it waits.
        let reply = stage(&service, "abc", stage1(&client)).await;
        assert!(
            matches!(reply, PairReply::Failed(ref why) if why.contains("attempts")),
            "{reply:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rate_limit_slides() {
        let mut limit = RateLimit::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(limit.allow(t0));
        assert!(limit.allow(t0 + Duration::from_secs(1)));
        assert!(!limit.allow(t0 + Duration::from_secs(2)));
        assert!(limit.allow(t0 + Duration::from_secs(60)));
        assert!(!limit.allow(t0 + Duration::from_secs(60)));
        assert!(limit.allow(t0 + Duration::from_secs(61)));
    }

    #[tokio::test]
    async fn tls_signing_and_malformed_requests() {
        let (service, _slot, dir) = service();
        let reply = service
            .handle(NetRequest::TlsSign {
                scheme: 0x0401,
                message: vec![0; 16],
            })
            .await;
        assert!(matches!(reply, NetReply::Refused(_)), "{reply:?}");
        let reply = service
            .handle(NetRequest::Pair {
                client_uniqueid: "bad id".into(),
                stage: PairStage::Abort,
            })
            .await;
        assert!(matches!(reply, NetReply::Refused(_)), "{reply:?}");
        let mut input = vec![b' '; 64];
        input.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
        input.extend_from_slice(&[1; 32]);
        let reply = service
            .handle(NetRequest::TlsSign {
                scheme: 0x0804,
                message: input,
            })
            .await;
        assert!(
            matches!(reply, NetReply::Signature(ref s) if s.len() == 256),
            "{reply:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
