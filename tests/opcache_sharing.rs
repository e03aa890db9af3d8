//! Workers forked from one booted parent share one OPcache: a script one
//! worker compiled is a cache hit in another worker that never included it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, fixtures_dir, run_with_timeout, Running};
use nix::sys::signal::Signal;

fn wait_for_file(path: &Path, timeout: Duration, farm: &Running) -> String {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} never appeared; supervisor stderr:\n{}", path.display(), farm.stderr_so_far());
}

#[test]
fn a_script_compiled_by_one_worker_is_a_cache_hit_in_another() {
    let dir = fixtures_dir().join("opcache");
    let out = std::env::temp_dir().join(format!("lrpm-opcache-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = Command::new(bin());
    cmd.current_dir(&dir)
        .env("OPCACHE_OUT", &out)
        .arg("--control-socket")
        .arg(out.join("control.sock"))
        .arg("-i")
        .arg("3600")
        .arg("source.php");
    let mut farm = Running::spawn(cmd);

    let compiler = wait_for_file(&out.join("compiler"), Duration::from_secs(10), &farm);
    let checker = wait_for_file(&out.join("checker"), Duration::from_secs(10), &farm);
    let (compiler_state, compiler_pid) = compiler.split_once(' ').unwrap();
    let (checker_state, checker_pid) = checker.split_once(' ').unwrap();
    assert_eq!(compiler_state, "not-cached", "the payload must be compiled fresh by the first worker");
    assert_eq!(checker_state, "cached", "the second worker must see the first worker's compiled script");
    assert_ne!(compiler_pid, checker_pid);

    farm.signal(Signal::SIGTERM);
    farm.wait_within(Duration::from_secs(10)).assert_code(0);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_bootstrap_may_declare_workers_eagerly() {
    let dir = fixtures_dir().join("opcache");
    let mut cmd = Command::new(bin());
    cmd.current_dir(&dir).args(["worker", "EagerlyDeclaredWorker", "--cycles", "1"]);
    run_with_timeout(cmd, Duration::from_secs(10)).assert_code(0).assert_stdout_contains("eager worker started");
}
