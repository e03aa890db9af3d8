//! Table tests of cycle inspections: rolling recycles and the watchdog.

use super::*;

/// Answers an inspection as the supervisor would, from a page showing `cycles`.
fn inspect(farm: &mut Farm, n: i64, slot: u32, cycles: u64, running: Option<Duration>, now: Instant) -> Vec<Action> {
    let event = Event::CycleProgress {
        key: slot_key(n, slot),
        pid: slot_pid(n, slot),
        progress: Some(CycleProgress { cycles, current_cycle: running, silent_for: running }),
    };
    step(farm, event, now)
}

/// An inspection of a cycle running for `running`, silent for `silent`.
fn inspect_silent(farm: &mut Farm, n: i64, running: Duration, silent: Duration, now: Instant) -> Vec<Action> {
    let progress = Some(CycleProgress { cycles: 0, current_cycle: Some(running), silent_for: Some(silent) });
    step(farm, Event::CycleProgress { key: key(n), pid: 100 + n as i32, progress }, now)
}

/// The watchdog asks for the stack before its SIGTERM.
fn backtrace_then_term(n: i64, why: &str) -> Vec<Action> {
    let pid = 100 + n as i32;
    vec![
        Action::LogBacktrace { key: key(n), pid, why: format!("job {n} (pid {pid}) stopped by the watchdog ({why})") },
        term(n),
    ]
}

#[test]
fn a_rolling_recycle_replaces_one_slot_at_a_time_once_it_entered_its_first_cycle() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut farm = running_farm(t0, &[replicated(1, 1, 3)]);
    assert_eq!(command(&mut farm, 1, JobCommand::Recycle, t0), (Ok(()), vec![slot_term(1, 0)]));
    // Slot 0's replacement starts at once (no backoff, however short the run).
    assert_eq!(step(&mut farm, slot_exited(1, 0, 0), t0), vec![Action::StartWorker(slot_key(1, 0))]);
    let inspect_slot0 = Action::InspectCycles { key: slot_key(1, 0), pid: slot_pid(1, 0) };
    assert_eq!(farm.next_deadline(), Some(t0 + ROLLING_INSPECT_INTERVAL));
    assert_eq!(tick(&mut farm, t0 + ms(20)), vec![inspect_slot0.clone()]);
    // Still in start() (no cycle began): look again; slot 1 is untouched.
    assert!(inspect(&mut farm, 1, 0, 0, None, t0 + ms(20)).is_empty());
    assert_eq!(tick(&mut farm, t0 + ms(40)), vec![inspect_slot0]);
    // In its first cycle (an idle consumer blocked there may never complete
    // it): up, the next slot is stopped.
    assert_eq!(inspect(&mut farm, 1, 0, 0, Some(ms(5)), t0 + ms(40)), vec![slot_term(1, 1)]);
    step(&mut farm, slot_exited(1, 1, 0), t0 + ms(50));
    assert_eq!(inspect(&mut farm, 1, 1, 1, None, t0 + ms(60)), vec![slot_term(1, 2)]);
    step(&mut farm, slot_exited(1, 2, 0), t0 + ms(70));
    assert!(inspect(&mut farm, 1, 2, 1, None, t0 + ms(80)).is_empty());
    let state = farm.job(&id(1)).unwrap();
    assert_eq!((state.recycles, state.rolling.is_none()), (3, true));
    assert_eq!(state.recycles_by_reason.get(RecycleReason::Rolling), 3);
    assert!(state.slots.values().all(|s| s.recycles == 1 && s.backoff.current() == secs(1)));
}

#[test]
fn a_rolling_recycle_stops_when_a_replacement_dies_before_its_first_cycle() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[replicated(1, 1, 2)]);
    assert!(command(&mut farm, 1, JobCommand::Recycle, t0).0.is_ok());
    step(&mut farm, slot_exited(1, 0, 0), t0);
    // The new process crashes: slot 1 keeps its old process.
    let actions = step(&mut farm, slot_exited(1, 0, 255), t0);
    assert!(actions.is_empty(), "{actions:?}");
    assert!(farm.job(&id(1)).unwrap().rolling.is_none());
    assert_eq!(slot_status(&farm, 1, 1, t0), Some(StatusName::Running));
}

#[test]
fn recycle_of_a_job_with_nothing_running_is_refused() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[job(1, 1)]);
    step(&mut farm, exited(1, 1), t0);
    assert_eq!(command(&mut farm, 1, JobCommand::Recycle, t0), (Err(Refusal::NotRunning), vec![]));
}

#[test]
fn the_watchdog_stops_a_stuck_cycle_and_counts_a_failure() {
    let t0 = Instant::now();
    let mut j = job(1, 1);
    j.cycle_timeout_seconds = Some(10);
    j.max_failures = Some(1);
    let mut farm = running_farm(t0, &[j]);
    let inspect1 = Action::InspectCycles { key: key(1), pid: 101 };
    assert_eq!(farm.next_deadline(), Some(t0 + secs(10)));
    assert_eq!(tick(&mut farm, t0 + secs(10)), vec![inspect1.clone()]);
    // A cycle running for 4 s: look again when it would reach 10 s.
    assert!(inspect(&mut farm, 1, 0, 7, Some(secs(4)), t0 + secs(10)).is_empty());
    assert_eq!(farm.next_deadline(), Some(t0 + secs(16)));
    assert_eq!(tick(&mut farm, t0 + secs(16)), vec![inspect1]);
    assert_eq!(
        inspect(&mut farm, 1, 0, 7, Some(secs(10)), t0 + secs(16)),
        backtrace_then_term(1, "cycle 8 has been running for 10.0s, longer than cycleTimeoutSeconds 10")
    );
    // It exits 0 on SIGTERM, and that still is a failure (maxFailures 1: failed).
    step(&mut farm, exited(1, 0), t0 + secs(17));
    assert_eq!(status(&farm, 1, t0 + secs(17)), StatusName::Failed);
}

#[test]
fn the_watchdog_restarts_a_stuck_worker_with_backoff() {
    let t0 = Instant::now();
    let mut j = job(1, 1);
    j.cycle_timeout_seconds = Some(1);
    let mut farm = running_farm(t0, &[j]);
    tick(&mut farm, t0 + secs(1));
    assert_eq!(
        inspect(&mut farm, 1, 0, 0, Some(secs(2)), t0 + secs(1)),
        backtrace_then_term(1, "cycle 1 has been running for 2.0s, longer than cycleTimeoutSeconds 1")
    );
    assert!(step(&mut farm, exited(1, 0), t0 + secs(2)).is_empty(), "backs off like a crash");
    assert_eq!(status(&farm, 1, t0 + secs(2)), StatusName::Backoff);
    assert_eq!(farm.job(&id(1)).unwrap().failures.len(), 1);
}

#[test]
fn progress_timeout_stops_a_cycle_only_once_it_is_silent_that_long() {
    let t0 = Instant::now();
    let mut j = job(1, 1);
    j.progress_timeout_seconds = Some(5);
    j.cycle_timeout_seconds = Some(100);
    let mut farm = running_farm(t0, &[j]);
    // The nearer of the two clocks sets the first look.
    assert_eq!(farm.next_deadline(), Some(t0 + secs(5)));
    tick(&mut farm, t0 + secs(5));
    // Running 20 s but it reported progress 2 s ago: look again in 3 s.
    assert!(inspect_silent(&mut farm, 1, secs(20), secs(2), t0 + secs(5)).is_empty());
    assert_eq!(farm.next_deadline(), Some(t0 + secs(8)));
    tick(&mut farm, t0 + secs(8));
    assert_eq!(
        inspect_silent(&mut farm, 1, secs(23), secs(5), t0 + secs(8)),
        backtrace_then_term(
            1,
            "cycle 1 has reported no progress (Lrpm\\progress()) for 5.0s, longer than progressTimeoutSeconds 5"
        )
    );
    // A stop by silence is a failure, as the cycle watchdog's is.
    assert!(step(&mut farm, exited(1, 0), t0 + secs(9)).is_empty());
    assert_eq!(farm.job(&id(1)).unwrap().failures.len(), 1);
}

#[test]
fn without_a_page_a_rolling_recycle_moves_on_and_the_watchdog_waits() {
    let t0 = Instant::now();
    let mut j = replicated(1, 1, 2);
    j.cycle_timeout_seconds = Some(5);
    let mut farm = running_farm(t0, &[j]);
    assert!(command(&mut farm, 1, JobCommand::Recycle, t0).0.is_ok());
    step(&mut farm, slot_exited(1, 0, 0), t0);
    let event = Event::CycleProgress { key: slot_key(1, 0), pid: slot_pid(1, 0), progress: None };
    assert_eq!(step(&mut farm, event, t0 + secs(1)), vec![slot_term(1, 1)]);
}

#[test]
fn a_rolling_recycle_goes_on_when_a_replacement_ends_as_planned_before_being_inspected() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[replicated(1, 1, 2)]);
    assert!(command(&mut farm, 1, JobCommand::Recycle, t0).0.is_ok());
    step(&mut farm, slot_exited(1, 0, 0), t0);
    // maxCycles 1: the replacement recycles itself right after its first cycle.
    let actions = step(&mut farm, slot_exited(1, 0, crate::exit_code::RECYCLE), t0);
    assert_eq!(actions, vec![slot_term(1, 1), Action::StartWorker(slot_key(1, 0))]);
}

#[test]
fn restart_does_not_bring_back_a_slot_being_scaled_away() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[replicated(1, 1, 2)]);
    step(&mut farm, Event::Configuration(vec![replicated(1, 2, 1)]), t0);
    assert_eq!(command(&mut farm, 1, JobCommand::Restart, t0), (Ok(()), vec![slot_term(1, 0)]));
    assert!(step(&mut farm, slot_exited(1, 1, 0), t0).is_empty());
    assert_eq!(slot_status(&farm, 1, 1, t0), None);
}

#[test]
fn a_rolling_recycle_goes_on_when_its_slot_is_scaled_away() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[replicated(1, 1, 3)]);
    // Replace slot 0, then slot 1 is being stopped when replicas drop to 1.
    assert!(command(&mut farm, 1, JobCommand::Recycle, t0).0.is_ok());
    step(&mut farm, slot_exited(1, 0, 0), t0);
    assert_eq!(inspect(&mut farm, 1, 0, 1, None, t0), vec![slot_term(1, 1)]);
    step(&mut farm, Event::Configuration(vec![replicated(1, 2, 1)]), t0);
    step(&mut farm, slot_exited(1, 1, 0), t0);
    step(&mut farm, slot_exited(1, 2, 0), t0);
    assert!(farm.job(&id(1)).unwrap().rolling.is_none());
    assert_eq!(farm.job(&id(1)).unwrap().slots.len(), 1);
}

#[test]
fn a_rolling_replacement_still_in_start_after_the_shutdown_timeout_lets_the_recycle_go_on() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[replicated(1, 1, 2)]);
    assert!(command(&mut farm, 1, JobCommand::Recycle, t0).0.is_ok());
    step(&mut farm, slot_exited(1, 0, 0), t0);
    assert!(inspect(&mut farm, 1, 0, 0, None, t0 + secs(9)).is_empty());
    // shutdownTimeoutSeconds (10) bounds how long start() may take.
    assert!(inspect(&mut farm, 1, 0, 0, None, t0 + secs(10)).contains(&slot_term(1, 1)));
}
