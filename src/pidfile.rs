//! `--pidfile PATH`: one host per pidfile. The file holds the supervisor's
//! pid and an exclusive flock for the host's life; a second host on the
//! same file refuses to start and names the pid holding it. A file left by
//! a host that died is not locked, so it is taken over.
//!
//! A host started as root often writes its pidfile into a folder others
//! can write to. So the last component is opened without following a
//! symbolic link (a link planted there, dangling or not, would make root
//! truncate or create its target), only a regular file with one link is
//! taken, and at exit the name is removed only if it still is the file
//! this host locked (same device and inode, looked up in the folder held
//! open since the start): a file swapped in meanwhile stays.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::fstatat;
use nix::unistd::{unlinkat, UnlinkatFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PidFileError {
    #[error("cannot open the pidfile {0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("the pidfile {0} is a symbolic link: refusing to write through it; remove it, or pass another --pidfile")]
    SymbolicLink(PathBuf),
    #[error("the pidfile {0} is not a regular file; remove it, or pass another --pidfile")]
    NotRegular(PathBuf),
    #[error("the pidfile {0} has {1} hard links: refusing to write to a file known by other names; remove it, or pass another --pidfile")]
    HardLinked(PathBuf, u64),
    #[error("the pidfile {0} changed while it was opened (another process is renaming files in its folder)")]
    Swapped(PathBuf),
    #[error("another lrpm-host (pid {1}) holds the pidfile {0}; stop it, or pass another --pidfile")]
    Held(PathBuf, String),
    #[error("cannot lock the pidfile {0}: {1}")]
    Lock(PathBuf, Errno),
    #[error("cannot write the pidfile {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The locked pidfile; removed when dropped (a clean exit), if it is still ours.
#[derive(Debug)]
pub struct PidFile {
    /// The folder the pidfile is in, held so that removal looks the name up
    /// where the file was created, not through a path that may point
    /// elsewhere by then.
    folder: File,
    name: OsString,
    device: u64,
    inode: u64,
    lock: Flock<File>,
}

/// Device and inode of `name` in `folder` itself (a symbolic link is not followed).
fn identity_in(folder: &File, name: &OsString) -> nix::Result<(u64, u64)> {
    let stat = fstatat(Some(folder.as_raw_fd()), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok((stat.st_dev, stat.st_ino))
}

impl PidFile {
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        let open_error = |e| PidFileError::Open(path.to_path_buf(), e);
        let name = path
            .file_name()
            .ok_or_else(|| open_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name")))?
            .to_os_string();
        let folder_path = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let folder = OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_DIRECTORY.bits())
            .open(folder_path)
            .map_err(open_error)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            // O_NONBLOCK: opening a FIFO or a device planted there must not wait.
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => PidFileError::SymbolicLink(path.to_path_buf()),
                _ => open_error(e),
            })?;
        let metadata = file.metadata().map_err(open_error)?;
        if !metadata.file_type().is_file() {
            return Err(PidFileError::NotRegular(path.to_path_buf()));
        }
        if metadata.nlink() > 1 {
            return Err(PidFileError::HardLinked(path.to_path_buf(), metadata.nlink()));
        }
        // The file opened through the path must be the one the held folder names.
        match identity_in(&folder, &name) {
            Ok(identity) if identity == (metadata.dev(), metadata.ino()) => {}
            _ => return Err(PidFileError::Swapped(path.to_path_buf())),
        }
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
        Ok(PidFile { folder, name, device: metadata.dev(), inode: metadata.ino(), lock })
    }

    /// The descriptors children must close: a child holding the file would
    /// keep the lock after the host is gone.
    pub fn raw_fds(&self) -> [RawFd; 2] {
        [self.lock.as_raw_fd(), self.folder.as_raw_fd()]
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if identity_in(&self.folder, &self.name) == Ok((self.device, self.inode)) {
            let _ = unlinkat(Some(self.folder.as_raw_fd()), self.name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}
