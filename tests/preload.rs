//! --preload: the script runs once in the supervisor and its classes are
//! shared by every worker, without autoloading.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{bin, fixtures_dir, run_with_timeout, TempDir};

/// The preload fixtures, copied where opcache.preload_user (nobody, when
/// the tests run as root) can read them: the clone may sit in a folder
/// only root can enter (root's home).
fn readable_fixtures() -> TempDir {
    let dir = TempDir::new("preload_app");
    let app = dir.join("app");
    let status = Command::new("cp").arg("-R").arg(fixtures_dir().join("preload")).arg(&app).status().unwrap();
    assert!(status.success(), "copying the preload fixtures");
    let status = Command::new("chmod").args(["-R", "a+rX"]).arg(dir.path()).status().unwrap();
    assert!(status.success(), "making the preload fixtures readable");
    dir
}

/// One cycle of a worker class that only the preload script declares, in
/// a copy of the fixtures (kept until the returned folder is dropped).
fn preloaded_worker_command() -> (TempDir, Command) {
    let fixtures = readable_fixtures();
    let cmd = preloaded_worker_command_in(&fixtures);
    (fixtures, cmd)
}

fn preloaded_worker_command_in(fixtures: &TempDir) -> Command {
    let mut cmd = Command::new(bin());
    cmd.current_dir(fixtures.join("app")).args([
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
    let (_fixtures, cmd) = preloaded_worker_command();
    run_with_timeout(cmd, Duration::from_secs(10)).assert_code(0).assert_stdout_contains("preloaded: yes");
}

#[test]
fn a_missing_preload_file_is_a_clear_error() {
    let fixtures = readable_fixtures();
    let mut cmd = Command::new(bin());
    cmd.current_dir(fixtures.join("app")).args(["--preload", "nope.php", "worker", "PreloadedWorker"]);
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
    // One copy for both runs: the wrapper folder's name comes from the
    // preload script's path.
    let fixtures = readable_fixtures();
    let preload_worker = || {
        let mut cmd = preloaded_worker_command_in(&fixtures);
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
