//! The fields a job may carry: php-lrpm's, then lrpm-host's own, with
//! what a missing one means; and the nearest known field to a misspelt one.

#![forbid(unsafe_code)]

use serde_json::Value;

use super::{Placement, RestartPolicy};
use super::{
    DEFAULT_SHORT_RUN_TIME_SECONDS, DEFAULT_SHUTDOWN_TIMEOUT_SECONDS, MAX_DURATION_SECONDS, MAX_REPLICAS, MAX_TASKS,
};

pub(super) struct FieldRule {
    pub(super) name: &'static str,
    pub(super) description: &'static str,
    pub(super) presence: Presence,
    /// What a value must be; its check says what is wrong in words.
    pub(super) kind: Kind,
    /// Set for the fields a command-line option sets for every job that
    /// does not (`--max-cycles N`).
    pub(super) host_default: Option<HostDefault>,
}

/// A field the command line can give a host-wide value (`maxCycles`:
/// `--max-cycles`).
pub(super) struct HostDefault {
    /// The long option: the field's name in kebab case.
    pub(super) flag: &'static str,
    /// The option's help, after "Default `field` for jobs that do not set it".
    pub(super) help: &'static str,
    pub(super) value_name: &'static str,
    /// What a job runs with when neither it nor the command line sets the
    /// field (status's `settings`; null: the feature is off).
    pub(super) unset: fn() -> Value,
}

/// The kinds of value a field holds, each with its own check and message.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// A PHP integer from `min` to `max`; `below_min`: what to say of a
    /// value under `min` instead of the generic message.
    Integer {
        min: u64,
        max: u64,
        below_min: Option<&'static str>,
    },
    /// A PHP integer or float above 0, at most `max`.
    PositiveNumber {
        max: u64,
    },
    Text,
    Array,
    Bool,
    /// A class the configuration process checks (exists, is a worker, can
    /// be seen by workers: `DescribedJob`).
    WorkerClass,
    /// One of these words.
    Choice(fn(&str) -> bool),
    /// "USER" or "USER:GROUP".
    UserSpec,
}

const DURATION: Kind = Kind::Integer { min: 0, max: MAX_DURATION_SECONDS, below_min: None };
const DURATION_FROM_ONE: Kind = Kind::Integer { min: 1, max: MAX_DURATION_SECONDS, below_min: None };
const COUNT_FROM_ONE: Kind = Kind::Integer { min: 1, max: u64::MAX, below_min: None };

impl Kind {
    /// Whether `value` (of PHP type `php_type`) is one of this kind; if
    /// not, what is wrong, in words ("got string \"x\"", "0 is below the
    /// minimum of 1").
    pub(super) fn check(self, php_type: &str, value: &Value) -> Result<(), String> {
        let got = || format!("got {php_type} {}", short_json(value));
        match self {
            Kind::Integer { min, max, below_min } => {
                if php_type != "integer" {
                    return Err(got());
                }
                match (value.as_i64(), value.as_u64()) {
                    (Some(n), _) if n < 0 => Err(format!("{n} is negative")),
                    (_, Some(n)) if n < min => {
                        Err(below_min.map_or_else(|| format!("{n} is below the minimum of {min}"), str::to_string))
                    }
                    (_, Some(n)) if n > max && max == MAX_DURATION_SECONDS => {
                        Err(format!("{n} is above the maximum of {max} (one day)"))
                    }
                    (_, Some(n)) if n > max => Err(format!("{n} is above the maximum of {max}")),
                    (_, Some(_)) => Ok(()),
                    _ => Err(got()),
                }
            }
            Kind::PositiveNumber { max } => {
                if php_type != "integer" && php_type != "double" {
                    return Err(got());
                }
                match value.as_f64() {
                    Some(n) if n > 0.0 && n <= max as f64 => Ok(()),
                    _ => Err(format!("{} is not above 0 and at most {max}", short_json(value))),
                }
            }
            Kind::Text | Kind::WorkerClass => (php_type == "string").then_some(()).ok_or_else(got),
            Kind::Array => (php_type == "array").then_some(()).ok_or_else(got),
            Kind::Bool => (php_type == "boolean").then_some(()).ok_or_else(got),
            Kind::Choice(known) => value.as_str().filter(|word| known(word)).map(|_| ()).ok_or_else(got),
            Kind::UserSpec => (php_type == "string" && value.as_str().is_some_and(super::users::is_user_spec))
                .then_some(())
                .ok_or_else(got),
        }
    }
}

/// A value in a message: its JSON, cut at 60 characters.
pub(super) fn short_json(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// What happens when a job has no such field.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    Required,
    /// Filled in with this value (php-lrpm's defaults: `start()` sees them).
    Default(u64),
    /// lrpm-host's own fields: left out of the job when not given.
    Optional,
}

// php-lrpm's fields, order and descriptions, then lrpm-host's own.
pub(super) const FIELDS: [FieldRule; 20] = [
    FieldRule {
        name: "mtime",
        description: "Time of last modification, must be a UTC Unix timestamp integer",
        presence: Presence::Required,
        kind: Kind::Integer { min: 0, max: u64::MAX, below_min: None },
        host_default: None,
    },
    FieldRule { name: "name", description: "Descriptive job name, must be a string", presence: Presence::Required, kind: Kind::Text, host_default: None },
    FieldRule {
        name: "workerConfig",
        description: "Worker-specific configuration, must be an array",
        presence: Presence::Required,
        kind: Kind::Array,
        host_default: None,
    },
    FieldRule {
        name: "workerClass",
        description: "Worker class, must be a string referencing an existing class",
        presence: Presence::Required,
        kind: Kind::WorkerClass,
        host_default: None,
    },
    FieldRule {
        name: "shortRunTimeSeconds",
        description: "Minimum number of seconds a process is expected to run; if the process terminates earlier then this, it will be restarted with backoff",
        presence: Presence::Default(DEFAULT_SHORT_RUN_TIME_SECONDS),
        kind: DURATION,
        host_default: None,
    },
    FieldRule {
        name: "shutdownTimeoutSeconds",
        description: "Time in seconds to wait for SIGCHLD after sending SIGTERM to a child, before killing the child with SIGKILL",
        presence: Presence::Default(DEFAULT_SHUTDOWN_TIMEOUT_SECONDS),
        kind: DURATION,
        host_default: None,
    },
    FieldRule {
        name: "replicas",
        description: "How many processes run this job, each with its own slot number from 0, an integer from 1 to 10000 (default 1)",
        presence: Presence::Optional,
        kind: Kind::Integer { min: 1, max: MAX_REPLICAS, below_min: Some("0 is below 1 (to run no process, hold the job with `lrpmctl stop ID`)") },
        host_default: Some(HostDefault { flag: "replicas", help: "processes per job", value_name: "N", unset: || Value::from(1) }),
    },
    FieldRule {
        name: "cycleIntervalSeconds",
        description: "Call cycle() at most once per this many seconds (a number above 0), sleeping the rest of the interval",
        presence: Presence::Optional,
        kind: Kind::PositiveNumber { max: MAX_DURATION_SECONDS },
        host_default: Some(HostDefault { flag: "cycle-interval-seconds", help: "cycle() runs at most once per this many seconds (clock mode)", value_name: "SECONDS", unset: || Value::Null }),
    },
    FieldRule {
        name: "restartPolicy",
        description: "When an exited process is started again: \"always\" (the default), \"on-failure\" (exit 0 means done) or \"never\"",
        presence: Presence::Optional,
        kind: Kind::Choice(|word| RestartPolicy::parse(word).is_some()),
        host_default: Some(HostDefault { flag: "restart-policy", help: "always, on-failure or never", value_name: "POLICY", unset: || Value::from("always") }),
    },
    FieldRule {
        name: "maxFailures",
        description: "Failures (exits other than 0) within failureWindowSeconds after which the job is failed and not restarted, an integer from 1",
        presence: Presence::Optional,
        kind: COUNT_FROM_ONE,
        host_default: Some(HostDefault { flag: "max-failures", help: "failures within failureWindowSeconds that fail the job", value_name: "N", unset: || Value::Null }),
    },
    FieldRule {
        name: "failureWindowSeconds",
        description: "The window maxFailures counts in, an integer from 1 to 86400 (default 60)",
        presence: Presence::Optional,
        kind: DURATION_FROM_ONE,
        host_default: Some(HostDefault { flag: "failure-window-seconds", help: "the window maxFailures counts in", value_name: "SECONDS", unset: || Value::from(super::DEFAULT_FAILURE_WINDOW_SECONDS) }),
    },
    FieldRule {
        name: "maxCycles",
        description: "Recycle the worker (start a fresh process at once, no backoff) after this many cycles, an integer from 1",
        presence: Presence::Optional,
        kind: COUNT_FROM_ONE,
        host_default: Some(HostDefault { flag: "max-cycles", help: "planned recycle after this many cycles", value_name: "N", unset: || Value::Null }),
    },
    FieldRule {
        name: "maxLifetimeSeconds",
        description: "Recycle the worker after it has run this many seconds, an integer from 1",
        presence: Presence::Optional,
        kind: COUNT_FROM_ONE,
        host_default: Some(HostDefault { flag: "max-lifetime-seconds", help: "planned recycle after this many seconds", value_name: "SECONDS", unset: || Value::Null }),
    },
    FieldRule {
        name: "memoryLimitMb",
        description: "Recycle the worker once its memory (the larger of the Zend heap and the resident set) exceeds this many MB, an integer from 1",
        presence: Presence::Optional,
        kind: COUNT_FROM_ONE,
        host_default: Some(HostDefault { flag: "memory-limit-mb", help: "planned recycle above this much memory", value_name: "MB", unset: || Value::Null }),
    },
    FieldRule {
        name: "cycleTimeoutSeconds",
        description: "A cycle running longer than this many seconds is stuck: the worker is stopped (SIGTERM, then SIGKILL) and the exit counts as a failure, an integer from 1 to 86400",
        presence: Presence::Optional,
        kind: DURATION_FROM_ONE,
        host_default: Some(HostDefault { flag: "cycle-timeout-seconds", help: "a cycle running longer is stopped as stuck", value_name: "SECONDS", unset: || Value::Null }),
    },
    FieldRule {
        name: "progressTimeoutSeconds",
        description: "A running cycle silent for this many seconds (no Lrpm\\progress() call since it began or since the last call) is stuck: the worker is stopped as by cycleTimeoutSeconds, an integer from 1 to 86400",
        presence: Presence::Optional,
        kind: DURATION_FROM_ONE,
        host_default: Some(HostDefault { flag: "progress-timeout-seconds", help: "a cycle silent longer (no Lrpm\\progress()) is stopped as stuck", value_name: "SECONDS", unset: || Value::Null }),
    },
    FieldRule {
        name: "maxTasks",
        description: "How many Lrpm\\Task processes one worker may run at once, an integer from 1 to 1024 (default 16)",
        presence: Presence::Optional,
        kind: Kind::Integer { min: 1, max: MAX_TASKS, below_min: None },
        host_default: Some(HostDefault { flag: "max-tasks", help: "the Lrpm\\Task processes one worker may run at once", value_name: "N", unset: || Value::from(super::DEFAULT_MAX_TASKS) }),
    },
    FieldRule {
        name: "essential",
        description: "When true, the job failing for good shuts the whole farm down (lrpm-host exits 69), a boolean",
        presence: Presence::Optional,
        kind: Kind::Bool,
        host_default: Some(HostDefault { flag: "essential", help: "one failing for good shuts the farm down (exit 69)", value_name: "", unset: || Value::Bool(false) }),
    },
    FieldRule {
        name: "user",
        description: "The user the job's processes run as, \"USER\" or \"USER:GROUP\" (names or numeric ids); needs the host to run as root",
        presence: Presence::Optional,
        kind: Kind::UserSpec,
        host_default: None,
    },
    FieldRule {
        name: "placement",
        description: "With --cluster, where the job's slots run: \"cluster\" (the default: each slot on exactly one live member) or \"every-host\" (each member runs all of them)",
        presence: Presence::Optional,
        kind: Kind::Choice(|word| Placement::parse(word).is_some()),
        host_default: None,
    },
];

/// The fields with a host-wide default, in the table's order.
pub(super) fn host_defaults() -> impl Iterator<Item = (&'static FieldRule, &'static HostDefault)> {
    FIELDS.iter().filter_map(|rule| rule.host_default.as_ref().map(|default| (rule, default)))
}

/// `maxCycles` → `max-cycles`: what a field's option is called.
#[cfg(test)]
pub(super) fn kebab_case(name: &str) -> String {
    let mut flag = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            flag.push('-');
        }
        flag.push(c.to_ascii_lowercase());
    }
    flag
}

impl Kind {
    /// A command-line option's text as this kind's JSON value, checked as
    /// a job's value is (the same messages).
    pub(super) fn parse_option(self, text: &str) -> Result<Value, String> {
        let value = match self {
            Kind::Integer { .. } => match (text.parse::<u64>(), text.parse::<i64>()) {
                (Ok(n), _) => Value::from(n),
                (_, Ok(n)) => Value::from(n),
                _ => return Err(format!("{text:?} is not an integer")),
            },
            Kind::PositiveNumber { .. } => match text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Some(n) => Value::Number(n),
                None => return Err(format!("{text:?} is not a number")),
            },
            Kind::Bool => Value::Bool(true),
            Kind::Text | Kind::Choice(_) | Kind::UserSpec | Kind::WorkerClass => Value::from(text),
            Kind::Array => return Err("an array cannot be given on the command line".to_string()),
        };
        let php_type = super::json_php_type(&value);
        self.check(php_type, &value).map(|()| value)
    }
}

/// A misspelt field's most likely meaning: same letters ignoring case, a
/// prefix of a known field (`shutdownTimeout`), or at most two edits away.
pub(super) fn nearest_field(field: &str) -> Option<&'static str> {
    let lower = field.to_ascii_lowercase();
    FIELDS.iter().map(|rule| rule.name).find(|known| {
        let known_lower = known.to_ascii_lowercase();
        known_lower == lower
            || (lower.len() >= 4 && known_lower.starts_with(&lower))
            || edit_distance(&known_lower, &lower) <= 2
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb { previous } else { 1 + previous.min(row[j]).min(row[j + 1]) };
            previous = current;
        }
    }
    row[b.len()]
}
