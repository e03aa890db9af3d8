//! Workers' stdout and stderr, captured and forwarded a whole line at a
//! time with the job's name and slot (or as JSON lines), with back-pressure
//! instead of loss; `--worker-output=inherit` leaves them alone.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

const CHATTER: &str = "FarmFixture\\Chatter";

fn chatter(jobs: &Jobs, id: &str, config: Value) -> Value {
    let mut extra = json!({"tag": id});
    if let (Value::Object(extra), Value::Object(config)) = (&mut extra, config) {
        extra.extend(config);
    }
    jobs.job_with(id, 1, extra, json!({"workerClass": CHATTER}))
}

/// Numbered lines of `tag` in `text`, checking each carries its own job's prefix.
fn numbered(text: &str, tag: &str) -> Vec<u64> {
    let prefix = format!("[job-{tag}#0] {tag} ");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| rest.strip_suffix(&format!(" {}", "p".repeat(32))))
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[test]
fn two_chatty_workers_produce_every_line_intact_and_attributed_with_a_1mb_line_in_between() {
    let _g = shared();
    let farm = Farm::start("chatty", FarmOptions::default(), |jobs| {
        json!({
            "a": chatter(jobs, "a", json!({"lines": 10000, "bigAt": 5000})),
            "b": chatter(jobs, "b", json!({"lines": 10000})),
        })
    });
    let stdout = farm.wait_for(secs(30.0), "both bursts", || {
        let out = farm.stdout();
        (out.contains("[job-a#0] a done\n") && out.contains("[job-b#0] b done\n")).then_some(out)
    });
    let expected: Vec<u64> = (1..=10000).collect();
    assert_eq!(numbered(&stdout, "a"), expected, "job a's lines, in order, none lost or garbled");
    assert_eq!(numbered(&stdout, "b"), expected, "job b's lines, in order, none lost or garbled");
    // Every line is one worker's whole line (or a marked piece of the big one).
    let mut big = String::new();
    let mut pieces = 0;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("[job-a#0] a big ") {
            big.push_str(rest);
            pieces += 1;
        } else if let Some(rest) = line.strip_prefix("[job-a#0 +] ") {
            big.push_str(rest);
            pieces += 1;
        } else {
            let ok = line.starts_with("[job-a#0] a ") || line.starts_with("[job-b#0] b ");
            assert!(ok, "a line that is not one worker's whole line: {:.200}", line);
        }
    }
    assert_eq!(big.len(), 1 << 20, "the 1 MB line arrives whole, in pieces");
    assert!(big.bytes().all(|b| b == b'x'));
    assert_eq!(pieces, (b"a big ".len() + (1 << 20)).div_ceil(64 * 1024), "pieces of 64 KiB");
}

#[test]
fn output_written_right_before_exit_or_a_fatal_error_is_not_lost() {
    let _g = shared();
    let farm = Farm::start("last_words", FarmOptions::default(), |jobs| {
        json!({
            "x": chatter(jobs, "x", json!({"lines": 3, "then": "exit"})),
            "f": chatter(jobs, "f", json!({"lines": 3, "then": "fatal", "stream": "stderr"})),
        })
    });
    farm.wait_for(secs(10.0), "the last words of both", || {
        let (out, err) = (farm.stdout(), farm.stderr());
        (out.contains("[job-x#0] x last words\n")
            && out.contains("[job-f#0] f before fatal\n")
            && err.contains("[job-f#0] PHP Fatal error:  Uncaught Error: Call to undefined function"))
        .then_some(())
    });
    let err = farm.stderr();
    assert!(err.contains("[job-f#0] f 3 "), "stderr lines keep their stream\n{err}");
    assert!(!farm.stdout().contains("[job-f#0] f 3 "), "stderr lines keep their stream");
}

#[test]
fn json_logs_and_json_worker_lines_parse_and_each_event_appears_once() {
    let _g = shared();
    let options = FarmOptions { extra_args: vec!["--log-format".into(), "json".into()], ..Default::default() };
    let farm = Farm::start(
        "json_logs",
        options,
        |jobs| json!({"j": chatter(jobs, "j", json!({"lines": 100, "stream": "both", "then": "exit"}))}),
    );
    let pid = farm.wait_for(secs(10.0), "a restart of j", || {
        let starts: Vec<Value> = parse_lines(&farm.stderr())
            .into_iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains("started as pid")))
            .collect();
        (starts.len() >= 2).then(|| starts[0]["pid"].as_i64().unwrap())
    });
    farm.signal(nix::sys::signal::Signal::SIGTERM);
    farm.wait_exit(secs(10.0));
    let stderr = parse_lines(&farm.stderr());
    let stdout = parse_lines(&farm.stdout());
    let about_first: Vec<&Value> = stderr.iter().filter(|v| v["pid"] == pid && v.get("message").is_some()).collect();
    let count = |needle: &str| about_first.iter().filter(|v| v["message"].as_str().unwrap().contains(needle)).count();
    assert_eq!((count("started as pid"), count("exited after")), (1, 1), "{about_first:?}");
    for event in &about_first {
        assert_eq!((event["job"].clone(), event["slot"].clone()), (json!("j"), json!(0)), "{event}");
    }
    let loaded =
        stderr.iter().filter(|v| v["message"].as_str().is_some_and(|m| m.starts_with("configuration loaded"))).count();
    assert_eq!(loaded, 1, "an unchanged configuration is not announced again");
    // Worker lines: attributed, in their stream, 50 even lines on stdout and 50 odd on stderr per run.
    let lines_of = |records: &[Value], stream: &str| -> Vec<String> {
        records
            .iter()
            .filter(|v| v["pid"] == pid && v["stream"] == stream)
            .map(|v| v["line"].as_str().unwrap().to_string())
            .collect()
    };
    let out = lines_of(&stdout, "stdout");
    let err = lines_of(&stderr, "stderr");
    assert_eq!(out.iter().filter(|l| l.starts_with("j ") && l.ends_with('p')).count(), 50, "{out:?}");
    assert_eq!(err.iter().filter(|l| l.starts_with("j ") && l.ends_with('p')).count(), 50, "{err:?}");
    assert!(out.contains(&"j last words".to_string()), "{out:?}");
    let record = stdout.iter().find(|v| v["pid"] == pid).unwrap();
    assert_eq!(
        (record["job"].clone(), record["name"].clone(), record["slot"].clone()),
        (json!("j"), json!("job-j"), json!(0))
    );
}

/// Every line of `text` as JSON (the test fails on any line that is not).
fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect()
}

#[test]
fn a_reader_that_stops_reading_slows_the_worker_down_but_loses_nothing_and_never_stalls_the_loop() {
    let _g = shared();
    let options = FarmOptions { pipe_stdout: true, ..Default::default() };
    let lines = 200_000;
    let farm = Farm::start(
        "backpressure",
        options,
        |jobs| json!({"p": chatter(jobs, "p", json!({"lines": lines})), "q": jobs.job_with("q", 1, json!({"sleep": 0.05}), json!({}))}),
    );
    let mut stdout = farm.take_stdout().expect("a piped stdout");
    let pids = farm.wait_running(&["q"], secs(10.0));
    // Nobody reads: the host's pipe and buffer fill, then the worker's pipe.
    // The loop keeps serving the control socket and the other job.
    let cycles_before = farm.events_of("q", "cycle").len();
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..20 {
        let asked = Instant::now();
        farm.status();
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Generous (a busy machine): a loop blocked on the stuck output would not answer at all.
    assert!(slowest < std::time::Duration::from_secs(2), "status took {slowest:?} while output was stuck");
    assert!(farm.events_of("q", "cycle").len() > cycles_before + 5, "the other job kept cycling");
    assert_eq!(Farm::status_pid(&farm.status(), "q"), Some(pids["q"]));
    let status = farm.status();
    assert_eq!(status["p"]["state"]["slots"][0]["cycles"], 0, "p waits in its first cycle's writes: {status}");
    // Now read everything: nothing was lost.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stdout.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return text;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("[job-p#0] p done\n") {
                return text;
            }
        }
    });
    let text = reader.join().unwrap();
    let got = numbered(&text, "p");
    assert_eq!(got.len(), lines, "every line arrived");
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "in order");
}

#[test]
fn inherit_leaves_the_workers_descriptors_alone_and_capture_leaves_children_no_other_pipe() {
    let _g = shared();
    let fd_targets = |pid: i32| -> BTreeMap<i32, String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                Some((fd, std::fs::read_link(e.path()).ok()?.to_string_lossy().into_owned()))
            })
            .collect()
    };
    let options = FarmOptions { extra_args: vec!["--worker-output".into(), "inherit".into()], ..Default::default() };
    let farm = Farm::start("inherit", options, |jobs| json!({"i": jobs.job("i", 1)}));
    let pid = farm.wait_running(&["i"], secs(10.0))["i"];
    let (worker, host) = (fd_targets(pid), fd_targets(farm.pid));
    assert_eq!((worker.get(&1), worker.get(&2)), (host.get(&1), host.get(&2)), "inherited as they are");

    let farm = Farm::start(
        "capture_fds",
        FarmOptions::default(),
        |jobs| json!({"c1": jobs.job("c1", 1), "c2": jobs.job("c2", 1), "c3": jobs.job("c3", 1)}),
    );
    let pids = farm.wait_running(&["c1", "c2", "c3"], secs(10.0));
    // Descriptors the host itself was started with (cargo's jobserver pipe,
    // which this test process holds too) are passed on, as before; the
    // supervisor's own are not.
    let inherited: Vec<String> = fd_targets(std::process::id() as i32).into_values().collect();
    for pid in pids.values() {
        let fds = fd_targets(*pid);
        assert!(fds[&1].starts_with("pipe:") && fds[&2].starts_with("pipe:"), "{fds:?}");
        let others: Vec<&String> = fds
            .iter()
            .filter(|(fd, _)| **fd > 2)
            .map(|(_, t)| t)
            .filter(|t| t.starts_with("pipe:") || t.starts_with("socket:") || t.contains("anon_inode"))
            .filter(|t| !inherited.contains(t))
            .collect();
        assert!(others.is_empty(), "a worker keeps none of the supervisor's descriptors: {fds:?}");
    }
}

/// A farm whose stdout and stderr nobody reads: a job floods stderr until
/// the host's buffer is full and it waits in its writes, another
/// crash-loops, and the SIGUSR1 reports of a job with a long name flood the
/// host's own log. Returns the farm, its metrics address and its
/// (unread) pipes.
fn unread_farm(name: &str) -> (Farm, std::net::SocketAddr, std::process::ChildStdout, std::process::ChildStderr) {
    let port = free_port();
    let options = FarmOptions {
        pipe_stdout: true,
        pipe_stderr: true,
        extra_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")],
        ..Default::default()
    };
    let long_name = "n".repeat(4000);
    let farm = Farm::start(name, options, |jobs| {
        // A worker waiting in a write ends at SIGKILL after its shutdown timeout.
        let quick_stop = json!({"workerClass": CHATTER, "shutdownTimeoutSeconds": 3});
        json!({
            "flood": jobs.job_with("flood", 1, json!({"tag": "flood", "lines": 100_000, "stream": "stderr"}), quick_stop.clone()),
            "crash": jobs.job_with("crash", 1, json!({"tag": "crash", "lines": 1, "then": "exit"}), quick_stop),
            "q": jobs.job_with(
                "q",
                1,
                json!({"sleep": 0.05}),
                json!({"name": long_name, "replicas": 20, "shutdownTimeoutSeconds": 3}),
            ),
        })
    });
    let stdout = farm.take_stdout().expect("a piped stdout");
    let stderr = farm.take_stderr().expect("a piped stderr");
    (farm, std::net::SocketAddr::from(([127, 0, 0, 1], port)), stdout, stderr)
}

/// One sample of /metrics, or None while it does not answer.
fn metric(address: std::net::SocketAddr, name: &str) -> Option<f64> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&address, secs(2.0)).ok()?;
    stream.set_read_timeout(Some(secs(5.0))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| line.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// Floods the host's log (SIGUSR1 reports of 20 rows of a 4,000-byte name)
/// until it has dropped lines, which it does only once stderr is full.
fn flood_until_dropping(farm: &Farm, address: std::net::SocketAddr) {
    farm.wait_running(&["q"], secs(30.0));
    farm.wait_for(secs(60.0), "the host to drop log lines while nobody reads stderr", || {
        farm.signal(Signal::SIGUSR1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        metric(address, "lrpm_log_lines_dropped_total").filter(|n| *n > 0.0)
    });
}

fn restarts(farm: &Farm, id: &str) -> u64 {
    farm.status()[id]["state"]["restarts"].as_u64().unwrap_or(0)
}

#[test]
fn a_host_whose_output_nobody_reads_keeps_supervising_and_says_how_many_log_lines_it_dropped() {
    let _g = shared();
    let (farm, address, mut stdout, mut stderr) = unread_farm("unread-log");
    flood_until_dropping(&farm, address);
    // Blocked: the control socket answers, the crash loop is restarted.
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..20 {
        let asked = Instant::now();
        farm.status();
        slowest = slowest.max(asked.elapsed());
    }
    eprintln!("slowest status round trip while the output was blocked: {slowest:?}");
    assert!(slowest < secs(2.0), "status took {slowest:?} while nobody read the host's output");
    let before = restarts(&farm, "crash");
    farm.wait_for(secs(60.0), "the crash-looping job restarted while the output is blocked", || {
        (restarts(&farm, "crash") >= before + 2).then_some(())
    });
    let dropped_while_blocked = metric(address, "lrpm_log_lines_dropped_total").unwrap();

    // The reader is back: the marker says how many lines were dropped.
    let out = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                return;
            }
        }
    });
    let mut text = String::new();
    let marker = farm.wait_for(secs(60.0), "the dropped-lines marker once stderr is read", || {
        while let Ok(piece) = rx.try_recv() {
            text.push_str(&piece);
        }
        let at = text.find(" log lines dropped while stderr was blocked")?;
        let start = text[..at].rfind("lrpm-host: ")? + "lrpm-host: ".len();
        Some(text[start..at].replace(',', "").parse::<f64>().expect("a count"))
    });
    assert!(marker >= 1.0 && marker <= metric(address, "lrpm_log_lines_dropped_total").unwrap(), "{marker}");
    assert!(
        marker >= dropped_while_blocked,
        "the marker counts every line dropped before it ({marker} < {dropped_while_blocked})"
    );
    farm.signal(Signal::SIGTERM);
    assert!(farm.wait_exit(secs(60.0)).success());
    let _ = out.join();
}

#[test]
fn a_host_whose_output_nobody_reads_stops_on_sigterm_within_its_stop_timeout() {
    let _g = shared();
    let (farm, address, stdout, stderr) = unread_farm("unread-stop");
    flood_until_dropping(&farm, address);
    let asked = Instant::now();
    farm.signal(Signal::SIGTERM);
    // The jobs' shutdown timeout, and at most 5 s for the output at exit.
    let status = farm.wait_exit(secs(60.0));
    eprintln!("stopped {:?} after SIGTERM with nobody reading its output", asked.elapsed());
    assert!(status.code().is_some(), "ended by a signal: {status:?}");
    drop((stdout, stderr));
}

/// Whole runs of a crash-looping chatter in `text`: each run is its numbered
/// lines, then "done".
fn runs_in(text: &str, tag: &str) -> (usize, usize) {
    (numbered(text, tag).len(), text.lines().filter(|l| l.ends_with(&format!("] {tag} done"))).count())
}

#[test]
fn a_log_file_takes_everything_and_is_reopened_for_logrotate_without_losing_a_line() {
    let _g = shared();
    let dir = TempDir::new("log_file");
    let log = dir.join("host.log");
    write_atomically(
        &dir.join("jobs.json"),
        json!({"c": {
            "name": "job-c", "workerClass": CHATTER, "mtime": 1,
            "workerConfig": {"tag": "c", "lines": 200, "then": "exit"},
        }})
        .to_string()
        .as_bytes(),
    );
    let options =
        FarmOptions { extra_args: vec!["--log-file".into(), log.to_string_lossy().into_owned()], ..Default::default() };
    let farm = Farm::start_in(dir, options);
    let rotated = |n: usize| farm.dir.join(&format!("host.log.{n}"));
    let wait_runs = |path: &std::path::Path, runs: usize| {
        farm.wait_for(secs(30.0), &format!("{runs} run(s) of the chatter in {}", path.display()), || {
            let text = std::fs::read_to_string(path).ok()?;
            (runs_in(&text, "c").1 >= runs).then_some(())
        })
    };
    wait_runs(&log, 1);
    // logrotate: rename, then ask for a reopen (the control request).
    std::fs::rename(&log, rotated(1)).unwrap();
    let answer = farm.request("reopen-logs").unwrap();
    assert_eq!(answer, format!("Reopened {}", log.display()));
    wait_runs(&log, 1);
    // And again with SIGHUP.
    std::fs::rename(&log, rotated(2)).unwrap();
    farm.signal(Signal::SIGHUP);
    farm.wait_for(secs(10.0), "the log file reopened on SIGHUP", || log.exists().then_some(()));
    wait_runs(&log, 1);
    farm.signal(Signal::SIGTERM);
    assert!(farm.wait_exit(secs(15.0)).success(), "{}", farm.diagnostics());
    // Nothing went to stdout or stderr, and across the three files every
    // run that said "done" has all its 200 lines.
    assert_eq!(std::fs::read_to_string(&farm.stdout_file).unwrap(), "");
    assert_eq!(std::fs::read_to_string(&farm.stderr_file).unwrap(), "");
    let all: String =
        [rotated(1), rotated(2), log.clone()].iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    let (lines, runs) = runs_in(&all, "c");
    assert!(runs >= 3, "{all}");
    assert_eq!(lines, 200 * runs, "every line of every run, in one of the files");
    let first = std::fs::read_to_string(rotated(1)).unwrap();
    assert!(first.contains("lrpm-host supervisor started"), "{first}");
    assert!(std::fs::read_to_string(rotated(2)).unwrap().contains("log file"), "the reopen is logged");
    assert!(std::fs::read_to_string(&log).unwrap().contains("received SIGHUP: log file reopened"));
}

#[test]
fn reopen_logs_without_a_log_file_is_refused_and_a_log_file_that_cannot_be_opened_is_a_clear_error() {
    let _g = shared();
    let farm = Farm::start("no_log_file", FarmOptions::default(), |jobs| json!({"1": jobs.job("1", 1)}));
    farm.wait_running(&["1"], secs(10.0));
    let answer = farm.request("reopen-logs").unwrap();
    assert!(answer.starts_with("error: no --log-file to reopen"), "{answer}");
    let dir = TempDir::new("log_file_bad");
    let out = run_with_timeout(
        lrpm_host(["--log-file", &dir.join("missing/dir/host.log").to_string_lossy(), "farm.php"]),
        DEFAULT_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(70), "{out:?}");
    assert!(out.stderr.contains("--log-file ") && out.stderr.contains("No such file or directory"), "{}", out.stderr);
}
