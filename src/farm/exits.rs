//! Starts and exits of workers: what a start or an exit means for its slot,
//! the restart policy, the failure window and `essential`.

use super::*;

/// Why a running process ended without the farm asking it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndedBy {
    /// It exited or died on its own.
    Itself,
    /// The cycle watchdog stopped it: a failure, whatever the exit.
    Watchdog,
    /// A stop signal from outside the farm (`kill`, a container runtime):
    /// an exit 0 after it is a stop, so it is neither a failure nor a
    /// short run and is restarted at once; any other end counts as usual.
    StopSignal,
}

impl Farm {
    /// The request a start in flight carries: `None` when its process is
    /// still wanted, or what a request that came meanwhile decided.
    fn pending_stop(&self, key: &WorkerKey) -> Option<AfterStop> {
        match self.slot(key).map(|s| &s.phase) {
            Some(Phase::Starting { stop_then, .. }) => *stop_then,
            _ => None,
        }
    }

    /// False when a start in flight is no longer wanted (its slot was
    /// restarted, stopped or removed meanwhile): the supervisor then does
    /// not fork it at all but reports it deferred.
    pub fn start_wanted(&self, key: &WorkerKey) -> bool {
        matches!(self.slot(key).map(|s| &s.phase), Some(Phase::Starting { stop_then: None, .. }))
    }

    /// A start in flight that produced no process, and a request came
    /// meanwhile: the slot goes where that request wanted it.
    fn start_overtaken(&mut self, key: &WorkerKey, then: AfterStop, now: Instant, actions: &mut Vec<Action>) {
        match then {
            AfterStop::Remove => self.remove_slot(key),
            AfterStop::Hold => self.set_phase(key, Phase::Held),
            AfterStop::Fail => self.set_phase(key, Phase::Failed),
            AfterStop::Restart | AfterStop::Recycle | AfterStop::RestartAsFailure => {
                self.set_phase(key, Phase::Waiting { at: now })
            }
            AfterStop::Release => self.release_unit(key, actions),
        }
        self.finish_shutdown_if_done(actions);
    }

    /// The supervisor could not start it now (its fork budget for the turn,
    /// or the start was no longer wanted): it is asked again next turn.
    pub(super) fn worker_start_deferred(&mut self, key: &WorkerKey, now: Instant, actions: &mut Vec<Action>) {
        if !matches!(self.slot(key).map(|s| &s.phase), Some(Phase::Starting { .. })) {
            return;
        }
        match self.pending_stop(key) {
            Some(then) => self.start_overtaken(key, then, now, actions),
            None => self.set_phase(key, Phase::Waiting { at: now }),
        }
    }

    pub(super) fn worker_spawn_failed(&mut self, key: &WorkerKey, now: Instant, actions: &mut Vec<Action>) {
        if let Some(then) = self.pending_stop(key) {
            return self.start_overtaken(key, then, now, actions);
        }
        if self.is_shutting_down() {
            self.remove_slot(key);
            self.finish_shutdown_if_done(actions);
            return;
        }
        let label = self.label(key);
        let Some(state) = self.jobs.get(&key.id) else { return };
        let short_run = state.short_run();
        let Some(slot) = self.slot_mut(key) else { return };
        let delay = slot.backoff.delay_after(Duration::ZERO, short_run);
        actions.push(Action::log_about(
            LogLevel::Warn,
            key,
            None,
            format!("{label} could not be started; trying again in {}s (backoff)", delay.as_secs()),
        ));
        self.set_phase(key, Phase::Waiting { at: later(now, delay) });
        self.rolling_slot_lost(key, "its new process could not be started", actions);
    }

    pub(super) fn worker_started(&mut self, key: WorkerKey, pid: Pid, now: Instant, actions: &mut Vec<Action>) {
        let stop_then = match self.slot(&key).map(|s| &s.phase) {
            Some(Phase::Starting { stop_then, .. }) => *stop_then,
            _ => {
                // A start still in flight when a shutdown removed its slot;
                // otherwise it cannot happen (a slot's start is tracked from
                // its request on, and only one is in flight). Either way,
                // never leave an untracked process behind.
                let (level, what) = if self.is_shutting_down() {
                    (LogLevel::Info, format!("pid {pid} of {key} started as the shutdown began; stopping it"))
                } else {
                    (LogLevel::Error, format!("pid {pid} started for {key}, which was not starting; stopping it"))
                };
                actions.push(Action::log(level, what));
                actions.push(Action::KillWorker { key, pid, reason: KillReason::SecondShutdown });
                return;
            }
        };
        if let Some(slot) = self.slot_mut(&key) {
            slot.last_started_at = Some(now);
        }
        self.set_phase(&key, Phase::Running { pid, since: now });
        if let Some(then) = stop_then {
            // A restart, stop or removal came while it was starting: what
            // it started is stopped like any running process.
            self.stop(&key, pid, now, then, now, actions);
            return;
        }
        if self.is_shutting_down() {
            self.stop(&key, pid, now, AfterStop::Remove, now, actions);
            return;
        }
        let state = &self.jobs[&key.id];
        let mut first_look = [state.job.cycle_timeout_seconds, state.job.progress_timeout_seconds]
            .into_iter()
            .flatten()
            .min()
            .map(|t| later(now, Duration::from_secs(t)));
        if let Some(rolling) = self.jobs.get_mut(&key.id).and_then(|s| s.rolling.as_mut()) {
            if rolling.current == Some(RollingStep::Stopping { slot: key.slot }) {
                rolling.current = Some(RollingStep::FirstCycle { slot: key.slot, pid, since: now });
                let soon = now + ROLLING_INSPECT_INTERVAL;
                first_look = Some(first_look.map_or(soon, |at| at.min(soon)));
            }
        }
        if let Some(at) = first_look {
            self.inspect_at(&key, at);
        }
    }

    pub(super) fn count_restart(&mut self, key: &WorkerKey, recycle: Option<RecycleReason>) {
        let Some(state) = self.jobs.get_mut(&key.id) else { return };
        state.restarts += 1;
        state.recycles += u64::from(recycle.is_some());
        if let Some(reason) = recycle {
            state.recycles_by_reason.add(reason);
        }
        if let Some(slot) = state.slots.get_mut(&key.slot) {
            slot.restarts += 1;
            slot.recycles += u64::from(recycle.is_some());
        }
    }

    pub(super) fn child_exited(
        &mut self,
        pid: Pid,
        end: End,
        recycle: Option<RecycleReason>,
        (cycles, tasks): (u64, super::TaskCounts),
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let exit = end.exit;
        if self.config.pid() == Some(pid) {
            self.config_exited(pid, exit, now, actions);
            return;
        }
        let stop_signalled = self.stop_signalled.remove(&pid);
        let Some(key) = self.by_pid.get(&pid).cloned() else { return };
        let label = self.label(&key);
        let state = self.jobs.get_mut(&key.id).expect("the pid index only names known jobs");
        state.last_exit = Some(exit);
        state.cycles_of_ended += cycles;
        state.tasks_of_ended += tasks;
        let slot = state.slots.get_mut(&key.slot).expect("the pid index only names known slots");
        slot.last_exit = Some(exit);
        let described = end.describe(ProcessKind::Worker);
        let phase = slot.phase.clone();
        let rolling_new_process = matches!(
            state.rolling.as_ref().and_then(|r| r.current),
            Some(RollingStep::FirstCycle { slot, pid: p, .. }) if slot == key.slot && p == pid
        );
        // The replacement of a rolling recycle ended before it was seen
        // past its first cycle: a planned end (exit 0, a recycle: maxCycles
        // 1 ends right after the first cycle) lets the recycle go on, a
        // failure stops it.
        let mut rolling_goes_on = false;
        if rolling_new_process {
            if exit == ExitKind::Code(0) || exit == ExitKind::Code(crate::exit_code::RECYCLE) {
                rolling_goes_on = true;
            } else {
                self.rolling_slot_lost(
                    &key,
                    &format!("its new process (pid {pid}) ended before completing a cycle ({described})"),
                    actions,
                );
            }
        }
        match phase {
            Phase::Running { .. } if exit == ExitKind::Code(crate::exit_code::RECYCLE) => {
                // Planned: neither a crash nor a short run; no backoff.
                let reason = recycle.unwrap_or(RecycleReason::Unknown);
                self.count_restart(&key, Some(reason));
                actions.push(Action::log_about(
                    LogLevel::Info,
                    &key,
                    Some(pid),
                    format!("{label} (pid {pid}) recycled ({}); starting a fresh process", reason.describe()),
                ));
                self.set_phase(&key, Phase::Waiting { at: now });
            }
            Phase::Running { since, .. } => {
                let by =
                    if stop_signalled && exit == ExitKind::Code(0) { EndedBy::StopSignal } else { EndedBy::Itself };
                self.ended_on_its_own(&key, pid, since, end, by, now, actions)
            }
            Phase::Stopping { since, then: AfterStop::RestartAsFailure, .. } => {
                self.ended_on_its_own(&key, pid, since, end, EndedBy::Watchdog, now, actions)
            }
            Phase::Stopping { then: then @ (AfterStop::Restart | AfterStop::Recycle), .. } => {
                let rolling = then == AfterStop::Recycle;
                self.count_restart(&key, rolling.then_some(RecycleReason::Rolling));
                let what = if rolling { "recycled (rolling recycle)" } else { "stopped" };
                actions.push(Action::log_about(
                    LogLevel::Info,
                    &key,
                    Some(pid),
                    format!("{label} (pid {pid}) {what}: {described}; starting it again"),
                ));
                self.set_phase(&key, Phase::Waiting { at: now });
            }
            Phase::Stopping { then: AfterStop::Hold, .. } => {
                actions.push(Action::log_about(
                    LogLevel::Info,
                    &key,
                    Some(pid),
                    format!("{label} (pid {pid}) stopped: {described}; held"),
                ));
                self.set_phase(&key, Phase::Held);
            }
            Phase::Stopping { then: AfterStop::Fail, .. } => {
                actions.push(Action::log_about(
                    LogLevel::Info,
                    &key,
                    Some(pid),
                    format!("{label} (pid {pid}) stopped: {described}; the job has failed"),
                ));
                self.set_phase(&key, Phase::Failed);
            }
            Phase::Stopping { then: AfterStop::Remove, .. } => {
                let why = if self.is_shutting_down() { "" } else { "; removed for good" };
                actions.push(Action::log_about(
                    LogLevel::Info,
                    &key,
                    Some(pid),
                    format!("{label} (pid {pid}) stopped: {described}{why}"),
                ));
                self.remove_slot(&key);
                // Scaled away while its rolling recycle was replacing it.
                rolling_goes_on |= self.rolling_was_stopping(&key);
            }
            Phase::Stopping { then: AfterStop::Release, .. } => {
                actions.push(Action::log_about(
                    LogLevel::Info,
                    &key,
                    Some(pid),
                    format!("{label} (pid {pid}) stopped: {described}; the unit is free for another member"),
                ));
                self.release_unit(&key, actions);
                rolling_goes_on |= self.rolling_was_stopping(&key);
            }
            Phase::Waiting { .. }
            | Phase::Starting { .. }
            | Phase::Held
            | Phase::Done
            | Phase::Failed
            | Phase::Elsewhere => {}
        }
        if rolling_goes_on {
            if let Some(rolling) = self.jobs.get_mut(&key.id).and_then(|s| s.rolling.as_mut()) {
                rolling.current = None;
            }
            self.advance_rolling(&key.id, now, actions);
        }
        self.finish_shutdown_if_done(actions);
    }

    /// Whether the job's rolling recycle was replacing this slot (which is
    /// now gone or elsewhere): the recycle goes on with the next one.
    fn rolling_was_stopping(&self, key: &WorkerKey) -> bool {
        matches!(
            self.jobs.get(&key.id).and_then(|s| s.rolling.as_ref()).and_then(|r| r.current),
            Some(RollingStep::Stopping { slot }) if slot == key.slot
        )
    }

    /// A process ended without being asked to (or was stopped by the
    /// watchdog, `failed` forced): restart with backoff, or not, by the
    /// restart policy and the failure limit. A clean stop by a signal from
    /// outside restarts at once and leaves the backoff as it was.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ended_on_its_own(
        &mut self,
        key: &WorkerKey,
        pid: Pid,
        since: Instant,
        end: End,
        by: EndedBy,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let (exit, watchdog) = (end.exit, by == EndedBy::Watchdog);
        if !self.restart_allowed(key, end, watchdog, now, actions) {
            return;
        }
        self.count_restart(key, None);
        let label = self.label(key);
        let Some(state) = self.jobs.get(&key.id) else { return };
        let short_run = state.short_run();
        let Some(slot) = self.slot_mut(key) else { return };
        let ran = now.saturating_duration_since(since);
        let delay = match by {
            EndedBy::Watchdog => slot.backoff.delay_after(Duration::ZERO, short_run),
            EndedBy::Itself => slot.backoff.delay_after(ran, short_run),
            EndedBy::StopSignal => Duration::ZERO,
        };
        let level = if exit == ExitKind::Code(0) && !watchdog { LogLevel::Info } else { LogLevel::Warn };
        let when = if delay.is_zero() { "now".to_string() } else { format!("in {}s (backoff)", delay.as_secs()) };
        let described = end.describe(ProcessKind::Worker);
        let how = match by {
            EndedBy::Itself => "exited",
            EndedBy::Watchdog => "stopped by the watchdog",
            EndedBy::StopSignal => "was stopped by a signal from outside the farm",
        };
        actions.push(Action::log_about(
            level,
            key,
            Some(pid),
            format!("{label} (pid {pid}) {how} after {:.1}s: {described}; restarting {when}", ran.as_secs_f64()),
        ));
        self.set_phase(key, Phase::Waiting { at: later(now, delay) });
    }

    /// The restart policy and failure limit, for a process that ended on
    /// its own: true when it restarts (with backoff as usual); otherwise the
    /// slot is now `Done` or the job `Failed` (and an essential failure
    /// ends the farm).
    pub(super) fn restart_allowed(
        &mut self,
        key: &WorkerKey,
        end: End,
        forced_failure: bool,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> bool {
        let label = self.label(key);
        let id = &key.id;
        let Some(state) = self.jobs.get_mut(id) else { return false };
        let failed = forced_failure || end.exit != ExitKind::Code(0);
        let described = end.describe(ProcessKind::Worker);
        let policy = state.job.restart_policy;
        if failed {
            state.failures_total += 1;
            let window = Duration::from_secs(state.job.failure_window_seconds);
            state.failures.push_back(now);
            while state.failures.front().is_some_and(|t| now.saturating_duration_since(*t) > window) {
                state.failures.pop_front();
            }
        }
        let too_many = failed && state.job.max_failures.is_some_and(|max| state.failures.len() as u64 >= max);
        let outcome = match (policy, failed) {
            (_, true) if too_many => Some((
                Phase::Failed,
                format!(
                    "job {id} failed {} times within {}s (last: {label}, {described}); not restarting it until `restart {id}` or a new mtime",
                    state.failures.len(),
                    state.job.failure_window_seconds
                ),
            )),
            (RestartPolicy::Never, true) => {
                Some((Phase::Failed, format!("{label} failed ({described}) and its restartPolicy is never")))
            }
            (RestartPolicy::Never | RestartPolicy::OnFailure, false) => {
                Some((Phase::Done, format!("{label} finished ({described}); its restartPolicy does not restart it")))
            }
            _ => None,
        };
        let Some((phase, message)) = outcome else { return true };
        let essential = state.job.essential && phase == Phase::Failed;
        let level = if phase == Phase::Failed { LogLevel::Error } else { LogLevel::Info };
        actions.push(Action::log_about(level, key, None, message));
        self.set_phase(key, phase);
        if too_many {
            self.fail_other_slots(id, now, actions);
        }
        if essential {
            actions.push(Action::log_job(
                LogLevel::Error,
                id,
                format!("job {id} is essential: shutting the farm down"),
            ));
            self.shutdown(HostExit::EssentialJobFailed, now, actions);
        }
        false
    }

    /// The job failed for good: its other slots stop and stay `Failed`.
    pub(super) fn fail_other_slots(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) {
        if let Some(state) = self.jobs.get_mut(id) {
            state.rolling = None;
        }
        for key in self.slot_keys(id) {
            let Some(slot) = self.slot(&key) else { continue };
            match slot.phase.clone() {
                Phase::Running { pid, since } => self.stop(&key, pid, since, AfterStop::Fail, now, actions),
                Phase::Stopping { then: AfterStop::Remove | AfterStop::Hold | AfterStop::Release, .. } => {}
                Phase::Stopping { pid, since, kill_at, .. } => {
                    self.set_phase(&key, Phase::Stopping { pid, since, kill_at, then: AfterStop::Fail })
                }
                Phase::Waiting { .. } => self.set_phase(&key, Phase::Failed),
                Phase::Starting {
                    stop_then: Some(AfterStop::Remove | AfterStop::Hold | AfterStop::Release), ..
                } => {}
                Phase::Starting { since, .. } => {
                    self.set_phase(&key, Phase::Starting { since, stop_then: Some(AfterStop::Fail) })
                }
                Phase::Held | Phase::Done | Phase::Failed | Phase::Elsewhere => {}
            }
        }
    }
}
