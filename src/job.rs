//! Job specs: parsing and validation with php-lrpm's rules and defaults
//! (ConfigurationValidator: mtime, name, workerConfig, workerClass required;
//! shortRunTimeSeconds = 5 and shutdownTimeoutSeconds = 10 by default).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const DEFAULT_SHORT_RUN_TIME_SECONDS: u64 = 5;
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;

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
    pub config: Map<String, Value>,
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
#[derive(Debug, Clone, Deserialize)]
pub struct DescribedJob {
    pub id: JobId,
    #[serde(rename = "type")]
    pub php_type: String,
    #[serde(default)]
    pub job: Value,
    #[serde(rename = "fieldTypes", default)]
    pub field_types: Map<String, Value>,
    #[serde(rename = "workerClassExists", default)]
    pub worker_class_exists: bool,
    /// Where workers find the class (runner.php, class_visibility):
    /// "bootstrap", "source" (the source file, which workers load too),
    /// "sourceOnly" (the source file, which workers do not load), "missing".
    #[serde(rename = "workerClassVisibility", default)]
    pub worker_class_visibility: Option<String>,
    #[serde(rename = "encodeError", default)]
    pub encode_error: Option<String>,
}

struct FieldRule {
    name: &'static str,
    description: &'static str,
    default: Option<u64>,
}

// php-lrpm's field order and descriptions.
const FIELDS: [FieldRule; 6] = [
    FieldRule { name: "mtime", description: "Time of last modification, must be a UTC Unix timestamp integer", default: None },
    FieldRule { name: "name", description: "Descriptive job name, must be a string", default: None },
    FieldRule { name: "workerConfig", description: "Worker-specific configuration, must be an array", default: None },
    FieldRule { name: "workerClass", description: "Worker class, must be a string referencing an existing class", default: None },
    FieldRule {
        name: "shortRunTimeSeconds",
        description: "Minimum number of seconds a process is expected to run; if the process terminates earlier then this, it will be restarted with backoff",
        default: Some(DEFAULT_SHORT_RUN_TIME_SECONDS),
    },
    FieldRule {
        name: "shutdownTimeoutSeconds",
        description: "Time in seconds to wait for SIGCHLD after sending SIGTERM to a child, before killing the child with SIGKILL",
        default: Some(DEFAULT_SHUTDOWN_TIMEOUT_SECONDS),
    },
];

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

    fn field_type(&self, field: &str) -> Option<&str> {
        self.field_types.get(field).and_then(Value::as_str)
    }

    /// php-lrpm's ConfigurationValidator::isValid(), with every broken rule reported.
    pub fn validate(&self) -> Result<Job, Vec<ValidationError>> {
        let id = self.id.to_string();
        let error = |field: &str, problem: String, rule: &str| ValidationError {
            job_id: id.clone(),
            field: field.to_string(),
            problem,
            rule: rule.to_string(),
        };
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
        let mut config = match &self.job {
            Value::Object(map) => map.clone(),
            // An empty or list-shaped PHP array has no named fields.
            Value::Array(items) => items.iter().enumerate().map(|(i, v)| (i.to_string(), v.clone())).collect(),
            _ => Map::new(),
        };
        let mut errors = Vec::new();
        for rule in &FIELDS {
            let Some(value) = config.get(rule.name) else {
                match rule.default {
                    Some(default) => {
                        config.insert(rule.name.to_string(), Value::from(default));
                    }
                    None => errors.push(error(rule.name, "Field missing".to_string(), rule.description)),
                }
                continue;
            };
            let php_type = self.field_type(rule.name).unwrap_or_else(|| json_php_type(value));
            let valid = match rule.name {
                "name" => php_type == "string",
                "workerConfig" => php_type == "array",
                "workerClass" => php_type == "string" && self.worker_class_exists && !self.hidden_from_workers(),
                _ => php_type == "integer" && value.as_i64().is_some_and(|n| n >= 0),
            };
            if !valid {
                let got = if rule.name == "workerClass" && php_type == "string" && self.hidden_from_workers() {
                    format!(
                        "class {} is declared in the source file, which workers do not load (declare it in a file the bootstrap autoloads)",
                        value.as_str().unwrap_or_default()
                    )
                } else if rule.name == "workerClass" && php_type == "string" {
                    format!("class {} does not exist", value.as_str().unwrap_or_default())
                } else {
                    format!("got {php_type} {}", short_json(value))
                };
                errors.push(error(rule.name, format!("Invalid data: {got}"), rule.description));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let int = |field: &str| config.get(field).and_then(Value::as_i64).unwrap_or_default();
        let text = |field: &str| config.get(field).and_then(Value::as_str).unwrap_or_default().to_string();
        Ok(Job {
            id: self.id.clone(),
            name: text("name"),
            worker_class: text("workerClass"),
            mtime: int("mtime"),
            short_run_time_seconds: int("shortRunTimeSeconds") as u64,
            shutdown_timeout_seconds: int("shutdownTimeoutSeconds") as u64,
            config,
        })
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

/// Validates a whole configuration: valid jobs in order, and every error.
pub fn validate_all(described: &[DescribedJob]) -> (Vec<Job>, Vec<ValidationError>) {
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for entry in described {
        match entry.validate() {
            Ok(job) => jobs.push(job),
            Err(mut e) => errors.append(&mut e),
        }
    }
    (jobs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn described(job: Value) -> DescribedJob {
        DescribedJob::from_json(JobId::Int(42), job)
    }

    #[test]
    fn fills_php_lrpm_defaults() {
        let job =
            described(json!({"name": "n", "workerClass": "W", "mtime": 1, "workerConfig": []})).validate().unwrap();
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

    #[test]
    fn validate_all_keeps_valid_jobs() {
        let good = described(json!({"name": "n", "workerClass": "W", "mtime": 1, "workerConfig": []}));
        let bad = DescribedJob::from_json(JobId::Int(7), json!({"name": "n"}));
        let (jobs, errors) = validate_all(&[good, bad]);
        assert_eq!(jobs.len(), 1);
        assert!(errors.iter().all(|e| e.job_id == "7"));
    }
}
