//! `--pidfile PATH`: one host per pidfile. The file holds the supervisor's
//! pid and an exclusive flock for the host's life; a second host on the
//! same file refuses to start and names the pid holding it. A file left by
//! a host that died is not locked, so it is taken over.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PidFileError {
    #[error("cannot open the pidfile {0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("another lrpm-host (pid {1}) holds the pidfile {0}; stop it, or pass another --pidfile")]
    Held(PathBuf, String),
    #[error("cannot lock the pidfile {0}: {1}")]
    Lock(PathBuf, Errno),
    #[error("cannot write the pidfile {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The locked pidfile; removed when dropped (a clean exit).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    lock: Flock<File>,
}

impl PidFile {
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| PidFileError::Open(path.to_path_buf(), e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "unknown".to_string() } else { holder.to_string() };
                return Err(PidFileError::Held(path.to_path_buf(), holder));
            }
            Err((_, e)) => return Err(PidFileError::Lock(path.to_path_buf(), e)),
        };
        let write = |lock: &mut Flock<File>| -> std::io::Result<()> {
            lock.set_len(0)?;
            lock.rewind()?;
            lock.write_all(format!("{}\n", std::process::id()).as_bytes())?;
            lock.flush()
        };
        write(&mut lock).map_err(|e| PidFileError::Write(path.to_path_buf(), e))?;
        Ok(PidFile { path: path.to_path_buf(), lock })
    }

    /// The descriptor children must close: a child holding it would keep
    /// the lock after the host is gone.
    pub fn raw_fd(&self) -> RawFd {
        self.lock.as_raw_fd()
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
