//! Requests on one job (`restart`, `stop`, `start`, `recycle ID`) and
//! taking over the jobs of a previous image (`lrpmctl upgrade`).

use super::*;

impl Farm {
    /// Takes over a job whose processes were started by the previous image
    /// of this host (`lrpmctl upgrade`): its slots' processes run as they
    /// are (`running`: slot, pid, how long it has run, restarts, recycles);
    /// the other slots start. The configuration counts as loaded.
    pub fn adopt(
        &mut self,
        job: Job,
        held: bool,
        running: &[(u32, Pid, Duration, u64, u64)],
        units: &[(u32, i64)],
        now: Instant,
    ) {
        self.config.loaded = true;
        let id = job.id.clone();
        let replicas = job.replicas;
        let mut state = JobState::new(job);
        state.held = held;
        self.jobs.insert(id.clone(), state);
        // The claims this member holds go on: those units start (or run on)
        // here, every other one waits `Elsewhere`.
        self.claims_adopted(&id, units);
        for &(slot, pid, ran, restarts, recycles) in running {
            let key = WorkerKey::new(id.clone(), slot);
            let since = now.checked_sub(ran).unwrap_or(now);
            self.add_slot(&key, Phase::Running { pid, since });
            if let Some(slot) = self.slot_mut(&key) {
                slot.last_started_at = Some(since);
                slot.restarts = restarts;
                slot.recycles = recycles;
            }
        }
        for slot in 0..replicas {
            let key = WorkerKey::new(id.clone(), slot);
            if self.slot(&key).is_none() {
                let phase = self.new_slot_phase(&key, held, now);
                self.add_slot(&key, phase);
            }
        }
    }

    /// A control request on one job: accepted (with what to do) or refused.
    pub fn job_command(&mut self, id: &JobId, command: JobCommand, now: Instant) -> (Result<(), Refusal>, Vec<Action>) {
        let mut actions = Vec::new();
        if self.is_shutting_down() {
            return (Err(Refusal::ShuttingDown), actions);
        }
        let Some(state) = self.jobs.get_mut(id) else { return (Err(Refusal::NoSuchJob), actions) };
        if state.removed {
            return (Err(Refusal::Removed), actions);
        }
        let outcome = match command {
            JobCommand::Restart => {
                state.failures.clear();
                state.held = false;
                state.rolling = None;
                for key in self.slot_keys(id) {
                    self.restart_slot(&key, AfterStop::Restart, now, &mut actions);
                }
                Ok(())
            }
            JobCommand::Start => {
                state.held = false;
                for key in self.slot_keys(id) {
                    let Some(slot) = self.slot_mut(&key) else { continue };
                    match slot.phase.clone() {
                        Phase::Held => {
                            slot.backoff.reset();
                            self.set_phase(&key, Phase::Waiting { at: now });
                        }
                        Phase::Stopping { pid, since, kill_at, then: AfterStop::Hold } => {
                            slot.backoff.reset();
                            self.set_phase(&key, Phase::Stopping { pid, since, kill_at, then: AfterStop::Restart });
                        }
                        // Stopped and started again before its process came:
                        // the process it starts is kept.
                        Phase::Starting { since, stop_then: Some(AfterStop::Hold) } => {
                            self.set_phase(&key, Phase::Starting { since, stop_then: None })
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            JobCommand::Hold => {
                state.held = true;
                state.rolling = None;
                for key in self.slot_keys(id) {
                    let Some(slot) = self.slot(&key) else { continue };
                    match slot.phase.clone() {
                        Phase::Running { pid, since } => {
                            self.stop(&key, pid, since, AfterStop::Hold, now, &mut actions)
                        }
                        // Going for good, or to another member (the job is
                        // held here should the unit come back).
                        Phase::Stopping { then: AfterStop::Remove | AfterStop::Release, .. } => {}
                        Phase::Stopping { pid, since, kill_at, .. } => {
                            self.set_phase(&key, Phase::Stopping { pid, since, kill_at, then: AfterStop::Hold })
                        }
                        Phase::Starting { stop_then: Some(AfterStop::Remove | AfterStop::Release), .. } => {}
                        Phase::Starting { since, .. } => {
                            self.set_phase(&key, Phase::Starting { since, stop_then: Some(AfterStop::Hold) })
                        }
                        Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => {
                            self.set_phase(&key, Phase::Held)
                        }
                        Phase::Elsewhere => {}
                    }
                }
                Ok(())
            }
            JobCommand::Recycle => self.start_rolling(id, now, &mut actions),
        };
        (outcome, actions)
    }

    /// `restart ID` and a new mtime, for one slot: a running process is
    /// stopped and started again (`then`), a waiting, done or failed slot
    /// starts at once; a held slot stays held.
    pub(super) fn restart_slot(&mut self, key: &WorkerKey, then: AfterStop, now: Instant, actions: &mut Vec<Action>) {
        let held = self.jobs.get(&key.id).is_some_and(|s| s.held);
        let Some(slot) = self.slot_mut(key) else { return };
        slot.backoff.reset();
        match slot.phase.clone() {
            Phase::Running { pid, since } => self.stop(key, pid, since, then, now, actions),
            // A slot being scaled away (or kept held) stays so.
            Phase::Stopping { then: AfterStop::Remove | AfterStop::Release, .. } => {}
            Phase::Stopping { then: AfterStop::Hold, .. } if held => {}
            Phase::Stopping { pid, since, kill_at, .. } => {
                self.set_phase(key, Phase::Stopping { pid, since, kill_at, then })
            }
            // The process being started is stopped as soon as it is known,
            // then started again: one live process per slot.
            Phase::Starting { stop_then: Some(AfterStop::Remove | AfterStop::Release), .. } => {}
            Phase::Starting { stop_then: Some(AfterStop::Hold), .. } if held => {}
            Phase::Starting { since, .. } => self.set_phase(key, Phase::Starting { since, stop_then: Some(then) }),
            Phase::Held if held => {}
            Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => {
                self.set_phase(key, Phase::Waiting { at: now })
            }
            // Another member's to restart.
            Phase::Elsewhere => {}
        }
    }
}
