//! The lifecycle of one job's process: an explicit phase, owned by the core,
//! from which the public status name is derived.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backoff::WorkerBackoff;
use super::{ExitKind, Pid};
use crate::job::{Job, JobId};

/// What happens once a stopping process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Start it again at once (new mtime, `restart ID`, `start ID`).
    Restart,
    /// Keep it stopped until `start ID` or `restart ID`.
    Hold,
    /// Forget the slot (removed from the configuration, fewer replicas, or
    /// the farm shuts down).
    Remove,
    /// The job failed for good (another slot reached `maxFailures`): `Failed`.
    Fail,
    /// The watchdog stopped a stuck cycle: the exit is a failure, whatever
    /// its code (restart policy, backoff, `maxFailures`).
    RestartAsFailure,
    /// A planned recycle (`recycle ID`): start again at once, counted as a recycle.
    Recycle,
    /// The unit's claim is no longer this member's (`--cluster`):
    /// `Elsewhere`, and the agent is told the unit is free.
    Release,
}

/// Where a job's process is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// No process; start one at `at` (at or before now: as soon as the loop
    /// gets to it, in bounded batches).
    Waiting {
        at: Instant,
    },
    /// A start was asked of the supervisor (a fork, or a request to the
    /// zygote) and its pid is not known yet. `stop_then`: a request that
    /// came meanwhile (`restart`, `stop`, a removal, the shutdown) wants
    /// the new process stopped as soon as its pid is known, then `then`,
    /// so that a slot never has two live processes.
    Starting {
        since: Instant,
        stop_then: Option<AfterStop>,
    },
    Running {
        pid: Pid,
        since: Instant,
    },
    /// SIGTERM was sent. `kill_at` is when SIGKILL follows, `None` once it was sent.
    Stopping {
        pid: Pid,
        since: Instant,
        kill_at: Option<Instant>,
        then: AfterStop,
    },
    /// No process, kept stopped by `stop ID`.
    Held,
    /// Ended for good by its restart policy (`on-failure` after exit 0,
    /// `never`); `restart ID` or a new mtime starts it again.
    Done,
    /// Too many failures (`maxFailures` within `failureWindowSeconds`, or a
    /// failure under `never`); `restart ID` or a new mtime starts it again.
    Failed,
    /// No process here: the slot is a unit of the cluster (`--cluster`,
    /// `placement: cluster`) that this member holds no claim for; another
    /// member runs it, or none may yet. A grant starts it.
    Elsewhere,
}

/// The status name shown by `status` and `lrpmctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusName {
    Starting,
    Running,
    Stopping,
    Backoff,
    Stopped,
    Done,
    Failed,
    Elsewhere,
}

impl StatusName {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusName::Starting => "starting",
            StatusName::Running => "running",
            StatusName::Stopping => "stopping",
            StatusName::Backoff => "backoff",
            StatusName::Stopped => "stopped",
            StatusName::Done => "done",
            StatusName::Failed => "failed",
            StatusName::Elsewhere => "elsewhere",
        }
    }
}

impl Phase {
    pub fn pid(&self) -> Option<Pid> {
        match self {
            Phase::Running { pid, .. } | Phase::Stopping { pid, .. } => Some(*pid),
            Phase::Waiting { .. }
            | Phase::Starting { .. }
            | Phase::Held
            | Phase::Done
            | Phase::Failed
            | Phase::Elsewhere => None,
        }
    }

    /// When the current process started.
    pub fn since(&self) -> Option<Instant> {
        match self {
            Phase::Running { since, .. } | Phase::Stopping { since, .. } => Some(*since),
            Phase::Waiting { .. }
            | Phase::Starting { .. }
            | Phase::Held
            | Phase::Done
            | Phase::Failed
            | Phase::Elsewhere => None,
        }
    }

    /// The one moment this phase is waiting for, if any.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Waiting { at } => Some(*at),
            Phase::Stopping { kill_at, .. } => *kill_at,
            Phase::Starting { .. }
            | Phase::Running { .. }
            | Phase::Held
            | Phase::Done
            | Phase::Failed
            | Phase::Elsewhere => None,
        }
    }

    pub fn status(&self, now: Instant) -> StatusName {
        match self {
            Phase::Waiting { at } if *at > now => StatusName::Backoff,
            Phase::Waiting { .. } | Phase::Starting { .. } => StatusName::Starting,
            Phase::Running { .. } => StatusName::Running,
            Phase::Stopping { .. } => StatusName::Stopping,
            Phase::Held => StatusName::Stopped,
            Phase::Done => StatusName::Done,
            Phase::Failed => StatusName::Failed,
            Phase::Elsewhere => StatusName::Elsewhere,
        }
    }
}

/// One process of a job: the job's id and the slot (0..replicas) it fills.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerKey {
    pub id: JobId,
    pub slot: u32,
}

impl WorkerKey {
    pub fn new(id: JobId, slot: u32) -> WorkerKey {
        WorkerKey { id, slot }
    }
}

impl std::fmt::Display for WorkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.id, self.slot)
    }
}

/// One slot of a job: its process's phase and its own backoff and counters.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotState {
    pub phase: Phase,
    pub backoff: WorkerBackoff,
    pub last_exit: Option<ExitKind>,
    pub last_started_at: Option<Instant>,
    pub restarts: u64,
    /// Planned recycles (a limit reached, `recycle ID`), counted in `restarts` too.
    pub recycles: u64,
    /// When the core next looks at this process's cycle counters (the
    /// watchdog, a rolling recycle waiting for a first cycle).
    pub(super) inspect_at: Option<Instant>,
}

impl SlotState {
    pub(super) fn new(phase: Phase) -> Self {
        SlotState {
            phase,
            backoff: WorkerBackoff::default(),
            last_exit: None,
            last_started_at: None,
            restarts: 0,
            recycles: 0,
            inspect_at: None,
        }
    }

    pub fn status(&self, now: Instant) -> StatusName {
        self.phase.status(now)
    }

    /// When the next process starts, if one is scheduled.
    pub fn restart_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { at } => Some(at),
            _ => None,
        }
    }
}

/// A rolling replacement of a job's processes (`recycle ID`): one slot at a
/// time, the next one only once the previous slot's new process has
/// completed its first cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Rolling {
    /// Slots still to replace, lowest first.
    pub remaining: std::collections::BTreeSet<u32>,
    pub current: Option<RollingStep>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RollingStep {
    /// The slot's old process was asked to stop.
    Stopping { slot: u32 },
    /// The slot's new process runs; waiting for its first completed cycle.
    FirstCycle { slot: u32, pid: Pid, since: Instant },
}

/// One job as the core tracks it: the job and its slots.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    pub job: Job,
    pub slots: BTreeMap<u32, SlotState>,
    /// Held by `stop ID` until `start ID` or `restart ID`.
    pub held: bool,
    /// Gone from the configuration (or the farm shuts down): the job is
    /// forgotten once its last slot's process is gone.
    pub removed: bool,
    /// When recent failures of any slot happened (within `failureWindowSeconds`).
    pub failures: std::collections::VecDeque<Instant>,
    pub rolling: Option<Rolling>,
    /// Totals over every slot the job ever had.
    pub restarts: u64,
    pub recycles: u64,
    /// Recycles by reason (they add up to `recycles`).
    pub recycles_by_reason: super::RecycleCounts,
    /// Every failure counted against `maxFailures`, ever (`failures` only
    /// holds the window).
    pub failures_total: u64,
    /// Cycles completed by the job's processes that have ended (the live
    /// ones' counts are in their shared pages).
    pub cycles_of_ended: u64,
    /// The tasks (`Lrpm\Task`) of the job's processes that have ended.
    pub tasks_of_ended: TaskCounts,
    pub last_exit: Option<ExitKind>,
    /// Processes the watchdog stopped as stuck, by its clock.
    pub watchdog_stops: WatchdogStops,
    /// Stops that ran out of `shutdownTimeoutSeconds`: SIGKILLed.
    pub stop_kills: u64,
}

/// The watchdog's stops of a job's processes, by what ran out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchdogStops {
    /// `cycleTimeoutSeconds`.
    pub cycle_timeout: u64,
    /// `progressTimeoutSeconds`.
    pub progress_timeout: u64,
}

/// Tasks (`Lrpm\Task`) a worker started, and how many of them failed or
/// timed out, as its shared page counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub started: u64,
    pub failed: u64,
    pub timed_out: u64,
}

impl std::ops::AddAssign for TaskCounts {
    fn add_assign(&mut self, other: TaskCounts) {
        self.started += other.started;
        self.failed += other.failed;
        self.timed_out += other.timed_out;
    }
}

impl JobState {
    pub(super) fn new(job: Job) -> Self {
        JobState {
            job,
            slots: BTreeMap::new(),
            held: false,
            removed: false,
            failures: std::collections::VecDeque::new(),
            rolling: None,
            restarts: 0,
            recycles: 0,
            recycles_by_reason: super::RecycleCounts::default(),
            failures_total: 0,
            cycles_of_ended: 0,
            tasks_of_ended: TaskCounts::default(),
            last_exit: None,
            watchdog_stops: WatchdogStops::default(),
            stop_kills: 0,
        }
    }

    /// The job's status: its slots' when they agree, otherwise the one
    /// that most needs an operator's eye.
    pub fn status(&self, now: Instant) -> StatusName {
        let mut statuses = self.slots.values().map(|s| s.status(now));
        let Some(first) = statuses.next() else { return StatusName::Stopped };
        if statuses.all(|s| s == first) {
            return first;
        }
        const ATTENTION: [StatusName; 8] = [
            StatusName::Failed,
            StatusName::Stopping,
            StatusName::Backoff,
            StatusName::Starting,
            StatusName::Running,
            StatusName::Done,
            StatusName::Stopped,
            StatusName::Elsewhere,
        ];
        let present: Vec<StatusName> = self.slots.values().map(|s| s.status(now)).collect();
        ATTENTION.into_iter().find(|s| present.contains(s)).unwrap_or(first)
    }

    pub fn held(&self) -> bool {
        self.held
    }

    /// The lowest slot, whose process php-lrpm's tools show as the job's.
    pub fn first_slot(&self) -> Option<&SlotState> {
        self.slots.values().next()
    }

    /// Processes running now, by slot.
    pub fn pids(&self) -> impl Iterator<Item = (u32, Pid)> + '_ {
        self.slots.iter().filter_map(|(slot, s)| s.phase.pid().map(|pid| (*slot, pid)))
    }

    /// When the next process starts, if one is scheduled.
    pub fn restart_at(&self) -> Option<Instant> {
        self.slots.values().filter_map(SlotState::restart_at).min()
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.job.shutdown_timeout_seconds)
    }

    pub fn short_run(&self) -> Duration {
        Duration::from_secs(self.job.short_run_time_seconds)
    }

    /// How a slot is named in logs: `job 7` for a single-process job,
    /// `job 7#2` once a job has replicas.
    pub fn label(&self, slot: u32) -> String {
        if self.job.replicas > 1 || slot > 0 {
            format!("job {}#{slot}", self.job.id)
        } else {
            format!("job {}", self.job.id)
        }
    }
}

/// `now + delay`, or a moment so far ahead that it never comes: no value in
/// a configuration may overflow the clock.
pub fn later(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay).unwrap_or_else(|| far_future(now))
}

fn far_future(now: Instant) -> Instant {
    // About 30 years: representable on every platform Instant runs on.
    let mut step = Duration::from_secs(30 * 365 * 24 * 3600);
    loop {
        if let Some(at) = now.checked_add(step) {
            return at;
        }
        step /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_follow_the_phase() {
        let now = Instant::now();
        let table = [
            (Phase::Waiting { at: now + Duration::from_secs(2) }, StatusName::Backoff),
            (Phase::Waiting { at: now }, StatusName::Starting),
            (Phase::Running { pid: 7, since: now }, StatusName::Running),
            (Phase::Stopping { pid: 7, since: now, kill_at: None, then: AfterStop::Restart }, StatusName::Stopping),
            (Phase::Held, StatusName::Stopped),
        ];
        for (phase, name) in table {
            assert_eq!(phase.status(now), name, "{phase:?}");
        }
    }

    #[test]
    fn later_never_overflows() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(later(now, Duration::from_secs(1)), now + Duration::from_secs(1));
    }
}
