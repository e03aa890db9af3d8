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
pub mod recycle;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub use config_process::{ConfigPhase, ConfigProcessState, CONFIG_STOP_TIMEOUT};
pub use exit::{ExitKind, ProcessKind};
pub use lifecycle::{AfterStop, JobState, Phase, Rolling, RollingStep, SlotState, StatusName, WorkerKey};
pub use recycle::{RecycleCounts, RecycleReason};

use crate::job::{Job, JobId, RestartPolicy};
use config_process::{FIRST_CONFIGURATION_ATTEMPTS, FIRST_CONFIGURATION_RETRY};
use lifecycle::later;

pub type Pid = i32;

/// At most this many workers are started per tick; the loop polls (serving
/// signals and the control socket) between batches.
pub const START_BATCH: usize = 32;

/// How often a rolling recycle looks for the new process's first cycle.
pub const ROLLING_INSPECT_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new configuration (valid jobs only) arrived from the config process.
    Configuration(Vec<Job>),
    ConfigProcessStarted(Pid),
    /// The configuration process could not be forked.
    ConfigSpawnFailed,
    WorkerStarted {
        key: WorkerKey,
        pid: Pid,
    },
    /// fork() failed: treated as a run of zero seconds.
    WorkerSpawnFailed(WorkerKey),
    /// The supervisor used its forking time for this turn: start it in a
    /// later turn, after the loop has polled again.
    WorkerStartDeferred(WorkerKey),
    /// What a worker's shared page says, read for `Action::InspectCycles`
    /// (`None`: the worker has no page).
    CycleProgress {
        key: WorkerKey,
        pid: Pid,
        progress: Option<CycleProgress>,
    },
    /// A child was reaped (worker or config process). `recycle` is the
    /// reason a worker wrote into its shared page before exiting 75;
    /// `cycles` the cycles it completed (from its page; 0 without one).
    ChildExited {
        pid: Pid,
        exit: ExitKind,
        recycle: Option<RecycleReason>,
        cycles: u64,
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

/// A worker's cycle counters, as its shared page shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleProgress {
    /// Completed cycles.
    pub cycles: u64,
    /// How long the cycle running now has run (None between cycles).
    pub current_cycle: Option<Duration>,
}

/// A control request on one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobCommand {
    /// `restart ID`: reset the backoff and (re)start every slot at once.
    Restart,
    /// `stop ID`: stop and hold until started again.
    Hold,
    /// `start ID`: release a held job.
    Start,
    /// `recycle ID`: replace the running processes one slot at a time.
    Recycle,
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
    StartWorker(WorkerKey),
    /// SIGTERM to the worker (and its process group).
    StopWorker {
        key: WorkerKey,
        pid: Pid,
    },
    /// SIGKILL to the worker (and its process group).
    KillWorker {
        key: WorkerKey,
        pid: Pid,
        reason: KillReason,
    },
    /// Read the worker's shared page and answer with `Event::CycleProgress`.
    InspectCycles {
        key: WorkerKey,
        pid: Pid,
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
    Log(LogEvent),
    /// Shutdown is complete: every child is gone.
    Exit(HostExit),
}

/// A log line, and the process it is about (for structured logs).
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    pub level: LogLevel,
    pub message: String,
    /// The job (and slot, and process) the line is about, if any.
    pub job: Option<JobId>,
    pub slot: Option<u32>,
    pub pid: Option<Pid>,
}

impl Action {
    fn log(level: LogLevel, message: String) -> Action {
        Action::Log(LogEvent { level, message, job: None, slot: None, pid: None })
    }

    /// A line about a job as a whole.
    fn log_job(level: LogLevel, id: &JobId, message: String) -> Action {
        Action::Log(LogEvent { level, message, job: Some(id.clone()), slot: None, pid: None })
    }

    /// A line about one slot's process.
    fn log_about(level: LogLevel, key: &WorkerKey, pid: Option<Pid>, message: String) -> Action {
        Action::Log(LogEvent { level, message, job: Some(key.id.clone()), slot: Some(key.slot), pid })
    }
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
    by_pid: HashMap<Pid, WorkerKey>,
    /// Phase deadlines: starts due, SIGKILLs due.
    deadlines: BTreeSet<(Instant, WorkerKey)>,
    /// Cycle inspections due (watchdog, rolling recycles).
    inspections: BTreeSet<(Instant, WorkerKey)>,
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
            inspections: BTreeSet::new(),
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

    pub fn slot(&self, key: &WorkerKey) -> Option<&SlotState> {
        self.jobs.get(&key.id)?.slots.get(&key.slot)
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
        let inspection = self.inspections.first().map(|(at, _)| *at);
        [job, inspection, self.config.deadline()].into_iter().flatten().min()
    }

    /// True for a process the farm started (a worker or the configuration
    /// process) and has not seen exit.
    pub fn knows_pid(&self, pid: Pid) -> bool {
        self.by_pid.contains_key(&pid) || self.config.pid() == Some(pid)
    }

    /// The job's running processes, to send a user's signal to.
    pub fn signal_targets(&self, id: &JobId) -> Result<Vec<(u32, Pid)>, Refusal> {
        let state = self.jobs.get(id).ok_or(Refusal::NoSuchJob)?;
        let pids: Vec<(u32, Pid)> = state.pids().collect();
        if pids.is_empty() {
            return Err(Refusal::NotRunning);
        }
        Ok(pids)
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
            Event::WorkerStarted { key, pid } => self.worker_started(key, pid, now, &mut actions),
            Event::WorkerSpawnFailed(key) => self.worker_spawn_failed(&key, now, &mut actions),
            Event::WorkerStartDeferred(key) => {
                if matches!(self.slot(&key).map(|s| &s.phase), Some(Phase::Waiting { .. })) {
                    self.set_phase(&key, Phase::Waiting { at: now });
                }
            }
            Event::CycleProgress { key, pid, progress } => self.cycle_progress(&key, pid, progress, now, &mut actions),
            Event::ChildExited { pid, exit, recycle, cycles } => {
                self.child_exited(pid, exit, recycle, cycles, now, &mut actions)
            }
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

    /// Takes over a job whose processes were started by the previous image
    /// of this host (`lrpmctl upgrade`): its slots' processes run as they
    /// are (`running`: slot, pid, how long it has run, restarts, recycles);
    /// the other slots start. The configuration counts as loaded.
    pub fn adopt(&mut self, job: Job, held: bool, running: &[(u32, Pid, Duration, u64, u64)], now: Instant) {
        self.config.loaded = true;
        let id = job.id.clone();
        let replicas = job.replicas;
        let mut state = JobState::new(job);
        state.held = held;
        self.jobs.insert(id.clone(), state);
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
                self.add_slot(&key, if held { Phase::Held } else { Phase::Waiting { at: now } });
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
                        Phase::Stopping { then: AfterStop::Remove, .. } => {}
                        Phase::Stopping { pid, since, kill_at, .. } => {
                            self.set_phase(&key, Phase::Stopping { pid, since, kill_at, then: AfterStop::Hold })
                        }
                        Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => {
                            self.set_phase(&key, Phase::Held)
                        }
                    }
                }
                Ok(())
            }
            JobCommand::Recycle => self.start_rolling(id, now, &mut actions),
        };
        (outcome, actions)
    }

    fn slot_keys(&self, id: &JobId) -> Vec<WorkerKey> {
        self.jobs
            .get(id)
            .map(|s| s.slots.keys().map(|slot| WorkerKey::new(id.clone(), *slot)).collect())
            .unwrap_or_default()
    }

    fn slot_mut(&mut self, key: &WorkerKey) -> Option<&mut SlotState> {
        self.jobs.get_mut(&key.id)?.slots.get_mut(&key.slot)
    }

    fn label(&self, key: &WorkerKey) -> String {
        match self.jobs.get(&key.id) {
            Some(state) => state.label(key.slot),
            None => format!("job {key}"),
        }
    }

    /// `restart ID` and a new mtime, for one slot: a running process is
    /// stopped and started again (`then`), a waiting, done or failed slot
    /// starts at once; a held slot stays held.
    fn restart_slot(&mut self, key: &WorkerKey, then: AfterStop, now: Instant, actions: &mut Vec<Action>) {
        let held = self.jobs.get(&key.id).is_some_and(|s| s.held);
        let Some(slot) = self.slot_mut(key) else { return };
        slot.backoff.reset();
        match slot.phase.clone() {
            Phase::Running { pid, since } => self.stop(key, pid, since, then, now, actions),
            // A slot being scaled away (or kept held) stays so.
            Phase::Stopping { then: AfterStop::Remove, .. } => {}
            Phase::Stopping { then: AfterStop::Hold, .. } if held => {}
            Phase::Stopping { pid, since, kill_at, .. } => {
                self.set_phase(key, Phase::Stopping { pid, since, kill_at, then })
            }
            Phase::Held if held => {}
            Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => {
                self.set_phase(key, Phase::Waiting { at: now })
            }
        }
    }

    /// The one place a slot's phase changes: keeps the indexes in step.
    fn set_phase(&mut self, key: &WorkerKey, phase: Phase) {
        let Some(slot) = self.jobs.get_mut(&key.id).and_then(|s| s.slots.get_mut(&key.slot)) else { return };
        if let Some(at) = slot.phase.deadline() {
            self.deadlines.remove(&(at, key.clone()));
        }
        if let Some(pid) = slot.phase.pid() {
            if phase.pid() != Some(pid) {
                self.by_pid.remove(&pid);
                // Inspections are for one process.
                if let Some(at) = slot.inspect_at.take() {
                    self.inspections.remove(&(at, key.clone()));
                }
            }
        }
        if let Some(at) = phase.deadline() {
            self.deadlines.insert((at, key.clone()));
        }
        if let Some(pid) = phase.pid() {
            self.by_pid.insert(pid, key.clone());
        }
        slot.phase = phase;
    }

    /// Schedules the next look at a running process's cycle counters.
    fn inspect_at(&mut self, key: &WorkerKey, at: Instant) {
        let Some(slot) = self.jobs.get_mut(&key.id).and_then(|s| s.slots.get_mut(&key.slot)) else { return };
        if let Some(previous) = slot.inspect_at.take() {
            self.inspections.remove(&(previous, key.clone()));
        }
        slot.inspect_at = Some(at);
        self.inspections.insert((at, key.clone()));
    }

    fn add_slot(&mut self, key: &WorkerKey, phase: Phase) {
        let Some(state) = self.jobs.get_mut(&key.id) else { return };
        state.slots.entry(key.slot).or_insert_with(|| SlotState::new(Phase::Held));
        self.set_phase(key, phase);
    }

    /// Forgets a slot whose process is gone; the job too once it is removed
    /// and has no slot left.
    fn remove_slot(&mut self, key: &WorkerKey) {
        // Clears the indexes first.
        self.set_phase(key, Phase::Held);
        let Some(state) = self.jobs.get_mut(&key.id) else { return };
        state.slots.remove(&key.slot);
        if state.removed && state.slots.is_empty() {
            self.jobs.remove(&key.id);
        }
    }

    fn insert_job(&mut self, job: Job, now: Instant) {
        let id = job.id.clone();
        let replicas = job.replicas;
        self.jobs.insert(id.clone(), JobState::new(job));
        for slot in 0..replicas {
            self.add_slot(&WorkerKey::new(id.clone(), slot), Phase::Waiting { at: now });
        }
    }

    /// SIGTERM now, SIGKILL after the job's shutdown timeout.
    fn stop(
        &mut self,
        key: &WorkerKey,
        pid: Pid,
        since: Instant,
        then: AfterStop,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(state) = self.jobs.get(&key.id) else { return };
        let kill_at = Some(later(now, state.shutdown_timeout()));
        self.set_phase(key, Phase::Stopping { pid, since, kill_at, then });
        actions.push(Action::StopWorker { key: key.clone(), pid });
    }

    /// Makes the job's slots match its `replicas`: slots above it stop
    /// (and are forgotten), missing ones start; the others are untouched.
    fn scale(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) {
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
                (true, _) => self.remove_slot(&key),
                // Scaled down and up again before the process was gone.
                (false, Phase::Stopping { pid, since, kill_at, then: AfterStop::Remove }) => {
                    let then = if held { AfterStop::Hold } else { AfterStop::Restart };
                    self.set_phase(&key, Phase::Stopping { pid, since, kill_at, then })
                }
                (false, _) => {}
            }
        }
        for slot in 0..replicas {
            let key = WorkerKey::new(id.clone(), slot);
            if self.slot(&key).is_none() {
                self.add_slot(&key, if held { Phase::Held } else { Phase::Waiting { at: now } });
            }
        }
    }

    fn apply_configuration(&mut self, jobs: Vec<Job>, now: Instant, actions: &mut Vec<Action>) {
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
    fn remove_job(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) {
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
                Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => self.remove_slot(&key),
            }
        }
    }

    fn worker_spawn_failed(&mut self, key: &WorkerKey, now: Instant, actions: &mut Vec<Action>) {
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

    fn worker_started(&mut self, key: WorkerKey, pid: Pid, now: Instant, actions: &mut Vec<Action>) {
        let Some(slot) = self.slot_mut(&key) else {
            // Cannot happen (starts are applied before any other event), but
            // never leave an untracked process behind.
            actions.push(Action::log(LogLevel::Error, format!("pid {pid} started for unknown job {key}; stopping it")));
            actions.push(Action::KillWorker { key, pid, reason: KillReason::SecondShutdown });
            return;
        };
        slot.last_started_at = Some(now);
        self.set_phase(&key, Phase::Running { pid, since: now });
        if self.is_shutting_down() {
            self.stop(&key, pid, now, AfterStop::Remove, now, actions);
            return;
        }
        let state = &self.jobs[&key.id];
        let mut first_look = state.job.cycle_timeout_seconds.map(|t| later(now, Duration::from_secs(t)));
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

    /// The watchdog and rolling recycles look at a process's cycle counters.
    fn cycle_progress(
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
        if let Some(timeout) = state.job.cycle_timeout_seconds.map(Duration::from_secs) {
            let running_for = progress.and_then(|p| p.current_cycle);
            match running_for {
                Some(ran) if ran >= timeout => {
                    let label = state.label(key.slot);
                    let grace = state.job.shutdown_timeout_seconds;
                    actions.push(Action::log_about(
                        LogLevel::Warn, key, Some(pid),
                        format!(
                            "{label} (pid {pid}): cycle {} has been running for {:.1}s, longer than cycleTimeoutSeconds {}: \
                             stopping it as stuck (SIGTERM now, SIGKILL after {grace}s); this counts as a failure",
                            progress.map_or(0, |p| p.cycles + 1),
                            ran.as_secs_f64(),
                            timeout.as_secs()
                        ),
                    ));
                    self.stop(key, pid, since, AfterStop::RestartAsFailure, now, actions);
                    self.rolling_slot_lost(key, "its new process was stopped by the watchdog", actions);
                    return;
                }
                Some(ran) => next = Some(later(now, timeout - ran)),
                None => next = Some(later(now, timeout)),
            }
        }
        let shutdown_timeout = state.shutdown_timeout();
        let label = state.label(key.slot);
        if let Some(rolling) = self.jobs.get_mut(&key.id).and_then(|s| s.rolling.as_mut()) {
            if let Some(RollingStep::FirstCycle { slot, pid: new_pid, since }) = rolling.current {
                if slot == key.slot && new_pid == pid {
                    let cycled = progress.map_or(true, |p| p.cycles >= 1);
                    let slow = now.saturating_duration_since(since) >= shutdown_timeout;
                    if cycled || slow {
                        if !cycled {
                            actions.push(Action::log_about(
                                LogLevel::Info,
                                key,
                                Some(pid),
                                format!(
                                    "{label}: its new process (pid {pid}) has not completed a cycle within {}s; \
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
    fn start_rolling(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) -> Result<(), Refusal> {
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
    fn advance_rolling(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) {
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
    fn rolling_slot_lost(&mut self, key: &WorkerKey, why: &str, actions: &mut Vec<Action>) {
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

    fn count_restart(&mut self, key: &WorkerKey, recycle: Option<RecycleReason>) {
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

    fn child_exited(
        &mut self,
        pid: Pid,
        exit: ExitKind,
        recycle: Option<RecycleReason>,
        cycles: u64,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        if self.config.pid() == Some(pid) {
            self.config_exited(pid, exit, now, actions);
            return;
        }
        let Some(key) = self.by_pid.get(&pid).cloned() else { return };
        let label = self.label(&key);
        let state = self.jobs.get_mut(&key.id).expect("the pid index only names known jobs");
        state.last_exit = Some(exit);
        state.cycles_of_ended += cycles;
        let slot = state.slots.get_mut(&key.slot).expect("the pid index only names known slots");
        slot.last_exit = Some(exit);
        let described = exit.describe(ProcessKind::Worker);
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
            Phase::Running { since, .. } => self.ended_on_its_own(&key, pid, since, exit, false, now, actions),
            Phase::Stopping { since, then: AfterStop::RestartAsFailure, .. } => {
                self.ended_on_its_own(&key, pid, since, exit, true, now, actions)
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
                rolling_goes_on |= matches!(
                    self.jobs.get(&key.id).and_then(|s| s.rolling.as_ref()).and_then(|r| r.current),
                    Some(RollingStep::Stopping { slot }) if slot == key.slot
                );
            }
            Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => {}
        }
        if rolling_goes_on {
            if let Some(rolling) = self.jobs.get_mut(&key.id).and_then(|s| s.rolling.as_mut()) {
                rolling.current = None;
            }
            self.advance_rolling(&key.id, now, actions);
        }
        self.finish_shutdown_if_done(actions);
    }

    /// A process ended without being asked to (or was stopped by the
    /// watchdog, `failed` forced): restart with backoff, or not, by the
    /// restart policy and the failure limit.
    #[allow(clippy::too_many_arguments)]
    fn ended_on_its_own(
        &mut self,
        key: &WorkerKey,
        pid: Pid,
        since: Instant,
        exit: ExitKind,
        watchdog: bool,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        if !self.restart_allowed(key, exit, watchdog, now, actions) {
            return;
        }
        self.count_restart(key, None);
        let label = self.label(key);
        let Some(state) = self.jobs.get(&key.id) else { return };
        let short_run = state.short_run();
        let Some(slot) = self.slot_mut(key) else { return };
        let ran = now.saturating_duration_since(since);
        let delay = if watchdog {
            slot.backoff.delay_after(Duration::ZERO, short_run)
        } else {
            slot.backoff.delay_after(ran, short_run)
        };
        let level = if exit == ExitKind::Code(0) && !watchdog { LogLevel::Info } else { LogLevel::Warn };
        let when = if delay.is_zero() { "now".to_string() } else { format!("in {}s (backoff)", delay.as_secs()) };
        let described = exit.describe(ProcessKind::Worker);
        let how = if watchdog { "stopped by the watchdog" } else { "exited" };
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
    fn restart_allowed(
        &mut self,
        key: &WorkerKey,
        exit: ExitKind,
        forced_failure: bool,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> bool {
        let label = self.label(key);
        let id = &key.id;
        let Some(state) = self.jobs.get_mut(id) else { return false };
        let failed = forced_failure || exit != ExitKind::Code(0);
        let described = exit.describe(ProcessKind::Worker);
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
    fn fail_other_slots(&mut self, id: &JobId, now: Instant, actions: &mut Vec<Action>) {
        if let Some(state) = self.jobs.get_mut(id) {
            state.rolling = None;
        }
        for key in self.slot_keys(id) {
            let Some(slot) = self.slot(&key) else { continue };
            match slot.phase.clone() {
                Phase::Running { pid, since } => self.stop(&key, pid, since, AfterStop::Fail, now, actions),
                Phase::Stopping { then: AfterStop::Remove | AfterStop::Hold, .. } => {}
                Phase::Stopping { pid, since, kill_at, .. } => {
                    self.set_phase(&key, Phase::Stopping { pid, since, kill_at, then: AfterStop::Fail })
                }
                Phase::Waiting { .. } => self.set_phase(&key, Phase::Failed),
                Phase::Held | Phase::Done | Phase::Failed => {}
            }
        }
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

    fn shutdown(&mut self, exit: HostExit, now: Instant, actions: &mut Vec<Action>) {
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

    /// Starts what is due (at most a batch), escalates stops whose timeout
    /// passed, and asks for the cycle inspections that are due.
    fn run_due(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let mut started = 0;
        while let Some((at, key)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            let Some(slot) = self.slot(&key) else {
                self.deadlines.remove(&(at, key));
                continue;
            };
            match slot.phase.clone() {
                Phase::Waiting { .. } => {
                    if started == START_BATCH || self.is_shutting_down() {
                        break;
                    }
                    started += 1;
                    // Out of the deadline index until the supervisor reports
                    // the fork (WorkerStarted) or its failure.
                    self.deadlines.remove(&(at, key.clone()));
                    actions.push(Action::StartWorker(key));
                }
                Phase::Stopping { pid, since, then, .. } => {
                    let reason = KillReason::StopTimeout(self.jobs[&key.id].shutdown_timeout());
                    self.set_phase(&key, Phase::Stopping { pid, since, kill_at: None, then });
                    actions.push(Action::KillWorker { key, pid, reason });
                }
                Phase::Running { .. } | Phase::Held | Phase::Done | Phase::Failed => {
                    self.deadlines.remove(&(at, key));
                }
            }
        }
        while let Some((at, key)) = self.inspections.first().cloned() {
            if at > now {
                break;
            }
            self.inspections.remove(&(at, key.clone()));
            let Some(slot) = self.jobs.get_mut(&key.id).and_then(|s| s.slots.get_mut(&key.slot)) else { continue };
            slot.inspect_at = None;
            if let Phase::Running { pid, .. } = slot.phase {
                actions.push(Action::InspectCycles { key, pid });
            }
        }
        match self.config.phase {
            ConfigPhase::Stopping { pid, since, kill_at: Some(at) } if at <= now => {
                self.config.phase = ConfigPhase::Stopping { pid, since, kill_at: None };
                actions.push(Action::log(
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

/// "job 7 added" (with its process count when it has replicas).
fn added_message(job: &Job, what: &str) -> String {
    if job.replicas > 1 {
        format!("job {} {what} ({} replicas)", job.id, job.replicas)
    } else {
        format!("job {} {what}", job.id)
    }
}

/// True when two versions of a job differ only in `replicas` (and
/// `mtime`): the change adds or stops processes without restarting the others.
fn same_but_replicas(old: &Job, new: &Job) -> bool {
    if old.replicas == new.replicas {
        return false;
    }
    let without = |job: &Job| {
        let mut config = (*job.config).clone();
        config.remove("replicas");
        config.remove("mtime");
        config
    };
    without(old) == without(new)
}
