//! `--log-file PATH`: the host's log and its workers' forwarded output go
//! to a file instead of the streams the host was started with, so that a
//! reader that stops reading can never make the host drop a line (a
//! regular file takes every write). The file is opened in append mode and
//! put in place of descriptors 1 and 2 (everything the process writes goes
//! there, a panic's message too); `reopen` (SIGHUP, `lrpmctl reopen-logs`)
//! opens the path again and swaps it in, for logrotate's rename-then-signal.

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static PATH: OnceLock<PathBuf> = OnceLock::new();

/// Opens `path` (created 0640 if missing) and makes it the host's stdout
/// and stderr from now on.
pub fn install(path: &Path) -> io::Result<()> {
    let absolute = crate::cli::absolute(path);
    swap_in(&absolute)?;
    let _ = PATH.set(absolute);
    Ok(())
}

/// The path given with `--log-file`, if any.
pub fn path() -> Option<&'static Path> {
    PATH.get().map(PathBuf::as_path)
}

/// Opens the log file's path again (logrotate renamed the old one away)
/// and writes there from now on; None without `--log-file`. On an error
/// the host keeps writing to the file it had.
pub fn reopen() -> Option<io::Result<()>> {
    Some(swap_in(PATH.get()?))
}

fn swap_in(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("--log-file {}: {e}", path.display())))?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!("--log-file {}: not a regular file", path.display())));
    }
    // dup2 replaces each descriptor atomically: no write goes nowhere.
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        nix::unistd::dup2(file.as_raw_fd(), target)
            .map_err(|e| io::Error::other(format!("--log-file {}: dup2: {e}", path.display())))?;
    }
    Ok(())
}
