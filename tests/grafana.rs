//! examples/grafana: the dashboard's JSON and the alert rules' YAML parse,
//! every PromQL expression in them parses (promql-parser, GreptimeDB's
//! parser of Prometheus' grammar), and every metric they use is one a
//! running farm's /metrics has.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{json, Value};
use support::*;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/grafana").join(name)
}

/// The dashboard's variables as Grafana substitutes them before a query.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$job", ".*")
}

/// The lrpm_* names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("lrpm_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if before_ok {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

fn assert_parses(what: &str, expr: &str) {
    if let Err(e) = promql_parser::parser::parse(&substituted(expr)) {
        panic!("{what}: {expr:?} is not PromQL: {e}");
    }
}

/// The families a farm's /metrics exposes, from its `# TYPE` lines.
fn exposed_families() -> BTreeSet<String> {
    let _g = shared();
    let farm = Farm::start("grafana_metrics", FarmOptions::default(), |jobs| {
        json!({
            "limited": jobs.job_with("limited", 1, json!({"sleep": 0.05}), json!({"memoryLimitMb": 512})),
        })
    });
    farm.wait_running(&["limited"], secs(15.0));
    let text = farm.wait_for(secs(20.0), "OPcache figures and a cycle in /metrics", || {
        let text = farm.request("metrics").ok()?;
        (text.contains("lrpm_opcache_hit_ratio ") && text.contains("lrpm_job_seconds_since_activity{")).then_some(text)
    });
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dashboard_and_the_alert_rules_use_only_metrics_the_farm_exposes_in_valid_promql() {
    let text = std::fs::read_to_string(example("lrpm-host-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let rules_text = std::fs::read_to_string(example("lrpm-host-alerts.yaml")).unwrap();
    let rules: Value = serde_yaml_ng::from_str(&rules_text).expect("the alert rules are YAML");

    // The dashboard: Grafana's shape, each panel with a title, a
    // description and its queries; the data source is a variable.
    assert_eq!(dashboard["uid"], "lrpm-host-farm");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{}", dashboard["schemaVersion"]);
    let variables: Vec<&str> =
        dashboard["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(variables, ["datasource", "job"]);
    let panels = dashboard["panels"].as_array().unwrap();
    let rows: Vec<&str> = panels.iter().filter(|p| p["type"] == "row").filter_map(|p| p["title"].as_str()).collect();
    assert_eq!(
        rows,
        ["Farm overview", "Per-job rates", "Memory per worker", "Restarts, recycles and the watchdog"],
        "the sections the dashboard promises"
    );
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel ids are unique: {title}");
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24, "{title} fits the grid");
        if panel["type"] == "row" {
            continue;
        }
        assert!(!title.is_empty() && panel["description"].as_str().is_some_and(|d| d.len() > 20), "{panel}");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}"));
        let mut refs = BTreeSet::new();
        for target in targets {
            assert!(refs.insert(target["refId"].as_str().unwrap()), "{title}: refIds are unique");
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{title}: a query"));
            assert_parses(title, expr);
            used.extend(metric_names(expr));
        }
    }
    let job_query = dashboard["templating"]["list"][1]["query"]["query"].as_str().unwrap();
    used.extend(metric_names(job_query));

    // The rules: Prometheus' rule file shape, each with a severity and a summary.
    let groups = rules["groups"].as_array().unwrap();
    let mut alerts = Vec::new();
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        let name = rule["alert"].as_str().unwrap();
        alerts.push(name.to_string());
        let expr = rule["expr"].as_str().unwrap();
        assert_parses(name, expr);
        used.extend(metric_names(expr));
        assert!(["critical", "warning", "info"].contains(&rule["labels"]["severity"].as_str().unwrap()), "{name}");
        assert!(rule["annotations"]["summary"].as_str().is_some_and(|s| !s.is_empty()), "{name}");
        if let Some(wait) = rule.get("for") {
            assert!(wait.as_str().is_some_and(|w| w.ends_with('m') || w.ends_with('s')), "{name}: for {wait}");
        }
    }
    for promised in ["LrpmJobCrashLoop", "LrpmJobFailed", "LrpmMemoryNearLimit", "LrpmNoCycles"] {
        assert!(alerts.iter().any(|a| a == promised), "{promised} in {alerts:?}");
    }

    let exposed = exposed_families();
    let missing: Vec<&String> = used.iter().filter(|name| !exposed.contains(*name)).collect();
    assert!(missing.is_empty(), "used but not in /metrics: {missing:?}\nexposed: {exposed:?}");
    assert!(used.len() >= 20, "{used:?}");
}
