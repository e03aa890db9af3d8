//! The `jsonstatus` document: php-lrpm's shape (`{id: {config, state}}`
//! with `pid`, `startedAt`, `restartAt`, `backoffInterval`,
//! `lastExitStatus`), plus lrpm-host's own keys in `state`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::farm::{ExitKind, Farm, JobState};

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

fn state_name(state: &JobState) -> &'static str {
    match &state.process {
        Some(p) if p.kill_at.is_some() => "stopping",
        Some(_) => "running",
        None if state.held => "stopped",
        None if state.restart_at.is_some() => "backoff",
        None => "exited",
    }
}

fn exit_json(exit: ExitKind) -> Value {
    match exit {
        ExitKind::Code(code) => json!({"code": code}),
        ExitKind::Signal(sig) => json!({"signal": crate::farm::exit::signal_name(sig)}),
    }
}

pub fn status_document(farm: &Farm, now: Instant, unix_now: f64) -> Value {
    let mut doc = Map::new();
    for (id, state) in farm.jobs() {
        let running_since = state.process.as_ref().map(|p| p.started_at).or(state.last_started_at);
        doc.insert(
            id.to_string(),
            json!({
                "config": state.job.config,
                "state": {
                    "pid": state.process.as_ref().map(|p| p.pid),
                    "startedAt": running_since.map(|t| unix_at(t, now, unix_now)),
                    "restartAt": state.restart_at.map(|t| unix_at(t, now, unix_now)),
                    "backoffInterval": state.backoff.current().as_secs(),
                    "lastExitStatus": state.last_exit.map(ExitKind::as_status),
                    "status": state_name(state),
                    "held": state.held,
                    "restarts": state.restarts,
                    "lastExit": state.last_exit.map(exit_json),
                },
            }),
        );
    }
    Value::Object(doc)
}
