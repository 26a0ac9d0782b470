//! Crash-safe state files: a write goes to a temp file in the same directory, is fsynced, renamed
//! over the target and the directory fsynced, so after any interruption the file holds either the
//! old or the new contents. A file that exists but does not parse is renamed aside to
//! `NAME.corrupt-<unix time>` and reported, so a human can look at it; it is never overwritten.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A corrupt state file that was moved out of the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside {
    pub path: PathBuf,
    pub moved_to: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for SetAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was corrupt ({}); moved to {}",
            self.path.display(),
            self.reason,
            self.moved_to.display()
        )
    }
}

/// What reading a state file found.
#[derive(Debug)]
pub enum Loaded<T> {
    Missing,
    Parsed(T),
    Corrupt(SetAside),
}

/// Writes `contents` to `path` (mode 0600) so that a crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        file.write_all(contents).map_err(io("writing", &tmp))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("renaming over", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing directory", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads `path` and parses it; a file that fails to parse is set aside and reported. Temp files
/// that a killed writer of `path` left behind are removed first.
pub fn read_or_set_aside<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Loaded<T>, StateError> {
    remove_stale_temp_files(path);
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(io("reading", path)(e)),
    };
    let parsed = String::from_utf8(bytes)
        .map_err(|_| "not UTF-8".to_string())
        .and_then(|text| parse(&text));
    match parsed {
        Ok(value) => Ok(Loaded::Parsed(value)),
        Err(reason) => Ok(Loaded::Corrupt(set_aside(path, reason)?)),
    }
}

/// Removes the `.NAME.tmp-<pid>-<random>` files of `path` whose writer process is gone: a writer
/// killed between creating and renaming its temp file leaves it behind, and nothing else would
/// ever remove it. A temp file of a live pid (another broker that is still writing, or a reused
/// pid) is left alone. Best effort: what cannot be listed or removed stays.
fn remove_stale_temp_files(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Renames `path` to `path.corrupt-<unix time>` (with a counter if that name is taken).
pub fn set_aside(path: &Path, reason: String) -> Result<SetAside, StateError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{}.corrupt-{now}", path.display());
    let mut moved_to = PathBuf::from(&base);
    let mut n = 1;
    while moved_to.exists() {
        moved_to = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &moved_to).map_err(io("setting aside", path))?;
    Ok(SetAside {
        path: path.to_path_buf(),
        moved_to,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::time::Duration;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lumen-atomic-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_replace_and_are_private() {
        let dir = scratch("write");
        let path = dir.join("f");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temp file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_leftover_temp_file_does_not_touch_the_target() {
        let dir = scratch("leftover");
        let path = dir.join("f");
        write_atomic(&path, b"old").unwrap();
        // What a crash between create and rename leaves behind.
        std::fs::write(dir.join(".f.tmp-1-0"), b"half of the ne").unwrap();
        match read_or_set_aside(&path, |s| Ok(s.to_string())).unwrap() {
            Loaded::Parsed(s) => assert_eq!(s, "old"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn temp_files_of_dead_writers_are_removed_on_read() {
        let dir = scratch("stale");
        let path = dir.join("f");
        write_atomic(&path, b"old").unwrap();
        // A writer that is gone: a child that has exited and been reaped.
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.join(format!(".f.tmp-{dead}-00000000000000ab"));
        let live = dir.join(format!(".f.tmp-{}-00000000000000cd", std::process::id()));
        let other = dir.join(format!(".g.tmp-{dead}-00000000000000ef"));
        for leftover in [&stale, &live, &other] {
            std::fs::write(leftover, b"half").unwrap();
        }
        match read_or_set_aside(&path, |s| Ok(s.to_string())).unwrap() {
            Loaded::Parsed(s) => assert_eq!(s, "old"),
            other => panic!("{other:?}"),
        }
        assert!(!stale.exists(), "a dead writer's temp file was kept");
        assert!(live.exists(), "a live writer's temp file was removed");
        assert!(other.exists(), "another file's temp file was removed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_and_corrupt() {
        let dir = scratch("corrupt");
        let path = dir.join("f");
        assert!(matches!(
            read_or_set_aside(&path, |s| Ok(s.len())).unwrap(),
            Loaded::Missing
        ));
        std::fs::write(&path, b"garbage").unwrap();
        let Loaded::Corrupt(aside) =
            read_or_set_aside(&path, |_| Err::<(), _>("bad".into())).unwrap()
        else {
            panic!("not reported as corrupt");
        };
        assert!(!path.exists());
        assert_eq!(std::fs::read(&aside.moved_to).unwrap(), b"garbage");
        assert!(aside.moved_to.to_string_lossy().contains("f.corrupt-"));
        // A second corrupt file the same second gets its own name.
        std::fs::write(&path, b"again").unwrap();
        let Loaded::Corrupt(second) =
            read_or_set_aside(&path, |_| Err::<(), _>("bad".into())).unwrap()
        else {
            panic!("not reported as corrupt");
        };
        assert_ne!(second.moved_to, aside.moved_to);
        std::fs::remove_dir_all(dir).unwrap();
    }

    const CHILD_ENV: &str = "LUMEN_ATOMIC_WRITER_CHILD";

    fn generation(n: u32) -> Vec<u8> {
        // Large enough that a kill lands mid-write often; every byte tells the generation.
        let mut v = format!("{n:08}\n").into_bytes();
        v.resize(256 * 1024, b'a' + (n % 26) as u8);
        v
    }

    fn is_whole_generation(bytes: &[u8]) -> bool {
        let Some(n) = std::str::from_utf8(bytes.get(..8).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            return false;
        };
        bytes == generation(n).as_slice()
    }

    /// Runs only as the child of `killed_writer_leaves_old_or_new`: rewrites the file forever.
    #[test]
    fn atomic_writer_child() {
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        for n in 1.. {
            write_atomic(Path::new(&path), &generation(n)).unwrap();
        }
    }

    #[test]
    fn killed_writer_leaves_old_or_new() {
        let dir = scratch("kill");
        let path = dir.join("state");
        write_atomic(&path, &generation(0)).unwrap();
        let exe = std::env::current_exe().unwrap();
        for round in 0..12u64 {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "state::atomic::tests::atomic_writer_child",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(20 + round * 7));
            child.kill().unwrap();
            child.wait().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert!(is_whole_generation(&bytes), "round {round}: partial file");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
