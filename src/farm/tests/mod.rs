//! Table tests for every rule of the pure core. `step` feeds an event and
//! then a tick, as one turn of the supervisor's loop does.

use std::time::{Duration, Instant};

use serde_json::Map;

use super::*;
use crate::job::{RawJson, RestartPolicy};

mod cluster;
mod one_process_per_slot;
mod replicas;
mod rolling;

fn job(id: i64, mtime: i64) -> Job {
    Job {
        id: JobId::Int(id),
        name: format!("job {id}"),
        worker_class: "W".into(),
        mtime,
        short_run_time_seconds: 5,
        shutdown_timeout_seconds: 10,
        cycle_interval_seconds: None,
        restart_policy: RestartPolicy::Always,
        max_failures: None,
        failure_window_seconds: 60,
        essential: false,
        replicas: 1,
        cycle_timeout_seconds: None,
        progress_timeout_seconds: None,
        max_cycles: None,
        max_lifetime_seconds: None,
        memory_limit_mb: None,
        max_tasks: 16,
        config: std::sync::Arc::new(Map::new()),
        config_json: RawJson::of(&Map::new()),
        placement: crate::job::Placement::Cluster,
        user: None,
        settings: std::sync::Arc::new(Map::new()),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn id(n: i64) -> JobId {
    JobId::Int(n)
}

fn key(n: i64) -> WorkerKey {
    WorkerKey::new(id(n), 0)
}

fn slot_key(n: i64, slot: u32) -> WorkerKey {
    WorkerKey::new(id(n), slot)
}

/// Pid 100 + id for slot 0, 1000 more for each further slot.
fn pid_of(key: &WorkerKey) -> Pid {
    let base = match key.id {
        JobId::Int(n) => 100 + n as Pid,
        JobId::Str(_) => 999,
    };
    base + 1000 * key.slot as Pid
}

fn slot_key_of(job_id: &JobId, slot: u32) -> WorkerKey {
    WorkerKey::new(job_id.clone(), slot)
}

fn slot_pid(n: i64, slot: u32) -> Pid {
    pid_of(&slot_key(n, slot))
}

/// Slot 0 of job n.
fn slot0(farm: &Farm, n: i64) -> &SlotState {
    &farm.job(&id(n)).unwrap().slots[&0]
}

fn without_logs(actions: Vec<Action>) -> Vec<Action> {
    actions.into_iter().filter(|a| !matches!(a, Action::Log(..))).collect()
}

/// One loop turn: the event, then the deadlines; starts are reported back
/// as the supervisor would (pid 100 + id).
fn step(farm: &mut Farm, event: Event, now: Instant) -> Vec<Action> {
    let mut actions = farm.handle(event, now);
    actions.extend(farm.handle(Event::Tick, now));
    let actions = without_logs(actions);
    for action in &actions {
        if let Action::StartWorker(job_id) = action {
            farm.handle(Event::WorkerStarted { key: job_id.clone(), pid: pid_of(job_id) }, now);
        }
    }
    actions
}

fn tick(farm: &mut Farm, now: Instant) -> Vec<Action> {
    step(farm, Event::Tick, now)
}

/// A farm with a running config process (pid 1) and the given jobs running
/// as pids 100 + id since `t0`.
fn running_farm(t0: Instant, jobs: &[Job]) -> Farm {
    let mut farm = Farm::new();
    assert_eq!(farm.start(), vec![Action::StartConfigProcess]);
    farm.handle(Event::ConfigProcessStarted(1), t0);
    let actions = step(&mut farm, Event::Configuration(jobs.to_vec()), t0);
    for j in jobs {
        for slot in 0..j.replicas {
            assert!(actions.contains(&Action::StartWorker(slot_key_of(&j.id, slot))), "{actions:?}");
        }
    }
    farm
}

fn term(n: i64) -> Action {
    Action::StopWorker { key: key(n), pid: 100 + n as Pid }
}

fn kill(n: i64) -> Action {
    Action::KillWorker { key: key(n), pid: 100 + n as Pid, reason: KillReason::StopTimeout(secs(10)) }
}

fn exited(n: i64, code: i32) -> Event {
    Event::ChildExited {
        pid: 100 + n as Pid,
        exit: ExitKind::Code(code),
        recycle: None,
        cycles: 0,
        tasks: Default::default(),
        php: PhpEnd::Unknown,
    }
}

fn config_exited(pid: Pid, code: i32) -> Event {
    Event::ChildExited {
        pid,
        exit: ExitKind::Code(code),
        recycle: None,
        cycles: 0,
        tasks: Default::default(),
        php: PhpEnd::Unknown,
    }
}

fn status(farm: &Farm, n: i64, now: Instant) -> StatusName {
    farm.job(&id(n)).unwrap().status(now)
}

#[test]
fn new_jobs_start_at_once() {
    let t0 = Instant::now();
    let farm = running_farm(t0, &[job(1, 1), job(2, 1), job(3, 1)]);
    assert!(farm.jobs().values().flat_map(|s| s.slots.values()).all(|s| matches!(s.phase, Phase::Running { .. })));
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
        (vec![job(1, 1), job(2, 1), job(3, 1)], vec![Action::StartWorker(key(3))]),
    ];
    for (configuration, expected) in cases {
        let mut farm = running_farm(t0, &[job(1, 1), job(2, 1)]);
        let actions = step(&mut farm, Event::Configuration(configuration.clone()), t0 + secs(1));
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
    step(&mut farm, Event::Configuration(vec![job(1, 2)]), t0 + secs(1));
    assert_eq!(status(&farm, 1, t0 + secs(1)), StatusName::Stopping);
    assert_eq!(step(&mut farm, exited(1, 0), t0 + secs(2)), vec![Action::StartWorker(key(1))]);
    assert_eq!(farm.job(&id(1)).unwrap().job.mtime, 2);
}

#[test]
fn removed_job_is_never_restarted() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    step(&mut farm, Event::Configuration(vec![]), t0 + secs(1));
    assert!(step(&mut farm, exited(1, 0), t0 + secs(2)).is_empty());
    assert!(farm.job(&id(1)).is_none());
    assert!(tick(&mut farm, t0 + secs(100)).is_empty());
}

#[test]
fn removed_then_added_again_while_stopping_restarts_once_gone() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    step(&mut farm, Event::Configuration(vec![]), t0);
    assert!(step(&mut farm, Event::Configuration(vec![job(1, 1)]), t0).is_empty());
    assert_eq!(step(&mut farm, exited(1, 0), t0 + secs(1)), vec![Action::StartWorker(key(1))]);
}

#[test]
fn short_runs_back_off_1_2_4_and_a_long_run_resets() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    let mut now = t0;
    for expected_delay in [1, 2, 4] {
        now += secs(1);
        let actions = step(&mut farm, exited(1, 1), now);
        assert!(actions.is_empty(), "must wait, got {actions:?}");
        assert_eq!(farm.next_deadline(), Some(now + secs(expected_delay)));
        assert_eq!(status(&farm, 1, now), StatusName::Backoff);
        assert!(tick(&mut farm, now + secs(expected_delay) - Duration::from_millis(1)).is_empty());
        now += secs(expected_delay);
        assert_eq!(tick(&mut farm, now), vec![Action::StartWorker(key(1))]);
    }
    // Ran for 5 s (= shortRunTimeSeconds): immediate restart, backoff back to 1 s.
    now += secs(5);
    assert_eq!(step(&mut farm, exited(1, 0), now), vec![Action::StartWorker(key(1))]);
    assert_eq!(slot0(&farm, 1).backoff.current(), secs(1));
    assert_eq!(farm.job(&id(1)).unwrap().restarts, 4);
}

#[test]
fn sigterm_escalates_to_sigkill_after_shutdown_timeout() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    assert_eq!(step(&mut farm, Event::Configuration(vec![]), t0), vec![term(1)]);
    assert_eq!(farm.next_deadline(), Some(t0 + secs(10)));
    assert!(tick(&mut farm, t0 + secs(9)).is_empty());
    assert_eq!(tick(&mut farm, t0 + secs(10)), vec![kill(1)]);
    // SIGKILL is sent once.
    assert!(tick(&mut farm, t0 + secs(11)).is_empty());
    assert_eq!(farm.next_deadline(), None);
}

#[test]
fn an_exit_collected_with_a_due_deadline_is_processed_first() {
    // The supervisor feeds every reaped exit before the tick: a process that
    // exited right at its kill deadline is never signalled.
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1), job(2, 1)]);
    step(&mut farm, Event::Configuration(vec![]), t0);
    let mut actions = without_logs(farm.handle(exited(1, 0), t0 + secs(10)));
    actions.extend(without_logs(farm.handle(exited(2, 0), t0 + secs(10))));
    actions.extend(tick(&mut farm, t0 + secs(10)));
    assert!(actions.is_empty(), "{actions:?}");
}

#[test]
fn huge_timeouts_never_overflow_the_clock() {
    let t0 = Instant::now();
    let mut slow = job(1, 1);
    slow.shutdown_timeout_seconds = u64::MAX;
    slow.short_run_time_seconds = u64::MAX;
    let mut farm = running_farm(t0, &[slow]);
    assert_eq!(step(&mut farm, Event::Configuration(vec![]), t0), vec![term(1)]);
    assert!(farm.next_deadline().unwrap() > t0 + secs(1_000_000));
    let mut farm = running_farm(t0, &[job(2, 1)]);
    for _ in 0..200 {
        step(&mut farm, exited(2, 1), t0);
        assert!(command(&mut farm, 2, JobCommand::Restart, t0).0.is_ok());
    }
}

#[test]
fn shutdown_stops_config_process_first_then_all_workers_and_exits_when_all_reaped() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1), job(2, 1)]);
    let actions = step(&mut farm, Event::Shutdown, t0);
    assert_eq!(actions, vec![Action::StopConfigProcess { pid: 1 }, term(1), term(2)]);
    assert!(step(&mut farm, exited(1, 0), t0).is_empty());
    assert!(step(&mut farm, config_exited(1, 0), t0).is_empty());
    // No restarts during shutdown, even after a short run.
    assert_eq!(step(&mut farm, exited(2, 1), t0), vec![Action::Exit(HostExit::Clean)]);
}

#[test]
fn shutdown_escalates_per_job_and_on_a_second_request() {
    let t0 = Instant::now();
    let mut short = job(1, 1);
    short.shutdown_timeout_seconds = 2;
    let mut farm = running_farm(t0, &[short, job(2, 1)]);
    step(&mut farm, Event::Shutdown, t0);
    assert_eq!(
        tick(&mut farm, t0 + secs(2)),
        vec![Action::KillWorker { key: key(1), pid: 101, reason: KillReason::StopTimeout(secs(2)) }]
    );
    let second = step(&mut farm, Event::Shutdown, t0 + secs(3));
    assert_eq!(
        second,
        vec![
            Action::KillConfigProcess { pid: 1 },
            Action::KillWorker { key: key(1), pid: 101, reason: KillReason::SecondShutdown },
            Action::KillWorker { key: key(2), pid: 102, reason: KillReason::SecondShutdown },
        ]
    );
}

#[test]
fn config_process_failures_back_off_and_keep_jobs() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    assert!(step(&mut farm, config_exited(1, 3), t0 + secs(1)).is_empty());
    assert_eq!(status(&farm, 1, t0), StatusName::Running, "last good configuration keeps running");
    assert_eq!(farm.next_deadline(), Some(t0 + secs(3)));
    assert_eq!(tick(&mut farm, t0 + secs(3)), vec![Action::StartConfigProcess]);
    farm.handle(Event::ConfigProcessStarted(2), t0 + secs(3));
    step(&mut farm, config_exited(2, 3), t0 + secs(4));
    assert_eq!(farm.next_deadline(), Some(t0 + secs(8)));
}

#[test]
fn a_source_that_never_loads_is_fatal_after_five_quick_tries() {
    let t0 = Instant::now();
    let mut farm = Farm::new();
    farm.start();
    let mut now = t0;
    for attempt in 1..=FIRST_CONFIGURATION_ATTEMPTS {
        farm.handle(Event::ConfigProcessStarted(attempt as Pid), now);
        let actions = step(&mut farm, config_exited(attempt as Pid, 3), now);
        if attempt < FIRST_CONFIGURATION_ATTEMPTS {
            assert!(actions.is_empty(), "{actions:?}");
            now += FIRST_CONFIGURATION_RETRY;
            assert_eq!(tick(&mut farm, now), vec![Action::StartConfigProcess]);
        } else {
            assert_eq!(actions, vec![Action::Exit(HostExit::ConfigNeverLoaded)]);
        }
    }
}

#[test]
fn once_a_configuration_loaded_the_source_may_fail_forever() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[]);
    let mut now = t0;
    for attempt in 2..20 {
        let actions = step(&mut farm, config_exited(attempt - 1, 3), now);
        assert!(!actions.iter().any(|a| matches!(a, Action::Exit(_))));
        now = farm.next_deadline().unwrap();
        assert_eq!(tick(&mut farm, now), vec![Action::StartConfigProcess]);
        farm.handle(Event::ConfigProcessStarted(attempt), now);
    }
}

#[test]
fn reload_signals_the_config_process_or_starts_it_early() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[]);
    assert_eq!(step(&mut farm, Event::Reload, t0), vec![Action::ReloadConfigProcess { pid: 1 }]);
    step(&mut farm, config_exited(1, 3), t0);
    assert_eq!(step(&mut farm, Event::Reload, t0 + secs(1)), vec![Action::StartConfigProcess]);
}

fn command(farm: &mut Farm, n: i64, command: JobCommand, now: Instant) -> (Result<(), Refusal>, Vec<Action>) {
    let (outcome, mut actions) = farm.job_command(&id(n), command, now);
    actions.extend(farm.handle(Event::Tick, now));
    let actions = without_logs(actions);
    for action in &actions {
        if let Action::StartWorker(job_id) = action {
            farm.handle(Event::WorkerStarted { key: job_id.clone(), pid: pid_of(job_id) }, now);
        }
    }
    (outcome, actions)
}

#[test]
fn restart_command_resets_backoff_and_starts_a_waiting_job_at_once() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    step(&mut farm, exited(1, 1), t0);
    tick(&mut farm, t0 + secs(1));
    step(&mut farm, exited(1, 1), t0 + secs(1));
    assert_eq!(slot0(&farm, 1).backoff.current(), secs(4));
    assert_eq!(command(&mut farm, 1, JobCommand::Restart, t0 + secs(2)), (Ok(()), vec![Action::StartWorker(key(1))]));
    assert_eq!(slot0(&farm, 1).backoff.current(), secs(1));
    // A running job is stopped and started again.
    assert_eq!(command(&mut farm, 1, JobCommand::Restart, t0 + secs(3)), (Ok(()), vec![term(1)]));
    assert_eq!(step(&mut farm, exited(1, 0), t0 + secs(3)), vec![Action::StartWorker(key(1))]);
}

#[test]
fn held_jobs_survive_config_polls_until_started() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    assert_eq!(command(&mut farm, 1, JobCommand::Hold, t0), (Ok(()), vec![term(1)]));
    assert!(farm.job(&id(1)).unwrap().held());
    assert!(step(&mut farm, exited(1, 0), t0).is_empty());
    assert_eq!(status(&farm, 1, t0), StatusName::Stopped);
    assert!(step(&mut farm, Event::Configuration(vec![job(1, 5)]), t0 + secs(1)).is_empty());
    assert_eq!(command(&mut farm, 1, JobCommand::Start, t0 + secs(2)), (Ok(()), vec![Action::StartWorker(key(1))]));
}

#[test]
fn start_while_a_hold_is_still_stopping_restarts_once_gone() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    assert!(command(&mut farm, 1, JobCommand::Hold, t0).0.is_ok());
    assert_eq!(command(&mut farm, 1, JobCommand::Start, t0), (Ok(()), vec![]));
    assert_eq!(step(&mut farm, exited(1, 0), t0), vec![Action::StartWorker(key(1))]);
}

#[test]
fn requests_for_unknown_or_removed_jobs_are_refused_like_php_lrpm() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    assert_eq!(command(&mut farm, 9, JobCommand::Restart, t0), (Err(Refusal::NoSuchJob), vec![]));
    step(&mut farm, Event::Configuration(vec![]), t0);
    assert_eq!(command(&mut farm, 1, JobCommand::Restart, t0), (Err(Refusal::Removed), vec![]));
    assert_eq!(farm.signal_targets(&id(1)), Ok(vec![(0, 101)]), "a stopping process can still be signalled");
    step(&mut farm, Event::Shutdown, t0);
    assert_eq!(command(&mut farm, 1, JobCommand::Start, t0), (Err(Refusal::ShuttingDown), vec![]));
}

#[test]
fn signal_targets_only_live_processes() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    assert_eq!(farm.signal_targets(&id(1)), Ok(vec![(0, 101)]));
    step(&mut farm, exited(1, 1), t0);
    assert_eq!(farm.signal_targets(&id(1)), Err(Refusal::NotRunning));
    assert_eq!(farm.signal_targets(&id(2)), Err(Refusal::NoSuchJob));
    assert!(!farm.knows_pid(101));
}

#[test]
fn shutdown_with_nothing_running_exits_once_config_process_is_gone() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[]);
    step(&mut farm, Event::Shutdown, t0);
    assert_eq!(
        step(
            &mut farm,
            Event::ChildExited {
                pid: 1,
                exit: ExitKind::Signal(15),
                recycle: None,
                cycles: 0,
                tasks: Default::default(),
                php: PhpEnd::Unknown
            },
            t0
        ),
        vec![Action::Exit(HostExit::Clean)]
    );
    assert!(farm.handle(Event::Tick, t0).is_empty());
}

#[test]
fn configurations_are_ignored_during_shutdown() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    step(&mut farm, Event::Shutdown, t0);
    assert!(step(&mut farm, Event::Configuration(vec![job(2, 1)]), t0).is_empty());
}

#[test]
fn big_farms_start_in_bounded_batches() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[]);
    let jobs: Vec<Job> = (0..1000).map(|n| job(n, 1)).collect();
    let mut actions = farm.handle(Event::Configuration(jobs), t0);
    let mut turns = 0;
    loop {
        let started = without_logs(farm.handle(Event::Tick, t0));
        for action in &started {
            if let Action::StartWorker(job_id) = action {
                farm.handle(Event::WorkerStarted { key: job_id.clone(), pid: pid_of(job_id) }, t0);
            }
        }
        actions.extend(started.clone());
        if started.is_empty() {
            break;
        }
        assert!(started.len() <= START_BATCH);
        // More is due at once: the loop polls with a zero timeout.
        assert!(farm.next_deadline().map_or(true, |at| at <= t0));
        turns += 1;
    }
    assert_eq!(turns, 1000usize.div_ceil(START_BATCH));
    assert!(farm.jobs().values().all(|s| s.status(t0) == StatusName::Running));
}

#[test]
fn stop_deadlines_escalate_in_bounded_batches() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[]);
    let jobs: Vec<Job> = (0..1000).map(|n| job(n, 1)).collect();
    farm.handle(Event::Configuration(jobs), t0);
    while farm.jobs().values().any(|s| s.status(t0) != StatusName::Running) {
        for action in farm.handle(Event::Tick, t0) {
            if let Action::StartWorker(key) = action {
                farm.handle(Event::WorkerStarted { pid: pid_of(&key), key }, t0);
            }
        }
    }
    farm.handle(Event::Shutdown, t0);
    let late = t0 + secs(11);
    let mut killed = BTreeSet::new();
    let mut turns = 0;
    loop {
        let kills: Vec<Pid> = without_logs(farm.handle(Event::Tick, late))
            .into_iter()
            .filter_map(|a| match a {
                Action::KillWorker { pid, .. } => Some(pid),
                _ => None,
            })
            .collect();
        if kills.is_empty() {
            break;
        }
        assert!(kills.len() <= KILL_BATCH);
        killed.extend(kills);
        // More is due at once: the loop polls with a zero timeout.
        assert!(farm.next_deadline().map_or(true, |at| at <= late));
        turns += 1;
    }
    assert_eq!(killed.len(), 1000, "every stuck process is killed once");
    assert_eq!(turns, 1000usize.div_ceil(KILL_BATCH));
}

#[test]
fn a_failed_fork_backs_off_like_a_zero_second_run() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[]);
    farm.handle(Event::Configuration(vec![job(1, 1)]), t0);
    assert_eq!(without_logs(farm.handle(Event::Tick, t0)), vec![Action::StartWorker(key(1))]);
    farm.handle(Event::WorkerSpawnFailed(key(1)), t0);
    assert_eq!(status(&farm, 1, t0), StatusName::Backoff);
    assert_eq!(farm.next_deadline(), Some(t0 + secs(1)));
}

#[test]
fn a_deferred_start_is_due_again_at_once() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[]);
    farm.handle(Event::Configuration(vec![job(1, 1)]), t0);
    assert_eq!(without_logs(farm.handle(Event::Tick, t0)), vec![Action::StartWorker(key(1))]);
    farm.handle(Event::WorkerStartDeferred(key(1)), t0);
    assert_eq!(farm.next_deadline(), Some(t0));
    assert_eq!(tick(&mut farm, t0), vec![Action::StartWorker(key(1))]);
    assert_eq!(status(&farm, 1, t0), StatusName::Running);
}

fn with_policy(n: i64, policy: RestartPolicy, max_failures: Option<u64>, essential: bool) -> Job {
    let mut j = job(n, 1);
    j.restart_policy = policy;
    j.max_failures = max_failures;
    j.essential = essential;
    j
}

#[test]
fn restart_policies_decide_what_an_exit_leads_to() {
    let t0 = Instant::now();
    // (policy, exit code, status after the exit)
    let table = [
        (RestartPolicy::Always, 0, StatusName::Running),
        (RestartPolicy::Always, 1, StatusName::Running),
        (RestartPolicy::OnFailure, 0, StatusName::Done),
        (RestartPolicy::OnFailure, 1, StatusName::Running),
        (RestartPolicy::Never, 0, StatusName::Done),
        (RestartPolicy::Never, 1, StatusName::Failed),
    ];
    for (policy, code, expected) in table {
        let mut farm = running_farm(t0, &[with_policy(1, policy, None, false)]);
        // A long run: a restart is immediate (no backoff).
        step(&mut farm, exited(1, code), t0 + secs(60));
        assert_eq!(status(&farm, 1, t0 + secs(60)), expected, "{policy:?} exit {code}");
        if matches!(expected, StatusName::Done | StatusName::Failed) {
            assert_eq!(farm.next_deadline(), None, "nothing is scheduled for an ended job");
            // restart ID starts it again.
            assert_eq!(command(&mut farm, 1, JobCommand::Restart, t0 + secs(61)).1, vec![Action::StartWorker(key(1))]);
        }
    }
}

#[test]
fn max_failures_within_the_window_fail_the_job_until_a_new_mtime() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[with_policy(1, RestartPolicy::Always, Some(3), false)]);
    let mut now = t0;
    for _ in 0..2 {
        step(&mut farm, exited(1, 1), now);
        now = farm.next_deadline().unwrap();
        tick(&mut farm, now);
    }
    step(&mut farm, exited(1, 1), now);
    assert_eq!(status(&farm, 1, now), StatusName::Failed);
    // Failures older than the window do not count: a new mtime clears them.
    let mut changed = with_policy(1, RestartPolicy::Always, Some(3), false);
    changed.mtime = 2;
    assert_eq!(step(&mut farm, Event::Configuration(vec![changed]), now), vec![Action::StartWorker(key(1))]);
    // Failures spread wider than the window never add up.
    let mut farm = running_farm(t0, &[with_policy(2, RestartPolicy::Always, Some(2), false)]);
    let mut now = t0;
    for _ in 0..5 {
        step(&mut farm, exited(2, 1), now);
        assert_ne!(status(&farm, 2, now), StatusName::Failed);
        now += secs(61);
        tick(&mut farm, now);
    }
}

#[test]
fn an_essential_job_failing_for_good_shuts_the_farm_down() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[with_policy(1, RestartPolicy::Never, None, true), job(2, 1)]);
    let actions = step(&mut farm, exited(1, 3), t0);
    assert_eq!(actions, vec![Action::StopConfigProcess { pid: 1 }, term(2)]);
    step(&mut farm, config_exited(1, 0), t0);
    assert_eq!(step(&mut farm, exited(2, 0), t0), vec![Action::Exit(HostExit::EssentialJobFailed)]);
    // Not essential: the farm goes on.
    let mut farm = running_farm(t0, &[with_policy(1, RestartPolicy::Never, None, false), job(2, 1)]);
    assert!(step(&mut farm, exited(1, 3), t0).is_empty());
    assert!(!farm.is_shutting_down());
}

#[test]
fn a_planned_recycle_restarts_at_once_even_after_a_short_run() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    let actions = step(&mut farm, exited(1, crate::exit_code::RECYCLE), t0);
    assert_eq!(actions, vec![Action::StartWorker(key(1))]);
    let state = farm.job(&id(1)).unwrap();
    assert_eq!((state.recycles, slot0(&farm, 1).backoff.current()), (1, secs(1)));
    assert_eq!(state.recycles_by_reason.get(RecycleReason::Unknown), 1, "no reason in the page");
}

#[test]
fn recycles_are_counted_by_the_reason_the_worker_gave_and_logged_with_it() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    let recycled = |reason| Event::ChildExited {
        pid: 101,
        exit: ExitKind::Code(crate::exit_code::RECYCLE),
        recycle: Some(reason),
        cycles: 10,
        tasks: Default::default(),
        php: PhpEnd::Ended,
    };
    let actions = farm.handle(recycled(RecycleReason::MaxCycles), t0);
    assert!(
        actions.iter().any(|a| matches!(a, Action::Log(e)
            if e.message == "job 1 (pid 101) recycled (maxCycles); starting a fresh process"
                && e.pid == Some(101) && e.slot == Some(0))),
        "{actions:?}"
    );
    step(&mut farm, Event::Tick, t0);
    step(&mut farm, recycled(RecycleReason::Memory), t0);
    step(&mut farm, recycled(RecycleReason::Memory), t0);
    let state = farm.job(&id(1)).unwrap();
    let counts = state.recycles_by_reason;
    assert_eq!((counts.get(RecycleReason::MaxCycles), counts.get(RecycleReason::Memory)), (1, 2));
    assert_eq!((state.recycles, counts.total(), state.restarts), (3, 3, 3));
    assert_eq!(state.cycles_of_ended, 30, "the cycles of ended processes add up");
    assert_eq!((state.failures_total, state.failures.len()), (0, 0), "a recycle is no failure");
}

#[test]
fn failures_are_counted_for_good_beyond_the_window() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    // Each exit after a long run restarts at once; the window is 60 s.
    for i in 0..3u64 {
        let at = t0 + secs(100 * (i + 1));
        step(&mut farm, exited(1, 1), at);
    }
    let state = farm.job(&id(1)).unwrap();
    assert_eq!((state.failures_total, state.failures.len()), (3, 1));
    // A clean exit restarts without being a failure.
    step(&mut farm, exited(1, 0), t0 + secs(1000));
    assert_eq!(farm.job(&id(1)).unwrap().failures_total, 3);
}

fn replicated(n: i64, mtime: i64, replicas: u32) -> Job {
    let mut j = job(n, mtime);
    j.replicas = replicas;
    // Only replicas and mtime differ between versions built here.
    let mut config = Map::new();
    config.insert("replicas".into(), replicas.into());
    config.insert("mtime".into(), mtime.into());
    j.config = std::sync::Arc::new(config);
    j
}

fn slot_exited(n: i64, slot: u32, code: i32) -> Event {
    Event::ChildExited {
        pid: slot_pid(n, slot),
        exit: ExitKind::Code(code),
        recycle: None,
        cycles: 0,
        tasks: Default::default(),
        php: PhpEnd::Unknown,
    }
}

fn slot_term(n: i64, slot: u32) -> Action {
    Action::StopWorker { key: slot_key(n, slot), pid: slot_pid(n, slot) }
}

fn slot_status(farm: &Farm, n: i64, slot: u32, now: Instant) -> Option<StatusName> {
    farm.slot(&slot_key(n, slot)).map(|s| s.status(now))
}

/// A clean exit after a stop signal from outside (the supervisor's page
/// read says a SIGTERM reached the worker), by run length and exit.
#[test]
fn a_clean_stop_by_a_signal_from_outside_restarts_at_once_and_is_no_failure() {
    let t0 = Instant::now();
    // (signalled, exit code, expected delay of the restart, failures counted)
    let table = [(true, 0, 0, 0), (false, 0, 1, 0), (true, 1, 1, 1), (false, 1, 1, 1)];
    for (signalled, code, delay, failures) in table {
        let mut farm = running_farm(t0, &[job(1, 1)]);
        let mut now = t0;
        // Three short runs stopped from outside: never backed off.
        for _ in 0..3 {
            now += secs(1);
            if signalled {
                step(&mut farm, Event::StopSignalled { pid: 101 }, now);
            }
            let actions = step(&mut farm, exited(1, code), now);
            if delay == 0 {
                assert_eq!(actions, vec![Action::StartWorker(key(1))], "signalled {signalled}, code {code}");
            } else {
                assert!(actions.is_empty(), "signalled {signalled}, code {code}: backed off, got {actions:?}");
                assert_eq!(status(&farm, 1, now), StatusName::Backoff);
                now += slot0(&farm, 1).backoff.current();
                tick(&mut farm, now);
            }
        }
        let state = farm.job(&id(1)).unwrap();
        assert_eq!(state.failures_total, 3 * failures, "signalled {signalled}, code {code}");
        if delay == 0 {
            assert_eq!(slot0(&farm, 1).backoff.current(), secs(1), "the backoff stays at rest");
        }
    }
}

#[test]
fn a_stop_signal_is_forgotten_with_its_process() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    step(&mut farm, Event::StopSignalled { pid: 101 }, t0 + secs(1));
    assert_eq!(step(&mut farm, exited(1, 0), t0 + secs(1)), vec![Action::StartWorker(key(1))]);
    // The next process (same pid in these tables) was not signalled: a short run backs off.
    assert!(step(&mut farm, exited(1, 0), t0 + secs(2)).is_empty());
    assert_eq!(status(&farm, 1, t0 + secs(2)), StatusName::Backoff);
}

#[test]
fn a_start_in_flight_when_the_shutdown_began_is_stopped_without_an_error() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    step(&mut farm, exited(1, 1), t0 + secs(1));
    // The backoff's restart is asked for, and in flight (the zygote forks
    // it) as the shutdown begins.
    let actions = farm.handle(Event::Tick, t0 + secs(2));
    assert_eq!(without_logs(actions), vec![Action::StartWorker(key(1))]);
    let actions = farm.handle(Event::Shutdown, t0 + secs(2));
    assert!(!actions.iter().any(|a| matches!(a, Action::StartWorker(_))));
    let actions = farm.handle(Event::WorkerStarted { key: key(1), pid: 555 }, t0 + secs(2));
    assert!(
        actions.iter().any(|a| matches!(a, Action::KillWorker { pid: 555, .. } | Action::StopWorker { pid: 555, .. })),
        "{actions:?}"
    );
    let errors: Vec<_> =
        actions.iter().filter(|a| matches!(a, Action::Log(event) if event.level == LogLevel::Error)).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn an_upgrade_hands_over_what_runs_on_and_kills_what_stops_for_good() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1), job(2, 1), job(3, 1), job(4, 1)]);
    // 2 is stopping to start again with a new configuration, 3 was
    // removed, 4 is held.
    step(&mut farm, Event::Configuration(vec![job(1, 1), job(2, 2), job(4, 1)]), t0 + secs(1));
    let (outcome, _) = farm.job_command(&id(4), JobCommand::Hold, t0 + secs(1));
    assert_eq!(outcome, Ok(()));
    let handoff = farm.handoff(t0 + secs(5));
    let running = |n: i64| {
        handoff.jobs.iter().find(|j| j.id == id(n)).map(|j| j.running.iter().map(|r| r.pid).collect::<Vec<_>>())
    };
    assert_eq!(running(1), Some(vec![101]));
    assert_eq!(running(2), Some(vec![102]), "stopping only to restart: the new image replaces it");
    assert_eq!(running(3), None, "a removed job is not handed over");
    assert_eq!(running(4), Some(vec![]));
    assert!(handoff.jobs.iter().find(|j| j.id == id(4)).is_some_and(|j| j.held));
    let mut killed: Vec<Pid> = handoff.killed.iter().map(|k| k.pid).collect();
    killed.sort_unstable();
    assert_eq!(killed, vec![103, 104]);
    assert!(handoff.killed.iter().all(|k| !k.unit));
    let one = handoff.jobs.iter().find(|j| j.id == id(1)).expect("job 1");
    assert_eq!(one.running[0].ran, secs(5));
    // What the new image adopts runs on, as it was.
    let mut next = Farm::new();
    for job_handoff in &handoff.jobs {
        let mut j = farm.job(&job_handoff.id).expect("handed over").job.clone();
        j.mtime = 1;
        let running: Vec<_> =
            job_handoff.running.iter().map(|r| (r.slot, r.pid, r.ran, r.restarts, r.recycles)).collect();
        next.adopt(j, job_handoff.held, &running, &job_handoff.units, t0 + secs(6));
    }
    assert!(next.knows_pid(101) && next.knows_pid(102) && !next.knows_pid(104));
    assert_eq!(status(&next, 4, t0 + secs(6)), StatusName::Stopped);
    assert!(next.job(&id(4)).is_some_and(|s| s.held));
}
