//! `--pidfile`: one host per pidfile, a stale one taken over, removed at a
//! clean exit, never held by a worker.

mod support;

use std::fs;

use nix::sys::signal::Signal;
use serde_json::json;
use support::*;

fn holds_file(pid: i32, path: &std::path::Path) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.flatten().any(|e| fs::read_link(e.path()).is_ok_and(|target| target == path)))
        .unwrap_or(false)
}

#[test]
fn a_second_host_on_the_same_pidfile_refuses_and_a_stale_one_is_taken_over() {
    let _g = shared();
    let dir = TempDir::new("pidfile");
    let pidfile = dir.join("farm.pid");
    let options = |socket: &str| {
        let mut options = FarmOptions::default().socket(dir.join(socket));
        options.extra_args = vec!["--pidfile".into(), pidfile.to_string_lossy().into_owned()];
        options
    };
    let first = Farm::start("pidfile_first", options("first.sock"), |jobs| json!({"1": jobs.job("1", 1)}));
    let worker = first.wait_running(&["1"], secs(10.0))["1"];
    assert_eq!(fs::read_to_string(&pidfile).unwrap().trim(), first.pid.to_string());
    assert!(!holds_file(worker, &pidfile), "the worker holds the pidfile's lock");

    let second = Farm::start("pidfile_second", options("second.sock"), |jobs| json!({"1": jobs.job("1", 1)}));
    let status = second.wait_exit(secs(10.0));
    assert_ne!(status.code(), Some(0), "{}", second.diagnostics());
    let expected = format!("another lrpm-host (pid {}) holds the pidfile {}", first.pid, pidfile.display());
    assert!(second.stderr().contains(&expected), "{}", second.diagnostics());
    assert_eq!(fs::read_to_string(&pidfile).unwrap().trim(), first.pid.to_string(), "the refused host wrote the file");

    // Killed: the file stays, stale, and the next host takes it over.
    first.signal(Signal::SIGKILL);
    first.wait_exit(secs(10.0));
    assert!(pidfile.exists());
    let third = Farm::start("pidfile_third", options("third.sock"), |jobs| json!({"1": jobs.job("1", 1)}));
    third.wait_running(&["1"], secs(10.0));
    assert_eq!(fs::read_to_string(&pidfile).unwrap().trim(), third.pid.to_string());
    // A clean exit removes it.
    third.signal(Signal::SIGTERM);
    assert_eq!(third.wait_exit(secs(10.0)).code(), Some(0), "{}", third.diagnostics());
    assert!(!pidfile.exists());
}
