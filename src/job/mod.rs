//! Job specs: parsing and validation with php-lrpm's rules and defaults
//! (ConfigurationValidator: mtime, name, workerConfig, workerClass required;
//! shortRunTimeSeconds = 5 and shutdownTimeoutSeconds = 10 by default).
//!
//! This file holds the types a validated job is made of and the host-wide
//! defaults; `fields.rs` the table of known fields, `validate.rs` one
//! described entry checked against it, `entries.rs` a whole configuration
//! message (one entry at a time, with the cache of unchanged entries).

#![forbid(unsafe_code)]

mod entries;
mod fields;
#[cfg(test)]
mod tests;
pub mod users;
mod validate;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use entries::{validate_entries, validate_entries_cached, EntryCache, UnknownDigest, Validated};
pub use validate::DescribedJob;

use fields::FIELDS;

pub const DEFAULT_SHORT_RUN_TIME_SECONDS: u64 = 5;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;
/// Upper bound of the duration fields: a day. Larger values are typos (or
/// PHP_INT_MAX) and would put deadlines beyond any clock.
pub const MAX_DURATION_SECONDS: u64 = 86_400;
/// The most processes one job may ask for (`replicas`).
pub const MAX_REPLICAS: u64 = 10_000;

/// A job id: PHP array keys are ints or strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobId {
    Int(i64),
    Str(String),
}

impl JobId {
    /// PHP turns decimal-integer string keys into ints; do the same so that
    /// `restart 42` finds job 42.
    pub fn parse(text: &str) -> JobId {
        match text.parse::<i64>() {
            Ok(n) if n.to_string() == text => JobId::Int(n),
            _ => JobId::Str(text.to_string()),
        }
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobId::Int(n) => write!(f, "{n}"),
            JobId::Str(s) => f.write_str(s),
        }
    }
}

/// A validated job. `config` is the whole job with defaults filled in: it is
/// what the worker's `start()` receives and what `jsonstatus` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub name: String,
    pub worker_class: String,
    pub mtime: i64,
    pub short_run_time_seconds: u64,
    pub shutdown_timeout_seconds: u64,
    /// `cycleIntervalSeconds`: clock mode, when given.
    pub cycle_interval_seconds: Option<f64>,
    pub restart_policy: RestartPolicy,
    /// `maxFailures`, when given.
    pub max_failures: Option<u64>,
    pub failure_window_seconds: u64,
    pub essential: bool,
    /// `replicas`: how many processes run this job (slots 0..replicas).
    pub replicas: u32,
    /// `cycleTimeoutSeconds`: a cycle running longer is stuck (watchdog).
    pub cycle_timeout_seconds: Option<u64>,
    /// `progressTimeoutSeconds`: a cycle silent longer (no `Lrpm\progress()`)
    /// is stuck (watchdog).
    pub progress_timeout_seconds: Option<u64>,
    /// `maxCycles`, `maxLifetimeSeconds`, `memoryLimitMb`: planned recycles.
    pub max_cycles: Option<u64>,
    pub max_lifetime_seconds: Option<u64>,
    pub memory_limit_mb: Option<u64>,
    /// `maxTasks`: `Lrpm\Task` processes one worker may run at once.
    pub max_tasks: u64,
    /// Shared: a job is handed to the core at every poll, and its
    /// configuration may be large.
    pub config: Arc<Map<String, Value>>,
    /// `config` serialized once when the entry changed, for `status`.
    pub config_json: RawJson,
    /// `placement`: with `--cluster`, where the job's slots run.
    pub placement: Placement,
    /// The fields with a host-wide default as the job runs with them
    /// (`effective_settings`): what the typed fields above were read from,
    /// and status's `settings`.
    pub settings: Arc<Map<String, Value>>,
    /// `user`, resolved: whom the job's processes run as (None: the
    /// farm's `--user`, or the host's own user).
    pub user: Option<Arc<users::Credentials>>,
}

/// JSON text serialized once and shown many times; clones share it.
#[derive(Debug, Clone)]
pub struct RawJson(Arc<serde_json::value::RawValue>);

impl RawJson {
    pub fn of(value: &impl Serialize) -> RawJson {
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".to_string());
        RawJson(Arc::from(serde_json::value::RawValue::from_string(text).expect("serde_json wrote valid JSON")))
    }

    pub fn get(&self) -> &serde_json::value::RawValue {
        &self.0
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// A field a job carries that lrpm-host does not know: ignored, with a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    pub job_id: String,
    pub field: String,
    pub did_you_mean: Option<&'static str>,
}

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}: unknown field '{}' is ignored", self.job_id, self.field)?;
        match self.did_you_mean {
            Some(known) => write!(f, " (did you mean '{known}'?)"),
            None => write!(f, " (known fields: {})", FIELDS.map(|r| r.name).join(", ")),
        }
    }
}

/// One broken rule of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub job_id: String,
    pub field: String,
    pub problem: String,
    pub rule: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}: field '{}': {} ({})", self.job_id, self.field, self.problem, self.rule)
    }
}

/// Host-wide values for the fields jobs leave out, from the command line
/// (`--max-cycles 100`): field name to value, each checked by its field's
/// kind. Which fields have one, their options and help all come from the
/// field table (`fields.rs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobDefaults(Map<String, Value>);

/// One command-line option for a host-wide default.
#[derive(Debug, Clone)]
pub struct DefaultOption {
    /// The job field it sets (`maxCycles`).
    pub field: &'static str,
    /// Its long option (`max-cycles`).
    pub flag: &'static str,
    /// Empty for a flag that takes no value (`--essential`).
    pub value_name: &'static str,
    pub help: String,
}

impl JobDefaults {
    /// Every option, in the field table's order.
    pub fn options() -> Vec<DefaultOption> {
        fields::host_defaults()
            .map(|(rule, default)| DefaultOption {
                field: rule.name,
                flag: default.flag,
                value_name: default.value_name,
                help: if default.value_name.is_empty() {
                    format!("Jobs that do not set `{}` get true: {}", rule.name, default.help)
                } else {
                    format!("Default `{}` for jobs that do not set it: {}", rule.name, default.help)
                },
            })
            .collect()
    }

    /// Sets `field` from an option's text (empty for a flag), checked as a
    /// job's value is: the same rule, the same message.
    pub fn set(&mut self, field: &str, text: &str) -> Result<(), String> {
        let (rule, _) = fields::host_defaults()
            .find(|(rule, _)| rule.name == field)
            .ok_or_else(|| format!("{field} has no host-wide default"))?;
        let value = rule.kind.parse_option(text).map_err(|problem| match rule.kind {
            fields::Kind::Choice(_) => format!("{text:?}: {}", rule.description),
            _ => problem,
        })?;
        self.0.insert(field.to_string(), value);
        Ok(())
    }

    /// The value for a field the job leaves out, if the command line gave one.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }
}

/// lrpm-host's fields as a job runs with them: its own value, else the
/// host-wide default, else what the field means when unset (status's
/// `settings`, in the field table's order).
pub fn effective_settings(config: &Map<String, Value>, defaults: &JobDefaults) -> Map<String, Value> {
    fields::host_defaults()
        .map(|(rule, default)| {
            let value =
                config.get(rule.name).or_else(|| defaults.get(rule.name)).cloned().unwrap_or_else(default.unset);
            (rule.name.to_string(), value)
        })
        .collect()
}

/// Why a job's `memoryLimitMb` can never fire: PHP's own `memory_limit`
/// (in bytes; None when unlimited) is reached first, and that is a fatal
/// error mid-cycle rather than a planned recycle between cycles.
pub fn memory_limit_warning(job: &Job, php_memory_limit: Option<u64>) -> Option<String> {
    let limit_mb = job.memory_limit_mb?;
    let php_limit = php_memory_limit?;
    (limit_mb.saturating_mul(1024 * 1024) >= php_limit).then(|| {
        format!(
            "job {}: memoryLimitMb {limit_mb} is at or above PHP's memory_limit ({} MB): the Zend heap hits \
             memory_limit first, a fatal error in the middle of a cycle instead of a planned recycle; \
             set memoryLimitMb below it (or raise memory_limit with -d memory_limit=...)",
            job.id,
            php_limit / (1024 * 1024)
        )
    })
}

/// `maxTasks` when neither a job nor `--max-tasks` says, and its largest value.
pub const DEFAULT_MAX_TASKS: u64 = 16;
pub const MAX_TASKS: u64 = 1024;

/// `failureWindowSeconds` when a job does not say.
pub const DEFAULT_FAILURE_WINDOW_SECONDS: u64 = 60;

/// `restartPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// php-lrpm's behaviour: every exit leads to a restart (with backoff).
    #[default]
    Always,
    /// Exit 0 means done; other exits restart.
    OnFailure,
    /// Nothing restarts: exit 0 is done, anything else failed.
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }

    pub fn parse(text: &str) -> Option<RestartPolicy> {
        match text {
            "always" => Some(RestartPolicy::Always),
            "on-failure" => Some(RestartPolicy::OnFailure),
            "never" => Some(RestartPolicy::Never),
            _ => None,
        }
    }
}

/// `placement`: where a job's slots run when the farm spans several hosts
/// (`--cluster`); without it every job runs here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    /// Each slot is one unit, run by exactly one live member.
    #[default]
    Cluster,
    /// Every member runs every slot (host-local work: a log shipper, a
    /// cache warmer); no claims.
    EveryHost,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Cluster => "cluster",
            Placement::EveryHost => "every-host",
        }
    }

    pub fn parse(text: &str) -> Option<Placement> {
        match text {
            "cluster" => Some(Placement::Cluster),
            "every-host" => Some(Placement::EveryHost),
            _ => None,
        }
    }
}

/// The PHP type of a JSON value as `gettype()` would name it.
pub fn json_php_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "NULL",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "double",
        Value::String(_) => "string",
        Value::Array(_) | Value::Object(_) => "array",
    }
}
