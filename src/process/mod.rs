//! fork, child setup, signals as events, reaping. With `php`, the only
//! place that holds unsafe code.

pub mod host_stream;
pub mod shared_page;
pub mod usage;

pub use usage::{ProcessUsage, ReadBudget, Reading, UsageCache, UsageReader};

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getppid, setpgid, ForkResult, Pid};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("fork failed: {0}")]
    Fork(Errno),
    #[error("cannot set up signal handling: {0}")]
    Signals(Errno),
    #[error("cannot create a pipe: {0}")]
    Pipe(Errno),
    #[error("cannot become the subreaper of orphaned processes (PR_SET_CHILD_SUBREAPER): {0}")]
    Subreaper(Errno),
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

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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

/// Reaps every child that has exited, without blocking, until none is
/// left (tini's loop). A child for which `leads_group` is true led its own
/// process group: whatever it left running in that group is SIGKILLed while
/// the exited child is still a zombie, so the group id cannot have been
/// recycled yet.
///
/// At most `max` children are reaped per call (each wait scans the list of
/// children, so thousands of exits at once would hold the caller for
/// seconds); the second value is true when more may be waiting.
pub fn reap_exited(leads_group: impl Fn(Pid) -> bool, max: usize) -> (Vec<(Pid, ExitKind)>, bool) {
    let mut reaped = Vec::new();
    loop {
        if reaped.len() >= max {
            return (reaped, true);
        }
        // Look first (WNOWAIT), reap after: the zombie pins its pid and group id.
        let pid = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => break,
            },
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("waitid failed: {e}");
                break;
            }
        };
        if leads_group(pid) {
            match killpg(pid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => tracing::warn!(pid = pid.as_raw(), "cannot clear the process group: {e}"),
            }
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => reaped.push((pid, ExitKind::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => reaped.push((pid, ExitKind::Signal(sig as i32))),
            // Not reapable after all (a tracer got in between): next SIGCHLD.
            Ok(WaitStatus::StillAlive) => break,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(pid = pid.as_raw(), "waitpid failed: {e}");
                break;
            }
        }
    }
    (reaped, false)
}

/// How far a child is in ending, as the kernel knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitProgress {
    /// Not ending (or its state could not be read).
    Alive,
    /// In the kernel's exit path (`PF_EXITING`): its exit status is
    /// decided, only the teardown of its memory is left. Thousands of
    /// processes ending at once on a few CPUs can spend seconds there.
    Exiting,
    /// Ended, not reaped yet.
    Exited,
}

/// `PF_EXITING` in /proc/PID/stat's flags (include/linux/sched.h).
const PF_EXITING: u64 = 0x4;

/// Whether a child of this process is ending: one waitid for its pid
/// (O(1) on Linux 5.13 and later, unlike a wait for any child) and, if it
/// has not ended, its flags from /proc. Never blocks.
pub fn exit_progress(pid: Pid) -> ExitProgress {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => {}
        Ok(_) => return ExitProgress::Exited,
        Err(_) => return ExitProgress::Alive,
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return ExitProgress::Alive };
    // Fields after the command name (which may hold spaces and parentheses):
    // state is the 3rd field of the line, flags the 9th.
    let Some((_, rest)) = stat.rsplit_once(')') else { return ExitProgress::Alive };
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next();
    let flags = fields.nth(5).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    if matches!(state, Some("Z" | "X")) {
        ExitProgress::Exited
    } else if flags & PF_EXITING != 0 {
        ExitProgress::Exiting
    } else {
        ExitProgress::Alive
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock workers write their cycle
/// times with (`shared_page::SharedPage::cycle_snapshot` compares against
/// it). Not an `Instant`, whose readings cannot be built from raw ns.
pub fn monotonic_now_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // Both fields are non-negative for CLOCK_MONOTONIC.
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Sends `sig` to the process group a child leads (the child and what it
/// started). Only for children not yet reaped: their group id cannot have
/// been recycled.
/// Waits for child `pid` (already told to end) and says how it ended.
pub fn wait_for_exit(pid: Pid) -> ExitKind {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return ExitKind::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return ExitKind::Signal(sig as i32),
            Err(Errno::EINTR) | Ok(_) => continue,
            // Reaped already, or not a child: it is gone, as if killed.
            Err(_) => return ExitKind::Signal(Signal::SIGKILL as i32),
        }
    }
}

/// SIGKILLs the group `leader` leads and reaps the leader.
pub fn kill_group_and_wait(leader: Pid) -> ExitKind {
    signal_group(leader, Signal::SIGKILL);
    wait_for_exit(leader)
}

pub fn signal_group(leader: Pid, sig: Signal) {
    match killpg(leader, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid = leader.as_raw(), signal = sig.as_str(), "cannot signal process group: {e}"),
    }
}

/// Sends `sig` to one child through a pidfd (Linux 5.3+), so the signal can
/// only reach the process that was opened; falls back to kill() on kernels
/// without pidfds.
pub fn signal_process(pid: Pid, sig: Signal) -> Result<(), Errno> {
    let target = rustix::process::Pid::from_raw(pid.as_raw()).ok_or(Errno::ESRCH)?;
    let signal = rustix::process::Signal::from_named_raw(sig as i32).ok_or(Errno::EINVAL)?;
    match rustix::process::pidfd_open(target, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => rustix::process::pidfd_send_signal(&pidfd, signal).map_err(|e| Errno::from_raw(e.raw_os_error())),
        Err(e) if e == rustix::io::Errno::NOSYS => signal::kill(pid, sig),
        Err(e) => Err(Errno::from_raw(e.raw_os_error())),
    }
}

/// Sends a real-time signal (which nix's `Signal` cannot name) to one
/// child of this process, not yet reaped, so its pid is still its own.
pub fn signal_realtime(pid: Pid, signo: i32) -> Result<(), Errno> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let result = unsafe { libc::kill(pid.as_raw(), signo) };
    Errno::result(result).map(drop)
}

/// How much higher than its workers the supervisor runs, when allowed.
const SUPERVISOR_PRIORITY_BOOST: i32 = 20;

/// Puts the supervisor above its workers in the scheduler: thousands of
/// workers starting at once would otherwise leave it a thousandth of a CPU,
/// and signals and control requests would wait for seconds. Needs
/// CAP_SYS_NICE (root); returns the nice value children must go back to,
/// or None when the priority stays as it was. (A real-time class was tried
/// and measured worse: a real-time supervisor waiting in fork() on a lock
/// held by a normal-priority kernel thread waited longer, not shorter.)
pub fn raise_supervisor_priority() -> Option<i32> {
    let original = rustix::process::getpriority_process(None).ok()?;
    let raised = (original - SUPERVISOR_PRIORITY_BOOST).max(-20);
    match rustix::process::setpriority_process(None, raised) {
        Ok(()) => Some(original),
        Err(e) => {
            tracing::debug!("the supervisor keeps nice {original} (no CAP_SYS_NICE: {e})");
            None
        }
    }
}

/// Makes this process the reaper of its orphaned descendants
/// (PR_SET_CHILD_SUBREAPER): a process a worker started and left behind is
/// reparented here, and the loop reaps it like any child, as an init would.
pub fn become_subreaper() -> Result<(), ProcessError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(ProcessError::Subreaper)
}

/// Restores SIGPIPE's default action (Rust's runtime ignores it): for a
/// short-lived client whose output may go into a closed pipe.
pub fn die_on_broken_pipe() {
    // SAFETY: setting a default disposition installs no handler code.
    if let Err(e) = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        tracing::debug!("cannot restore SIGPIPE's default action: {e}");
    }
}

/// Raises the soft limit on open files to the hard limit: the supervisor
/// uses poll(), not select(), so many descriptors cost nothing, and running
/// out of them is what a big farm with many control clients would hit.
///
/// Returns the soft limit children must go back to (as systemd advises: a
/// raised limit is for the process that needs it, not for what it runs),
/// or None when nothing changed.
pub fn raise_open_files_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return None;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Some(soft),
        Err(e) => {
            tracing::debug!("cannot raise the open-files limit from {soft} to {hard}: {e}");
            None
        }
    }
}

/// What a forked child must do before running its body.
#[derive(Debug, Default, Clone)]
pub struct ChildSetup {
    /// The nice value children run at, when the supervisor raised its own
    /// priority above theirs (`raise_supervisor_priority`).
    pub nice: Option<i32>,
    /// The soft open-files limit children run with, when the supervisor
    /// raised its own (`raise_open_files_limit`).
    pub open_files: Option<u64>,
    /// Supervisor-only descriptors (control socket, signalfd, pipes of other
    /// children). Only these are closed: libraries started in the parent
    /// (OPcache's lock file) keep theirs.
    pub close_fds: Vec<RawFd>,
    /// When set, every descriptor from 3 up that is not in this list is
    /// closed (close_range, one call per gap): the supervisor's own
    /// descriptors, however many (the output pipes of thousands of workers),
    /// without a close per descriptor. The list holds what was open before
    /// the supervisor started (libraries' descriptors) and what this child
    /// needs (its message pipe). `close_fds` is still closed on kernels
    /// without close_range.
    pub keep_fds: Option<std::sync::Arc<Vec<RawFd>>>,
    /// Pipes to put on the child's stdout and stderr (write ends).
    pub stdio: Option<ChildStdio>,
    /// The user the child switches to before its body runs (`--user`, a
    /// job's `user`), in numbers resolved by the supervisor.
    pub credentials: Option<std::sync::Arc<crate::job::users::Credentials>>,
}

/// The write ends of a child's output pipes.
#[derive(Debug, Clone, Copy)]
pub struct ChildStdio {
    pub stdout: RawFd,
    pub stderr: RawFd,
}

/// Descriptors open in this process now (from /proc/self/fd), sorted.
pub fn open_fds() -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    // The listing includes the descriptor that read it, closed by now.
    fds.retain(|fd| nix::fcntl::fcntl(*fd, nix::fcntl::FcntlArg::F_GETFD).is_ok());
    fds.sort_unstable();
    fds
}

/// A descriptor this process was started with: its number and what it
/// refers to, so that a number closed and reused later is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InheritedFd {
    fd: RawFd,
    device: u64,
    inode: u64,
}

static INHERITED_FDS: std::sync::OnceLock<Vec<InheritedFd>> = std::sync::OnceLock::new();

fn identity(fd: RawFd) -> Option<(u64, u64)> {
    nix::sys::stat::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino))
}

/// Records the descriptors above 2 this process was started with: its
/// parent's (a shell's, an init script's, the previous image's), opened with
/// the parent's privileges. Call first thing in `main`, before anything opens.
pub fn record_inherited_fds() {
    let inherited = open_fds()
        .into_iter()
        .filter(|fd| *fd > 2)
        .filter_map(|fd| identity(fd).map(|(device, inode)| InheritedFd { fd, device, inode }))
        .collect();
    let _ = INHERITED_FDS.set(inherited);
}

/// The descriptors open now that children may keep: what the libraries
/// opened at startup (OPcache's lock file), not what this process was
/// started with (`record_inherited_fds`): a worker, which may run as an
/// unprivileged user, gets no descriptor its code did not open but its own
/// stdin, stdout and stderr.
pub fn descriptors_for_children() -> Vec<RawFd> {
    let inherited = INHERITED_FDS.get().map_or(&[][..], Vec::as_slice);
    open_fds()
        .into_iter()
        .filter(|fd| {
            let was_inherited = |id: (u64, u64)| inherited.iter().any(|i| i.fd == *fd && (i.device, i.inode) == id);
            !identity(*fd).is_some_and(was_inherited)
        })
        .collect()
}

/// Forks; the child resets signals, arms PR_SET_PDEATHSIG, leads a process
/// group of its own, closes the supervisor's descriptors, runs `body` and
/// `_exit`s with its result. Only call while the process is single-threaded.
pub fn spawn_child<F: FnOnce(i32) -> i32>(setup: &ChildSetup, body: F) -> Result<Pid, ProcessError> {
    let parent = nix::unistd::getpid();
    // SAFETY: lrpm-host never has a second thread when it forks (the
    // supervisor is a single-threaded poll loop), so the child may run
    // arbitrary code; everything it needs was built before this call.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            // Also in the parent, as shells do: the group exists before any
            // signal is sent to it, whichever process runs first. EACCES or
            // ESRCH mean the child already did it or already exited.
            let _ = setpgid(child, child);
            Ok(child)
        }
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

/// A child whose setup failed says which call failed and leaves.
fn setup_failed(call: &str, error: Errno) -> ! {
    let message = format!("lrpm-host: child setup failed: {call}: {error}\n");
    // SAFETY: write(2) on stderr with a valid buffer; nothing else runs in
    // this process afterwards.
    unsafe {
        libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len());
        libc::_exit(crate::exit_code::CHILD_SETUP_FAILED)
    }
}

fn prepare_child(setup: &ChildSetup, parent: Pid) {
    for sig in HANDLED_SIGNALS {
        // SAFETY: restoring the default disposition is always sound.
        if let Err(e) = unsafe { signal::signal(sig, SigHandler::SigDfl) } {
            setup_failed("signal(SIG_DFL)", e);
        }
    }
    // SIGTERM/SIGINT/SIGHUP stay blocked (pending, not lost) until the PHP
    // side has installed its handlers: the supervisor may signal a child
    // the moment fork returns. lrpm_child_main() unblocks everything.
    let mut early = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        early.add(sig);
    }
    if let Err(e) = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&early), None) {
        setup_failed("sigprocmask", e);
    }
    // Its own process group: stopping the worker reaches what it started
    // (proc_open, exec), and a terminal's Ctrl-C reaches only the supervisor,
    // which then stops the farm gracefully.
    if let Err(e) = setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
        setup_failed("setpgid", e);
    }
    // Before PDEATHSIG: a change of credentials clears it.
    if let Some(credentials) = &setup.credentials {
        switch_user(credentials);
    }
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        setup_failed("prctl(PR_SET_PDEATHSIG)", Errno::last());
    }
    if let Some(nice) = setup.nice {
        // Back to the nice value the host was started with (lowering one's
        // priority needs no privilege).
        if let Err(e) = rustix::process::setpriority_process(None, nice) {
            setup_failed("setpriority", Errno::from_raw(e.raw_os_error()));
        }
    }
    if let Some(soft) = setup.open_files {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let restored =
            getrlimit(Resource::RLIMIT_NOFILE).and_then(|(_, hard)| setrlimit(Resource::RLIMIT_NOFILE, soft, hard));
        if let Err(e) = restored {
            setup_failed("setrlimit(RLIMIT_NOFILE)", e);
        }
    }
    // The parent may have died before prctl took effect.
    if getppid() != parent {
        setup_failed("getppid (the supervisor died before PDEATHSIG was armed)", Errno::ESRCH);
    }
    if let Some(stdio) = setup.stdio {
        for (from, to) in [(stdio.stdout, libc::STDOUT_FILENO), (stdio.stderr, libc::STDERR_FILENO)] {
            // SAFETY: dup2 between two descriptors this process owns.
            if unsafe { libc::dup2(from, to) } < 0 {
                setup_failed("dup2", Errno::last());
            }
        }
    }
    let closed_by_range = setup.keep_fds.as_deref().is_some_and(|keep| close_all_but(keep));
    if closed_by_range {
        return;
    }
    for fd in setup.close_fds.iter().copied().chain(setup.stdio.iter().flat_map(|s| [s.stdout, s.stderr])) {
        // SAFETY: these descriptors belong to the supervisor's state, which
        // this process never touches again.
        if unsafe { libc::close(fd) } != 0 && Errno::last() != Errno::EBADF {
            setup_failed("close", Errno::last());
        }
    }
}

/// Becomes `to` for good: supplementary groups, then the group, then the
/// user (real, effective and saved ids: nothing to switch back to), each
/// call checked; then makes sure root cannot be regained. The kernel makes
/// a process that changed credentials non-dumpable, which hands its
/// /proc/self to root (the zygote's descriptor check, PHP code reading
/// /proc/self/fd would fail): it is made dumpable again, as a process
/// started by that user is. HOME, USER and LOGNAME follow the user.
fn switch_user(to: &crate::job::users::Credentials) {
    use nix::unistd::{setgroups, setresgid, setresuid, setuid, Gid, Uid};
    let groups: Vec<Gid> = to.groups.iter().copied().map(Gid::from_raw).collect();
    if let Err(e) = setgroups(&groups) {
        setup_failed(&format!("setgroups({:?}) to run as {}", to.groups, to.spec), e);
    }
    let gid = Gid::from_raw(to.gid);
    if let Err(e) = setresgid(gid, gid, gid) {
        setup_failed(&format!("setgid({}) to run as {}", to.gid, to.spec), e);
    }
    let uid = Uid::from_raw(to.uid);
    if let Err(e) = setresuid(uid, uid, uid) {
        setup_failed(&format!("setuid({}) to run as {}", to.uid, to.spec), e);
    }
    if to.uid != 0 && setuid(Uid::from_raw(0)).is_ok() {
        setup_failed(&format!("setuid(0) still succeeds after switching to {}", to.spec), Errno::EPERM);
    }
    // SAFETY: prctl with PR_SET_DUMPABLE takes an integer and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        setup_failed("prctl(PR_SET_DUMPABLE)", Errno::last());
    }
    std::env::set_var("HOME", &to.home);
    std::env::set_var("USER", &to.user);
    std::env::set_var("LOGNAME", &to.user);
}

/// Closes every descriptor from 3 up except `keep` (sorted); false when the
/// kernel has no close_range (before 5.9).
fn close_all_but(keep: &[RawFd]) -> bool {
    let mut from: u32 = 3;
    for &fd in keep.iter().filter(|fd| **fd >= 3) {
        let fd = fd.unsigned_abs();
        if fd > from && !close_range(from, fd - 1) {
            return false;
        }
        from = from.max(fd + 1);
    }
    close_range(from, u32::MAX)
}

fn close_range(first: u32, last: u32) -> bool {
    // SAFETY: close_range takes two descriptor numbers and flags, no
    // pointers; the descriptors closed belong to the supervisor's state.
    let result = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if result == 0 {
        return true;
    }
    let error = Errno::last();
    if error != Errno::ENOSYS {
        setup_failed("close_range", error);
    }
    false
}

/// A child's output pipe: the read end stays in the supervisor
/// (non-blocking), the write end becomes the child's stdout or stderr.
pub fn output_pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), ProcessError> {
    message_pipe()
}

/// A pipe whose read end stays in the supervisor (non-blocking, close-on-exec).
pub fn message_pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), ProcessError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ProcessError::Pipe).and_then(|(r, w)| {
        set_nonblocking(&r)?;
        Ok((r, w))
    })
}

pub fn set_blocking(fd: impl AsFd) -> Result<(), ProcessError> {
    let fd = fd.as_fd().as_raw_fd();
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(ProcessError::Pipe)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(ProcessError::Pipe)?;
    Ok(())
}

pub fn set_nonblocking(fd: impl AsFd) -> Result<(), ProcessError> {
    let fd = fd.as_fd().as_raw_fd();
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(ProcessError::Pipe)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(ProcessError::Pipe)?;
    Ok(())
}

/// What a program started by `spawn_program` gets as descriptors.
#[derive(Debug, Clone, Copy)]
pub enum ProgramIo {
    /// stdout to /dev/null, and this descriptor (if any) as its fd 3: the
    /// new binary's trial run before `lrpmctl upgrade`, which reports there.
    Report(Option<RawFd>),
    /// This descriptor (a socket) as its stdin and stdout: the cluster agent.
    Link(RawFd),
}

/// Runs another program as a child (fork, then exec) in a process group of
/// its own, with every signal unblocked and the supervisor's descriptors
/// closed (all but 0, 1, 2, and what `io` says): the upgrade's trial run,
/// the cluster agent.
pub fn spawn_program(
    path: &std::ffi::CStr,
    argv: &[std::ffi::CString],
    env: &[std::ffi::CString],
    io: ProgramIo,
) -> Result<Pid, ProcessError> {
    // SAFETY: the supervisor is single-threaded when it forks; the child
    // only calls async-signal-safe functions before execve.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => Ok(child),
        Ok(ForkResult::Child) => {
            let _ = signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            // Its own group: a deadline kills it with whatever it started,
            // and a terminal's Ctrl-C reaches only the supervisor.
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
            let first_closed = match io {
                ProgramIo::Report(report_fd) => {
                    // Its report on stdout is not the farm's output; errors stay on stderr.
                    if let Ok(null) =
                        nix::fcntl::open(c"/dev/null", nix::fcntl::OFlag::O_WRONLY, nix::sys::stat::Mode::empty())
                    {
                        let _ = nix::unistd::dup2(null, libc::STDOUT_FILENO);
                    }
                    // The descriptor it reports on is its fd 3 (dup2 clears close-on-exec).
                    match report_fd {
                        Some(fd) if fd == 3 => {
                            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()));
                            4
                        }
                        Some(fd) => match nix::unistd::dup2(fd, 3) {
                            Ok(_) => 4,
                            // SAFETY: leaving the forked child without running the parent's destructors.
                            Err(_) => unsafe { libc::_exit(127) },
                        },
                        None => 3,
                    }
                }
                ProgramIo::Link(fd) => {
                    for to in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
                        if nix::unistd::dup2(fd, to).is_err() {
                            // SAFETY: leaving the forked child without running the parent's destructors.
                            unsafe { libc::_exit(127) }
                        }
                    }
                    3
                }
            };
            close_range(first_closed, u32::MAX);
            let _ = nix::unistd::execve(path, argv, env);
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(127) }
        }
        Err(e) => Err(ProcessError::Fork(e)),
    }
}

/// What `exec_self` executes.
pub enum Image<'a> {
    Path(&'a std::ffi::CStr),
    /// An open executable (the previous image's, which may be gone from
    /// disk by now).
    Descriptor(BorrowedFd<'a>),
}

/// Replaces this process's image (same pid: the children stay its
/// children). `keep` are descriptors the new image must inherit; every
/// other one is close-on-exec already. Returns only on failure.
pub fn exec_self(image: Image<'_>, argv: &[std::ffi::CString], env: &[std::ffi::CString], keep: &[RawFd]) -> Errno {
    if let Err(e) = inherit_on_exec(keep) {
        return e;
    }
    let result = match image {
        Image::Path(path) => nix::unistd::execve(path, argv, env),
        Image::Descriptor(fd) => nix::unistd::fexecve(fd.as_raw_fd(), argv, env),
    };
    match result {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

fn inherit_on_exec(keep: &[RawFd]) -> Result<(), Errno> {
    for &fd in keep {
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
        let flags = nix::fcntl::FdFlag::from_bits_truncate(flags) - nix::fcntl::FdFlag::FD_CLOEXEC;
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flags))?;
    }
    Ok(())
}

/// This process's own executable, open (close-on-exec): it stays
/// executable through the descriptor when the file on disk is replaced.
pub fn open_own_executable() -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(c"/proc/self/exe", flags, nix::sys::stat::Mode::empty())?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// True while `fd` is an open descriptor.
pub fn is_open(fd: RawFd) -> bool {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

pub fn memfd_with(bytes: &[u8]) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::io::{Seek, SeekFrom, Write};
    let fd = nix::sys::memfd::memfd_create(c"lrpm-host-upgrade", nix::sys::memfd::MemFdCreateFlag::empty())?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).map_err(|_| Errno::EIO)?;
    file.seek(SeekFrom::Start(0)).map_err(|_| Errno::EIO)?;
    Ok(std::os::fd::OwnedFd::from(file))
}

/// Takes ownership of a descriptor this process inherited for a purpose
/// (the previous image's handoff), if it is open; it becomes close-on-exec.
pub fn adopt_fd(fd: RawFd) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd < 3 || nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return None;
    }
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // image to own; no other value in this process refers to it.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
