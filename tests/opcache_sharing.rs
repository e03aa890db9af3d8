//! Workers forked from one booted parent share one OPcache: a script one
//! worker compiled is a cache hit in another worker that never included it.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{bin, fixtures_dir, run_with_timeout, Running, TempDir};

/// The content of `path` once a worker has written it.
fn wait_for_file(path: &Path, timeout: Duration, farm: &mut Running) -> String {
    farm.wait_for(timeout, &format!("{} to be written", path.display()), |_| {
        std::fs::read_to_string(path).ok().filter(|text| !text.is_empty())
    })
}

#[test]
fn a_script_compiled_by_one_worker_is_a_cache_hit_in_another() {
    let dir = fixtures_dir().join("opcache");
    let out = TempDir::new("opcache");
    let mut cmd = Command::new(bin());
    cmd.current_dir(&dir)
        .env("OPCACHE_OUT", out.path())
        .arg("--control-socket")
        .arg(out.join("control.sock"))
        .arg("-i")
        .arg("3600")
        .arg("source.php");
    let mut farm = Running::spawn(cmd);

    let compiler = wait_for_file(&out.join("compiler"), Duration::from_secs(10), &mut farm);
    let checker = wait_for_file(&out.join("checker"), Duration::from_secs(10), &mut farm);
    let (compiler_state, compiler_pid) = compiler.split_once(' ').unwrap();
    let (checker_state, checker_pid) = checker.split_once(' ').unwrap();
    assert_eq!(compiler_state, "not-cached", "the payload must be compiled fresh by the first worker");
    assert_eq!(checker_state, "cached", "the second worker must see the first worker's compiled script");
    assert_ne!(compiler_pid, checker_pid);

    farm.signal(Signal::SIGTERM);
    farm.wait_within(Duration::from_secs(10)).assert_code(0);
}

#[test]
fn a_bootstrap_may_declare_workers_eagerly() {
    let dir = fixtures_dir().join("opcache");
    let mut cmd = Command::new(bin());
    cmd.current_dir(&dir).args(["worker", "EagerlyDeclaredWorker", "--cycles", "1"]);
    run_with_timeout(cmd, Duration::from_secs(10)).assert_code(0).assert_stdout_contains("eager worker started");
}
