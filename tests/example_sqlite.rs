//! examples/sqlite (what `make run` runs): the jobs table of a SQLite file,
//! edited with examples/sqlite/jobs.php while the farm runs. No service:
//! php8.2-sqlite3 (pdo_sqlite) is all it needs.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::*;

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join("sqlite")
}

/// `php examples/sqlite/jobs.php ARGS` on the farm's database.
fn jobs_php(farm: &Farm, args: &[&str]) -> Output {
    let mut cmd = Command::new("php");
    cmd.arg(example_dir().join("jobs.php")).args(args).env("LRPM_JOBS_DB", farm.dir.join("jobs.sqlite"));
    let out = run_with_timeout(cmd, DEFAULT_TIMEOUT);
    out.assert_code(0);
    out
}

/// Running slots of job `id` (slot numbers), from `status`.
fn running(status: &Value, id: &str) -> usize {
    status[id]["state"]["slots"].as_array().map_or(0, |slots| slots.iter().filter(|s| s["status"] == "running").count())
}

#[test]
fn the_sqlite_farm_seeds_its_jobs_and_follows_jobs_php() {
    let _g = shared();
    let dir = TempDir::new("example_sqlite");
    std::fs::write(dir.join("jobs.json"), "{}").unwrap();
    let db = dir.join("jobs.sqlite");
    let options = FarmOptions {
        interval_args: vec!["-i".into(), "1".into()],
        source: example_dir().join("farm.php"),
        env: vec![("LRPM_JOBS_DB".into(), db.to_string_lossy().into_owned())],
        ..Default::default()
    };
    let farm = Farm::start_in(dir, options);

    // The seeded farm: its workers' output comes prefixed with name and slot.
    // Each spool slot drops a file at start; either slot may consume it.
    let consumed = |out: &str, file: &str| {
        out.lines().any(|l| {
            (l.starts_with("[spool#0] ") || l.starts_with("[spool#1] "))
                && l.ends_with(&format!("consumed {file}: HELLO FROM THE EXAMPLE FARM"))
        })
    };
    farm.wait_for(secs(20.0), "the seeded jobs' output", || {
        let out = farm.stdout();
        (out.contains("[heartbeat#0] beat 1") && consumed(&out, "hello-0.job") && consumed(&out, "hello-1.job"))
            .then_some(())
    });
    let list = jobs_php(&farm, &["list"]);
    for id in ["heartbeat", "spool", "flaky"] {
        assert!(list.stdout.lines().any(|l| l.starts_with(id)), "{}", list.dump());
    }

    // add: followed at the next poll, without a reload.
    jobs_php(&farm, &["add", "echo", "Example\\Heartbeat", "name=echo", "every=1", "replicas=2"]);
    farm.wait_for(secs(15.0), "job echo with 2 running slots", || {
        (running(&farm.try_status()?, "echo") == 2).then_some(())
    });
    farm.wait_for(secs(15.0), "echo#1's output", || farm.stdout().contains("[echo#1] beat 1").then_some(()));
    let config = &farm.status()["echo"]["config"];
    assert_eq!(config["workerConfig"]["every"], 1, "{config}");
    assert_eq!(config["replicas"], 2, "{config}");

    // set: a higher mtime, the new values; lrpmctl reload applies it at once.
    let before = farm.status()["echo"]["config"]["mtime"].as_i64().unwrap();
    jobs_php(&farm, &["set", "echo", "replicas=3", "maxCycles=1000", "every=2"]);
    lrpmctl(&farm.socket, &["reload"]).assert_code(0);
    let status = farm.wait_for(secs(15.0), "job echo with 3 running slots", || {
        let status = farm.try_status()?;
        (running(&status, "echo") == 3).then_some(status)
    });
    let config = &status["echo"]["config"];
    assert!(config["mtime"].as_i64().unwrap() > before, "{config}");
    assert_eq!((config["maxCycles"].as_i64(), config["workerConfig"]["every"].as_i64()), (Some(1000), Some(2)));

    // An invalid row is dropped alone, named by the host.
    jobs_php(&farm, &["add", "broken", "Example\\NoSuchClass"]);
    farm.request("reload").unwrap();
    farm.wait_stderr("job broken", secs(15.0));

    // remove: the job's processes stop and it leaves the farm.
    jobs_php(&farm, &["remove", "echo"]);
    jobs_php(&farm, &["remove", "broken"]);
    farm.request("reload").unwrap();
    farm.wait_for(secs(15.0), "job echo to go", || {
        (!Farm::status_ids(&farm.try_status()?).contains("echo")).then_some(())
    });
    assert_eq!(running(&farm.status(), "heartbeat"), 1, "{}", farm.diagnostics());
    farm.stop(secs(15.0));
}
