//! The PHP stack of a running worker (`backtrace ID[#SLOT]`, the watchdog,
//! a stop that runs into its SIGKILL) and the heartbeat (`Lrpm\progress()`,
//! `progressTimeoutSeconds`), on tests/fixtures/farm's Stuck worker: a deep
//! user stack in a tight loop, fread() on a silent socket, sleep(), and a
//! cycle that talks and then goes silent.

mod support;

use serde_json::{json, Value};
use support::*;

const STUCK: &str = "FarmFixture\\Stuck";

fn stuck_job(jobs: &Jobs, id: &str, config: Value, fields: Value) -> Value {
    let mut job = jobs.job_with(id, 1, config, fields);
    job["workerClass"] = json!(STUCK);
    job
}

/// The log from the line containing `needle` on: its PHP stack follows it.
fn logged_from(stderr: &str, needle: &str) -> String {
    let at = stderr.find(needle).unwrap_or(0);
    stderr[at..].lines().take(12).collect::<Vec<_>>().join("\n")
}

/// Asks until the answer shows `needle` (the worker may not be there yet).
fn backtrace_showing(farm: &Farm, target: &str, needle: &str) -> String {
    farm.wait_for(secs(15.0), &format!("a backtrace of {target} showing {needle}"), || {
        let reply = farm.request(&format!("backtrace {target}")).ok()?;
        reply.contains(needle).then_some(reply)
    })
}

#[test]
fn a_backtrace_shows_a_deep_user_stack_in_a_tight_loop_and_leaves_the_worker_running() {
    let _g = shared();
    let farm = Farm::start("backtrace_loop", FarmOptions::default(), |jobs| {
        json!({
            "loop": stuck_job(jobs, "loop", json!({"stuck": "loop"}), json!({"replicas": 2})),
        })
    });
    let slots = farm.wait_for(secs(15.0), "two running slots", || {
        let status = farm.try_status()?;
        let pids: Vec<i64> =
            status["loop"]["state"]["slots"].as_array()?.iter().filter_map(|s| s["pid"].as_i64()).collect();
        (pids.len() == 2).then_some(pids)
    });
    let reply = backtrace_showing(&farm, "loop#1", "Stuck->spin()");
    let first = reply.lines().next().unwrap_or_default();
    assert_eq!(first, format!("job loop#1 (pid {}): running PHP code", slots[1]), "{reply}");
    let frames: Vec<&str> = reply.lines().skip(1).collect();
    assert!(frames[0].starts_with("#0 FarmFixture\\Stuck->spin() at "), "{reply}");
    assert!(frames[0].contains("tests/fixtures/farm/src/Stuck.php:"), "{reply}");
    let descents = frames
        .iter()
        .filter(|f| f.contains("FarmFixture\\Stuck->descend(int, string, FarmFixture\\Parcel) at "))
        .count();
    assert_eq!(descents, 5, "five frames of descend(), with their arguments' types: {reply}");
    assert!(frames.iter().any(|f| f.contains("FarmFixture\\Stuck->cycle() at ")), "{reply}");
    // The line is where the loop is, not where the function starts.
    let line_of = |frame: &str| frame.rsplit(':').next().and_then(|n| n.parse::<u32>().ok());
    let source = std::fs::read_to_string(fixtures_dir().join("farm/src/Stuck.php")).unwrap();
    let loop_line = source.lines().position(|l| l.contains("$n++;")).map(|i| i as u32 + 1);
    let spin_line = line_of(frames[0]);
    assert!(
        spin_line.is_some_and(|l| loop_line.is_some_and(|n| l + 2 >= n && l <= n + 1)),
        "spin() is in its loop (line {loop_line:?}): {reply}"
    );

    // The job as a whole: one part per process; the workers run on.
    let both = farm.request("backtrace loop").unwrap();
    for pid in &slots {
        assert!(both.contains(&format!("(pid {pid}): running PHP code")), "{both}");
    }
    let status = farm.status();
    let now: Vec<i64> =
        status["loop"]["state"]["slots"].as_array().unwrap().iter().filter_map(|s| s["pid"].as_i64()).collect();
    assert_eq!(now, slots, "the same processes: {status}");

    // A process that cannot answer (stopped by SIGSTOP) gets a reply that
    // says so at the deadline; the supervisor serves others meanwhile.
    farm.request("signal loop STOP").unwrap();
    farm.wait_for(secs(10.0), "the workers to be stopped", || {
        slots.iter().all(|pid| stat(*pid as i32).is_some_and(|s| s.state == 'T')).then_some(())
    });
    let frozen = farm.request("backtrace loop#0").unwrap();
    assert!(frozen.starts_with(&format!("job loop#0 (pid {}): no answer within 1.0s", slots[0])), "{frozen}");
    farm.request("signal loop CONT").unwrap();
    backtrace_showing(&farm, "loop#0", "Stuck->spin()");

    assert_eq!(farm.request("backtrace loop#7").unwrap(), "error: job loop has no running process in slot 7");
    assert_eq!(farm.request("backtrace nope").unwrap(), "error: job nope does not exist");
    assert_eq!(farm.request("backtrace").unwrap(), "error: backtrace requires a job id argument");
}

#[test]
fn a_worker_blocked_in_fread_or_sleep_answers_from_native_code_and_its_call_goes_on() {
    let _g = shared();
    let farm = Farm::start("backtrace_native", FarmOptions::default(), |jobs| {
        json!({
            "reader": stuck_job(jobs, "reader", json!({"stuck": "fread", "wait": 3}), json!({})),
            "sleeper": stuck_job(jobs, "sleeper", json!({"stuck": "sleep", "wait": 3}), json!({})),
        })
    });
    let pids = farm.wait_running(&["reader", "sleeper"], secs(15.0));
    let reply = backtrace_showing(&farm, "reader", "fread(");
    assert!(reply.starts_with(&format!("job reader (pid {}): in native code", pids["reader"])), "{reply}");
    assert!(reply.contains("\n#0 fread(resource, int) in native code\n"), "{reply}");
    assert!(reply.contains("\n#1 FarmFixture\\Stuck->cycle() at "), "{reply}");
    let reply = backtrace_showing(&farm, "sleeper", "sleep(");
    assert!(reply.contains("\n#0 sleep(int) in native code\n"), "{reply}");

    // Neither call was cut short by the request: fread() waited out its
    // 3 s timeout, sleep() slept all of its 3 s (it returns 0).
    let after = unix_now();
    let read = farm.wait_for(secs(15.0), "an fread() that began before the backtrace to return", || {
        farm.events().into_iter().find(|e| e.kind == "fread-returned" && e.t > after)
    });
    let took: f64 = read.tag.split(':').nth(1).and_then(|t| t.parse().ok()).unwrap_or_default();
    assert!(took >= 2.9, "fread() blocked its whole timeout: {read:?}");
    let slept = farm.wait_for(secs(15.0), "a sleep() to end", || {
        farm.events().into_iter().find(|e| e.kind == "slept" && e.t > after)
    });
    assert_eq!(slept.tag, "sleeper:0", "sleep() slept it all: {slept:?}");
}

#[test]
fn the_watchdog_and_a_stop_past_its_deadline_log_where_the_worker_was_stuck() {
    let _g = shared();
    let farm = Farm::start("backtrace_watchdog", FarmOptions::default(), |jobs| {
        json!({
            "stuck": stuck_job(
                jobs,
                "stuck",
                json!({"stuck": "loop"}),
                json!({"cycleTimeoutSeconds": 1, "shutdownTimeoutSeconds": 1})
            ),
        })
    });
    let pid = farm.wait_running(&["stuck"], secs(15.0))["stuck"];
    let line = format!("job stuck (pid {pid}) stopped by the watchdog (cycle 1 has been running for");
    let stderr = farm.wait_stderr(&line, secs(15.0));
    let logged = logged_from(&stderr, &line);
    assert!(logged.contains("longer than cycleTimeoutSeconds 1): its PHP stack:\nrunning PHP code\n"), "{logged}");
    assert!(logged.contains("\n#0 FarmFixture\\Stuck->spin() at "), "{logged}");
    // The loop ignores the stop: the SIGKILL comes after the stack.
    let killed = format!("job stuck (pid {pid}) killed at its stop deadline: its PHP stack:");
    let stderr = farm.wait_stderr(&killed, secs(15.0));
    let logged = logged_from(&stderr, &killed);
    assert!(logged.contains("\nrunning PHP code\n#0 FarmFixture\\Stuck->spin() at "), "{logged}");
    assert!(logged.contains("FarmFixture\\Stuck->descend(int, string, FarmFixture\\Parcel)"), "{logged}");
    farm.wait_for(secs(15.0), "the stuck worker to be gone", || (!is_lrpm_process(pid)).then_some(()));
    // Counted: one watchdog stop (cycle_timeout), one kill at the stop deadline.
    farm.wait_for(secs(15.0), "the watchdog's counters in /metrics", || {
        let text = farm.request("metrics").ok()?;
        let counted = text
            .contains(r#"lrpm_job_watchdog_stops_total{job="stuck",name="job-stuck",limit="cycle_timeout"} "#)
            && text.contains(r#"lrpm_job_stop_kills_total{job="stuck",name="job-stuck"} "#)
            && !text.contains(r#"lrpm_job_watchdog_stops_total{job="stuck",name="job-stuck",limit="cycle_timeout"} 0"#)
            && !text.contains(r#"lrpm_job_stop_kills_total{job="stuck",name="job-stuck"} 0"#);
        counted.then_some(())
    });
    farm.wait_for(secs(15.0), "a new process", || Farm::status_pid(&farm.try_status()?, "stuck").filter(|p| *p != pid));
}

#[test]
fn progress_keeps_a_long_cycle_alive_until_it_goes_silent_for_progress_timeout_seconds() {
    let _g = shared();
    let farm = Farm::start("progress_timeout", FarmOptions::default(), |jobs| {
        json!({
            "talker": stuck_job(
                jobs,
                "talker",
                json!({"stuck": "progress", "talk": 4}),
                json!({"progressTimeoutSeconds": 2, "shutdownTimeoutSeconds": 1})
            ),
        })
    });
    let pid = farm.wait_running(&["talker"], secs(15.0))["talker"];
    let slot = farm.wait_for(secs(15.0), "a progress note in status", || {
        let status = farm.try_status()?;
        let slot = status["talker"]["state"]["slots"][0].clone();
        (slot["progress"]["calls"].as_u64()? >= 3).then_some(slot)
    });
    assert!(slot["progress"]["note"].as_str().unwrap_or_default().starts_with("step "), "{slot}");
    assert!(slot["sinceActivityMs"].as_f64().is_some_and(|ms| ms < 2000.0), "{slot}");
    assert_eq!(slot["status"], "running", "{slot}");

    let line = format!("job talker (pid {pid}): cycle 1 has reported no progress (Lrpm\\progress()) for");
    let stderr = farm.wait_stderr(&line, secs(20.0));
    assert!(stderr.contains("longer than progressTimeoutSeconds 2: stopping it as stuck"), "{stderr}");
    // It was stopped for its silence, after it stopped talking; the log
    // says where it went silent.
    assert!(!farm.events_of("talker", "talked").is_empty(), "stopped before it fell silent: {}", farm.diagnostics());
    let stack = format!("job talker (pid {pid}) stopped by the watchdog (cycle 1 has reported no progress");
    let stderr = farm.wait_stderr(&stack, secs(10.0));
    let logged = logged_from(&stderr, &stack);
    assert!(
        logged.contains("\nin native code (a call into PHP's C code or an extension)\n#0 sleep(int) in native code\n"),
        "{logged}"
    );
    let text = farm.request("metrics").unwrap();
    assert!(
        text.contains(r#"lrpm_job_watchdog_stops_total{job="talker",name="job-talker",limit="progress_timeout"} 1"#),
        "{text}"
    );
}
