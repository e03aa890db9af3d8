//! `replicas`: several processes per job, each in its own slot; scaling
//! without touching the other slots; `recycle` as a rolling replacement.

mod support;

use std::collections::BTreeMap;

use serde_json::{json, Value};
use support::*;

/// Slot number to pid of the job's running processes, from `status`.
fn running_slots(status: &Value, id: &str) -> BTreeMap<u64, i32> {
    let slots = status[id]["state"]["slots"].as_array().cloned().unwrap_or_default();
    slots
        .iter()
        .filter(|s| s["status"] == "running")
        .filter_map(|s| Some((s["slot"].as_u64()?, s["pid"].as_i64()? as i32)))
        .collect()
}

/// Waits until exactly `n` slots (0..n) of the job run and each logged its start.
fn wait_slots(farm: &Farm, id: &str, n: u64) -> BTreeMap<u64, i32> {
    farm.wait_for(secs(15.0), &format!("{n} running slots of job {id}"), || {
        let slots = running_slots(&farm.try_status()?, id);
        let events = farm.events_of(id, "start");
        let all_started = slots.values().all(|pid| events.iter().any(|e| e.pid == *pid));
        (slots.keys().copied().eq(0..n) && all_started).then_some(slots)
    })
}

#[test]
fn a_job_with_replicas_runs_one_titled_process_per_slot() {
    let _g = shared();
    let farm = Farm::start(
        "replicas",
        FarmOptions::default(),
        |jobs| json!({"r": jobs.job_with("r", 1, json!({"sleep": 0.05}), json!({"replicas": 3}))}),
    );
    let slots = wait_slots(&farm, "r", 3);
    for (slot, pid) in &slots {
        assert_eq!(cmdline(*pid).as_deref(), Some(format!("lrpm-host: worker r job-r #{slot}").as_str()));
    }
    let status = farm.status();
    let state = &status["r"]["state"];
    assert_eq!(state["replicas"], 3, "{status}");
    assert_eq!(state["status"], "running");
    assert_eq!(state["pid"].as_i64(), Some(slots[&0] as i64), "pid is the lowest slot's, as php-lrpm shows one");
    // lrpmctl shows one row per slot.
    let table = std::process::Command::new(ctl_bin())
        .args(["--socket", farm.socket.to_str().unwrap(), "--color", "never", "status"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    for slot in 0..3 {
        assert!(table.lines().any(|l| l.starts_with(&format!("r#{slot} "))), "{table}");
    }
    // A signal goes to every slot's process.
    let reply = farm.request("signal r USR2").unwrap();
    assert!(reply.starts_with("Sent SIGUSR2 to job r (pids "), "{reply}");
}

#[test]
fn changing_replicas_stops_the_highest_slots_and_adds_new_ones_without_touching_the_others() {
    let _g = shared();
    let farm = Farm::start(
        "scale",
        FarmOptions::default(),
        |jobs| json!({"s": jobs.job_with("s", 1, json!({"sleep": 0.05}), json!({"replicas": 3}))}),
    );
    let before = wait_slots(&farm, "s", 3);
    let scale = |mtime: i64, replicas: u64| {
        farm.write_jobs(
            &json!({"s": farm.jobs().job_with("s", mtime, json!({"sleep": 0.05}), json!({"replicas": replicas}))}),
        );
        farm.request("reload").unwrap();
    };
    scale(2, 1);
    farm.wait_for(secs(10.0), "slots 1 and 2 to stop", || {
        (!is_lrpm_process(before[&1]) && !is_lrpm_process(before[&2])).then_some(())
    });
    let after = wait_slots(&farm, "s", 1);
    assert_eq!(after[&0], before[&0], "slot 0 keeps its process\n{}", farm.diagnostics());
    scale(3, 2);
    let grown = wait_slots(&farm, "s", 2);
    assert_eq!(grown[&0], before[&0], "slot 0 keeps its process\n{}", farm.diagnostics());
    assert!(farm.stderr().contains("job s changed (mtime 2 -> 3): replicas 1 -> 2"), "{}", farm.diagnostics());
    assert_eq!(farm.status()["s"]["state"]["slots"].as_array().map(Vec::len), Some(2));
}

#[test]
fn recycle_replaces_every_slot_one_at_a_time() {
    let _g = shared();
    let farm = Farm::start("rolling", FarmOptions::default(), |jobs| {
        json!({
            "q": jobs.job_with("q", 1, json!({"sleep": 0.05}), json!({"replicas": 3})),
            "other": jobs.job_with("other", 1, json!({"sleep": 0.05}), json!({})),
        })
    });
    let before = wait_slots(&farm, "q", 3);
    let other = farm.wait_running(&["other"], secs(10.0))["other"];
    assert_eq!(farm.request("recycle q").unwrap(), "Scheduled rolling recycle of job q");
    // Sample while it rolls: never fewer than n-1 running.
    let mut fewest = 3;
    let after = farm.wait_for(secs(20.0), "every slot of q to be replaced", || {
        let status = farm.try_status()?;
        let slots = running_slots(&status, "q");
        fewest = fewest.min(slots.len());
        let replaced = slots.len() == 3 && slots.iter().all(|(slot, pid)| before[slot] != *pid);
        (replaced && farm.stderr().contains("job q: rolling recycle complete")).then_some(slots)
    });
    assert!(fewest >= 2, "a rolling recycle must keep n-1 running, saw {fewest}\n{}", farm.diagnostics());
    for pid in before.values() {
        assert!(
            farm.events_of("q", "exit").iter().any(|e| e.pid == *pid),
            "graceful stop of {pid}\n{}",
            farm.diagnostics()
        );
    }
    // One slot at a time: each new process started before the next old one got SIGTERM.
    let stderr = farm.stderr();
    let started = |pid: i32| log_times(&stderr, &format!("started as pid {pid}"))[0];
    let stopping = |slot: u64| log_times(&stderr, &format!("job q#{slot} (pid {}): recycling", before[&slot]))[0];
    assert!(started(after[&0]) <= stopping(1) && started(after[&1]) <= stopping(2), "{}", farm.diagnostics());
    // ... and had completed its first cycle before the next old one was told to stop.
    let first_cycle = |pid: i32| farm.events_of("q", "cycle").iter().find(|e| e.pid == pid).map(|e| e.t);
    let exit_of = |pid: i32| farm.events_of("q", "exit").iter().find(|e| e.pid == pid).map(|e| e.t);
    for slot in 0..2u64 {
        let (new, next_old) = (after[&slot], before[&(slot + 1)]);
        assert!(first_cycle(new) < exit_of(next_old), "slot {slot}: {}", farm.diagnostics());
    }
    let status = farm.status();
    assert_eq!(status["q"]["state"]["recycles"], 3, "{status}");
    assert_eq!(status["q"]["state"]["recyclesByReason"], json!({"rolling": 3}), "{status}");
    assert!(status["other"]["state"].get("recyclesByReason").is_none(), "only once one happened: {status}");
    assert_eq!(running_slots(&status, "other")[&0], other, "other jobs are untouched");
    // recycle all: every job; a job with nothing running is not counted.
    assert_eq!(farm.request("recycle all").unwrap(), "Scheduled rolling recycle of 2 job(s)");
    assert_eq!(farm.request("recycle nope").unwrap(), "error: Will not recycle job nope, it does not exist");
}

#[test]
fn host_wide_defaults_apply_to_jobs_without_their_own_fields_and_check_shows_them() {
    let _g = shared();
    let options = FarmOptions {
        extra_args: [
            "--replicas",
            "2",
            "--cycle-timeout-seconds",
            "30",
            "--max-lifetime-seconds",
            "3600",
            "--essential",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    let farm = Farm::start("defaults", options, |jobs| {
        json!({
            "d": jobs.job_with("d", 1, json!({"sleep": 0.05}), json!({})),
            "own": jobs.job_with("own", 1, json!({"sleep": 0.05}), json!({"replicas": 1, "cycleTimeoutSeconds": 5})),
            "bad": jobs.job_with("bad", 1, json!({}), json!({"replicas": 0})),
        })
    });
    wait_slots(&farm, "d", 2);
    wait_slots(&farm, "own", 1);
    // status shows the settings each job runs with; config only what the source gave.
    let status = farm.status();
    let settings = |id: &str| status[id]["state"]["settings"].clone();
    assert_eq!(
        (settings("d")["replicas"].clone(), settings("d")["cycleTimeoutSeconds"].clone()),
        (json!(2), json!(30)),
        "{status}"
    );
    assert_eq!(settings("d")["maxLifetimeSeconds"], 3600, "{status}");
    assert_eq!(settings("d")["essential"], true, "{status}");
    assert_eq!(settings("own")["cycleTimeoutSeconds"], 5, "{status}");
    assert_eq!(settings("own")["restartPolicy"], "always", "{status}");
    assert!(status["d"]["config"].get("replicas").is_none(), "{status}");
    let stderr = farm.wait_stderr("job bad: field 'replicas'", secs(5.0));
    assert!(stderr.contains("0 is below 1 (to run no process, hold the job with `lrpmctl stop ID`)"), "{stderr}");

    let mut cmd = lrpm_host(["--replicas", "2", "--cycle-timeout-seconds", "30", "check"]);
    cmd.arg(poll_source()).env("FARM_JOBS", &farm.jobs_file).current_dir(farm.dir.path());
    let out = run_with_timeout(cmd, DEFAULT_TIMEOUT);
    out.assert_code(1)
        .assert_stdout_contains("replicas 2, cycleTimeoutSeconds 30)")
        .assert_stdout_contains("cycleTimeoutSeconds 5)")
        .assert_stdout_contains("job bad: field 'replicas'");

    // A host-wide default is refused in the words the job's field is.
    for (option, value, words) in [
        ("--replicas", "0", "0 is below 1 (to run no process, hold the job with `lrpmctl stop ID`)"),
        ("--max-failures", "-1", "-1 is negative"),
        ("--cycle-timeout-seconds", "90000", "90000 is above the maximum of 86400 (one day)"),
        ("--restart-policy", "sometimes", "\"on-failure\" (exit 0 means done)"),
    ] {
        let mut cmd = lrpm_host([option, value, "check"]);
        cmd.arg(poll_source()).env("FARM_JOBS", &farm.jobs_file).current_dir(farm.dir.path());
        run_with_timeout(cmd, DEFAULT_TIMEOUT).assert_code(64).assert_stderr_contains(words);
    }
}

#[test]
fn each_replica_knows_its_slot_and_status_shows_its_cycle_counters() {
    let _g = shared();
    let farm = Farm::start(
        "slot_identity",
        FarmOptions::default(),
        |jobs| json!({"c": jobs.job_with("c", 1, json!({"sleep": 0.02, "tagSlot": true}), json!({"replicas": 3}))}),
    );
    let slots = farm.wait_for(secs(15.0), "three running slots", || {
        let slots = running_slots(&farm.try_status()?, "c");
        (slots.len() == 3).then_some(slots)
    });
    for (slot, pid) in &slots {
        let tag = format!("c#{slot}");
        farm.wait_for(secs(10.0), &format!("a start of {tag}"), || {
            farm.events_of(&tag, "start").iter().any(|e| e.pid == *pid).then_some(())
        });
    }
    let slot0 = farm.wait_for(secs(10.0), "slot 0 past 5 cycles", || {
        let status = farm.try_status()?;
        let slot = status["c"]["state"]["slots"][0].clone();
        (slot["cycles"].as_u64()? >= 5).then_some(slot)
    });
    let last = slot0["lastCycleMs"].as_f64().unwrap_or_default();
    assert!((15.0..2000.0).contains(&last), "a 20 ms cycle: {slot0}");
    assert!(slot0["heapBytes"].as_u64().unwrap_or_default() > 100_000, "{slot0}");
    assert!(slot0["peakHeapBytes"].as_u64() >= slot0["heapBytes"].as_u64(), "{slot0}");
    let status = farm.status();
    assert!(status["c"]["state"]["cycles"].as_u64().unwrap_or_default() >= 5, "job total: {status}");
}

#[test]
fn the_watchdog_stops_a_stuck_cycle_counts_a_failure_and_leaves_healthy_workers_alone() {
    let _g = shared();
    let farm = Farm::start("watchdog", FarmOptions::default(), |jobs| {
        json!({
            "stuck": jobs.job_with("stuck", 1, json!({"busyFor": 30}), json!({"cycleTimeoutSeconds": 1, "shutdownTimeoutSeconds": 1})),
            "fine": jobs.job_with("fine", 1, json!({"sleep": 0.05}), json!({"cycleTimeoutSeconds": 1})),
        })
    });
    let pids = farm.wait_running(&["stuck", "fine"], secs(10.0));
    let t0 = unix_now();
    let line = format!("job stuck (pid {}): cycle 1 has been running for", pids["stuck"]);
    let stderr = farm.wait_stderr(&line, secs(5.0));
    assert!(stderr.contains("longer than cycleTimeoutSeconds 1: stopping it as stuck"), "{stderr}");
    // busyFor ignores the stop: SIGKILL after shutdownTimeoutSeconds.
    farm.wait_for(secs(5.0), "the stuck worker to be gone", || (!is_lrpm_process(pids["stuck"])).then_some(()));
    let gone = unix_now() - t0;
    assert!(
        gone < 4.0,
        "caught within about cycleTimeoutSeconds + shutdownTimeoutSeconds: {gone:.2}s\n{}",
        farm.diagnostics()
    );
    farm.wait_stderr(&format!("job stuck (pid {}) stopped by the watchdog after", pids["stuck"]), secs(5.0));
    let status = farm.status();
    assert_eq!(status["stuck"]["state"]["status"], "backoff", "a failure backs off\n{status}");
    assert_eq!(running_slots(&status, "fine")[&0], pids["fine"], "a worker with short cycles is never stopped");
    assert!(!farm.stderr().contains("job fine (pid"), "{}", farm.diagnostics());
}

#[test]
fn a_memory_limit_php_would_hit_first_is_pointed_out_once() {
    let _g = shared();
    let options = FarmOptions { extra_args: vec!["-d".into(), "memory_limit=64M".into()], ..Default::default() };
    let farm = Farm::start(
        "memory_warning",
        options,
        |jobs| json!({"m": jobs.job_with("m", 1, json!({"sleep": 0.05}), json!({"memoryLimitMb": 64}))}),
    );
    farm.wait_running(&["m"], secs(10.0));
    farm.wait_stderr("job m: memoryLimitMb 64 is at or above PHP's memory_limit (64 MB)", secs(5.0));
    for _ in 0..2 {
        let polls = farm.polls();
        farm.request("reload").unwrap();
        farm.wait_for(secs(5.0), "another poll", || (farm.polls() > polls).then_some(()));
    }
    assert_eq!(farm.stderr().matches("memoryLimitMb 64 is at or above").count(), 1, "{}", farm.diagnostics());
}

/// Live processes titled as slots of job `id` (the zygote's or the
/// supervisor's children alike), by slot.
fn live_slot_processes(farm: &Farm, id: &str) -> BTreeMap<u64, Vec<i32>> {
    let prefix = format!("lrpm-host: worker {id} job-{id} #");
    let mut found: BTreeMap<u64, Vec<i32>> = BTreeMap::new();
    for pid in descendants(farm.pid) {
        let Some(slot) = cmdline(pid).and_then(|c| c.strip_prefix(&prefix).and_then(|s| s.parse().ok())) else {
            continue;
        };
        found.entry(slot).or_default().push(pid);
    }
    found
}

#[test]
fn back_to_back_restarts_never_leave_two_processes_in_a_slot() {
    let _g = shared();
    let farm = Farm::start(
        "restart-hammer",
        FarmOptions::default(),
        |jobs| json!({"h": jobs.job_with("h", 1, json!({"sleep": 0.02}), json!({"replicas": 2}))}),
    );
    wait_slots(&farm, "h", 2);
    // Two restarts back to back, the second while the first one's new
    // processes are being started (by the zygote, by default), then
    // `restart all` in a row.
    for _ in 0..50 {
        for _ in 0..2 {
            let reply = farm.request("restart h").unwrap();
            assert!(!reply.starts_with("error"), "{reply}");
        }
    }
    for _ in 0..50 {
        farm.request("restart all").unwrap();
    }
    // Settled: one live process per slot, the one status shows.
    let settled = farm.wait_for(secs(30.0), "one live process per slot, the one status shows", || {
        let status = farm.try_status()?;
        let shown = running_slots(&status, "h");
        let live = live_slot_processes(&farm, "h");
        let one_each: BTreeMap<u64, i32> =
            live.iter().filter(|(_, pids)| pids.len() == 1).map(|(slot, pids)| (*slot, pids[0])).collect();
        (live.len() == 2 && one_each == shown).then_some(shown)
    });
    assert_eq!(settled.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    let pids: Vec<i32> = farm.descendants();
    farm.stop(secs(20.0));
    farm.assert_all_gone(&pids, secs(10.0), "after the hammer");
    let stderr = farm.stderr();
    assert!(!stderr.contains("ERROR"), "no error in a farm that was only restarted:\n{stderr}");
}
