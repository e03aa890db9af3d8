//! A running farm (lrpm-host supervisor) in its own temp dir (jobs file,
//! event log, control socket, captured output) that is SIGKILLed with its
//! whole process group when the test ends or fails, and the event log
//! written by FarmFixture\EventWorker (job events) and
//! FarmFixture\JsonFileSource (a "poll" event of tag "config" each time the
//! configuration source is asked for the jobs).
//!
//! Fixtures: tests/fixtures/farm (bootstrap vendor/autoload.php, namespace
//! FarmFixture\ in src/, sources source.php and push_source.php reading the
//! jobs from the JSON file named by $FARM_JOBS).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::{bin, cmdline, descendants, exchange, fixtures_dir, is_lrpm_process, strip_ansi, wait_until, TempDir};

pub const WORKER_CLASS: &str = "FarmFixture\\EventWorker";

/// The tag of the configuration source's "poll" events.
pub const CONFIG_TAG: &str = "config";

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

/// tests/fixtures/farm
pub fn farm_fixtures() -> PathBuf {
    fixtures_dir().join("farm")
}

/// The polled source (jobs from $FARM_JOBS).
pub fn poll_source() -> PathBuf {
    farm_fixtures().join("source.php")
}

/// The push-mode source (blocks until $FARM_JOBS changes, at most 2 s).
pub fn push_source() -> PathBuf {
    farm_fixtures().join("push_source.php")
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

/// Starts a member of farm `farm` on the etcd at `etcd_port` (name `name`,
/// lease TTL `ttl` s) in `dir`, whose jobs.json the caller wrote, and waits
/// until it answers.
pub fn start_cluster_member(dir: TempDir, etcd_port: u16, farm: &str, name: &str, ttl: u64) -> Farm {
    let url = format!("etcd://127.0.0.1:{etcd_port}/{farm}");
    let options = FarmOptions {
        extra_args: ["--cluster", &url, "--cluster-member", name, "--cluster-ttl", &ttl.to_string()]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let farm = Farm::start_in(dir, options);
    farm.wait_answering(super::secs(20.0));
    farm
}

pub struct FarmOptions {
    /// "-i N" or "--interval=N" arguments; default -i 3600 (polls only on SIGHUP).
    pub interval_args: Vec<String>,
    pub source: PathBuf,
    pub extra_args: Vec<String>,
    /// Control socket path; default: control.sock in the farm's dir.
    pub socket: Option<PathBuf>,
    /// A command (and its arguments) that runs lrpm-host, e.g. `unshare -r`;
    /// it must exec lrpm-host in the same process.
    pub wrapper: Vec<String>,
    /// Extra environment variables for lrpm-host.
    pub env: Vec<(String, String)>,
    /// The supervisor's stdout is a pipe the test reads (`Farm::take_stdout`)
    /// instead of the file stdout.log.
    pub pipe_stdout: bool,
    /// The supervisor's stderr is a pipe the test reads (`Farm::take_stderr`)
    /// instead of the file stderr.log.
    pub pipe_stderr: bool,
    /// Name the socket with LRPM_SOCKET instead of --control-socket.
    pub socket_via_env: bool,
    /// Run this copy of lrpm-host instead of the built binary (an upgrade
    /// test replaces it on disk).
    pub program: Option<PathBuf>,
}

impl Default for FarmOptions {
    fn default() -> Self {
        FarmOptions {
            interval_args: vec!["-i".into(), "3600".into()],
            source: poll_source(),
            extra_args: Vec::new(),
            socket: None,
            wrapper: Vec::new(),
            env: Vec::new(),
            pipe_stdout: false,
            pipe_stderr: false,
            socket_via_env: false,
            program: None,
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

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn socket_via_env(mut self) -> Self {
        self.socket_via_env = true;
        self
    }

    pub fn wrapper(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|s| s.to_string()).collect();
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
        let binary = options.program.clone().unwrap_or_else(bin);
        let mut cmd = match options.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&binary);
                cmd
            }
            None => Command::new(&binary),
        };
        cmd.args(&options.interval_args);
        if options.socket_via_env {
            cmd.env("LRPM_SOCKET", &socket);
        } else {
            cmd.arg("--control-socket").arg(&socket).env_remove("LRPM_SOCKET");
        }
        cmd.args(&options.extra_args)
            // LRPM_TEST_NO_ZYGOTE=1 runs every farm test with --no-zygote
            // (workers forked by the supervisor itself).
            .args(std::env::var_os("LRPM_TEST_NO_ZYGOTE").map(|_| "--no-zygote"))
            .arg(&options.source)
            .env("FARM_JOBS", &jobs_file)
            .env("FARM_EVENTS", &log_file)
            .env("NO_COLOR", "1")
            .env_remove("LRPM_LOG")
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(if options.pipe_stdout {
                Stdio::piped()
            } else {
                Stdio::from(File::create(&stdout_file).expect("stdout file"))
            })
            .stderr(if options.pipe_stderr {
                Stdio::piped()
            } else {
                Stdio::from(File::create(&stderr_file).expect("stderr file"))
            })
            .process_group(0);
        // A copy of the binary a test just wrote can be "text file busy" for
        // a moment: another test thread forked while the copy was open for
        // writing, and its child holds the descriptor until it execs.
        let mut attempts = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                    attempts += 1;
                    thread::sleep(Duration::from_millis(20));
                }
                other => break other.unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
            }
        };
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

    /// The read end of the supervisor's stdout (`FarmOptions::pipe_stdout`).
    pub fn take_stdout(&self) -> Option<std::process::ChildStdout> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).stdout.take()
    }

    /// The read end of the supervisor's stderr (`FarmOptions::pipe_stderr`).
    pub fn take_stderr(&self) -> Option<std::process::ChildStderr> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).stderr.take()
    }

    /// The supervisor's stdout so far (the file stdout.log).
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_file).unwrap_or_default()
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
        wait_until(
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
        wait_until(timeout, "the supervisor to exit", || self.diagnostics(), || self.try_exit())
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig}): {e}\n{}", self.pid, self.diagnostics()));
    }

    /// One raw control request.
    pub fn request(&self, text: &str) -> io::Result<String> {
        exchange(&self.socket, text)
    }

    /// A request whose answer may take up to `timeout` (an upgrade's).
    pub fn request_waiting(&self, text: &str, timeout: Duration) -> io::Result<String> {
        super::control::exchange_waiting(&self.socket, text, timeout)
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

    /// How many times the configuration source was asked for the jobs.
    pub fn polls(&self) -> usize {
        self.events_of(CONFIG_TAG, "poll").len()
    }

    /// Waits until the configuration source has been asked for the jobs `n`
    /// more times than now. With a polled source, once the second of two
    /// polls has begun, the supervisor has had the first one's jobs for a
    /// whole interval.
    pub fn wait_more_polls(&self, n: usize, timeout: Duration) {
        let target = self.polls() + n;
        self.wait_for(timeout, &format!("{n} more configuration polls (to {target})"), || {
            (self.polls() >= target).then_some(())
        });
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
        wait_until(
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
