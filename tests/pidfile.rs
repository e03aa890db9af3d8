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

fn pidfile_options(dir: &TempDir, pidfile: &std::path::Path) -> FarmOptions {
    let mut options = FarmOptions::default().socket(dir.join("control.sock"));
    options.extra_args = vec!["--pidfile".into(), pidfile.to_string_lossy().into_owned()];
    options
}

#[test]
fn a_symbolic_link_at_the_pidfile_path_is_refused_and_its_target_left_alone() {
    let _g = shared();
    let dir = TempDir::new("pidfile_symlink");
    let victim = dir.join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    let pidfile = dir.join("farm.pid");
    std::os::unix::fs::symlink(&victim, &pidfile).unwrap();

    let farm =
        Farm::start("pidfile_symlink_host", pidfile_options(&dir, &pidfile), |jobs| json!({"1": jobs.job("1", 1)}));
    let status = farm.wait_exit(secs(10.0));
    assert_eq!(status.code(), Some(70), "{}", farm.diagnostics());
    let expected = format!("the pidfile {} is a symbolic link", pidfile.display());
    assert!(farm.stderr().contains(&expected), "{}", farm.diagnostics());
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n", "the link's target was written");
    assert!(fs::symlink_metadata(&pidfile).unwrap().file_type().is_symlink(), "the link was replaced or removed");
}

#[test]
fn a_dangling_symbolic_link_at_the_pidfile_path_is_refused_and_its_target_not_created() {
    let _g = shared();
    let dir = TempDir::new("pidfile_dangling");
    let target = dir.join("created-by-root");
    let pidfile = dir.join("farm.pid");
    std::os::unix::fs::symlink(&target, &pidfile).unwrap();

    let farm =
        Farm::start("pidfile_dangling_host", pidfile_options(&dir, &pidfile), |jobs| json!({"1": jobs.job("1", 1)}));
    let status = farm.wait_exit(secs(10.0));
    assert_eq!(status.code(), Some(70), "{}", farm.diagnostics());
    let expected = format!("the pidfile {} is a symbolic link", pidfile.display());
    assert!(farm.stderr().contains(&expected), "{}", farm.diagnostics());
    assert!(fs::symlink_metadata(&target).is_err(), "the dangling link's target was created");
}

#[test]
fn a_pidfile_swapped_while_the_host_runs_is_not_removed_at_exit() {
    let _g = shared();
    let dir = TempDir::new("pidfile_swapped");
    let pidfile = dir.join("farm.pid");
    let farm =
        Farm::start("pidfile_swapped_host", pidfile_options(&dir, &pidfile), |jobs| json!({"1": jobs.job("1", 1)}));
    farm.wait_running(&["1"], secs(10.0));
    assert_eq!(fs::read_to_string(&pidfile).unwrap().trim(), farm.pid.to_string());
    // Someone else's file takes the name: it is not the host's to remove.
    let other = dir.join("other");
    fs::write(&other, b"not the host's\n").unwrap();
    fs::rename(&other, &pidfile).unwrap();
    farm.signal(Signal::SIGTERM);
    assert_eq!(farm.wait_exit(secs(10.0)).code(), Some(0), "{}", farm.diagnostics());
    assert_eq!(fs::read(&pidfile).unwrap(), b"not the host's\n", "the host removed a file that was not its pidfile");
}

#[test]
fn a_hard_linked_pidfile_is_refused() {
    let _g = shared();
    let dir = TempDir::new("pidfile_hardlink");
    let victim = dir.join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    let pidfile = dir.join("farm.pid");
    fs::hard_link(&victim, &pidfile).unwrap();

    let farm =
        Farm::start("pidfile_hardlink_host", pidfile_options(&dir, &pidfile), |jobs| json!({"1": jobs.job("1", 1)}));
    assert_eq!(farm.wait_exit(secs(10.0)).code(), Some(70), "{}", farm.diagnostics());
    let expected = format!("the pidfile {} has 2 hard links", pidfile.display());
    assert!(farm.stderr().contains(&expected), "{}", farm.diagnostics());
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n", "the other name's content was written");
}
