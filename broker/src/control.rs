//! The control socket: how `lumen-broker status|pair|clients|unpair` talk to a running broker.
//!
//! A Unix stream socket (mode 0600, in a 0700 directory) that accepts only peers with our uid or
//! root. Each connection carries one JSON request line and gets one JSON reply line. Requests are
//! bounded in length and time; a malformed one gets an error reply, never a panic.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lumen_ipc::msg::SocketRole;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::pairing::{PairingSlot, Pin};
use crate::state::clients::{ClientStore, PairedClient};
use crate::supervisor::WorkerStatus;

/// Longest request or reply line accepted.
pub const MAX_LINE: usize = 64 * 1024;
/// How long a connected peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A CLI request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Pair { pin: String },
    Clients,
    Unpair { id: String },
}

/// The broker's answer.
#[derive(Debug, Serialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status { status: StatusReport },
    Paired { client_id: String, name: String },
    Clients { clients: Vec<PairedClient> },
    Unpaired { client: PairedClient },
    Error { message: String },
}

/// What `status` shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub uniqueid: String,
    pub bind: IpAddr,
    pub ports: Vec<PortStatus>,
    pub workers: Vec<WorkerStatus>,
    pub paired_clients: usize,
    /// Active streaming sessions (client ids); sessions arrive with the streaming issue.
    pub sessions: Vec<String>,
    /// Per-stream statistics; none until streams exist.
    pub streams: Vec<String>,
    /// State files that were corrupt and set aside, and other problems found at start-up.
    pub problems: Vec<String>,
}

/// One LAN socket.
#[derive(Clone, Debug, Serialize)]
pub struct PortStatus {
    pub role: SocketRole,
    pub port: u16,
}

/// Everything the control socket answers from.
pub struct BrokerView {
    pub workers: Box<dyn Fn() -> Vec<WorkerStatus> + Send + Sync>,
    pub uniqueid: String,
    pub bind: IpAddr,
    pub ports: Vec<PortStatus>,
    pub clients: Mutex<ClientStore>,
    pub problems: Vec<String>,
    pub pairing: PairingSlot,
}

impl BrokerView {
    /// Answers one request.
    pub async fn handle(&self, request: Request) -> Reply {
        match request {
            Request::Status => Reply::Status {
                status: StatusReport {
                    uniqueid: self.uniqueid.clone(),
                    bind: self.bind,
                    ports: self.ports.clone(),
                    workers: (self.workers)(),
                    paired_clients: self.clients().list().len(),
                    sessions: Vec::new(),
                    streams: Vec::new(),
                    problems: self.problems.clone(),
                },
            },
            Request::Clients => Reply::Clients {
                clients: self.clients().list().to_vec(),
            },
            Request::Unpair { id } => match self.clients().remove(&id) {
                Ok(client) => {
                    tracing::info!(id = %client.id, name = %client.name, "client unpaired");
                    Reply::Unpaired { client }
                }
                Err(e) => error(e),
            },
            Request::Pair { pin } => {
                let pin = match Pin::parse(&pin) {
                    Ok(pin) => pin,
                    Err(e) => return error(e),
                };
                tracing::info!("PIN received; waiting for a Moonlight client to start pairing");
                match self.pairing.offer(pin).await {
                    Ok(paired) => Reply::Paired {
                        client_id: paired.client_id,
                        name: paired.name,
                    },
                    Err(e) => {
                        tracing::warn!("pair: {e}");
                        error(e)
                    }
                }
            }
        }
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, ClientStore> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn error(e: impl std::fmt::Display) -> Reply {
    Reply::Error {
        message: e.to_string(),
    }
}

/// Why the control socket could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another broker is already running (its control socket {0} answers)")]
    AlreadyRunning(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("control socket {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("control socket {0} does not have mode 0600 after chmod")]
    Mode(PathBuf),
}

/// The listening control socket; removes its file when dropped.
pub struct ControlServer {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds the control socket at `path`: refuses if a live broker answers there, removes a
    /// stale socket file, and makes the new one 0600 before it listens.
    pub fn bind(path: &Path) -> Result<ControlServer, ControlError> {
        let io = |op: &'static str| {
            move |source: std::io::Error| ControlError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ControlError::AlreadyRunning(path.to_path_buf()));
                }
                // Nobody listens: a broker that died without cleaning up.
                tracing::info!(path = %path.display(), "removing stale control socket");
                std::fs::remove_file(path).map_err(io("removing stale socket"))?;
            }
            Ok(_) => return Err(ControlError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspecting")(e)),
        }
        let fd = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| io("socket")(e.into()))?;
        let addr = rustix::net::SocketAddrUnix::new(path).map_err(|e| io("address")(e.into()))?;
        rustix::net::bind(&fd, &addr).map_err(|e| io("bind")(e.into()))?;
        // Not yet listening, so nobody can connect while the mode is still the umask's.
        rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o600))
            .map_err(|e| io("chmod")(e.into()))?;
        let mode = std::fs::metadata(path)
            .map_err(io("checking mode"))?
            .permissions()
            .mode();
        if mode & 0o777 != 0o600 {
            return Err(ControlError::Mode(path.to_path_buf()));
        }
        rustix::net::listen(&fd, 64).map_err(|e| io("listen")(e.into()))?;
        let listener =
            tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
                .map_err(io("registering with tokio"))?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Accepts connections forever, one task each.
    pub async fn serve(&self, view: Arc<BrokerView>) {
        let our_uid = crate::paths::current_uid();
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let view = view.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(stream, &view, our_uid).await {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_connection(
    stream: tokio::net::UnixStream,
    view: &BrokerView,
    our_uid: u32,
) -> std::io::Result<()> {
    let peer_uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let reply = if peer_uid != our_uid && peer_uid != 0 {
        tracing::warn!(peer_uid, "control connection from another user refused");
        error(format!("uid {peer_uid} may not control this broker"))
    } else {
        let mut line = Vec::new();
        let mut reader = tokio::io::BufReader::new(read.take(MAX_LINE as u64 + 1));
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => error("no request within 5 s"),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) if line.len() > MAX_LINE => error("request line too long"),
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Ok(request) => view.handle(request).await,
                Err(e) => error(format!("malformed request: {e}")),
            },
        }
    };
    let mut json = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    json.push(b'\n');
    write.write_all(&json).await?;
    write.shutdown().await
}

/// Why a CLI request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no broker is running (no control socket at {0})")]
    NotRunning(PathBuf),
    #[error("talking to the broker at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the broker's reply is malformed: {0}")]
    BadReply(String),
    /// The broker answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// Sends `request` to the broker at `path` and returns its reply (an `error` reply becomes
/// [`ClientError::Refused`]). `timeout` bounds the wait for the reply.
pub fn request(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning(path.to_path_buf()))
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut json = serde_json::to_vec(request).map_err(|e| ClientError::BadReply(e.to_string()))?;
    json.push(b'\n');
    stream.write_all(&json).map_err(io)?;
    let mut line = Vec::new();
    BufReader::new((&stream).take(MAX_LINE as u64 + 1))
        .read_until(b'\n', &mut line)
        .map_err(io)?;
    if line.len() > MAX_LINE {
        return Err(ClientError::BadReply("reply too long".into()));
    }
    let reply: serde_json::Value =
        serde_json::from_slice(&line).map_err(|e| ClientError::BadReply(e.to_string()))?;
    if reply["reply"] == "error" {
        let message = reply["message"].as_str().unwrap_or("unknown error");
        return Err(ClientError::Refused(message.to_string()));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding() {
        let json = serde_json::to_string(&Request::Pair { pin: "1234".into() }).unwrap();
        assert_eq!(json, r#"{"request":"pair","pin":"1234"}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"status"}"#).unwrap(),
            Request::Status
        );
        for bad in [
            r#"{"request":"pair","pin":"1234","x":1}"#,
            r#"{"request":"reboot"}"#,
            r#"{"request":"unpair"}"#,
            "[]",
            "",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
