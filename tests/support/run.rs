//! Running a process with a deadline so that no test can hang. Every process
//! is started in its own process group; when a test gives up (deadline,
//! panic) the whole group is SIGKILLed.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::{app_dir, bin, children_of, ctl_bin, poll_every, strip_ansi, wait_until, POLL};

/// Default deadline for a command that is expected to finish on its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `lrpm-host ARGS...` running from the fixture app directory.
pub fn lrpm_host<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(app_dir());
    cmd
}

/// `lrpm-host ARGS...` from the fixture app, within [`DEFAULT_TIMEOUT`].
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_timeout(lrpm_host(args), DEFAULT_TIMEOUT)
}

/// `lrpmctl --socket SOCKET ARGS...`
pub fn lrpmctl_command(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(ctl_bin());
    cmd.arg("--socket").arg(socket).args(args);
    cmd
}

/// `lrpmctl --socket SOCKET ARGS...` within [`DEFAULT_TIMEOUT`].
pub fn lrpmctl(socket: &Path, args: &[&str]) -> Output {
    run_with_timeout(lrpmctl_command(socket, args), DEFAULT_TIMEOUT)
}

/// Runs `cmd` to completion within `timeout` (killed and failed otherwise).
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> Output {
    Running::spawn(cmd).wait_within(timeout)
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    /// Without colour sequences.
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

impl Output {
    /// The exit code; panics (with the output) when the process was killed
    /// by a signal, or when it could not even load libphp.
    pub fn code(&self) -> i32 {
        self.check_loadable();
        match self.status.code() {
            Some(code) => code,
            None => panic!("the process was killed by signal {:?}\n{}", self.status.signal(), self.dump()),
        }
    }

    /// Asserts the exit code, showing stdout/stderr when it differs.
    pub fn assert_code(&self, expected: i32) -> &Self {
        let code = self.code();
        assert_eq!(code, expected, "unexpected exit code\n{}", self.dump());
        self
    }

    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}\n{}", self.dump());
        self
    }

    pub fn assert_stdout_contains(&self, needle: &str) -> &Self {
        assert!(self.stdout.contains(needle), "stdout lacks {needle:?}\n{}", self.dump());
        self
    }

    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    pub fn dump(&self) -> String {
        format!(
            "status: {:?} (after {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    /// A missing libphp (Debian's libphp8.2-embed, or the prefix of
    /// `make php`) must fail the test loudly, not look like some other
    /// exit code.
    fn check_loadable(&self) {
        if self.status.code() == Some(127) && self.stderr.contains("error while loading shared libraries") {
            panic!("lrpm-host cannot load its shared libraries (is libphp8.2-embed installed, or the prefix PHP_CONFIG named still there?)\n{}", self.dump());
        }
    }
}

/// A running process with its output captured in the background.
pub struct Running {
    child: Mutex<Child>,
    reaped: Mutex<Option<ExitStatus>>,
    pid: i32,
    started: Instant,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn pump(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

impl Running {
    /// Spawns `cmd` (stdin from /dev/null, stdout/stderr captured) in a new
    /// process group.
    pub fn spawn(cmd: Command) -> Running {
        Self::spawn_with_stdout(cmd, Stdio::piped())
    }

    /// Like [`Running::spawn`], with stdout going to `stdout` (captured
    /// only when it is `Stdio::piped()`).
    pub fn spawn_with_stdout(cmd: Command, stdout: Stdio) -> Running {
        Self::spawn_with(cmd, Stdio::null(), stdout)
    }

    /// Like [`Running::spawn`], with a pipe to its stdin ([`Running::take_stdin`]).
    pub fn spawn_with_stdin_pipe(cmd: Command) -> Running {
        Self::spawn_with(cmd, Stdio::piped(), Stdio::piped())
    }

    fn spawn_with(mut cmd: Command, stdin: Stdio, stdout: Stdio) -> Running {
        cmd.stdin(stdin).stdout(stdout).stderr(Stdio::piped()).process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut readers = vec![pump(child.stderr.take().unwrap(), err.clone())];
        if let Some(pipe) = child.stdout.take() {
            readers.push(pump(pipe, out.clone()));
        }
        Running {
            pid: child.id() as i32,
            child: Mutex::new(child),
            reaped: Mutex::new(None),
            started: Instant::now(),
            stdout: out,
            stderr: err,
            readers,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The write end of its stdin, when spawned with [`Running::spawn_with_stdin_pipe`].
    pub fn take_stdin(&self) -> Option<std::process::ChildStdin> {
        self.child.lock().unwrap().stdin.take()
    }

    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr_so_far(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(&self.stderr.lock().unwrap()))
    }

    pub fn dump_so_far(&self) -> String {
        format!(
            "pid {} (exit {:?}, running for {:?})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.pid,
            *self.reaped.lock().unwrap(),
            self.started.elapsed(),
            self.stdout_so_far(),
            self.stderr_so_far()
        )
    }

    /// Exit status if the process has exited (reaps it).
    pub fn try_wait(&self) -> Option<ExitStatus> {
        let mut reaped = self.reaped.lock().unwrap();
        if reaped.is_none() {
            *reaped = self.child.lock().unwrap().try_wait().expect("try_wait");
        }
        *reaped
    }

    /// Waits (bounded: a leaked grandchild may hold the pipes open) until
    /// the reader threads have seen EOF, so the captured output is whole.
    fn drain_output(&mut self) {
        poll_every(POLL, Duration::from_secs(2), || self.readers.iter().all(|r| r.is_finished()).then_some(()));
        for reader in std::mem::take(&mut self.readers) {
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }

    /// Polls `check` until Some; fails at once if the process exits first
    /// and after `timeout` otherwise, with its output so far.
    pub fn wait_for<T>(&mut self, timeout: Duration, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let exited = poll_every(POLL, timeout, || {
            if let Some(value) = check(self) {
                return Some(Ok(value));
            }
            self.try_wait().map(Err)
        });
        match exited {
            Some(Ok(value)) => value,
            Some(Err(status)) => {
                self.drain_output();
                if let Some(value) = check(self) {
                    return value;
                }
                panic!("the process exited ({status:?}) while waiting for {what}\n{}", self.dump_so_far())
            }
            None => panic!("timed out after {timeout:?} waiting for {what}\n{}", self.dump_so_far()),
        }
    }

    /// Waits until stdout contains `needle`.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) {
        self.wait_for(timeout, &format!("{needle:?} on stdout"), |me| me.stdout_so_far().contains(needle).then_some(()))
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        self.wait_for(timeout, &format!("{needle:?} on stderr"), |me| me.stderr_so_far().contains(needle).then_some(()))
    }

    /// Sends `sig` to the process itself (not its group).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    /// The pid of the process's only child (lrpm-host's worker), waiting for
    /// it to appear.
    pub fn worker_pid(&mut self, timeout: Duration) -> i32 {
        self.wait_for(timeout, "a worker child", |me| match children_of(me.pid).as_slice() {
            [one] => Some(*one),
            [] => None,
            many => panic!("{} has several children {many:?}\n{}", me.pid, me.dump_so_far()),
        })
    }

    /// Waits for exit; after `timeout` the test fails (and the process
    /// group is SIGKILLed when `self` is dropped).
    pub fn wait_within(&mut self, timeout: Duration) -> Output {
        let status = wait_until(timeout, "the process to exit", || self.dump_so_far(), || self.try_wait());
        let elapsed = self.started.elapsed();
        self.drain_output();
        Output { status, stdout: self.stdout_so_far(), stderr: self.stderr_so_far(), elapsed }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Also when the group leader has already exited, stragglers may remain.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let mut reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        if reaped.is_none() {
            *reaped = self.child.lock().unwrap_or_else(|e| e.into_inner()).wait().ok();
        }
    }
}

/// `composer install` (Debian's composer, offline: the examples need only
/// path repositories) in `dir`, an example app with its own composer.json,
/// so that its vendor/autoload.php is Composer's. Serialized between test
/// processes with an flock on a file in `dir`.
pub fn composer_install(dir: &Path) {
    let lock = std::fs::File::create(dir.join(".composer-install.lock"))
        .unwrap_or_else(|e| panic!("creating the lock in {}: {e}", dir.display()));
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock in {}: {e}", dir.display()));
    let mut cmd = Command::new("composer");
    cmd.args(["install", "--no-interaction", "--no-progress"])
        .current_dir(dir)
        .env("COMPOSER_DISABLE_NETWORK", "1")
        .env("COMPOSER_ALLOW_SUPERUSER", "1");
    run_with_timeout(cmd, Duration::from_secs(120)).assert_code(0);
}
