//! A connection to the user's PipeWire daemon, opened by the broker and handed to lumen-capture
//! (which cannot open sockets itself): the same role the ScreenCast portal's
//! `OpenPipeWireRemote` fd plays.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where the PipeWire socket is: `configured`, else `$PIPEWIRE_REMOTE` when it is a path, else
/// `$XDG_RUNTIME_DIR/pipewire-0`.
pub fn socket_path(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = configured {
        return Ok(path.to_path_buf());
    }
    if let Some(remote) = std::env::var_os("PIPEWIRE_REMOTE") {
        let remote = PathBuf::from(remote);
        if remote.is_absolute() {
            return Ok(remote);
        }
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").context(
        "no PipeWire socket: set capture.pipewire_socket, PIPEWIRE_REMOTE or XDG_RUNTIME_DIR",
    )?;
    Ok(PathBuf::from(runtime).join("pipewire-0"))
}

/// Connects to the PipeWire daemon and returns the connected socket.
pub fn connect(configured: Option<&Path>) -> anyhow::Result<OwnedFd> {
    let path = socket_path(configured)?;
    let stream = UnixStream::connect(&path)
        .with_context(|| format!("connecting to PipeWire at {}", path.display()))?;
    Ok(OwnedFd::from(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_socket_wins_and_a_missing_daemon_is_named() {
        let path = Path::new("/nonexistent/lumen/pipewire-0");
        assert_eq!(socket_path(Some(path)).unwrap(), path);
        let err = connect(Some(path)).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/lumen/pipewire-0"),
            "{err:#}"
        );
    }

    #[test]
    fn a_listening_socket_connects() {
        let dir = std::env::temp_dir().join(format!("lumen-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pipewire-0");
        let _ = std::fs::remove_file(&path);
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(connect(Some(&path)).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
