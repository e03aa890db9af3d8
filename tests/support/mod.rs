//! The one support module of the integration tests (every file under tests/
//! does `mod support;`):
//!
//! - this file: where the binaries and fixtures are, temp dirs, and bounded
//!   waits on a condition ([`wait_until`]) that fail with a dump;
//! - [`run`]: running a command with a deadline in its own process group,
//!   its [`Output`], a [`Running`] process with captured output;
//! - [`procfs`]: what /proc says about a process (state, parent, children,
//!   title, CPU time, the system call it blocks in);
//! - [`control`]: a raw control-socket client;
//! - [`farm`]: a running farm of FarmFixture\EventWorker jobs;
//! - [`redis`], [`postgres`], [`servers`]: real servers on loopback (Redis,
//!   PostgreSQL, gearmand, beanstalkd, a silent TCP server).
//!
//! No test waits with a fixed sleep: a wait polls an observable condition
//! (an event line, a pid, a status field) until a deadline, then fails with
//! everything useful to understand why.

#![allow(dead_code, unused_imports)] // each test crate uses a different subset

pub mod control;
pub mod farm;
pub mod postgres;
pub mod procfs;
pub mod redis;
pub mod run;
pub mod servers;

pub use control::*;
pub use farm::*;
pub use postgres::*;
pub use procfs::*;
pub use redis::*;
pub use run::*;
pub use servers::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often bounded waits re-check their condition.
pub const POLL: Duration = Duration::from_millis(10);

/// `Duration` from seconds.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ---------------------------------------------------------------------------
// Paths and binaries
// ---------------------------------------------------------------------------

/// The lrpm-host binary cargo built for this test run. Fails (never skips)
/// when it is missing.
pub fn bin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_lrpm-host"));
    assert!(path.is_file(), "lrpm-host binary {} is missing: cargo build failed?", path.display());
    path
}

/// The lrpmctl binary cargo built for this test run.
pub fn ctl_bin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_lrpmctl"));
    assert!(path.is_file(), "lrpmctl binary {} is missing: cargo build failed?", path.display());
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

/// Re-checks `check` every `every` until it returns Some, or gives up with
/// None after `timeout`.
pub fn poll_every<T>(every: Duration, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// Polls `check` until it returns Some, or panics after `timeout` with
/// `what` and the diagnostics.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    diagnostics: impl FnOnce() -> String,
    check: impl FnMut() -> Option<T>,
) -> T {
    poll_every(POLL, timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}\n{}", diagnostics()))
}
