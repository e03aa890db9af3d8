//! Requests on one job (`restart`, `stop`, `start`, `recycle ID`) and
//! taking over the jobs of a previous image (`lrpmctl upgrade`).

use super::*;

/// What `Farm::handoff` gives an upgrade's next image.
#[derive(Debug, Default, PartialEq)]
pub struct FarmHandoff {
    pub jobs: Vec<JobHandoff>,
    /// Processes the next image does not take: killed before the exec.
    pub killed: Vec<KilledAtHandoff>,
}

#[derive(Debug, PartialEq)]
pub struct JobHandoff {
    pub id: JobId,
    pub held: bool,
    pub running: Vec<RunningAtHandoff>,
    /// Slots whose claim this member holds, with its fencing token.
    pub units: Vec<(u32, i64)>,
}

#[derive(Debug, PartialEq)]
pub struct RunningAtHandoff {
    pub slot: u32,
    pub pid: Pid,
    pub ran: Duration,
    pub restarts: u64,
    pub recycles: u64,
}

#[derive(Debug, PartialEq)]
pub struct KilledAtHandoff {
    pub pid: Pid,
    /// A cluster unit: its claim is given back once the process is reaped.
    pub unit: bool,
}

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

    /// What an upgrade hands to the next image (`Farm::adopt` takes it
    /// back): per job, the processes that run on (running, or stopping only
    /// to start again, which the new image's recycle replaces anyway) and
    /// the claims held; and the processes that do not: removed jobs' and
    /// those stopping for good (held, scaled away, failed, a unit moving
    /// away), for the supervisor to kill before the exec. A unit runs on
    /// only under its claim.
    pub fn handoff(&self, now: Instant) -> FarmHandoff {
        let mut handoff = FarmHandoff::default();
        let clustered = self.is_clustered();
        for (id, state) in &self.jobs {
            let is_unit = clustered && state.job.placement == Placement::Cluster;
            if state.removed {
                // On their way out already: the new image would not know
                // them, so they do not wait for their stop timeout.
                handoff.killed.extend(state.pids().map(|(_, pid)| KilledAtHandoff { pid, unit: is_unit }));
                continue;
            }
            let mut job = JobHandoff { id: id.clone(), held: state.held, running: Vec::new(), units: Vec::new() };
            for (slot, slot_state) in &state.slots {
                let key = WorkerKey::new(id.clone(), *slot);
                let token = if is_unit { self.unit_token(&key) } else { None };
                let carried = match slot_state.phase {
                    Phase::Running { pid, since } => Some((pid, since)),
                    Phase::Stopping {
                        pid,
                        since,
                        then: AfterStop::Restart | AfterStop::Recycle | AfterStop::RestartAsFailure,
                        ..
                    } => Some((pid, since)),
                    Phase::Stopping { pid, .. } => {
                        handoff.killed.push(KilledAtHandoff { pid, unit: is_unit });
                        None
                    }
                    _ => None,
                };
                if let Some(token) = token {
                    job.units.push((*slot, token));
                }
                let Some((pid, since)) = carried.filter(|_| !is_unit || token.is_some()) else { continue };
                job.running.push(RunningAtHandoff {
                    slot: *slot,
                    pid,
                    ran: now.saturating_duration_since(since),
                    restarts: slot_state.restarts,
                    recycles: slot_state.recycles,
                });
            }
            handoff.jobs.push(job);
        }
        handoff
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
