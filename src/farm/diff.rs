//! A new configuration against what runs: added, changed, scaled and
//! removed jobs.

use super::*;

impl Farm {
    pub(super) fn insert_job(&mut self, job: Job, now: Instant) {
        let id = job.id.clone();
        let replicas = job.replicas;
        self.jobs.insert(id.clone(), JobState::new(job));
        for slot in 0..replicas {
            let key = WorkerKey::new(id.clone(), slot);
            let phase = self.new_slot_phase(&key, false, now);
            self.add_slot(&key, phase);
        }
    }

    /// Makes the job's slots match its `replicas`: slots above it stop
    /// (and are forgotten), missing ones start; the others are untouched.
    pub(super) fn scale(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) {
        let Some(state) = self.jobs.get(id) else { return };
        let replicas = state.job.replicas;
        let held = state.held;
        for key in self.slot_keys(id).into_iter().rev() {
            let Some(slot) = self.slot(&key) else { continue };
            match (key.slot >= replicas, slot.phase.clone()) {
                (true, Phase::Running { pid, since }) => self.stop(&key, pid, since, AfterStop::Remove, now, actions),
                (true, Phase::Stopping { pid, since, kill_at, .. }) => {
                    self.set_phase(&key, Phase::Stopping { pid, since, kill_at, then: AfterStop::Remove })
                }
                (true, Phase::Starting { since, .. }) => {
                    self.set_phase(&key, Phase::Starting { since, stop_then: Some(AfterStop::Remove) })
                }
                (true, _) => self.remove_slot(&key),
                // Scaled down and up again before the process was gone.
                (false, Phase::Stopping { pid, since, kill_at, then: AfterStop::Remove }) => {
                    let then = if held { AfterStop::Hold } else { AfterStop::Restart };
                    self.set_phase(&key, Phase::Stopping { pid, since, kill_at, then })
                }
                (false, Phase::Starting { since, stop_then: Some(AfterStop::Remove) }) => {
                    let stop_then = held.then_some(AfterStop::Hold);
                    self.set_phase(&key, Phase::Starting { since, stop_then })
                }
                (false, _) => {}
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

    pub(super) fn apply_configuration(&mut self, jobs: Vec<Job>, now: Instant, actions: &mut Vec<Action>) {
        if self.is_shutting_down() {
            return;
        }
        let first = !self.config.loaded;
        self.config.loaded = true;
        self.config.failures_before_first = 0;
        let new_ids: BTreeSet<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
        let (mut added, mut changed) = (0, 0);
        for job in jobs {
            let id = job.id.clone();
            let Some(state) = self.jobs.get_mut(&id) else {
                actions.push(Action::log_job(LogLevel::Info, &id, added_message(&job, "added")));
                added += 1;
                self.insert_job(job, now);
                continue;
            };
            if state.removed {
                // Removed and still stopping, now back: the new job runs
                // once the old processes are gone.
                actions.push(Action::log_job(LogLevel::Info, &id, added_message(&job, "added again")));
                added += 1;
                state.job = job;
                state.removed = false;
                state.held = false;
                for slot in state.slots.values_mut() {
                    slot.backoff.reset();
                }
                self.scale(&id, now, actions);
                continue;
            }
            if job.mtime <= state.job.mtime {
                continue;
            }
            let (old_replicas, new_replicas) = (state.job.replicas, job.replicas);
            let only_replicas = same_but_replicas(&state.job, &job);
            let mtimes = format!("mtime {} -> {}", state.job.mtime, job.mtime);
            changed += 1;
            state.job = job;
            if only_replicas {
                actions.push(Action::log_job(
                    LogLevel::Info,
                    &id,
                    format!("job {id} changed ({mtimes}): replicas {old_replicas} -> {new_replicas}"),
                ));
                self.scale(&id, now, actions);
                continue;
            }
            actions.push(Action::log_job(LogLevel::Info, &id, format!("job {id} changed ({mtimes}), restarting it")));
            state.failures.clear();
            state.rolling = None;
            self.scale(&id, now, actions);
            for key in self.slot_keys(&id) {
                let removing =
                    matches!(self.slot(&key).map(|s| &s.phase), Some(Phase::Stopping { then: AfterStop::Remove, .. }));
                if !removing {
                    self.restart_slot(&key, AfterStop::Restart, now, actions);
                }
            }
        }
        let removed: Vec<JobId> =
            self.jobs.iter().filter(|(id, s)| !new_ids.contains(*id) && !s.removed).map(|(id, _)| id.clone()).collect();
        let removed_count = removed.len();
        for id in removed {
            actions.push(Action::log_job(
                LogLevel::Info,
                &id,
                format!("job {id} removed from the configuration, stopping it for good"),
            ));
            self.remove_job(&id, now, actions);
        }
        if first || added + changed + removed_count > 0 {
            actions.push(Action::log(
                LogLevel::Info,
                format!(
                    "configuration loaded: {} job(s) ({added} added, {changed} changed, {removed_count} removed)",
                    new_ids.len()
                ),
            ));
        }
    }

    /// Stops every slot of the job for good; the job is forgotten once the
    /// last process is gone.
    pub(super) fn remove_job(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) {
        let Some(state) = self.jobs.get_mut(id) else { return };
        state.removed = true;
        state.rolling = None;
        let keys = self.slot_keys(id);
        if keys.is_empty() {
            self.jobs.remove(id);
            return;
        }
        for key in keys {
            let Some(slot) = self.slot(&key) else { continue };
            match slot.phase.clone() {
                Phase::Running { pid, since } => self.stop(&key, pid, since, AfterStop::Remove, now, actions),
                Phase::Stopping { pid, since, kill_at, .. } => {
                    self.set_phase(&key, Phase::Stopping { pid, since, kill_at, then: AfterStop::Remove })
                }
                Phase::Starting { since, .. } => {
                    self.set_phase(&key, Phase::Starting { since, stop_then: Some(AfterStop::Remove) })
                }
                Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed | Phase::Elsewhere => {
                    self.remove_slot(&key)
                }
            }
        }
    }
}
