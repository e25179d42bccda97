//! The executive's runtime directory: where its socket, pid lock and persisted ring
//! sequence number live.
//!
//! `/run/aisexec` when running as root, else `$XDG_RUNTIME_DIR/aisexec`, else
//! `/tmp/aisexec-$UID`; a configured `aisexec { runtime_dir }` wins. The pid lock (an
//! exclusive `flock` on `aisexec.pid`) stops two executives from sharing one directory:
//! the second refuses to start instead of stealing the first one's socket.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use log::{debug, warn};

/// The socket clients connect to, inside the runtime directory.
pub const SOCKET_NAME: &str = "aisexec.sock";
const PID_NAME: &str = "aisexec.pid";
const RING_SEQ_NAME: &str = "ringseq";

/// The default runtime directory for this user.
pub fn default_dir() -> PathBuf {
    let uid = rustix::process::geteuid().as_raw();
    if uid == 0 {
        return PathBuf::from("/run/aisexec");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("aisexec"),
        _ => PathBuf::from(format!("/tmp/aisexec-{uid}")),
    }
}

/// A locked runtime directory, held for the executive's lifetime.
#[derive(Debug)]
pub struct RuntimeDir {
    dir: PathBuf,
    /// Holds the lock; closing the file (at exit, even by a crash) releases it.
    _lock: File,
}

#[derive(Debug)]
pub enum RuntimeError {
    Io {
        path: PathBuf,
        err: io::Error,
    },
    /// Another executive holds the directory.
    Locked {
        path: PathBuf,
        pid: Option<u32>,
    },
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            RuntimeError::Locked { path, pid } => {
                write!(f, "{} is in use by another aisexec", path.display())?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for RuntimeError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |err| RuntimeError::Io {
        path: path.to_path_buf(),
        err,
    }
}

impl RuntimeDir {
    /// Creates `dir` (mode 0700) if needed and takes its pid lock.
    pub fn open(dir: &Path) -> Result<RuntimeDir, RuntimeError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let pid_path = dir.join(PID_NAME);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&pid_path)
            .map_err(io_err(&pid_path))?;
        use rustix::fs::{flock, FlockOperation};
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut text = String::new();
            let pid = lock
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(RuntimeError::Locked {
                path: dir.to_path_buf(),
                pid,
            });
        }
        lock.set_len(0).map_err(io_err(&pid_path))?;
        writeln!(lock, "{}", std::process::id()).map_err(io_err(&pid_path))?;
        debug!(target: "main", "runtime directory {} locked", dir.display());
        Ok(RuntimeDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join(SOCKET_NAME)
    }

    /// The highest ring sequence number persisted by an earlier run (0 if none).
    pub fn load_ring_seq(&self) -> u64 {
        let path = self.dir.join(RING_SEQ_NAME);
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                warn!(target: "main", "{}: not a number, starting from ring seq 0", path.display());
                0
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => {
                warn!(target: "main", "{}: {e}; starting from ring seq 0", path.display());
                0
            }
        }
    }

    /// Persists `seq` (write to a temporary file, then rename: never a torn value).
    pub fn store_ring_seq(&self, seq: u64) -> io::Result<()> {
        let tmp = self.dir.join(format!("{RING_SEQ_NAME}.tmp"));
        fs::write(&tmp, format!("{seq}\n"))?;
        fs::rename(&tmp, self.dir.join(RING_SEQ_NAME))
    }

    /// Makes the socket reachable by the users the configuration allows (access itself
    /// is checked per connection with the peer's credentials).
    pub fn open_socket_permissions(&self) -> io::Result<()> {
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(self.socket_path(), fs::Permissions::from_mode(0o777))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aisexec-rt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_executive_cannot_take_the_directory() {
        let d = temp_dir("lock");
        let first = RuntimeDir::open(&d).unwrap();
        match RuntimeDir::open(&d) {
            Err(RuntimeError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        assert!(RuntimeDir::open(&d).is_ok(), "lock released with the first");
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn ring_seq_survives_a_restart() {
        let d = temp_dir("seq");
        {
            let rt = RuntimeDir::open(&d).unwrap();
            assert_eq!(rt.load_ring_seq(), 0);
            rt.store_ring_seq(1234).unwrap();
        }
        let rt = RuntimeDir::open(&d).unwrap();
        assert_eq!(rt.load_ring_seq(), 1234);
        let _ = fs::remove_dir_all(&d);
    }
}
