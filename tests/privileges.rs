//! `--user` and the job field `user`: every child runs as its user, with
//! that user's groups and environment, cannot signal the supervisor or
//! another user's workers, and holds none of the supervisor's descriptors.
//! These tests switch users, so they must run as root (CI does); they fail,
//! not skip, otherwise.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::*;

const IDENTITY_WORKER: &str = "FarmFixture\\IdentityWorker";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/privileges.rs switches users: run it as root (CI does; `sudo -E cargo test --test privileges`)"
    );
}

/// A farm dir that other users can use: they read the jobs, the app and
/// the binary, write the event log and their reports. The app and the
/// binary are copied in, since the clone they come from may sit where
/// other users cannot go (root's home).
fn shared_dir(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(dir.join("events.log"), b"").unwrap();
    fs::set_permissions(dir.join("events.log"), fs::Permissions::from_mode(0o666)).unwrap();
    let fixtures = poll_source().parent().unwrap().to_path_buf();
    for (from, to) in [(fixtures, dir.join("app")), (bin(), dir.join("lrpm-host"))] {
        let status = std::process::Command::new("cp").arg("-R").arg(&from).arg(&to).status().unwrap();
        assert!(status.success(), "cp -R {} {}", from.display(), to.display());
        let status = std::process::Command::new("chmod").args(["-R", "a+rX"]).arg(&to).status().unwrap();
        assert!(status.success(), "chmod -R a+rX {}", to.display());
    }
    dir
}

/// Options for a farm of `shared_dir`'s copies.
fn shared_options(dir: &TempDir) -> FarmOptions {
    FarmOptions { source: dir.join("app/source.php"), program: Some(dir.join("lrpm-host")), ..Default::default() }
}

fn identity_job(dir: &TempDir, id: &str, peer: Option<&str>, fields: Value) -> Value {
    let mut config = json!({
        "log": dir.join("events.log").to_string_lossy(),
        "tag": id,
        "out": dir.join(&format!("{id}.json")).to_string_lossy(),
    });
    if let Some(peer) = peer {
        config["peer"] = json!(dir.join(&format!("{peer}.json")).to_string_lossy());
    }
    let mut job =
        json!({"name": format!("identity-{id}"), "workerClass": IDENTITY_WORKER, "mtime": 1, "workerConfig": config});
    if let (Value::Object(job), Value::Object(fields)) = (&mut job, fields) {
        job.extend(fields);
    }
    job
}

/// The report of job `id`'s worker once it has probed its peer (when it has one).
fn report(farm: &Farm, dir: &TempDir, id: &str, with_peer: bool) -> Value {
    let path = dir.join(&format!("{id}.json"));
    farm.wait_for(secs(20.0), &format!("job {id}'s identity report"), || {
        let report: Value = serde_json::from_str(&fs::read_to_string(&path).ok()?).ok()?;
        (!with_peer || !report["peer"].is_null()).then_some(report)
    })
}

fn groups_of(user: &str, gid: u32) -> BTreeSet<u64> {
    let name = std::ffi::CString::new(user).unwrap();
    nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
        .unwrap()
        .into_iter()
        .map(|g| u64::from(g.as_raw()))
        .collect()
}

fn reported_groups(report: &Value) -> BTreeSet<u64> {
    report["groups"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap()).collect()
}

/// The real, effective and saved uid of `pid` (/proc/PID/status).
fn uids(pid: i32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().skip(1).take(3).map(|n| n.parse().unwrap()).collect()
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(") ").map(|(_, rest)| rest.split_whitespace().nth(1) == Some(&pid.to_string()))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// What each descriptor of `pid` refers to ("socket:[123]", "pipe:[45]", a path).
fn descriptors(pid: i32) -> Vec<(i32, String)> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            Some((fd, fs::read_link(e.path()).ok()?.to_string_lossy().into_owned()))
        })
        .collect()
}

const EPERM: u64 = 1;

#[test]
fn with_user_every_child_runs_as_that_user_and_a_job_user_overrides_it() {
    require_root();
    let _g = shared();
    let dir = shared_dir("privs_farm");
    let jobs = json!({
        "1": identity_job(&dir, "1", Some("2"), json!({})),
        "2": identity_job(&dir, "2", Some("1"), json!({"user": "daemon"})),
        "3": identity_job(&dir, "3", None, json!({"user": "www-data:nogroup"})),
    });
    fs::write(dir.join("jobs.json"), jobs.to_string()).unwrap();
    let pidfile = dir.join("farm.pid");
    let options = FarmOptions {
        // The host is started holding a root-only file, as a shell or an
        // init script may leave one open: no child may get it.
        wrapper: ["sh", "-c", "exec 7</etc/shadow && exec \"$@\"", "sh"].map(String::from).to_vec(),
        extra_args: vec![
            "--user".into(),
            "nobody".into(),
            "--pidfile".into(),
            pidfile.to_string_lossy().into_owned(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ],
        ..shared_options(&dir)
    };
    let farm = Farm::start_in(dir, options);
    let dir = &farm.dir;
    let pids = farm.wait_running(&["1", "2", "3"], secs(20.0));

    let nobody = report(&farm, dir, "1", true);
    let daemon = report(&farm, dir, "2", true);
    let www_data = report(&farm, dir, "3", false);
    let expect = |report: &Value, user: &str, uid: u64, gid: u64, home: &str| {
        let what = format!("{user}'s worker: {report}\n{}", farm.diagnostics());
        assert_eq!((report["uid"].as_u64(), report["euid"].as_u64()), (Some(uid), Some(uid)), "{what}");
        assert_eq!((report["gid"].as_u64(), report["egid"].as_u64()), (Some(gid), Some(gid)), "{what}");
        assert_eq!(reported_groups(report), groups_of(user, gid as u32), "{what}");
        assert_eq!(report["home"], json!(home), "{what}");
        assert_eq!((&report["user"], &report["logname"]), (&json!(user), &json!(user)), "{what}");
        // kill() needs the sender's uid to match the target's: the root
        // supervisor is out of reach.
        assert_eq!(report["supervisor"]["pid"].as_i64(), Some(i64::from(farm.pid)), "{what}");
        assert_eq!(report["supervisor"]["delivered"], json!(false), "{what}");
        assert_eq!(report["supervisor"]["errno"].as_u64(), Some(EPERM), "{what}");
        // Nor may it ptrace the supervisor: the kernel's ptrace access
        // check, which also guards /proc/PID/environ, refuses it.
        assert_eq!(report["supervisor"]["environReadable"], json!(false), "{what}");
    };
    expect(&nobody, "nobody", 65534, 65534, "/nonexistent");
    expect(&daemon, "daemon", 1, 1, "/usr/sbin");
    expect(&www_data, "www-data", 33, 65534, "/var/www");
    // Another user's worker cannot be signalled either, both ways.
    for (report, peer) in [(&nobody, pids["2"]), (&daemon, pids["1"])] {
        assert_eq!(report["peer"]["pid"].as_i64(), Some(i64::from(peer)), "{report}");
        assert_eq!(report["peer"]["delivered"], json!(false), "{report}");
        assert_eq!(report["peer"]["errno"].as_u64(), Some(EPERM), "{report}");
        assert_eq!(report["peer"]["environReadable"], json!(false), "{report}");
    }

    // The supervisor stays root; every other child (the configuration
    // process, the zygote, job 1's worker) runs as nobody.
    assert_eq!(uids(farm.pid), [0, 0, 0]);
    let children = children_of(farm.pid);
    assert!(children.len() >= 4, "expected the config process and three workers: {children:?}");
    for child in children {
        let expected = if child == pids["2"] {
            1
        } else if child == pids["3"] {
            33
        } else {
            65534
        };
        assert_eq!(uids(child), [expected; 3], "pid {child}\n{}", farm.diagnostics());
    }

    // Still cycling: the report is rewritten.
    let first = fs::read(dir.join("1.json")).unwrap();
    farm.wait_for(secs(10.0), "job 1 to cycle again", || (fs::read(dir.join("1.json")).ok()? != first).then_some(()));

    // No worker, nor the zygote, holds a descriptor of the supervisor's:
    // the control and metrics listeners, the pidfile, other children's
    // pipes, what the host was started with.
    let supervisor: BTreeSet<String> = descriptors(farm.pid)
        .into_iter()
        .filter(|(_, target)| target.starts_with("socket:") || target.starts_with("pipe:") || target.starts_with('/'))
        .map(|(_, target)| target)
        .collect();
    assert!(supervisor.contains("/etc/shadow"), "the host was started holding /etc/shadow: {supervisor:?}");
    let zygote = children_of(farm.pid)
        .into_iter()
        .find(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("zygote"))
        })
        .expect("the zygote");
    let checked = pids.iter().map(|(id, pid)| (format!("job {id}'s worker"), *pid));
    for (who, pid) in checked.chain([("the zygote".to_string(), zygote)]) {
        for (fd, target) in descriptors(pid) {
            // 0-2: its own stdin and the write ends of its own output pipes;
            // OPcache's lock file is shared by design (its locks are the
            // shared memory's): a file in /tmp with PHP 8.2, a memfd with 8.4.
            let opcache_lock = target.starts_with("/tmp/.ZendSem.") || target.starts_with("/memfd:opcache_lock");
            assert!(
                fd <= 2 || opcache_lock || !supervisor.contains(&target),
                "{who} (pid {pid}) holds the supervisor's descriptor {target} as fd {fd}"
            );
        }
    }

    farm.signal(Signal::SIGTERM);
    assert_eq!(farm.wait_exit(secs(20.0)).code(), Some(0), "{}", farm.diagnostics());
}

#[test]
fn an_unknown_job_user_is_that_jobs_error_and_the_farm_runs_on() {
    require_root();
    let _g = shared();
    let dir = shared_dir("privs_unknown");
    let jobs = json!({
        "1": identity_job(&dir, "1", None, json!({"user": "no-such-user-lrpm"})),
        "2": identity_job(&dir, "2", None, json!({"user": "nobody:no-such-group-lrpm"})),
        "3": identity_job(&dir, "3", None, json!({"user": "nobody"})),
    });
    fs::write(dir.join("jobs.json"), jobs.to_string()).unwrap();
    let options = shared_options(&dir);
    let farm = Farm::start_in(dir, options);
    let dir = &farm.dir;
    farm.wait_running(&["3"], secs(20.0));
    farm.wait_for(secs(10.0), "the user errors", || {
        let stderr = farm.stderr();
        (stderr
            .contains("invalid configuration for job 1: field 'user': Invalid data: no such user 'no-such-user-lrpm'")
            && stderr.contains(
                "invalid configuration for job 2: field 'user': Invalid data: no such group 'no-such-group-lrpm'",
            ))
        .then_some(())
    });
    assert_eq!(report(&farm, dir, "3", false)["uid"].as_u64(), Some(65534));
    farm.signal(Signal::SIGTERM);
    assert_eq!(farm.wait_exit(secs(20.0)).code(), Some(0), "{}", farm.diagnostics());
}

fn as_nobody() -> Vec<String> {
    ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"].map(String::from).to_vec()
}

#[test]
fn without_root_user_is_refused_at_startup_and_a_job_user_per_job() {
    require_root();
    let _g = shared();
    let dir = shared_dir("privs_unprivileged");
    fs::write(dir.join("jobs.json"), json!({"1": identity_job(&dir, "1", None, json!({}))}).to_string()).unwrap();
    let options = FarmOptions {
        wrapper: as_nobody(),
        extra_args: vec!["--user".into(), "daemon".into()],
        ..shared_options(&dir)
    };
    let farm = Farm::start_in(dir, options);
    assert_eq!(farm.wait_exit(secs(20.0)).code(), Some(64), "{}", farm.diagnostics());
    assert!(
        farm.stderr().contains("--user daemon: lrpm-host must be started as root to switch users"),
        "{}",
        farm.diagnostics()
    );

    let dir = shared_dir("privs_unprivileged_job");
    let jobs = json!({
        "1": identity_job(&dir, "1", None, json!({"user": "daemon"})),
        "2": identity_job(&dir, "2", None, json!({})),
    });
    fs::write(dir.join("jobs.json"), jobs.to_string()).unwrap();
    let options = FarmOptions { wrapper: as_nobody(), ..shared_options(&dir) };
    let farm = Farm::start_in(dir, options);
    let dir = &farm.dir;
    farm.wait_running(&["2"], secs(20.0));
    farm.wait_for(secs(10.0), "job 1's error", || {
        farm.stderr()
            .contains("invalid configuration for job 1: field 'user': Invalid data: lrpm-host does not run as root")
            .then_some(())
    });
    assert_eq!(report(&farm, dir, "2", false)["uid"].as_u64(), Some(65534));
    farm.signal(Signal::SIGTERM);
    assert_eq!(farm.wait_exit(secs(20.0)).code(), Some(0), "{}", farm.diagnostics());
}
