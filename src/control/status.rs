//! The `jsonstatus` document, one type shared by the server and `lrpmctl`:
//! php-lrpm's shape (`{id: {config, state}}` with `pid`, `startedAt`,
//! `restartAt`, `backoffInterval`, `lastExitStatus`), plus lrpm-host's own
//! keys in `state`. Every lrpm-host key is optional when reading, so
//! `lrpmctl` also reads php-lrpm's documents.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::farm::{ExitKind, Farm, JobState, SlotState, StatusName};

/// One job: its validated configuration (`C` is pre-serialized JSON in the
/// server, any JSON value in a client) and its process state.
#[derive(Debug, Serialize, Deserialize)]
pub struct JobStatus<C> {
    pub config: C,
    pub state: ProcessState,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessState {
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub started_at: Option<i64>,
    #[serde(default)]
    pub restart_at: Option<i64>,
    #[serde(default)]
    pub backoff_interval: Option<u64>,
    #[serde(default)]
    pub last_exit_status: Option<i64>,
    #[serde(default)]
    pub status: Option<StatusName>,
    #[serde(default)]
    pub held: Option<bool>,
    #[serde(default)]
    pub restarts: Option<u64>,
    /// Planned recycles (limits reached), also counted in `restarts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycles: Option<u64>,
    /// The recycles by reason (the metrics' `reason` labels: `max_cycles`,
    /// `max_lifetime`, `memory`, `requested`, `rolling`, `unknown`), only
    /// the reasons that happened; absent before the first recycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycles_by_reason: Option<IndexMap<String, u64>>,
    #[serde(default)]
    pub last_exit: Option<LastExit>,
    /// How many processes the job runs (`replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Completed cycles of the job's current processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycles: Option<u64>,
    /// The job's processes together, as the supervisor measured them
    /// (`cpuPercent` is the sum of the slots', so above 100 for a job using
    /// more than one CPU); null without a process.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// lrpm-host's own fields as the job runs with them: its own values,
    /// or the host-wide defaults (command-line options) where it sets none
    /// (`job::effective_settings`). The job's `config` shows only what the
    /// configuration source gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<serde_json::Map<String, serde_json::Value>>,
    /// Each slot's process; the fields above describe the job as a whole
    /// (`pid` and `startedAt` are the lowest slot's, as php-lrpm shows one process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotStatus>,
}

/// One slot of a job: its process and that process's cycle counters (from
/// the worker's shared page).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    pub slot: u32,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub status: Option<StatusName>,
    #[serde(default)]
    pub started_at: Option<i64>,
    #[serde(default)]
    pub restart_at: Option<i64>,
    #[serde(default)]
    pub backoff_interval: Option<u64>,
    #[serde(default)]
    pub restarts: Option<u64>,
    #[serde(default)]
    pub recycles: Option<u64>,
    #[serde(default)]
    pub last_exit: Option<LastExit>,
    /// Completed cycles of the current process.
    #[serde(default)]
    pub cycles: Option<u64>,
    /// How long the last completed cycle took, in milliseconds.
    #[serde(default)]
    pub last_cycle_ms: Option<f64>,
    /// How long the cycle running now has run, in milliseconds (absent between cycles).
    #[serde(default)]
    pub cycle_running_ms: Option<f64>,
    /// The Zend heap (memory_get_usage(true)) at the end of the last cycle.
    #[serde(default)]
    pub heap_bytes: Option<u64>,
    #[serde(default)]
    pub peak_heap_bytes: Option<u64>,
    /// CPU time over the process's lifetime in percent of one CPU (ps's
    /// `%CPU`), measured by the supervisor from /proc. The outer None means
    /// the document has no such key (php-lrpm, an older lrpm-host), so a
    /// client may measure it itself; `Some(None)`: no process, or it could
    /// not be read.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<Option<f64>>,
    /// User plus system CPU time of the process, in seconds: two documents
    /// give the CPU used in between.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<Option<f64>>,
    /// Resident set of the process (ps's `RSS`, in bytes).
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<Option<u64>>,
    /// How long ago the three figures above were read: 0 when read for
    /// this document; on a farm too big for the supervisor's reading
    /// budget, some come from an earlier request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_age_ms: Option<u64>,
    /// `--cluster`, a unit: the member whose claim it is (this one's name
    /// when it runs here); absent when no member holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The claim's fencing token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<i64>,
    /// Its tasks (`Lrpm\Task`), once it started one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TaskStatus>,
    /// How long since the process last showed life, in milliseconds: a
    /// cycle began or ended, or it called `Lrpm\progress()` (absent before
    /// its first cycle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_activity_ms: Option<f64>,
    /// Its last `Lrpm\progress()`, once it called it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressStatus>,
}

/// A worker's heartbeat (`Lrpm\progress()`), from its shared page.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressStatus {
    /// Calls so far.
    pub calls: u64,
    /// How long ago the last one was, in milliseconds.
    pub ago_ms: f64,
    /// What it said (at most 63 bytes; empty when it said nothing).
    pub note: String,
}

/// Who holds a unit's claim, for its slot's status.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotOwner {
    pub member: String,
    pub token: i64,
}

/// A key that is in the document, even as null, is `Some`: serde's
/// default `Option<Option<T>>` reads null as None, like a missing key.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A process's cycle counters, as the supervisor reads them from its page.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct CycleFigures {
    pub cycles: u64,
    pub last_cycle: Option<std::time::Duration>,
    pub cycle_running: Option<std::time::Duration>,
    pub heap_bytes: u64,
    pub peak_heap_bytes: u64,
    /// Since a cycle began or ended, or `Lrpm\progress()` (None before the first cycle).
    pub since_activity: Option<std::time::Duration>,
}

/// What the supervisor measured of one process: its cycle counters and
/// tasks (from its shared page) and its CPU and memory (from /proc).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PidFigures {
    pub cycles: Option<CycleFigures>,
    pub usage: Option<crate::process::Reading>,
    pub tasks: Option<TaskStatus>,
    pub progress: Option<ProgressStatus>,
}

/// A worker's tasks (`Lrpm\Task`), from its shared page: shown once it
/// started one.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    pub running: u64,
    pub started: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// The running tasks' pids (the first 32).
    #[serde(default)]
    pub pids: Vec<i32>,
}

/// How the last process ended: `{"code": 3}` or `{"signal": "SIGKILL"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LastExit {
    Code { code: i32 },
    Signal { signal: String },
}

impl std::fmt::Display for LastExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastExit::Code { code } => write!(f, "{code}"),
            LastExit::Signal { signal } => f.write_str(signal),
        }
    }
}

/// Job id (as text) to its status, in the farm's order.
pub type StatusDocument<C> = IndexMap<String, JobStatus<C>>;

/// Wall-clock seconds for a monotonic instant, relative to `now`.
fn unix_at(at: Instant, now: Instant, unix_now: f64) -> i64 {
    let unix = if at >= now {
        unix_now + at.duration_since(now).as_secs_f64()
    } else {
        unix_now - now.duration_since(at).as_secs_f64()
    };
    unix.round() as i64
}

pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

fn last_exit(exit: ExitKind) -> LastExit {
    match exit {
        ExitKind::Code(code) => LastExit::Code { code },
        ExitKind::Signal(sig) => LastExit::Signal { signal: crate::farm::exit::signal_name(sig) },
    }
}

/// `x` with at most `places` decimals, so the document carries no noise digits.
fn rounded(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

fn slot_status(slot: u32, state: &SlotState, pid_figures: PidFigures, now: Instant, unix_now: f64) -> SlotStatus {
    let running_since = state.phase.since().or(state.last_started_at);
    let ms = |d: std::time::Duration| rounded(d.as_secs_f64() * 1000.0, 3);
    let figures = pid_figures.cycles;
    let usage = pid_figures.usage;
    let tasks = pid_figures.tasks.filter(|t| t.started > 0);
    SlotStatus {
        slot,
        pid: state.phase.pid().map(i64::from),
        status: Some(state.status(now)),
        started_at: running_since.map(|t| unix_at(t, now, unix_now)),
        restart_at: state.restart_at().map(|t| unix_at(t, now, unix_now)),
        backoff_interval: Some(state.backoff.current().as_secs()),
        restarts: Some(state.restarts),
        recycles: Some(state.recycles),
        last_exit: state.last_exit.map(last_exit),
        cycles: figures.map(|f| f.cycles),
        last_cycle_ms: figures.and_then(|f| f.last_cycle).map(ms),
        cycle_running_ms: figures.and_then(|f| f.cycle_running).map(ms),
        heap_bytes: figures.map(|f| f.heap_bytes).filter(|b| *b > 0),
        peak_heap_bytes: figures.map(|f| f.peak_heap_bytes).filter(|b| *b > 0),
        cpu_percent: Some(usage.map(|r| rounded(r.usage.cpu_percent(), 2))),
        cpu_seconds: Some(usage.map(|r| rounded(r.usage.cpu_time.as_secs_f64(), 2))),
        rss_bytes: Some(usage.map(|r| r.usage.rss_bytes)),
        usage_age_ms: usage.map(|r| r.age.as_millis() as u64),
        owner: None,
        fencing_token: None,
        tasks,
        since_activity_ms: figures.and_then(|f| f.since_activity).map(ms),
        progress: pid_figures.progress,
    }
}

/// A job's state; `figures` measures one of its processes.
pub fn process_state(
    state: &JobState,
    figures: &dyn Fn(i32) -> PidFigures,
    now: Instant,
    unix_now: f64,
) -> ProcessState {
    let slots: Vec<SlotStatus> = state
        .slots
        .iter()
        .map(|(n, s)| slot_status(*n, s, s.phase.pid().map(figures).unwrap_or_default(), now, unix_now))
        .collect();
    let first = state.first_slot();
    let running_since = first.and_then(|s| s.phase.since().or(s.last_started_at));
    let cycles = slots.iter().filter_map(|s| s.cycles).reduce(|a, b| a + b);
    let cpu_percent = slots.iter().filter_map(|s| s.cpu_percent.flatten()).reduce(|a, b| a + b);
    let cpu_seconds = slots.iter().filter_map(|s| s.cpu_seconds.flatten()).reduce(|a, b| a + b);
    let rss_bytes = slots.iter().filter_map(|s| s.rss_bytes.flatten()).reduce(|a, b| a + b);
    ProcessState {
        pid: first.and_then(|s| s.phase.pid()).map(i64::from),
        started_at: running_since.map(|t| unix_at(t, now, unix_now)),
        restart_at: state.restart_at().map(|t| unix_at(t, now, unix_now)),
        backoff_interval: Some(state.slots.values().map(|s| s.backoff.current().as_secs()).max().unwrap_or(0)),
        last_exit_status: state.last_exit.map(|e| i64::from(e.as_status())),
        status: Some(state.status(now)),
        held: Some(state.held()),
        restarts: Some(state.restarts),
        recycles: Some(state.recycles),
        recycles_by_reason: (state.recycles_by_reason.total() > 0).then(|| {
            crate::farm::RecycleReason::ALL
                .into_iter()
                .map(|reason| (reason.as_str().to_string(), state.recycles_by_reason.get(reason)))
                .filter(|(_, count)| *count > 0)
                .collect()
        }),
        last_exit: state.last_exit.map(last_exit),
        replicas: Some(state.job.replicas),
        cycles,
        cpu_percent: cpu_percent.map(|p| rounded(p, 2)),
        cpu_seconds: cpu_seconds.map(|c| rounded(c, 2)),
        rss_bytes,
        settings: Some(state.job.settings.as_ref().clone()),
        slots,
    }
}

/// The whole document as JSON text. Each job's configuration was serialized
/// once when it was validated; here it is only copied.
/// `owners`: who holds each unit (`ID#SLOT`), with `--cluster`.
pub fn status_json(
    farm: &Farm,
    figures: &dyn Fn(i32) -> PidFigures,
    owners: &HashMap<String, SlotOwner>,
    now: Instant,
    unix_now: f64,
) -> String {
    let doc: StatusDocument<&RawValue> = farm
        .jobs()
        .iter()
        .map(|(id, state)| {
            let mut process = process_state(state, figures, now, unix_now);
            if !owners.is_empty() {
                for slot in &mut process.slots {
                    if let Some(owner) = owners.get(&format!("{id}#{}", slot.slot)) {
                        slot.owner = Some(owner.member.clone());
                        slot.fencing_token = Some(owner.token);
                    }
                }
            }
            (id.to_string(), JobStatus { config: state.job.config_json.get(), state: process })
        })
        .collect();
    serde_json::to_string(&doc).unwrap_or_else(|e| format!("error: cannot encode the status: {e}"))
}
