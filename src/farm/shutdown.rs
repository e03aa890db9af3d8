//! The configuration process's exits and the farm's shutdown order.

use super::*;

impl Farm {
    pub(super) fn config_exited(&mut self, pid: Pid, exit: ExitKind, now: Instant, actions: &mut Vec<Action>) {
        let since = match self.config.phase {
            ConfigPhase::Running { since, .. } | ConfigPhase::Stopping { since, .. } => since,
            _ => now,
        };
        if self.is_shutting_down() {
            self.config.phase = ConfigPhase::Stopped;
            self.finish_shutdown_if_done(actions);
            return;
        }
        let described = exit.describe(ProcessKind::ConfigProcess, PhpEnd::Unknown);
        let reason = if self.config.reload_pending { "; a reload was requested" } else { "" };
        let what = format!("configuration process {pid} ended ({described}){reason}");
        self.config_attempt_failed(&what, now.saturating_duration_since(since), now, actions);
    }

    /// The configuration process ended (after running for `ran`) or could
    /// not start: retry with backoff, or give up if no configuration ever
    /// loaded.
    pub(super) fn config_attempt_failed(&mut self, what: &str, ran: Duration, now: Instant, actions: &mut Vec<Action>) {
        if self.config.loaded {
            let delay = self.config.backoff.delay_after(ran);
            actions.push(Action::log(
                LogLevel::Warn,
                format!("{what}; keeping the last good configuration, restarting it in {}s", delay.as_secs()),
            ));
            self.config.phase = ConfigPhase::Waiting { at: later(now, delay) };
            return;
        }
        self.config.failures_before_first += 1;
        let attempts = self.config.failures_before_first;
        if attempts >= FIRST_CONFIGURATION_ATTEMPTS {
            actions.push(Action::log(
                LogLevel::Error,
                format!(
                    "{what}; giving up: the configuration source failed {attempts} times and never produced a configuration (see the errors above)"
                ),
            ));
            self.config.phase = ConfigPhase::Stopped;
            self.shutdown(HostExit::ConfigNeverLoaded, now, actions);
            return;
        }
        actions.push(Action::log(
            LogLevel::Warn,
            format!(
                "{what}; no configuration yet: attempt {attempts} of {FIRST_CONFIGURATION_ATTEMPTS} failed, trying again in {}s",
                FIRST_CONFIGURATION_RETRY.as_secs()
            ),
        ));
        self.config.phase = ConfigPhase::Waiting { at: later(now, FIRST_CONFIGURATION_RETRY) };
    }

    pub(super) fn shutdown(&mut self, exit: HostExit, now: Instant, actions: &mut Vec<Action>) {
        if self.is_shutting_down() {
            actions.push(Action::log(LogLevel::Warn, "second stop request: killing every process now".into()));
            if let ConfigPhase::Running { pid, since } | ConfigPhase::Stopping { pid, since, .. } = self.config.phase {
                self.config.phase = ConfigPhase::Stopping { pid, since, kill_at: None };
                actions.push(Action::KillConfigProcess { pid });
            }
            let alive: Vec<(WorkerKey, Phase)> = self
                .jobs
                .iter()
                .flat_map(|(id, s)| s.slots.iter().map(move |(slot, st)| (WorkerKey::new(id.clone(), *slot), st)))
                .filter(|(_, st)| st.phase.pid().is_some())
                .map(|(key, st)| (key, st.phase.clone()))
                .collect();
            for (key, phase) in alive {
                let (pid, since, then) = match phase {
                    Phase::Stopping { pid, since, then, .. } => (pid, since, then),
                    Phase::Running { pid, since } => (pid, since, AfterStop::Remove),
                    _ => continue,
                };
                self.set_phase(&key, Phase::Stopping { pid, since, kill_at: None, then });
                actions.push(Action::KillWorker { key, pid, reason: KillReason::SecondShutdown });
            }
            return;
        }
        self.shutting_down = Some(exit);
        actions.push(Action::log(
            LogLevel::Info,
            "shutting down: stopping the configuration process, then every worker".into(),
        ));
        match self.config.phase {
            ConfigPhase::Waiting { .. } => self.config.phase = ConfigPhase::Stopped,
            _ => self.stop_config_process(now, actions),
        }
        let ids: Vec<JobId> = self.jobs.keys().cloned().collect();
        for id in ids {
            self.remove_job(&id, now, actions);
        }
        self.finish_shutdown_if_done(actions);
    }

    pub(super) fn stop_config_process(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if let ConfigPhase::Running { pid, since } = self.config.phase {
            self.config.phase = ConfigPhase::Stopping { pid, since, kill_at: Some(later(now, CONFIG_STOP_TIMEOUT)) };
            actions.push(Action::StopConfigProcess { pid });
        }
    }

    pub(super) fn finish_shutdown_if_done(&mut self, actions: &mut Vec<Action>) {
        let Some(exit) = self.shutting_down else { return };
        if self.jobs.is_empty() && self.config.is_gone() {
            self.exited = true;
            actions.push(Action::Exit(exit));
        }
    }
}
