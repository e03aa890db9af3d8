//! `--metrics-listen`: /metrics parsed by Prometheus' own Python parser
//! (Debian's python3-prometheus-client, installed by `make test`), its
//! counters moving with crashes and recycles, /healthz and /readyz, the
//! HTTP server's refusals, hostile HTTP clients that must not delay the
//! control socket, `lrpmctl metrics`, and the SIGUSR1 report.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const RECYCLER: &str = "FarmFixture\\Recycler";

/// Debian's python3, where apt installs python3-prometheus-client (a
/// pyenv or venv python3 earlier in PATH would not have it).
const PYTHON: &str = "/usr/bin/python3";

/// A farm serving metrics on a port the kernel chooses.
fn metrics_farm(name: &str, build: impl FnOnce(&Jobs) -> Value) -> (Farm, SocketAddr) {
    let options =
        FarmOptions { extra_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()], ..Default::default() };
    let farm = Farm::start(name, options, build);
    let address = metrics_address(&farm);
    (farm, address)
}

/// The address from the supervisor's start line (`metrics=http://ADDR/metrics`).
fn metrics_address(farm: &Farm) -> SocketAddr {
    let stderr = farm.wait_stderr("metrics=http://", secs(10.0));
    let start = stderr.find("metrics=http://").unwrap() + "metrics=http://".len();
    let rest = &stderr[start..];
    let address = &rest[..rest.find("/metrics").unwrap()];
    address.parse().unwrap_or_else(|e| panic!("{address:?}: {e}\n{}", farm.diagnostics()))
}

/// A sample: its name, labels and value.
type Sample = (String, BTreeMap<String, String>, f64);
/// Families by name: type and samples.
type Families = BTreeMap<String, (String, Vec<Sample>)>;

/// One raw HTTP exchange: (status code, headers, body).
fn http(address: SocketAddr, request: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&address, secs(5.0))?;
    stream.set_read_timeout(Some(secs(10.0)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, head.to_string(), body.to_string()))
}

fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = http(address, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (code, body)
}

/// Parses an exposition with prometheus_client's text parser (what a
/// Prometheus-compatible scraper reads) and returns, by family name, its
/// type and samples `[name, labels, value]`. A parse error fails the test.
fn parse_with_prometheus_client(text: &str) -> Families {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {"type": family.type, "samples": [[s.name, s.labels, s.value] for s in family.samples]}
print(json.dumps(out))
"#;
    assert!(
        std::path::Path::new(PYTHON).is_file(),
        "{PYTHON} is missing: `make test` installs Debian's python3 and python3-prometheus-client"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {PYTHON}: {e}"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics (python3-prometheus-client is installed by `make test`):\n{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, family)| {
            let samples = family["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels =
                        s[1].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()));
                    (s[0].as_str().unwrap().to_string(), labels.collect(), s[2].as_f64().unwrap_or(f64::NAN))
                })
                .collect();
            (name.clone(), (family["type"].as_str().unwrap().to_string(), samples))
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`.
fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.values().flat_map(|(_, samples)| samples).find_map(|(sample, have, value)| {
        (sample == name && labels.iter().all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))).then_some(*value)
    })
}

fn scrape(address: SocketAddr) -> Families {
    let (code, body) = get(address, "/metrics");
    assert_eq!(code, 200, "{body}");
    parse_with_prometheus_client(&body)
}

#[test]
fn metrics_parse_with_prometheus_client_and_counters_move_with_crashes_and_recycles() {
    let _g = shared();
    let (farm, address) = metrics_farm("metrics_counters", |jobs| {
        json!({
            "ok": jobs.job_with("ok", 1, json!({"sleep": 0.05}), json!({"name": "a \"quoted\" \\ name", "replicas": 2})),
            "crash": jobs.job_with("crash", 1, json!({"exitInStart": 3}), json!({"shortRunTimeSeconds": 0})),
            "mc": jobs.job_with("mc", 1, json!({"sleep": 0.01}), json!({"maxCycles": 2})),
            "life": jobs.job_with("life", 1, json!({"sleep": 0.05}), json!({"maxLifetimeSeconds": 1})),
            "mem": jobs.job_with("mem", 1, json!({"sleep": 0.05}), json!({"memoryLimitMb": 1})),
            "ask": jobs.job_with("ask", 1, json!({"recycleAfter": 2}), json!({"workerClass": RECYCLER})),
        })
    });
    farm.wait_running(&["ok"], secs(10.0));
    // Every reason a worker gives, and crashes, counted.
    let families = farm.wait_for(secs(20.0), "recycles of every kind and crashes", || {
        let families = scrape(address);
        let recycles = |job: &str, reason: &str| {
            value(&families, "lrpm_job_recycles_total", &[("job", job), ("reason", reason)]).unwrap_or(0.0)
        };
        let done = recycles("mc", "max_cycles") >= 2.0
            && recycles("life", "max_lifetime") >= 1.0
            && recycles("mem", "memory") >= 2.0
            && recycles("ask", "requested") >= 2.0
            && value(&families, "lrpm_job_failures_total", &[("job", "crash")]).unwrap_or(0.0) >= 3.0;
        done.then_some(families)
    });
    let types: BTreeMap<&str, &str> = families.iter().map(|(n, (t, _))| (n.as_str(), t.as_str())).collect();
    // prometheus_client names counter families without their _total.
    for (family, kind) in [
        ("lrpm_job_restarts", "counter"),
        ("lrpm_job_failures", "counter"),
        ("lrpm_job_recycles", "counter"),
        ("lrpm_job_cycles", "counter"),
        ("lrpm_config_loads", "counter"),
        ("lrpm_output_lines_forwarded", "counter"),
        ("lrpm_job_state", "gauge"),
        ("lrpm_job_processes_desired", "gauge"),
        ("lrpm_job_processes_running", "gauge"),
        ("lrpm_job_backoff_seconds", "gauge"),
        ("lrpm_job_last_exit_status", "gauge"),
        ("lrpm_job_last_cycle_seconds", "gauge"),
        ("lrpm_job_resident_bytes", "gauge"),
        ("lrpm_uptime_seconds", "gauge"),
    ] {
        assert_eq!(types.get(family), Some(&kind), "{family}: {types:?}");
    }
    let ok = [("job", "ok"), ("name", "a \"quoted\" \\ name")];
    assert_eq!(value(&families, "lrpm_job_processes_desired", &ok), Some(2.0), "labels are escaped and read back");
    assert_eq!(value(&families, "lrpm_job_processes_running", &ok), Some(2.0));
    assert_eq!(value(&families, "lrpm_job_state", &[("job", "ok"), ("state", "running")]), Some(1.0));
    assert_eq!(value(&families, "lrpm_job_state", &[("job", "ok"), ("state", "backoff")]), Some(0.0));
    assert!(value(&families, "lrpm_job_resident_bytes", &ok).unwrap_or(0.0) > 1e6, "{families:?}");
    let crash = [("job", "crash")];
    assert_eq!(value(&families, "lrpm_job_last_exit_status", &crash), Some(3.0));
    assert!(value(&families, "lrpm_job_restarts_total", &crash).unwrap_or(0.0) >= 3.0);
    assert_eq!(value(&families, "lrpm_job_recycles_total", &[("job", "crash"), ("reason", "memory")]), Some(0.0));
    assert_eq!(value(&families, "lrpm_job_failures_total", &[("job", "mc")]), Some(0.0), "a recycle is no failure");
    // maxCycles 2: every ended process completed 2 cycles, and the counter keeps them.
    let mc_cycles = value(&families, "lrpm_job_cycles_total", &[("job", "mc")]).unwrap_or(0.0);
    assert!(mc_cycles >= 4.0, "{mc_cycles}");
    assert_eq!(value(&families, "lrpm_config_loads_total", &[("result", "ok")]), Some(1.0));
    // The workers' "recycling: ..." lines (stderr) are forwarded output.
    assert!(value(&families, "lrpm_output_lines_forwarded_total", &[]).unwrap_or(0.0) >= 4.0, "{families:?}");
    // The log names the reasons.
    let stderr = farm.stderr();
    for reason in ["maxCycles", "maxLifetimeSeconds", "memoryLimitMb", "Lrpm\\recycle()"] {
        assert!(stderr.contains(&format!("recycled ({reason}); starting a fresh process")), "{reason}\n{stderr}");
    }
    // A rolling recycle counts as one.
    let before = value(&families, "lrpm_job_recycles_total", &[("job", "ok"), ("reason", "rolling")]);
    assert_eq!(before, Some(0.0));
    assert_eq!(farm.request("recycle ok").unwrap(), "Scheduled rolling recycle of job ok");
    farm.wait_for(secs(20.0), "two rolling recycles counted", || {
        let families = scrape(address);
        (value(&families, "lrpm_job_recycles_total", &[("job", "ok"), ("reason", "rolling")]) == Some(2.0))
            .then_some(())
    });
    // OPcache figures, published by the workers after start().
    let families = farm.wait_for(secs(10.0), "OPcache figures", || {
        let families = scrape(address);
        families.contains_key("lrpm_opcache_memory_used_bytes").then_some(families)
    });
    assert!(value(&families, "lrpm_opcache_memory_used_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert!(value(&families, "lrpm_opcache_memory_free_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert!(value(&families, "lrpm_opcache_hits_total", &[]).is_some(), "{families:?}");
    // lrpmctl metrics prints the same exposition.
    let out = lrpmctl(&farm.socket, &["metrics"]);
    out.assert_code(0);
    let over_socket = parse_with_prometheus_client(&out.stdout);
    assert_eq!(over_socket.keys().collect::<Vec<_>>(), families.keys().collect::<Vec<_>>(), "{}", out.dump());
}

#[test]
fn readyz_fails_while_a_job_backs_off_or_has_failed_and_passes_once_all_are_up() {
    let _g = shared();
    let (farm, address) = metrics_farm("metrics_readyz", |jobs| {
        json!({
            "good": jobs.job_with("good", 1, json!({"sleep": 0.05}), json!({})),
            "bad": jobs.job_with("bad", 1, json!({"exitInStart": 3}), json!({"maxFailures": 2})),
        })
    });
    farm.wait_running(&["good"], secs(10.0));
    assert_eq!(get(address, "/healthz"), (200, "ok\n".to_string()));
    let backoff = farm.wait_for(secs(10.0), "/readyz to name job bad in backoff", || {
        let (code, body) = get(address, "/readyz");
        (code == 503 && body.contains("job bad (job-bad): backoff, 0 of 1 processes running")).then_some(body)
    });
    assert!(!backoff.contains("job good"), "{backoff}");
    let failed = farm.wait_for(secs(10.0), "/readyz to name job bad as failed", || {
        let (code, body) = get(address, "/readyz");
        (code == 503 && body.contains("job bad (job-bad): failed")).then_some(body)
    });
    assert!(failed.starts_with("not ready: 1 of 2 jobs\n"), "{failed}");
    // HEAD: the same answer without a body.
    let (code, head, body) = http(address, "HEAD /readyz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!((code, body.as_str()), (503, ""), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    farm.write_jobs(&json!({
        "good": farm.jobs().job_with("good", 1, json!({"sleep": 0.05}), json!({})),
        "bad": farm.jobs().job_with("bad", 2, json!({"sleep": 0.05}), json!({"maxFailures": 2})),
    }));
    farm.request("reload").unwrap();
    let ready = farm.wait_for(secs(10.0), "/readyz to pass", || {
        let (code, body) = get(address, "/readyz");
        (code == 200).then_some(body)
    });
    assert_eq!(ready, "ready: 2 jobs\n");
}

#[test]
fn healthz_fails_until_a_configuration_is_loaded() {
    let _g = shared();
    let dir = TempDir::new("metrics_healthz");
    let jobs = Jobs { log: dir.join("events.log") };
    write_atomically(&dir.join("jobs.json"), json!({"a": jobs.job("a", 1)}).to_string().as_bytes());
    // The source throws until the flag file goes.
    std::fs::write(dir.join("jobs.json.fail"), "not yet").unwrap();
    let options =
        FarmOptions { extra_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()], ..Default::default() };
    let farm = Farm::start_in(dir, options);
    let address = metrics_address(&farm);
    let (code, body) = get(address, "/healthz");
    assert_eq!((code, body.as_str()), (503, "no configuration loaded yet\n"), "{}", farm.diagnostics());
    assert_eq!(get(address, "/readyz").0, 503);
    farm.wait_stderr("not yet", secs(5.0));
    std::fs::remove_file(farm.dir.join("jobs.json.fail")).unwrap();
    farm.wait_for(secs(10.0), "/healthz to pass", || (get(address, "/healthz").0 == 200).then_some(()));
    farm.wait_running(&["a"], secs(10.0));
    let families = scrape(address);
    assert!(value(&families, "lrpm_config_loads_total", &[("result", "failed")]).unwrap_or(0.0) >= 1.0);
    assert_eq!(value(&families, "lrpm_config_loads_total", &[("result", "ok")]), Some(1.0));
    assert_eq!(value(&families, "lrpm_configuration_loaded", &[]), Some(1.0));
}

#[test]
fn unknown_paths_are_404_other_methods_405_and_broken_requests_400_or_431() {
    let _g = shared();
    let (farm, address) = metrics_farm("metrics_refusals", |jobs| json!({"a": jobs.job("a", 1)}));
    farm.wait_running(&["a"], secs(10.0));
    assert_eq!(get(address, "/").0, 404);
    assert_eq!(get(address, "/metrics/extra").0, 404);
    let (code, head, _) = http(address, "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    assert_eq!(http(address, "DELETE /readyz HTTP/1.1\r\n\r\n").unwrap().0, 405);
    assert_eq!(http(address, "\u{1}\u{2} garbage\r\n\r\n").unwrap().0, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(http(address, &huge).unwrap().0, 431);
    let (code, head, body) = http(address, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(code, 200);
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert_eq!(head.lines().find_map(|l| l.strip_prefix("Content-Length: ")), Some(body.len().to_string().as_str()));
    assert!(farm.try_exit().is_none(), "{}", farm.diagnostics());
}

/// 1,000 HTTP clients connected at once (half with a whole request they
/// never read the answer of, half with a partial one), and a slowloris
/// sending a byte every 100 ms: a control-socket round trip stays under
/// 100 ms meanwhile, the slowloris is dropped at the 5 s deadline, and the
/// endpoint answers again afterwards.
#[test]
fn a_flood_of_http_clients_and_a_slowloris_do_not_delay_the_control_socket() {
    const CLIENTS: usize = 1000;
    let _g = exclusive();
    let options =
        FarmOptions { extra_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()], ..Default::default() }
            .env("LRPM_LOG", "debug");
    let farm = Farm::start("metrics_flood", options, |jobs| json!({"a": jobs.job("a", 1), "b": jobs.job("b", 1)}));
    let address = metrics_address(&farm);
    farm.wait_running(&["a", "b"], secs(10.0));

    let stop = Arc::new(AtomicBool::new(false));
    let slowloris = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || -> (Duration, bool) {
            let started = Instant::now();
            let Ok(mut stream) = TcpStream::connect(address) else { return (started.elapsed(), false) };
            for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
                if stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            (started.elapsed(), !stop.load(Ordering::Relaxed))
        })
    };
    let mut flood = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        // Connections past the server's cap wait in its backlog: connect()
        // returns once the kernel queued them.
        let mut stream = TcpStream::connect_timeout(&address, secs(5.0))
            .unwrap_or_else(|e| panic!("HTTP client #{i}: {e}\n{}", farm.diagnostics()));
        let request: &[u8] = if i % 2 == 0 { b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n" } else { b"GET /met" };
        let _ = stream.write_all(request);
        flood.push(stream);
    }
    // Round trips on the control socket while they are all connected. The
    // machine may be shared with other test runs: a lone preemption of
    // this test's thread is not the loop stalling, a stalled loop delays
    // every round trip (by seconds: the clients' 5 s timeout). So 90% of
    // them must be under 1 s.
    let mut samples = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let status = farm.request("status").expect("status during the flood");
        samples.push(started.elapsed());
        assert!(serde_json::from_str::<Value>(&status).is_ok(), "{status}");
        thread::sleep(Duration::from_millis(20));
    }
    let out = lrpmctl(&farm.socket, &["--color=never", "status"]);
    out.assert_code(0);
    samples.sort();
    let p90 = samples[samples.len() * 9 / 10 - 1];
    let slow_turns: Vec<String> =
        farm.stderr().lines().filter(|l| l.contains("slow loop turn")).map(String::from).collect();
    assert!(
        p90 < Duration::from_secs(1),
        "control-socket round trips while {CLIENTS} HTTP clients and a slowloris were connected: {samples:?}\n\
         loop turns over 20 ms:\n{}\n{}",
        slow_turns.join("\n"),
        farm.diagnostics()
    );
    let (lasted, dropped) = slowloris.join().unwrap();
    assert!(dropped, "the slowloris was never disconnected\n{}", farm.diagnostics());
    assert!(
        lasted >= Duration::from_secs(4) && lasted < Duration::from_secs(9),
        "the slowloris lasted {lasted:?} (deadline 5 s)\n{}",
        farm.diagnostics()
    );
    stop.store(true, Ordering::Relaxed);
    drop(flood);
    let (code, _) = farm.wait_for(secs(15.0), "/metrics to answer after the flood", || {
        http(address, "GET /metrics HTTP/1.1\r\n\r\n").ok().map(|(code, _, body)| (code, body))
    });
    assert_eq!(code, 200);
    assert!(farm.try_exit().is_none(), "{}", farm.diagnostics());
}

#[test]
fn sigusr1_logs_a_status_report() {
    let _g = shared();
    let farm = Farm::start(
        "metrics_sigusr1",
        FarmOptions::default(),
        |jobs| json!({"r": jobs.job_with("r", 1, json!({"sleep": 0.05}), json!({"replicas": 2}))}),
    );
    let pids = farm.wait_for(secs(10.0), "two running slots", || {
        let status = farm.try_status()?;
        let slots = status["r"]["state"]["slots"].as_array()?.clone();
        let pids: Vec<i64> =
            slots.iter().filter(|s| s["status"] == "running").filter_map(|s| s["pid"].as_i64()).collect();
        (pids.len() == 2).then_some(pids)
    });
    farm.signal(nix::sys::signal::Signal::SIGUSR1);
    let stderr = farm.wait_stderr("status report (SIGUSR1): 1 jobs, 2 processes", secs(5.0));
    let report: Vec<&str> = stderr.lines().skip_while(|l| !l.contains("status report (SIGUSR1)")).collect();
    assert!(report[1].split_whitespace().eq(["ID", "NAME", "STATE", "PID", "RESTARTS", "CYCLES"]), "{stderr}");
    for (slot, pid) in pids.iter().enumerate() {
        let row = report.iter().find(|l| l.starts_with(&format!("r#{slot} "))).unwrap_or_else(|| panic!("{stderr}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[1..4], &["job-r", "running", pid.to_string().as_str()], "{row}");
    }
    assert!(report.iter().any(|l| l.starts_with("memory: supervisor ")), "{stderr}");
    assert!(report.iter().any(|l| l.starts_with("opcache: ")), "{stderr}");
    // The supervisor goes on; the workers were not signalled.
    let status = farm.status();
    assert_eq!(status["r"]["state"]["restarts"], 0, "{status}");
}
