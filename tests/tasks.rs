//! `Lrpm\Task` in a worker of the real binary (tests/fixtures/farm's
//! TaskWorker): answers of every kind, exceptions, timeouts, abnormal ends,
//! the worker's destructors and connections untouched by its tasks,
//! `maxTasks`, and tasks dying with their worker or host.

mod support;

use std::fs;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

const TASK_WORKER: &str = "FarmFixture\\TaskWorker";

/// A TaskWorker job running `scenarios` once, writing to `out`.
fn task_job(jobs: &Jobs, id: &str, out: &std::path::Path, config: Value, fields: Value) -> Value {
    let mut extra = json!({"out": out.to_string_lossy()});
    if let (Value::Object(extra), Value::Object(config)) = (&mut extra, config) {
        extra.extend(config);
    }
    let mut job = jobs.job_with(id, 1, extra, fields);
    job["workerClass"] = json!(TASK_WORKER);
    job
}

/// Each scenario's answer, by name.
fn answers(out: &std::path::Path) -> serde_json::Map<String, Value> {
    fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|v| Some((v["scenario"].as_str()?.to_string(), v["got"].clone())))
        .collect()
}

#[test]
fn tasks_answer_throw_time_out_and_fail_as_documented() {
    let _g = shared();
    let scenarios = [
        "scalar",
        "objects",
        "big-return",
        "big-argument",
        "sees-worker-state",
        "throws",
        "timeout",
        "segfault",
        "sigkill",
        "exit3",
        "fatal",
        "closure",
        "resource",
        "any-all",
        "done",
        "cancel",
        "many",
    ];
    let out_name = "answers.jsonl";
    let farm = Farm::start("tasks_answers", FarmOptions::default(), |jobs| {
        let out = jobs.log.with_file_name(out_name);
        json!({"t": task_job(jobs, "t", &out, json!({"scenarios": scenarios}), json!({}))})
    });
    let out = farm.dir.join(out_name);
    farm.wait_for(secs(120.0), "the scenarios", || (!farm.events_of("t", "scenarios-done").is_empty()).then_some(()));
    let got = answers(&out);
    let diag = || format!("{}\n{}", serde_json::to_string_pretty(&got).unwrap(), farm.diagnostics());
    assert_eq!(got["scalar"], json!(42), "{}", diag());
    assert_eq!(got["objects"], json!([{"a": 1}, {"b": [2, 3]}]), "{}", diag());
    assert_eq!(got["big-return"], json!([50 << 20, true]), "{}", diag());
    assert_eq!(got["big-argument"], json!(true), "{}", diag());
    assert_eq!(got["sees-worker-state"], json!("t/task"), "{}", diag());
    assert_eq!(
        got["throws"],
        json!(["TaskError", "DomainException", "boom", 7, true, ["LogicException", "the cause"]]),
        "{}",
        diag()
    );
    let timeout = &got["timeout"];
    assert_eq!((&timeout[0], &timeout[2]), (&json!("TaskTimeout"), &json!(false)), "killed: {}", diag());
    assert!(timeout[1].as_str().unwrap_or_default().contains("did not finish within 0.3s: killed"), "{}", diag());
    assert_eq!((&got["segfault"][0], &got["segfault"][3]), (&json!("TaskFailed"), &json!(11)), "{}", diag());
    assert!(got["segfault"][1].as_str().unwrap_or_default().contains("SIGSEGV"), "{}", diag());
    assert_eq!((&got["sigkill"][0], &got["sigkill"][3]), (&json!("TaskFailed"), &json!(9)), "{}", diag());
    assert_eq!((&got["exit3"][0], &got["exit3"][2]), (&json!("TaskFailed"), &json!(3)), "{}", diag());
    assert!(got["exit3"][1].as_str().unwrap_or_default().contains("exited with status 3"), "{}", diag());
    assert_eq!((&got["fatal"][0], &got["fatal"][2]), (&json!("TaskFailed"), &json!(255)), "{}", diag());
    assert_eq!(got["closure"][0], json!("TaskError"), "{}", diag());
    assert!(
        got["closure"][2].as_str().unwrap_or_default().contains("a Closure at the return value['f']"),
        "{}",
        diag()
    );
    assert!(
        got["resource"][2].as_str().unwrap_or_default().contains("a resource (stream) at the return value['h']"),
        "{}",
        diag()
    );
    assert_eq!(got["any-all"], json!(["fast", {"slow": "slow", "fast": "fast"}]), "{}", diag());
    assert_eq!(got["done"], json!(["ok", true]), "{}", diag());
    assert_eq!(got["cancel"][0], json!("TaskFailed"), "{}", diag());
    assert!(got["cancel"][1].as_str().unwrap_or_default().contains("was cancelled"), "{}", diag());
    assert_eq!(got["many"], json!([(0..200).map(|n| n * 2).sum::<i64>(), 0]), "{}", diag());
    // No task ran the worker's destructors or shutdown functions: the only
    // "exit" is the worker's own, at the end.
    farm.signal(Signal::SIGTERM);
    assert_eq!(farm.wait_exit(secs(20.0)).code(), Some(0), "{}", diag());
    let worker = farm.events_of("t", "start")[0].pid;
    let ran_in = |kind: &str| farm.events_of("t", kind).iter().map(|e| e.pid).collect::<Vec<i32>>();
    assert_eq!(ran_in("destructor"), vec![worker], "{}", diag());
    assert_eq!(ran_in("exit"), vec![worker], "{}", diag());
}

#[test]
fn a_workers_postgresql_connection_survives_its_tasks_but_not_a_pcntl_fork_that_exits() {
    let _g = shared();
    let pg_dir = TempDir::new("tasks_pg");
    let pg = PostgresServer::start(pg_dir.path());
    let out_name = "answers.jsonl";
    let dsn = pg.pdo_dsn();
    let farm = Farm::start("tasks_pg_farm", FarmOptions::default(), |jobs| {
        let out = jobs.log.with_file_name(out_name);
        json!({"t": task_job(jobs, "t", &out, json!({"scenarios": ["pg-tasks", "pg-pcntl"], "dsn": dsn}), json!({}))})
    });
    farm.wait_for(secs(120.0), "the scenarios", || (!farm.events_of("t", "scenarios-done").is_empty()).then_some(()));
    let got = answers(&farm.dir.join(out_name));
    let diag = || format!("{got:?}\n{}", farm.diagnostics());
    // 25 of each kind: returned, exit(1), threw, a fatal error.
    assert_eq!(got["pg-tasks"], json!([{"ok": 25, "failed": 75}, true, 42]), "{}", diag());
    assert_eq!(got["pg-pcntl"], json!("broken"), "the contrast: {}", diag());
}

#[test]
fn max_tasks_refuses_the_next_task_with_a_clear_error() {
    let _g = shared();
    let out_name = "answers.jsonl";
    let farm = Farm::start("tasks_max", FarmOptions::default(), |jobs| {
        let out = jobs.log.with_file_name(out_name);
        json!({"t": task_job(jobs, "t", &out, json!({"scenarios": ["max-tasks"]}), json!({"maxTasks": 3}))})
    });
    farm.wait_for(secs(60.0), "the scenario", || (!farm.events_of("t", "scenarios-done").is_empty()).then_some(()));
    let got = answers(&farm.dir.join(out_name));
    assert_eq!(got["max-tasks"][0], json!(3), "{got:?}\n{}", farm.diagnostics());
    assert_eq!(
        got["max-tasks"][1],
        json!("3 tasks are running, the most this job allows (maxTasks 3): wait for one (Lrpm\\Task::any) before starting another"),
        "{got:?}"
    );
    assert_eq!(got["max-tasks"][2], json!(0), "cancelled tasks no longer count: {got:?}");
}

/// A farm whose worker keeps one task running `seconds` from start().
fn farm_with_a_background_task(name: &str, seconds: f64, fields: Value) -> (Farm, i32, i32) {
    let farm = Farm::start(name, FarmOptions::default(), |jobs| {
        let out = jobs.log.with_file_name("answers.jsonl");
        json!({"t": task_job(jobs, "t", &out, json!({"background": seconds}), fields)})
    });
    let task = farm.wait_for(secs(30.0), "the task", || farm.events_of("t", "task-started").first().map(|e| e.pid));
    let worker = farm.events_of("t", "start")[0].pid;
    assert!(is_alive(task), "{}", farm.diagnostics());
    (farm, worker, task)
}

#[test]
fn tasks_die_with_their_worker_and_with_the_host() {
    let _g = shared();
    let (farm, worker, task) = farm_with_a_background_task("tasks_kill_worker", 600.0, json!({}));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    assert!(wait_gone(task, secs(5.0)).is_some(), "task {task} outlived its worker\n{}", farm.diagnostics());
    // The replacement's task dies with the host.
    let second =
        farm.wait_for(secs(30.0), "the second task", || farm.events_of("t", "task-started").get(1).map(|e| e.pid));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(farm.pid), Signal::SIGKILL).unwrap();
    assert!(wait_gone(second, secs(5.0)).is_some(), "task {second} outlived the host\n{}", farm.diagnostics());
}

#[test]
fn a_graceful_stop_waits_for_a_task_within_the_grace_and_kills_a_longer_one() {
    let _g = shared();
    // shutdownTimeoutSeconds 6: the grace is 3 s; a 1 s task finishes.
    let (farm, _, task) = farm_with_a_background_task("tasks_stop_short", 1.0, json!({"shutdownTimeoutSeconds": 6}));
    farm.signal(Signal::SIGTERM);
    assert_eq!(farm.wait_exit(secs(20.0)).code(), Some(0), "{}", farm.diagnostics());
    assert_eq!(
        farm.events_of("t", "task-done").len(),
        1,
        "the task finished before the worker left\n{}",
        farm.diagnostics()
    );
    assert!(is_gone(task));
    // A task longer than the grace is killed at its end; the stop stays clean.
    let (farm, _, task) = farm_with_a_background_task("tasks_stop_long", 600.0, json!({"shutdownTimeoutSeconds": 4}));
    farm.signal(Signal::SIGTERM);
    assert_eq!(farm.wait_exit(secs(20.0)).code(), Some(0), "{}", farm.diagnostics());
    assert!(farm.events_of("t", "task-done").is_empty(), "{}", farm.diagnostics());
    assert!(is_gone(task), "{}", farm.diagnostics());
    assert!(
        !farm.stderr().contains("sending SIGKILL"),
        "the worker ended within its shutdown timeout\n{}",
        farm.diagnostics()
    );
}

#[test]
fn status_and_metrics_show_a_workers_tasks() {
    let _g = shared();
    let (farm, worker, task) = farm_with_a_background_task("tasks_status", 600.0, json!({}));
    let status = farm.wait_for(secs(10.0), "the task in the status", || {
        let status = farm.try_status()?;
        (status["t"]["state"]["slots"][0]["tasks"]["running"] == json!(1)).then_some(status)
    });
    let tasks = &status["t"]["state"]["slots"][0]["tasks"];
    assert_eq!(tasks["pids"], json!([task]), "{status}");
    assert_eq!(
        (&tasks["started"], &tasks["failed"], &tasks["timedOut"]),
        (&json!(1), &json!(0), &json!(0)),
        "{status}"
    );
    let table = lrpmctl(&farm.socket, &["status"]);
    let text = table.assert_code(0).stdout.clone();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("t ")).unwrap_or_else(|| panic!("no row for t:\n{text}"));
    assert!(lines[at + 1].starts_with("  └ task") && lines[at + 1].ends_with(&task.to_string()), "{text}");
    let metrics = farm.request("metrics").unwrap();
    assert!(metrics.contains("lrpm_job_tasks_running{job=\"t\",name=\"job-t\"} 1"), "{metrics}");
    assert!(metrics.contains("lrpm_job_tasks_started_total{job=\"t\",name=\"job-t\"} 1"), "{metrics}");
    // The counters outlive the worker: its replacement's task adds to them.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    farm.wait_for(secs(30.0), "the second task", || farm.events_of("t", "task-started").get(1).map(|_| ()));
    farm.wait_for(secs(10.0), "the counters of both", || {
        let metrics = farm.request("metrics").ok()?;
        metrics.contains("lrpm_job_tasks_started_total{job=\"t\",name=\"job-t\"} 2").then_some(())
    });
}

#[test]
fn a_pool_serves_every_call_once_replaces_dead_helpers_and_recycles() {
    let _g = shared();
    let scenarios = ["pool-10000", "pool-helper-killed", "pool-full", "pool-recycle", "pool-big", "pool-start-fails"];
    let out_name = "answers.jsonl";
    // 50 MB of arguments are serialized in the worker and unserialized in
    // the helper: more than PHP's default memory_limit of 128M next to them.
    let options = FarmOptions { extra_args: vec!["-d".into(), "memory_limit=512M".into()], ..Default::default() };
    let farm = Farm::start("tasks_pool", options, |jobs| {
        let out = jobs.log.with_file_name(out_name);
        json!({"t": task_job(jobs, "t", &out, json!({"scenarios": scenarios}), json!({}))})
    });
    farm.wait_for(secs(180.0), "the scenarios", || (!farm.events_of("t", "scenarios-done").is_empty()).then_some(()));
    let got = answers(&farm.dir.join(out_name));
    let diag = || format!("{}\n{}", serde_json::to_string_pretty(&got).unwrap(), farm.diagnostics());
    // None lost, none twice, in order; 4 helpers, gone after stop().
    assert_eq!(got["pool-10000"], json!([10000, 10000, true, 4, 0]), "{}", diag());
    let killed = &got["pool-helper-killed"];
    assert!(
        killed[0].as_str().unwrap_or_default().contains("died during the call")
            && killed[0].as_str().unwrap_or_default().contains("SIGKILL"),
        "{}",
        diag()
    );
    assert_eq!(
        (&killed[1], &killed[2]),
        (&json!(true), &json!(true)),
        "replaced; the idempotent call ran again: {}",
        diag()
    );
    assert!(got["pool-full"][0].as_str().unwrap_or_default().contains("2 calls waiting for a helper"), "{}", diag());
    assert_eq!(got["pool-recycle"], json!([3, 3, 1]), "a fresh helper every 3 calls: {}", diag());
    assert_eq!(got["pool-big"], json!([true, 50 << 20]), "50 MB each way: {}", diag());
    assert_eq!(
        (&got["pool-start-fails"][0], &got["pool-start-fails"][1], &got["pool-start-fails"][2]),
        (&json!("TaskError"), &json!("RuntimeException"), &json!("this helper refuses to start")),
        "{}",
        diag()
    );
}

#[test]
fn pool_helpers_count_against_max_tasks() {
    let _g = shared();
    let out_name = "answers.jsonl";
    let farm = Farm::start("tasks_pool_max", FarmOptions::default(), |jobs| {
        let out = jobs.log.with_file_name(out_name);
        json!({"t": task_job(jobs, "t", &out, json!({"scenarios": ["pool-max-tasks"]}), json!({"maxTasks": 3}))})
    });
    farm.wait_for(secs(60.0), "the scenario", || (!farm.events_of("t", "scenarios-done").is_empty()).then_some(()));
    let got = answers(&farm.dir.join(out_name));
    assert!(
        got["pool-max-tasks"].as_str().unwrap_or_default().contains("(maxTasks 3)")
            && got["pool-max-tasks"].as_str().unwrap_or_default().contains("a pool of 4 helpers was asked for"),
        "{got:?}\n{}",
        farm.diagnostics()
    );
}

#[test]
fn a_workers_pool_is_listed_under_it_and_ends_with_its_stop() {
    let _g = shared();
    let farm = Farm::start("tasks_pool_stop", FarmOptions::default(), |jobs| {
        let out = jobs.log.with_file_name("answers.jsonl");
        json!({"t": task_job(jobs, "t", &out, json!({"pool": 2}), json!({}))})
    });
    let helpers: Vec<i32> = farm.wait_for(secs(30.0), "the helpers", || {
        let helpers: Vec<i32> = farm.events_of("t", "helper").iter().map(|e| e.pid).collect();
        (helpers.len() == 2).then_some(helpers)
    });
    let status = farm.wait_for(secs(10.0), "the helpers in the status", || {
        let status = farm.try_status()?;
        (status["t"]["state"]["slots"][0]["tasks"]["running"] == json!(2)).then_some(status)
    });
    let mut listed: Vec<i32> =
        serde_json::from_value(status["t"]["state"]["slots"][0]["tasks"]["pids"].clone()).unwrap();
    listed.sort();
    let mut expected = helpers.clone();
    expected.sort();
    assert_eq!(listed, expected, "{status}");
    farm.signal(Signal::SIGTERM);
    assert_eq!(farm.wait_exit(secs(20.0)).code(), Some(0), "{}", farm.diagnostics());
    for pid in helpers {
        assert!(wait_gone(pid, secs(5.0)).is_some(), "helper {pid} outlived the stop\n{}", farm.diagnostics());
    }
    assert!(!farm.stderr().contains("sending SIGKILL"), "{}", farm.diagnostics());
}
