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
mod cluster;
mod commands;
pub mod config_process;
mod diff;
pub mod exit;
mod exits;
pub mod lifecycle;
pub mod recycle;
mod rolling;
mod shutdown;
#[cfg(test)]
mod tests;
pub mod zygote;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

pub use commands::{FarmHandoff, JobHandoff, KilledAtHandoff, RunningAtHandoff};
pub use config_process::{ConfigPhase, ConfigProcessState, CONFIG_STOP_TIMEOUT};
pub use exit::{End, ExitKind, PhpEnd, ProcessKind};
pub use lifecycle::{
    AfterStop, JobState, Phase, Rolling, RollingStep, SlotState, StatusName, TaskCounts, WatchdogStops, WorkerKey,
};
pub use recycle::{RecycleCounts, RecycleReason};

use crate::job::{Job, JobId, Placement, RestartPolicy};
use config_process::{FIRST_CONFIGURATION_ATTEMPTS, FIRST_CONFIGURATION_RETRY};
use lifecycle::later;

pub type Pid = i32;

/// At most this many workers are started per tick; the loop polls (serving
/// signals and the control socket) between batches.
pub const START_BATCH: usize = 32;

/// At most this many stop deadlines escalate per tick: the supervisor looks
/// at each process before it kills it (one has often just ended), and the
/// loop polls between batches, as for starts.
pub const KILL_BATCH: usize = 256;

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
    /// `cycles` the cycles it completed (from its page; 0 without one);
    /// `php` whether its page saw its PHP request end.
    ChildExited {
        pid: Pid,
        exit: ExitKind,
        recycle: Option<RecycleReason>,
        cycles: u64,
        /// Its tasks (`Lrpm\Task`), from its page.
        tasks: TaskCounts,
        php: PhpEnd,
    },
    /// Fed just before `ChildExited` for a worker whose shared page says a
    /// stop signal (SIGTERM, SIGINT) reached it, whoever sent it: its clean
    /// exit is a stop, not a run that ended on its own (no backoff).
    StopSignalled {
        pid: Pid,
    },
    /// Deadlines may have passed: start what is due (a batch at most) and
    /// escalate stops. Fed once per loop turn, after every other event, so
    /// exits already collected are always processed before a deadline.
    Tick,
    /// SIGTERM/SIGINT or the control command `stop`; a second one escalates.
    Shutdown,
    /// SIGHUP or `reload`: poll the configuration source now.
    Reload,
    /// `--cluster`: the agent claimed the unit `key` for this member;
    /// `token` is the claim's fencing token.
    UnitGranted {
        key: WorkerKey,
        token: i64,
    },
    /// `--cluster`: the unit is no longer this member's. Its process is
    /// stopped, and SIGKILLed at `kill_by` at the latest (when another
    /// member may start it).
    UnitRevoked {
        key: WorkerKey,
        kill_by: Option<Instant>,
    },
    /// `--cluster`: the member lost its lease (or is about to): every unit
    /// it holds is revoked.
    AllUnitsRevoked {
        kill_by: Option<Instant>,
    },
}

/// A worker's cycle counters, as its shared page shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleProgress {
    /// Completed cycles.
    pub cycles: u64,
    /// How long the cycle running now has run (None between cycles).
    pub current_cycle: Option<Duration>,
    /// How long the running cycle has been silent: since its start or its
    /// last `Lrpm\progress()`, whichever is later (None between cycles).
    pub silent_for: Option<Duration>,
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
    /// Ask the worker for its PHP stack and log it (the watchdog, before
    /// its SIGTERM); nothing if the worker cannot answer.
    LogBacktrace {
        key: WorkerKey,
        pid: Pid,
        /// The log line's subject: who is stopped, and why.
        why: String,
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
    /// `--cluster`: the unit's process is gone (or never was): its claim
    /// can go to another member.
    ReleaseUnit(WorkerKey),
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
    /// Workers a stop signal reached (`Event::StopSignalled`), until their exit.
    stop_signalled: HashSet<Pid>,
    /// `--cluster`: the units this member holds.
    cluster: Option<cluster::ClusterUnits>,
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
            stop_signalled: HashSet::new(),
            cluster: None,
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
            Event::WorkerStartDeferred(key) => self.worker_start_deferred(&key, now, &mut actions),
            Event::CycleProgress { key, pid, progress } => self.cycle_progress(&key, pid, progress, now, &mut actions),
            Event::ChildExited { pid, exit, recycle, cycles, tasks, php } => {
                self.child_exited(pid, End { exit, php }, recycle, (cycles, tasks), now, &mut actions)
            }
            Event::StopSignalled { pid } => {
                self.stop_signalled.insert(pid);
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
            Event::UnitGranted { key, token } => self.unit_granted(key, token, now, &mut actions),
            Event::UnitRevoked { key, kill_by } => self.unit_revoked(&key, kill_by, now, &mut actions),
            Event::AllUnitsRevoked { kill_by } => {
                let owned: Vec<WorkerKey> = self.owned_units();
                for key in owned {
                    self.unit_revoked(&key, kill_by, now, &mut actions);
                }
            }
        }
        self.release_removed_units(&mut actions);
        actions
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
        self.units_changed(key);
    }

    /// Forgets a slot whose process is gone; the job too once it is removed
    /// and has no slot left.
    fn remove_slot(&mut self, key: &WorkerKey) {
        // Clears the indexes first.
        self.set_phase(key, Phase::Held);
        self.units_changed(key);
        self.unit_slot_removed(key);
        let Some(state) = self.jobs.get_mut(&key.id) else { return };
        state.slots.remove(&key.slot);
        if state.removed && state.slots.is_empty() {
            self.jobs.remove(&key.id);
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

    /// Starts what is due (at most a batch), escalates stops whose timeout
    /// passed, and asks for the cycle inspections that are due.
    fn run_due(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let (mut started, mut killed) = (0, 0);
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
                    // Tracked from the request on, until the supervisor reports
                    // the fork (WorkerStarted), its failure, or a deferral.
                    self.set_phase(&key, Phase::Starting { since: now, stop_then: None });
                    actions.push(Action::StartWorker(key));
                }
                Phase::Stopping { pid, since, then, .. } => {
                    if killed == KILL_BATCH {
                        break;
                    }
                    killed += 1;
                    let reason = KillReason::StopTimeout(self.jobs[&key.id].shutdown_timeout());
                    if let Some(state) = self.jobs.get_mut(&key.id) {
                        state.stop_kills += 1;
                    }
                    self.set_phase(&key, Phase::Stopping { pid, since, kill_at: None, then });
                    actions.push(Action::KillWorker { key, pid, reason });
                }
                Phase::Starting { .. }
                | Phase::Running { .. }
                | Phase::Held
                | Phase::Done
                | Phase::Failed
                | Phase::Elsewhere => {
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
