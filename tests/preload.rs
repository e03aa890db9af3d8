//! --preload: the script runs once in the supervisor and its classes are
//! shared by every worker, without autoloading.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bin, fixtures_dir, run_with_timeout};

#[test]
fn preloaded_worker_classes_need_no_bootstrap() {
    let dir = fixtures_dir().join("preload");
    let mut cmd = Command::new(bin());
    cmd.current_dir(&dir).args([
        "--preload",
        "preload.php",
        "--bootstrap",
        "empty-bootstrap.php",
        "worker",
        "PreloadedWorker",
        "--cycles",
        "1",
    ]);
    run_with_timeout(cmd, Duration::from_secs(10)).assert_code(0).assert_stdout_contains("preloaded: yes");
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
