//! A whole configuration message: each entry validated alone, duplicates
//! refused, unchanged entries taken from the cache.

#![forbid(unsafe_code)]

use std::collections::HashMap;

use serde_json::Value;

use super::fields::FIELDS;
use super::users::UserResolver;
use super::validate::entry_error;
use super::{DescribedJob, Job, JobDefaults, JobId, UnknownField, ValidationError};

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

fn record(validated: &mut Validated, outcome: Outcome) {
    match outcome {
        Ok((job, fields)) => {
            validated.jobs.push(job);
            validated.unknown_fields.extend(fields);
        }
        Err(errors) => validated.errors.extend(errors),
    }
}

/// Validates a whole configuration message (its `jobs` entries) for a farm:
/// each entry alone, so one broken entry never rejects the others; entries
/// marked unchanged come from `cache`, the others are validated and
/// remembered. Two entries with the same id are both refused: silently
/// running one of them would hide a job. Also returns the elided entries
/// the cache does not know (a message was lost: the caller must not apply
/// this configuration). A `user` field is resolved by `resolve_user` on
/// every message, once per distinct name (an unknown user is that job's
/// error, and one added since is found at the next poll).
pub fn validate_entries_cached(
    entries: Vec<Value>,
    cache: &mut EntryCache,
    resolve_user: UserResolver,
    defaults: &JobDefaults,
) -> (Validated, Vec<UnknownDigest>) {
    let mut validated = Validated::default();
    let mut unknown = Vec::new();
    let mut kept = HashMap::new();
    let mut users = Users { resolve: resolve_user, known: HashMap::new() };
    let mut described = Vec::new();
    for entry in entries {
        let digest = entry.get("digest").and_then(Value::as_str).map(str::to_string);
        if entry.get("unchanged").and_then(Value::as_bool) == Some(true) {
            let key = entry_key(&entry).unwrap_or_else(|| "?".to_string());
            match (cache.by_id.remove(&key), digest) {
                (Some((known, outcome)), Some(digest)) if known == digest => {
                    record(&mut validated, users.resolved(outcome.clone()));
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
        let outcome = job.validate_with(defaults);
        record(&mut validated, users.resolved(outcome.clone()));
        if let Some(digest) = digest {
            kept.insert(key, (digest, outcome));
        }
    }
    cache.by_id = kept;
    (validated, unknown)
}

/// `validate_entries_cached` without a cache (`check`, one message).
pub fn validate_entries(entries: Vec<Value>, resolve_user: UserResolver, defaults: &JobDefaults) -> Validated {
    validate_entries_cached(entries, &mut EntryCache::default(), resolve_user, defaults).0
}

/// The `user` fields of one message, each distinct name looked up once (a
/// lookup may go to a directory service: 10,000 jobs of one user cost one).
struct Users<'r> {
    resolve: UserResolver<'r>,
    known: HashMap<String, Result<std::sync::Arc<super::users::Credentials>, String>>,
}

impl Users<'_> {
    /// The outcome with its job's `user` field resolved, or the field's error.
    fn resolved(&mut self, outcome: Outcome) -> Outcome {
        let (mut job, unknown) = outcome?;
        let Some(spec) = job.config.get("user").and_then(Value::as_str) else { return Ok((job, unknown)) };
        let resolve = self.resolve;
        match self.known.entry(spec.to_string()).or_insert_with(|| resolve(spec)) {
            Ok(credentials) => {
                job.user = Some(std::sync::Arc::clone(credentials));
                Ok((job, unknown))
            }
            Err(problem) => Err(vec![ValidationError {
                job_id: job.id.to_string(),
                field: "user".to_string(),
                problem: format!("Invalid data: {problem}"),
                rule: FIELDS.iter().find(|rule| rule.name == "user").map_or("", |rule| rule.description).to_string(),
            }]),
        }
    }
}
