//! The pure core: desired-vs-actual diff, each job's lifecycle, backoff,
//! stop escalation and shutdown order. No I/O, no clock, no PHP, no libc:
//! the supervisor feeds events with the current time and applies the
//! returned actions.
//!
//! Every phase change goes through `set_phase`, which keeps the two indexes
//! (pid -> job, deadline -> job) in step, so no event costs more than a few
//! map operations at any farm size.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod config_process;
pub mod exit;
pub mod lifecycle;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub use config_process::{ConfigPhase, ConfigProcessState, CONFIG_STOP_TIMEOUT};
pub use exit::{ExitKind, ProcessKind};
pub use lifecycle::{AfterStop, JobState, Phase, StatusName};

use crate::job::{Job, JobId, RestartPolicy};
use config_process::{FIRST_CONFIGURATION_ATTEMPTS, FIRST_CONFIGURATION_RETRY};
use lifecycle::later;

pub type Pid = i32;

/// At most this many workers are started per tick; the loop polls (serving
/// signals and the control socket) between batches.
pub const START_BATCH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new configuration (valid jobs only) arrived from the config process.
    Configuration(Vec<Job>),
    ConfigProcessStarted(Pid),
    /// The configuration process could not be forked.
    ConfigSpawnFailed,
    WorkerStarted {
        id: JobId,
        pid: Pid,
    },
    /// fork() failed: treated as a run of zero seconds.
    WorkerSpawnFailed(JobId),
    /// The supervisor used its forking time for this turn: start it in a
    /// later turn, after the loop has polled again.
    WorkerStartDeferred(JobId),
    /// A child was reaped (worker or config process).
    ChildExited {
        pid: Pid,
        exit: ExitKind,
    },
    /// Deadlines may have passed: start what is due (a batch at most) and
    /// escalate stops. Fed once per loop turn, after every other event, so
    /// exits already collected are always processed before a deadline.
    Tick,
    /// SIGTERM/SIGINT or the control command `stop`; a second one escalates.
    Shutdown,
    /// SIGHUP or `reload`: poll the configuration source now.
    Reload,
}

/// A control request on one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobCommand {
    /// `restart ID`: reset the backoff and (re)start at once.
    Restart,
    /// `stop ID`: stop and hold until started again.
    Hold,
    /// `start ID`: release a held job.
    Start,
}

/// Why a request on a job was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoSuchJob,
    Removed,
    ShuttingDown,
    NotRunning,
}

/// Why a process gets SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// It did not stop within this long of SIGTERM.
    StopTimeout(Duration),
    /// A second stop request.
    SecondShutdown,
}

/// How the host ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostExit {
    Clean,
    /// The configuration source never produced a configuration.
    ConfigNeverLoaded,
    /// A job marked `essential` failed for good.
    EssentialJobFailed,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    StartWorker(JobId),
    /// SIGTERM to the worker (and its process group).
    StopWorker {
        id: JobId,
        pid: Pid,
    },
    /// SIGKILL to the worker (and its process group).
    KillWorker {
        id: JobId,
        pid: Pid,
        reason: KillReason,
    },
    StartConfigProcess,
    StopConfigProcess {
        pid: Pid,
    },
    KillConfigProcess {
        pid: Pid,
    },
    /// SIGHUP: poll now.
    ReloadConfigProcess {
        pid: Pid,
    },
    /// Something worth telling the operator.
    Log(LogLevel, String),
    /// Shutdown is complete: every child is gone.
    Exit(HostExit),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

#[derive(Debug)]
pub struct Farm {
    jobs: BTreeMap<JobId, JobState>,
    by_pid: HashMap<Pid, JobId>,
    deadlines: BTreeSet<(Instant, JobId)>,
    config: ConfigProcessState,
    shutting_down: Option<HostExit>,
    exited: bool,
}

impl Default for Farm {
    fn default() -> Self {
        Farm::new()
    }
}

impl Farm {
    pub fn new() -> Self {
        Farm {
            jobs: BTreeMap::new(),
            by_pid: HashMap::new(),
            deadlines: BTreeSet::new(),
            config: ConfigProcessState::new(),
            shutting_down: None,
            exited: false,
        }
    }

    pub fn jobs(&self) -> &BTreeMap<JobId, JobState> {
        &self.jobs
    }

    pub fn job(&self, id: &JobId) -> Option<&JobState> {
        self.jobs.get(id)
    }

    pub fn config_process(&self) -> &ConfigProcessState {
        &self.config
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.is_some()
    }

    /// The first actions: start the configuration process.
    pub fn start(&mut self) -> Vec<Action> {
        self.config.phase = ConfigPhase::Starting;
        vec![Action::StartConfigProcess]
    }

    /// The next moment something is due, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        let job = self.deadlines.first().map(|(at, _)| *at);
        [job, self.config.deadline()].into_iter().flatten().min()
    }

    /// True for a process the farm started (a worker or the configuration
    /// process) and has not seen exit.
    pub fn knows_pid(&self, pid: Pid) -> bool {
        self.by_pid.contains_key(&pid) || self.config.pid() == Some(pid)
    }

    /// The worker to send a user's signal to.
    pub fn signal_target(&self, id: &JobId) -> Result<Pid, Refusal> {
        let state = self.jobs.get(id).ok_or(Refusal::NoSuchJob)?;
        state.phase.pid().ok_or(Refusal::NotRunning)
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if self.exited {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match event {
            Event::Configuration(jobs) => self.apply_configuration(jobs, now, &mut actions),
            Event::ConfigProcessStarted(pid) => {
                self.config.phase = ConfigPhase::Running { pid, since: now };
                self.config.reload_pending = false;
                if self.is_shutting_down() {
                    self.stop_config_process(now, &mut actions);
                }
            }
            Event::ConfigSpawnFailed => {
                if self.is_shutting_down() {
                    self.config.phase = ConfigPhase::Stopped;
                    self.finish_shutdown_if_done(&mut actions);
                } else {
                    self.config_attempt_failed(
                        "the configuration process could not be started",
                        Duration::ZERO,
                        now,
                        &mut actions,
                    );
                }
            }
            Event::WorkerStarted { id, pid } => self.worker_started(id, pid, now, &mut actions),
            Event::WorkerSpawnFailed(id) => {
                if self.is_shutting_down() {
                    self.remove_job(&id);
                    self.finish_shutdown_if_done(&mut actions);
                } else if let Some(state) = self.jobs.get_mut(&id) {
                    let delay = state.backoff.delay_after(Duration::ZERO, state.short_run());
                    actions.push(Action::Log(
                        LogLevel::Warn,
                        format!("job {id} could not be started; trying again in {}s (backoff)", delay.as_secs()),
                    ));
                    self.set_phase(&id, Phase::Waiting { at: later(now, delay) });
                }
            }
            Event::WorkerStartDeferred(id) => {
                if matches!(self.jobs.get(&id).map(|s| &s.phase), Some(Phase::Waiting { .. })) {
                    self.set_phase(&id, Phase::Waiting { at: now });
                }
            }
            Event::ChildExited { pid, exit } => self.child_exited(pid, exit, now, &mut actions),
            Event::Tick => self.run_due(now, &mut actions),
            Event::Shutdown => self.shutdown(HostExit::Clean, now, &mut actions),
            Event::Reload => match self.config.phase {
                ConfigPhase::Running { pid, .. } => {
                    self.config.reload_pending = true;
                    actions.push(Action::ReloadConfigProcess { pid });
                }
                ConfigPhase::Waiting { .. } => self.config.phase = ConfigPhase::Waiting { at: now },
                _ => {}
            },
        }
        actions
    }

    /// A control request on one job: accepted (with what to do) or refused.
    pub fn job_command(&mut self, id: &JobId, command: JobCommand, now: Instant) -> (Result<(), Refusal>, Vec<Action>) {
        let mut actions = Vec::new();
        if self.is_shutting_down() {
            return (Err(Refusal::ShuttingDown), actions);
        }
        let Some(state) = self.jobs.get_mut(id) else { return (Err(Refusal::NoSuchJob), actions) };
        if matches!(state.phase, Phase::Stopping { then: AfterStop::Remove, .. }) {
            return (Err(Refusal::Removed), actions);
        }
        let phase = state.phase.clone();
        match command {
            JobCommand::Restart => {
                state.backoff.reset();
                state.failures.clear();
                match phase {
                    Phase::Running { pid, since } => self.stop(id, pid, since, AfterStop::Restart, now, &mut actions),
                    Phase::Stopping { pid, since, kill_at, .. } => {
                        self.set_phase(id, Phase::Stopping { pid, since, kill_at, then: AfterStop::Restart })
                    }
                    Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => {
                        self.set_phase(id, Phase::Waiting { at: now })
                    }
                }
            }
            JobCommand::Start => match phase {
                Phase::Held => {
                    state.backoff.reset();
                    self.set_phase(id, Phase::Waiting { at: now });
                }
                Phase::Stopping { pid, since, kill_at, then: AfterStop::Hold } => {
                    state.backoff.reset();
                    self.set_phase(id, Phase::Stopping { pid, since, kill_at, then: AfterStop::Restart });
                }
                _ => {}
            },
            JobCommand::Hold => match phase {
                Phase::Running { pid, since } => self.stop(id, pid, since, AfterStop::Hold, now, &mut actions),
                Phase::Stopping { pid, since, kill_at, .. } => {
                    self.set_phase(id, Phase::Stopping { pid, since, kill_at, then: AfterStop::Hold })
                }
                Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => self.set_phase(id, Phase::Held),
            },
        }
        (Ok(()), actions)
    }

    /// The one place a job's phase changes: keeps the indexes in step.
    fn set_phase(&mut self, id: &JobId, phase: Phase) {
        let Some(state) = self.jobs.get_mut(id) else { return };
        if let Some(at) = state.phase.deadline() {
            self.deadlines.remove(&(at, id.clone()));
        }
        if let Some(pid) = state.phase.pid() {
            if phase.pid() != Some(pid) {
                self.by_pid.remove(&pid);
            }
        }
        if let Some(at) = phase.deadline() {
            self.deadlines.insert((at, id.clone()));
        }
        if let Some(pid) = phase.pid() {
            self.by_pid.insert(pid, id.clone());
        }
        state.phase = phase;
    }

    fn remove_job(&mut self, id: &JobId) {
        // Clears the indexes first.
        self.set_phase(id, Phase::Held);
        self.jobs.remove(id);
    }

    fn insert_job(&mut self, job: Job, now: Instant) {
        let id = job.id.clone();
        let state = JobState::new(job, now);
        self.deadlines.insert((now, id.clone()));
        self.jobs.insert(id, state);
    }

    /// SIGTERM now, SIGKILL after the job's shutdown timeout.
    fn stop(&mut self, id: &JobId, pid: Pid, since: Instant, then: AfterStop, now: Instant, actions: &mut Vec<Action>) {
        let Some(state) = self.jobs.get(id) else { return };
        let kill_at = Some(later(now, state.shutdown_timeout()));
        self.set_phase(id, Phase::Stopping { pid, since, kill_at, then });
        actions.push(Action::StopWorker { id: id.clone(), pid });
    }

    fn apply_configuration(&mut self, jobs: Vec<Job>, now: Instant, actions: &mut Vec<Action>) {
        if self.is_shutting_down() {
            return;
        }
        self.config.loaded = true;
        self.config.failures_before_first = 0;
        let new_ids: BTreeSet<JobId> = jobs.iter().map(|j| j.id.clone()).collect();
        for job in jobs {
            let id = job.id.clone();
            let Some(state) = self.jobs.get_mut(&id) else {
                actions.push(Action::Log(LogLevel::Info, format!("job {id} added")));
                self.insert_job(job, now);
                continue;
            };
            match state.phase.clone() {
                Phase::Stopping { pid, since, kill_at, then: AfterStop::Remove } => {
                    // Removed and still stopping, now back: run the new job once the old process is gone.
                    actions.push(Action::Log(LogLevel::Info, format!("job {id} added again")));
                    state.job = job;
                    state.backoff.reset();
                    self.set_phase(&id, Phase::Stopping { pid, since, kill_at, then: AfterStop::Restart });
                }
                phase if job.mtime > state.job.mtime => {
                    actions.push(Action::Log(
                        LogLevel::Info,
                        format!("job {id} changed (mtime {} -> {}), restarting it", state.job.mtime, job.mtime),
                    ));
                    state.job = job;
                    state.backoff.reset();
                    state.failures.clear();
                    match phase {
                        Phase::Running { pid, since } => self.stop(&id, pid, since, AfterStop::Restart, now, actions),
                        Phase::Waiting { .. } | Phase::Done | Phase::Failed => {
                            self.set_phase(&id, Phase::Waiting { at: now })
                        }
                        // Held stays held; a stop already under way restarts or holds as it was asked.
                        Phase::Stopping { .. } | Phase::Held => {}
                    }
                }
                _ => {}
            }
        }
        let removed: Vec<JobId> = self.jobs.keys().filter(|id| !new_ids.contains(*id)).cloned().collect();
        for id in removed {
            let phase = self.jobs[&id].phase.clone();
            if matches!(phase, Phase::Stopping { then: AfterStop::Remove, .. }) {
                continue;
            }
            actions.push(Action::Log(
                LogLevel::Info,
                format!("job {id} removed from the configuration, stopping it for good"),
            ));
            match phase {
                Phase::Running { pid, since } => self.stop(&id, pid, since, AfterStop::Remove, now, actions),
                Phase::Stopping { pid, since, kill_at, .. } => {
                    self.set_phase(&id, Phase::Stopping { pid, since, kill_at, then: AfterStop::Remove })
                }
                Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => self.remove_job(&id),
            }
        }
    }

    fn worker_started(&mut self, id: JobId, pid: Pid, now: Instant, actions: &mut Vec<Action>) {
        let Some(state) = self.jobs.get_mut(&id) else {
            // Cannot happen (starts are applied before any other event), but
            // never leave an untracked process behind.
            actions.push(Action::Log(LogLevel::Error, format!("pid {pid} started for unknown job {id}; stopping it")));
            actions.push(Action::KillWorker { id, pid, reason: KillReason::SecondShutdown });
            return;
        };
        state.last_started_at = Some(now);
        self.set_phase(&id, Phase::Running { pid, since: now });
        if self.is_shutting_down() {
            self.stop(&id, pid, now, AfterStop::Remove, now, actions);
        }
    }

    fn child_exited(&mut self, pid: Pid, exit: ExitKind, now: Instant, actions: &mut Vec<Action>) {
        if self.config.pid() == Some(pid) {
            self.config_exited(pid, exit, now, actions);
            return;
        }
        let Some(id) = self.by_pid.get(&pid).cloned() else { return };
        let state = self.jobs.get_mut(&id).expect("the pid index only names known jobs");
        state.last_exit = Some(exit);
        let described = exit.describe(ProcessKind::Worker);
        let phase = state.phase.clone();
        match phase {
            Phase::Running { .. } if exit == ExitKind::Code(crate::exit_code::RECYCLE) => {
                // Planned: neither a crash nor a short run; no backoff.
                let state = self.jobs.get_mut(&id).expect("checked above");
                state.restarts += 1;
                state.recycles += 1;
                actions.push(Action::Log(
                    LogLevel::Info,
                    format!("job {id} (pid {pid}) recycled (a limit was reached); starting a fresh process"),
                ));
                self.set_phase(&id, Phase::Waiting { at: now });
            }
            Phase::Running { .. } if !self.restart_allowed(&id, exit, now, actions) => {}
            Phase::Running { since, .. } => {
                let state = self.jobs.get_mut(&id).expect("checked above");
                state.restarts += 1;
                let ran = now.saturating_duration_since(since);
                let delay = state.backoff.delay_after(ran, state.short_run());
                let level = if exit == ExitKind::Code(0) { LogLevel::Info } else { LogLevel::Warn };
                let when =
                    if delay.is_zero() { "now".to_string() } else { format!("in {}s (backoff)", delay.as_secs()) };
                actions.push(Action::Log(
                    level,
                    format!(
                        "job {id} (pid {pid}) exited after {:.1}s: {described}; restarting {when}",
                        ran.as_secs_f64()
                    ),
                ));
                self.set_phase(&id, Phase::Waiting { at: later(now, delay) });
            }
            Phase::Stopping { then: AfterStop::Restart, .. } => {
                if let Some(state) = self.jobs.get_mut(&id) {
                    state.restarts += 1;
                }
                actions.push(Action::Log(
                    LogLevel::Info,
                    format!("job {id} (pid {pid}) stopped: {described}; starting it again"),
                ));
                self.set_phase(&id, Phase::Waiting { at: now });
            }
            Phase::Stopping { then: AfterStop::Hold, .. } => {
                actions.push(Action::Log(LogLevel::Info, format!("job {id} (pid {pid}) stopped: {described}; held")));
                self.set_phase(&id, Phase::Held);
            }
            Phase::Stopping { then: AfterStop::Remove, .. } => {
                let why = if self.is_shutting_down() { "" } else { "; removed for good" };
                actions.push(Action::Log(LogLevel::Info, format!("job {id} (pid {pid}) stopped: {described}{why}")));
                self.remove_job(&id);
            }
            Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => {}
        }
        self.finish_shutdown_if_done(actions);
    }

    /// The restart policy and failure limit, for a process that ended on
    /// its own: true when it restarts (with backoff as usual); otherwise the
    /// job is now `Done` or `Failed` (and an essential failure ends the farm).
    fn restart_allowed(&mut self, id: &JobId, exit: ExitKind, now: Instant, actions: &mut Vec<Action>) -> bool {
        let Some(state) = self.jobs.get_mut(id) else { return false };
        let failed = exit != ExitKind::Code(0);
        let described = exit.describe(ProcessKind::Worker);
        let policy = state.job.restart_policy;
        if failed {
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
                    "job {id} failed {} times within {}s ({described}); not restarting it until `restart {id}` or a new mtime",
                    state.failures.len(),
                    state.job.failure_window_seconds
                ),
            )),
            (RestartPolicy::Never, true) => {
                Some((Phase::Failed, format!("job {id} failed ({described}) and its restartPolicy is never")))
            }
            (RestartPolicy::Never | RestartPolicy::OnFailure, false) => {
                Some((Phase::Done, format!("job {id} finished ({described}); its restartPolicy does not restart it")))
            }
            _ => None,
        };
        let Some((phase, message)) = outcome else { return true };
        let essential = state.job.essential && phase == Phase::Failed;
        let level = if phase == Phase::Failed { LogLevel::Error } else { LogLevel::Info };
        actions.push(Action::Log(level, message));
        self.set_phase(id, phase);
        if essential {
            actions.push(Action::Log(LogLevel::Error, format!("job {id} is essential: shutting the farm down")));
            self.shutdown(HostExit::EssentialJobFailed, now, actions);
        }
        false
    }

    fn config_exited(&mut self, pid: Pid, exit: ExitKind, now: Instant, actions: &mut Vec<Action>) {
        let since = match self.config.phase {
            ConfigPhase::Running { since, .. } | ConfigPhase::Stopping { since, .. } => since,
            _ => now,
        };
        if self.is_shutting_down() {
            self.config.phase = ConfigPhase::Stopped;
            self.finish_shutdown_if_done(actions);
            return;
        }
        let described = exit.describe(ProcessKind::ConfigProcess);
        let reason = if self.config.reload_pending { "; a reload was requested" } else { "" };
        let what = format!("configuration process {pid} ended ({described}){reason}");
        self.config_attempt_failed(&what, now.saturating_duration_since(since), now, actions);
    }

    /// The configuration process ended (after running for `ran`) or could
    /// not start: retry with backoff, or give up if no configuration ever
    /// loaded.
    fn config_attempt_failed(&mut self, what: &str, ran: Duration, now: Instant, actions: &mut Vec<Action>) {
        if self.config.loaded {
            let delay = self.config.backoff.delay_after(ran);
            actions.push(Action::Log(
                LogLevel::Warn,
                format!("{what}; keeping the last good configuration, restarting it in {}s", delay.as_secs()),
            ));
            self.config.phase = ConfigPhase::Waiting { at: later(now, delay) };
            return;
        }
        self.config.failures_before_first += 1;
        let attempts = self.config.failures_before_first;
        if attempts >= FIRST_CONFIGURATION_ATTEMPTS {
            actions.push(Action::Log(
                LogLevel::Error,
                format!(
                    "{what}; giving up: the configuration source failed {attempts} times and never produced a configuration (see the errors above)"
                ),
            ));
            self.config.phase = ConfigPhase::Stopped;
            self.shutdown(HostExit::ConfigNeverLoaded, now, actions);
            return;
        }
        actions.push(Action::Log(
            LogLevel::Warn,
            format!(
                "{what}; no configuration yet: attempt {attempts} of {FIRST_CONFIGURATION_ATTEMPTS} failed, trying again in {}s",
                FIRST_CONFIGURATION_RETRY.as_secs()
            ),
        ));
        self.config.phase = ConfigPhase::Waiting { at: later(now, FIRST_CONFIGURATION_RETRY) };
    }

    fn shutdown(&mut self, exit: HostExit, now: Instant, actions: &mut Vec<Action>) {
        if self.is_shutting_down() {
            actions.push(Action::Log(LogLevel::Warn, "second stop request: killing every process now".into()));
            if let ConfigPhase::Running { pid, since } | ConfigPhase::Stopping { pid, since, .. } = self.config.phase {
                self.config.phase = ConfigPhase::Stopping { pid, since, kill_at: None };
                actions.push(Action::KillConfigProcess { pid });
            }
            let stopping: Vec<(JobId, Phase)> = self
                .jobs
                .iter()
                .filter(|(_, s)| s.phase.pid().is_some())
                .map(|(id, s)| (id.clone(), s.phase.clone()))
                .collect();
            for (id, phase) in stopping {
                let (pid, since, then) = match phase {
                    Phase::Stopping { pid, since, then, .. } => (pid, since, then),
                    Phase::Running { pid, since } => (pid, since, AfterStop::Remove),
                    _ => continue,
                };
                self.set_phase(&id, Phase::Stopping { pid, since, kill_at: None, then });
                actions.push(Action::KillWorker { id, pid, reason: KillReason::SecondShutdown });
            }
            return;
        }
        self.shutting_down = Some(exit);
        actions.push(Action::Log(
            LogLevel::Info,
            "shutting down: stopping the configuration process, then every worker".into(),
        ));
        match self.config.phase {
            ConfigPhase::Waiting { .. } => self.config.phase = ConfigPhase::Stopped,
            _ => self.stop_config_process(now, actions),
        }
        let ids: Vec<JobId> = self.jobs.keys().cloned().collect();
        for id in ids {
            match self.jobs[&id].phase.clone() {
                Phase::Running { pid, since } => self.stop(&id, pid, since, AfterStop::Remove, now, actions),
                Phase::Stopping { pid, since, kill_at, .. } => {
                    self.set_phase(&id, Phase::Stopping { pid, since, kill_at, then: AfterStop::Remove })
                }
                Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => self.remove_job(&id),
            }
        }
        self.finish_shutdown_if_done(actions);
    }

    fn stop_config_process(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if let ConfigPhase::Running { pid, since } = self.config.phase {
            self.config.phase = ConfigPhase::Stopping { pid, since, kill_at: Some(later(now, CONFIG_STOP_TIMEOUT)) };
            actions.push(Action::StopConfigProcess { pid });
        }
    }

    fn finish_shutdown_if_done(&mut self, actions: &mut Vec<Action>) {
        let Some(exit) = self.shutting_down else { return };
        if self.jobs.is_empty() && self.config.is_gone() {
            self.exited = true;
            actions.push(Action::Exit(exit));
        }
    }

    /// Starts what is due (at most a batch) and escalates stops whose timeout passed.
    fn run_due(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut started = 0;
        while let Some((at, id)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            let state = &self.jobs[&id];
            match state.phase.clone() {
                Phase::Waiting { .. } => {
                    if started == START_BATCH || self.is_shutting_down() {
                        break;
                    }
                    started += 1;
                    // Out of the deadline index until the supervisor reports
                    // the fork (WorkerStarted) or its failure.
                    self.deadlines.remove(&(at, id.clone()));
                    actions.push(Action::StartWorker(id));
                }
                Phase::Stopping { pid, since, then, .. } => {
                    let reason = KillReason::StopTimeout(state.shutdown_timeout());
                    self.set_phase(&id, Phase::Stopping { pid, since, kill_at: None, then });
                    actions.push(Action::KillWorker { id, pid, reason });
                }
                Phase::Running { .. } | Phase::Held | Phase::Done | Phase::Failed => {
                    self.deadlines.remove(&(at, id));
                }
            }
        }
        match self.config.phase {
            ConfigPhase::Stopping { pid, since, kill_at: Some(at) } if at <= now => {
                self.config.phase = ConfigPhase::Stopping { pid, since, kill_at: None };
                actions.push(Action::Log(
                    LogLevel::Warn,
                    format!(
                        "configuration process {pid} did not stop within {}s of SIGTERM, sending SIGKILL",
                        CONFIG_STOP_TIMEOUT.as_secs()
                    ),
                ));
                actions.push(Action::KillConfigProcess { pid });
            }
            ConfigPhase::Waiting { at } if at <= now && !self.is_shutting_down() => {
                self.config.phase = ConfigPhase::Starting;
                actions.push(Action::StartConfigProcess);
            }
            _ => {}
        }
    }
}
