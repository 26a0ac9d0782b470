//! What the broker does for `lumen-net`: the operations that need the host key, the PIN or the
//! paired-client store (see `ipc/src/net_msg.rs`). lumen-net holds none of these secrets.

use std::sync::{Arc, Mutex, PoisonError};

use lumen_ipc::net_msg::{NetIdentity, NetReply, NetRequest};
use sha2::{Digest, Sha256};

use crate::state::clients::ClientStore;
use crate::state::identity::Identity;

/// The broker's side of every `NetRequest`.
pub struct NetService {
    identity: Identity,
    clients: Arc<Mutex<ClientStore>>,
}

impl NetService {
    pub fn new(identity: Identity, clients: Arc<Mutex<ClientStore>>) -> NetService {
        NetService { identity, clients }
    }

    /// The public identity and the pinned client certificates, for `BrokerMsg::NetIdentity`.
    pub fn identity(&self) -> NetIdentity {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
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
        }
    }

    /// Answers one request.
    pub async fn handle(&self, request: NetRequest) -> NetReply {
        match request {
            NetRequest::TlsSign { .. } => NetReply::Refused(
                "TLS handshake signing is not built into this lumen-broker yet".into(),
            ),
        }
    }
}
