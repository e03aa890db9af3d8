//! What `status` shows: CPU and memory measured by the supervisor, and
//! lrpmctl's view of them (job filter, LRPM_SOCKET, --watch), against real
//! farms and against a fake host serving documents of its own.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

/// A pid no process can have (above the kernel's largest pid_max, 2^22).
const NO_SUCH_PID: i64 = 2_147_483_000;

/// The slots of job `id` in a status document.
fn slots(status: &Value, id: &str) -> Vec<Value> {
    status[id]["state"]["slots"].as_array().cloned().unwrap_or_default()
}

fn f64_of(value: &Value, what: &str) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

#[test]
fn status_reports_each_workers_cpu_and_memory_and_the_jobs_totals() {
    // A worker keeps a CPU busy: nothing else of this binary runs meanwhile.
    let _g = exclusive();
    let farm = Farm::start("usage", FarmOptions::default(), |j| {
        let spinner = json!({
            "name": "busy",
            "workerClass": "FarmFixture\\Spinner",
            "mtime": 1,
            "workerConfig": {"log": j.log.to_string_lossy(), "tag": "busy"},
        });
        json!({
            "idle": j.job_with("idle", 1, json!({"sleep": 0.5}), json!({})),
            "busy": spinner,
            "pair": j.job_with("pair", 1, json!({"sleep": 0.5}), json!({"replicas": 2})),
        })
    });
    farm.wait_running(&["idle", "busy", "pair"], secs(15.0));
    let status = farm.wait_for(secs(20.0), "the busy worker's CPU to stand out", || {
        let status = farm.try_status()?;
        let cpu = |id: &str| slots(&status, id).first().and_then(|s| s["cpuPercent"].as_f64());
        let busy_seconds = slots(&status, "busy").first().and_then(|s| s["cpuSeconds"].as_f64())?;
        (busy_seconds >= 0.5 && cpu("busy")? > 10.0 && cpu("busy")? > cpu("idle")? + 5.0).then_some(status)
    });
    for id in ["idle", "busy", "pair"] {
        let state = &status[id]["state"];
        let slots = slots(&status, id);
        assert_eq!(slots.len(), if id == "pair" { 2 } else { 1 }, "{status}");
        for slot in &slots {
            let pid = slot["pid"].as_i64().unwrap_or_else(|| panic!("job {id}: no pid: {status}"));
            let rss = slot["rssBytes"].as_u64().unwrap_or_else(|| panic!("job {id}: rssBytes: {status}"));
            // A PHP process: megabytes, not bytes nor gigabytes; as /proc says.
            assert!((1 << 20..1 << 30).contains(&rss), "job {id}: rssBytes {rss}");
            let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("statm");
            let resident: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident");
            let ours = resident * rustix::param::page_size() as u64;
            assert!(ours.abs_diff(rss) < 32 << 20, "job {id}: rssBytes {rss}, /proc now says {ours}");
            let cpu = f64_of(&slot["cpuPercent"], "cpuPercent");
            assert!((0.0..=200.0).contains(&cpu), "job {id}: cpuPercent {cpu}");
            assert!(f64_of(&slot["cpuSeconds"], "cpuSeconds") >= 0.0);
            assert!(slot["usageAgeMs"].is_u64(), "job {id}: usageAgeMs: {status}");
        }
        let sum = |key: &str| slots.iter().map(|s| f64_of(&s[key], key)).sum::<f64>();
        assert!((f64_of(&state["cpuPercent"], "job cpuPercent") - sum("cpuPercent")).abs() < 0.011, "{status}");
        assert!((f64_of(&state["cpuSeconds"], "job cpuSeconds") - sum("cpuSeconds")).abs() < 0.011, "{status}");
        assert_eq!(state["rssBytes"].as_f64(), Some(sum("rssBytes")), "{status}");
    }

    // A held job has no process: its figures are null, not absent.
    assert!(farm.request("stop idle").unwrap().starts_with("Job idle is being stopped"));
    let status = farm.wait_for(secs(10.0), "job idle to be held", || {
        let status = farm.try_status()?;
        (status["idle"]["state"]["status"] == "stopped").then_some(status)
    });
    let slot = &slots(&status, "idle")[0];
    for key in ["cpuPercent", "cpuSeconds", "rssBytes"] {
        assert!(slot.get(key).is_some_and(Value::is_null), "held slot: {key} should be null: {slot}");
        assert!(status["idle"]["state"][key].is_null(), "held job: {key} should be null: {status}");
    }
}

/// A fake host: answers every request on `socket` with `document(request
/// number)`, until dropped; remembers the requests.
struct FakeHost {
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHost {
    fn serve(socket: &Path, document: impl Fn(usize) -> String + Send + 'static) -> FakeHost {
        let listener = UnixListener::bind(socket).unwrap_or_else(|e| panic!("bind {}: {e}", socket.display()));
        listener.set_nonblocking(true).expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let mut stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    // The test's thread polls for its own conditions; this
                    // one only needs to notice `stop` within a moment.
                    Err(_) => {
                        thread::sleep(POLL);
                        continue;
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut header = [0u8; 8];
                if stream.read_exact(&mut header).is_err() {
                    continue;
                }
                let mut body = vec![0u8; u64::from_be_bytes(header).min(4096) as usize];
                if stream.read_exact(&mut body).is_err() {
                    continue;
                }
                let n = {
                    let mut requests = requests2.lock().unwrap();
                    requests.push(String::from_utf8_lossy(&body).into_owned());
                    requests.len() - 1
                };
                let _ = stream.write_all(&frame(document(n).as_bytes()));
            }
        });
        FakeHost { stop, requests, thread: Some(thread) }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An lrpm-host document for processes that do not exist on this machine
/// (a farm in another PID namespace): job 7 measured, job 8 with two slots
/// the host could not measure.
fn foreign_document() -> String {
    let now = unix_now() as i64;
    let slot = |n: u32, pid: i64, cpu: Value, rss: Value| {
        json!({"slot": n, "pid": pid, "status": "running", "startedAt": now - 60, "restarts": 0,
               "cycles": 5, "cpuPercent": cpu, "cpuSeconds": 7.5, "rssBytes": rss, "usageAgeMs": 0})
    };
    json!({
        "7": {"config": {"name": "far"}, "state": {
            "pid": NO_SUCH_PID, "startedAt": now - 60, "status": "running", "replicas": 1,
            "cpuPercent": 12.5, "rssBytes": 104_857_600u64,
            "slots": [slot(0, NO_SUCH_PID, json!(12.5), json!(104_857_600u64))]}},
        "8": {"config": {"name": "unmeasured"}, "state": {
            "pid": NO_SUCH_PID - 1, "status": "running", "replicas": 2,
            "slots": [slot(0, NO_SUCH_PID - 1, Value::Null, Value::Null),
                      slot(1, NO_SUCH_PID - 2, Value::Null, Value::Null)]}},
    })
    .to_string()
}

/// The cells of the table row whose first cell is `id`.
fn row<'a>(out: &'a Output, id: &str) -> Vec<&'a str> {
    out.stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no row {id}\n{}", out.dump()))
        .split_whitespace()
        .collect()
}

/// Columns of the table: ID NAME STATE PID %CPU RSS ...
const CPU: usize = 4;
const RSS: usize = 5;

#[test]
fn lrpmctl_shows_the_figures_of_the_document_for_pids_it_cannot_see() {
    let _g = shared();
    let dir = TempDir::new("foreign");
    let socket = dir.join("fake.sock");
    let host = FakeHost::serve(&socket, |_| foreign_document());
    let out = lrpmctl(&socket, &["--color=never", "status"]);
    out.assert_code(0);
    let far = row(&out, "7");
    assert_eq!((far[CPU], far[RSS]), ("12.5", "100.0M"), "{}", out.dump());
    for id in ["8#0", "8#1"] {
        let cells = row(&out, id);
        assert_eq!((cells[CPU], cells[RSS]), ("-", "-"), "no figure from the host: '-'\n{}", out.dump());
    }
    // Filtering happens in lrpmctl: the host gets php-lrpm's plain request.
    let out = lrpmctl(&socket, &["--color=never", "status", "8"]);
    out.assert_code(0);
    assert!(!out.stdout.lines().any(|l| l.starts_with("7 ")), "{}", out.dump());
    assert_eq!(host.requests().last().map(String::as_str), Some("status"));
}

#[test]
fn lrpmctl_measures_processes_itself_for_documents_without_figures() {
    let _g = shared();
    let dir = TempDir::new("phplrpm");
    let socket = dir.join("fake.sock");
    // php-lrpm's document: a list (keys 0..n), no status, no slots, no figures.
    let me = std::process::id();
    let _host = FakeHost::serve(&socket, move |_| {
        json!([
            {"config": {"name": "mine"}, "state": {"pid": me, "startedAt": unix_now() as i64 - 5,
             "restartAt": null, "backoffInterval": 1, "lastExitStatus": null}},
            {"config": {"name": "gone"}, "state": {"pid": null, "startedAt": null,
             "restartAt": null, "backoffInterval": 1, "lastExitStatus": 0}},
        ])
        .to_string()
    });
    let out = lrpmctl(&socket, &["--color=never", "status"]);
    out.assert_code(0);
    let mine = row(&out, "0");
    assert_eq!(mine[3], me.to_string(), "{}", out.dump());
    assert!(mine[RSS].ends_with('M') || mine[RSS].ends_with('K'), "RSS read from /proc\n{}", out.dump());
    assert!(mine[CPU].parse::<f64>().is_ok(), "%CPU read from /proc\n{}", out.dump());
    assert_eq!((row(&out, "1")[CPU], row(&out, "1")[RSS]), ("-", "-"), "no process\n{}", out.dump());
    // Filtering a list document keeps its ids (the positions).
    let out = lrpmctl(&socket, &["--json", "status", "1"]);
    out.assert_code(0);
    let doc: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{}", out.dump()));
    assert_eq!(Farm::status_ids(&doc), ["1".to_string()].into(), "{doc}");
    assert_eq!(doc["1"]["config"]["name"], "gone");
}

#[test]
fn status_with_ids_shows_only_those_jobs_and_refuses_unknown_ones() {
    let _g = shared();
    let farm = Farm::start("filter", FarmOptions::default(), |j| {
        json!({"1": j.job("1", 1), "2": j.job("2", 1),
               "r": j.job_with("r", 1, json!({}), json!({"replicas": 2}))})
    });
    farm.wait_running(&["1", "2", "r"], secs(15.0));
    let out = lrpmctl(&farm.socket, &["--color=never", "status", "2", "r"]);
    out.assert_code(0);
    let ids: Vec<&str> = out.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids, ["2", "r#0", "r#1"], "{}", out.dump());

    for args in [&["--json", "status", "2"][..], &["status", "--json", "2"], &["jsonstatus", "2"]] {
        let out = lrpmctl(&farm.socket, args);
        out.assert_code(0);
        let doc: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}\n{}", out.dump()));
        assert_eq!(Farm::status_ids(&doc), ["2".to_string()].into(), "{args:?}: {doc}");
        assert_eq!(doc["2"]["config"]["name"], "job-2");
    }

    for args in [&["status", "1", "nope"][..], &["--json", "status", "nope"], &["status", "--watch", "nope"]] {
        let out = lrpmctl(&farm.socket, args);
        out.assert_code(1).assert_stderr_contains("job nope does not exist");
        assert!(out.stdout.trim().is_empty() || args.contains(&"--watch"), "{args:?}: no table\n{}", out.dump());
    }
    let out = lrpmctl(&farm.socket, &["status", "8", "9"]);
    out.assert_code(1).assert_stderr_contains("jobs 8, 9 do not exist");
}

/// lrpmctl without --socket, with `LRPM_SOCKET` set to `socket`.
fn lrpmctl_env(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(ctl_bin());
    cmd.args(args).env("LRPM_SOCKET", socket);
    run_with_timeout(cmd, DEFAULT_TIMEOUT)
}

#[test]
fn lrpm_socket_names_the_socket_for_both_binaries_and_options_win() {
    let _g = shared();
    let dir = TempDir::new("envsock");
    let socket = dir.join("from-env.sock");
    let farm = Farm::start(
        "envsock",
        FarmOptions::default().socket(socket.clone()).socket_via_env(),
        |j| json!({"1": j.job("1", 1)}),
    );
    farm.wait_running(&["1"], secs(10.0));
    assert!(socket.exists(), "lrpm-host listens where LRPM_SOCKET says\n{}", farm.diagnostics());

    let out = lrpmctl_env(&socket, &["--color=never", "status"]);
    out.assert_code(0);
    assert_eq!(row(&out, "1")[2], "running");
    // --socket wins over LRPM_SOCKET.
    let elsewhere = dir.join("nothing-here.sock");
    let out = lrpmctl_env(&socket, &["--socket", elsewhere.to_str().unwrap(), "status"]);
    out.assert_code(69).assert_stderr_contains(&elsewhere.display().to_string());
    // An empty LRPM_SOCKET is no socket at all (the default path applies).
    let out = lrpmctl_env(Path::new(""), &["--socket", socket.to_str().unwrap(), "version"]);
    out.assert_code(0).assert_stdout_contains("lrpm-host");

    // --control-socket wins over LRPM_SOCKET for lrpm-host.
    let other = dir.join("ignored.sock");
    let farm2 = Farm::start(
        "envsock2",
        FarmOptions::default().env("LRPM_SOCKET", other.to_str().unwrap()),
        |j| json!({"1": j.job("1", 1)}),
    );
    farm2.wait_running(&["1"], secs(10.0));
    assert!(farm2.socket.exists() && !other.exists(), "{}", farm2.diagnostics());
}

/// `lrpmctl --socket SOCKET status --watch --interval 0.2 ARGS...`, running.
fn watch(socket: &Path, args: &[&str]) -> Running {
    let mut all = vec!["status", "--watch", "--interval", "0.2"];
    all.extend_from_slice(args);
    Running::spawn(lrpmctl_command(socket, &all))
}

/// How many tables are in `text`.
fn tables(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("ID ")).count()
}

#[test]
fn watch_without_a_terminal_prints_a_table_per_interval_until_sigint() {
    let _g = shared();
    let farm = Farm::start("watchpipe", FarmOptions::default(), |j| json!({"1": j.job("1", 1), "2": j.job("2", 1)}));
    farm.wait_running(&["1", "2"], secs(10.0));
    let mut watching = watch(&farm.socket, &["1"]);
    watching.wait_for(secs(10.0), "three tables", |w| (tables(&w.stdout_so_far()) >= 3).then_some(()));
    watching.signal(Signal::SIGINT);
    let out = watching.wait_within(secs(5.0));
    out.assert_code(0);
    assert!(!out.stdout.contains('\u{1b}'), "no terminal sequences into a pipe\n{}", out.dump());
    let frames: Vec<&str> = out.stdout.split("\n\n").collect();
    assert!(frames.len() >= 3, "tables separated by a blank line\n{}", out.dump());
    for frame in frames {
        let lines: Vec<&str> = frame.lines().collect();
        assert!(lines[0].starts_with("lrpmctl status: ") && lines[0].contains(" UTC"), "{frame}");
        assert!(lines[1].starts_with("ID "), "{frame}");
        let ids: Vec<&str> = lines[2..].iter().filter_map(|l| l.split_whitespace().next()).collect();
        assert_eq!(ids, ["1"], "{frame}");
    }
}

#[test]
fn watch_keeps_retrying_while_the_host_is_away() {
    let _g = shared();
    let dir = TempDir::new("watchretry");
    let socket = dir.join("later.sock");
    let mut watching = watch(&socket, &[]);
    watching.wait_for(secs(10.0), "two connection errors", |w| {
        (w.stderr_so_far().matches("cannot connect to lrpm-host").count() >= 2).then_some(())
    });
    assert!(watching.stderr_so_far().contains("(retrying every 0.2s)"), "{}", watching.dump_so_far());
    let _host = FakeHost::serve(&socket, |_| foreign_document());
    watching.wait_for(secs(10.0), "a table once the host answers", |w| {
        w.stdout_so_far().lines().any(|l| l.starts_with("7 ")).then_some(())
    });
    watching.signal(Signal::SIGTERM);
    watching.wait_within(secs(5.0)).assert_code(0);
}

#[test]
fn watch_on_a_terminal_redraws_in_place_and_restores_it_on_ctrl_c() {
    let _g = shared();
    let dir = TempDir::new("watchpty");
    let socket = dir.join("fake.sock");
    let _host = FakeHost::serve(&socket, |_| foreign_document());
    // script(1) (util-linux) runs lrpmctl on a pseudo-terminal; what we
    // write to its stdin is typed on that terminal.
    let command = format!("exec {} --socket {} status --watch --interval 0.2", ctl_bin().display(), socket.display());
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-f", "-c", &command, "/dev/null"]);
    let mut watching = Running::spawn_with_stdin_pipe(cmd);
    let mut typing = watching.take_stdin().expect("script's stdin");
    let redraws = |text: &str| text.matches("\u{1b}[H").count();
    watching.wait_for(secs(10.0), "three frames", |w| (redraws(&w.stdout_so_far()) >= 3).then_some(()));
    typing.write_all(b"\x03").expect("typing Ctrl-C");
    typing.flush().unwrap();
    let out = watching.wait_within(secs(5.0));
    out.assert_code(0);
    let screen = &out.stdout;
    assert!(screen.starts_with("\u{1b}[?1049h\u{1b}[?25l"), "alternate screen, no cursor\n{screen:?}");
    assert!(screen.contains("\u{1b}[2J"), "the screen is cleared first\n{screen:?}");
    assert!(screen.contains("12.5") && screen.contains("100.0M"), "the document's figures\n{screen:?}");
    let restored = screen.rfind("\u{1b}[?25h\u{1b}[?1049l").expect("cursor and screen restored");
    assert!(restored > screen.rfind("\u{1b}[H").unwrap(), "restored after the last frame\n{screen:?}");
}
