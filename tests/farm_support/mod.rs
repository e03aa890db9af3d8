//! Helpers for the farm tests (tests/farm.rs, tests/control_socket.rs): a
//! running farm in its own temp dir (jobs file, event log, control socket,
//! captured output) that is SIGKILLed with its whole process group when the
//! test ends or fails, bounded waits that fail with the supervisor's stderr,
//! the event log written by FarmFixture\EventWorker, a raw control-socket
//! client and /proc helpers.
//!
//! Fixtures: tests/fixtures/farm (bootstrap vendor/autoload.php, namespace
//! FarmFixture\ in src/, sources source.php and push_source.php reading the
//! jobs from the JSON file named by $FARM_JOBS).

#![allow(dead_code)] // each test crate uses a different subset

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

pub const WORKER_CLASS: &str = "FarmFixture\\EventWorker";

/// How often bounded waits re-check their condition.
const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------
// Test isolation: timing-sensitive tests run alone.
// ---------------------------------------------------------------------------

static TIMING: RwLock<()> = RwLock::new(());

/// Held by tests whose assertions measure time (or that load the machine):
/// no other test of the same binary runs meanwhile.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    TIMING.write().unwrap_or_else(|e| e.into_inner())
}

/// Held by every other test: they run in parallel with each other.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    TIMING.read().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Paths and binaries
// ---------------------------------------------------------------------------

pub fn host_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lrpm-host"))
}

pub fn ctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lrpmctl"))
}

/// tests/fixtures/farm
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join("farm")
}

/// The polled source (jobs from $FARM_JOBS).
pub fn poll_source() -> PathBuf {
    fixtures().join("source.php")
}

/// The push-mode source (blocks until $FARM_JOBS changes, at most 2 s).
pub fn push_source() -> PathBuf {
    fixtures().join("push_source.php")
}

pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// Removes ANSI colour sequences (tracing colours its output).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Times (seconds since midnight UTC) of the supervisor log lines that
/// contain `needle`; tracing starts each line with an RFC 3339 timestamp.
pub fn log_times(stderr: &str, needle: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let clock = l.split_whitespace().next()?.split('T').nth(1)?.trim_end_matches('Z');
            let mut parts = clock.split(':');
            let h: f64 = parts.next()?.parse().ok()?;
            let m: f64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some(h * 3600.0 + m * 60.0 + s)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------

/// A fresh directory, removed when the test passes and kept (for
/// inspection) when it fails.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let short: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(24).collect();
        let path = std::env::temp_dir().join(format!(
            "lrpmt-{short}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Bounded waiting
// ---------------------------------------------------------------------------

/// Polls `check` until it returns Some, or panics after `timeout` with
/// `what` and the diagnostics.
pub fn poll_until<T>(
    timeout: Duration,
    what: &str,
    diagnostics: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", diagnostics());
        }
        thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// (state, ppid) from /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The process title / command line, NULs as spaces, trimmed.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text: String = String::from_utf8_lossy(&raw).replace('\0', " ");
    Some(text.trim().to_string())
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Alive and titled by lrpm-host (guards against pid reuse).
pub fn is_lrpm_process(pid: i32) -> bool {
    is_alive(pid) && cmdline(pid).is_some_and(|c| c.starts_with("lrpm-host"))
}

/// Every live (non-zombie) descendant of `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parents: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if let Some((state, ppid)) = proc_stat(pid) {
                if state != 'Z' && state != 'X' {
                    parents.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for child in parents.get(&pid).cloned().unwrap_or_default() {
            found.push(child);
            queue.push(child);
        }
    }
    found
}

// ---------------------------------------------------------------------------
// Control socket, raw
// ---------------------------------------------------------------------------

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Reads one framed response.
pub fn read_frame(stream: &mut UnixStream) -> io::Result<String> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    let len = u64::from_be_bytes(header);
    if len > 64 * 1024 * 1024 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("response length {len}")));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body)?;
    String::from_utf8(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Connects, sends one request, returns the response (5 s timeouts).
pub fn exchange(socket: &Path, request: &str) -> io::Result<String> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&frame(request.as_bytes()))?;
    read_frame(&mut stream)
}

/// Waits until the peer closes `stream` (EOF or reset); false on timeout.
pub fn closed_by_peer(stream: &mut UnixStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

// ---------------------------------------------------------------------------
// Running commands with a deadline
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn dump(&self) -> String {
        format!("exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---", self.code, self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion; SIGKILLs it (and its group) after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let dir = TempDir::new("cmd");
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    Output {
        code: status.code(),
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: strip_ansi(&fs::read_to_string(&err_path).unwrap_or_default()),
    }
}

/// `lrpmctl --socket SOCKET ARGS...` with a 10 s deadline.
pub fn lrpmctl(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(ctl_bin());
    cmd.arg("--socket").arg(socket).args(args);
    run_with_timeout(cmd, Duration::from_secs(10))
}

// ---------------------------------------------------------------------------
// Jobs and events
// ---------------------------------------------------------------------------

/// One line of the event log: "<unix time> <event> <tag> <pid>".
#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub t: f64,
    pub kind: String,
    pub tag: String,
    pub pid: i32,
}

pub fn parse_events(text: &str) -> Vec<Ev> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 4 {
                return None;
            }
            Some(Ev { t: f[0].parse().ok()?, kind: f[1].to_string(), tag: f[2].to_string(), pid: f[3].parse().ok()? })
        })
        .collect()
}

/// A job running FarmFixture\EventWorker, logging to `log` with tag `id`;
/// `extra` is merged into workerConfig, `fields` into the job itself.
pub fn job(log: &Path, id: &str, mtime: i64, extra: Value, fields: Value) -> Value {
    let mut worker_config = json!({"log": log.to_string_lossy(), "tag": id});
    if let (Value::Object(wc), Value::Object(extra)) = (&mut worker_config, extra) {
        wc.extend(extra);
    }
    let mut job = json!({
        "name": format!("job-{id}"),
        "workerClass": WORKER_CLASS,
        "mtime": mtime,
        "workerConfig": worker_config,
    });
    if let (Value::Object(job), Value::Object(fields)) = (&mut job, fields) {
        job.extend(fields);
    }
    job
}

/// Builds jobs for one farm (they all log to its event log).
pub struct Jobs {
    pub log: PathBuf,
}

impl Jobs {
    /// A plain EventWorker job named "job-ID".
    pub fn job(&self, id: &str, mtime: i64) -> Value {
        job(&self.log, id, mtime, json!({}), json!({}))
    }

    /// With `extra` merged into workerConfig and `fields` into the job.
    pub fn job_with(&self, id: &str, mtime: i64, extra: Value, fields: Value) -> Value {
        job(&self.log, id, mtime, extra, fields)
    }
}

/// Writes `content` to `path` atomically (temp file + rename), so a
/// configuration source never reads half a file.
pub fn write_atomically(path: &Path, content: &[u8]) {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let tmp = path.with_extension(format!("tmp{}", COUNTER.fetch_add(1, Ordering::SeqCst)));
    fs::write(&tmp, content).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// A running farm
// ---------------------------------------------------------------------------

pub struct FarmOptions {
    /// "-i N" or "--interval=N" arguments; default -i 3600 (polls only on SIGHUP).
    pub interval_args: Vec<String>,
    pub source: PathBuf,
    pub extra_args: Vec<String>,
    /// Control socket path; default: control.sock in the farm's dir.
    pub socket: Option<PathBuf>,
}

impl Default for FarmOptions {
    fn default() -> Self {
        FarmOptions {
            interval_args: vec!["-i".into(), "3600".into()],
            source: poll_source(),
            extra_args: Vec::new(),
            socket: None,
        }
    }
}

impl FarmOptions {
    pub fn interval(mut self, seconds: u64) -> Self {
        self.interval_args = vec!["-i".into(), seconds.to_string()];
        self
    }

    pub fn push_mode(mut self) -> Self {
        self.interval_args = vec!["--interval=0".into()];
        self.source = push_source();
        self
    }

    pub fn socket(mut self, path: PathBuf) -> Self {
        self.socket = Some(path);
        self
    }
}

/// A farm (lrpm-host supervisor) started by a test. Dropping it SIGKILLs
/// the supervisor's process group (the workers are in it; they would also
/// die of PDEATHSIG).
pub struct Farm {
    pub dir: TempDir,
    pub jobs_file: PathBuf,
    pub log_file: PathBuf,
    pub socket: PathBuf,
    pub stderr_file: PathBuf,
    pub stdout_file: PathBuf,
    pub pid: i32,
    pub started: Instant,
    child: Mutex<Child>,
    exit: Mutex<Option<ExitStatus>>,
    /// Every child pid a test looked at: SIGKILLed at drop if still alive.
    known: Mutex<Vec<i32>>,
}

impl Farm {
    /// Creates the farm's dir, writes the jobs `build` returns (a JSON
    /// object keyed by job id; `Jobs` knows the event log) and starts it.
    pub fn start(name: &str, options: FarmOptions, build: impl FnOnce(&Jobs) -> Value) -> Farm {
        let dir = TempDir::new(name);
        let jobs = Jobs { log: dir.join("events.log") };
        write_atomically(&dir.join("jobs.json"), build(&jobs).to_string().as_bytes());
        Self::start_in(dir, options)
    }

    /// Starts the farm in `dir`, whose jobs.json must exist.
    pub fn start_in(dir: TempDir, options: FarmOptions) -> Farm {
        let jobs_file = dir.join("jobs.json");
        let log_file = dir.join("events.log");
        if !log_file.exists() {
            fs::write(&log_file, b"").expect("creating the event log");
        }
        let socket = options.socket.clone().unwrap_or_else(|| dir.join("control.sock"));
        let stderr_file = dir.join("stderr.log");
        let stdout_file = dir.join("stdout.log");
        let mut cmd = Command::new(host_bin());
        cmd.args(&options.interval_args)
            .arg("--control-socket")
            .arg(&socket)
            .args(&options.extra_args)
            .arg(&options.source)
            .env("FARM_JOBS", &jobs_file)
            .env("NO_COLOR", "1")
            .env_remove("LRPM_LOG")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_file).expect("stdout file"))
            .stderr(File::create(&stderr_file).expect("stderr file"))
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Farm {
            pid: child.id() as i32,
            dir,
            jobs_file,
            log_file,
            socket,
            stderr_file,
            stdout_file,
            started: Instant::now(),
            child: Mutex::new(child),
            exit: Mutex::new(None),
            known: Mutex::new(Vec::new()),
        }
    }

    /// Builds jobs logging to this farm's event log.
    pub fn jobs(&self) -> Jobs {
        Jobs { log: self.log_file.clone() }
    }

    pub fn write_jobs(&self, jobs: &Value) {
        write_atomically(&self.jobs_file, jobs.to_string().as_bytes());
    }

    /// The supervisor's stderr so far, without colours.
    pub fn stderr(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.stderr_file).unwrap_or_default())
    }

    pub fn events(&self) -> Vec<Ev> {
        parse_events(&fs::read_to_string(&self.log_file).unwrap_or_default())
    }

    pub fn events_of(&self, tag: &str, kind: &str) -> Vec<Ev> {
        self.events().into_iter().filter(|e| e.tag == tag && e.kind == kind).collect()
    }

    /// Everything useful when a test fails.
    pub fn diagnostics(&self) -> String {
        let log = fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        let tree: Vec<String> =
            descendants(self.pid).into_iter().map(|p| format!("  {p}: {}", cmdline(p).unwrap_or_default())).collect();
        format!(
            "farm dir {} (supervisor pid {}, exit {:?}, running for {:?})\nprocesses:\n{}\n--- supervisor stderr ---\n{}\n--- event log (last 40 lines) ---\n{tail}\n---",
            self.dir.path().display(),
            self.pid,
            *self.exit.lock().unwrap_or_else(|e| e.into_inner()),
            self.started.elapsed(),
            tree.join("\n"),
            self.stderr()
        )
    }

    /// The exit status once the supervisor exited (reaps it).
    pub fn try_exit(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if exit.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            *exit = child.try_wait().ok().flatten();
        }
        *exit
    }

    /// Polls `check` until Some; fails at once if the supervisor exits
    /// first and after `timeout` otherwise, with the diagnostics.
    pub fn wait_for<T>(&self, timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        poll_until(
            timeout,
            what,
            || self.diagnostics(),
            || {
                if let Some(value) = check() {
                    return Some(value);
                }
                if let Some(status) = self.try_exit() {
                    panic!("the supervisor exited ({status:?}) while waiting for {what}\n{}", self.diagnostics());
                }
                None
            },
        )
    }

    /// Waits for the supervisor to exit.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        poll_until(timeout, "the supervisor to exit", || self.diagnostics(), || self.try_exit())
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig}): {e}\n{}", self.pid, self.diagnostics()));
    }

    /// One raw control request.
    pub fn request(&self, text: &str) -> io::Result<String> {
        exchange(&self.socket, text)
    }

    /// `status` as JSON (fails the test on any error).
    pub fn status(&self) -> Value {
        let text =
            self.request("status").unwrap_or_else(|e| panic!("status request failed: {e}\n{}", self.diagnostics()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("status is not JSON ({e}): {text}\n{}", self.diagnostics()))
    }

    /// `status`, or None while the socket does not answer yet.
    pub fn try_status(&self) -> Option<Value> {
        self.request("status").ok().and_then(|t| serde_json::from_str(&t).ok())
    }

    /// Waits until the control socket answers.
    pub fn wait_answering(&self, timeout: Duration) -> Value {
        self.wait_for(timeout, "the control socket to answer", || self.try_status())
    }

    /// The pid of a running job according to `status`.
    pub fn status_pid(status: &Value, id: &str) -> Option<i32> {
        let state = status.get(id)?.get("state")?;
        if state.get("status")?.as_str()? != "running" {
            return None;
        }
        state.get("pid")?.as_i64().map(|p| p as i32)
    }

    /// Waits until every job of `ids` runs (status says running and its
    /// worker logged "start" with that pid); returns id → pid.
    pub fn wait_running(&self, ids: &[&str], timeout: Duration) -> BTreeMap<String, i32> {
        self.wait_for(timeout, &format!("jobs {ids:?} to run"), || {
            let status = self.try_status()?;
            let events = self.events();
            let mut pids = BTreeMap::new();
            for id in ids {
                let pid = Self::status_pid(&status, id)?;
                if !events.iter().any(|e| e.kind == "start" && e.tag == *id && e.pid == pid) {
                    return None;
                }
                pids.insert(id.to_string(), pid);
            }
            self.remember(&pids.values().copied().collect::<Vec<_>>());
            Some(pids)
        })
    }

    /// Waits until `tag` logged at least `n` "start" events; returns them.
    pub fn wait_starts(&self, tag: &str, n: usize, timeout: Duration) -> Vec<Ev> {
        self.wait_for(timeout, &format!("{n} starts of job {tag}"), || {
            let starts = self.events_of(tag, "start");
            (starts.len() >= n).then_some(starts)
        })
    }

    /// Waits until the supervisor's stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for(timeout, &format!("{needle:?} in the supervisor's stderr"), || {
            let err = self.stderr();
            err.contains(needle).then_some(err)
        })
    }

    /// The supervisor's live descendants (config process and workers).
    pub fn descendants(&self) -> Vec<i32> {
        let found = descendants(self.pid);
        self.remember(&found);
        found
    }

    fn remember(&self, pids: &[i32]) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(pids);
    }

    /// SIGTERM and wait for exit 0.
    pub fn stop(&self, timeout: Duration) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(timeout);
        assert_eq!(status.code(), Some(0), "supervisor exit after SIGTERM\n{}", self.diagnostics());
    }

    /// Asserts every pid in `pids` is gone (or a zombie) within `timeout`.
    pub fn assert_all_gone(&self, pids: &[i32], timeout: Duration, context: &str) {
        poll_until(
            timeout,
            &format!("processes {pids:?} to be gone ({context})"),
            || {
                let left: Vec<String> = pids
                    .iter()
                    .filter(|p| is_lrpm_process(**p))
                    .map(|p| format!("{p}: {}", cmdline(*p).unwrap_or_default()))
                    .collect();
                format!("still alive:\n  {}\n{}", left.join("\n  "), self.diagnostics())
            },
            || (!pids.iter().any(|p| is_lrpm_process(*p))).then_some(()),
        );
    }

    /// Ids in a status document.
    pub fn status_ids(status: &Value) -> HashSet<String> {
        status.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            // Not reaped yet, so the group id cannot have been reused: kill
            // the supervisor and everything in its process group.
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.wait();
        }
        // Stragglers a test saw (they would outlive a supervisor that died).
        for pid in self.known.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if is_lrpm_process(*pid) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        if thread::panicking() {
            eprintln!("farm test failed; its files are kept in {}", self.dir.path().display());
        }
    }
}
