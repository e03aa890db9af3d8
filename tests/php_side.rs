//! The PHP side of workers (tests/fixtures/app): signals delivered as to a
//! plain process, user SIGTERM handlers, blocking reads, configuration
//! sources that return garbage, single-file farms.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

// --- helpers -----------------------------------------------------------------

fn wait_until<T>(running: &mut Running, timeout: Duration, what: &str, check: impl FnMut(&Running) -> Option<T>) -> T {
    running.wait_for(timeout, what, check)
}

fn wait_stderr(running: &mut Running, needle: &str, timeout: Duration) {
    wait_until(running, timeout, needle, |r| r.stderr_so_far().contains(needle).then_some(()));
}

/// The fixture app's bootstrap (Fixture\ autoloader).
fn app_bootstrap() -> PathBuf {
    app_dir().join("vendor").join("autoload.php")
}

/// A configuration source file returning `jobs` (a JSON object keyed by id).
fn write_source(dir: &TempDir, jobs: &Value) -> PathBuf {
    let path = dir.join("source.php");
    let code = format!(
        "<?php\nreturn new class implements Lrpm\\ConfigurationSource {{\n    public function loadConfiguration(): array\n    {{\n        return json_decode(<<<'JSON'\n{jobs}\nJSON, true);\n    }}\n}};\n"
    );
    fs::write(&path, code).unwrap();
    path
}

fn job(class: &str, worker_config: Value, extra: Value) -> Value {
    let mut job = json!({"name": "test job", "workerClass": class, "mtime": 1, "workerConfig": worker_config});
    if let (Some(job), Some(extra)) = (job.as_object_mut(), extra.as_object()) {
        job.extend(extra.clone());
    }
    job
}

/// `lrpm-host --bootstrap APP SOURCE` with its control socket in `dir`.
fn start_farm(dir: &TempDir, source: &Path, bootstrap: Option<&Path>) -> Running {
    start_farm_with(dir, source, bootstrap, &[])
}

fn start_farm_with(dir: &TempDir, source: &Path, bootstrap: Option<&Path>, extra_args: &[&str]) -> Running {
    let mut cmd = Command::new(bin());
    cmd.args(extra_args);
    if let Some(bootstrap) = bootstrap {
        cmd.arg("--bootstrap").arg(bootstrap);
    }
    cmd.arg("--control-socket").arg(dir.join("ctl.sock")).arg(source).current_dir(dir.path());
    Running::spawn(cmd)
}

fn ctl(dir: &TempDir, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lrpmctl"));
    cmd.arg("--socket").arg(dir.join("ctl.sock")).args(args);
    run_with_timeout(cmd, DEFAULT_TIMEOUT)
}

/// `lrpm-host worker CLASS --job JOB ARGS...` from the fixture app.
fn worker_with_job(class: &str, job: &Value, args: &[&str]) -> Command {
    let job = job.to_string();
    let mut all = vec!["worker", class, "--job", job.as_str()];
    all.extend_from_slice(args);
    lrpm_host(all)
}

// --- 3. signals are delivered as to a plain process --------------------------

/// Signals whose default action ends the process, by number.
const FATAL_SIGNALS: [(Signal, i32); 9] = [
    (Signal::SIGSEGV, 11),
    (Signal::SIGBUS, 7),
    (Signal::SIGFPE, 8),
    (Signal::SIGILL, 4),
    (Signal::SIGABRT, 6),
    (Signal::SIGQUIT, 3),
    (Signal::SIGUSR1, 10),
    (Signal::SIGUSR2, 12),
    (Signal::SIGALRM, 14),
];

#[test]
fn a_fatal_signal_a_worker_sends_itself_kills_it_the_first_time() {
    for (signal, number) in FATAL_SIGNALS {
        let job = json!({"workerConfig": {"signal": number, "self": true}});
        let out = run_with_timeout(worker_with_job("Fixture\\SignalTarget", &job, &["--cycles", "3"]), DEFAULT_TIMEOUT);
        assert_eq!(out.code(), 128 + number, "{signal} must kill the worker at once\n{}", out.dump());
        assert!(!out.stdout.contains("survived"), "{signal} was swallowed\n{}", out.dump());
    }
}

#[test]
fn a_pcntl_handler_for_a_fatal_signal_still_runs() {
    for (signal, number) in FATAL_SIGNALS {
        let job = json!({"workerConfig": {"signal": number, "self": true, "handle": true}});
        let out = run_with_timeout(worker_with_job("Fixture\\SignalTarget", &job, &["--cycles", "2"]), DEFAULT_TIMEOUT);
        out.assert_code(0);
        assert_eq!(
            out.stdout.matches(&format!("handled {number}\n")).count(),
            2,
            "{signal}: the user's handler runs once per signal\n{}",
            out.dump()
        );
    }
}

#[test]
fn lrpmctl_signal_segv_kills_a_farm_worker_the_first_time() {
    let dir = TempDir::new("segv");
    let jobs = json!({"1": job("Fixture\\SignalTarget", json!({"signal": 11}), json!({}))});
    let source = write_source(&dir, &jobs);
    let mut farm = start_farm(&dir, &source, Some(&app_bootstrap()));
    let pid: i32 = wait_until(&mut farm, DEFAULT_TIMEOUT, "the worker's pid", |r| {
        // Forwarded with the job's name and slot.
        r.stdout_so_far().lines().find_map(|l| l.strip_prefix("[test job#0] pid ").and_then(|p| p.parse().ok()))
    });
    ctl(&dir, &["signal", "1", "SEGV"]).assert_code(0);
    wait_stderr(&mut farm, &format!("job 1 (pid {pid}) exited after"), DEFAULT_TIMEOUT);
    let stderr = farm.stderr_so_far();
    let line = stderr.lines().find(|l| l.contains(&format!("(pid {pid}) exited"))).unwrap();
    assert!(line.contains("killed by SIGSEGV"), "{line}\n{stderr}");
    farm.signal(Signal::SIGTERM);
    farm.wait_within(DEFAULT_TIMEOUT).assert_code(0);
}

// --- 2. a configuration source that returns something else than an array --

/// A source written against php-lrpm's untyped interface (the copy an app
/// ships in vendor/), whose loadConfiguration() returns `returned` (PHP).
fn write_untyped_source(dir: &TempDir, returned: &str) -> PathBuf {
    let path = dir.join("untyped_source.php");
    let code = format!(
        "<?php\nnamespace PHPLRPM {{\n    interface ConfigurationSource\n    {{\n        public function loadConfiguration();\n    }}\n}}\n\
         namespace App {{\n    final class Source implements \\PHPLRPM\\ConfigurationSource\n    {{\n        public function loadConfiguration()\n        {{\n            return {returned};\n        }}\n    }}\n}}\n"
    );
    fs::write(&path, code).unwrap();
    path
}

#[test]
fn check_names_the_source_class_when_it_returns_a_non_array() {
    for (returned, type_name) in [("'oops'", "string"), ("null", "null"), ("new \\ArrayObject([])", "ArrayObject")] {
        let dir = TempDir::new("nonarray");
        let source = write_untyped_source(&dir, returned);
        let mut cmd = Command::new(bin());
        cmd.arg("check").arg(&source).current_dir(dir.path());
        let out = run_with_timeout(cmd, DEFAULT_TIMEOUT);
        out.assert_code(1).assert_stderr_contains(&format!(
            "App\\Source::loadConfiguration() returned {type_name}, expected an array of jobs"
        ));
        assert!(!out.stderr.contains("lrpm-host runner"), "must not blame the runner\n{}", out.dump());
    }
}

#[test]
fn a_farm_logs_a_non_array_configuration_and_the_config_process_exit() {
    let dir = TempDir::new("nonarray-farm");
    let source = write_untyped_source(&dir, "'oops'");
    let mut farm = start_farm(&dir, &source, None);
    wait_stderr(
        &mut farm,
        "App\\Source::loadConfiguration() returned string, expected an array of jobs",
        DEFAULT_TIMEOUT,
    );
    wait_stderr(&mut farm, "(configuration source failed)", DEFAULT_TIMEOUT);
    assert!(!farm.stderr_so_far().contains("lrpm-host runner"), "{}", farm.stderr_so_far());
    farm.signal(Signal::SIGTERM);
    farm.wait_within(DEFAULT_TIMEOUT).assert_code(0);
}

// --- 6. a single-file farm ------------------------------------------------------

/// A source file that declares its worker class next to the configuration
/// source, as a first farm does.
fn write_single_file_farm(dir: &TempDir) -> PathBuf {
    let path = dir.join("farm.php");
    let code = r#"<?php
namespace App;

final class SingleWorker implements \Lrpm\Worker
{
    private int $cycles = 0;

    public function start(array $job): void
    {
        echo "single-file worker started\n";
    }

    public function cycle(): void
    {
        $this->cycles++;
        echo "single-file worker cycle {$this->cycles}\n";
        \usleep(20000);
    }
}

final class Source implements \Lrpm\ConfigurationSource
{
    public function loadConfiguration(): array
    {
        return [1 => ['name' => 'single', 'workerClass' => SingleWorker::class, 'mtime' => 1, 'workerConfig' => []]];
    }
}
"#;
    fs::write(&path, code).unwrap();
    path
}

#[test]
fn a_single_file_farm_runs_its_worker_cycles() {
    let dir = TempDir::new("single");
    let source = write_single_file_farm(&dir);
    assert!(!Path::new("/tmp/vendor/autoload.php").exists() && !Path::new("/vendor/autoload.php").exists());
    let mut farm = start_farm(&dir, &source, None);
    farm.wait_for_stdout("single-file worker cycle 3", DEFAULT_TIMEOUT);
    assert_eq!(farm.stdout_so_far().matches("single-file worker started").count(), 1, "{}", farm.stdout_so_far());
    farm.signal(Signal::SIGTERM);
    farm.wait_within(DEFAULT_TIMEOUT).assert_code(0);
}

#[test]
fn check_refuses_a_worker_class_only_the_source_file_declares() {
    let dir = TempDir::new("single-check");
    let source = write_single_file_farm(&dir);
    let bootstrap = dir.join("bootstrap.php");
    fs::write(&bootstrap, "<?php\n// loads nothing\n").unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("--bootstrap").arg(&bootstrap).arg("check").arg(&source).current_dir(dir.path());
    let out = run_with_timeout(cmd, DEFAULT_TIMEOUT);
    out.assert_code(1).assert_stdout_contains(
        "class App\\SingleWorker is declared in the source file, which workers do not load (declare it in a file the bootstrap autoloads)",
    );
    // Without a bootstrap the workers load the source file: the same farm checks fine.
    let mut cmd = Command::new(bin());
    cmd.arg("check").arg(&source).current_dir(dir.path());
    run_with_timeout(cmd, DEFAULT_TIMEOUT).assert_code(0).assert_stdout_contains("ok    1: single");
}

#[test]
fn check_refuses_a_worker_class_that_is_not_a_worker_or_cannot_be_instantiated() {
    let dir = TempDir::new("not-a-worker");
    let source = dir.join("farm.php");
    let code = r#"<?php
namespace App;

abstract class AbstractWorker implements \Lrpm\Worker
{
    public function start(array $job): void {}
    public function cycle(): void {}
}

final class Real extends AbstractWorker {}

final class Source implements \Lrpm\ConfigurationSource
{
    public function loadConfiguration(): array
    {
        $job = fn (string $class): array => ['name' => $class, 'workerClass' => $class, 'mtime' => 1, 'workerConfig' => []];
        return [1 => $job('stdClass'), 2 => $job(AbstractWorker::class), 3 => $job('\\' . Real::class)];
    }
}
"#;
    fs::write(&source, code).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("check").arg(&source).current_dir(dir.path());
    let out = run_with_timeout(cmd, DEFAULT_TIMEOUT);
    out.assert_code(1)
        .assert_stdout_contains("class stdClass does not implement Lrpm\\Worker (or PHPLRPM\\Worker)")
        .assert_stdout_contains("class App\\AbstractWorker cannot be instantiated")
        .assert_stdout_contains("ok    3: \\App\\Real");
}

// --- 4. a user SIGTERM handler does not hang the stop -------------------------

#[test]
fn a_farm_worker_with_its_own_sigterm_handler_stops_promptly_and_its_handler_runs() {
    let dir = TempDir::new("listener");
    let jobs = json!({"1": job("Fixture\\StopListener", json!({}), json!({"shutdownTimeoutSeconds": 30}))});
    let source = write_source(&dir, &jobs);
    let mut farm = start_farm(&dir, &source, Some(&app_bootstrap()));
    farm.wait_for_stdout("listening", DEFAULT_TIMEOUT);
    let asked = Instant::now();
    farm.signal(Signal::SIGTERM);
    let out = farm.wait_within(Duration::from_secs(10));
    out.assert_code(0).assert_stdout_contains("user handler ran 15");
    // Well under the 30 s shutdown timeout a handler that did not run would wait for.
    assert!(asked.elapsed() < Duration::from_secs(10), "stop took {:?}\n{}", asked.elapsed(), out.dump());
    assert!(!out.stderr.contains("SIGKILL"), "\n{}", out.dump());
}

#[test]
fn sigterm_sigint_handlers_sig_ign_and_sig_dfl_keep_the_graceful_stop() {
    for (handler, signal, stop) in [
        ("callable", 15, Signal::SIGTERM),
        ("callable", 2, Signal::SIGINT),
        ("ignore", 15, Signal::SIGTERM),
        ("default", 15, Signal::SIGTERM),
    ] {
        let job = json!({"workerConfig": {"handler": handler, "signal": signal}});
        let mut worker = Running::spawn(worker_with_job("Fixture\\StopListener", &job, &[]));
        worker.wait_for_stdout("listening", DEFAULT_TIMEOUT);
        let pid = worker.worker_pid(DEFAULT_TIMEOUT);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), stop).unwrap();
        let out = worker.wait_within(Duration::from_secs(5));
        out.assert_code(0);
        assert_eq!(
            out.stdout.contains(&format!("user handler ran {signal}")),
            handler == "callable",
            "\n{}",
            out.dump()
        );
        assert!(wait_gone(pid, DEFAULT_TIMEOUT).is_some(), "worker {pid} still runs");
    }
}

#[test]
fn the_worker_command_reports_a_replaced_stop_handler() {
    let job = json!({"workerConfig": {}});
    let mut worker = Running::spawn(worker_with_job("Fixture\\StopListener", &job, &[]));
    worker.wait_for_stdout("listening", DEFAULT_TIMEOUT);
    worker.signal(Signal::SIGTERM);
    let out = worker.wait_within(Duration::from_secs(5));
    out.assert_code(0)
        .assert_stdout_contains("user handler ran 15")
        .assert_stderr_contains("the worker installed its own SIGTERM/SIGINT handler (pcntl_signal)");
}

// --- 5. blocking reads and the stop signal ------------------------------------

/// Runs Fixture\BlockingReader against a listener the test holds, waits
/// until it blocks in its read, sends the worker SIGTERM and returns how
/// long the worker took to exit (and its output).
fn stop_a_blocked_reader(worker_config: Value, give_up_after: Duration) -> (Duration, Output) {
    stop_a_blocked_reader_in(json!({}), worker_config, give_up_after)
}

/// The same, with `fields` added to the job (shutdownTimeoutSeconds).
fn stop_a_blocked_reader_in(fields: Value, worker_config: Value, give_up_after: Duration) -> (Duration, Output) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = worker_config;
    config["port"] = json!(listener.local_addr().unwrap().port());
    let mut job = json!({ "workerConfig": config });
    if let (Some(job), Some(fields)) = (job.as_object_mut(), fields.as_object()) {
        job.extend(fields.clone());
    }
    let mut worker = Running::spawn(worker_with_job("Fixture\\BlockingReader", &job, &[]));
    let (_peer, _) = listener.accept().unwrap();
    worker.wait_for_stdout("reading", DEFAULT_TIMEOUT);
    let pid = worker.worker_pid(DEFAULT_TIMEOUT);
    // The read is blocking once the worker sleeps in the kernel.
    wait_until(&mut worker, DEFAULT_TIMEOUT, "the worker to block", |_| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .filter(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('S')))
    });
    let asked = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let out = worker.wait_within(give_up_after);
    (asked.elapsed(), out)
}

#[test]
fn a_socket_read_from_ext_sockets_is_interrupted_by_the_stop() {
    let (took, out) = stop_a_blocked_reader(json!({"api": "sockets"}), DEFAULT_TIMEOUT);
    out.assert_code(0).assert_stdout_contains("read returned false");
    assert!(took < Duration::from_secs(1), "stop took {took:?}\n{}", out.dump());
}

#[test]
fn a_stream_socket_read_with_a_read_timeout_stops_within_that_timeout() {
    // PHP's stream layer retries its poll() after EINTR: the read ends at its
    // timeout (counted again from the signal), then the loop stops.
    let (took, out) = stop_a_blocked_reader(json!({"api": "stream", "timeout": 2}), DEFAULT_TIMEOUT);
    out.assert_code(0).assert_stdout_contains("read returned ");
    // The 2 s read timeout once more after the signal, not read after read
    // (which would last until the run's timeout).
    assert!(took < Duration::from_millis(7000), "stop took {took:?}\n{}", out.dump());
    assert!(took >= Duration::from_millis(1500), "PHP resumed the read until its timeout: {took:?}\n{}", out.dump());
}

#[test]
fn a_stream_read_without_a_timeout_ends_half_a_shutdown_timeout_after_the_stop() {
    // default_socket_timeout is 60 s: without the host's bound the read would
    // go on for a minute (and a farm worker would be SIGKILLed first).
    let (took, out) = stop_a_blocked_reader_in(
        json!({"shutdownTimeoutSeconds": 4}),
        json!({"api": "stream"}),
        Duration::from_secs(10),
    );
    out.assert_code(0).assert_stdout_contains("read returned false");
    assert!(took >= Duration::from_millis(1800), "the read ended before the grace: {took:?}\n{}", out.dump());
    // The 2 s read timeout once more after the signal, not read after read
    // (which would last until the run's timeout).
    assert!(took < Duration::from_millis(7000), "stop took {took:?}\n{}", out.dump());
}

/// A worker whose cycle starts a 30 s wait (`api`) after a stop is already
/// pending, with shutdownTimeoutSeconds 4: the wait ends at the grace
/// (2 s after the stop), the cycle returns, and the worker exits 0.
fn a_wait_begun_after_the_stop(api: &str) {
    let job = json!({"shutdownTimeoutSeconds": 4, "workerConfig": {"api": api}});
    let mut worker = Running::spawn(worker_with_job("Fixture\\LateSleeper", &job, &[]));
    worker.wait_for_stdout("waiting for a stop", DEFAULT_TIMEOUT);
    let pid = worker.worker_pid(DEFAULT_TIMEOUT);
    let asked = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let out = worker.wait_within(Duration::from_secs(10));
    let took = asked.elapsed();
    out.assert_code(0).assert_stdout_contains(&format!("{api} after the stop took"));
    assert!(took >= Duration::from_millis(1800), "the wait ended before the grace: {took:?}\n{}", out.dump());
    // The 2 s read timeout once more after the signal, not read after read
    // (which would last until the run's timeout).
    assert!(took < Duration::from_millis(7000), "stop took {took:?}\n{}", out.dump());
}

#[test]
fn a_usleep_begun_after_the_stop_ends_at_the_grace() {
    a_wait_begun_after_the_stop("usleep");
}

#[test]
fn a_sleep_begun_after_the_stop_ends_at_the_grace() {
    a_wait_begun_after_the_stop("sleep");
}

#[test]
fn a_time_nanosleep_begun_after_the_stop_ends_at_the_grace() {
    a_wait_begun_after_the_stop("time_nanosleep");
}

#[test]
fn a_stream_select_begun_after_the_stop_ends_at_the_grace() {
    a_wait_begun_after_the_stop("stream_select");
}

// --- the optional stop hook --------------------------------------------------

#[test]
fn a_stoppable_worker_gets_one_stop_call_after_its_last_cycle() {
    let mut worker = Running::spawn(worker_with_job("Fixture\\Flusher", &json!({"workerConfig": {}}), &[]));
    worker.wait_for_stdout("cycle 2", DEFAULT_TIMEOUT);
    worker.signal(Signal::SIGTERM);
    let out = worker.wait_within(Duration::from_secs(5));
    out.assert_code(0);
    let flushed: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("flushed after")).collect();
    assert_eq!(flushed.len(), 1, "{}", out.dump());
    let last_cycle = out.stdout.lines().rev().find(|l| l.starts_with("cycle ")).unwrap_or("");
    assert_eq!(
        flushed[0],
        format!("flushed after {} cycles", last_cycle.trim_start_matches("cycle ")),
        "{}",
        out.dump()
    );
    assert!(out.stdout.trim_end().ends_with(flushed[0]), "stop() must come after the last cycle\n{}", out.dump());
}

#[test]
fn a_stop_hook_that_throws_is_reported_as_uncaught() {
    let job = json!({"workerConfig": {"throwInStop": true}});
    let out = run_with_timeout(worker_with_job("Fixture\\Flusher", &job, &["--cycles", "2"]), DEFAULT_TIMEOUT);
    out.assert_code(70).assert_stderr_contains("Fixture\\Flusher::stop() threw").assert_stderr_contains("flush failed");
}

// --- clock mode (cycleIntervalSeconds) ---------------------------------------

fn ticks(stdout: &str) -> Vec<u64> {
    stdout.lines().filter_map(|l| l.strip_prefix("tick ")).filter_map(|t| t.trim().parse().ok()).collect()
}

#[test]
fn cycle_interval_paces_cycles_and_a_stop_ends_the_wait() {
    let job = json!({"workerConfig": {}, "cycleIntervalSeconds": 0.2});
    let out = run_with_timeout(worker_with_job("Fixture\\Ticker", &job, &["--cycles", "4"]), DEFAULT_TIMEOUT);
    out.assert_code(0);
    let stamps = ticks(&out.stdout);
    assert_eq!(stamps.len(), 4, "{}", out.dump());
    for pair in stamps.windows(2) {
        let gap = Duration::from_nanos(pair[1] - pair[0]);
        assert!(gap >= Duration::from_millis(195), "cycles {gap:?} apart\n{}", out.dump());
    }
    // A stop during the wait ends it at once.
    let job = json!({"workerConfig": {}, "cycleIntervalSeconds": 30});
    let mut worker = Running::spawn(worker_with_job("Fixture\\Ticker", &job, &[]));
    worker.wait_for_stdout("tick ", DEFAULT_TIMEOUT);
    let asked = Instant::now();
    worker.signal(Signal::SIGTERM);
    let out = worker.wait_within(Duration::from_secs(20));
    out.assert_code(0);
    // Not the 30 s interval.
    assert!(asked.elapsed() < Duration::from_secs(15), "the stop waited {:?}\n{}", asked.elapsed(), out.dump());
    assert_eq!(ticks(&out.stdout).len(), 1, "{}", out.dump());
}

#[test]
fn a_cycle_longer_than_its_interval_is_logged_once() {
    let job = json!({"workerConfig": {"busy": 0.15}, "cycleIntervalSeconds": 0.1});
    let out = run_with_timeout(worker_with_job("Fixture\\Ticker", &job, &["--cycles", "3"]), DEFAULT_TIMEOUT);
    out.assert_code(0);
    assert_eq!(out.stderr.matches("longer than its cycleIntervalSeconds 0.1").count(), 1, "{}", out.dump());
}

#[test]
fn a_bad_cycle_interval_is_refused() {
    let job = json!({"workerConfig": {}, "cycleIntervalSeconds": "fast"});
    let out = run_with_timeout(worker_with_job("Fixture\\Ticker", &job, &["--cycles", "1"]), DEFAULT_TIMEOUT);
    out.assert_code(64).assert_stderr_contains("field 'cycleIntervalSeconds': Invalid data: got string");
}

// --- planned recycles ----------------------------------------------------------

#[test]
fn limits_end_a_worker_with_the_recycle_code() {
    let job = json!({"workerConfig": {}, "maxCycles": 3});
    let out = run_with_timeout(worker_with_job("Fixture\\Ticker", &job, &[]), DEFAULT_TIMEOUT);
    out.assert_code(75).assert_stderr_contains("recycling: maxCycles 3 reached");
    assert_eq!(ticks(&out.stdout).len(), 3, "{}", out.dump());

    let job = json!({"workerConfig": {}, "memoryLimitMb": 8});
    let out = run_with_timeout(worker_with_job("Fixture\\Leaker", &job, &[]), DEFAULT_TIMEOUT);
    out.assert_code(75).assert_stderr_contains("recycling: memoryLimitMb 8 exceeded");

    let job = json!({"workerConfig": {}, "maxLifetimeSeconds": 1});
    let out = run_with_timeout(worker_with_job("Fixture\\Leaker", &job, &[]), DEFAULT_TIMEOUT);
    out.assert_code(75).assert_stderr_contains("recycling: maxLifetimeSeconds 1 reached");
}

// --- who a worker is: Lrpm\job_id(), Lrpm\slot() -------------------------------

/// What Fixture\IdentityProbe wrote from start().
fn read_identity(path: &Path, diagnostics: impl FnOnce() -> String) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), diagnostics()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn identity_bootstrap() -> PathBuf {
    app_dir().join("identity_bootstrap.php")
}

#[test]
fn the_worker_command_tells_the_worker_its_job_id_and_slot() {
    let dir = TempDir::new("identity_cmd");
    let out_file = dir.join("identity.json");
    let job = json!({"workerConfig": {"out": out_file.to_string_lossy()}});
    let bootstrap = identity_bootstrap();
    let bootstrap = bootstrap.to_string_lossy();
    let args = ["--id", "job-7", "--cycles", "1", "--bootstrap", &bootstrap];
    let out = run_with_timeout(worker_with_job("Fixture\\IdentityProbe", &job, &args), DEFAULT_TIMEOUT);
    out.assert_code(0);
    let seen = read_identity(&out_file, || out.dump());
    assert_eq!(seen["jobId"], "job-7", "{seen}");
    assert_eq!(seen["slot"], 0, "{seen}");
    assert_eq!(seen["serverJobId"], "job-7", "{seen}");
    assert_eq!(seen["serverSlot"], "0", "{seen}");
    assert_eq!(seen["envJobId"], "job-7", "{seen}");
    assert_eq!(seen["envSlot"], "0", "{seen}");
    assert_eq!(seen["childEnv"], "job-7/0", "a process the worker starts inherits them\n{seen}");
    assert_eq!(seen["bootstrapSaw"], json!({"jobId": "job-7", "slot": 0}), "{seen}");
    // start() gets the job exactly as before: nothing about the identity is added.
    assert_eq!(
        seen["job"],
        json!({
            "name": "Fixture\\IdentityProbe",
            "workerClass": "Fixture\\IdentityProbe",
            "mtime": 0,
            "workerConfig": {"out": out_file.to_string_lossy()},
            "shortRunTimeSeconds": 5,
            "shutdownTimeoutSeconds": 10,
        }),
        "{seen}"
    );
}

#[test]
fn a_farm_worker_knows_its_job_id_and_the_configuration_process_has_none() {
    // The bootstrap ran once, in the zygote, which is no job's worker.
    farm_worker_identity(&[], json!({"jobId": null, "slot": null}));
}

#[test]
fn without_the_zygote_the_bootstrap_already_knows_the_workers_job_id() {
    farm_worker_identity(&["--no-zygote"], json!({"jobId": "7", "slot": 0}));
}

/// A farm's worker's identity, as the worker and its bootstrap (which saw
/// `bootstrap_saw`) and the configuration process see it.
fn farm_worker_identity(extra_args: &[&str], bootstrap_saw: Value) {
    let dir = TempDir::new("identity_farm");
    let worker_file = dir.join("worker.json");
    let config_file = dir.join("config.json");
    let jobs = json!({"7": job("Fixture\\IdentityProbe", json!({"out": worker_file.to_string_lossy()}), json!({}))});
    let source = dir.join("source.php");
    let code = format!(
        "<?php\nreturn new class implements Lrpm\\ConfigurationSource {{\n    public function loadConfiguration(): array\n    {{\n        \
         file_put_contents({config:?}, json_encode(['jobId' => \\Lrpm\\job_id(), 'slot' => \\Lrpm\\slot(), \
         'env' => getenv('LRPM_JOB_ID'), 'bootstrapSaw' => $GLOBALS['identityInBootstrap'] ?? null]));\n        \
         return json_decode(<<<'JSON'\n{jobs}\nJSON, true);\n    }}\n}};\n",
        config = config_file.to_string_lossy(),
    );
    fs::write(&source, code).unwrap();
    let mut farm = start_farm_with(&dir, &source, Some(&identity_bootstrap()), extra_args);
    wait_until(&mut farm, DEFAULT_TIMEOUT, "the worker's identity file", |_| worker_file.exists().then_some(()));
    let seen = read_identity(&worker_file, || farm.dump_so_far());
    assert_eq!(seen["jobId"], "7", "an integer id is a string\n{seen}");
    assert_eq!(seen["slot"], 0, "{seen}");
    assert_eq!(seen["serverJobId"], "7", "{seen}");
    assert_eq!(seen["envSlot"], "0", "{seen}");
    assert_eq!(seen["childEnv"], "7/0", "{seen}");
    assert_eq!(seen["bootstrapSaw"], bootstrap_saw, "{seen}");
    assert_eq!(
        seen["job"],
        jobs["7"]
            .as_object()
            .map(|j| {
                let mut j = j.clone();
                j.insert("shortRunTimeSeconds".into(), json!(5));
                j.insert("shutdownTimeoutSeconds".into(), json!(10));
                Value::Object(j)
            })
            .unwrap(),
        "{seen}"
    );
    let config = read_identity(&config_file, || farm.dump_so_far());
    assert_eq!(
        config,
        json!({"jobId": null, "slot": null, "env": false, "bootstrapSaw": {"jobId": null, "slot": null}}),
        "the configuration process is no job's worker"
    );
    farm.signal(Signal::SIGTERM);
    farm.wait_within(DEFAULT_TIMEOUT).assert_code(0);
}

// --- Lrpm\recycle() ------------------------------------------------------------

fn cycle_lines(stdout: &str) -> usize {
    stdout.lines().filter(|l| l.starts_with("cycle ")).count()
}

#[test]
fn a_worker_that_asks_for_a_recycle_runs_its_stop_hook_and_exits_75() {
    let job = json!({"workerConfig": {"recycleAfter": 3}});
    let out = run_with_timeout(worker_with_job("Fixture\\Recycler", &job, &[]), DEFAULT_TIMEOUT);
    out.assert_code(75).assert_stderr_contains("job debug: recycling: requested by the worker (Lrpm\\recycle())");
    assert_eq!(cycle_lines(&out.stdout), 3, "the cycle that asked is the last\n{}", out.dump());
    assert!(out.stdout.trim_end().ends_with("stop hook after 3 cycles"), "{}", out.dump());

    // From start(): no cycle runs.
    let job = json!({"workerConfig": {"recycleInStart": true}});
    let out = run_with_timeout(worker_with_job("Fixture\\Recycler", &job, &[]), DEFAULT_TIMEOUT);
    out.assert_code(75).assert_stderr_contains("recycling: requested by the worker (Lrpm\\recycle())");
    assert_eq!(out.stdout_lines(), ["started", "stop hook after 0 cycles"], "{}", out.dump());
}

#[test]
fn a_recycle_asked_for_in_clock_mode_does_not_wait_for_the_interval() {
    let job = json!({"workerConfig": {"recycleAfter": 1}, "cycleIntervalSeconds": 3600});
    let asked = Instant::now();
    let out = run_with_timeout(worker_with_job("Fixture\\Recycler", &job, &[]), DEFAULT_TIMEOUT);
    out.assert_code(75);
    // Not the 3600 s interval: bounded by the run's own timeout.
    assert!(asked.elapsed() < DEFAULT_TIMEOUT, "took {:?}\n{}", asked.elapsed(), out.dump());
    assert_eq!(cycle_lines(&out.stdout), 1, "{}", out.dump());
}

#[test]
fn a_pending_stop_wins_over_a_requested_recycle() {
    let job = json!({"workerConfig": {"recycleAfter": 2, "stopFirst": true}});
    let out = run_with_timeout(worker_with_job("Fixture\\Recycler", &job, &[]), DEFAULT_TIMEOUT);
    out.assert_code(0);
    assert!(!out.stderr.contains("recycling"), "{}", out.dump());
    assert!(out.stdout.trim_end().ends_with("stop hook after 2 cycles"), "{}", out.dump());
}
