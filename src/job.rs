//! Job specs: parsing and validation with php-lrpm's rules and defaults
//! (ConfigurationValidator: mtime, name, workerConfig, workerClass required;
//! shortRunTimeSeconds = 5 and shutdownTimeoutSeconds = 10 by default).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const DEFAULT_SHORT_RUN_TIME_SECONDS: u64 = 5;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;
/// Upper bound of the duration fields: a day. Larger values are typos (or
/// PHP_INT_MAX) and would put deadlines beyond any clock.
pub const MAX_DURATION_SECONDS: u64 = 86_400;
/// Integer fields whose smallest value is 1.
const AT_LEAST_ONE: [&str; 6] =
    ["maxFailures", "failureWindowSeconds", "maxCycles", "maxLifetimeSeconds", "memoryLimitMb", "cycleTimeoutSeconds"];
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
    /// `maxCycles`, `maxLifetimeSeconds`, `memoryLimitMb`: planned recycles.
    pub max_cycles: Option<u64>,
    pub max_lifetime_seconds: Option<u64>,
    pub memory_limit_mb: Option<u64>,
    /// Shared: a job is handed to the core at every poll, and its
    /// configuration may be large.
    pub config: Arc<Map<String, Value>>,
    /// `config` serialized once when the entry changed, for `status`.
    pub config_json: RawJson,
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

/// One entry as the configuration process describes it (php/runner.php,
/// describe_jobs): the job plus the PHP facts JSON cannot carry.
#[derive(Debug, Clone, PartialEq)]
pub struct DescribedJob {
    pub id: JobId,
    /// Set when the PHP array key is not valid UTF-8; `id` then shows its bytes.
    pub id_error: Option<String>,
    pub php_type: String,
    pub job: Value,
    pub field_types: Map<String, Value>,
    pub worker_class_exists: bool,
    /// Where workers find the class (runner.php, class_visibility):
    /// "bootstrap", "source" (the source file, which workers load too),
    /// "sourceOnly" (the source file, which workers do not load), "missing".
    pub worker_class_visibility: Option<String>,
    pub encode_error: Option<String>,
}

/// An entry of a configuration message that is not even a described job
/// (the runner always sends one; a broken message must still not take the
/// other jobs down).
fn entry_error(id: &str, problem: String) -> ValidationError {
    ValidationError {
        job_id: id.to_string(),
        field: "*".to_string(),
        problem,
        rule: "each job is described by the configuration process".to_string(),
    }
}

impl DescribedJob {
    /// Reads one entry of the configuration process's message. Each entry
    /// is read alone, so one broken entry is dropped alone.
    pub fn from_entry(entry: Value) -> Result<DescribedJob, ValidationError> {
        let Value::Object(mut map) = entry else {
            return Err(entry_error("?", format!("unreadable entry {}", short_json(&entry))));
        };
        let id = match map.get("id") {
            Some(Value::Number(n)) if n.is_i64() => JobId::Int(n.as_i64().unwrap_or_default()),
            Some(Value::String(text)) => JobId::Str(text.clone()),
            other => {
                return Err(entry_error(
                    "?",
                    format!("entry without a usable id: {}", short_json(other.unwrap_or(&Value::Null))),
                ))
            }
        };
        // Moved, not copied: a job's configuration may be large.
        let job = map.remove("job").unwrap_or(Value::Null);
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_string);
        Ok(DescribedJob {
            id_error: map
                .get("idInvalidUtf8")
                .and_then(Value::as_bool)
                .filter(|b| *b)
                .map(|_| "the job id is not valid UTF-8".to_string()),
            php_type: text("type").unwrap_or_else(|| "unknown".to_string()),
            job,
            // PHP encodes an empty array as [], not {}.
            field_types: match map.get("fieldTypes") {
                Some(Value::Object(types)) => types.clone(),
                _ => Map::new(),
            },
            worker_class_exists: map.get("workerClassExists").and_then(Value::as_bool).unwrap_or(false),
            encode_error: text("encodeError"),
            worker_class_visibility: text("workerClassVisibility"),
            id,
        })
    }
}

struct FieldRule {
    name: &'static str,
    description: &'static str,
    presence: Presence,
}

/// What happens when a job has no such field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Presence {
    Required,
    /// Filled in with this value (php-lrpm's defaults: `start()` sees them).
    Default(u64),
    /// lrpm-host's own fields: left out of the job when not given.
    Optional,
}

// php-lrpm's fields, order and descriptions, then lrpm-host's own.
const FIELDS: [FieldRule; 16] = [
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
];

/// Host-wide defaults (command-line options) for lrpm-host's optional job
/// fields, used by jobs that do not set the field themselves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobDefaults {
    pub cycle_interval_seconds: Option<f64>,
    pub restart_policy: Option<RestartPolicy>,
    pub max_failures: Option<u64>,
    pub failure_window_seconds: Option<u64>,
    pub replicas: Option<u32>,
    pub cycle_timeout_seconds: Option<u64>,
    pub max_cycles: Option<u64>,
    pub max_lifetime_seconds: Option<u64>,
    pub memory_limit_mb: Option<u64>,
    pub essential: Option<bool>,
}

impl JobDefaults {
    pub fn apply(&self, job: &mut Job) {
        let unset = |field: &str| !job.config.contains_key(field);
        if unset("cycleIntervalSeconds") && self.cycle_interval_seconds.is_some() {
            job.cycle_interval_seconds = self.cycle_interval_seconds;
        }
        if let (true, Some(policy)) = (unset("restartPolicy"), self.restart_policy) {
            job.restart_policy = policy;
        }
        if unset("maxFailures") && self.max_failures.is_some() {
            job.max_failures = self.max_failures;
        }
        if let (true, Some(window)) = (unset("failureWindowSeconds"), self.failure_window_seconds) {
            job.failure_window_seconds = window;
        }
        if let (true, Some(replicas)) = (unset("replicas"), self.replicas) {
            job.replicas = replicas;
        }
        if let (true, Some(essential)) = (unset("essential"), self.essential) {
            job.essential = essential;
        }
        let optional = [
            ("cycleTimeoutSeconds", &mut job.cycle_timeout_seconds, self.cycle_timeout_seconds),
            ("maxCycles", &mut job.max_cycles, self.max_cycles),
            ("maxLifetimeSeconds", &mut job.max_lifetime_seconds, self.max_lifetime_seconds),
            ("memoryLimitMb", &mut job.memory_limit_mb, self.memory_limit_mb),
        ];
        for (field, value, default) in optional {
            if !job.config.contains_key(field) && default.is_some() {
                *value = default;
            }
        }
    }
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

impl DescribedJob {
    /// Describes a job given as JSON (the `worker --job` debugging path),
    /// where the class check is left to the worker process.
    pub fn from_json(id: JobId, job: Value) -> DescribedJob {
        let field_types = match &job {
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), Value::from(json_php_type(v)))).collect(),
            _ => Map::new(),
        };
        DescribedJob {
            id,
            id_error: None,
            php_type: json_php_type(&job).to_string(),
            job,
            field_types,
            worker_class_exists: true,
            worker_class_visibility: None,
            encode_error: None,
        }
    }

    /// The class exists in the configuration process only.
    fn hidden_from_workers(&self) -> bool {
        self.worker_class_visibility.as_deref() == Some("sourceOnly")
    }

    /// php-lrpm's ConfigurationValidator::isValid(), with every broken rule
    /// reported, plus the fields lrpm-host does not know.
    pub fn validate(mut self) -> Result<(Job, Vec<UnknownField>), Vec<ValidationError>> {
        let id = self.id.to_string();
        let error = |field: &str, problem: String, rule: &str| ValidationError {
            job_id: id.clone(),
            field: field.to_string(),
            problem,
            rule: rule.to_string(),
        };
        if let Some(problem) = &self.id_error {
            return Err(vec![error("*", problem.clone(), "job ids must be integers or UTF-8 strings")]);
        }
        if self.php_type != "array" {
            return Err(vec![error(
                "*",
                format!("the job must be an array, got {}", self.php_type),
                "each job is an array of fields",
            )]);
        }
        if let Some(e) = &self.encode_error {
            return Err(vec![error(
                "*",
                format!("the job cannot be encoded as JSON: {e}"),
                "jobs must contain only arrays and scalars",
            )]);
        }
        let field_types = std::mem::take(&mut self.field_types);
        let field_type = |field: &str| field_types.get(field).and_then(Value::as_str);
        let mut config = match std::mem::take(&mut self.job) {
            Value::Object(map) => map,
            // An empty or list-shaped PHP array has no named fields.
            Value::Array(items) => items.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            _ => Map::new(),
        };
        let mut errors = Vec::new();
        for rule in &FIELDS {
            let Some(value) = config.get(rule.name) else {
                match rule.presence {
                    Presence::Default(default) => {
                        config.insert(rule.name.to_string(), Value::from(default));
                    }
                    Presence::Required => errors.push(error(rule.name, "Field missing".to_string(), rule.description)),
                    Presence::Optional => {}
                }
                continue;
            };
            let php_type = field_type(rule.name).unwrap_or_else(|| json_php_type(value));
            let valid = match rule.name {
                "name" => php_type == "string",
                "workerConfig" => php_type == "array",
                "workerClass" => php_type == "string" && self.worker_class_exists && !self.hidden_from_workers(),
                "mtime" => php_type == "integer" && value.as_i64().is_some_and(|n| n >= 0),
                "restartPolicy" => value.as_str().and_then(RestartPolicy::parse).is_some(),
                "maxFailures" => php_type == "integer" && value.as_u64().is_some_and(|n| n >= 1),
                "failureWindowSeconds" => {
                    php_type == "integer" && value.as_u64().is_some_and(|n| (1..=MAX_DURATION_SECONDS).contains(&n))
                }
                "essential" => php_type == "boolean",
                "maxCycles" | "maxLifetimeSeconds" | "memoryLimitMb" => {
                    php_type == "integer" && value.as_u64().is_some_and(|n| n >= 1)
                }
                "replicas" => php_type == "integer" && value.as_u64().is_some_and(|n| (1..=MAX_REPLICAS).contains(&n)),
                "cycleTimeoutSeconds" => {
                    php_type == "integer" && value.as_u64().is_some_and(|n| (1..=MAX_DURATION_SECONDS).contains(&n))
                }
                "cycleIntervalSeconds" => {
                    (php_type == "integer" || php_type == "double")
                        && value.as_f64().is_some_and(|n| n > 0.0 && n <= MAX_DURATION_SECONDS as f64)
                }
                _ => php_type == "integer" && value.as_u64().is_some_and(|n| n <= MAX_DURATION_SECONDS),
            };
            if !valid {
                let got = if rule.name == "cycleIntervalSeconds" && (php_type == "integer" || php_type == "double") {
                    format!("{} is not above 0 and at most {MAX_DURATION_SECONDS}", short_json(value))
                } else if rule.name == "workerClass" && php_type == "string" && self.hidden_from_workers() {
                    format!(
                        "class {} is declared in the source file, which workers do not load (declare it in a file the bootstrap autoloads)",
                        value.as_str().unwrap_or_default()
                    )
                } else if rule.name == "workerClass" && php_type == "string" {
                    format!("class {} does not exist", value.as_str().unwrap_or_default())
                } else if rule.name == "replicas" && php_type == "integer" && value.as_i64().is_some_and(|n| n == 0) {
                    "0 is below 1 (to run no process, hold the job with `lrpmctl stop ID`)".to_string()
                } else if rule.name == "replicas" && php_type == "integer" && value.as_i64().is_some_and(|n| n > 0) {
                    format!("{} is above the maximum of {MAX_REPLICAS}", short_json(value))
                } else if php_type == "integer" && value.as_i64() == Some(0) && AT_LEAST_ONE.contains(&rule.name) {
                    "0 is below the minimum of 1".to_string()
                } else if php_type == "integer" && value.as_i64().is_some_and(|n| n < 0) {
                    format!("{} is negative", short_json(value))
                } else if php_type == "integer" && rule.name != "mtime" {
                    format!("{} is above the maximum of {MAX_DURATION_SECONDS} (one day)", short_json(value))
                } else {
                    format!("got {php_type} {}", short_json(value))
                };
                errors.push(error(rule.name, format!("Invalid data: {got}"), rule.description));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let unknown = config
            .keys()
            .filter(|key| !FIELDS.iter().any(|rule| rule.name == key.as_str()))
            .map(|key| UnknownField { job_id: id.clone(), field: key.clone(), did_you_mean: nearest_field(key) })
            .collect();
        let int = |field: &str| config.get(field).and_then(Value::as_i64).unwrap_or_default();
        let seconds = |field: &str| config.get(field).and_then(Value::as_u64).unwrap_or_default();
        let text = |field: &str| config.get(field).and_then(Value::as_str).unwrap_or_default().to_string();
        let job = Job {
            id: self.id.clone(),
            name: text("name"),
            worker_class: text("workerClass"),
            mtime: int("mtime"),
            short_run_time_seconds: seconds("shortRunTimeSeconds"),
            shutdown_timeout_seconds: seconds("shutdownTimeoutSeconds"),
            cycle_interval_seconds: config.get("cycleIntervalSeconds").and_then(Value::as_f64),
            restart_policy: config
                .get("restartPolicy")
                .and_then(Value::as_str)
                .and_then(RestartPolicy::parse)
                .unwrap_or_default(),
            max_failures: config.get("maxFailures").and_then(Value::as_u64),
            failure_window_seconds: config
                .get("failureWindowSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_FAILURE_WINDOW_SECONDS),
            essential: config.get("essential").and_then(Value::as_bool).unwrap_or(false),
            replicas: config.get("replicas").and_then(Value::as_u64).map_or(1, |n| n as u32),
            cycle_timeout_seconds: config.get("cycleTimeoutSeconds").and_then(Value::as_u64),
            max_cycles: config.get("maxCycles").and_then(Value::as_u64),
            max_lifetime_seconds: config.get("maxLifetimeSeconds").and_then(Value::as_u64),
            memory_limit_mb: config.get("memoryLimitMb").and_then(Value::as_u64),
            config_json: RawJson::of(&config),
            config: Arc::new(config),
        };
        Ok((job, unknown))
    }
}

fn short_json(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// A misspelt field's most likely meaning: same letters ignoring case, a
/// prefix of a known field (`shutdownTimeout`), or at most two edits away.
fn nearest_field(field: &str) -> Option<&'static str> {
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

/// What a configuration message holds once each entry was validated alone.
#[derive(Debug, Default)]
pub struct Validated {
    /// Valid jobs, in the source's order.
    pub jobs: Vec<Job>,
    pub errors: Vec<ValidationError>,
    pub unknown_fields: Vec<UnknownField>,
}

/// What a configuration process sent before, by id: the entry's digest and
/// its validation. The runner sends an entry identical to its previous one
/// as `{"id", "digest", "unchanged": true}`; it is taken from here instead of
/// being parsed and validated again.
#[derive(Debug, Default)]
pub struct EntryCache {
    /// Id (as text) to the entry's digest and its validation.
    by_id: HashMap<String, (String, Outcome)>,
}

/// What validating one entry gave.
type Outcome = Result<(Job, Vec<UnknownField>), Vec<ValidationError>>;

impl EntryCache {
    /// Forgets everything: a new configuration process sends every entry in full.
    pub fn clear(&mut self) {
        self.by_id.clear();
    }
}

/// An elided entry that refers to nothing this supervisor kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDigest {
    pub job_id: String,
}

/// The key an entry's id has in the cache (the id as text).
fn entry_key(entry: &Value) -> Option<String> {
    match entry.get("id")? {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn record(validated: &mut Validated, outcome: &Outcome) {
    match outcome {
        Ok((job, fields)) => {
            validated.jobs.push(job.clone());
            validated.unknown_fields.extend(fields.iter().cloned());
        }
        Err(errors) => validated.errors.extend(errors.iter().cloned()),
    }
}

/// Validates a whole configuration message (its `jobs` entries) for a farm:
/// each entry alone, so one broken entry never rejects the others; entries
/// marked unchanged come from `cache`, the others are validated and
/// remembered. Two entries with the same id are both refused: silently
/// running one of them would hide a job. Also returns the elided entries
/// the cache does not know (a message was lost: the caller must not apply
/// this configuration).
pub fn validate_entries_cached(entries: Vec<Value>, cache: &mut EntryCache) -> (Validated, Vec<UnknownDigest>) {
    let mut validated = Validated::default();
    let mut unknown = Vec::new();
    let mut kept = HashMap::new();
    let mut described = Vec::new();
    for entry in entries {
        let digest = entry.get("digest").and_then(Value::as_str).map(str::to_string);
        if entry.get("unchanged").and_then(Value::as_bool) == Some(true) {
            let key = entry_key(&entry).unwrap_or_else(|| "?".to_string());
            match (cache.by_id.remove(&key), digest) {
                (Some((known, outcome)), Some(digest)) if known == digest => {
                    record(&mut validated, &outcome);
                    kept.insert(key, (known, outcome));
                }
                _ => unknown.push(UnknownDigest { job_id: key }),
            }
            continue;
        }
        match DescribedJob::from_entry(entry) {
            Ok(job) => described.push((digest, job)),
            Err(error) => validated.errors.push(error),
        }
    }
    let mut seen: HashMap<JobId, usize> = HashMap::new();
    for (_, job) in &described {
        *seen.entry(job.id.clone()).or_default() += 1;
    }
    let mut reported = std::collections::HashSet::new();
    for (digest, job) in described {
        if seen[&job.id] > 1 {
            if reported.insert(job.id.clone()) {
                validated.errors.push(entry_error(
                    &job.id.to_string(),
                    "several jobs have this id; all of them are dropped".to_string(),
                ));
            }
            continue;
        }
        let key = job.id.to_string();
        let outcome = job.validate();
        record(&mut validated, &outcome);
        if let Some(digest) = digest {
            kept.insert(key, (digest, outcome));
        }
    }
    cache.by_id = kept;
    (validated, unknown)
}

/// `validate_entries_cached` without a cache (`check`, one message).
pub fn validate_entries(entries: Vec<Value>) -> Validated {
    validate_entries_cached(entries, &mut EntryCache::default()).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn described(job: Value) -> DescribedJob {
        DescribedJob::from_json(JobId::Int(42), job)
    }

    /// php/tests/job-cases.json: the cases Lrpm\JobValidator (the PHP
    /// package, php/tests/JobValidatorTest.php) is tested against too, so
    /// the two sets of rules and messages cannot drift apart.
    #[test]
    fn agrees_with_the_php_job_validator_on_the_shared_cases() {
        let cases: Vec<Value> = serde_json::from_str(include_str!("../php/tests/job-cases.json")).unwrap();
        assert!(cases.len() >= 20);
        for case in cases {
            let id = match &case["id"] {
                Value::Number(n) => JobId::Int(n.as_i64().unwrap()),
                other => JobId::Str(other.as_str().unwrap().to_string()),
            };
            let mut job = DescribedJob::from_json(id, case["job"].clone());
            job.worker_class_exists = case.get("classExists").and_then(Value::as_bool).unwrap_or(true);
            let (errors, unknown): (Vec<String>, Vec<String>) = match job.validate() {
                Ok((_, unknown)) => (Vec::new(), unknown.iter().map(ToString::to_string).collect()),
                Err(errors) => (errors.iter().map(ToString::to_string).collect(), Vec::new()),
            };
            let strings = |key: &str| -> Vec<String> {
                case[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
            };
            assert_eq!(errors, strings("errors"), "case {}", case["case"]);
            assert_eq!(unknown, strings("unknown"), "case {}", case["case"]);
        }
    }

    #[test]
    fn fills_php_lrpm_defaults() {
        let job =
            described(json!({"name": "n", "workerClass": "W", "mtime": 1, "workerConfig": []})).validate().unwrap().0;
        assert_eq!(job.short_run_time_seconds, 5);
        assert_eq!(job.shutdown_timeout_seconds, 10);
        assert_eq!(job.config["shortRunTimeSeconds"], json!(5));
        assert_eq!(job.config["workerConfig"], json!([]));
    }

    #[test]
    fn reports_every_broken_rule_with_field_names() {
        let errors = described(json!({"name": 3, "workerClass": "W", "mtime": -1, "shutdownTimeoutSeconds": "x"}))
            .validate()
            .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["mtime", "name", "workerConfig", "shutdownTimeoutSeconds"]);
        assert!(errors[2].problem.contains("Field missing"));
        assert!(errors[0].to_string().starts_with("job 42: field 'mtime'"));
    }

    #[test]
    fn rejects_missing_worker_class_and_non_integer_mtime() {
        let mut entry = described(json!({"name": "n", "workerClass": "Nope", "mtime": 1.5, "workerConfig": {}}));
        entry.worker_class_exists = false;
        let errors = entry.validate().unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].problem.contains("double"));
        assert!(errors[1].problem.contains("class Nope does not exist"));
    }

    #[test]
    fn non_array_jobs_are_errors() {
        let mut entry = described(json!("text"));
        entry.php_type = "string".into();
        assert!(entry.validate().unwrap_err()[0].problem.contains("must be an array"));
    }

    #[test]
    fn job_ids_follow_php_key_rules() {
        assert_eq!(JobId::parse("42"), JobId::Int(42));
        assert_eq!(JobId::parse("042"), JobId::Str("042".into()));
        assert_eq!(JobId::parse("abc"), JobId::Str("abc".into()));
    }

    /// An entry as php/runner.php's describe_jobs() sends it.
    fn entry(id: Value, job: Value) -> Value {
        let types: Map<String, Value> = match &job {
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), Value::from(json_php_type(v)))).collect(),
            _ => Map::new(),
        };
        json!({"id": id, "type": json_php_type(&job), "job": job, "fieldTypes": types, "workerClassExists": true})
    }

    fn good() -> Value {
        json!({"name": "n", "workerClass": "W", "mtime": 1, "workerConfig": []})
    }

    #[test]
    fn each_entry_is_validated_and_dropped_alone() {
        let entries = vec![
            entry(json!(1), good()),
            // What PHP sends for null, [] and "text": fieldTypes is a list.
            json!({"id": 2, "type": "NULL", "job": null, "fieldTypes": [], "workerClassExists": false}),
            json!({"id": 3, "type": "array", "job": [], "fieldTypes": [], "workerClassExists": false}),
            json!({"id": "s", "type": "string", "job": null, "fieldTypes": [], "workerClassExists": false}),
            json!("garbage"),
            json!({"type": "array"}),
            entry(json!(4), good()),
        ];
        let validated = validate_entries(entries);
        let ids: Vec<String> = validated.jobs.iter().map(|j| j.id.to_string()).collect();
        assert_eq!(ids, ["1", "4"]);
        let failed: Vec<&str> = validated.errors.iter().map(|e| e.job_id.as_str()).collect();
        assert!(failed.contains(&"2") && failed.contains(&"3") && failed.contains(&"s"), "{failed:?}");
        assert!(validated.errors.iter().any(|e| e.problem.contains("must be an array, got NULL")));
    }

    #[test]
    fn durations_have_sane_upper_bounds() {
        for (field, value, ok) in [
            ("shutdownTimeoutSeconds", json!(i64::MAX), false),
            ("shutdownTimeoutSeconds", json!(86_400), true),
            ("shutdownTimeoutSeconds", json!(86_401), false),
            ("shortRunTimeSeconds", json!(u64::MAX), false),
            ("shortRunTimeSeconds", json!(-1), false),
            ("shortRunTimeSeconds", json!(0), true),
            ("mtime", json!(i64::MAX), true),
        ] {
            let mut job = good();
            job[field] = value.clone();
            let result = described(job).validate();
            assert_eq!(result.is_ok(), ok, "{field} = {value}: {result:?}");
            if let Err(errors) = result {
                assert!(errors[0].problem.contains("maximum") || errors[0].problem.contains("negative"), "{errors:?}");
            }
        }
    }

    #[test]
    fn replicas_and_cycle_timeout_are_bounded_integers() {
        let (job, _) = described(good()).validate().unwrap();
        assert_eq!((job.replicas, job.cycle_timeout_seconds), (1, None));
        assert!(!job.config.contains_key("replicas"), "not filled in: start() sees what php-lrpm gives");
        // (field, value, accepted, words the refusal must contain)
        for (field, value, ok, says) in [
            ("replicas", json!(1), true, ""),
            ("replicas", json!(10_000), true, ""),
            ("replicas", json!(0), false, "lrpmctl stop"),
            ("replicas", json!(10_001), false, "maximum of 10000"),
            ("replicas", json!(-2), false, "negative"),
            ("replicas", json!("4"), false, "got string"),
            ("replicas", json!(2.5), false, "got double"),
            ("cycleTimeoutSeconds", json!(30), true, ""),
            ("cycleTimeoutSeconds", json!(0), false, "below the minimum of 1"),
            ("cycleTimeoutSeconds", json!(86_401), false, "maximum of 86400"),
            ("cycleTimeoutSeconds", json!(true), false, "got boolean"),
        ] {
            let mut job = good();
            job[field] = value.clone();
            let result = described(job).validate();
            assert_eq!(result.is_ok(), ok, "{field} = {value}: {result:?}");
            match result {
                Ok((job, _)) if field == "replicas" => assert_eq!(u64::from(job.replicas), value.as_u64().unwrap()),
                Ok((job, _)) => assert_eq!(job.cycle_timeout_seconds, value.as_u64()),
                Err(errors) => assert!(errors[0].problem.contains(says), "{field} = {value}: {errors:?}"),
            }
        }
    }

    #[test]
    fn host_defaults_fill_only_what_a_job_leaves_out() {
        let defaults = JobDefaults {
            replicas: Some(3),
            cycle_timeout_seconds: Some(60),
            max_cycles: Some(100),
            memory_limit_mb: Some(128),
            ..JobDefaults::default()
        };
        let mut own = good();
        own["replicas"] = json!(1);
        own["maxCycles"] = json!(5);
        let (mut job, _) = described(own).validate().unwrap();
        defaults.apply(&mut job);
        assert_eq!(
            (job.replicas, job.cycle_timeout_seconds, job.max_cycles, job.memory_limit_mb, job.max_lifetime_seconds),
            (1, Some(60), Some(5), Some(128), None)
        );
    }

    #[test]
    fn a_memory_limit_at_or_above_php_memory_limit_is_pointed_out() {
        let mut limited = good();
        limited["memoryLimitMb"] = json!(128);
        let (job, _) = described(limited).validate().unwrap();
        let mb = 1024 * 1024;
        assert!(memory_limit_warning(&job, Some(128 * mb))
            .unwrap()
            .contains("at or above PHP's memory_limit (128 MB)"));
        assert!(memory_limit_warning(&job, Some(64 * mb)).is_some());
        assert_eq!(memory_limit_warning(&job, Some(256 * mb)), None);
        assert_eq!(memory_limit_warning(&job, None), None, "memory_limit -1: no limit to hit first");
    }

    #[test]
    fn cycle_interval_is_an_optional_positive_number() {
        let (job, _) = described(good()).validate().unwrap();
        assert_eq!(job.cycle_interval_seconds, None);
        assert!(!job.config.contains_key("cycleIntervalSeconds"), "not filled in: start() sees what php-lrpm gives");
        for (value, ok) in [
            (json!(0.25), true),
            (json!(60), true),
            (json!(0), false),
            (json!(-1), false),
            (json!("5"), false),
            (json!(1e9), false),
        ] {
            let mut job = good();
            job["cycleIntervalSeconds"] = value.clone();
            let result = described(job).validate();
            assert_eq!(result.is_ok(), ok, "{value}: {result:?}");
            if let Ok((job, _)) = result {
                assert_eq!(job.cycle_interval_seconds, value.as_f64());
            }
        }
    }

    #[test]
    fn unknown_fields_are_warned_with_a_suggestion() {
        let mut job = good();
        job["shutdownTimeout"] = json!(60);
        job["processes"] = json!(4);
        job["Name2"] = json!("x");
        let (_, unknown) = described(job).validate().unwrap();
        let shown: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        assert!(shown[0].contains("'shutdownTimeout'") && shown[0].contains("did you mean 'shutdownTimeoutSeconds'"));
        assert!(shown.iter().any(|s| s.contains("'processes'") && s.contains("known fields")), "{shown:?}");
        assert!(shown.iter().any(|s| s.contains("'Name2'") && s.contains("did you mean 'name'")), "{shown:?}");
    }

    #[test]
    fn ids_that_are_not_utf8_or_repeated_are_refused() {
        let mut bad = entry(json!("q\\xff"), good());
        bad["idInvalidUtf8"] = json!(true);
        let validated = validate_entries(vec![bad, entry(json!(5), good()), entry(json!(5), good())]);
        assert!(validated.jobs.is_empty());
        assert!(validated.errors.iter().any(|e| e.problem.contains("not valid UTF-8")));
        assert_eq!(validated.errors.iter().filter(|e| e.problem.contains("several jobs")).count(), 1);
    }

    #[test]
    fn unchanged_entries_come_from_the_cache() {
        let with_digest = |id: Value, job: Value, digest: &str| {
            let mut e = entry(id, job);
            e["digest"] = json!(digest);
            e
        };
        let unchanged = |id: Value, digest: &str| json!({"id": id, "digest": digest, "unchanged": true});
        let mut bad = good();
        bad["name"] = json!(3);
        let mut cache = EntryCache::default();
        let (first, lost) = validate_entries_cached(
            vec![with_digest(json!(1), good(), "a"), with_digest(json!("b"), bad.clone(), "b")],
            &mut cache,
        );
        assert!(lost.is_empty());
        assert_eq!(first.jobs.len(), 1);
        assert_eq!(first.errors.len(), 1);
        // Both unchanged: the same outcome, from the cache.
        let (second, lost) =
            validate_entries_cached(vec![unchanged(json!(1), "a"), unchanged(json!("b"), "b")], &mut cache);
        assert!(lost.is_empty());
        assert_eq!(second.jobs, first.jobs);
        assert_eq!(second.errors, first.errors);
        // Job 1 left the configuration: a later "unchanged" for it is unknown.
        validate_entries_cached(vec![unchanged(json!("b"), "b")], &mut cache);
        let (_, lost) = validate_entries_cached(vec![unchanged(json!(1), "a")], &mut cache);
        assert_eq!(lost, vec![UnknownDigest { job_id: "1".into() }]);
        // A digest that does not match is unknown too.
        let mut cache = EntryCache::default();
        validate_entries_cached(vec![with_digest(json!(1), good(), "a")], &mut cache);
        let (_, lost) = validate_entries_cached(vec![unchanged(json!(1), "z")], &mut cache);
        assert_eq!(lost.len(), 1);
    }

    proptest::proptest! {
        /// No value of any field makes validation (or the core fed with its
        /// result) panic.
        #[test]
        fn no_field_value_panics(
            values in proptest::collection::vec(any_json(), FIELDS.len()),
            extra in "[a-zA-Z]{0,12}",
        ) {
            let mut job = Map::new();
            for (rule, value) in FIELDS.iter().zip(values) {
                job.insert(rule.name.to_string(), value);
            }
            job.insert(extra, json!(1));
            let validated = validate_entries(vec![entry(json!(1), Value::Object(job))]);
            let mut farm = crate::farm::Farm::new();
            let now = std::time::Instant::now();
            farm.start();
            farm.handle(crate::farm::Event::ConfigProcessStarted(1), now);
            farm.handle(crate::farm::Event::Configuration(validated.jobs.clone()), now);
            for action in farm.handle(crate::farm::Event::Tick, now) {
                if let crate::farm::Action::StartWorker(key) = action {
                    farm.handle(crate::farm::Event::WorkerStarted { key, pid: 10 }, now);
                }
            }
            farm.handle(crate::farm::Event::CycleProgress {
                key: crate::farm::WorkerKey::new(crate::job::JobId::Int(1), 0),
                pid: 10,
                progress: Some(crate::farm::CycleProgress { cycles: 0, current_cycle: Some(std::time::Duration::MAX) }),
            }, now);
            farm.handle(crate::farm::Event::ChildExited { pid: 10, exit: crate::farm::ExitKind::Code(1), recycle: None, cycles: 0 }, now);
            farm.handle(crate::farm::Event::Tick, now);
            farm.handle(crate::farm::Event::Shutdown, now);
            farm.handle(crate::farm::Event::Tick, now + std::time::Duration::from_secs(1 << 40));
        }
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)),
            ".{0,20}".prop_map(Value::from),
            Just(json!([])),
            Just(json!({"a": [1, 2]})),
        ]
    }
}
