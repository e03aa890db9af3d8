//! Table tests of replicas: slots, scaling, per-slot backoff, job commands.

use super::*;

#[test]
fn replicas_start_one_process_per_slot() {
    let t0 = Instant::now();
    let farm = running_farm(t0, &[replicated(1, 1, 3)]);
    let state = farm.job(&id(1)).unwrap();
    assert_eq!(state.pids().collect::<Vec<_>>(), vec![(0, slot_pid(1, 0)), (1, slot_pid(1, 1)), (2, slot_pid(1, 2))]);
    assert_eq!(state.status(t0), StatusName::Running);
}

#[test]
fn changing_only_replicas_stops_the_highest_slots_or_adds_slots_without_touching_the_others() {
    let t0 = Instant::now();
    // (from, to, expected actions)
    let table: Vec<(u32, u32, Vec<Action>)> = vec![
        (4, 2, vec![slot_term(1, 3), slot_term(1, 2)]),
        (2, 4, vec![Action::StartWorker(slot_key(1, 2)), Action::StartWorker(slot_key(1, 3))]),
        // A higher mtime with nothing changed restarts, as in php-lrpm.
        (2, 2, vec![slot_term(1, 0), slot_term(1, 1)]),
    ];
    for (from, to, expected) in table {
        let mut farm = running_farm(t0, &[replicated(1, 1, from)]);
        let actions = step(&mut farm, Event::Configuration(vec![replicated(1, 2, to)]), t0 + secs(1));
        assert_eq!(actions, expected, "{from} -> {to}");
        for slot in to..from {
            step(&mut farm, slot_exited(1, slot, 0), t0 + secs(2));
            assert_eq!(slot_status(&farm, 1, slot, t0 + secs(2)), None, "slot {slot} is forgotten once gone");
        }
        assert_eq!(farm.job(&id(1)).unwrap().slots.len(), to as usize);
        if from != to {
            assert!(tick(&mut farm, t0 + secs(100)).is_empty(), "nothing else happens");
        }
    }
}

#[test]
fn a_real_change_restarts_every_slot_and_rescales() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[replicated(1, 1, 2)]);
    let mut changed = replicated(1, 2, 3);
    std::sync::Arc::make_mut(&mut changed.config).insert("workerConfig".into(), "new".into());
    let actions = step(&mut farm, Event::Configuration(vec![changed]), t0);
    assert_eq!(actions, vec![slot_term(1, 0), slot_term(1, 1), Action::StartWorker(slot_key(1, 2))]);
}

#[test]
fn scaling_down_and_up_again_before_the_process_is_gone_restarts_that_slot() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[replicated(1, 1, 2)]);
    assert_eq!(step(&mut farm, Event::Configuration(vec![replicated(1, 2, 1)]), t0), vec![slot_term(1, 1)]);
    assert!(step(&mut farm, Event::Configuration(vec![replicated(1, 3, 2)]), t0).is_empty());
    assert_eq!(step(&mut farm, slot_exited(1, 1, 0), t0), vec![Action::StartWorker(slot_key(1, 1))]);
}

#[test]
fn each_slot_backs_off_alone_and_failures_count_for_the_job() {
    let t0 = Instant::now();
    let mut j = replicated(1, 1, 3);
    j.max_failures = Some(2);
    let mut farm = running_farm(t0, &[j]);
    step(&mut farm, slot_exited(1, 0, 1), t0);
    assert_eq!(slot_status(&farm, 1, 0, t0), Some(StatusName::Backoff));
    assert_eq!(slot_status(&farm, 1, 1, t0), Some(StatusName::Running));
    assert_eq!(farm.job(&id(1)).unwrap().status(t0), StatusName::Backoff);
    // A second failure, in another slot: the job has failed; the running slot stops.
    let actions = step(&mut farm, slot_exited(1, 1, 1), t0);
    assert_eq!(actions, vec![slot_term(1, 2)]);
    step(&mut farm, slot_exited(1, 2, 0), t0);
    assert_eq!(farm.job(&id(1)).unwrap().status(t0), StatusName::Failed);
    assert!(tick(&mut farm, t0 + secs(100)).is_empty());
}

#[test]
fn job_commands_apply_to_every_slot() {
    let t0 = Instant::now();
    let mut farm = running_farm(t0, &[replicated(1, 1, 2)]);
    assert_eq!(command(&mut farm, 1, JobCommand::Hold, t0), (Ok(()), vec![slot_term(1, 0), slot_term(1, 1)]));
    step(&mut farm, slot_exited(1, 0, 0), t0);
    step(&mut farm, slot_exited(1, 1, 0), t0);
    assert_eq!(farm.job(&id(1)).unwrap().status(t0), StatusName::Stopped);
    // Scaling a held job adds held slots.
    step(&mut farm, Event::Configuration(vec![replicated(1, 2, 3)]), t0);
    assert_eq!(slot_status(&farm, 1, 2, t0), Some(StatusName::Stopped));
    let (outcome, actions) = command(&mut farm, 1, JobCommand::Start, t0);
    assert_eq!(outcome, Ok(()));
    assert_eq!(actions.len(), 3);
    assert_eq!(farm.signal_targets(&id(1)).unwrap().len(), 3);
}
