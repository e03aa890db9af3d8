//! `lrpmctl upgrade`: the host replaces itself with the binary on disk
//! (here: the same binary with a changed preload script) without stopping
//! the farm; a trial run that fails leaves the farm as it was.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use support::*;

const SOURCE: &str = r#"<?php
// Workers report, from start(), the preloaded Version::V and their pid.
final class Reporter implements Lrpm\Worker
{
    public function start(array $job): void
    {
        file_put_contents(__DIR__ . '/starts.log', Version::V . ' ' . getmypid() . "\n", FILE_APPEND);
    }
    public function cycle(): void
    {
        usleep(20000);
    }
}
return new class implements Lrpm\ConfigurationSource {
    public function loadConfiguration(): array
    {
        return ['r' => ['name' => 'reporter', 'workerClass' => 'Reporter', 'mtime' => 1, 'workerConfig' => [],
            'replicas' => 3]];
    }
};
"#;

fn preload(version: &str) -> String {
    format!("<?php\nfinal class Version {{ const V = '{version}'; }}\n")
}

/// (version, pid) of every start so far.
fn starts(dir: &TempDir) -> Vec<(String, i32)> {
    fs::read_to_string(dir.join("starts.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (v, p) = l.split_once(' ')?;
            Some((v.to_string(), p.parse().ok()?))
        })
        .collect()
}

fn farm_in(name: &str) -> Farm {
    let dir = TempDir::new(name);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("farm.php"), SOURCE).unwrap();
    fs::write(dir.join("preload.php"), preload("one")).unwrap();
    fs::write(dir.join("jobs.json"), "{}").unwrap();
    let options = FarmOptions {
        source: dir.join("farm.php"),
        extra_args: vec!["--preload".into(), dir.join("preload.php").to_string_lossy().into_owned()],
        ..Default::default()
    };
    Farm::start_in(dir, options)
}

#[test]
fn upgrade_replaces_every_worker_with_the_new_code_while_the_host_keeps_its_pid_and_socket() {
    let _g = shared();
    let farm = farm_in("upgrade");
    let first = farm.wait_for(secs(15.0), "three workers on version one", || {
        let s = starts(&farm.dir);
        (s.len() == 3 && s.iter().all(|(v, _)| v == "one")).then_some(s)
    });
    fs::write(farm.dir.join("preload.php"), preload("two")).unwrap();
    assert!(farm.request("upgrade").unwrap().starts_with("Upgrade started"));
    // The control socket answers throughout, and never fewer than two run.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut fewest = 3;
    let done = loop {
        let asked = Instant::now();
        let status = farm.request("status").expect("the control socket answers during the upgrade");
        slowest = slowest.max(asked.elapsed());
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let running = status["r"]["state"]["slots"]
            .as_array()
            .map_or(0, |slots| slots.iter().filter(|s| s["status"] == "running").count());
        fewest = fewest.min(running);
        let s = starts(&farm.dir);
        if s.iter().filter(|(v, _)| v == "two").count() == 3 && farm.stderr().contains("rolling recycle complete") {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "upgrade not done\n{}", farm.diagnostics());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(fewest >= 2, "a rolling replacement keeps n-1 running: {fewest}\n{}", farm.diagnostics());
    assert!(slowest < Duration::from_millis(500), "status took {slowest:?} during the upgrade");
    let stderr = farm.stderr();
    assert!(stderr.contains("upgrade: the trial run passed"), "{stderr}");
    assert!(stderr.contains("upgrade: this is the new image; 3 running process(es) adopted"), "{stderr}");
    // Same supervisor, every old worker stopped gracefully, none doubled.
    assert!(farm.try_exit().is_none());
    for (_, pid) in &first {
        assert!(!is_lrpm_process(*pid), "old worker {pid} still runs");
    }
    assert_eq!(done.len(), 6, "three starts per version, no more: {done:?}");
    for pid in descendants(farm.pid) {
        assert_eq!(stat(pid).map(|s| s.ppid), Some(farm.pid), "every child is the same supervisor's");
    }
    farm.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(farm.wait_exit(secs(10.0)).success());
}

#[test]
fn an_upgrade_whose_trial_run_fails_leaves_the_farm_as_it_was() {
    let _g = shared();
    let farm = farm_in("upgrade_fails");
    let first = farm.wait_for(secs(15.0), "three workers", || {
        let s = starts(&farm.dir);
        (s.len() == 3).then_some(s)
    });
    fs::write(farm.dir.join("preload.php"), "<?php\nthis is not PHP\n").unwrap();
    assert!(farm.request("upgrade").unwrap().starts_with("Upgrade started"));
    farm.wait_stderr("failed its trial run", secs(15.0));
    assert!(farm.stderr().contains("the farm runs on unchanged"));
    assert_eq!(starts(&farm.dir), first, "no worker was replaced");
    for (_, pid) in &first {
        assert!(is_lrpm_process(*pid));
    }
    assert!(farm.request("status").is_ok());
}
