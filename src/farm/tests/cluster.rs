//! Table tests of the cluster's rules in the core: a unit runs only while
//! granted, is stopped when revoked (SIGKILL no later than the fence), and
//! its claim is released only once its process is gone.

use super::*;

/// A clustered farm with a running config process and `jobs` configured;
/// nothing granted yet.
fn clustered_farm(t0: Instant, jobs: &[Job]) -> Farm {
    let mut farm = Farm::new();
    farm.enable_cluster();
    farm.start();
    farm.handle(Event::ConfigProcessStarted(1), t0);
    let actions = step(&mut farm, Event::Configuration(jobs.to_vec()), t0);
    let starts: Vec<&Action> = actions.iter().filter(|a| matches!(a, Action::StartWorker(..))).collect();
    let every_host: usize =
        jobs.iter().filter(|j| j.placement == Placement::EveryHost).map(|j| j.replicas as usize).sum();
    assert_eq!(starts.len(), every_host, "only every-host jobs start before a grant: {actions:?}");
    farm
}

fn grant(farm: &mut Farm, unit: WorkerKey, token: i64, now: Instant) -> Vec<Action> {
    step(farm, Event::UnitGranted { key: unit, token }, now)
}

fn release(unit: WorkerKey) -> Action {
    Action::ReleaseUnit(unit)
}

#[test]
fn units_wait_elsewhere_until_granted_and_every_host_jobs_run_at_once() {
    let t0 = Instant::now();
    let mut local = job(2, 1);
    local.placement = Placement::EveryHost;
    let mut farm = clustered_farm(t0, &[replicated(1, 1, 2), local]);
    assert_eq!(slot_status(&farm, 1, 0, t0), Some(StatusName::Elsewhere));
    assert_eq!(slot_status(&farm, 1, 1, t0), Some(StatusName::Elsewhere));
    assert_eq!(status(&farm, 2, t0), StatusName::Running);
    assert_eq!(
        farm.take_changed_units(),
        Some(vec![slot_key(1, 0), slot_key(1, 1)]),
        "the agent is told the units (every-host jobs are none)"
    );
    assert_eq!(farm.take_changed_units(), None, "once");

    assert_eq!(grant(&mut farm, slot_key(1, 1), 7, t0), vec![Action::StartWorker(slot_key(1, 1))]);
    assert_eq!(farm.unit_token(&slot_key(1, 1)), Some(7));
    assert_eq!(slot_status(&farm, 1, 0, t0), Some(StatusName::Elsewhere));
    // The job shows what runs here.
    assert_eq!(status(&farm, 1, t0), StatusName::Running);
    // Granted again with a new token while it runs: nothing restarts.
    assert!(grant(&mut farm, slot_key(1, 1), 9, t0 + secs(1)).is_empty());
    assert_eq!(farm.unit_token(&slot_key(1, 1)), Some(9));
}

#[test]
fn a_revoked_unit_is_stopped_and_released_only_once_its_process_is_gone() {
    let t0 = Instant::now();
    let mut farm = clustered_farm(t0, &[job(1, 1)]);
    grant(&mut farm, key(1), 3, t0);
    let fence = t0 + secs(4);
    let actions = step(&mut farm, Event::UnitRevoked { key: key(1), kill_by: Some(fence) }, t0 + secs(1));
    assert_eq!(actions, vec![term(1)], "no release while the process lives");
    assert_eq!(farm.unit_token(&key(1)), None);
    // The fence comes before the job's 10 s shutdown timeout.
    assert!(tick(&mut farm, fence - Duration::from_millis(1)).is_empty());
    assert_eq!(tick(&mut farm, fence), vec![kill(1)]);
    assert_eq!(step(&mut farm, exited(1, 137), fence), vec![release(key(1))]);
    assert_eq!(status(&farm, 1, fence), StatusName::Elsewhere);
    assert!(tick(&mut farm, fence + secs(100)).is_empty(), "it does not start again here");
}

#[test]
fn a_revocation_in_every_phase_ends_elsewhere_with_one_release() {
    let t0 = Instant::now();
    // (name, how the slot gets into the phase, actions of the revocation)
    type Setup = fn(&mut Farm, Instant);
    let table: Vec<(&str, Setup, Vec<Action>)> = vec![
        (
            "in backoff",
            |farm, t| {
                step(farm, exited(1, 1), t);
            },
            vec![release(key(1))],
        ),
        (
            "held",
            |farm, t| {
                let _ = farm.job_command(&id(1), JobCommand::Hold, t);
                step(farm, exited(1, 0), t);
            },
            vec![release(key(1))],
        ),
        (
            "stopping for a restart",
            |farm, t| {
                let _ = farm.job_command(&id(1), JobCommand::Restart, t);
            },
            vec![],
        ),
    ];
    for (name, setup, expected) in table {
        let mut farm = clustered_farm(t0, &[job(1, 1)]);
        grant(&mut farm, key(1), 3, t0);
        setup(&mut farm, t0 + secs(1));
        let actions = step(&mut farm, Event::UnitRevoked { key: key(1), kill_by: None }, t0 + secs(2));
        assert_eq!(actions, expected, "{name}");
        if expected.is_empty() {
            // Its process was already stopping: released when it is gone,
            // not restarted.
            assert_eq!(step(&mut farm, exited(1, 0), t0 + secs(3)), vec![release(key(1))], "{name}");
        }
        assert_eq!(status(&farm, 1, t0 + secs(3)), StatusName::Elsewhere, "{name}");
        assert!(tick(&mut farm, t0 + secs(1000)).is_empty(), "{name}: nothing starts");
    }
}

#[test]
fn a_start_in_flight_when_revoked_is_stopped_as_soon_as_its_pid_is_known() {
    let t0 = Instant::now();
    let mut farm = clustered_farm(t0, &[job(1, 1)]);
    let actions = farm.handle(Event::UnitGranted { key: key(1), token: 1 }, t0);
    assert!(without_logs(actions).is_empty());
    let actions = farm.handle(Event::Tick, t0);
    assert_eq!(actions, vec![Action::StartWorker(key(1))]);
    assert!(farm.handle(Event::UnitRevoked { key: key(1), kill_by: None }, t0).is_empty());
    assert!(!farm.start_wanted(&key(1)), "the supervisor need not fork it");
    let actions = without_logs(farm.handle(Event::WorkerStartDeferred(key(1)), t0));
    assert_eq!(actions, vec![release(key(1))]);
    assert_eq!(status(&farm, 1, t0), StatusName::Elsewhere);
}

#[test]
fn a_lost_lease_revokes_every_unit_and_crashes_restart_only_while_granted() {
    let t0 = Instant::now();
    let mut farm = clustered_farm(t0, &[job(1, 1), job(2, 1)]);
    grant(&mut farm, key(1), 1, t0);
    grant(&mut farm, key(2), 2, t0);
    // A crash of a unit this member holds restarts here, as on one host.
    assert_eq!(step(&mut farm, exited(1, 1), t0 + secs(10)), vec![Action::StartWorker(key(1))]);
    let actions = step(&mut farm, Event::AllUnitsRevoked { kill_by: Some(t0 + secs(13)) }, t0 + secs(12));
    assert_eq!(actions, vec![term(1), term(2)]);
    assert_eq!(step(&mut farm, exited(2, 0), t0 + secs(12)), vec![release(key(2))]);
    assert_eq!(tick(&mut farm, t0 + secs(13)), vec![kill(1)]);
    assert_eq!(step(&mut farm, exited(1, 137), t0 + secs(13)), vec![release(key(1))]);
    // The lease comes back and the agent claims them again.
    assert_eq!(grant(&mut farm, key(2), 5, t0 + secs(20)), vec![Action::StartWorker(key(2))]);
}

#[test]
fn grants_of_units_this_member_should_not_run_are_given_back() {
    let t0 = Instant::now();
    let mut local = job(2, 1);
    local.placement = Placement::EveryHost;
    let mut farm = clustered_farm(t0, &[job(1, 1), local]);
    // No such job, no such slot, an every-host job.
    for unit in [key(9), slot_key(1, 4), key(2)] {
        assert_eq!(grant(&mut farm, unit.clone(), 1, t0), vec![release(unit.clone())], "{unit}");
    }
    // A held job takes its unit but stays held.
    let _ = farm.job_command(&id(1), JobCommand::Hold, t0);
    assert!(grant(&mut farm, key(1), 1, t0).is_empty());
    assert_eq!(status(&farm, 1, t0), StatusName::Stopped);
    // During the shutdown nothing new is taken.
    let mut farm = clustered_farm(t0, &[job(1, 1), job(3, 1)]);
    step(&mut farm, Event::Shutdown, t0);
    assert_eq!(grant(&mut farm, key(3), 1, t0), vec![release(key(3))]);
}

#[test]
fn removed_and_scaled_away_units_leave_the_unit_list_once_their_process_is_gone() {
    let t0 = Instant::now();
    let mut farm = clustered_farm(t0, &[replicated(1, 1, 2)]);
    farm.take_changed_units();
    grant(&mut farm, slot_key(1, 1), 1, t0);
    let actions = step(&mut farm, Event::Configuration(vec![replicated(1, 2, 1)]), t0 + secs(1));
    assert_eq!(actions, vec![slot_term(1, 1)]);
    assert_eq!(farm.take_changed_units(), None, "slot 1 is still stopping: its claim stays");
    step(&mut farm, slot_exited(1, 1, 0), t0 + secs(2));
    assert_eq!(farm.take_changed_units(), Some(vec![slot_key(1, 0)]));
    assert_eq!(farm.unit_token(&slot_key(1, 1)), None);
    // Commands on a unit running elsewhere change nothing here.
    let (outcome, actions) = farm.job_command(&id(1), JobCommand::Restart, t0 + secs(3));
    assert!(outcome.is_ok());
    assert!(without_logs(actions).is_empty());
    assert_eq!(status(&farm, 1, t0 + secs(3)), StatusName::Elsewhere);
}

#[test]
fn without_the_cluster_placement_changes_nothing() {
    let t0 = Instant::now();
    let farm = running_farm(t0, &[job(1, 1)]);
    assert_eq!(status(&farm, 1, t0), StatusName::Running);
    let mut farm = farm;
    assert_eq!(farm.take_changed_units(), None);
    assert!(step(&mut farm, Event::UnitGranted { key: key(1), token: 1 }, t0).is_empty());
}

#[test]
fn a_shutdown_gives_each_unit_back_as_its_process_ends_even_after_the_drain_revoked_it() {
    let t0 = Instant::now();
    let mut farm = clustered_farm(t0, &[replicated(1, 1, 2)]);
    grant(&mut farm, slot_key(1, 0), 4, t0);
    grant(&mut farm, slot_key(1, 1), 5, t0);
    step(&mut farm, Event::Shutdown, t0 + secs(1));
    // The drain's revocation of a unit that is already stopping changes nothing.
    let actions = step(&mut farm, Event::UnitRevoked { key: slot_key(1, 0), kill_by: None }, t0 + secs(1));
    assert!(without_logs(actions).is_empty());
    let releases = |actions: Vec<Action>| -> Vec<Action> {
        actions.into_iter().filter(|a| matches!(a, Action::ReleaseUnit(_))).collect()
    };
    assert_eq!(releases(step(&mut farm, slot_exited(1, 0, 0), t0 + secs(2))), vec![release(slot_key(1, 0))]);
    assert_eq!(releases(step(&mut farm, slot_exited(1, 1, 0), t0 + secs(3))), vec![release(slot_key(1, 1))]);
}

#[test]
fn an_upgrade_adopts_the_claims_running_and_waiting_and_leaves_the_rest_elsewhere() {
    let t0 = Instant::now();
    let mut farm = Farm::new();
    farm.enable_cluster();
    // Slot 0 runs under claim 5, slot 1 was granted (claim 6) and not
    // started yet, slots 2 and 3 are other members'.
    farm.adopt(replicated(1, 1, 4), false, &[(0, 40, secs(3), 0, 0)], &[(0, 5), (1, 6)], t0);
    assert_eq!(slot_status(&farm, 1, 0, t0), Some(StatusName::Running));
    assert_eq!(farm.unit_token(&slot_key(1, 0)), Some(5));
    assert_eq!(farm.unit_token(&slot_key(1, 1)), Some(6));
    assert_eq!(slot_status(&farm, 1, 2, t0), Some(StatusName::Elsewhere));
    assert_eq!(slot_status(&farm, 1, 3, t0), Some(StatusName::Elsewhere));
    assert_eq!(farm.owned_unit_count(), 2);
    let actions = without_logs(farm.handle(Event::Tick, t0));
    assert_eq!(
        actions.iter().filter(|a| matches!(a, Action::StartWorker(..))).collect::<Vec<_>>(),
        vec![&Action::StartWorker(slot_key(1, 1))],
        "only the granted slot starts: {actions:?}"
    );
    // An every-host job's claims are none, whatever the handoff says.
    let mut local = job(2, 1);
    local.placement = Placement::EveryHost;
    farm.adopt(local, false, &[], &[(0, 9)], t0);
    assert_eq!(farm.unit_token(&key(2)), None);
    assert_ne!(status(&farm, 2, t0), StatusName::Elsewhere);
}

#[test]
fn an_upgrade_hands_over_the_claims_and_kills_a_unit_moving_away() {
    let t0 = Instant::now();
    let mut farm = Farm::new();
    farm.enable_cluster();
    farm.adopt(replicated(1, 1, 3), false, &[(0, 40, secs(3), 0, 0), (1, 41, secs(3), 0, 0)], &[(0, 5), (1, 6)], t0);
    // Slot 1 moves away: its worker is stopping for good, its claim gone.
    farm.handle(Event::UnitRevoked { key: slot_key(1, 1), kill_by: None }, t0 + secs(1));
    let handoff = farm.handoff(t0 + secs(2));
    let job = &handoff.jobs[0];
    assert_eq!(job.units, vec![(0, 5)]);
    assert_eq!(job.running.iter().map(|r| r.pid).collect::<Vec<_>>(), vec![40]);
    assert_eq!(handoff.killed, vec![KilledAtHandoff { pid: 41, unit: true }]);
}
