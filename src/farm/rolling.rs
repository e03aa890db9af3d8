//! The watchdog's inspections and rolling recycles (`recycle ID`): what
//! a worker's cycle counters mean for its slot.

use super::*;

impl Farm {
    /// The watchdog and rolling recycles look at a process's cycle counters.
    pub(super) fn cycle_progress(
        &mut self,
        key: &WorkerKey,
        pid: Pid,
        progress: Option<CycleProgress>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(state) = self.jobs.get(&key.id) else { return };
        let Some(slot) = state.slots.get(&key.slot) else { return };
        let Phase::Running { since, .. } = slot.phase else { return };
        if slot.phase.pid() != Some(pid) {
            return;
        }
        let mut next: Option<Instant> = None;
        // The watchdog's two clocks: the cycle's length, and its silence.
        let clocks = [
            (
                state.job.cycle_timeout_seconds,
                progress.and_then(|p| p.current_cycle),
                "has been running for",
                "cycleTimeoutSeconds",
                false,
            ),
            (
                state.job.progress_timeout_seconds,
                progress.and_then(|p| p.silent_for),
                "has reported no progress (Lrpm\\progress()) for",
                "progressTimeoutSeconds",
                true,
            ),
        ];
        for (timeout, elapsed, what, field, silence) in clocks {
            let Some(timeout) = timeout.map(Duration::from_secs) else { continue };
            match elapsed {
                Some(ran) if ran >= timeout => {
                    let label = state.label(key.slot);
                    let grace = state.job.shutdown_timeout_seconds;
                    let why = format!(
                        "cycle {} {what} {:.1}s, longer than {field} {}",
                        progress.map_or(0, |p| p.cycles + 1),
                        ran.as_secs_f64(),
                        timeout.as_secs()
                    );
                    actions.push(Action::log_about(
                        LogLevel::Warn,
                        key,
                        Some(pid),
                        format!(
                            "{label} (pid {pid}): {why}: stopping it as stuck (SIGTERM now, SIGKILL after {grace}s); \
                             this counts as a failure"
                        ),
                    ));
                    if let Some(state) = self.jobs.get_mut(&key.id) {
                        let stops = &mut state.watchdog_stops;
                        *(if silence { &mut stops.progress_timeout } else { &mut stops.cycle_timeout }) += 1;
                    }
                    // Where it was stuck, asked before the SIGTERM moves it on.
                    actions.push(Action::LogBacktrace {
                        key: key.clone(),
                        pid,
                        why: format!("{label} (pid {pid}) stopped by the watchdog ({why})"),
                    });
                    self.stop(key, pid, since, AfterStop::RestartAsFailure, now, actions);
                    self.rolling_slot_lost(key, "its new process was stopped by the watchdog", actions);
                    return;
                }
                Some(ran) => {
                    next = Some(next.map_or(later(now, timeout - ran), |at| at.min(later(now, timeout - ran))))
                }
                None => next = Some(next.map_or(later(now, timeout), |at| at.min(later(now, timeout)))),
            }
        }
        let shutdown_timeout = state.shutdown_timeout();
        let label = state.label(key.slot);
        if let Some(rolling) = self.jobs.get_mut(&key.id).and_then(|s| s.rolling.as_mut()) {
            if let Some(RollingStep::FirstCycle { slot, pid: new_pid, since }) = rolling.current {
                if slot == key.slot && new_pid == pid {
                    // Up once start() returned and its first cycle() began: an
                    // idle blocking consumer may never complete one.
                    let cycled = progress.map_or(true, |p| p.cycles >= 1 || p.current_cycle.is_some());
                    let slow = now.saturating_duration_since(since) >= shutdown_timeout;
                    if cycled || slow {
                        if !cycled {
                            actions.push(Action::log_about(
                                LogLevel::Info,
                                key,
                                Some(pid),
                                format!(
                                    "{label}: its new process (pid {pid}) has not entered its first cycle within {}s; \
                                     moving on with the rolling recycle",
                                    shutdown_timeout.as_secs()
                                ),
                            ));
                        }
                        rolling.current = None;
                        self.advance_rolling(&key.id, now, actions);
                    } else {
                        let soon = now + ROLLING_INSPECT_INTERVAL;
                        next = Some(next.map_or(soon, |at| at.min(soon)));
                    }
                }
            }
        }
        if let Some(at) = next {
            if self.slot(key).is_some_and(|s| s.phase.pid() == Some(pid)) {
                self.inspect_at(key, at);
            }
        }
    }

    /// `recycle ID`: every running slot, lowest first.
    pub(super) fn start_rolling(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) -> Result<(), Refusal> {
        let Some(state) = self.jobs.get_mut(id) else { return Err(Refusal::NoSuchJob) };
        let running: BTreeSet<u32> =
            state.slots.iter().filter(|(_, s)| matches!(s.phase, Phase::Running { .. })).map(|(n, _)| *n).collect();
        if running.is_empty() {
            return Err(Refusal::NotRunning);
        }
        match state.rolling.as_mut() {
            // Already rolling: the slots it has not reached yet are in it.
            Some(rolling) => rolling.remaining.extend(running),
            None => state.rolling = Some(Rolling { remaining: running, current: None }),
        }
        self.advance_rolling(id, now, actions);
        Ok(())
    }

    /// Stops the next slot of a rolling recycle (its process is replaced at
    /// once), or ends the rolling recycle when no slot is left.
    pub(super) fn advance_rolling(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) {
        loop {
            let Some(state) = self.jobs.get_mut(id) else { return };
            let Some(rolling) = state.rolling.as_mut() else { return };
            if rolling.current.is_some() {
                return;
            }
            let Some(slot) = rolling.remaining.pop_first() else {
                state.rolling = None;
                actions.push(Action::log_job(LogLevel::Info, id, format!("job {id}: rolling recycle complete")));
                return;
            };
            let key = WorkerKey::new(id.clone(), slot);
            let Some(Phase::Running { pid, since }) = state.slots.get(&slot).map(|s| s.phase.clone()) else {
                // Not running any more (backoff, held, scaled away): nothing to replace.
                continue;
            };
            rolling.current = Some(RollingStep::Stopping { slot });
            let label = state.label(slot);
            actions.push(Action::log_about(
                LogLevel::Info,
                &key,
                Some(pid),
                format!("{label} (pid {pid}): recycling (rolling recycle: one process at a time)"),
            ));
            self.stop(&key, pid, since, AfterStop::Recycle, now, actions);
            return;
        }
    }

    /// A slot of a rolling recycle did not come back as planned: the
    /// recycle stops there, the other processes keep running.
    pub(super) fn rolling_slot_lost(&mut self, key: &WorkerKey, why: &str, actions: &mut Vec<Action>) {
        let Some(state) = self.jobs.get_mut(&key.id) else { return };
        let Some(rolling) = &state.rolling else { return };
        let current = match rolling.current {
            Some(RollingStep::Stopping { slot }) | Some(RollingStep::FirstCycle { slot, .. }) => slot,
            None => return,
        };
        if current != key.slot {
            return;
        }
        let left = rolling.remaining.len();
        state.rolling = None;
        let label = state.label(key.slot);
        actions.push(Action::log_about(
            LogLevel::Warn,
            key,
            None,
            format!("{label}: rolling recycle stopped: {why}; {left} other process(es) were left as they are"),
        ));
    }
}
