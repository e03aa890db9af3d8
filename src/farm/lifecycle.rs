//! The lifecycle of one job's process: an explicit phase, owned by the core,
//! from which the public status name is derived.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::backoff::WorkerBackoff;
use super::{ExitKind, Pid};
use crate::job::Job;

/// What happens once a stopping process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Start it again at once (new mtime, `restart ID`, `start ID`).
    Restart,
    /// Keep it stopped until `start ID` or `restart ID`.
    Hold,
    /// Forget the job (removed from the configuration, or the farm shuts down).
    Remove,
}

/// Where a job's process is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// No process; start one at `at` (at or before now: as soon as the loop
    /// gets to it, in bounded batches).
    Waiting {
        at: Instant,
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
        }
    }
}

impl Phase {
    pub fn pid(&self) -> Option<Pid> {
        match self {
            Phase::Running { pid, .. } | Phase::Stopping { pid, .. } => Some(*pid),
            Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => None,
        }
    }

    /// When the current process started.
    pub fn since(&self) -> Option<Instant> {
        match self {
            Phase::Running { since, .. } | Phase::Stopping { since, .. } => Some(*since),
            Phase::Waiting { .. } | Phase::Held | Phase::Done | Phase::Failed => None,
        }
    }

    /// The one moment this phase is waiting for, if any.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Waiting { at } => Some(*at),
            Phase::Stopping { kill_at, .. } => *kill_at,
            Phase::Running { .. } | Phase::Held | Phase::Done | Phase::Failed => None,
        }
    }

    pub fn status(&self, now: Instant) -> StatusName {
        match self {
            Phase::Waiting { at } if *at > now => StatusName::Backoff,
            Phase::Waiting { .. } => StatusName::Starting,
            Phase::Running { .. } => StatusName::Running,
            Phase::Stopping { .. } => StatusName::Stopping,
            Phase::Held => StatusName::Stopped,
            Phase::Done => StatusName::Done,
            Phase::Failed => StatusName::Failed,
        }
    }
}

/// One job as the core tracks it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    pub job: Job,
    pub phase: Phase,
    pub backoff: WorkerBackoff,
    pub last_exit: Option<ExitKind>,
    pub last_started_at: Option<Instant>,
    pub restarts: u64,
    /// Planned recycles (a limit reached), counted in `restarts` too.
    pub recycles: u64,
    /// When recent failures happened (within `failureWindowSeconds`).
    pub failures: std::collections::VecDeque<Instant>,
}

impl JobState {
    pub(super) fn new(job: Job, now: Instant) -> Self {
        JobState {
            job,
            phase: Phase::Waiting { at: now },
            backoff: WorkerBackoff::default(),
            last_exit: None,
            last_started_at: None,
            restarts: 0,
            recycles: 0,
            failures: std::collections::VecDeque::new(),
        }
    }

    pub fn status(&self, now: Instant) -> StatusName {
        self.phase.status(now)
    }

    pub fn held(&self) -> bool {
        matches!(self.phase, Phase::Held | Phase::Stopping { then: AfterStop::Hold, .. })
    }

    /// When the next process starts, if one is scheduled.
    pub fn restart_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { at } => Some(at),
            _ => None,
        }
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.job.shutdown_timeout_seconds)
    }

    pub fn short_run(&self) -> Duration {
        Duration::from_secs(self.job.short_run_time_seconds)
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
