//! Integration tests of the farm supervisor: real lrpm-host processes
//! running FarmFixture\EventWorker jobs from tests/fixtures/farm, observed
//! through the workers' event log, the control socket and /proc.
//!
//! Every farm lives in its own temp dir with its own jobs file, event log
//! and control socket, and is SIGKILLed (with its process group) when the
//! test ends or fails. Tests that measure time hold `exclusive()` so they
//! never share the machine with another farm test.

mod support;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

fn assert_near(actual: f64, expected: f64, tolerance: f64, what: &str, farm: &Farm) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: expected {expected:.2}s ± {tolerance}s, got {actual:.3}s\n{}",
        farm.diagnostics()
    );
}

fn state<'a>(status: &'a Value, id: &str) -> &'a Value {
    &status[id]["state"]
}

#[test]
fn three_jobs_start_and_cycle() {
    let _g = shared();
    // Job ids are PHP array keys: integers or strings.
    let farm = Farm::start(
        "three_jobs",
        FarmOptions::default(),
        |j| json!({"1": j.job("1", 1), "2": j.job("2", 1), "alpha": j.job("alpha", 1)}),
    );
    let pids = farm.wait_running(&["1", "2", "alpha"], secs(10.0));
    let mut distinct: Vec<i32> = pids.values().copied().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "three distinct worker pids expected: {pids:?}\n{}", farm.diagnostics());

    farm.wait_for(secs(5.0), "three cycles of every job", || {
        let events = farm.events();
        pids.iter()
            .all(|(id, pid)| events.iter().filter(|e| e.kind == "cycle" && &e.tag == id && e.pid == *pid).count() >= 3)
            .then_some(())
    });

    // Process titles.
    for (id, pid) in &pids {
        assert_eq!(
            cmdline(*pid).as_deref(),
            Some(format!("lrpm-host: worker {id} job-{id} #0").as_str()),
            "title of job {id}"
        );
    }
    let supervisor_title = cmdline(farm.pid).unwrap_or_default();
    assert_eq!(supervisor_title, format!("lrpm-host: supervisor {}", poll_source().display()), "supervisor title");
    let titles: Vec<String> = farm.descendants().into_iter().filter_map(cmdline).collect();
    assert_eq!(
        titles.iter().filter(|t| *t == "lrpm-host: config").count(),
        1,
        "exactly one config process expected among {titles:?}"
    );
    let farm_titles = titles.iter().filter(|t| *t != "lrpm-host: zygote").count();
    assert_eq!(farm_titles, 4, "config process + 3 workers expected, got {titles:?}");

    let status = farm.status();
    assert_eq!(Farm::status_ids(&status).len(), 3, "{status}");
    let stderr = farm.stderr();
    for (id, pid) in &pids {
        assert!(
            stderr.contains(&format!("job {id} (job-{id}) started as pid {pid}")),
            "start log of job {id}\n{stderr}"
        );
        assert_eq!(farm.events_of(id, "start").len(), 1, "job {id} started once\n{}", farm.diagnostics());
    }
}

#[test]
fn higher_mtime_restarts_only_that_job() {
    let _g = shared();
    let farm = Farm::start(
        "mtime_bump",
        FarmOptions::default().interval(1),
        |j| json!({"1": j.job("1", 5), "2": j.job("2", 5), "3": j.job("3", 5)}),
    );
    let before = farm.wait_running(&["1", "2", "3"], secs(10.0));

    // 1: lower mtime with a changed config, 2: higher mtime, 3: same mtime
    // with a changed config. Only 2 may restart.
    let j = farm.jobs();
    farm.write_jobs(&json!({
        "1": j.job_with("1", 4, json!({"sleep": 0.3}), json!({})),
        "2": j.job_with("2", 6, json!({"generation": 2}), json!({})),
        "3": j.job_with("3", 5, json!({"sleep": 0.3}), json!({})),
    }));
    let new2 = farm.wait_for(secs(6.0), "job 2 to run with a new pid", || {
        let pid = Farm::status_pid(&farm.try_status()?, "2")?;
        (pid != before["2"] && farm.events_of("2", "start").iter().any(|e| e.pid == pid)).then_some(pid)
    });
    assert!(
        farm.events_of("2", "exit").iter().any(|e| e.pid == before["2"]),
        "the old job 2 worker should have stopped cleanly (SIGTERM)\n{}",
        farm.diagnostics()
    );
    farm.assert_all_gone(&[before["2"]], secs(2.0), "old job 2 worker");

    // Two more polls: nothing else changes.
    farm.wait_more_polls(2, secs(5.0));
    let status = farm.status();
    for id in ["1", "3"] {
        assert_eq!(
            Farm::status_pid(&status, id),
            Some(before[id]),
            "job {id} must keep its pid\n{}",
            farm.diagnostics()
        );
        assert_eq!(farm.events_of(id, "start").len(), 1, "job {id} must not restart\n{}", farm.diagnostics());
    }
    assert_eq!(Farm::status_pid(&status, "2"), Some(new2));
    assert_eq!(farm.events_of("2", "start").len(), 2, "job 2 restarted exactly once\n{}", farm.diagnostics());
    assert_eq!(status["2"]["config"]["mtime"], json!(6));
    assert_eq!(status["2"]["config"]["workerConfig"]["generation"], json!(2), "job 2 runs the new config");
    assert_eq!(status["1"]["config"]["mtime"], json!(5), "a lower mtime is ignored");
    assert!(status["3"]["config"]["workerConfig"].get("sleep").is_none(), "same mtime: the old config stays");
    assert!(farm.stderr().contains("job 2 changed (mtime 5 -> 6)"), "{}", farm.diagnostics());
}

#[test]
fn removed_job_stops_for_good() {
    let _g = shared();
    let farm = Farm::start(
        "removed_job",
        FarmOptions::default().interval(1),
        |j| json!({"1": j.job("1", 1), "2": j.job("2", 1), "3": j.job("3", 1)}),
    );
    let pids = farm.wait_running(&["1", "2", "3"], secs(10.0));
    let j = farm.jobs();
    farm.write_jobs(&json!({"1": j.job("1", 1), "3": j.job("3", 1)}));
    farm.assert_all_gone(&[pids["2"]], secs(5.0), "removed job 2");
    assert!(
        farm.events_of("2", "exit").iter().any(|e| e.pid == pids["2"]),
        "job 2 should stop cleanly on SIGTERM\n{}",
        farm.diagnostics()
    );

    // Several polls later it is still gone and the others are untouched.
    farm.wait_more_polls(3, secs(6.0));
    assert_eq!(farm.events_of("2", "start").len(), 1, "job 2 must never restart\n{}", farm.diagnostics());
    let status = farm.status();
    assert!(status.get("2").is_none(), "job 2 must leave the status: {status}");
    for id in ["1", "3"] {
        assert_eq!(Farm::status_pid(&status, id), Some(pids[id]), "job {id} keeps running\n{}", farm.diagnostics());
    }
    assert!(farm.stderr().contains("job 2 removed from the configuration"), "{}", farm.diagnostics());
}

/// The doubling itself (1, 2, 4, ... s, capped) is the pure core's table
/// test (src/farm/backoff.rs, src/farm/tests.rs); here, with the shortest
/// real waits, a crashing worker is restarted after 1 s, then 2 s.
#[test]
fn worker_exiting_at_once_is_restarted_with_a_growing_delay() {
    let _g = exclusive();
    let farm = Farm::start(
        "backoff",
        FarmOptions::default(),
        |j| json!({"1": j.job_with("1", 1, json!({"exitInStart": 1}), json!({}))}),
    );
    let starts = farm.wait_starts("1", 3, secs(8.0));
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1].t - w[0].t).collect();
    assert!(gaps[1] > gaps[0] + 0.5, "the second restart must wait longer than the first: gaps {gaps:.3?}");
    for (gap, expected) in gaps.iter().zip([1.0, 2.0]) {
        assert_near(*gap, expected, 0.35, &format!("gaps between starts {gaps:.3?}"), &farm);
    }
    let pids: std::collections::HashSet<i32> = starts.iter().map(|e| e.pid).collect();
    assert_eq!(pids.len(), 3, "every start is a new process\n{}", farm.diagnostics());

    // After the 3rd quick exit: backing off 4 s, last exit status 1.
    let status = farm.wait_for(secs(3.0), "job 1 in backoff after its 3rd exit", || {
        let status = farm.try_status()?;
        let s = state(&status, "1");
        (s["status"] == "backoff" && s["lastExitStatus"] == 1 && s["restarts"] == 3).then_some(status)
    });
    let s = state(&status, "1");
    assert_eq!(s["backoffInterval"], json!(8), "backoff doubles after each delay used: {status}");
    assert!(s["pid"].is_null(), "{status}");
    assert!(s["restartAt"].as_i64().is_some(), "{status}");
    let stderr = farm.stderr();
    for delay in [1, 2, 4] {
        assert!(stderr.contains(&format!("restarting in {delay}s (backoff)")), "missing backoff {delay}s\n{stderr}");
    }
    assert!(stderr.contains("exit code 1"), "{stderr}");
}

#[test]
fn worker_running_longer_than_short_run_time_restarts_at_once() {
    let _g = exclusive();
    let farm = Farm::start(
        "long_run",
        FarmOptions::default(),
        |j| json!({"1": j.job_with("1", 1, json!({"exitAfter": 1.5, "sleep": 0.1}), json!({"shortRunTimeSeconds": 1}))}),
    );
    let starts = farm.wait_starts("1", 3, secs(8.0));
    let exits = farm.events_of("1", "exit-soon");
    for k in 0..2 {
        let exit = exits
            .iter()
            .find(|e| e.pid == starts[k].pid)
            .unwrap_or_else(|| panic!("run {k} has no exit-soon event\n{}", farm.diagnostics()));
        assert_near(exit.t - starts[k].t, 1.5, 0.3, &format!("run {k} length"), &farm);
        let gap = starts[k + 1].t - exit.t;
        assert!(
            (0.0..0.3).contains(&gap),
            "restart {} should follow the exit at once (< 0.3 s), took {gap:.3}s\n{}",
            k + 1,
            farm.diagnostics()
        );
        assert_ne!(starts[k].pid, starts[k + 1].pid);
    }
    let stderr = farm.stderr();
    assert!(stderr.contains("restarting now"), "{stderr}");
    assert!(!stderr.contains("(backoff)"), "no backoff expected\n{stderr}");
    let status = farm.status();
    assert_eq!(state(&status, "1")["backoffInterval"], json!(1), "a long run resets the backoff: {status}");
}

#[test]
fn worker_ignoring_sigterm_is_killed_after_shutdown_timeout() {
    let _g = exclusive();
    let farm = Farm::start("ignore_term", FarmOptions::default(), |j| {
        json!({
            "1": j.job_with("1", 1, json!({"ignoreTerm": true}), json!({"shutdownTimeoutSeconds": 1})),
            "2": j.job("2", 1),
        })
    });
    let pids = farm.wait_running(&["1", "2"], secs(10.0));
    // SIG_IGN is installed in start(), before the first cycle.
    farm.wait_for(secs(3.0), "a cycle of job 1", || {
        farm.events_of("1", "cycle").iter().any(|e| e.pid == pids["1"]).then_some(())
    });

    farm.write_jobs(&json!({"2": farm.jobs().job("2", 1)}));
    let t0 = unix_now();
    farm.signal(Signal::SIGHUP);
    farm.wait_for(secs(5.0), "the SIGTERM-ignoring worker to be gone", || (!is_lrpm_process(pids["1"])).then_some(()));
    let elapsed = unix_now() - t0;
    assert!(
        (0.9..=1.7).contains(&elapsed),
        "the worker should be SIGKILLed ≈1 s after SIGTERM, was gone after {elapsed:.3}s\n{}",
        farm.diagnostics()
    );
    assert!(
        farm.events_of("1", "cycle").iter().any(|e| e.pid == pids["1"] && e.t > t0 + 0.5),
        "the worker should have kept cycling after SIGTERM\n{}",
        farm.diagnostics()
    );
    assert!(farm.events_of("1", "exit").is_empty(), "SIGKILL leaves no exit event\n{}", farm.diagnostics());
    let msg = format!("job 1 (pid {}) did not stop within 1s of SIGTERM, sending SIGKILL", pids["1"]);
    farm.wait_stderr(&msg, secs(1.0));

    // Once the supervisor has reaped it, a removed job leaves the status:
    // no restart is pending, now or later.
    farm.wait_stderr(&format!("job 1 (pid {}) stopped: ", pids["1"]), secs(3.0));
    let status = farm.status();
    assert!(status.get("1").is_none(), "{status}");
    assert_eq!(farm.events_of("1", "start").len(), 1, "a removed job is never restarted\n{}", farm.diagnostics());
    assert_eq!(Farm::status_pid(&status, "2"), Some(pids["2"]));
}

#[test]
fn sigterm_to_supervisor_stops_everything_and_exits_0() {
    let _g = shared();
    let farm = Farm::start(
        "sigterm",
        FarmOptions::default(),
        |j| json!({"1": j.job("1", 1), "2": j.job("2", 1), "3": j.job("3", 1)}),
    );
    let pids = farm.wait_running(&["1", "2", "3"], secs(10.0));
    let children = farm.wait_for(secs(5.0), "config process and 3 workers", || {
        let d = farm.descendants();
        (farm_count(&d) == 4 && d.iter().any(|p| cmdline(*p).as_deref() == Some("lrpm-host: config"))).then_some(d)
    });
    assert!(farm.socket.exists());

    let sent = Instant::now();
    farm.signal(Signal::SIGTERM);
    let status = farm.wait_exit(secs(15.0));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM\n{}", farm.diagnostics());
    assert!(
        sent.elapsed() < secs(10.0),
        "workers stop after their current (short) cycle, not at their 30 s shutdown timeout; shutdown took {:?}",
        sent.elapsed()
    );
    farm.assert_all_gone(&children, secs(1.0), "after the supervisor exited");
    for (id, pid) in &pids {
        assert!(
            farm.events_of(id, "exit").iter().any(|e| e.pid == *pid),
            "job {id} should have stopped cleanly after its cycle\n{}",
            farm.diagnostics()
        );
    }
    assert!(farm.stderr().contains("lrpm-host shut down cleanly"), "{}", farm.diagnostics());
    assert!(!farm.socket.exists(), "the control socket must be removed at exit");
}

#[test]
fn sigint_stops_the_farm_like_sigterm() {
    let _g = shared();
    let farm = Farm::start("sigint", FarmOptions::default(), |j| json!({"1": j.job("1", 1)}));
    let pids = farm.wait_running(&["1"], secs(10.0));
    let children = farm.wait_for(secs(5.0), "config process and worker", || {
        let d = farm.descendants();
        (farm_count(&d) == 2).then_some(d)
    });
    farm.signal(Signal::SIGINT);
    let status = farm.wait_exit(secs(15.0));
    assert_eq!(status.code(), Some(0), "exit status after SIGINT\n{}", farm.diagnostics());
    farm.assert_all_gone(&children, secs(1.0), "after SIGINT");
    assert!(farm.events_of("1", "exit").iter().any(|e| e.pid == pids["1"]), "{}", farm.diagnostics());
}

#[test]
fn second_sigterm_kills_everything_at_once() {
    let _g = shared();
    let farm = Farm::start("second_sigterm", FarmOptions::default(), |j| {
        json!({
            "1": j.job_with("1", 1, json!({"ignoreTerm": true}), json!({"shutdownTimeoutSeconds": 30})),
            "2": j.job("2", 1),
        })
    });
    let pids = farm.wait_running(&["1", "2"], secs(10.0));
    farm.wait_for(secs(3.0), "a cycle of job 1", || {
        farm.events_of("1", "cycle").iter().any(|e| e.pid == pids["1"]).then_some(())
    });
    let children = farm.descendants();
    farm.signal(Signal::SIGTERM);
    // Job 2 stops; job 1 ignores SIGTERM and has 30 s: the supervisor waits.
    let stopped = farm.wait_for(secs(3.0), "job 2 to stop", || farm.events_of("2", "exit").first().cloned());
    // Job 1 goes on cycling after that: the supervisor is still waiting.
    farm.wait_for(secs(3.0), "job 1 to cycle after job 2 stopped", || {
        farm.events_of("1", "cycle").iter().any(|e| e.pid == pids["1"] && e.t > stopped.t + 0.3).then_some(())
    });
    assert!(
        farm.try_exit().is_none(),
        "the supervisor waits for the worker that ignores SIGTERM\n{}",
        farm.diagnostics()
    );
    assert!(is_lrpm_process(pids["1"]), "job 1 ignores SIGTERM\n{}", farm.diagnostics());

    let sent = Instant::now();
    farm.signal(Signal::SIGTERM);
    let status = farm.wait_exit(secs(15.0));
    // Not at once would be job 1's own 30 s shutdown timeout.
    assert!(sent.elapsed() < secs(10.0), "the second SIGTERM should end everything at once, took {:?}", sent.elapsed());
    assert_eq!(status.code(), Some(0), "exit status after two SIGTERMs\n{}", farm.diagnostics());
    farm.assert_all_gone(&children, secs(1.0), "after the second SIGTERM");
    assert!(farm.stderr().contains("second stop request"), "{}", farm.diagnostics());
}

#[test]
fn sigkill_to_supervisor_leaves_no_process_behind() {
    let _g = exclusive();
    let farm = Farm::start("sigkill", FarmOptions::default(), |j| json!({"1": j.job("1", 1), "2": j.job("2", 1)}));
    farm.wait_running(&["1", "2"], secs(10.0));
    let children = farm.wait_for(secs(5.0), "config process and 2 workers", || {
        let d = farm.descendants();
        (farm_count(&d) == 3).then_some(d)
    });
    farm.signal(Signal::SIGKILL);
    farm.wait_exit(secs(5.0));
    farm.assert_all_gone(&children, secs(1.0), "PDEATHSIG after SIGKILL of the supervisor");
}

#[test]
fn throwing_configuration_source_keeps_previous_jobs() {
    let _g = shared();
    let farm = Farm::start(
        "source_throws",
        FarmOptions::default().interval(1),
        |j| json!({"1": j.job("1", 1), "2": j.job("2", 1)}),
    );
    let pids = farm.wait_running(&["1", "2"], secs(10.0));
    let flag = farm.jobs_file.with_extension("json.fail");
    fs::write(&flag, "farm-fixture: the source exploded 4711\n").unwrap();

    let stderr = farm.wait_stderr("configuration source error", secs(5.0));
    let error_at = unix_now();
    assert!(stderr.contains("the source exploded 4711"), "the PHP message should be logged\n{stderr}");
    assert!(stderr.contains("RuntimeException"), "{stderr}");

    // The config process is restarted with backoff (it ran < 5 s): it fails
    // again 2 s later. Meanwhile the jobs keep running with the same pids.
    let stderr = farm.wait_for(secs(5.0), "a second configuration source error", || {
        let err = farm.stderr();
        (log_times(&err, "configuration source error").len() >= 2).then_some(err)
    });
    let times = log_times(&stderr, "configuration source error");
    let gap = times[1] - times[0];
    assert!((1.6..=2.6).contains(&gap), "config process backoff: errors {gap:.3}s apart, expected ≈2 s\n{stderr}");
    let status = farm.status();
    for id in ["1", "2"] {
        assert_eq!(Farm::status_pid(&status, id), Some(pids[id]), "job {id} pid\n{}", farm.diagnostics());
        assert!(
            farm.events_of(id, "cycle").iter().any(|e| e.pid == pids[id] && e.t > error_at + 1.0),
            "job {id} should keep cycling\n{}",
            farm.diagnostics()
        );
    }

    // The source recovers (config process restarted with backoff): a new job appears.
    fs::remove_file(&flag).unwrap();
    let j = farm.jobs();
    farm.write_jobs(&json!({"1": j.job("1", 1), "2": j.job("2", 1), "3": j.job("3", 1)}));
    // The next attempt comes 4 s after the second failure.
    farm.wait_running(&["3"], secs(8.0));
    let status = farm.status();
    for id in ["1", "2"] {
        assert_eq!(
            Farm::status_pid(&status, id),
            Some(pids[id]),
            "job {id} pid after recovery\n{}",
            farm.diagnostics()
        );
        assert_eq!(farm.events_of(id, "start").len(), 1, "job {id} must not restart\n{}", farm.diagnostics());
    }
}

#[test]
fn invalid_jobs_are_dropped_and_the_others_run() {
    let _g = shared();
    let farm = Farm::start("invalid_job", FarmOptions::default(), |j| {
        json!({
            "1": j.job("1", 1),
            "2": j.job_with("2", 1, json!({}), json!({"name": 123})),
            "3": j.job_with("3", 1, json!({}), json!({"workerClass": "FarmFixture\\NoSuchWorker"})),
            "4": j.job("4", 1),
            "5": j.job("5", -1),
        })
    });
    farm.wait_running(&["1", "4"], secs(10.0));
    for (id, field) in [("2", "name"), ("3", "workerClass"), ("5", "mtime")] {
        let line = farm.wait_stderr(&format!("invalid configuration for job {id}: field '{field}'"), secs(3.0));
        assert!(line.contains("ERROR"), "logged as an error\n{line}");
    }
    // The status is the supervisor's state after it applied that configuration.
    let status = farm.status();
    let mut ids: Vec<String> = Farm::status_ids(&status).into_iter().collect();
    ids.sort();
    assert_eq!(ids, ["1", "4"], "only the valid jobs run: {status}");
    for id in ["2", "3", "5"] {
        assert!(farm.events_of(id, "start").is_empty(), "invalid job {id} must not start\n{}", farm.diagnostics());
    }
}

#[test]
fn push_mode_applies_changes_at_once() {
    let _g = exclusive();
    let farm = Farm::start("push_mode", FarmOptions::default().push_mode(), |j| json!({"1": j.job("1", 1)}));
    let pids = farm.wait_running(&["1"], secs(10.0));
    // The first call returned at once; the second one now blocks on the file.
    farm.wait_for(secs(5.0), "the push source to block in its second call", || (farm.polls() >= 2).then_some(()));

    let j = farm.jobs();
    farm.write_jobs(&json!({"1": j.job("1", 1), "2": j.job("2", 1)}));
    let changed_at = unix_now();
    let start = farm.wait_starts("2", 1, secs(5.0))[0].clone();
    let latency = start.t - changed_at;
    // Pushed by the call that was blocked, not picked up by the next call
    // after the source's 2 s timeout.
    assert!(latency < 1.5, "job 2 started {latency:.3}s after the file changed (push mode)\n{}", farm.diagnostics());

    // Past the source's 2 s timeout: the call that began after job 2 was
    // pushed returned the same jobs, and the next one blocks again.
    farm.wait_for(secs(5.0), "a push call to time out and the next to begin", || (farm.polls() >= 4).then_some(()));
    farm.write_jobs(&json!({"2": j.job("2", 1)}));
    let changed_at = unix_now();
    let exit = farm.wait_for(secs(5.0), "job 1 to stop", || farm.events_of("1", "exit").first().cloned());
    let latency = exit.t - changed_at;
    assert!(latency < 1.5, "job 1 stopped {latency:.3}s after its removal (push mode)\n{}", farm.diagnostics());
    assert_eq!(exit.pid, pids["1"]);

    let stderr = farm.stderr();
    assert!(
        !stderr.lines().any(|l| l.contains("configuration process") && l.contains("ended")),
        "the config process must not end in push mode\n{stderr}"
    );
    let started = Instant::now();
    farm.stop(secs(10.0));
    // The blocked push call does not hold the stop up until its stop timeout.
    assert!(started.elapsed() < secs(8.0), "shutdown in push mode took {:?}", started.elapsed());
}

#[test]
fn sighup_forces_a_configuration_poll() {
    let _g = shared();
    let farm = Farm::start("sighup", FarmOptions::default(), |j| json!({"1": j.job("1", 1)}));
    let pids = farm.wait_running(&["1"], secs(10.0));
    let j = farm.jobs();
    farm.write_jobs(&json!({"1": j.job("1", 1), "2": j.job("2", 1)}));
    // -i 3600: without SIGHUP nothing would happen for an hour.
    assert!(farm.events_of("2", "start").is_empty(), "job 2 must wait for the next poll\n{}", farm.diagnostics());
    let sent = unix_now();
    farm.signal(Signal::SIGHUP);
    let start = farm.wait_starts("2", 1, secs(3.0))[0].clone();
    assert!(start.t >= sent, "job 2 started before SIGHUP\n{}", farm.diagnostics());
    assert!(start.t - sent < 1.0, "job 2 started {:.3}s after SIGHUP\n{}", start.t - sent, farm.diagnostics());
    // Every poll is accounted for: the first one, then the one SIGHUP asked for.
    let polls = farm.events_of(CONFIG_TAG, "poll");
    assert_eq!(polls.len(), 2, "one poll at start, one for SIGHUP\n{}", farm.diagnostics());
    assert!(polls[0].t < sent && polls[1].t >= sent, "{polls:?}\n{}", farm.diagnostics());
    assert_eq!(Farm::status_pid(&farm.status(), "1"), Some(pids["1"]));
    assert!(farm.stderr().contains("received SIGHUP"), "{}", farm.diagnostics());
}

/// A SIGHUP arriving while the configuration process is being started must
/// not kill it: a reload request must never cost the farm its configuration
/// process (and a 2 s, then growing, backoff). The window is right after the
/// fork, so the SIGHUP is sent as soon as the supervisor handles signals (it
/// logs "supervisor started" just before forking the first configuration
/// process); five rounds, as it is a race.
#[test]
fn sighup_right_after_start_does_not_kill_the_config_process() {
    let _g = exclusive();
    for round in 0..5 {
        let farm = Farm::start("sighup_early", FarmOptions::default(), |j| json!({"1": j.job("1", 1)}));
        // Polled faster than the usual waits: the window is short.
        let started = poll_every(Duration::from_micros(200), secs(10.0), || {
            farm.stderr().contains("lrpm-host supervisor started").then_some(true).or(farm.try_exit().map(|_| false))
        });
        assert_eq!(started, Some(true), "the supervisor did not start\n{}", farm.diagnostics());
        farm.signal(Signal::SIGHUP);
        farm.wait_running(&["1"], secs(10.0));
        let stderr = farm.stderr();
        let killed: Vec<&str> =
            stderr.lines().filter(|l| l.contains("configuration process") && l.contains("ended")).collect();
        assert!(
            killed.is_empty(),
            "round {round}: one SIGHUP to the supervisor right after it started ended the configuration process:\n{}\n{}",
            killed.join("\n"),
            farm.diagnostics()
        );
        assert!(stderr.contains("received SIGHUP"), "{}", farm.diagnostics());
    }
}

fn check(jobs: &Value, flag: Option<&str>) -> Output {
    let dir = TempDir::new("check");
    let jobs_file = dir.join("jobs.json");
    write_atomically(&jobs_file, jobs.to_string().as_bytes());
    if let Some(message) = flag {
        fs::write(jobs_file.with_extension("json.fail"), message).unwrap();
    }
    let mut cmd = Command::new(bin());
    cmd.arg("check").arg(poll_source()).env("FARM_JOBS", &jobs_file).env("NO_COLOR", "1").current_dir(dir.path());
    run_with_timeout(cmd, secs(15.0))
}

#[test]
fn check_exit_codes() {
    let _g = shared();
    let j = Jobs { log: "/dev/null".into() };
    let valid = check(&json!({"1": j.job("1", 1), "2": j.job("2", 7)}), None);
    valid.assert_code(0);
    assert!(valid.stdout.contains("2 job(s), 2 valid"), "{}", valid.dump());
    assert!(valid.stdout.contains("ok    2: job-2 (FarmFixture\\EventWorker, mtime 7"), "{}", valid.dump());

    let invalid = check(&json!({"1": j.job("1", 1), "2": j.job_with("2", 1, json!({}), json!({"name": 5}))}), None);
    invalid.assert_code(1);
    assert!(invalid.stdout.contains("2 job(s), 1 valid"), "{}", invalid.dump());
    assert!(invalid.stdout.contains("job 2: field 'name'"), "{}", invalid.dump());

    let throwing = check(&json!({"1": j.job("1", 1)}), Some("check-source-broke-0815"));
    assert_ne!(throwing.status.code(), Some(0), "a throwing source is not valid\n{}", throwing.dump());
    assert!(throwing.stderr.contains("check-source-broke-0815"), "{}", throwing.dump());
}

#[test]
fn start_and_stop_a_farm_200_times() {
    let _g = exclusive();
    let started = Instant::now();
    for i in 0..200 {
        let farm = Farm::start(
            "start_stop",
            FarmOptions::default(),
            |j| json!({"1": j.job_with("1", 1, json!({"sleep": 0.05}), json!({}))}),
        );
        // Even iterations stop a farm whose worker runs; odd ones stop it as
        // soon as the control socket answers (config process and worker
        // possibly still starting).
        let worker = if i % 2 == 0 {
            let start = farm.wait_for(secs(10.0), &format!("the worker of iteration {i} to start"), || {
                farm.events_of("1", "start").first().cloned()
            });
            Some(start.pid)
        } else {
            farm.wait_answering(secs(10.0));
            None
        };
        let children = farm.descendants();
        farm.signal(Signal::SIGTERM);
        let status = farm.wait_exit(secs(10.0));
        assert_eq!(status.code(), Some(0), "iteration {i}: exit status after SIGTERM\n{}", farm.diagnostics());
        let mut pids: Vec<i32> = children;
        pids.extend(worker);
        pids.extend(farm.events().iter().map(|e| e.pid));
        assert!(
            !pids.iter().any(|p| is_lrpm_process(*p)),
            "iteration {i}: a process outlived the supervisor\n{}",
            farm.diagnostics()
        );
        assert!(
            started.elapsed() < secs(90.0),
            "200 start/stop cycles must take < 90 s; {} took {:?}",
            i + 1,
            started.elapsed()
        );
    }
    eprintln!("200 farm start/stop cycles took {:?}", started.elapsed());
}

#[test]
fn idle_farm_leaves_the_supervisor_and_the_config_process_asleep() {
    let _g = shared();
    let farm = Farm::start("idle", FarmOptions::default(), |j| json!({"1": j.job("1", 1), "2": j.job("2", 1)}));
    let pids = farm.wait_running(&["1", "2"], secs(10.0));
    let config_process = farm
        .descendants()
        .into_iter()
        .find(|pid| !pids.values().any(|worker| worker == pid))
        .expect("the config process");
    // Settled: our last client is gone (the supervisor closed it) and both
    // processes are asleep.
    let mut last_client = std::os::unix::net::UnixStream::connect(&farm.socket).expect("connect");
    std::io::Write::write_all(&mut last_client, &frame(b"status")).expect("send status");
    read_frame(&mut last_client).expect("status response");
    assert!(closed_by_peer(&mut last_client, secs(5.0)), "the supervisor keeps an answered client open");
    drop(last_client);
    farm.wait_for(secs(5.0), "the supervisor and the config process to sleep", || {
        [farm.pid, config_process].iter().all(|p| stat(*p).is_some_and(|s| s.state == 'S')).then_some(())
    });
    let before = (context_switches(farm.pid), context_switches(config_process));
    // The window this test measures, not a wait for something to happen.
    std::thread::sleep(secs(3.0));
    let after = (context_switches(farm.pid), context_switches(config_process));
    // Workers cycling and a config poll interval of an hour: nothing for
    // either to do, so neither may wake up (one wakeup of slack).
    assert!(after.0 - before.0 <= 1, "supervisor woke {} times\n{}", after.0 - before.0, farm.diagnostics());
    assert!(after.1 - before.1 <= 1, "config process woke {} times\n{}", after.1 - before.1, farm.diagnostics());
}

const RECYCLER: &str = "FarmFixture\\Recycler";

#[test]
fn a_worker_that_asks_for_a_recycle_is_replaced_at_once_and_counted() {
    let _g = shared();
    let farm = Farm::start("ask_recycle", FarmOptions::default(), |jobs| {
        json!({
            "r": jobs.job_with("r", 1, json!({"recycleAfter": 2}), json!({"workerClass": RECYCLER})),
            "s": jobs.job_with("s", 1, json!({"recycleInStart": true}), json!({"workerClass": RECYCLER})),
        })
    });
    // Short runs (shortRunTimeSeconds 5): any other exit would back off
    // 1 + 2 + 4 s before the fourth start.
    let starts = farm.wait_starts("r", 4, secs(10.0));
    let span = starts[3].t - starts[0].t;
    assert!(span < 3.0, "3 recycles took {span:.2}s\n{}", farm.diagnostics());
    // More starts may have come by the time the wait saw four.
    let pids: std::collections::HashSet<i32> = starts[..4].iter().map(|e| e.pid).collect();
    assert_eq!(pids.len(), 4, "each start is a new process\n{}", farm.diagnostics());
    // Every replaced process ran its stop hook after its second (last) cycle.
    let events = farm.events();
    for start in &starts[..3] {
        let of_pid: Vec<&str> =
            events.iter().filter(|e| e.tag == "r" && e.pid == start.pid).map(|e| e.kind.as_str()).collect();
        assert_eq!(of_pid, ["start", "cycle", "cycle", "stop-hook"], "pid {}\n{}", start.pid, farm.diagnostics());
    }
    // From start(): no cycle, the stop hook, a fresh process at once.
    let starts = farm.wait_starts("s", 4, secs(10.0));
    assert!(starts[3].t - starts[0].t < 3.0, "{}", farm.diagnostics());
    assert!(farm.events_of("s", "cycle").is_empty(), "{}", farm.diagnostics());
    assert!(farm.events_of("s", "stop-hook").len() >= 3, "{}", farm.diagnostics());

    let stderr = farm.stderr();
    assert!(stderr.contains("job r: recycling: requested by the worker (Lrpm\\recycle())"), "{}", farm.diagnostics());
    assert!(stderr.contains("job s: recycling: requested by the worker (Lrpm\\recycle())"), "{}", farm.diagnostics());
    assert!(stderr.contains("recycled (Lrpm\\recycle()); starting a fresh process"), "{}", farm.diagnostics());
    let status = farm.status();
    for id in ["r", "s"] {
        let recycles = state(&status, id)["recycles"].as_u64().unwrap_or(0);
        assert!(recycles >= 3, "job {id}: {status}");
        assert!(state(&status, id)["restarts"].as_u64().unwrap_or(0) >= recycles, "job {id}: {status}");
        assert_eq!(state(&status, id)["backoffInterval"], 1, "job {id}: {status}");
    }
    // lrpmctl shows the same count.
    let out = lrpmctl(&farm.socket, &["--json", "status"]);
    out.assert_code(0);
    let shown: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", out.dump()));
    assert!(shown["r"]["state"]["recycles"].as_u64().unwrap_or(0) >= 3, "{}", out.dump());
}
