//! The job rules, table by table, and the cases shared with the PHP-side
//! validator (php/tests/job-cases.json).

use super::fields::FIELDS;
use super::*;
use serde_json::json;

/// Users for the tests: "nobody" exists, nobody else does.
fn test_users(spec: &str) -> Result<Arc<users::Credentials>, String> {
    match spec {
        "nobody" => Ok(Arc::new(users::Credentials {
            spec: spec.to_string(),
            user: "nobody".to_string(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
            home: "/nonexistent".to_string(),
        })),
        other => Err(format!("no such user '{other}'")),
    }
}

#[test]
fn a_user_is_resolved_per_job_and_an_unknown_one_fails_that_job_alone() {
    let mut with_user = good();
    with_user["user"] = json!("nobody");
    let mut unknown = good();
    unknown["user"] = json!("no-such-user");
    let mut malformed = good();
    malformed["user"] = json!("a:b:c");
    let validated = validate_entries(
        vec![entry(json!(1), with_user), entry(json!(2), unknown), entry(json!(3), malformed), entry(json!(4), good())],
        &test_users,
        &JobDefaults::default(),
    );
    let ids: Vec<String> = validated.jobs.iter().map(|j| j.id.to_string()).collect();
    assert_eq!(ids, ["1", "4"]);
    assert_eq!(validated.jobs[0].user.as_ref().map(|u| u.uid), Some(65534));
    assert_eq!(validated.jobs[1].user, None);
    let errors: Vec<String> = validated.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("job 2: field 'user': Invalid data: no such user 'no-such-user' ("), "{errors:?}");
    assert!(errors[1].starts_with("job 3: field 'user': Invalid data: got string \"a:b:c\" ("), "{errors:?}");
}

#[test]
fn users_are_looked_up_once_per_message_and_again_at_the_next_one() {
    let lookups = std::cell::RefCell::new(Vec::new());
    let exists = std::cell::Cell::new(false);
    let resolve = |spec: &str| {
        lookups.borrow_mut().push(spec.to_string());
        if exists.get() {
            test_users("nobody")
        } else {
            Err(format!("no such user '{spec}'"))
        }
    };
    let mut job = good();
    job["user"] = json!("svc");
    let with_digest = |id: i64, digest: &str| {
        let mut e = entry(json!(id), job.clone());
        e["digest"] = json!(digest);
        e
    };
    let mut cache = EntryCache::default();
    let (first, _) = validate_entries_cached(
        vec![with_digest(1, "a"), with_digest(2, "b")],
        &mut cache,
        &resolve,
        &JobDefaults::default(),
    );
    assert_eq!((first.jobs.len(), first.errors.len()), (0, 2));
    assert_eq!(*lookups.borrow(), ["svc"], "one lookup for two jobs of one user");
    // The user is created; the entries are unchanged (served from the
    // cache), yet the next message finds it.
    exists.set(true);
    let unchanged = |id: i64, digest: &str| json!({"id": id, "digest": digest, "unchanged": true});
    let (second, lost) = validate_entries_cached(
        vec![unchanged(1, "a"), unchanged(2, "b")],
        &mut cache,
        &resolve,
        &JobDefaults::default(),
    );
    assert!(lost.is_empty());
    assert_eq!((second.jobs.len(), second.errors.len()), (2, 0), "{:?}", second.errors);
    assert!(second.jobs.iter().all(|j| j.user.as_ref().map(|u| u.uid) == Some(65534)));
    assert_eq!(lookups.borrow().len(), 2);
}

fn described(job: Value) -> DescribedJob {
    DescribedJob::from_json(JobId::Int(42), job)
}

/// php/tests/job-cases.json: the cases Lrpm\JobValidator (the PHP
/// package, php/tests/JobValidatorTest.php) is tested against too, so
/// the two sets of rules and messages cannot drift apart.
#[test]
fn agrees_with_the_php_job_validator_on_the_shared_cases() {
    let cases: Vec<Value> = serde_json::from_str(include_str!("../../php/tests/job-cases.json")).unwrap();
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
    let job = described(json!({"name": "n", "workerClass": "W", "mtime": 1, "workerConfig": []})).validate().unwrap().0;
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
    let validated = validate_entries(entries, &test_users, &JobDefaults::default());
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
    let mut defaults = JobDefaults::default();
    for (field, text) in
        [("replicas", "3"), ("cycleTimeoutSeconds", "60"), ("maxCycles", "100"), ("memoryLimitMb", "128")]
    {
        defaults.set(field, text).unwrap();
    }
    let mut own = good();
    own["replicas"] = json!(1);
    own["maxCycles"] = json!(5);
    // Validation returns the job complete: a configuration message's
    // entries get the defaults as the job alone does.
    let (job, _) = described(own.clone()).validate_with(&defaults).unwrap();
    assert_eq!(
        (job.replicas, job.cycle_timeout_seconds, job.max_cycles, job.memory_limit_mb, job.max_lifetime_seconds),
        (1, Some(60), Some(5), Some(128), None)
    );
    let validated = validate_entries(vec![entry(json!(1), own), entry(json!(2), good())], &test_users, &defaults);
    let replicas: Vec<u32> = validated.jobs.iter().map(|j| j.replicas).collect();
    assert_eq!(replicas, vec![1, 3]);
    assert_eq!(validated.jobs[1].cycle_timeout_seconds, Some(60));
    // What status shows: the job's own, else the host's, else the unset meaning.
    assert_eq!(
        serde_json::Value::Object(validated.jobs[0].settings.as_ref().clone()),
        json!({
            "cycleIntervalSeconds": null, "replicas": 1, "restartPolicy": "always", "maxFailures": null,
            "failureWindowSeconds": 60, "maxCycles": 5, "maxLifetimeSeconds": null, "memoryLimitMb": 128,
            "cycleTimeoutSeconds": 60, "progressTimeoutSeconds": null, "maxTasks": 16, "essential": false
        })
    );
    assert!(!validated.jobs[1].config.contains_key("replicas"), "config keeps only what the source gave");
}

#[test]
fn every_host_default_has_its_option_and_is_checked_by_its_field_rule() {
    let options = JobDefaults::options();
    let fields: Vec<&str> = options.iter().map(|o| o.field).collect();
    assert_eq!(
        fields,
        [
            "replicas",
            "cycleIntervalSeconds",
            "restartPolicy",
            "maxFailures",
            "failureWindowSeconds",
            "maxCycles",
            "maxLifetimeSeconds",
            "memoryLimitMb",
            "cycleTimeoutSeconds",
            "progressTimeoutSeconds",
            "maxTasks",
            "essential"
        ]
    );
    for option in &options {
        assert_eq!(option.flag, super::fields::kebab_case(option.field), "the option is the field in kebab case");
        assert!(option.help.contains(option.field));
    }
    let refused = |field: &str, text: &str| JobDefaults::default().set(field, text).unwrap_err();
    // The words a job's value gets (fields.rs), not clap's.
    assert_eq!(refused("replicas", "0"), "0 is below 1 (to run no process, hold the job with `lrpmctl stop ID`)");
    assert_eq!(refused("replicas", "10001"), "10001 is above the maximum of 10000");
    assert_eq!(refused("cycleTimeoutSeconds", "86401"), "86401 is above the maximum of 86400 (one day)");
    assert_eq!(refused("maxCycles", "-3"), "-3 is negative");
    assert_eq!(refused("maxCycles", "many"), "\"many\" is not an integer");
    assert!(refused("cycleIntervalSeconds", "0").contains("is not above 0"));
    assert!(refused("cycleIntervalSeconds", "NaN").contains("not a number"));
    assert!(
        refused("restartPolicy", "sometimes").contains("\"on-failure\""),
        "{}",
        refused("restartPolicy", "sometimes")
    );
    assert!(refused("workerClass", "X").contains("no host-wide default"));
    let mut defaults = JobDefaults::default();
    defaults.set("cycleIntervalSeconds", "0.25").unwrap();
    defaults.set("restartPolicy", "on-failure").unwrap();
    defaults.set("essential", "").unwrap();
    let (job, _) = described(good()).validate_with(&defaults).unwrap();
    assert_eq!(
        (job.cycle_interval_seconds, job.restart_policy, job.essential),
        (Some(0.25), RestartPolicy::OnFailure, true)
    );
}

#[test]
fn a_memory_limit_at_or_above_php_memory_limit_is_pointed_out() {
    let mut limited = good();
    limited["memoryLimitMb"] = json!(128);
    let (job, _) = described(limited).validate().unwrap();
    let mb = 1024 * 1024;
    assert!(memory_limit_warning(&job, Some(128 * mb)).unwrap().contains("at or above PHP's memory_limit (128 MB)"));
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
    let validated = validate_entries(
        vec![bad, entry(json!(5), good()), entry(json!(5), good())],
        &test_users,
        &JobDefaults::default(),
    );
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
        &test_users,
        &JobDefaults::default(),
    );
    assert!(lost.is_empty());
    assert_eq!(first.jobs.len(), 1);
    assert_eq!(first.errors.len(), 1);
    // Both unchanged: the same outcome, from the cache.
    let (second, lost) = validate_entries_cached(
        vec![unchanged(json!(1), "a"), unchanged(json!("b"), "b")],
        &mut cache,
        &test_users,
        &JobDefaults::default(),
    );
    assert!(lost.is_empty());
    assert_eq!(second.jobs, first.jobs);
    assert_eq!(second.errors, first.errors);
    // Job 1 left the configuration: a later "unchanged" for it is unknown.
    validate_entries_cached(vec![unchanged(json!("b"), "b")], &mut cache, &test_users, &JobDefaults::default());
    let (_, lost) =
        validate_entries_cached(vec![unchanged(json!(1), "a")], &mut cache, &test_users, &JobDefaults::default());
    assert_eq!(lost, vec![UnknownDigest { job_id: "1".into() }]);
    // A digest that does not match is unknown too.
    let mut cache = EntryCache::default();
    validate_entries_cached(vec![with_digest(json!(1), good(), "a")], &mut cache, &test_users, &JobDefaults::default());
    let (_, lost) =
        validate_entries_cached(vec![unchanged(json!(1), "z")], &mut cache, &test_users, &JobDefaults::default());
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
        let validated = validate_entries(vec![entry(json!(1), Value::Object(job))], &test_users, &JobDefaults::default());
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
            progress: Some(crate::farm::CycleProgress { cycles: 0, current_cycle: Some(std::time::Duration::MAX), silent_for: Some(std::time::Duration::MAX) }),
        }, now);
        farm.handle(crate::farm::Event::ChildExited { pid: 10, exit: crate::farm::ExitKind::Code(1), recycle: None, cycles: 0, tasks: Default::default(), php: crate::farm::PhpEnd::Unknown }, now);
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
