//! The zygote (the default; `--no-zygote` turns it off): workers forked
//! from one process that ran the bootstrap once.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::*;

fn bootstrap() -> PathBuf {
    fixtures_dir().join("zygote/bootstrap.php")
}

fn options(extra_env: &[(&str, &str)]) -> FarmOptions {
    let mut options = FarmOptions {
        extra_args: vec!["--zygote".into(), "--bootstrap".into(), bootstrap().to_string_lossy().into_owned()],
        ..Default::default()
    };
    for (name, value) in extra_env {
        options = options.env(name, value);
    }
    options
}

/// A farm of one job `id` running the probe (`replicas` slots), each slot
/// writing what it found to `PROBES` in the farm's folder.
fn probe_farm(name: &str, options: FarmOptions, id: &str, replicas: u32) -> Farm {
    Farm::start(name, options, |jobs| {
        let job = jobs.job_with(
            id,
            1,
            json!({"out": PROBES}),
            json!({"workerClass": "ZygoteFixture\\Probe", "replicas": replicas}),
        );
        json!({ id: job })
    })
}

const PROBES: &str = "probe-%slot%.json";

/// What each slot's probe wrote, once all `n` did.
fn probes(farm: &Farm, out: &str, n: u32) -> BTreeMap<u32, Value> {
    farm.wait_for(secs(15.0), &format!("{n} probes"), || {
        let mut seen = BTreeMap::new();
        for slot in 0..n {
            let text = std::fs::read_to_string(farm.dir.join(&out.replace("%slot%", &slot.to_string()))).ok()?;
            seen.insert(slot, serde_json::from_str(&text).ok()?);
        }
        Some(seen)
    })
}

fn zygote_pid(farm: &Farm) -> i32 {
    farm.wait_for(secs(10.0), "the zygote", || {
        descendants(farm.pid).into_iter().find(|p| cmdline(*p).as_deref() == Some("lrpm-host: zygote"))
    })
}

#[test]
fn workers_share_what_the_bootstrap_built_once_and_stay_the_supervisors_children() {
    let _g = shared();
    let dir = TempDir::new("zygote_boot_log");
    let boot_log = dir.join("boot.log");
    let boot_log_text = boot_log.to_string_lossy().into_owned();
    let farm = probe_farm("zygote", options(&[("ZYGOTE_BOOT_LOG", &boot_log_text)]), "z", 3);
    let seen = probes(&farm, PROBES, 3);
    let zygote = zygote_pid(&farm);
    for probe in seen.values() {
        assert_eq!(probe["kind"], "worker", "{probe}");
        assert_eq!(probe["warmBuiltBy"], zygote, "the object the zygote built: {probe}");
        assert_eq!(probe["ppid"], farm.pid, "a direct child of the supervisor: {probe}");
        assert_eq!(probe["pgid"], probe["pid"], "leads its own process group: {probe}");
    }
    // The bootstrap ran in the configuration process and the zygote only.
    let runs = std::fs::read_to_string(&boot_log).unwrap();
    let kinds: Vec<&str> = runs.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "zygote").count(), 1, "{runs}");
    assert!(!kinds.contains(&"worker"), "no worker ran the bootstrap again: {runs}");
    // Different random draws in each worker, although the zygote had seeded mt_rand.
    let draws: Vec<String> = seen.values().map(|p| format!("{} {} {}", p["mt"], p["lcg"], p["randomInt"])).collect();
    let mut distinct = draws.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{draws:?}");
    let first_mt: Vec<&Value> = seen.values().map(|p| &p["mt"]).collect();
    assert!(first_mt[0] != first_mt[1] && first_mt[1] != first_mt[2], "{first_mt:?}");
    assert!(farm.stderr().contains("(from the zygote)"), "{}", farm.diagnostics());
    // A graceful stop still reaches every worker.
    let pids: Vec<i32> = seen.values().map(|p| p["pid"].as_i64().unwrap() as i32).collect();
    farm.signal(Signal::SIGTERM);
    assert!(farm.wait_exit(secs(10.0)).success());
    for pid in pids {
        assert!(!is_lrpm_process(pid), "worker {pid} left behind");
    }
}

#[test]
fn a_bootstrap_that_leaves_a_socket_open_is_refused_and_workers_are_forked_as_before() {
    let _g = shared();
    let farm = probe_farm("zygote_socket", options(&[("ZYGOTE_LEAK_SOCKET", "1")]), "s", 1);
    let stderr = farm.wait_stderr("zygote refused to serve: the bootstrap left a socket open", secs(10.0));
    assert!(stderr.contains("open connections in start()"), "{stderr}");
    let seen = probes(&farm, PROBES, 1);
    assert_eq!(seen[&0]["warmBuiltBy"], seen[&0]["pid"], "it ran the bootstrap itself: {}", seen[&0]);
}

#[test]
fn a_bootstrap_that_leaves_a_file_locked_is_refused_and_workers_are_forked_as_before() {
    let _g = shared();
    let dir = TempDir::new("zygote_lock");
    let lock = dir.join("singleton.lock");
    let farm = probe_farm("zygote_lock", options(&[("ZYGOTE_LEAK_LOCK", &lock.to_string_lossy())]), "l", 1);
    let stderr = farm.wait_stderr("zygote refused to serve: the bootstrap holds a file lock (flock)", secs(10.0));
    assert!(stderr.contains("singleton.lock"), "names the file: {stderr}");
    let seen = probes(&farm, PROBES, 1);
    assert_eq!(seen[&0]["warmBuiltBy"], seen[&0]["pid"], "it ran the bootstrap itself: {}", seen[&0]);
}

#[test]
fn a_zygote_that_dies_is_started_again_and_workers_come_from_it_again() {
    let _g = shared();
    let farm = probe_farm("zygote_dies", options(&[]), "d", 1);
    let first = probes(&farm, PROBES, 1);
    let old_zygote = zygote_pid(&farm);
    kill(Pid::from_raw(old_zygote), Signal::SIGKILL).unwrap();
    farm.wait_stderr(&format!("zygote: pid {old_zygote} ended (killed by SIGKILL)"), secs(10.0));
    let new_zygote = farm.wait_for(secs(10.0), "a new zygote", || {
        let pid = zygote_pid(&farm);
        (pid != old_zygote && farm.stderr().matches("zygote ready").count() >= 2).then_some(pid)
    });
    // The running worker was not touched; a new one comes from the new zygote.
    let worker = first[&0]["pid"].as_i64().unwrap() as i32;
    assert!(is_lrpm_process(worker));
    std::fs::remove_file(farm.dir.join("probe-0.json")).unwrap();
    kill(Pid::from_raw(worker), Signal::SIGKILL).unwrap();
    let again = probes(&farm, PROBES, 1);
    assert_eq!(again[&0]["warmBuiltBy"], new_zygote, "{}", again[&0]);
}

#[test]
fn a_farm_asked_for_all_at_once_comes_entirely_from_the_zygote() {
    let _g = shared();
    // 300 requests of about 1 KB each, asked for in one turn, are more than
    // the zygote's socket buffers: the supervisor keeps the rest queued
    // until replies make room, and never forks one itself.
    let farm = probe_farm("zygote_burst", options(&[]), "b", 300);
    let seen = probes(&farm, PROBES, 300);
    let zygote = zygote_pid(&farm);
    let direct: Vec<u32> = seen.iter().filter(|(_, p)| p["warmBuiltBy"] != zygote).map(|(slot, _)| *slot).collect();
    assert!(direct.is_empty(), "slots not forked by the zygote: {direct:?}\n{}", farm.diagnostics());
}

#[test]
fn a_stuck_zygote_is_killed_and_the_start_it_owed_is_retried() {
    let _g = shared();
    let farm = probe_farm("zygote_stuck", options(&[]), "s", 1);
    let first = probes(&farm, PROBES, 1);
    let stuck = zygote_pid(&farm);
    kill(Pid::from_raw(stuck), Signal::SIGSTOP).unwrap();
    std::fs::remove_file(farm.dir.join("probe-0.json")).unwrap();
    kill(Pid::from_raw(first[&0]["pid"].as_i64().unwrap() as i32), Signal::SIGKILL).unwrap();
    farm.wait_stderr(&format!("zygote: pid {stuck} left a start unanswered for 5s; killing it"), secs(15.0));
    let again = probes(&farm, PROBES, 1);
    assert_ne!(again[&0]["pid"], first[&0]["pid"]);
    assert!(!is_lrpm_process(stuck), "the stuck zygote is gone");
}

#[test]
fn code_the_zygote_loaded_that_changes_on_disk_brings_a_new_zygote() {
    let _g = shared();
    let dir = TempDir::new("zygote_deploy");
    let code = dir.join("code.php");
    write_atomically(&code, b"<?php return 'v1';");
    let farm = probe_farm("zygote_deploy", options(&[("ZYGOTE_CODE_FILE", &code.to_string_lossy())]), "d", 1);
    let first = probes(&farm, PROBES, 1);
    assert_eq!(first[&0]["code"], "v1");
    let old_zygote = zygote_pid(&farm);
    write_atomically(&code, b"<?php return 'v2';");
    // The zygote looks at its files at most once a second, when asked for
    // a worker: restart the job until a worker runs the new code.
    let again = farm.wait_for(secs(20.0), "a worker with the new code", || {
        std::fs::remove_file(farm.dir.join("probe-0.json")).ok();
        farm.request("restart d").ok()?;
        let seen = probes(&farm, PROBES, 1);
        (seen[&0]["code"] == "v2").then_some(seen)
    });
    let new_zygote = zygote_pid(&farm);
    assert_ne!(new_zygote, old_zygote);
    assert_eq!(again[&0]["warmBuiltBy"], new_zygote, "forked from the new zygote: {}", again[&0]);
    let stderr = farm.stderr();
    assert!(stderr.contains(&format!("{}, which it loaded, changed", code.display())), "{stderr}");
    assert!(!is_lrpm_process(old_zygote), "the old zygote ended");
}

#[test]
fn a_deploy_that_switches_the_bootstraps_symlink_brings_a_new_zygote() {
    let _g = shared();
    let dir = TempDir::new("zygote_symlink");
    for release in ["r1", "r2"] {
        std::fs::create_dir_all(dir.join(release)).unwrap();
        let text = format!("<?php\nrequire {:?};\n$GLOBALS['code'] = '{release}';\n", bootstrap().to_string_lossy());
        std::fs::write(dir.join(release).join("bootstrap.php"), text).unwrap();
    }
    std::os::unix::fs::symlink(dir.join("r1"), dir.join("current")).unwrap();
    let mut options = options(&[]);
    options.extra_args = vec!["--bootstrap".into(), dir.join("current/bootstrap.php").to_string_lossy().into_owned()];
    let farm = probe_farm("zygote_symlink", options, "s", 1);
    assert_eq!(probes(&farm, PROBES, 1)[&0]["code"], "r1");
    // A deploy: `current` now points at the new release; no old file changed.
    std::os::unix::fs::symlink(dir.join("r2"), dir.join("next")).unwrap();
    std::fs::rename(dir.join("next"), dir.join("current")).unwrap();
    farm.wait_for(secs(20.0), "a worker of the new release", || {
        std::fs::remove_file(farm.dir.join("probe-0.json")).ok();
        farm.request("restart s").ok()?;
        (probes(&farm, PROBES, 1)[&0]["code"] == "r2").then_some(())
    });
    assert!(farm.stderr().contains("now resolves to"), "{}", farm.stderr());
}

#[test]
fn a_worker_forked_long_after_the_zygote_started_has_its_own_request_time() {
    let _g = shared();
    let farm = probe_farm("zygote_request_time", options(&[]), "t", 1);
    let first = probes(&farm, PROBES, 1);
    let zygote = zygote_pid(&farm);
    farm.wait_for(secs(15.0), "a zygote 3 s old", || (age(zygote)? >= secs(3.0)).then_some(()));
    std::fs::remove_file(farm.dir.join("probe-0.json")).unwrap();
    kill(Pid::from_raw(first[&0]["pid"].as_i64().unwrap() as i32), Signal::SIGKILL).unwrap();
    let again = probes(&farm, PROBES, 1);
    assert_eq!(again[&0]["warmBuiltBy"], zygote, "{}", again[&0]);
    let age = again[&0]["startedAt"].as_f64().unwrap() - again[&0]["requestTime"].as_f64().unwrap();
    assert!((0.0..1.5).contains(&age), "REQUEST_TIME_FLOAT is {age:.3} s before start(): {}", again[&0]);
}

#[test]
fn the_free_heap_slots_the_zygote_keeps_stay_a_fraction_of_its_heap() {
    let _g = shared();
    let farm = probe_farm("zygote_slots", options(&[]), "k", 1);
    probes(&farm, PROBES, 1);
    let stderr = farm.wait_stderr("zygote ready", secs(10.0));
    let kib: u64 = stderr
        .split("zygote ready: workers are forked from it (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reserved KiB in the log: {stderr}"));
    // The fixture's bootstrap leaves a small heap (a 1 MiB string aside):
    // what is kept counts in every worker's memory_get_usage(), so a size
    // class that never matches (PHP 8.4's 8-byte class) must not be taken
    // up to its limit.
    assert!(kib < 1024, "the zygote kept {kib} KiB of free slots\n{stderr}");
}
