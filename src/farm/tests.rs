//! Table tests for every rule of the pure core.

use std::time::{Duration, Instant};

use serde_json::Map;

use super::*;

fn job(id: i64, mtime: i64) -> Job {
    Job {
        id: JobId::Int(id),
        name: format!("job {id}"),
        worker_class: "W".into(),
        mtime,
        short_run_time_seconds: 5,
        shutdown_timeout_seconds: 10,
        config: Map::new(),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A farm with a running config process (pid 1) and the given jobs started
/// as pids 100 + id at `t0`.
fn running_farm(t0: Instant, jobs: &[Job]) -> Farm {
    let mut farm = Farm::new();
    assert_eq!(farm.start(), vec![Action::StartConfigProcess]);
    farm.handle(Event::ConfigProcessStarted(1), t0);
    let actions = farm.handle(Event::Configuration(jobs.to_vec()), t0);
    for j in jobs {
        assert!(actions.contains(&Action::StartWorker(j.id.clone())), "{actions:?}");
        farm.handle(Event::WorkerStarted { id: j.id.clone(), pid: pid_of(&j.id) }, t0);
    }
    farm
}

fn pid_of(id: &JobId) -> Pid {
    match id {
        JobId::Int(n) => 100 + *n as Pid,
        JobId::Str(_) => 999,
    }
}

fn without_logs(actions: Vec<Action>) -> Vec<Action> {
    actions.into_iter().filter(|a| !matches!(a, Action::Log(..))).collect()
}

fn term(id: i64) -> Action {
    Action::SignalWorker { id: JobId::Int(id), pid: 100 + id as Pid, signal: StopSignal::Term }
}

fn kill(id: i64) -> Action {
    Action::SignalWorker { id: JobId::Int(id), pid: 100 + id as Pid, signal: StopSignal::Kill }
}

fn exited(id: i64, code: i32) -> Event {
    Event::ChildExited { pid: 100 + id as Pid, exit: ExitKind::Code(code) }
}

#[test]
fn new_jobs_start_at_once() {
    let t0 = Instant::now();
    let farm = running_farm(t0, &[job(1, 1), job(2, 1), job(3, 1)]);
    assert!(farm.jobs().values().all(|s| s.process.is_some()));
}

#[test]
fn diff_rules_for_mtime_and_removal() {
    let t0 = Instant::now();
    // (new configuration, expected actions)
    let cases: Vec<(Vec<Job>, Vec<Action>)> = vec![
        (vec![job(1, 1), job(2, 1)], vec![]),        // same mtime: untouched
        (vec![job(1, 0), job(2, 1)], vec![]),        // lower mtime: untouched
        (vec![job(1, 2), job(2, 1)], vec![term(1)]), // higher mtime: restart only that job
        (vec![job(2, 1)], vec![term(1)]),            // missing: stop
        (vec![job(1, 1), job(2, 1), job(3, 1)], vec![Action::StartWorker(JobId::Int(3))]),
    ];
    for (configuration, expected) in cases {
        let mut farm = running_farm(t0, &[job(1, 1), job(2, 1)]);
        let actions = without_logs(farm.handle(Event::Configuration(configuration.clone()), t0 + secs(1)));
        assert_eq!(
            actions,
            expected,
            "for {:?}",
            configuration.iter().map(|j| (j.id.clone(), j.mtime)).collect::<Vec<_>>()
        );
    }
}

#[test]
fn changed_job_restarts_with_the_new_config_once_stopped() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    farm.handle(Event::Configuration(vec![job(1, 2)]), t0 + secs(1));
    let actions = without_logs(farm.handle(exited(1, 0), t0 + secs(2)));
    assert_eq!(actions, vec![Action::StartWorker(JobId::Int(1))]);
    assert_eq!(farm.job(&JobId::Int(1)).unwrap().job.mtime, 2);
}

#[test]
fn removed_job_is_never_restarted() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    farm.handle(Event::Configuration(vec![]), t0 + secs(1));
    let actions = without_logs(farm.handle(exited(1, 0), t0 + secs(2)));
    assert!(actions.is_empty());
    assert!(farm.job(&JobId::Int(1)).is_none());
    assert!(without_logs(farm.handle(Event::Tick, t0 + secs(100))).is_empty());
}

#[test]
fn short_runs_back_off_1_2_4_and_a_long_run_resets() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    let mut now = t0;
    for expected_delay in [1, 2, 4] {
        now += secs(1);
        let actions = without_logs(farm.handle(exited(1, 1), now));
        assert!(actions.is_empty(), "must wait, got {actions:?}");
        assert_eq!(farm.next_deadline(), Some(now + secs(expected_delay)));
        assert!(
            without_logs(farm.handle(Event::Tick, now + secs(expected_delay) - Duration::from_millis(1))).is_empty()
        );
        now += secs(expected_delay);
        assert_eq!(without_logs(farm.handle(Event::Tick, now)), vec![Action::StartWorker(JobId::Int(1))]);
        farm.handle(Event::WorkerStarted { id: JobId::Int(1), pid: 101 }, now);
    }
    // Ran for 5 s (= shortRunTimeSeconds): immediate restart, backoff back to 1 s.
    now += secs(5);
    assert_eq!(without_logs(farm.handle(exited(1, 0), now)), vec![Action::StartWorker(JobId::Int(1))]);
    assert_eq!(farm.job(&JobId::Int(1)).unwrap().backoff.current(), secs(1));
}

#[test]
fn sigterm_escalates_to_sigkill_after_shutdown_timeout() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    assert_eq!(without_logs(farm.handle(Event::Configuration(vec![]), t0)), vec![term(1)]);
    assert_eq!(farm.next_deadline(), Some(t0 + secs(10)));
    assert!(without_logs(farm.handle(Event::Tick, t0 + secs(9))).is_empty());
    assert_eq!(without_logs(farm.handle(Event::Tick, t0 + secs(10))), vec![kill(1)]);
    // SIGKILL is sent once.
    assert!(without_logs(farm.handle(Event::Tick, t0 + secs(11))).is_empty());
}

#[test]
fn shutdown_stops_config_process_first_then_all_workers_and_exits_when_all_reaped() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1), job(2, 1)]);
    let actions = without_logs(farm.handle(Event::Shutdown, t0));
    assert_eq!(actions, vec![Action::SignalConfigProcess { pid: 1, signal: StopSignal::Term }, term(1), term(2)]);
    assert!(without_logs(farm.handle(exited(1, 0), t0)).is_empty());
    assert!(without_logs(farm.handle(Event::ChildExited { pid: 1, exit: ExitKind::Code(0) }, t0)).is_empty());
    // No restarts during shutdown, even after a short run.
    assert_eq!(without_logs(farm.handle(exited(2, 1), t0)), vec![Action::Exit]);
}

#[test]
fn shutdown_escalates_per_job_and_on_a_second_request() {
    let t0 = Instant::now();
    let mut short = job(1, 1);
    short.shutdown_timeout_seconds = 2;
    let mut farm = running_farm(t0, &[short, job(2, 1)]);
    farm.handle(Event::Shutdown, t0);
    assert_eq!(without_logs(farm.handle(Event::Tick, t0 + secs(2))), vec![kill(1)]);
    let second = without_logs(farm.handle(Event::Shutdown, t0 + secs(3)));
    assert_eq!(second, vec![Action::SignalConfigProcess { pid: 1, signal: StopSignal::Kill }, kill(1), kill(2)]);
}

#[test]
fn config_process_failures_back_off_and_keep_jobs() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    let actions = without_logs(farm.handle(Event::ChildExited { pid: 1, exit: ExitKind::Code(3) }, t0 + secs(1)));
    assert!(actions.is_empty());
    assert!(farm.job(&JobId::Int(1)).unwrap().process.is_some(), "last good configuration keeps running");
    assert_eq!(farm.next_deadline(), Some(t0 + secs(3)));
    assert_eq!(without_logs(farm.handle(Event::Tick, t0 + secs(3))), vec![Action::StartConfigProcess]);
    farm.handle(Event::ConfigProcessStarted(2), t0 + secs(3));
    farm.handle(Event::ChildExited { pid: 2, exit: ExitKind::Code(3) }, t0 + secs(4));
    assert_eq!(farm.next_deadline(), Some(t0 + secs(8)));
}

#[test]
fn reload_signals_the_config_process_or_starts_it_early() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[]);
    assert_eq!(
        without_logs(farm.handle(Event::Reload, t0)),
        vec![Action::SignalConfigProcess { pid: 1, signal: StopSignal::Hup }]
    );
    farm.handle(Event::ChildExited { pid: 1, exit: ExitKind::Code(3) }, t0);
    assert_eq!(without_logs(farm.handle(Event::Reload, t0 + secs(1))), vec![Action::StartConfigProcess]);
}

#[test]
fn restart_command_resets_backoff_and_starts_a_waiting_job_at_once() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    farm.handle(exited(1, 1), t0);
    farm.handle(Event::Tick, t0 + secs(1));
    farm.handle(Event::WorkerStarted { id: JobId::Int(1), pid: 101 }, t0 + secs(1));
    farm.handle(exited(1, 1), t0 + secs(1));
    assert_eq!(farm.job(&JobId::Int(1)).unwrap().backoff.current(), secs(4));
    assert_eq!(
        without_logs(farm.handle(Event::Restart(JobId::Int(1)), t0 + secs(2))),
        vec![Action::StartWorker(JobId::Int(1))]
    );
    assert_eq!(farm.job(&JobId::Int(1)).unwrap().backoff.current(), secs(1));
    // A running job is stopped and started again.
    farm.handle(Event::WorkerStarted { id: JobId::Int(1), pid: 101 }, t0 + secs(2));
    assert_eq!(without_logs(farm.handle(Event::Restart(JobId::Int(1)), t0 + secs(3))), vec![term(1)]);
    assert_eq!(without_logs(farm.handle(exited(1, 0), t0 + secs(3))), vec![Action::StartWorker(JobId::Int(1))]);
}

#[test]
fn held_jobs_survive_config_polls_until_started() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    assert_eq!(without_logs(farm.handle(Event::Hold(JobId::Int(1)), t0)), vec![term(1)]);
    assert!(without_logs(farm.handle(exited(1, 0), t0)).is_empty());
    assert!(without_logs(farm.handle(Event::Configuration(vec![job(1, 5)]), t0 + secs(1))).is_empty());
    assert_eq!(
        without_logs(farm.handle(Event::Start(JobId::Int(1)), t0 + secs(2))),
        vec![Action::StartWorker(JobId::Int(1))]
    );
}

#[test]
fn requests_for_unknown_or_removed_jobs_are_refused_like_php_lrpm() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    assert_eq!(
        farm.check_job_request(&JobId::Int(9), "restart"),
        Err("Will not restart job 9, it does not exist".into())
    );
    farm.handle(Event::Configuration(vec![]), t0);
    assert_eq!(farm.check_job_request(&JobId::Int(1), "restart"), Err("Will not restart job 1, it was removed".into()));
}

#[test]
fn shutdown_with_nothing_running_exits_once_config_process_is_gone() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[]);
    farm.handle(Event::Shutdown, t0);
    assert_eq!(
        without_logs(farm.handle(Event::ChildExited { pid: 1, exit: ExitKind::Signal(15) }, t0)),
        vec![Action::Exit]
    );
    assert!(farm.handle(Event::Tick, t0).is_empty());
}

#[test]
fn configurations_are_ignored_during_shutdown() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    farm.handle(Event::Shutdown, t0);
    assert!(without_logs(farm.handle(Event::Configuration(vec![job(2, 1)]), t0)).is_empty());
}
