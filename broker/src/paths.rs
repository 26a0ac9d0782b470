//! Where the broker keeps its config, its state and its control socket.
//!
//! By default these follow the XDG base directories; `--state-dir DIR` puts all three under one
//! directory so several brokers can run side by side (tests do this). Every directory the broker
//! creates is mode 0700: the state holds the host's private key and the socket accepts commands.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the broker's directories could not be found or made.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("neither {0} nor HOME is set to an absolute path; pass --state-dir DIR")]
    NoHome(&'static str),
    #[error("resolving --state-dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a directory owned by uid {uid} with mode 0700 (refusing to use it)")]
    Unsafe { path: PathBuf, uid: u32 },
}

/// The broker's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// `config.toml`; may be absent (defaults apply).
    pub config_file: PathBuf,
    /// Host identity and paired clients.
    pub state_dir: PathBuf,
    /// Holds the control socket.
    pub runtime_dir: PathBuf,
    /// The control socket itself.
    pub control_socket: PathBuf,
}

impl Paths {
    /// Resolves the paths from `--state-dir` or the process environment.
    pub fn resolve(state_dir: Option<&Path>) -> Result<Paths, PathsError> {
        Paths::resolve_with(state_dir, |name| std::env::var_os(name), current_uid())
    }

    /// Resolves the paths with `env` standing in for the environment (tests pass their own).
    pub fn resolve_with(
        state_dir: Option<&Path>,
        env: impl Fn(&str) -> Option<OsString>,
        uid: u32,
    ) -> Result<Paths, PathsError> {
        if let Some(dir) = state_dir {
            let dir = std::path::absolute(dir).map_err(|source| PathsError::StateDir {
                path: dir.to_path_buf(),
                source,
            })?;
            return Ok(Paths {
                config_file: dir.join("config.toml"),
                state_dir: dir.join("state"),
                control_socket: dir.join("control.sock"),
                runtime_dir: dir,
            });
        }
        // The XDG spec says relative values are invalid and must be ignored.
        let absolute = |name: &str| env(name).map(PathBuf::from).filter(|p| p.is_absolute());
        let home = absolute("HOME");
        let xdg = |var: &'static str, fallback: &str| -> Result<PathBuf, PathsError> {
            match absolute(var) {
                Some(dir) => Ok(dir.join("lumen")),
                None => home
                    .as_ref()
                    .map(|h| h.join(fallback).join("lumen"))
                    .ok_or(PathsError::NoHome(var)),
            }
        };
        let config_dir = xdg("XDG_CONFIG_HOME", ".config")?;
        let state_dir = xdg("XDG_STATE_HOME", ".local/state")?;
        // Without XDG_RUNTIME_DIR (no login session, e.g. a root shell or cron) the socket lives
        // in a per-uid directory under /tmp that we create 0700 and check is ours before use, so
        // nobody else can plant a socket there.
        let runtime_dir = match absolute("XDG_RUNTIME_DIR") {
            Some(dir) => dir.join("lumen"),
            None => PathBuf::from(format!("/tmp/lumen-{uid}")),
        };
        Ok(Paths {
            config_file: config_dir.join("config.toml"),
            state_dir,
            control_socket: runtime_dir.join("control.sock"),
            runtime_dir,
        })
    }

    /// Creates the state and runtime directories (0700) and checks the runtime directory is
    /// ours, not a symlink, and private, since anyone who can reach the socket can pair clients.
    pub fn ensure_dirs(&self) -> Result<(), PathsError> {
        create_private_dir(&self.state_dir)?;
        create_private_dir(&self.runtime_dir)?;
        check_private_dir(&self.runtime_dir, current_uid())
    }
}

/// The effective uid of this process.
pub fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn create_private_dir(path: &Path) -> Result<(), PathsError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| PathsError::Create {
            path: path.to_path_buf(),
            source,
        })
}

/// Refuses a directory that is a symlink or someone else's; tightens one of ours that others
/// could enter (e.g. a `--state-dir` made by `mkdir` with the usual umask) to 0700.
fn check_private_dir(path: &Path, uid: u32) -> Result<(), PathsError> {
    let unsafe_dir = || PathsError::Unsafe {
        path: path.to_path_buf(),
        uid,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|_| unsafe_dir())?;
    if !meta.is_dir() || meta.uid() != uid {
        return Err(unsafe_dir());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|_| unsafe_dir())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn xdg_variables_win() {
        let p = Paths::resolve_with(
            None,
            env(&[
                ("HOME", "/h"),
                ("XDG_CONFIG_HOME", "/c"),
                ("XDG_STATE_HOME", "/s"),
                ("XDG_RUNTIME_DIR", "/r"),
            ]),
            1000,
        )
        .unwrap();
        assert_eq!(p.config_file, PathBuf::from("/c/lumen/config.toml"));
        assert_eq!(p.state_dir, PathBuf::from("/s/lumen"));
        assert_eq!(p.control_socket, PathBuf::from("/r/lumen/control.sock"));
    }

    #[test]
    fn home_defaults_and_tmp_fallback() {
        let p = Paths::resolve_with(
            None,
            env(&[
                ("HOME", "/h"),
                ("XDG_STATE_HOME", ""),
                ("XDG_CONFIG_HOME", "rel"),
            ]),
            1000,
        )
        .unwrap();
        assert_eq!(p.config_file, PathBuf::from("/h/.config/lumen/config.toml"));
        assert_eq!(p.state_dir, PathBuf::from("/h/.local/state/lumen"));
        assert_eq!(p.runtime_dir, PathBuf::from("/tmp/lumen-1000"));
    }

    #[test]
    fn no_home_is_an_error() {
        assert!(matches!(
            Paths::resolve_with(None, env(&[]), 1000),
            Err(PathsError::NoHome(_))
        ));
    }

    #[test]
    fn state_dir_holds_everything() {
        let p = Paths::resolve_with(Some(Path::new("/d")), env(&[]), 1000).unwrap();
        assert_eq!(p.config_file, PathBuf::from("/d/config.toml"));
        assert_eq!(p.state_dir, PathBuf::from("/d/state"));
        assert_eq!(p.control_socket, PathBuf::from("/d/control.sock"));
        let rel = Paths::resolve_with(Some(Path::new("rel")), env(&[]), 1000).unwrap();
        assert!(rel.control_socket.is_absolute());
    }

    #[test]
    fn ensure_dirs_makes_private_dirs_tightens_ours_and_refuses_symlinks() {
        let base = std::env::temp_dir().join(format!("lumen-paths-{}", std::process::id()));
        let p = Paths::resolve_with(Some(&base), env(&[]), current_uid()).unwrap();
        p.ensure_dirs().unwrap();
        let mode = std::fs::metadata(&p.state_dir)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.ensure_dirs().unwrap();
        let mode = std::fs::metadata(&base).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let link = base.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&base, &link).unwrap();
        let via_link = Paths::resolve_with(Some(&link), env(&[]), current_uid()).unwrap();
        assert!(matches!(
            via_link.ensure_dirs(),
            Err(PathsError::Unsafe { .. })
        ));
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}
