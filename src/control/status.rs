//! The `jsonstatus` document, one type shared by the server and `lrpmctl`:
//! php-lrpm's shape (`{id: {config, state}}` with `pid`, `startedAt`,
//! `restartAt`, `backoffInterval`, `lastExitStatus`), plus lrpm-host's own
//! keys in `state`. Every lrpm-host key is optional when reading, so
//! `lrpmctl` also reads php-lrpm's documents.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::farm::{ExitKind, Farm, JobState, StatusName};

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
    #[serde(default)]
    pub last_exit: Option<LastExit>,
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

pub fn process_state(state: &JobState, now: Instant, unix_now: f64) -> ProcessState {
    let running_since = state.phase.since().or(state.last_started_at);
    ProcessState {
        pid: state.phase.pid().map(i64::from),
        started_at: running_since.map(|t| unix_at(t, now, unix_now)),
        restart_at: state.restart_at().map(|t| unix_at(t, now, unix_now)),
        backoff_interval: Some(state.backoff.current().as_secs()),
        last_exit_status: state.last_exit.map(|e| i64::from(e.as_status())),
        status: Some(state.status(now)),
        held: Some(state.held()),
        restarts: Some(state.restarts),
        recycles: Some(state.recycles),
        last_exit: state.last_exit.map(last_exit),
    }
}

/// The whole document as JSON text. Each job's configuration was serialized
/// once when it was validated; here it is only copied.
pub fn status_json(farm: &Farm, now: Instant, unix_now: f64) -> String {
    let doc: StatusDocument<&RawValue> = farm
        .jobs()
        .iter()
        .map(|(id, state)| {
            (
                id.to_string(),
                JobStatus { config: state.job.config_json.get(), state: process_state(state, now, unix_now) },
            )
        })
        .collect();
    serde_json::to_string(&doc).unwrap_or_else(|e| format!("error: cannot encode the status: {e}"))
}
