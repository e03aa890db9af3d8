//! `--dashboard` over real HTTP: the page and its documents, actions that
//! need the bearer token (and refuse it in a query string), the token kept
//! from the workers, the options' errors, and nothing of it without
//! `--dashboard`. The page itself is tested in a real browser by
//! `make test-browser` (tests/browser/dashboard.py).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "a-dashboard-token-0123456789";

fn dashboard_farm(name: &str, extra: &[&str], build: impl FnOnce(&Jobs) -> Value) -> (Farm, SocketAddr) {
    let mut extra_args = vec!["--metrics-listen".to_string(), "127.0.0.1:0".to_string()];
    extra_args.extend(extra.iter().map(|s| s.to_string()));
    let farm = Farm::start(name, FarmOptions { extra_args, ..Default::default() }, build);
    let stderr = farm.wait_stderr("metrics=http://", secs(10.0));
    let start = stderr.find("metrics=http://").unwrap() + "metrics=http://".len();
    let rest = &stderr[start..];
    let address = rest[..rest.find("/metrics").unwrap()].parse().unwrap();
    (farm, address)
}

/// One raw exchange: (status, head, body).
fn http(address: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&address, secs(5.0)).unwrap();
    stream.set_read_timeout(Some(secs(10.0))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

fn get(address: SocketAddr, path: &str) -> (u16, String, String) {
    http(address, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

fn post(address: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let (code, _, body) = http(address, &format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n"));
    (code, body)
}

#[test]
fn the_page_and_its_documents_are_served_and_actions_need_the_token() {
    let _g = shared();
    let dir = TempDir::new("dashboard_token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let token_arg = token_file.to_string_lossy().into_owned();
    let (farm, address) = dashboard_farm("dashboard", &["--dashboard", "--dashboard-token-file", &token_arg], |jobs| {
        let out = jobs.log.with_file_name("identity.json");
        let mut identity = jobs.job_with("who", 1, json!({"out": out.to_string_lossy()}), json!({}));
        identity["workerClass"] = json!("FarmFixture\\IdentityWorker");
        json!({
            "ok": jobs.job_with("ok", 1, json!({"sleep": 0.05}), json!({"replicas": 2})),
            "who": identity,
        })
    });
    farm.wait_running(&["ok", "who"], secs(15.0));

    let (code, head, page) = get(address, "/");
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("Content-Type: text/html; charset=utf-8"), "{head}");
    assert!(head.contains("Content-Security-Policy: default-src 'none'"), "nothing from elsewhere: {head}");
    assert!(page.contains("<title>lrpm-host</title>") && page.contains("/api/status"), "{page}");
    for external in ["src=\"http", "href=\"http", "url(http", "@import", "<link", "src=\"//"] {
        assert!(!page.contains(external), "no external asset ({external})");
    }

    let (code, head, body) = get(address, "/api/status");
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["ok"]["state"]["slots"].as_array().map(Vec::len), Some(2), "{status}");
    let over_socket = farm.status();
    assert_eq!(
        status.as_object().unwrap().keys().collect::<Vec<_>>(),
        over_socket.as_object().unwrap().keys().collect::<Vec<_>>(),
        "the same document as `lrpmctl status --json`"
    );

    let farm_doc = farm.wait_for(secs(10.0), "a history sample", || {
        let (_, _, body) = get(address, "/api/farm");
        let doc: Value = serde_json::from_str(&body).ok()?;
        (!doc["history"]["farm"].as_array()?.is_empty()).then_some(doc)
    });
    assert_eq!(farm_doc["configuration"]["loaded"], true, "{farm_doc}");
    assert_eq!(farm_doc["actions"], true, "{farm_doc}");
    assert!(farm_doc["uptimeSeconds"].as_u64().is_some(), "{farm_doc}");
    let zygote = farm_doc["zygote"].as_str().unwrap_or_default();
    assert!(zygote.starts_with("ready (pid ") || zygote.starts_with("off"), "{farm_doc}");
    assert_eq!(farm_doc["history"]["farmEverySeconds"], 10);

    // Actions: only with the right token, in the header.
    assert_eq!(post(address, "/api/jobs/ok/restart", None).0, 401);
    assert_eq!(post(address, "/api/jobs/ok/restart", Some("a-dashboard-token-0123456780")).0, 401);
    assert_eq!(post(address, &format!("/api/jobs/ok/restart?token={TOKEN}"), None).0, 401);
    assert!(farm.stderr().contains("dashboard: refused a Restart of job ok without the right token"));
    let restarts = || farm.status()["ok"]["state"]["restarts"].as_u64().unwrap_or(0);
    let before = restarts();
    let (code, body) = post(address, "/api/jobs/ok/restart", Some(TOKEN));
    assert_eq!((code, body.trim()), (200, "Scheduled immediate restart of job ok"));
    farm.wait_for(secs(15.0), "the restart counted", || (restarts() >= before + 2).then_some(()));
    let (code, body) = post(address, "/api/jobs/nope/stop", Some(TOKEN));
    assert_eq!((code, body.trim()), (404, "Will not stop job nope, it does not exist"));
    assert_eq!(post(address, "/api/jobs/ok/stop", Some(TOKEN)).0, 200);
    farm.wait_for(secs(15.0), "ok held", || (farm.status()["ok"]["state"]["status"] == "stopped").then_some(()));
    assert_eq!(post(address, "/api/jobs/ok/start", Some(TOKEN)).0, 200);
    assert_eq!(get(address, "/api/jobs/ok/start").0, 405);

    // The workers never see the token.
    let out = farm.dir.join("identity.json");
    let report: Value = farm.wait_for(secs(10.0), "the identity report", || {
        serde_json::from_str(&std::fs::read_to_string(&out).ok()?).ok()
    });
    assert_eq!((report["dashboardToken"].clone(), report["dashboardTokenServer"].clone()), (json!(false), Value::Null));
}

#[test]
fn without_a_token_the_page_is_read_only_and_without_dashboard_there_is_none() {
    let _g = shared();
    let (farm, address) = dashboard_farm(
        "dashboard_read_only",
        &["--dashboard"],
        |jobs| json!({"ok": jobs.job_with("ok", 1, json!({"sleep": 0.05}), json!({}))}),
    );
    farm.wait_running(&["ok"], secs(15.0));
    let (code, body) = post(address, "/api/jobs/ok/restart", Some(TOKEN));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("actions are off"), "{body}");
    let (_, _, doc) = get(address, "/api/farm");
    assert_eq!(serde_json::from_str::<Value>(&doc).unwrap()["actions"], false);
    drop(farm);

    let (farm, address) = dashboard_farm(
        "dashboard_off",
        &[],
        |jobs| json!({"ok": jobs.job_with("ok", 1, json!({"sleep": 0.05}), json!({}))}),
    );
    farm.wait_running(&["ok"], secs(15.0));
    for path in ["/", "/api/status", "/api/farm"] {
        assert_eq!(get(address, path).0, 404, "{path}");
    }
    assert_eq!(post(address, "/api/jobs/ok/restart", Some(TOKEN)).0, 404);
    assert_eq!(get(address, "/metrics").0, 200);
}

#[test]
fn dashboard_options_are_checked_before_anything_starts() {
    let dir = TempDir::new("dashboard_options");
    let short = dir.join("short");
    std::fs::write(&short, "tooshort\n").unwrap();
    let spaced = dir.join("spaced");
    std::fs::write(&spaced, "a token with spaces in it\n").unwrap();
    let missing = dir.join("missing");
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--dashboard".into()], "--dashboard is served on the --metrics-listen address"),
        (
            vec![
                "--metrics-listen".into(),
                "127.0.0.1:0".into(),
                "--dashboard".into(),
                "--dashboard-token-file".into(),
                path(&short),
            ],
            "the dashboard token must be at least 16 characters",
        ),
        (
            vec![
                "--metrics-listen".into(),
                "127.0.0.1:0".into(),
                "--dashboard".into(),
                "--dashboard-token-file".into(),
                path(&spaced),
            ],
            "printable ASCII without spaces",
        ),
        (
            vec![
                "--metrics-listen".into(),
                "127.0.0.1:0".into(),
                "--dashboard".into(),
                "--dashboard-token-file".into(),
                path(&missing),
            ],
            "--dashboard-token-file",
        ),
        (vec!["--dashboard-token".into(), TOKEN.into()], "--dashboard-token needs --dashboard"),
    ];
    for (args, words) in cases {
        let mut cmd = lrpm_host(&args);
        cmd.arg(poll_source()).env("FARM_JOBS", dir.join("jobs.json")).env_remove("LRPM_DASHBOARD_TOKEN");
        run_with_timeout(cmd, DEFAULT_TIMEOUT).assert_code(64).assert_stderr_contains(words);
    }
}
