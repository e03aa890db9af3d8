//! The control socket: non-blocking accept/read/write driven by the
//! supervisor's poll loop. It never blocks and never decides anything: whole
//! requests go up to the supervisor, responses come back down.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::codec::{encode, FrameDecoder};

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

struct Client {
    stream: UnixStream,
    decoder: FrameDecoder,
    outgoing: Vec<u8>,
    /// How much of `outgoing` was written: a large reply goes out in many
    /// writes, never moved around in memory between them.
    written: usize,
    awaiting_response: bool,
    deadline: Instant,
}

pub type ClientId = u64;

/// How an accept round ended.
#[derive(Debug)]
pub enum AcceptOutcome {
    /// Every pending connection was taken (`accepted` of them).
    Drained { accepted: usize },
    /// EMFILE/ENFILE: connections wait in the backlog until descriptors free up.
    OutOfDescriptors(std::io::Error),
}

pub struct ControlServer {
    path: PathBuf,
    listener: UnixListener,
    clients: HashMap<ClientId, Client>,
    next_id: ClientId,
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
        listener.set_nonblocking(true).map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
        Ok(ControlServer { path: path.to_path_buf(), listener, clients: HashMap::new(), next_id: 0 })
    }

    /// The listening socket a previous image of this host handed over
    /// (`lrpmctl upgrade`): no client is refused while the host replaces itself.
    pub fn adopt(listener: std::os::fd::OwnedFd, path: &Path) -> Result<Self, ControlError> {
        let listener = UnixListener::from(listener);
        listener.set_nonblocking(true).map_err(|e| ControlError::Bind(path.to_path_buf(), e))?;
        Ok(ControlServer { path: path.to_path_buf(), listener, clients: HashMap::new(), next_id: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Every descriptor a forked child must close.
    pub fn all_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.listener.as_raw_fd()];
        fds.extend(self.clients.values().map(|c| c.stream.as_raw_fd()));
        fds
    }

    /// Client descriptors to poll, with whether each wants to write. A
    /// client waiting for a deferred answer is not polled: it has nothing
    /// more to send, and its hang-up would wake every turn.
    pub fn client_fds(&self) -> Vec<(ClientId, BorrowedFd<'_>, bool)> {
        self.clients
            .iter()
            .filter(|(_, c)| !(c.awaiting_response && c.outgoing.is_empty()))
            .map(|(id, c)| (*id, c.stream.as_fd(), c.written < c.outgoing.len()))
            .collect()
    }

    /// The answer to this client's request comes later (an upgrade's
    /// outcome): it is kept until `until` instead of the usual timeout.
    pub fn defer(&mut self, id: ClientId, until: Instant) {
        if let Some(client) = self.clients.get_mut(&id) {
            client.deadline = until;
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.values().map(|c| c.deadline).min()
    }

    /// Accepts every pending connection. Running out of descriptors is
    /// reported (the caller stops polling the listener for a while instead of
    /// spinning on a connection it cannot take).
    pub fn accept_all(&mut self, now: Instant) -> AcceptOutcome {
        let mut accepted = 0;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    accepted += 1;
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closed at once
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.clients.insert(
                        id,
                        Client {
                            stream,
                            decoder: FrameDecoder::new(MAX_REQUEST),
                            outgoing: Vec::new(),
                            written: 0,
                            awaiting_response: false,
                            deadline: now + CLIENT_TIMEOUT,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return AcceptOutcome::Drained { accepted },
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    return AcceptOutcome::OutOfDescriptors(e)
                }
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    return AcceptOutcome::Drained { accepted };
                }
            }
        }
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Reads from a readable client; returns its request once whole.
    pub fn read_client(&mut self, id: ClientId) -> Option<String> {
        let client = self.clients.get_mut(&id)?;
        if client.awaiting_response {
            return None;
        }
        let mut buf = [0u8; 4096];
        let mut closed = false;
        loop {
            match client.stream.read(&mut buf) {
                Ok(0) => {
                    // Half-closed after a whole request (nc -N, socat): still answer it.
                    closed = true;
                    break;
                }
                Ok(n) => client.decoder.push(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.clients.remove(&id);
                    return None;
                }
            }
            if client.decoder.pending() as u64 > MAX_REQUEST + 8 {
                break;
            }
        }
        match client.decoder.next_frame() {
            Ok(Some(frame)) => {
                client.awaiting_response = true;
                Some(String::from_utf8_lossy(&frame).into_owned())
            }
            Ok(None) => {
                if closed {
                    self.clients.remove(&id);
                }
                None
            }
            Err(e) => {
                tracing::warn!("control client refused: {e}");
                self.clients.remove(&id);
                None
            }
        }
    }

    /// Queues the response and tries to send it at once.
    pub fn respond(&mut self, id: ClientId, response: &str) {
        if let Some(client) = self.clients.get_mut(&id) {
            client.outgoing = encode(response.as_bytes());
            client.written = 0;
            self.write_client(id);
        }
    }

    /// Writes pending output; the connection closes once the response is out.
    pub fn write_client(&mut self, id: ClientId) {
        let Some(client) = self.clients.get_mut(&id) else { return };
        while client.written < client.outgoing.len() {
            match client.stream.write(&client.outgoing[client.written..]) {
                Ok(0) => break,
                Ok(n) => client.written += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.clients.remove(&id);
    }

    /// Drops clients that did not finish in time.
    pub fn expire(&mut self, now: Instant) {
        self.clients.retain(|_, c| c.deadline > now);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
