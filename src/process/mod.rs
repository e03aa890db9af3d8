//! fork, child setup, signals as events, reaping. With `php`, the only
//! place that holds unsafe code.

pub mod shared_page;

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getppid, ForkResult, Pid};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("fork failed: {0}")]
    Fork(Errno),
    #[error("cannot set up signal handling: {0}")]
    Signals(Errno),
    #[error("cannot create a pipe: {0}")]
    Pipe(Errno),
}

pub use crate::farm::ExitKind;

/// Signals the host handles as events (blocked, read from a signalfd).
pub const HANDLED_SIGNALS: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Blocks the handled signals so that, until a signalfd reads them, they stay
/// pending instead of killing the process. Call first thing in a command that
/// will supervise children.
pub fn block_handled_signals() -> Result<(), ProcessError> {
    handled_mask().thread_block().map_err(ProcessError::Signals)
}

fn handled_mask() -> SigSet {
    let mut mask = SigSet::empty();
    for sig in HANDLED_SIGNALS {
        mask.add(sig);
    }
    mask
}

/// Blocks the handled signals and reads them from a non-blocking signalfd.
pub struct SignalEvents {
    fd: SignalFd,
}

impl SignalEvents {
    pub fn new() -> Result<Self, ProcessError> {
        block_handled_signals()?;
        let fd = SignalFd::with_flags(&handled_mask(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(ProcessError::Signals)?;
        Ok(SignalEvents { fd })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Every pending signal, in arrival order (non-blocking).
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut signals = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                signals.push(sig);
            }
        }
        signals
    }
}

/// Reaps every child that has exited, without blocking.
pub fn reap_exited() -> Vec<(Pid, ExitKind)> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => reaped.push((pid, ExitKind::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => reaped.push((pid, ExitKind::Signal(sig as i32))),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    reaped
}

/// Sends a signal; a process that is already gone is not an error.
pub fn send_signal(pid: Pid, sig: Signal) {
    match signal::kill(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid = pid.as_raw(), signal = sig.as_str(), "cannot signal process: {e}"),
    }
}

/// What a forked child must do before running its body.
#[derive(Debug, Default, Clone)]
pub struct ChildSetup {
    /// Supervisor-only descriptors (control socket, signalfd, pipes of other
    /// children). Only these are closed: libraries started in the parent
    /// (OPcache's lock file) keep theirs.
    pub close_fds: Vec<RawFd>,
}

/// Forks; the child resets signals, arms PR_SET_PDEATHSIG, closes the
/// supervisor's descriptors, runs `body` and `_exit`s with its result. Only
/// call while the process is single-threaded.
pub fn spawn_child<F: FnOnce(i32) -> i32>(setup: &ChildSetup, body: F) -> Result<Pid, ProcessError> {
    let parent = nix::unistd::getpid();
    // SAFETY: lrpm-host never has a second thread when it forks (the
    // supervisor is a single-threaded poll loop), so the child may run
    // arbitrary code; everything it needs was built before this call.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => Ok(child),
        Ok(ForkResult::Child) => {
            prepare_child(setup, parent);
            let code = body(parent.as_raw());
            // SAFETY: _exit skips atexit handlers and Rust destructors that
            // belong to the parent's state (sockets, the PHP module).
            unsafe { libc::_exit(code) }
        }
        Err(e) => Err(ProcessError::Fork(e)),
    }
}

fn prepare_child(setup: &ChildSetup, parent: Pid) {
    for sig in HANDLED_SIGNALS {
        // SAFETY: restoring the default disposition is always sound.
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
    }
    // SIGTERM/SIGINT/SIGHUP stay blocked (pending, not lost) until the PHP
    // side has installed its handlers: the supervisor may signal a child
    // the moment fork returns. lrpm_child_main() unblocks everything.
    let mut early = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        early.add(sig);
    }
    let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&early), None);
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    // The parent may have died before prctl took effect.
    if getppid() != parent {
        // SAFETY: leaving at once is the only thing to do for an orphan.
        unsafe { libc::_exit(1) };
    }
    for &fd in &setup.close_fds {
        // SAFETY: these descriptors belong to the supervisor's state, which
        // this process never touches again.
        unsafe { libc::close(fd) };
    }
}

/// A pipe whose read end stays in the supervisor (non-blocking, close-on-exec).
pub fn message_pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), ProcessError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ProcessError::Pipe).and_then(|(r, w)| {
        set_nonblocking(r.as_raw_fd())?;
        Ok((r, w))
    })
}

pub fn set_nonblocking(fd: RawFd) -> Result<(), ProcessError> {
    // SAFETY: the caller owns `fd` for the duration of the call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = nix::fcntl::fcntl(borrowed.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(ProcessError::Pipe)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(borrowed.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(ProcessError::Pipe)?;
    Ok(())
}
