//! The zygote (the default; off with `--no-zygote`): one process that ran the bootstrap once and
//! forks workers on request, so that each worker starts inside a request
//! that already has the autoloader and everything the bootstrap built
//! (shared copy-on-write), instead of building it again.
//!
//! Protocol (csrc/lrpm_shim.h, `lrpm_zygote_request`/`lrpm_zygote_reply`):
//! a SOCK_SEQPACKET socketpair. A request is one message (header, title,
//! the worker's params JSON) with the worker's output pipes attached; the
//! replies come in order: READY once (or REFUSED, with why), then STARTED
//! with the worker's pid, or FAILED, for each request; or STALE (code it
//! loaded changed on disk), after which it ends without serving the rest.
//!
//! Workers stay the supervisor's direct children: the zygote forks an
//! intermediate that forks the worker and exits at once, and the supervisor
//! is a child subreaper, so the worker is reparented to it (and only then
//! arms PDEATHSIG). The supervisor learns the pid from the reply, which the
//! intermediate sends before it exits: replies are always read before exits
//! are reaped, so a worker that dies at once is never mistaken for an orphan.
//!
//! While the zygote is starting, down (restarting with backoff) or refused
//! (the bootstrap left a socket open), workers are forked by the supervisor
//! as with `--no-zygote`: the farm never waits for it. Which phase it is
//! in, and where a start goes, is `farm::zygote`'s pure lifecycle.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};

use crate::farm::WorkerKey;
use crate::php::zygote_wire;
use crate::process::shared_page::SharedPage;

/// A worker asked of the zygote, waiting for its pid.
pub struct PendingStart {
    pub key: WorkerKey,
    /// When the request was sent (see `REPLY_WAIT`).
    pub sent: Instant,
    pub name: String,
    pub label: String,
    /// Read ends of its stdout and stderr pipes.
    pub pipes: Option<(OwnedFd, OwnedFd)>,
    pub page: Option<SharedPage>,
}

/// One reply of the zygote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// With the KiB of free heap slots it took (csrc: take_zygote_free_slots).
    Ready(u32),
    Refused(String),
    Started(i32),
    Failed(Errno),
    /// Code it loaded changed on disk (what, in words): it has ended, and
    /// left every request not yet answered unserved.
    Stale(String),
}

/// The supervisor's connection to a running zygote (its lifecycle is
/// `farm::zygote`): the socket, the requests it has not answered, the
/// starts not sent yet.
pub struct Connection {
    socket: OwnedFd,
    pub pending: VecDeque<PendingStart>,
    /// Starts not sent yet, in order: asked for before it was ready (sent
    /// once it is, or forked by the supervisor if it is not ready within
    /// `farm::zygote::STARTUP_WAIT`), or while `MAX_IN_FLIGHT` requests were
    /// unanswered.
    pub awaiting: VecDeque<WorkerKey>,
}

/// Requests sent and not yet answered, at most. A farm of thousands asks
/// for all its workers in one turn: the rest wait in `awaiting` and go out
/// as replies come in, so the socket's buffer never fills (a full buffer
/// would make each further start fall back to a fork by the supervisor,
/// without the zygote's sharing).
pub const MAX_IN_FLIGHT: usize = 32;

/// A zygote that leaves a request unanswered this long is stuck (a fork
/// that hangs, a stopped process): it is killed and started again, and the
/// starts it owed are retried.
pub const REPLY_WAIT: Duration = Duration::from_secs(5);

/// The two ends of a new zygote's socket: (the supervisor's, the zygote's).
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    let (ours, theirs) =
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)?;
    // The zygote's end blocks: it waits for requests.
    crate::process::set_blocking(&theirs).map_err(|_| Errno::EIO)?;
    Ok((ours, theirs))
}

impl Connection {
    pub fn new(socket: OwnedFd) -> Connection {
        Connection { socket, pending: VecDeque::new(), awaiting: VecDeque::new() }
    }

    /// When the oldest unanswered request makes it count as stuck.
    pub fn reply_deadline(&self) -> Option<Instant> {
        self.pending.front().map(|start| start.sent + REPLY_WAIT)
    }

    /// Another request fits in the window.
    pub fn has_room(&self) -> bool {
        self.pending.len() < MAX_IN_FLIGHT
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Sends one request; the write ends of the worker's pipes go with it
    /// (the caller closes its copies). An error means: fork it yourself.
    pub fn request(
        &self,
        title: &str,
        params: &str,
        page: Option<&SharedPage>,
        stop_grace: Duration,
        write_ends: Option<(RawFd, RawFd)>,
    ) -> Result<(), Errno> {
        let header = zygote_wire::request_header(zygote_wire::request(
            page.map_or(0, |p| p.as_ptr() as usize as u64),
            stop_grace.as_millis().min(i64::MAX as u128) as i64,
            u32::try_from(title.len()).map_err(|_| Errno::EMSGSIZE)?,
            u32::try_from(params.len()).map_err(|_| Errno::EMSGSIZE)?,
        ));
        let iov = [IoSlice::new(&header), IoSlice::new(title.as_bytes()), IoSlice::new(params.as_bytes())];
        let fds: Vec<RawFd> = write_ends.map(|(out, err)| vec![out, err]).unwrap_or_default();
        let control = [ControlMessage::ScmRights(&fds)];
        let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &control };
        sendmsg::<()>(self.socket.as_raw_fd(), &iov, control, MsgFlags::MSG_NOSIGNAL, None).map(|_| ())
    }

    /// Every reply waiting in the socket.
    pub fn replies(&self) -> Vec<Reply> {
        let mut replies = Vec::new();
        let mut buffer = [0u8; 2048];
        loop {
            match recv(self.socket.as_raw_fd(), &mut buffer, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    let Some((kind, value, text)) = zygote_wire::reply(&buffer[..n]) else { return replies };
                    let text = || String::from_utf8_lossy(text).into_owned();
                    replies.push(match kind {
                        zygote_wire::READY => Reply::Ready(u32::try_from(value).unwrap_or(0)),
                        zygote_wire::REFUSED => Reply::Refused(text()),
                        zygote_wire::STARTED => Reply::Started(value),
                        zygote_wire::FAILED => Reply::Failed(Errno::from_raw(value)),
                        zygote_wire::STALE => Reply::Stale(text()),
                        _ => Reply::Failed(Errno::EPROTO),
                    });
                }
                Err(Errno::EAGAIN) => return replies,
                Err(Errno::EINTR) => continue,
                Err(_) => return replies,
            }
        }
    }
}
