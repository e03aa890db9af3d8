//! Helpers shared by the integration tests: where the binary and the
//! fixtures are, and running lrpm-host with a hard deadline so that no test
//! can hang. Every process is started in its own process group; when a test
//! gives up (deadline, panic) the whole group is SIGKILLed.

#![allow(dead_code)] // each test crate uses a different subset

use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Default deadline for a command that is expected to finish on its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the helpers poll for exit / output.
const POLL: Duration = Duration::from_millis(5);

/// The lrpm-host binary cargo built for this test run. Fails (never skips)
/// when it is missing.
pub fn bin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_lrpm-host"));
    assert!(path.is_file(), "lrpm-host binary {} is missing: cargo build failed?", path.display());
    path
}

/// tests/fixtures
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// tests/fixtures/app: the fixture PHP app (its vendor/autoload.php is the
/// default bootstrap when lrpm-host runs from inside it).
pub fn app_dir() -> PathBuf {
    fixtures_dir().join("app")
}

/// A file of the fixture app's sources, e.g. `app_src("Thrower.php")`.
pub fn app_src(name: &str) -> PathBuf {
    app_dir().join("src").join(name)
}

/// The 1-based number of the first line of `file` containing `marker`.
pub fn line_of(file: &Path, marker: &str) -> usize {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    text.lines()
        .position(|l| l.contains(marker))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{} has no line containing {marker:?}", file.display()))
}

/// `lrpm-host ARGS...` running from the fixture app directory.
pub fn lrpm_host<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(app_dir());
    cmd
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
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
            None => panic!("lrpm-host was killed by signal {:?}\n{}", self.status.signal(), self.dump()),
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

    /// A missing libphp8.2-embed must fail the test loudly, not look like
    /// some other exit code.
    fn check_loadable(&self) {
        if self.status.code() == Some(127) && self.stderr.contains("error while loading shared libraries") {
            panic!("lrpm-host cannot load its shared libraries (is libphp8.2-embed installed?)\n{}", self.dump());
        }
    }
}

/// A running lrpm-host with its output captured in the background.
pub struct Running {
    child: Child,
    reaped: Option<ExitStatus>,
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
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            pump(child.stdout.take().unwrap(), stdout.clone()),
            pump(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Running { child, reaped: None, started: Instant::now(), stdout, stderr, readers }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn dump_so_far(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}\n--------------", self.stdout_so_far(), self.stderr_so_far())
    }

    /// Exit status if the process has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().expect("try_wait");
        }
        self.reaped
    }

    /// Waits until stdout contains `needle`; fails if the process exits
    /// first or the deadline passes.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout_so_far().contains(needle) {
                return;
            }
            if let Some(status) = self.try_wait() {
                // The last bytes may still be in flight in the reader thread.
                thread::sleep(Duration::from_millis(50));
                if self.stdout_so_far().contains(needle) {
                    return;
                }
                panic!("lrpm-host exited ({status:?}) before printing {needle:?}\n{}", self.dump_so_far());
            }
            if Instant::now() >= deadline {
                self.kill_group();
                panic!("lrpm-host did not print {needle:?} within {timeout:?}\n{}", self.dump_so_far());
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `sig` to lrpm-host itself (not its group).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid()));
    }

    /// The pid of lrpm-host's only child (the worker), waiting for it to appear.
    pub fn worker_pid(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let children = children_of(self.pid());
            match children.as_slice() {
                [one] => return *one,
                [] => {}
                many => panic!("lrpm-host {} has several children {many:?}\n{}", self.pid(), self.dump_so_far()),
            }
            if self.try_wait().is_some() || Instant::now() >= deadline {
                self.kill_group();
                panic!("lrpm-host {} has no worker child\n{}", self.pid(), self.dump_so_far());
            }
            thread::sleep(POLL);
        }
    }

    /// Waits for exit; after `timeout` the process group is SIGKILLed and
    /// the test fails.
    pub fn wait_within(&mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill_group();
                panic!("lrpm-host did not exit within {timeout:?}; killed it\n{}", self.dump_so_far());
            }
            thread::sleep(POLL);
        };
        let elapsed = self.started.elapsed();
        // Wait (bounded) for EOF on the pipes: a leaked grandchild holding
        // them open must not hang the test.
        let eof_deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < eof_deadline {
            thread::sleep(POLL);
        }
        for reader in std::mem::take(&mut self.readers) {
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        Output { status, stdout: self.stdout_so_far(), stderr: self.stderr_so_far(), elapsed }
    }

    /// SIGKILLs the whole process group (lrpm-host and whatever it forked
    /// that stayed in the group) and reaps lrpm-host.
    pub fn kill_group(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        if self.reaped.is_none() {
            self.reaped = self.child.wait().ok();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Also when the group leader has already exited, stragglers may remain.
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        if self.reaped.is_none() {
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion within `timeout` (killed and failed otherwise).
pub fn run_with_timeout(cmd: Command, timeout: Duration) -> Output {
    Running::spawn(cmd).wait_within(timeout)
}

/// `lrpm-host ARGS...` from the fixture app, within [`DEFAULT_TIMEOUT`].
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run_with_timeout(lrpm_host(args), DEFAULT_TIMEOUT)
}

/// Pids whose parent is `pid`, from /proc/PID/task/PID/children when the
/// kernel has it, else by scanning /proc/*/stat.
pub fn children_of(pid: i32) -> Vec<i32> {
    if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    }
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(candidate) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((_, ppid)) = stat_of(candidate) {
            if ppid == pid {
                found.push(candidate);
            }
        }
    }
    found
}

/// (state, ppid) from /proc/PID/stat, None when the process does not exist.
fn stat_of(pid: i32) -> Option<(char, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True when `pid` no longer runs: gone, or a zombie (PID 1 in a container
/// may never reap orphans).
pub fn is_gone(pid: i32) -> bool {
    !matches!(stat_of(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Waits up to `timeout` for `pid` to be gone; returns how long it took.
pub fn wait_gone(pid: i32, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if is_gone(pid) {
            return Some(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// `ps -o args= -p PID`, trimmed.
pub fn ps_args(pid: i32) -> String {
    let out = Command::new("ps")
        .args(["-o", "args=", "-p", &pid.to_string()])
        .output()
        .expect("running ps (procps installed?)");
    assert!(out.status.success(), "ps -p {pid} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
