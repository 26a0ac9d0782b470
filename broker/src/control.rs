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

use lumen_ipc::media::SessionParams;

use crate::input::{InputPlumbing, InputStatus};
use crate::net_stats::{NetStatsBook, NetStreamStatus};
use crate::pairing::{PairingSlot, Pin};
use crate::session::recorder::{self, RecordSummary};
use crate::session::{ConsumerTarget, SessionStatus, Sessions};
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
    Pair {
        pin: String,
    },
    Clients,
    Unpair {
        id: String,
    },
    /// Run a media session with the broker as its consumer and write what the encoder produces to
    /// files in `dir` (absolute) for `seconds`.
    Record {
        params: SessionParams,
        seconds: u32,
        dir: PathBuf,
    },
}

/// The longest recording `record` makes.
pub const MAX_RECORD_SECONDS: u32 = 600;

/// The broker's answer.
#[derive(Debug, Serialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status {
        status: StatusReport,
    },
    Paired {
        client_id: String,
        name: String,
    },
    Clients {
        clients: Vec<PairedClient>,
    },
    Unpaired {
        client: PairedClient,
    },
    Recorded {
        summary: RecordSummary,
        session: Option<SessionStatus>,
    },
    Error {
        message: String,
    },
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
    /// The media session (capture + encode) in progress, or else the last one.
    pub media_session: Option<SessionStatus>,
    /// lumen-net's statistics of the stream in progress, or else the last one, with the totals
    /// since start; none before the first stream. Boxed: its counters would make this the one
    /// large reply.
    pub net_stream: Option<Box<NetStreamStatus>>,
    /// lumen-input: its devices and counters; `None` in a broker without workers.
    pub input: Option<InputStatus>,
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
    pub clients: Arc<Mutex<ClientStore>>,
    pub problems: Vec<String>,
    pub pairing: PairingSlot,
    /// Media sessions; `None` in a broker without workers (tests of the control socket).
    pub sessions: Option<Sessions>,
    /// lumen-net's stream statistics.
    pub net_stats: NetStatsBook,
    /// lumen-input's devices and counters; `None` in a broker without workers.
    pub input: Option<Arc<InputPlumbing>>,
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
                    media_session: self.sessions.as_ref().and_then(Sessions::status),
                    net_stream: self.net_stats.status().map(Box::new),
                    input: self.input.as_ref().map(|input| input.status()),
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
            Request::Record {
                params,
                seconds,
                dir,
            } => self.record(params, seconds, dir).await,
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

    async fn record(&self, params: SessionParams, seconds: u32, dir: PathBuf) -> Reply {
        let Some(sessions) = &self.sessions else {
            return error("this broker runs no media workers");
        };
        if seconds == 0 || seconds > MAX_RECORD_SECONDS {
            return error(format!("record for 1..={MAX_RECORD_SECONDS} seconds"));
        }
        if !dir.is_absolute() {
            return error("the recording directory must be an absolute path");
        }
        let (rebuilt_tx, rebuilt_rx) = std::sync::mpsc::channel();
        // Starting may wait on the ScreenCast portal (a user prompt): off the async threads.
        let starting = sessions.clone();
        let started = tokio::task::spawn_blocking(move || {
            starting.start_session(params, ConsumerTarget::Recorder(rebuilt_tx))
        })
        .await;
        let first = match started {
            Ok(Ok(first)) => first,
            Ok(Err(e)) => return error(format!("{e:#}")),
            Err(e) => return error(format!("starting the session: {e}")),
        };
        tracing::info!(dir = %dir.display(), seconds, "recording the media session");
        let recorded = tokio::task::spawn_blocking(move || {
            recorder::record(
                &dir,
                &params,
                first,
                rebuilt_rx,
                Duration::from_secs(u64::from(seconds)),
            )
        })
        .await;
        let session = sessions.status();
        sessions.stop_session();
        match recorded {
            Ok(Ok(summary)) => Reply::Recorded { summary, session },
            Ok(Err(e)) => error(format!("recording: {e:#}")),
            Err(e) => error(format!("the recorder stopped: {e}")),
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

/// Only our own user, or root, may control the broker.
fn peer_allowed(peer_uid: u32, our_uid: u32) -> bool {
    peer_uid == our_uid || peer_uid == 0
}

async fn serve_connection(
    stream: tokio::net::UnixStream,
    view: &BrokerView,
    our_uid: u32,
) -> std::io::Result<()> {
    let peer_uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let reply = if !peer_allowed(peer_uid, our_uid) {
        tracing::warn!(peer_uid, "control connection from another user refused");
        error(format!("uid {peer_uid} may not control this broker"))
    } else {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
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
    write.shutdown().await?;
    // Closing with unread input would reset the connection and the peer would lose the reply
    // (e.g. after an oversized request); swallow a bounded remainder first.
    let mut rest = reader.take(4 * MAX_LINE as u64);
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::copy(&mut rest, &mut sink),
    )
    .await;
    Ok(())
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
    use crate::pairing::PairingSlot;

    #[test]
    fn only_our_uid_or_root_may_connect() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lumen-control-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Sends raw bytes and returns the reply line.
    async fn raw(path: &Path, bytes: Vec<u8>) -> serde_json::Value {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            // The server may answer (and close) before it has read everything we send.
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut reply = String::new();
            s.read_to_string(&mut reply).unwrap();
            serde_json::from_str(&reply).unwrap()
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_and_oversized_requests_get_error_replies() {
        let dir = scratch();
        let socket = dir.join("control.sock");
        let server = Arc::new(ControlServer::bind(&socket).unwrap());
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            ControlServer::bind(&socket),
            Err(ControlError::AlreadyRunning(_))
        ));
        let (clients, _) = ClientStore::load(&dir).unwrap();
        let net_stats = NetStatsBook::default();
        net_stats.record(lumen_ipc::net_msg::NetStats {
            stream: 2,
            active: true,
            counters: lumen_ipc::net_msg::NetCounters {
                fec_recovered_frames: 11,
                idr_requests: 3,
                ..Default::default()
            },
            rtsp: Default::default(),
            http: Default::default(),
        });
        let view = Arc::new(BrokerView {
            workers: Box::new(Vec::new),
            uniqueid: "0123456789ABCDEF".into(),
            bind: "127.0.0.1".parse().unwrap(),
            ports: Vec::new(),
            clients: Arc::new(Mutex::new(clients)),
            problems: vec!["x".into()],
            pairing: PairingSlot::new(Duration::from_millis(10)),
            sessions: None,
            net_stats,
            input: None,
        });
        let serving = tokio::spawn({
            let server = server.clone();
            async move { server.serve(view).await }
        });

        for bad in [
            &b"not json\n"[..],
            b"{\"request\":\"reboot\"}\n",
            b"\xff\xfe\n",
            b"",
        ] {
            let reply = raw(&socket, bad.to_vec()).await;
            assert_eq!(reply["reply"], "error", "{reply}");
        }
        let reply = raw(&socket, vec![b'x'; MAX_LINE + 10]).await;
        assert_eq!(reply["message"], "request line too long");
        let reply = raw(&socket, b"{\"request\":\"pair\",\"pin\":\"12\"}\n".to_vec()).await;
        assert_eq!(
            reply["message"],
            "the PIN must be the 4 digits Moonlight shows"
        );

        let status = tokio::task::spawn_blocking({
            let socket = socket.clone();
            move || request(&socket, &Request::Status, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(status["status"]["uniqueid"], "0123456789ABCDEF");
        assert_eq!(status["status"]["problems"][0], "x");
        // lumen-net's report, flat as the CLI and the tests read it, with the totals.
        let net = &status["status"]["net_stream"];
        assert_eq!(net["active"], true);
        assert_eq!(net["fec_recovered_frames"], 11);
        assert_eq!(net["idr_requests"], 3);
        assert_eq!(net["totals"]["streams"], 1);
        assert_eq!(net["totals"]["fec_recovered_frames"], 11);
        let unpair = tokio::task::spawn_blocking({
            let socket = socket.clone();
            move || {
                request(
                    &socket,
                    &Request::Unpair { id: "ab".into() },
                    Duration::from_secs(5),
                )
            }
        })
        .await
        .unwrap();
        assert!(matches!(unpair, Err(ClientError::Refused(m)) if m.contains("no paired client")));

        serving.abort();
        let _ = serving.await;
        drop(server);
        assert!(!socket.exists(), "socket file left behind");
        assert!(matches!(
            request(&socket, &Request::Status, Duration::from_secs(1)),
            Err(ClientError::NotRunning(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

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
