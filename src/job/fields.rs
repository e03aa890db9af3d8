//! The fields a job may carry: php-lrpm's, then lrpm-host's own, with
//! what a missing one means; and the nearest known field to a misspelt one.

#![forbid(unsafe_code)]

use super::{DEFAULT_SHORT_RUN_TIME_SECONDS, DEFAULT_SHUTDOWN_TIMEOUT_SECONDS};

pub(super) struct FieldRule {
    pub(super) name: &'static str,
    pub(super) description: &'static str,
    pub(super) presence: Presence,
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
pub(super) const FIELDS: [FieldRule; 18] = [
    FieldRule {
        name: "mtime",
        description: "Time of last modification, must be a UTC Unix timestamp integer",
        presence: Presence::Required,
    },
    FieldRule { name: "name", description: "Descriptive job name, must be a string", presence: Presence::Required },
    FieldRule {
        name: "workerConfig",
        description: "Worker-specific configuration, must be an array",
        presence: Presence::Required,
    },
    FieldRule {
        name: "workerClass",
        description: "Worker class, must be a string referencing an existing class",
        presence: Presence::Required,
    },
    FieldRule {
        name: "shortRunTimeSeconds",
        description: "Minimum number of seconds a process is expected to run; if the process terminates earlier then this, it will be restarted with backoff",
        presence: Presence::Default(DEFAULT_SHORT_RUN_TIME_SECONDS),
    },
    FieldRule {
        name: "shutdownTimeoutSeconds",
        description: "Time in seconds to wait for SIGCHLD after sending SIGTERM to a child, before killing the child with SIGKILL",
        presence: Presence::Default(DEFAULT_SHUTDOWN_TIMEOUT_SECONDS),
    },
    FieldRule {
        name: "replicas",
        description: "How many processes run this job, each with its own slot number from 0, an integer from 1 to 10000 (default 1)",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "cycleIntervalSeconds",
        description: "Call cycle() at most once per this many seconds (a number above 0), sleeping the rest of the interval",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "restartPolicy",
        description: "When an exited process is started again: \"always\" (the default), \"on-failure\" (exit 0 means done) or \"never\"",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "maxFailures",
        description: "Failures (exits other than 0) within failureWindowSeconds after which the job is failed and not restarted, an integer from 1",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "failureWindowSeconds",
        description: "The window maxFailures counts in, an integer from 1 to 86400 (default 60)",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "maxCycles",
        description: "Recycle the worker (start a fresh process at once, no backoff) after this many cycles, an integer from 1",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "maxLifetimeSeconds",
        description: "Recycle the worker after it has run this many seconds, an integer from 1",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "memoryLimitMb",
        description: "Recycle the worker once its memory (the larger of the Zend heap and the resident set) exceeds this many MB, an integer from 1",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "cycleTimeoutSeconds",
        description: "A cycle running longer than this many seconds is stuck: the worker is stopped (SIGTERM, then SIGKILL) and the exit counts as a failure, an integer from 1 to 86400",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "essential",
        description: "When true, the job failing for good shuts the whole farm down (lrpm-host exits 69), a boolean",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "user",
        description: "The user the job's processes run as, \"USER\" or \"USER:GROUP\" (names or numeric ids); needs the host to run as root",
        presence: Presence::Optional,
    },
    FieldRule {
        name: "placement",
        description: "With --cluster, where the job's slots run: \"cluster\" (the default: each slot on exactly one live member) or \"every-host\" (each member runs all of them)",
        presence: Presence::Optional,
    },
];

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
