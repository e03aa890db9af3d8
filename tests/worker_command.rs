//! `lrpm-host worker CLASS`: one worker in the foreground, against the
//! fixture app in tests/fixtures/app.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

const STOP_MESSAGE: &str = "stopping the worker after its current cycle";

/// Starts `lrpm-host worker ARGS...` from the fixture app.
fn start_worker(args: &[&str]) -> Running {
    let mut all = vec!["worker"];
    all.extend_from_slice(args);
    Running::spawn(lrpm_host(all))
}

fn worker(args: &[&str]) -> Output {
    let mut all = vec!["worker"];
    all.extend_from_slice(args);
    run(all)
}

// --- the PHP environment ---------------------------------------------------

#[test]
fn probe_sees_opcache_enabled_cli_sapi_and_std_constants() {
    let out = worker(&["Fixture\\Probe", "--cycles", "1"]);
    out.assert_code(0);
    let lines = out.stdout_lines();
    assert_eq!(lines[..3], ["true", "'cli'", "true"], "\n{}", out.dump());
    // The PHP that runs is the one the binary reports (`--version`).
    let version = run(["--version"]);
    version.assert_code(0);
    assert!(
        version.stdout.trim().ends_with(&format!("(PHP {})", lines[3])),
        "worker PHP {} vs {}",
        lines[3],
        version.stdout
    );
    // `make test-php84` names the PHP it built: the suite must not have
    // quietly run against another one.
    if let Ok(expected) = std::env::var("LRPM_EXPECT_PHP") {
        assert!(lines[3].starts_with(&format!("{expected}.")), "expected PHP {expected}, the worker runs {}", lines[3]);
    }
}

#[test]
fn server_array_has_the_entries_php_cli_defines() {
    let out = worker(&["Fixture\\ServerProbe", "--cycles", "1"]);
    out.assert_code(0);
    let lines = out.stdout_lines();
    let server: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", out.dump()));
    let argv0 = server["argv0"].as_str().expect("$argv[0]");
    assert!(argv0.ends_with("lrpm-host"), "\n{}", out.dump());
    for key in ["PHP_SELF", "SCRIPT_NAME", "SCRIPT_FILENAME", "PATH_TRANSLATED", "server_argv0"] {
        assert_eq!(server[key], json!(argv0), "$_SERVER[{key}]\n{}", out.dump());
    }
    assert_eq!(server["DOCUMENT_ROOT"], json!(""), "\n{}", out.dump());
    assert!(server["REQUEST_TIME"].is_i64(), "\n{}", out.dump());
}

#[test]
fn warnings_name_the_function_that_raised_them() {
    let out = worker(&["Fixture\\Warner", "--cycles", "1"]);
    out.assert_code(0);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("Warning:  file_get_contents(/nonexistent/lrpm-warning-probe): Failed to open stream"),
        "\n{}",
        out.dump()
    );
    assert!(!all.contains("Request Startup"), "\n{}", out.dump());
    assert!(!all.contains("silenced"), "the @ operator works\n{}", out.dump());
}

#[test]
fn php_binary_is_the_php_cli_of_the_same_version() {
    let out = worker(&["Fixture\\ServerProbe", "--cycles", "1"]);
    out.assert_code(0);
    let server: Value = serde_json::from_str(out.stdout_lines()[0]).unwrap_or_else(|e| panic!("{e}\n{}", out.dump()));
    let php_binary = server["PHP_BINARY"].as_str().expect("PHP_BINARY");
    assert!(!php_binary.contains("lrpm-host"), "PHP_BINARY must not start a farm: {php_binary}");
    let version = std::process::Command::new(php_binary)
        .args(["-r", "echo PHP_VERSION;"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run PHP_BINARY {php_binary}: {e}"));
    assert_eq!(String::from_utf8_lossy(&version.stdout), server["PHP_VERSION"].as_str().unwrap());
}

#[test]
fn cycles_option_limits_the_number_of_cycles() {
    let out = worker(&["Fixture\\Probe", "--cycles", "3"]);
    out.assert_code(0);
    assert_eq!(out.stdout_lines().len(), 12, "3 cycles of 4 lines each\n{}", out.dump());
}

#[test]
fn ini_define_reaches_the_worker() {
    let out = worker(&["Fixture\\IniProbe", "--cycles", "1", "-d", "memory_limit=77M"]);
    out.assert_code(0);
    assert_eq!(out.stdout_lines(), ["memory_limit=77M"], "\n{}", out.dump());
}

#[test]
fn worker_implementing_the_php_lrpm_interface_runs() {
    let out = worker(&["Fixture\\LegacyWorker", "--cycles", "2"]);
    out.assert_code(0);
    assert_eq!(out.stdout_lines(), ["legacy-start", "legacy-cycle", "legacy-cycle"], "\n{}", out.dump());
}

#[test]
fn default_bootstrap_is_the_nearest_vendor_autoload_above_the_current_dir() {
    let mut cmd = lrpm_host(["worker", "Fixture\\Probe", "--cycles", "1"]);
    cmd.current_dir(app_dir().join("src"));
    let out = run_with_timeout(cmd, DEFAULT_TIMEOUT);
    out.assert_code(0);
    assert_eq!(out.stdout_lines()[..3], ["true", "'cli'", "true"], "\n{}", out.dump());
}

// --- the job ---------------------------------------------------------------

fn dumped_job(out: &Output) -> Value {
    out.assert_code(0);
    let lines = out.stdout_lines();
    assert_eq!(lines.len(), 1, "expected one line of JSON\n{}", out.dump());
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", out.dump()))
}

#[test]
fn start_receives_the_default_job_without_job_option() {
    let job = dumped_job(&worker(&["Fixture\\JobDumper", "--cycles", "1"]));
    assert_eq!(
        job,
        json!({
            "name": "Fixture\\JobDumper",
            "workerClass": "Fixture\\JobDumper",
            "mtime": 0,
            "workerConfig": [],
            "shortRunTimeSeconds": 5,
            "shutdownTimeoutSeconds": 10,
        })
    );
}

#[test]
fn job_option_reaches_start_with_missing_fields_filled() {
    let given = r#"{"name":"custom","workerConfig":{"answer":42,"list":[1,2]},"shortRunTimeSeconds":9}"#;
    let job = dumped_job(&worker(&["Fixture\\JobDumper", "--cycles", "1", "--job", given]));
    assert_eq!(
        job,
        json!({
            "name": "custom",
            "workerClass": "Fixture\\JobDumper",
            "mtime": 0,
            "workerConfig": {"answer": 42, "list": [1, 2]},
            "shortRunTimeSeconds": 9,
            "shutdownTimeoutSeconds": 10,
        })
    );
}

#[test]
fn invalid_job_json_is_rejected_before_starting_a_worker() {
    let out = worker(&["Fixture\\JobDumper", "--cycles", "1", "--job", "{"]);
    assert_ne!(out.code(), 0, "\n{}", out.dump());
    out.assert_stderr_contains("--job is not valid JSON");
    assert_eq!(out.stdout, "", "start() must not run\n{}", out.dump());
}

// --- stopping ------------------------------------------------------------

/// SIGTERM/SIGINT while the worker blocks in sleep(30): the sleep is cut
/// short, the cycle returns ("cycle-end") and lrpm-host exits 0 quickly.
fn stop_sleeper_with(sig: Signal) {
    let mut host = start_worker(&["Fixture\\Sleeper"]);
    host.wait_for_stdout("cycle-start", DEFAULT_TIMEOUT);
    let worker = host.worker_pid(DEFAULT_TIMEOUT);
    host.wait_for(DEFAULT_TIMEOUT, &format!("worker {worker} to block in sleep() (/proc/{worker}/syscall)"), |_| {
        in_sleep_syscall(worker).then_some(())
    });
    let sent = Instant::now();
    host.signal(sig);
    let out = host.wait_within(Duration::from_secs(10));
    let after_signal = sent.elapsed();
    out.assert_code(0);
    // Not a latency figure: a sleep the signal does not cut short ends
    // after sleep(30), so anything well under 30 s tells them apart.
    assert!(after_signal < Duration::from_secs(10), "took {after_signal:?} after {sig}\n{}", out.dump());
    assert_eq!(out.stdout_lines(), ["cycle-start", "cycle-end"], "the cycle must return, once\n{}", out.dump());
    out.assert_stderr_contains(STOP_MESSAGE);
}

#[test]
fn sigterm_cuts_sleep_short_and_stops_after_the_cycle() {
    stop_sleeper_with(Signal::SIGTERM);
}

#[test]
fn sigint_cuts_sleep_short_and_stops_after_the_cycle() {
    stop_sleeper_with(Signal::SIGINT);
}

#[test]
fn second_sigterm_kills_a_worker_that_never_returns() {
    let mut host = start_worker(&["Fixture\\Busy"]);
    host.wait_for_stdout("busy", DEFAULT_TIMEOUT);
    let worker = host.worker_pid(DEFAULT_TIMEOUT);

    host.signal(Signal::SIGTERM);
    // lrpm-host prints the message, then forwards SIGTERM to the worker:
    // the worker must go on burning CPU well after that (0.2 s of CPU time).
    host.wait_for_stderr(STOP_MESSAGE, DEFAULT_TIMEOUT);
    let ticks_at_stop = stat(worker).map(|s| s.cpu_ticks).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let fifth_of_a_second = (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64 / 5).max(1);
    host.wait_for(DEFAULT_TIMEOUT, "the busy worker to keep running after one SIGTERM", |_| {
        let now = stat(worker).filter(|s| s.state != 'Z')?;
        (now.cpu_ticks >= ticks_at_stop + fifth_of_a_second).then_some(())
    });
    assert!(host.try_wait().is_none(), "one SIGTERM must only ask the busy worker to stop");
    assert!(!is_gone(worker), "one SIGTERM must not kill the busy worker");

    let sent = Instant::now();
    host.signal(Signal::SIGTERM);
    let out = host.wait_within(Duration::from_secs(5));
    out.assert_code(128 + libc::SIGKILL);
    // A second SIGTERM that only waited for the job's shutdown timeout
    // (10 s) instead of killing at once would take 10 s or more.
    assert!(sent.elapsed() < Duration::from_secs(5), "second SIGTERM took {:?}\n{}", sent.elapsed(), out.dump());
    assert!(is_gone(worker), "worker {worker} survived");
    out.assert_stderr_contains(STOP_MESSAGE);
}

#[test]
fn sigkill_to_lrpm_host_takes_the_worker_down() {
    let mut host = start_worker(&["Fixture\\Sleeper"]);
    host.wait_for_stdout("cycle-start", DEFAULT_TIMEOUT);
    let worker = host.worker_pid(DEFAULT_TIMEOUT);
    assert!(!is_gone(worker));

    host.signal(Signal::SIGKILL);
    let out = host.wait_within(Duration::from_secs(5));
    assert_eq!(out.status.signal_number(), Some(libc::SIGKILL), "\n{}", out.dump());
    let gone_after = wait_gone(worker, Duration::from_secs(1));
    assert!(gone_after.is_some(), "worker {worker} still alive 1 s after lrpm-host was SIGKILLed: {}", ps_args(worker));
}

trait SignalNumber {
    fn signal_number(&self) -> Option<i32>;
}

impl SignalNumber for std::process::ExitStatus {
    fn signal_number(&self) -> Option<i32> {
        std::os::unix::process::ExitStatusExt::signal(self)
    }
}

// --- process title ---------------------------------------------------------

#[test]
fn worker_process_title_names_job_id_and_name() {
    let mut host = start_worker(&["Fixture\\Sleeper", "--id", "title-test", "--job", r#"{"name":"titled-job"}"#]);
    host.wait_for_stdout("cycle-start", DEFAULT_TIMEOUT);
    let worker = host.worker_pid(DEFAULT_TIMEOUT);
    assert_eq!(ps_args(worker), "lrpm-host: worker title-test titled-job #0");
    host.signal(Signal::SIGTERM);
    host.wait_within(Duration::from_secs(5)).assert_code(0);

    // Default id "debug", default name = the class.
    let mut host = start_worker(&["Fixture\\Sleeper"]);
    host.wait_for_stdout("cycle-start", DEFAULT_TIMEOUT);
    let worker = host.worker_pid(DEFAULT_TIMEOUT);
    assert_eq!(ps_args(worker), "lrpm-host: worker debug Fixture\\Sleeper #0");
    host.signal(Signal::SIGTERM);
    host.wait_within(Duration::from_secs(5)).assert_code(0);
}

// --- failures and their exit codes -------------------------------------------

#[test]
fn exit_in_user_code_becomes_the_exit_code() {
    worker(&["Fixture\\Exiter"]).assert_code(7);
}

fn assert_uncaught(out: &Output, class: &str, message: &str, marker: &str) {
    let file = app_src("Thrower.php");
    let file = file.display();
    let line = line_of(&app_src("Thrower.php"), marker);
    out.assert_code(70)
        .assert_stderr_contains(&format!("PHP Fatal error:  Uncaught {class}: {message} in {file}:{line}"))
        .assert_stderr_contains(&format!("thrown in {file} on line {line}"));
}

#[test]
fn uncaught_exception_in_cycle_exits_70() {
    let out = worker(&["Fixture\\Thrower"]);
    assert_uncaught(&out, "RuntimeException", "boom from cycle", "THROW-CYCLE");
}

#[test]
fn uncaught_exception_in_start_exits_70() {
    let out = worker(&["Fixture\\Thrower", "--job", r#"{"workerConfig":{"throwIn":"start"}}"#]);
    assert_uncaught(&out, "LogicException", "boom from start", "THROW-START");
}

#[test]
fn memory_exhaustion_is_a_php_fatal_error_exit_255() {
    let out = worker(&["Fixture\\MemoryHog"]);
    out.assert_code(255).assert_stderr_contains("PHP Fatal error:  Allowed memory size of 16777216 bytes exhausted");
}

#[test]
fn missing_worker_class_exits_65() {
    worker(&["Fixture\\DoesNotExist"])
        .assert_code(65)
        .assert_stderr_contains("worker class Fixture\\DoesNotExist does not exist");
}

#[test]
fn class_not_implementing_the_interface_exits_65() {
    worker(&["Fixture\\NotAWorker"])
        .assert_code(65)
        .assert_stderr_contains("worker class Fixture\\NotAWorker does not implement Lrpm\\Worker");
}

#[test]
fn missing_bootstrap_exits_78() {
    let missing = fixtures_dir().join("no-such-dir").join("autoload.php");
    let out = worker(&["Fixture\\Probe", "--cycles", "1", "--bootstrap", missing.to_str().unwrap()]);
    out.assert_code(78).assert_stderr_contains(&format!("{} does not exist", missing.display()));
    assert_eq!(out.stdout, "", "\n{}", out.dump());
}

#[test]
fn bootstrap_with_syntax_error_exits_78() {
    let broken = fixtures_dir().join("broken").join("autoload.php");
    let out = worker(&["Fixture\\Probe", "--cycles", "1", "--bootstrap", broken.to_str().unwrap()]);
    out.assert_code(78).assert_stderr_contains(&format!("bootstrap {} failed: ParseError: ", broken.display()));
    assert_eq!(out.stdout, "", "\n{}", out.dump());
}

// --- pcntl_fork() inside cycle() -----------------------------------------------

#[test]
fn forked_child_returns_and_exits_without_running_the_loop() {
    let out = worker(&["Fixture\\Forker", "--cycles", "2"]);
    out.assert_code(0);

    let mut begins = Vec::new(); // (pid, cycle)
    let mut children = Vec::new(); // (pid, cycle)
    let mut parents = Vec::new(); // (pid, cycle, reaped, status)
    for line in out.stdout_lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> i64 { f[i].parse().unwrap_or_else(|_| panic!("bad line {line:?}\n{}", out.dump())) };
        match f[0] {
            "cycle-begin" => begins.push((num(1), num(2))),
            "child" => children.push((num(1), num(2))),
            "parent" => parents.push((num(1), num(2), num(4), num(6))),
            _ => panic!("unexpected line {line:?}\n{}", out.dump()),
        }
    }

    // The loop ran twice, both times in the original worker process.
    assert_eq!(begins.len(), 2, "\n{}", out.dump());
    let worker = begins[0].0;
    assert_eq!(begins, [(worker, 1), (worker, 2)], "\n{}", out.dump());
    assert_eq!(parents.len(), 2, "\n{}", out.dump());

    // One child per cycle, each printing exactly once, none of them the worker.
    let by_cycle: HashMap<i64, i64> = children.iter().map(|&(pid, cycle)| (cycle, pid)).collect();
    assert_eq!(children.len(), 2, "\n{}", out.dump());
    assert_eq!(by_cycle.len(), 2, "one child line per cycle\n{}", out.dump());
    let child_pids: HashSet<i64> = children.iter().map(|c| c.0).collect();
    assert_eq!(child_pids.len(), 2, "\n{}", out.dump());
    assert!(!child_pids.contains(&worker), "\n{}", out.dump());

    // The parent reaped each child, which exited 0 without a second cycle.
    for (i, &(pid, cycle, reaped, status)) in parents.iter().enumerate() {
        assert_eq!((pid, cycle), (worker, i as i64 + 1), "\n{}", out.dump());
        assert_eq!(reaped, by_cycle[&cycle], "\n{}", out.dump());
        assert_eq!(status, 0, "forked child exit status\n{}", out.dump());
    }
    assert!(!out.stderr.contains("PHP Fatal error"), "\n{}", out.dump());
}

#[test]
fn garbage_cycles_are_collected_between_cycles_about_once_a_second() {
    // 25 cycles of 100 ms, each leaving one garbage cycle behind.
    let out = worker(&["Fixture\\GarbageMaker", "--cycles", "25", "--job", r#"{"workerConfig": {"sleepMs": 100}}"#]);
    out.assert_code(0);
    let counters: Vec<(u64, u64, u64)> = out
        .stdout_lines()
        .iter()
        .map(|line| {
            let numbers: Vec<u64> =
                line.split(' ').map(|field| field.split('=').nth(1).unwrap().parse().unwrap()).collect();
            (numbers[0], numbers[1], numbers[2])
        })
        .collect();
    assert_eq!(counters.len(), 25, "\n{}", out.dump());
    let (max_roots, last) = (counters.iter().map(|c| c.0).max().unwrap(), counters[24]);
    // Once a second is about 10 cycles of 100 ms; a loaded machine may stretch
    // that a little. Without collections between cycles (PHP's 10,000-root
    // threshold) the roots would reach 24 in 25 cycles.
    assert!(max_roots <= 20, "garbage must not wait for PHP's 10,000-root threshold\n{}", out.dump());
    assert!(last.2 >= 10, "the garbage cycles were collected\n{}", out.dump());
    assert!(
        (1..=4).contains(&last.1),
        "about one collection a second, not one per cycle (GC runs: {})\n{}",
        last.1,
        out.dump()
    );
}

// --- the arguments ---------------------------------------------------------

/// A single-file farm: its worker class is declared next to its source.
fn write_single_file_farm(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.join("farm.php");
    let code = r#"<?php
namespace App;

final class SingleWorker implements \Lrpm\Worker
{
    private int $cycles = 0;
    public function start(array $job): void {}
    public function cycle(): void { $this->cycles++; echo "single-file worker cycle {$this->cycles}\n"; }
}

final class Source implements \Lrpm\ConfigurationSource
{
    public function loadConfiguration(): array { return []; }
}
"#;
    std::fs::write(&path, code).unwrap();
    path
}

/// `lrpm-host worker CLASS [SOURCE]` as the README and `--help` show it,
/// with the options before or after CLASS and the source file after CLASS
/// (or before the subcommand): the worker comes from the source file.
#[test]
fn worker_takes_its_source_file_and_options_in_any_natural_order() {
    let dir = TempDir::new("worker-args");
    let source = write_single_file_farm(&dir);
    let source = source.to_str().unwrap();
    let orders: [&[&str]; 4] = [
        &["worker", "App\\SingleWorker", "--cycles", "2", source],
        &["worker", "--cycles", "2", "App\\SingleWorker", source],
        &["worker", "App\\SingleWorker", source, "--cycles=2"],
        &[source, "worker", "App\\SingleWorker", "--cycles", "2"],
    ];
    for args in orders {
        let mut cmd = lrpm_host(args);
        cmd.current_dir(dir.path());
        let out = run_with_timeout(cmd, DEFAULT_TIMEOUT);
        out.assert_code(0);
        assert!(out.stdout.contains("single-file worker cycle 2"), "{args:?}\n{}", out.dump());
        assert!(!out.stdout.contains("cycle 3"), "{args:?}\n{}", out.dump());
    }
    let mut two = lrpm_host([source, "worker", "App\\SingleWorker", "other.php"]);
    two.current_dir(dir.path());
    let out = run_with_timeout(two, DEFAULT_TIMEOUT);
    out.assert_code(64);
    assert!(out.stderr.contains("two configuration sources given"), "{}", out.dump());
    let help = run(["worker", "--help"]);
    help.assert_code(0);
    assert!(help.stdout.contains("worker CLASS [SOURCE]"), "{}", help.dump());
    let top = run(["--help"]);
    assert!(!top.stdout.contains("[SOURCE] <COMMAND>"), "{}", top.dump());
}
