//! The broker's TOML config file. Every key has a default, so a missing file is fine; an unknown
//! key or a malformed value is an error naming the file and line, never silently ignored.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use serde::Deserialize;

/// Why the config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
}

/// The broker's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The address every LAN socket binds to.
    pub bind: IpAddr,
    /// Sunshine's base port; the others are fixed offsets from it.
    pub port_base: u16,
    /// Advertise `_nvstream._tcp` over mDNS (UDP 5353), so Moonlight clients find the host.
    pub mdns: bool,
    pub sandbox: SandboxConfig,
    pub capture: CaptureConfig,
    pub stream: StreamConfig,
    /// `[input]`: where lumen-input injects (see `crate::input`).
    pub input: crate::input::InputConfig,
}

/// `[stream]`: how streams are served.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Encrypt video (AES-128-GCM per datagram) for every client that can: on by default, as the
    /// host faces untrusted networks; turn it off only on a trusted LAN.
    pub encrypt_video: bool,
}

impl Default for StreamConfig {
    fn default() -> StreamConfig {
        StreamConfig {
            encrypt_video: true,
        }
    }
}

/// Where pictures and sound come from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The built-in moving test pattern and test tone (the embedded default).
    #[default]
    TestPattern,
    /// A PipeWire node (e.g. a compositor's screen-cast stream or a headless source).
    Pipewire,
    /// The screen the user picks through the ScreenCast portal (`xdg-desktop-portal`): the
    /// broker opens the portal session and hands capture the portal's PipeWire remote.
    Portal,
}

/// How the ScreenCast portal draws the pointer.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CursorMode {
    /// Drawn into the picture (a client sees where the pointer is without extra work).
    #[default]
    Embedded,
    /// Left out of the picture.
    Hidden,
    /// Sent as PipeWire metadata beside the picture.
    Metadata,
}

/// `[capture]`: the capture source.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    pub source: SourceKind,
    /// PipeWire: the video node's name or serial.
    pub video_node: String,
    /// PipeWire: the audio node; empty means the monitor of the default sink.
    pub audio_node: Option<String>,
    /// PipeWire: the daemon's socket (default `$PIPEWIRE_REMOTE` or `$XDG_RUNTIME_DIR/pipewire-0`).
    pub pipewire_socket: Option<std::path::PathBuf>,
    /// Portal: how the pointer is drawn.
    pub portal_cursor: CursorMode,
    /// Portal: where the restore token is kept, so a broker restart reopens the same screen
    /// without asking the user again (default `portal-restore-token` in the state dir).
    pub portal_restore_token_file: Option<std::path::PathBuf>,
    /// The largest source picture a frame slot must hold (the stream may be smaller: encode scales).
    pub max_source_width: u32,
    pub max_source_height: u32,
}

impl Default for CaptureConfig {
    fn default() -> CaptureConfig {
        CaptureConfig {
            source: SourceKind::TestPattern,
            video_node: String::new(),
            audio_node: None,
            pipewire_socket: None,
            portal_cursor: CursorMode::Embedded,
            portal_restore_token_file: None,
            max_source_width: 3840,
            max_source_height: 2160,
        }
    }
}

impl CaptureConfig {
    /// The largest source picture, bounded to 8K so a typo cannot ask for a huge pool.
    pub fn max_source(&self) -> (u32, u32) {
        (
            self.max_source_width
                .clamp(64, lumen_ipc::media::MAX_DIMENSION),
            self.max_source_height
                .clamp(64, lumen_ipc::media::MAX_DIMENSION),
        )
    }
}

/// How workers are confined.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The uid workers switch to when the broker runs as root (they never run as uid 0).
    pub worker_uid: u32,
    /// The gid workers switch to when the broker runs as root.
    pub worker_gid: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port_base: 47989,
            mdns: true,
            sandbox: SandboxConfig::default(),
            capture: CaptureConfig::default(),
            stream: StreamConfig::default(),
            input: crate::input::InputConfig::default(),
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> SandboxConfig {
        // nobody/nogroup on Debian and most distributions.
        SandboxConfig {
            worker_uid: 65534,
            worker_gid: 65534,
        }
    }
}

impl Config {
    /// Loads `path`, or the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Parses config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| {
                    text.get(..span.start)
                        .map_or(0, |s| s.matches('\n').count())
                        + 1
                })
                .unwrap_or(1);
            ConfigError::Parse {
                path: path.display().to_string(),
                line,
                message: e.message().trim().to_string(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/x/config.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.port_base, 47989);
        assert_eq!(c.bind.to_string(), "0.0.0.0");
    }

    #[test]
    fn values_are_read() {
        let c = parse("bind = \"127.0.0.1\"\nport_base = 40000\n[sandbox]\nworker_uid = 1234\n")
            .unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert_eq!(c.port_base, 40000);
        assert_eq!(c.sandbox.worker_uid, 1234);
        assert_eq!(c.sandbox.worker_gid, 65534);
    }

    #[test]
    fn video_encryption_is_on_unless_turned_off() {
        assert!(parse("").unwrap().stream.encrypt_video);
        assert!(
            !parse("[stream]\nencrypt_video = false\n")
                .unwrap()
                .stream
                .encrypt_video
        );
    }

    #[test]
    fn mdns_is_on_unless_turned_off() {
        assert!(parse("").unwrap().mdns);
        assert!(!parse("mdns = false\n").unwrap().mdns);
        assert!(parse("mdns = \"no\"\n").is_err());
    }

    #[test]
    fn capture_source_is_read() {
        let c = parse("[capture]\nsource = \"pipewire\"\nvideo_node = \"test-src\"\n").unwrap();
        assert_eq!(c.capture.source, SourceKind::Pipewire);
        assert_eq!(c.capture.video_node, "test-src");
        assert_eq!(c.capture.audio_node, None);
        assert_eq!(parse("").unwrap().capture.source, SourceKind::TestPattern);
        assert!(parse("[capture]\nsource = \"x11\"\n").is_err());
        let huge = parse("[capture]\nmax_source_width = 100000\n").unwrap();
        assert_eq!(huge.capture.max_source().0, lumen_ipc::media::MAX_DIMENSION);
    }

    #[test]
    fn portal_source_is_read() {
        let c = parse(
            "[capture]\nsource = \"portal\"\nportal_cursor = \"metadata\"\nportal_restore_token_file = \"/x/token\"\n",
        )
        .unwrap();
        assert_eq!(c.capture.source, SourceKind::Portal);
        assert_eq!(c.capture.portal_cursor, CursorMode::Metadata);
        assert_eq!(
            c.capture.portal_restore_token_file.as_deref(),
            Some(Path::new("/x/token"))
        );
        let defaults = parse("[capture]\nsource = \"portal\"\n").unwrap();
        assert_eq!(defaults.capture.portal_cursor, CursorMode::Embedded);
        assert_eq!(defaults.capture.portal_restore_token_file, None);
        assert!(parse("[capture]\nportal_cursor = \"sparkly\"\n").is_err());
    }

    #[test]
    fn input_is_read() {
        let c = parse("[input]\neis_socket = \"/run/eis-0\"\nuinput = false\n").unwrap();
        assert_eq!(c.input.eis_socket.as_deref(), Some("/run/eis-0"));
        assert!(!c.input.uinput);
        let defaults = parse("").unwrap().input;
        assert_eq!(defaults.eis_socket, None);
        assert!(defaults.uinput);
        assert!(parse("[input]\neis = \"x\"\n").is_err());
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let err = parse("port_base = 40000\n\nbnd = \"1.2.3.4\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("/x/config.toml line 3:"), "{text}");
        assert!(text.contains("bnd"), "{text}");
    }

    #[test]
    fn bad_value_is_an_error() {
        let err = parse("port_base = 70000\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(parse("bind = \"not an address\"").is_err());
    }

    #[test]
    fn missing_file_is_the_defaults() {
        let c = Config::load(Path::new("/nonexistent/lumen/config.toml")).unwrap();
        assert_eq!(c, Config::default());
    }
}
