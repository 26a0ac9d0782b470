//! The messages lumen's processes exchange on their control channels: the one place where each
//! cross-process message is defined.
//!
//! Every message travels inside the [`crate::codec`] envelope, which carries [`PROTOCOL_VERSION`]; a
//! peer speaking another version is refused. Enums are decoded strictly (an unknown variant is an
//! error), and every collection is bounded by the codec's size limit.

use serde::{Deserialize, Serialize};

use crate::media::{
    CaptureSource, EncoderCapabilities, FramePoolSpec, Generation, MediaStats, SessionParams,
};
use crate::net_msg::{NetIdentity, NetReply, NetRequest, NetStats};

/// Version of the worker protocol; bumped on every incompatible change of a message here.
pub const PROTOCOL_VERSION: u16 = 3;

/// The fd number at which a worker finds its control channel to the broker after exec.
pub const CHANNEL_FD: i32 = 3;

/// The largest encoded message (envelope included) a receiver accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The most fds one message may carry.
pub const MAX_FDS_PER_MESSAGE: usize = 16;

/// The command-line flag that starts a worker binary in worker mode (as the broker does).
pub const WORKER_FLAG: &str = "--worker";

/// The command-line flag that runs a worker binary's sandbox self-test.
pub const SELFTEST_FLAG: &str = "--sandbox-selftest";

/// Flag the broker passes on when the user explicitly allowed running without seccomp.
pub const ALLOW_MISSING_SECCOMP_FLAG: &str = "--insecure-allow-missing-seccomp";

/// Flag the broker passes on when the user explicitly allowed running without Landlock.
pub const ALLOW_MISSING_LANDLOCK_FLAG: &str = "--insecure-allow-missing-landlock";

/// Environment variables a worker may inherit from the broker; everything else is cleared.
pub const WORKER_ENV_ALLOWLIST: &[&str] = &["RUST_LOG", "RUST_BACKTRACE", "LUMEN_LOG"];

/// The four kinds of worker the broker runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkerKind {
    Capture,
    Encode,
    Net,
    Input,
}

impl WorkerKind {
    pub const ALL: [WorkerKind; 4] = [
        WorkerKind::Net,
        WorkerKind::Capture,
        WorkerKind::Encode,
        WorkerKind::Input,
    ];

    /// Short lower-case name used in logs and `lumen-broker status`.
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Capture => "capture",
            WorkerKind::Encode => "encode",
            WorkerKind::Net => "net",
            WorkerKind::Input => "input",
        }
    }

    /// File name of the worker's binary, found next to `lumen-broker`.
    pub fn binary_name(self) -> &'static str {
        match self {
            WorkerKind::Capture => "lumen-capture",
            WorkerKind::Encode => "lumen-encode",
            WorkerKind::Net => "lumen-net",
            WorkerKind::Input => "lumen-input",
        }
    }
}

/// State of one sandbox layer in a worker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// In force.
    On,
    /// Not wanted by this worker's profile (e.g. a network namespace for `lumen-net`).
    NotInProfile,
    /// Wanted, but the system refused it; the worker runs without it (see the report's notes).
    Unavailable,
    /// Wanted, refused by the system, and skipped only because the user passed the named opt-out flag.
    OptedOut,
}

/// The sandbox layers a worker entered, as it reports them after lock-down.
///
/// The broker does not trust this report alone: what `/proc/PID/status` shows (seccomp mode,
/// no_new_privs, capabilities, uid) it reads itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SandboxReport {
    pub no_new_privs: Layer,
    pub capabilities_dropped: Layer,
    pub rlimits: Layer,
    pub not_dumpable: Layer,
    pub user_ns: Layer,
    pub mount_ns: Layer,
    pub pid_ns: Layer,
    pub ipc_ns: Layer,
    pub net_ns: Layer,
    /// Landlock: no filesystem access at all.
    pub landlock_fs: Layer,
    /// Landlock (ABI ≥ 4): no TCP bind or connect.
    pub landlock_net: Layer,
    /// Landlock (ABI ≥ 6): no signals or abstract unix sockets outside the sandbox.
    pub landlock_scope: Layer,
    /// The Landlock ABI version the kernel offers (0 when Landlock is missing).
    pub landlock_abi: u8,
    /// The per-worker seccomp allowlist.
    pub seccomp: Layer,
    /// Number of syscalls the seccomp allowlist admits.
    pub seccomp_allowed_syscalls: u32,
    /// Human-readable explanations of every layer that is not `On` or `NotInProfile`.
    pub notes: Vec<String>,
}

impl SandboxReport {
    /// A report of no layer at all: every one `Unavailable`, until the step that enters it says
    /// otherwise (or, for a process that enters none, for good).
    pub fn unconfined() -> SandboxReport {
        SandboxReport {
            no_new_privs: Layer::Unavailable,
            capabilities_dropped: Layer::Unavailable,
            rlimits: Layer::Unavailable,
            not_dumpable: Layer::Unavailable,
            user_ns: Layer::Unavailable,
            mount_ns: Layer::Unavailable,
            pid_ns: Layer::Unavailable,
            ipc_ns: Layer::Unavailable,
            net_ns: Layer::Unavailable,
            landlock_fs: Layer::Unavailable,
            landlock_net: Layer::Unavailable,
            landlock_scope: Layer::Unavailable,
            landlock_abi: 0,
            seccomp: Layer::Unavailable,
            seccomp_allowed_syscalls: 0,
            notes: Vec::new(),
        }
    }
}

/// The role of a LAN socket the broker bound and hands to `lumen-net`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketRole {
    /// TCP, nvhttp over plain HTTP (port_base).
    Http,
    /// TCP, nvhttp over HTTPS (port_base − 5).
    Https,
    /// TCP, RTSP (port_base + 21).
    Rtsp,
    /// UDP, video (port_base + 9).
    Video,
    /// UDP, ENet control (port_base + 10).
    Control,
    /// UDP, audio (port_base + 11).
    Audio,
    /// UDP 5353, multicast DNS (joined to 224.0.0.251): `lumen-net` advertises `_nvstream._tcp`
    /// on it (see [`MdnsAdvert`]). Absent when mDNS is turned off.
    Mdns,
}

/// What `lumen-net` advertises over mDNS: the broker knows it (net cannot list interfaces after
/// lock-down) and sends it with [`BrokerMsg::NetMdns`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MdnsAdvert {
    /// The service instance name (`<instance>._nvstream._tcp.local.`): the host name, as Sunshine.
    pub instance: String,
    /// The host label of the A records (`<host>.local.`).
    pub host: String,
    /// The port the SRV record names: nvhttp over HTTP (port_base).
    pub port: u16,
    /// The IPv4 interfaces to answer on, each with its own address in the A record.
    pub interfaces: Vec<MdnsInterface>,
}

/// One IPv4 interface mDNS runs on, named by its address (and its subnet, to tell which
/// interface a query came from).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MdnsInterface {
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
}

/// Messages from the broker to a worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum BrokerMsg {
    /// Liveness check; the worker answers [`WorkerMsg::Pong`] with the same `seq`.
    Ping { seq: u64 },
    /// The LAN sockets for `lumen-net`; the message carries one fd per role, in this order.
    NetSockets { roles: Vec<SocketRole> },
    /// `lumen-net`: what to advertise on the [`SocketRole::Mdns`] socket (sent right after
    /// `NetSockets` when that carried one).
    NetMdns(MdnsAdvert),
    /// Start capturing for a session (`lumen-capture`). fds, in this order: the frame pool memfd
    /// (read-write), capture's end of the capture↔encode channel, the PCM ring memfd and its
    /// doorbell (capture produces), and, for [`CaptureSource::PipeWire`], the PipeWire remote.
    /// Replaces any session in progress.
    StartCapture {
        params: SessionParams,
        pool: FramePoolSpec,
        source: CaptureSource,
        generation: Generation,
    },
    /// Start encoding for a session (`lumen-encode`). fds, in this order: the frame pool memfd
    /// (read-only), encode's end of the capture↔encode channel, the PCM ring memfd and doorbell
    /// (encode consumes), the video ring memfd and doorbell, the audio ring memfd and doorbell
    /// (encode produces both), and encode's end of the consumer→encode control channel.
    /// Replaces any session in progress.
    StartEncode {
        params: SessionParams,
        pool: FramePoolSpec,
        generation: Generation,
    },
    /// End the session in progress, if any, and drop everything it held.
    StopSession,
    /// `lumen-net`: the host's public identity and the paired clients (after every `Ready`, and
    /// whenever they change).
    NetIdentity(NetIdentity),
    /// `lumen-net`: the answer to its `WorkerMsg::NetRequest` with the same `id`.
    NetReply { id: u64, reply: NetReply },
    /// `lumen-net`: the consumer's ends of the running stream's rings, for `generation` (sent
    /// after `StreamStarting` and again after every capture/encode restart; the newest generation
    /// replaces the rings net reads). fds, in this order: the video ring memfd and doorbell, the
    /// audio ring memfd and doorbell, net's end of the net → encode control channel
    /// (`media::EncoderControl`: IDR requests, bitrate).
    StreamRings { generation: Generation },
    /// `lumen-net` and `lumen-input`: this side's end of their direct channel (one fd), on which
    /// net sends `input::NetToInput` and input answers `input::InputToNet`. Sent after each
    /// `Ready` of either worker (a restart of one gets a fresh pair, and the other its new end);
    /// it replaces the previous channel.
    InputChannel,
    /// `lumen-input`: the devices to inject into (after each `Ready`; replaces the previous
    /// ones). fds, in this order: the EIS connection when `eis` (a connected `AF_UNIX` stream
    /// socket: a compositor's EIS socket or the RemoteDesktop portal's `ConnectToEIS`), then
    /// `uinput` fds of `/dev/uinput`, each opened separately (the kernel makes one virtual
    /// device per open file, so one per pad). `uinput == 0` means gamepads are unavailable.
    InputDevices { eis: bool, uinput: u8 },
    /// Stop cleanly now.
    Shutdown,
}

/// Messages from a worker to the broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WorkerMsg {
    /// Sent once, right after lock-down, before the worker reads anything untrusted.
    Ready {
        kind: WorkerKind,
        sandbox: SandboxReport,
    },
    /// Answer to [`BrokerMsg::Ping`].
    Pong { seq: u64 },
    /// A failure the worker reports (e.g. a malformed message it refused); it may keep running.
    Error { message: String },
    /// The session (of `generation`) is running in this worker.
    SessionStarted { generation: Generation },
    /// The session (of `generation`) cannot run here, and why (a format the encoder cannot take, a
    /// missing encoder, an unknown dmabuf modifier); the worker stays up and waits for the next one.
    SessionFailed {
        generation: Generation,
        message: String,
    },
    /// Counters of the running session, about once a second.
    SessionStats {
        generation: Generation,
        stats: MediaStats,
    },
    /// `lumen-net` only: an operation that needs the broker's secrets (see [`crate::net_msg`]).
    NetRequest { id: u64, request: NetRequest },
    /// `lumen-encode` only, once right after `Ready`: the codecs and audio layouts it can encode
    /// here (found before lock-down). The broker passes them on to lumen-net (`NetIdentity`) and
    /// refuses streams that ask for anything else.
    EncoderCapabilities(EncoderCapabilities),
    /// `lumen-net` only: the running stream's statistics, about once a second, and once more
    /// when it ends (`active: false`).
    /// (Boxed: its counters would make every message several hundred bytes.)
    NetStats(Box<NetStats>),
    /// `lumen-input` only: its counters, about once a second.
    InputStats(crate::input::InputStats),
}
