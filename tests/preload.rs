//! --preload: the script runs once in the supervisor and its classes are
//! shared by every worker, without autoloading.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{bin, fixtures_dir, run_with_timeout, TempDir};

/// One cycle of a worker class that only the preload script declares.
fn preloaded_worker_command() -> Command {
    let mut cmd = Command::new(bin());
    cmd.current_dir(fixtures_dir().join("preload")).args([
        "--preload",
        "preload.php",
        "--bootstrap",
        "empty-bootstrap.php",
        "worker",
        "PreloadedWorker",
        "--cycles",
        "1",
    ]);
    cmd
}

#[test]
fn preloaded_worker_classes_need_no_bootstrap() {
    run_with_timeout(preloaded_worker_command(), Duration::from_secs(10))
        .assert_code(0)
        .assert_stdout_contains("preloaded: yes");
}

#[test]
fn a_missing_preload_file_is_a_clear_error() {
    let dir = fixtures_dir().join("preload");
    let mut cmd = Command::new(bin());
    cmd.current_dir(&dir).args(["--preload", "nope.php", "worker", "PreloadedWorker"]);
    let out = run_with_timeout(cmd, Duration::from_secs(10));
    assert_ne!(out.code(), 0);
    out.assert_stderr_contains("--preload");
}

/// The wrapper folder lives in the shared temp folder under a predictable
/// name: one that is not a real folder of our own (here a symlink to one)
/// is refused, never written into.
#[test]
fn a_preload_folder_that_is_a_symlink_is_refused() {
    let dir = TempDir::new("preload_tmpdir");
    let tmp = dir.path();
    let preload_worker = || {
        let mut cmd = preloaded_worker_command();
        cmd.env("TMPDIR", tmp);
        run_with_timeout(cmd, Duration::from_secs(10))
    };
    preload_worker().assert_code(0);
    let made: Vec<_> = std::fs::read_dir(tmp).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(made.len(), 1, "one wrapper folder expected in {}: {made:?}", tmp.display());
    let elsewhere = tmp.join("elsewhere");
    std::fs::rename(&made[0], &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &made[0]).unwrap();

    let out = preload_worker();
    assert_ne!(out.code(), 0);
    out.assert_stderr_contains("is not a folder owned by uid");
}
