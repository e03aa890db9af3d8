//! `lrpmctl upgrade`: the host replaces itself with the binary on disk
//! (here: the same binary with a changed preload script) without stopping
//! the farm; a trial run that fails, hangs, or is not lrpm-host's (a
//! program that merely exits 0) leaves the farm as it was.

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
    farm_with(name, false, &[])
}

/// With `own_copy`, the farm runs a copy of lrpm-host in its dir
/// (`lrpm-host`), which the test may replace on disk.
fn farm_with(name: &str, own_copy: bool, extra: &[&str]) -> Farm {
    let dir = TempDir::new(name);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("farm.php"), SOURCE).unwrap();
    fs::write(dir.join("preload.php"), preload("one")).unwrap();
    fs::write(dir.join("jobs.json"), "{}").unwrap();
    let program = own_copy.then(|| {
        let copy = dir.join("lrpm-host");
        copy_program(&bin(), &copy);
        copy
    });
    let mut extra_args = vec!["--preload".into(), dir.join("preload.php").to_string_lossy().into_owned()];
    extra_args.extend(extra.iter().map(|a| a.to_string()));
    let options = FarmOptions { source: dir.join("farm.php"), extra_args, program, ..Default::default() };
    Farm::start_in(dir, options)
}

/// Copies a program with cp(1): the file is open for writing only in cp,
/// never in this test process, whose other threads fork (a child forked
/// while the file was open here would make its exec "text file busy").
fn copy_program(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp {} {}", from.display(), to.display());
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Replaces the farm's copy of lrpm-host on disk (a rename: the running
/// image's file cannot be written).
fn replace_program(farm: &Farm, content: &[u8]) {
    let staged = farm.dir.join("lrpm-host.staged");
    fs::write(&staged, content).unwrap();
    let next = farm.dir.join("lrpm-host.next");
    copy_program(&staged, &next);
    fs::rename(&next, farm.dir.join("lrpm-host")).unwrap();
}

/// The answer to `upgrade` (it comes once the trial run ended).
fn upgrade(farm: &Farm) -> String {
    farm.request_waiting("upgrade", secs(90.0)).expect("upgrade answered")
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
    let answer = upgrade(&farm);
    assert!(answer.starts_with("Upgrade: ") && answer.contains("passed its trial (lrpm-host "), "{answer}");
    assert!(answer.contains(", 1 job(s) loaded); replacing this host"), "{answer}");
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
    assert!(slowest < Duration::from_secs(2), "status took {slowest:?} during the upgrade");
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
    let answer = upgrade(&farm);
    assert!(
        answer.starts_with("error: upgrade refused: ") && answer.contains("its trial run failed (exit code "),
        "{answer}"
    );
    assert!(answer.ends_with("the farm runs on unchanged"), "{answer}");
    assert!(farm.stderr().contains("cannot take the farm over: its trial run failed"), "{}", farm.stderr());
    assert_eq!(starts(&farm.dir), first, "no worker was replaced");
    for (_, pid) in &first {
        assert!(is_lrpm_process(*pid));
    }
    assert!(farm.request("status").is_ok());
}

/// The farm's workers as they were: same pids, every one alive, nothing
/// started since, and the control socket answers.
fn assert_unchanged(farm: &Farm, first: &[(String, i32)], context: &str) {
    assert_eq!(starts(&farm.dir), first, "no worker was replaced ({context})\n{}", farm.diagnostics());
    for (_, pid) in first {
        assert!(is_lrpm_process(*pid), "worker {pid} runs on ({context})");
    }
    assert!(farm.try_exit().is_none(), "the host runs on ({context})");
    assert!(farm.request("status").is_ok(), "status answers ({context})");
}

#[test]
fn an_upgrade_to_a_program_that_is_not_lrpm_host_is_refused_however_it_exits() {
    let _g = shared();
    let farm = farm_with("upgrade_not_lrpm", true, &[]);
    let first = farm.wait_for(secs(15.0), "three workers", || {
        let s = starts(&farm.dir);
        (s.len() == 3).then_some(s)
    });
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("/bin/true", fs::read("/bin/true").unwrap(), "exited 0 without the trial's report: it is not lrpm-host"),
        ("a script that exits 0", b"#!/bin/sh\nexit 0\n".to_vec(), "exited 0 without the trial's report"),
        (
            "a script that prints a fake report elsewhere",
            b"#!/bin/sh\necho '{\"lrpm_host\":\"9\"}'\nexit 0\n".to_vec(),
            "exited 0 without the trial's report",
        ),
        (
            "a file that cannot be executed",
            b"\x7fELF garbage".to_vec(),
            "its trial run failed (exit code 127 (not found, or its exec failed))",
        ),
    ];
    for (what, content, why) in cases {
        replace_program(&farm, &content);
        let answer = upgrade(&farm);
        assert!(answer.starts_with("error: upgrade refused: ") && answer.contains(why), "{what}: {answer}");
        assert_unchanged(&farm, &first, what);
    }
    // A report in another handoff format is lrpm-host's, but not one that
    // can take this farm over.
    let script = r#"#!/bin/sh
echo '{"lrpm_host":"99.0.0","handoff_format":999,"php":"9.9","jobs":1}' >&3
exit 0
"#;
    replace_program(&farm, script.as_bytes());
    let answer = upgrade(&farm);
    assert!(answer.contains("reads handoff format 999, this host writes format 2"), "{answer}");
    assert_unchanged(&farm, &first, "another handoff format");
    // And the real one still passes after all that.
    replace_program(&farm, &fs::read(bin()).unwrap());
    let answer = upgrade(&farm);
    assert!(answer.starts_with("Upgrade: "), "{answer}\n{}", farm.diagnostics());
    farm.wait_stderr("rolling recycle complete", secs(30.0));
    assert!(farm.try_exit().is_none());
}

#[test]
fn a_trial_run_that_hangs_is_killed_at_its_deadline_while_the_farm_is_served() {
    let _g = shared();
    let farm = farm_with("upgrade_hangs", true, &["--upgrade-trial-timeout", "3"]);
    let first = farm.wait_for(secs(15.0), "three workers", || {
        let s = starts(&farm.dir);
        (s.len() == 3).then_some(s)
    });
    // Hangs in its "boot", with a child of its own.
    replace_program(&farm, b"#!/bin/sh\nsleep 600 &\necho $! > \"$(dirname \"$0\")/trial-child.pid\"\nwait\n");
    let answer = std::thread::scope(|scope| {
        let pending = scope.spawn(|| upgrade(&farm));
        // While it runs: status is answered, and a second upgrade is refused.
        let mut answered = 0;
        while !pending.is_finished() {
            let status = farm.request("status").expect("status answers while the trial runs");
            assert!(status.starts_with('{'), "{status}");
            answered += 1;
            if answered == 3 {
                let second = farm.request("upgrade").unwrap();
                assert!(second.starts_with("error: an upgrade is already under way"), "{second}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(answered >= 3, "status was asked {answered} times during the trial");
        pending.join().unwrap()
    });
    assert!(
        answer.contains("its trial run did not finish within 3s (--upgrade-trial-timeout) and was killed"),
        "{answer}\n{}",
        farm.diagnostics()
    );
    let child: i32 = fs::read_to_string(farm.dir.join("trial-child.pid")).unwrap().trim().parse().unwrap();
    assert!(wait_gone(child, secs(10.0)).is_some(), "what the trial started was killed with it");
    assert_unchanged(&farm, &first, "after the hanging trial");
    // The next upgrade is not refused as "under way".
    replace_program(&farm, b"#!/bin/sh\nexit 0\n");
    assert!(upgrade(&farm).contains("without the trial's report"));
}

/// The file /proc/PID/exe names (" (deleted)" once replaced on disk).
fn exe_of(pid: i32) -> String {
    fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

#[test]
fn a_new_image_that_fails_while_taking_the_farm_over_rolls_back_to_the_previous_one() {
    let _g = shared();
    let farm = {
        let dir = TempDir::new("upgrade_rollback");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("farm.php"), SOURCE).unwrap();
        fs::write(dir.join("preload.php"), preload("one")).unwrap();
        fs::write(dir.join("jobs.json"), "{}").unwrap();
        let copy = dir.join("lrpm-host");
        copy_program(&bin(), &copy);
        let options = FarmOptions {
            source: dir.join("farm.php"),
            extra_args: vec!["--preload".into(), dir.join("preload.php").to_string_lossy().into_owned()],
            program: Some(copy),
            // The new image (the same code, started by the upgrade) panics
            // while adopting; the image it rolls back to does not.
            env: vec![("LRPM_TEST_FAIL_WHILE_ADOPTING".into(), "1".into())],
            ..Default::default()
        };
        Farm::start_in(dir, options)
    };
    let first = farm.wait_for(secs(15.0), "three workers", || {
        let s = starts(&farm.dir);
        (s.len() == 3).then_some(s)
    });
    // A new release on disk (another file: the running one is now "deleted").
    replace_program(&farm, &fs::read(bin()).unwrap());
    assert!(exe_of(farm.pid).ends_with("lrpm-host (deleted)"), "the running image's file is replaced");
    let answer = upgrade(&farm);
    assert!(answer.starts_with("Upgrade: "), "{answer}\n{}", farm.diagnostics());
    let stderr = farm.wait_stderr("rolled back to the previous image: 3 running process(es) adopted", secs(30.0));
    assert!(stderr.contains("failing while adopting job r"), "{stderr}");
    // Same supervisor, back on the previous image's file (gone from disk).
    assert!(farm.try_exit().is_none(), "{}", farm.diagnostics());
    assert!(exe_of(farm.pid).ends_with("lrpm-host (deleted)"), "{}", exe_of(farm.pid));
    // Nothing lost: the farm is recycled onto it as after any upgrade, and
    // every worker is still the supervisor's child.
    farm.wait_stderr("rolling recycle complete", secs(30.0));
    let status = farm.status();
    let running = status["r"]["state"]["slots"].as_array().unwrap().iter().filter(|s| s["status"] == "running").count();
    assert_eq!(running, 3, "{status}");
    for (_, pid) in &first {
        assert!(!is_lrpm_process(*pid), "old worker {pid} was recycled, not left behind");
    }
    for pid in descendants(farm.pid) {
        assert_eq!(stat(pid).map(|s| s.ppid), Some(farm.pid));
    }
    farm.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(farm.wait_exit(secs(10.0)).success());
}
