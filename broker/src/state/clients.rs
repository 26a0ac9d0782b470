//! The paired-client store: the certificates of the Moonlight clients this host trusts, kept in
//! `clients.json` and rewritten atomically on every change. A corrupt store is set aside and
//! reported; the broker then starts with no paired clients rather than guessing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::atomic::{self, Loaded, SetAside, StateError};

/// Longest client name kept (names come from the pairing client).
const MAX_NAME: usize = 128;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no paired client has id {0:?}")]
    NotFound(String),
    #[error("id {0:?} matches more than one paired client; give more of it")]
    Ambiguous(String),
    #[error("client certificate is not a PEM CERTIFICATE: {0}")]
    BadCertificate(String),
    #[error("encoding the client store: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One paired client.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PairedClient {
    /// The first 16 hex digits of `cert_sha256`: short, stable, and what `unpair` takes.
    pub id: String,
    pub name: String,
    pub cert_pem: String,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub cert_sha256: String,
    /// Unix seconds.
    pub paired_at: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    clients: Vec<PairedClient>,
}

const VERSION: u32 = 1;

/// The store, loaded in memory and mirrored to its file.
#[derive(Debug)]
pub struct ClientStore {
    path: PathBuf,
    clients: Vec<PairedClient>,
    /// Counts changes, so `lumen-net` can be told the new pinned set (pairing, `unpair`).
    changes: watch::Sender<u64>,
}

impl ClientStore {
    /// Loads `state_dir/clients.json` (empty when absent; set aside when corrupt).
    pub fn load(state_dir: &Path) -> Result<(ClientStore, Option<SetAside>), ClientsError> {
        let path = state_dir.join("clients.json");
        let (clients, aside) = match atomic::read_or_set_aside(&path, parse)? {
            Loaded::Missing => (Vec::new(), None),
            Loaded::Parsed(clients) => (clients, None),
            Loaded::Corrupt(aside) => (Vec::new(), Some(aside)),
        };
        let (changes, _) = watch::channel(0);
        Ok((
            ClientStore {
                path,
                clients,
                changes,
            },
            aside,
        ))
    }

    pub fn list(&self) -> &[PairedClient] {
        &self.clients
    }

    /// Wakes on every change of the paired set.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether a client with this certificate hash (lowercase hex) is paired.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn contains_sha256(&self, sha256_hex: &str) -> bool {
        self.clients.iter().any(|c| c.cert_sha256 == sha256_hex)
    }

    /// Records a newly paired client (re-pairing the same certificate replaces its entry).
    pub(crate) fn add(
        &mut self,
        name: &str,
        cert_pem: &str,
        paired_at: u64,
    ) -> Result<PairedClient, ClientsError> {
        let der = cert_der(cert_pem).map_err(ClientsError::BadCertificate)?;
        let cert_sha256 = hex::encode(Sha256::digest(&der));
        let name: String = name
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_NAME)
            .collect();
        let client = PairedClient {
            id: cert_sha256[..16].to_string(),
            name,
            cert_pem: cert_pem.to_string(),
            cert_sha256,
            paired_at,
        };
        let mut next = self.clients.clone();
        next.retain(|c| c.cert_sha256 != client.cert_sha256);
        next.push(client.clone());
        self.save(next)?;
        Ok(client)
    }

    /// Forgets the client whose id is `id`, or starts with `id` if only one does.
    pub fn remove(&mut self, id: &str) -> Result<PairedClient, ClientsError> {
        let id = id.to_ascii_lowercase();
        let index = match self.clients.iter().position(|c| c.id == id) {
            Some(i) => i,
            None => {
                let mut matches = self
                    .clients
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !id.is_empty() && c.id.starts_with(&id));
                match (matches.next(), matches.next()) {
                    (Some((i, _)), None) => i,
                    (Some(_), Some(_)) => return Err(ClientsError::Ambiguous(id)),
                    (None, _) => return Err(ClientsError::NotFound(id)),
                }
            }
        };
        let mut next = self.clients.clone();
        let removed = next.remove(index);
        self.save(next)?;
        Ok(removed)
    }

    /// Writes `clients` to disk, then adopts them (memory never runs ahead of the file).
    fn save(&mut self, clients: Vec<PairedClient>) -> Result<(), ClientsError> {
        let file = StoreFile {
            version: VERSION,
            clients,
        };
        let json = serde_json::to_vec_pretty(&file)?;
        atomic::write_atomic(&self.path, &json)?;
        self.clients = file.clients;
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
        Ok(())
    }
}

fn cert_der(cert_pem: &str) -> Result<Vec<u8>, String> {
    let pem = pem::parse(cert_pem).map_err(|e| e.to_string())?;
    if pem.tag() != "CERTIFICATE" {
        return Err(format!("PEM block is {:?}", pem.tag()));
    }
    Ok(pem.contents().to_vec())
}

fn parse(text: &str) -> Result<Vec<PairedClient>, String> {
    let file: StoreFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!("unknown store version {}", file.version));
    }
    for c in &file.clients {
        let der = cert_der(&c.cert_pem).map_err(|e| format!("client {}: {e}", c.id))?;
        let sha = hex::encode(Sha256::digest(&der));
        if sha != c.cert_sha256 || !sha.starts_with(&c.id) || c.id.len() != 16 {
            return Err(format!(
                "client {:?}: id or hash does not match its certificate",
                c.id
            ));
        }
    }
    Ok(file.clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lumen-clients-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn cert(seed: u8) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", vec![seed; 64]))
    }

    #[test]
    fn add_list_remove_persist() {
        let dir = scratch();
        let (mut store, aside) = ClientStore::load(&dir).unwrap();
        assert!(aside.is_none());
        let changes = store.subscribe();
        let a = store.add("deck\u{7}", &cert(1), 100).unwrap();
        assert!(changes.has_changed().unwrap());
        let b = store.add("phone", &cert(2), 200).unwrap();
        assert_eq!(a.name, "deck");
        assert_eq!(a.id.len(), 16);
        assert_eq!(a.cert_sha256, hex::encode(Sha256::digest([1u8; 64])));
        assert!(store.contains_sha256(&b.cert_sha256));
        // Re-pairing the same certificate replaces, not duplicates.
        store.add("deck", &cert(1), 300).unwrap();
        assert_eq!(store.list().len(), 2);

        let (mut reloaded, _) = ClientStore::load(&dir).unwrap();
        assert_eq!(reloaded.list(), store.list());
        let removed = reloaded.remove(&b.id[..6]).unwrap();
        assert_eq!(removed.id, b.id);
        assert!(matches!(
            reloaded.remove(&b.id),
            Err(ClientsError::NotFound(_))
        ));
        assert!(matches!(
            reloaded.remove(""),
            Err(ClientsError::NotFound(_))
        ));
        let (after, _) = ClientStore::load(&dir).unwrap();
        assert_eq!(after.list().len(), 1);
        assert!(store.add("x", "not pem", 1).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ambiguous_prefix_is_refused() {
        let dir = scratch();
        let (mut store, _) = ClientStore::load(&dir).unwrap();
        let mut ids = Vec::new();
        for seed in 0..40 {
            ids.push(store.add("c", &cert(seed), 1).unwrap().id);
        }
        // With 40 ids over 16 first digits, two share a first digit.
        let shared = ids
            .iter()
            .find(|id| ids.iter().filter(|o| o[..1] == id[..1]).count() > 1)
            .unwrap();
        assert!(matches!(
            store.remove(&shared[..1]),
            Err(ClientsError::Ambiguous(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_and_tampered_stores_are_set_aside() {
        let dir = scratch();
        std::fs::write(dir.join("clients.json"), "{ not json").unwrap();
        let (store, aside) = ClientStore::load(&dir).unwrap();
        assert!(store.list().is_empty());
        assert!(aside.unwrap().moved_to.exists());

        let (mut store, _) = ClientStore::load(&dir).unwrap();
        store.add("c", &cert(9), 1).unwrap();
        let text = std::fs::read_to_string(dir.join("clients.json")).unwrap();
        let sha = hex::encode(Sha256::digest([9u8; 64]));
        std::fs::write(
            dir.join("clients.json"),
            text.replace(&sha, &"0".repeat(64)),
        )
        .unwrap();
        let (_, aside) = ClientStore::load(&dir).unwrap();
        assert!(aside.unwrap().reason.contains("does not match"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
