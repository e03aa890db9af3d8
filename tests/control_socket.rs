//! Integration tests of the control socket: lrpmctl against a real farm,
//! and hostile or odd clients speaking the raw protocol (8-byte big-endian
//! length + payload).

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// A farm with two plain jobs, answering on its control socket.
fn two_job_farm(name: &str, options: FarmOptions) -> (Farm, std::collections::BTreeMap<String, i32>) {
    let farm = Farm::start(name, options, |j| json!({"1": j.job("1", 1), "2": j.job("2", 1)}));
    let pids = farm.wait_running(&["1", "2"], secs(10.0));
    (farm, pids)
}

/// Pseudo-random bytes (xorshift64*), reproducible.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn assert_still_answers(farm: &Farm, pids: &std::collections::BTreeMap<String, i32>) {
    assert!(farm.try_exit().is_none(), "the supervisor died\n{}", farm.diagnostics());
    let status = farm.status();
    for (id, pid) in pids {
        assert_eq!(
            Farm::status_pid(&status, id),
            Some(*pid),
            "job {id} still runs with its pid\n{}",
            farm.diagnostics()
        );
    }
}

#[test]
fn lrpmctl_status_shows_a_table_of_jobs() {
    let _g = shared();
    let (farm, pids) = two_job_farm("ctl_table", FarmOptions::default());
    let out = lrpmctl(&farm.socket, &["--color=never", "status"]);
    out.assert_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let header: Vec<&str> = lines.first().map(|l| l.split_whitespace().collect()).unwrap_or_default();
    assert_eq!(header.get(..3), Some(&["ID", "NAME", "STATE"][..]), "{}", out.dump());
    assert!(!out.stdout.contains('\u{1b}'), "--color=never: no escape sequences\n{}", out.dump());
    for (id, pid) in &pids {
        let row = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no row for job {id}\n{}", out.dump()));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], format!("job-{id}"), "{row}");
        assert_eq!(cells[2], "running", "{row}");
        assert_eq!(cells[3], pid.to_string(), "{row}");
    }
}

#[test]
fn lrpmctl_json_status_has_php_lrpm_keys() {
    let _g = shared();
    let (farm, pids) = two_job_farm("ctl_json", FarmOptions::default());
    let out = lrpmctl(&farm.socket, &["--json", "status"]);
    out.assert_code(0);
    let doc: Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", out.dump()));
    let now = unix_now() as i64;
    for (id, pid) in &pids {
        let entry = &doc[id.as_str()];
        let state = entry["state"].as_object().unwrap_or_else(|| panic!("no state for job {id}: {doc}"));
        for key in ["pid", "startedAt", "restartAt", "backoffInterval", "lastExitStatus"] {
            assert!(state.contains_key(key), "job {id}: state lacks {key}: {doc}");
        }
        assert_eq!(state["pid"], json!(pid));
        let started = state["startedAt"].as_i64().unwrap_or_else(|| panic!("startedAt: {doc}"));
        assert!((now - 30..=now + 1).contains(&started), "startedAt {started} vs now {now}");
        assert!(state["restartAt"].is_null(), "{doc}");
        assert_eq!(state["backoffInterval"], json!(1));
        assert!(state["lastExitStatus"].is_null(), "{doc}");
        assert_eq!(state["status"], json!("running"));
        let config = &entry["config"];
        assert_eq!(config["name"], json!(format!("job-{id}")));
        assert_eq!(config["workerClass"], json!(WORKER_CLASS));
        assert_eq!(config["mtime"], json!(1));
        assert_eq!(config["shortRunTimeSeconds"], json!(5), "defaults are filled in: {doc}");
        assert_eq!(config["shutdownTimeoutSeconds"], json!(10), "defaults are filled in: {doc}");
    }
    // jsonstatus is the php-lrpm name of the same request.
    let raw: Value = serde_json::from_str(&farm.request("jsonstatus").unwrap()).unwrap();
    assert_eq!(raw.as_object().map(|o| o.len()), Some(2), "{raw}");
}

#[test]
fn lrpmctl_restart_gives_a_new_pid() {
    let _g = shared();
    let (farm, pids) = two_job_farm("ctl_restart", FarmOptions::default());
    let out = lrpmctl(&farm.socket, &["restart", "1"]);
    out.assert_code(0);
    assert!(out.stdout.to_lowercase().contains("restart"), "{}", out.dump());
    let new = farm.wait_for(secs(5.0), "job 1 to run with a new pid", || {
        let pid = Farm::status_pid(&farm.try_status()?, "1")?;
        (pid != pids["1"] && farm.events_of("1", "start").iter().any(|e| e.pid == pid)).then_some(pid)
    });
    farm.assert_all_gone(&[pids["1"]], secs(2.0), "the restarted worker's old process");
    let status = farm.status();
    assert_eq!(Farm::status_pid(&status, "1"), Some(new));
    assert_eq!(status["1"]["state"]["restarts"], json!(1), "{status}");
    assert_eq!(Farm::status_pid(&status, "2"), Some(pids["2"]), "job 2 is untouched");
}

#[test]
fn lrpmctl_restart_of_unknown_job_is_refused() {
    let _g = shared();
    let (farm, pids) = two_job_farm("ctl_restart_unknown", FarmOptions::default());
    let out = lrpmctl(&farm.socket, &["restart", "999"]);
    out.assert_code(1);
    assert!(out.stderr.contains("does not exist"), "{}", out.dump());
    assert_still_answers(&farm, &pids);
}

#[test]
fn lrpmctl_stop_holds_a_job_until_start() {
    let _g = shared();
    let (farm, pids) = two_job_farm("ctl_hold", FarmOptions::default().interval(1));
    let out = lrpmctl(&farm.socket, &["stop", "1"]);
    out.assert_code(0);
    farm.wait_for(secs(5.0), "job 1 to be stopped and held", || {
        let status = farm.try_status()?;
        let s = &status["1"]["state"];
        (s["status"] == "stopped" && s["held"] == true && s["pid"].is_null()).then_some(())
    });
    farm.assert_all_gone(&[pids["1"]], secs(2.0), "the held job's worker");

    // Config polls (every second) do not bring it back.
    farm.wait_more_polls(2, secs(5.0));
    let status = farm.status();
    assert_eq!(status["1"]["state"]["status"], json!("stopped"), "still held after polls: {status}");
    assert_eq!(farm.events_of("1", "start").len(), 1, "no restart while held\n{}", farm.diagnostics());
    assert_eq!(Farm::status_pid(&status, "2"), Some(pids["2"]));

    let out = lrpmctl(&farm.socket, &["start", "1"]);
    out.assert_code(0);
    let new = farm.wait_running(&["1"], secs(5.0))["1"];
    assert_ne!(new, pids["1"]);
    let status = farm.status();
    assert_eq!(status["1"]["state"]["held"], json!(false), "{status}");
}

#[test]
fn lrpmctl_without_a_listener_exits_69() {
    let _g = shared();
    let dir = TempDir::new("ctl_missing");
    let socket = dir.join("nobody-here.sock");
    let out = lrpmctl(&socket, &["status"]);
    out.assert_code(69);
    assert!(
        out.stderr.contains(&socket.display().to_string()),
        "the socket path belongs in the message\n{}",
        out.dump()
    );
}

#[test]
fn oversized_length_prefix_closes_the_connection() {
    let _g = shared();
    let (farm, pids) = two_job_farm("raw_oversized", FarmOptions::default());
    for announced in [1024 * 1024 + 1, u64::MAX] {
        let mut stream = UnixStream::connect(&farm.socket).expect("connect");
        stream.write_all(&announced.to_be_bytes()).unwrap();
        let _ = stream.write_all(&[b'x'; 512]);
        assert!(
            closed_by_peer(&mut stream, secs(3.0)),
            "a {announced}-byte request must be refused by closing the connection\n{}",
            farm.diagnostics()
        );
        assert_still_answers(&farm, &pids);
    }
}

#[test]
fn a_stalled_client_does_not_block_others() {
    let _g = shared();
    let (farm, pids) = two_job_farm("raw_stall", FarmOptions::default());
    let mut staller = UnixStream::connect(&farm.socket).expect("connect");
    // Half a header, then a whole header announcing more than is sent.
    staller.write_all(&[0, 0, 0]).unwrap();
    wait_until(
        secs(5.0),
        "the supervisor to read the staller's bytes",
        || farm.diagnostics(),
        || (unread_by_peer(&staller) == 0).then_some(()),
    );
    let started = Instant::now();
    let response = farm.request("status").expect("status while a client stalls");
    // A server blocked on the staller would answer only once it dropped the
    // staller (the 5 s client timeout): answered while it is still connected.
    assert!(
        !closed_by_peer(&mut staller, secs(0.01)),
        "status took {:?}, the staller was dropped first",
        started.elapsed()
    );
    assert!(serde_json::from_str::<Value>(&response).is_ok(), "{response}");

    let mut staller2 = UnixStream::connect(&farm.socket).expect("connect");
    staller2.write_all(&100u64.to_be_bytes()).unwrap();
    staller2.write_all(b"sta").unwrap();
    wait_until(
        secs(5.0),
        "the supervisor to read the second staller's bytes",
        || farm.diagnostics(),
        || (unread_by_peer(&staller2) == 0).then_some(()),
    );
    let started = Instant::now();
    farm.request("status").expect("status while two clients stall");
    assert!(
        !closed_by_peer(&mut staller2, secs(0.01)),
        "status took {:?}, the staller was dropped first",
        started.elapsed()
    );
    assert_still_answers(&farm, &pids);

    // Stallers are dropped after the client timeout.
    assert!(
        closed_by_peer(&mut staller, secs(8.0)),
        "a stalled client should be disconnected eventually\n{}",
        farm.diagnostics()
    );
    assert!(
        closed_by_peer(&mut staller2, secs(2.0)),
        "a stalled client should be disconnected eventually\n{}",
        farm.diagnostics()
    );
}

/// A client may send its request and then shut down its writing side
/// (`printf ... | nc -N -U`, socat): the request is whole, so it must be
/// answered.
#[test]
fn half_closed_client_still_gets_its_response() {
    let _g = shared();
    let (farm, pids) = two_job_farm("raw_halfclose", FarmOptions::default());
    // Deterministic: the supervisor is stopped while the client connects,
    // sends and half-closes, so it sees the request and the EOF together.
    farm.signal(nix::sys::signal::Signal::SIGSTOP);
    let sent = (|| -> std::io::Result<UnixStream> {
        let mut stream = UnixStream::connect(&farm.socket)?;
        stream.set_read_timeout(Some(secs(5.0)))?;
        stream.write_all(&frame(b"status"))?;
        stream.shutdown(std::net::Shutdown::Write)?;
        Ok(stream)
    })();
    farm.signal(nix::sys::signal::Signal::SIGCONT);
    let mut stream = sent.expect("connect and send while the supervisor is stopped");
    let response = read_frame(&mut stream);
    assert_still_answers(&farm, &pids);
    let response = response.unwrap_or_else(|e| {
        panic!("a client that half-closed after a whole request got no response ({e})\n{}", farm.diagnostics())
    });
    let doc: Value = serde_json::from_str(&response).unwrap_or_else(|e| panic!("{e}: {response}"));
    assert!(doc.get("1").is_some(), "{doc}");
}

/// 1,000 clients connected at once, each with its `status` request sent:
/// every one of them gets the whole, correct status document.
#[test]
fn a_thousand_clients_at_once() {
    const CLIENTS: usize = 1000;
    let _g = exclusive();
    let (farm, pids) = two_job_farm("raw_thousand", FarmOptions::default());
    let socket = farm.socket.clone();
    let (tx, rx) = mpsc::channel();
    // In a thread: should the supervisor stop accepting, connect() would
    // block; the test then fails on the channel timeout and the Farm's drop
    // kills the supervisor, which releases the thread.
    thread::spawn(move || {
        let request = frame(b"status");
        let mut streams = Vec::with_capacity(CLIENTS);
        for i in 0..CLIENTS {
            let connected = UnixStream::connect(&socket).and_then(|mut s| {
                s.set_write_timeout(Some(Duration::from_secs(10)))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(&request)?;
                Ok(s)
            });
            match connected {
                Ok(s) => streams.push(s),
                Err(e) => {
                    let _ = tx.send(Err(format!("client #{i}: connect or send failed: {e}")));
                    return;
                }
            }
        }
        // Every client is connected (and has sent its request) before any
        // response is read.
        let responses: Vec<Result<String, String>> =
            streams.iter_mut().map(|s| read_frame(s).map_err(|e| e.to_string())).collect();
        let _ = tx.send(Ok(responses));
    });
    let responses = rx
        .recv_timeout(secs(60.0))
        .unwrap_or_else(|_| panic!("{CLIENTS} clients did not finish within 60 s\n{}", farm.diagnostics()))
        .unwrap_or_else(|e| panic!("{e}\n{}", farm.diagnostics()));
    assert_eq!(responses.len(), CLIENTS);
    let mut bad = Vec::new();
    for (i, response) in responses.iter().enumerate() {
        let problem = match response {
            Err(e) => Some(format!("no response: {e}")),
            Ok(text) => match serde_json::from_str::<Value>(text) {
                Err(e) => Some(format!("not JSON ({e}): {:?}", text.chars().take(100).collect::<String>())),
                Ok(doc) => {
                    let right = Farm::status_ids(&doc).len() == pids.len()
                        && pids.iter().all(|(id, pid)| Farm::status_pid(&doc, id) == Some(*pid));
                    (!right).then(|| format!("wrong status: {}", text.chars().take(300).collect::<String>()))
                }
            },
        };
        if let Some(problem) = problem {
            bad.push(format!("client #{i}: {problem}"));
        }
    }
    assert!(
        bad.is_empty(),
        "every client must get the whole status of both running jobs ({} of {CLIENTS} did not):\n{}\n{}",
        bad.len(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
        farm.diagnostics()
    );
    assert_still_answers(&farm, &pids);
}

#[test]
fn random_bytes_do_not_hurt_the_supervisor() {
    let _g = shared();
    let (farm, pids) = two_job_farm("raw_random", FarmOptions::default());
    for seed in [1u64, 0xdead_beef, 42] {
        // Raw garbage: the first 8 bytes are a (most likely huge) length.
        let mut stream = UnixStream::connect(&farm.socket).expect("connect");
        let _ = stream.write_all(&pseudo_random(10 * 1024, seed));
        assert!(
            closed_by_peer(&mut stream, secs(8.0)),
            "garbage should end with a closed connection\n{}",
            farm.diagnostics()
        );
        assert_still_answers(&farm, &pids);

        // Garbage in a well-formed frame: an error response.
        let mut stream = UnixStream::connect(&farm.socket).expect("connect");
        stream.set_read_timeout(Some(secs(5.0))).unwrap();
        stream.write_all(&frame(&pseudo_random(10 * 1024, seed + 1))).unwrap();
        let response = read_frame(&mut stream)
            .unwrap_or_else(|e| panic!("no response to a framed garbage request: {e}\n{}", farm.diagnostics()));
        assert!(response.starts_with("error: "), "{response}");
        assert_still_answers(&farm, &pids);
    }
}

#[test]
fn unknown_command_names_the_valid_ones() {
    let _g = shared();
    let (farm, pids) = two_job_farm("raw_unknown", FarmOptions::default());
    let response = farm.request("frobnicate now").expect("response");
    assert!(response.starts_with("error: "), "{response}");
    for command in ["status", "jsonstatus", "restart", "reload", "stop", "start", "signal", "version", "help"] {
        assert!(response.contains(command), "the error should name {command}: {response}");
    }
    let out = lrpmctl(&farm.socket, &["frobnicate"]);
    out.assert_code(1);
    assert!(out.stderr.contains("not a valid message"), "{}", out.dump());

    let help = farm.request("help").expect("help");
    assert!(help.contains("jsonstatus") && !help.starts_with("error: "), "{help}");
    let version = lrpmctl(&farm.socket, &["version"]);
    version.assert_code(0);
    assert!(version.stdout.starts_with("lrpm-host "), "{}", version.dump());
    assert_still_answers(&farm, &pids);
}

#[test]
fn lrpmctl_signal_reaches_the_worker() {
    let _g = shared();
    let (farm, pids) = two_job_farm("ctl_signal", FarmOptions::default());
    let out = lrpmctl(&farm.socket, &["signal", "1", "TERM"]);
    out.assert_code(0);
    farm.wait_for(secs(3.0), "job 1 to stop on the TERM it was sent", || {
        farm.events_of("1", "exit").iter().any(|e| e.pid == pids["1"]).then_some(())
    });
    // It exited on its own: restarted (with backoff, it ran < 5 s).
    farm.wait_starts("1", 2, secs(5.0));
    let bad = lrpmctl(&farm.socket, &["signal", "1", "NOSUCHSIGNAL"]);
    bad.assert_code(1);
    let unknown = lrpmctl(&farm.socket, &["signal", "999", "TERM"]);
    unknown.assert_code(1);
    assert!(unknown.stderr.contains("does not exist"), "{}", unknown.dump());
}

#[test]
fn lrpmctl_invalid_response_exits_76() {
    let _g = shared();
    let dir = TempDir::new("ctl_invalid");
    let socket = dir.join("fake.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    // A fake server answering a truncated frame: a header announcing 100
    // bytes, then 3 bytes and EOF.
    let server = thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut header = [0u8; 8];
            let _ = std::io::Read::read_exact(&mut stream, &mut header);
            let mut body = vec![0u8; u64::from_be_bytes(header).min(4096) as usize];
            let _ = std::io::Read::read_exact(&mut stream, &mut body);
            let _ = stream.write_all(&100u64.to_be_bytes());
            let _ = stream.write_all(b"abc");
        }
    });
    let out = lrpmctl(&socket, &["status"]);
    let _ = server.join();
    out.assert_code(76);
}

#[test]
fn socket_is_private_and_removed_at_exit() {
    let _g = shared();
    let (farm, _pids) = two_job_farm("sock_mode", FarmOptions::default());
    let meta = fs::symlink_metadata(&farm.socket).expect("socket file");
    assert!(meta.file_type().is_socket(), "{:?}", meta.file_type());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode {:o}", meta.permissions().mode() & 0o777);

    let out = lrpmctl(&farm.socket, &["stop"]);
    out.assert_code(0);
    let status = farm.wait_exit(secs(15.0));
    assert_eq!(status.code(), Some(0), "exit status after `stop`\n{}", farm.diagnostics());
    assert!(!farm.socket.exists(), "the control socket must be removed at exit");
}

#[test]
fn second_instance_on_the_same_socket_fails() {
    let _g = shared();
    let (farm, pids) = two_job_farm("sock_twice", FarmOptions::default());
    let mut cmd = Command::new(bin());
    cmd.args(["-i", "3600", "--control-socket"])
        .arg(&farm.socket)
        .arg(poll_source())
        .env("FARM_JOBS", &farm.jobs_file)
        .env("NO_COLOR", "1")
        .current_dir(farm.dir.path());
    let second = run_with_timeout(cmd, secs(15.0));
    assert_ne!(second.status.code(), Some(0), "the second instance must fail\n{}", second.dump());
    assert!(
        second.stderr.contains("another lrpm-host is already answering on")
            && second.stderr.contains(&farm.socket.display().to_string()),
        "{}",
        second.dump()
    );
    assert!(farm.socket.exists(), "the first instance's socket must survive");
    assert_still_answers(&farm, &pids);
    assert_eq!(farm.events_of("1", "start").len(), 1, "no worker of the second instance ran\n{}", farm.diagnostics());
}

/// Only a stale *socket* may be replaced: a regular file at the
/// --control-socket path (a typo, a wrong variable) must survive, and the
/// farm must refuse to start.
#[test]
fn control_socket_path_holding_a_regular_file_is_not_deleted() {
    let _g = shared();
    let dir = TempDir::new("sock_regular");
    let path = dir.join("important.conf");
    fs::write(&path, "precious data\n").unwrap();
    let farm =
        Farm::start("sock_regular_farm", FarmOptions::default().socket(path.clone()), |j| json!({"1": j.job("1", 1)}));
    // Either it refuses (exits) or it replaced the file with its socket.
    wait_until(
        secs(10.0),
        "lrpm-host to exit or to touch the file",
        || farm.diagnostics(),
        || {
            (farm.try_exit().is_some() || fs::read_to_string(&path).ok().as_deref() != Some("precious data\n"))
                .then_some(())
        },
    );
    let content = fs::read_to_string(&path);
    assert_eq!(
        content.as_ref().ok().map(String::as_str),
        Some("precious data\n"),
        "the regular file at --control-socket was deleted or replaced (now: {:?})\n{}",
        fs::symlink_metadata(&path).map(|m| m.file_type()),
        farm.diagnostics()
    );
    let status = farm.wait_exit(secs(10.0));
    assert_ne!(status.code(), Some(0), "lrpm-host must refuse to start\n{}", farm.diagnostics());
}

#[test]
fn stale_socket_file_is_replaced() {
    let _g = shared();
    let dir = TempDir::new("sock_stale");
    let socket = dir.join("stale.sock");
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists(), "a closed listener leaves its socket file behind");
    assert!(UnixStream::connect(&socket).is_err(), "nobody listens on the stale socket");

    let farm =
        Farm::start("sock_stale_farm", FarmOptions::default().socket(socket.clone()), |j| json!({"1": j.job("1", 1)}));
    farm.wait_running(&["1"], secs(10.0));
    let meta = fs::symlink_metadata(&socket).expect("socket file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    farm.stop(secs(15.0));
    assert!(!socket.exists());
}

/// A uid that no user has (no passwd entry), for a folder of "another user".
fn unused_uid() -> nix::unistd::Uid {
    (2_000_000_000..2_000_100_000)
        .map(nix::unistd::Uid::from_raw)
        .find(|uid| matches!(nix::unistd::User::from_uid(*uid), Ok(None)))
        .expect("a uid without a passwd entry")
}

/// A socket folder owned by another (non-root) user is refused: that user
/// could swap the socket. As root (CI), the folder is handed to a uid that
/// no user has. Otherwise lrpm-host runs in a user namespace (`unshare -r`),
/// where it is root and the real root's folders belong to the overflow uid
/// (65534): "/" is such a folder. An environment offering neither fails the
/// test, saying what is missing.
#[test]
fn socket_folder_of_another_user_is_refused() {
    let _g = shared();
    let dir = TempDir::new("sock_foreign");
    let (folder, options, owner): (PathBuf, FarmOptions, u32) = if nix::unistd::geteuid().is_root() {
        let foreign = dir.join("foreign");
        fs::create_dir(&foreign).unwrap();
        let uid = unused_uid();
        nix::unistd::chown(&foreign, Some(uid), None)
            .unwrap_or_else(|e| panic!("as root, cannot chown {} to uid {uid}: {e}", foreign.display()));
        (foreign, FarmOptions::default(), uid.as_raw())
    } else {
        let probe = Command::new("unshare").args(["-r", "stat", "-c", "%u", "/"]).output();
        let overflow = match &probe {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().ok(),
            _ => None,
        };
        let Some(overflow) = overflow.filter(|uid| *uid != 0) else {
            panic!(
                "this test needs another user's folder: run it as root, or allow unprivileged user namespaces \
                 for `unshare -r` (util-linux; sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces); \
                 `unshare -r stat -c %u /` gave {probe:?}"
            );
        };
        (PathBuf::from("/"), FarmOptions::default().wrapper(&["unshare", "-r"]), overflow)
    };
    let socket = folder.join(format!("lrpmt-foreign-{}.sock", std::process::id()));
    let farm = Farm::start("sock_foreign_farm", options.socket(socket.clone()), |j| json!({"1": j.job("1", 1)}));
    let status = farm.wait_exit(secs(10.0));
    assert_ne!(status.code(), Some(0), "\n{}", farm.diagnostics());
    assert!(farm.stderr().contains(&format!("belongs to uid {owner}")), "\n{}", farm.diagnostics());
    assert!(!socket.exists(), "no socket may be created there");
    assert!(farm.events_of("1", "start").is_empty(), "no worker may run\n{}", farm.diagnostics());
}

/// `lrpmctl status | head -1`: lrpmctl writing into a closed pipe ends
/// quietly, as Unix tools do (killed by SIGPIPE, 141 in a shell), never with
/// a panic (exit 101, "failed printing to stdout: Broken pipe").
#[test]
fn lrpmctl_into_a_closed_pipe_exits_quietly() {
    let _g = shared();
    let (farm, _pids) = two_job_farm("ctl_pipe", FarmOptions::default());
    for args in [&["--color=never", "status"][..], &["--json", "status"], &["help"]] {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        drop(read_end);
        let out = Running::spawn_with_stdout(lrpmctl_command(&farm.socket, args), Stdio::from(write_end))
            .wait_within(DEFAULT_TIMEOUT);
        assert!(
            !out.stderr.contains("panicked") && !out.stderr.contains("Broken pipe"),
            "lrpmctl {args:?} into a closed pipe: no panic message expected\n{}",
            out.dump()
        );
        assert_ne!(out.status.code(), Some(101), "lrpmctl {args:?} panicked\n{}", out.dump());
        assert!(
            out.status.signal() == Some(libc::SIGPIPE) || out.status.code() == Some(128 + libc::SIGPIPE),
            "lrpmctl {args:?} into a closed pipe should end as killed by SIGPIPE\n{}",
            out.dump()
        );
    }
}

#[test]
fn restart_all_restarts_every_job() {
    let _g = shared();
    let (farm, before) = two_job_farm("restart_all", FarmOptions::default());
    let reply = farm.request("restart all").unwrap();
    assert_eq!(reply, "Scheduled immediate restart of 2 job(s)", "{}", farm.diagnostics());
    let after = farm.wait_for(secs(10.0), "both jobs to run again with new pids", || {
        let status = farm.try_status()?;
        let pids: Vec<Option<i32>> = ["1", "2"].iter().map(|id| Farm::status_pid(&status, id)).collect();
        let renewed = pids.iter().zip(["1", "2"]).all(|(pid, id)| pid.is_some_and(|p| p != before[id]));
        renewed.then_some(pids)
    });
    assert_eq!(after.len(), 2);
}
