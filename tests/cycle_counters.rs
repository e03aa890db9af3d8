//! The cycle fields of the shared page (version 2), written by real PHP
//! workers: this test process boots the PHP module itself, forks workers of
//! the fixture app (tests/fixtures/app) with a page each, as the supervisor
//! does, and reads the page while the worker is held at known points
//! (Fixture\Stepper moves only when a file appears).
//!
//! No test harness (Cargo.toml: `harness = false`): a process that forks
//! workers which run PHP must have a single thread, and the module can only
//! be started once per process, so the cases run in order in `main`.

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use lrpm_host::php::{self, Engine, EngineSettings};
use lrpm_host::process::shared_page::{CycleSnapshot, SharedPage};
use lrpm_host::process::{self, monotonic_now_ns, ChildSetup};
use lrpm_host::worker_cmd::debug_job;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;

fn app_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app")
}

/// Polls `check` every millisecond until it returns Some; panics after
/// [`TIMEOUT`] with `what` and the last value `describe` gives.
fn wait_for<T>(what: &str, describe: impl Fn() -> String, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", describe());
        thread::sleep(Duration::from_millis(1));
    }
}

struct Worker {
    pid: Pid,
    page: Option<SharedPage>,
    dir: PathBuf,
}

impl Worker {
    /// Forks a worker of `class` with `worker_config` merged with
    /// `{"dir": DIR}` and `fields` merged into the job.
    fn start(
        engine: &Engine,
        name: &str,
        class: &str,
        fields: serde_json::Value,
        cycles: Option<u64>,
        with_page: bool,
    ) -> Worker {
        let dir = std::env::temp_dir().join(format!("lrpmt-cycles-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut job = json!({"workerConfig": {"dir": dir.to_string_lossy()}});
        if let (Some(job), Some(fields)) = (job.as_object_mut(), fields.as_object()) {
            job.extend(fields.clone());
        }
        let job = debug_job(class, name, Some(&job.to_string())).unwrap();
        let bootstrap = app_dir().join("vendor/autoload.php");
        let argv = vec!["cycle_counters".to_string()];
        let mut program =
            lrpm_host::launch::worker(&job, Some(&bootstrap), None, cycles, 0, None).program(&argv).unwrap();
        let page = with_page.then(|| SharedPage::new().unwrap());
        if let Some(page) = &page {
            program.set_shared_page(page.clone());
        }
        let pid = process::spawn_child(&ChildSetup::default(), |parent| program.run(engine, parent)).unwrap();
        Worker { pid, page, dir }
    }

    fn page(&self) -> &SharedPage {
        self.page.as_ref().expect("a worker with a page")
    }

    fn snapshot(&self) -> CycleSnapshot {
        self.page().cycle_snapshot(monotonic_now_ns())
    }

    fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    fn go(&self, name: &str) {
        fs::write(self.dir.join(name), b"").unwrap();
    }

    fn wait_file(&self, name: &str) {
        wait_for(
            name,
            || format!("{:?}", self.page.as_ref().map(|p| p.cycle_snapshot(monotonic_now_ns()))),
            || self.exists(name).then_some(()),
        );
    }

    /// Waits for the page to satisfy `check`; returns that snapshot.
    fn wait_page(&self, what: &str, check: impl Fn(&CycleSnapshot) -> bool) -> CycleSnapshot {
        wait_for(what, || format!("{:?}", self.snapshot()), || Some(self.snapshot()).filter(&check))
    }

    /// Waits for the exit and returns its code; fails after [`TIMEOUT`]
    /// (the worker is then SIGKILLed by `drop`).
    fn exit_code(self) -> i32 {
        let status = wait_for("the worker to exit", String::new, || {
            match waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap() {
                WaitStatus::StillAlive => None,
                status => Some(status),
            }
        });
        let _ = fs::remove_dir_all(&self.dir);
        match status {
            WaitStatus::Exited(_, code) => code,
            other => panic!("the worker did not exit normally: {other:?}"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }
}

fn counts_cycles_times_them_and_measures_the_heap(engine: &Engine) {
    let worker = Worker::start(engine, "stepper", "Fixture\\Stepper", json!({}), None, true);
    worker.wait_file("started");
    // In start(): no cycle yet.
    let before = worker.snapshot();
    assert_eq!(
        before,
        CycleSnapshot {
            cycles: 0,
            current_cycle_running_for: None,
            last_cycle: None,
            heap_bytes: 0,
            peak_heap_bytes: 0
        }
    );

    worker.go("go-start");
    worker.wait_file("entered-1");
    let running = worker.snapshot();
    assert_eq!(running.cycles, 0, "{running:?}");
    assert!(running.current_cycle_running_for.is_some(), "cycle 1 runs: {running:?}");
    // The page holds this process's CLOCK_MONOTONIC: not ahead of a later read.
    assert!(worker.page().cycle_started_ns() <= monotonic_now_ns());

    // Hold cycle 1 for at least 50 ms, as the page itself measures it.
    let held = worker.wait_page("cycle 1 to run for 50 ms", |s| {
        s.current_cycle_running_for.is_some_and(|d| d >= Duration::from_millis(50))
    });
    worker.go("go-1");
    let after = worker.wait_page("cycle 1 to be counted", |s| s.cycles == 1);
    let last = after.last_cycle.expect("a completed cycle has a duration");
    assert!(last >= held.current_cycle_running_for.unwrap(), "{after:?} after {held:?}");
    assert!(last < TIMEOUT, "{after:?}");
    assert!(after.heap_bytes >= 4 * MIB, "cycle 1 keeps 4 MiB: {after:?}");
    assert!(after.peak_heap_bytes >= after.heap_bytes, "{after:?}");

    // Cycle 2 starts at once (no clock mode) and keeps 4 MiB more.
    worker.wait_file("entered-2");
    let second = worker.wait_page("cycle 2 to run", |s| s.current_cycle_running_for.is_some());
    assert_eq!(second.cycles, 1, "{second:?}");
    assert_eq!(second.last_cycle, Some(last), "{second:?}");

    // A stop ends cycle 2's wait: it is counted, then nothing runs.
    kill(worker.pid, Signal::SIGTERM).unwrap();
    let page = worker.page().clone();
    assert_eq!(worker.exit_code(), 0);
    let end = page.cycle_snapshot(monotonic_now_ns());
    assert_eq!(end.cycles, 2, "{end:?}");
    assert_eq!(end.current_cycle_running_for, None, "{end:?}");
    assert!(end.heap_bytes >= 8 * MIB && end.peak_heap_bytes >= end.heap_bytes, "{end:?}");
    println!("cycle counters: count, running time, last duration and heap: ok");
}

fn a_clock_mode_wait_is_not_a_running_cycle(engine: &Engine) {
    let fields = json!({"cycleIntervalSeconds": 3600});
    let worker = Worker::start(engine, "clock", "Fixture\\Stepper", fields, None, true);
    worker.go("go-start");
    worker.go("go-1");
    // The count goes up after the start time is cleared, and the next cycle
    // is an hour away: whatever this reads once cycles is 1 is the wait.
    let waiting = worker.wait_page("cycle 1 to be counted", |s| s.cycles == 1);
    assert_eq!(waiting.current_cycle_running_for, None, "{waiting:?}");
    assert!(waiting.last_cycle.is_some(), "{waiting:?}");
    assert!(!worker.exists("entered-2"));
    kill(worker.pid, Signal::SIGTERM).unwrap();
    assert_eq!(worker.exit_code(), 0);
    println!("cycle counters: zero during a clock-mode wait: ok");
}

fn processes_the_worker_forks_do_not_count(engine: &Engine) {
    // Fixture\Forker forks in every cycle; each copy returns into the runner
    // (which then leaves) and must not count its cycle in the worker's page.
    let worker = Worker::start(engine, "forker", "Fixture\\Forker", json!({}), Some(3), true);
    let page = worker.page().clone();
    assert_eq!(worker.exit_code(), 0);
    assert_eq!(page.cycles(), 3, "{:?}", page.cycle_snapshot(monotonic_now_ns()));
    println!("cycle counters: forked copies do not count: ok");
}

fn a_worker_without_a_page_runs_as_before(engine: &Engine) {
    let worker = Worker::start(engine, "nopage", "Fixture\\Stepper", json!({}), Some(2), false);
    for name in ["go-start", "go-1", "go-2"] {
        worker.go(name);
    }
    assert_eq!(worker.exit_code(), 0);
    println!("cycle counters: no page, no writes: ok");
}

fn main() {
    let settings = EngineSettings { ini_overrides: vec!["memory_limit=96M".into()], ..Default::default() };
    assert_eq!(php::memory_limit_bytes(), None, "no limit before the module started");
    let engine = Engine::boot(&settings).expect("PHP module startup");
    assert_eq!(php::memory_limit_bytes(), Some(96 * MIB), "memory_limit as the module sees it");
    println!("memory_limit_bytes: ok");

    counts_cycles_times_them_and_measures_the_heap(&engine);
    a_clock_mode_wait_is_not_a_running_cycle(&engine);
    processes_the_worker_forks_do_not_count(&engine);
    a_worker_without_a_page_runs_as_before(&engine);
}
