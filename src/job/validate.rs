//! One entry of a configuration message: read as the configuration process
//! described it (`DescribedJob`), then checked against the field table into
//! a `Job`, every broken rule reported.

#![forbid(unsafe_code)]

use std::sync::Arc;

use serde_json::{Map, Value};

use super::fields::{nearest_field, short_json, Kind, Presence, FIELDS};
use super::{
    effective_settings, json_php_type, Job, JobDefaults, JobId, Placement, RawJson, RestartPolicy, UnknownField,
    ValidationError, DEFAULT_FAILURE_WINDOW_SECONDS,
};

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
pub(super) fn entry_error(id: &str, problem: String) -> ValidationError {
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

    /// What the configuration process found of the worker class: it
    /// exists, workers can see it, it is a worker they can instantiate.
    fn check_worker_class(&self, class: &str) -> Result<(), String> {
        match self.worker_class_visibility.as_deref() {
            _ if !self.worker_class_exists => Err(format!("class {class} does not exist")),
            Some("sourceOnly") => Err(format!(
                "class {class} is declared in the source file, which workers do not load (declare it in a file the \
                 bootstrap autoloads)"
            )),
            Some("notWorker") => Err(format!("class {class} does not implement Lrpm\\Worker (or PHPLRPM\\Worker)")),
            Some("notInstantiable") => Err(format!(
                "class {class} cannot be instantiated (an abstract class, or a constructor that is not public)"
            )),
            _ => Ok(()),
        }
    }

    /// `validate_with` without host-wide defaults (`worker --job`, tests).
    pub fn validate(self) -> Result<(Job, Vec<UnknownField>), Vec<ValidationError>> {
        self.validate_with(&JobDefaults::default())
    }

    /// php-lrpm's ConfigurationValidator::isValid(), with every broken rule
    /// reported, plus the fields lrpm-host does not know; the job comes
    /// back complete: php-lrpm's defaults in what `start()` gets, and the
    /// host-wide `defaults` (command-line options) for the optional fields
    /// it does not set.
    pub fn validate_with(mut self, defaults: &JobDefaults) -> Result<(Job, Vec<UnknownField>), Vec<ValidationError>> {
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
            let checked = rule.kind.check(php_type, value).and_then(|()| match rule.kind {
                Kind::WorkerClass => self.check_worker_class(value.as_str().unwrap_or_default()),
                _ => Ok(()),
            });
            if let Err(got) = checked {
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
        // The job's own value, else the host's default, else the field's
        // meaning when unset: checked above or by `JobDefaults::set`.
        let settings = effective_settings(&config, defaults);
        let setting = |field: &str| settings.get(field).unwrap_or(&Value::Null);
        let job = Job {
            id: self.id.clone(),
            name: text("name"),
            worker_class: text("workerClass"),
            mtime: int("mtime"),
            short_run_time_seconds: seconds("shortRunTimeSeconds"),
            shutdown_timeout_seconds: seconds("shutdownTimeoutSeconds"),
            cycle_interval_seconds: setting("cycleIntervalSeconds").as_f64(),
            restart_policy: setting("restartPolicy").as_str().and_then(RestartPolicy::parse).unwrap_or_default(),
            max_failures: setting("maxFailures").as_u64(),
            failure_window_seconds: setting("failureWindowSeconds").as_u64().unwrap_or(DEFAULT_FAILURE_WINDOW_SECONDS),
            essential: setting("essential").as_bool().unwrap_or(false),
            replicas: setting("replicas").as_u64().map_or(1, |n| n as u32),
            cycle_timeout_seconds: setting("cycleTimeoutSeconds").as_u64(),
            progress_timeout_seconds: setting("progressTimeoutSeconds").as_u64(),
            max_cycles: setting("maxCycles").as_u64(),
            max_lifetime_seconds: setting("maxLifetimeSeconds").as_u64(),
            memory_limit_mb: setting("memoryLimitMb").as_u64(),
            max_tasks: setting("maxTasks").as_u64().unwrap_or(super::DEFAULT_MAX_TASKS),
            config_json: RawJson::of(&config),
            placement: config.get("placement").and_then(Value::as_str).and_then(Placement::parse).unwrap_or_default(),
            user: None,
            settings: Arc::new(settings.clone()),
            config: Arc::new(config),
        };
        Ok((job, unknown))
    }
}
