//! The control socket: its file, and php-lrpm's framing over the shared
//! connection table (src/connections.rs), driven by the supervisor's poll
//! loop. It never blocks and never decides anything: whole requests go up
//! to the supervisor, responses come back down.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::codec::{encode, FrameDecoder, HEADER_LEN};
use crate::connections::{ConnectionId, Connections, Decoded, Decoder, Limits, Outgoing, Overflow};

/// Requests are command lines; anything larger is hostile or broken.
pub const MAX_REQUEST: u64 = 1024 * 1024;
/// A client has this long to send its request and read the response.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections beyond this are accepted and closed at once.
pub const MAX_CLIENTS: usize = 4096;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("another lrpm-host is already answering on {0}; stop it or pass --control-socket with another path")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it (pass another --control-socket)")]
    NotASocket(PathBuf),
    #[error("cannot use the control socket directory {0}: {1}")]
    Directory(PathBuf, std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Bind(PathBuf, std::io::Error),
}

/// The folders a control socket may live in, in order of preference:
/// /run/lrpm-host, $XDG_RUNTIME_DIR/lrpm-host, /tmp/lrpm-host-UID.
fn socket_dir_candidates() -> Vec<PathBuf> {
    let mut candidates = vec![PathBuf::from("/run/lrpm-host")];
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        candidates.push(PathBuf::from(xdg).join("lrpm-host"));
    }
    candidates.push(PathBuf::from(format!("/tmp/lrpm-host-{}", nix::unistd::geteuid())));
    candidates
}

const SOCKET_NAME: &str = "control.sock";

/// Names the control socket for lrpm-host and lrpmctl when their option
/// does not; an empty value counts as unset.
pub const SOCKET_ENV: &str = "LRPM_SOCKET";

/// The socket `LRPM_SOCKET` names, if set and not empty.
pub fn socket_from_env() -> Option<PathBuf> {
    std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Default socket path for the server: the first candidate folder it can create and write.
pub fn default_socket_path() -> PathBuf {
    let candidates = socket_dir_candidates();
    let dir = candidates
        .iter()
        .find(|dir| ensure_private_dir(dir).is_ok())
        .unwrap_or_else(|| candidates.last().expect("non-empty"));
    dir.join(SOCKET_NAME)
}

/// Where a client looks when no --socket is given: the first default path that exists.
pub fn client_socket_path() -> PathBuf {
    let candidates: Vec<PathBuf> = socket_dir_candidates().into_iter().map(|dir| dir.join(SOCKET_NAME)).collect();
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| candidates[0].clone())
}

/// A default candidate folder usable for the socket: prepared as by
/// `prepare_socket_folder`, not a symlink, and writable by us.
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    prepare_socket_folder(dir)?;
    // /tmp/lrpm-host-UID has a predictable name in a shared folder.
    if std::fs::symlink_metadata(dir)?.file_type().is_symlink() {
        return Err(std::io::Error::other(format!("{} is a symlink", dir.display())));
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Creates the socket's folder (0700) when missing. An existing one must
/// belong to us or to root: its owner could replace the socket with one of
/// their own and answer our clients.
fn prepare_socket_folder(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let owner = std::fs::metadata(dir)?.uid();
    let euid = nix::unistd::geteuid().as_raw();
    if owner != euid && owner != 0 {
        return Err(std::io::Error::other(format!(
            "the folder belongs to uid {owner}, who could replace the socket; use a folder of uid {euid} or root"
        )));
    }
    Ok(())
}

/// php-lrpm's framing as the connection table reads it: one frame of at
/// most `MAX_REQUEST` bytes, refused as soon as its header announces more.
pub struct RequestDecoder(FrameDecoder);

impl Default for RequestDecoder {
    fn default() -> Self {
        RequestDecoder(FrameDecoder::new(MAX_REQUEST))
    }
}

impl Decoder for RequestDecoder {
    type Request = String;

    fn room(&self) -> usize {
        (MAX_REQUEST as usize + HEADER_LEN + 1).saturating_sub(self.0.pending())
    }

    fn push(&mut self, bytes: &[u8]) {
        self.0.push(bytes);
    }

    fn decode(&mut self) -> Decoded<String> {
        match self.0.next_frame() {
            Ok(Some(frame)) => Decoded::Request(String::from_utf8_lossy(&frame).into_owned()),
            Ok(None) => Decoded::Partial,
            Err(e) => Decoded::Dropped(e.to_string()),
        }
    }
}

pub type ClientId = ConnectionId;

const LIMITS: Limits = Limits { max_clients: MAX_CLIENTS, timeout: CLIENT_TIMEOUT, overflow: Overflow::Close };

/// The control socket's file and its connections.
pub struct ControlServer {
    path: PathBuf,
    pub clients: Connections<UnixListener, RequestDecoder>,
}

impl ControlServer {
    /// Binds the socket: a stale file is replaced, a live one is an error.
    pub fn bind(path: &Path, mode: u32) -> Result<Self, ControlError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            prepare_socket_folder(dir).map_err(|e| ControlError::Directory(dir.to_path_buf(), e))?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket(path.to_path_buf()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        // Create the socket with its final permissions: no moment where the
        // umask's looser mode applies (single-threaded, so umask is ours).
        let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o777 & !mode));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(previous);
        let listener = bound.map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
        Self::serve(listener, path)
    }

    /// The listening socket a previous image of this host handed over
    /// (`lrpmctl upgrade`): no client is refused while the host replaces itself.
    pub fn adopt(listener: std::os::fd::OwnedFd, path: &Path) -> Result<Self, ControlError> {
        Self::serve(UnixListener::from(listener), path)
    }

    fn serve(listener: UnixListener, path: &Path) -> Result<Self, ControlError> {
        listener.set_nonblocking(true).map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
        Ok(ControlServer { path: path.to_path_buf(), clients: Connections::new("control socket", listener, LIMITS) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket, as an upgrade hands it to the next image.
    pub fn listener_fd(&self) -> RawFd {
        self.clients.listener().as_raw_fd()
    }

    /// Queues a reply in php-lrpm's framing.
    pub fn respond(&mut self, id: ClientId, response: &str) {
        self.clients.respond(id, Outgoing { head: encode(response.as_bytes()), body: None });
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
