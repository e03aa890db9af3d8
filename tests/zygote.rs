//! `--zygote`: workers forked from one process that ran the bootstrap once.

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

fn probe_job(jobs: &Jobs, id: &str, out: &std::path::Path, replicas: u32) -> Value {
    jobs.job_with(
        id,
        1,
        json!({"out": out.to_string_lossy()}),
        json!({"workerClass": "ZygoteFixture\\Probe", "replicas": replicas}),
    )
}

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
    let farm = Farm::start(
        "zygote",
        options(&[("ZYGOTE_BOOT_LOG", &boot_log_text)]),
        |jobs| json!({"z": probe_job(jobs, "z", std::path::Path::new("probe-%slot%.json"), 3)}),
    );
    let seen = probes(&farm, "probe-%slot%.json", 3);
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
    let farm = Farm::start(
        "zygote_socket",
        options(&[("ZYGOTE_LEAK_SOCKET", "1")]),
        |jobs| json!({"s": probe_job(jobs, "s", std::path::Path::new("probe-%slot%.json"), 1)}),
    );
    let stderr = farm.wait_stderr("zygote refused to serve: the bootstrap left a socket open", secs(10.0));
    assert!(stderr.contains("open connections in start()"), "{stderr}");
    let seen = probes(&farm, "probe-%slot%.json", 1);
    assert_eq!(seen[&0]["warmBuiltBy"], seen[&0]["pid"], "it ran the bootstrap itself: {}", seen[&0]);
}

#[test]
fn a_zygote_that_dies_is_started_again_and_workers_come_from_it_again() {
    let _g = shared();
    let farm = Farm::start(
        "zygote_dies",
        options(&[]),
        |jobs| json!({"d": probe_job(jobs, "d", std::path::Path::new("probe-%slot%.json"), 1)}),
    );
    let first = probes(&farm, "probe-%slot%.json", 1);
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
    let again = probes(&farm, "probe-%slot%.json", 1);
    assert_eq!(again[&0]["warmBuiltBy"], new_zygote, "{}", again[&0]);
}
